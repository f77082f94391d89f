//! A synthetic event-store stream (records, batches, the record a response
//! reports) and the record-by-record check of what arrived: lost,
//! duplicated, out of order.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

/// One record of a synthetic event-store stream.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub seq: u64,
    pub aggregate: String,
    pub version: u64,
}

impl StreamRecord {
    pub fn sequence_number(&self) -> String {
        format!("{:021}", self.seq)
    }

    pub fn to_json(&self) -> Value {
        self.to_json_as("StockAdjusted")
    }

    /// The record with `event_type` as its `eventType` attribute.
    pub fn to_json_as(&self, event_type: &str) -> Value {
        let mut record = self.to_json_without_type();
        record["dynamodb"]["NewImage"]["eventType"] = json!({"S": event_type});
        record
    }

    /// The record without the required `eventType`: it cannot be converted
    /// and is dead-lettered.
    pub fn to_json_without_type(&self) -> Value {
        json!({
            "eventID": format!("ev-{}", self.seq),
            "eventName": "INSERT",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "eu-west-1",
            "eventSourceARN": "arn:aws:dynamodb:eu-west-1:123456789012:table/fault-events/stream/2026-11-01T00:00:00.000",
            "dynamodb": {
                "ApproximateCreationDateTime": 1795348800,
                "Keys": {"aggregateId": {"S": self.aggregate}, "version": {"N": self.version.to_string()}},
                "NewImage": {
                    "aggregateId": {"S": self.aggregate},
                    "version": {"N": self.version.to_string()},
                    "payload": {"M": {
                        "sku": {"S": self.aggregate},
                        "delta": {"N": "-3"},
                        "note": {"S": "x".repeat(200)}
                    }}
                },
                "SequenceNumber": self.sequence_number(),
                "SizeBytes": 400,
                "StreamViewType": "NEW_IMAGE"
            }
        })
    }
}

/// `n` records over `aggregates` aggregates, each aggregate's versions in
/// order, interleaved by a seeded shuffle.
pub fn stream(n: usize, aggregates: usize, seed: u64) -> Vec<StreamRecord> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut next_version = vec![0u64; aggregates];
    (0..n)
        .map(|i| {
            let a = rng.usize(..aggregates);
            next_version[a] += 1;
            StreamRecord {
                seq: 1_000_000 + i as u64,
                aggregate: format!("agg-{a:04}"),
                version: next_version[a],
            }
        })
        .collect()
}

/// `shards` disjoint streams of `n` records over `aggregates` aggregates
/// each, as the shards of one table: no sequence number or aggregate shared.
pub fn shards(shards: usize, n: usize, aggregates: usize, seed: u64) -> Vec<Vec<StreamRecord>> {
    (0..shards)
        .map(|s| {
            let mut records = stream(n, aggregates, seed + s as u64);
            for r in &mut records {
                r.seq += 1_000_000 * (s as u64 + 1);
                r.aggregate = format!("shard{s}-{}", r.aggregate);
            }
            records
        })
        .collect()
}

pub fn batch(records: &[StreamRecord]) -> Value {
    json!({"Records": records.iter().map(StreamRecord::to_json).collect::<Vec<_>>()})
}

/// The index in `records` of the record a response reports, if any.
pub fn reported_index(response: &Value, records: &[StreamRecord]) -> Option<usize> {
    let failures = response["batchItemFailures"]
        .as_array()
        .expect("a batch response");
    assert!(failures.len() <= 1, "at most one failure: {response}");
    let id = failures.first()?["itemIdentifier"]
        .as_str()
        .expect("a string identifier");
    assert!(!id.is_empty());
    Some(
        records
            .iter()
            .position(|r| r.sequence_number() == id)
            .expect("the reported record is in the batch"),
    )
}

/// What arrived, for the record-by-record check.
#[derive(Debug, Default)]
pub struct Delivered {
    /// (aggregate, version) in arrival order.
    pub arrivals: Vec<(String, u64)>,
}

impl Delivered {
    pub fn from_bodies<'a>(bodies: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let arrivals = bodies
            .into_iter()
            .map(|b| {
                let v: Value = serde_json::from_slice(b).expect("JSON body");
                (
                    v["partitionKey"]
                        .as_str()
                        .expect("partitionKey")
                        .to_string(),
                    v["aggregateVersion"].as_u64().expect("aggregateVersion"),
                )
            })
            .collect();
        Self { arrivals }
    }

    pub fn contains(&self, r: &StreamRecord) -> bool {
        self.arrivals
            .iter()
            .any(|(a, v)| *a == r.aggregate && *v == r.version)
    }

    /// Records of `stream` that never arrived.
    pub fn lost(&self, stream: &[StreamRecord]) -> usize {
        let got: HashSet<(&str, u64)> = self
            .arrivals
            .iter()
            .map(|(a, v)| (a.as_str(), *v))
            .collect();
        stream
            .iter()
            .filter(|r| !got.contains(&(r.aggregate.as_str(), r.version)))
            .count()
    }

    pub fn duplicates(&self) -> usize {
        let unique: HashSet<&(String, u64)> = self.arrivals.iter().collect();
        self.arrivals.len() - unique.len()
    }

    /// First deliveries of an aggregate that came after a later version.
    pub fn order_violations(&self) -> usize {
        let mut seen: HashSet<(&str, u64)> = HashSet::new();
        let mut highest: HashMap<&str, u64> = HashMap::new();
        let mut violations = 0;
        for (a, v) in &self.arrivals {
            if !seen.insert((a.as_str(), *v)) {
                continue;
            }
            let h = highest.entry(a.as_str()).or_insert(0);
            if *v < *h {
                violations += 1;
            }
            *h = (*h).max(*v);
        }
        violations
    }
}
