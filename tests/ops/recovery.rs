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
    local::{self, Loop, Table, key_version, table_name},
    proxy::{Mode, Proxy},
    unique,
};

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

#[tokio::test]
async fn a_backfill_into_a_new_queue_brings_the_whole_history_in_order_with_the_live_ids() {
    const EVENTS: usize = 10_000;
    let table = Table::event_store(&table_name("backfill")).await;
    let allowed = format!("backfill-{}", unique("q").replace('.', "-"));
    let Loop {
        table,
        exchange,
        function,
        broker,
        queue: live,
    } = Loop::start(table, "backfill", &[("REPLAY_QUEUES", "backfill-*")]).await;
    write_history(&table, EVENTS, 200).await;

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
    assert_eq!(run.count("delivered"), EVENTS as u64, "{run:?}");
    let live_ids: HashMap<(String, u64), (String, String)> = broker
        .drain(&live)
        .await
        .iter()
        .map(|d| {
            let id = d.properties.message_id().as_ref().unwrap().to_string();
            (key_version(d), (id, d.routing_key.to_string()))
        })
        .collect();
    assert_eq!(live_ids.len(), EVENTS);

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
        "--segments",
        "3",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--rate",
        "2500",
    ];
    // Killed half way through, then run again with the same checkpoint.
    let first = local::ops(&function, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let saved: Option<Value> = std::fs::read_to_string(&checkpoint)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if saved.is_some_and(|c| c["position"].as_u64() >= Some(EVENTS as u64 / 2)) {
            break;
        }
        assert!(Instant::now() < until, "the backfill made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    testkit::Process(first).signal("-KILL");
    let resumed = local::run(&function, &args).await;

    assert!(resumed.success, "{resumed:?}");
    assert!(resumed.count("skipped") >= EVENTS as u64 / 2, "{resumed:?}");
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
    assert_eq!(seen.len(), EVENTS, "every event arrived");
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
    let keys: Vec<&str> = bodies
        .iter()
        .map(|b| b["partitionKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["cust-1", "cust-2", "cust-3"], "in key order");
    assert!(
        bodies
            .iter()
            .all(|b| b["messageType"] == "CustomerSnapshot")
    );
    assert_eq!(got[0].routing_key.as_str(), "customer.snapshot.v1");
    assert_eq!(bodies[1]["payload"]["tier"], "silver");

    // The same state again: the same ids; a changed item: a new one.
    table
        .put(local::Item::from([
            ("customerId".to_string(), A::S("cust-2".into())),
            ("tier".to_string(), A::S("platinum".into())),
        ]))
        .await;
    let again = backfill().await;
    assert!(again.success, "{again:?}");
    let ids = |ds: &[Delivery]| -> Vec<String> {
        ds.iter()
            .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
            .collect()
    };
    let second = broker.take(&queue, 3, Duration::from_secs(10)).await;
    let (before, after) = (ids(&got), ids(&second));
    assert_eq!((&before[0], &before[2]), (&after[0], &after[2]));
    assert_ne!(before[1], after[1]);
    broker.cleanup(&exchange, &[&queue]).await;
}
