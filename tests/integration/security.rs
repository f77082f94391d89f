//! Security against real servers: a RabbitMQ node with a TLS listener
//! (`scripts/tls-broker.sh`, its own CA) and a local Secrets Manager
//! endpoint (moto). Certificate and host-name verification are always on;
//! secrets and payloads never reach the function's output.

use std::time::{Duration, Instant};

use event_forwarder::{
    Forwarder,
    engine::{AmqpBroker, Broker, PublishError, amqp_settings},
};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use testkit::{Function, TestBroker, config, event, reported, unique};

use crate::support::{secrets::*, tls::*};

/// What connecting with `vars` gives, through the public broker port.
async fn connect(vars: &[(&str, &str)]) -> Result<bool, PublishError> {
    let exchange = unique("tls");
    let config = config(&exchange, vars);
    let mut broker = AmqpBroker::new(amqp_settings(&config));
    broker
        .ensure_ready(Instant::now() + Duration::from_secs(5))
        .await
}

fn connect_error(result: Result<bool, PublishError>) -> String {
    match result {
        Ok(_) => panic!("connected, but it must not"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_certificate_trusted_through_amqp_ca_file_connects_and_forwards_a_batch() {
    tls_broker();
    let exchange = unique("tls");
    let uri = tls_uri("guest", "guest", "localhost");
    let ca = ca_file();
    let forwarder = Forwarder::start(config(
        &exchange,
        &[("AMQP_URI", &uri), ("AMQP_CA_FILE", &ca)],
    ))
    .await
    .expect("cold start over TLS");
    let inspector = TestBroker::connect_to(&plain_uri()).await;
    assert!(
        inspector.exchange_exists(&exchange).await,
        "topology declared over TLS"
    );
    let queue = inspector
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;

    let (response, report) = forwarder
        .handle(&event("insert-batch.json"), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(reported(&response).is_empty(), "{report:?}");
    let got = inspector.take(&queue, 5, Duration::from_secs(5)).await;
    let ids: Vec<String> = got
        .iter()
        .map(|d| {
            let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
            v["messageType"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(ids[0], "ProductCreated");
    inspector.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_a_tls_error() {
    tls_broker();
    let uri = tls_uri("guest", "guest", "localhost");
    let err = connect_error(connect(&[("AMQP_URI", &uri)]).await);
    assert!(err.contains("TLS handshake failed"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(!err.contains("guest:guest"), "{err}");
}

/// Waits until the function's cold start has declared `exchange`.
async fn wait_for_cold_start(inspector: &TestBroker, exchange: &str, function: &Function) {
    assert!(
        inspector
            .await_exchange(exchange, Duration::from_secs(10))
            .await,
        "no cold start:\n{}",
        function.output()
    );
}

/// Waits for `function`'s cold start on the TLS node, forwards one record
/// marked `note`, checks the response, and returns the message body that
/// arrived (its queue and the topology are removed again).
async fn forward_one(function: &Function, exchange: &str, note: &str) -> Value {
    let inspector = TestBroker::connect_to(&plain_uri()).await;
    wait_for_cold_start(&inspector, exchange, function).await;
    let queue = inspector
        .bind_queue(exchange, "#", FieldTable::default())
        .await;
    let (response, _) = function
        .invoke(
            &batch_of(vec![record(1, Some("ThingHappened"), note)]),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        response["batchItemFailures"],
        json!([]),
        "{}",
        function.output()
    );
    let got = inspector.take(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{}", function.output());
    inspector.cleanup(exchange, &[&queue]).await;
    serde_json::from_slice(&got[0].data).unwrap()
}

/// The `fields` of the function's log lines whose message is `message`.
fn log_lines(function: &Function, message: &str) -> Vec<Value> {
    function
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == message)
        .map(|l| l["fields"].clone())
        .collect()
}

/// The system store is what `SSL_CERT_FILE` names (set on the child only:
/// in this process it would leak into the tests running beside it). The
/// default store lacks the test CA, and then the same broker is refused
/// (`an_untrusted_certificate_is_refused_with_a_tls_error`).
#[tokio::test]
async fn a_ca_in_the_system_trust_store_is_trusted_without_amqp_ca_file() {
    tls_broker();
    let exchange = unique("roots");
    let uri = tls_uri("guest", "guest", "localhost");
    let ca = ca_file();
    // SSL_CERT_DIR, which the environment may set, would add its directory.
    let function = Function::start_without(
        &[
            ("AMQP_URI", &uri),
            ("EXCHANGE", &exchange),
            ("SSL_CERT_FILE", &ca),
        ],
        &["SSL_CERT_DIR", "AMQP_CA_FILE"],
    )
    .await;
    let body = forward_one(&function, &exchange, "system-roots").await;
    assert_eq!(body["messageType"], "ThingHappened");
    assert_eq!(body["payload"]["note"], "system-roots");

    let loaded = log_lines(&function, "system trust store read");
    assert_eq!(loaded.len(), 1, "{}", function.output());
    assert_eq!(loaded[0]["roots"], 1, "{}", function.output());
}

/// The Secrets Manager call verifies its endpoint's certificate against
/// the same system store (here an HTTPS front for moto whose certificate
/// only the test CA signs): trusted through `SSL_CERT_FILE`, the secret is
/// read and the batch forwarded; with the default store, the cold start
/// fails on the certificate, naming the variable and the endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn the_secrets_manager_endpoint_is_verified_against_the_system_store() {
    tls_broker();
    moto();
    let endpoint = tls_front().await;
    let arn = create_secret(
        &unique("secret-tls"),
        &json!({"uri": tls_uri("guest", "guest", "localhost")}),
    )
    .await;
    let exchange = unique("secret-tls");
    let mut vars = aws_env();
    vars.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    vars.push(("AWS_ENDPOINT_URL", endpoint.clone()));
    vars.push(("AMQP_SECRET_ARN", arn));
    vars.push(("EXCHANGE", exchange.clone()));

    let mut trusted = borrowed(&vars);
    let ca = ca_file();
    trusted.push(("SSL_CERT_FILE", &ca));
    let function = Function::start_without(&trusted, &["SSL_CERT_DIR", "AMQP_CA_FILE"]).await;
    let body = forward_one(&function, &exchange, "secret-over-tls").await;
    assert_eq!(body["payload"]["note"], "secret-over-tls");

    // The distribution's store does not hold the test CA.
    let mut function = Function::start_without(
        &borrowed(&vars),
        &["SSL_CERT_FILE", "SSL_CERT_DIR", "AMQP_CA_FILE"],
    )
    .await;
    let status = function.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let output = function.output();
    assert!(output.contains("AMQP_SECRET_ARN"), "{output}");
    assert!(output.contains(&endpoint), "{output}");
    assert!(output.contains("certificate"), "{output}");
}

#[tokio::test]
async fn a_host_name_the_certificate_does_not_name_is_refused() {
    tls_broker();
    // 127.0.0.2 is loopback too, but the certificate names only localhost
    // and 127.0.0.1.
    let uri = tls_uri("guest", "guest", "127.0.0.2");
    let ca = ca_file();
    let err = connect_error(connect(&[("AMQP_URI", &uri), ("AMQP_CA_FILE", &ca)]).await);
    assert!(err.contains("TLS handshake failed"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("not valid for name \"127.0.0.2\""), "{err}");

    // The same CA and the listed name connect: the refusal was the name.
    let uri = tls_uri("guest", "guest", "127.0.0.1");
    connect(&[("AMQP_URI", &uri), ("AMQP_CA_FILE", &ca)])
        .await
        .expect("127.0.0.1 is in the certificate");
}

#[tokio::test]
async fn amqps_to_a_plain_text_port_fails_instead_of_speaking_amqp_in_clear() {
    tls_broker();
    let uri = format!("amqps://guest:guest@localhost:{PLAIN_PORT}/%2f");
    let ca = ca_file();
    let err = connect_error(connect(&[("AMQP_URI", &uri), ("AMQP_CA_FILE", &ca)]).await);
    assert!(err.contains("TLS handshake failed"), "{err}");
}

#[tokio::test]
async fn a_leaf_certificate_as_ca_file_does_not_make_the_server_trusted() {
    tls_broker();
    let uri = tls_uri("guest", "guest", "localhost");
    let leaf = server_cert_file();
    let result = connect(&[("AMQP_URI", &uri), ("AMQP_CA_FILE", &leaf)]).await;
    let err = connect_error(result);
    assert!(err.contains("TLS handshake failed"), "{err}");
}

#[tokio::test]
async fn an_unreadable_ca_file_fails_the_cold_start_with_one_line_naming_it() {
    let mut function = Function::start(&[
        ("AMQP_URI", &tls_uri("guest", "guest", "localhost")),
        ("EXCHANGE", "never.used"),
        ("AMQP_CA_FILE", "/nonexistent/ca.pem"),
    ])
    .await;
    let status = function.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let output = function.output();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 1, "{output}");
    assert!(
        lines[0]
            .contains("configuration: AMQP_CA_FILE is invalid: cannot read /nonexistent/ca.pem"),
        "{output}"
    );
}

/// The variables of a function that reads its broker URI from `arn`.
fn secret_vars(arn: &str) -> Vec<(&'static str, String)> {
    let mut vars = aws_env();
    vars.push(("AMQP_SECRET_ARN", arn.to_string()));
    vars.push(("AMQP_CA_FILE", ca_file()));
    vars
}

fn borrowed<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A forwarder over TLS whose URI comes from the secret `value`; forwards
/// the sample batch and returns the message types that arrived.
async fn forward_with_secret(value: Value) -> Vec<String> {
    tls_broker();
    moto();
    let arn = create_secret(&unique("secret"), &value).await;
    let exchange = unique("secret");
    let vars = secret_vars(&arn);
    let forwarder = Forwarder::start(config(&exchange, &borrowed(&vars)))
        .await
        .expect("cold start with the secret");
    let inspector = TestBroker::connect_to(&plain_uri()).await;
    let queue = inspector
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;
    let (response, report) = forwarder
        .handle(&event("insert-batch.json"), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(reported(&response).is_empty(), "{report:?}");
    let got = inspector.take(&queue, 5, Duration::from_secs(5)).await;
    inspector.cleanup(&exchange, &[&queue]).await;
    got.iter()
        .map(|d| {
            let v: Value = serde_json::from_slice(&d.data).unwrap();
            v["messageType"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_secret_holding_a_uri_is_read_at_cold_start() {
    let got = forward_with_secret(json!({"uri": tls_uri("guest", "guest", "localhost")})).await;
    assert_eq!(got.len(), 5, "{got:?}");
}

#[tokio::test]
async fn a_secret_holding_parts_with_reserved_characters_builds_the_uri() {
    tls_broker();
    let user = format!("ef:user@{}", std::process::id());
    let password = "p@ss:w/rd?#%é +";
    add_user(&user, password);
    let got = forward_with_secret(json!({
        "username": user,
        "password": password,
        "host": "localhost",
        "port": TLS_PORT,
    }))
    .await;
    assert_eq!(got.len(), 5, "{got:?}");
}

#[tokio::test]
async fn a_secret_that_does_not_exist_fails_the_cold_start_naming_the_variable() {
    moto();
    let exchange = unique("secret");
    let arn = format!("arn:aws:secretsmanager:{REGION}:123456789012:secret:nope-AbCdEf");
    let vars = secret_vars(&arn);
    let err = match Forwarder::start(config(&exchange, &borrowed(&vars))).await {
        Ok(_) => panic!("started without its secret"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with("AMQP_SECRET_ARN: "), "{err}");
    assert!(err.contains("ResourceNotFoundException"), "{err}");
    assert!(err.contains(&arn), "{err}");
}

#[tokio::test]
async fn a_malformed_secret_fails_the_cold_start_without_showing_its_value() {
    moto();
    let arn = create_secret(
        &unique("secret"),
        &json!({"username": "u", "password": "hunter2-in-a-secret"}),
    )
    .await;
    let vars = secret_vars(&arn);
    let err = match Forwarder::start(config(&unique("secret"), &borrowed(&vars))).await {
        Ok(_) => panic!("started with a secret without host"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no \"host\""), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// One INSERT of the event-store mapping with a recognisable payload.
fn record(seq: u64, event_type: Option<&str>, marker: &str) -> Value {
    let mut image = json!({
        "aggregateId": {"S": format!("agg-{seq}")},
        "version": {"N": "1"},
        "payload": {"M": {"note": {"S": marker}, "card": {"S": format!("{marker}-card")}}}
    });
    if let Some(t) = event_type {
        image["eventType"] = json!({"S": t});
    }
    json!({
        "eventID": format!("ev-{seq}"),
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "eu-west-1",
        "eventSourceARN": "arn:aws:dynamodb:eu-west-1:123456789012:table/sec-events/stream/2026-11-01T00:00:00.000",
        "dynamodb": {
            "ApproximateCreationDateTime": 1795348800,
            "Keys": {"aggregateId": {"S": format!("agg-{seq}")}, "version": {"N": "1"}},
            "NewImage": image,
            "SequenceNumber": format!("{seq:021}"),
            "SizeBytes": 200,
            "StreamViewType": "NEW_IMAGE"
        }
    })
}

fn batch_of(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}

/// Closes the TLS node's connections of `user`, as a broker restart would.
fn close_connections_of(user: &str) {
    let list = tls_ctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "user",
        "pid",
    ]);
    for line in list.lines() {
        let mut cols = line.split('\t');
        if cols.next() == Some(user)
            && let Some(pid) = cols.next()
        {
            tls_ctl(&["close_connection", pid.trim(), "test: credentials rotated"]);
        }
    }
}

#[tokio::test]
async fn a_rotated_password_is_read_again_when_the_broker_refuses_the_old_one() {
    tls_broker();
    moto();
    let user = unique("rotating").replace('.', "-");
    let (old, new) = ("old-password-7f3a", "new-password-9c1b");
    add_user(&user, old);
    let parts = |password: &str| json!({"username": user, "password": password, "host": "localhost", "port": TLS_PORT});
    let arn = create_secret(&unique("secret"), &parts(old)).await;
    let exchange = unique("rotation");
    let mut vars = secret_vars(&arn);
    vars.push(("EXCHANGE", exchange.clone()));
    vars.push(("CONNECT_TIMEOUT_MS", "3000".into()));
    let function = Function::start(&borrowed(&vars)).await;
    let inspector = TestBroker::connect_to(&plain_uri()).await;
    wait_for_cold_start(&inspector, &exchange, &function).await;
    let queue = inspector
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;

    let (response, _) = function
        .invoke(
            &batch_of(vec![record(1, Some("ThingHappened"), "first")]),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        response["batchItemFailures"],
        json!([]),
        "{}",
        function.output()
    );

    // Rotation: the broker and the secret get the new password; the open
    // connection dies (as on a broker restart), so the next batch connects
    // with the secret it read at cold start, is refused, and reads it again.
    tls_ctl(&["change_password", &user, new]);
    put_secret_value(&arn, &parts(new)).await;
    close_connections_of(&user);

    let (response, _) = function
        .invoke(
            &batch_of(vec![record(2, Some("ThingHappened"), "second")]),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        response["batchItemFailures"],
        json!([]),
        "{}",
        function.output()
    );
    let got = inspector.take(&queue, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    let output = function.output();
    assert!(output.contains("reading the secret again"), "{output}");
    for secret in [old, new] {
        assert!(
            !output.contains(secret),
            "{secret} in the output:\n{output}"
        );
    }
    inspector.cleanup(&exchange, &[&queue]).await;
}

/// Strings that must never reach the function's output.
const PASSWORD: &str = "Known-Pa55word-3e8d";
const PAYLOAD: &str = "payload-marker-5f2c";

fn assert_clean(function: &Function) {
    let output = function.output();
    assert!(!output.is_empty());
    for secret in [
        PASSWORD,
        PAYLOAD,
        "test-secret-access-key",
        "test-session-token",
    ] {
        assert!(
            !output.contains(secret),
            "{secret:?} in the output:\n{output}"
        );
    }
}

async fn start_logged(vars: &[(&'static str, String)], exchange: &str) -> Function {
    let mut vars = vars.to_vec();
    vars.push(("EXCHANGE", exchange.to_string()));
    // The most an operator can turn on: everything at TRACE (lambda_runtime
    // would log the raw event there).
    vars.push(("AWS_LAMBDA_LOG_LEVEL", "trace".into()));
    vars.push(("CONNECT_TIMEOUT_MS", "3000".into()));
    Function::start(&borrowed(&vars)).await
}

#[tokio::test]
async fn a_refused_password_leaves_no_password_or_payload_in_the_output() {
    tls_broker();
    moto();
    let user = unique("logs").replace('.', "-");
    add_user(&user, "the-real-password-is-not-in-the-secret");
    let arn = create_secret(
        &unique("secret"),
        &json!({"username": user, "password": PASSWORD, "host": "localhost", "port": TLS_PORT}),
    )
    .await;
    let function = start_logged(&secret_vars(&arn), &unique("logs")).await;
    let (response, _) = function
        .invoke(
            &batch_of(vec![record(1, Some("ThingHappened"), PAYLOAD)]),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        response["batchItemFailures"],
        json!([{"itemIdentifier": format!("{:021}", 1)}])
    );
    let output = function.output();
    assert!(output.contains("ACCESS_REFUSED"), "{output}");
    assert!(output.contains("reading the secret again"), "{output}");
    assert_clean(&function);
}

#[tokio::test]
async fn an_unroutable_message_leaves_no_payload_in_the_output() {
    tls_broker();
    let user = unique("logs").replace('.', "-");
    add_user(&user, PASSWORD);
    let exchange = unique("logs");
    let inspector = TestBroker::connect_to(&plain_uri()).await;
    // No alternate exchange and no binding: the broker returns the message.
    inspector
        .declare_exchange(&exchange, lapin::ExchangeKind::Topic, FieldTable::default())
        .await;
    let vars = vec![
        ("AMQP_URI", tls_uri(&user, PASSWORD, "localhost")),
        ("AMQP_CA_FILE", ca_file()),
        ("DECLARE_TOPOLOGY", "false".to_string()),
    ];
    let function = start_logged(&vars, &exchange).await;
    let (response, _) = function
        .invoke(
            &batch_of(vec![record(1, Some("ThingHappened"), PAYLOAD)]),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        response["batchItemFailures"],
        json!([{"itemIdentifier": format!("{:021}", 1)}])
    );
    let output = function.output();
    assert!(output.contains("312"), "{output}");
    assert_clean(&function);
    inspector.cleanup(&exchange, &[]).await;
}

#[tokio::test]
async fn a_dead_lettered_record_leaves_no_payload_in_the_output() {
    tls_broker();
    let user = unique("logs").replace('.', "-");
    add_user(&user, PASSWORD);
    let exchange = unique("logs");
    let vars = vec![
        ("AMQP_URI", tls_uri(&user, PASSWORD, "localhost")),
        ("AMQP_CA_FILE", ca_file()),
    ];
    let function = start_logged(&vars, &exchange).await;
    let (response, _) = function
        .invoke(
            &batch_of(vec![
                record(1, Some("ThingHappened"), PAYLOAD),
                record(2, None, PAYLOAD),
            ]),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(response["batchItemFailures"], json!([]));
    let output = function.output();
    let line = output
        .lines()
        .find(|l| l.contains("record dead-lettered"))
        .unwrap_or_else(|| panic!("no dead-letter line in {output}"));
    let line: Value = serde_json::from_str(line).unwrap();
    // Enough to find the record: its sequence number, event id and reason.
    assert_eq!(line["fields"]["sequence_number"], format!("{:021}", 2));
    assert_eq!(line["fields"]["event_id"], "ev-2");
    assert_eq!(line["fields"]["index"], 1);
    assert_eq!(
        line["fields"]["reason"],
        "missing required attribute `eventType`"
    );
    let inspector = TestBroker::connect_to(&plain_uri()).await;
    let dead = inspector
        .take(
            &format!("{exchange}.dead-letter"),
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(dead.len(), 1, "the record went to the dead-letter queue");
    assert_clean(&function);
    inspector.cleanup(&exchange, &[]).await;
}

#[tokio::test]
async fn a_plain_text_uri_in_the_secret_is_refused_when_a_ca_file_is_set() {
    moto();
    let arn = create_secret(
        &unique("secret"),
        &json!({"uri": format!("amqp://guest:guest@127.0.0.1:{PLAIN_PORT}/%2f")}),
    )
    .await;
    let vars = secret_vars(&arn);
    let err = match Forwarder::start(config(&unique("secret"), &borrowed(&vars))).await {
        Ok(_) => panic!("started on plain text with a CA file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("plain text"), "{err}");
    assert!(!err.contains("guest:guest"), "{err}");
}
