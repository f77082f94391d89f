//! `make bench` (second part): a backfill's throughput through the function,
//! against the broker's ceiling in the same run.
//!
//! 10,000 events over 200 aggregates in moto's table, `forwarder-ops
//! backfill --to-queue` (release build) through the release function under
//! `cargo lambda watch`, into one durable queue; then the same message
//! bodies published straight to that queue with confirms, pipelined: the
//! most a client gets through this broker on this machine. Reported as
//! records/s and as a ratio, since these machines are small and noisy.
//! Then the same backfill with `--workers 4` and `--workers 16`: events per
//! second of the whole run, each worker with its own invocations.

use std::time::Instant;

use anyhow::{Context, ensure};
use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    options::{QueueDeleteOptions, QueuePurgeOptions},
    types::FieldTable,
};
use testkit::{Function, local};

const EVENTS: usize = 10_000;
const AGGREGATES: usize = 200;
const CEILING_ROUNDS: usize = 3;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test` builds benches; this one needs the local loop.
        return Ok(());
    }
    let uri = std::env::var("TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let stamp = std::process::id();
    let table = local::Table::event_store(&format!("bench-backfill-{stamp}")).await;
    let queue = format!("bench-backfill-{stamp}");
    let exchange = format!("bench.backfill.{stamp}");
    let function = Function::watch(&[
        ("AMQP_URI", &uri),
        ("EXCHANGE", &exchange),
        ("REPLAY_QUEUES", "bench-backfill-*"),
    ]);
    let client = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ (make broker)")?;
    let channel = client.create_channel().await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;

    write_history(&table).await?;
    let backfill_with = |workers: u32| {
        let (function, table, queue) = (&function, &table.name, &queue);
        async move {
            let workers = workers.to_string();
            let args = [
                "backfill",
                "--table",
                table,
                "--to-queue",
                queue,
                "--workers",
                &workers,
            ];
            let started = Instant::now();
            let run = local::run(function, &args).await;
            let took = started.elapsed();
            ensure!(
                run.success && run.count("forwarded") == EVENTS as u64,
                "{run:?}"
            );
            Ok::<_, anyhow::Error>((run, took))
        }
    };
    let (run, backfill) = backfill_with(1).await?;

    // The bodies that arrived, for the ceiling.
    let mut bodies = Vec::with_capacity(EVENTS);
    while let Some(m) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
    {
        bodies.push(m.delivery.data);
    }
    ensure!(
        bodies.len() == EVENTS,
        "{} of {EVENTS} events in the queue",
        bodies.len()
    );
    let mean_body = bodies.iter().map(Vec::len).sum::<usize>() / EVENTS;
    let publisher = client.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut rounds = Vec::new();
    for _ in 0..CEILING_ROUNDS {
        let started = Instant::now();
        let mut confirms = Vec::with_capacity(EVENTS);
        for body in &bodies {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            confirms.push(
                publisher
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
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
        rounds.push(started.elapsed());
        channel
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await?;
    }
    rounds.sort();
    // The same backfill by more workers (the queue emptied between runs).
    let mut scaled = Vec::new();
    for workers in [4, 16] {
        let (_, took) = backfill_with(workers).await?;
        scaled.push((workers, EVENTS as f64 / took.as_secs_f64()));
        channel
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await?;
    }
    let ceiling = EVENTS as f64 / rounds[rounds.len() / 2].as_secs_f64();
    let whole = EVENTS as f64 / backfill.as_secs_f64();
    // moto's Query reads its whole table for each aggregate: the time spent
    // invoking the function is what the function and the broker cost.
    let sending: f64 = run.summary["sending_seconds"].parse()?;
    let through = EVENTS as f64 / sending;

    println!(
        "\nbackfill benchmark: {EVENTS} events over {AGGREGATES} aggregates in moto's table \
         (mean body {mean_body} B), to one durable queue"
    );
    println!("{:<46} {:>12} {:>12}", "", "records/s", "vs ceiling");
    println!(
        "{:<46} {:>12.0} {:>12.2}",
        "backfill, time invoking the function",
        through,
        through / ceiling
    );
    println!(
        "{:<46} {:>12.0} {:>12.2}",
        "backfill, whole run (reading moto included)",
        whole,
        whole / ceiling
    );
    for (workers, rate) in &scaled {
        println!(
            "{:<46} {:>12.0} {:>12.2}",
            format!("backfill --workers {workers}, whole run"),
            rate,
            rate / ceiling
        );
    }
    println!(
        "{:<46} {:>12.0} {:>12}",
        format!("ceiling: raw confirms (median of {CEILING_ROUNDS})"),
        ceiling,
        "1.00"
    );
    println!(
        "{:<46} {:>9.1} s",
        "backfill wall time (scan, queries, invokes)",
        backfill.as_secs_f64()
    );
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    Ok(())
}

/// Writes the events, 25 to a BatchWriteItem, aggregates interleaved.
async fn write_history(table: &local::Table) -> anyhow::Result<()> {
    let mut next = vec![0u64; AGGREGATES];
    let mut batch = Vec::new();
    for i in 0..EVENTS {
        let a = (i * 7919) % AGGREGATES;
        next[a] += 1;
        let mut item = local::Table::event(&format!("agg-{a:03}"), next[a], "StockAdjusted");
        item.insert(
            "note".into(),
            aws_sdk_dynamodb::types::AttributeValue::S("x".repeat(200)),
        );
        batch.push(
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build()?)
                .build(),
        );
        if batch.len() == 25 || i == EVENTS - 1 {
            table
                .dynamodb
                .batch_write_item()
                .request_items(&table.name, std::mem::take(&mut batch))
                .send()
                .await?;
        }
    }
    Ok(())
}
