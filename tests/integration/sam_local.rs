//! The template's function under `sam local invoke`: the artefact `sam
//! build` makes from template.yaml (arm64, with cargo lambda), in a
//! container of the stand-in provided.al2023 image (Debian; arm64 under
//! qemu), run by AWS's Runtime Interface Emulator with the template's
//! environment, against the local RabbitMQ on the Docker host (Debian's
//! 3.10 of `make broker`, which `make sam-invoke` uses too). What arrives
//! must be what the library on the host makes of the same event.
//!
//! Ignored by `cargo test`, which has no Docker: run by `make test-sam`
//! (after `scripts/sam-invoke.sh prepare`: the image and `sam build`),
//! which CI does.

use std::{path::PathBuf, process::Command, time::Duration};

use event_forwarder::Forwarder;
use lapin::{message::Delivery, types::FieldTable};
use serde_json::{Value, json};
use testkit::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What one `sam local invoke` gave.
struct Invocation {
    response: Value,
    /// The emulator's START/END/REPORT lines and the function's log.
    log: String,
}

impl Invocation {
    /// The function's JSON log lines.
    fn json_lines(&self) -> Vec<Value> {
        self.log
            .lines()
            .filter_map(|l| serde_json::from_str(l.trim()).ok())
            .collect()
    }

    fn summary(&self) -> Value {
        self.json_lines()
            .into_iter()
            .find(|l| l["fields"]["message"] == "batch forwarded")
            .unwrap_or_else(|| panic!("no summary line in the log:\n{}", self.log))
    }
}

/// The bootstrap `sam build` made for ForwarderFunction: the directory its
/// built template names as the function's CodeUri. Functions that share
/// their code and build (the template's standard and Managed Instances
/// functions) share one directory, `ForwarderFunction-Shared`, not one each.
fn built_bootstrap() -> PathBuf {
    let build = PathBuf::from(ROOT).join(".aws-sam/build");
    let template = std::fs::read_to_string(build.join("template.yaml"))
        .unwrap_or_else(|e| panic!("{}/template.yaml: {e}: run make test-sam", build.display()));
    let code_uri = template
        .split("\n  ForwarderFunction:\n")
        .nth(1)
        .and_then(|block| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix("CodeUri:"))
                .map(|uri| uri.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no CodeUri for ForwarderFunction in the built template"));
    build.join(code_uri).join("bootstrap")
}

/// `sam local invoke` of the template's function with `event` (a file of
/// `events/`) and the settings of sam-local-env.json but for `exchange`
/// and classic queues (as the host side of the test declares them).
fn sam_local_invoke(event: &str, exchange: &str) -> Invocation {
    let bootstrap = built_bootstrap();
    let elf = std::fs::read(&bootstrap)
        .unwrap_or_else(|e| panic!("{}: {e}: run make test-sam", bootstrap.display()));
    // e_machine 183: AArch64, the template's Architectures.
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        183,
        "sam build made no arm64 bootstrap"
    );

    let settings: Value = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(ROOT).join("sam-local-env.json"))
            .expect("sam-local-env.json"),
    )
    .expect("sam-local-env.json is JSON");
    let mut function = settings["ForwarderFunction"].clone();
    function["EXCHANGE"] = json!(exchange);
    function["QUEUE_TYPE"] = json!("classic");
    let env_file = std::env::temp_dir().join(format!("{exchange}.env.json"));
    std::fs::write(
        &env_file,
        json!({ "ForwarderFunction": function }).to_string(),
    )
    .expect("env-vars file written");

    let out = Command::new("scripts/sam-invoke.sh")
        .arg("invoke")
        .arg(format!("events/{event}"))
        .arg(&env_file)
        .current_dir(ROOT)
        .output()
        .expect("scripts/sam-invoke.sh runs");
    let _ = std::fs::remove_file(&env_file);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sam local invoke failed:\n{log}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let response = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the response {stdout:?} is not JSON ({e}):\n{log}"));
    assert!(log.contains("START RequestId:"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("REPORT RequestId:") && l.contains("Max Memory Used")),
        "no REPORT line from the emulator:\n{log}"
    );
    Invocation { response, log }
}

/// The forwarder's topology for `exchange`, declared on the host as the
/// function's cold start declares it (same settings), with a queue bound to
/// it: the function only runs once invoked, so the queue must be there
/// first.
async fn exchange_with_queue(broker: &TestBroker, prefix: &str) -> (String, String) {
    let exchange = unique(prefix);
    Forwarder::start(config_on(RABBITMQ3_URI, &exchange, &[]))
        .await
        .expect("topology declared")
        .shutdown()
        .await;
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;
    (exchange, queue)
}

/// The same event through the library on the host: what the container's
/// messages must be.
async fn on_the_host(broker: &TestBroker, name: &str) -> Vec<Delivery> {
    let (exchange, queue) = exchange_with_queue(broker, "sam-host").await;
    let forwarder = Forwarder::start(config_on(RABBITMQ3_URI, &exchange, &[]))
        .await
        .unwrap();
    let (response, _) = forwarder
        .handle(&event(name), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(reported(&response).is_empty());
    let got = broker.drain(&queue).await;
    broker.cleanup(&exchange, &[&queue]).await;
    got
}

fn properties(d: &Delivery) -> Value {
    let p = &d.properties;
    let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.to_string());
    json!({
        "routing_key": d.routing_key.to_string(),
        "delivery_mode": p.delivery_mode(),
        "content_type": text(p.content_type()),
        "message_id": text(p.message_id()),
        "correlation_id": text(p.correlation_id()),
        "app_id": text(p.app_id()),
        "type": text(p.kind()),
        "timestamp": p.timestamp(),
        "partitionKey": header_str(d, "partitionKey"),
        "messageVersion": header_str(d, "messageVersion"),
        "aggregateVersion": header_int(d, "aggregateVersion"),
        "sequenceNumber": header_str(d, "sequenceNumber"),
    })
}

#[tokio::test]
#[ignore = "needs Docker, the SAM CLI, the stand-in image and sam build: make test-sam"]
async fn sam_local_invoke_forwards_the_insert_batch_as_the_library_does() {
    let broker = TestBroker::connect_to(RABBITMQ3_URI).await;
    let (exchange, queue) = exchange_with_queue(&broker, "sam-insert").await;

    let invocation = sam_local_invoke("insert-batch.json", &exchange);

    assert_eq!(
        invocation.response,
        json!({"batchItemFailures": []}),
        "{}",
        invocation.log
    );
    let got = broker.drain(&queue).await;
    let types: Vec<Value> = got.iter().map(|d| body(d)["messageType"].clone()).collect();
    assert_eq!(
        types,
        [
            "ProductCreated",
            "ProductPriceChanged",
            "OrderPlaced",
            "UserProfileUpdated",
            "OrderShippedEvent"
        ],
        "{}",
        invocation.log
    );
    // Byte for byte what the library makes on the host, with the same
    // properties and headers: the arm64 artefact in the container is the
    // forwarder.
    let expected = on_the_host(&broker, "insert-batch.json").await;
    let bodies = |ds: &[Delivery]| -> Vec<String> {
        ds.iter()
            .map(|d| String::from_utf8_lossy(&d.data).into_owned())
            .collect()
    };
    assert_eq!(bodies(&got), bodies(&expected));
    let props = |ds: &[Delivery]| -> Vec<Value> { ds.iter().map(properties).collect() };
    assert_eq!(props(&got), props(&expected));
    assert_eq!(properties(&got[0])["routing_key"], "product.created.v1");
    assert_eq!(properties(&got[0])["delivery_mode"], 2);

    let summary = invocation.summary();
    assert_eq!(summary["fields"]["records"], 6, "{summary}");
    assert_eq!(summary["fields"]["published"], 5, "{summary}");
    assert_eq!(summary["fields"]["skipped"], 1, "{summary}");
    // The metrics document carries the template's function name.
    let metrics = invocation
        .json_lines()
        .into_iter()
        .find(|l| l.get("_aws").is_some())
        .unwrap_or_else(|| panic!("no EMF line:\n{}", invocation.log));
    assert_eq!(metrics["RecordsPublished"], 5, "{metrics}");
    assert_eq!(metrics["FunctionName"], "ForwarderFunction", "{metrics}");
    assert!(
        broker
            .drain(&format!("{exchange}.dead-letter"))
            .await
            .is_empty()
    );
    broker.cleanup(&exchange, &[&queue]).await;
}

/// The newest glibc symbol version a binary needs, from the version names
/// (`GLIBC_2.30`) in its dynamic string table.
fn newest_glibc(binary: &[u8]) -> (u32, u32) {
    let mut newest = (0, 0);
    for (at, _) in binary
        .windows(b"GLIBC_".len())
        .enumerate()
        .filter(|(_, w)| *w == b"GLIBC_")
    {
        let rest = &binary[at + b"GLIBC_".len()..];
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'.'))
            .unwrap_or(rest.len());
        let text = String::from_utf8_lossy(&rest[..end]);
        let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        newest = newest.max(version);
    }
    newest
}

/// The stand-in is Debian (glibc 2.36), so the container cannot show that
/// the artefact loads on Amazon Linux 2023's glibc (2.34): its symbol
/// versions do.
#[test]
#[ignore = "needs sam build: make test-sam"]
fn the_artefact_needs_no_glibc_newer_than_amazon_linux_2023s() {
    let bootstrap = built_bootstrap();
    let binary = std::fs::read(&bootstrap)
        .unwrap_or_else(|e| panic!("{}: {e}: run make test-sam", bootstrap.display()));
    let newest = newest_glibc(&binary);
    assert!(newest >= (2, 17), "no glibc symbol versions found");
    assert!(
        newest <= (2, 34),
        "the artefact needs GLIBC_{}.{}, Amazon Linux 2023 has 2.34",
        newest.0,
        newest.1
    );
}

#[tokio::test]
#[ignore = "needs Docker, the SAM CLI, the stand-in image and sam build: make test-sam"]
async fn sam_local_invoke_dead_letters_the_poison_record_and_the_batch_goes_on() {
    let broker = TestBroker::connect_to(RABBITMQ3_URI).await;
    let (exchange, queue) = exchange_with_queue(&broker, "sam-poison").await;

    let invocation = sam_local_invoke("poison-batch.json", &exchange);

    assert_eq!(
        invocation.response,
        json!({"batchItemFailures": []}),
        "{}",
        invocation.log
    );
    let good = broker.drain(&queue).await;
    let types: Vec<Value> = good
        .iter()
        .map(|d| body(d)["messageType"].clone())
        .collect();
    assert_eq!(
        types,
        ["ProductCreated", "ProductDiscontinued"],
        "{}",
        invocation.log
    );
    let dead = broker.drain(&format!("{exchange}.dead-letter")).await;
    assert_eq!(dead.len(), 1, "{}", invocation.log);
    let d = &dead[0];
    assert_eq!(
        header_str(d, "x-error").as_deref(),
        Some("missing required attribute `eventType`")
    );
    assert_eq!(
        header_str(d, "x-sequence-number").as_deref(),
        Some("4100000000012345680601")
    );
    assert_eq!(
        header_str(d, "x-event-id").as_deref(),
        Some("c81e728d9d4c2f636f067f89cc148611")
    );
    let original: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/events/poison-batch.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        header_str(d, "x-event-source-arn").as_deref(),
        original["Records"][1]["eventSourceARN"].as_str()
    );
    // The body is the stream record as the event source mapping sent it.
    assert_eq!(body(d), original["Records"][1]);

    let summary = invocation.summary();
    assert_eq!(summary["fields"]["published"], 2, "{summary}");
    assert_eq!(summary["fields"]["dead_lettered"], 1, "{summary}");
    broker.cleanup(&exchange, &[&queue]).await;
}
