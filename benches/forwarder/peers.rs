//! The forwarder against the peer a Node team would write (amqplib's
//! ConfirmChannel: publish every event, then await the confirms;
//! benches/peers) and against the raw lapin loop, on the same 1,000-record
//! batch, on loopback and through a proxy that adds a one-way delay, as a
//! broker in the same VPC (0.73 ms round trip) or the next zone (1.28 ms)
//! would.

use std::time::{Duration, Instant};

use anyhow::Context;
use event_forwarder::{
    Config,
    convert::Converter,
    engine::{AmqpBroker, Broker, amqp_settings},
};
use lapin::{Channel, Connection, ConnectionProperties, options::ConfirmSelectOptions};
use serde_json::json;
use testkit::delay::DelayProxy;

/// One round trip's figures: records per second (medians), and the Node
/// peer's CPU per event.
pub struct AtDelay {
    pub round_trip: Duration,
    pub forwarder: f64,
    pub raw: f64,
    pub node: f64,
    pub node_cpu_per_event: Duration,
    /// Median over rounds of forwarder time / node time, as a rate ratio.
    pub forwarder_vs_node: f64,
}

/// Round trips measured (one-way delay doubled): loopback, a VPC, the next
/// zone.
const ONE_WAY: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_micros(365),
    Duration::from_micros(640),
];

pub async fn measure(
    uri: &str,
    exchange: &str,
    admin: &Channel,
    queue: &str,
    rounds: usize,
) -> anyhow::Result<Vec<AtDelay>> {
    let n = 1_000;
    let records = super::make_records(n);
    let event = json!({ "Records": records });
    let bodies = super::make_bodies(
        &Converter::new(event_forwarder::convert::MappingConfig::new("bench")),
        &records,
    )?;
    let raw_records = super::to_raw(&records);
    let upstream = broker_address(uri)?;
    let mut out = Vec::new();
    for one_way in ONE_WAY {
        let proxy = DelayProxy::start(upstream, one_way).await?;
        let url = proxy.url(uri);
        let config = Config::from_lookup(|k| match k {
            "AMQP_URI" => Some(url.clone()),
            "EXCHANGE" => Some(exchange.to_owned()),
            _ => None,
        })?;
        let converter = Converter::new(config.mapping.clone());
        let mut broker = AmqpBroker::new(amqp_settings(&config));
        broker
            .ensure_ready(Instant::now() + Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let client = Connection::connect(&url, ConnectionProperties::default()).await?;
        let raw = client.create_channel().await?;
        raw.confirm_select(ConfirmSelectOptions::default()).await?;
        // The Node peer: two rounds to warm its JIT, then `rounds`.
        let node_rounds = tokio::task::spawn_blocking({
            let url = url.clone();
            let exchange = exchange.to_owned();
            let event = event.clone();
            move || testkit::peers::node_confirm_channel(&url, &exchange, &event, rounds + 2)
        })
        .await?
        .map_err(|e| anyhow::anyhow!("the Node peer: {e}"))?;
        super::purge(admin, queue, n * (rounds + 2)).await?;
        let node_rounds = &node_rounds[2..];
        let mut fwd = Vec::new();
        let mut raw_times = Vec::new();
        // Which goes first alternates; forward_once checks and empties
        // the queue after the forwarder's batch.
        for round in 0..rounds {
            if round % 2 == 1 {
                raw_times.push(super::raw_loop(&raw, exchange, &bodies).await?);
                super::purge(admin, queue, n).await?;
            }
            fwd.push(
                super::forward_once(&mut broker, &converter, &raw_records, admin, queue).await?,
            );
            if round % 2 == 0 {
                raw_times.push(super::raw_loop(&raw, exchange, &bodies).await?);
                super::purge(admin, queue, n).await?;
            }
        }
        let mut node_walls: Vec<Duration> = node_rounds.iter().map(|r| r.wall).collect();
        let mut cpu: Vec<Duration> = node_rounds.iter().map(|r| r.cpu).collect();
        cpu.sort();
        let mut ratios: Vec<f64> = fwd
            .iter()
            .zip(&node_walls)
            .map(|(f, node)| node.as_secs_f64() / f.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        out.push(AtDelay {
            round_trip: one_way * 2,
            forwarder: super::rate(n, &mut fwd),
            raw: super::rate(n, &mut raw_times),
            node: super::rate(n, &mut node_walls),
            node_cpu_per_event: cpu[cpu.len() / 2] / n as u32,
            forwarder_vs_node: ratios[ratios.len() / 2],
        });
        broker.close().await;
        let _ = client.close(200, "bench done".into()).await;
    }
    Ok(out)
}

pub fn print(rows: &[AtDelay]) {
    println!();
    println!(
        "1,000 records against the Node peer (amqplib ConfirmChannel, pipelined) and the raw \
         lapin loop, through a delay proxy (medians):"
    );
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>14} {:>14} {:>16}",
        "round trip",
        "forwarder/s",
        "raw lapin/s",
        "node/s",
        "fwd vs node",
        "fwd vs raw",
        "node CPU/event"
    );
    for r in rows {
        println!(
            "{:<14} {:>12.0} {:>12.0} {:>12.0} {:>14.2} {:>14.2} {:>13.1} µs",
            format!("{:.2} ms", r.round_trip.as_secs_f64() * 1e3),
            r.forwarder,
            r.raw,
            r.node,
            r.forwarder_vs_node,
            r.forwarder / r.raw,
            r.node_cpu_per_event.as_secs_f64() * 1e6,
        );
    }
}

/// The broker's host and port from `amqp://user:pass@host:port/vhost`.
fn broker_address(uri: &str) -> anyhow::Result<std::net::SocketAddr> {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&host_port)?
        .next()
        .with_context(|| format!("no address for {host_port}"))
}
