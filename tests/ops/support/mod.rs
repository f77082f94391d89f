//! What only this binary's suites use; the rest (the local loop, the
//! broker helpers, the function harness, the fault proxy) is in the
//! `testkit` crate.

pub mod scripted;
pub mod streams_proxy;
