//! `redrive`: the ranges Lambda gave up on, forwarded again. Each SQS
//! OnFailure message names a shard and a sequence-number range, not the
//! records: the range is read again from the stream, the records the filter
//! lets through are sent through the function by the checkpoint rule, and
//! the message is deleted only once all of them are confirmed. What the
//! stream no longer holds is reported, never skipped, with where the
//! records may still be. S3 OnFailure objects hold the records themselves:
//! `from_objects` forwards them with no stream read.

mod from_objects;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use chrono::Utc;
use event_forwarder::esm::{self, MAX_EVENT_BYTES, Pace, Pending, Rules, filter::Filter};
use indicatif::ProgressBar;
use serde_json::Value;

use crate::{
    aws::Clients,
    invoker::{InOrder, LambdaInvoker},
    progress,
    reader::{POLL_EVERY, Position, Streams, StreamsError, before},
};

/// Forward again what Lambda gave up on: the ranges of SQS OnFailure
/// messages (from the queue or a file), read from the stream; or the
/// records of S3 OnFailure objects (from the bucket or copies on disk),
/// with no stream read, at any age.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  # After an outage: forward what Lambda gave up on, then empty the queue
  forwarder-ops redrive --queue product-events-on-failure

  # Look first: what would be sent, nothing invoked or deleted
  forwarder-ops redrive --queue product-events-on-failure --dry-run

  # The mapping has a FilterPattern: records it keeps out are not sent
  forwarder-ops redrive --queue product-events-on-failure \\
      --filter-pattern '{\"eventName\": [\"INSERT\"]}'

  # OnFailureDestination=s3: the objects of the stack's mapping, any age
  forwarder-ops redrive \\
      --bucket s3://product-forwarder-onfailurebucket-1a2b3c/aws/lambda/<EventSourceMappingId>/

Exit status: 0 when every message's range (every object's records) was
forwarded, and the message deleted (the object deleted, a copy renamed
<file>.done); 1 when some could not be (kept, an object marked through its
last confirmed record, to resume after it); 2 on an error.")]
pub struct Args {
    /// The OnFailure SQS queue (URL, ARN or name).
    #[arg(
        long,
        required_unless_present_any = ["from_file", "bucket", "from_objects"],
        conflicts_with_all = ["from_file", "bucket", "from_objects"]
    )]
    queue: Option<String>,

    /// S3 OnFailure objects: s3://bucket[/prefix] (e.g. .../aws/lambda/<mapping
    /// UUID>/). Each object is deleted once every record of it is confirmed,
    /// and tagged forwarder-ops-confirmed-through=<sequence number> after
    /// each confirmed batch until then. Needs s3:ListBucket, s3:GetObject,
    /// s3:GetObjectTagging, s3:PutObjectTagging, s3:DeleteObject.
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]", value_parser = bucket, conflicts_with_all = ["from_file", "from_objects"])]
    bucket: Option<crate::objects::Location>,

    /// S3 OnFailure objects copied to disk (files, or directories walked,
    /// e.g. after `aws s3 cp --recursive`): a copy is renamed <file>.done
    /// once every record of it is confirmed; <file>.progress holds the last
    /// confirmed until then.
    #[arg(long, value_name = "PATH", num_args = 1.., conflicts_with = "from_file")]
    from_objects: Vec<PathBuf>,

    /// OnFailure messages from a file instead: one JSON document per line,
    /// or a JSON array of them. Nothing is deleted.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,

    /// Show what would be forwarded; invoke nothing, delete nothing.
    #[arg(long)]
    dry_run: bool,

    /// The mapping's filter pattern (JSON, as template.yaml's
    /// FilterPattern): records that match none are not sent, as the mapping
    /// never sent them. Repeat for more patterns. Default: none.
    #[arg(long, value_name = "JSON")]
    filter_pattern: Vec<String>,

    /// GetRecords pages in a row without a record after which a range is
    /// taken as ending early (its end is not in the shard). AWS: several
    /// calls may be needed to reach records. Reads are 250 ms apart.
    #[arg(long, default_value_t = 100, value_name = "N")]
    max_empty_reads: u32,

    /// How long a message received from --queue stays hidden from other
    /// readers, in seconds; renewed every third of it while this run holds
    /// the message (until it is deleted, or the run ends and makes the
    /// messages it kept visible again). Messages are received 10 at a time.
    #[arg(long, default_value_t = 120, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=43_200))]
    visibility_timeout: u64,

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

    /// What to run for the part the stream no longer holds. The table is
    /// the only source left, and a time window on it cannot cover the range:
    /// the arrival times are whole seconds (rounded down) of the stream
    /// write, not the events' `occurredAt`, and an item may have none. So
    /// the suggestion is the whole table, which covers every event of the
    /// range; consumers drop what they already have by `messageId`.
    fn backfill(&self) -> String {
        format!("forwarder-ops backfill --table {}", self.table())
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
    objects: u64,
    /// Records of objects confirmed by an earlier redrive, not sent again.
    confirmed_before: u64,
    /// Objects whose records are all confirmed (deleted, or renamed).
    done: u64,
    ranges: u64,
    records: u64,
    forwarded: u64,
    filtered: u64,
    gone: u64,
    failed: u64,
    kept: u64,
    deleted: u64,
}

pub async fn run(args: Args, clients: &Clients) -> anyhow::Result<bool> {
    let filter = if args.filter_pattern.is_empty() {
        None
    } else {
        Some(Filter::parse(&args.filter_pattern)?)
    };
    let queue_url = match &args.queue {
        Some(q) => Some(clients.queue_url(q).await?),
        None => None,
    };
    let hidden_for = Duration::from_secs(args.visibility_timeout);
    let held = queue_url
        .as_ref()
        .map(|url| Held::start(clients.sqs.clone(), url.clone(), hidden_for));
    let mut redrive = Redrive {
        rules: args.sending.rules(),
        invoker: args.sending.invoker(clients),
        bar: progress::bar(None, "records"),
        summary: Summary::default(),
        args: &args,
        clients,
        queue_url: queue_url.clone(),
        filter,
        halted: None,
        held,
    };
    let result = match (&queue_url, &args.from_file, &args.bucket) {
        (Some(url), _, _) => redrive.each_of_queue(url).await,
        (None, Some(path), _) => redrive.each_of_file(path).await,
        (None, None, Some(at)) => match from_objects::keys(&clients.s3, at).await {
            Ok(keys) => {
                let store = from_objects::Store::Bucket {
                    s3: &clients.s3,
                    at,
                };
                redrive.each_object(&store, &keys).await
            }
            Err(e) => Err(e),
        },
        (None, None, None) if !args.from_objects.is_empty() => {
            match from_objects::files(&args.from_objects) {
                Ok(files) => {
                    redrive
                        .each_object(&from_objects::Store::Files, &files)
                        .await
                }
                Err(e) => Err(e),
            }
        }
        (None, None, None) => Err(anyhow::anyhow!(
            "give --queue, --from-file, --bucket or --from-objects"
        )),
    };
    // Every message kept is visible again now, for the next redrive.
    if let Some(held) = redrive.held.take() {
        held.release().await;
    }
    redrive.bar.finish_and_clear();
    print_summary(&redrive.summary, args.dry_run);
    result?;
    if let Some(why) = redrive.halted {
        bail!("the function cannot be invoked: {why}");
    }
    Ok(redrive.summary.kept == 0)
}

/// A redrive under way: what each message's range is read, filtered and
/// sent with, and the counts so far.
struct Redrive<'a> {
    args: &'a Args,
    clients: &'a Clients,
    /// `None` when the messages came from a file.
    queue_url: Option<String>,
    filter: Option<Filter>,
    rules: Rules,
    invoker: LambdaInvoker,
    bar: ProgressBar,
    summary: Summary,
    /// Why the function cannot be invoked, once that stopped the redrive:
    /// the messages not reached yet are kept.
    halted: Option<String>,
    /// The messages received and not deleted, hidden from other readers
    /// until the run ends (`None` from a file).
    held: Option<Held>,
}

/// A range's records that the filter lets through.
struct Selected {
    records: Vec<Pending>,
    /// Records read from the stream, before the filter.
    found: usize,
    /// Part of the range is no longer in the stream (reported already).
    gone: bool,
}

impl Redrive<'_> {
    /// The queue's messages, a page at a time: each kept hidden (its
    /// visibility extended) while it is held, deleted once its range is
    /// forwarded, otherwise held until the run ends, so that no message is
    /// received twice in one run and none reappears for another run while
    /// this one goes on, however long it takes.
    async fn each_of_queue(&mut self, url: &str) -> anyhow::Result<()> {
        while self.halted.is_none() {
            let hidden_for = Duration::from_secs(self.args.visibility_timeout);
            let page = receive_page(self.clients, url, hidden_for).await?;
            if page.is_empty() {
                return Ok(());
            }
            if let Some(held) = &self.held {
                held.add(page.iter().filter_map(|m| m.receipt.clone()));
            }
            for message in &page {
                if self.halted.is_some() {
                    // Not reached: left for the next redrive.
                    self.summary.kept += 1;
                    continue;
                }
                self.message(message).await?;
            }
        }
        Ok(())
    }

    /// The messages of a file, one after the other (nothing is deleted).
    async fn each_of_file(&mut self, path: &PathBuf) -> anyhow::Result<()> {
        for message in from_file(path)? {
            if self.halted.is_some() {
                self.summary.kept += 1;
                continue;
            }
            self.message(&message).await?;
        }
        Ok(())
    }

    /// One OnFailure message: its range read again and forwarded, then the
    /// message deleted, or kept when not all of it could be.
    async fn message(&mut self, message: &Message) -> anyhow::Result<()> {
        self.summary.messages += 1;
        let Some(range) = Range::of(&message.body) else {
            progress::say(
                &self.bar,
                format_args!(
                    "not an OnFailure message of a DynamoDB stream (no DDBStreamBatchInfo), kept: {}",
                    message.body
                ),
            );
            self.summary.kept += 1;
            return Ok(());
        };
        self.summary.ranges += 1;
        let selected = self.select(&range).await?;
        if self.args.dry_run {
            progress::say(
                &self.bar,
                format_args!(
                    "would forward {} record(s) of {} {}–{} ({} filtered out)",
                    selected.records.len(),
                    range.shard_id,
                    range.start,
                    range.end,
                    selected.found - selected.records.len()
                ),
            );
            return Ok(());
        }
        let stopped_at = self.forward(&selected).await?;
        self.settle(message, &range, &selected, stopped_at).await
    }

    /// Reads `range` from the stream, says what of it the stream no longer
    /// holds, and keeps the records the filter lets through.
    async fn select(&mut self, range: &Range) -> anyhow::Result<Selected> {
        let read = read_range(&self.clients.streams, range, self.args.max_empty_reads).await?;
        let found = read.records.len();
        self.summary.records += found as u64;
        if let Some(why) = &read.gone {
            let missing = range.expected.saturating_sub(found).max(1);
            self.summary.gone += missing as u64;
            let elsewhere = s3_destinations(&self.clients.lambda_api, range).await;
            progress::say(
                &self.bar,
                format_args!(
                    "the stream no longer holds {} {}–{} ({why}): {} record(s) expected, {found} found, \
                     written between {} and {} (arrival times, whole seconds). {elsewhere} Otherwise \
                     the table is the only source left, and no time window on it can cover the \
                     range (arrival times are not occurredAt): backfill the whole table; consumers \
                     drop what they have by messageId: {}",
                    range.shard_id,
                    range.start,
                    range.end,
                    range.expected,
                    range.first_arrival.as_deref().unwrap_or("?"),
                    range.last_arrival.as_deref().unwrap_or("?"),
                    range.backfill(),
                ),
            );
        }
        let records: Vec<Pending> = match &self.filter {
            Some(f) => read
                .records
                .into_iter()
                .filter(|r| {
                    serde_json::from_str::<Value>(r.record.get()).is_ok_and(|v| f.matches(&v))
                })
                .collect(),
            None => read.records,
        };
        self.summary.filtered += (found - records.len()) as u64;
        Ok(Selected {
            records,
            found,
            gone: read.gone.is_some(),
        })
    }

    /// Sends the selected records through the function, in order;
    /// `Ok(Some(n))` when it stopped at the `n`th (the rest failed again).
    /// A function that cannot be invoked ends the redrive.
    async fn forward(&mut self, selected: &Selected) -> anyhow::Result<Option<usize>> {
        let sending = selected.records.len();
        let pace = Pace {
            retry_delay: self.args.sending.retry_delay(),
            now: &Utc::now,
            stop: &|| false,
            target: None,
            not_invoked_limit: self.args.sending.not_invoked_limit(),
        };
        let delivery = esm::deliver_all(
            &mut self.invoker,
            &selected.records,
            &self.rules,
            &pace,
            MAX_EVENT_BYTES,
        )
        .await;
        let forwarded = delivery.stopped_at.unwrap_or(sending);
        self.summary.forwarded += forwarded as u64;
        self.summary.failed += (sending - forwarded) as u64;
        self.bar.inc(selected.found as u64);
        self.halted = delivery.refused.or(delivery.not_invoked_for);
        Ok(delivery.stopped_at)
    }

    /// Deletes the message once its whole range is forwarded; otherwise
    /// keeps it for the next redrive.
    async fn settle(
        &mut self,
        message: &Message,
        range: &Range,
        selected: &Selected,
        stopped_at: Option<usize>,
    ) -> anyhow::Result<()> {
        if stopped_at.is_none() && !selected.gone {
            if let (Some(url), Some(receipt)) = (&self.queue_url, &message.receipt) {
                self.clients
                    .sqs
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .context("DeleteMessage")?;
                self.summary.deleted += 1;
                if let Some(held) = &self.held {
                    held.remove(receipt);
                }
            }
            return Ok(());
        }
        if let Some(forwarded) = stopped_at {
            let rest = if self.halted.is_some() {
                "the function cannot be invoked"
            } else {
                "the rest failed again"
            };
            progress::say(
                &self.bar,
                format_args!(
                    "{} {}–{}: {} of {} record(s) forwarded, {rest}; message kept",
                    range.shard_id,
                    range.start,
                    range.end,
                    forwarded,
                    selected.records.len()
                ),
            );
        }
        self.summary.kept += 1;
        Ok(())
    }
}

/// The summary line on stdout.
fn print_summary(summary: &Summary, dry_run: bool) {
    let mut fields: Vec<(&str, &dyn std::fmt::Display)> = vec![
        ("messages", &summary.messages),
        ("ranges", &summary.ranges),
        ("records", &summary.records),
        ("forwarded", &summary.forwarded),
        ("filtered", &summary.filtered),
        ("gone", &summary.gone),
        ("failed", &summary.failed),
        ("kept", &summary.kept),
        ("deleted", &summary.deleted),
        ("objects", &summary.objects),
        ("confirmed_before", &summary.confirmed_before),
        ("done", &summary.done),
    ];
    if dry_run {
        fields.push(("dry_run", &true));
    }
    println!("{}", progress::summary("redrive", &fields));
}

/// One page of the queue's messages (up to 10), hidden for `hidden_for`.
async fn receive_page(
    clients: &Clients,
    url: &str,
    hidden_for: Duration,
) -> anyhow::Result<Vec<Message>> {
    let got = clients
        .sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(i32::try_from(hidden_for.as_secs()).unwrap_or(i32::MAX))
        .wait_time_seconds(1)
        .send()
        .await
        .context("ReceiveMessage")?;
    Ok(got
        .messages()
        .iter()
        .map(|m| {
            let body = m.body().unwrap_or_default();
            Message {
                receipt: m.receipt_handle().map(str::to_owned),
                body: serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
            }
        })
        .collect())
}

/// The messages a run holds: their visibility extended in the background
/// until they are deleted or the run ends.
struct Held {
    sqs: aws_sdk_sqs::Client,
    url: String,
    receipts: Arc<Mutex<BTreeSet<String>>>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Held {
    fn start(sqs: aws_sdk_sqs::Client, url: String, hidden_for: Duration) -> Self {
        let receipts: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let renewer = tokio::spawn({
            let (sqs, url, receipts) = (sqs.clone(), url.clone(), receipts.clone());
            async move {
                loop {
                    tokio::time::sleep(hidden_for / 3).await;
                    let held: Vec<String> = receipts
                        .lock()
                        .map(|r| r.iter().cloned().collect())
                        .unwrap_or_default();
                    if let Err(e) = set_visibility(&sqs, &url, &held, hidden_for).await {
                        tracing::warn!("extending the held messages' visibility: {e:#}");
                    }
                }
            }
        });
        Self {
            sqs,
            url,
            receipts,
            renewer,
        }
    }

    fn add(&self, receipts: impl IntoIterator<Item = String>) {
        if let Ok(mut held) = self.receipts.lock() {
            held.extend(receipts);
        }
    }

    fn remove(&self, receipt: &str) {
        if let Ok(mut held) = self.receipts.lock() {
            held.remove(receipt);
        }
    }

    /// Makes every message still held visible again at once.
    async fn release(self) {
        self.renewer.abort();
        let held: Vec<String> = self
            .receipts
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        if let Err(e) = set_visibility(&self.sqs, &self.url, &held, Duration::ZERO).await {
            tracing::warn!("making the kept messages visible again: {e:#}");
        }
    }
}

/// ChangeMessageVisibility for `receipts`, ten at a time.
async fn set_visibility(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    receipts: &[String],
    visible_in: Duration,
) -> anyhow::Result<()> {
    for chunk in receipts.chunks(10) {
        let mut batch = sqs.change_message_visibility_batch().queue_url(url);
        for (i, receipt) in chunk.iter().enumerate() {
            batch = batch.entries(
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(i32::try_from(visible_in.as_secs()).unwrap_or(i32::MAX))
                    .build()
                    .context("a visibility entry")?,
            );
        }
        batch.send().await.context("ChangeMessageVisibilityBatch")?;
    }
    Ok(())
}

/// Where the records of a range the stream lost may still be: the S3
/// OnFailure destinations of the stream's mappings (read through Lambda's
/// API, when allowed), which hold a batch's records, not only its range.
async fn s3_destinations(lambda: &aws_sdk_lambda::Client, range: &Range) -> String {
    let ask = lambda
        .list_event_source_mappings()
        .event_source_arn(&range.stream_arn)
        .send();
    let found: Vec<String> = match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(Ok(out)) => out
            .event_source_mappings()
            .iter()
            .filter_map(|m| {
                let dest = m.destination_config()?.on_failure()?.destination()?;
                let at = crate::objects::Location::parse(dest)?;
                Some(format!(
                    "s3://{}/{}aws/lambda/{}/{}/",
                    at.bucket,
                    at.prefix,
                    m.uuid()?,
                    range.shard_id
                ))
            })
            .collect(),
        _ => Vec::new(),
    };
    if found.is_empty() {
        "If the mapping's OnFailure destination was an S3 bucket when it gave these records up, \
         its objects hold them: forwarder-ops redrive --bucket \
         s3://<bucket>/aws/lambda/<mapping UUID>/."
            .to_owned()
    } else {
        format!(
            "The stream's mapping sends what it gives up on to S3: if it did for these records, \
             they are under {}: forwarder-ops redrive --bucket <that prefix>.",
            found.join(" or ")
        )
    }
}

/// `--bucket`'s value.
fn bucket(s: &str) -> Result<crate::objects::Location, String> {
    crate::objects::Location::parse(s).ok_or_else(|| format!("{s}: not s3://bucket[/prefix]"))
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

/// Reads `range` from its shard: from its start sequence number through its
/// end, however many empty pages come first (up to `max_empty_reads` in a
/// row). A stream, a shard or a position the stream no longer has is
/// reported in `gone` with what could still be read.
async fn read_range<S: Streams>(
    streams: &S,
    range: &Range,
    max_empty_reads: u32,
) -> anyhow::Result<Read> {
    let gone = |records: Vec<Pending>, why: &str| Read {
        records,
        gone: Some(why.to_owned()),
    };
    let (mut iterator, trimmed) = match open_range(streams, range).await? {
        Opening::At { iterator, trimmed } => (iterator, trimmed),
        Opening::Gone(why) => return Ok(gone(Vec::new(), why)),
    };
    let mut records = Vec::new();
    let mut empty_reads = 0;
    'read: while let Some(it) = iterator {
        let page = match streams.records(&it, 1000).await {
            Ok(page) => page,
            Err(StreamsError::Trimmed(_)) => return Ok(gone(records, TRIMMED_NOW)),
            Err(e) => return Err(e).with_context(|| format!("GetRecords {}", range.shard_id)),
        };
        if page.records.is_empty() {
            // Several calls may be needed to reach records; past an open
            // shard's newest record they stay empty.
            empty_reads += 1;
            if empty_reads >= max_empty_reads {
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
        } else {
            empty_reads = 0;
        }
        for record in page.records {
            if before(&range.end, &record.sequence_number) {
                break 'read;
            }
            let last = record.sequence_number == range.end;
            records.push(record.to_lambda(&range.stream_arn));
            if last {
                break 'read;
            }
        }
        iterator = page.next;
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

/// What `gone` says when the stream trims the range while it is read
/// (after its shard was listed).
const TRIMMED_NOW: &str = "trimmed while it was read: older than the stream's 24 h";

/// Where reading a range starts.
enum Opening {
    /// An iterator at its start, or at the shard's first record when its
    /// start is trimmed (`trimmed`).
    At {
        iterator: Option<String>,
        trimmed: bool,
    },
    /// Nothing of it can be read, and why.
    Gone(&'static str),
}

/// Finds `range`'s shard and opens an iterator at the first of its records
/// the shard still holds.
async fn open_range<S: Streams>(streams: &S, range: &Range) -> anyhow::Result<Opening> {
    let shards = match streams.shards(&range.stream_arn).await {
        Ok(shards) => shards,
        Err(StreamsError::NotFound(_)) => return Ok(Opening::Gone("the stream is gone")),
        Err(e) => return Err(e).with_context(|| format!("DescribeStream {}", range.stream_arn)),
    };
    let Some(shard) = shards.into_iter().find(|s| s.id == range.shard_id) else {
        return Ok(Opening::Gone(
            "the shard is gone: older than the stream's 24 h",
        ));
    };
    // Records before the shard's first are trimmed (older than 24 h).
    let first = shard.starting.unwrap_or_else(|| range.start.clone());
    let (from, trimmed) = if before(&range.start, &first) {
        (first, true)
    } else {
        (range.start.clone(), false)
    };
    if before(&range.end, &from) {
        return Ok(Opening::Gone("trimmed: older than the stream's 24 h"));
    }
    let iterator = match streams
        .iterator(
            &range.stream_arn,
            &range.shard_id,
            &Position::At(from.clone()),
        )
        .await
    {
        Ok(it) => it,
        Err(StreamsError::Trimmed(_)) => return Ok(Opening::Gone(TRIMMED_NOW)),
        Err(StreamsError::NotFound(_)) => {
            return Ok(Opening::Gone(
                "the shard is gone: older than the stream's 24 h",
            ));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("GetShardIterator {} at {from}", range.shard_id));
        }
    };
    Ok(Opening::At { iterator, trimmed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted::{ScriptedStreams, record};

    const ARN: &str = "arn:aws:dynamodb:eu-west-1:1:table/events/stream/x";

    fn range(start: &str, end: &str) -> Range {
        Range {
            stream_arn: ARN.into(),
            shard_id: "a".into(),
            start: start.into(),
            end: end.into(),
            expected: 3,
            first_arrival: None,
            last_arrival: None,
        }
    }

    fn shard_with(n: u64) -> ScriptedStreams {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100");
        streams.write(
            "a",
            (0..n).map(|i| record(&(100 + i).to_string(), "agg", i + 1, 1.0e10)),
        );
        streams
    }

    fn seqs(read: &Read) -> Vec<&str> {
        read.records
            .iter()
            .map(|r| r.sequence_number.as_str())
            .collect()
    }

    #[tokio::test]
    async fn a_range_is_read_through_empty_pages() {
        let streams = shard_with(6);
        streams.empty_pages(5);
        let read = read_range(&streams, &range("101", "103"), 100)
            .await
            .unwrap();
        assert_eq!(seqs(&read), ["101", "102", "103"]);
        assert!(read.gone.is_none(), "{:?}", read.gone);
    }

    #[tokio::test]
    async fn a_range_whose_end_never_comes_is_reported_after_the_empty_reads() {
        let streams = shard_with(3);
        let read = read_range(&streams, &range("101", "105"), 3).await.unwrap();
        assert_eq!(seqs(&read), ["101", "102"]);
        assert_eq!(read.gone.as_deref(), Some("its end is not in the shard"));
    }

    #[tokio::test]
    async fn a_trimmed_position_is_reported_as_gone_not_as_an_error() {
        #[derive(Clone)]
        struct Trimmed(ScriptedStreams);
        impl Streams for Trimmed {
            async fn shards(
                &self,
                arn: &str,
            ) -> Result<Vec<crate::reader::ShardInfo>, StreamsError> {
                self.0.shards(arn).await
            }
            async fn iterator(
                &self,
                _: &str,
                _: &str,
                _: &Position,
            ) -> Result<Option<String>, StreamsError> {
                Err(StreamsError::Trimmed("trimmed".into()))
            }
            async fn records(
                &self,
                it: &str,
                limit: usize,
            ) -> Result<crate::reader::Page, StreamsError> {
                self.0.records(it, limit).await
            }
        }
        let read = read_range(&Trimmed(shard_with(3)), &range("100", "102"), 100)
            .await
            .unwrap();
        assert!(read.records.is_empty());
        assert!(read.gone.is_some_and(|g| g.starts_with("trimmed")));
    }

    #[test]
    fn the_backfill_suggested_for_a_lost_range_has_no_time_window() {
        let r = Range {
            first_arrival: Some("2026-12-01T09:00:00Z".into()),
            last_arrival: Some("2026-12-01T09:05:00Z".into()),
            ..range("1", "2")
        };
        assert_eq!(r.backfill(), "forwarder-ops backfill --table events");
    }
}
