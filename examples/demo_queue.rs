//! A tiny consumer for `make run`: binds a queue to the forwarder's
//! exchange, then prints what arrived.
//!
//! ```text
//! cargo run --example demo_queue -- topology <exchange>
//! cargo run --example demo_queue -- bind <exchange> <queue>
//! cargo run --example demo_queue -- show <queue> [<queue>...]
//! cargo run --example demo_queue -- wait <queue> <count>
//! cargo run --example demo_queue -- delete <exchange> [<queue>...]
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let uri = std::env::var("AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let connection = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["topology", exchange] => topology(&uri, exchange).await,
        ["bind", exchange, queue] => bind(&connection, exchange, queue).await,
        ["show", queues @ ..] if !queues.is_empty() => {
            for q in queues {
                show(&connection, q).await?;
            }
            Ok(())
        }
        ["delete", exchange, queues @ ..] => delete(&connection, exchange, queues).await,
        ["wait", queue, count] => wait(&connection, queue, count.parse()?).await,
        _ => bail!(
            "usage: demo_queue topology <exchange> | bind <exchange> <queue> | show <queue>... | wait <queue> <count> | delete <exchange> [<queue>...]"
        ),
    }
}

/// Declares the forwarder's topology for `exchange` as its cold start does
/// (the crate's own code; `QUEUE_TYPE` from the environment), so that a
/// queue can be bound before a function that only starts when invoked
/// (`sam local invoke`) publishes its first event.
async fn topology(uri: &str, exchange: &str) -> anyhow::Result<()> {
    let config = event_forwarder::Config::from_lookup(|name| match name {
        "AMQP_URI" => Some(uri.to_string()),
        "EXCHANGE" => Some(exchange.to_string()),
        "AMQP_SECRET_ARN" => None,
        other => std::env::var(other).ok(),
    })
    .context("the forwarder's settings")?;
    let forwarder = event_forwarder::Forwarder::start(config)
        .await
        .context("declaring the forwarder's topology")?;
    forwarder.shutdown().await;
    println!("topology of {exchange} declared");
    Ok(())
}

async fn bind(connection: &Connection, exchange: &str, queue: &str) -> anyhow::Result<()> {
    // The forwarder declares its exchange during init; wait for it.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let probe = connection.create_channel().await?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let exists = probe
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
            .is_ok();
        if exists {
            break;
        }
        if Instant::now() > until {
            bail!("exchange {exchange} was not declared by the function");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let channel = connection.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("queue {queue} bound to {exchange} with '#'");
    Ok(())
}

/// Waits (at most 60 s) until `queue` holds `count` messages, without taking
/// them, and prints the time it did, in epoch milliseconds.
async fn wait(connection: &Connection, queue: &str, count: u32) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let channel = connection.create_channel().await?;
    loop {
        let q = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
        if q.message_count() >= count {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            println!("{}", now.as_millis());
            return Ok(());
        }
        if Instant::now() > until {
            bail!(
                "{queue} holds {} of {count} messages after 60 s",
                q.message_count()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn show(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let mut messages = Vec::new();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await?
    {
        messages.push(m.delivery);
    }
    println!("\n== {queue}: {} message(s)", messages.len());
    for d in messages {
        let p = &d.properties;
        let text = |v: &Option<lapin::types::ShortString>| {
            v.as_ref().map(|s| s.to_string()).unwrap_or_default()
        };
        println!(
            "-- routing key {} | type {} | message_id {}",
            d.routing_key,
            text(p.kind()),
            text(p.message_id())
        );
        if let Some(headers) = p.headers() {
            if let Some(AMQPValue::LongString(e)) = headers.inner().get("x-error") {
                println!("   x-error: {e}");
            }
        }
        // The body as it is on the wire: field order and exact numbers.
        println!("{}", String::from_utf8_lossy(&d.data));
    }
    Ok(())
}

/// Removes the forwarder's topology for `exchange` (the exchange, its
/// `.unrouted` and `.dead-letter` exchanges and queues) and `queues`.
async fn delete(connection: &Connection, exchange: &str, queues: &[&str]) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let own = [
        format!("{exchange}.unrouted"),
        format!("{exchange}.dead-letter"),
    ];
    for queue in queues.iter().copied().chain(own.iter().map(String::as_str)) {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting queue {queue}"))?;
    }
    for name in [exchange].into_iter().chain(own.iter().map(String::as_str)) {
        channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await
            .with_context(|| format!("deleting exchange {name}"))?;
    }
    println!("deleted {exchange} and its queues");
    Ok(())
}
