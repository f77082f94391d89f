//! event-forwarder: an AWS Lambda function that turns the records of a
//! DynamoDB stream into integration events on a RabbitMQ exchange, with
//! publisher confirms and a partial batch response that never checkpoints
//! past an unconfirmed record. The public contract is `docs/CONTRACT.md`.
//!
//! # Two programs, one library
//! - `src/main.rs`, the function: wiring only, [`run`].
//! - `src/bin/forwarder-ops/`, the operations tool (feature `ops`, which
//!   brings the AWS SDK clients the function never links): one module per
//!   command (`stream`, `redrive`, `backfill`) over a shared invoker
//!   (Lambda Invoke API) and stream reader. It reaches the broker only
//!   through the function.
//!
//! # What the library offers
//! - The function: [`run`], or [`run_with`] an [`Enricher`] (a team's own
//!   `main.rs`); [`Forwarder`] and [`Config`] to run it in-process.
//! - The extension point: [`enrich`].
//! - [`convert`]: a stream record to the message the function would
//!   publish, without a broker (the tool, benchmarks, fuzzing).
//! - [`engine`]: the checkpoint rule over the broker port and its lapin
//!   adapter, for benchmarks and tests that drive a batch themselves.
//! - `esm` (feature `ops`): the event source mapping's rules, for the tool.
//!
//! Everything else is private.
//!
//! # Layout
//! - `config`: settings from the environment, validated at cold start.
//! - `envelope`: the envelope type and its body bytes (head, payload).
//! - `split`: an invocation's body to its records' slices, without reading
//!   them (pure).
//! - `record`: a stream record read in place from its JSON text, and the
//!   DynamoDB-JSON to JSON transcoder.
//! - `mapping/`: record to message draft (envelope, exchange, routing key,
//!   the item's trace context, the body written up to the payload's end),
//!   a file per mapping; a draft carries its dead letter; `message.rs`
//!   turns a draft into the message, the one place a message is shaped
//!   (properties, headers, trace context, queue redirect, an enricher's
//!   fields in the body) (pure).
//! - `enrich`: the extension point: an [`Enricher`] sees the draft, typed,
//!   and adds to it, skips or dead-letters it, between mapping and
//!   publishing.
//! - `routing`: the routing-key template the configuration parses (pure).
//! - `trace`: W3C trace context: the item's, checked, or the invocation's
//!   X-Ray trace as a `traceparent` (pure).
//! - `batch/`: the checkpoint rule (`mod.rs`), the engine that publishes in
//!   order (`run.rs`), each draft through the enricher (`enrichment.rs`),
//!   the confirm window (`window.rs`, a `Window` per pass on a channel).
//! - `publisher/`: the broker port; `amqp/`, its lapin adapter cut by
//!   concern (connection, channel, topology, properties, confirms); the TLS
//!   trust roots added to the bundled ones (system store, `AMQP_CA_FILE`).
//! - `uri`: the broker URI, checked, and never shown with its password.
//! - `secrets`: broker credentials from Secrets Manager (signed call).
//! - `telemetry`: JSON logs, summary line, EMF metrics.
//! - `handler`: one invocation, wiring the above together.
//! - `esm`: the event source mapping's rules (checkpoint of a response,
//!   retries, bisect, OnFailure message), for the operations tool.
//! - `shutdown`: the SIGTERM handler and the extension Lambda needs to
//!   send it.
//! - `runtime`: the function's life for `main.rs`.

#![warn(missing_docs)]

mod batch;
mod config;
pub mod enrich;
mod envelope;
#[cfg(feature = "ops")]
pub mod esm;
mod handler;
mod mapping;
mod publisher;
mod record;
mod routing;
mod runtime;
mod secrets;
mod shutdown;
mod split;
mod telemetry;
mod trace;
mod uri;

// The function: what `main.rs` calls, and a team's own `main.rs` with an
// enricher.
pub use batch::RecordText;
pub use config::{Config, ConfigError};
pub use enrich::{Enricher, Enrichment};
pub use handler::{Forwarder, StreamBatch};
pub use runtime::{run, run_with};

/// A stream record to the message the function would publish, without a
/// broker: for the operations tool, benchmarks and fuzzing (pure).
pub mod convert {
    pub use crate::config::{AttributeNames, MappingConfig, MappingKind};
    pub use crate::mapping::message::{HEADER_BUDGET, header_bytes, within_budget};
    pub use crate::mapping::{Converter, Draft, MESSAGE_ID_NAMESPACE, MappingError, Plan, Planned};
    pub use crate::publisher::{HeaderValue, Message, Properties};
    pub use crate::record::BACKFILL_SOURCE;
}

/// The engine beneath [`Forwarder`]: the checkpoint rule over the broker
/// port, and the port's lapin adapter. For benchmarks and tests that drive
/// a batch themselves, or a function that brings its own broker.
pub mod engine {
    pub use crate::batch::{
        BatchOptions, BatchReport, Deadlines, Failure, Invocation, Outcome, forward, response,
    };
    pub use crate::config::BrokerAddress;
    pub use crate::handler::{NotABatch, amqp_settings, parse_batch};
    pub use crate::publisher::amqp::{AmqpBroker, AmqpSettings};
    pub use crate::publisher::{Broker, Confirm, Confirmation, PublishError, Reset, Returned};
    pub use crate::uri::{AmqpUri, redact_uri};
}

/// The generator of the unit tests that generate their input: seeded from
/// `EF_SEED` to replay a failure, else at random; each failing assertion
/// prints the seed.
#[cfg(test)]
fn test_rng() -> (u64, fastrand::Rng) {
    let seed = std::env::var("EF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    (seed, fastrand::Rng::with_seed(seed))
}
