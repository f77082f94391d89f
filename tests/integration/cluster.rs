//! RabbitMQ 4 as an Amazon MQ cluster broker runs it: three nodes behind a
//! TCP load balancer (`scripts/rabbitmq4.sh cluster`: haproxy with the 350 s
//! idle timeouts of Amazon MQ's Network Load Balancer). A maintenance window
//! drains, restarts and revives each node in turn while the real binary
//! forwards a stream by the checkpoint rule, as the event source mapping
//! would: nothing may be lost, first deliveries stay in order per aggregate,
//! every invocation answers in time, and the broker never holds more than
//! one connection of the execution environment.

use std::{
    collections::HashSet,
    io::{Read, Write},
    os::unix::net::UnixStream,
    process::Command,
    time::{Duration, Instant},
};

use lapin::types::FieldTable;
use testkit::{Function, TestBroker, ctl_in, start_node, unique};

use crate::support::stream::{Delivered, batch, reported_index, stream};

const CLUSTER_URI: &str = "amqp://guest:guest@127.0.0.1:5690/%2f";
const HAPROXY_SOCKET: &str = "/tmp/event-forwarder-rabbitmq4/haproxy/admin.sock";
const NODES: [&str; 3] = ["ef-rabbitmq4-c1", "ef-rabbitmq4-c2", "ef-rabbitmq4-c3"];
const RECORDS: usize = 10_000;
const AGGREGATES: usize = 200;
const BATCH: usize = 250;
const TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections of the function named `name` the cluster holds,
/// asked of the first node that answers (`list_connections` covers the
/// whole cluster); `None` when none does.
fn broker_connections(name: &str) -> Option<usize> {
    NODES.iter().find_map(|node| {
        let out = Command::new("docker")
            .args(["exec", node, "rabbitmqctl", "-q", "list_connections"])
            .args(["--no-table-headers", "client_properties"])
            .output()
            .ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(&format!("\"{name}\"")))
                .count()
        })
    })
}

/// Runs a command in a node's container; panics with its output on failure.
fn in_node(node: &str, command: &[&str]) -> String {
    let out = Command::new("docker")
        .args(["exec", node])
        .args(command)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "{node}: {command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What Amazon MQ does to each node in a maintenance window: wait until the
/// node can go without costing a quorum queue its majority, drain it
/// (clients see CONNECTION_FORCED, queue leaders move away, no new
/// connections), stop and start it, and put it back into service.
fn roll(node: &str) {
    in_node(
        node,
        &[
            "rabbitmq-upgrade",
            "await_online_quorum_plus_one",
            "-t",
            "120",
        ],
    );
    in_node(node, &["rabbitmq-upgrade", "drain"]);
    // A clean stop of the node, then a start. The container ends with the
    // node, and with it the `docker exec` that asked for the stop: its exit
    // status says nothing, the container's state does.
    let _ = Command::new("docker")
        .args(["exec", node, "rabbitmqctl", "shutdown"])
        .output();
    let until = Instant::now() + Duration::from_secs(60);
    while running(node) {
        assert!(Instant::now() < until, "{node} did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Command::new("docker")
        .args(["start", node])
        .output()
        .expect("docker runs");
    assert!(started.status.success(), "docker start {node}");
    let until = Instant::now() + Duration::from_secs(120);
    while !Command::new("docker")
        .args(["exec", node, "rabbitmqctl", "-q", "ping"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(Instant::now() < until, "{node} did not come back");
        std::thread::sleep(Duration::from_millis(500));
    }
    ctl_in(node, &["await_startup", "--timeout", "120"]);
    in_node(node, &["rabbitmq-upgrade", "revive"]);
}

/// Whether a node's container runs.
fn running(node: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", node])
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"true"))
}

/// One command on haproxy's admin socket.
fn haproxy(command: &str) -> String {
    let mut socket = UnixStream::connect(HAPROXY_SOCKET).expect("haproxy's admin socket");
    socket
        .write_all(format!("{command}\n").as_bytes())
        .expect("write to haproxy");
    let mut answer = String::new();
    socket.read_to_string(&mut answer).expect("read haproxy");
    answer
}

/// Sessions haproxy's AMQP listener holds now.
fn current_sessions() -> u64 {
    let stats = haproxy("show stat");
    let mut lines = stats.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let scur = header.iter().position(|h| *h == "scur").expect("scur");
    lines
        .find(|l| l.starts_with("amqp,FRONTEND,"))
        .and_then(|l| l.split(',').nth(scur)?.parse().ok())
        .unwrap_or(0)
}

/// haproxy's counters of the AMQP listener: (most sessions at once, total
/// sessions) per row name (`FRONTEND`, `c1`, `c2`, `c3`).
fn sessions() -> Vec<(String, u64, u64)> {
    let stats = haproxy("show stat");
    let mut lines = stats.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (sv, smax, stot) = (column("svname"), column("smax"), column("stot"));
    lines
        .filter(|l| l.starts_with("amqp,"))
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            (f[sv].to_string(), n(smax), n(stot))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_maintenance_of_a_three_node_cluster_loses_nothing() {
    start_node("cluster");
    let exchange = unique("cluster");
    let function = Function::start(&[
        ("AMQP_URI", CLUSTER_URI),
        ("EXCHANGE", &exchange),
        ("QUEUE_TYPE", "quorum"),
        ("CONNECT_TIMEOUT_MS", "2000"),
        ("CONFIRM_TIMEOUT_MS", "3000"),
        ("DEADLINE_MARGIN_MS", "1000"),
    ])
    .await;
    // A consumer's quorum queue (the cluster's default type), bound before
    // anything is forwarded; the consumer reads it after the maintenance.
    let broker = TestBroker::connect_to(CLUSTER_URI).await;
    assert!(
        broker
            .await_exchange(&exchange, Duration::from_secs(20))
            .await,
        "the function declared no exchange"
    );
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;
    let _ = broker.connection.close(200, "set up".into()).await;
    drop(broker);
    run(function, exchange, queue).await;
}

async fn run(function: Function, exchange: String, queue: String) {
    // Only the function's connection is left before the counters start.
    let until = Instant::now() + Duration::from_secs(10);
    while current_sessions() != 1 {
        assert!(Instant::now() < until, "sessions: {}", current_sessions());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    haproxy("clear counters all");
    let records = stream(6 * RECORDS, AGGREGATES, 19);
    // The broker's view of the function's connections, sampled all along.
    let name = function.connection_name();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                samples.extend(broker_connections(&name));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };
    let maintenance = tokio::task::spawn_blocking(|| {
        let started = Instant::now();
        for node in NODES {
            roll(node);
        }
        started.elapsed()
    });

    // The driver: batches of 250 from the checkpoint, as the event source
    // mapping sends them, paced while the maintenance runs so that it spans
    // all three nodes; at least 10,000 records in all.
    let mut from = 0;
    let mut invocations = 0;
    let mut partial = 0;
    let mut slowest = Duration::ZERO;
    let overall = Instant::now() + Duration::from_secs(900);
    while !(maintenance.is_finished() && from >= RECORDS) {
        assert!(Instant::now() < overall, "the run did not end");
        let end = (from + BATCH).min(records.len());
        assert!(
            end > from,
            "ran out of records before the maintenance ended"
        );
        let batch_records = &records[from..end];
        let (response, took) = function.invoke(&batch(batch_records), TIMEOUT).await;
        invocations += 1;
        slowest = slowest.max(took);
        match reported_index(&response, batch_records) {
            None => from = end,
            Some(i) => {
                partial += 1;
                from += i;
            }
        }
        if !maintenance.is_finished() {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    let window = maintenance.await.expect("the maintenance ran");
    let forwarded = &records[..from];
    let counters = sessions();
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.join().expect("the sampler ran");
    let most = samples.iter().copied().max().unwrap_or(0);

    let broker = TestBroker::connect_to(CLUSTER_URI).await;
    let deliveries = broker.drain(&queue).await;
    let ids: HashSet<String> = deliveries
        .iter()
        .filter_map(|d| d.properties.message_id().as_ref().map(|id| id.to_string()))
        .collect();
    let delivered = Delivered::from_bodies(deliveries.iter().map(|d| d.data.as_slice()));
    let report = format!(
        "cluster maintenance (3 nodes drained, restarted, revived in {:.0?}): {} records \
         over {AGGREGATES} aggregates in {invocations} invocations ({partial} partial), \
         {} delivered, {} lost, {} duplicates, {} order violations, slowest invocation \
         {slowest:.2?} (timeout {TIMEOUT:?}); connections of the function on the broker: at \
         most {most} in {} samples; haproxy sessions (most at once, total): {counters:?}",
        window,
        forwarded.len(),
        deliveries.len(),
        delivered.lost(forwarded),
        delivered.duplicates(),
        delivered.order_violations(),
        samples.len(),
    );
    println!("{report}");
    for summary in function.summaries() {
        if summary["reconnects"] != 0 || summary["failed"] != 0 {
            println!("{summary}");
        }
    }
    let _ = std::fs::write(
        format!("{}/target/cluster-report.txt", env!("CARGO_MANIFEST_DIR")),
        format!("{report}\n"),
    );

    assert_eq!(delivered.lost(forwarded), 0, "{report}");
    assert_eq!(
        ids.len(),
        forwarded.len(),
        "every messageId, once: {report}"
    );
    assert_eq!(delivered.order_violations(), 0, "{report}");
    // The drains moved the connection (new sessions through the load
    // balancer since its counters were cleared), and the broker never held
    // two of the function's connections. haproxy's own count of sessions at
    // once is no measure of that: a connect attempt the function gave up
    // on, shut by it, stays a session there until the node it was sent to
    // answers its close (a node that is restarting never does).
    let frontend = counters
        .iter()
        .find(|(name, ..)| name == "FRONTEND")
        .expect("the listener's counters");
    assert!(frontend.2 >= 1, "the connection moved: {report}");
    assert!(samples.len() >= 20, "too few samples: {report}");
    assert_eq!(most, 1, "at most one connection at once: {report}");
    broker.cleanup(&exchange, &[&queue]).await;
}
