//! S3 OnFailure objects of a DynamoDB stream mapping, as Lambda writes
//! them: the fields of the SQS/SNS OnFailure message (`requestContext`,
//! `responseContext`, `version`, `timestamp`, `DDBStreamBatchInfo`) plus
//! `payload`, the event of the invocation given up on (`{"Records": [...]}`),
//! under `aws/lambda/<mapping UUID>/<shard id>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<UUID>`.
//! Sources: the Lambda developer guide ("Retain discarded records for a
//! DynamoDB event source in Lambda"), and LocalStack's
//! `test_dynamodb_event_source_mapping_with_s3_on_failure_destination`
//! snapshot, recorded against AWS on 2025-11-25. Readers of these objects
//! in public code accept `payload` both as an object and as a string of
//! JSON: so does [`read`].

use chrono::{DateTime, Utc};
use event_forwarder::esm::Pending;
use serde_json::{Value, json};

/// A bucket and a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    /// Empty, or ending with `/`.
    pub prefix: String,
}

impl Location {
    /// `s3://bucket[/prefix]`, or a bucket ARN (`arn:aws:s3:::bucket`, as a
    /// deployed mapping names its destination); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s
            .strip_prefix("s3://")
            .or_else(|| s.strip_prefix("arn:aws:s3:::"))
            .or_else(|| {
                s.strip_prefix("arn:")
                    .and_then(|r| r.split_once(":s3:::"))
                    .map(|(_, b)| b)
            })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return None;
        }
        let prefix = prefix.trim_matches('/');
        Some(Self {
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// The key Lambda gives an OnFailure object, under `prefix`.
pub fn key(
    prefix: &str,
    mapping_uuid: &str,
    shard_id: &str,
    at: DateTime<Utc>,
    id: &uuid::Uuid,
) -> String {
    format!(
        "{prefix}aws/lambda/{mapping_uuid}/{shard_id}/{}/{}-{id}",
        at.format("%Y/%m/%d"),
        at.format("%Y-%m-%dT%H.%M.%S")
    )
}

/// The object for an OnFailure `message` (the SQS form): the same fields,
/// and the records of the batch as the function was invoked with them.
pub fn invocation_record(mut message: Value, records: &[Pending]) -> Value {
    let records: Vec<&serde_json::value::RawValue> =
        records.iter().map(|p| p.record.as_ref()).collect();
    message["payload"] = json!({ "Records": records });
    message
}

/// What an OnFailure object holds.
#[derive(Debug)]
pub struct Object {
    pub shard_id: String,
    pub start: String,
    pub end: String,
    /// The records, in the order of the payload.
    pub records: Vec<Pending>,
}

/// Reads an object; the reason when it is not an S3 OnFailure record of a
/// DynamoDB stream mapping.
pub fn read(body: &[u8]) -> Result<Object, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON ({e})"))?;
    let info = doc
        .get("DDBStreamBatchInfo")
        .filter(|i| i.is_object())
        .ok_or("no DDBStreamBatchInfo: not an OnFailure record of a DynamoDB stream")?;
    let text = |k: &str| {
        info.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("DDBStreamBatchInfo has no {k}"))
    };
    let (shard_id, start, end) = (
        text("shardId")?,
        text("startSequenceNumber")?,
        text("endSequenceNumber")?,
    );
    let payload = match doc.get("payload") {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .map_err(|e| format!("its payload is a string but not JSON ({e})"))?,
        Some(p) => p.clone(),
        None => {
            return Err(
                "no payload: an SQS or SNS OnFailure message holds the range only \
                        (redrive it with --queue or --from-file)"
                    .to_owned(),
            );
        }
    };
    let list = payload
        .get("Records")
        .and_then(Value::as_array)
        .ok_or("its payload has no Records list")?;
    let mut records = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let sequence_number = r
            .pointer("/dynamodb/SequenceNumber")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("record {i} of its payload has no dynamodb.SequenceNumber"))?
            .to_owned();
        let created = r
            .pointer("/dynamodb/ApproximateCreationDateTime")
            .and_then(Value::as_f64)
            .and_then(|t| DateTime::from_timestamp_millis((t * 1000.0).round() as i64));
        let record = serde_json::value::to_raw_value(r).map_err(|e| e.to_string())?;
        records.push(Pending {
            sequence_number,
            created,
            record,
        });
    }
    Ok(Object {
        shard_id,
        start,
        end,
        records,
    })
}

/// `a` comes after `b`, as sequence numbers (digit strings, compared as
/// integers).
pub fn after(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    (a.len(), a) > (b.len(), b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(payload: Value) -> Value {
        json!({
            "requestContext": {"requestId": "r", "functionArn": "f", "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 2},
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "version": "1.0",
            "timestamp": "2026-12-07T10:00:00.000Z",
            "DDBStreamBatchInfo": {"shardId": "shardId-1", "startSequenceNumber": "100", "endSequenceNumber": "200", "batchSize": 2, "streamArn": "arn"},
            "payload": payload,
        })
    }

    fn records() -> Value {
        json!({"Records": [
            {"eventID": "a", "dynamodb": {"SequenceNumber": "100", "ApproximateCreationDateTime": 1795348800.0}},
            {"eventID": "b", "dynamodb": {"SequenceNumber": "200"}},
        ]})
    }

    #[test]
    fn the_payload_is_read_as_an_object_and_as_a_string_of_json_alike() {
        for payload in [records(), Value::String(records().to_string())] {
            let o = read(object(payload).to_string().as_bytes()).unwrap();
            let seqs: Vec<&str> = o
                .records
                .iter()
                .map(|p| p.sequence_number.as_str())
                .collect();
            assert_eq!(seqs, ["100", "200"]);
            assert_eq!(
                (o.shard_id.as_str(), o.start.as_str()),
                ("shardId-1", "100")
            );
            assert!(o.records[0].created.is_some());
            assert!(o.records[0].record.get().contains("\"eventID\":\"a\""));
        }
    }

    #[test]
    fn what_is_not_an_s3_on_failure_record_says_why() {
        let mut sqs_message = object(Value::Null);
        sqs_message.as_object_mut().unwrap().remove("payload");
        for (body, why) in [
            (b"hello".to_vec(), "not JSON"),
            (b"{\"a\": 1}".to_vec(), "no DDBStreamBatchInfo"),
            (sqs_message.to_string().into_bytes(), "no payload"),
            (
                object(json!("{not json")).to_string().into_bytes(),
                "string but not JSON",
            ),
            (
                object(json!({"Records": [{"dynamodb": {}}]}))
                    .to_string()
                    .into_bytes(),
                "record 0 of its payload has no dynamodb.SequenceNumber",
            ),
        ] {
            let e = read(&body).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn an_invocation_record_reads_back_as_the_records_it_was_made_of() {
        let o = read(object(records()).to_string().as_bytes()).unwrap();
        let mut message = object(Value::Null);
        message.as_object_mut().unwrap().remove("payload");
        let written = invocation_record(message, &o.records);
        assert!(written["payload"]["Records"].is_array());
        let again = read(written.to_string().as_bytes()).unwrap();
        assert_eq!(again.records.len(), 2);
        assert_eq!(again.records[1].record.get(), o.records[1].record.get());
    }

    #[test]
    fn keys_follow_lambdas_layout() {
        let at = DateTime::parse_from_rfc3339("2026-12-07T09:05:03.250Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = uuid::Uuid::nil();
        assert_eq!(
            key("p/", "m-1", "shardId-9", at, &id),
            "p/aws/lambda/m-1/shardId-9/2026/12/07/2026-12-07T09.05.03-00000000-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn locations_are_urls_or_bucket_arns() {
        let l = |b: &str, p: &str| {
            Some(Location {
                bucket: b.into(),
                prefix: p.into(),
            })
        };
        assert_eq!(Location::parse("s3://b"), l("b", ""));
        assert_eq!(Location::parse("s3://b/"), l("b", ""));
        assert_eq!(Location::parse("s3://b/x/y"), l("b", "x/y/"));
        assert_eq!(Location::parse("arn:aws:s3:::b"), l("b", ""));
        assert_eq!(Location::parse("arn:aws-cn:s3:::b"), l("b", ""));
        assert_eq!(Location::parse("s3://"), None);
        assert_eq!(Location::parse("arn:aws:sqs:us-east-1:1:q"), None);
        assert_eq!(Location::parse("q"), None);
    }

    #[test]
    fn sequence_numbers_compare_as_integers() {
        assert!(after("1000", "999"));
        assert!(!after("999", "1000"));
        assert!(!after("5", "5"));
        assert!(after("0012", "11"));
    }
}
