//! The real binary under a Lambda runtime API: `cargo lambda watch
//! --only-lambda-apis` emulates the control plane, the built
//! `event-forwarder` polls it, and `cargo lambda invoke` sends the sample
//! events. Proves the runtime wiring, the logs, the metrics and the clean
//! shutdown, not only the library.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use lapin::types::FieldTable;
use serde_json::Value;
use testkit::*;

fn invoke(port: u16, event: &str) -> Value {
    let out = Command::new("cargo")
        .args([
            "lambda",
            "invoke",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "-F",
        ])
        .arg(format!("{}/events/{event}", env!("CARGO_MANIFEST_DIR")))
        .output()
        .expect("cargo lambda is installed (pip install cargo-lambda)");
    assert!(
        out.status.success(),
        "invoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the response is JSON")
}

#[tokio::test]
async fn the_binary_forwards_batches_through_the_lambda_runtime_api() {
    let exchange = unique("runtime");
    let password_uri = amqp_uri();
    let mut function = Function::watch(&[("AMQP_URI", &password_uri), ("EXCHANGE", &exchange)]);
    let port = function.port();

    // The topology is declared during init; subscribe once it exists.
    let broker = TestBroker::connect().await;
    let until = Instant::now() + Duration::from_secs(10);
    while !broker.exchange_exists(&exchange).await {
        assert!(
            Instant::now() < until,
            "the function did not declare its exchange"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;

    let response = invoke(port, "insert-batch.json");
    assert_eq!(response, serde_json::json!({"batchItemFailures": []}));
    let response = invoke(port, "poison-batch.json");
    assert_eq!(response, serde_json::json!({"batchItemFailures": []}));

    let got = broker.take(&queue, 7, Duration::from_secs(5)).await;
    assert_eq!(
        got.len(),
        7,
        "5 inserts and 2 good records of the poison batch"
    );
    let dead = broker
        .take(
            &format!("{exchange}.dead-letter"),
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(connections_named(&function.connection_name()).len(), 1);

    // SIGTERM: the connection is closed by the client, then the process exits.
    let code = function.terminate();
    assert!(code.success(), "{code:?}");

    let log = function.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    let summaries: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "batch forwarded")
        .collect();
    assert_eq!(summaries.len(), 2, "one summary per invocation:\n{log}");
    let s = &summaries[0]["fields"];
    assert_eq!(
        (
            &s["records"],
            &s["published"],
            &s["skipped"],
            &s["dead_lettered"],
            &s["failed"]
        ),
        (
            &Value::from(6),
            &Value::from(5),
            &Value::from(1),
            &Value::from(0),
            &Value::from(0)
        )
    );
    let metrics: Vec<&Value> = lines.iter().filter(|l| l.get("_aws").is_some()).collect();
    assert_eq!(metrics.len(), 2, "one EMF document per invocation");
    assert_eq!(metrics[1]["RecordsDeadLettered"], 1);
    assert_eq!(metrics[1]["FunctionName"], function.name.as_str());
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "broker connection closed")
    );
    // No payload content and no credentials in the output.
    for secret in ["Trail running shoe", "SKU-00042", "guest:guest"] {
        assert!(!log.contains(secret), "{secret:?} leaked into the logs");
    }
    broker.cleanup(&exchange, &[&queue]).await;
}

/// Runs the Python consumer that reads trace context with OpenTelemetry's
/// propagator; one JSON object per message.
fn traced(queue: &str) -> Vec<Value> {
    consumer("trace_context.py", &[&amqp_uri(), queue])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn consumers_continue_the_trace_of_the_item_or_of_the_invocation() {
    use crate::support::stream::{StreamRecord, batch};
    const ITEM_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const XRAY: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let records: Vec<StreamRecord> = (1..=3)
        .map(|v| StreamRecord {
            seq: 7_000_000 + v,
            aggregate: "prod-t".into(),
            version: v,
        })
        .collect();
    let mut event = batch(&records);
    let mut set = |i: usize, name: &str, value: String| {
        event["Records"][i]["dynamodb"]["NewImage"][name] = serde_json::json!({ "S": value });
    };
    set(
        0,
        "traceparent",
        format!("00-{ITEM_TRACE}-00f067aa0ba902b7-01"),
    );
    set(0, "tracestate", "rojo=00f067aa0ba902b7".into());
    set(1, "traceparent", "not-a-trace-but-a-s3cret".into());

    for from_xray in ["true", "false"] {
        let exchange = unique("traced");
        let f = Function::start(&[
            ("AMQP_URI", &amqp_uri()),
            ("EXCHANGE", &exchange),
            ("TRACEPARENT_FROM_XRAY", from_xray),
        ])
        .await;
        f.api().set_trace_id(XRAY);
        let broker = TestBroker::connect().await;
        let until = Instant::now() + Duration::from_secs(10);
        while !broker.exchange_exists(&exchange).await {
            assert!(Instant::now() < until, "no exchange");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let queue = broker
            .bind_queue(&exchange, "#", FieldTable::default())
            .await;

        let (response, _) = f.invoke(&event, Duration::from_secs(10)).await;
        assert_eq!(response, serde_json::json!({"batchItemFailures": []}));

        let got = traced(&queue);
        assert_eq!(got.len(), 3, "{got:?}");
        // The item's own trace context, tracestate included.
        assert_eq!(got[0]["traceId"], ITEM_TRACE);
        assert_eq!(got[0]["spanId"], "00f067aa0ba902b7");
        assert_eq!(got[0]["tracestate"], "rojo=00f067aa0ba902b7");
        // A malformed one is dropped; the event is still published, with
        // the invocation's trace (unless that is off), as an item without.
        for g in &got[1..] {
            if from_xray == "true" {
                assert_eq!(g["traceId"], "5759e988bd862e3fe1be46a994272793", "{g}");
                assert_eq!(g["spanId"], "53995c3f42cd8ad8");
                assert_eq!(g["sampled"], true);
            } else {
                assert_eq!(g["traceId"], Value::Null, "{g}");
            }
        }
        let log = f.log();
        let warning = log
            .lines()
            .find(|l| l.contains("trace context left out of an event"))
            .unwrap_or_else(|| panic!("no warning in {log}"));
        assert!(
            warning.contains("WARN") && warning.contains("`traceparent`"),
            "{warning}"
        );
        assert!(!log.contains("s3cret"), "the value reached the log");
        broker.cleanup(&exchange, &[&queue]).await;
    }
}

/// What Lambda is told of an invocation error is what the console and an
/// OnFailure destination's `functionError` context show: a name that says
/// what happened, not the Rust type of a boxed error (#28, item 6).
#[tokio::test]
async fn an_invocation_error_has_a_name_that_says_what_happened() {
    let exchange = unique("runtime-errors");
    let f = Function::start(&[("AMQP_URI", &amqp_uri()), ("EXCHANGE", &exchange)]).await;
    // One of aws_lambda_events' own fixtures is a bare record, not a batch.
    let bare = serde_json::json!({
        "eventID": "f07f8ca4b0b26cb9c4e5e77e69f274ee",
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": {"Id": {"N": "101"}}, "SequenceNumber": "111"}
    });
    let error = match f.api().invoke(&bare, Duration::from_secs(10)).await {
        Some(testkit::runtime_api::Outcome::Error(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(error["errorType"], "NotAStreamBatch", "{error}");
    let message = error["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("the event is not a DynamoDB stream batch"),
        "{message}"
    );
    TestBroker::connect().await.cleanup(&exchange, &[]).await;
}
