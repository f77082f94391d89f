//! Reading a table's stream with DynamoDB Streams, as Lambda's mapping
//! does: each shard on its own ([`ShardReader`]: its iterator, renewed when
//! it expires, and its records turned into the records Lambda delivers,
//! filtered), and the shards in lineage order ([`StreamReader`]: a child
//! only once its parent is read to its end). The API is a port
//! ([`Streams`]), so the rules are tested with a scripted stream.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    future::Future,
    rc::Rc,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use aws_sdk_dynamodbstreams::{
    Client,
    error::{DisplayErrorContext, ProvideErrorMetadata},
    types::{AttributeValue, Record, ShardIteratorType},
};
use event_forwarder::esm::{Pending, StreamRecord, filter::Filter};
use serde_json::Value;
use tokio::time::Instant;

/// A shard as DescribeStream lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    pub parent: Option<String>,
    pub starting: Option<String>,
    /// Set once the shard is closed.
    pub ending: Option<String>,
}

/// One GetRecords page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub records: Vec<StreamRecord>,
    /// `None` once a closed shard is read to its end.
    pub next: Option<String>,
}

/// What can go wrong reading a stream, as far as the rules care.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// An iterator is good for 15 minutes after it was issued.
    #[error("ExpiredIteratorException: the shard iterator expired")]
    ExpiredIterator,
    /// The position is older than the stream's 24 h.
    #[error("TrimmedDataAccessException: {0}")]
    Trimmed(String),
    /// No such stream or shard.
    #[error("ResourceNotFoundException: {0}")]
    NotFound(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The DynamoDB Streams calls the tool makes.
pub trait Streams: Clone + 'static {
    /// Every shard of the stream (all DescribeStream pages).
    fn shards(
        &self,
        stream_arn: &str,
    ) -> impl Future<Output = Result<Vec<ShardInfo>, StreamsError>>;
    /// GetShardIterator; `None` when the API gives none.
    fn iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        at: &Position,
    ) -> impl Future<Output = Result<Option<String>, StreamsError>>;
    /// GetRecords, at most `limit` records.
    fn records(
        &self,
        iterator: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Page, StreamsError>>;
}

/// The AWS error's code as one of the errors the rules handle.
fn streams_error<E, R>(
    e: aws_sdk_dynamodbstreams::error::SdkError<E, R>,
    what: String,
) -> StreamsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let message = e.message().unwrap_or_default().to_owned();
    match e.code() {
        Some("ExpiredIteratorException") => StreamsError::ExpiredIterator,
        Some("TrimmedDataAccessException") => StreamsError::Trimmed(message),
        Some("ResourceNotFoundException") => StreamsError::NotFound(message),
        _ => StreamsError::Other(anyhow::anyhow!("{what}: {}", DisplayErrorContext(&e))),
    }
}

impl Streams for Client {
    async fn shards(&self, stream_arn: &str) -> Result<Vec<ShardInfo>, StreamsError> {
        let mut shards = Vec::new();
        let mut exclusive_start = None;
        loop {
            let out = self
                .describe_stream()
                .stream_arn(stream_arn)
                .set_exclusive_start_shard_id(exclusive_start)
                .send()
                .await
                .map_err(|e| streams_error(e, format!("DescribeStream {stream_arn}")))?;
            let Some(description) = out.stream_description() else {
                return Err(
                    anyhow::anyhow!("DescribeStream {stream_arn} gave no description").into(),
                );
            };
            for shard in description.shards() {
                let Some(id) = shard.shard_id() else { continue };
                let range = shard.sequence_number_range();
                shards.push(ShardInfo {
                    id: id.to_owned(),
                    parent: shard.parent_shard_id().map(str::to_owned),
                    starting: range
                        .and_then(|r| r.starting_sequence_number())
                        .map(str::to_owned),
                    ending: range
                        .and_then(|r| r.ending_sequence_number())
                        .map(str::to_owned),
                });
            }
            exclusive_start = description.last_evaluated_shard_id().map(str::to_owned);
            if exclusive_start.is_none() {
                return Ok(shards);
            }
        }
    }

    async fn iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        at: &Position,
    ) -> Result<Option<String>, StreamsError> {
        let (kind, seq) = match at {
            Position::TrimHorizon => (ShardIteratorType::TrimHorizon, None),
            Position::Latest => (ShardIteratorType::Latest, None),
            Position::At(s) => (ShardIteratorType::AtSequenceNumber, Some(s.clone())),
            Position::After(s) => (ShardIteratorType::AfterSequenceNumber, Some(s.clone())),
        };
        let out = self
            .get_shard_iterator()
            .stream_arn(stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(kind)
            .set_sequence_number(seq)
            .send()
            .await
            .map_err(|e| streams_error(e, format!("GetShardIterator {shard_id} at {at}")))?;
        Ok(out.shard_iterator().map(str::to_owned))
    }

    async fn records(&self, iterator: &str, limit: usize) -> Result<Page, StreamsError> {
        let out = self
            .get_records()
            .shard_iterator(iterator)
            .limit(i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000))
            .send()
            .await
            .map_err(|e| streams_error(e, "GetRecords".to_owned()))?;
        Ok(Page {
            records: out.records().iter().filter_map(stream_record).collect(),
            next: out.next_shard_iterator().map(str::to_owned),
        })
    }
}

/// A position in one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// From the oldest record the shard keeps.
    TrimHorizon,
    /// From the records written after the iterator is issued.
    Latest,
    /// From this record on.
    At(String),
    /// From the record after this one: the checkpoint of a shard.
    After(String),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::TrimHorizon => f.write_str("trim-horizon"),
            Position::Latest => f.write_str("latest"),
            Position::At(s) => write!(f, "at:{s}"),
            Position::After(s) => write!(f, "after:{s}"),
        }
    }
}

impl FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let seq = |seq: &str| {
            if !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) {
                Ok(seq.to_owned())
            } else {
                Err(format!("{seq:?} is not a sequence number"))
            }
        };
        match s.split_once(':') {
            None if s == "trim-horizon" => Ok(Position::TrimHorizon),
            None if s == "latest" => Ok(Position::Latest),
            Some(("at", n)) => Ok(Position::At(seq(n)?)),
            Some(("after", n)) => Ok(Position::After(seq(n)?)),
            _ => Err(format!(
                "{s:?} is not a position: trim-horizon, latest, at:SEQ or after:SEQ"
            )),
        }
    }
}

/// Where each shard resumes (`--resume-at`, printed as `resume_at`):
/// `SHARD=POSITION` pairs, comma-separated. Sequence numbers are ordered
/// within a shard only, so each shard has its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume(pub BTreeMap<String, Position>);

impl fmt::Display for Resume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (shard, at)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{shard}={at}")?;
        }
        Ok(())
    }
}

impl FromStr for Resume {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut shards = BTreeMap::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((shard, at)) = pair.split_once('=') else {
                return Err(format!(
                    "{pair:?} names no shard: give SHARD=POSITION, e.g. \
                     shardId-00000001700000000000-0000abcd=after:1100000000000000000001 \
                     (as a run's summary prints resume_at)"
                ));
            };
            let at: Position = at.parse()?;
            if at == Position::Latest {
                // LATEST is wherever the shard is when the new run starts:
                // what was written since the last run would be skipped.
                return Err(format!(
                    "{shard}=latest is not a resume point: records written since the \
                     run stopped would be skipped; give after:SEQ or at:SEQ (as a run's \
                     summary prints them) or trim-horizon (sends the shard's records \
                     again: duplicates, nothing lost)"
                ));
            }
            shards.insert(shard.to_owned(), at);
        }
        if shards.is_empty() {
            return Err("no SHARD=POSITION given".to_owned());
        }
        Ok(Self(shards))
    }
}

/// Where a run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Every shard from its oldest record.
    TrimHorizon,
    /// The open shards from their newest record, fixed when the run starts;
    /// shards made since from their beginning.
    Latest,
    /// Where a previous run stopped: the shards it names from their
    /// position, their ancestors not at all (done), the others from their
    /// beginning.
    Resume(Resume),
}

/// How often the shard list is read again for new shards.
const DESCRIBE_EVERY: Duration = Duration::from_secs(10);

/// Wait between two empty reads of a shard (Lambda polls four times a second).
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// A shard known to the run.
#[derive(Debug)]
struct Known {
    info: ShardInfo,
    /// Listed when the run started (not a shard made since).
    initial: bool,
    state: State,
    /// The LATEST iterator, issued when the run started.
    latest: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not handed out yet (its parent is not read to its end).
    Waiting,
    /// A [`ShardReader`] has it.
    Handed,
    /// Read to its end and every record done, or nothing for this run.
    Finished,
}

/// The shards of a stream in lineage order: hands out each shard once its
/// parent is finished, so that an aggregate's records in a child never go
/// out before those left in its parent.
pub struct StreamReader<S> {
    streams: S,
    pub stream_arn: String,
    start: Start,
    shards: BTreeMap<String, Known>,
    last_describe: Option<Instant>,
    filter: Option<Rc<Filter>>,
}

impl<S: Streams> StreamReader<S> {
    /// Lists the shards. With [`Start::Latest`] every open shard's iterator
    /// is issued now, so the starting point is the run's start, not
    /// whenever a shard is first read.
    pub async fn new(
        streams: S,
        stream_arn: String,
        start: Start,
        filter: Option<Rc<Filter>>,
    ) -> anyhow::Result<Self> {
        let mut reader = Self {
            streams,
            stream_arn,
            start,
            shards: BTreeMap::new(),
            last_describe: None,
            filter,
        };
        reader.describe().await?;
        if reader.shards.is_empty() {
            bail!("the stream {} has no shards", reader.stream_arn);
        }
        match &reader.start {
            Start::Latest => {
                let open: Vec<String> = reader
                    .shards
                    .values()
                    .filter(|k| k.info.ending.is_none())
                    .map(|k| k.info.id.clone())
                    .collect();
                for id in open {
                    let it = reader
                        .streams
                        .iterator(&reader.stream_arn, &id, &Position::Latest)
                        .await
                        .with_context(|| format!("GetShardIterator LATEST {id}"))?;
                    if let Some(known) = reader.shards.get_mut(&id) {
                        known.latest = it;
                    }
                }
            }
            Start::Resume(resume) => {
                let mut done = Vec::new();
                for id in resume.0.keys() {
                    if !reader.shards.contains_key(id) {
                        tracing::warn!(
                            shard = %id,
                            "the stream no longer lists this shard of --resume-at: \
                             its children are read from their beginning"
                        );
                    }
                    done.extend(ancestors(&reader.shards, id));
                }
                for id in done {
                    if let Some(known) = reader.shards.get_mut(&id) {
                        known.state = State::Finished;
                    }
                }
            }
            Start::TrimHorizon => {}
        }
        Ok(reader)
    }

    /// Reads the shard list and adds the shards not known yet.
    pub async fn describe(&mut self) -> anyhow::Result<()> {
        let shards = self
            .streams
            .shards(&self.stream_arn)
            .await
            .with_context(|| format!("DescribeStream {}", self.stream_arn))?;
        let initial = self.last_describe.is_none();
        for info in shards {
            self.shards.entry(info.id.clone()).or_insert(Known {
                info,
                initial,
                state: State::Waiting,
                latest: None,
            });
        }
        self.last_describe = Some(Instant::now());
        Ok(())
    }

    /// Whether the shard list is due to be read again.
    pub fn due(&self) -> bool {
        self.last_describe
            .is_none_or(|t| t.elapsed() >= DESCRIBE_EVERY)
    }

    /// Every shard known is finished.
    pub fn finished(&self) -> bool {
        self.shards.values().all(|k| k.state == State::Finished)
    }

    /// A shard handed out is read to its end and every record is done.
    pub fn finish(&mut self, id: &str) {
        if let Some(known) = self.shards.get_mut(id) {
            known.state = State::Finished;
        }
    }

    /// The shards that may be read now and were not handed out yet.
    pub fn take_ready(&mut self) -> Vec<ShardReader<S>> {
        let mut out = Vec::new();
        loop {
            let ready: Vec<String> = self
                .shards
                .iter()
                .filter(|(_, k)| k.state == State::Waiting)
                .filter(|(_, k)| {
                    k.info
                        .parent
                        .as_ref()
                        .and_then(|p| self.shards.get(p))
                        .is_none_or(|p| p.state == State::Finished)
                })
                .map(|(id, _)| id.clone())
                .collect();
            if ready.is_empty() {
                return out;
            }
            for id in ready {
                let Some(known) = self.shards.get_mut(&id) else {
                    continue;
                };
                let first = match &self.start {
                    // A shard closed before the run started has nothing
                    // newer than LATEST; one made since holds only newer
                    // records, from its beginning.
                    Start::Latest if known.initial && known.info.ending.is_some() => None,
                    Start::Latest if known.initial => Some(Position::Latest),
                    Start::Resume(resume) => {
                        Some(resume.0.get(&id).cloned().unwrap_or(Position::TrimHorizon))
                    }
                    _ => Some(Position::TrimHorizon),
                };
                let Some(first) = first else {
                    known.state = State::Finished;
                    continue;
                };
                known.state = State::Handed;
                let mut shard = ShardReader::new(
                    self.streams.clone(),
                    self.stream_arn.clone(),
                    id,
                    first,
                    self.filter.clone(),
                );
                if let Some(it) = known.latest.take() {
                    shard.started = true;
                    shard.iterator = Some(it);
                }
                out.push(shard);
            }
        }
    }
}

/// The ancestors of `id` the stream still lists, nearest first.
fn ancestors(shards: &BTreeMap<String, Known>, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = shards.get(id).and_then(|k| k.info.parent.clone());
    while let Some(parent) = at {
        if out.contains(&parent) {
            break;
        }
        at = shards.get(&parent).and_then(|k| k.info.parent.clone());
        if shards.contains_key(&parent) {
            out.push(parent);
        }
    }
    out
}

/// A record read, or the place of one the filter kept out.
#[derive(Debug)]
enum Slot {
    Record(Pending),
    Filtered(String),
}

/// A batch of one shard.
#[derive(Debug)]
pub struct Batch {
    /// The records that match the filter, in order.
    pub records: Vec<Pending>,
    /// Records the filter kept out among (and just before) them.
    pub filtered: usize,
    /// The sequence number of the last record taken, filtered or not: the
    /// shard's checkpoint once the batch is done.
    pub through: String,
}

/// One shard: its iterator and the records read but not handed out yet.
pub struct ShardReader<S> {
    streams: S,
    stream_arn: String,
    pub id: String,
    /// Where it started: its checkpoint until a record is done.
    pub start: Position,
    iterator: Option<String>,
    started: bool,
    closed: bool,
    /// The last record read: an expired iterator is renewed after it.
    last_read: Option<String>,
    /// The first record read: where a shard started at LATEST resumes
    /// until a batch is done.
    first_read: Option<String>,
    buffer: VecDeque<Slot>,
    filter: Option<Rc<Filter>>,
    /// Iterators renewed after they expired.
    pub renewals: u32,
    /// Set when the run is to stop (Ctrl-C): a batching window ends there.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl<S: Streams> ShardReader<S> {
    pub fn new(
        streams: S,
        stream_arn: String,
        id: String,
        start: Position,
        filter: Option<Rc<Filter>>,
    ) -> Self {
        Self {
            streams,
            stream_arn,
            id,
            start,
            iterator: None,
            started: false,
            closed: false,
            last_read: None,
            first_read: None,
            buffer: VecDeque::new(),
            filter,
            renewals: 0,
            interrupt: None,
        }
    }

    /// Closed, read to its end and every record handed out.
    pub fn finished(&self) -> bool {
        self.closed && self.buffer.is_empty()
    }

    /// Where the shard resumes, given its `checkpoint`: never LATEST, which
    /// names no place in the shard (a run resumed there would skip what was
    /// written meanwhile). A shard started at LATEST resumes at the first
    /// record it read, or, when it read none, at its trim horizon: the
    /// records written before the run are sent again (duplicates), none is
    /// skipped. DynamoDB Streams has no iterator "at a time" that would
    /// name the run's start.
    pub fn resume_point(&self, checkpoint: Position) -> Position {
        match (checkpoint, &self.first_read) {
            (Position::Latest, Some(first)) => Position::At(first.clone()),
            (Position::Latest, None) => Position::TrimHorizon,
            (at, _) => at,
        }
    }

    /// A new iterator from the last record read (or the start): the one
    /// held expired, which happens when no read came for 15 minutes (a
    /// batch being retried all that time).
    async fn renew(&mut self) -> anyhow::Result<()> {
        // Never LATEST again: that would skip what was written since the
        // first iterator (see `resume_point`).
        let from = self
            .last_read
            .clone()
            .map_or_else(|| self.resume_point(self.start.clone()), Position::After);
        tracing::info!(shard = %self.id, from = %from, "the shard iterator expired; renewed");
        self.renewals += 1;
        self.iterator = self
            .streams
            .iterator(&self.stream_arn, &self.id, &from)
            .await
            .with_context(|| format!("GetShardIterator {} {from}", self.id))?;
        self.closed = self.iterator.is_none();
        Ok(())
    }

    /// One GetRecords into the buffer; how many records came.
    async fn read(&mut self, limit: usize) -> anyhow::Result<usize> {
        if !self.started {
            self.iterator = self
                .streams
                .iterator(&self.stream_arn, &self.id, &self.start)
                .await
                .with_context(|| format!("GetShardIterator {} {}", self.id, self.start))?;
            self.started = true;
            self.closed = self.iterator.is_none();
        }
        let mut renewed = false;
        let page = loop {
            let Some(iterator) = self.iterator.clone() else {
                return Ok(0);
            };
            match self.streams.records(&iterator, limit).await {
                Ok(page) => break page,
                Err(StreamsError::ExpiredIterator) if !renewed => {
                    renewed = true;
                    self.renew().await?;
                }
                Err(e) => return Err(e).with_context(|| format!("GetRecords {}", self.id)),
            }
        };
        let n = page.records.len();
        for r in page.records {
            let record = r.to_lambda_value(&self.stream_arn);
            self.last_read = Some(r.sequence_number.clone());
            self.first_read
                .get_or_insert_with(|| r.sequence_number.clone());
            let slot = if self.filter.as_ref().is_none_or(|f| f.matches(&record)) {
                Slot::Record(r.pending(&record))
            } else {
                Slot::Filtered(r.sequence_number)
            };
            self.buffer.push_back(slot);
        }
        self.iterator = page.next;
        self.closed = self.iterator.is_none();
        Ok(n)
    }

    /// The records buffered, and the size of the event they would make.
    fn buffered(&self) -> (usize, usize) {
        self.buffer
            .iter()
            .filter_map(|s| match s {
                Slot::Record(r) => Some(r.record.get().len() + 1),
                Slot::Filtered(_) => None,
            })
            .fold((0, 14), |(n, size), len| (n + 1, size + len))
    }

    /// The next batch: at most `max_records` records and `max_bytes` of
    /// event, gathered for at most `window` (none: what one read gives).
    /// As Lambda's window does, gathering ends as soon as either limit is
    /// reached, so a batch of large records is not held for the window and
    /// the buffer never holds much more than one invocation's payload.
    /// `None` when nothing new came.
    pub async fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        window: Duration,
    ) -> anyhow::Result<Option<Batch>> {
        let until = Instant::now() + window;
        loop {
            let (buffered, size) = self.buffered();
            let interrupted = self
                .interrupt
                .as_ref()
                .is_some_and(|stop| stop.load(Ordering::SeqCst));
            if buffered >= max_records
                || size >= max_bytes
                || (self.started && self.closed)
                || interrupted
            {
                break;
            }
            let got = self.read(max_records - buffered).await?;
            let now = Instant::now();
            if now >= until || window.is_zero() {
                break;
            }
            if got == 0 {
                tokio::time::sleep(POLL_EVERY.min(until - now)).await;
            }
        }
        Ok(self.take(max_records, max_bytes))
    }

    /// Takes the next batch off the buffer, with the filtered places
    /// before and among its records.
    fn take(&mut self, max_records: usize, max_bytes: usize) -> Option<Batch> {
        let mut records = Vec::new();
        let mut filtered = 0;
        let mut through = None;
        let mut size = 14;
        while let Some(slot) = self.buffer.front() {
            match slot {
                Slot::Filtered(seq) => {
                    filtered += 1;
                    through = Some(seq.clone());
                }
                Slot::Record(r) => {
                    let len = r.record.get().len() + 1;
                    // A single larger record still goes alone: the Invoke
                    // API refuses it and the mapping gives up on it.
                    if records.len() >= max_records.max(1)
                        || (!records.is_empty() && size + len > max_bytes)
                    {
                        break;
                    }
                    size += len;
                    through = Some(r.sequence_number.clone());
                }
            }
            if let Some(Slot::Record(r)) = self.buffer.pop_front() {
                records.push(r);
            }
        }
        through.map(|through| Batch {
            records,
            filtered,
            through,
        })
    }
}

/// `a < b` for sequence numbers (compared as integers: by length, then
/// digit by digit). Only meaningful within one shard.
pub fn before(a: &str, b: &str) -> bool {
    (a.len(), a) < (b.len(), b)
}

/// A `GetRecords` record as the library's stream record; `None` without a
/// sequence number (never seen from DynamoDB).
pub fn stream_record(record: &Record) -> Option<StreamRecord> {
    let d = record.dynamodb()?;
    let image = |m: Option<&HashMap<String, AttributeValue>>| m.map(item_json);
    Some(StreamRecord {
        event_id: record.event_id().unwrap_or_default().to_owned(),
        event_name: record
            .event_name()
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        event_version: record.event_version().unwrap_or("1.1").to_owned(),
        aws_region: record.aws_region().unwrap_or_default().to_owned(),
        created: d.approximate_creation_date_time().map(|t| t.as_secs_f64()),
        keys: image(d.keys()),
        new_image: image(d.new_image()),
        old_image: image(d.old_image()),
        sequence_number: d.sequence_number()?.to_owned(),
        size_bytes: d.size_bytes(),
        stream_view_type: d.stream_view_type().map(|v| v.as_str().to_owned()),
        user_identity: record.user_identity().map(|u| {
            (
                u.r#type().unwrap_or_default().to_owned(),
                u.principal_id().unwrap_or_default().to_owned(),
            )
        }),
        backfill: false,
    })
}

/// An item in DynamoDB JSON (`{"S": "..."}`, binaries in base64, by
/// serde_dynamo), its attributes in name order at every level (serde_json's
/// map is sorted), so the same item always gives the same bytes. For the
/// items of both SDKs: DynamoDB's and DynamoDB Streams'.
pub fn item_json<T>(item: &HashMap<String, T>) -> Value
where
    T: Clone,
    serde_dynamo::AttributeValue: From<T>,
{
    let item: serde_dynamo::Item = item.clone().into();
    // Serializing a map with string keys cannot fail.
    serde_json::to_value(item).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted::{ScriptedStreams, record};
    use aws_sdk_dynamodbstreams::{
        primitives::{Blob, DateTime},
        types::{Identity, OperationType, StreamRecord as SdkStreamRecord, StreamViewType},
    };
    use base64::Engine as _;
    use serde_json::json;

    const ARN: &str = "arn:aws:dynamodb:eu-west-1:1:table/t/stream/x";

    fn records(shard_seq: u64, n: u64) -> Vec<StreamRecord> {
        (0..n)
            .map(|i| record(&(shard_seq + i).to_string(), "agg", i + 1, 1_795_348_800.0))
            .collect()
    }

    fn seqs(batch: &Batch) -> Vec<&str> {
        batch
            .records
            .iter()
            .map(|r| r.sequence_number.as_str())
            .collect()
    }

    async fn reader(streams: &ScriptedStreams, start: Start) -> StreamReader<ScriptedStreams> {
        StreamReader::new(streams.clone(), ARN.into(), start, None)
            .await
            .unwrap()
    }

    fn ids(shards: &[ShardReader<ScriptedStreams>]) -> Vec<(&str, String)> {
        shards
            .iter()
            .map(|s| (s.id.as_str(), s.start.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn a_child_shard_is_handed_out_only_after_its_parent_is_finished() {
        // a (closed) split into b and c; d's parent is past the trim horizon.
        let streams = ScriptedStreams::default();
        streams
            .shard("a", None, "100")
            .shard("b", Some("a"), "200")
            .shard("c", Some("a"), "210")
            .shard("d", Some("gone"), "50");
        streams.write("a", records(100, 2));
        streams.close("a");
        let mut r = reader(&streams, Start::TrimHorizon).await;
        let first = r.take_ready();
        assert_eq!(
            ids(&first),
            [("a", "trim-horizon".into()), ("d", "trim-horizon".into())]
        );
        assert!(r.take_ready().is_empty(), "each shard is handed out once");
        r.finish("a");
        assert_eq!(
            ids(&r.take_ready()),
            [("b", "trim-horizon".into()), ("c", "trim-horizon".into())]
        );
        assert!(!r.finished());
        for id in ["b", "c", "d"] {
            r.finish(id);
        }
        assert!(r.finished());
    }

    #[tokio::test]
    async fn latest_is_fixed_for_every_open_shard_when_the_run_starts() {
        let streams = ScriptedStreams::default();
        streams
            .shard("a", None, "100")
            .shard("b", None, "500")
            .shard("old", None, "10");
        streams.write("a", records(100, 3));
        streams.write("b", records(500, 3));
        streams.write("old", records(10, 2));
        streams.close("old");
        let mut r = reader(&streams, Start::Latest).await;
        // Written after the start, before any shard is read.
        streams.write("a", records(103, 1));
        streams.write("b", records(503, 1));
        let mut shards = r.take_ready();
        assert_eq!(
            ids(&shards),
            [("a", "latest".into()), ("b", "latest".into())]
        );
        for (shard, expected) in shards.iter_mut().zip(["103", "503"]) {
            let batch = shard.next_batch(10, 1 << 20, Duration::ZERO).await.unwrap();
            assert_eq!(seqs(&batch.unwrap()), [expected], "{}", shard.id);
        }
        // A shard made during the run is read from its beginning.
        streams.shard("new", Some("b"), "600");
        r.describe().await.unwrap();
        r.finish("b");
        assert_eq!(ids(&r.take_ready()), [("new", "trim-horizon".into())]);
    }

    #[tokio::test]
    async fn an_expired_iterator_is_renewed_after_the_last_record_read() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100");
        streams.write("a", records(100, 5));
        let mut shard = reader(&streams, Start::TrimHorizon)
            .await
            .take_ready()
            .remove(0);
        let first = shard
            .next_batch(2, 1 << 20, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seqs(&first), ["100", "101"]);
        // A batch retried for 15 minutes: no read meanwhile.
        streams.expire_issued();
        let second = shard
            .next_batch(2, 1 << 20, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seqs(&second), ["102", "103"], "nothing lost or read twice");
        assert_eq!(shard.renewals, 1);
        assert!(
            streams
                .calls()
                .contains(&"GetShardIterator a after:101".to_owned()),
            "{:?}",
            streams.calls()
        );
        let third = shard
            .next_batch(2, 1 << 20, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seqs(&third), ["104"]);
    }

    #[tokio::test]
    async fn an_expired_latest_iterator_with_nothing_read_is_renewed_without_skipping() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100");
        streams.write("a", records(100, 2));
        let mut shard = reader(&streams, Start::Latest).await.take_ready().remove(0);
        // Written after the start; no read for 15 minutes.
        streams.write("a", records(102, 1));
        streams.expire_issued();
        let batch = shard
            .next_batch(10, 1 << 20, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert!(
            seqs(&batch).contains(&"102"),
            "renewed at LATEST, 102 would be skipped: {:?}",
            seqs(&batch)
        );
    }

    #[tokio::test]
    async fn an_expired_iterator_with_records_still_buffered_renews_after_them() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100");
        streams.write("a", records(100, 6));
        let mut shard = reader(&streams, Start::TrimHorizon)
            .await
            .take_ready()
            .remove(0);
        // One read of 4 records; a batch of 2 handed out, 2 left buffered.
        shard.read(4).await.unwrap();
        let first = shard.take(2, 1 << 20).unwrap();
        assert_eq!(seqs(&first), ["100", "101"]);
        streams.expire_issued();
        let mut got = Vec::new();
        while let Some(b) = shard.next_batch(4, 1 << 20, Duration::ZERO).await.unwrap() {
            got.extend(seqs(&b).into_iter().map(str::to_owned));
        }
        assert_eq!(got, ["102", "103", "104", "105"]);
    }

    #[test]
    fn a_resume_point_is_printed_as_it_is_read_back() {
        let resume = Resume(BTreeMap::from([
            (
                "shardId-a".to_owned(),
                Position::After("1100000000000000000005".into()),
            ),
            (
                "shardId-b".to_owned(),
                Position::At("2200000000000000000001".into()),
            ),
            ("shardId-c".to_owned(), Position::TrimHorizon),
        ]));
        let text = resume.to_string();
        assert_eq!(
            text,
            "shardId-a=after:1100000000000000000005,shardId-b=at:2200000000000000000001,\
             shardId-c=trim-horizon"
        );
        assert_eq!(text.parse::<Resume>(), Ok(resume));
    }

    #[test]
    fn a_resume_point_without_its_shard_is_refused_saying_what_to_give() {
        let err = "1100000000000000000005".parse::<Resume>().unwrap_err();
        assert!(err.contains("names no shard: give SHARD=POSITION"), "{err}");
        let err = "shardId-a=after:12x".parse::<Resume>().unwrap_err();
        assert!(err.contains("not a sequence number"), "{err}");
        // LATEST names no place: the records written since would be skipped.
        let err = "shardId-a=after:5,shardId-b=latest"
            .parse::<Resume>()
            .unwrap_err();
        assert!(
            err.contains("shardId-b=latest is not a resume point"),
            "{err}"
        );
        let err = "shardId-a=12".parse::<Resume>().unwrap_err();
        assert!(
            err.contains("trim-horizon, latest, at:SEQ or after:SEQ"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_resumed_shard_starts_at_its_position_and_its_ancestors_are_done() {
        let streams = ScriptedStreams::default();
        streams
            .shard("a", None, "100")
            .shard("b", Some("a"), "200")
            .shard("c", None, "300")
            .shard("e", Some("b"), "400");
        streams.close("a");
        let resume: Resume = "b=after:205".parse().unwrap();
        let mut r = reader(&streams, Start::Resume(resume)).await;
        assert_eq!(
            ids(&r.take_ready()),
            [("b", "after:205".into()), ("c", "trim-horizon".into())],
            "a is done; e waits for b"
        );
        r.finish("b");
        assert_eq!(ids(&r.take_ready()), [("e", "trim-horizon".into())]);
    }

    #[tokio::test]
    async fn records_the_filter_keeps_out_move_the_checkpoint_but_reach_no_batch() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100");
        streams.write("a", records(100, 4));
        let filter =
            Filter::parse(&[r#"{"dynamodb": {"NewImage": {"version": {"N": ["2"]}}}}"#]).unwrap();
        let mut r = StreamReader::new(
            streams.clone(),
            ARN.into(),
            Start::TrimHorizon,
            Some(Rc::new(filter)),
        )
        .await
        .unwrap();
        let mut shard = r.take_ready().remove(0);
        let batch = shard
            .next_batch(10, 1 << 20, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seqs(&batch), ["101"]);
        assert_eq!((batch.filtered, batch.through.as_str()), (3, "103"));
        // Nothing but filtered records: an empty batch that still moves on.
        streams.write("a", vec![record("104", "agg", 5, 1.0)]);
        let batch = shard
            .next_batch(10, 1 << 20, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert!(batch.records.is_empty());
        assert_eq!((batch.filtered, batch.through.as_str()), (1, "104"));
    }

    /// A record of about `bytes` bytes.
    fn large(seq: u64, bytes: usize) -> StreamRecord {
        let mut r = record(&seq.to_string(), "agg", seq, 1_795_348_800.0);
        if let Some(Value::Object(image)) = &mut r.new_image {
            image.insert("payload".into(), json!({"S": "x".repeat(bytes)}));
        }
        r
    }

    #[tokio::test]
    async fn the_batching_window_closes_once_the_payload_limit_is_reached() {
        // Lambda invokes as soon as a batch reaches 6 MB, whatever the
        // window; here the limit is 1 MB and three records make 1.2 MB.
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100");
        streams.write("a", (100..103).map(|s| large(s, 400_000)));
        let mut shard = reader(&streams, Start::TrimHorizon)
            .await
            .take_ready()
            .remove(0);
        let batch = tokio::time::timeout(
            Duration::from_secs(5),
            shard.next_batch(10_000, 1 << 20, Duration::from_secs(300)),
        )
        .await
        .expect("invoked at the payload limit, not at the end of the 300 s window")
        .unwrap()
        .unwrap();
        assert_eq!(seqs(&batch), ["100", "101"]);
    }

    #[tokio::test]
    async fn a_stop_request_ends_the_batching_window() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100");
        streams.write("a", records(100, 2));
        let mut shard = reader(&streams, Start::TrimHorizon)
            .await
            .take_ready()
            .remove(0);
        let stop = Arc::new(AtomicBool::new(false));
        shard.interrupt = Some(stop.clone());
        let ctrl_c = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.store(true, Ordering::SeqCst);
        };
        let (_, batch) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(
                ctrl_c,
                shard.next_batch(500, 1 << 20, Duration::from_secs(300))
            )
        })
        .await
        .expect("Ctrl-C ends the window, not its 300 s");
        assert_eq!(seqs(&batch.unwrap().unwrap()), ["100", "101"]);
    }

    #[tokio::test]
    async fn a_batch_holds_the_record_count_and_the_payload_limit() {
        let streams = ScriptedStreams::default();
        streams.shard("a", None, "100");
        streams.write("a", records(100, 10));
        streams.close("a");
        let mut shard = reader(&streams, Start::TrimHorizon)
            .await
            .take_ready()
            .remove(0);
        shard.read(10).await.unwrap();
        let one = match shard.buffer.front() {
            Some(Slot::Record(r)) => r.record.get().len() + 1,
            _ => panic!("a record"),
        };
        assert_eq!(
            seqs(&shard.take(4, 1 << 20).unwrap()),
            ["100", "101", "102", "103"]
        );
        assert_eq!(shard.take(10, 14 + 3 * one).unwrap().records.len(), 3);
        // A record larger than the limit still goes, alone.
        assert_eq!(shard.take(10, 1).unwrap().records.len(), 1);
        assert_eq!(shard.take(10, 1 << 20).unwrap().records.len(), 2);
        assert!(shard.finished());
    }

    /// The SDK attribute of a DynamoDB JSON attribute (the inverse of
    /// `attribute_json`, for building records as GetRecords returns them).
    fn sdk_attribute(v: &Value) -> AttributeValue {
        let (kind, v) = v.as_object().unwrap().iter().next().unwrap();
        let strings = || {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let blob = |s: &Value| {
            Blob::new(
                base64::engine::general_purpose::STANDARD
                    .decode(s.as_str().unwrap())
                    .unwrap(),
            )
        };
        match kind.as_str() {
            "S" => AttributeValue::S(v.as_str().unwrap().into()),
            "N" => AttributeValue::N(v.as_str().unwrap().into()),
            "B" => AttributeValue::B(blob(v)),
            "SS" => AttributeValue::Ss(strings()),
            "NS" => AttributeValue::Ns(strings()),
            "BS" => AttributeValue::Bs(v.as_array().unwrap().iter().map(blob).collect()),
            "M" => AttributeValue::M(sdk_item(v)),
            "L" => AttributeValue::L(v.as_array().unwrap().iter().map(sdk_attribute).collect()),
            "NULL" => AttributeValue::Null(v.as_bool().unwrap()),
            "BOOL" => AttributeValue::Bool(v.as_bool().unwrap()),
            other => panic!("{other}"),
        }
    }

    fn sdk_item(v: &Value) -> HashMap<String, AttributeValue> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), sdk_attribute(v)))
            .collect()
    }

    /// A record as the SDK gives it from a GetRecords response (whose
    /// records are Lambda's without `eventSourceARN`).
    fn sdk_record(r: &Value) -> Record {
        let d = &r["dynamodb"];
        let mut s = SdkStreamRecord::builder()
            .sequence_number(d["SequenceNumber"].as_str().unwrap())
            .size_bytes(d["SizeBytes"].as_i64().unwrap())
            .stream_view_type(StreamViewType::from(d["StreamViewType"].as_str().unwrap()))
            .approximate_creation_date_time(DateTime::from_secs_f64(
                d["ApproximateCreationDateTime"].as_f64().unwrap(),
            ));
        if let Some(k) = d.get("Keys") {
            s = s.set_keys(Some(sdk_item(k)));
        }
        if let Some(i) = d.get("NewImage") {
            s = s.set_new_image(Some(sdk_item(i)));
        }
        if let Some(i) = d.get("OldImage") {
            s = s.set_old_image(Some(sdk_item(i)));
        }
        let mut b = Record::builder()
            .event_id(r["eventID"].as_str().unwrap())
            .event_name(OperationType::from(r["eventName"].as_str().unwrap()))
            .event_version(r["eventVersion"].as_str().unwrap())
            .event_source(r["eventSource"].as_str().unwrap())
            .aws_region(r["awsRegion"].as_str().unwrap())
            .dynamodb(s.build());
        if let Some(u) = r.get("userIdentity") {
            b = b.user_identity(
                Identity::builder()
                    .r#type(u["type"].as_str().unwrap())
                    .principal_id(u["principalId"].as_str().unwrap())
                    .build(),
            );
        }
        b.build()
    }

    /// `expected` with its creation time as the float Lambda sends (AWS's
    /// sample events and moto write an integer).
    fn as_lambda_sends(expected: &Value) -> Value {
        let mut expected = expected.clone();
        let t = &mut expected["dynamodb"]["ApproximateCreationDateTime"];
        *t = json!(t.as_f64().unwrap());
        expected
    }

    fn lambda_json(record: &Record, arn: &str) -> Value {
        let pending = stream_record(record).unwrap().to_lambda(arn);
        serde_json::from_str(pending.record.get()).unwrap()
    }

    #[test]
    fn get_records_output_becomes_the_records_of_awss_sample_event() {
        let sample: Value =
            serde_json::from_str(include_str!("../../../events/sam-dynamodb-update.json")).unwrap();
        for expected in sample["Records"].as_array().unwrap() {
            let arn = expected["eventSourceARN"].as_str().unwrap();
            assert_eq!(
                lambda_json(&sdk_record(expected), arn),
                as_lambda_sends(expected)
            );
        }
    }

    #[test]
    fn motos_records_become_lambda_records_the_function_converts() {
        // GetRecords as moto's server answered it (events/moto-get-records.json).
        let answer: Value =
            serde_json::from_str(include_str!("../../../events/moto-get-records.json")).unwrap();
        let arn =
            "arn:aws:dynamodb:us-east-1:123456789012:table/events/stream/2026-12-02T00:00:00.000";
        let converter = event_forwarder::convert::Converter::new(
            event_forwarder::convert::MappingConfig::new("product.events"),
        );
        for r in answer["Records"].as_array().unwrap() {
            let got = lambda_json(&sdk_record(r), arn);
            let mut expected = as_lambda_sends(r);
            expected["eventSourceARN"] = json!(arn);
            assert_eq!(got, expected);
            let plan = converter
                .plan_raw(&got.to_string(), chrono::Utc::now())
                .into_message()
                .plan;
            assert!(
                matches!(plan, event_forwarder::convert::Plan::Publish(_)),
                "{plan:?}"
            );
        }
    }

    #[test]
    fn attributes_are_written_in_name_order_with_binaries_in_base64() {
        let item = HashMap::from([
            ("z".to_string(), AttributeValue::N("1".into())),
            (
                "a".to_string(),
                AttributeValue::B(Blob::new(vec![0, 1, 255])),
            ),
            (
                "m".to_string(),
                AttributeValue::M(HashMap::from([
                    ("y".to_string(), AttributeValue::Null(true)),
                    ("b".to_string(), AttributeValue::Bool(false)),
                ])),
            ),
        ]);
        assert_eq!(
            serde_json::to_string(&item_json(&item)).unwrap(),
            r#"{"a":{"B":"AAH/"},"m":{"M":{"b":{"BOOL":false},"y":{"NULL":true}}},"z":{"N":"1"}}"#
        );
    }

    #[test]
    fn sequence_numbers_compare_as_integers() {
        assert!(before("9", "10"));
        assert!(before("1100000000017454423009", "1100000000017454423010"));
        assert!(!before("10", "10"));
    }
}
