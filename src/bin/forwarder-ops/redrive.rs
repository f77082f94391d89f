//! `redrive`: the ranges Lambda gave up on, forwarded again. Each OnFailure
//! message names a shard and a sequence-number range, not the records: the
//! range is read again from the stream, sent through the function by the
//! checkpoint rule, and the message deleted only once all of it is
//! confirmed. What the stream no longer holds is reported, never skipped.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use chrono::Utc;
use event_forwarder::esm::{self, MAX_EVENT_BYTES, Pace, Pending};
use serde_json::Value;

use crate::{
    aws::Clients,
    invoker::InOrder,
    progress,
    reader::{before, stream_record},
};

/// Forward again the records of OnFailure messages (from the SQS queue or a
/// file), reading their ranges from the stream.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  # After an outage: forward what Lambda gave up on, then empty the queue
  forwarder-ops redrive --queue product-events-on-failure

  # Look first: what would be sent, nothing invoked or deleted
  forwarder-ops redrive --queue product-events-on-failure --dry-run

Exit status: 0 when every message's range was forwarded (and deleted), 1 when
some range could not be (the message is kept), 2 on an error.")]
pub struct Args {
    /// The OnFailure SQS queue (URL, ARN or name).
    #[arg(
        long,
        required_unless_present = "from_file",
        conflicts_with = "from_file"
    )]
    queue: Option<String>,

    /// OnFailure messages from a file instead: one JSON document per line,
    /// or a JSON array of them. Nothing is deleted.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,

    /// Show what would be forwarded; invoke nothing, delete nothing.
    #[arg(long)]
    dry_run: bool,

    #[command(flatten)]
    sending: InOrder,
}

/// One OnFailure message.
struct Message {
    /// SQS receipt handle; `None` from a file.
    receipt: Option<String>,
    body: Value,
}

/// The range of one message.
#[derive(Debug, Clone)]
struct Range {
    stream_arn: String,
    shard_id: String,
    start: String,
    end: String,
    expected: usize,
    first_arrival: Option<String>,
    last_arrival: Option<String>,
}

impl Range {
    fn of(body: &Value) -> Option<Self> {
        let info = body.get("DDBStreamBatchInfo")?;
        let text = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            stream_arn: text("streamArn")?,
            shard_id: text("shardId")?,
            start: text("startSequenceNumber")?,
            end: text("endSequenceNumber")?,
            expected: info
                .get("batchSize")
                .and_then(Value::as_u64)
                .map_or(0, |n| n as usize),
            first_arrival: text("approximateArrivalOfFirstRecord"),
            last_arrival: text("approximateArrivalOfLastRecord"),
        })
    }

    /// The table of the stream, for the backfill command.
    fn table(&self) -> &str {
        self.stream_arn
            .split_once(":table/")
            .and_then(|(_, rest)| rest.split('/').next())
            .unwrap_or("<table>")
    }
}

/// What reading a range gave.
struct Read {
    records: Vec<Pending>,
    /// Why part of the range is missing, when it is.
    gone: Option<String>,
}

#[derive(Debug, Default)]
struct Summary {
    messages: u64,
    ranges: u64,
    records: u64,
    forwarded: u64,
    gone: u64,
    failed: u64,
    kept: u64,
    deleted: u64,
}

pub async fn run(args: Args, clients: &Clients) -> anyhow::Result<bool> {
    let queue_url = match &args.queue {
        Some(q) => Some(clients.queue_url(q).await?),
        None => None,
    };
    let messages = match (&queue_url, &args.from_file) {
        (Some(url), _) => receive_all(clients, url).await?,
        (None, Some(path)) => from_file(path)?,
        (None, None) => bail!("give --queue or --from-file"),
    };
    let rules = args.sending.rules();
    let mut invoker = args.sending.invoker(clients);
    let bar = progress::bar(None, "records");
    let mut summary = Summary::default();
    for message in &messages {
        summary.messages += 1;
        let Some(range) = Range::of(&message.body) else {
            progress::say(
                &bar,
                format_args!(
                    "not an OnFailure message of a DynamoDB stream (no DDBStreamBatchInfo), kept: {}",
                    message.body
                ),
            );
            summary.kept += 1;
            keep(clients, queue_url.as_deref(), message).await;
            continue;
        };
        summary.ranges += 1;
        let read = read_range(clients, &range).await?;
        let found = read.records.len();
        summary.records += found as u64;
        if let Some(why) = &read.gone {
            let missing = range.expected.saturating_sub(found).max(1);
            summary.gone += missing as u64;
            progress::say(
                &bar,
                format_args!(
                    "the stream no longer holds {} {}–{} ({why}): {} record(s) expected, {found} found. \
                 The table is the only source left: forwarder-ops backfill --table {}{}{}",
                    range.shard_id,
                    range.start,
                    range.end,
                    range.expected,
                    range.table(),
                    range
                        .first_arrival
                        .as_deref()
                        .map(|t| format!(" --since {t}"))
                        .unwrap_or_default(),
                    range
                        .last_arrival
                        .as_deref()
                        .map(|t| format!(" --until {t}"))
                        .unwrap_or_default(),
                ),
            );
        }
        if args.dry_run {
            progress::say(
                &bar,
                format_args!(
                    "would forward {found} record(s) of {} {}–{}",
                    range.shard_id, range.start, range.end
                ),
            );
            keep(clients, queue_url.as_deref(), message).await;
            continue;
        }
        let pace = Pace {
            retry_delay: args.sending.retry_delay(),
            now: &Utc::now,
            stop: &|| false,
            target: None,
        };
        let delivery =
            esm::deliver_all(&mut invoker, &read.records, &rules, &pace, MAX_EVENT_BYTES).await;
        let forwarded = delivery.stopped_at.unwrap_or(found);
        summary.forwarded += forwarded as u64;
        summary.failed += (found - forwarded) as u64;
        bar.inc(found as u64);
        if let Some(reason) = &delivery.refused {
            bail!("the function cannot be invoked: {reason}");
        }
        if delivery.stopped_at.is_none() && read.gone.is_none() {
            if let (Some(url), Some(receipt)) = (&queue_url, &message.receipt) {
                clients
                    .sqs
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .context("DeleteMessage")?;
                summary.deleted += 1;
            }
        } else {
            if delivery.stopped_at.is_some() {
                progress::say(
                    &bar,
                    format_args!(
                        "{} {}–{}: {} of {found} record(s) forwarded, the rest failed again; message kept",
                        range.shard_id, range.start, range.end, forwarded
                    ),
                );
            }
            summary.kept += 1;
            keep(clients, queue_url.as_deref(), message).await;
        }
    }
    bar.finish_and_clear();
    println!(
        "redrive: messages={} ranges={} records={} forwarded={} gone={} failed={} kept={} deleted={}{}",
        summary.messages,
        summary.ranges,
        summary.records,
        summary.forwarded,
        summary.gone,
        summary.failed,
        summary.kept,
        summary.deleted,
        if args.dry_run { " dry_run=true" } else { "" }
    );
    Ok(summary.kept == 0)
}

/// Every message of the queue, hidden from other readers while this runs.
async fn receive_all(clients: &Clients, url: &str) -> anyhow::Result<Vec<Message>> {
    let mut out = Vec::new();
    loop {
        let got = clients
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(900)
            .wait_time_seconds(1)
            .send()
            .await
            .context("ReceiveMessage")?;
        if got.messages().is_empty() {
            return Ok(out);
        }
        for m in got.messages() {
            let body = m.body().unwrap_or_default();
            out.push(Message {
                receipt: m.receipt_handle().map(str::to_owned),
                body: serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
            });
        }
    }
}

fn from_file(path: &PathBuf) -> anyhow::Result<Vec<Message>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(a)) => a,
        Ok(one) => vec![one],
        Err(_) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: not JSON lines", path.display()))?,
    };
    Ok(docs
        .into_iter()
        .map(|body| Message {
            receipt: None,
            body,
        })
        .collect())
}

/// Makes a kept message visible again at once, for the next redrive.
async fn keep(clients: &Clients, url: Option<&str>, message: &Message) {
    if let (Some(url), Some(receipt)) = (url, &message.receipt) {
        let _ = clients
            .sqs
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await;
    }
}

/// Reads `range` from its shard: from its start sequence number through its
/// end. A stream, a shard or a start the stream no longer has is reported
/// in `gone` with what could still be read.
async fn read_range(clients: &Clients, range: &Range) -> anyhow::Result<Read> {
    let streams = &clients.streams;
    let gone = |why: &str| Read {
        records: Vec::new(),
        gone: Some(why.to_owned()),
    };
    let described = streams
        .describe_stream()
        .stream_arn(&range.stream_arn)
        .send()
        .await;
    let description = match described {
        Ok(d) => d,
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            return Ok(gone("the stream is gone"));
        }
        Err(e) => return Err(e).with_context(|| format!("DescribeStream {}", range.stream_arn)),
    };
    let mut shard = None;
    let mut page = description.stream_description().cloned();
    while let Some(d) = page {
        shard = d
            .shards()
            .iter()
            .find(|s| s.shard_id() == Some(range.shard_id.as_str()))
            .cloned();
        let next = d.last_evaluated_shard_id().map(str::to_owned);
        if shard.is_some() || next.is_none() {
            break;
        }
        page = streams
            .describe_stream()
            .stream_arn(&range.stream_arn)
            .set_exclusive_start_shard_id(next)
            .send()
            .await
            .context("DescribeStream")?
            .stream_description()
            .cloned();
    }
    let Some(shard) = shard else {
        return Ok(gone("the shard is gone: older than the stream's 24 h"));
    };
    // Records before the shard's first are trimmed (older than 24 h).
    let first = shard
        .sequence_number_range()
        .and_then(|r| r.starting_sequence_number())
        .unwrap_or(&range.start)
        .to_owned();
    let (from, trimmed) = if before(&range.start, &first) {
        (first, true)
    } else {
        (range.start.clone(), false)
    };
    if before(&range.end, &from) {
        return Ok(gone("trimmed: older than the stream's 24 h"));
    }
    let mut iterator = streams
        .get_shard_iterator()
        .stream_arn(&range.stream_arn)
        .shard_id(&range.shard_id)
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .sequence_number(&from)
        .send()
        .await
        .with_context(|| format!("GetShardIterator {} at {from}", range.shard_id))?
        .shard_iterator()
        .map(str::to_owned);
    let mut records = Vec::new();
    let mut empty_reads = 0;
    'read: while let Some(it) = iterator {
        let out = streams
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .with_context(|| format!("GetRecords {}", range.shard_id))?;
        if out.records().is_empty() {
            // An open shard answers empty past its newest record.
            empty_reads += 1;
            if empty_reads >= 3 {
                break;
            }
        }
        for r in out.records() {
            let Some(record) = stream_record(r) else {
                continue;
            };
            if before(&range.end, &record.sequence_number) {
                break 'read;
            }
            let last = record.sequence_number == range.end;
            records.push(record.to_lambda(&range.stream_arn));
            if last {
                break 'read;
            }
        }
        iterator = out.next_shard_iterator().map(str::to_owned);
    }
    let reached_end = records
        .last()
        .is_some_and(|r| r.sequence_number == range.end);
    let gone = if trimmed {
        Some("its start is trimmed: older than the stream's 24 h".to_owned())
    } else if !reached_end {
        Some("its end is not in the shard".to_owned())
    } else {
        None
    };
    Ok(Read { records, gone })
}
