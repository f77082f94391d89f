//! Nothing stranded, and the whole history for a new consumer: `redrive`
//! after an outage that exhausted the retries, and `backfill` of a table
//! into one new queue, both through the real function under `cargo lambda
//! watch`, against moto's DynamoDB, its stream and SQS, and RabbitMQ.

use std::{
    collections::{HashMap, HashSet},
    process::Stdio,
    time::{Duration, Instant},
};

use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use lapin::{
    message::Delivery,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use serde_json::{Value, json};
use testkit::{
    body, header_str,
    local::{self, Loop, Table, key_version, moto_url, run_with, table_name},
    proxy::{Mode, Proxy},
    unique,
};

use crate::support::scripted::{Reply, ScriptedFunction};

#[tokio::test]
async fn redrive_forwards_every_stranded_record_and_keeps_what_the_stream_lost() {
    let table = Table::event_store(&table_name("redrive")).await;
    let proxy = Proxy::start(testkit::amqp_port()).await;
    let Loop {
        table,
        exchange,
        function,
        broker,
        queue,
    } = Loop::start(
        table,
        "redrive",
        &[("AMQP_URI", &proxy.uri("")), ("CONNECT_TIMEOUT_MS", "500")],
    )
    .await;

    // An outage long enough to exhaust the retries: three batches given up.
    proxy.set(Mode::Refuse);
    proxy.sever();
    for v in 1..=10 {
        table
            .put(Table::event("prod-r", v, "ProductPriceChanged"))
            .await;
    }
    let outage = local::run(
        &function,
        &[
            "stream",
            "--table",
            &table.name,
            "--batch-size",
            "4",
            "--maximum-retry-attempts",
            "1",
            "--retry-delay",
            "100",
            "--on-failure",
            &table.on_failure,
            "--idle-exit",
            "2",
        ],
    )
    .await;
    assert_eq!(outage.count("given_up"), 10, "{outage:?}");
    assert_eq!(outage.count("on_failure_messages"), 3);
    proxy.set(Mode::Forward);

    // A dry run says what it would send and leaves everything as it is.
    let dry = local::run(
        &function,
        &["redrive", "--queue", &table.on_failure, "--dry-run"],
    )
    .await;
    assert!(dry.success, "{dry:?}");
    assert_eq!(
        (
            dry.count("ranges"),
            dry.count("records"),
            dry.count("deleted")
        ),
        (3, 10, 0)
    );
    assert!(
        broker.drain(&queue).await.is_empty(),
        "a dry run invoked the function"
    );

    let redrive = local::run(
        &function,
        &[
            "redrive",
            "--queue",
            &table.on_failure,
            "--retry-delay",
            "100",
        ],
    )
    .await;

    assert!(redrive.success, "{redrive:?}");
    assert_eq!(redrive.count("messages"), 3);
    assert_eq!(redrive.count("forwarded"), 10);
    assert_eq!(redrive.count("deleted"), 3);
    assert_eq!(redrive.count("gone"), 0);
    // Every stranded record, counted one by one, in order.
    let versions = local::versions(&broker, &queue, 10).await;
    assert_eq!(versions, (1..=10).collect::<Vec<_>>());
    assert!(
        table.on_failure_messages().await.is_empty(),
        "the OnFailure queue is empty"
    );

    // Ranges the stream no longer has: a shard that is gone, and a start
    // older than the shard's first record (trimmed after 24 h).
    let stream_arn = local::stream_arn(&table).await;
    let shard = local::shard(&stream_arn).await;
    for (shard_id, start, end) in [
        (
            "shardId-00000000000000000000-00000000",
            "900000000000000000001",
            "900000000000000000003",
        ),
        (
            shard.0.as_str(),
            "1000000000000000000001",
            "1000000000000000000003",
        ),
    ] {
        let message = json!({
            "requestContext": {"requestId": "r", "functionArn": "f", "condition": "RecordAgeExceeded", "approximateInvokeCount": 1},
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST"},
            "version": "1.0",
            "timestamp": "2026-12-01T10:00:00.000Z",
            "DDBStreamBatchInfo": {
                "shardId": shard_id, "startSequenceNumber": start, "endSequenceNumber": end,
                "approximateArrivalOfFirstRecord": "2026-12-01T09:00:00Z",
                "approximateArrivalOfLastRecord": "2026-12-01T09:05:00Z",
                "batchSize": 3, "streamArn": stream_arn,
            }
        });
        table
            .sqs
            .send_message()
            .queue_url(&table.on_failure)
            .message_body(message.to_string())
            .send()
            .await
            .unwrap();
    }
    let lost = local::run(&function, &["redrive", "--queue", &table.on_failure]).await;
    assert!(!lost.success, "{lost:?}");
    assert_eq!(
        (
            lost.count("kept"),
            lost.count("gone"),
            lost.count("deleted")
        ),
        (2, 6, 0)
    );
    assert!(
        lost.stderr
            .contains("the stream no longer holds shardId-00000000000000000000-00000000"),
        "{}",
        lost.stderr
    );
    // Where the records may still be comes first: an S3 OnFailure
    // destination holds them (issue 29); then the table.
    let hint = lost
        .stderr
        .find("its objects hold them: forwarder-ops redrive --bucket")
        .unwrap_or_else(|| panic!("no S3 hint: {}", lost.stderr));
    assert!(
        lost.stderr[hint..].contains("backfill the whole table"),
        "{}",
        lost.stderr
    );
    // The whole table: arrival times are not occurredAt, so no window on
    // the table can be sure to cover the range.
    assert!(
        lost.stderr.contains(
            "written between 2026-12-01T09:00:00Z and 2026-12-01T09:05:00Z (arrival times, \
             whole seconds)"
        ),
        "{}",
        lost.stderr
    );
    assert!(
        lost.stderr
            .lines()
            .any(|l| l.ends_with(&format!("forwarder-ops backfill --table {}", table.name))),
        "{}",
        lost.stderr
    );
    assert_eq!(
        table.on_failure_messages().await.len(),
        2,
        "both messages kept"
    );
    broker.cleanup(&exchange, &[&queue]).await;
}

/// Writes `n` events over `aggregates` aggregates, versions in order,
/// interleaved, 25 to a BatchWriteItem.
async fn write_history(table: &Table, n: usize, aggregates: usize) {
    let mut next = vec![0u64; aggregates];
    let mut rng = fastrand::Rng::with_seed(2026);
    let mut batch = Vec::new();
    for i in 0..n {
        let a = rng.usize(..aggregates);
        next[a] += 1;
        let item = Table::event(&format!("agg-{a:03}"), next[a], "ProductPriceChanged");
        batch.push(
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                .build(),
        );
        if batch.len() == 25 || i == n - 1 {
            table
                .dynamodb
                .batch_write_item()
                .request_items(&table.name, std::mem::take(&mut batch))
                .send()
                .await
                .expect("BatchWriteItem");
        }
    }
}

/// The peak resident memory of a running process, in KiB (Linux).
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the tool to its end, with its peak memory in KiB (the last look
/// before it ended).
async fn run_measured(function: &testkit::Function, args: &[&str]) -> (local::Run, u64) {
    let mut child = local::ops(function, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    // Drained on threads of their own so that the tool never blocks on a
    // full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut b).map(|_| b)
    });
    let stderr = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut b).map(|_| b)
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        peak = peak.max(peak_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = std::process::Output {
        status,
        stdout: stdout.join().unwrap().unwrap(),
        stderr: stderr.join().unwrap().unwrap(),
    };
    (local::run_result(output), peak)
}

/// Events for the acceptance run of a backfill by 8 workers: 10,000 in
/// `make test`; `BACKFILL_EVENTS=100000` by hand (docs/operations.md).
fn backfill_events() -> usize {
    std::env::var("BACKFILL_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

#[tokio::test]
async fn a_backfill_into_a_new_queue_brings_the_whole_history_in_order_with_the_live_ids() {
    const WORKERS: usize = 8;
    const BATCH: usize = 100;
    // moto's Query reads its whole table, so more aggregates cost minutes.
    const AGGREGATES: usize = 200;
    let events = backfill_events();
    let started = Instant::now();
    let table = Table::event_store(&table_name("backfill")).await;
    let allowed = format!("backfill-{}", unique("q").replace('.', "-"));
    let Loop {
        table,
        exchange,
        function,
        broker,
        queue: live,
    } = Loop::start(table, "backfill", &[("REPLAY_QUEUES", "backfill-*")]).await;
    write_history(&table, events, AGGREGATES).await;

    // What the live stream gave every event.
    let run = local::run(
        &function,
        &[
            "stream",
            "--table",
            &table.name,
            "--batch-size",
            "1000",
            "--idle-exit",
            "3",
        ],
    )
    .await;
    assert_eq!(run.count("delivered"), events as u64, "{run:?}");
    let live_ids: HashMap<(String, u64), (String, String)> = broker
        .drain(&live)
        .await
        .iter()
        .map(|d| {
            let id = d.properties.message_id().as_ref().unwrap().to_string();
            (key_version(d), (id, d.routing_key.to_string()))
        })
        .collect();
    assert_eq!(live_ids.len(), events);

    // A new consumer's queue, not bound to the exchange.
    broker
        .channel
        .queue_declare(
            allowed.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let checkpoint = std::env::temp_dir().join(format!("{allowed}.json"));
    let args = [
        "backfill",
        "--table",
        &table.name,
        "--to-queue",
        &allowed,
        "--workers",
        &WORKERS.to_string(),
        "--batch-size",
        &BATCH.to_string(),
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--rate",
        "2500",
    ];
    // Killed half way through, then run again with the same checkpoint.
    // Killed when the test ends, whatever happens.
    let first = testkit::Process(
        local::ops(&function, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let first_pid = first.0.id();
    let mut first_peak = 0;
    let until = Instant::now() + Duration::from_secs(60 + events as u64 / 100);
    let confirmed_at_kill = loop {
        first_peak = first_peak.max(peak_kib(first_pid).unwrap_or(0));
        let saved: Option<Value> = std::fs::read_to_string(&checkpoint)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(n) = saved
            .and_then(|c| c["confirmed"].as_u64())
            .filter(|n| *n >= events as u64 / 2)
        {
            break n;
        }
        assert!(Instant::now() < until, "the backfill made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    first.signal("-KILL");
    drop(first);
    let (resumed, resumed_peak) = run_measured(&function, &args).await;

    assert!(resumed.success, "{resumed:?}");
    assert!(resumed.count("skipped") >= events as u64 / 2, "{resumed:?}");
    assert_eq!(resumed.count("workers"), WORKERS as u64, "{resumed:?}");
    let got = broker.drain(&allowed).await;
    let mut seen = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    for d in &got {
        let (key, version) = key_version(d);
        let (id, routing_key) = &live_ids[&(key.clone(), version)];
        assert_eq!(d.properties.message_id().as_ref().unwrap().as_str(), id);
        assert_eq!(header_str(d, "routingKey").as_ref(), Some(routing_key));
        assert_eq!(d.routing_key.as_str(), allowed);
        if seen.insert((key.clone(), version)) {
            // First deliveries of an aggregate come in version order.
            let previous = last.insert(key.clone(), version).unwrap_or(0);
            assert_eq!(version, previous + 1, "{key}");
        }
    }
    assert_eq!(seen.len(), events, "every event arrived");
    // Sent again: only what was in flight when the first run was killed,
    // at most a batch per worker (the checkpoint may trail the kill by one
    // write per worker).
    let duplicates = got.len() - events;
    assert!(duplicates <= WORKERS * BATCH, "{duplicates} sent twice");
    eprintln!(
        "backfill acceptance: {events} events, {} aggregates, {WORKERS} workers, killed at \
         {confirmed_at_kill} confirmed; resumed: skipped={} forwarded={} in {} s; \
         {duplicates} duplicates; peak RSS {first_peak} KiB (killed run), {resumed_peak} KiB \
         (resumed run); whole test {:.0} s",
        AGGREGATES,
        resumed.count("skipped"),
        resumed.count("forwarded"),
        resumed.summary["seconds"],
        started.elapsed().as_secs_f64()
    );
    assert!(
        broker.drain(&live).await.is_empty(),
        "nothing went to the exchange"
    );

    // A queue REPLAY_QUEUES does not allow: refused before anything is sent.
    let other = unique("not-allowed");
    broker
        .channel
        .queue_declare(
            other.as_str().into(),
            // Durable: RabbitMQ 4.3 (and our Amazon MQ 4.2 settings) refuse
            // a transient queue that is not exclusive.
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let refused = local::run(
        &function,
        &["backfill", "--table", &table.name, "--to-queue", &other],
    )
    .await;
    assert!(!refused.success, "{refused:?}");
    assert!(
        refused.stderr.contains("not allowed by REPLAY_QUEUES"),
        "{}",
        refused.stderr
    );
    assert!(broker.drain(&other).await.is_empty());
    for q in [&allowed, &other] {
        let _ = broker
            .channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = std::fs::remove_file(&checkpoint);
    broker.cleanup(&exchange, &[&live]).await;
}

#[tokio::test]
async fn a_change_table_is_backfilled_as_snapshots_with_ids_of_their_state() {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    let table = Table::entities(&table_name("snapshots"), "customerId").await;
    let Loop {
        table,
        exchange,
        function,
        broker,
        queue,
    } = Loop::start(
        table,
        "snapshots",
        &[("MAPPING", "change"), ("ENTITY_NAME", "Customer")],
    )
    .await;
    for (id, tier) in [("cust-1", "gold"), ("cust-2", "silver"), ("cust-3", "gold")] {
        table
            .put(local::Item::from([
                ("customerId".to_string(), A::S(id.into())),
                ("tier".to_string(), A::S(tier.into())),
            ]))
            .await;
    }
    let args = ["backfill", "--table", &table.name, "--mapping", "change"];
    let backfill = || local::run(&function, &args);

    let first = backfill().await;
    assert!(first.success, "{first:?}");
    let got = broker.take(&queue, 3, Duration::from_secs(10)).await;
    let bodies: Vec<Value> = got.iter().map(body).collect();
    let mut keys: Vec<&str> = bodies
        .iter()
        .map(|b| b["partitionKey"].as_str().unwrap())
        .collect();
    // One snapshot per item, in no order across items (Scan order).
    keys.sort_unstable();
    assert_eq!(keys, ["cust-1", "cust-2", "cust-3"]);
    assert!(
        bodies
            .iter()
            .all(|b| b["messageType"] == "CustomerSnapshot")
    );
    assert_eq!(got[0].routing_key.as_str(), "customer.snapshot.v1");
    let cust_2 = bodies
        .iter()
        .find(|b| b["partitionKey"] == "cust-2")
        .unwrap();
    assert_eq!(cust_2["payload"]["tier"], "silver");

    // The same state again: the same ids; a changed item: a new one.
    table
        .put(local::Item::from([
            ("customerId".to_string(), A::S("cust-2".into())),
            ("tier".to_string(), A::S("platinum".into())),
        ]))
        .await;
    let again = backfill().await;
    assert!(again.success, "{again:?}");
    let ids = |ds: &[Delivery]| -> HashMap<String, String> {
        ds.iter()
            .map(|d| {
                let key = body(d)["partitionKey"].as_str().unwrap().to_owned();
                (key, d.properties.message_id().as_ref().unwrap().to_string())
            })
            .collect()
    };
    let second = broker.take(&queue, 3, Duration::from_secs(10)).await;
    let (before, after) = (ids(&got), ids(&second));
    assert_eq!(before["cust-1"], after["cust-1"]);
    assert_eq!(before["cust-3"], after["cust-3"]);
    assert_ne!(before["cust-2"], after["cust-2"]);
    broker.cleanup(&exchange, &[&queue]).await;
}

/// Long enough for any run against the scripted function; one still going
/// then is a hang.
const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_stopped_change_backfill_resumes_at_the_next_item_whatever_the_keys() {
    use aws_sdk_dynamodb::{
        primitives::Blob,
        types::{AttributeValue as A, KeyType, ScalarAttributeType as T},
    };
    // Keys that an item's text once merged: ("a", "b#c") and ("a#b", "c")
    // joined with '#', and two binaries (both ""), so that resume took the
    // second item for the first and skipped it.
    let composite = Table::keyed(
        &table_name("keys-text"),
        &[("pk", KeyType::Hash, T::S), ("sk", KeyType::Range, T::S)],
    )
    .await;
    for (pk, sk) in [("a", "b#c"), ("a#b", "c")] {
        composite
            .put(local::Item::from([
                ("pk".to_string(), A::S(pk.into())),
                ("sk".to_string(), A::S(sk.into())),
            ]))
            .await;
    }
    let binary = Table::keyed(&table_name("keys-binary"), &[("pk", KeyType::Hash, T::B)]).await;
    for b in [vec![0u8, 1], vec![2u8]] {
        binary
            .put(local::Item::from([("pk".to_string(), A::B(Blob::new(b)))]))
            .await;
    }
    for table in [&composite, &binary] {
        let checkpoint = std::env::temp_dir().join(format!("{}.json", table.name));
        let args = [
            "backfill",
            "--table",
            &table.name,
            "--mapping",
            "change",
            // One Scan segment: moto cannot segment a binary partition key.
            "--segments",
            "1",
            "--batch-size",
            "1",
            "--max-retries",
            "0",
            "--retry-delay",
            "10",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ];
        // The first item goes through, the second is reported failed: the
        // backfill stops there, its checkpoint after the first.
        let first_seen = std::sync::Arc::new(std::sync::Mutex::new(None::<Value>));
        let seen = first_seen.clone();
        let f = ScriptedFunction::start(None, move |call| {
            let record = &call.records()[0];
            let key = record["dynamodb"]["Keys"].clone();
            let mut first = seen.lock().unwrap();
            if *first.get_or_insert_with(|| key.clone()) == key {
                Reply::Json(json!([]))
            } else {
                let seq = record["dynamodb"]["SequenceNumber"].clone();
                Reply::Json(json!({"batchItemFailures": [{"itemIdentifier": seq}]}))
            }
        })
        .await;
        let stopped = run_with(&moto_url(), &f.endpoint(), &args, LIMIT).await;
        assert!(!stopped.success, "{stopped:?}");
        assert_eq!(stopped.count("forwarded"), 1, "{stopped:?}");
        let first = first_seen.lock().unwrap().clone().unwrap();

        let rest = ScriptedFunction::start(None, |_| Reply::Json(json!([]))).await;
        let resumed = run_with(&moto_url(), &rest.endpoint(), &args, LIMIT).await;
        assert!(resumed.success, "{resumed:?}");
        let sent: Vec<Value> = rest
            .calls()
            .iter()
            .flat_map(|c| c.records().to_vec())
            .map(|r| r["dynamodb"]["Keys"].clone())
            .collect();
        assert_eq!(
            sent.len(),
            1,
            "{}: the second item, once: {sent:?}",
            table.name
        );
        assert_ne!(sent[0], first, "the confirmed item is not sent again");
        let _ = std::fs::remove_file(&checkpoint);
    }
}

#[tokio::test]
async fn a_backfill_whose_function_stays_out_of_reach_ends_with_its_summary() {
    // Every call throttled: no retry attempt is used (Lambda's rule), so
    // only --not-invoked-limit ends it.
    let table = Table::event_store(&table_name("throttled")).await;
    for v in 1..=3 {
        table
            .put(Table::event("prod-t", v, "ProductPriceChanged"))
            .await;
    }
    let f =
        ScriptedFunction::start(None, |_| Reply::ApiError(429, "TooManyRequestsException")).await;
    let run = run_with(
        &moto_url(),
        &f.endpoint(),
        &[
            "backfill",
            "--table",
            &table.name,
            "--retry-delay",
            "200",
            "--not-invoked-limit",
            "2",
        ],
        LIMIT,
    )
    .await;
    assert!(!run.success, "{run:?}");
    assert_eq!(
        (run.count("forwarded"), run.count("failed")),
        (0, 3),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("the function could not be invoked: not invoked for"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_table_keyed_otherwise_is_sorted_on_disk_past_its_memory_and_resumes_in_order() {
    use aws_sdk_dynamodb::types::{AttributeValue as A, KeyType, ScalarAttributeType as T};
    // Keyed by an event id: the backfill must sort the table itself. Items
    // are written in a shuffled order (seeded) and --sort-memory is far
    // below the table, so the order comes from sorted runs merged from
    // temporary files.
    let table = Table::keyed(
        &table_name("keyed-by-id"),
        &[("eventId", KeyType::Hash, T::S)],
    )
    .await;
    let mut rng = fastrand::Rng::with_seed(33);
    let mut events: Vec<(String, u64)> = (0..4)
        .flat_map(|a| (1..=30).map(move |v| (format!("prod-{a}"), v)))
        .collect();
    rng.shuffle(&mut events);
    for (aggregate, version) in &events {
        let mut item = Table::event(aggregate, *version, "ProductPriceChanged");
        item.insert("eventId".into(), A::S(format!("{:016x}", rng.u64(..))));
        table.put(item).await;
    }
    let checkpoint = std::env::temp_dir().join(format!("{}.json", table.name));
    let args = [
        "backfill",
        "--table",
        &table.name,
        "--sort-memory",
        "4K",
        "--batch-size",
        "7",
        "--max-retries",
        "0",
        "--retry-delay",
        "10",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ];
    let sent_by = |f: &ScriptedFunction| -> Vec<(String, u64)> {
        f.calls()
            .iter()
            .flat_map(|c| c.records().to_vec())
            .map(|r| {
                let image = &r["dynamodb"]["NewImage"];
                let version = image["version"]["N"].as_str().unwrap().parse().unwrap();
                (
                    image["aggregateId"]["S"].as_str().unwrap().to_owned(),
                    version,
                )
            })
            .collect()
    };
    // The fourth batch's first record fails: the run stops after 21
    // confirmed events.
    let f = ScriptedFunction::start(None, |call| {
        if call.records()[0]["dynamodb"]["SequenceNumber"] == "22" {
            let seq = call.records()[0]["dynamodb"]["SequenceNumber"].clone();
            Reply::Json(json!({"batchItemFailures": [{"itemIdentifier": seq}]}))
        } else {
            Reply::Json(json!([]))
        }
    })
    .await;
    let stopped = run_with(&moto_url(), &f.endpoint(), &args, LIMIT).await;
    assert!(!stopped.success, "{stopped:?}");
    assert_eq!(stopped.count("forwarded"), 21, "{stopped:?}");
    assert!(
        stopped.stderr.contains("merging its sorted runs"),
        "the table spilled: {}",
        stopped.stderr
    );
    let mut sent = sent_by(&f);
    sent.truncate(21);

    let rest = ScriptedFunction::start(None, |_| Reply::Json(json!([]))).await;
    let resumed = run_with(&moto_url(), &rest.endpoint(), &args, LIMIT).await;
    assert!(resumed.success, "{resumed:?}");
    sent.extend(sent_by(&rest));
    // Every event once, each aggregate whole and in version order.
    let mut want = events.clone();
    want.sort();
    assert_eq!(sent, want);
    let _ = std::fs::remove_file(&checkpoint);
}
