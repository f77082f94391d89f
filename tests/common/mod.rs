//! Helpers for the broker-backed tests: a real RabbitMQ on loopback (see
//! `make broker`), unique names per test so tests run in parallel, and a
//! plain lapin client to look at what arrived.
#![allow(dead_code)]

pub mod function;
#[cfg(feature = "ops")]
pub mod local;
pub mod proxy;
pub mod runtime_api;
#[cfg(feature = "ops")]
pub mod scripted;
pub mod secrets;
#[cfg(feature = "ops")]
pub mod streams_proxy;
pub mod tls;

use std::{
    collections::HashMap,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use event_forwarder::{Config, handler::StreamBatch};
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    message::Delivery,
    options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

/// The broker the tests use; `TEST_AMQP_URI` overrides it.
pub fn amqp_uri() -> String {
    std::env::var("TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "test.{prefix}.{}.{nanos}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A configuration for `exchange` with the contract's defaults and `extra`.
pub fn config(exchange: &str, extra: &[(&str, &str)]) -> Config {
    let uri = amqp_uri();
    let mut vars: HashMap<String, String> = HashMap::from([
        ("AMQP_URI".to_string(), uri),
        ("EXCHANGE".to_string(), exchange.to_string()),
        ("QUEUE_TYPE".to_string(), "classic".to_string()),
    ]);
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    // A secret replaces the URI (both together are a configuration error).
    if vars.contains_key("AMQP_SECRET_ARN") {
        vars.remove("AMQP_URI");
    }
    Config::from_lookup(|k| vars.get(k).cloned()).expect("test configuration is valid")
}

/// One of the sample events in `events/`.
pub fn event(name: &str) -> StreamBatch {
    let path = format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("sample event exists");
    serde_json::from_str(&text).expect("sample event parses")
}

/// The sequence numbers a response reports.
pub fn reported(response: &aws_lambda_events::streams::DynamoDbEventResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().expect("identifier is set"))
        .collect()
}

/// A plain client to declare test queues and read what arrived.
pub struct TestBroker {
    pub connection: Connection,
    pub channel: Channel,
}

impl TestBroker {
    pub async fn connect() -> Self {
        Self::connect_to(&amqp_uri()).await
    }

    pub async fn connect_to(uri: &str) -> Self {
        let connection = Connection::connect(uri, ConnectionProperties::default())
            .await
            .expect("RabbitMQ is running (make broker)");
        let channel = connection.create_channel().await.expect("channel");
        Self {
            connection,
            channel,
        }
    }

    /// A fresh channel, for operations that may close one.
    pub async fn channel(&self) -> Channel {
        self.connection.create_channel().await.expect("channel")
    }

    /// Declares a queue bound to `exchange` with `routing_key`.
    pub async fn bind_queue(&self, exchange: &str, routing_key: &str, args: FieldTable) -> String {
        let queue = unique("queue");
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .expect("queue declared");
        self.channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue bound");
        queue
    }

    pub async fn declare_exchange(&self, name: &str, kind: ExchangeKind, args: FieldTable) {
        self.channel
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .expect("exchange declared");
    }

    /// Whether an exchange exists (a passive declare on a throwaway channel).
    pub async fn exchange_exists(&self, name: &str) -> bool {
        self.channel()
            .await
            .exchange_declare(
                name.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok()
    }

    /// Takes up to `n` messages from `queue`, waiting at most `wait` for them.
    pub async fn take(&self, queue: &str, n: usize, wait: Duration) -> Vec<Delivery> {
        let until = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < until {
            match self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
            {
                Some(m) => out.push(m.delivery),
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        out
    }

    /// Every message in `queue`: taken until it has stayed empty for 300 ms
    /// (a settle for quorum queues). Not bounded in time otherwise: on a slow
    /// machine 10,000 `basic.get`s take longer than any fixed budget, and
    /// what was left behind would look lost.
    pub async fn drain(&self, queue: &str) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut empty_since = Instant::now();
        loop {
            match self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
            {
                Some(m) => {
                    out.push(m.delivery);
                    empty_since = Instant::now();
                }
                None if empty_since.elapsed() >= Duration::from_millis(300) => return out,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Removes the forwarder's topology for `exchange` and the given queues.
    pub async fn cleanup(&self, exchange: &str, queues: &[&str]) {
        let ch = self.channel().await;
        for q in queues.iter().map(|q| q.to_string()).chain([
            format!("{exchange}.unrouted"),
            format!("{exchange}.dead-letter"),
        ]) {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in [
            exchange.to_string(),
            format!("{exchange}.unrouted"),
            format!("{exchange}.dead-letter"),
        ] {
            let _ = ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}

/// Arguments of a queue that holds at most `max` messages and refuses the
/// next ones, so that the broker nacks them.
pub fn reject_publish_after(max: i32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(max));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

/// A message body as JSON.
pub fn body(d: &Delivery) -> serde_json::Value {
    serde_json::from_slice(&d.data).expect("the body is JSON")
}

/// A header as a string, whatever AMQP string type carries it.
pub fn header_str(d: &Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

pub fn header_int(d: &Delivery, name: &str) -> Option<i64> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        _ => None,
    }
}

/// A consumer in another language (`tests/consumers/<script>`) run with
/// `args`; its standard output.
pub fn consumer(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(format!(
            "{}/tests/consumers/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port nothing listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Kills the child when dropped.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status();
    }
}

/// `cargo lambda watch --only-lambda-apis` on `port` (runtime API under
/// `/.rt`, Invoke API for the function `_`), once it listens.
pub fn cargo_lambda_watch(port: u16) -> Process {
    let emulator = Process(
        Command::new("cargo-lambda")
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
            ])
            .arg(port.to_string())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cargo-lambda is installed (pip install cargo-lambda)"),
    );
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "cargo lambda watch did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    emulator
}

/// Runs `rabbitmqctl` with `args`; the tests run as the broker's owner.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed (make broker)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The broker-side ids of the connections whose client-provided name is
/// `name`.
pub fn connections_named(name: &str) -> Vec<String> {
    rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .lines()
    .filter(|line| line.contains(&format!("\"{name}\"")))
    .filter_map(|line| line.split_whitespace().next().map(str::to_string))
    .collect()
}
