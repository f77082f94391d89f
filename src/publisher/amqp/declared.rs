//! The exchanges a channel has declared, so that a template's exchange is
//! declared once per channel rather than once per message.

use std::collections::HashMap;

/// The exchanges a channel has declared, the least recently used forgotten
/// past `MAX_EXCHANGES`: memory stays bounded, and an exchange forgotten is
/// declared again when used, a round trip that changes no outcome.
#[derive(Debug, Default)]
pub(super) struct Declared {
    last_used: HashMap<String, u64>,
    clock: u64,
}

impl Declared {
    pub(super) fn contains(&self, exchange: &str) -> bool {
        self.last_used.contains_key(exchange)
    }

    /// Remembers `exchange`, forgetting the least recently used one when
    /// more than `capacity` would be remembered.
    pub(super) fn insert(&mut self, exchange: &str, capacity: usize) {
        self.clock += 1;
        self.last_used.insert(exchange.to_owned(), self.clock);
        if self.last_used.len() > capacity.max(1)
            && let Some(oldest) = self
                .last_used
                .iter()
                .min_by_key(|(_, used)| **used)
                .map(|(name, _)| name.clone())
        {
            self.last_used.remove(&oldest);
        }
    }

    pub(super) fn used(&mut self, exchange: &str) {
        self.clock += 1;
        if let Some(used) = self.last_used.get_mut(exchange) {
            *used = self.clock;
        }
    }

    pub(super) fn clear(&mut self) {
        self.last_used.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_exchange_is_forgotten_past_the_bound() {
        let mut d = Declared::default();
        d.insert("a", 2);
        d.insert("b", 2);
        d.used("a");
        d.insert("c", 2);
        assert!(d.contains("a") && d.contains("c") && !d.contains("b"));
        d.clear();
        assert!(!d.contains("a"));
    }
}
