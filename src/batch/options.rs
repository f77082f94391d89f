//! When the batch stops publishing and waiting, and how much it keeps in
//! flight: the settings of the loop that are not part of the record
//! mapping.

use std::time::{Duration, Instant};

/// How many confirms may be outstanding before the loop waits for the
/// oldest: the largest batch the event source mapping sends. A smaller
/// window starves the broker's confirm batching (a 1,000 window gave 0.68 of
/// the ceiling on 10,000-record batches, this one 0.8 to 0.86); each
/// confirm in flight costs a few hundred bytes.
pub const MAX_IN_FLIGHT: usize = 10_000;

/// Mid-batch reconnects allowed after a channel or connection loss. One is
/// enough to survive a connection that died while the environment was frozen.
pub const MAX_RECONNECTS: u32 = 1;

/// When to stop publishing and when to stop waiting for confirms.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// No record is published after this instant (deadline minus
    /// `DEADLINE_MARGIN_MS`).
    pub publish_until: Instant,
    /// No confirm is awaited after this instant (deadline minus a quarter of
    /// the margin), which leaves time to answer.
    pub answer_by: Instant,
}

impl Deadlines {
    /// Publishing stops `margin` before `deadline`, the invocation's.
    pub fn new(deadline: Instant, margin: Duration) -> Self {
        let now = Instant::now();
        let before = |d: Duration| deadline.checked_sub(d).unwrap_or(now).max(now);
        Self {
            publish_until: before(margin),
            answer_by: before(margin / 4),
        }
    }
}

/// Settings of the loop that are not part of the record mapping.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// The longest wait for one confirm (`CONFIRM_TIMEOUT_MS`).
    pub confirm_timeout: Duration,
    /// Messages published and not yet confirmed, at most.
    pub max_in_flight: usize,
    /// Reconnects one batch may make.
    pub max_reconnects: u32,
}

impl BatchOptions {
    /// The defaults, with this confirm timeout.
    pub fn new(confirm_timeout: Duration) -> Self {
        Self {
            confirm_timeout,
            max_in_flight: MAX_IN_FLIGHT,
            max_reconnects: MAX_RECONNECTS,
        }
    }
}
