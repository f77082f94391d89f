//! The TLS broker node (`scripts/rabbitmq4.sh start tls`, RabbitMQ 4): its own CA, a server
//! certificate for `localhost` and `127.0.0.1`, a plain AMQP port for the
//! tests' own client and a TLS port for the function.

use std::process::Command;

/// The node's container (`scripts/rabbitmq4.sh start tls`).
pub const TLS_CONTAINER: &str = "ef-rabbitmq4-tls";
/// Plain AMQP, for the tests' own client only.
pub const PLAIN_PORT: u16 = 5675;
pub const TLS_PORT: u16 = 5676;
pub const TLS_DIR: &str = "/tmp/event-forwarder-tls";

/// Starts the TLS node (and makes its certificates) if it is not running.
pub fn tls_broker() {
    testkit::start_node("tls");
}

/// The CA that signed the node's certificate.
pub fn ca_file() -> String {
    format!("{TLS_DIR}/certs/ca.pem")
}

/// The node's own (leaf) certificate: not a CA.
pub fn server_cert_file() -> String {
    format!("{TLS_DIR}/certs/server.pem")
}

/// `amqps://user:password@host:5676/%2f`.
pub fn tls_uri(user: &str, password: &str, host: &str) -> String {
    format!("amqps://{user}:{password}@{host}:{TLS_PORT}/%2f")
}

/// The plain port of the TLS node, for looking at what arrived.
pub fn plain_uri() -> String {
    format!("amqp://guest:guest@127.0.0.1:{PLAIN_PORT}/%2f")
}

/// `rabbitmqctl` against the TLS node.
pub fn tls_ctl(args: &[&str]) -> String {
    testkit::ctl_in(TLS_CONTAINER, args)
}

/// A broker user with full rights on `/` (deleted first if it exists).
pub fn add_user(user: &str, password: &str) {
    let _ = Command::new("docker")
        .args(["exec", TLS_CONTAINER, "rabbitmqctl", "delete_user", user])
        .output();
    tls_ctl(&["add_user", user, password]);
    tls_ctl(&["set_permissions", "-p", "/", user, ".*", ".*", ".*"]);
}
