//! Reading a table's stream with DynamoDB Streams: shards in lineage order
//! (a child only once its parent is read to its end), records turned into
//! the records Lambda delivers.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aws_sdk_dynamodbstreams::{
    Client,
    types::{AttributeValue, Record, ShardIteratorType},
};
use event_forwarder::esm::{Pending, StreamRecord};
use serde_json::Value;

/// Where reading starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    TrimHorizon,
    Latest,
    /// At this sequence number (in the shard that holds it).
    At(String),
}

/// The position of one shard.
#[derive(Debug)]
struct Shard {
    parent: Option<String>,
    /// `None` before the first read and once the shard is read to its end.
    iterator: Option<String>,
    started: bool,
    /// Read to its end: closed, and every record taken.
    finished: bool,
    /// Records read but not handed out yet.
    buffer: VecDeque<Pending>,
    starting: Option<String>,
    ending: Option<String>,
    /// Listed when the run started (not a shard made since).
    initial: bool,
}

/// Reads a stream shard by shard.
pub struct StreamReader {
    client: Client,
    pub stream_arn: String,
    start: Start,
    shards: BTreeMap<String, Shard>,
    last_describe: Option<Instant>,
    /// The shard the last batch came from: the next search starts after
    /// it, so that a busy shard does not starve the others.
    last_served: Option<String>,
}

/// How often the shard list is read again for new shards.
const DESCRIBE_EVERY: Duration = Duration::from_secs(10);

/// Wait between two empty reads of a shard (Lambda polls four times a second).
pub const POLL_EVERY: Duration = Duration::from_millis(250);

impl StreamReader {
    pub async fn new(client: Client, stream_arn: String, start: Start) -> anyhow::Result<Self> {
        let mut reader = Self {
            client,
            stream_arn,
            start,
            shards: BTreeMap::new(),
            last_describe: None,
            last_served: None,
        };
        reader.describe().await?;
        if reader.shards.is_empty() {
            bail!("the stream {} has no shards", reader.stream_arn);
        }
        Ok(reader)
    }

    /// Reads the shard list (every page) and adds the shards not known yet.
    async fn describe(&mut self) -> anyhow::Result<()> {
        let mut exclusive_start = None;
        loop {
            let out = self
                .client
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(exclusive_start.clone())
                .send()
                .await
                .with_context(|| format!("DescribeStream {}", self.stream_arn))?;
            let Some(description) = out.stream_description() else {
                bail!("DescribeStream {} gave no description", self.stream_arn);
            };
            let initial = self.last_describe.is_none();
            for shard in description.shards() {
                let Some(id) = shard.shard_id() else { continue };
                let range = shard.sequence_number_range();
                self.shards.entry(id.to_owned()).or_insert_with(|| Shard {
                    parent: shard.parent_shard_id().map(str::to_owned),
                    iterator: None,
                    started: false,
                    finished: false,
                    buffer: VecDeque::new(),
                    starting: range
                        .and_then(|r| r.starting_sequence_number())
                        .map(str::to_owned),
                    ending: range
                        .and_then(|r| r.ending_sequence_number())
                        .map(str::to_owned),
                    initial,
                });
            }
            exclusive_start = description.last_evaluated_shard_id().map(str::to_owned);
            if exclusive_start.is_none() {
                break;
            }
        }
        self.last_describe = Some(Instant::now());
        Ok(())
    }

    /// Whether every shard known is closed and read to its end.
    pub fn finished(&self) -> bool {
        self.shards.values().all(|s| s.finished)
    }

    /// The first iterator of a shard, from the starting position.
    async fn first_iterator(&mut self, id: &str) -> anyhow::Result<Option<String>> {
        let Some((kind, at)) = self
            .shards
            .get(id)
            .and_then(|shard| first_position(shard, &self.start))
        else {
            return Ok(None);
        };
        let out = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(id)
            .shard_iterator_type(kind)
            .set_sequence_number(at)
            .send()
            .await
            .with_context(|| format!("GetShardIterator {id}"))?;
        Ok(out.shard_iterator().map(str::to_owned))
    }

    /// Reads more records of shard `id` into its buffer: one `GetRecords`.
    /// Returns how many came.
    async fn read(&mut self, id: &str, limit: usize) -> anyhow::Result<usize> {
        let started = self.shards.get(id).is_some_and(|s| s.started);
        if !started {
            let iterator = self.first_iterator(id).await?;
            if let Some(shard) = self.shards.get_mut(id) {
                shard.started = true;
                shard.finished = iterator.is_none();
                shard.iterator = iterator;
            }
        }
        let Some(iterator) = self.shards.get(id).and_then(|s| s.iterator.clone()) else {
            return Ok(0);
        };
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000))
            .send()
            .await
            .with_context(|| format!("GetRecords {id}"))?;
        let records: Vec<Pending> = out
            .records()
            .iter()
            .filter_map(|r| stream_record(r).map(|r| r.to_lambda(&self.stream_arn)))
            .collect();
        let n = records.len();
        if let Some(shard) = self.shards.get_mut(id) {
            shard.buffer.extend(records);
            shard.iterator = out.next_shard_iterator().map(str::to_owned);
            if shard.iterator.is_none() {
                // Closed: its children can be read once its buffer is empty.
                shard.finished = shard.buffer.is_empty();
            }
        }
        Ok(n)
    }

    /// The next batch: records of one shard, at most `max_records` and
    /// `max_bytes` of event, gathered for at most `window` (none: what one
    /// read gives). Empty when no shard has anything new.
    pub async fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        window: Duration,
    ) -> anyhow::Result<Option<(String, Vec<Pending>)>> {
        if self
            .last_describe
            .is_none_or(|t| t.elapsed() >= DESCRIBE_EVERY)
            || ready(&self.shards).is_empty()
        {
            self.describe().await?;
        }
        for id in in_turn(ready(&self.shards), self.last_served.as_deref()) {
            let until = Instant::now() + window;
            loop {
                let buffered = self.shards.get(&id).map_or(0, |s| s.buffer.len());
                if buffered >= max_records {
                    break;
                }
                let open = self
                    .shards
                    .get(&id)
                    .is_some_and(|s| s.iterator.is_some() || !s.started);
                if !open {
                    break;
                }
                let got = self.read(&id, max_records - buffered).await?;
                let buffered = buffered + got;
                if Instant::now() >= until || (window.is_zero() && (buffered > 0 || got == 0)) {
                    break;
                }
                if got == 0 {
                    tokio::time::sleep(POLL_EVERY.min(until - Instant::now())).await;
                }
            }
            let Some(shard) = self.shards.get_mut(&id) else {
                continue;
            };
            let batch = event_forwarder::esm::take_batch(&mut shard.buffer, max_records, max_bytes);
            if shard.iterator.is_none() && shard.started && shard.buffer.is_empty() {
                shard.finished = true;
            }
            if !batch.is_empty() {
                self.last_served = Some(id.clone());
                return Ok(Some((id, batch)));
            }
        }
        Ok(None)
    }
}

/// Shards that may be read now: not finished, and their parent (if the
/// stream still lists it) finished, so that an aggregate's records in a
/// child never go out before those left in its parent.
fn ready(shards: &BTreeMap<String, Shard>) -> Vec<String> {
    shards
        .iter()
        .filter(|(_, s)| !s.finished)
        .filter(|(_, s)| {
            s.parent
                .as_ref()
                .and_then(|p| shards.get(p))
                .is_none_or(|p| p.finished)
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// Where the first read of a shard starts; `None` when the shard has
/// nothing for this run.
fn first_position(shard: &Shard, start: &Start) -> Option<(ShardIteratorType, Option<String>)> {
    match start {
        // LATEST is a position in the shards open when the run started; a
        // shard closed by then has nothing newer, and one made since holds
        // only newer records, from its beginning. (Deciding by "has no
        // parent" would read an open child of a closed shard from its
        // trim horizon: hours of old records on a real stream.)
        Start::Latest if shard.initial => shard
            .ending
            .is_none()
            .then_some((ShardIteratorType::Latest, None)),
        Start::At(seq) if contains(shard, seq) => {
            Some((ShardIteratorType::AtSequenceNumber, Some(seq.clone())))
        }
        // A shard that ended before the starting point has nothing for us.
        Start::At(seq) if shard.ending.as_deref().is_some_and(|e| before(e, seq)) => None,
        _ => Some((ShardIteratorType::TrimHorizon, None)),
    }
}

/// The shards to try, in turn: those after the one served last come
/// first, so that a shard that always has records does not starve the rest.
fn in_turn(mut ready: Vec<String>, last: Option<&str>) -> Vec<String> {
    if let Some(last) = last {
        let after = ready.iter().position(|id| id.as_str() > last).unwrap_or(0);
        ready.rotate_left(after);
    }
    ready
}

/// Whether `seq` falls in the shard's range (sequence numbers compare as
/// integers: by length, then digit by digit).
fn contains(shard: &Shard, seq: &str) -> bool {
    shard.starting.as_deref().is_none_or(|s| !before(seq, s))
        && shard.ending.as_deref().is_none_or(|e| !before(e, seq))
}

/// `a < b` for sequence numbers.
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
    use aws_sdk_dynamodbstreams::{
        primitives::{Blob, DateTime},
        types::{Identity, OperationType, StreamRecord as SdkStreamRecord, StreamViewType},
    };
    use base64::Engine as _;
    use serde_json::json;

    #[test]
    fn open_shards_are_served_in_turn() {
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let ready = ids(&["shardId-a", "shardId-b", "shardId-c"]);
        assert_eq!(in_turn(ready.clone(), None), ready);
        assert_eq!(
            in_turn(ready.clone(), Some("shardId-a")),
            ids(&["shardId-b", "shardId-c", "shardId-a"])
        );
        assert_eq!(in_turn(ready.clone(), Some("shardId-c")), ready);
        // The last one served has closed and gone: the next one after it.
        assert_eq!(
            in_turn(ids(&["shardId-a", "shardId-c"]), Some("shardId-b")),
            ids(&["shardId-c", "shardId-a"])
        );
    }

    /// A shard as DescribeStream lists it: its parent, and its end once closed.
    fn shard(parent: Option<&str>, starting: &str, ending: Option<&str>, initial: bool) -> Shard {
        Shard {
            parent: parent.map(str::to_owned),
            iterator: None,
            started: false,
            finished: false,
            buffer: VecDeque::new(),
            starting: Some(starting.to_owned()),
            ending: ending.map(str::to_owned),
            initial,
        }
    }

    #[test]
    fn a_child_shard_is_read_only_after_its_parent_is_read_to_its_end() {
        // a (closed) split into b and c; d's parent is past the trim horizon.
        let mut shards = BTreeMap::from([
            ("a".to_owned(), shard(None, "100", Some("199"), true)),
            ("b".to_owned(), shard(Some("a"), "200", None, true)),
            ("c".to_owned(), shard(Some("a"), "210", None, true)),
            ("d".to_owned(), shard(Some("gone"), "50", None, true)),
        ]);
        assert_eq!(ready(&shards), ["a", "d"]);
        if let Some(a) = shards.get_mut("a") {
            a.finished = true;
        }
        assert_eq!(ready(&shards), ["b", "c", "d"]);
        if let Some(b) = shards.get_mut("b") {
            b.finished = true;
        }
        assert_eq!(ready(&shards), ["c", "d"]);
    }

    #[test]
    fn latest_starts_in_the_open_shards_and_reads_new_ones_from_their_beginning() {
        use ShardIteratorType::{AtSequenceNumber, Latest, TrimHorizon};
        // A real stream rolls its shard every few hours: an open child of a
        // closed one is where LATEST is, not its trim horizon.
        let closed = shard(None, "100", Some("199"), true);
        let open_child = shard(Some("a"), "200", None, true);
        let made_since = shard(Some("b"), "300", None, false);
        assert_eq!(first_position(&closed, &Start::Latest), None);
        assert_eq!(
            first_position(&open_child, &Start::Latest),
            Some((Latest, None))
        );
        assert_eq!(
            first_position(&made_since, &Start::Latest),
            Some((TrimHorizon, None))
        );
        // TRIM_HORIZON: every shard from its beginning (lineage orders them).
        for s in [&closed, &open_child, &made_since] {
            assert_eq!(
                first_position(s, &Start::TrimHorizon),
                Some((TrimHorizon, None))
            );
        }
        // AT_SEQUENCE_NUMBER in the shard that holds it; a shard that ended
        // before it is skipped, a later one read from its beginning.
        let at = Start::At("250".to_owned());
        assert_eq!(first_position(&closed, &at), None);
        assert_eq!(
            first_position(&open_child, &at),
            Some((AtSequenceNumber, Some("250".to_owned())))
        );
        assert_eq!(first_position(&made_since, &at), Some((TrimHorizon, None)));
        // Sequence numbers compare as integers, not as text.
        let at = Start::At("99".to_owned());
        assert_eq!(first_position(&closed, &at), Some((TrimHorizon, None)));
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
            assert_eq!(&lambda_json(&sdk_record(expected), arn), expected);
        }
    }

    #[test]
    fn motos_records_become_lambda_records_the_function_converts() {
        // GetRecords as moto's server answered it (events/moto-get-records.json).
        let answer: Value =
            serde_json::from_str(include_str!("../../../events/moto-get-records.json")).unwrap();
        let arn =
            "arn:aws:dynamodb:us-east-1:123456789012:table/events/stream/2026-12-02T00:00:00.000";
        let converter = event_forwarder::mapping::Converter::new(
            event_forwarder::config::MappingConfig::new("product.events"),
        );
        for r in answer["Records"].as_array().unwrap() {
            let got = lambda_json(&sdk_record(r), arn);
            let mut expected = r.clone();
            expected["eventSourceARN"] = json!(arn);
            assert_eq!(got, expected);
            let plan = converter
                .plan_raw(&got.to_string(), chrono::Utc::now())
                .plan;
            assert!(
                matches!(plan, event_forwarder::mapping::Plan::Publish(_)),
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
