//! The local loop with real parts: moto's server for DynamoDB, its stream
//! and SQS (`scripts/moto.sh`), `cargo lambda watch` as the Lambda runtime
//! and Invoke API, the real function binary polling it, and the real
//! `forwarder-ops` as the event source mapping.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put,
    ScalarAttributeType, StreamSpecification, StreamViewType, TransactWriteItem,
};
use serde_json::Value;

use crate::{Function, TestBroker, cargo_bin};

/// moto's port (`scripts/moto.sh`, shared with the security tests).
pub const MOTO_PORT: u16 = 5677;

pub fn moto_url() -> String {
    format!("http://127.0.0.1:{MOTO_PORT}")
}

/// Starts moto's server if it is not running.
pub fn moto() {
    let script = crate::root().join("scripts/moto.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg("start")
        .status()
        .expect("bash runs");
    assert!(status.success(), "moto's server did not start");
}

/// One test's local loop: its table, the function under `cargo lambda
/// watch` publishing to an exchange of its own, and a queue bound to
/// everything on that exchange.
pub struct Loop {
    pub table: Table,
    pub exchange: String,
    pub function: Function,
    pub broker: TestBroker,
    pub queue: String,
}

impl Loop {
    /// Starts the function for `table` with `env` (after the defaults: the
    /// test broker's AMQP_URI and a new exchange named after `prefix`).
    pub async fn start(table: Table, prefix: &str, env: &[(&str, &str)]) -> Self {
        let exchange = crate::unique(prefix);
        let uri = crate::amqp_uri();
        let mut all = vec![("AMQP_URI", uri.as_str()), ("EXCHANGE", exchange.as_str())];
        all.extend_from_slice(env);
        let function = Function::watch(&all);
        let broker = TestBroker::connect().await;
        let queue = subscribe(&broker, &exchange).await;
        Self {
            table,
            exchange,
            function,
            broker,
            queue,
        }
    }
}

/// A table name moto and RabbitMQ both take.
pub fn table_name(prefix: &str) -> String {
    crate::unique(prefix).replace('.', "-")
}

/// Waits until the function declared `exchange`, then binds a queue to
/// everything on it.
pub async fn subscribe(broker: &TestBroker, exchange: &str) -> String {
    let until = Instant::now() + Duration::from_secs(20);
    while !broker.exchange_exists(exchange).await {
        assert!(
            Instant::now() < until,
            "the function did not declare {exchange}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker
        .bind_queue(exchange, "#", lapin::types::FieldTable::default())
        .await
}

/// An event's aggregate and version.
pub fn key_version(d: &lapin::message::Delivery) -> (String, u64) {
    let b = crate::body(d);
    (
        b["partitionKey"].as_str().unwrap_or_default().to_owned(),
        b["aggregateVersion"].as_u64().unwrap_or_default(),
    )
}

/// The versions of the events `queue` holds (at least `n`, waiting up to
/// 10 s for them), in arrival order.
pub async fn versions(broker: &TestBroker, queue: &str, n: usize) -> Vec<u64> {
    broker
        .take(queue, n, Duration::from_secs(10))
        .await
        .iter()
        .map(|d| key_version(d).1)
        .collect()
}

/// The settings every AWS client of the tests (and the tool) uses.
pub const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

pub async fn sdk_config() -> aws_config::SdkConfig {
    for (k, v) in AWS_ENV {
        // SAFETY: tests set the same values from every thread.
        unsafe { std::env::set_var(k, v) };
    }
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto_url())
        .load()
        .await
}

/// An event-store table (`aggregateId` + `version`) or an entity table
/// (`key`) with a NEW_AND_OLD_IMAGES stream, and an OnFailure queue.
pub struct Table {
    pub name: String,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub on_failure: String,
}

impl Table {
    pub async fn event_store(name: &str) -> Self {
        Self::create(
            name,
            &[
                ("aggregateId", KeyType::Hash, ScalarAttributeType::S),
                ("version", KeyType::Range, ScalarAttributeType::N),
            ],
        )
        .await
    }

    pub async fn entities(name: &str, key: &str) -> Self {
        Self::create(name, &[(key, KeyType::Hash, ScalarAttributeType::S)]).await
    }

    /// A table with the key `keys` (attribute, HASH or RANGE, type).
    pub async fn keyed(name: &str, keys: &[(&str, KeyType, ScalarAttributeType)]) -> Self {
        Self::create(name, keys).await
    }

    async fn create(name: &str, keys: &[(&str, KeyType, ScalarAttributeType)]) -> Self {
        moto();
        let config = sdk_config().await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let sqs = aws_sdk_sqs::Client::new(&config);
        let mut create = dynamodb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .expect("a stream specification"),
            );
        for (attribute, kind, scalar) in keys {
            create = create
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(*attribute)
                        .key_type(kind.clone())
                        .build()
                        .expect("a key"),
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(*attribute)
                        .attribute_type(scalar.clone())
                        .build()
                        .expect("an attribute"),
                );
        }
        create.send().await.expect("CreateTable");
        let on_failure = sqs
            .create_queue()
            .queue_name(format!("{name}-on-failure"))
            .send()
            .await
            .expect("CreateQueue")
            .queue_url()
            .expect("a queue URL")
            .to_owned();
        Self {
            name: name.to_owned(),
            dynamodb,
            sqs,
            on_failure,
        }
    }

    /// One domain event, written as an aggregate's command handler would.
    pub fn event(aggregate: &str, version: u64, event_type: &str) -> Item {
        Item::from([
            (
                "aggregateId".to_string(),
                AttributeValue::S(aggregate.into()),
            ),
            (
                "version".to_string(),
                AttributeValue::N(version.to_string()),
            ),
            (
                "eventType".to_string(),
                AttributeValue::S(event_type.into()),
            ),
            (
                "aggregateType".to_string(),
                AttributeValue::S("Product".into()),
            ),
            (
                "payload".to_string(),
                AttributeValue::M(Item::from([(
                    "version".to_string(),
                    AttributeValue::N(version.to_string()),
                )])),
            ),
        ])
    }

    pub async fn put(&self, item: Item) {
        self.dynamodb
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
            .send()
            .await
            .expect("PutItem");
    }

    /// Several events in one transaction.
    pub async fn transact(&self, items: Vec<Item>) {
        let mut tx = self.dynamodb.transact_write_items();
        for item in items {
            tx = tx.transact_items(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.name)
                            .set_item(Some(item))
                            .build()
                            .expect("a put"),
                    )
                    .build(),
            );
        }
        tx.send().await.expect("TransactWriteItems");
    }

    /// Every message in the OnFailure queue, as JSON (taken off the queue).
    pub async fn on_failure_messages(&self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let got = self
                .sqs
                .receive_message()
                .queue_url(&self.on_failure)
                .max_number_of_messages(10)
                .send()
                .await
                .expect("ReceiveMessage");
            let messages = got.messages();
            if messages.is_empty() {
                return out;
            }
            for m in messages {
                out.push(serde_json::from_str(m.body().unwrap_or("null")).expect("JSON body"));
                if let Some(handle) = m.receipt_handle() {
                    let _ = self
                        .sqs
                        .delete_message()
                        .queue_url(&self.on_failure)
                        .receipt_handle(handle)
                        .send()
                        .await;
                }
            }
        }
    }
}

pub type Item = std::collections::HashMap<String, AttributeValue>;

/// The table's stream.
pub async fn stream_arn(table: &Table) -> String {
    table
        .dynamodb
        .describe_table()
        .table_name(&table.name)
        .send()
        .await
        .expect("DescribeTable")
        .table()
        .and_then(|t| t.latest_stream_arn())
        .expect("the table has a stream")
        .to_owned()
}

/// The stream's (first) shard: its id and starting sequence number.
pub async fn shard(stream_arn: &str) -> (String, String) {
    let streams = aws_sdk_dynamodbstreams::Client::new(&sdk_config().await);
    let described = streams
        .describe_stream()
        .stream_arn(stream_arn)
        .send()
        .await
        .expect("DescribeStream");
    let shard = &described
        .stream_description()
        .expect("a description")
        .shards()[0];
    (
        shard.shard_id().expect("a shard id").to_owned(),
        shard
            .sequence_number_range()
            .and_then(|r| r.starting_sequence_number())
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The records of the stream's first shard, from its start.
pub async fn stream_records(stream_arn: &str) -> Vec<aws_sdk_dynamodbstreams::types::Record> {
    let streams = aws_sdk_dynamodbstreams::Client::new(&sdk_config().await);
    let (shard, _) = shard(stream_arn).await;
    let mut iterator = streams
        .get_shard_iterator()
        .stream_arn(stream_arn)
        .shard_id(shard)
        .shard_iterator_type(aws_sdk_dynamodbstreams::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("GetShardIterator")
        .shard_iterator()
        .map(str::to_owned);
    let mut records = Vec::new();
    while let Some(it) = iterator {
        let out = streams
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .expect("GetRecords");
        if out.records().is_empty() {
            break;
        }
        records.extend(out.records().iter().cloned());
        iterator = out.next_shard_iterator().map(str::to_owned);
    }
    records
}

/// `forwarder-ops` with the local endpoints, `args` after them.
pub fn ops(function: &Function, args: &[&str]) -> Command {
    let mut cmd = Command::new(cargo_bin("forwarder-ops"));
    cmd.args(["--endpoint-url", &moto_url()])
        .args(["--lambda-endpoint-url", &function.endpoint()])
        .args(args)
        .envs(AWS_ENV)
        .env_remove("RUST_LOG");
    cmd
}

/// `forwarder-ops` with DynamoDB, Streams and SQS at `endpoint` (moto, or
/// a fault endpoint in front of it) and the Invoke API at `lambda`.
pub fn ops_with(endpoint: &str, lambda: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(cargo_bin("forwarder-ops"));
    cmd.args(["--endpoint-url", endpoint])
        .args(["--lambda-endpoint-url", lambda])
        .args(args)
        .envs(AWS_ENV)
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    cmd
}

/// Runs the tool to its end; a run still going after `limit` is killed and
/// fails the test.
pub async fn run_with(endpoint: &str, lambda: &str, args: &[&str], limit: Duration) -> Run {
    let out = tokio::time::timeout(limit, ops_with(endpoint, lambda, args).output())
        .await
        .unwrap_or_else(|_| panic!("forwarder-ops {args:?} did not end within {limit:?}"))
        .expect("forwarder-ops runs");
    run_result(out)
}

/// What one run of the tool printed.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    /// The summary line's `key=value` pairs.
    pub summary: std::collections::HashMap<String, String>,
    pub stderr: String,
}

impl Run {
    pub fn count(&self, key: &str) -> u64 {
        self.summary
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in the summary: {self:?}"))
    }
}

/// Parses the tool's output.
pub fn run_result(out: std::process::Output) -> Run {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Run {
        success: out.status.success(),
        summary,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the tool to its end. The wait is on a thread of its own, so the
/// test's runtime (its fault proxy, say) goes on meanwhile.
pub async fn run(function: &Function, args: &[&str]) -> Run {
    let mut cmd = ops(function, args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("the wait ends")
        .expect("forwarder-ops runs");
    run_result(out)
}

/// Waits for a tool started in the background.
pub async fn wait(child: Child) -> Run {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("the wait ends")
        .expect("the tool ends");
    run_result(out)
}
