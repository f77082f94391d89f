//! The engine behind [`super::forward`]: records are planned and published
//! in stream order on one channel, their confirms awaited in the window
//! (`window`). What the broker would refuse on every attempt (a body over
//! its limit, an exchange it will not declare) is dead-lettered instead, so
//! no record stalls its shard; after a refusal or a lost channel the batch
//! resumes from the first record not confirmed.

use std::{collections::HashMap, task::Poll, time::Instant};

use chrono::{DateTime, Utc};

use super::enrichment::{self, Enriched};
use super::window::Window;
use super::{BatchOptions, BatchReport, Failure, Invocation, Outcome, RecordText, Refusal};
use crate::enrich::Enricher;
use crate::mapping::{Converter, Draft, Plan, Planned};
use crate::publisher::{Broker, Message, PublishError, Reset};

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

    /// `report` with what was noted about the records before its
    /// checkpoint: what comes after it is noted again when redelivered.
    fn into_report(mut self, mut report: BatchReport, records: usize) -> BatchReport {
        let settled = report.failure.as_ref().map_or(records, |f| f.index);
        self.truncate(settled);
        report.dead_letter_reasons = self.dead_letter_reasons;
        report.skip_reasons = self.skip_reasons;
        report.dropped = self.dropped;
        report.oldest_record = self.oldest;
        report
    }
}

/// What the broker refused for good during one batch.
struct Refused {
    /// Records to dead-letter instead of publishing, with the broker's
    /// reply.
    records: HashMap<usize, String>,
    /// Exchanges of a template the broker refused to declare, with its
    /// reply: later events for them are dead-lettered without asking again.
    exchanges: HashMap<String, String>,
    /// The largest body the broker takes: `MAX_MESSAGE_BYTES`, or less once
    /// the broker refused a smaller message.
    limit: usize,
}

/// Forwards one batch: plans, publishes and confirms records in order, and
/// reports the first one that was not handled. Each event passes through
/// `enricher` between mapping and publishing. Runs until the batch is done
/// or stops at a failure it cannot resume after.
pub async fn forward<B: Broker, E: Enricher, R: RecordText>(
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
    // What the broker refused for good in this batch: records, exchanges,
    // and its own limit on a body when it is below MAX_MESSAGE_BYTES.
    let mut refused = Refused {
        records: HashMap::new(),
        exchanges: HashMap::new(),
        limit: converter.config().max_message_bytes,
    };
    let failure = loop {
        let run = Run {
            broker: &mut *broker,
            converter,
            enricher,
            enrichment: &mut enrichment,
            invocation,
            options,
            window: Window::new(options.confirm_timeout, deadlines.answer_by),
            refused: &mut refused,
            outcomes: &mut outcomes,
            reconnects: &mut reconnects,
            notes: &mut notes,
        };
        let failure = run.pass(start, records).await;
        let resume = failure.as_ref().and_then(|f| {
            resume_at(
                broker,
                f,
                &mut refused,
                &mut reconnects_left,
                deadlines.publish_until,
            )
        });
        let Some(index) = resume else {
            break failure;
        };
        // Planned again from there: what was noted or settled after it
        // is no longer known.
        outcomes[index..].fill(Outcome::Pending);
        notes.truncate(index);
        start = index;
    };
    if let Some(f) = &failure {
        // Confirms of the failed batch may still be pending; a fresh channel
        // (or connection, after a timeout) keeps them from piling up.
        broker.reset(f.reset_scope());
    }
    broker.idle();
    notes.into_report(
        BatchReport::new(&outcomes, failure, reconnects),
        records.len(),
    )
}

/// The record to resume from after `failure`, on a new channel, or `None`
/// when the batch stops there.
fn resume_at<B: Broker>(
    broker: &mut B,
    failure: &Failure,
    refused: &mut Refused,
    reconnects_left: &mut u32,
    publish_until: Instant,
) -> Option<usize> {
    match failure {
        // A message the broker will never take: dead-letter it and go on
        // on a new channel from the first record not confirmed. Each
        // refusal names a record not refused before, so this ends.
        Failure {
            index,
            refusal: Some(r),
            ..
        } if r.index >= *index && !refused.records.contains_key(&r.index) => {
            tracing::warn!(index = r.index, reason = %r.reason, "the broker refused a record; dead-lettering it");
            broker.reset(Reset::Channel);
            refused.limit = refused.limit.min(r.limit);
            refused.records.insert(r.index, r.reason.clone());
            Some(*index)
        }
        f if f.error.is_channel_lost()
            && *reconnects_left > 0
            && Instant::now() < publish_until =>
        {
            // Resume from the first unconfirmed record on a new channel:
            // the order of first deliveries is kept, at the cost of
            // duplicates of what was in flight.
            tracing::warn!(error = %f.error, index = f.index, "channel lost mid-batch; reopening");
            broker.reset(Reset::Channel);
            *reconnects_left -= 1;
            Some(f.index)
        }
        _ => None,
    }
}

/// Awaits `future`; when it has to wait (an enricher's lookup), what the
/// broker queued is written meanwhile instead of after it: a publish waits
/// for its confirm from the moment it was queued.
async fn written_while<B: Broker, F: Future>(broker: &B, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    if let Poll::Ready(out) = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
    {
        return out;
    }
    broker.flush();
    future.await
}

/// One pass over the batch on one channel, from a given record on. Its
/// confirm window starts empty; what the batch has learnt (`refused`,
/// `outcomes`, `notes`) is borrowed from [`forward`] and outlives it.
struct Run<'b, 'o, B, E: Enricher> {
    broker: &'b mut B,
    converter: &'o Converter,
    enricher: &'o E,
    /// The enricher's state for this invocation.
    enrichment: &'o mut E::Batch,
    invocation: Invocation<'o>,
    options: BatchOptions,
    window: Window,
    refused: &'o mut Refused,
    outcomes: &'o mut [Outcome],
    reconnects: &'o mut u32,
    notes: &'o mut Notes,
}

impl<B: Broker, E: Enricher> Run<'_, '_, B, E> {
    /// Runs the pass: what its window confirmed is written to the batch's
    /// outcomes, whether or not it ends in a failure (the report counts
    /// only what lies before the failure).
    async fn pass<R: RecordText>(mut self, start: usize, records: &[R]) -> Option<Failure> {
        let failure = self.publish_from(start, records).await;
        for confirmed in self.window.into_confirmed() {
            self.outcomes[confirmed.index] = confirmed.outcome;
        }
        failure
    }

    /// Publishes the records from `start` on, in order, and waits for what
    /// is in flight: the first record not handled, if any.
    async fn publish_from<R: RecordText>(
        &mut self,
        start: usize,
        records: &[R],
    ) -> Option<Failure> {
        let mut ready = false;
        let deadlines = self.invocation.deadlines;
        for (index, record) in records.iter().enumerate().skip(start) {
            if let Err(f) = self.window.settle_arrived().await {
                return Some(f);
            }
            if self.window.saw_return() {
                // A record in flight was returned: nothing more is sent, and
                // the confirms before it decide where the batch stops.
                return self.window.drain(&*self.broker).await.err();
            }
            if Instant::now() >= deadlines.publish_until {
                return Some(self.fail_at(index, PublishError::Deadline).await);
            }
            if let Err(f) = self.publish_record(index, record.text(), &mut ready).await {
                return Some(f);
            }
        }
        match self.window.drain(&*self.broker).await {
            Err(f) => Some(f),
            // Unreachable: a return names a record in flight or the one that
            // carried it, and draining reaches both.
            Ok(()) => self.window.take_return(),
        }
    }

    /// A failure at `index`, unless an earlier record in flight failed first.
    async fn fail_at(&mut self, index: usize, error: PublishError) -> Failure {
        self.window.fail_at(&*self.broker, index, error).await
    }

    /// Plans one record, shapes its message and publishes it (or notes it
    /// skipped).
    async fn publish_record(
        &mut self,
        index: usize,
        raw: &str,
        ready: &mut bool,
    ) -> Result<(), Failure> {
        let Planned {
            plan,
            created,
            dropped,
        } = self.converter.plan_raw(raw, self.invocation.now);
        if let Some(t) = created {
            let oldest = &mut self.notes.oldest;
            *oldest = Some(oldest.map_or(t, |o: DateTime<Utc>| o.min(t)));
        }
        // A record the broker refused earlier in this batch.
        if let Some(reason) = self.refused.records.get(&index) {
            let reason = crate::mapping::capped(reason.clone());
            let message = self
                .converter
                .dead_letter_within(raw, &reason, self.refused.limit);
            self.notes.dead_letter_reasons.push((index, reason));
            return self
                .send(index, message, Outcome::DeadLettered, ready)
                .await;
        }
        if let Some(why) = dropped {
            self.notes.dropped.push((index, why));
        }
        let Some((message, outcome)) = self.message_for(index, plan).await? else {
            return Ok(());
        };
        let (mut message, mut outcome) = self.within_limits(index, message, outcome, raw);
        if outcome == Outcome::Published && self.broker.needs_declare(&message.exchange) {
            self.declare(index, &mut message, &mut outcome, raw, ready)
                .await?;
        }
        self.send(index, message, outcome, ready).await
    }

    /// The message a plan makes, through the enricher, or `None` when the
    /// record is skipped (its outcome set here).
    async fn message_for(
        &mut self,
        index: usize,
        plan: Plan<Draft<'_>>,
    ) -> Result<Option<(Message, Outcome)>, Failure> {
        Ok(Some(match plan {
            Plan::Skip(_) => {
                self.outcomes[index] = Outcome::Skipped;
                return Ok(None);
            }
            Plan::Publish(draft) => {
                let enriching =
                    enrichment::enrich(self.enricher, self.enrichment, draft, self.invocation);
                match written_while(&*self.broker, enriching).await {
                    Enriched::Publish(m) => (m, Outcome::Published),
                    Enriched::Skip(reason) => {
                        self.notes.skip_reasons.push((index, reason));
                        self.outcomes[index] = Outcome::Skipped;
                        return Ok(None);
                    }
                    Enriched::DeadLetter(message, reason) => {
                        self.notes.dead_letter_reasons.push((index, reason));
                        (message, Outcome::DeadLettered)
                    }
                    Enriched::Failed(e) => return Err(self.fail_at(index, e).await),
                }
            }
            Plan::DeadLetter { message, reason } => {
                self.notes.dead_letter_reasons.push((index, reason));
                (message, Outcome::DeadLettered)
            }
        }))
    }

    /// What the broker would refuse on every attempt is dead-lettered: no
    /// record stalls its shard (CONTRACT §6.9). A dead letter is made to fit
    /// the broker's own limit.
    fn within_limits(
        &mut self,
        index: usize,
        mut message: Message,
        mut outcome: Outcome,
        raw: &str,
    ) -> (Message, Outcome) {
        let limit = self.refused.limit;
        let refusal = match outcome {
            Outcome::Published if message.body.len() > limit => Some(crate::mapping::too_large(
                message.body.len(),
                limit,
                self.converter.config().max_message_bytes,
            )),
            Outcome::Published => self.refused.exchanges.get(&message.exchange).cloned(),
            _ => None,
        };
        if let Some(reason) = refusal {
            let reason = crate::mapping::capped(reason);
            message = self.converter.dead_letter_within(raw, &reason, limit);
            self.notes.dead_letter_reasons.push((index, reason));
            outcome = Outcome::DeadLettered;
        } else if outcome == Outcome::DeadLettered && message.body.len() > limit {
            // A dead letter made for MAX_MESSAGE_BYTES, for a broker
            // that takes less; its reason is the one just noted.
            let reason = self
                .notes
                .dead_letter_reasons
                .last()
                .map(|(_, r)| r.clone())
                .unwrap_or_default();
            message = self.converter.dead_letter_within(raw, &reason, limit);
        }
        (message, outcome)
    }

    /// Publishes one message (after making sure a channel is ready), its
    /// confirm awaited later.
    async fn send(
        &mut self,
        index: usize,
        message: Message,
        outcome: Outcome,
        ready: &mut bool,
    ) -> Result<(), Failure> {
        let deadlines = self.invocation.deadlines;
        if !*ready {
            match self.broker.ensure_ready(deadlines.publish_until).await {
                Ok(reconnected) => *self.reconnects += u32::from(reconnected),
                Err(e) => return Err(self.fail_at(index, e).await),
            }
            *ready = true;
        }
        while self.window.len() >= self.options.max_in_flight.max(1) {
            self.window.settle_oldest(&*self.broker).await?;
        }
        let cut_off = deadlines.publish_until;
        let writing = Instant::now();
        let until = (writing + self.options.confirm_timeout).min(cut_off);
        // The broker takes the message; the window keeps its id (returns
        // name it) and its size (a refusal over size names that).
        let size = message.body.len();
        let message_id = message.properties.message_id.clone();
        match self.broker.publish(message, until).await {
            Ok(confirm) => {
                self.window.push(index, outcome, message_id, size, confirm);
                Ok(())
            }
            Err(e) => Err(self.write_failed(index, e, size, writing, until).await),
        }
    }

    /// The failure of a write that did not go through: `body_len` is its
    /// body's length, `writing` when it began, `until` its bound.
    async fn write_failed(
        &mut self,
        index: usize,
        error: PublishError,
        body_len: usize,
        writing: Instant,
        until: Instant,
    ) -> Failure {
        let cut_off = self.invocation.deadlines.publish_until;
        match error {
            // The write did not finish because the invocation's cut-off came,
            // not because the broker took longer than a confirm may: the
            // deadline. It says nothing against the connection, unless the
            // write waited a second with nothing heard from the broker.
            PublishError::WriteTimeout if until >= cut_off => {
                let silent = self.window.silent_since(writing);
                let mut failure = self.fail_at(index, PublishError::Deadline).await;
                failure.silent |= silent && failure.index == index;
                failure
            }
            // The broker closed the channel over this very message, before
            // its write was done: it is refused, not the channel lost.
            PublishError::TooLarge { size, limit, text } if size == body_len => {
                let error = PublishError::TooLarge {
                    size,
                    limit,
                    text: text.clone(),
                };
                let mut failure = self.fail_at(index, error).await;
                if failure.refusal.is_none() && failure.index <= index {
                    failure.refusal = Some(Refusal {
                        index,
                        reason: format!("the broker refused the message: {text}"),
                        limit,
                    });
                }
                failure
            }
            e => self.fail_at(index, e).await,
        }
    }

    /// Declares the exchange of a templated `EXCHANGE` on its first use,
    /// once what is in flight is confirmed: a refusal closes the channel and
    /// would lose their confirms. An exchange the broker refuses for good
    /// dead-letters the event with the broker's reply, and is remembered for
    /// the rest of the batch.
    async fn declare(
        &mut self,
        index: usize,
        message: &mut Message,
        outcome: &mut Outcome,
        raw: &str,
        ready: &mut bool,
    ) -> Result<(), Failure> {
        self.window.drain(&*self.broker).await?;
        if !*ready {
            // The declaration needs a channel; `send` would open one anyway.
            match self
                .broker
                .ensure_ready(self.invocation.deadlines.publish_until)
                .await
            {
                Ok(reconnected) => *self.reconnects += u32::from(reconnected),
                Err(e) => return Err(self.window.fail(index, e)),
            }
            *ready = true;
        }
        let cut_off = self.invocation.deadlines.publish_until;
        let until = (Instant::now() + self.options.confirm_timeout).min(cut_off);
        match self.broker.declare(&message.exchange, until).await {
            Ok(()) => Ok(()),
            Err(PublishError::Refused(reply)) => {
                // The refusal closed the channel: the dead letter goes out
                // on a new one.
                self.broker.reset(Reset::Channel);
                *ready = false;
                let reason = crate::mapping::capped(format!("the broker refused {reply}"));
                self.refused
                    .exchanges
                    .insert(message.exchange.clone(), reason.clone());
                *message = self
                    .converter
                    .dead_letter_within(raw, &reason, self.refused.limit);
                self.notes.dead_letter_reasons.push((index, reason));
                *outcome = Outcome::DeadLettered;
                Ok(())
            }
            // A declaration cut off by the invocation's cut-off.
            Err(PublishError::ChannelLost(_)) if until >= cut_off && Instant::now() >= cut_off => {
                Err(self.window.fail(index, PublishError::Deadline))
            }
            Err(e) => Err(self.window.fail(index, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_dynamo::AttributeValue;

    use super::*;
    use crate::batch::Deadlines;
    use crate::batch::fake::*;
    use crate::config::MappingConfig;
    use crate::enrich::NoEnricher;
    use crate::publisher::HeaderValue;

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
    async fn past_the_deadline_margin_nothing_is_published_and_the_first_record_is_reported() {
        let records = inserts(3);
        let mut broker = FakeBroker::new(vec![]);
        let tight = Deadlines::new(
            Instant::now() + Duration::from_millis(500),
            Duration::from_secs(1),
        );
        let report = run_with(&mut broker, &records, &converter(), tight, options()).await;
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

    #[tokio::test]
    async fn a_write_cut_off_by_the_deadline_is_a_deadline_and_keeps_the_connection() {
        let records = inserts(3);
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::WriteHangs]);
        let tight = Deadlines::new(
            Instant::now() + Duration::from_millis(1300),
            Duration::from_secs(1),
        );
        let report = run_with(
            &mut broker,
            &records,
            &converter(),
            tight,
            BatchOptions::new(Duration::from_secs(5)),
        )
        .await;
        assert_eq!(reported(&records, &report), ["2"]);
        assert_eq!(report.failure.unwrap().error, PublishError::Deadline);
        assert_eq!(broker.scopes, [Reset::Channel]);

        // A write that outlasts the confirm timeout is the broker's: the
        // socket may be dead.
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::WriteHangs]);
        let report = run(&mut broker, &records).await;
        assert_eq!(report.failure.unwrap().error, PublishError::WriteTimeout);
        assert_eq!(broker.scopes, [Reset::Connection]);
    }

    #[tokio::test]
    async fn an_event_larger_than_max_message_bytes_is_dead_lettered_within_it_and_the_batch_goes_on()
     {
        let mut records = inserts(4);
        with_blob(&mut records[1], 6000);
        let mut config = MappingConfig::new("product.events");
        config.max_message_bytes = 4096;
        let mut broker = FakeBroker::new(vec![]);
        let report = run_mapped(&mut broker, &records, config).await;
        assert!(reported(&records, &report).is_empty());
        assert_eq!((report.published, report.dead_lettered), (3, 1));
        let dead = &broker.published[1];
        assert_eq!(dead.exchange, "product.events.dead-letter");
        assert!(dead.body.len() <= 4096, "{}", dead.body.len());
        let reason = &report.dead_letter_reasons[0].1;
        assert!(
            reason.starts_with("the event is 6") && reason.contains("over the 4096 bytes"),
            "{reason}"
        );
        let body: serde_json::Value = serde_json::from_slice(&dead.body).unwrap();
        assert_eq!(body["truncated"], true);
        assert_eq!(body["dynamodb"]["SequenceNumber"], "2");
        assert!(body["dynamodb"].get("NewImage").is_none());
        let original = raw(&records)[1].get().len() as u64;
        assert!(
            dead.properties
                .headers
                .contains(&("x-original-size", HeaderValue::Int(original)))
        );
        // Nothing was published twice.
        let mut ids = broker.published_ids();
        ids.dedup();
        assert_eq!(ids.len(), 4);
    }

    #[tokio::test]
    async fn a_message_the_broker_closes_the_channel_over_is_dead_lettered_and_nothing_confirmed_is_sent_again()
     {
        // Record 3 is larger than the others, and than the broker takes.
        let mut records = inserts(5);
        with_blob(&mut records[2], 3000);
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::Ack, Reply::CloseTooLarge]);
        let report = run(&mut broker, &records).await;
        assert!(reported(&records, &report).is_empty(), "{report:?}");
        assert_eq!((report.published, report.dead_lettered), (4, 1));
        let reason = &report.dead_letter_reasons[0];
        assert_eq!(reason.0, 2);
        assert!(
            reason.1.contains("406 PRECONDITION_FAILED - message size"),
            "{}",
            reason.1
        );
        // 1, 2, the refused 3, its dead letter (within the broker's own
        // limit), 4, 5: the confirmed records went out once.
        assert_eq!(
            broker.exchanges(),
            [
                "product.events",
                "product.events",
                "product.events",
                "product.events.dead-letter",
                "product.events",
                "product.events"
            ]
        );
        assert!(broker.published[3].body.len() < broker.published[2].body.len());
        assert_eq!(broker.scopes, [Reset::Channel]);
    }

    #[tokio::test]
    async fn an_exchange_the_broker_refuses_dead_letters_its_events_and_the_batch_goes_on() {
        let mut records = inserts(4);
        let types = ["Product", "Order", "Product", "Order"];
        for (r, t) in records.iter_mut().zip(types) {
            r.change
                .new_image
                .insert("aggregateType".into(), AttributeValue::S(t.into()));
        }
        let mut config = MappingConfig::new("unused");
        config.exchange = crate::config::Exchange::PerEvent(
            crate::routing::RoutingTemplate::parse("{aggregateType}.events").unwrap(),
        );
        config.dead_letter_exchange = "shop.dead-letter".into();
        let mut broker = FakeBroker::new(vec![]);
        broker.declarable = true;
        broker.refuses = vec!["order.events".into()];
        let report = run_mapped(&mut broker, &records, config).await;
        assert!(reported(&records, &report).is_empty(), "{report:?}");
        assert_eq!((report.published, report.dead_lettered), (2, 2));
        assert_eq!(
            broker.exchanges(),
            [
                "product.events",
                "shop.dead-letter",
                "product.events",
                "shop.dead-letter"
            ]
        );
        for (_, reason) in &report.dead_letter_reasons {
            assert!(
                reason.starts_with("the broker refused exchange 'order.events': 406"),
                "{reason}"
            );
        }
        // Asked once: the refusal is remembered for the batch.
        assert_eq!(broker.declared, ["product.events"]);
    }
}
