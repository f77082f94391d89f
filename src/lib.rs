//! event-forwarder: an AWS Lambda function that turns the records of a
//! DynamoDB stream into integration events on a RabbitMQ exchange, with
//! publisher confirms and a partial batch response that never checkpoints
//! past an unconfirmed record. The public contract is `docs/CONTRACT.md`.
//!
//! # Layout
//! - [`config`]: settings from the environment, validated at cold start.
//! - [`envelope`]: the envelope type and its body bytes.
//! - [`record`]: a stream record read in place from its JSON text, and the
//!   DynamoDB-JSON to JSON transcoder.
//! - [`mapping`]: record to envelope to message, both mappings (pure).
//! - [`routing`]: routing-key template, AMQP properties and headers (pure).
//! - [`batch`]: the checkpoint rule: publish in order, confirm in windows,
//!   report the first record not handled.
//! - [`publisher`]: the broker port and its lapin adapter (connection,
//!   confirms, reconnect, topology), and the TLS trust roots it adds to the
//!   bundled ones (system store, `AMQP_CA_FILE`).
//! - [`secrets`]: broker credentials from Secrets Manager (signed call).
//! - [`telemetry`]: JSON logs, summary line, EMF metrics.
//! - [`handler`]: one invocation, wiring the above together.
//! - [`esm`]: the event source mapping's rules (checkpoint of a response,
//!   retries, bisect, OnFailure message), for the operations tool.
//! - [`shutdown`]: the SIGTERM handler and the extension Lambda needs to
//!   send it.

pub mod batch;
pub mod config;
pub mod envelope;
pub mod esm;
pub mod handler;
pub mod mapping;
pub mod publisher;
pub mod record;
pub mod routing;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;

pub use config::Config;
pub use handler::Forwarder;
