//! The real stream, end to end: items written through the DynamoDB API
//! into moto's table, its stream read by `forwarder-ops stream` (the local
//! event source mapping), the real function under `cargo lambda watch`,
//! and what arrived in RabbitMQ and in the OnFailure queue. The mapping's
//! own rules, held to AWS's, are in `local_stream/mapping.rs` (with a
//! scripted function instead of ours).

mod mapping;

use std::{
    collections::HashMap,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{
    Function, body, header_str,
    local::{self, Loop, Table, key_version, table_name},
    proxy::{Mode, Proxy},
    unique,
};
use uuid::Uuid;

const NAMESPACE: Uuid = uuid::uuid!("08ebb892-d8fe-430a-aad9-6a1cfb75305c");

#[tokio::test]
async fn items_written_through_the_api_arrive_in_order_per_aggregate_with_the_envelope() {
    let table = Table::event_store(&table_name("store")).await;
    let Loop {
        table,
        exchange,
        function,
        broker,
        queue,
    } = Loop::start(table, "local", &[("EVENT_SOURCE", "ProductService")]).await;

    // Three aggregates written interleaved, then one command's three events
    // in a transaction.
    for version in 1..=4 {
        for aggregate in ["prod-a", "prod-b", "prod-c"] {
            table
                .put(Table::event(aggregate, version, "ProductPriceChanged"))
                .await;
        }
    }
    table
        .transact(
            (5..=7)
                .map(|v| Table::event("prod-a", v, "ProductRestocked"))
                .collect(),
        )
        .await;

    let run = local::run(
        &function,
        &[
            "stream",
            "--table",
            &table.name,
            "--batch-size",
            "5",
            "--idle-exit",
            "2",
        ],
    )
    .await;

    assert!(run.success, "{run:?}");
    assert_eq!(run.count("records"), 15, "{run:?}");
    assert_eq!(run.count("delivered"), 15);
    assert_eq!(run.count("batches"), 3, "batches of 5");
    let got = broker.take(&queue, 15, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 15);
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    for d in &got {
        let (key, version) = key_version(d);
        versions.entry(key).or_default().push(version);
    }
    assert_eq!(versions["prod-a"], [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(versions["prod-b"], [1, 2, 3, 4]);
    assert_eq!(versions["prod-c"], [1, 2, 3, 4]);

    // The contract's envelope, with the message id the formula gives.
    let first = body(&got[0]);
    let id = Uuid::new_v5(&NAMESPACE, format!("{}/prod-a/1", table.name).as_bytes());
    assert_eq!(first["messageId"], id.to_string());
    assert_eq!(first["messageType"], "ProductPriceChanged");
    assert_eq!(first["source"], "ProductService");
    assert_eq!(first["aggregateType"], "Product");
    assert_eq!(first["payload"], serde_json::json!({"version": 1}));
    assert_eq!(got[0].routing_key.as_str(), "product.price.changed.v1");
    // Sequence numbers grow along the stream, in the body and the header.
    let seqs: Vec<u128> = got
        .iter()
        .map(|d| {
            let seq = body(d)["sequenceNumber"].as_str().unwrap().to_owned();
            assert_eq!(
                header_str(d, "sequenceNumber").as_deref(),
                Some(seq.as_str())
            );
            seq.parse().unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Nothing but the batches reached the function: the tool's own Lambda
    // calls (GetFunctionConfiguration) go to the control plane, never to
    // the emulator, which runs the function with an HTTP event for any
    // path it has no route for (#30).
    let log = function.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(function.summaries().len(), 3, "one invocation per batch");
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn the_change_mapping_publishes_inserts_updates_and_deletes_made_through_the_api() {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    let table = Table::entities(&table_name("customers"), "customerId").await;
    let Loop {
        table,
        exchange,
        function,
        broker,
        queue,
    } = Loop::start(
        table,
        "local-change",
        &[("MAPPING", "change"), ("ENTITY_NAME", "Customer")],
    )
    .await;
    let key = || ("customerId".to_string(), A::S("cust-7".into()));

    table
        .put(local::Item::from([
            key(),
            ("tier".to_string(), A::S("gold".into())),
        ]))
        .await;
    table
        .dynamodb
        .update_item()
        .table_name(&table.name)
        .key("customerId", A::S("cust-7".into()))
        .update_expression("SET tier = :t")
        .expression_attribute_values(":t", A::S("platinum".into()))
        .send()
        .await
        .expect("UpdateItem");
    table
        .dynamodb
        .delete_item()
        .table_name(&table.name)
        .key("customerId", A::S("cust-7".into()))
        .send()
        .await
        .expect("DeleteItem");

    let run = local::run(
        &function,
        &["stream", "--table", &table.name, "--idle-exit", "2"],
    )
    .await;

    assert!(run.success, "{run:?}");
    let got = broker.take(&queue, 3, Duration::from_secs(10)).await;
    let bodies: Vec<Value> = got.iter().map(body).collect();
    let types: Vec<&str> = bodies
        .iter()
        .map(|b| b["messageType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["CustomerCreated", "CustomerUpdated", "CustomerDeleted"]
    );
    assert_eq!(bodies[0]["payload"]["tier"], "gold");
    assert_eq!(bodies[1]["payload"]["tier"], "platinum");
    // A deletion carries the old image.
    assert_eq!(bodies[2]["payload"]["tier"], "platinum");
    assert!(bodies.iter().all(|b| b["partitionKey"] == "cust-7"));
    let seqs: Vec<u128> = bodies
        .iter()
        .map(|b| b["sequenceNumber"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn a_poison_item_is_dead_lettered_and_the_stream_goes_on() {
    let table = Table::event_store(&table_name("poison")).await;
    let Loop {
        table,
        exchange,
        function,
        broker,
        queue,
    } = Loop::start(table, "local-poison", &[]).await;
    table.put(Table::event("prod-p", 1, "ProductCreated")).await;
    let mut poison = Table::event("prod-p", 2, "x");
    poison.remove("eventType");
    table.put(poison).await;
    table.put(Table::event("prod-p", 3, "ProductRenamed")).await;

    let run = local::run(
        &function,
        &["stream", "--table", &table.name, "--idle-exit", "2"],
    )
    .await;

    assert!(run.success, "{run:?}");
    assert_eq!(run.count("delivered"), 3);
    assert_eq!(run.count("given_up"), 0);
    let versions = local::versions(&broker, &queue, 2).await;
    assert_eq!(versions, [1, 3]);
    let dead = broker
        .take(
            &format!("{exchange}.dead-letter"),
            1,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header_str(&dead[0], "x-error").as_deref(),
        Some("missing required attribute `eventType`")
    );
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn a_broker_outage_ends_in_one_on_failure_message_and_the_stream_resumes_after_it() {
    let table = Table::event_store(&table_name("outage")).await;
    let proxy = Proxy::start(testkit::amqp_port()).await;
    let Loop {
        table,
        exchange,
        function,
        broker,
        queue,
    } = Loop::start(
        table,
        "local-outage",
        &[("AMQP_URI", &proxy.uri("")), ("CONNECT_TIMEOUT_MS", "500")],
    )
    .await;
    // The broker goes away; five events are written meanwhile.
    proxy.set(Mode::Refuse);
    proxy.sever();
    for v in 1..=5 {
        table
            .put(Table::event("prod-o", v, "ProductPriceChanged"))
            .await;
    }

    let tool = local::ops(
        &function,
        &[
            "stream",
            "--table",
            &table.name,
            "--maximum-retry-attempts",
            "2",
            "--retry-delay",
            "200",
            "--on-failure",
            &table.on_failure,
            "--idle-exit",
            "3",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("forwarder-ops runs");

    // 1 invocation + 2 retries, then the range goes to the OnFailure queue.
    let until = Instant::now() + Duration::from_secs(30);
    let messages = loop {
        let m = table.on_failure_messages().await;
        if !m.is_empty() {
            break m;
        }
        assert!(Instant::now() < until, "no OnFailure message");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The broker is back and the stream goes on from the checkpoint.
    proxy.set(Mode::Forward);
    for v in 6..=7 {
        table
            .put(Table::event("prod-o", v, "ProductPriceChanged"))
            .await;
    }
    let run = local::wait(tool).await;

    assert!(run.success, "{run:?}");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["requestContext"]["condition"], "RetryAttemptsExhausted");
    assert_eq!(m["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(m["version"], "1.0");
    let info = &m["DDBStreamBatchInfo"];
    assert_eq!(info["batchSize"], 5);
    assert_eq!(
        info["startSequenceNumber"],
        sequence_number(&table, 1).await
    );
    assert_eq!(info["endSequenceNumber"], sequence_number(&table, 5).await);
    assert!(info["streamArn"].as_str().unwrap().contains(&table.name));
    assert!(info["shardId"].as_str().unwrap().starts_with("shardId-"));
    assert!(info["approximateArrivalOfFirstRecord"].is_string());
    assert_eq!(run.count("given_up"), 5, "{run:?}\n{}", function.log());
    assert_eq!(run.count("delivered"), 2);
    // Nothing lost: versions 1 to 5 are the OnFailure range (for a
    // redrive), 6 and 7 came through after it.
    let versions = local::versions(&broker, &queue, 2).await;
    assert_eq!(versions, [6, 7]);
    broker.cleanup(&exchange, &[&queue]).await;
}

/// The sequence number of the stream record of `prod-o`'s `version`.
async fn sequence_number(table: &Table, version: u64) -> String {
    local::stream_records(&local::stream_arn(table).await)
        .await
        .iter()
        .find(|r| {
            let image = r.dynamodb().and_then(|d| d.new_image());
            matches!(
                image.and_then(|i| i.get("version")),
                Some(aws_sdk_dynamodbstreams::types::AttributeValue::N(n)) if *n == version.to_string()
            )
        })
        .and_then(|r| r.dynamodb()?.sequence_number())
        .expect("the record is in the stream")
        .to_owned()
}

#[tokio::test]
async fn a_function_slower_than_its_timeout_is_awaited_not_invoked_again() {
    let table = Table::event_store(&table_name("frozen")).await;
    let Loop {
        table,
        exchange,
        function,
        broker,
        queue,
    } = Loop::start(table, "local-frozen", &[]).await;
    for v in 1..=4 {
        table
            .put(Table::event("prod-x", v, "ProductPriceChanged"))
            .await;
    }
    // The function hangs (frozen) past its 2 s timeout. Lambda would end it
    // itself; the mapping waits for the answer (timeout plus init), and
    // never invokes again while the first call may still be publishing.
    function.signal("-STOP");
    let tool = local::ops(
        &function,
        &[
            "stream",
            "--table",
            &table.name,
            "--function-timeout",
            "2",
            "--retry-delay",
            "100",
            "--idle-exit",
            "3",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("forwarder-ops runs");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    function.signal("-CONT");
    let run = local::wait(tool).await;

    assert!(run.success, "{run:?}");
    assert_eq!(run.count("invocations"), 1, "{run:?}");
    assert_eq!(run.count("function_errors"), 0);
    assert_eq!(run.count("delivered"), 4);
    let versions: Vec<u64> = broker
        .drain(&queue)
        .await
        .iter()
        .map(|d| key_version(d).1)
        .collect();
    assert_eq!(
        versions,
        [1, 2, 3, 4],
        "each once, in order: {}",
        function.log()
    );
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn ctrl_c_stops_the_mapping_cleanly_with_a_summary() {
    let table = Table::event_store(&table_name("sigint")).await;
    let function = Function::watch(&[
        ("AMQP_URI", &testkit::amqp_uri()),
        ("EXCHANGE", &unique("local-sigint")),
    ]);
    let tool = local::ops(&function, &["stream", "--table", &table.name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("forwarder-ops runs");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = tool.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let run = local::wait(tool).await;
    assert!(run.success, "{run:?}");
    assert_eq!(run.summary["stopped_by"], "ctrl-c");
    assert_eq!(run.count("records"), 0);
}
