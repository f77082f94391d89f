//! The checkpoint rule (CONTRACT §6): records in, outcomes and the partial
//! batch response out.
//!
//! Records are planned and published in stream order on one channel;
//! confirms are awaited afterwards, in a window, not one round trip per
//! record. Lambda checkpoints at the lowest reported sequence number, so only
//! the first record that is not confirmed (or skipped, or dead-lettered)
//! matters: it is reported, and nothing after it is published once it is
//! known to have failed.

use std::{
    borrow::Borrow,
    collections::VecDeque,
    task::Poll,
    time::{Duration, Instant},
};

use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::enrich::{self, Enricher, Enrichment, Event};
use crate::mapping::{Converter, Plan, Planned};
use crate::publisher::{
    Broker, Confirm, Confirmation, HeaderValue, Message, PublishError, Reset, Returned,
};
use crate::record;

/// How many confirms may be outstanding before the loop waits for the
/// oldest: the largest batch the event source mapping sends. A smaller
/// window starves the broker's confirm batching (a 1,000 window gave 0.68 of
/// the ceiling on 10,000-record batches, this one 0.8 to 0.86); each
/// confirm in flight costs a few hundred bytes.
pub const MAX_IN_FLIGHT: usize = 10_000;

/// Mid-batch reconnects allowed after a channel or connection loss. One is
/// enough to survive a connection that died while the environment was frozen.
pub const MAX_RECONNECTS: u32 = 1;

/// When to stop publishing and when to stop waiting for confirms.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// No record is published after this instant (deadline minus
    /// `DEADLINE_MARGIN_MS`).
    pub publish_until: Instant,
    /// No confirm is awaited after this instant (deadline minus a quarter of
    /// the margin), which leaves time to answer.
    pub answer_by: Instant,
}

impl Deadlines {
    pub fn new(deadline: Instant, margin: Duration) -> Self {
        let now = Instant::now();
        let before = |d: Duration| deadline.checked_sub(d).unwrap_or(now).max(now);
        Self {
            publish_until: before(margin),
            answer_by: before(margin / 4),
        }
    }
}

/// Settings of the loop that are not part of the record mapping.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    pub confirm_timeout: Duration,
    pub max_in_flight: usize,
    pub max_reconnects: u32,
}

impl BatchOptions {
    pub fn new(confirm_timeout: Duration) -> Self {
        Self {
            confirm_timeout,
            max_in_flight: MAX_IN_FLIGHT,
            max_reconnects: MAX_RECONNECTS,
        }
    }
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not handled (yet): from the first such record on, the batch is retried.
    Pending,
    Skipped,
    Published,
    DeadLettered,
}

/// The first record that was not handled, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub index: usize,
    pub error: PublishError,
}

/// The result of one batch, for the response, the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub records: usize,
    pub published: usize,
    pub skipped: usize,
    pub dead_lettered: usize,
    /// Records from the first failure on: all of them will be redelivered.
    pub failed: usize,
    pub failure: Option<Failure>,
    pub reconnects: u32,
    /// Reasons records were dead-lettered, in order (for the logs).
    pub dead_letter_reasons: Vec<(usize, String)>,
    /// Reasons an enricher skipped records (for the logs).
    pub skip_reasons: Vec<(usize, String)>,
    /// What was left out of published events (an invalid trace context),
    /// for warnings.
    pub dropped: Vec<(usize, String)>,
    /// The oldest ApproximateCreationDateTime among the records planned.
    pub oldest_record: Option<DateTime<Utc>>,
}

impl BatchReport {
    fn new(outcomes: &[Outcome], failure: Option<Failure>, reconnects: u32) -> Self {
        let settled = failure.as_ref().map_or(outcomes.len(), |f| f.index);
        let count = |o: Outcome| outcomes[..settled].iter().filter(|&&x| x == o).count();
        Self {
            records: outcomes.len(),
            published: count(Outcome::Published),
            skipped: count(Outcome::Skipped),
            dead_lettered: count(Outcome::DeadLettered),
            failed: outcomes.len() - settled,
            failure,
            reconnects,
            dead_letter_reasons: Vec::new(),
            skip_reasons: Vec::new(),
            dropped: Vec::new(),
            oldest_record: None,
        }
    }
}

/// Neither the failed record nor any record before it has a sequence
/// number to report, so the whole batch has to fail instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {0} failed and neither it nor an earlier record has a SequenceNumber to report")]
pub struct NoSequenceNumber(pub usize);

/// The sequence number of a record given as JSON text, if it has one.
pub fn sequence_number(raw: &RawValue) -> Option<String> {
    record::Identity::read(raw.get())
        .sequence_number
        .filter(|s| !s.is_empty())
}

/// The partial batch response: empty, or exactly the first failed record.
///
/// A failed record without a sequence number (never seen from a real
/// stream) is reported through the nearest earlier record that has one:
/// that only redelivers more, never less.
pub fn response<R: Borrow<RawValue>>(
    records: &[R],
    report: &BatchReport,
) -> Result<DynamoDbEventResponse, NoSequenceNumber> {
    let mut response = DynamoDbEventResponse::default();
    if let Some(failure) = &report.failure {
        let last = failure.index.min(records.len().saturating_sub(1));
        let seq = records
            .get(..=last)
            .unwrap_or_default()
            .iter()
            .rev()
            .find_map(|r| sequence_number(r.borrow()))
            .ok_or(NoSequenceNumber(failure.index))?;
        let mut item = DynamoDbBatchItemFailure::default();
        item.item_identifier = Some(seq);
        response.batch_item_failures.push(item);
    }
    Ok(response)
}

struct InFlight {
    index: usize,
    outcome: Outcome,
    message_id: String,
    sent_at: Instant,
    confirm: Settle,
}

/// A confirm still awaited, or one already seen while looking for returns.
enum Settle {
    Waiting(Confirm),
    Done(Confirmation),
}

/// What an invocation brings besides its records.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    /// Stands in for a missing ApproximateCreationDateTime.
    pub now: DateTime<Utc>,
    pub deadlines: Deadlines,
    /// The queue a backfill sends to, instead of the exchange (the caller
    /// has checked that `REPLAY_QUEUES` allows it).
    pub to_queue: Option<&'a str>,
    /// The invocation's trace context, for the events whose item has none.
    pub traceparent: Option<&'a str>,
}

impl Invocation<'_> {
    /// An invocation of the stream (no queue, no trace context).
    pub fn new(now: DateTime<Utc>, deadlines: Deadlines) -> Self {
        Self {
            now,
            deadlines,
            to_queue: None,
            traceparent: None,
        }
    }
}

/// What the loop notes about records besides their outcomes.
#[derive(Default)]
struct Notes {
    dead_letter_reasons: Vec<(usize, String)>,
    skip_reasons: Vec<(usize, String)>,
    dropped: Vec<(usize, String)>,
    oldest: Option<DateTime<Utc>>,
}

impl Notes {
    /// Forgets what was noted from `index` on (it is planned again).
    fn truncate(&mut self, index: usize) {
        self.dead_letter_reasons.retain(|(i, _)| *i < index);
        self.skip_reasons.retain(|(i, _)| *i < index);
        self.dropped.retain(|(i, _)| *i < index);
    }
}

/// What an enricher made of an event.
enum Enriched {
    Publish(Message),
    Skip(String),
    DeadLetter(Message, String),
    Failed(PublishError),
}

/// Forwards one batch: plans, publishes and confirms records in order, and
/// reports the first one that was not handled. Each event passes through
/// `enricher` between mapping and publishing.
pub async fn forward<B: Broker, E: Enricher, R: Borrow<RawValue>>(
    broker: &mut B,
    converter: &Converter,
    enricher: &E,
    records: &[R],
    invocation: Invocation<'_>,
    options: BatchOptions,
) -> BatchReport {
    let mut outcomes = vec![Outcome::Pending; records.len()];
    let mut notes = Notes::default();
    let mut enrichment = E::Batch::default();
    let mut reconnects = 0;
    let mut reconnects_left = options.max_reconnects;
    let mut start = 0;
    let deadlines = invocation.deadlines;
    let failure = loop {
        let mut run = Run {
            broker: &mut *broker,
            converter,
            enricher,
            enrichment: &mut enrichment,
            invocation,
            options,
            in_flight: VecDeque::new(),
            confirmed: Vec::new(),
            returned: None,
            outcomes: &mut outcomes,
            reconnects: &mut reconnects,
            notes: &mut notes,
        };
        match run.publish_from(start, records).await {
            Some(f)
                if f.error.is_channel_lost()
                    && reconnects_left > 0
                    && Instant::now() < deadlines.publish_until =>
            {
                // Resume from the first unconfirmed record on a new channel:
                // the order of first deliveries is kept, at the cost of
                // duplicates of what was in flight.
                tracing::warn!(error = %f.error, index = f.index, "channel lost mid-batch; reopening");
                broker.reset(Reset::Channel);
                reconnects_left -= 1;
                outcomes[f.index..].fill(Outcome::Pending);
                notes.truncate(f.index);
                start = f.index;
            }
            other => break other,
        }
    };
    if let Some(f) = &failure {
        // Confirms of the failed batch may still be pending; a fresh channel
        // (or connection, after a timeout) keeps them from piling up.
        broker.reset(f.error.reset_scope());
    }
    broker.idle();
    let mut report = BatchReport::new(&outcomes, failure, reconnects);
    let settled = report.failure.as_ref().map_or(records.len(), |f| f.index);
    notes.truncate(settled);
    report.dead_letter_reasons = notes.dead_letter_reasons;
    report.skip_reasons = notes.skip_reasons;
    report.dropped = notes.dropped;
    report.oldest_record = notes.oldest;
    report
}

/// `future`'s output, or `None` if it is not done by `until`. A future that
/// is ready at once (the enricher that does nothing) costs no timer.
async fn by<F: std::future::Future>(until: Instant, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
        Poll::Ready(output) => Some(output),
        Poll::Pending => tokio::time::timeout_at(until.into(), future).await.ok(),
    }
}

struct Run<'b, 'o, B, E: Enricher> {
    broker: &'b mut B,
    converter: &'o Converter,
    enricher: &'o E,
    /// The enricher's state for this invocation.
    enrichment: &'o mut E::Batch,
    invocation: Invocation<'o>,
    options: BatchOptions,
    in_flight: VecDeque<InFlight>,
    /// Records confirmed on this channel, with their message ids, in order:
    /// a return that arrives later may still name one of them.
    confirmed: Vec<(usize, String)>,
    /// The earliest record a returned message named so far, and why.
    returned: Option<(usize, PublishError)>,
    outcomes: &'o mut [Outcome],
    reconnects: &'o mut u32,
    notes: &'o mut Notes,
}

impl<B: Broker, E: Enricher> Run<'_, '_, B, E> {
    async fn publish_from<R: Borrow<RawValue>>(
        &mut self,
        start: usize,
        records: &[R],
    ) -> Option<Failure> {
        let mut ready = false;
        let deadlines = self.invocation.deadlines;
        for (index, record) in records.iter().enumerate().skip(start) {
            if let Err(f) = self.settle_arrived().await {
                return Some(f);
            }
            if self.returned.is_some() {
                // A record in flight was returned: nothing more is sent, and
                // the confirms before it decide where the batch stops.
                return self.drain().await.err();
            }
            if Instant::now() >= deadlines.publish_until {
                return self.fail_at(index, PublishError::Deadline).await;
            }
            let Planned {
                plan,
                created,
                dropped,
            } = self
                .converter
                .plan_raw(record.borrow().get(), self.invocation.now);
            if let Some(t) = created {
                let oldest = &mut self.notes.oldest;
                *oldest = Some(oldest.map_or(t, |o: DateTime<Utc>| o.min(t)));
            }
            if let Some(why) = dropped {
                self.notes.dropped.push((index, why));
            }
            let (mut message, outcome) = match plan {
                Plan::Skip(_) => {
                    self.outcomes[index] = Outcome::Skipped;
                    continue;
                }
                Plan::Publish(m) => match self.enrich(m, record.borrow().get()).await {
                    Enriched::Publish(m) => (self.invocation_message(m), Outcome::Published),
                    Enriched::Skip(reason) => {
                        self.notes.skip_reasons.push((index, reason));
                        self.outcomes[index] = Outcome::Skipped;
                        continue;
                    }
                    Enriched::DeadLetter(message, reason) => {
                        self.notes.dead_letter_reasons.push((index, reason));
                        (message, Outcome::DeadLettered)
                    }
                    Enriched::Failed(e) => return self.fail_at(index, e).await,
                },
                Plan::DeadLetter { message, reason } => {
                    self.notes.dead_letter_reasons.push((index, reason));
                    (message, Outcome::DeadLettered)
                }
            };
            if !ready {
                match self.broker.ensure_ready(deadlines.publish_until).await {
                    Ok(reconnected) => *self.reconnects += u32::from(reconnected),
                    Err(e) => return self.fail_at(index, e).await,
                }
                ready = true;
            }
            while self.in_flight.len() >= self.options.max_in_flight.max(1) {
                if let Err(f) = self.settle_oldest().await {
                    return Some(f);
                }
            }
            let until =
                (Instant::now() + self.options.confirm_timeout).min(deadlines.publish_until);
            match self.broker.publish(&message, until).await {
                Ok(confirm) => self.in_flight.push_back(InFlight {
                    index,
                    outcome,
                    message_id: std::mem::take(&mut message.properties.message_id),
                    sent_at: Instant::now(),
                    confirm: Settle::Waiting(confirm),
                }),
                Err(e) => return self.fail_at(index, e).await,
            }
        }
        match self.drain().await {
            Err(f) => Some(f),
            // Unreachable: a return names a record in flight or the one that
            // carried it, and draining reaches both.
            Ok(()) => self
                .returned
                .take()
                .map(|(index, error)| Failure { index, error }),
        }
    }

    /// Passes an event through the enricher, within the deadline margin.
    async fn enrich(&mut self, mut message: Message, raw: &str) -> Enriched {
        let until = self.invocation.deadlines.publish_until;
        let decided = {
            let event = Event::new(&message);
            by(until, self.enricher.enrich(&event, self.enrichment)).await
        };
        let decided = match decided {
            None => {
                return Enriched::Failed(PublishError::Enrichment(
                    "no answer before the deadline margin".into(),
                ));
            }
            Some(Err(e)) => return Enriched::Failed(PublishError::Enrichment(e.0)),
            Some(Ok(decided)) => decided,
        };
        // The reason goes into a header and the log: cut to a header's size.
        let dead_letter = |converter: &Converter, reason: String| {
            let reason = crate::mapping::capped(reason);
            Enriched::DeadLetter(converter.dead_letter_raw(raw, &reason), reason)
        };
        match decided {
            Enrichment::Skip(reason) => Enriched::Skip(crate::mapping::capped(reason)),
            Enrichment::DeadLetter(reason) => dead_letter(self.converter, reason),
            Enrichment::Publish { payload, headers } => {
                match enrich::apply(&mut message, payload, headers) {
                    Ok(()) => Enriched::Publish(message),
                    Err(reason) => dead_letter(self.converter, reason),
                }
            }
        }
    }

    /// An event as this invocation sends it: to the backfill's queue, and
    /// with the invocation's trace context when its item had none.
    fn invocation_message(&self, mut message: Message) -> Message {
        if let Some(traceparent) = self.invocation.traceparent {
            let headers = &mut message.properties.headers;
            if !headers.iter().any(|(name, _)| *name == "traceparent") {
                headers.push(("traceparent", HeaderValue::String(traceparent.to_owned())));
            }
        }
        match self.invocation.to_queue {
            Some(queue) => crate::routing::to_queue(message, queue),
            None => message,
        }
    }

    /// A failure at `index`, unless an earlier record in flight failed first.
    async fn fail_at(&mut self, index: usize, error: PublishError) -> Option<Failure> {
        match self.drain().await {
            Err(earlier) => Some(earlier),
            Ok(()) => Some(self.fail(index, error)),
        }
    }

    /// Waits for every confirm in flight, oldest first.
    async fn drain(&mut self) -> Result<(), Failure> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    /// Records the confirms that have already arrived, without waiting.
    async fn settle_arrived(&mut self) -> Result<(), Failure> {
        while let Some(front) = self.in_flight.front_mut() {
            let confirmation = match &mut front.confirm {
                Settle::Done(c) => c.clone(),
                Settle::Waiting(confirm) => {
                    match std::future::poll_fn(|cx| Poll::Ready(confirm.as_mut().poll(cx))).await {
                        Poll::Pending => break,
                        Poll::Ready(c) => c,
                    }
                }
            };
            self.record_front(confirmation)?;
        }
        Ok(())
    }

    /// Waits for the oldest confirm, up to the confirm timeout or the
    /// deadline, whichever comes first, or until the broker blocks
    /// publishers.
    async fn settle_oldest(&mut self) -> Result<(), Failure> {
        let blocked = self.broker.blocked();
        let Some(front) = self.in_flight.front_mut() else {
            return Ok(());
        };
        let confirmation = match &mut front.confirm {
            Settle::Done(c) => c.clone(),
            Settle::Waiting(confirm) => {
                let answer_by = self.invocation.deadlines.answer_by;
                let until = (front.sent_at + self.options.confirm_timeout).min(answer_by);
                tokio::select! {
                    biased;
                    c = tokio::time::timeout_at(until.into(), confirm.as_mut()) => {
                        c.unwrap_or_else(|_| {
                            Confirmation::failed(if until >= answer_by {
                                PublishError::Deadline
                            } else {
                                PublishError::ConfirmTimeout
                            })
                        })
                    }
                    () = blocked => Confirmation::failed(PublishError::Blocked),
                }
            }
        };
        self.record_front(confirmation)
    }

    /// Settles the oldest record in flight with its confirm. A return that
    /// came with it is charged to the record it names, which may be the
    /// record itself, one confirmed before it or one still in flight; the
    /// batch then stops at the earliest record so named.
    fn record_front(&mut self, confirmation: Confirmation) -> Result<(), Failure> {
        let Some(front) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let Confirmation { outcome, returned } = confirmation;
        if let Some(returned) = returned {
            self.note_return(&returned, &front);
        }
        if self.returned.is_some() {
            self.look_for_returns(&front);
        }
        if let Err(error) = outcome {
            return Err(self.fail(front.index, error));
        }
        if let Some((index, error)) = self.returned.take_if(|(i, _)| *i <= front.index) {
            return Err(self.fail(index, error));
        }
        self.outcomes[front.index] = front.outcome;
        self.confirmed.push((front.index, front.message_id));
        Ok(())
    }

    /// Charges a return to the earliest record of this batch with its
    /// message id; one that names none is charged to `carrier`, the earliest
    /// record not yet confirmed.
    fn note_return(&mut self, returned: &Returned, carrier: &InFlight) {
        let named = |id: &str| returned.message_id.as_deref() == Some(id);
        let owner = self
            .confirmed
            .iter()
            .map(|(i, id)| (*i, id.as_str()))
            .chain(std::iter::once((
                carrier.index,
                carrier.message_id.as_str(),
            )))
            .chain(
                self.in_flight
                    .iter()
                    .map(|f| (f.index, f.message_id.as_str())),
            )
            .find(|(_, id)| named(id))
            .map_or(carrier.index, |(i, _)| i);
        if self.returned.as_ref().is_none_or(|(i, _)| owner < *i) {
            self.returned = Some((owner, returned.error()));
        }
    }

    /// The client completes the confirms of one multiple-ack in any order
    /// and may attach a return to any of them: once a return is seen, the
    /// confirms that have already arrived are looked at for more, so none
    /// naming an earlier record is missed.
    fn look_for_returns(&mut self, carrier: &InFlight) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut found = Vec::new();
        for entry in &mut self.in_flight {
            if let Settle::Waiting(confirm) = &mut entry.confirm
                && let Poll::Ready(c) = confirm.as_mut().poll(&mut cx)
            {
                entry.confirm = Settle::Done(c);
            }
            if let Settle::Done(c) = &mut entry.confirm
                && let Some(r) = c.returned.take()
            {
                found.push(r);
            }
        }
        for r in found {
            self.note_return(&r, carrier);
        }
    }

    /// The batch stops at `index`, or at an earlier record a return named.
    fn fail(&mut self, index: usize, error: PublishError) -> Failure {
        self.in_flight.clear();
        match self.returned.take() {
            Some((earlier, returned)) if earlier <= index => Failure {
                index: earlier,
                error: returned,
            },
            _ => Failure { index, error },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MappingConfig;
    use crate::enrich::NoEnricher;
    use aws_lambda_events::dynamodb::{Event, EventRecord};
    use serde_dynamo::AttributeValue;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    /// What the fake broker does with the n-th publish.
    #[derive(Clone)]
    enum Reply {
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
    }

    struct FakeBroker {
        replies: Vec<Reply>,
        published: Vec<Message>,
        count: Arc<AtomicUsize>,
        notify: Arc<tokio::sync::Notify>,
        ids: Arc<std::sync::Mutex<Vec<String>>>,
        ready_error: Option<PublishError>,
        ready_calls: usize,
        open: bool,
        resets: usize,
    }

    impl FakeBroker {
        fn new(replies: Vec<Reply>) -> Self {
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
            }
        }

        fn published_ids(&self) -> Vec<String> {
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

        async fn publish(&mut self, m: &Message, _until: Instant) -> Result<Confirm, PublishError> {
            if !self.open {
                return Err(PublishError::ChannelLost("closed".into()));
            }
            let n = self.published.len();
            let reply = self.replies.get(n).cloned().unwrap_or(Reply::Ack);
            if let Reply::WriteFails(e) = reply {
                self.open = false;
                return Err(e);
            }
            self.published.push(m.clone());
            self.ids
                .lock()
                .unwrap()
                .push(m.properties.message_id.clone());
            self.count.store(self.published.len(), Ordering::SeqCst);
            self.notify.notify_waiters();
            let (count, notify) = (self.count.clone(), self.notify.clone());
            let ids = self.ids.clone();
            let returned = move |id: Option<String>| Returned {
                message_id: id,
                code: 312,
                text: "NO_ROUTE".into(),
            };
            let own_id = m.properties.message_id.clone();
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
                }
            }))
        }

        fn reset(&mut self, _scope: Reset) {
            self.open = false;
            self.resets += 1;
        }
    }

    /// `n` INSERT records of distinct aggregates, with sequence numbers 1..=n.
    fn inserts(n: usize) -> Vec<EventRecord> {
        let template: Event =
            serde_json::from_str(include_str!("../events/insert-batch.json")).unwrap();
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

    fn modify(mut r: EventRecord) -> EventRecord {
        r.event_name = "MODIFY".into();
        r
    }

    fn poison(mut r: EventRecord) -> EventRecord {
        r.change.new_image.remove("eventType");
        r
    }

    fn converter() -> Converter {
        Converter::new(MappingConfig::new("product.events"))
    }

    fn ample() -> Deadlines {
        Deadlines::new(
            Instant::now() + Duration::from_secs(30),
            Duration::from_secs(1),
        )
    }

    fn options() -> BatchOptions {
        BatchOptions::new(Duration::from_millis(200))
    }

    /// Records as the event source mapping sends them: JSON text.
    fn raw(records: &[EventRecord]) -> Vec<Box<RawValue>> {
        records
            .iter()
            .map(|r| serde_json::value::to_raw_value(r).unwrap())
            .collect()
    }

    async fn run(broker: &mut FakeBroker, records: &[EventRecord]) -> BatchReport {
        forward(
            broker,
            &converter(),
            &NoEnricher,
            &raw(records),
            Invocation::new(Utc::now(), ample()),
            options(),
        )
        .await
    }

    fn reported(records: &[EventRecord], report: &BatchReport) -> Vec<String> {
        response(&raw(records), report)
            .unwrap()
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier.unwrap())
            .collect()
    }

    #[tokio::test]
    async fn when_every_record_is_confirmed_the_response_is_empty() {
        let records = inserts(5);
        let mut broker = FakeBroker::new(vec![]);
        let report = run(&mut broker, &records).await;
        assert_eq!(report.published, 5);
        assert_eq!(report.failed, 0);
        assert!(reported(&records, &report).is_empty());
        assert_eq!(broker.published.len(), 5);
        let json = serde_json::to_string(&response(&raw(&records), &report).unwrap()).unwrap();
        assert_eq!(json, r#"{"batchItemFailures":[]}"#);
    }

    #[tokio::test]
    async fn publishes_are_pipelined_not_one_round_trip_each() {
        // No confirm arrives before all 50 messages were sent: a loop that
        // waited for each confirm before the next publish would time out.
        let records = inserts(50);
        let mut broker = FakeBroker::new(vec![Reply::AckAfter(50); 50]);
        let report = run(&mut broker, &records).await;
        assert_eq!(report.failure, None);
        assert_eq!(report.published, 50);
    }

    /// Decides by the event's aggregate (`agg-<i>`); counts the events it
    /// saw in one invocation in its batch state.
    struct ScriptedEnricher(std::collections::HashMap<usize, &'static str>);

    impl Enricher for ScriptedEnricher {
        type Batch = usize;

        async fn enrich(
            &self,
            event: &enrich::Event<'_>,
            seen: &mut usize,
        ) -> Result<Enrichment, enrich::EnrichError> {
            *seen += 1;
            let i: usize = event.partition_key()["agg-".len()..].parse().unwrap();
            Ok(match self.0.get(&i).copied() {
                Some("skip") => Enrichment::Skip("a test event".into()),
                Some("dead") => Enrichment::DeadLetter("no such product".into()),
                Some("fail") => return Err(enrich::EnrichError::new("read model down")),
                Some("slow") => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Enrichment::keep()
                }
                _ => Enrichment::keep()
                    .with_field("seen", *seen as u64)
                    .with_header("region", "eu"),
            })
        }
    }

    async fn enriched(
        script: &[(usize, &'static str)],
        deadlines: Deadlines,
    ) -> (FakeBroker, Vec<EventRecord>, BatchReport) {
        let records = inserts(5);
        let mut broker = FakeBroker::new(vec![]);
        let enricher = ScriptedEnricher(script.iter().copied().collect());
        let report = forward(
            &mut broker,
            &converter(),
            &enricher,
            &raw(&records),
            Invocation::new(Utc::now(), deadlines),
            options(),
        )
        .await;
        (broker, records, report)
    }

    #[tokio::test]
    async fn an_enricher_adds_skips_and_dead_letters_and_the_batch_goes_on() {
        let (broker, records, report) = enriched(&[(1, "skip"), (3, "dead")], ample()).await;
        assert!(reported(&records, &report).is_empty());
        assert_eq!(
            (report.published, report.skipped, report.dead_lettered),
            (3, 1, 1)
        );
        assert_eq!(report.skip_reasons, [(1, "a test event".to_string())]);
        let exchanges: Vec<&str> = broker
            .published
            .iter()
            .map(|m| m.exchange.as_str())
            .collect();
        assert_eq!(
            exchanges,
            [
                "product.events",
                "product.events",
                "product.events.dead-letter",
                "product.events"
            ]
        );
        let body: serde_json::Value = serde_json::from_slice(&broker.published[1].body).unwrap();
        // The third event the enricher saw in this invocation.
        assert_eq!(body["payload"]["seen"], 3);
        assert_eq!(
            broker.published[1].properties.extra_headers,
            [("region".to_string(), HeaderValue::String("eu".into()))]
        );
        let dead = &broker.published[2].properties.headers;
        assert!(dead.contains(&("x-error", HeaderValue::String("no such product".into()))));
    }

    #[tokio::test]
    async fn an_enrichment_error_fails_that_record_by_the_checkpoint_rule() {
        let (broker, records, report) = enriched(&[(2, "fail")], ample()).await;
        assert_eq!(reported(&records, &report), ["3"]);
        let failure = report.failure.unwrap();
        assert_eq!(failure.error.kind(), "enrichment");
        assert_eq!(
            failure.error.to_string(),
            "enrichment failed: read model down"
        );
        assert_eq!(report.published, 2);
        assert_eq!(broker.published.len(), 2, "nothing after it was sent");
    }

    #[tokio::test]
    async fn an_enricher_is_bounded_by_the_deadline_margin() {
        let tight = Deadlines::new(
            Instant::now() + Duration::from_millis(1300),
            Duration::from_secs(1),
        );
        let started = Instant::now();
        let (_, records, report) = enriched(&[(1, "slow")], tight).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(reported(&records, &report), ["2"]);
        assert_eq!(report.failure.unwrap().error.kind(), "enrichment");
    }

    #[tokio::test]
    async fn events_without_a_trace_context_get_the_invocations() {
        const ITEM: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        const XRAY: &str = "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01";
        let mut records = inserts(2);
        records[1]
            .change
            .new_image
            .insert("traceparent".into(), AttributeValue::S(ITEM.into()));
        let mut broker = FakeBroker::new(vec![]);
        let invocation = Invocation {
            traceparent: Some(XRAY),
            ..Invocation::new(Utc::now(), ample())
        };
        forward(
            &mut broker,
            &converter(),
            &NoEnricher,
            &raw(&records),
            invocation,
            options(),
        )
        .await;
        let traceparents: Vec<Vec<&HeaderValue>> = broker
            .published
            .iter()
            .map(|m| {
                m.properties
                    .headers
                    .iter()
                    .filter(|(n, _)| *n == "traceparent")
                    .map(|(_, v)| v)
                    .collect()
            })
            .collect();
        assert_eq!(
            traceparents,
            [
                vec![&HeaderValue::String(XRAY.into())],
                vec![&HeaderValue::String(ITEM.into())]
            ]
        );
    }

    #[tokio::test]
    async fn a_nack_in_the_middle_reports_that_record_and_nothing_after() {
        let records = inserts(6);
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::Ack, Reply::Ack, Reply::Nack]);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["4"]);
        assert_eq!(report.failure.as_ref().unwrap().error, PublishError::Nacked);
        assert_eq!((report.published, report.failed), (3, 3));
        // The nack was seen before record 5 was sent: nothing after it went out.
        assert_eq!(broker.published.len(), 4);
    }

    #[tokio::test]
    async fn a_returned_message_is_a_failure() {
        let records = inserts(3);
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::Return]);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
        assert!(matches!(
            report.failure.unwrap().error,
            PublishError::Returned { code: 312, .. }
        ));
    }

    #[tokio::test]
    async fn a_return_carried_by_an_earlier_confirm_fails_the_record_it_names() {
        let records = inserts(8);
        let mut replies = vec![Reply::Ack; 8];
        replies[1] = Reply::AckCarrying { owner: 3, after: 4 };
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["4"]);
        assert!(matches!(
            report.failure.unwrap().error,
            PublishError::Returned { code: 312, .. }
        ));
        assert_eq!(report.published, 3);
        // Nothing was sent once the return was seen.
        assert!(broker.published.len() < 8, "{}", broker.published.len());
    }

    #[tokio::test]
    async fn a_return_carried_by_a_later_confirm_fails_the_earlier_record_it_names() {
        // Record 2's own confirm is an ack; its return comes with record 5's.
        let records = inserts(6);
        let mut replies = vec![Reply::Ack; 6];
        replies[4] = Reply::AckCarrying { owner: 1, after: 5 };
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
        assert_eq!(report.published, 1);
    }

    #[tokio::test]
    async fn returns_swapped_between_two_confirms_fail_the_earlier_record() {
        // One multiple-ack completes records 3 to 7 in any order: the return
        // of record 6 comes with record 3's confirm, and record 3's own
        // return with record 7's, after record 6 in the queue.
        let records = inserts(8);
        let mut replies = vec![Reply::Ack; 8];
        replies[2] = Reply::AckCarrying { owner: 5, after: 7 };
        replies[6] = Reply::AckCarrying { owner: 2, after: 7 };
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["3"]);
        assert_eq!(report.published, 2);
    }

    #[tokio::test]
    async fn a_return_naming_no_record_fails_the_earliest_unconfirmed_one() {
        let records = inserts(5);
        let mut replies = vec![Reply::Ack; 5];
        replies[2] = Reply::AckCarryingStranger;
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["3"]);
        assert_eq!(report.published, 2);
    }

    #[tokio::test]
    async fn a_nack_after_a_record_whose_return_is_still_to_come_reports_the_nack() {
        // Record 4 is nacked before the return naming record 5 is seen: the
        // earlier of the two decides.
        let records = inserts(6);
        let mut replies = vec![Reply::Ack; 6];
        replies[3] = Reply::Nack;
        replies[5] = Reply::AckCarrying { owner: 4, after: 6 };
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["4"]);
        assert_eq!(report.failure.unwrap().error, PublishError::Nacked);
    }

    #[tokio::test]
    async fn a_confirm_that_never_comes_times_out_and_is_reported() {
        let records = inserts(4);
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::Silent, Reply::Ack, Reply::Ack]);
        let started = Instant::now();
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
        assert_eq!(report.failure.unwrap().error, PublishError::ConfirmTimeout);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_earliest_failure_wins_over_a_later_one() {
        // Record 2's confirm is silent while record 4's write fails: the
        // checkpoint must stop at 2, not 4.
        let records = inserts(5);
        let mut broker = FakeBroker::new(vec![
            Reply::Ack,
            Reply::Silent,
            Reply::Ack,
            Reply::WriteFails(PublishError::WriteTimeout),
        ]);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
    }

    #[tokio::test]
    async fn past_the_deadline_margin_nothing_is_published_and_the_first_record_is_reported() {
        let records = inserts(3);
        let mut broker = FakeBroker::new(vec![]);
        let tight = Deadlines::new(
            Instant::now() + Duration::from_millis(500),
            Duration::from_secs(1),
        );
        let report = forward(
            &mut broker,
            &converter(),
            &NoEnricher,
            &raw(&records),
            Invocation::new(Utc::now(), tight),
            options(),
        )
        .await;
        assert_eq!(reported(&records, &report), ["1"]);
        assert_eq!(report.failure.unwrap().error, PublishError::Deadline);
        assert!(broker.published.is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_broker_reports_the_first_record() {
        let records = inserts(3);
        let mut broker = FakeBroker::new(vec![]);
        broker.ready_error = Some(PublishError::Unreachable("refused".into()));
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["1"]);
        assert_eq!((report.published, report.failed), (0, 3));
    }

    #[tokio::test]
    async fn when_every_record_fails_the_first_is_reported() {
        let records = inserts(3);
        let mut broker = FakeBroker::new(vec![Reply::Nack; 3]);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["1"]);
        assert_eq!(report.failed, 3);
    }

    #[tokio::test]
    async fn skipped_records_need_no_broker_and_count_as_handled() {
        let records: Vec<_> = inserts(3).into_iter().map(modify).collect();
        let mut broker = FakeBroker::new(vec![]);
        broker.ready_error = Some(PublishError::Unreachable("down".into()));
        let report = run(&mut broker, &records).await;
        assert!(reported(&records, &report).is_empty());
        assert_eq!(report.skipped, 3);
        assert_eq!(broker.ready_calls, 0);

        // Leading skips are handled, so the first record to publish is reported.
        let mut records = records;
        records.extend(inserts(2).into_iter().skip(1));
        records[3].change.sequence_number = Some("4".into());
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["4"]);
        assert_eq!(report.skipped, 3);
    }

    #[tokio::test]
    async fn a_poison_record_is_dead_lettered_and_the_batch_goes_on() {
        let mut records = inserts(3);
        records[1] = poison(records[1].clone());
        let mut broker = FakeBroker::new(vec![]);
        let report = run(&mut broker, &records).await;
        assert!(reported(&records, &report).is_empty());
        assert_eq!((report.published, report.dead_lettered), (2, 1));
        assert_eq!(broker.published[1].exchange, "product.events.dead-letter");
        assert_eq!(report.dead_letter_reasons.len(), 1);
    }

    #[tokio::test]
    async fn an_unconfirmed_dead_letter_is_a_failure_too() {
        let mut records = inserts(3);
        records[1] = poison(records[1].clone());
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::Nack]);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
        assert_eq!(report.dead_lettered, 0);
    }

    #[tokio::test]
    async fn a_lost_channel_is_reopened_once_and_publishing_resumes_in_order() {
        let records = inserts(4);
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::LostInFlight, Reply::Ack]);
        let report = run(&mut broker, &records).await;
        assert!(reported(&records, &report).is_empty());
        assert_eq!(report.published, 4);
        assert_eq!(report.reconnects, 2, "the first connect and one reconnect");
        assert_eq!(broker.resets, 1);
        // Record 2 was lost in flight and is sent again on the new channel,
        // then 3 and 4: first deliveries stay in stream order.
        let ids = broker.published_ids();
        assert_eq!(ids.len(), 5);
        assert_eq!(ids[1], ids[2]);
        let mut first_deliveries = ids.clone();
        first_deliveries.dedup();
        assert_eq!(first_deliveries.len(), 4);
    }

    #[tokio::test]
    async fn a_second_channel_loss_is_reported() {
        let records = inserts(3);
        let lost = || Reply::WriteFails(PublishError::ChannelLost("reset".into()));
        let mut broker = FakeBroker::new(vec![Reply::Ack, lost(), lost()]);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
        assert!(report.failure.unwrap().error.is_channel_lost());
    }

    #[test]
    fn a_failed_record_without_a_sequence_number_is_reported_through_an_earlier_one() {
        let mut records = inserts(3);
        records[2].change.sequence_number = None;
        let report = BatchReport::new(
            &[Outcome::Published, Outcome::Published, Outcome::Pending],
            Some(Failure {
                index: 2,
                error: PublishError::Nacked,
            }),
            0,
        );
        assert_eq!(reported(&records, &report), ["2"]);
        records[1].change.sequence_number = Some(String::new());
        assert_eq!(reported(&records, &report), ["1"]);
        records[0].change.sequence_number = None;
        assert_eq!(response(&raw(&records), &report), Err(NoSequenceNumber(2)));
    }

    #[test]
    fn counts_stop_at_the_checkpoint() {
        let outcomes = [
            Outcome::Published,
            Outcome::Skipped,
            Outcome::DeadLettered,
            Outcome::Pending,
            Outcome::Published,
        ];
        let report = BatchReport::new(
            &outcomes,
            Some(Failure {
                index: 3,
                error: PublishError::Nacked,
            }),
            0,
        );
        assert_eq!(
            (
                report.published,
                report.skipped,
                report.dead_lettered,
                report.failed
            ),
            (1, 1, 1, 2)
        );
    }
}
