//! The real binary under a Lambda runtime API: `cargo lambda watch
//! --only-lambda-apis` emulates the control plane, the built
//! `event-forwarder` polls it, and `cargo lambda invoke` sends the sample
//! events. Proves the runtime wiring, the logs, the metrics and the clean
//! shutdown, not only the library.

mod common;

use std::{
    fs::File,
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use lapin::types::FieldTable;
use serde_json::Value;

/// Kills the child when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for_port(port: u16, wait: Duration) {
    let until = Instant::now() + wait;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "the runtime emulator did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
    let port = free_port();
    let exchange = unique("runtime");
    let function = unique("fn");
    let _emulator = Guard(
        Command::new("cargo")
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
            ])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cargo lambda is installed (pip install cargo-lambda)"),
    );
    wait_for_port(port, Duration::from_secs(30));

    let log_path = std::env::temp_dir().join(format!("{function}.log"));
    let password_uri = amqp_uri();
    let mut function_process = Guard(
        Command::new(env!("CARGO_BIN_EXE_event-forwarder"))
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", &function)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AMQP_URI", &password_uri)
            .env("EXCHANGE", &exchange)
            .env("QUEUE_TYPE", "classic")
            .env_remove("RUST_LOG")
            .stdout(File::create(&log_path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

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
    let name = format!("event-forwarder:{function}");
    assert_eq!(connections_named(&name).len(), 1);

    // SIGTERM: the connection is closed by the client, then the process exits.
    let pid = function_process.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exited = Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(s) = function_process.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < exited,
            "the function did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "{code:?}");

    let log = std::fs::read_to_string(&log_path).unwrap();
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
    assert_eq!(metrics[1]["FunctionName"], function.as_str());
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "broker connection closed")
    );
    // No payload content and no credentials in the output.
    for secret in ["Trail running shoe", "SKU-00042", "guest:guest"] {
        assert!(!log.contains(secret), "{secret:?} leaked into the logs");
    }
    let _ = std::fs::remove_file(&log_path);
    broker.cleanup(&exchange, &[&queue]).await;
}
