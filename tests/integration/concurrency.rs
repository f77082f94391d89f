//! Many shards, one broker (issue 31): what the function does when the
//! broker refuses a connection for a limit, and invocations served
//! concurrently over one connection.
//!
//! The limit tests use a vhost's `max-connections` (and a user's) rather
//! than the node's `connection_max` that Amazon MQ sets per broker size: the
//! broker answers all three the same way (measured on RabbitMQ 4.0.5: 530
//! NOT_ALLOWED at `connection.open`, the reply naming the limit), a vhost
//! limit needs no broker node of its own (a node with `connection_max` 1
//! could serve no other test), and it is the one RabbitMQ 3.10 enforces
//! (3.10.8 accepts connections past `connection_max`).

use std::time::{Duration, Instant};

use event_forwarder::{Forwarder, StreamBatch};
use lapin::{Connection, ConnectionProperties};
use testkit::*;

use crate::support::stream::{batch, stream};

/// A vhost that takes one connection, on the broker `ctl` runs against.
struct LimitedVhost {
    name: String,
    ctl: fn(&[&str]) -> String,
}

impl LimitedVhost {
    fn new(ctl: fn(&[&str]) -> String) -> Self {
        let name = unique("limit").replace('.', "-");
        ctl(&["add_vhost", &name]);
        ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        ctl(&["set_vhost_limits", "-p", &name, r#"{"max-connections": 1}"#]);
        Self { name, ctl }
    }

    fn uri(&self, base: &str) -> String {
        let (server, _) = base.rsplit_once('/').expect("a URI with a vhost");
        format!("{server}/{}", self.name)
    }
}

impl Drop for LimitedVhost {
    fn drop(&mut self) {
        (self.ctl)(&["delete_vhost", &self.name]);
    }
}

fn host_ctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (make broker)");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn batch_of(n: usize, seed: u64) -> (Vec<crate::support::stream::StreamRecord>, StreamBatch) {
    let records = stream(n, 3, seed);
    let event = serde_json::from_value(batch(&records)).expect("a stream batch");
    (records, event)
}

/// The broker at its connection limit: the batch fails at its first record
/// at once (well inside the 4.5 s connect timeout), naming the limit; once a slot is
/// free the next batch goes through.
async fn a_broker_at_its_connection_limit_fails_the_batch_at_once_on(
    base: &str,
    ctl: fn(&[&str]) -> String,
) {
    let vhost = LimitedVhost::new(ctl);
    let uri = vhost.uri(base);
    let exchange = unique("limit");
    let holder = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("the one connection the vhost allows");
    let forwarder = Forwarder::start(config_on(
        &uri,
        &exchange,
        &[("CONNECT_TIMEOUT_MS", "4500")],
    ))
    .await
    .expect("a refused connection is only a warning at cold start");
    let (records, event) = batch_of(5, 31);

    let started = Instant::now();
    let (response, report) = forwarder
        .handle(&event, Duration::from_secs(60))
        .await
        .unwrap();
    let took = started.elapsed();

    assert_eq!(reported(&response), [records[0].sequence_number()]);
    let failure = report.failure.expect("a failure");
    assert_eq!(
        failure.error.kind(),
        "connection_limit",
        "{}",
        failure.error
    );
    assert!(
        failure
            .error
            .to_string()
            .contains("connection limit (1) is reached"),
        "{}",
        failure.error
    );
    assert!(
        took < Duration::from_millis(2250),
        "failed after {took:?}: the 4.5 s connect timeout was spent waiting"
    );

    holder.close(200, "done".into()).await.expect("closed");
    let (response, report) = forwarder
        .handle(&event, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(reported(&response).is_empty(), "{:?}", report.failure);
    assert_eq!(report.published, 5);
    // Deleting the vhost (on drop) removes the exchange and queues.
}

#[tokio::test]
async fn a_broker_at_its_connection_limit_fails_the_batch_at_once() {
    a_broker_at_its_connection_limit_fails_the_batch_at_once_on(&amqp_uri(), rabbitmqctl).await;
}

#[tokio::test]
async fn a_broker_at_its_connection_limit_fails_the_batch_at_once_on_rabbitmq_3() {
    a_broker_at_its_connection_limit_fails_the_batch_at_once_on(RABBITMQ3_URI, host_ctl).await;
}
