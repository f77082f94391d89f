//! The test kit of event-forwarder (dev-only, not published): what the
//! integration tests (`tests/integration`, `tests/ops`) and the benches
//! share. A library, so each binary links only what it uses.
//!
//! - [`function`]: the one harness that starts the function (the binary, or
//!   the arm64 artefact under qemu) under [`runtime_api`], a Lambda Runtime
//!   API stand-in, or under `cargo lambda watch`; the Lambda environment is
//!   assembled there.
//! - this file: the broker the tests use (RabbitMQ 4 nodes of
//!   `scripts/rabbitmq4.sh`, started on demand), unique names per test so
//!   tests run in parallel, a plain lapin client to look at what arrived
//!   ([`TestBroker`]), `rabbitmqctl`, and child processes.
//! - [`proxy`]: a TCP proxy that injects network faults; [`delay`]: one
//!   that adds a fixed one-way delay (benchmarks at a VPC's round trip).
//! - [`peers`]: the Node forwarder `make bench` runs beside ours.
//! - [`vhost`]: a vhost of a test's own, with a user limited to given names
//!   and limits such as `max-queues`.
//! - `local` (feature `ops`): moto's DynamoDB, its stream and SQS, the
//!   local loop and `forwarder-ops` runs.

pub mod delay;
pub mod function;
#[cfg(feature = "ops")]
pub mod local;
pub mod peers;
pub mod proxy;
pub mod runtime_api;
pub mod vhost;

pub use function::{Function, Launch, lambda_env};

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use event_forwarder::{Config, StreamBatch};
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    message::Delivery,
    options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

/// The event-forwarder package's directory (this crate is `testkit/` in it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is in the package")
        .to_path_buf()
}

/// A binary of the event-forwarder package, as cargo built it for the
/// running test or bench: in `target/<profile>/`, the test itself being in
/// `target/<profile>/deps/` (ripgrep's `tests/util.rs` finds `rg` so).
pub fn cargo_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let mut dir = exe.parent().expect("the test's directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// The broker the tests use: RabbitMQ 4 configured as Amazon MQ 4.2 is
/// (`scripts/rabbitmq4.sh start main`, started here when it is not running).
/// `TEST_AMQP_URI` (with `TEST_RABBITMQCTL`) points the tests elsewhere.
pub fn amqp_uri() -> String {
    match std::env::var("TEST_AMQP_URI") {
        Ok(uri) => uri,
        Err(_) => {
            start_node("main");
            "amqp://guest:guest@127.0.0.1:5682/%2f".to_string()
        }
    }
}

/// The AMQP port of the test broker, for a proxy in front of it.
pub fn amqp_port() -> u16 {
    let uri = amqp_uri();
    let authority = uri.split("://").nth(1).unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host_port = host_port.split('/').next().unwrap_or_default();
    host_port
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(5672)
}

/// Debian bookworm's RabbitMQ 3.10 (`make broker`), for what must hold on
/// 3.x as well.
pub const RABBITMQ3_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Starts a node of `scripts/rabbitmq4.sh` (`main`, `faults`, `tls`,
/// `cluster`) unless it runs; once per test binary and node.
pub fn start_node(node: &str) {
    static STARTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if started.iter().any(|n| n == node) {
        return;
    }
    let script = root().join("scripts/rabbitmq4.sh");
    let args: &[&str] = if node == "cluster" {
        &["cluster"]
    } else {
        &["start", node]
    };
    let status = Command::new("bash")
        .arg(&script)
        .args(args)
        .status()
        .expect("bash runs");
    assert!(status.success(), "the RabbitMQ 4 node {node} did not start");
    started.push(node.to_string());
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
    config_on(&amqp_uri(), exchange, extra)
}

/// [`config`] for the broker at `uri`.
pub fn config_on(uri: &str, exchange: &str, extra: &[(&str, &str)]) -> Config {
    let uri = uri.to_string();
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
    let path = root().join("events").join(name);
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
            .expect("RabbitMQ is running (scripts/rabbitmq4.sh start main)");
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

    /// Whether the exchange `name` exists within `wait`: a function's cold
    /// start declares its topology while the test goes on.
    pub async fn await_exchange(&self, name: &str, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while !self.exchange_exists(name).await {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
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
        delete_topology(&self.channel().await, exchange, queues).await;
    }
}

/// Deletes `queues`, and the forwarder's topology for `exchange` (its
/// `.unrouted` and `.dead-letter` queues and exchanges), on `ch`; what is
/// not there is passed over.
pub async fn delete_topology(ch: &Channel, exchange: &str, queues: &[&str]) {
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

/// Arguments of a queue that holds at most `max` messages and refuses the
/// next ones, so that the broker nacks them. A classic queue: a quorum
/// queue (the default type on Amazon MQ 4) applies the limit only once it
/// is exceeded, so it takes one message more before it refuses.
pub fn reject_publish_after(max: i32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
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
        .arg(root().join("tests/consumers").join(script))
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
            .current_dir(root())
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

/// Runs `rabbitmqctl` with `args` against the test broker: in its
/// container, or the command `TEST_RABBITMQCTL` gives (`rabbitmqctl` for a
/// broker on this host, with `TEST_AMQP_URI`).
pub fn rabbitmqctl(args: &[&str]) -> String {
    match std::env::var("TEST_RABBITMQCTL") {
        Ok(command) => {
            let mut words = command.split_whitespace();
            let program = words.next().unwrap_or("rabbitmqctl");
            run_ctl(Command::new(program).args(words).args(args), args)
        }
        Err(_) => {
            start_node("main");
            ctl_in("ef-rabbitmq4", args)
        }
    }
}

/// `rabbitmqctl` with `args` in the container `container`
/// (`scripts/rabbitmq4.sh`).
pub fn ctl_in(container: &str, args: &[&str]) -> String {
    run_ctl(
        Command::new("docker")
            .args(["exec", container, "rabbitmqctl"])
            .args(args),
        args,
    )
}

fn run_ctl(command: &mut Command, args: &[&str]) -> String {
    let out = command
        .output()
        .expect("rabbitmqctl runs (make broker; docker for RabbitMQ 4)");
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

/// Runs `futures` concurrently on this task and gives their outputs in
/// order: for several invocations in flight at once through one function.
pub async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
