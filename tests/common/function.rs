//! The real `event-forwarder` binary under the test Runtime API, a
//! disposable broker node for destructive faults, and a synthetic stream.
#![allow(dead_code)]

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::runtime_api::{Outcome, RuntimeApi};

/// AMQP port of the fault node (`scripts/rabbitmq4.sh start faults`).
pub const FAULT_PORT: u16 = 5673;
/// Its container.
pub const FAULT_CONTAINER: &str = "ef-rabbitmq4-faults";

/// Starts the fault node if it is not running.
pub fn fault_broker() {
    super::start_node("faults");
}

pub fn fault_uri(query: &str) -> String {
    format!("amqp://guest:guest@127.0.0.1:{FAULT_PORT}/%2f{query}")
}

/// `rabbitmqctl` against the fault node.
pub fn fault_ctl(args: &[&str]) -> String {
    super::ctl_in(FAULT_CONTAINER, args)
}

/// The fault node's log (its console, as `docker logs` shows it).
pub fn fault_log() -> String {
    Command::new("docker")
        .args(["logs", FAULT_CONTAINER])
        .output()
        .map(|out| {
            let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
            log.push_str(&String::from_utf8_lossy(&out.stderr));
            log
        })
        .unwrap_or_default()
}

/// The function process; killed when dropped.
pub struct Function {
    child: Child,
    pub api: RuntimeApi,
    pub name: String,
    log_path: PathBuf,
    stderr_path: PathBuf,
}

impl Function {
    /// Starts the binary with `env` (at least AMQP_URI and EXCHANGE).
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_without(env, &[]).await
    }

    /// Like [`Function::start`], but the child does not inherit the test
    /// process's variables named in `unset` (only the child changes).
    pub async fn start_without(env: &[(&str, &str)], unset: &[&str]) -> Self {
        Self::start_program(&[env!("CARGO_BIN_EXE_event-forwarder")], env, unset).await
    }

    /// Like [`Function::start_without`], with another program: `program`
    /// is the command line (e.g. an emulator and the arm64 artefact).
    pub async fn start_program(program: &[&str], env: &[(&str, &str)], unset: &[&str]) -> Self {
        Self::start_on(RuntimeApi::start().await, program, env, unset)
    }

    /// The binary under a Runtime API that lacks the Extensions API.
    pub async fn start_without_extensions_api(env: &[(&str, &str)]) -> Self {
        let program = [env!("CARGO_BIN_EXE_event-forwarder")];
        Self::start_on(RuntimeApi::without_extensions().await, &program, env, &[])
    }

    fn start_on(api: RuntimeApi, program: &[&str], env: &[(&str, &str)], unset: &[&str]) -> Self {
        let name = super::unique("fn").replace('.', "-");
        let log_path = std::env::temp_dir().join(format!("{name}.log"));
        let stderr_path = std::env::temp_dir().join(format!("{name}.stderr.log"));
        let mut cmd = Command::new(program[0]);
        cmd.args(&program[1..])
            .env("AWS_LAMBDA_RUNTIME_API", api.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", &name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("QUEUE_TYPE", "classic")
            .env_remove("RUST_LOG")
            .stdout(std::fs::File::create(&log_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for k in unset {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("the binary starts");
        Self {
            child,
            api,
            name,
            log_path,
            stderr_path,
        }
    }

    pub fn connection_name(&self) -> String {
        format!("event-forwarder:{}", self.name)
    }

    /// Invokes with `timeout` as the deadline; panics if the function does
    /// not answer before the deadline, as Lambda would kill it.
    pub async fn invoke(&self, event: &Value, timeout: Duration) -> (Value, Duration) {
        let started = Instant::now();
        let outcome = self.api.invoke(event, timeout).await;
        let took = started.elapsed();
        match outcome {
            Some(Outcome::Response(r)) => {
                assert!(took < timeout, "answered after the deadline ({took:?})");
                (r, took)
            }
            other => panic!("no response: {other:?}\nlog:\n{}", self.log()),
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < until, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself (a failed cold start).
    pub fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        let until = Instant::now() + wait;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < until, "the function did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote: stdout, then stderr.
    pub fn output(&self) -> String {
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        self.log() + &stderr
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The `fields` of every summary line, in order.
    pub fn summaries(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("batch forwarded"))
            })
            .map(|l| l["fields"].clone())
            .collect()
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// One record of a synthetic event-store stream.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub seq: u64,
    pub aggregate: String,
    pub version: u64,
}

impl StreamRecord {
    pub fn sequence_number(&self) -> String {
        format!("{:021}", self.seq)
    }

    pub fn to_json(&self) -> Value {
        self.to_json_as("StockAdjusted")
    }

    /// The record with `event_type` as its `eventType` attribute.
    pub fn to_json_as(&self, event_type: &str) -> Value {
        let mut record = self.to_json_without_type();
        record["dynamodb"]["NewImage"]["eventType"] = json!({"S": event_type});
        record
    }

    /// The record without the required `eventType`: it cannot be converted
    /// and is dead-lettered.
    pub fn to_json_without_type(&self) -> Value {
        json!({
            "eventID": format!("ev-{}", self.seq),
            "eventName": "INSERT",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "eu-west-1",
            "eventSourceARN": "arn:aws:dynamodb:eu-west-1:123456789012:table/fault-events/stream/2026-11-01T00:00:00.000",
            "dynamodb": {
                "ApproximateCreationDateTime": 1795348800,
                "Keys": {"aggregateId": {"S": self.aggregate}, "version": {"N": self.version.to_string()}},
                "NewImage": {
                    "aggregateId": {"S": self.aggregate},
                    "version": {"N": self.version.to_string()},
                    "payload": {"M": {
                        "sku": {"S": self.aggregate},
                        "delta": {"N": "-3"},
                        "note": {"S": "x".repeat(200)}
                    }}
                },
                "SequenceNumber": self.sequence_number(),
                "SizeBytes": 400,
                "StreamViewType": "NEW_IMAGE"
            }
        })
    }
}

/// `n` records over `aggregates` aggregates, each aggregate's versions in
/// order, interleaved by a seeded shuffle.
pub fn stream(n: usize, aggregates: usize, seed: u64) -> Vec<StreamRecord> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut next_version = vec![0u64; aggregates];
    (0..n)
        .map(|i| {
            let a = rng.usize(..aggregates);
            next_version[a] += 1;
            StreamRecord {
                seq: 1_000_000 + i as u64,
                aggregate: format!("agg-{a:04}"),
                version: next_version[a],
            }
        })
        .collect()
}

pub fn batch(records: &[StreamRecord]) -> Value {
    json!({"Records": records.iter().map(StreamRecord::to_json).collect::<Vec<_>>()})
}

/// The index in `records` of the record a response reports, if any.
pub fn reported_index(response: &Value, records: &[StreamRecord]) -> Option<usize> {
    let failures = response["batchItemFailures"]
        .as_array()
        .expect("a batch response");
    assert!(failures.len() <= 1, "at most one failure: {response}");
    let id = failures.first()?["itemIdentifier"]
        .as_str()
        .expect("a string identifier");
    assert!(!id.is_empty());
    Some(
        records
            .iter()
            .position(|r| r.sequence_number() == id)
            .expect("the reported record is in the batch"),
    )
}

/// What arrived, for the record-by-record check.
#[derive(Debug, Default)]
pub struct Delivered {
    /// (aggregate, version) in arrival order.
    pub arrivals: Vec<(String, u64)>,
}

impl Delivered {
    pub fn from_bodies<'a>(bodies: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let arrivals = bodies
            .into_iter()
            .map(|b| {
                let v: Value = serde_json::from_slice(b).expect("JSON body");
                (
                    v["partitionKey"]
                        .as_str()
                        .expect("partitionKey")
                        .to_string(),
                    v["aggregateVersion"].as_u64().expect("aggregateVersion"),
                )
            })
            .collect();
        Self { arrivals }
    }

    pub fn contains(&self, r: &StreamRecord) -> bool {
        self.arrivals
            .iter()
            .any(|(a, v)| *a == r.aggregate && *v == r.version)
    }

    /// Records of `stream` that never arrived.
    pub fn lost(&self, stream: &[StreamRecord]) -> usize {
        let got: HashSet<(&str, u64)> = self
            .arrivals
            .iter()
            .map(|(a, v)| (a.as_str(), *v))
            .collect();
        stream
            .iter()
            .filter(|r| !got.contains(&(r.aggregate.as_str(), r.version)))
            .count()
    }

    pub fn duplicates(&self) -> usize {
        let unique: HashSet<&(String, u64)> = self.arrivals.iter().collect();
        self.arrivals.len() - unique.len()
    }

    /// First deliveries of an aggregate that came after a later version.
    pub fn order_violations(&self) -> usize {
        let mut seen: HashSet<(&str, u64)> = HashSet::new();
        let mut highest: HashMap<&str, u64> = HashMap::new();
        let mut violations = 0;
        for (a, v) in &self.arrivals {
            if !seen.insert((a.as_str(), *v)) {
                continue;
            }
            let h = highest.entry(a.as_str()).or_insert(0);
            if *v < *h {
                violations += 1;
            }
            *h = (*h).max(*v);
        }
        violations
    }
}
