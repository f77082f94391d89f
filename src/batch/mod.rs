//! The checkpoint rule (CONTRACT §6): records in, outcomes and the partial
//! batch response out.
//!
//! Lambda checkpoints at the lowest reported sequence number, so only the
//! first record that is not handled matters: handled is skipped, or
//! published or dead-lettered *and confirmed*. That record is reported,
//! every record from it on is redelivered, and nothing after it is
//! published once it is known to have failed. [`BatchReport`] counts only
//! what lies before it; [`response`] names it.
//!
//! The rule is here and pure; the engine behind [`forward`] is beside it:
//! - `run`: publishes in stream order on one channel, dead-letters what the
//!   broker would refuse on every attempt, resumes after a refusal or a lost
//!   channel;
//! - `enrichment`: the enricher's step between mapping and publishing;
//! - `window`: the confirm window: confirms awaited after publishing, not
//!   one round trip per record, and returns charged to the record they name;
//! - `options`: deadlines and the loop's settings.

use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::publisher::{PublishError, Reset};
use crate::record;

mod enrichment;
mod options;
mod run;
mod window;

#[cfg(test)]
mod fake;

pub use options::{BatchOptions, Deadlines};
pub use run::forward;

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not handled (yet): from the first such record on, the batch is retried.
    Pending,
    /// Not an event for consumers: handled without publishing.
    Skipped,
    /// Published and confirmed.
    Published,
    /// Sent to the dead-letter exchange and confirmed.
    DeadLettered,
}

/// The first record that was not handled, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The record's place in the batch.
    pub index: usize,
    /// Why it was not confirmed.
    pub error: PublishError,
    /// A record at or after `index` the broker refused for good (a message
    /// over its size limit): it is dead-lettered when the batch resumes.
    pub refusal: Option<Refusal>,
    /// A confirm was awaited until the deadline with no sign of life from
    /// the broker: the socket may be dead, so the connection is dropped too.
    pub silent: bool,
}

impl Failure {
    /// The failure of record `index`.
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

/// The result of one batch, for the response, the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// Records in the batch.
    pub records: usize,
    /// Records published and confirmed before the first failure.
    pub published: usize,
    /// Records skipped before the first failure.
    pub skipped: usize,
    /// Records dead-lettered (and confirmed) before the first failure.
    pub dead_lettered: usize,
    /// Records from the first failure on: all of them will be redelivered.
    pub failed: usize,
    /// The first record not handled: it and every record after it are
    /// reported and redelivered.
    pub failure: Option<Failure>,
    /// Connections or channels opened again during the batch.
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
    /// Counts only the records before the failure: every record from it on
    /// is redelivered, whatever became of it in this invocation.
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

/// A record's JSON text as a batch holds it: a slice of the invocation's
/// body in the Lambda binary (`handler::parse_batch`), checked when the record is
/// read; a raw value of its own in tests and tools.
pub trait RecordText {
    /// The record's JSON text.
    fn text(&self) -> &str;
}

impl RecordText for &str {
    fn text(&self) -> &str {
        self
    }
}

impl RecordText for &RawValue {
    fn text(&self) -> &str {
        self.get()
    }
}

impl RecordText for Box<RawValue> {
    fn text(&self) -> &str {
        self.get()
    }
}

/// The sequence number of a record given as JSON text, if it has one.
pub fn sequence_number(raw: &str) -> Option<String> {
    record::Identity::read(raw)
        .sequence_number
        .filter(|s| !s.is_empty())
}

/// The partial batch response: empty, or exactly the first failed record.
///
/// A failed record without a sequence number (never seen from a real
/// stream) is reported through the nearest earlier record that has one:
/// that only redelivers more, never less.
pub fn response<R: RecordText>(
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
            .find_map(|r| sequence_number(r.text()))
            .ok_or(NoSequenceNumber(failure.index))?;
        let mut item = DynamoDbBatchItemFailure::default();
        item.item_identifier = Some(seq);
        response.batch_item_failures.push(item);
    }
    Ok(response)
}

/// What an invocation brings besides its records.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    /// Stands in for a missing ApproximateCreationDateTime.
    pub now: DateTime<Utc>,
    /// When publishing stops and when the answer is due.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::fake::*;

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
    async fn when_every_record_fails_the_first_is_reported() {
        let records = inserts(3);
        let mut broker = FakeBroker::new(vec![Reply::Nack; 3]);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["1"]);
        assert_eq!(report.failed, 3);
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
}
