//! What only this binary's suites use; the rest (the broker helpers, the
//! function harness, the runtime API stand-in, the fault proxy) is in the
//! `testkit` crate.

pub mod fault_node;
pub mod secrets;
pub mod stream;
pub mod tls;
