//! `forwarder-ops stream` and `redrive` held to AWS's event source mapping,
//! with a function scripted behind the Invoke API (so the mapping is seen
//! apart from our own function) over moto's real stream, and, where moto
//! differs from AWS (iterators that never expire, no empty pages, no
//! trimming, records never old), a fault endpoint in front of moto. Each
//! test names the AWS documentation or the recording (LocalStack's
//! snapshots, recorded against AWS) it follows.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};

use testkit::local::{self, Table, moto_url, run_with, table_name};

use crate::support::{
    scripted::{Reply, ScriptedFunction},
    streams_proxy::StreamsProxy,
};

/// Long enough for any of these runs; one still going then is a hang.
const LIMIT: Duration = Duration::from_secs(90);

/// An event-store table with `aggregate`'s events 1 to `n`.
async fn table_with(prefix: &str, aggregate: &str, n: u64) -> Table {
    let table = Table::event_store(&table_name(prefix)).await;
    for v in 1..=n {
        table
            .put(Table::event(aggregate, v, "ProductPriceChanged"))
            .await;
    }
    table
}

fn success() -> Reply {
    Reply::Json(json!({"batchItemFailures": []}))
}

/// The stream's records of the table: (sequence number, version, creation
/// time in epoch seconds).
async fn stream_of(table: &Table) -> Vec<(String, u64, f64)> {
    local::stream_records(&local::stream_arn(table).await)
        .await
        .iter()
        .filter_map(|r| {
            let d = r.dynamodb()?;
            let version = match d.new_image()?.get("version")? {
                aws_sdk_dynamodbstreams::types::AttributeValue::N(n) => n.parse().ok()?,
                _ => return None,
            };
            Some((
                d.sequence_number()?.to_owned(),
                version,
                d.approximate_creation_date_time()?.as_secs_f64(),
            ))
        })
        .collect()
}

/// An OnFailure message for the records `first` to `last` of `shard`.
fn on_failure(
    stream_arn: &str,
    shard: &str,
    first: &(String, u64, f64),
    last: &(String, u64, f64),
    n: usize,
) -> Value {
    let arrival = |t: f64| {
        chrono::DateTime::from_timestamp(t.floor() as i64, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    json!({
        "requestContext": {"requestId": "r", "functionArn": "f", "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 4},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": null},
        "version": "1.0",
        "timestamp": "2026-12-01T10:00:00.000Z",
        "DDBStreamBatchInfo": {
            "shardId": shard, "startSequenceNumber": first.0, "endSequenceNumber": last.0,
            "approximateArrivalOfFirstRecord": arrival(first.2),
            "approximateArrivalOfLastRecord": arrival(last.2),
            "batchSize": n, "streamArn": stream_arn,
        }
    })
}

/// Writes OnFailure messages to a file for `redrive --from-file`.
fn messages_file(name: &str, messages: &[Value]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{name}.jsonl"));
    let lines: Vec<String> = messages.iter().map(Value::to_string).collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

#[tokio::test]
async fn a_response_of_an_empty_list_is_a_success_as_aws_recorded() {
    // LocalStack's test_dynamodb_report_batch_item_success_scenarios
    // [empty_list_success]: one invocation.
    let table = table_with("empty-list", "prod-e", 3).await;
    let f = ScriptedFunction::start(None, |_| Reply::Json(json!([]))).await;
    let run = run_with(
        &moto_url(),
        &f.endpoint(),
        &[
            "stream",
            "--table",
            &table.name,
            "--maximum-retry-attempts",
            "2",
            "--retry-delay",
            "100",
            "--idle-exit",
            "2",
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert_eq!(f.calls().len(), 1, "{run:?}");
    assert_eq!(run.count("invocations"), 1);
    assert_eq!((run.count("delivered"), run.count("given_up")), (3, 0));
}

#[tokio::test]
async fn a_poison_record_is_isolated_to_a_batch_of_one_without_using_retries() {
    // AWS docs (services-dynamodb-errors): "Splitting a batch does not
    // count towards the retry quota." No retries at all, and the records
    // around the poison one still get through.
    let table = table_with("bisect", "prod-b", 4).await;
    let f = ScriptedFunction::start(None, |c| {
        if c.versions().contains(&3) {
            Reply::Thrown("poison")
        } else {
            success()
        }
    })
    .await;
    let run = run_with(
        &moto_url(),
        &f.endpoint(),
        &[
            "stream",
            "--table",
            &table.name,
            "--maximum-retry-attempts",
            "0",
            "--retry-delay",
            "50",
            "--on-failure",
            &table.on_failure,
            "--idle-exit",
            "2",
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{run:?}");
    let versions: Vec<Vec<u64>> = f.calls().iter().map(|c| c.versions()).collect();
    assert_eq!(
        versions,
        [vec![1, 2, 3, 4], vec![1, 2], vec![3, 4], vec![3], vec![4]]
    );
    assert_eq!((run.count("delivered"), run.count("given_up")), (3, 1));
    let messages = table.on_failure_messages().await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["DDBStreamBatchInfo"]["batchSize"], 1);
    assert_eq!(
        m["DDBStreamBatchInfo"]["startSequenceNumber"],
        super::sequence_number(&table, 3).await
    );
    // A thrown error: "Unhandled", as AWS records it.
    assert_eq!(m["responseContext"]["functionError"], "Unhandled");
    assert_eq!(m["responseContext"]["statusCode"], 200);
}

#[tokio::test]
async fn a_record_reported_in_every_batch_gets_a_fresh_budget_as_aws_recorded() {
    // LocalStack's test_dynamodb_report_batch_item_failures, recorded
    // against AWS: BatchSize 3, MaximumRetryAttempts 3, six records, the
    // sixth reported in every batch: invoked 1 + 4 times, and the OnFailure
    // message says approximateInvokeCount 4 and functionError null.
    let table = table_with("fresh-budget", "prod-f", 6).await;
    let arn = "arn:aws:lambda:eu-west-1:123456789012:function:scripted";
    let f = ScriptedFunction::start(Some(arn), |c| c.report_version(6)).await;
    // By its ARN: GetFunctionConfiguration goes to Lambda's control plane
    // (--endpoint-url, moto here), not to the Invoke endpoint.
    let run = run_with(
        &moto_url(),
        &f.endpoint(),
        &[
            "--function-name",
            arn,
            "stream",
            "--table",
            &table.name,
            "--batch-size",
            "3",
            "--maximum-retry-attempts",
            "3",
            "--retry-delay",
            "50",
            "--on-failure",
            &table.on_failure,
            "--idle-exit",
            "2",
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert_eq!(f.carrying(6), 5, "{:?}", f.calls());
    assert_eq!(f.carrying(5), 1);
    assert_eq!((run.count("delivered"), run.count("given_up")), (5, 1));
    let messages = table.on_failure_messages().await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["requestContext"]["condition"], "RetryAttemptsExhausted");
    assert_eq!(m["requestContext"]["approximateInvokeCount"], 4);
    // The function's own ARN.
    assert_eq!(m["requestContext"]["functionArn"], arn);
    assert!(
        m["requestContext"]["requestId"]
            .as_str()
            .is_some_and(|id| id.starts_with("req-"))
    );
    assert_eq!(
        m["responseContext"],
        json!({"statusCode": 200, "executedVersion": "$LATEST", "functionError": null})
    );
    assert_eq!(m["DDBStreamBatchInfo"]["batchSize"], 1);
}

#[tokio::test]
async fn a_slow_answer_is_awaited_and_never_overlapped() {
    // Lambda invokes synchronously and waits; the function's Timeout does
    // not include its init. An answer later than --function-timeout is
    // still the answer: one invocation, never two in flight.
    let table = table_with("slow", "prod-s", 3).await;
    let f = ScriptedFunction::start(None, |_| {
        Reply::Late(Duration::from_millis(2500), Box::new(success()))
    })
    .await;
    let run = run_with(
        &moto_url(),
        &f.endpoint(),
        &[
            "stream",
            "--table",
            &table.name,
            "--function-timeout",
            "1",
            "--retry-delay",
            "100",
            "--idle-exit",
            "2",
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert_eq!(f.most_in_flight(), 1, "{:?}", f.calls());
    assert_eq!(f.calls().len(), 1);
    assert_eq!(run.count("function_errors"), 0);
    assert_eq!(run.count("delivered"), 3);
}

#[tokio::test]
async fn throttled_records_are_given_up_once_older_than_the_age_limit() {
    // AWS docs (services-dynamodb-errors): records Lambda could not invoke
    // the function with (throttling) are retried until they expire or pass
    // MaximumRecordAgeInSeconds. Records come 56 s old; the limit is 60 s.
    let table = table_with("throttled", "prod-t", 3).await;
    let proxy = StreamsProxy::start(&moto_url()).await;
    proxy.records_aged(56.0);
    let f =
        ScriptedFunction::start(None, |_| Reply::ApiError(429, "TooManyRequestsException")).await;
    let run = run_with(
        &proxy.url(),
        &f.endpoint(),
        &[
            "stream",
            "--table",
            &table.name,
            "--maximum-record-age",
            "60",
            "--retry-delay",
            "200",
            "--on-failure",
            &table.on_failure,
            "--idle-exit",
            "2",
        ],
        Duration::from_secs(40),
    )
    .await;
    assert!(run.success, "{run:?}");
    assert!(!f.calls().is_empty(), "the function was tried");
    assert!(run.count("not_invoked") >= 1, "{run:?}");
    assert_eq!(run.count("invocations"), 0);
    assert_eq!(run.count("given_up"), 3);
    let messages = table.on_failure_messages().await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(
        messages[0]["requestContext"]["condition"],
        "RecordAgeExceeded"
    );
}

#[tokio::test]
async fn a_function_being_updated_is_retried_like_a_throttle() {
    // Invoke answers 409 ResourceConflictException while the function is
    // being updated: the function did not run, and a moment later it does.
    let table = table_with("conflict", "prod-c", 3).await;
    let f = ScriptedFunction::start(None, |c| {
        if c.n < 3 {
            Reply::ApiError(409, "ResourceConflictException")
        } else {
            Reply::Json(json!({}))
        }
    })
    .await;
    let run = run_with(
        &moto_url(),
        &f.endpoint(),
        &[
            "stream",
            "--table",
            &table.name,
            "--maximum-retry-attempts",
            "0",
            "--retry-delay",
            "100",
            "--idle-exit",
            "2",
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert_eq!(run.count("not_invoked"), 3, "{run:?}");
    assert_eq!((run.count("invocations"), run.count("delivered")), (1, 3));
    assert_eq!(run.summary["stopped_by"], "idle");
}

#[tokio::test]
async fn expired_iterators_are_renewed_through_a_long_outage() {
    // AWS: an iterator expires 15 minutes after it was issued (here 3 s).
    // A batch retried for longer (MaximumRetryAttempts -1) reads no shard
    // meanwhile; the run still ends with every record delivered, exit 0.
    let table = table_with("expired", "prod-x", 5).await;
    let proxy = StreamsProxy::start(&moto_url()).await;
    proxy.expire_iterators_after(Duration::from_secs(3));
    let f = ScriptedFunction::start(None, |c| {
        if c.n < 20 {
            c.report_version(c.versions()[0])
        } else {
            success()
        }
    })
    .await;
    let run = run_with(
        &proxy.url(),
        &f.endpoint(),
        &[
            "stream",
            "--table",
            &table.name,
            "--batch-size",
            "2",
            "--maximum-retry-attempts",
            "-1",
            "--retry-delay",
            "300",
            "--idle-exit",
            "3",
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert!(proxy.expired() >= 1, "an iterator expired");
    assert!(run.count("iterator_renewals") >= 1, "{run:?}");
    assert_eq!((run.count("delivered"), run.count("given_up")), (5, 0));
    let mut delivered: Vec<u64> = f
        .calls()
        .iter()
        .skip(20)
        .flat_map(|c| c.versions())
        .collect();
    delivered.sort_unstable();
    assert_eq!(delivered, [1, 2, 3, 4, 5], "{:?}", f.calls());
}

#[tokio::test]
async fn a_stopped_run_resumes_from_the_point_it_printed() {
    let table = table_with("resume", "prod-r", 6).await;
    let f = ScriptedFunction::start(None, |_| success()).await;
    let first = run_with(
        &moto_url(),
        &f.endpoint(),
        &[
            "stream",
            "--table",
            &table.name,
            "--batch-size",
            "2",
            "--max-records",
            "2",
        ],
        LIMIT,
    )
    .await;
    assert!(first.success, "{first:?}");
    assert_eq!(first.summary["stopped_by"], "max-records");
    // One shard with its own checkpoint: SHARD=after:SEQ.
    let resume = first
        .summary
        .get("resume_at")
        .expect("a resume point")
        .clone();
    let (shard, at) = resume.split_once('=').unwrap();
    assert!(shard.starts_with("shardId-"), "{resume}");
    assert_eq!(
        at,
        format!("after:{}", super::sequence_number(&table, 2).await)
    );
    let second = run_with(
        &moto_url(),
        &f.endpoint(),
        &[
            "stream",
            "--table",
            &table.name,
            "--resume-at",
            &resume,
            "--idle-exit",
            "2",
        ],
        LIMIT,
    )
    .await;
    assert!(second.success, "{second:?}");
    let mut versions: Vec<u64> = f.calls().iter().flat_map(|c| c.versions()).collect();
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6], "nothing twice, nothing lost");
}

#[tokio::test]
async fn records_the_filter_keeps_out_never_reach_the_function() {
    // AWS docs (invocation-eventfiltering): records that match no filter
    // are never sent, and the mapping moves past them; a redrive does not
    // send them either.
    let table = table_with("filter", "prod-g", 1).await;
    let mut changed = Table::event("prod-g", 1, "ProductPriceChanged");
    changed.insert("note".into(), AttributeValue::S("a MODIFY".into()));
    table.put(changed).await;
    table
        .put(Table::event("prod-g", 2, "ProductPriceChanged"))
        .await;
    let f = ScriptedFunction::start(None, |_| success()).await;
    let pattern = r#"{"eventName": ["INSERT"]}"#;
    let run = run_with(
        &moto_url(),
        &f.endpoint(),
        &[
            "stream",
            "--table",
            &table.name,
            "--filter-pattern",
            pattern,
            "--idle-exit",
            "2",
        ],
        LIMIT,
    )
    .await;
    assert!(run.success, "{run:?}");
    let names = |calls: &[crate::support::scripted::Call]| -> Vec<String> {
        calls
            .iter()
            .flat_map(|c| {
                c.records()
                    .iter()
                    .map(|r| r["eventName"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    assert_eq!(names(&f.calls()), ["INSERT", "INSERT"]);
    assert_eq!((run.count("filtered"), run.count("delivered")), (1, 2));

    let records = stream_of(&table).await;
    assert_eq!(records.len(), 3);
    let arn = local::stream_arn(&table).await;
    let (shard, _) = local::shard(&arn).await;
    let file = messages_file(
        &table.name,
        &[on_failure(&arn, &shard, &records[0], &records[2], 3)],
    );
    let redrive = run_with(
        &moto_url(),
        &f.endpoint(),
        &[
            "redrive",
            "--from-file",
            file.to_str().unwrap(),
            "--filter-pattern",
            pattern,
        ],
        LIMIT,
    )
    .await;
    assert!(redrive.success, "{redrive:?}");
    assert_eq!(
        (redrive.count("forwarded"), redrive.count("filtered")),
        (2, 1)
    );
    assert_eq!(names(&f.calls()[1..]), ["INSERT", "INSERT"]);
}

#[tokio::test]
async fn redrive_reads_through_empty_pages_and_goes_on_after_a_trimmed_range() {
    // AWS (GetRecords): several calls may be needed to reach records. A
    // range whose position is trimmed is reported and kept; the next one
    // is still forwarded.
    let table = table_with("redrive-pages", "prod-p", 6).await;
    let records = stream_of(&table).await;
    let arn = local::stream_arn(&table).await;
    let (shard, _) = local::shard(&arn).await;
    let proxy = StreamsProxy::start(&moto_url()).await;
    proxy.trim_at(&records[0].0);
    proxy.empty_pages(5);
    let file = messages_file(
        &table.name,
        &[
            on_failure(&arn, &shard, &records[0], &records[1], 2),
            on_failure(&arn, &shard, &records[2], &records[4], 3),
        ],
    );
    let f = ScriptedFunction::start(None, |_| success()).await;
    let run = run_with(
        &proxy.url(),
        &f.endpoint(),
        &["redrive", "--from-file", file.to_str().unwrap()],
        LIMIT,
    )
    .await;
    assert!(!run.success, "a range is lost: {run:?}");
    assert!(
        run.stderr.contains("the stream no longer holds"),
        "{}",
        run.stderr
    );
    assert_eq!(
        (run.count("forwarded"), run.count("kept"), run.count("gone")),
        (3, 1, 2),
        "{run:?}"
    );
    let versions: Vec<u64> = f.calls().iter().flat_map(|c| c.versions()).collect();
    assert_eq!(versions, [3, 4, 5]);
}

#[tokio::test]
async fn the_backfill_redrive_suggests_for_a_lost_range_covers_every_event_of_it() {
    // Arrival times are whole seconds of the stream write, not occurredAt:
    // an event stamped before its write, one without occurredAt and the
    // last of the range must all be in what the suggestion sends.
    let table = Table::event_store(&table_name("lost-range")).await;
    let stamped = |v: u64, at: Option<chrono::DateTime<chrono::Utc>>| {
        let mut item = Table::event("prod-l", v, "ProductPriceChanged");
        if let Some(at) = at {
            item.insert("occurredAt".into(), AttributeValue::S(at.to_rfc3339()));
        }
        item
    };
    let now = chrono::Utc::now();
    table
        .put(stamped(1, Some(now - chrono::TimeDelta::minutes(2))))
        .await;
    table.put(stamped(2, None)).await;
    table.put(stamped(3, Some(now))).await;
    let records = stream_of(&table).await;
    let arn = local::stream_arn(&table).await;
    // The shard is gone (older than 24 h), as is everything of the range.
    let file = messages_file(
        &table.name,
        &[on_failure(
            &arn,
            "shardId-00000000000000000000-00000000",
            &records[0],
            &records[2],
            3,
        )],
    );
    let f = ScriptedFunction::start(None, |_| success()).await;
    let redrive = run_with(
        &moto_url(),
        &f.endpoint(),
        &["redrive", "--from-file", file.to_str().unwrap()],
        LIMIT,
    )
    .await;
    assert!(!redrive.success, "{redrive:?}");
    let suggestion = redrive
        .stderr
        .lines()
        .find_map(|l| l.split_once("forwarder-ops backfill"))
        .map(|(_, args)| format!("backfill{args}"))
        .expect("a backfill is suggested");
    let args: Vec<&str> = suggestion.split_whitespace().collect();
    let backfill = run_with(&moto_url(), &f.endpoint(), &args, LIMIT).await;
    assert!(backfill.success, "{backfill:?}");
    let mut versions: Vec<u64> = f.calls().iter().flat_map(|c| c.versions()).collect();
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3], "{suggestion}");
}

#[tokio::test]
async fn a_redrive_longer_than_the_visibility_timeout_keeps_its_messages_hidden() {
    // Received a page at a time and kept hidden while held: a run longer
    // than the timeout lets no message reappear for another reader (the
    // whole queue received up front with a fixed timeout did).
    let table = table_with("redrive-hidden", "prod-h", 4).await;
    let records = stream_of(&table).await;
    let arn = local::stream_arn(&table).await;
    let (shard, _) = local::shard(&arn).await;
    let url = table.on_failure.clone();
    for r in &records {
        table
            .sqs
            .send_message()
            .queue_url(&url)
            .message_body(on_failure(&arn, &shard, r, r, 1).to_string())
            .send()
            .await
            .unwrap();
    }
    // Each range takes 1.5 s: the run lasts about 6 s, the timeout is 2 s.
    let f = ScriptedFunction::start(None, |_| {
        Reply::Late(Duration::from_millis(1500), Box::new(success()))
    })
    .await;
    let (moto, endpoint) = (moto_url(), f.endpoint());
    let args = ["redrive", "--queue", &url, "--visibility-timeout", "2"];
    let redrive = run_with(&moto, &endpoint, &args, LIMIT);
    let other_reader = async {
        // Once the redrive has received them (it starts in well under 1.5 s).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut seen = 0;
        let until = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < until {
            let got = table
                .sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
            seen += got.messages().len();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    };
    let (redrive, seen) = tokio::join!(redrive, other_reader);
    assert!(redrive.success, "{redrive:?}");
    assert_eq!(redrive.count("deleted"), 4, "{redrive:?}");
    assert_eq!(seen, 0, "no message reappeared while the redrive held it");
}
