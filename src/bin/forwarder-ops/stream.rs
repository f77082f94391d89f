//! `stream`: a local event source mapping. Polls a table's stream, batches
//! its records as Lambda's mapping does, invokes the function, follows the
//! partial batch response, retries, bisects and sends what it gives up on
//! to an OnFailure queue in AWS's format.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chrono::Utc;
use event_forwarder::esm::{self, MAX_EVENT_BYTES, Pace, Rules, ShardContext};

use crate::{
    aws::Clients,
    invoker::LambdaInvoker,
    progress,
    reader::{POLL_EVERY, Start, StreamReader},
};

/// Run a local event source mapping over a table's stream.
///
/// Defaults are those of template.yaml's event source. It reads until
/// stopped (Ctrl-C, --max-records, --idle-exit) and prints a summary line.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  # Forward everything in the stream of product-events, then stop after 5 s
  # without new records
  forwarder-ops --endpoint-url http://127.0.0.1:5677 \\
      --lambda-endpoint-url http://127.0.0.1:9000 \\
      stream --table product-events --on-failure on-failure --idle-exit 5

  # Resume where a stopped run left off
  forwarder-ops ... stream --table product-events \\
      --start-sequence-number 1100000000017454423012")]
pub struct Args {
    /// The table whose stream to read (its latest stream).
    #[arg(long, required_unless_present = "stream_arn")]
    table: Option<String>,

    /// The stream to read, instead of --table.
    #[arg(long, conflicts_with = "table")]
    stream_arn: Option<String>,

    /// Where to start: trim-horizon (the oldest record kept) or latest.
    #[arg(long, value_enum, default_value = "trim-horizon")]
    starting_position: Position,

    /// Start at this sequence number (AT_SEQUENCE_NUMBER), e.g. where a
    /// stopped run left off.
    #[arg(long, value_name = "SEQ")]
    start_sequence_number: Option<String>,

    /// BatchSize: records per invocation (1 to 10000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,

    /// MaximumBatchingWindowInSeconds: how long to gather records before
    /// invoking (0: invoke as soon as records are there).
    #[arg(long, default_value_t = 0, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(0..=300))]
    batching_window: u32,

    /// Ignore batchItemFailures (FunctionResponseTypes without
    /// ReportBatchItemFailures): a response is always a success.
    #[arg(long)]
    no_report_batch_item_failures: bool,

    /// Retry a batch whole after a function error instead of splitting it
    /// (BisectBatchOnFunctionError false).
    #[arg(long)]
    no_bisect: bool,

    /// MaximumRetryAttempts: retries of a failed batch before its range goes
    /// to the OnFailure queue; -1: until the records are too old.
    #[arg(long, default_value_t = 10_000, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..=10_000))]
    maximum_retry_attempts: i64,

    /// MaximumRecordAgeInSeconds: records older than this are given up on
    /// without an invocation; -1: no limit.
    #[arg(long, default_value_t = 21_600, value_name = "SECONDS", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..=604_800))]
    maximum_record_age: i64,

    /// The OnFailure destination: an SQS queue (URL, ARN or name). Without
    /// it, records given up on are only reported.
    #[arg(long, value_name = "QUEUE")]
    on_failure: Option<String>,

    /// Pause before a retry of a failed batch, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    retry_delay: u64,

    /// The function's timeout in seconds (template.yaml's Timeout): an
    /// invocation not answered by then is a function error.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    function_timeout: u64,

    /// Stop once this many records were delivered or given up on.
    #[arg(long, value_name = "N")]
    max_records: Option<u64>,

    /// Stop once no new record came for this many seconds.
    #[arg(long, value_name = "SECONDS")]
    idle_exit: Option<f64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Position {
    TrimHorizon,
    Latest,
}

/// What a run did, printed as one `key=value` line on stdout.
#[derive(Debug, Default)]
struct Summary {
    records: u64,
    delivered: u64,
    given_up: u64,
    batches: u64,
    invocations: u64,
    partial: u64,
    function_errors: u64,
    bisects: u64,
    on_failure_messages: u64,
    stopped_by: &'static str,
    resume_at: Option<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream: records={} delivered={} given_up={} batches={} invocations={} partial={} \
             function_errors={} bisects={} on_failure_messages={} stopped_by={}",
            self.records,
            self.delivered,
            self.given_up,
            self.batches,
            self.invocations,
            self.partial,
            self.function_errors,
            self.bisects,
            self.on_failure_messages,
            self.stopped_by
        )?;
        if let Some(seq) = &self.resume_at {
            write!(f, " resume_at={seq}")?;
        }
        Ok(())
    }
}

/// Runs the mapping; `Ok(true)` when it stopped as asked with nothing left
/// half-done.
pub async fn run(args: Args, clients: &Clients) -> anyhow::Result<bool> {
    let rules = Rules {
        batch_size: args.batch_size as usize,
        batching_window: Duration::from_secs(u64::from(args.batching_window)),
        report_batch_item_failures: !args.no_report_batch_item_failures,
        bisect_on_function_error: !args.no_bisect,
        max_retries: u32::try_from(args.maximum_retry_attempts).ok(),
        max_record_age: u64::try_from(args.maximum_record_age)
            .ok()
            .map(Duration::from_secs),
        stop_on_give_up: false,
    };
    let stream_arn = match (&args.stream_arn, &args.table) {
        (Some(arn), _) => arn.clone(),
        (None, Some(table)) => latest_stream(clients, table).await?,
        (None, None) => bail!("give --table or --stream-arn"),
    };
    let start = match (&args.start_sequence_number, args.starting_position) {
        (Some(seq), _) => Start::At(seq.clone()),
        (None, Position::TrimHorizon) => Start::TrimHorizon,
        (None, Position::Latest) => Start::Latest,
    };
    let on_failure = match &args.on_failure {
        Some(q) => Some(clients.queue_url(q).await?),
        None => None,
    };
    let mut reader = StreamReader::new(clients.streams.clone(), stream_arn.clone(), start).await?;
    let mut invoker = LambdaInvoker::new(
        clients.lambda.clone(),
        &clients.function_name,
        Duration::from_secs(args.function_timeout),
    );
    let function_arn = clients.function_arn();

    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.store(true, Ordering::SeqCst);
        }
    });
    let progress = progress::bar(None, "records");
    tracing::info!(stream = %stream_arn, function = %clients.function_name, "reading the stream");

    let mut summary = Summary::default();
    let mut last_record = Instant::now();
    let mut clean = true;
    let should_stop = || stop.load(Ordering::SeqCst);
    loop {
        if should_stop() {
            summary.stopped_by = "ctrl-c";
            break;
        }
        if args.max_records.is_some_and(|max| summary.records >= max) {
            summary.stopped_by = "max-records";
            break;
        }
        if reader.finished() {
            summary.stopped_by = "stream-closed";
            break;
        }
        let Some((shard_id, batch)) = reader
            .next_batch(rules.batch_size, MAX_EVENT_BYTES, rules.batching_window)
            .await?
        else {
            if args
                .idle_exit
                .is_some_and(|s| last_record.elapsed().as_secs_f64() >= s)
            {
                summary.stopped_by = "idle";
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
            continue;
        };
        last_record = Instant::now();
        let pace = Pace {
            retry_delay: Duration::from_millis(args.retry_delay),
            now: &Utc::now,
            stop: &should_stop,
            target: None,
        };
        let delivery = esm::deliver(&mut invoker, &batch, &rules, &pace).await;
        summary.batches += 1;
        summary.invocations += u64::from(delivery.invocations);
        summary.partial += u64::from(delivery.partial);
        summary.function_errors += u64::from(delivery.function_errors);
        summary.bisects += u64::from(delivery.bisects);
        let handled = delivery.stopped_at.unwrap_or(batch.len());
        let given_up = delivery.given_up_records();
        summary.records += handled as u64;
        summary.given_up += given_up as u64;
        summary.delivered += (handled - given_up) as u64;
        for g in &delivery.given_up {
            let first = &batch[g.range.start].sequence_number;
            let last = &batch[g.range.end - 1].sequence_number;
            tracing::warn!(
                shard = %shard_id, first = %first, last = %last, records = g.range.len(),
                condition = g.condition.as_str(), "records given up on"
            );
            let Some(queue) = &on_failure else { continue };
            let context = ShardContext {
                shard_id: &shard_id,
                stream_arn: &stream_arn,
                function_arn: &function_arn,
                request_id: &invoker.last_request_id,
                executed_version: "$LATEST",
            };
            let message = esm::on_failure_message(g, &batch, &context, Utc::now());
            clients
                .sqs
                .send_message()
                .queue_url(queue)
                .message_body(message.to_string())
                .send()
                .await
                .with_context(|| format!("SendMessage to the OnFailure queue {queue}"))?;
            summary.on_failure_messages += 1;
        }
        progress.set_message(format!(
            "{} delivered, {} given up, {} invocations",
            summary.delivered, summary.given_up, summary.invocations
        ));
        progress.inc(handled as u64);
        tracing::info!(
            shard = %shard_id,
            records = batch.len(),
            first = %batch[0].sequence_number,
            invocations = delivery.invocations,
            given_up,
            "batch"
        );
        if let Some(at) = delivery.stopped_at {
            summary.resume_at = Some(batch[at].sequence_number.clone());
            if let Some(reason) = delivery.refused {
                tracing::error!(%reason, "the function cannot be invoked");
                summary.stopped_by = "invoke-refused";
                clean = false;
            } else {
                summary.stopped_by = "ctrl-c";
            }
            break;
        }
    }
    progress.finish_and_clear();
    println!("{summary}");
    if let Some(seq) = &summary.resume_at {
        eprintln!("resume with: stream --start-sequence-number {seq}");
    }
    Ok(clean)
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
