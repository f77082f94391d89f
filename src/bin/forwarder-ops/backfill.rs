//! `backfill`: the history from the event store itself, for a consumer that
//! needs it (or after the stream dropped a range). Items are read from the
//! table, turned into the stream records the function knows (INSERT, the
//! item as NewImage, the table's stream ARN), so every event gets the
//! messageId the live stream gave it, and sent in version order per
//! aggregate: to the exchange, or to one queue the function allows.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aws_sdk_dynamodb::types::{AttributeValue, KeyType};
use chrono::{DateTime, Utc};
use clap::builder::TypedValueParser as _;
use event_forwarder::{
    convert::{AttributeNames, MappingKind},
    esm::{self, Answer, Invoker, MAX_EVENT_BYTES, Pace, Pending, Rules, StreamRecord},
};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::{
    aws::Clients,
    invoker::{InOrder, LambdaInvoker},
    progress,
    reader::item_json,
};

/// Send the events of the event-store table through the function: all of
/// it, one aggregate, or a time window, in version order per aggregate.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  # A new consumer's queue gets the whole history (REPLAY_QUEUES must allow it)
  forwarder-ops backfill --table product-events --to-queue projection-orders \\
      --checkpoint backfill.json --rate 2000

  # One aggregate, to every consumer (they deduplicate on messageId)
  forwarder-ops backfill --table product-events --aggregate prod-00042

  # The events of one hour by their own time, occurredAt (items without
  # one are left out; not a way to replay a stream range: redrive says what
  # covers one)
  forwarder-ops backfill --table product-events \\
      --since 2026-11-30T10:00:00Z --until 2026-11-30T11:00:00Z

Attribute names come from the same ATTR_* variables as the function's (and
MAPPING the mapping). A change-mapping table is sent as snapshots
({Entity}Snapshot), one per item.")]
pub struct Args {
    /// The event-store table.
    #[arg(long)]
    table: String,

    /// Only this aggregate (Query on its key), in version order.
    #[arg(long, value_name = "ID")]
    aggregate: Option<String>,

    /// Only events whose occurredAt is at or after this time (RFC 3339).
    /// occurredAt is the event's own time, not when the stream got it;
    /// items without one are left out. Default: no lower bound.
    #[arg(long, value_name = "TIME")]
    since: Option<DateTime<Utc>>,

    /// Only events whose occurredAt is before this time (RFC 3339).
    /// Default: no upper bound.
    #[arg(long, value_name = "TIME")]
    until: Option<DateTime<Utc>>,

    /// Parallel Scan segments for reading the whole table.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    segments: u32,

    /// Send to this queue only (through the default exchange), not to the
    /// exchange. The function's REPLAY_QUEUES must allow it.
    #[arg(long, value_name = "QUEUE")]
    to_queue: Option<String>,

    /// Keep the position here, and resume from it: a killed backfill goes on
    /// where it stopped.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,

    /// At most this many records per second (0: as fast as the function).
    #[arg(long, default_value_t = 0, value_name = "N")]
    rate: u32,

    /// Which mapping the function uses (default: MAPPING, else event-store).
    #[arg(
        long,
        env = "MAPPING",
        default_value = "event-store",
        value_parser = clap::builder::PossibleValuesParser::new(MappingKind::names())
            .try_map(|name: String| MappingKind::parse(&name)),
    )]
    mapping: MappingKind,

    #[command(flatten)]
    sending: InOrder,
}

/// The last event confirmed, in the backfill's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LastConfirmed {
    table: String,
    target: String,
    /// The aggregate (event store) or item key (change).
    group: String,
    version: u64,
    /// The event's place in the backfill, its `SequenceNumber`.
    position: u64,
}

/// One event to send, with its place in the order.
struct Event {
    group: String,
    version: u64,
    item: HashMap<String, AttributeValue>,
}

#[derive(Debug, Default)]
struct Summary {
    groups: u64,
    records: u64,
    forwarded: u64,
    skipped: u64,
    outside_window: u64,
    failed: u64,
    /// The whole run, and the part of it spent invoking the function (the
    /// rest is reading the table, and the rate limit).
    started: Option<Instant>,
    sending: Duration,
}

/// The table as the backfill reads it.
struct Source {
    stream_arn: String,
    /// The key attributes, partition key first.
    keys: Vec<String>,
    /// The key is (aggregateId, version): aggregates can be read one by one.
    event_store_keys: bool,
}

pub async fn run(args: Args, clients: &Clients) -> anyhow::Result<bool> {
    let names = AttributeNames::from_env();
    let source = describe(clients, &args.table, &names).await?;
    let target = args
        .to_queue
        .as_deref()
        .map_or_else(|| "exchange".to_owned(), |q| format!("queue:{q}"));
    let resume = match &args.checkpoint {
        Some(path) => read_checkpoint(path, &args.table, &target)?,
        None => None,
    };
    let mut invoker = args.sending.invoker(clients);
    if let Some(queue) = &args.to_queue {
        allowed(&mut invoker, queue).await?;
    }

    let from = resume.as_ref().map(|c| c.group.as_str());
    let (mut events, total) = read_events(clients, &args, &source, &names, from).await?;
    let bar = progress::bar((total > 0).then_some(total), "events");
    let rules = args.sending.rules();
    let limiter = Limiter::new(args.rate);
    let started = Some(Instant::now());
    // The events up to the checkpoint are done: they keep their places
    // (their sequence numbers), and the aggregates before it are not even
    // read again.
    let position = resume.as_ref().map_or(0, |c| c.position);
    bar.set_position(position);
    let mut backfill = Backfill {
        args: &args,
        source: &source,
        occurred_at: &names.occurred_at,
        region: &clients.region,
        target,
        resume,
        invoker,
        rules,
        limiter,
        bar,
        summary: Summary {
            started,
            skipped: position,
            records: position,
            ..Summary::default()
        },
        position,
        last_group: None,
        chunk: Vec::new(),
        now: Utc::now(),
    };
    backfill.send_all(&mut events, clients).await
}

/// A backfill under way: where it is in the order, the chunk of records
/// gathered for the next invocation, and what they are sent with.
struct Backfill<'a> {
    args: &'a Args,
    source: &'a Source,
    /// The `occurredAt` attribute, for the time window.
    occurred_at: &'a str,
    region: &'a str,
    target: String,
    resume: Option<LastConfirmed>,
    invoker: LambdaInvoker,
    rules: Rules,
    limiter: Limiter,
    bar: ProgressBar,
    summary: Summary,
    /// The last event's place in the backfill, its `SequenceNumber`.
    position: u64,
    /// The group of the last event taken: the groups are counted as they
    /// change.
    last_group: Option<String>,
    /// Records to send, each with its group and version for the checkpoint.
    chunk: Vec<(Pending, String, u64)>,
    /// The records' creation time (`ApproximateCreationDateTime`), one for
    /// the whole backfill.
    now: DateTime<Utc>,
}

impl Backfill<'_> {
    /// Sends the events in order, a chunk at a time, and the summary;
    /// `Ok(false)` when the function did not confirm them all.
    async fn send_all(&mut self, events: &mut Events, clients: &Clients) -> anyhow::Result<bool> {
        while let Some(e) = events.next(clients).await? {
            self.take(&e);
            if self.chunk.len() >= self.rules.batch_size && !self.send_chunk().await? {
                return Ok(false);
            }
        }
        if !self.chunk.is_empty() && !self.send_chunk().await? {
            return Ok(false);
        }
        self.finish();
        Ok(true)
    }

    /// Counts `e`, and adds it to the chunk unless it is outside the time
    /// window or was confirmed before the checkpoint.
    fn take(&mut self, e: &Event) {
        if self.last_group.as_deref() != Some(e.group.as_str()) {
            self.summary.groups += 1;
            self.last_group = Some(e.group.clone());
        }
        let done = self
            .resume
            .as_ref()
            .is_some_and(|c| (c.group.as_str(), c.version) >= (e.group.as_str(), e.version));
        if !in_window(&e.item, self.occurred_at, self.args.since, self.args.until) {
            self.summary.outside_window += 1;
            self.bar.inc(1);
        } else if !done {
            self.position += 1;
            self.summary.records += 1;
            let record = stream_record(e, self.source, self.position, self.now, self.region);
            self.chunk.push((record, e.group.clone(), e.version));
        }
    }

    /// Sends the chunk through the function (at the rate) and moves the
    /// checkpoint to its last record confirmed; `Ok(false)` when the
    /// function did not confirm them all, after the summary.
    async fn send_chunk(&mut self) -> anyhow::Result<bool> {
        self.limiter.take(self.chunk.len()).await;
        let records: Vec<Pending> = self.chunk.iter().map(|(p, _, _)| p.clone()).collect();
        let pace = Pace {
            retry_delay: self.args.sending.retry_delay(),
            now: &Utc::now,
            stop: &|| false,
            target: self.args.to_queue.as_deref(),
            not_invoked_limit: self.args.sending.not_invoked_limit(),
        };
        let sending = Instant::now();
        let d = esm::deliver_all(
            &mut self.invoker,
            &records,
            &self.rules,
            &pace,
            MAX_EVENT_BYTES,
        )
        .await;
        self.summary.sending += sending.elapsed();
        let done = d.stopped_at.unwrap_or(records.len());
        self.summary.forwarded += done as u64;
        self.bar.inc(done as u64);
        if let Some(last) = done.checked_sub(1) {
            self.confirmed(last)?;
        }
        if d.stopped_at.is_some() {
            self.summary.failed += (records.len() - done) as u64;
            return self.stopped(done, d.refused, d.not_invoked_for);
        }
        self.chunk.clear();
        Ok(true)
    }

    /// Writes the chunk's record `last` to the checkpoint as the last
    /// confirmed, when the backfill keeps one.
    fn confirmed(&self, last: usize) -> anyhow::Result<()> {
        let Some(path) = &self.args.checkpoint else {
            return Ok(());
        };
        let (record, group, version) = &self.chunk[last];
        write_checkpoint(
            path,
            &LastConfirmed {
                table: self.args.table.clone(),
                target: self.target.clone(),
                group: group.clone(),
                version: *version,
                position: record.sequence_number.parse().unwrap_or(self.position),
            },
        )
    }

    /// Ends a backfill the function stopped at the chunk's record `at`:
    /// the summary, then why, and how to go on.
    fn stopped(
        &self,
        at: usize,
        refused: Option<String>,
        not_invoked_for: Option<String>,
    ) -> anyhow::Result<bool> {
        self.finish();
        if let Some(reason) = refused {
            bail!("the function cannot be invoked: {reason}");
        }
        let again = if self.args.checkpoint.is_some() {
            " (run it again with the same --checkpoint to go on)"
        } else {
            ""
        };
        let seq = &self.chunk[at].0.sequence_number;
        match not_invoked_for {
            Some(why) => eprintln!(
                "the function could not be invoked with record {seq}: {why}; the backfill \
                 stopped{again}"
            ),
            None => eprintln!(
                "the function did not confirm record {seq} after {} retries; the backfill \
                 stopped{again}",
                self.args.sending.max_retries,
            ),
        }
        Ok(false)
    }

    /// The summary line, once the bar is gone.
    fn finish(&self) {
        self.bar.finish_and_clear();
        print_summary(&self.args.table, &self.target, &self.summary);
    }
}

fn print_summary(table: &str, target: &str, s: &Summary) {
    let seconds = format!(
        "{:.2}",
        s.started.map_or(0.0, |t| t.elapsed().as_secs_f64())
    );
    let sending = format!("{:.2}", s.sending.as_secs_f64());
    println!(
        "{}",
        progress::summary(
            "backfill",
            &[
                ("table", &table),
                ("target", &target),
                ("aggregates", &s.groups),
                ("records", &s.records),
                ("forwarded", &s.forwarded),
                ("skipped", &s.skipped),
                ("outside_window", &s.outside_window),
                ("failed", &s.failed),
                ("seconds", &seconds),
                ("sending_seconds", &sending),
            ]
        )
    );
}

/// The table's key, stream and whether aggregates can be queried.
async fn describe(
    clients: &Clients,
    table: &str,
    names: &AttributeNames,
) -> anyhow::Result<Source> {
    let t = clients.describe_table(table).await?;
    let mut keys: Vec<(KeyType, String)> = t
        .key_schema()
        .iter()
        .map(|k| (k.key_type().clone(), k.attribute_name().to_owned()))
        .collect();
    keys.sort_by_key(|(kind, _)| *kind != KeyType::Hash);
    let keys: Vec<String> = keys.into_iter().map(|(_, name)| name).collect();
    let event_store_keys = keys == [names.aggregate_id.clone(), names.version.clone()];
    // The function takes the table name from the ARN (the message ids
    // depend on it): without a stream, one of the same shape.
    let stream_arn = t.latest_stream_arn().map_or_else(
        || {
            format!(
                "arn:aws:dynamodb:{}:000000000000:table/{table}/stream/backfill",
                clients.region
            )
        },
        str::to_owned,
    );
    Ok(Source {
        stream_arn,
        keys,
        event_store_keys,
    })
}

/// Asks the function, with an empty batch, whether it may publish to
/// `queue`: a refusal stops the backfill before anything is sent.
async fn allowed(invoker: &mut LambdaInvoker, queue: &str) -> anyhow::Result<()> {
    let probe = esm::event(&[], Some(queue));
    match invoker.invoke(probe).await {
        Ok(Answer::Response(_)) => Ok(()),
        Ok(Answer::FunctionError { error, message, .. }) => {
            bail!("the function refused the backfill to queue {queue}: {error}: {message}")
        }
        Err(e) => bail!("{e}"),
    }
}

/// The events in the backfill's order: aggregates (or item keys) in key
/// order, each aggregate's versions in order.
enum Events {
    /// Read up front and sorted.
    Sorted(std::vec::IntoIter<Event>),
    /// Aggregates queried one after the other.
    Queried {
        table: String,
        key: String,
        version: String,
        aggregates: std::vec::IntoIter<String>,
        current: std::vec::IntoIter<Event>,
    },
}

impl Events {
    async fn next(&mut self, clients: &Clients) -> anyhow::Result<Option<Event>> {
        match self {
            Events::Sorted(items) => Ok(items.next()),
            Events::Queried {
                table,
                key,
                version,
                aggregates,
                current,
            } => loop {
                if let Some(e) = current.next() {
                    return Ok(Some(e));
                }
                let Some(id) = aggregates.next() else {
                    return Ok(None);
                };
                *current = query(clients, table, key, version, &id).await?.into_iter();
            },
        }
    }
}

/// Opens the events to send, and how many there are (for the progress).
/// Aggregates before `from` (a checkpoint's) are done and not read again.
async fn read_events(
    clients: &Clients,
    args: &Args,
    source: &Source,
    names: &AttributeNames,
    from: Option<&str>,
) -> anyhow::Result<(Events, u64)> {
    let (key, version) = (&names.aggregate_id, &names.version);
    if args.mapping == MappingKind::EventStore && source.event_store_keys {
        // The table's key is (aggregate, version): only the aggregates are
        // read first, then each one's events in version order.
        let (aggregates, total) = match &args.aggregate {
            Some(id) => (vec![id.clone()], 0),
            None => {
                let items = scan(clients, &args.table, args.segments, Some(key)).await?;
                let total = items.len() as u64;
                let ids: BTreeSet<String> = items
                    .iter()
                    .filter_map(|i| text(i.get(key)?))
                    .filter(|id| from.is_none_or(|f| id.as_str() >= f))
                    .collect();
                (ids.into_iter().collect(), total)
            }
        };
        let events = Events::Queried {
            table: args.table.clone(),
            key: key.clone(),
            version: version.clone(),
            aggregates: aggregates.into_iter(),
            current: Vec::new().into_iter(),
        };
        return Ok((events, total));
    }
    // Otherwise every item is read and sorted here: by aggregate and
    // version, or by the item's key for a change table (one snapshot each).
    if args.mapping == MappingKind::EventStore {
        tracing::warn!(
            "the table's key is not ({key}, {version}): reading it whole into memory to sort it"
        );
    }
    let mut events: Vec<Event> = scan(clients, &args.table, args.segments, None)
        .await?
        .into_iter()
        .filter_map(|item| {
            let (group, v) = match args.mapping {
                MappingKind::EventStore => (text(item.get(key)?)?, number(item.get(version)?)?),
                MappingKind::Change => (
                    source
                        .keys
                        .iter()
                        .map(|k| item.get(k).and_then(text).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join("#"),
                    0,
                ),
            };
            Some(Event {
                group,
                version: v,
                item,
            })
        })
        .filter(|e| args.aggregate.as_ref().is_none_or(|a| *a == e.group))
        .collect();
    events.sort_by(|a, b| (&a.group, a.version).cmp(&(&b.group, b.version)));
    let total = events.len() as u64;
    Ok((Events::Sorted(events.into_iter()), total))
}

/// Every item of the table, in `segments` parallel Scans; only the
/// attribute `only` when given.
async fn scan(
    clients: &Clients,
    table: &str,
    segments: u32,
    only: Option<&str>,
) -> anyhow::Result<Vec<HashMap<String, AttributeValue>>> {
    let mut tasks = tokio::task::JoinSet::new();
    for segment in 0..segments {
        let client = clients.dynamodb.clone();
        let table = table.to_owned();
        let only = only.map(str::to_owned);
        tasks.spawn(async move {
            let mut items = Vec::new();
            let mut start = None;
            loop {
                let mut scan = client
                    .scan()
                    .table_name(&table)
                    .segment(segment as i32)
                    .total_segments(segments as i32)
                    .consistent_read(true)
                    .set_exclusive_start_key(start);
                if let Some(a) = &only {
                    scan = scan
                        .projection_expression("#a")
                        .expression_attribute_names("#a", a);
                }
                let out = scan
                    .send()
                    .await
                    .with_context(|| format!("Scan {table} segment {segment}"))?;
                items.extend(out.items().iter().cloned());
                start = out.last_evaluated_key().cloned();
                if start.is_none() {
                    return Ok::<_, anyhow::Error>(items);
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.context("a Scan segment")??);
    }
    Ok(all)
}

/// One aggregate's events, in version order.
async fn query(
    clients: &Clients,
    table: &str,
    key: &str,
    version: &str,
    id: &str,
) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    let mut start = None;
    loop {
        let out = clients
            .dynamodb
            .query()
            .table_name(table)
            .key_condition_expression("#a = :id")
            .expression_attribute_names("#a", key)
            .expression_attribute_values(":id", AttributeValue::S(id.to_owned()))
            .scan_index_forward(true)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .with_context(|| format!("Query {table} {key} = {id}"))?;
        for item in out.items() {
            let Some(v) = item.get(version).and_then(number) else {
                continue;
            };
            events.push(Event {
                group: id.to_owned(),
                version: v,
                item: item.clone(),
            });
        }
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(events);
        }
    }
}

fn text(v: &AttributeValue) -> Option<String> {
    match v {
        AttributeValue::S(s) => Some(s.clone()),
        AttributeValue::N(n) => Some(n.clone()),
        _ => None,
    }
}

fn number(v: &AttributeValue) -> Option<u64> {
    match v {
        AttributeValue::N(n) => n.parse().ok(),
        _ => None,
    }
}

/// Whether the event's `occurredAt` (RFC 3339 text or epoch milliseconds)
/// falls in `[since, until)`. Without a window every event does; with one,
/// an event without a readable `occurredAt` does not.
fn in_window(
    item: &HashMap<String, AttributeValue>,
    attribute: &str,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> bool {
    if since.is_none() && until.is_none() {
        return true;
    }
    let at = match item.get(attribute) {
        Some(AttributeValue::S(s)) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Some(AttributeValue::N(n)) => n.parse().ok().and_then(DateTime::from_timestamp_millis),
        _ => None,
    };
    at.is_some_and(|t| since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u))
}

/// The stream record the live stream would have given for the item (an
/// INSERT with it as NewImage), marked as made by a backfill.
fn stream_record(
    e: &Event,
    source: &Source,
    position: u64,
    now: DateTime<Utc>,
    region: &str,
) -> Pending {
    let keys: HashMap<String, AttributeValue> = source
        .keys
        .iter()
        .filter_map(|k| Some((k.clone(), e.item.get(k)?.clone())))
        .collect();
    let image = item_json(&e.item);
    StreamRecord {
        event_id: format!("backfill-{position}"),
        event_name: "INSERT".into(),
        event_version: "1.1".into(),
        aws_region: region.to_owned(),
        created: Some(now.timestamp_millis() as f64 / 1000.0),
        keys: Some(item_json(&keys)),
        size_bytes: Some(image.to_string().len() as i64),
        new_image: Some(image),
        old_image: None,
        sequence_number: position.to_string(),
        stream_view_type: Some("NEW_IMAGE".into()),
        user_identity: None,
        backfill: true,
    }
    .to_lambda(&source.stream_arn)
}

fn read_checkpoint(
    path: &Path,
    table: &str,
    target: &str,
) -> anyhow::Result<Option<LastConfirmed>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let c: LastConfirmed = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a backfill checkpoint", path.display()))?;
    if c.table != table || c.target != target {
        bail!(
            "{} is the checkpoint of a backfill of {} to {}, not of {table} to {target}",
            path.display(),
            c.table,
            c.target
        );
    }
    tracing::info!(group = %c.group, version = c.version, "resuming after the checkpoint");
    Ok(Some(c))
}

/// Writes the checkpoint whole or not at all (a new file, then renamed).
fn write_checkpoint(path: &Path, c: &LastConfirmed) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(c)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// `--rate`: records per second, averaged from the start.
struct Limiter {
    rate: u32,
    started: Instant,
    sent: u64,
}

impl Limiter {
    fn new(rate: u32) -> Self {
        Self {
            rate,
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Waits until `n` more records keep the average at or under the rate.
    async fn take(&mut self, n: usize) {
        self.sent += n as u64;
        if self.rate == 0 {
            return;
        }
        let due = self.started + Duration::from_secs_f64(self.sent as f64 / f64::from(self.rate));
        tokio::time::sleep_until(due.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(attrs: &[(&str, AttributeValue)]) -> HashMap<String, AttributeValue> {
        attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn a_window_keeps_events_by_their_occurred_at_text_or_millis() {
        let at = |s: &str| Some(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc));
        let (since, until) = (at("2026-11-30T10:00:00Z"), at("2026-11-30T11:00:00Z"));
        let text = |t: &str| item(&[("occurredAt", AttributeValue::S(t.into()))]);
        assert!(in_window(
            &text("2026-11-30T10:00:00Z"),
            "occurredAt",
            since,
            until
        ));
        assert!(in_window(
            &text("2026-11-30T12:30:00+02:00"),
            "occurredAt",
            since,
            until
        ));
        assert!(!in_window(
            &text("2026-11-30T11:00:00Z"),
            "occurredAt",
            since,
            until
        ));
        let millis = item(&[("occurredAt", AttributeValue::N("1796032800000".into()))]);
        assert!(in_window(
            &millis,
            "occurredAt",
            at("2026-11-30T10:00:00Z"),
            None
        ));
        assert!(!in_window(&item(&[]), "occurredAt", since, None));
        assert!(in_window(&item(&[]), "occurredAt", None, None));
    }

    #[test]
    fn a_backfilled_item_is_the_insert_the_stream_gave_marked_as_a_backfill() {
        let source = Source {
            stream_arn: "arn:aws:dynamodb:eu-west-1:1:table/events/stream/x".into(),
            keys: vec!["aggregateId".into(), "version".into()],
            event_store_keys: true,
        };
        let e = Event {
            group: "prod-1".into(),
            version: 3,
            item: item(&[
                ("aggregateId", AttributeValue::S("prod-1".into())),
                ("version", AttributeValue::N("3".into())),
                ("eventType", AttributeValue::S("ProductRenamed".into())),
            ]),
        };
        let now = DateTime::from_timestamp(1_796_000_000, 0).unwrap();
        let p = stream_record(&e, &source, 42, now, "eu-west-1");
        assert_eq!(p.sequence_number, "42");
        let r: serde_json::Value = serde_json::from_str(p.record.get()).unwrap();
        assert_eq!(r["eventName"], "INSERT");
        assert_eq!(r["eventSource"], event_forwarder::convert::BACKFILL_SOURCE);
        assert_eq!(r["eventSourceARN"], source.stream_arn);
        assert_eq!(
            r["dynamodb"]["Keys"],
            serde_json::json!({"aggregateId": {"S": "prod-1"}, "version": {"N": "3"}})
        );
        assert_eq!(
            r["dynamodb"]["NewImage"]["eventType"]["S"],
            "ProductRenamed"
        );
        // The function gives it the id the live stream gave the same item.
        let converter = event_forwarder::convert::Converter::new(
            event_forwarder::convert::MappingConfig::new("product.events"),
        );
        let event_forwarder::convert::Plan::Publish(m) =
            converter.plan_raw(p.record.get(), now).into_message().plan
        else {
            panic!("not published")
        };
        let id = uuid::Uuid::new_v5(
            &event_forwarder::convert::MESSAGE_ID_NAMESPACE,
            b"events/prod-1/3",
        );
        assert_eq!(m.properties.message_id, id.to_string());
    }

    #[tokio::test]
    async fn the_rate_limit_holds_the_average() {
        let mut limiter = Limiter::new(1000);
        let started = Instant::now();
        for _ in 0..3 {
            limiter.take(50).await;
        }
        assert!(started.elapsed() >= Duration::from_millis(140));
    }
}
