//! The artefact we ship: the arm64 `bootstrap` from `make build`, run under
//! qemu user emulation (Debian's qemu-user-static, with the arm64 glibc of
//! libc6-arm64-cross) against the test Runtime API and the local broker.
//! It must start, connect, and forward a sample batch with the contract's
//! body, as the x86_64 build does in the other tests: this catches what
//! only the cross build could break (its linking, glibc, ring's assembly).
//!
//! Ignored by `cargo test`, which does not build the artefact: run by
//! `make test-artefact` (after `make build`), which CI does.

use std::time::Duration;

use lapin::types::FieldTable;
use serde_json::{Value, json};
use testkit::{Function, TestBroker, amqp_uri, body, unique};

/// Where `make build` leaves it.
const BOOTSTRAP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/lambda/event-forwarder/bootstrap"
);

#[tokio::test]
#[ignore = "needs make build and qemu-user-static: make test-artefact"]
async fn the_arm64_bootstrap_forwards_a_batch_under_qemu() {
    assert!(
        std::path::Path::new(BOOTSTRAP).exists(),
        "{BOOTSTRAP} is missing: run make build"
    );
    let exchange = unique("arm64");
    let uri = amqp_uri();
    let function = Function::start_program(
        &[
            "qemu-aarch64-static",
            "-L",
            "/usr/aarch64-linux-gnu",
            BOOTSTRAP,
        ],
        &[
            ("AMQP_URI", &uri),
            ("EXCHANGE", &exchange),
            ("EVENT_SOURCE", "ProductService"),
        ],
        &[],
    )
    .await;
    let broker = TestBroker::connect().await;
    // Emulated, the cold start takes longer than natively.
    assert!(
        broker
            .await_exchange(&exchange, Duration::from_secs(30))
            .await,
        "no cold start:\n{}",
        function.output()
    );
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/events/insert-batch.json"
    ))
    .unwrap();
    let event: Value = serde_json::from_str(&text).unwrap();
    let records = event["Records"].as_array().unwrap().len();
    // The event-store mapping publishes the INSERTs (the sample has one
    // MODIFY, skipped).
    let inserts: Vec<&Value> = event["Records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["eventName"] == "INSERT")
        .collect();
    let (response, _) = function.invoke(&event, Duration::from_secs(30)).await;
    assert_eq!(
        response,
        json!({"batchItemFailures": []}),
        "{}",
        function.output()
    );

    let got = broker
        .take(&queue, inserts.len(), Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), inserts.len(), "{}", function.output());
    let types: Vec<Value> = got.iter().map(|d| body(d)["messageType"].clone()).collect();
    let expected: Vec<Value> = inserts
        .iter()
        .map(|r| r["dynamodb"]["NewImage"]["eventType"]["S"].clone())
        .collect();
    assert_eq!(types, expected);
    assert_eq!(body(&got[0])["source"], "ProductService");
    // The summary line and the metrics document, from the emulated process.
    let lines: Vec<Value> = function
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = lines
        .iter()
        .find(|l| l["fields"]["message"] == "batch forwarded")
        .unwrap_or_else(|| panic!("no summary line:\n{}", function.output()));
    assert_eq!(summary["fields"]["records"], records, "{summary}");
    assert_eq!(summary["fields"]["published"], inserts.len(), "{summary}");
    let metrics = lines
        .iter()
        .find(|l| l.get("_aws").is_some())
        .unwrap_or_else(|| panic!("no EMF line:\n{}", function.output()));
    assert_eq!(metrics["RecordsPublished"], inserts.len(), "{metrics}");
    broker.cleanup(&exchange, &[&queue]).await;
}
