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
//! Both use the library below: the mapping, the envelope, the checkpoint
//! rule, and the event source mapping's rules ([`esm`]).
//!
//! # Layout
//! - [`config`]: settings from the environment, validated at cold start.
//! - [`envelope`]: the envelope type and its body bytes (head, payload).
//! - [`record`]: a stream record read in place from its JSON text, and the
//!   DynamoDB-JSON to JSON transcoder.
//! - [`mapping`]: record to message draft (envelope, exchange, routing
//!   key, the item's trace context, the body written up to the payload's
//!   end), both mappings; a draft carries its dead letter (pure).
//! - [`enrich`]: the extension point: an [`enrich::Enricher`] sees the
//!   draft, typed, and adds to it, skips or dead-letters it, between
//!   mapping and publishing.
//! - [`routing`]: routing-key template, and [`routing::to_message`], the
//!   one place a draft becomes a message: properties, headers, trace
//!   context, queue redirect, an enricher's fields in the body (pure).
//! - [`trace`]: W3C trace context: the item's, checked, or the invocation's
//!   X-Ray trace as a `traceparent` (pure).
//! - [`batch`]: the checkpoint rule: publish in order (each draft through
//!   the enricher), confirm in windows, report the first record not handled.
//! - [`publisher`]: the broker port and its lapin adapter (connection,
//!   confirms, reconnect, topology), and the TLS trust roots it adds to the
//!   bundled ones (system store, `AMQP_CA_FILE`).
//! - [`uri`]: the broker URI, checked, and never shown with its password.
//! - [`secrets`]: broker credentials from Secrets Manager (signed call).
//! - [`telemetry`]: JSON logs, summary line, EMF metrics.
//! - [`handler`]: one invocation, wiring the above together.
//! - [`esm`]: the event source mapping's rules (checkpoint of a response,
//!   retries, bisect, OnFailure message), for the operations tool.
//! - [`shutdown`]: the SIGTERM handler and the extension Lambda needs to
//!   send it.
//! - [`runtime`]: the function's life for `main.rs`: [`run`], or
//!   [`run_with`] an enricher.

pub mod batch;
pub mod config;
pub mod enrich;
pub mod envelope;
pub mod esm;
pub mod handler;
pub mod mapping;
pub mod publisher;
pub mod record;
pub mod routing;
pub mod runtime;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
pub mod uri;

pub use config::Config;
pub use enrich::{Enricher, Enrichment};
pub use handler::Forwarder;
pub use runtime::{run, run_with};
