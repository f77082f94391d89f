//! The integration tests that run the operations tool, forwarder-ops, or
//! the AWS SDK (feature `ops`): one binary, a module per suite. `make test`
//! runs each suite on its own (`cargo test --features ops --test ops
//! <suite>::`), so that suites never run at the same time
//! (docs/development.md). The shared kit is the `testkit` crate
//! (`testkit::local`: moto, the local loop, runs of the tool).
//!
//! Where a new test goes:
//! - the local loop end to end (items into moto's table, its stream,
//!   `forwarder-ops stream`, the function under `cargo lambda watch`,
//!   RabbitMQ): `local_stream`;
//! - a rule of the event source mapping held to AWS's (retries, bisect,
//!   OnFailure, filters, iterators), against a scripted function:
//!   `local_stream::mapping`;
//! - redrive and backfill: `recovery`; S3 OnFailure objects written by
//!   `stream` and redriven from the bucket or from copies: `s3_redrive`;
//! - the library's extension point (an enricher over a read model): `enrich`;
//! - the deploy paths (cargo-lambda, SAM) against moto: `deploy`.
//!
//! Something that needs only the function goes in `tests/integration`.
//! Helpers only these suites use are in `support`; a helper both binaries
//! need goes in `testkit`.

mod support;

mod deploy;
mod enrich;
mod local_stream;
mod recovery;
mod s3_redrive;
