//! `make bench`: the forwarder against the broker's ceiling on this machine,
//! plus conversion speed, cold start, memory and size.
//!
//! Every rate is a median of several rounds and is reported as a ratio to a
//! baseline measured in the same run (for the forwarder, the median of the
//! per-round ratios to the raw loop run just before it): these machines are
//! small and noisy.
//! Under `cargo test` (no `--bench` argument) it runs once on small batches
//! as a smoke test and checks that every record was delivered.

#![recursion_limit = "256"]

#[path = "forwarder/peers.rs"]
mod peers;

#[path = "forwarder/counts.rs"]
mod counts;

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use aws_lambda_events::dynamodb::EventRecord;
use chrono::Utc;
use event_forwarder::{
    Config,
    convert::{Converter, Plan},
    engine::{self, AmqpBroker, BatchOptions, Broker, Deadlines, Invocation, amqp_settings},
    enrich::NoEnricher,
};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
        QueuePurgeOptions,
    },
    types::FieldTable,
};
use serde_json::{Value, json};
use testkit::{Launch, runtime_api::Outcome};

struct Settings {
    smoke: bool,
    /// Only the cold start and peak RSS, with the function's log on stderr
    /// (`--memory-only`, for memory profiling).
    memory_only: bool,
    sizes: Vec<usize>,
    rounds: usize,
    conversion_records: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let smoke = !std::env::args().any(|a| a == "--bench");
    if std::env::args().any(|a| a == "--conversion-only") {
        // For profilers: conversion in a loop, no broker.
        let converter = Converter::new(event_forwarder::convert::MappingConfig::new("bench"));
        let records = to_raw(&make_records(10_000));
        let rate = median_rate(20, records.len(), || {
            let now = Utc::now();
            let started = Instant::now();
            for r in &records {
                black_box(converter.plan_raw(black_box(r.get()), now).into_message());
            }
            started.elapsed()
        });
        println!("conversion: {rate:.0} records/s");
        return Ok(());
    }
    let plan = if smoke {
        Settings {
            smoke,
            memory_only: false,
            sizes: vec![100],
            rounds: 1,
            conversion_records: 1_000,
        }
    } else {
        Settings {
            smoke,
            memory_only: std::env::args().any(|a| a == "--memory-only"),
            sizes: vec![100, 1_000, 10_000],
            rounds: 9,
            conversion_records: 10_000,
        }
    };
    run(&plan).await
}

async fn run(plan: &Settings) -> anyhow::Result<()> {
    let uri = std::env::var("AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    let exchange = format!("bench.{}", std::process::id());
    let config = Config::from_lookup(|k| match k {
        "AMQP_URI" => Some(uri.clone()),
        "EXCHANGE" => Some(exchange.clone()),
        _ => None,
    })?;
    if std::env::args().any(|a| a == "--environments-only") {
        // Only the one-environment-or-eight rows (issue 31), for a quick A/B.
        let (_broker, _client, admin, queue) =
            setup(&config, &uri, &exchange, QueueKind::Default).await?;
        let many = environments(&uri, &exchange, &queue, &admin, plan).await?;
        print_environments(&many);
        testkit::delete_topology(&admin, &exchange, &[&queue]).await;
        return Ok(());
    }
    if std::env::args().any(|a| a == "--peers-only") {
        // Only the Node peer and the delay proxy rows (issue 33).
        let (_broker, _client, admin, queue) =
            setup(&config, &uri, &exchange, QueueKind::Default).await?;
        let rows = peers::measure(&uri, &exchange, &admin, &queue, plan.rounds.min(5)).await?;
        peers::print(&rows);
        testkit::delete_topology(&admin, &exchange, &[&queue]).await;
        return Ok(());
    }
    if std::env::args().any(|a| a == "--counts-only") {
        // Only the instructions and system calls per event, for an A/B.
        let (_broker, _client, admin, queue) =
            setup(&config, &uri, &exchange, QueueKind::Default).await?;
        let rows = per_event_counts(&uri, &exchange, &queue, &admin, plan).await?;
        print_counts(&rows);
        testkit::delete_topology(&admin, &exchange, &[&queue]).await;
        return Ok(());
    }
    if plan.memory_only {
        let (_broker, _client, admin, queue) =
            setup(&config, &uri, &exchange, QueueKind::Default).await?;
        let cold = cold_start(&uri, &exchange, &queue, &admin, false, true, None).await?;
        print_cold(&cold, "");
        if let Ok(bin) = std::env::var("EF_BASELINE_BIN") {
            let cold = cold_start(&uri, &exchange, &queue, &admin, false, true, Some(&bin)).await?;
            print_cold(&cold, "EF_BASELINE_BIN: ");
        }
        return Ok(());
    }
    let converter = Converter::new(config.mapping.clone());
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // Conversion alone: a record as the event source mapping sends it (JSON
    // text) to routing key, properties and body; what the batch loop does
    // per record before publishing.
    let records = to_raw(&make_records(plan.conversion_records));
    let mean_body = {
        let now = Utc::now();
        let sizes: Vec<usize> = records
            .iter()
            .filter_map(
                |r| match converter.plan_raw(r.get(), now).into_message().plan {
                    Plan::Publish(m) => Some(m.body.len()),
                    _ => None,
                },
            )
            .collect();
        ensure!(sizes.len() == records.len(), "every record converts");
        sizes.iter().sum::<usize>() / sizes.len()
    };
    let conversion = median_rate(plan.rounds.max(3), records.len(), || {
        let now = Utc::now();
        let started = Instant::now();
        for r in &records {
            black_box(converter.plan_raw(black_box(r.get()), now).into_message());
        }
        started.elapsed()
    });

    let (mut broker, client, admin, queue) =
        setup(&config, &uri, &exchange, QueueKind::Default).await?;
    let raw = client.create_channel().await?;
    raw.confirm_select(ConfirmSelectOptions::default()).await?;
    let (ceiling_1000, forwarder_1000) = against_ceiling(
        &mut broker,
        &raw,
        &converter,
        &exchange,
        &admin,
        &queue,
        &plan.sizes,
        plan.rounds,
        plan.smoke,
        "",
        &mut rows,
    )
    .await?;
    // RabbitMQ 4 with Amazon MQ 4.2's settings, the bound queue a quorum
    // queue: its confirms wait for the queue's log to be written to disk.
    let uri4 = std::env::var("AMQP4_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5682/%2f".to_string());
    let config4 = Config::from_lookup(|k| match k {
        "AMQP_URI" => Some(uri4.clone()),
        "EXCHANGE" => Some(exchange.clone()),
        _ => None,
    })?;
    let (mut broker4, client4, admin4, queue4) =
        setup(&config4, &uri4, &exchange, QueueKind::Quorum).await?;
    let raw4 = client4.create_channel().await?;
    raw4.confirm_select(ConfirmSelectOptions::default()).await?;
    let sizes4: Vec<usize> = plan
        .sizes
        .iter()
        .copied()
        .filter(|&n| n >= 1_000 || plan.smoke)
        .collect();
    against_ceiling(
        &mut broker4,
        &raw4,
        &converter,
        &exchange,
        &admin4,
        &queue4,
        &sizes4,
        plan.rounds,
        plan.smoke,
        ", 4.x quorum",
        &mut rows,
    )
    .await?;
    testkit::delete_topology(&admin4, &exchange, &[&queue4]).await;
    broker4.close().await;

    let (Some(ceiling), Some(forwarder)) = (ceiling_1000, forwarder_1000) else {
        bail!("no 1,000-record measurement");
    };

    // Serial baseline: the same loop with one confirm in flight at a time.
    let n = if plan.smoke { 100 } else { 1_000 };
    let records_serial = to_raw(&make_records(n));
    let mut serial_times = Vec::new();
    for _ in 0..plan.rounds.min(3) {
        let mut options = BatchOptions::new(Duration::from_secs(10));
        options.max_in_flight = 1;
        let started = Instant::now();
        let report = engine::forward(
            &mut broker,
            &converter,
            &NoEnricher,
            &records_serial,
            Invocation::new(
                Utc::now(),
                Deadlines::new(
                    Instant::now() + Duration::from_secs(120),
                    Duration::from_secs(1),
                ),
            ),
            options,
        )
        .await;
        serial_times.push(started.elapsed());
        ensure!(report.published == n, "serial: {report:?}");
        purge(&admin, &queue, n).await?;
    }
    let serial = rate(n, &mut serial_times);
    rows.push((
        format!("serial baseline (1 confirm in flight), {n}"),
        format!("{serial:.0}"),
        format!("{:.2}", serial / ceiling),
    ));
    rows.push((
        "conversion alone (record JSON to message)".into(),
        format!("{conversion:.0}"),
        format!("{:.1}", conversion / ceiling),
    ));

    let cold = cold_start(&uri, &exchange, &queue, &admin, plan.smoke, false, None).await?;
    // EF_BASELINE_BIN's cold start and peaks, measured in the same run.
    let baseline_cold = match std::env::var("EF_BASELINE_BIN") {
        Ok(bin) if !plan.smoke => {
            Some(cold_start(&uri, &exchange, &queue, &admin, false, false, Some(&bin)).await?)
        }
        _ => None,
    };
    let many = environments(&uri, &exchange, &queue, &admin, plan).await?;
    // The Node peer needs scripts/peers.sh (make bench), not the smoke run.
    let against_peers = if plan.smoke {
        Vec::new()
    } else {
        peers::measure(&uri, &exchange, &admin, &queue, 5).await?
    };
    let per_event = if plan.smoke {
        Vec::new()
    } else {
        per_event_counts(&uri, &exchange, &queue, &admin, plan).await?
    };

    println!(
        "\nevent-forwarder benchmark: persistent messages, mean body {mean_body} B, to a \
         durable queue on RabbitMQ on 127.0.0.1 ({uri3}: Debian's 3.10, a classic queue; \
         rows marked 4.x: {uri4}, RabbitMQ 4 with Amazon MQ 4.2's settings, a quorum queue); \
         medians of {} rounds (3 for 10,000 records){}",
        plan.rounds,
        if plan.smoke { " (smoke run)" } else { "" },
        uri3 = event_forwarder::engine::redact_uri(&uri),
        uri4 = event_forwarder::engine::redact_uri(&uri4),
    );
    println!("{:<60} {:>12} {:>12}", "", "records/s", "vs ceiling");
    for (name, value, ratio) in &rows {
        println!("{name:<60} {value:>12} {ratio:>12}");
    }
    println!(
        "{:<46} {:>12.1}",
        "forwarder / serial baseline (1,000)",
        forwarder / serial
    );
    println!();
    print_cold(&cold, "");
    if let Some(cold) = &baseline_cold {
        print_cold(cold, "EF_BASELINE_BIN: ");
    }
    println!();
    println!(
        "8 batches of {} records at once, through the binary (medians of {} rounds):",
        many.records, many.rounds
    );
    println!("{:<60} {:>12} {:>12}", "", "records/s", "connections");
    for (name, rate, connections) in &many.rows {
        println!("{name:<60} {rate:>12.0} {connections:>12}");
    }
    if !against_peers.is_empty() {
        peers::print(&against_peers);
    }
    print_counts(&per_event);
    let binary = std::fs::metadata(env!("CARGO_BIN_EXE_event-forwarder"))?.len();
    println!(
        "{:<46} {:>9.1} MB",
        "binary (this build, x86_64)",
        binary as f64 / 1e6
    );
    let zip = format!(
        "{}/target/lambda/event-forwarder/bootstrap.zip",
        env!("CARGO_MANIFEST_DIR")
    );
    match std::fs::metadata(&zip) {
        Ok(m) => println!(
            "{:<46} {:>9.1} MB",
            "arm64 zip (cargo lambda build)",
            m.len() as f64 / 1e6
        ),
        Err(_) => println!(
            "{:<46} {:>12}",
            "arm64 zip (cargo lambda build)", "not built"
        ),
    }

    testkit::delete_topology(&admin, &exchange, &[&queue]).await;
    broker.close().await;
    Ok(())
}

/// The type of the bench's own queue.
#[derive(Clone, Copy)]
enum QueueKind {
    /// The broker's default (classic on 3.x).
    Default,
    Quorum,
}

/// The forwarder against the raw loop on one broker, for each batch size:
/// a row per rate, labelled with `label`. Returns the 1,000-record (or smoke)
/// ceiling and forwarder rates.
#[allow(clippy::too_many_arguments)]
async fn against_ceiling(
    broker: &mut AmqpBroker,
    raw: &Channel,
    converter: &Converter,
    exchange: &str,
    admin: &Channel,
    queue: &str,
    sizes: &[usize],
    rounds_per_size: usize,
    smoke: bool,
    label: &str,
    rows: &mut Vec<(String, String, String)>,
) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let mut ceiling_1000 = None;
    let mut forwarder_1000 = None;
    for &n in sizes {
        let records = make_records(n);
        let bodies = make_bodies(converter, &records)?;
        let records = to_raw(&records);
        let rounds = if n >= 10_000 { 3 } else { rounds_per_size };
        let mut raw_times = Vec::new();
        let mut fwd_times = Vec::new();
        for round in 0..rounds {
            // Which of the pair goes first alternates: the one that runs
            // right after a purge and a pause is not always the same.
            if round % 2 == 0 {
                raw_times.push(raw_loop(raw, exchange, &bodies).await?);
                purge(admin, queue, n).await?;
                fwd_times.push(forward_once(broker, converter, &records, admin, queue).await?);
            } else {
                fwd_times.push(forward_once(broker, converter, &records, admin, queue).await?);
                raw_times.push(raw_loop(raw, exchange, &bodies).await?);
                purge(admin, queue, n).await?;
            }
        }
        // Each round's forwarder run follows its own raw run, so the ratio
        // is taken per round and its median shown: drift in the broker's
        // disk and CPU between rounds cancels out within a pair.
        let mut ratios: Vec<f64> = raw_times
            .iter()
            .zip(&fwd_times)
            .map(|(raw, fwd)| raw.as_secs_f64() / fwd.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        let ratio = ratios[ratios.len() / 2];
        let ceiling = rate(n, &mut raw_times);
        let forwarder = rate(n, &mut fwd_times);
        rows.push((
            format!("raw lapin loop, {n} records (ceiling){label}"),
            format!("{ceiling:.0}"),
            "1.00".into(),
        ));
        rows.push((
            format!("forwarder, {n}-record batch{label}"),
            format!("{forwarder:.0}"),
            format!("{ratio:.2}"),
        ));
        if n == 1_000 || smoke {
            ceiling_1000 = Some(ceiling);
            forwarder_1000 = Some(forwarder);
        }
    }
    Ok((ceiling_1000, forwarder_1000))
}

/// Publishes pre-serialized bodies with confirms, pipelined: the most a
/// client can get through this broker on this machine.
/// One forwarder batch through the real publisher, timed; checks that every
/// record was confirmed and is in the queue, then empties it.
async fn forward_once(
    broker: &mut AmqpBroker,
    converter: &Converter,
    records: &[Box<serde_json::value::RawValue>],
    admin: &Channel,
    queue: &str,
) -> anyhow::Result<Duration> {
    let n = records.len();
    let options = BatchOptions::new(Duration::from_secs(10));
    let started = Instant::now();
    let report = engine::forward(
        broker,
        converter,
        &NoEnricher,
        records,
        Invocation::new(
            Utc::now(),
            Deadlines::new(
                Instant::now() + Duration::from_secs(120),
                Duration::from_secs(1),
            ),
        ),
        options,
    )
    .await;
    let elapsed = started.elapsed();
    ensure!(
        report.published == n && report.failure.is_none(),
        "forwarder: {report:?}"
    );
    // Every record the forwarder confirmed is in the queue.
    purge(admin, queue, n).await?;
    Ok(elapsed)
}

async fn raw_loop(
    channel: &Channel,
    exchange: &str,
    bodies: &[(String, Vec<u8>)],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut confirms = Vec::with_capacity(bodies.len());
    for (key, body) in bodies {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        confirms.push(
            channel
                .basic_publish(
                    exchange.into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await?,
        );
    }
    for c in confirms {
        ensure!(c.await?.is_ack(), "raw publish not acked");
    }
    Ok(started.elapsed())
}

/// Empties the queue after checking it holds exactly `expected` messages.
async fn purge(admin: &Channel, queue: &str, expected: usize) -> anyhow::Result<()> {
    let purged = admin
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    ensure!(
        purged as usize == expected,
        "{purged} messages in the queue, {expected} expected"
    );
    Ok(())
}

fn rate(n: usize, times: &mut [Duration]) -> f64 {
    times.sort();
    n as f64 / times[times.len() / 2].as_secs_f64()
}

fn median_rate(rounds: usize, n: usize, mut f: impl FnMut() -> Duration) -> f64 {
    let mut times: Vec<Duration> = (0..rounds).map(|_| f()).collect();
    rate(n, &mut times)
}

/// Records as the event source mapping sends them: JSON text.
fn to_raw(records: &[EventRecord]) -> Vec<Box<serde_json::value::RawValue>> {
    records
        .iter()
        .filter_map(|r| serde_json::value::to_raw_value(r).ok())
        .collect()
}

fn make_bodies(
    converter: &Converter,
    records: &[EventRecord],
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let out: Vec<_> = records
        .iter()
        .filter_map(|r| match converter.plan(r, Utc::now()) {
            Plan::Publish(m) => Some((m.routing_key, m.body)),
            _ => None,
        })
        .collect();
    ensure!(out.len() == records.len(), "every record converts");
    Ok(out)
}

/// The broker: the forwarder's topology plus a durable queue bound to
/// everything, shared by every measurement.
async fn setup(
    config: &Config,
    uri: &str,
    exchange: &str,
    kind: QueueKind,
) -> anyhow::Result<(AmqpBroker, Connection, Channel, String)> {
    let mut broker = AmqpBroker::new(amqp_settings(config));
    broker
        .ensure_ready(Instant::now() + Duration::from_secs(10))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = Connection::connect(uri, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ (make broker)")?;
    let admin = client.create_channel().await?;
    let queue = format!("{exchange}.all");
    let mut args = FieldTable::default();
    if let QueueKind::Quorum = kind {
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
    }
    admin
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    admin
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((broker, client, admin, queue))
}

/// The cold start, first invocation and peak RSS rows, their names after
/// `prefix`.
fn print_cold(cold: &ColdStart, prefix: &str) {
    println!(
        "{:<62} {:>9.1} ms",
        format!("{prefix}cold start to first poll (connection open)"),
        cold.init.as_secs_f64() * 1e3
    );
    println!(
        "{:<62} {:>9.1} ms",
        format!("{prefix}first invocation ({} records)", cold.first_records),
        cold.first.as_secs_f64() * 1e3
    );
    for (records, bytes, kb) in &cold.peaks {
        println!(
            "{:<62} {:>9.1} MB",
            format!(
                "{prefix}peak RSS, {records} records ({:.1} MB event)",
                *bytes as f64 / 1e6
            ),
            *kb as f64 / 1024.0
        );
    }
}

struct ColdStart {
    init: Duration,
    first: Duration,
    first_records: usize,
    /// (records, event bytes, peak RSS in kB after it).
    peaks: Vec<(usize, usize, u64)>,
}

/// Starts the built binary (or `program`, another build of the function)
/// under a local Runtime API: init time (spawn to first poll, broker
/// connection open), first invocation, and the peak RSS after the largest
/// batch.
async fn cold_start(
    uri: &str,
    exchange: &str,
    queue: &str,
    admin: &Channel,
    smoke: bool,
    function_log: bool,
    program: Option<&str>,
) -> anyhow::Result<ColdStart> {
    // The bench's topology is the contract's default (no QUEUE_TYPE), and
    // RUST_LOG reaches the function when its log is shown.
    let launch = match program {
        Some(bin) => Launch::program(&[bin]),
        None => Launch::forwarder(),
    };
    let mut launch = launch
        .env_remove("QUEUE_TYPE")
        .envs(&[("AMQP_URI", uri), ("EXCHANGE", exchange)]);
    if function_log {
        launch = launch.inherit_output();
        if let Ok(filter) = std::env::var("RUST_LOG") {
            launch = launch.env("RUST_LOG", &filter);
        }
    }
    let function = launch.start().await;
    let (api, spawned) = (function.api(), function.spawned());
    let result = async {
        let until = Instant::now() + Duration::from_secs(10);
        let first_poll = loop {
            if let Some(t) = api.first_poll() {
                break t;
            }
            ensure!(Instant::now() < until, "the function never polled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let init = first_poll - spawned;

        let first_records = if smoke { 100 } else { 1_000 };
        let event = event_json(first_records);
        let started = Instant::now();
        let response = api.invoke(&event, Duration::from_secs(60)).await;
        let first = started.elapsed();
        ensure!(
            matches!(&response, Some(Outcome::Response(r)) if r == &json!({"batchItemFailures": []})),
            "first invocation: {response:?}"
        );
        purge(admin, queue, first_records).await?;

        // Peak RSS is a high-water mark: the 6 MB event (Lambda's largest
        // synchronous payload, so the largest batch the event source mapping
        // can send) is measured before the 10,000 x 1 KB one (24 MB).
        let mut peaks = Vec::new();
        for records in if smoke { [200, 1_000] } else { [3_300, 10_000] } {
            let event = event_json(records);
            let bytes = serde_json::to_vec(&event)?.len();
            let response = api.invoke(&event, Duration::from_secs(120)).await;
            ensure!(
                matches!(&response, Some(Outcome::Response(r)) if r == &json!({"batchItemFailures": []})),
                "{records}-record invocation: {response:?}"
            );
            purge(admin, queue, records).await?;
            let status = std::fs::read_to_string(format!("/proc/{}/status", function.pid()))?;
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .context("VmHWM in /proc")?;
            peaks.push((records, bytes, kb));
        }
        Ok(ColdStart {
            init,
            first,
            first_records,
            peaks,
        })
    }
    .await;
    drop(function);
    result
}

fn print_environments(many: &Environments) {
    println!();
    println!(
        "8 batches of {} records at once, through the binary (medians of {} rounds):",
        many.records, many.rounds
    );
    println!("{:<60} {:>12} {:>12}", "", "records/s", "connections");
    for (name, rate, connections) in &many.rows {
        println!("{name:<60} {rate:>12.0} {connections:>12}");
    }
}

/// What [`environments`] measured.
struct Environments {
    records: usize,
    rounds: usize,
    /// (setting, records/s, connections the broker saw while it ran).
    rows: Vec<(String, f64, usize)>,
}

/// Eight batches (eight shards) forwarded at once: through one execution
/// environment serving one invocation at a time (standard Lambda), through
/// one serving eight at once (`AWS_LAMBDA_MAX_CONCURRENCY=8`, Lambda
/// Managed Instances), and through eight environments of one each (standard
/// Lambda with eight shards); the connections each holds, counted on the
/// broker.
async fn environments(
    uri: &str,
    exchange: &str,
    queue: &str,
    admin: &Channel,
    plan: &Settings,
) -> anyhow::Result<Environments> {
    const BATCHES: usize = 8;
    let records = if plan.smoke { 100 } else { 1_000 };
    let rounds = plan.rounds.clamp(1, 7);
    let events: Vec<Value> = (0..BATCHES).map(|_| event_json(records)).collect();
    let mut rows = Vec::new();
    // EF_BASELINE_BIN: another build of the function (e.g. an older
    // commit's) measured one invocation at a time and 8 in flight in the
    // same run, for an A/B of both paths.
    let baseline = std::env::var("EF_BASELINE_BIN").ok();
    let mut settings = vec![
        (
            "one environment, 1 invocation at a time".to_owned(),
            None,
            1,
            1,
        ),
        (
            "one environment, 8 invocations in flight".to_owned(),
            None,
            1,
            BATCHES,
        ),
        (
            "8 environments, 1 invocation at a time each".to_owned(),
            None,
            BATCHES,
            1,
        ),
    ];
    if let Some(bin) = &baseline {
        settings.insert(
            0,
            (
                "EF_BASELINE_BIN, one environment, 1 at a time".to_owned(),
                Some(bin.clone()),
                1,
                1,
            ),
        );
        settings.insert(
            2,
            (
                "EF_BASELINE_BIN, one environment, 8 in flight".to_owned(),
                Some(bin.clone()),
                1,
                BATCHES,
            ),
        );
    }
    // Every setting's functions run from the start, and each round runs
    // every setting in turn: drift of this shared machine between rounds
    // touches all of them alike.
    let mut started_settings = Vec::new();
    for (name, program, processes, concurrency) in settings {
        let mut functions = Vec::new();
        for _ in 0..processes {
            let launch = match &program {
                Some(bin) => Launch::program(&[bin.as_str()]),
                None => Launch::forwarder(),
            };
            let function = launch
                .env_remove("QUEUE_TYPE")
                .envs(&[
                    ("AMQP_URI", uri),
                    ("EXCHANGE", exchange),
                    ("AWS_LAMBDA_MAX_CONCURRENCY", &concurrency.to_string()),
                ])
                .start()
                .await;
            let until = Instant::now() + Duration::from_secs(10);
            while function.api().first_poll().is_none() {
                ensure!(Instant::now() < until, "the function never polled");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            functions.push(function);
        }
        started_settings.push((name, functions, Vec::new(), 0));
    }
    for _ in 0..rounds {
        for (name, functions, times, connections) in &mut started_settings {
            let started = Instant::now();
            let answers = testkit::join_all(
                events
                    .iter()
                    .enumerate()
                    .map(|(i, event)| {
                        functions[i % functions.len()]
                            .api()
                            .invoke(event, Duration::from_secs(120))
                    })
                    .collect(),
            )
            .await;
            times.push(started.elapsed());
            for answer in &answers {
                ensure!(
                    matches!(answer, Some(Outcome::Response(r)) if r == &json!({"batchItemFailures": []})),
                    "{name}: {answer:?}"
                );
            }
            *connections = functions
                .iter()
                .map(|f| connections_named(&f.connection_name()))
                .sum::<anyhow::Result<usize>>()?;
            purge(admin, queue, BATCHES * records).await?;
        }
    }
    for (name, _, mut times, connections) in started_settings {
        rows.push((name, rate(BATCHES * records, &mut times), connections));
    }
    Ok(Environments {
        records,
        rounds,
        rows,
    })
}

/// Instructions and system calls per event of this build and of
/// `EF_BASELINE_BIN`'s, warm, over 5 batches of 1,000 records (counts: they
/// do not depend on the machine's load as rates do).
async fn per_event_counts(
    uri: &str,
    exchange: &str,
    queue: &str,
    admin: &Channel,
    plan: &Settings,
) -> anyhow::Result<Vec<(String, counts::Counts)>> {
    let (records, batches) = if plan.smoke { (100, 1) } else { (1_000, 5) };
    let event = event_json(records);
    let env = [("AMQP_URI", uri), ("EXCHANGE", exchange)];
    let mut rows = Vec::new();
    if let Ok(bin) = std::env::var("EF_BASELINE_BIN") {
        let c = counts::measure(Some(&bin), &env, &event, records, batches, admin, queue).await?;
        rows.push(("EF_BASELINE_BIN".to_owned(), c));
    }
    let c = counts::measure(None, &env, &event, records, batches, admin, queue).await?;
    rows.push(("this build".to_owned(), c));
    Ok(rows)
}

fn print_counts(rows: &[(String, counts::Counts)]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "per event, warm function, 5 batches of 1,000 records (callgrind; CPU of every \
         thread, untraced; strace -f):"
    );
    println!(
        "{:<24} {:>14} {:>10} {:>10}   by call",
        "", "instructions", "CPU µs", "syscalls"
    );
    for (name, c) in rows {
        let calls: Vec<String> = c
            .by_call
            .iter()
            .filter(|(_, n)| *n >= 0.01)
            .map(|(call, n)| format!("{call} {n:.2}"))
            .collect();
        println!(
            "{name:<24} {:>14.0} {:>10.1} {:>10.2}   {}",
            c.instructions,
            c.cpu.as_secs_f64() * 1e6,
            c.syscalls,
            calls.join(", ")
        );
    }
}

/// The connections named `name` on the bench's broker (Debian's RabbitMQ on
/// this host, `make broker`).
fn connections_named(name: &str) -> anyhow::Result<usize> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "client_properties",
        ])
        .output()
        .context("rabbitmqctl (make broker)")?;
    ensure!(
        out.status.success(),
        "rabbitmqctl list_connections: {out:?}"
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("\"{name}\"")))
        .count())
}

fn event_json(n: usize) -> Value {
    let records: Vec<Value> = make_records(n)
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect();
    json!({ "Records": records })
}

/// `n` realistic event-store INSERTs over 200 aggregates: nested maps,
/// numbers, sets, a list of maps, a binary; about 1 KB of envelope each.
fn make_records(n: usize) -> Vec<EventRecord> {
    const TYPES: [&str; 4] = [
        "ProductCreated",
        "ProductPriceChanged",
        "StockAdjusted",
        "ProductRenamed",
    ];
    let description = "Lightweight trail running shoe with a breathable mesh upper, \
        a rock plate and a grippy outsole for wet and dry terrain. "
        .repeat(2);
    (0..n)
        .map(|i| {
            let aggregate = format!("prod-{:05}", i % 200);
            let version = i / 200 + 1;
            let record = json!({
                "eventID": format!("{:032x}", i),
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "eu-west-1",
                "eventSourceARN": "arn:aws:dynamodb:eu-west-1:123456789012:table/product-events/stream/2026-11-01T00:00:00.000",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1795348800 + i as u64,
                    "Keys": {"aggregateId": {"S": aggregate}, "version": {"N": version.to_string()}},
                    "SequenceNumber": format!("{}", 4_100_000_000_000_000_000_000u128 + i as u128),
                    "SizeBytes": 1100,
                    "StreamViewType": "NEW_IMAGE",
                    "NewImage": {
                        "aggregateId": {"S": aggregate},
                        "version": {"N": version.to_string()},
                        "eventType": {"S": TYPES[i % TYPES.len()]},
                        "eventVersion": {"S": "1.0"},
                        "aggregateType": {"S": "Product"},
                        "occurredAt": {"S": "2026-11-22T12:00:00.123Z"},
                        "correlationId": {"S": format!("corr-{:08x}", i * 7919)},
                        "causationId": {"S": format!("cmd-{:08x}", i * 7919)},
                        "payload": {"M": {
                            "sku": {"S": format!("SKU-{:05}", i % 200)},
                            "name": {"S": "Trail running shoe, model 2026"},
                            "description": {"S": description},
                            "price": {"M": {"amount": {"N": "119.99"}, "currency": {"S": "EUR"}, "taxRate": {"N": "0.19"}}},
                            "dimensions": {"M": {"widthCm": {"N": "11.5"}, "heightCm": {"N": "12"}, "depthCm": {"N": "31"}, "weightKg": {"N": "0.285"}}},
                            "tags": {"SS": ["outdoor", "running", "trail", "men", "waterproof"]},
                            "sizes": {"NS": ["41", "42", "43.5", "44", "45"]},
                            "variants": {"L": [
                                {"M": {"sku": {"S": "SKU-1-BLK"}, "color": {"S": "black"}, "stock": {"N": "12"}}},
                                {"M": {"sku": {"S": "SKU-1-RED"}, "color": {"S": "red"}, "stock": {"N": "0"}}},
                                {"M": {"sku": {"S": "SKU-1-BLU"}, "color": {"S": "blue"}, "stock": {"N": "7"}}}
                            ]},
                            "active": {"BOOL": true},
                            "discontinuedAt": {"NULL": true},
                            "thumbnailHash": {"B": "q83vEjRWeJASNFZ4kBI0VniQEjRWeJAS"},
                            "stockDelta": {"N": "-3"}
                        }}
                    }
                }
            });
            serde_json::from_value(record).unwrap_or_default()
        })
        .collect()
}
