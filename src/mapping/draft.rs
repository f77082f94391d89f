//! The draft of a message: what the mapping made of one record, decided
//! once (envelope, exchange, routing key, the item's trace context), before
//! the enricher sees it and [`crate::routing::to_message`] writes it.

use std::borrow::Cow;

use super::dead_letter::Origin;
use crate::enrich::Added;
use crate::envelope::Envelope;
use crate::publisher::Message;
use crate::routing::{self, Sending};

/// A record's event, not yet bytes. Its envelope is detached from the
/// record ([`Envelope::into_owned`]): the payload is JSON text, exactly the
/// bytes the body will carry.
#[derive(Debug, Clone)]
pub struct Draft<'a> {
    pub envelope: Envelope<'static>,
    pub exchange: Cow<'a, str>,
    pub routing_key: String,
    /// The item's W3C trace context, checked.
    pub trace: TraceContext,
    pub(super) origin: Origin<'a>,
}

/// The item's `traceparent` and `tracestate`, each valid or left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl<'a> Draft<'a> {
    /// The envelope's payload as JSON text, as the body carries it.
    pub fn payload(&self) -> &str {
        self.envelope.payload.json().unwrap_or("{}")
    }

    /// What makes the dead letter of this draft's record, should it not be
    /// published after all (an enricher's reason, a check that failed).
    pub fn origin(&self) -> Origin<'a> {
        self.origin
    }

    /// A draft of `envelope` that is not the mapping's (tests elsewhere).
    #[cfg(test)]
    pub(crate) fn of(
        envelope: Envelope<'static>,
        exchange: &'a str,
        routing_key: &str,
        converter: &'a super::Converter,
    ) -> Self {
        Self {
            envelope,
            exchange: Cow::Borrowed(exchange),
            routing_key: routing_key.to_owned(),
            trace: TraceContext::default(),
            origin: Origin {
                raw: "{}",
                converter,
            },
        }
    }

    /// The message as the mapping alone makes it: nothing added, sent to
    /// its exchange (tests, tools, the benchmark).
    pub fn into_message(self) -> Message {
        routing::to_message(self, Added::default(), Sending::default())
    }
}

/// Two drafts are the same when they make the same message.
impl PartialEq for Draft<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.clone().into_message() == other.clone().into_message()
    }
}

impl Eq for Draft<'_> {}
