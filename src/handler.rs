//! One invocation: a DynamoDB stream batch in, a partial batch response out,
//! with the summary log and the metrics document on the way.
//!
//! The broker connection is made once per execution environment. Each
//! invocation in flight borrows a broker of its own (its channel, confirm
//! window and returned messages) over that one connection: one on standard
//! Lambda, up to `AWS_LAMBDA_MAX_CONCURRENCY` on Lambda Managed Instances.

use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use aws_lambda_events::{dynamodb::EventRecord, streams::DynamoDbEventResponse};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use lambda_runtime::{LambdaInvocation, Service, tower::Layer};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Mutex;
use tracing::Level;

use crate::batch::{
    self, BatchOptions, BatchReport, Deadlines, Invocation, NoSequenceNumber, RecordText,
};
use crate::config::{BrokerAddress, Config, ReplayQueues};
use crate::enrich::{Enricher, NoEnricher};
use crate::mapping::{Converter, MAX_HEADER};
use crate::publisher::{
    Broker, PublishError,
    amqp::{AmqpBroker, AmqpSettings, Topology},
    trust::SystemRoots,
};
use crate::record;
use crate::telemetry;
use crate::trace;

/// A DynamoDB stream batch as the event source mapping sends it. The records
/// stay JSON text until the batch loop reaches them, one at a time: a large
/// batch is never held fully parsed, and a record that does not parse is
/// dead-lettered as it came instead of failing the whole batch. Anything
/// without a `Records` array is not a stream batch (an invocation error).
///
/// The Lambda binary reads records as slices of the invocation's body
/// (`StreamBatch<&RawValue>`, see `KeepBody`); tests and tools own them.
#[derive(Debug)]
pub struct StreamBatch<R = Box<RawValue>> {
    /// The stream records, in stream order.
    pub records: Vec<R>,
    /// Set by `forwarder-ops backfill --to-queue`; never by Lambda.
    pub target: Option<Target>,
}

/// Where a backfill wants its events: one queue, through the default
/// exchange, allowed only by `REPLAY_QUEUES` (`"target": {"queue": ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub queue: String,
}

/// Only a JSON object with a `Records` array: a derived `Deserialize` would
/// also take a JSON array as the struct's fields in order, so `[[...]]`
/// became a "batch" whose junk was dead-lettered instead of an invocation
/// error.
impl<'de, R: Deserialize<'de>> Deserialize<'de> for StreamBatch<R> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BatchVisitor<R>(std::marker::PhantomData<R>);

        impl<'de, R: Deserialize<'de>> serde::de::Visitor<'de> for BatchVisitor<R> {
            type Value = StreamBatch<R>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a DynamoDB stream batch (an object with a Records array)")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StreamBatch<R>, A::Error> {
                let mut records = None;
                let mut target = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "Records" {
                        if records.is_some() {
                            return Err(serde::de::Error::duplicate_field("Records"));
                        }
                        records = Some(map.next_value()?);
                    } else if key == "target" {
                        if target.is_some() {
                            return Err(serde::de::Error::duplicate_field("target"));
                        }
                        target = Some(map.next_value()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                records
                    .map(|records| StreamBatch { records, target })
                    .ok_or_else(|| serde::de::Error::missing_field("Records"))
            }
        }

        deserializer.deserialize_map(BatchVisitor(std::marker::PhantomData))
    }
}

impl<R: RecordText> StreamBatch<R> {
    /// Record `index` parsed, for tests and tools.
    pub fn record(&self, index: usize) -> Option<EventRecord> {
        serde_json::from_str(self.records.get(index)?.text()).ok()
    }
}
/// Why an invocation's event is not a stream batch. serde's own message
/// could quote a value of the event, so only where and what kind of error.
#[derive(thiserror::Error)]
#[error(
    "the event is not a DynamoDB stream batch (an object with a Records array): {kind} error at line {line}, column {column}"
)]
pub struct NotABatch {
    kind: &'static str,
    line: usize,
    column: usize,
}

/// The runtime logs errors with `{:?}`: the message reads better.
impl std::fmt::Debug for NotABatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl NotABatch {
    fn new(e: &serde_json::Error) -> Self {
        Self {
            kind: record::json_error_kind(e),
            line: e.line(),
            column: e.column(),
        }
    }
}

/// The batch in an invocation's body, its records borrowed from the body:
/// found by its outer object only (`src/split.rs`), each read whole when the batch
/// loop plans it; a body that does not split so is read by serde_json,
/// which takes it or says why it is not a batch.
pub fn parse_batch(body: &[u8]) -> Result<StreamBatch<&str>, NotABatch> {
    if let Ok(text) = std::str::from_utf8(body)
        && let Some(split) = crate::split::split(text)
    {
        let target = split.target.map(serde_json::from_str::<Target>);
        if !matches!(target, Some(Err(_))) {
            return Ok(StreamBatch {
                records: split.records,
                target: target.and_then(Result::ok),
            });
        }
    }
    serde_json::from_slice::<StreamBatch<&RawValue>>(body)
        .map(|batch| StreamBatch {
            records: batch.records.into_iter().map(RawValue::get).collect(),
            target: batch.target,
        })
        .map_err(|e| NotABatch::new(&e))
}

/// A runtime layer that keeps the invocation's body for the handler, which
/// then reads the records in place instead of lambda_runtime deserializing
/// a copy of each: for a large batch that copy was the function's peak
/// memory. The handler's own event is left as `null` (`LambdaEvent<()>`).
/// Bodies are kept by request id: on Managed Instances several invocations
/// are in flight at once.
#[derive(Debug, Clone, Default)]
pub struct KeepBody(Arc<std::sync::Mutex<HashMap<String, Bytes>>>);

impl KeepBody {
    /// The body of the invocation `request_id` (once).
    pub fn take(&self, request_id: &str) -> Option<Bytes> {
        self.0.lock().ok()?.remove(request_id)
    }
}

impl<S> Layer<S> for KeepBody {
    type Service = KeepBodyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        KeepBodyService {
            inner,
            slot: self.clone(),
        }
    }
}

/// The service of [`KeepBody`].
#[derive(Clone)]
pub struct KeepBodyService<S> {
    inner: S,
    slot: KeepBody,
}

impl<S: Service<LambdaInvocation>> Service<LambdaInvocation> for KeepBodyService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut invocation: LambdaInvocation) -> S::Future {
        let body = std::mem::replace(&mut invocation.body, Bytes::from_static(b"null"));
        if let Ok(mut slot) = self.slot.0.lock() {
            slot.insert(invocation.context.request_id.clone(), body);
        }
        self.inner.call(invocation)
    }
}

/// Why an invocation is answered with an error rather than a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    NoSequenceNumber(#[from] NoSequenceNumber),
    /// A backfill asked for a queue `REPLAY_QUEUES` does not allow.
    #[error(
        "the queue {0:?} is not allowed by REPLAY_QUEUES: a backfill may publish straight to a queue only when the function's REPLAY_QUEUES names it; nothing was published"
    )]
    QueueNotAllowed(String),
}

/// Why an invocation failed, as Lambda is told: a name that says what
/// happened (`errorType`, what the console and an OnFailure destination's
/// `functionError` context show) and the message. Never a value of the
/// event.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// The event is not a DynamoDB stream batch.
    #[error(transparent)]
    NotABatch(#[from] NotABatch),
    /// The runtime layer did not keep the body (a wiring bug).
    #[error("the invocation's body was not kept")]
    BodyNotKept,
    /// The batch cannot be answered with a partial response, or asks for
    /// what the function does not allow.
    #[error(transparent)]
    Handle(#[from] HandleError),
}

impl InvocationError {
    /// The `errorType` Lambda reports.
    pub fn error_type(&self) -> &'static str {
        match self {
            InvocationError::NotABatch(_) => "NotAStreamBatch",
            InvocationError::BodyNotKept => "BodyNotKept",
            InvocationError::Handle(HandleError::NoSequenceNumber(_)) => "NoSequenceNumber",
            InvocationError::Handle(HandleError::QueueNotAllowed(_)) => "QueueNotAllowed",
        }
    }
}

impl From<InvocationError> for lambda_runtime::Diagnostic {
    fn from(e: InvocationError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type().to_owned(),
            error_message: e.to_string(),
        }
    }
}

/// A cold start that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Topology(PublishError),
    /// The secret named by `AMQP_SECRET_ARN` cannot be read or used.
    #[error("AMQP_SECRET_ARN: {0}")]
    Secret(#[from] crate::secrets::SecretError),
}

/// The broker settings of `config`. Reads the system trust store (once per
/// cold start, as this is called once) unless the URI is `amqp://`; a
/// secret's URI is not known yet, so it may need them. It lives with the
/// wiring so that the publisher knows its settings, not the configuration.
pub fn amqp_settings(config: &Config) -> AmqpSettings {
    let tls = match &config.broker {
        BrokerAddress::Uri(uri) => uri.is_tls(),
        BrokerAddress::Secret(_) => true,
    };
    AmqpSettings {
        address: config.broker.clone(),
        ca: config.ca.clone(),
        system_roots: tls.then(SystemRoots::load),
        connection_name: format!("event-forwarder:{}", config.function_name),
        connect_timeout: config.connect_timeout,
        topology: config.declare_topology.then(|| Topology {
            exchange: config.mapping.exchange.fixed().map(str::to_owned),
            dead_letter: config.mapping.dead_letter_exchange.clone(),
            queue_type: config.queue_type,
            max_exchanges: config.mapping.max_exchanges,
        }),
    }
}

/// The function: configuration, converter, the broker it owns and the
/// enricher its events pass through.
pub struct Forwarder<B = AmqpBroker, E = NoEnricher> {
    converter: Converter,
    replay_queues: ReplayQueues,
    trace_from_xray: bool,
    options: BatchOptions,
    deadline_margin: Duration,
    metrics_namespace: String,
    function_name: String,
    /// One broker per invocation that may be in flight at once, all over one
    /// connection; an invocation takes a free one.
    brokers: Vec<Mutex<B>>,
    enricher: E,
}

impl Forwarder<AmqpBroker> {
    /// Cold start: reads the broker secret (with `AMQP_SECRET_ARN`), then
    /// connects and declares the topology when the broker is reachable. An
    /// unreachable broker is only a warning (the first batch retries); a
    /// topology that clashes with the broker's is fatal.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with(config, NoEnricher).await
    }
}

impl<E: Enricher> Forwarder<AmqpBroker, E> {
    /// [`Forwarder::start`] with an enricher for every event.
    pub async fn start_with(config: Config, enricher: E) -> Result<Self, StartError> {
        let mut broker = AmqpBroker::new(amqp_settings(&config));
        // A secret that cannot be read fails the init: retrying per batch
        // would not fix missing permissions or a malformed value.
        broker
            .load_secret(Instant::now() + config.connect_timeout)
            .await?;
        let until = Instant::now() + config.connect_timeout;
        match broker.ensure_ready(until).await {
            Ok(_) => {}
            Err(e @ PublishError::Topology(_)) => return Err(StartError::Topology(e)),
            Err(e) => {
                tracing::warn!(error = %e, "broker not reachable at cold start; the first batch will retry")
            }
        }
        // The others open their channels on first use, on this connection.
        let more: Vec<_> = (1..config.max_concurrency)
            .map(|_| broker.sibling())
            .collect();
        Ok(Self::with_brokers(config, broker, more, enricher))
    }

    /// Closes the broker connection cleanly (on SIGTERM), once every
    /// invocation in flight has answered (each holds its broker until
    /// then), waiting for them 300 ms at most: Lambda gives the runtime
    /// about 500 ms after SIGTERM.
    pub async fn shutdown(&self) {
        self.shutdown_within(Duration::from_millis(300)).await;
    }

    /// [`Forwarder::shutdown`], waiting `within` for the invocations in
    /// flight.
    pub async fn shutdown_within(&self, within: Duration) {
        let until = Instant::now() + within;
        let mut held = Vec::with_capacity(self.brokers.len());
        for broker in &self.brokers {
            match tokio::time::timeout_at(until.into(), broker.lock()).await {
                Ok(guard) => held.push(guard),
                Err(_) => {
                    tracing::warn!("an invocation was still in flight at shutdown");
                    break;
                }
            }
        }
        // Past the wait, any broker free still closes the connection (the
        // invocations left then fail on it, as they would at the exit).
        if held.is_empty()
            && let Some(free) = self.brokers.iter().find_map(|b| b.try_lock().ok())
        {
            held.push(free);
        }
        if let Some(first) = held.first_mut() {
            first.close().await;
        }
    }
}

impl<B: Broker> Forwarder<B> {
    /// A forwarder over any broker (tests use fakes).
    pub fn with_broker(config: Config, broker: B) -> Self {
        Self::with_parts(config, broker, NoEnricher)
    }
}

impl<B: Broker, E: Enricher> Forwarder<B, E> {
    /// A forwarder over any broker, with an enricher.
    pub fn with_parts(config: Config, broker: B, enricher: E) -> Self {
        Self::with_brokers(config, broker, [], enricher)
    }

    /// A forwarder that serves as many invocations at once as it has
    /// brokers (`first` and `more`, each over the same connection for the
    /// real one); more invocations than that wait for `first`.
    pub fn with_brokers(
        config: Config,
        first: B,
        more: impl IntoIterator<Item = B>,
        enricher: E,
    ) -> Self {
        Self {
            converter: Converter::new(config.mapping),
            replay_queues: config.replay_queues,
            trace_from_xray: config.trace_from_xray,
            options: BatchOptions::new(config.confirm_timeout),
            deadline_margin: config.deadline_margin,
            metrics_namespace: config.metrics_namespace,
            function_name: config.function_name,
            brokers: std::iter::once(first).chain(more).map(Mutex::new).collect(),
            enricher,
        }
    }

    /// The enricher the events pass through.
    pub fn enricher(&self) -> &E {
        &self.enricher
    }

    /// Handles one batch with `remaining` time from now before the
    /// invocation's deadline; logs the summary and prints the metrics.
    pub async fn handle<R: RecordText>(
        &self,
        event: &StreamBatch<R>,
        remaining: Duration,
    ) -> Result<(DynamoDbEventResponse, BatchReport), HandleError> {
        self.handle_until(event, Instant::now() + remaining).await
    }

    /// Handles one batch that must be answered by `deadline`; logs the
    /// summary and prints the metrics.
    pub async fn handle_until<R: RecordText>(
        &self,
        event: &StreamBatch<R>,
        deadline: Instant,
    ) -> Result<(DynamoDbEventResponse, BatchReport), HandleError> {
        self.handle_traced(event, deadline, None).await
    }

    /// Like [`Forwarder::handle_until`], for an invocation with an X-Ray
    /// trace header (`Lambda-Runtime-Trace-Id`): events whose item carries
    /// no trace context get the invocation's, unless
    /// `TRACEPARENT_FROM_XRAY=false`.
    pub async fn handle_traced<R: RecordText>(
        &self,
        event: &StreamBatch<R>,
        deadline: Instant,
        xray_trace_id: Option<&str>,
    ) -> Result<(DynamoDbEventResponse, BatchReport), HandleError> {
        let to_queue = event.target.as_ref().map(|t| t.queue.as_str());
        if let Some(queue) = to_queue
            && !self.replay_queues.allows(queue)
        {
            tracing::warn!(
                queue,
                "a backfill asked for a queue REPLAY_QUEUES does not allow"
            );
            return Err(HandleError::QueueNotAllowed(queue.to_owned()));
        }
        let started = Instant::now();
        // Without the function's timeout at cold start the margin is checked
        // here: one that leaves nothing would fail every batch quietly.
        let left = deadline.saturating_duration_since(started);
        if !event.records.is_empty() && left <= self.deadline_margin {
            tracing::error!(
                deadline_margin_ms = self.deadline_margin.as_millis() as u64,
                left_ms = left.as_millis() as u64,
                "DEADLINE_MARGIN_MS leaves nothing of this invocation's time: no record can be published; keep it well below the function's timeout"
            );
        }
        let now = Utc::now();
        let traceparent = xray_trace_id
            .filter(|_| self.trace_from_xray)
            .and_then(trace::from_xray);
        let invocation = Invocation {
            now,
            deadlines: Deadlines::new(deadline, self.deadline_margin),
            to_queue,
            traceparent: traceparent.as_deref(),
        };
        let report = {
            let mut broker = self.broker().await;
            batch::forward(
                &mut *broker,
                &self.converter,
                &self.enricher,
                &event.records,
                invocation,
                self.options,
            )
            .await
        };
        let response = self.answer(&event.records, &report, started, now)?;
        Ok((response, report))
    }

    /// A broker no invocation is using. The runtime runs at most as many
    /// invocations at once as there are brokers, so one is free; a caller
    /// that runs more waits for the first.
    async fn broker(&self) -> tokio::sync::MutexGuard<'_, B> {
        match self.brokers.iter().find_map(|b| b.try_lock().ok()) {
            Some(free) => free,
            // `with_brokers` makes at least one.
            None => self.brokers[0].lock().await,
        }
    }

    /// Logs what became of a forwarded batch and its figures, and makes its
    /// response.
    fn answer<R: RecordText>(
        &self,
        records: &[R],
        report: &BatchReport,
        started: Instant,
        now: DateTime<Utc>,
    ) -> Result<DynamoDbEventResponse, HandleError> {
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        for (notes, level, what) in [
            (
                &report.dead_letter_reasons,
                Level::WARN,
                "record dead-lettered",
            ),
            (
                &report.skip_reasons,
                Level::INFO,
                "record skipped by the enricher",
            ),
            (
                &report.dropped,
                Level::WARN,
                "trace context left out of an event",
            ),
        ] {
            for (index, reason) in notes {
                log_record(records, *index, reason, level, what);
            }
        }
        let response = batch::response(records, report);
        let first_failed = response
            .as_ref()
            .ok()
            .and_then(|r| r.batch_item_failures.first())
            .and_then(|f| f.item_identifier.as_deref())
            .and_then(loggable);
        telemetry::log_summary(report, duration_ms, first_failed);
        let max_age_ms = report
            .oldest_record
            .map(|t| u64::try_from((now - t).num_milliseconds()).unwrap_or(0));
        telemetry::emit_emf(&telemetry::emf_document(
            &self.metrics_namespace,
            &self.function_name,
            report,
            duration_ms,
            max_age_ms,
            now,
        ));
        Ok(response?)
    }

    /// The Lambda entry point: `body` is the invocation's event as
    /// `KeepBody` kept it.
    pub async fn handle_lambda(
        &self,
        body: Option<Bytes>,
        context: &lambda_runtime::Context,
    ) -> Result<DynamoDbEventResponse, InvocationError> {
        // First of all: the clock runs from here, not from when the body
        // has been parsed (a large batch takes a good part of a second at
        // 128 MB) or the broker lock taken.
        let remaining = remaining_time(context.deadline, SystemTime::now());
        let deadline = Instant::now() + remaining;
        tracing::debug!(remaining_ms = remaining.as_millis() as u64, "invocation");
        let body = body.ok_or(InvocationError::BodyNotKept)?;
        let batch = parse_batch(&body)?;
        let (response, _) = self
            .handle_traced(&batch, deadline, context.xray_trace_id.as_deref())
            .await?;
        Ok(response)
    }
}

/// One line about one record: its sequence number, event id and `reason`
/// (which names attributes, never values).
fn log_record<R: RecordText>(records: &[R], index: usize, reason: &str, level: Level, what: &str) {
    let id = records
        .get(index)
        .map(|r| record::Identity::read(r.text()))
        .unwrap_or_default();
    let sequence_number = id.sequence_number.as_deref().and_then(loggable);
    let event_id = id.event_id.as_deref().and_then(loggable);
    if level == Level::WARN {
        tracing::warn!(sequence_number, event_id, index, reason, "{what}");
    } else {
        tracing::info!(sequence_number, event_id, index, reason, "{what}");
    }
}

/// An id from the record for a log line; a forged record's could be huge.
/// The same bound as for the dead-letter headers.
fn loggable(id: &str) -> Option<&str> {
    (id.len() <= MAX_HEADER).then_some(id)
}

/// Lambda's longest timeout; no invocation has more time than this.
const MAX_INVOCATION: Duration = Duration::from_secs(900);

/// Time left before the invocation's deadline, given as epoch milliseconds
/// by Lambda. `cargo lambda watch` sends the timeout itself (e.g. `600000`)
/// instead; a "deadline" before 2001 can only be that, and is read as a
/// duration from now.
pub fn remaining_time(deadline_ms: u64, now: SystemTime) -> Duration {
    const YEAR_2001_MS: u64 = 978_307_200_000;
    if deadline_ms < YEAR_2001_MS {
        return Duration::from_millis(deadline_ms).min(MAX_INVOCATION);
    }
    (SystemTime::UNIX_EPOCH + Duration::from_millis(deadline_ms))
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .min(MAX_INVOCATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remaining_time_comes_from_an_epoch_deadline() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_446_994_935);
        assert_eq!(
            remaining_time(1_795_446_997_935, now),
            Duration::from_secs(3)
        );
        assert_eq!(remaining_time(1_795_446_990_000, now), Duration::ZERO);
    }

    #[test]
    fn every_invocation_error_has_a_name_that_says_what_happened() {
        // A bare record, as one of aws_lambda_events' own fixtures is.
        let bare = br#"{"eventID":"1","eventName":"INSERT","dynamodb":{}}"#;
        let Err(e) = parse_batch(bare) else {
            panic!("a record is not a batch");
        };
        let d = lambda_runtime::Diagnostic::from(InvocationError::from(e));
        assert_eq!(d.error_type, "NotAStreamBatch");
        assert!(
            d.error_message
                .starts_with("the event is not a DynamoDB stream batch"),
            "{}",
            d.error_message
        );
        let d = lambda_runtime::Diagnostic::from(InvocationError::from(
            HandleError::QueueNotAllowed("q".into()),
        ));
        assert_eq!(d.error_type, "QueueNotAllowed");
        let d = lambda_runtime::Diagnostic::from(InvocationError::BodyNotKept);
        assert_eq!(d.error_type, "BodyNotKept");
    }

    #[test]
    fn only_an_object_with_a_records_array_is_a_stream_batch() {
        let batch: StreamBatch =
            serde_json::from_str(r#"{"Records":[{"eventID":"1"},{}],"other":[1]}"#).unwrap();
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.records[0].get(), r#"{"eventID":"1"}"#);
        for not_a_batch in [
            r#"[[{"eventID":"1"}]]"#,
            r#"{"records":[]}"#,
            r#"{"Records":{}}"#,
            r#"{"Records":[],"Records":[]}"#,
            r#""Records""#,
        ] {
            assert!(
                serde_json::from_str::<StreamBatch>(not_a_batch).is_err(),
                "{not_a_batch}"
            );
        }
    }

    /// A broker that takes every message and never confirms one.
    struct Silent;

    impl Broker for Silent {
        async fn ensure_ready(&mut self, _until: Instant) -> Result<bool, PublishError> {
            Ok(false)
        }

        async fn publish(
            &mut self,
            _message: crate::publisher::Message,
            _until: Instant,
        ) -> Result<crate::publisher::Confirm, PublishError> {
            Ok(Box::pin(std::future::pending()))
        }

        fn reset(&mut self, _scope: crate::publisher::Reset) {}
    }

    /// A one-record batch with `padding` bytes the parser must read past.
    fn padded_batch(padding: usize) -> Bytes {
        let record = include_str!("../events/sam-dynamodb-update.json");
        let batch: serde_json::Value = serde_json::from_str(record).unwrap();
        let records = vec![batch["Records"][0].clone()];
        let body = serde_json::json!({"padding": "x".repeat(padding), "Records": records});
        Bytes::from(serde_json::to_vec(&body).unwrap())
    }

    #[tokio::test]
    async fn the_cut_offs_come_from_the_deadline_not_from_when_the_body_was_parsed() {
        // A body that takes at least 300 ms to parse here.
        let mut padding = 8 << 20;
        let (body, parse) = loop {
            let body = padded_batch(padding);
            let started = Instant::now();
            parse_batch(&body).unwrap();
            let parse = started.elapsed();
            if parse >= Duration::from_millis(300) || padding >= 1 << 30 {
                break (body, parse);
            }
            padding *= 2;
        };
        let config = Config::from_lookup(|k| match k {
            "AMQP_URI" => Some("amqp://127.0.0.1:1".into()),
            "EXCHANGE" => Some("product.events".into()),
            "MAPPING" => Some("change".into()),
            "DEADLINE_MARGIN_MS" => Some("1000".into()),
            "CONFIRM_TIMEOUT_MS" => Some("60000".into()),
            _ => None,
        })
        .unwrap();
        let forwarder = Forwarder::with_broker(config, Silent);
        let mut context = lambda_runtime::Context::default();
        let deadline = SystemTime::now() + Duration::from_secs(3);
        context.deadline = deadline
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;

        let response = forwarder.handle_lambda(Some(body), &context).await.unwrap();

        // The confirm never comes, so the answer waits until `answer_by`,
        // a quarter of the margin before the deadline, whatever the parse
        // took (today: {parse:?}).
        let answered = SystemTime::now();
        assert_eq!(response.batch_item_failures.len(), 1);
        let early = deadline.duration_since(answered).unwrap_or_default();
        assert!(
            early >= Duration::from_millis(150),
            "answered {early:?} before the deadline, the parse took {parse:?}"
        );
    }

    #[test]
    fn a_backfill_names_its_queue_in_a_target_and_nothing_else() {
        let batch: StreamBatch =
            serde_json::from_str(r#"{"Records":[],"target":{"queue":"projection-1"}}"#).unwrap();
        assert_eq!(batch.target.unwrap().queue, "projection-1");
        assert!(parse_batch(br#"{"Records":[]}"#).unwrap().target.is_none());
        for bad in [
            r#"{"Records":[],"target":{"queue":1}}"#,
            r#"{"Records":[],"target":{"queue":"q","exchange":"x"}}"#,
            r#"{"Records":[],"target":"q"}"#,
            r#"{"Records":[],"target":{"queue":"a"},"target":{"queue":"b"}}"#,
        ] {
            assert!(parse_batch(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_queue_replay_queues_does_not_allow_is_refused_before_anything_is_sent() {
        let config = |allowed: &str| {
            let allowed = allowed.to_owned();
            Config::from_lookup(move |k| match k {
                "AMQP_URI" => Some("amqp://127.0.0.1:1".into()),
                "EXCHANGE" => Some("product.events".into()),
                "REPLAY_QUEUES" => Some(allowed.clone()),
                _ => None,
            })
            .unwrap()
        };
        let body =
            br#"{"Records":[{"eventName":"INSERT","dynamodb":{}}],"target":{"queue":"billing"}}"#;
        let batch = parse_batch(body).unwrap();
        for allowed in ["", "projection-*"] {
            let forwarder = Forwarder::with_broker(config(allowed), Silent);
            let refused = forwarder.handle(&batch, Duration::from_secs(5)).await;
            assert_eq!(
                refused.unwrap_err(),
                HandleError::QueueNotAllowed("billing".into()),
                "{allowed:?}"
            );
        }
    }

    #[test]
    fn a_relative_deadline_from_an_emulator_is_read_as_a_duration() {
        let now = SystemTime::now();
        assert_eq!(remaining_time(600_000, now), Duration::from_secs(600));
        assert_eq!(remaining_time(5_000_000, now), MAX_INVOCATION);
    }
}
