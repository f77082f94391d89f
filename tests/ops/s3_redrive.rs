//! Nothing expires (issue 29): batches the mapping gives up on kept in S3
//! with their records, as Lambda writes them, and redriven from there with
//! no stream at all. `forwarder-ops stream --on-failure s3://...` against
//! moto's S3, `forwarder-ops redrive --bucket` / `--from-objects`, the real
//! function under `cargo lambda watch`, RabbitMQ.

use std::collections::HashMap;

use aws_sdk_s3::primitives::ByteStream;
use serde_json::{Value, json};
use testkit::{
    local::{self, Loop, Table, sdk_config, table_name},
    proxy::{Mode, Proxy},
    unique,
};

/// moto's S3 (path-style, as local servers need).
async fn s3() -> aws_sdk_s3::Client {
    let shared = sdk_config().await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    )
}

/// A new bucket of its own.
async fn bucket(s3: &aws_sdk_s3::Client, prefix: &str) -> String {
    let name = unique(prefix).to_lowercase();
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("CreateBucket");
    name
}

/// The keys under `prefix`.
async fn keys(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let out = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("ListObjectsV2");
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

async fn get(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Value {
    let body = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("GetObject")
        .body
        .collect()
        .await
        .expect("a body")
        .into_bytes();
    serde_json::from_slice(&body).expect("JSON")
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &Value) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_string().into_bytes()))
        .send()
        .await
        .expect("PutObject");
}

/// How many times each version arrived, and the versions in order of
/// first arrival.
fn arrivals(versions: &[u64]) -> (HashMap<u64, usize>, Vec<u64>) {
    let mut counts = HashMap::new();
    let mut first = Vec::new();
    for v in versions {
        let n = counts.entry(*v).or_insert(0);
        if *n == 0 {
            first.push(*v);
        }
        *n += 1;
    }
    (counts, first)
}

/// Every version the queue holds (taken off it), in arrival order.
async fn all_versions(broker: &testkit::TestBroker, queue: &str) -> Vec<u64> {
    broker
        .drain(queue)
        .await
        .iter()
        .map(|d| local::key_version(d).1)
        .collect()
}

#[tokio::test]
async fn a_batch_given_up_lands_in_s3_as_lambdas_object_and_redrives_once_with_no_stream_at_all() {
    let s3 = s3().await;
    let bucket = bucket(&s3, "onfailure").await;
    let proxy = Proxy::start(testkit::amqp_port()).await;
    let Loop {
        table,
        exchange,
        function,
        broker,
        queue,
    } = Loop::start(
        Table::event_store(&table_name("s3-redrive")).await,
        "s3-redrive",
        &[("AMQP_URI", &proxy.uri("")), ("CONNECT_TIMEOUT_MS", "500")],
    )
    .await;

    // An outage that outlasts the retries: two batches of three given up,
    // written to the bucket with their records.
    proxy.set(Mode::Refuse);
    proxy.sever();
    for v in 1..=6 {
        table
            .put(Table::event("prod-s3", v, "ProductPriceChanged"))
            .await;
    }
    let destination = format!("s3://{bucket}/run");
    let outage = local::run(
        &function,
        &[
            "stream",
            "--table",
            &table.name,
            "--batch-size",
            "3",
            "--maximum-retry-attempts",
            "1",
            "--retry-delay",
            "100",
            "--on-failure",
            &destination,
            "--idle-exit",
            "2",
        ],
    )
    .await;
    assert_eq!(outage.count("given_up"), 6, "{outage:?}");
    assert_eq!(outage.count("on_failure_messages"), 2, "{outage:?}");

    // AWS's object under AWS's key: aws/lambda/<mapping UUID>/<shard id>/
    // YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<UUID>, the SQS message's fields and
    // the payload the function was invoked with.
    let stream_arn = local::stream_arn(&table).await;
    let written = keys(&s3, &bucket, "run/").await;
    assert_eq!(written.len(), 2, "{written:?}");
    let mut sequence_numbers = Vec::new();
    for key in &written {
        let o = get(&s3, &bucket, key).await;
        let info = &o["DDBStreamBatchInfo"];
        assert_eq!(info["batchSize"], 3, "{o}");
        assert_eq!(info["streamArn"], stream_arn.as_str());
        assert_eq!(o["version"], "1.0");
        assert_eq!(o["requestContext"]["condition"], "RetryAttemptsExhausted");
        assert!(o["requestContext"]["functionArn"].is_string(), "{o}");
        assert!(o["responseContext"]["statusCode"].is_number(), "{o}");
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 9, "{key}");
        assert_eq!(&parts[..3], ["run", "aws", "lambda"], "{key}");
        assert_eq!(parts[3].len(), 36, "a mapping UUID: {key}");
        assert_eq!(parts[4], info["shardId"].as_str().unwrap_or_default());
        let timestamp = o["timestamp"].as_str().expect("a timestamp");
        // 2026-12-07T10:11:12.345Z: the date's folders, then the second.
        assert_eq!(parts[5..8].join("-"), timestamp[..10], "{key} {timestamp}");
        assert!(
            parts[8].starts_with(&timestamp[..19].replace(':', ".")),
            "{key} {timestamp}"
        );
        assert_eq!(parts[8].len(), 19 + 1 + 36, "{key}");
        let records = o["payload"]["Records"].as_array().expect("payload.Records");
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0]["dynamodb"]["SequenceNumber"],
            info["startSequenceNumber"]
        );
        assert_eq!(
            records[2]["dynamodb"]["SequenceNumber"],
            info["endSequenceNumber"]
        );
        for r in records {
            assert_eq!(r["eventName"], "INSERT");
            assert_eq!(r["eventSourceARN"], stream_arn.as_str());
            assert!(r["dynamodb"]["NewImage"]["aggregateId"].is_object(), "{r}");
            sequence_numbers.push(r["dynamodb"]["SequenceNumber"].clone());
        }
    }
    assert_eq!(sequence_numbers.len(), 6);

    // The records leave the table and the stream goes with it: only the
    // objects hold them now.
    table
        .dynamodb
        .delete_table()
        .table_name(&table.name)
        .send()
        .await
        .expect("DeleteTable");
    proxy.set(Mode::Forward);
    let prefix = format!("s3://{bucket}/run/aws/lambda/");

    let dry = local::run(&function, &["redrive", "--bucket", &prefix, "--dry-run"]).await;
    assert!(dry.success, "{dry:?}");
    assert_eq!(
        (
            dry.count("objects"),
            dry.count("records"),
            dry.count("done")
        ),
        (2, 6, 0),
        "{dry:?}"
    );
    assert!(
        dry.stderr.contains("would forward 3 record(s)"),
        "{}",
        dry.stderr
    );
    assert!(
        broker.drain(&queue).await.is_empty(),
        "a dry run invoked the function"
    );
    assert_eq!(
        keys(&s3, &bucket, "run/").await.len(),
        2,
        "a dry run deleted"
    );

    let redrive = local::run(
        &function,
        &["redrive", "--bucket", &prefix, "--retry-delay", "100"],
    )
    .await;
    assert!(redrive.success, "{redrive:?}");
    assert_eq!(
        (
            redrive.count("objects"),
            redrive.count("forwarded"),
            redrive.count("done"),
            redrive.count("kept")
        ),
        (2, 6, 2, 0),
        "{redrive:?}"
    );
    assert_eq!(
        local::versions(&broker, &queue, 6).await,
        [1, 2, 3, 4, 5, 6]
    );
    assert!(keys(&s3, &bucket, "run/").await.is_empty(), "objects done");

    // Nothing is sent twice.
    let again = local::run(&function, &["redrive", "--bucket", &prefix]).await;
    assert!(again.success, "{again:?}");
    assert_eq!((again.count("objects"), again.count("forwarded")), (0, 0));
    assert!(broker.drain(&queue).await.is_empty(), "sent again");
    broker.cleanup(&exchange, &[&queue]).await;
}

/// A stream record as Lambda delivers it, of one event of `aggregate`.
fn record(aggregate: &str, version: u64, event_type: Option<&str>, seq: u64) -> Value {
    let mut image = json!({
        "aggregateId": {"S": aggregate},
        "version": {"N": version.to_string()},
        "aggregateType": {"S": "Product"},
        "payload": {"M": {"version": {"N": version.to_string()}}},
    });
    if let Some(t) = event_type {
        image["eventType"] = json!({"S": t});
    }
    json!({
        "eventID": format!("e-{aggregate}-{version}"),
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1_795_348_800.0,
            "Keys": {"aggregateId": {"S": aggregate}, "version": {"N": version.to_string()}},
            "NewImage": image,
            "SequenceNumber": seq.to_string(),
            "SizeBytes": 100,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/gone/stream/2026-01-01T00:00:00.000",
    })
}

/// An S3 OnFailure object of `records`, the payload as given.
fn object(records: &[Value], payload_as_string: bool) -> Value {
    let payload = json!({ "Records": records });
    json!({
        "requestContext": {"requestId": "r", "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:f", "condition": "RecordAgeExceeded", "approximateInvokeCount": 1},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": null},
        "version": "1.0",
        "timestamp": "2026-01-01T10:00:00.000Z",
        "DDBStreamBatchInfo": {
            "shardId": "shardId-00000001767225600000-aaaaaaaa",
            "startSequenceNumber": records[0]["dynamodb"]["SequenceNumber"],
            "endSequenceNumber": records[records.len() - 1]["dynamodb"]["SequenceNumber"],
            "approximateArrivalOfFirstRecord": "2026-01-01T09:00:00Z",
            "approximateArrivalOfLastRecord": "2026-01-01T09:00:00Z",
            "batchSize": records.len(),
            "streamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/gone/stream/2026-01-01T00:00:00.000",
        },
        "payload": if payload_as_string { Value::String(payload.to_string()) } else { payload },
    })
}

#[tokio::test]
async fn copies_on_disk_in_both_payload_shapes_redrive_filtered_with_dead_letters_and_a_stranger_kept()
 {
    let Loop {
        table: _table,
        exchange,
        function,
        broker,
        queue,
    } = Loop::start(
        Table::event_store(&table_name("s3-files")).await,
        "s3-files",
        &[],
    )
    .await;
    let dead_letters = format!("{exchange}.dead-letter");
    let dir = std::env::temp_dir().join(unique("s3-files"));
    let day = dir.join("aws/lambda/m/shardId-1/2026/01/01");
    std::fs::create_dir_all(&day).expect("a directory");
    let ev = |v: u64, seq: u64| record("prod-f", v, Some("ProductPriceChanged"), seq);
    // Written in this order by Lambda, and so named; prod-other's event is
    // one the mapping's filter (below) keeps out.
    let files = [
        (
            "2026-01-01T10.00.00-a",
            object(
                &[
                    ev(1, 101),
                    record("prod-other", 1, Some("ProductPriceChanged"), 102),
                    ev(2, 103),
                ],
                false,
            ),
        ),
        (
            "2026-01-01T10.00.01-b",
            object(&[ev(3, 104), ev(4, 105)], true),
        ),
        (
            "2026-01-01T10.00.02-c",
            json!({"note": "someone else's file"}),
        ),
        (
            "2026-01-01T10.00.03-d",
            object(
                &[
                    record("prod-f", 5, None, 106),
                    ev(6, 107),
                    record("prod-f", 7, None, 108),
                ],
                true,
            ),
        ),
    ];
    for (name, body) in &files {
        std::fs::write(day.join(name), body.to_string()).expect("a file");
    }
    let dir_arg = dir.to_string_lossy().into_owned();

    let filter = r#"{"dynamodb": {"NewImage": {"aggregateId": {"S": ["prod-f"]}}}}"#;
    let run = local::run(
        &function,
        &[
            "redrive",
            "--from-objects",
            &dir_arg,
            "--filter-pattern",
            filter,
            "--retry-delay",
            "100",
        ],
    )
    .await;
    // The stranger is kept, so the run did not do everything.
    assert!(!run.success, "{run:?}");
    assert_eq!(
        (
            run.count("objects"),
            run.count("done"),
            run.count("kept"),
            run.count("forwarded"),
            run.count("filtered")
        ),
        (4, 3, 1, 7, 1),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("2026-01-01T10.00.02-c: no DDBStreamBatchInfo"),
        "{}",
        run.stderr
    );
    // Both payload shapes, in order; the records without an eventType
    // went out as dead letters, and their object is done all the same.
    assert_eq!(local::versions(&broker, &queue, 5).await, [1, 2, 3, 4, 6]);
    assert!(
        broker.drain(&queue).await.is_empty(),
        "the event the filter keeps out was sent"
    );
    let dead: Vec<u64> = broker
        .drain(&dead_letters)
        .await
        .iter()
        .map(|d| {
            let body: Value = serde_json::from_slice(&d.data).expect("a stream record");
            body["dynamodb"]["NewImage"]["version"]["N"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(dead, [5, 7]);
    for (name, _) in &files {
        let done = day.join(format!("{name}.done")).exists();
        assert_eq!(done, !name.ends_with("-c"), "{name}");
    }
    assert!(day.join("2026-01-01T10.00.02-c").exists());

    // What is done is not read again.
    let again = local::run(&function, &["redrive", "--from-objects", &dir_arg]).await;
    assert_eq!((again.count("objects"), again.count("forwarded")), (1, 0));
    broker.cleanup(&exchange, &[&queue, &dead_letters]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_redrive_stopped_in_the_middle_of_an_object_resumes_after_what_was_confirmed() {
    let s3 = s3().await;
    let bucket = bucket(&s3, "midway").await;
    let proxy = Proxy::start(testkit::amqp_port()).await;
    let Loop {
        table: _table,
        exchange,
        function,
        broker,
        queue,
    } = Loop::start(
        Table::event_store(&table_name("s3-midway")).await,
        "s3-midway",
        &[("AMQP_URI", &proxy.uri("")), ("CONNECT_TIMEOUT_MS", "500")],
    )
    .await;
    let n = 12;
    let records: Vec<Value> = (1..=n)
        .map(|v| record("prod-m", v, Some("ProductPriceChanged"), 200 + v))
        .collect();
    let key = "aws/lambda/m/shardId-1/2026/01/01/2026-01-01T10.00.00-x";
    put(&s3, &bucket, key, &object(&records, false)).await;
    let at = format!("s3://{bucket}/aws/lambda/");

    // The broker goes away part way through the object.
    proxy.sever_after(SEVER_AFTER_BYTES, Mode::Refuse);
    let first = local::run(
        &function,
        &[
            "redrive",
            "--bucket",
            &at,
            "--batch-size",
            "2",
            "--max-retries",
            "1",
            "--retry-delay",
            "100",
        ],
    )
    .await;
    assert!(!first.success, "{first:?}");
    let confirmed = first.count("forwarded");
    assert!(
        confirmed > 0 && confirmed < n,
        "stopped in the middle: {first:?}"
    );
    assert_eq!((first.count("kept"), first.count("done")), (1, 0));
    let tags = s3
        .get_object_tagging()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .expect("GetObjectTagging");
    let through: Vec<(&str, &str)> = tags
        .tag_set()
        .iter()
        .map(|t| (t.key(), t.value()))
        .collect();
    let last = (200 + confirmed).to_string();
    assert_eq!(
        through,
        [("forwarder-ops-confirmed-through", last.as_str())],
        "marked through the last record confirmed"
    );

    proxy.set(Mode::Forward);
    let second = local::run(
        &function,
        &[
            "redrive",
            "--bucket",
            &at,
            "--batch-size",
            "2",
            "--retry-delay",
            "100",
        ],
    )
    .await;
    assert!(second.success, "{second:?}");
    assert_eq!(second.count("confirmed_before"), confirmed, "{second:?}");
    assert_eq!(second.count("forwarded"), n - confirmed, "{second:?}");
    assert_eq!(second.count("done"), 1);
    assert!(keys(&s3, &bucket, "aws/").await.is_empty());

    // Every record arrived, in order; a record arrived twice only if it was
    // in flight when the broker went away (the batch after the confirmed
    // ones, published perhaps but never confirmed).
    let versions = all_versions(&broker, &queue).await;
    eprintln!(
        "stopped after {confirmed} of {n} confirmed; resumed with {}; arrived: {versions:?}",
        second.count("forwarded")
    );
    let (counts, first_seen) = arrivals(&versions);
    assert_eq!(first_seen, (1..=n).collect::<Vec<_>>(), "{versions:?}");
    for (v, times) in counts {
        assert!(
            times == 1 || (v > confirmed && v <= confirmed + 2 && times == 2),
            "version {v} arrived {times} times: {versions:?}"
        );
    }
    broker.cleanup(&exchange, &[&queue]).await;
}

/// Client bytes to the broker before it goes away in the stopped-redrive
/// test: past the connection, the topology and a few publishes of its
/// 12 records, short of all of them (measured on RabbitMQ 3.10: 8,000
/// bytes stopped the run after 10 records confirmed).
const SEVER_AFTER_BYTES: u64 = 6_000;
