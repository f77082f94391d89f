//! The rules of Lambda's event source mapping for a DynamoDB stream, as the
//! operations tool applies them locally (CONTRACT §8): which checkpoint a
//! partial batch response gives, how a failed batch is retried, bisected
//! and finally given up on, the OnFailure message that records it, and
//! which records `FilterCriteria` lets through ([`filter`]).
//!
//! Pure but for the [`Invoker`] port, so the rules are tested here with
//! fakes; the tool plugs in the Lambda Invoke API and the stream reader.

pub mod filter;

use std::{future::Future, ops::ControlFlow, ops::Range, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json, value::RawValue};

/// The event source mapping's settings, with the defaults of
/// `template.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// `BatchSize`: records per invocation, 1 to 10,000.
    pub batch_size: usize,
    /// `MaximumBatchingWindowInSeconds`: how long to wait to fill a batch.
    pub batching_window: Duration,
    /// `FunctionResponseTypes: [ReportBatchItemFailures]`.
    pub report_batch_item_failures: bool,
    /// `BisectBatchOnFunctionError`.
    pub bisect_on_function_error: bool,
    /// `MaximumRetryAttempts`; `None` is -1 (until the records expire).
    pub max_retries: Option<u32>,
    /// `MaximumRecordAgeInSeconds`; `None` is -1 (the stream's 24 h).
    pub max_record_age: Option<Duration>,
    /// Stop at the first records given up on, instead of moving on past
    /// them as Lambda's mapping does: a redrive or a backfill must not
    /// deliver an aggregate's later events without its earlier ones.
    pub stop_on_give_up: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            batch_size: 500,
            batching_window: Duration::ZERO,
            report_batch_item_failures: true,
            bisect_on_function_error: true,
            max_retries: Some(10_000),
            max_record_age: Some(Duration::from_secs(21_600)),
            stop_on_give_up: false,
        }
    }
}

/// One stream record waiting to be delivered: its place in the shard and
/// its JSON as Lambda delivers it.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its `SequenceNumber`.
    pub sequence_number: String,
    /// ApproximateCreationDateTime.
    pub created: Option<DateTime<Utc>>,
    /// The record as Lambda sends it.
    pub record: Box<RawValue>,
}

/// A stream record as `GetRecords` returns it, its images already in
/// DynamoDB JSON (`{"S": "..."}`).
#[derive(Debug, Clone, Default)]
pub struct StreamRecord {
    /// `eventID`.
    pub event_id: String,
    /// `eventName`: INSERT, MODIFY or REMOVE.
    pub event_name: String,
    /// `eventVersion`.
    pub event_version: String,
    /// `awsRegion`.
    pub aws_region: String,
    /// ApproximateCreationDateTime, in epoch seconds.
    pub created: Option<f64>,
    /// `Keys`.
    pub keys: Option<Value>,
    /// `NewImage`, when the stream view has it.
    pub new_image: Option<Value>,
    /// `OldImage`, when the stream view has it.
    pub old_image: Option<Value>,
    /// `SequenceNumber`.
    pub sequence_number: String,
    /// `SizeBytes`.
    pub size_bytes: Option<i64>,
    /// `StreamViewType`.
    pub stream_view_type: Option<String>,
    /// `(type, principalId)`: set on deletions made by TTL.
    pub user_identity: Option<(String, String)>,
    /// Made by a backfill from the table, not read from the stream: its
    /// `eventSource` says so ([`crate::record::BACKFILL_SOURCE`]).
    pub backfill: bool,
}

impl StreamRecord {
    /// The record as Lambda delivers it, with the fields and types of AWS's
    /// events: `eventSourceARN` added (GetRecords has none), and
    /// `ApproximateCreationDateTime` in epoch seconds as a JSON float
    /// (`1428537600.0`), as Lambda sends it (recorded against AWS in
    /// LocalStack's `test_dynamodb_event_filter`; AWS's sample events show
    /// an integer, which a numeric filter and most decoders read alike).
    pub fn to_lambda_value(&self, stream_arn: &str) -> Value {
        let mut dynamodb = serde_json::Map::new();
        if let Some(t) = self.created {
            dynamodb.insert("ApproximateCreationDateTime".into(), json!(t));
        }
        for (name, image) in [
            ("Keys", &self.keys),
            ("NewImage", &self.new_image),
            ("OldImage", &self.old_image),
        ] {
            if let Some(image) = image {
                dynamodb.insert(name.into(), image.clone());
            }
        }
        dynamodb.insert("SequenceNumber".into(), json!(self.sequence_number));
        if let Some(size) = self.size_bytes {
            dynamodb.insert("SizeBytes".into(), json!(size));
        }
        if let Some(view) = &self.stream_view_type {
            dynamodb.insert("StreamViewType".into(), json!(view));
        }
        let mut record = json!({
            "eventID": self.event_id,
            "eventName": self.event_name,
            "eventVersion": self.event_version,
            "eventSource": if self.backfill {
                crate::record::BACKFILL_SOURCE
            } else {
                "aws:dynamodb"
            },
            "awsRegion": self.aws_region,
            "dynamodb": dynamodb,
            "eventSourceARN": stream_arn,
        });
        if let Some((kind, principal)) = &self.user_identity {
            record["userIdentity"] = json!({"type": kind, "principalId": principal});
        }
        record
    }

    /// [`Self::to_lambda_value`], ready to be sent.
    pub fn to_lambda(&self, stream_arn: &str) -> Pending {
        self.pending(&self.to_lambda_value(stream_arn))
    }

    /// The record waiting to be delivered, given its JSON as Lambda
    /// delivers it (from [`Self::to_lambda_value`]).
    pub fn pending(&self, record: &Value) -> Pending {
        Pending {
            sequence_number: self.sequence_number.clone(),
            created: self
                .created
                .and_then(|t| DateTime::from_timestamp_millis((t * 1000.0).round() as i64)),
            // A Value always serializes.
            record: serde_json::value::to_raw_value(record)
                .unwrap_or_else(|_| RawValue::NULL.to_owned()),
        }
    }
}

/// The Invoke API's limit on a synchronous request's payload.
pub const MAX_EVENT_BYTES: usize = 6 * 1024 * 1024;

/// How many of `records` the next batch takes: at most `max_records`, and
/// no more than fit one invocation event of `max_bytes` (a single larger
/// record still goes alone: the Invoke API refuses it and the mapping gives
/// up on it, as Lambda's would).
fn batch_len<'a>(
    records: impl Iterator<Item = &'a Pending>,
    max_records: usize,
    max_bytes: usize,
) -> usize {
    let mut size = 14;
    let mut n = 0;
    for r in records.take(max_records.max(1)) {
        size += r.record.get().len() + 1;
        if n > 0 && size > max_bytes {
            break;
        }
        n += 1;
    }
    n
}

/// The invocation event of `records`: `{"Records":[...]}`, the records'
/// JSON text copied as it is, and the queue a backfill targets, if any
/// (`"target":{"queue":...}`).
pub fn event(records: &[Pending], target: Option<&str>) -> Vec<u8> {
    let len = records
        .iter()
        .map(|r| r.record.get().len() + 1)
        .sum::<usize>();
    let mut out = Vec::with_capacity(len + 14);
    out.extend_from_slice(b"{\"Records\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r.record.get().as_bytes());
    }
    out.push(b']');
    if let Some(queue) = target {
        out.extend_from_slice(b",\"target\":{\"queue\":");
        out.extend_from_slice(json!(queue).to_string().as_bytes());
        out.push(b'}');
    }
    out.push(b'}');
    out
}

/// What one invocation came back with.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The function returned this response.
    Response(Value),
    /// The function ran and failed: it threw, crashed or timed out.
    FunctionError {
        /// The OnFailure message's `functionError`: `Unhandled` (what Lambda
        /// reports for a thrown error and for a timeout alike), or the
        /// `X-Amz-Function-Error` the endpoint sent.
        error: String,
        /// The error document's `errorMessage`, when there is one.
        message: String,
        /// The HTTP status of the Invoke call.
        status: u16,
    },
}

/// Why an invocation was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The function did not run: throttled (429), a service error, the
    /// function being updated (409), its network interface or key not
    /// ready, or the endpoint out of reach. Lambda retries these without
    /// counting an attempt, until the records grow older than the age limit.
    #[error("the function was not invoked: {0}")]
    NotInvoked(String),
    /// The Invoke API refused the call (no such function, no permission):
    /// retrying cannot help, so delivery stops.
    #[error("the Invoke API refused the call: {0}")]
    Refused(String),
}

/// Invokes the function with one event, synchronously: the answer comes
/// back before the next invocation is made.
pub trait Invoker {
    /// Invokes the function with `event` and waits for its answer.
    fn invoke(&mut self, event: Vec<u8>) -> impl Future<Output = Result<Answer, InvokeError>>;

    /// The request id and executed version of the last invocation, for the
    /// OnFailure message.
    fn last_request(&self) -> (&str, &str) {
        ("", "$LATEST")
    }
}

/// Where a response leaves the checkpoint of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// Every record is done.
    All,
    /// The records before this index are done; it is retried from there.
    Before(usize),
    /// The response reports a failure Lambda cannot place: the whole batch
    /// failed.
    Whole,
}

/// The checkpoint a partial batch response gives (AWS: "Lambda
/// checkpoints at the lowest sequence number reported").
///
/// A success: `null`, `{}`, `[]` (recorded against AWS: LocalStack's
/// snapshot `test_dynamodb_report_batch_item_success_scenarios`), and a
/// `batchItemFailures` that is `null` or `[]`. A whole-batch failure: an
/// identifier that is empty, null, not a string or missing (recorded too:
/// `test_dynamodb_report_batch_item_failure_scenarios`). Not known, so kept
/// conservative (the whole batch fails): an identifier that names no record
/// of the batch, and any other response that is not an object.
pub fn checkpoint(response: &Value, sequence_numbers: &[&str]) -> Checkpoint {
    let failures = match response {
        Value::Null => return Checkpoint::All,
        Value::Array(a) if a.is_empty() => return Checkpoint::All,
        Value::Object(o) => match o.get("batchItemFailures") {
            None | Some(Value::Null) => return Checkpoint::All,
            Some(Value::Array(a)) if a.is_empty() => return Checkpoint::All,
            Some(Value::Array(a)) => a,
            Some(_) => return Checkpoint::Whole,
        },
        Value::String(s) if s.is_empty() => return Checkpoint::All,
        _ => return Checkpoint::Whole,
    };
    let mut lowest: Option<usize> = None;
    for failure in failures {
        let position = failure
            .get("itemIdentifier")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .and_then(|id| sequence_numbers.iter().position(|s| *s == id));
        match position {
            None => return Checkpoint::Whole,
            Some(p) => lowest = Some(lowest.map_or(p, |l| l.min(p))),
        }
    }
    lowest.map_or(Checkpoint::All, Checkpoint::Before)
}

/// Why records were given up on (the OnFailure message's `condition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// MaximumRetryAttempts was reached.
    RetryAttemptsExhausted,
    /// The records grew older than MaximumRecordAgeInSeconds.
    RecordAgeExceeded,
}

impl Condition {
    /// The name Lambda writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::RetryAttemptsExhausted => "RetryAttemptsExhausted",
            Condition::RecordAgeExceeded => "RecordAgeExceeded",
        }
    }
}

/// Records of a batch the mapping gave up on, for the OnFailure queue.
#[derive(Debug, Clone, PartialEq)]
pub struct GivenUp {
    /// Their indexes in the batch.
    pub range: Range<usize>,
    /// Why.
    pub condition: Condition,
    /// Invocations that carried them since the checkpoint last moved
    /// (`approximateInvokeCount`).
    pub invocations: u32,
    /// The last answer's HTTP status (200 when there was none).
    pub status: u16,
    /// The last answer's function error: `None` for a reported failure (or
    /// no answer), which the OnFailure message writes as `null`.
    pub function_error: Option<String>,
}

/// What delivering one batch took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    /// Invocations made.
    pub invocations: u32,
    /// Invocations whose response reported a failed record.
    pub partial: u32,
    /// Invocations that ended in a function error.
    pub function_errors: u32,
    /// Times a failed batch was split in two.
    pub bisects: u32,
    /// Invocations that were not made (throttles, service errors, the
    /// network): retried without counting an attempt.
    pub not_invoked: u32,
    /// Records given up on.
    pub given_up: Vec<GivenUp>,
    /// Set when delivery was stopped: records from this index on were
    /// neither delivered nor given up on.
    pub stopped_at: Option<usize>,
    /// Why the Invoke API refused the call, when it did (delivery stopped).
    pub refused: Option<String>,
    /// Set when delivery stopped because the function could not be invoked
    /// for longer than [`Pace::not_invoked_limit`]: for how long, and the
    /// last reason.
    pub not_invoked_for: Option<String>,
}

impl Delivery {
    /// Records given up on.
    pub fn given_up_records(&self) -> usize {
        self.given_up.iter().map(|g| g.range.len()).sum()
    }
}

/// How the mapping waits between retries, and when it stops.
pub struct Pace<'a> {
    /// Before a retry of a failed batch.
    pub retry_delay: Duration,
    /// The clock records' ages are measured by.
    pub now: &'a dyn Fn() -> DateTime<Utc>,
    /// Asked before every invocation: `true` stops the delivery there.
    pub stop: &'a dyn Fn() -> bool,
    /// The queue a backfill sends to, instead of the exchange.
    pub target: Option<&'a str>,
    /// How long the function may go without being invoked (throttled, a
    /// service error, the endpoint out of reach) before delivery stops
    /// there, measured by `now`; `None`: until the records are too old, as
    /// Lambda's mapping does. An invocation not made uses no retry attempt,
    /// so without an age limit this is the only bound.
    pub not_invoked_limit: Option<Duration>,
}

/// A part of the batch still to deliver.
#[derive(Debug, Clone)]
struct Part {
    range: Range<usize>,
    /// Retries used since the checkpoint last moved.
    retries: u32,
    /// Invocations that carried it since the checkpoint last moved.
    invocations: u32,
    /// The last answer for it: HTTP status and function error.
    last: (u16, Option<String>),
    /// It failed, or could not be invoked, last time: wait before the next.
    wait: bool,
}

impl Part {
    fn new(range: Range<usize>) -> Self {
        Self {
            range,
            retries: 0,
            invocations: 0,
            last: (200, None),
            wait: false,
        }
    }

    fn give_up(&self, range: Range<usize>, condition: Condition) -> GivenUp {
        GivenUp {
            range,
            condition,
            invocations: self.invocations,
            status: self.last.0,
            function_error: self.last.1.clone(),
        }
    }
}

/// Delivers one batch by Lambda's rules: records in order; a partial
/// response resumes at the reported record; a function error splits the
/// batch in two (when bisect is on), each half delivered on its own; records
/// that run out of retries or grow older than the age limit are given up
/// on, their range recorded for the OnFailure queue, so that the shard
/// moves on.
///
/// Retries are counted as AWS counts them: splitting a batch uses none
/// (AWS docs, "Splitting a batch does not count towards the retry quota"),
/// an invocation that was not made uses none, and whenever the checkpoint
/// moves (records delivered or given up on) the records after it start a
/// fresh budget. The last rule is inferred from AWS's recordings, not
/// documented: in LocalStack's `test_dynamodb_report_batch_item_failures`
/// (BatchSize 3, MaximumRetryAttempts 3) a record reported in every batch
/// was invoked 1 + 4 times and given up with `approximateInvokeCount` 4.
pub async fn deliver<I: Invoker>(
    invoker: &mut I,
    batch: &[Pending],
    rules: &Rules,
    pace: &Pace<'_>,
) -> Delivery {
    let mut delivering = Delivering {
        batch,
        rules,
        pace,
        delivery: Delivery::default(),
        parts: vec![Part::new(0..batch.len())],
        not_invoked_since: None,
    };
    while let Some(part) = delivering.parts.pop() {
        if delivering.step(invoker, part).await.is_break() {
            break;
        }
    }
    delivering.delivery
}

/// One batch being delivered by [`deliver`].
struct Delivering<'a> {
    batch: &'a [Pending],
    rules: &'a Rules,
    pace: &'a Pace<'a>,
    delivery: Delivery,
    /// Parts still to deliver, popped from the end: in stream order.
    parts: Vec<Part>,
    /// When the invocations not made in a row began.
    not_invoked_since: Option<DateTime<Utc>>,
}

impl Delivering<'_> {
    /// Delivers `part` once, and leaves in `parts` what is still to
    /// deliver of it. `Break` when delivery stops (`stopped_at` is set).
    async fn step<I: Invoker>(&mut self, invoker: &mut I, part: Part) -> ControlFlow<()> {
        let mut part = self.drop_expired(part)?;
        if part.range.is_empty() {
            fresh_budget(&mut self.parts);
            return ControlFlow::Continue(());
        }
        if (self.pace.stop)() {
            self.delivery.stopped_at = Some(part.range.start);
            return ControlFlow::Break(());
        }
        if part.wait {
            tokio::time::sleep(self.pace.retry_delay).await;
        }
        let answer = match invoker
            .invoke(event(&self.batch[part.range.clone()], self.pace.target))
            .await
        {
            Ok(answer) => answer,
            Err(InvokeError::Refused(reason)) => {
                self.delivery.stopped_at = Some(part.range.start);
                self.delivery.refused = Some(reason);
                return ControlFlow::Break(());
            }
            Err(InvokeError::NotInvoked(reason)) => {
                // Not an attempt: the same part again, after the age check,
                // unless the function has been out of reach too long.
                self.delivery.not_invoked += 1;
                if let Some(why) = self.out_of_reach_too_long(&reason) {
                    self.delivery.stopped_at = Some(part.range.start);
                    self.delivery.not_invoked_for = Some(why);
                    return ControlFlow::Break(());
                }
                tracing::warn!(%reason, "the function was not invoked; retrying");
                part.wait = true;
                self.parts.push(part);
                return ControlFlow::Continue(());
            }
        };
        self.not_invoked_since = None;
        self.delivery.invocations += 1;
        part.invocations += 1;
        match self.failed_from(&part, &answer) {
            None => {
                fresh_budget(&mut self.parts);
                ControlFlow::Continue(())
            }
            Some(from) => self.after_failure(part, &answer, from),
        }
    }

    /// After a call that did not reach the function: why delivery stops,
    /// when the calls in a row have failed for longer than the limit.
    fn out_of_reach_too_long(&mut self, reason: &str) -> Option<String> {
        let limit = self.pace.not_invoked_limit?;
        let now = (self.pace.now)();
        let since = *self.not_invoked_since.get_or_insert(now);
        let out_of_reach = (now - since).to_std().unwrap_or_default();
        (out_of_reach >= limit).then(|| {
            format!(
                "not invoked for {} s (the limit is {} s), {} attempt(s): {reason}",
                out_of_reach.as_secs(),
                limit.as_secs(),
                self.delivery.not_invoked
            )
        })
    }

    /// Gives up on the records at the head of `part` that are older than
    /// the age limit; the rest of it is delivered.
    fn drop_expired(&mut self, part: Part) -> ControlFlow<(), Part> {
        let Some(age) = self.rules.max_record_age else {
            return ControlFlow::Continue(part);
        };
        let now = (self.pace.now)();
        let expired = self.batch[part.range.clone()]
            .iter()
            .take_while(|r| {
                r.created
                    .is_some_and(|c| (now - c).to_std().is_ok_and(|a| a > age))
            })
            .count();
        if expired == 0 {
            return ControlFlow::Continue(part);
        }
        let start = part.range.start;
        self.delivery
            .given_up
            .push(part.give_up(start..start + expired, Condition::RecordAgeExceeded));
        if self.rules.stop_on_give_up {
            self.delivery.stopped_at = Some(start);
            return ControlFlow::Break(());
        }
        let mut rest = Part::new(start + expired..part.range.end);
        rest.wait = part.wait;
        ControlFlow::Continue(rest)
    }

    /// The first record of `part` that `answer` did not handle, if any.
    fn failed_from(&mut self, part: &Part, answer: &Answer) -> Option<usize> {
        match answer {
            Answer::Response(_) if !self.rules.report_batch_item_failures => None,
            Answer::Response(response) => {
                let seqs: Vec<&str> = self.batch[part.range.clone()]
                    .iter()
                    .map(|r| r.sequence_number.as_str())
                    .collect();
                match checkpoint(response, &seqs) {
                    Checkpoint::All => None,
                    Checkpoint::Before(i) => {
                        self.delivery.partial += 1;
                        Some(part.range.start + i)
                    }
                    Checkpoint::Whole => {
                        self.delivery.partial += 1;
                        Some(part.range.start)
                    }
                }
            }
            Answer::FunctionError { .. } => {
                self.delivery.function_errors += 1;
                Some(part.range.start)
            }
        }
    }

    /// What follows a failure from record `from` of `part`: the rest resumes
    /// there, or the part is split, given up on or retried.
    fn after_failure(&mut self, mut part: Part, answer: &Answer, from: usize) -> ControlFlow<()> {
        part.last = match answer {
            Answer::FunctionError { error, status, .. } => (*status, Some(error.clone())),
            Answer::Response(_) => (200, None),
        };
        part.wait = true;
        if from > part.range.start {
            // The checkpoint moved: the rest starts a fresh budget.
            let mut rest = Part::new(from..part.range.end);
            rest.last = part.last;
            rest.wait = true;
            self.parts.push(rest);
            return ControlFlow::Continue(());
        }
        let bisect = matches!(answer, Answer::FunctionError { .. })
            && self.rules.bisect_on_function_error
            && part.range.len() > 1;
        if bisect {
            // A split is not a retry: both halves keep the budget as it is.
            self.delivery.bisects += 1;
            let middle = part.range.start + part.range.len() / 2;
            let mut second = part.clone();
            second.range = middle..part.range.end;
            part.range.end = middle;
            self.parts.push(second);
            self.parts.push(part);
            return ControlFlow::Continue(());
        }
        if self
            .rules
            .max_retries
            .is_some_and(|max| part.retries >= max)
        {
            let start = part.range.start;
            self.delivery
                .given_up
                .push(part.give_up(part.range.clone(), Condition::RetryAttemptsExhausted));
            if self.rules.stop_on_give_up {
                self.delivery.stopped_at = Some(start);
                return ControlFlow::Break(());
            }
            fresh_budget(&mut self.parts);
            return ControlFlow::Continue(());
        }
        part.retries += 1;
        self.parts.push(part);
        ControlFlow::Continue(())
    }
}

/// The checkpoint moved up to the next part still to deliver: it starts a
/// fresh retry budget.
fn fresh_budget(parts: &mut [Part]) {
    if let Some(next) = parts.last_mut() {
        next.retries = 0;
        next.invocations = 0;
    }
}

/// Delivers `records` in batches of at most `rules.batch_size` records and
/// `max_bytes` of event, one after the other, by [`deliver`]'s rules. With
/// `stop_on_give_up` it stops at the first records given up on
/// (`stopped_at`); the counts add up over every batch.
pub async fn deliver_all<I: Invoker>(
    invoker: &mut I,
    records: &[Pending],
    rules: &Rules,
    pace: &Pace<'_>,
    max_bytes: usize,
) -> Delivery {
    let mut total = Delivery::default();
    let mut start = 0;
    while start < records.len() {
        let n = batch_len(records[start..].iter(), rules.batch_size, max_bytes);
        let batch = &records[start..start + n];
        let d = deliver(invoker, batch, rules, pace).await;
        total.invocations += d.invocations;
        total.partial += d.partial;
        total.function_errors += d.function_errors;
        total.bisects += d.bisects;
        total.not_invoked += d.not_invoked;
        total.given_up.extend(d.given_up.into_iter().map(|mut g| {
            g.range = g.range.start + start..g.range.end + start;
            g
        }));
        if let Some(at) = d.stopped_at {
            total.stopped_at = Some(start + at);
            total.refused = d.refused;
            total.not_invoked_for = d.not_invoked_for;
            return total;
        }
        start += n;
    }
    total
}

/// Where the given-up records were, for their OnFailure message.
pub struct ShardContext<'a> {
    /// The shard.
    pub shard_id: &'a str,
    /// The stream's ARN.
    pub stream_arn: &'a str,
    /// The function's ARN.
    pub function_arn: &'a str,
    /// The last invocation's request id.
    pub request_id: &'a str,
    /// The version that ran (`X-Amz-Executed-Version`), `$LATEST` by default.
    pub executed_version: &'a str,
}

/// The OnFailure message for records given up on, in the format Lambda
/// sends to an SQS destination: the position of the records, not the
/// records themselves. `functionError` is always there: `null` for a
/// reported failure, `"Unhandled"` for a thrown or timed-out invocation, as
/// recorded against AWS (LocalStack's snapshots
/// `test_dynamodb_report_batch_item_failures` and
/// `test_dynamodb_report_batch_item_failure_scenarios`).
pub fn on_failure_message(
    given_up: &GivenUp,
    batch: &[Pending],
    at: &ShardContext<'_>,
    now: DateTime<Utc>,
) -> Value {
    let records = &batch[given_up.range.clone()];
    let arrival = |r: Option<&Pending>| {
        r.and_then(|r| r.created)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
    };
    json!({
        "requestContext": {
            "requestId": at.request_id,
            "functionArn": at.function_arn,
            "condition": given_up.condition.as_str(),
            "approximateInvokeCount": given_up.invocations,
        },
        "responseContext": {
            "statusCode": given_up.status,
            "executedVersion": at.executed_version,
            "functionError": given_up.function_error,
        },
        "version": "1.0",
        "timestamp": now.to_rfc3339_opts(SecondsFormat::Millis, true),
        "DDBStreamBatchInfo": {
            "shardId": at.shard_id,
            "startSequenceNumber": records.first().map(|r| r.sequence_number.as_str()),
            "endSequenceNumber": records.last().map(|r| r.sequence_number.as_str()),
            "approximateArrivalOfFirstRecord": arrival(records.first()),
            "approximateArrivalOfLastRecord": arrival(records.last()),
            "batchSize": records.len(),
            "streamArn": at.stream_arn,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn pending(n: usize) -> Vec<Pending> {
        (0..n)
            .map(|i| Pending {
                sequence_number: format!("{}", 100 + i),
                created: DateTime::from_timestamp(1_795_348_800 + i as i64, 0),
                record: serde_json::value::to_raw_value(&json!({
                    "eventID": format!("e{i}"),
                    "dynamodb": {"SequenceNumber": format!("{}", 100 + i)}
                }))
                .unwrap(),
            })
            .collect()
    }

    /// How the fake answers one invocation, given its sequence numbers.
    type Script = Box<dyn Fn(&[String]) -> Result<Answer, InvokeError>>;

    /// Answers invocations from a script (then as `otherwise` does, a
    /// success by default); records what it was sent.
    struct Scripted {
        answers: Vec<Script>,
        otherwise: Script,
        sent: RefCell<Vec<Vec<String>>>,
    }

    impl Scripted {
        fn new(answers: Vec<Script>) -> Self {
            Self {
                answers,
                otherwise: ok(),
                sent: RefCell::default(),
            }
        }

        /// Answers every invocation as `answer` does.
        fn always(answer: Script) -> Self {
            Self {
                otherwise: answer,
                ..Self::new(vec![])
            }
        }

        /// The invocations that carried the record `seq`.
        fn carrying(&self, seq: &str) -> usize {
            self.sent
                .borrow()
                .iter()
                .filter(|s| s.iter().any(|x| x == seq))
                .count()
        }
    }

    impl Invoker for Scripted {
        async fn invoke(&mut self, event: Vec<u8>) -> Result<Answer, InvokeError> {
            let event: Value = serde_json::from_slice(&event).unwrap();
            let seqs: Vec<String> = event["Records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["dynamodb"]["SequenceNumber"].as_str().unwrap().to_owned())
                .collect();
            let n = self.sent.borrow().len();
            self.sent.borrow_mut().push(seqs.clone());
            match self.answers.get(n) {
                Some(answer) => answer(&seqs),
                None => (self.otherwise)(&seqs),
            }
        }
    }

    fn ok() -> Script {
        Box::new(|_| Ok(Answer::Response(json!({"batchItemFailures": []}))))
    }

    fn fails_at(k: usize) -> Script {
        Box::new(move |seqs| {
            Ok(Answer::Response(
                json!({"batchItemFailures": [{"itemIdentifier": seqs[k]}]}),
            ))
        })
    }

    fn function_error() -> Script {
        Box::new(|_| {
            Ok(Answer::FunctionError {
                error: "Unhandled".into(),
                message: String::new(),
                status: 200,
            })
        })
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_348_900, 0).unwrap()
    }

    async fn run(invoker: &mut Scripted, batch: &[Pending], rules: &Rules) -> Delivery {
        let pace = Pace {
            retry_delay: Duration::ZERO,
            now: &now,
            stop: &|| false,
            target: None,
            not_invoked_limit: None,
        };
        deliver(invoker, batch, rules, &pace).await
    }

    #[test]
    fn the_checkpoint_is_the_lowest_reported_record() {
        let seqs = ["7", "8", "9", "10"];
        let failures = |ids: Value| json!({ "batchItemFailures": ids });
        for success in [
            json!(null),
            json!({}),
            json!([]),
            json!(""),
            failures(json!(null)),
            failures(json!([])),
        ] {
            assert_eq!(checkpoint(&success, &seqs), Checkpoint::All, "{success}");
        }
        assert_eq!(
            checkpoint(&failures(json!([{"itemIdentifier": "9"}])), &seqs),
            Checkpoint::Before(2)
        );
        assert_eq!(
            checkpoint(
                &failures(json!([{"itemIdentifier": "10"}, {"itemIdentifier": "8"}])),
                &seqs
            ),
            Checkpoint::Before(1)
        );
        for whole in [
            failures(json!([{"itemIdentifier": ""}])),
            failures(json!([{"itemIdentifier": null}])),
            failures(json!([{"itemIdentifier": "11"}])),
            failures(json!([{"id": "8"}])),
            failures(json!("8")),
            json!([1]),
        ] {
            assert_eq!(checkpoint(&whole, &seqs), Checkpoint::Whole, "{whole}");
        }
    }

    #[tokio::test]
    async fn a_partial_response_resumes_at_the_reported_record() {
        let batch = pending(5);
        let mut invoker = Scripted::new(vec![fails_at(2), ok()]);
        let d = run(&mut invoker, &batch, &Rules::default()).await;
        assert!(d.given_up.is_empty());
        assert_eq!((d.invocations, d.partial), (2, 1));
        assert_eq!(invoker.sent.borrow()[1], ["102", "103", "104"]);
    }

    #[tokio::test]
    async fn an_unplaceable_failure_retries_the_whole_batch() {
        let batch = pending(3);
        let null: Script = Box::new(|_| {
            Ok(Answer::Response(
                json!({"batchItemFailures": [{"itemIdentifier": null}]}),
            ))
        });
        let mut invoker = Scripted::new(vec![null, ok()]);
        let d = run(&mut invoker, &batch, &Rules::default()).await;
        assert_eq!(invoker.sent.borrow()[1], ["100", "101", "102"]);
        assert_eq!(d.bisects, 0, "a response is not a function error");
    }

    #[tokio::test]
    async fn a_function_error_is_bisected_and_each_half_retried_in_order() {
        let batch = pending(6);
        // The whole batch fails, then its first half fails again; the
        // quarters and the second half go through.
        let mut invoker = Scripted::new(vec![function_error(), function_error()]);
        let d = run(&mut invoker, &batch, &Rules::default()).await;
        assert!(d.given_up.is_empty());
        assert_eq!(d.bisects, 2);
        let sent = invoker.sent.borrow();
        assert_eq!(sent[0].len(), 6);
        assert_eq!(sent[1], ["100", "101", "102"]);
        assert_eq!(sent[2], ["100"]);
        assert_eq!(sent[3], ["101", "102"]);
        assert_eq!(sent[4], ["103", "104", "105"]);
    }

    #[tokio::test]
    async fn without_bisect_a_function_error_retries_the_whole_batch() {
        let batch = pending(4);
        let rules = Rules {
            bisect_on_function_error: false,
            ..Rules::default()
        };
        let mut invoker = Scripted::new(vec![function_error()]);
        run(&mut invoker, &batch, &rules).await;
        assert_eq!(invoker.sent.borrow()[1].len(), 4);
    }

    #[tokio::test]
    async fn records_that_run_out_of_retries_are_given_up_on_once() {
        let batch = pending(3);
        let rules = Rules {
            max_retries: Some(2),
            ..Rules::default()
        };
        // The first record fails every time: 1 invocation + 2 retries.
        let mut invoker = Scripted::always(fails_at(0));
        let d = run(&mut invoker, &batch, &rules).await;
        assert_eq!(d.invocations, 3);
        assert_eq!(
            d.given_up,
            [GivenUp {
                range: 0..3,
                condition: Condition::RetryAttemptsExhausted,
                invocations: 3,
                status: 200,
                function_error: None,
            }]
        );
    }

    #[tokio::test]
    async fn a_partial_response_that_moves_the_checkpoint_starts_a_fresh_retry_budget() {
        // AWS's recording (LocalStack's test_dynamodb_report_batch_item_failures):
        // BatchSize 3, MaximumRetryAttempts 3, six records, the sixth
        // reported in every batch that carries it.
        let records = pending(6);
        let rules = Rules {
            batch_size: 3,
            max_retries: Some(3),
            ..Rules::default()
        };
        let mut invoker = Scripted::always(Box::new(|seqs| {
            let failures: Vec<Value> = seqs
                .iter()
                .filter(|s| *s == "105")
                .map(|s| json!({"itemIdentifier": s}))
                .collect();
            Ok(Answer::Response(json!({ "batchItemFailures": failures })))
        }));
        let pace = Pace {
            retry_delay: Duration::ZERO,
            now: &now,
            stop: &|| false,
            target: None,
            not_invoked_limit: None,
        };
        let d = deliver_all(&mut invoker, &records, &rules, &pace, MAX_EVENT_BYTES).await;
        assert_eq!(invoker.carrying("105"), 5, "{:?}", invoker.sent.borrow());
        assert_eq!(
            d.given_up,
            [GivenUp {
                range: 5..6,
                condition: Condition::RetryAttemptsExhausted,
                invocations: 4,
                status: 200,
                function_error: None,
            }]
        );
        assert_eq!(invoker.carrying("104"), 1, "delivered once");
    }

    #[tokio::test]
    async fn splitting_a_batch_uses_no_retry_attempts() {
        // With no retries at all, a poison record is still isolated down to
        // a batch of one: the records around it get through.
        let batch = pending(4);
        let rules = Rules {
            max_retries: Some(0),
            ..Rules::default()
        };
        let mut invoker = Scripted::always(Box::new(|seqs| {
            if seqs.iter().any(|s| s == "102") {
                function_error()(seqs)
            } else {
                ok()(seqs)
            }
        }));
        let d = run(&mut invoker, &batch, &rules).await;
        assert_eq!(
            *invoker.sent.borrow(),
            [
                vec!["100", "101", "102", "103"],
                vec!["100", "101"],
                vec!["102", "103"],
                vec!["102"],
                vec!["103"],
            ]
        );
        assert_eq!(
            d.given_up,
            [GivenUp {
                range: 2..3,
                condition: Condition::RetryAttemptsExhausted,
                // Since 100-101 went through: [102, 103], then [102].
                invocations: 2,
                status: 200,
                function_error: Some("Unhandled".into()),
            }]
        );
        assert_eq!(d.bisects, 2);
    }

    #[tokio::test]
    async fn an_empty_list_response_is_a_success() {
        let batch = pending(3);
        let empty: Script = Box::new(|_| Ok(Answer::Response(json!([]))));
        let mut invoker = Scripted::always(empty);
        let d = run(&mut invoker, &batch, &Rules::default()).await;
        assert_eq!((d.invocations, d.partial), (1, 0));
        assert!(d.given_up.is_empty());
    }

    #[tokio::test]
    async fn records_older_than_the_age_limit_are_given_up_on_without_an_invocation() {
        let batch = pending(4);
        let rules = Rules {
            // now() is 100 s after the first record: the first two are older
            // than 98 s.
            max_record_age: Some(Duration::from_secs(98)),
            ..Rules::default()
        };
        let mut invoker = Scripted::new(vec![]);
        let d = run(&mut invoker, &batch, &rules).await;
        assert_eq!(d.given_up[0].range, 0..2);
        assert_eq!(d.given_up[0].condition, Condition::RecordAgeExceeded);
        assert_eq!(invoker.sent.borrow()[0], ["102", "103"]);
    }

    #[tokio::test]
    async fn an_invocation_not_made_is_retried_without_counting() {
        let batch = pending(2);
        let rules = Rules {
            max_retries: Some(0),
            ..Rules::default()
        };
        let down: Script = Box::new(|_| Err(InvokeError::NotInvoked("429: throttled".into())));
        let mut invoker = Scripted::new(vec![down, ok()]);
        let d = run(&mut invoker, &batch, &rules).await;
        assert!(d.given_up.is_empty());
        assert_eq!((d.not_invoked, d.invocations), (1, 1));
    }

    #[tokio::test]
    async fn records_throttled_until_too_old_are_given_up_on_for_their_age() {
        // Every call is throttled; the clock moves 20 s per look, so the
        // records (100 s old at first) pass the 160 s limit on the 4th.
        let batch = pending(3);
        let rules = Rules {
            max_retries: None,
            max_record_age: Some(Duration::from_secs(160)),
            ..Rules::default()
        };
        let throttled: Script = Box::new(|_| Err(InvokeError::NotInvoked("429".into())));
        let mut invoker = Scripted::always(throttled);
        let looks = std::cell::Cell::new(0);
        let clock = || {
            looks.set(looks.get() + 1);
            now() + chrono::TimeDelta::seconds(20 * i64::from(looks.get() - 1))
        };
        let pace = Pace {
            retry_delay: Duration::ZERO,
            now: &clock,
            stop: &|| false,
            target: None,
            not_invoked_limit: None,
        };
        let d = tokio::time::timeout(
            Duration::from_secs(5),
            deliver(&mut invoker, &batch, &rules, &pace),
        )
        .await
        .expect("gives up instead of retrying forever");
        assert_eq!(d.invocations, 0);
        assert!(d.not_invoked >= 3, "{d:?}");
        assert_eq!(d.given_up.len(), 1, "{d:?}");
        assert_eq!(d.given_up[0].range, 0..3);
        assert_eq!(d.given_up[0].condition, Condition::RecordAgeExceeded);
    }

    #[tokio::test]
    async fn a_function_out_of_reach_longer_than_the_limit_stops_the_delivery() {
        // Records with no age limit (redrive, backfill), every call
        // throttled: without a bound this retried for ever. The clock moves
        // 20 s per look: the 60 s limit is reached at the 4th attempt.
        let batch = pending(3);
        let rules = Rules {
            max_retries: Some(0),
            max_record_age: None,
            stop_on_give_up: true,
            ..Rules::default()
        };
        let throttled: Script = Box::new(|_| Err(InvokeError::NotInvoked("429".into())));
        let mut invoker = Scripted::always(throttled);
        let looks = std::cell::Cell::new(0);
        let clock = || {
            looks.set(looks.get() + 1);
            now() + chrono::TimeDelta::seconds(20 * i64::from(looks.get() - 1))
        };
        let pace = Pace {
            retry_delay: Duration::ZERO,
            now: &clock,
            stop: &|| false,
            target: None,
            not_invoked_limit: Some(Duration::from_secs(60)),
        };
        let d = tokio::time::timeout(
            Duration::from_secs(5),
            deliver_all(&mut invoker, &batch, &rules, &pace, MAX_EVENT_BYTES),
        )
        .await
        .expect("stops instead of retrying for ever");
        assert_eq!(
            (d.stopped_at, d.not_invoked, d.invocations),
            (Some(0), 4, 0)
        );
        let why = d.not_invoked_for.expect("says why");
        assert!(
            why.starts_with("not invoked for 60 s (the limit is 60 s)"),
            "{why}"
        );
        assert!(
            d.given_up.is_empty(),
            "nothing is given up: it was never tried"
        );
    }

    #[tokio::test]
    async fn a_successful_invocation_restarts_the_out_of_reach_clock() {
        // Throttled, answered (a partial response), throttled again: 60 s
        // out of reach in all, never 30 s in a row.
        let batch = pending(4);
        let rules = Rules {
            max_record_age: None,
            stop_on_give_up: true,
            ..Rules::default()
        };
        let down = || -> Script { Box::new(|_| Err(InvokeError::NotInvoked("429".into()))) };
        let mut invoker = Scripted::new(vec![down(), down(), fails_at(1), down(), down(), ok()]);
        let looks = std::cell::Cell::new(0);
        let clock = || {
            looks.set(looks.get() + 1);
            now() + chrono::TimeDelta::seconds(20 * i64::from(looks.get() - 1))
        };
        let pace = Pace {
            retry_delay: Duration::ZERO,
            now: &clock,
            stop: &|| false,
            target: None,
            not_invoked_limit: Some(Duration::from_secs(30)),
        };
        let d = deliver(&mut invoker, &batch, &rules, &pace).await;
        assert_eq!(
            (d.stopped_at, d.invocations, d.not_invoked),
            (None, 2, 4),
            "{d:?}"
        );
        assert_eq!(invoker.sent.borrow()[5], ["101", "102", "103"]);
    }

    #[tokio::test]
    async fn in_order_delivery_stops_at_the_first_records_given_up_on() {
        let records = pending(7);
        let rules = Rules {
            batch_size: 3,
            max_retries: Some(1),
            stop_on_give_up: true,
            ..Rules::default()
        };
        // Batch 1 (100-102) goes through; in batch 2 (103-105) record 104
        // fails, then twice more on its fresh budget: it and everything
        // after it stay undelivered.
        let mut invoker = Scripted::new(vec![ok(), fails_at(1), fails_at(0), fails_at(0)]);
        let pace = Pace {
            retry_delay: Duration::ZERO,
            now: &now,
            stop: &|| false,
            target: Some("projection"),
            not_invoked_limit: None,
        };
        let d = deliver_all(&mut invoker, &records, &rules, &pace, MAX_EVENT_BYTES).await;
        assert_eq!(d.stopped_at, Some(4));
        assert_eq!(d.given_up[0].range, 4..6);
        assert_eq!(d.invocations, 4);
        assert_eq!(invoker.sent.borrow().len(), 4, "batch 3 is never sent");
    }

    #[tokio::test]
    async fn a_refused_invocation_stops_the_delivery() {
        let batch = pending(2);
        let refused: Script = Box::new(|_| Err(InvokeError::Refused("no such function".into())));
        let mut invoker = Scripted::new(vec![refused]);
        let d = run(&mut invoker, &batch, &Rules::default()).await;
        assert_eq!(d.stopped_at, Some(0));
        assert_eq!(d.refused.as_deref(), Some("no such function"));
    }

    #[tokio::test]
    async fn a_stop_request_leaves_the_rest_undelivered() {
        let batch = pending(3);
        let mut invoker = Scripted::new(vec![]);
        let pace = Pace {
            retry_delay: Duration::ZERO,
            now: &now,
            stop: &|| true,
            target: None,
            not_invoked_limit: None,
        };
        let d = deliver(&mut invoker, &batch, &Rules::default(), &pace).await;
        assert_eq!(d.stopped_at, Some(0));
        assert!(invoker.sent.borrow().is_empty());
    }

    #[test]
    fn the_on_failure_message_has_lambdas_fields() {
        let batch = pending(5);
        let given_up = GivenUp {
            range: 1..4,
            condition: Condition::RetryAttemptsExhausted,
            invocations: 3,
            status: 200,
            function_error: Some("Unhandled".into()),
        };
        let at = ShardContext {
            shard_id: "shardId-1",
            stream_arn: "arn:aws:dynamodb:eu-west-1:1:table/t/stream/x",
            function_arn: "arn:aws:lambda:eu-west-1:1:function:f",
            request_id: "r-1",
            executed_version: "$LATEST",
        };
        let m = on_failure_message(&given_up, &batch, &at, now());
        assert_eq!(
            m,
            json!({
                "requestContext": {
                    "requestId": "r-1",
                    "functionArn": "arn:aws:lambda:eu-west-1:1:function:f",
                    "condition": "RetryAttemptsExhausted",
                    "approximateInvokeCount": 3
                },
                "responseContext": {
                    "statusCode": 200,
                    "executedVersion": "$LATEST",
                    "functionError": "Unhandled"
                },
                "version": "1.0",
                "timestamp": "2026-11-22T12:01:40.000Z",
                "DDBStreamBatchInfo": {
                    "shardId": "shardId-1",
                    "startSequenceNumber": "101",
                    "endSequenceNumber": "103",
                    "approximateArrivalOfFirstRecord": "2026-11-22T12:00:01Z",
                    "approximateArrivalOfLastRecord": "2026-11-22T12:00:03Z",
                    "batchSize": 3,
                    "streamArn": "arn:aws:dynamodb:eu-west-1:1:table/t/stream/x"
                }
            })
        );
        // A reported failure: functionError is there, and null.
        let reported = GivenUp {
            function_error: None,
            ..given_up
        };
        let m = on_failure_message(&reported, &batch, &at, now());
        assert_eq!(
            m["responseContext"],
            json!({"statusCode": 200, "executedVersion": "$LATEST", "functionError": null})
        );
        assert!(m["responseContext"].get("functionError").is_some());
    }

    #[test]
    fn approximate_creation_date_time_is_a_json_float_as_lambda_sends_it() {
        let record = StreamRecord {
            sequence_number: "5".into(),
            created: Some(1_428_537_600.0),
            ..StreamRecord::default()
        };
        let text = record.to_lambda("arn").record.get().to_owned();
        assert!(
            text.contains(r#""ApproximateCreationDateTime":1428537600.0"#),
            "{text}"
        );
    }

    #[test]
    fn a_stream_record_becomes_the_record_of_awss_sample_event() {
        let sample: Value =
            serde_json::from_str(include_str!("../events/sam-dynamodb-update.json")).unwrap();
        for expected in sample["Records"].as_array().unwrap() {
            let d = &expected["dynamodb"];
            let image = |name: &str| d.get(name).cloned();
            let record = StreamRecord {
                event_id: expected["eventID"].as_str().unwrap().into(),
                event_name: expected["eventName"].as_str().unwrap().into(),
                event_version: expected["eventVersion"].as_str().unwrap().into(),
                aws_region: expected["awsRegion"].as_str().unwrap().into(),
                created: d["ApproximateCreationDateTime"].as_f64(),
                keys: image("Keys"),
                new_image: image("NewImage"),
                old_image: image("OldImage"),
                sequence_number: d["SequenceNumber"].as_str().unwrap().into(),
                size_bytes: d["SizeBytes"].as_i64(),
                stream_view_type: d["StreamViewType"].as_str().map(str::to_owned),
                user_identity: None,
                backfill: false,
            };
            let arn = expected["eventSourceARN"].as_str().unwrap();
            let got: Value = serde_json::from_str(record.to_lambda(arn).record.get()).unwrap();
            // The sample writes the time as an integer; Lambda sends a float.
            let mut expected = expected.clone();
            let t = &mut expected["dynamodb"]["ApproximateCreationDateTime"];
            *t = json!(t.as_f64().unwrap());
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_ttl_deletion_names_dynamodb_as_its_principal() {
        let record = StreamRecord {
            event_name: "REMOVE".into(),
            sequence_number: "5".into(),
            created: Some(1_795_348_800.25),
            user_identity: Some(("Service".into(), "dynamodb.amazonaws.com".into())),
            ..StreamRecord::default()
        };
        let pending = record.to_lambda("arn");
        let got: Value = serde_json::from_str(pending.record.get()).unwrap();
        assert_eq!(
            got["userIdentity"],
            json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"})
        );
        assert_eq!(
            got["dynamodb"]["ApproximateCreationDateTime"],
            1_795_348_800.25
        );
        assert_eq!(
            pending.created,
            DateTime::from_timestamp_millis(1_795_348_800_250)
        );
    }

    #[test]
    fn a_batch_fits_the_record_count_and_the_payload_limit() {
        let records = pending(10);
        let one = records[0].record.get().len() + 1;
        assert_eq!(batch_len(records.iter(), 4, MAX_EVENT_BYTES), 4);
        let n = batch_len(records[4..].iter(), 10, 14 + 3 * one);
        assert_eq!(n, 3);
        assert!(event(&records[4..4 + n], None).len() <= 14 + 3 * one);
        // A record larger than the limit still goes, alone.
        assert_eq!(batch_len(records.iter(), 10, 1), 1);
    }

    #[test]
    fn the_event_holds_the_records_as_they_are() {
        let batch = pending(2);
        let event: Value = serde_json::from_slice(&event(&batch, None)).unwrap();
        assert_eq!(event["Records"][1]["eventID"], "e1");
        assert_eq!(
            serde_json::from_slice::<Value>(&self::event(&[], None)).unwrap(),
            json!({"Records": []})
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&self::event(&[], Some("q\"1"))).unwrap(),
            json!({"Records": [], "target": {"queue": "q\"1"}})
        );
    }
}
