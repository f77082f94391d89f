//! The integration tests that need only the function (default features):
//! one binary, a module per suite. `make test` runs each suite on its own
//! (`cargo test --test integration <suite>::`), so that suites never run
//! at the same time (docs/development.md). The shared kit is the `testkit`
//! crate: `testkit::Function` starts the function, `testkit::TestBroker`
//! looks at what arrived.
//!
//! Where a new test goes:
//! - what the forwarder does with a broker (queues, properties, batch
//!   response, reconnects), through the library: `broker`;
//! - the real binary under a Lambda runtime API (logs, metrics, shutdown,
//!   trace context): `lambda_runtime`;
//! - a fault (broker restarts, alarms, the network), against the fault
//!   node: `faults`; a cluster maintenance: `cluster`;
//! - the broker's connection limit, invocations served concurrently over
//!   one connection: `concurrency`;
//! - TLS, secrets, what must never be logged: `security`;
//! - hostile or extreme input: `hostile` (each case named), and `hunt`,
//!   the stall hunter that generates them (seeded); events of AWS's tooling:
//!   `sam_event`; template.yaml's rules: `template`;
//! - the shipped artefact (ignored by a plain run): `artefact` (under
//!   qemu), `sam_local` (under `sam local invoke`).
//!
//! Something that needs forwarder-ops or the AWS SDK goes in `tests/ops`.
//! Helpers only these suites use are in `support`; a helper both binaries
//! need goes in `testkit`.

mod support;

mod artefact;
mod broker;
mod cluster;
mod concurrency;
mod faults;
mod hostile;
mod hunt;
mod lambda_runtime;
mod sam_event;
mod sam_local;
mod security;
mod template;
