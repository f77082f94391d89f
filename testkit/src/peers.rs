//! The peers `make bench` runs beside the forwarder on the same batch: the
//! forwarder a Node team would write (benches/peers/confirm_peer.js,
//! amqplib's ConfirmChannel, installed by scripts/peers.sh).

use std::{path::PathBuf, process::Command, time::Duration};

/// One round of a peer: its wall time and the CPU time it used.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub wall: Duration,
    pub cpu: Duration,
}

/// benches/peers, beside the testkit.
fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/peers")
}

/// Runs the Node peer: `rounds` times the whole `event` (a DynamoDB stream
/// event, as the function gets it) published to `exchange` at `url`, each
/// round's confirms awaited. Every message must be routed (none returned).
pub fn node_confirm_channel(
    url: &str,
    exchange: &str,
    event: &serde_json::Value,
    rounds: usize,
) -> Result<Vec<Round>, String> {
    let dir = peers_dir();
    if !dir.join("node_modules/amqplib").is_dir() {
        return Err("amqplib is not installed: run scripts/peers.sh".into());
    }
    let path = std::env::temp_dir().join(format!("ef-peer-event-{}.json", std::process::id()));
    std::fs::write(&path, event.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = Command::new("node")
        .current_dir(&dir)
        .arg("confirm_peer.js")
        .arg(url)
        .arg(exchange)
        .arg(&path)
        .arg(rounds.to_string())
        .output()
        .map_err(|e| format!("node: {e}"));
    let _ = std::fs::remove_file(&path);
    let out = out?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("{line}: {e}"))?;
            if v["returned"].as_u64() != Some(0) {
                return Err(format!(
                    "the peer's messages were returned unroutable: {line}"
                ));
            }
            let ms = v["ms"].as_f64().ok_or_else(|| format!("no ms in {line}"))?;
            let cpu = v["cpu_us"]
                .as_f64()
                .ok_or_else(|| format!("no cpu_us in {line}"))?;
            Ok(Round {
                wall: Duration::from_secs_f64(ms / 1e3),
                cpu: Duration::from_secs_f64(cpu / 1e6),
            })
        })
        .collect()
}
