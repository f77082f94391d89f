//! `backfill`: the history from the event store itself, for a consumer that
//! needs it (or after the stream dropped a range). Items are read from the
//! table, turned into the stream records the function knows (INSERT, the
//! item as NewImage, the table's stream ARN), so every event gets the
//! messageId the live stream gave it, and sent in version order per
//! aggregate: to the exchange, or to one queue the function allows.
//!
//! How it scales. The table is read in `--segments` parallel Scan segments:
//! the units of work, which `--workers` share (and `--segment I --of N`
//! splits across machines). A worker takes a segment and sends each of its
//! aggregates whole, in version order (a Query per aggregate), through its
//! own invocations, so N workers keep N invocations in flight. An
//! aggregate is found by a key-only Scan and sent when the Scan meets its
//! lowest version (the Query that reads it says so), so each aggregate is
//! sent once whatever order the Scan gives; a worker holds a page of keys,
//! a page of events and one batch, never the table. Order across
//! aggregates is given up: only each aggregate's own order holds, as on
//! the live stream.
//!
//! The checkpoint keeps each segment's place: done, or the aggregate in
//! progress (its first key, where the Scan goes on) and its last version
//! confirmed. Every worker resumes from it without skipping or resending a
//! confirmed event; what was in flight when a run was killed is sent again.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, HashMap, VecDeque},
    path::{Path, PathBuf},
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
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
use serde_json::Value;
use tokio::task::{JoinSet, LocalSet};

mod spill;

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
      --checkpoint backfill.json --workers 8

  # The same, split across two machines (each keeps its own checkpoint)
  forwarder-ops backfill --table product-events --to-queue projection-orders \\
      --checkpoint backfill-0.json --workers 8 --segment 0 --of 2
  forwarder-ops backfill --table product-events --to-queue projection-orders \\
      --checkpoint backfill-1.json --workers 8 --segment 1 --of 2

  # One aggregate, to every consumer (they deduplicate on messageId)
  forwarder-ops backfill --table product-events --aggregate prod-00042

  # The events of one hour by their own time, occurredAt (items without
  # one are left out; not a way to replay a stream range: redrive says what
  # covers one)
  forwarder-ops backfill --table product-events \\
      --since 2026-11-30T10:00:00Z --until 2026-11-30T11:00:00Z

Each aggregate goes whole and in version order through one worker's
invocations; aggregates are not ordered among themselves. A run killed or
stopped resumes from --checkpoint: nothing confirmed is sent again, nothing
is skipped; the batches in flight when it was killed are sent again.

Attribute names come from the same ATTR_* variables as the function's (and
MAPPING the mapping). A change-mapping table is sent as snapshots
({Entity}Snapshot), one per item.

Exit status: 0 when every event was confirmed, 1 when the backfill stopped
before (a batch that kept failing, the function out of reach longer than
--not-invoked-limit, Ctrl-C: run it again with the same --checkpoint), 2 on
an error (the Invoke API refused the call, a read failed).")]
pub struct Args {
    /// The event-store table.
    #[arg(long)]
    table: String,

    /// Only this aggregate (Query on its key), in version order.
    #[arg(long, value_name = "ID", conflicts_with_all = ["segment", "of"])]
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

    /// Parallel Scan segments the table is read in: the units of work the
    /// workers (and machines) share. Fixed for a backfill: a checkpoint
    /// keeps it. Default: the checkpoint's, else 64.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    segments: Option<u32>,

    /// Workers, each sending its segments' aggregates through its own
    /// invocations: up to N invocations of the function at once.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    workers: u32,

    /// With --of: this machine's share of the segments, I, I+N, I+2N, ...
    /// (from 0). Each machine keeps its own --checkpoint.
    #[arg(long, value_name = "I", requires = "of")]
    segment: Option<u32>,

    /// With --segment: the number of machines the backfill is split across.
    #[arg(long, value_name = "N", requires = "segment", value_parser = clap::value_parser!(u32).range(1..))]
    of: Option<u32>,

    /// Send to this queue only (through the default exchange), not to the
    /// exchange. The function's REPLAY_QUEUES must allow it.
    #[arg(long, value_name = "QUEUE")]
    to_queue: Option<String>,

    /// Keep each segment's place here, and resume from it: a backfill killed
    /// or stopped goes on where it was, nothing confirmed sent again, nothing
    /// skipped (only the batches in flight at a kill arrive twice).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,

    /// At most this many records per second, all workers together (0: as
    /// fast as the function).
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

    /// Memory for sorting a table not keyed (aggregateId, version): bytes,
    /// or with a K, M or G suffix (KiB, MiB, GiB). Past it, sorted runs go
    /// to temporary files (in TMPDIR) and are merged, so memory stays
    /// bounded whatever the table's size.
    #[arg(long, default_value = "64M", value_name = "SIZE", value_parser = parse_size)]
    sort_memory: usize,

    #[command(flatten)]
    sending: InOrder,
}

/// The segments of the whole backfill when none is given or kept.
const DEFAULT_SEGMENTS: u32 = 64;

/// Where a backfill stands: each unit's place, for every worker to resume
/// from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    table: String,
    target: String,
    /// What is read: `event-store`, `change`, `aggregate:<id>` or `sorted`.
    scope: String,
    /// `--segments`.
    segments: u32,
    /// `--segment` and `--of` (0 and 1 without them).
    share: (u32, u32),
    /// Events confirmed by every run so far.
    confirmed: u64,
    /// The units begun, by number (the Scan segment; 0 for one aggregate
    /// or a sorted read).
    units: BTreeMap<u32, Place>,
}

/// The place of one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Place {
    /// Every event of the unit is confirmed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    done: bool,
    /// The Scan goes on after this key (DynamoDB JSON): the first item of
    /// the aggregate in progress, or, on a change table, the item last
    /// confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scan_from: Option<Value>,
    /// The aggregate in progress (its id as text: one aggregate, a sorted
    /// read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aggregate: Option<String>,
    /// Its last version confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
}

/// One event to send, and the place of its unit once it is confirmed.
struct Event {
    /// The aggregate (or, on a change table, the item's key), as text.
    group: String,
    item: HashMap<String, AttributeValue>,
    place: Place,
}

#[derive(Debug, Default)]
struct Summary {
    workers: u32,
    units: u64,
    groups: u64,
    records: u64,
    forwarded: u64,
    skipped: u64,
    outside_window: u64,
    failed: u64,
    /// The whole run, and the time workers spent invoking the function
    /// (summed over the workers; the rest is reading the table, and the
    /// rate limit).
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

/// What is read, in units.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// Aggregates found by a key-only Scan of each segment.
    EventStore,
    /// Items in Scan order, one snapshot each.
    Change,
    /// One aggregate.
    Aggregate(String),
    /// An event-store table not keyed (aggregateId, version): read whole
    /// and sorted, in memory up to `--sort-memory` and on disk beyond
    /// (spill.rs); only one aggregate's events when one is given.
    Sorted(Option<String>),
}

impl Scope {
    fn name(&self) -> String {
        match self {
            Scope::EventStore => "event-store".into(),
            Scope::Change => "change".into(),
            Scope::Aggregate(id) => format!("aggregate:{id}"),
            Scope::Sorted(None) => "sorted".into(),
            Scope::Sorted(Some(id)) => format!("sorted:{id}"),
        }
    }

    /// Whether its units are Scan segments.
    fn segmented(&self) -> bool {
        matches!(self, Scope::EventStore | Scope::Change)
    }
}

pub async fn run(args: Args, clients: &Clients) -> anyhow::Result<bool> {
    let names = AttributeNames::from_env();
    let source = describe(clients, &args.table, &names).await?;
    let target = args
        .to_queue
        .as_deref()
        .map_or_else(|| "exchange".to_owned(), |q| format!("queue:{q}"));
    let scope = match (&args.aggregate, args.mapping) {
        (Some(_), MappingKind::Change) => {
            bail!("--aggregate names an aggregate of an event-store table; a change table has none")
        }
        (None, MappingKind::Change) => Scope::Change,
        (Some(id), _) if source.event_store_keys => Scope::Aggregate(id.clone()),
        (_, _) if source.event_store_keys => Scope::EventStore,
        (_, _) => {
            tracing::warn!(
                "the table's key is not ({}, {}): reading it whole and sorting it, in at most \
                 {} KiB of memory and temporary files beyond (one worker)",
                names.aggregate_id,
                names.version,
                args.sort_memory.div_ceil(1 << 10)
            );
            Scope::Sorted(args.aggregate.clone())
        }
    };
    let kept = match &args.checkpoint {
        Some(path) => read_checkpoint(path)?,
        None => None,
    };
    let share = match (args.segment, args.of) {
        (Some(i), Some(n)) => (i, n),
        _ => (0, 1),
    };
    let segments = match (args.segments, &kept) {
        (Some(s), _) => s,
        (None, Some(c)) => c.segments,
        (None, None) => DEFAULT_SEGMENTS,
    };
    if share.0 >= share.1 {
        bail!("--segment {} --of {}: I is from 0 to N-1", share.0, share.1);
    }
    if share.1 > segments {
        bail!(
            "--of {} is more machines than --segments {segments}: each needs a segment",
            share.1
        );
    }
    let fresh = Checkpoint {
        table: args.table.clone(),
        target: target.clone(),
        scope: scope.name(),
        segments,
        share,
        confirmed: 0,
        units: BTreeMap::new(),
    };
    let checkpoint = match kept {
        Some(kept) => {
            same_backfill(&kept, &fresh, args.checkpoint.as_deref())?;
            tracing::info!(
                confirmed = kept.confirmed,
                units = kept.units.len(),
                "resuming after the checkpoint"
            );
            kept
        }
        None => fresh,
    };
    let mut invoker = args.sending.invoker(clients);
    if let Some(queue) = &args.to_queue {
        allowed(&mut invoker, queue).await?;
    }
    let units: VecDeque<u32> = if scope.segmented() {
        (0..segments)
            .filter(|s| s % share.1 == share.0)
            .filter(|s| !checkpoint.units.get(s).is_some_and(|p| p.done))
            .collect()
    } else if checkpoint.units.get(&0).is_some_and(|p| p.done) {
        VecDeque::new()
    } else {
        VecDeque::from([0])
    };
    let workers = args
        .workers
        .min(u32::try_from(units.len()).unwrap_or(u32::MAX).max(1));
    if workers < args.workers {
        tracing::warn!(
            workers,
            "only {} unit(s) of work left: --workers {} would leave some idle",
            units.len(),
            args.workers
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.store(true, Ordering::SeqCst);
        }
    });
    let shared = Rc::new(Shared {
        rules: args.sending.rules(),
        retry_delay: args.sending.retry_delay(),
        not_invoked_limit: args.sending.not_invoked_limit(),
        max_retries: args.sending.max_retries,
        occurred_at: names.occurred_at.clone(),
        aggregate_id: names.aggregate_id.clone(),
        version: names.version.clone(),
        since: args.since,
        until: args.until,
        sort_memory: args.sort_memory,
        to_queue: args.to_queue.clone(),
        path: args.checkpoint.clone(),
        region: clients.region.clone(),
        dynamodb: clients.dynamodb.clone(),
        source,
        scope,
        segments,
        summary: RefCell::new(Summary {
            workers,
            started: Some(Instant::now()),
            skipped: checkpoint.confirmed,
            ..Summary::default()
        }),
        checkpoint: RefCell::new(checkpoint),
        limiter: RefCell::new(Limiter::new(args.rate)),
        units: RefCell::new(units),
        interrupt: stop,
        halted: RefCell::new(None),
        sequence: Cell::new(0),
        now: Utc::now(),
        bar: progress::bar(None, "events"),
    });
    let errors = LocalSet::new()
        .run_until(async {
            let mut tasks = JoinSet::new();
            for _ in 0..workers {
                tasks.spawn_local(worker(shared.clone(), invoker.clone()));
            }
            let mut errors = Vec::new();
            while let Some(ended) = tasks.join_next().await {
                match ended {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        shared.halt(Halt::Error(format!("{e:#}")));
                        errors.push(e);
                    }
                    Err(e) => errors.push(anyhow::anyhow!("a worker failed: {e}")),
                }
            }
            errors
        })
        .await;
    shared.bar.finish_and_clear();
    print_summary(&args.table, &target, &shared.summary.borrow());
    let again = if args.checkpoint.is_some() {
        " (run it again with the same --checkpoint to go on)"
    } else {
        ""
    };
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let halted = shared.halted.borrow().clone();
    match halted {
        None => Ok(true),
        Some(Halt::Refused(reason)) => bail!("the function cannot be invoked: {reason}"),
        Some(Halt::Error(e)) => bail!("{e}"),
        Some(Halt::NotInvoked(why)) => {
            eprintln!("the function could not be invoked: {why}; the backfill stopped{again}");
            Ok(false)
        }
        Some(Halt::GaveUp(seq)) => {
            eprintln!(
                "the function did not confirm record {seq} after {} retries; the backfill \
                 stopped{again}",
                shared.max_retries
            );
            Ok(false)
        }
        Some(Halt::Interrupted) => {
            eprintln!("interrupted; the batches in flight were finished{again}");
            Ok(false)
        }
    }
}

/// Why the workers stopped before the end.
#[derive(Debug, Clone)]
enum Halt {
    /// A record kept failing: its sequence number.
    GaveUp(String),
    /// The function was out of reach longer than the limit.
    NotInvoked(String),
    /// The Invoke API refused the call.
    Refused(String),
    /// Ctrl-C.
    Interrupted,
    /// A read failed.
    Error(String),
}

/// What the workers of one run share.
struct Shared {
    rules: Rules,
    retry_delay: Duration,
    not_invoked_limit: Option<Duration>,
    max_retries: u32,
    occurred_at: String,
    aggregate_id: String,
    version: String,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    /// `--sort-memory`, in bytes.
    sort_memory: usize,
    to_queue: Option<String>,
    path: Option<PathBuf>,
    region: String,
    dynamodb: aws_sdk_dynamodb::Client,
    source: Source,
    scope: Scope,
    segments: u32,
    summary: RefCell<Summary>,
    checkpoint: RefCell<Checkpoint>,
    limiter: RefCell<Limiter>,
    /// The units no worker has taken yet.
    units: RefCell<VecDeque<u32>>,
    /// Set by Ctrl-C.
    interrupt: Arc<AtomicBool>,
    /// Set once a worker stopped: the others stop after their batch.
    halted: RefCell<Option<Halt>>,
    /// The last `SequenceNumber` given: unique within the run.
    sequence: Cell<u64>,
    /// The records' creation time (`ApproximateCreationDateTime`), one for
    /// the whole backfill.
    now: DateTime<Utc>,
    bar: ProgressBar,
}

impl Shared {
    fn halt(&self, why: Halt) {
        self.halted.borrow_mut().get_or_insert(why);
    }

    /// Whether the workers are to stop (before their next batch).
    fn stopping(&self) -> bool {
        if self.interrupt.load(Ordering::SeqCst) {
            self.halt(Halt::Interrupted);
        }
        self.halted.borrow().is_some()
    }

    /// The events of `unit`, from its place in the checkpoint.
    fn open(&self, unit: u32) -> anyhow::Result<Unit> {
        let place = self
            .checkpoint
            .borrow()
            .units
            .get(&unit)
            .cloned()
            .unwrap_or_default();
        let client = self.dynamodb.clone();
        let table = self.checkpoint.borrow().table.clone();
        let scan = |only_keys: bool| -> anyhow::Result<Scan> {
            Ok(Scan {
                client: client.clone(),
                table: table.clone(),
                segment: unit,
                total: self.segments,
                only: only_keys.then(|| self.source.keys.clone()),
                next: place.scan_from.as_ref().map(key_from_json).transpose()?,
                ended: false,
                page: VecDeque::new(),
            })
        };
        Ok(match &self.scope {
            Scope::EventStore => {
                let current = match (&place.scan_from, place.version) {
                    (Some(first), Some(version)) => {
                        let key = key_from_json(first)?;
                        let id = key
                            .get(&self.aggregate_id)
                            .cloned()
                            .context("the checkpoint's key has no aggregate id")?;
                        Some(Box::new(self.query(id, Some(first.clone()), Some(version))))
                    }
                    _ => None,
                };
                let last = current.as_ref().map(|q| q.id.clone());
                Unit::Aggregates {
                    scan: scan(true)?,
                    current,
                    last,
                }
            }
            Scope::Change => Unit::Items(scan(false)?),
            Scope::Aggregate(id) => Unit::One(Box::new(self.query(
                AttributeValue::S(id.clone()),
                None,
                place.version,
            ))),
            Scope::Sorted(_) => Unit::Sorted {
                events: None,
                after: place.aggregate.zip(place.version),
            },
        })
    }

    fn query(&self, id: AttributeValue, first: Option<Value>, after: Option<u64>) -> Query {
        Query {
            client: self.dynamodb.clone(),
            table: self.checkpoint.borrow().table.clone(),
            key: self.aggregate_id.clone(),
            version: self.version.clone(),
            group: text(&id),
            id,
            first,
            after,
            next: None,
            ended: false,
            page: VecDeque::new(),
        }
    }

    /// The next unit no worker has taken.
    fn take_unit(&self) -> Option<u32> {
        let unit = self.units.borrow_mut().pop_front()?;
        self.summary.borrow_mut().units += 1;
        Some(unit)
    }

    /// Sends `chunk` through the function (at the rate) and moves the
    /// unit's place to its last record confirmed; `Ok(false)` when the
    /// function did not confirm them all (the workers stop).
    async fn send(
        &self,
        invoker: &mut LambdaInvoker,
        unit: u32,
        chunk: &mut Vec<(Pending, Place)>,
    ) -> anyhow::Result<bool> {
        let due = self.limiter.borrow_mut().take(chunk.len());
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        let records: Vec<Pending> = chunk.iter().map(|(p, _)| p.clone()).collect();
        let pace = Pace {
            retry_delay: self.retry_delay,
            now: &Utc::now,
            stop: &|| false,
            target: self.to_queue.as_deref(),
            not_invoked_limit: self.not_invoked_limit,
        };
        let sending = Instant::now();
        let d = esm::deliver_all(invoker, &records, &self.rules, &pace, MAX_EVENT_BYTES).await;
        let done = d.stopped_at.unwrap_or(records.len());
        {
            let mut s = self.summary.borrow_mut();
            s.sending += sending.elapsed();
            s.forwarded += done as u64;
            s.failed += (records.len() - done) as u64;
        }
        self.bar.inc(done as u64);
        if let Some(last) = done.checked_sub(1) {
            self.confirmed(unit, chunk[last].1.clone(), done as u64)?;
        }
        if let Some(at) = d.stopped_at {
            let why = match (d.refused, d.not_invoked_for) {
                (Some(reason), _) => Halt::Refused(reason),
                (None, Some(why)) => Halt::NotInvoked(why),
                (None, None) => Halt::GaveUp(records[at].sequence_number.clone()),
            };
            self.halt(why);
            return Ok(false);
        }
        chunk.clear();
        Ok(true)
    }

    /// `n` more events confirmed: the unit is at `place`.
    fn confirmed(&self, unit: u32, place: Place, n: u64) -> anyhow::Result<()> {
        let mut c = self.checkpoint.borrow_mut();
        c.confirmed += n;
        c.units.insert(unit, place);
        self.save(&c)
    }

    /// Every event of `unit` is confirmed.
    fn unit_done(&self, unit: u32) -> anyhow::Result<()> {
        let mut c = self.checkpoint.borrow_mut();
        c.units.insert(
            unit,
            Place {
                done: true,
                ..Place::default()
            },
        );
        self.save(&c)
    }

    fn save(&self, c: &Checkpoint) -> anyhow::Result<()> {
        match &self.path {
            Some(path) => write_checkpoint(path, c),
            None => Ok(()),
        }
    }

    /// The stream record of `e`, with the next sequence number.
    fn record(&self, e: &Event) -> Pending {
        let n = self.sequence.get() + 1;
        self.sequence.set(n);
        stream_record(e, &self.source, n, self.now, &self.region)
    }
}

/// One worker: takes units until none is left (or the run stops), and
/// sends each unit's events in order through its own invocations, a batch
/// at a time: at most `--batch-size` records and the Invoke API's 6 MB.
async fn worker(shared: Rc<Shared>, mut invoker: LambdaInvoker) -> anyhow::Result<()> {
    while !shared.stopping() {
        let Some(unit) = shared.take_unit() else {
            return Ok(());
        };
        let mut events = shared.open(unit)?;
        let mut chunk: Vec<(Pending, Place)> = Vec::new();
        let mut size = 14;
        let mut last_group: Option<String> = None;
        loop {
            let Some(e) = events.next(&shared).await? else {
                break;
            };
            if last_group.as_deref() != Some(e.group.as_str()) {
                shared.summary.borrow_mut().groups += 1;
                last_group = Some(e.group.clone());
            }
            if !in_window(&e.item, &shared.occurred_at, shared.since, shared.until) {
                shared.summary.borrow_mut().outside_window += 1;
                shared.bar.inc(1);
                continue;
            }
            let record = shared.record(&e);
            let len = record.record.get().len() + 1;
            let full = chunk.len() >= shared.rules.batch_size || size + len > MAX_EVENT_BYTES;
            if !chunk.is_empty() && full {
                if shared.stopping() || !shared.send(&mut invoker, unit, &mut chunk).await? {
                    return Ok(());
                }
                size = 14;
            }
            shared.summary.borrow_mut().records += 1;
            size += len;
            chunk.push((record, e.place));
        }
        if !chunk.is_empty()
            && (shared.stopping() || !shared.send(&mut invoker, unit, &mut chunk).await?)
        {
            return Ok(());
        }
        shared.unit_done(unit)?;
    }
    Ok(())
}

/// The events of one unit, in the order they are sent, read a page at a
/// time.
enum Unit {
    /// A segment of an event-store table: aggregates found by a key-only
    /// Scan, each read whole by a Query.
    Aggregates {
        scan: Scan,
        /// The aggregate being read.
        current: Option<Box<Query>>,
        /// The last aggregate the Scan met: its next keys are skipped.
        last: Option<AttributeValue>,
    },
    /// A segment of a change table: its items in Scan order.
    Items(Scan),
    /// One aggregate.
    One(Box<Query>),
    /// The whole table, sorted by aggregate and version; events up to
    /// `after` were confirmed.
    Sorted {
        events: Option<spill::Sorted>,
        after: Option<(String, u64)>,
    },
}

impl Unit {
    async fn next(&mut self, shared: &Shared) -> anyhow::Result<Option<Event>> {
        match self {
            Unit::Aggregates {
                scan,
                current,
                last,
            } => loop {
                if let Some(q) = current {
                    if let Some(e) = q.next().await? {
                        return Ok(Some(e));
                    }
                    *current = None;
                }
                let Some(key) = scan.next().await? else {
                    return Ok(None);
                };
                let (Some(id), Some(version)) = (
                    key.get(&shared.aggregate_id),
                    key.get(&shared.version).and_then(number),
                ) else {
                    continue;
                };
                if last.as_ref() == Some(id) {
                    continue;
                }
                *last = Some(id.clone());
                // Sent when the Scan meets its lowest version, so once
                // whatever order the Scan gives.
                let mut q = shared.query(id.clone(), Some(item_json(&key)), None);
                q.read().await?;
                if q.lowest().is_some_and(|lowest| lowest < version) {
                    continue;
                }
                *current = Some(Box::new(q));
            },
            Unit::Items(scan) => {
                let Some(item) = scan.next().await? else {
                    return Ok(None);
                };
                let key: HashMap<String, AttributeValue> = shared
                    .source
                    .keys
                    .iter()
                    .filter_map(|k| Some((k.clone(), item.get(k)?.clone())))
                    .collect();
                let key = item_json(&key);
                Ok(Some(Event {
                    group: key.to_string(),
                    item,
                    place: Place {
                        scan_from: Some(key),
                        ..Place::default()
                    },
                }))
            }
            Unit::One(q) => q.next().await,
            Unit::Sorted { events, after } => {
                let events = match events {
                    Some(events) => events,
                    None => events.insert(sorted(shared, after.as_ref()).await?),
                };
                let Some(e) = events.next()? else {
                    return Ok(None);
                };
                let item: serde_dynamo::Item =
                    serde_json::from_str(e.item.get()).context("an item of a sorted run")?;
                Ok(Some(Event {
                    place: Place {
                        aggregate: Some(e.group.clone()),
                        version: Some(e.version),
                        ..Place::default()
                    },
                    group: e.group,
                    item: item.into(),
                }))
            }
        }
    }
}

/// The table read whole and sorted by aggregate and version, without the
/// events up to `after`: memory bounded by `--sort-memory`, the rest in
/// temporary files.
async fn sorted(shared: &Shared, after: Option<&(String, u64)>) -> anyhow::Result<spill::Sorted> {
    let mut scan = Scan {
        client: shared.dynamodb.clone(),
        table: shared.checkpoint.borrow().table.clone(),
        segment: 0,
        total: 1,
        only: None,
        next: None,
        ended: false,
        page: VecDeque::new(),
    };
    let mut sorter = spill::Sorter::new(shared.sort_memory, std::env::temp_dir());
    while let Some(item) = scan.next().await? {
        let (Some(group), Some(version)) = (
            item.get(&shared.aggregate_id).map(text),
            item.get(&shared.version).and_then(number),
        ) else {
            continue;
        };
        if after.is_some_and(|(g, v)| (g.as_str(), *v) >= (group.as_str(), version)) {
            continue;
        }
        if let Scope::Sorted(Some(only)) = &shared.scope
            && *only != group
        {
            continue;
        }
        let item = serde_json::value::to_raw_value(&serde_dynamo::Item::from(item))
            .context("an item of the table as JSON")?;
        sorter.push(spill::Entry {
            group,
            version,
            item,
        })?;
    }
    if sorter.runs() > 0 {
        tracing::info!(
            runs = sorter.runs(),
            "the table did not fit --sort-memory: merging its sorted runs from temporary files"
        );
    }
    sorter.sorted()
}

/// One Scan segment, a page at a time.
struct Scan {
    client: aws_sdk_dynamodb::Client,
    table: String,
    segment: u32,
    total: u32,
    /// Only these attributes (the key), when set.
    only: Option<Vec<String>>,
    /// The next page starts after this key.
    next: Option<HashMap<String, AttributeValue>>,
    ended: bool,
    page: VecDeque<HashMap<String, AttributeValue>>,
}

impl Scan {
    async fn next(&mut self) -> anyhow::Result<Option<HashMap<String, AttributeValue>>> {
        loop {
            if let Some(item) = self.page.pop_front() {
                return Ok(Some(item));
            }
            if self.ended {
                return Ok(None);
            }
            let mut scan = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(self.next.take());
            // One segment is the whole table: a plain Scan (moto cannot
            // segment a table whose partition key is binary).
            if self.total > 1 {
                scan = scan
                    .segment(i32::try_from(self.segment).unwrap_or(0))
                    .total_segments(i32::try_from(self.total).unwrap_or(1));
            }
            if let Some(only) = &self.only {
                let names: Vec<String> = (0..only.len()).map(|i| format!("#k{i}")).collect();
                scan = scan.projection_expression(names.join(", "));
                for (name, attribute) in names.iter().zip(only) {
                    scan = scan.expression_attribute_names(name, attribute);
                }
            }
            let out = scan
                .send()
                .await
                .with_context(|| format!("Scan {} segment {}", self.table, self.segment))?;
            self.page.extend(out.items().iter().cloned());
            self.next = out.last_evaluated_key().cloned();
            self.ended = self.next.is_none();
        }
    }
}

/// One aggregate's events in version order, a Query page at a time.
struct Query {
    client: aws_sdk_dynamodb::Client,
    table: String,
    key: String,
    version: String,
    id: AttributeValue,
    group: String,
    /// The key at which the Scan met it (the checkpoint's `scan_from`).
    first: Option<Value>,
    /// Only the versions after this one.
    after: Option<u64>,
    next: Option<HashMap<String, AttributeValue>>,
    ended: bool,
    page: VecDeque<HashMap<String, AttributeValue>>,
}

impl Query {
    /// The lowest version of the page read.
    fn lowest(&self) -> Option<u64> {
        self.page
            .front()
            .and_then(|item| item.get(&self.version))
            .and_then(number)
    }

    /// Reads the next page.
    async fn read(&mut self) -> anyhow::Result<()> {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .expression_attribute_names("#a", &self.key)
            .expression_attribute_values(":id", self.id.clone())
            .scan_index_forward(true)
            .consistent_read(true)
            .set_exclusive_start_key(self.next.take());
        query = match self.after {
            Some(v) => query
                .key_condition_expression("#a = :id AND #v > :v")
                .expression_attribute_names("#v", &self.version)
                .expression_attribute_values(":v", AttributeValue::N(v.to_string())),
            None => query.key_condition_expression("#a = :id"),
        };
        let out = query
            .send()
            .await
            .with_context(|| format!("Query {} {} = {}", self.table, self.key, self.group))?;
        self.page.extend(out.items().iter().cloned());
        self.next = out.last_evaluated_key().cloned();
        self.ended = self.next.is_none();
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(item) = self.page.pop_front() {
                let Some(version) = item.get(&self.version).and_then(number) else {
                    continue;
                };
                return Ok(Some(Event {
                    group: self.group.clone(),
                    item,
                    place: Place {
                        scan_from: self.first.clone(),
                        aggregate: Some(self.group.clone()),
                        version: Some(version),
                        done: false,
                    },
                }));
            }
            if self.ended {
                return Ok(None);
            }
            self.read().await?;
        }
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
                ("workers", &s.workers),
                ("units", &s.units),
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

/// An attribute as text: a string or a number as it is, anything else
/// (a binary) as its DynamoDB JSON.
fn text(v: &AttributeValue) -> String {
    match v {
        AttributeValue::S(s) => s.clone(),
        AttributeValue::N(n) => n.clone(),
        other => item_json(&HashMap::from([(String::new(), other.clone())]))
            .get("")
            .map(Value::to_string)
            .unwrap_or_default(),
    }
}

fn number(v: &AttributeValue) -> Option<u64> {
    match v {
        AttributeValue::N(n) => n.parse().ok(),
        _ => None,
    }
}

/// A size: bytes, or KiB, MiB or GiB with a K, M or G suffix.
fn parse_size(text: &str) -> Result<usize, String> {
    let (digits, unit) = match text.trim().to_ascii_uppercase().as_str() {
        t if t.ends_with('K') => (t[..t.len() - 1].to_owned(), 1 << 10),
        t if t.ends_with('M') => (t[..t.len() - 1].to_owned(), 1 << 20),
        t if t.ends_with('G') => (t[..t.len() - 1].to_owned(), 1 << 30),
        t => (t.to_owned(), 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?} is not a size (bytes, or a number with K, M or G)"))
}

/// A key as the checkpoint keeps it (DynamoDB JSON) back as the SDK's.
fn key_from_json(v: &Value) -> anyhow::Result<HashMap<String, AttributeValue>> {
    let item: serde_dynamo::Item =
        serde_json::from_value(v.clone()).context("a key in the checkpoint")?;
    Ok(item.into())
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

fn read_checkpoint(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    parse_checkpoint(&text).with_context(|| format!("{}", path.display()))
}

fn parse_checkpoint(text: &str) -> anyhow::Result<Option<Checkpoint>> {
    let value: Value = serde_json::from_str(text).context("not a backfill checkpoint")?;
    if value.get("position").is_some() && value.get("units").is_none() {
        bail!(
            "the checkpoint of an earlier forwarder-ops (one worker, aggregates in id order): \
             this one cannot resume it. Finish it with that version, or delete it to start \
             over (consumers drop what they have by messageId)"
        );
    }
    serde_json::from_value(value)
        .map(Some)
        .context("not a backfill checkpoint")
}

/// Refuses a checkpoint of another backfill: another table, target, scope
/// or split into segments.
fn same_backfill(kept: &Checkpoint, now: &Checkpoint, path: Option<&Path>) -> anyhow::Result<()> {
    let shown = |c: &Checkpoint| {
        format!(
            "{} to {} ({}, --segments {}, --segment {} --of {})",
            c.table, c.target, c.scope, c.segments, c.share.0, c.share.1
        )
    };
    if (
        &kept.table,
        &kept.target,
        &kept.scope,
        kept.segments,
        kept.share,
    ) != (&now.table, &now.target, &now.scope, now.segments, now.share)
    {
        bail!(
            "{} is the checkpoint of a backfill of {}, not of {}",
            path.map_or_else(|| "the checkpoint".into(), |p| p.display().to_string()),
            shown(kept),
            shown(now)
        );
    }
    Ok(())
}

/// Writes the checkpoint whole or not at all (a new file, then renamed).
fn write_checkpoint(path: &Path, c: &Checkpoint) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(c)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// `--rate`: records per second, averaged from the start, over every
/// worker.
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

    /// Counts `n` more records; when to send them so that the average
    /// stays at or under the rate (`None`: no limit).
    fn take(&mut self, n: usize) -> Option<Instant> {
        self.sent += n as u64;
        (self.rate > 0).then(|| {
            self.started + Duration::from_secs_f64(self.sent as f64 / f64::from(self.rate))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::primitives::Blob;

    #[test]
    fn sizes_are_bytes_or_binary_multiples_and_nothing_else() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        for bad in [
            "",
            "0",
            "0M",
            "-1",
            "1.5M",
            "M",
            "12MB",
            "99999999999999999999G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

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
            item: item(&[
                ("aggregateId", AttributeValue::S("prod-1".into())),
                ("version", AttributeValue::N("3".into())),
                ("eventType", AttributeValue::S("ProductRenamed".into())),
            ]),
            place: Place::default(),
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

    #[test]
    fn the_rate_limit_holds_the_average() {
        let mut limiter = Limiter::new(1000);
        let started = limiter.started;
        for _ in 0..3 {
            limiter.take(50);
        }
        assert_eq!(limiter.take(50), Some(started + Duration::from_millis(200)));
        assert_eq!(Limiter::new(0).take(50), None, "no limit");
    }

    #[test]
    fn a_key_is_kept_in_the_checkpoint_exactly_binaries_included() {
        // Keys that text joined with '#' made one ("a#b", "c") and ("a",
        // "b#c"), and binaries that text made "": each is its own place.
        let keys = [
            item(&[
                ("pk", AttributeValue::S("a#b".into())),
                ("sk", AttributeValue::S("c".into())),
            ]),
            item(&[
                ("pk", AttributeValue::S("a".into())),
                ("sk", AttributeValue::S("b#c".into())),
            ]),
            item(&[("pk", AttributeValue::B(Blob::new(vec![0, 1, 255])))]),
            item(&[("pk", AttributeValue::B(Blob::new(vec![7])))]),
            item(&[("pk", AttributeValue::N("12.50".into()))]),
        ];
        let kept: Vec<Value> = keys.iter().map(item_json).collect();
        for (i, k) in kept.iter().enumerate() {
            for other in &kept[i + 1..] {
                assert_ne!(k, other);
            }
            let c = Checkpoint {
                units: BTreeMap::from([(
                    3,
                    Place {
                        scan_from: Some(k.clone()),
                        ..Place::default()
                    },
                )]),
                ..Checkpoint::default()
            };
            let text = serde_json::to_string(&c).unwrap();
            let back = parse_checkpoint(&text).unwrap().unwrap();
            assert_eq!(back, c);
            assert_eq!(key_from_json(k).unwrap(), keys[i], "{text}");
        }
        assert_eq!(
            text(&AttributeValue::B(Blob::new(vec![0, 1, 255]))),
            r#"{"B":"AAH/"}"#
        );
    }

    #[test]
    fn an_earlier_checkpoint_or_another_backfills_is_refused_saying_why() {
        let old = r#"{"table":"t","target":"exchange","group":"a","version":3,"position":9}"#;
        let err = parse_checkpoint(old).unwrap_err().to_string();
        assert!(err.contains("an earlier forwarder-ops"), "{err}");
        let c = Checkpoint {
            table: "t".into(),
            target: "exchange".into(),
            scope: "event-store".into(),
            segments: 64,
            share: (0, 1),
            ..Checkpoint::default()
        };
        assert!(same_backfill(&c, &c.clone(), None).is_ok());
        let other = Checkpoint {
            segments: 16,
            ..c.clone()
        };
        let err = same_backfill(&c, &other, None).unwrap_err().to_string();
        assert!(err.contains("--segments 64"), "{err}");
    }
}
