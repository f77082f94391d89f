//! A scripted broker and sample records for the batch's unit tests: the
//! n-th publish gets the n-th [`Reply`], so a test states what the broker
//! does and asserts the report and the response.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use std::time::{Duration, Instant};

use aws_lambda_events::dynamodb::{Event, EventRecord};
use chrono::Utc;
use serde_dynamo::AttributeValue;
use serde_json::value::RawValue;

use super::{BatchOptions, BatchReport, Deadlines, Invocation, forward, response};
use crate::config::MappingConfig;
use crate::enrich::NoEnricher;
use crate::mapping::Converter;
use crate::publisher::{Broker, Confirm, Confirmation, Message, PublishError, Reset, Returned};

/// What the fake broker does with the n-th publish.
#[derive(Clone)]
pub(super) enum Reply {
    Ack,
    Nack,
    Return,
    /// The confirm never comes.
    Silent,
    /// The write itself fails.
    WriteFails(PublishError),
    /// The confirm resolves with a lost channel.
    LostInFlight,
    /// The confirm comes only once `n` messages were published in all.
    AckAfter(usize),
    /// Acked once `after` messages were published in all, carrying the
    /// return of message `owner` (as lapin hands a return to whichever
    /// confirm it completes next).
    AckCarrying {
        owner: usize,
        after: usize,
    },
    /// Acked, carrying a return with a message id of no record.
    AckCarryingStranger,
    /// Nacked once `n` messages were published in all.
    NackAfter(usize),
    /// The write waits until its bound and then times out.
    WriteHangs,
    /// The broker closes the channel over this message, larger than it
    /// takes: its confirm fails naming its size.
    CloseTooLarge,
}

pub(super) struct FakeBroker {
    replies: Vec<Reply>,
    pub(super) published: Vec<Message>,
    count: Arc<AtomicUsize>,
    notify: Arc<tokio::sync::Notify>,
    ids: Arc<std::sync::Mutex<Vec<String>>>,
    pub(super) ready_error: Option<PublishError>,
    pub(super) ready_calls: usize,
    open: bool,
    pub(super) resets: usize,
    /// The scope of every reset, in order.
    pub(super) scopes: Vec<Reset>,
    /// Exchanges that must be declared before use (a template's), and
    /// those the broker refuses.
    pub(super) declarable: bool,
    pub(super) declared: Vec<String>,
    pub(super) refuses: Vec<String>,
}

impl FakeBroker {
    pub(super) fn new(replies: Vec<Reply>) -> Self {
        Self {
            replies,
            published: Vec::new(),
            count: Arc::default(),
            notify: Arc::default(),
            ids: Arc::default(),
            ready_error: None,
            ready_calls: 0,
            open: false,
            resets: 0,
            scopes: Vec::new(),
            declarable: false,
            declared: Vec::new(),
            refuses: Vec::new(),
        }
    }

    /// The exchange of each message published, in order.
    pub(super) fn exchanges(&self) -> Vec<&str> {
        self.published.iter().map(|m| m.exchange.as_str()).collect()
    }

    pub(super) fn published_ids(&self) -> Vec<String> {
        self.published
            .iter()
            .map(|m| m.properties.message_id.clone())
            .collect()
    }
}

impl Broker for FakeBroker {
    async fn ensure_ready(&mut self, _until: Instant) -> Result<bool, PublishError> {
        self.ready_calls += 1;
        if let Some(e) = &self.ready_error {
            return Err(e.clone());
        }
        let reconnected = !self.open;
        self.open = true;
        Ok(reconnected)
    }

    async fn publish(&mut self, m: Message, until: Instant) -> Result<Confirm, PublishError> {
        if !self.open {
            return Err(PublishError::ChannelLost("closed".into()));
        }
        let n = self.published.len();
        let reply = self.replies.get(n).cloned().unwrap_or(Reply::Ack);
        if let Reply::WriteFails(e) = reply {
            self.open = false;
            return Err(e);
        }
        if let Reply::WriteHangs = reply {
            tokio::time::sleep_until(until.into()).await;
            return Err(PublishError::WriteTimeout);
        }
        if let Reply::CloseTooLarge = reply {
            self.open = false;
        }
        let size = m.body.len();
        let own_id = m.properties.message_id.clone();
        self.ids.lock().unwrap().push(own_id.clone());
        self.published.push(m);
        self.count.store(self.published.len(), Ordering::SeqCst);
        self.notify.notify_waiters();
        let (count, notify) = (self.count.clone(), self.notify.clone());
        let ids = self.ids.clone();
        let returned = move |id: Option<String>| Returned {
            message_id: id,
            code: 312,
            text: "NO_ROUTE".into(),
        };
        Ok(Box::pin(async move {
            match reply {
                Reply::Ack | Reply::WriteFails(_) => Confirmation::ack(),
                Reply::Nack => Confirmation::failed(PublishError::Nacked),
                Reply::Return => Confirmation {
                    outcome: Ok(()),
                    returned: Some(returned(Some(own_id))),
                },
                Reply::AckCarryingStranger => Confirmation {
                    outcome: Ok(()),
                    returned: Some(returned(Some("a-stranger".into()))),
                },
                Reply::AckCarrying { owner, after } => loop {
                    let notified = notify.notified();
                    if count.load(Ordering::SeqCst) >= after.max(owner + 1) {
                        let id = ids.lock().unwrap().get(owner).cloned();
                        return Confirmation {
                            outcome: Ok(()),
                            returned: Some(returned(id)),
                        };
                    }
                    notified.await;
                },
                Reply::Silent => std::future::pending().await,
                Reply::LostInFlight => {
                    Confirmation::failed(PublishError::ChannelLost("connection reset".into()))
                }
                Reply::AckAfter(total) => loop {
                    let notified = notify.notified();
                    if count.load(Ordering::SeqCst) >= total {
                        return Confirmation::ack();
                    }
                    notified.await;
                },
                Reply::NackAfter(total) => loop {
                    let notified = notify.notified();
                    if count.load(Ordering::SeqCst) >= total {
                        return Confirmation::failed(PublishError::Nacked);
                    }
                    notified.await;
                },
                Reply::WriteHangs => Confirmation::ack(),
                Reply::CloseTooLarge => Confirmation::failed(PublishError::TooLarge {
                    size,
                    limit: size - 1,
                    text: format!(
                        "406 PRECONDITION_FAILED - message size {size} is larger than configured max size {}",
                        size - 1
                    ),
                }),
            }
        }))
    }

    fn needs_declare(&self, exchange: &str) -> bool {
        self.declarable
            && !exchange.ends_with(".dead-letter")
            && !self.declared.iter().any(|d| d == exchange)
    }

    async fn declare(&mut self, exchange: &str, _until: Instant) -> Result<(), PublishError> {
        if self.refuses.iter().any(|r| r == exchange) {
            self.open = false;
            return Err(PublishError::Refused(format!(
                "exchange '{exchange}': 406 PRECONDITION_FAILED - inequivalent arg 'type'"
            )));
        }
        self.declared.push(exchange.to_owned());
        Ok(())
    }

    fn reset(&mut self, scope: Reset) {
        self.open = false;
        self.resets += 1;
        self.scopes.push(scope);
    }
}

/// `n` INSERT records of distinct aggregates, with sequence numbers 1..=n.
pub(super) fn inserts(n: usize) -> Vec<EventRecord> {
    let template: Event =
        serde_json::from_str(include_str!("../../events/insert-batch.json")).unwrap();
    let base = &template.records[0];
    (0..n)
        .map(|i| {
            let mut r = base.clone();
            r.change.sequence_number = Some(format!("{}", i + 1));
            r.change
                .new_image
                .insert("aggregateId".into(), AttributeValue::S(format!("agg-{i}")));
            r
        })
        .collect()
}

/// Gives `r` a payload with a string of `bytes` characters.
pub(super) fn with_blob(r: &mut EventRecord, bytes: usize) {
    let blob = [("blob".to_string(), AttributeValue::S("x".repeat(bytes)))];
    r.change.new_image.insert(
        "payload".into(),
        AttributeValue::M(blob.into_iter().collect()),
    );
}

pub(super) fn modify(mut r: EventRecord) -> EventRecord {
    r.event_name = "MODIFY".into();
    r
}

pub(super) fn poison(mut r: EventRecord) -> EventRecord {
    r.change.new_image.remove("eventType");
    r
}

pub(super) fn converter() -> Converter {
    Converter::new(MappingConfig::new("product.events"))
}

pub(super) fn ample() -> Deadlines {
    Deadlines::new(
        Instant::now() + Duration::from_secs(30),
        Duration::from_secs(1),
    )
}

pub(super) fn options() -> BatchOptions {
    BatchOptions::new(Duration::from_millis(200))
}

/// Records as the event source mapping sends them: JSON text.
pub(super) fn raw(records: &[EventRecord]) -> Vec<Box<RawValue>> {
    records
        .iter()
        .map(|r| serde_json::value::to_raw_value(r).unwrap())
        .collect()
}

pub(super) async fn run(broker: &mut FakeBroker, records: &[EventRecord]) -> BatchReport {
    run_with(broker, records, &converter(), ample(), options()).await
}

/// [`run`] with other mapping settings.
pub(super) async fn run_mapped(
    broker: &mut FakeBroker,
    records: &[EventRecord],
    config: MappingConfig,
) -> BatchReport {
    run_with(broker, records, &Converter::new(config), ample(), options()).await
}

/// [`run`] with another mapping, deadlines or options.
pub(super) async fn run_with(
    broker: &mut FakeBroker,
    records: &[EventRecord],
    converter: &Converter,
    deadlines: Deadlines,
    options: BatchOptions,
) -> BatchReport {
    forward(
        broker,
        converter,
        &NoEnricher,
        &raw(records),
        Invocation::new(Utc::now(), deadlines),
        options,
    )
    .await
}

pub(super) fn reported(records: &[EventRecord], report: &BatchReport) -> Vec<String> {
    response(&raw(records), report)
        .unwrap()
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier.unwrap())
        .collect()
}
