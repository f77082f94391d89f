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
    collections::{HashMap, VecDeque},
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
    /// A record at or after `index` the broker refused for good (a message
    /// over its size limit): it is dead-lettered when the batch resumes.
    pub refusal: Option<Refusal>,
    /// A confirm was awaited until the deadline with no sign of life from
    /// the broker: the socket may be dead, so the connection is dropped too.
    pub silent: bool,
}

impl Failure {
    pub fn new(index: usize, error: PublishError) -> Self {
        Self {
            index,
            error,
            refusal: None,
            silent: false,
        }
    }

    /// What to reset after it: what the error says, and the connection when
    /// the broker went silent.
    pub fn reset_scope(&self) -> Reset {
        if self.silent {
            Reset::Connection
        } else {
            self.error.reset_scope()
        }
    }
}

/// A record the broker refused for good, to be dead-lettered instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub index: usize,
    /// The broker's reply, for `x-error`.
    pub reason: String,
    /// The broker's own limit on a message body.
    pub limit: usize,
}

/// A confirm that has not come after this long, while nothing else came
/// from the broker either, is more likely a dead socket than a slow broker
/// (quorum queues confirm in tens of milliseconds): when the deadline cuts
/// such a wait the connection is dropped. A new one costs a handshake; a
/// dead one kept would cost the next batch `CONNECT_TIMEOUT_MS`.
const SILENT_AFTER: Duration = Duration::from_secs(1);

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
    /// Body bytes: a channel the broker closed over a message too large
    /// names it by its size.
    size: usize,
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
    // What the broker refused for good in this batch: records, exchanges,
    // and its own limit on a body when it is below MAX_MESSAGE_BYTES.
    let mut refused = Refused {
        records: HashMap::new(),
        exchanges: HashMap::new(),
        limit: converter.config().max_message_bytes,
    };
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
            last_heard: Instant::now(),
            refused: &mut refused,
            outcomes: &mut outcomes,
            reconnects: &mut reconnects,
            notes: &mut notes,
        };
        match run.publish_from(start, records).await {
            // A message the broker will never take: dead-letter it and go on
            // on a new channel from the first record not confirmed. Each
            // refusal names a record not refused before, so this ends.
            Some(Failure {
                index,
                refusal: Some(r),
                ..
            }) if r.index >= index && !refused.records.contains_key(&r.index) => {
                tracing::warn!(index = r.index, reason = %r.reason, "the broker refused a record; dead-lettering it");
                broker.reset(Reset::Channel);
                refused.limit = refused.limit.min(r.limit);
                refused.records.insert(r.index, r.reason);
                outcomes[index..].fill(Outcome::Pending);
                notes.truncate(index);
                start = index;
            }
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
        broker.reset(f.reset_scope());
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
    /// When the broker last confirmed something on this channel.
    last_heard: Instant,
    refused: &'o mut Refused,
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
                return Some(self.fail_at(index, PublishError::Deadline).await);
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
            let raw = record.borrow().get();
            // A record the broker refused earlier in this batch.
            if let Some(reason) = self.refused.records.get(&index) {
                let reason = crate::mapping::capped(reason.clone());
                let message = self
                    .converter
                    .dead_letter_within(raw, &reason, self.refused.limit);
                self.notes.dead_letter_reasons.push((index, reason));
                match self
                    .send(index, message, Outcome::DeadLettered, &mut ready)
                    .await
                {
                    Ok(()) => continue,
                    Err(f) => return Some(f),
                }
            }
            if let Some(why) = dropped {
                self.notes.dropped.push((index, why));
            }
            let (mut message, mut outcome) = match plan {
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
                    Enriched::Failed(e) => return Some(self.fail_at(index, e).await),
                },
                Plan::DeadLetter { message, reason } => {
                    self.notes.dead_letter_reasons.push((index, reason));
                    (message, Outcome::DeadLettered)
                }
            };
            // What the broker would refuse on every attempt is
            // dead-lettered: no record stalls its shard (CONTRACT §6.9).
            let limit = self.refused.limit;
            let refusal = match outcome {
                Outcome::Published if message.body.len() > limit => {
                    Some(crate::mapping::too_large(
                        message.body.len(),
                        limit,
                        self.converter.config().max_message_bytes,
                    ))
                }
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
            if outcome == Outcome::Published && self.broker.needs_declare(&message.exchange) {
                if let Err(f) = self
                    .declare(index, &mut message, &mut outcome, raw, &mut ready)
                    .await
                {
                    return Some(f);
                }
            }
            if let Err(f) = self.send(index, message, outcome, &mut ready).await {
                return Some(f);
            }
        }
        match self.drain().await {
            Err(f) => Some(f),
            // Unreachable: a return names a record in flight or the one that
            // carried it, and draining reaches both.
            Ok(()) => self
                .returned
                .take()
                .map(|(index, error)| Failure::new(index, error)),
        }
    }

    /// Publishes one message (after making sure a channel is ready), its
    /// confirm awaited later.
    async fn send(
        &mut self,
        index: usize,
        mut message: Message,
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
        while self.in_flight.len() >= self.options.max_in_flight.max(1) {
            self.settle_oldest().await?;
        }
        let cut_off = deadlines.publish_until;
        let writing = Instant::now();
        let until = (writing + self.options.confirm_timeout).min(cut_off);
        match self.broker.publish(&message, until).await {
            Ok(confirm) => {
                self.in_flight.push_back(InFlight {
                    index,
                    outcome,
                    message_id: std::mem::take(&mut message.properties.message_id),
                    size: message.body.len(),
                    sent_at: Instant::now(),
                    confirm: Settle::Waiting(confirm),
                });
                Ok(())
            }
            // The write did not finish because the invocation's cut-off came,
            // not because the broker took longer than a confirm may: the
            // deadline. It says nothing against the connection, unless the
            // write waited a second with nothing heard from the broker.
            Err(PublishError::WriteTimeout) if until >= cut_off => {
                let silent =
                    writing.elapsed() >= SILENT_AFTER && self.last_heard.elapsed() >= SILENT_AFTER;
                let mut failure = self.fail_at(index, PublishError::Deadline).await;
                failure.silent |= silent && failure.index == index;
                Err(failure)
            }
            // The broker closed the channel over this very message, before
            // its write was done: it is refused, not the channel lost.
            Err(PublishError::TooLarge { size, limit, text }) if size == message.body.len() => {
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
                Err(failure)
            }
            Err(e) => Err(self.fail_at(index, e).await),
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
        self.drain().await?;
        if !*ready {
            // The declaration needs a channel; `send` would open one anyway.
            match self
                .broker
                .ensure_ready(self.invocation.deadlines.publish_until)
                .await
            {
                Ok(reconnected) => *self.reconnects += u32::from(reconnected),
                Err(e) => return Err(self.fail(index, e)),
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
                Err(self.fail(index, PublishError::Deadline))
            }
            Err(e) => Err(self.fail(index, e)),
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
    async fn fail_at(&mut self, index: usize, error: PublishError) -> Failure {
        match self.drain().await {
            Err(earlier) => earlier,
            Ok(()) => self.fail(index, error),
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
        let mut silent = false;
        let confirmation = match &mut front.confirm {
            Settle::Done(c) => c.clone(),
            Settle::Waiting(confirm) => {
                let answer_by = self.invocation.deadlines.answer_by;
                let until = (front.sent_at + self.options.confirm_timeout).min(answer_by);
                let heard = self.last_heard.max(front.sent_at);
                tokio::select! {
                    biased;
                    c = tokio::time::timeout_at(until.into(), confirm.as_mut()) => {
                        c.unwrap_or_else(|_| {
                            Confirmation::failed(if until >= answer_by {
                                silent = heard.elapsed() >= SILENT_AFTER;
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
        self.record_front(confirmation).map_err(|mut f| {
            f.silent = silent;
            f
        })
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
            // The broker closed the channel over a message larger than it
            // takes: every confirm pending on it fails, the culprit is the
            // earliest of them with that size.
            let culprit = match &error {
                PublishError::TooLarge { size, limit, text } => std::iter::once(&front)
                    .chain(self.in_flight.iter())
                    .find(|f| f.size == *size)
                    .map(|f| Refusal {
                        index: f.index,
                        reason: format!("the broker refused the message: {text}"),
                        limit: *limit,
                    }),
                _ => None,
            };
            let mut failure = self.fail(front.index, error);
            if failure.index == front.index {
                failure.refusal = culprit;
            }
            return Err(failure);
        }
        self.last_heard = Instant::now();
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
        self.note_return_for(returned, carrier.index, &carrier.message_id);
    }

    fn note_return_for(&mut self, returned: &Returned, carrier: usize, carrier_id: &str) {
        let named = |id: &str| returned.message_id.as_deref() == Some(id);
        let owner = self
            .confirmed
            .iter()
            .map(|(i, id)| (*i, id.as_str()))
            .chain(std::iter::once((carrier, carrier_id)))
            .chain(
                self.in_flight
                    .iter()
                    .map(|f| (f.index, f.message_id.as_str())),
            )
            .find(|(_, id)| named(id))
            .map_or(carrier, |(i, _)| i);
        if self.returned.as_ref().is_none_or(|(i, _)| owner < *i) {
            self.returned = Some((owner, returned.error()));
        }
    }

    /// The client completes the confirms of one multiple-ack in any order
    /// and may attach a return to any of them: once a return is seen, the
    /// confirms that have already arrived are looked at for more, so none
    /// naming an earlier record is missed.
    fn look_for_returns(&mut self, carrier: &InFlight) {
        for r in self.arrived_returns() {
            self.note_return(&r, carrier);
        }
    }

    /// [`Run::look_for_returns`] when the batch fails at `index`: a return
    /// naming no record is charged to it.
    fn look_for_returns_at(&mut self, index: usize) {
        for r in self.arrived_returns() {
            self.note_return_for(&r, index, "");
        }
    }

    /// The returns that came with the confirms in flight that have already
    /// arrived, taken from them.
    fn arrived_returns(&mut self) -> Vec<Returned> {
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
        found
    }

    /// The batch stops at `index`, or at an earlier record a return named.
    /// The confirms in flight that have already come are looked at for
    /// returns first: one of them may carry the return of a record counted
    /// as confirmed.
    fn fail(&mut self, index: usize, error: PublishError) -> Failure {
        self.look_for_returns_at(index);
        self.in_flight.clear();
        match self.returned.take() {
            Some((earlier, returned)) if earlier <= index => Failure::new(earlier, returned),
            _ => Failure::new(index, error),
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
        /// Nacked once `n` messages were published in all.
        NackAfter(usize),
        /// The write waits until its bound and then times out.
        WriteHangs,
        /// The broker closes the channel over this message, larger than it
        /// takes: its confirm fails naming its size.
        CloseTooLarge,
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
        /// The scope of every reset, in order.
        scopes: Vec<Reset>,
        /// Exchanges that must be declared before use (a template's), and
        /// those the broker refuses.
        declarable: bool,
        declared: Vec<String>,
        refuses: Vec<String>,
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
                scopes: Vec::new(),
                declarable: false,
                declared: Vec::new(),
                refuses: Vec::new(),
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

        async fn publish(&mut self, m: &Message, until: Instant) -> Result<Confirm, PublishError> {
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
            Some(Failure::new(2, PublishError::Nacked)),
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
        let report = BatchReport::new(&outcomes, Some(Failure::new(3, PublishError::Nacked)), 0);
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

    #[tokio::test]
    async fn a_return_that_came_with_a_confirm_in_flight_when_the_batch_fails_fails_its_record() {
        // Record 2's own confirm is an ack; its return comes with record 4's
        // confirm, which has arrived when record 3's nack ends the batch.
        let records = inserts(5);
        let mut replies = vec![Reply::Ack; 5];
        replies[2] = Reply::NackAfter(4);
        replies[3] = Reply::AckCarrying { owner: 1, after: 4 };
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
        assert!(matches!(
            report.failure.unwrap().error,
            PublishError::Returned { code: 312, .. }
        ));
        assert_eq!(report.published, 1);
    }

    #[tokio::test]
    async fn a_write_cut_off_by_the_deadline_is_a_deadline_and_keeps_the_connection() {
        let records = inserts(3);
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::WriteHangs]);
        let tight = Deadlines::new(
            Instant::now() + Duration::from_millis(1300),
            Duration::from_secs(1),
        );
        let report = forward(
            &mut broker,
            &converter(),
            &NoEnricher,
            &raw(&records),
            Invocation::new(Utc::now(), tight),
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
    async fn a_confirm_awaited_in_silence_until_the_deadline_drops_the_connection() {
        let records = inserts(2);
        let patient = BatchOptions::new(Duration::from_secs(10));
        let with = |deadline_ms: u64, margin_ms: u64| {
            Invocation::new(
                Utc::now(),
                Deadlines::new(
                    Instant::now() + Duration::from_millis(deadline_ms),
                    Duration::from_millis(margin_ms),
                ),
            )
        };
        // Nothing from the broker for 1.6 s: the socket may be dead.
        let mut broker = FakeBroker::new(vec![Reply::Silent]);
        let report = forward(
            &mut broker,
            &converter(),
            &NoEnricher,
            &raw(&records),
            with(1800, 800),
            patient,
        )
        .await;
        let failure = report.failure.unwrap();
        assert_eq!(
            (failure.index, &failure.error),
            (0, &PublishError::Deadline)
        );
        assert_eq!(broker.scopes, [Reset::Connection]);

        // Cut after 0.3 s: a slow broker as likely as a dead one; kept.
        let mut broker = FakeBroker::new(vec![Reply::Silent]);
        let report = forward(
            &mut broker,
            &converter(),
            &NoEnricher,
            &raw(&records),
            with(700, 400),
            patient,
        )
        .await;
        assert_eq!(report.failure.unwrap().error, PublishError::Deadline);
        assert_eq!(broker.scopes, [Reset::Channel]);
    }

    #[tokio::test]
    async fn an_event_larger_than_max_message_bytes_is_dead_lettered_within_it_and_the_batch_goes_on()
     {
        let mut records = inserts(4);
        records[1].change.new_image.insert(
            "payload".into(),
            AttributeValue::M(
                [("blob".to_string(), AttributeValue::S("x".repeat(6000)))]
                    .into_iter()
                    .collect(),
            ),
        );
        let mut config = MappingConfig::new("product.events");
        config.max_message_bytes = 4096;
        let mut broker = FakeBroker::new(vec![]);
        let report = forward(
            &mut broker,
            &Converter::new(config),
            &NoEnricher,
            &raw(&records),
            Invocation::new(Utc::now(), ample()),
            options(),
        )
        .await;
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
        records[2].change.new_image.insert(
            "payload".into(),
            AttributeValue::M(
                [("blob".to_string(), AttributeValue::S("x".repeat(3000)))]
                    .into_iter()
                    .collect(),
            ),
        );
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
        let report = forward(
            &mut broker,
            &Converter::new(config),
            &NoEnricher,
            &raw(&records),
            Invocation::new(Utc::now(), ample()),
            options(),
        )
        .await;
        assert!(reported(&records, &report).is_empty(), "{report:?}");
        assert_eq!((report.published, report.dead_lettered), (2, 2));
        let exchanges: Vec<&str> = broker
            .published
            .iter()
            .map(|m| m.exchange.as_str())
            .collect();
        assert_eq!(
            exchanges,
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
