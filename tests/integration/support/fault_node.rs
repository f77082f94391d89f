//! The disposable broker node for destructive faults
//! (`scripts/rabbitmq4.sh start faults`), so that restarts and alarms never
//! disturb the other suites.

use std::process::Command;

/// AMQP port of the fault node.
pub const FAULT_PORT: u16 = 5673;
/// Its container.
pub const FAULT_CONTAINER: &str = "ef-rabbitmq4-faults";

/// Starts the fault node if it is not running.
pub fn fault_broker() {
    testkit::start_node("faults");
}

pub fn fault_uri(query: &str) -> String {
    format!("amqp://guest:guest@127.0.0.1:{FAULT_PORT}/%2f{query}")
}

/// `rabbitmqctl` against the fault node.
pub fn fault_ctl(args: &[&str]) -> String {
    testkit::ctl_in(FAULT_CONTAINER, args)
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
