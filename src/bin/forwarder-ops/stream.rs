//! `stream`: a local event source mapping. Polls a table's stream, each
//! shard on its own as Lambda does (its own checkpoint; a shard whose batch
//! keeps failing holds back only itself), filters and batches its records,
//! invokes the function synchronously, follows the partial batch response,
//! retries, bisects and sends what it gives up on to an OnFailure queue or
//! bucket in AWS's format.

mod as_deployed;

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use chrono::Utc;
use event_forwarder::esm::{
    self, Delivery, Invoker, MAX_EVENT_BYTES, Pace, Pending, Rules, ShardContext, filter::Filter,
};
use serde_json::Value;
use tokio::{
    task::{JoinSet, LocalSet},
    time::Instant,
};

use crate::{
    aws::Clients,
    deployed,
    invoker::LambdaInvoker,
    objects, progress,
    reader::{POLL_EVERY, Position, Resume, ShardReader, Start, StreamReader, Streams},
};

/// Run a local event source mapping over a table's stream.
///
/// Defaults are those of template.yaml's event source. It reads until
/// stopped (Ctrl-C, --max-records, --idle-exit) and prints a summary line
/// with the point each shard can resume from.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  # Forward everything in the stream of product-events, then stop after 5 s
  # without new records
  forwarder-ops --endpoint-url http://127.0.0.1:5677 \\
      --lambda-endpoint-url http://127.0.0.1:9000 \\
      stream --table product-events --on-failure on-failure --idle-exit 5

  # Go on where a stopped run left off (its summary's resume_at)
  forwarder-ops ... stream --table product-events \\
      --resume-at shardId-00000001700000000000-0000abcd=after:1100000000000000000017

  # As the deployed mapping runs (its settings read through Lambda's API),
  # over the stream of a copy of its table
  forwarder-ops ... stream --mapping 5f8f1a2e-0000-4000-8000-000000000001 \\
      --table product-events-copy

  # Only the events the template's FilterPattern lets through
  forwarder-ops ... stream --table product-events \\
      --filter-pattern '{\"eventName\": [\"INSERT\"]}'

Exit status: 0 when it stopped as asked (records given up on are in the
summary and the OnFailure queue), 1 when the Invoke API refused the calls,
2 on an error (after the summary, with the point to resume from).")]
pub struct Args {
    /// The table whose stream to read (its latest stream).
    #[arg(long, required_unless_present_any = ["stream_arn", "mapping"])]
    table: Option<String>,

    /// The stream to read, instead of --table.
    #[arg(long, conflicts_with = "table")]
    stream_arn: Option<String>,

    /// Where to start: trim-horizon (every shard from its oldest record) or
    /// latest (the shards open now, from now on). A shard that gave no
    /// record before the run stopped resumes at trim-horizon: no position
    /// names "now", so its older records are sent again rather than newer
    /// ones skipped.
    #[arg(long, value_enum, default_value = "trim-horizon")]
    starting_position: StartingPosition,

    /// Where each shard resumes, as a run's summary prints it (resume_at):
    /// SHARD=after:SEQ, SHARD=at:SEQ or SHARD=trim-horizon, comma-separated
    /// (latest is refused: it would skip what was written meanwhile). The shards' ancestors are skipped (done), other
    /// shards read from their beginning.
    #[arg(
        long,
        value_name = "SHARD=POSITION,...",
        conflicts_with = "starting_position"
    )]
    resume_at: Option<Resume>,

    /// BatchSize: records per invocation (1 to 10000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,

    /// MaximumBatchingWindowInSeconds: how long to gather records before
    /// invoking, in seconds (0: invoke as soon as records are there).
    #[arg(long, default_value_t = 0, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(0..=300))]
    batching_window: u32,

    /// FilterCriteria: a filter pattern (JSON, as template.yaml's
    /// FilterPattern); records that match none never reach the function
    /// and the shard moves past them. Repeat for more patterns (any one
    /// lets a record through). Default: none, every record.
    #[arg(long, value_name = "JSON")]
    filter_pattern: Vec<String>,

    /// Ignore batchItemFailures (FunctionResponseTypes without
    /// ReportBatchItemFailures): a response is always a success.
    #[arg(long)]
    no_report_batch_item_failures: bool,

    /// Retry a batch whole after a function error instead of splitting it
    /// (BisectBatchOnFunctionError false). Splits use no retry attempts.
    #[arg(long)]
    no_bisect: bool,

    /// MaximumRetryAttempts: retries of a failed batch before its range goes
    /// to the OnFailure queue, counted afresh whenever the checkpoint moves;
    /// -1: until the records are too old.
    #[arg(long, default_value_t = 10_000, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..=10_000))]
    maximum_retry_attempts: i64,

    /// MaximumRecordAgeInSeconds: records older than this are given up on
    /// without an invocation, in seconds: -1 (no limit) or 60 to 604800.
    #[arg(long, default_value_t = 21_600, value_name = "SECONDS", allow_negative_numbers = true, value_parser = record_age)]
    maximum_record_age: i64,

    /// The OnFailure destination: an SQS queue (URL, ARN or name), which
    /// gets the range only; or an S3 bucket (s3://bucket[/prefix], or its
    /// ARN), which gets the whole invocation record, records included,
    /// under aws/lambda/<mapping UUID>/<shard id>/YYYY/MM/DD/..., as Lambda
    /// writes it. Without it, records given up on are only reported.
    #[arg(long, value_name = "QUEUE|s3://BUCKET[/PREFIX]")]
    on_failure: Option<String>,

    /// Pause before a retry of a failed batch, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    retry_delay: u64,

    /// The function's Timeout in seconds (template.yaml's). An invocation
    /// is awaited for this plus Lambda's 10 s init limit plus 5 s (Lambda
    /// invokes synchronously; never two at once on a shard); still
    /// unanswered then, it counts as a timed-out function error.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    function_timeout: u64,

    /// Run as a deployed event source mapping does: its settings read
    /// through Lambda's API (--endpoint-url): its UUID, or the function
    /// whose one DynamoDB stream mapping it is. Its stream, BatchSize,
    /// window, response types, bisect, retries, record age, filter,
    /// OnFailure queue and starting position replace the defaults above; a
    /// flag that contradicts one is refused unless --override-mapping.
    /// With --table or --stream-arn, another stream is read with them.
    #[arg(long, value_name = "UUID|FUNCTION")]
    mapping: Option<String>,

    /// With --mapping: run with the flags given where they contradict it.
    #[arg(long, requires = "mapping")]
    override_mapping: bool,

    /// The flags given on the command line (filled in by `main`).
    #[arg(skip)]
    pub given: Vec<String>,

    /// Stop once this many records were delivered or given up on (default:
    /// no limit).
    #[arg(long, value_name = "N")]
    max_records: Option<u64>,

    /// Stop once no record came and no batch was in delivery for this many
    /// seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    idle_exit: Option<f64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StartingPosition {
    TrimHorizon,
    Latest,
}

/// `--maximum-record-age`: -1, or 60 to 604800 as AWS allows.
fn record_age(s: &str) -> Result<i64, String> {
    let n: i64 = s
        .parse()
        .map_err(|_| format!("{s} is not a number of seconds"))?;
    match n {
        -1 | 60..=604_800 => Ok(n),
        _ => Err(format!(
            "{n}: MaximumRecordAgeInSeconds is -1 (no limit) or 60 to 604800; \
             AWS refuses 0 to 59"
        )),
    }
}

/// How long a DynamoDB stream keeps a record.
const STREAM_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// What a run did, printed as one `key=value` line on stdout.
#[derive(Debug, Default)]
struct Summary {
    records: u64,
    delivered: u64,
    given_up: u64,
    filtered: u64,
    batches: u64,
    invocations: u64,
    partial: u64,
    function_errors: u64,
    bisects: u64,
    not_invoked: u64,
    on_failure_messages: u64,
    iterator_renewals: u64,
    shards: u64,
    stopped_by: &'static str,
    resume_at: Resume,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut fields: Vec<(&str, &dyn std::fmt::Display)> = vec![
            ("records", &self.records),
            ("delivered", &self.delivered),
            ("given_up", &self.given_up),
            ("filtered", &self.filtered),
            ("batches", &self.batches),
            ("invocations", &self.invocations),
            ("partial", &self.partial),
            ("function_errors", &self.function_errors),
            ("bisects", &self.bisects),
            ("not_invoked", &self.not_invoked),
            ("on_failure_messages", &self.on_failure_messages),
            ("iterator_renewals", &self.iterator_renewals),
            ("shards", &self.shards),
            ("stopped_by", &self.stopped_by),
        ];
        if !self.resume_at.0.is_empty() {
            fields.push(("resume_at", &self.resume_at));
        }
        f.write_str(&progress::summary("stream", &fields))
    }
}

/// Where OnFailure messages go.
enum Destination {
    None,
    Sqs {
        client: aws_sdk_sqs::Client,
        url: String,
    },
    /// Lambda's S3 destination: one object per range, records included.
    S3 {
        client: aws_sdk_s3::Client,
        at: objects::Location,
        /// The mapping's UUID, the first part of every key.
        mapping_uuid: String,
    },
    #[cfg(test)]
    Kept(RefCell<Vec<Value>>),
}

impl Destination {
    /// Sends one message (with the records of its range, for S3); `Ok(false)`
    /// when there is no destination.
    async fn send(
        &self,
        message: Value,
        shard_id: &str,
        records: &[Pending],
    ) -> anyhow::Result<bool> {
        match self {
            Destination::None => Ok(false),
            Destination::Sqs { client, url } => {
                client
                    .send_message()
                    .queue_url(url)
                    .message_body(message.to_string())
                    .send()
                    .await
                    .with_context(|| format!("SendMessage to the OnFailure queue {url}"))?;
                Ok(true)
            }
            Destination::S3 {
                client,
                at,
                mapping_uuid,
            } => {
                let now = Utc::now();
                // The key is named by the message's own time, as Lambda's
                // (the same second, never the next one).
                let at_time = message["timestamp"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map_or(now, |t| t.with_timezone(&Utc));
                // Lambda's key ends with a random UUID: one of the object's
                // own content and the time gives the same uniqueness.
                let body = objects::invocation_record(message, records).to_string();
                let id = uuid::Uuid::new_v5(
                    &uuid::Uuid::NAMESPACE_OID,
                    format!("{body}{}", now.timestamp_nanos_opt().unwrap_or_default()).as_bytes(),
                );
                let key = objects::key(&at.prefix, mapping_uuid, shard_id, at_time, &id);
                client
                    .put_object()
                    .bucket(&at.bucket)
                    .key(&key)
                    .content_type("application/json")
                    .body(body.into_bytes().into())
                    .send()
                    .await
                    .map_err(aws_sdk_s3::Error::from)
                    .with_context(|| format!("PutObject s3://{}/{key}", at.bucket))?;
                Ok(true)
            }
            #[cfg(test)]
            Destination::Kept(kept) => {
                kept.borrow_mut().push(message);
                Ok(true)
            }
        }
    }
}

/// What the shards of one run share.
struct Mapping {
    rules: Rules,
    retry_delay: Duration,
    stream_arn: String,
    function_arn: String,
    destination: Destination,
    /// Set by Ctrl-C or once the run is to end: each shard stops after the
    /// invocation in progress.
    stop: Arc<AtomicBool>,
    max_records: Option<u64>,
    summary: RefCell<Summary>,
    /// Shards delivering a batch right now.
    delivering: Cell<usize>,
    /// The last time a record came or a batch ended.
    last_activity: Cell<Instant>,
    progress: indicatif::ProgressBar,
}

impl Mapping {
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
            || self
                .max_records
                .is_some_and(|max| self.summary.borrow().records >= max)
    }
}

/// How a shard's reading ended.
enum End {
    /// Closed, read to its end, every record done.
    Finished,
    /// Stopped as asked; it resumes here.
    Stopped(Position),
    /// The Invoke API refused the call.
    Refused(Position, String),
    /// A call to AWS failed.
    Failed(Position, anyhow::Error),
}

/// Runs the mapping; `Ok(true)` when it stopped as asked with nothing left
/// half-done.
pub async fn run(mut args: Args, clients: &Clients) -> anyhow::Result<bool> {
    // OnFailure messages name the deployed mapping's function, whatever
    // endpoint runs it here.
    let mut function_arn = None;
    let mut mapping_uuid = None;
    if let Some(wanted) = args.mapping.clone() {
        let deployed = deployed::resolve(&clients.lambda_api, &wanted).await?;
        mapping_uuid = deployed.uuid().map(str::to_owned);
        for line in as_deployed::adopt(&mut args, &deployed)? {
            tracing::info!("{line}");
        }
        function_arn = deployed.function_arn().map(str::to_owned);
        // Invocations are awaited as long as the deployed function may run.
        let given = args.given.iter().any(|g| g == "function_timeout");
        if let (false, Some(arn)) = (given, &function_arn) {
            if let Some(seconds) = deployed::function_timeout(&clients.lambda_api, arn).await {
                tracing::info!("its function's Timeout: {seconds} s");
                args.function_timeout = seconds;
            }
        }
    }
    let rules = rules(&args);
    let filter = if args.filter_pattern.is_empty() {
        None
    } else {
        Some(Rc::new(Filter::parse(&args.filter_pattern)?))
    };
    let stream_arn = match (&args.stream_arn, &args.table) {
        (Some(arn), _) => arn.clone(),
        (None, Some(table)) => latest_stream(clients, table).await?,
        (None, None) => bail!("give --table or --stream-arn"),
    };
    let start = match (args.resume_at, args.starting_position) {
        (Some(resume), _) => Start::Resume(resume),
        (None, StartingPosition::TrimHorizon) => Start::TrimHorizon,
        (None, StartingPosition::Latest) => Start::Latest,
    };
    let function_arn = match function_arn {
        Some(arn) => arn,
        None => clients.function_arn().await,
    };
    let destination = match &args.on_failure {
        Some(d) => match objects::Location::parse(d) {
            Some(at) => Destination::S3 {
                client: clients.s3.clone(),
                at,
                // A deployed mapping's own; otherwise one that stays the same
                // for this stream and function, run after run.
                mapping_uuid: mapping_uuid.unwrap_or_else(|| {
                    uuid::Uuid::new_v5(
                        &uuid::Uuid::NAMESPACE_URL,
                        format!("{stream_arn} {function_arn}").as_bytes(),
                    )
                    .to_string()
                }),
            },
            None => Destination::Sqs {
                client: clients.sqs.clone(),
                url: clients.queue_url(d).await?,
            },
        },
        None => Destination::None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.store(true, Ordering::SeqCst);
        }
    });
    let mapping = Rc::new(Mapping {
        rules,
        retry_delay: Duration::from_millis(args.retry_delay),
        stream_arn: stream_arn.clone(),
        function_arn,
        destination,
        stop,
        max_records: args.max_records,
        summary: RefCell::default(),
        delivering: Cell::new(0),
        last_activity: Cell::new(Instant::now()),
        progress: progress::bar(None, "records"),
    });
    tracing::info!(stream = %stream_arn, function = %clients.function_name, "reading the stream");
    let invoker = LambdaInvoker::new(
        clients.lambda.clone(),
        &clients.function_name,
        Duration::from_secs(args.function_timeout),
    );
    let idle_exit = args.idle_exit.map(Duration::from_secs_f64);
    let outcome = LocalSet::new()
        .run_until(async {
            let reader =
                StreamReader::new(clients.streams.clone(), stream_arn, start, filter).await?;
            Ok::<_, anyhow::Error>(
                map_stream(reader, || invoker.clone(), mapping.clone(), idle_exit).await,
            )
        })
        .await?;
    mapping.progress.finish_and_clear();
    report(&mapping.summary.borrow(), outcome)
}

/// The mapping's settings, as the template's event source mapping has them.
fn rules(args: &Args) -> Rules {
    Rules {
        batch_size: args.batch_size as usize,
        batching_window: Duration::from_secs(u64::from(args.batching_window)),
        report_batch_item_failures: !args.no_report_batch_item_failures,
        bisect_on_function_error: !args.no_bisect,
        max_retries: u32::try_from(args.maximum_retry_attempts).ok(),
        max_record_age: u64::try_from(args.maximum_record_age)
            .ok()
            .map(Duration::from_secs),
        stop_on_give_up: false,
    }
}

/// The summary on stdout, how to resume and why the run ended on stderr;
/// `Ok(true)` when nothing is left half-done.
fn report(summary: &Summary, outcome: Outcome) -> anyhow::Result<bool> {
    println!("{summary}");
    if !summary.resume_at.0.is_empty() {
        eprintln!("resume with: stream --resume-at {}", summary.resume_at);
    }
    if let Some(reason) = &outcome.refused {
        eprintln!("the function cannot be invoked: {reason}");
    }
    match outcome.error {
        Some(e) => Err(e),
        None => Ok(outcome.refused.is_none()),
    }
}

/// How a run ended, besides its summary.
struct Outcome {
    refused: Option<String>,
    error: Option<anyhow::Error>,
}

/// Reads every shard on its own (in a [`LocalSet`]), in lineage order,
/// until the stream is closed or the run is to stop; fills the summary,
/// with the point each unfinished shard resumes from.
async fn map_stream<S: Streams, I: Invoker + 'static>(
    mut reader: StreamReader<S>,
    invoker: impl Fn() -> I,
    mapping: Rc<Mapping>,
    idle_exit: Option<Duration>,
) -> Outcome {
    let mut shards = JoinSet::new();
    let mut outcome = Outcome {
        refused: None,
        error: None,
    };
    let mut stopped_by: Option<&'static str> = None;
    loop {
        if stopped_by.is_none() {
            for shard in reader.take_ready() {
                mapping.summary.borrow_mut().shards += 1;
                shards.spawn_local(read_shard(shard, invoker(), mapping.clone()));
            }
            stopped_by = stop_reason(&mapping, &reader, shards.is_empty(), idle_exit);
            if stopped_by.is_some() {
                mapping.stop.store(true, Ordering::SeqCst);
            }
        }
        if stopped_by.is_some() && shards.is_empty() {
            break;
        }
        tokio::select! {
            Some(ended) = shards.join_next() => {
                if let Some(why) = shard_ended(ended, &mut reader, &mapping, &mut outcome).await {
                    mapping.stop.store(true, Ordering::SeqCst);
                    stopped_by.get_or_insert(why);
                }
            }
            () = tokio::time::sleep(POLL_EVERY) => {
                if stopped_by.is_none() && reader.due() {
                    if let Err(e) = reader.describe().await {
                        outcome.error.get_or_insert(e);
                        mapping.stop.store(true, Ordering::SeqCst);
                        stopped_by = Some("error");
                    }
                }
            }
        }
    }
    mapping.summary.borrow_mut().stopped_by = stopped_by.unwrap_or("error");
    outcome
}

/// Why the run stops now, if it does (the first reason that holds):
/// `shards_idle` when no shard is being read.
fn stop_reason<S: Streams>(
    mapping: &Mapping,
    reader: &StreamReader<S>,
    shards_idle: bool,
    idle_exit: Option<Duration>,
) -> Option<&'static str> {
    let idle = idle_exit.is_some_and(|idle| {
        mapping.delivering.get() == 0 && mapping.last_activity.get().elapsed() >= idle
    });
    if mapping.stop.load(Ordering::SeqCst) {
        Some("ctrl-c")
    } else if mapping.should_stop() {
        Some("max-records")
    } else if shards_idle && reader.finished() {
        Some("stream-closed")
    } else if idle {
        Some("idle")
    } else {
        None
    }
}

/// Notes how a shard's task `ended`: where the shard resumes, and what
/// failed. `Some(why)` when that stops the run.
async fn shard_ended<S: Streams>(
    ended: Result<(String, End), tokio::task::JoinError>,
    reader: &mut StreamReader<S>,
    mapping: &Mapping,
    outcome: &mut Outcome,
) -> Option<&'static str> {
    let (id, end) = match ended {
        Ok(ended) => ended,
        Err(e) => {
            outcome
                .error
                .get_or_insert(anyhow::anyhow!("a shard's task failed: {e}"));
            return Some("error");
        }
    };
    let (at, why) = match end {
        End::Finished => {
            reader.finish(&id);
            // Its children may not be listed yet.
            let e = reader.describe().await.err()?;
            outcome.error.get_or_insert(e);
            return Some("error");
        }
        End::Stopped(at) => (at, None),
        End::Refused(at, reason) => {
            outcome.refused.get_or_insert(reason);
            (at, Some("invoke-refused"))
        }
        End::Failed(at, e) => {
            outcome.error.get_or_insert(e);
            (at, Some("error"))
        }
    };
    mapping.summary.borrow_mut().resume_at.0.insert(id, at);
    why
}

/// One shard, on its own: batches read, delivered by the mapping's rules,
/// and given-up ranges sent to the OnFailure destination, until the shard
/// is finished or the run stops. Returns where it resumes.
async fn read_shard<S: Streams, I: Invoker>(
    mut shard: ShardReader<S>,
    mut invoker: I,
    mapping: Rc<Mapping>,
) -> (String, End) {
    let id = shard.id.clone();
    shard.interrupt = Some(mapping.stop.clone());
    let rules = &mapping.rules;
    let mut checkpoint = shard.start.clone();
    let end = loop {
        if mapping.should_stop() {
            break End::Stopped(checkpoint);
        }
        let read = shard
            .next_batch(rules.batch_size, MAX_EVENT_BYTES, rules.batching_window)
            .await;
        mapping.summary.borrow_mut().iterator_renewals +=
            u64::from(std::mem::take(&mut shard.renewals));
        let batch = match read {
            Ok(Some(batch)) => batch,
            Ok(None) if shard.finished() => break End::Finished,
            Ok(None) => {
                tokio::time::sleep(POLL_EVERY).await;
                continue;
            }
            Err(e) => break End::Failed(checkpoint, e),
        };
        mapping.last_activity.set(Instant::now());
        mapping.summary.borrow_mut().filtered += batch.filtered as u64;
        if batch.records.is_empty() {
            checkpoint = Position::After(batch.through);
            continue;
        }
        let delivery = mapping.deliver(&mut invoker, &batch.records).await;
        let handled = delivery.stopped_at.unwrap_or(batch.records.len());
        let given_up = delivery.given_up_records();
        mapping.count_batch(&delivery, handled, given_up);
        if let Err((at, e)) = mapping
            .send_given_up(&id, &delivery, &batch.records, &invoker)
            .await
        {
            break End::Failed(at, e);
        }
        mapping.show_batch(&id, &batch.records, &delivery, handled, given_up);
        match delivery.stopped_at {
            Some(k) => {
                let at = Position::At(batch.records[k].sequence_number.clone());
                break match delivery.refused.or(delivery.not_invoked_for) {
                    Some(reason) => End::Refused(at, reason),
                    None => End::Stopped(at),
                };
            }
            None => checkpoint = Position::After(batch.through),
        }
    };
    // A shard that started at LATEST and stopped before its first batch was
    // done still names a place in the shard.
    let end = match end {
        End::Finished => End::Finished,
        End::Stopped(at) => End::Stopped(shard.resume_point(at)),
        End::Refused(at, reason) => End::Refused(shard.resume_point(at), reason),
        End::Failed(at, e) => End::Failed(shard.resume_point(at), e),
    };
    (id, end)
}

/// The steps of [`read_shard`] that touch what the shards share.
impl Mapping {
    /// Delivers one shard's batch by the mapping's rules, counted among the
    /// shards delivering meanwhile (a run is idle only without any).
    async fn deliver<I: Invoker>(&self, invoker: &mut I, records: &[Pending]) -> Delivery {
        let should_stop = || self.should_stop();
        let pace = Pace {
            retry_delay: self.retry_delay,
            now: &Utc::now,
            stop: &should_stop,
            target: None,
            // Without an age limit nothing else ends retries of calls that
            // never reach the function: the stream's 24 h retention does.
            not_invoked_limit: match self.rules.max_record_age {
                Some(_) => None,
                None => Some(STREAM_RETENTION),
            },
        };
        self.delivering.set(self.delivering.get() + 1);
        let delivery = esm::deliver(invoker, records, &self.rules, &pace).await;
        self.delivering.set(self.delivering.get() - 1);
        self.last_activity.set(Instant::now());
        delivery
    }

    /// Adds a delivered batch to the summary: `handled` of its records were
    /// delivered or given up on, `given_up` of them given up on.
    fn count_batch(&self, delivery: &Delivery, handled: usize, given_up: usize) {
        let mut s = self.summary.borrow_mut();
        s.batches += 1;
        s.invocations += u64::from(delivery.invocations);
        s.partial += u64::from(delivery.partial);
        s.function_errors += u64::from(delivery.function_errors);
        s.bisects += u64::from(delivery.bisects);
        s.not_invoked += u64::from(delivery.not_invoked);
        s.records += handled as u64;
        s.given_up += given_up as u64;
        s.delivered += (handled - given_up) as u64;
    }

    /// Sends one OnFailure message per range of `records` given up on. On
    /// an error, the position the shard must resume from: the first record
    /// of the range not sent.
    async fn send_given_up<I: Invoker>(
        &self,
        shard_id: &str,
        delivery: &Delivery,
        records: &[Pending],
        invoker: &I,
    ) -> Result<(), (Position, anyhow::Error)> {
        for g in &delivery.given_up {
            let first = &records[g.range.start].sequence_number;
            let last = &records[g.range.end - 1].sequence_number;
            tracing::warn!(
                shard = %shard_id, first = %first, last = %last, records = g.range.len(),
                condition = g.condition.as_str(), "records given up on"
            );
            let (request_id, executed_version) = invoker.last_request();
            let context = ShardContext {
                shard_id,
                stream_arn: &self.stream_arn,
                function_arn: &self.function_arn,
                request_id,
                executed_version,
            };
            let message = esm::on_failure_message(g, records, &context, Utc::now());
            let range = &records[g.range.clone()];
            match self.destination.send(message, shard_id, range).await {
                Ok(sent) => self.summary.borrow_mut().on_failure_messages += u64::from(sent),
                // The shard must not move past records whose range is not
                // recorded anywhere.
                Err(e) => return Err((Position::At(first.clone()), e)),
            }
        }
        Ok(())
    }

    /// The progress bar and the log line after a batch (never an empty one).
    fn show_batch(
        &self,
        shard_id: &str,
        records: &[Pending],
        delivery: &Delivery,
        handled: usize,
        given_up: usize,
    ) {
        self.progress.inc(handled as u64);
        {
            let s = self.summary.borrow();
            self.progress.set_message(format!(
                "{} delivered, {} given up, {} invocations",
                s.delivered, s.given_up, s.invocations
            ));
        }
        tracing::info!(
            shard = %shard_id,
            records = records.len(),
            first = %records[0].sequence_number,
            invocations = delivery.invocations,
            given_up,
            "batch"
        );
    }
}

/// The table's current stream.
async fn latest_stream(clients: &Clients, table: &str) -> anyhow::Result<String> {
    clients
        .describe_table(table)
        .await?
        .latest_stream_arn()
        .map(str::to_owned)
        .with_context(|| format!("the table {table} has no stream (StreamSpecification)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted::{ScriptedStreams, record};
    use clap::Parser as _;
    use event_forwarder::esm::{Answer, InvokeError};
    use serde_json::json;

    const ARN: &str = "arn:aws:dynamodb:eu-west-1:1:table/t/stream/x";

    /// A function that fails every record of `failing_shard_seqs` (by
    /// reporting it) and records every invocation's sequence numbers.
    #[derive(Clone, Default)]
    struct Function {
        poison: Rc<Vec<String>>,
        calls: Rc<RefCell<Vec<Vec<String>>>>,
        /// The Invoke API refuses every call (no such function).
        refused: bool,
    }

    impl Invoker for Function {
        async fn invoke(&mut self, event: Vec<u8>) -> Result<Answer, InvokeError> {
            let event: Value = serde_json::from_slice(&event).unwrap();
            let seqs: Vec<String> = event["Records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["dynamodb"]["SequenceNumber"].as_str().unwrap().to_owned())
                .collect();
            if self.refused {
                return Err(InvokeError::Refused("no such function".into()));
            }
            self.calls.borrow_mut().push(seqs.clone());
            // A call over the network lets the other shards go on meanwhile.
            tokio::task::yield_now().await;
            let failures: Vec<Value> = seqs
                .iter()
                .filter(|s| self.poison.contains(s))
                .take(1)
                .map(|s| json!({"itemIdentifier": s}))
                .collect();
            Ok(Answer::Response(json!({ "batchItemFailures": failures })))
        }
    }

    fn mapping(rules: Rules, max_records: Option<u64>) -> Rc<Mapping> {
        Rc::new(Mapping {
            rules,
            retry_delay: Duration::from_millis(10),
            stream_arn: ARN.into(),
            function_arn: "arn:aws:lambda:eu-west-1:1:function:f".into(),
            destination: Destination::Kept(RefCell::default()),
            stop: Arc::new(AtomicBool::new(false)),
            max_records,
            summary: RefCell::default(),
            delivering: Cell::new(0),
            last_activity: Cell::new(Instant::now()),
            progress: indicatif::ProgressBar::hidden(),
        })
    }

    fn records(first: u64, n: u64) -> Vec<event_forwarder::esm::StreamRecord> {
        (0..n)
            .map(|i| record(&(first + i).to_string(), "agg", i + 1, 1.0e10))
            .collect()
    }

    async fn run_mapping(
        streams: &ScriptedStreams,
        start: Start,
        function: &Function,
        mapping: Rc<Mapping>,
    ) -> Outcome {
        run_mapping_then(streams, start, function, mapping, || ()).await
    }

    /// [`run_mapping`], with `started` called once the run's starting point
    /// is fixed (LATEST iterators issued), before any shard is read.
    async fn run_mapping_then(
        streams: &ScriptedStreams,
        start: Start,
        function: &Function,
        mapping: Rc<Mapping>,
        started: impl FnOnce(),
    ) -> Outcome {
        LocalSet::new()
            .run_until(async {
                let reader = StreamReader::new(streams.clone(), ARN.into(), start, None)
                    .await
                    .unwrap();
                started();
                map_stream(
                    reader,
                    || function.clone(),
                    mapping,
                    Some(Duration::from_millis(300)),
                )
                .await
            })
            .await
    }

    #[tokio::test]
    async fn a_shard_whose_batch_keeps_failing_holds_back_only_itself() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100").shard("b", None, "500");
        streams.write("a", records(100, 2));
        streams.write("b", records(500, 3));
        let function = Function {
            poison: Rc::new(vec!["100".into()]),
            ..Function::default()
        };
        let rules = Rules {
            batch_size: 1,
            max_retries: Some(20),
            ..Rules::default()
        };
        let m = mapping(rules, None);
        let outcome = run_mapping(&streams, Start::TrimHorizon, &function, m.clone()).await;
        assert!(outcome.error.is_none());
        let calls = function.calls.borrow();
        // b's three records went out while a's first was still retried
        // (21 invocations, 10 ms apart).
        let last_b = calls.iter().rposition(|c| c[0].starts_with('5')).unwrap();
        let a_tries_before = calls[..last_b].iter().filter(|c| c[0] == "100").count();
        assert!(a_tries_before < 5, "{calls:?}");
        assert_eq!(calls.iter().filter(|c| c[0] == "100").count(), 21);
        let s = m.summary.borrow();
        assert_eq!((s.delivered, s.given_up, s.shards), (4, 1, 2), "{s}");
        assert_eq!(s.stopped_by, "idle");
        assert_eq!(
            s.resume_at.to_string(),
            "a=after:101,b=after:502",
            "each shard has its own checkpoint"
        );
    }

    #[tokio::test]
    async fn a_stopped_run_resumes_each_shard_where_it_stopped() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100").shard("b", None, "500");
        streams.write("a", records(100, 4));
        streams.write("b", records(500, 4));
        let function = Function::default();
        let rules = Rules {
            batch_size: 2,
            ..Rules::default()
        };
        // Stopped once 4 records are done (the batches in flight on the
        // other shard end first): each shard has its own checkpoint.
        let first = mapping(rules.clone(), Some(4));
        run_mapping(&streams, Start::TrimHorizon, &function, first.clone()).await;
        let resume = first.summary.borrow().resume_at.clone();
        assert_eq!(first.summary.borrow().stopped_by, "max-records");
        assert_eq!(resume.0.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(
            resume.0.values().all(|p| matches!(p, Position::After(_))),
            "{resume}"
        );
        assert!(function.calls.borrow().len() < 4, "stopped before the end");
        // The rest, from the printed resume point: nothing twice, nothing lost.
        let second = mapping(rules, None);
        let resume: Resume = resume.to_string().parse().unwrap();
        run_mapping(&streams, Start::Resume(resume), &function, second.clone()).await;
        let mut seen: Vec<String> = function.calls.borrow().concat();
        seen.sort();
        assert_eq!(
            seen,
            ["100", "101", "102", "103", "500", "501", "502", "503"]
        );
    }

    /// Every sequence number the function was sent, sorted.
    fn sent(function: &Function) -> Vec<String> {
        let mut seen = function.calls.borrow().concat();
        seen.sort();
        seen
    }

    #[tokio::test]
    async fn a_quiet_shard_started_at_latest_resumes_without_skipping_what_came_since() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100");
        streams.write("a", records(100, 2));
        let function = Function::default();
        let first = mapping(Rules::default(), None);
        run_mapping(&streams, Start::Latest, &function, first.clone()).await;
        assert!(function.calls.borrow().is_empty(), "nothing new came");
        let printed = first.summary.borrow().resume_at.to_string();
        // Written after the run stopped: the resumed run must send them.
        streams.write("a", records(102, 2));
        let resume: Resume = printed.parse().unwrap();
        run_mapping(
            &streams,
            Start::Resume(resume),
            &function,
            mapping(Rules::default(), None),
        )
        .await;
        let seen = sent(&function);
        assert!(
            seen.contains(&"102".to_owned()) && seen.contains(&"103".to_owned()),
            "resume_at={printed} sent {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_shard_started_at_latest_whose_first_read_fails_resumes_without_skipping() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100");
        streams.write("a", records(100, 2));
        streams.fail_reads(true);
        let function = Function::default();
        let first = mapping(Rules::default(), None);
        let outcome = run_mapping_then(&streams, Start::Latest, &function, first.clone(), || {
            streams.write("a", records(102, 2));
        })
        .await;
        assert!(outcome.error.is_some(), "the read failed");
        let printed = first.summary.borrow().resume_at.to_string();
        streams.fail_reads(false);
        let resume: Resume = printed.parse().unwrap();
        run_mapping(
            &streams,
            Start::Resume(resume),
            &function,
            mapping(Rules::default(), None),
        )
        .await;
        let seen = sent(&function);
        assert!(
            seen.contains(&"102".to_owned()) && seen.contains(&"103".to_owned()),
            "resume_at={printed} sent {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_shard_refused_before_its_first_batch_is_done_resumes_at_its_first_record() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100");
        streams.write("a", records(100, 2));
        let refusing = Function {
            refused: true,
            ..Function::default()
        };
        let first = mapping(Rules::default(), None);
        let outcome = run_mapping_then(&streams, Start::Latest, &refusing, first.clone(), || {
            streams.write("a", records(102, 2));
        })
        .await;
        assert!(outcome.refused.is_some());
        let printed = first.summary.borrow().resume_at.to_string();
        assert_eq!(printed, "a=at:102", "exactly where the run started");
        let function = Function::default();
        let resume: Resume = printed.parse().unwrap();
        run_mapping(
            &streams,
            Start::Resume(resume),
            &function,
            mapping(Rules::default(), None),
        )
        .await;
        assert_eq!(sent(&function), ["102", "103"]);
    }

    #[tokio::test]
    async fn a_child_shard_goes_out_only_after_its_parent_is_delivered() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100").shard("b", Some("a"), "200");
        streams.write("a", records(100, 2));
        streams.close("a");
        streams.write("b", records(200, 2));
        let function = Function::default();
        let rules = Rules {
            batch_size: 1,
            ..Rules::default()
        };
        let m = mapping(rules, None);
        run_mapping(&streams, Start::TrimHorizon, &function, m.clone()).await;
        assert_eq!(
            function.calls.borrow().concat(),
            ["100", "101", "200", "201"]
        );
        assert_eq!(m.summary.borrow().resume_at.to_string(), "b=after:201");
    }

    #[test]
    fn a_record_age_aws_refuses_is_refused() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |age: &str| {
            Cli::try_parse_from(["x", "--table", "t", "--maximum-record-age", age]).map(|c| c.args)
        };
        for refused in ["0", "1", "30", "59", "604801", "-2"] {
            let err = parse(refused).err().unwrap().to_string();
            assert!(
                err.contains("-1 (no limit) or 60 to 604800"),
                "{refused}: {err}"
            );
        }
        for allowed in ["-1", "60", "21600", "604800"] {
            assert!(parse(allowed).is_ok(), "{allowed}");
        }
    }
}
