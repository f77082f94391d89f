//! The draft of a message: what the mapping made of one record, decided
//! once (envelope, exchange, routing key, the item's trace context) and its
//! body written up to the payload's end, before the enricher sees it and
//! [`super::message::to_message`] makes it a message.

use std::borrow::Cow;

use super::dead_letter::Origin;

use super::message::{self, Added, Sending};
use crate::envelope::{Envelope, Payload};
use crate::publisher::Message;

/// A record's event, typed, its body written but for what an enricher
/// adds. It lasts as long as the record's text, not the parsed record: its
/// envelope's text borrows from the record's text, and its payload was
/// transcoded into the body while the parsed record was at hand.
#[derive(Debug, Clone)]
pub struct Draft<'a> {
    /// The envelope, but for its payload ([`Payload::Empty`] here): that is
    /// in the body ([`Draft::payload`]). Read-only: the body is written.
    pub(crate) envelope: Envelope<'a>,
    pub(crate) exchange: Cow<'a, str>,
    pub(crate) routing_key: String,
    /// The item's W3C trace context, checked.
    pub(crate) trace: TraceContext,
    pub(super) origin: Origin<'a>,
    /// The body up to the payload's end: the envelope's fields, then its
    /// payload from `payload_at` on. [`super::message::to_message`] adds
    /// an enricher's fields and closes it, in this buffer.
    pub(crate) body: Vec<u8>,
    payload_at: usize,
}

/// The item's `traceparent` and `tracestate`, each valid or left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl<'a> Draft<'a> {
    /// The draft of `envelope` with `payload`, its body written once: the
    /// head, then the payload transcoded to JSON text. Fails like
    /// [`Envelope::to_body`].
    pub(super) fn new(
        mut envelope: Envelope<'a>,
        payload: &Payload<'_>,
        exchange: Cow<'a, str>,
        routing_key: String,
        origin: Origin<'a>,
    ) -> Result<Self, &'static str> {
        envelope.payload = Payload::Empty;
        // Room for the rest of the body too: no regrowth per message.
        let mut body = Vec::with_capacity(384 + payload.hint());
        envelope.write_head(&mut body);
        let payload_at = body.len();
        payload.write(&mut body)?;
        Ok(Self {
            envelope,
            exchange,
            routing_key,
            trace: TraceContext::default(),
            origin,
            body,
            payload_at,
        })
    }

    /// The envelope's payload as JSON text, the exact bytes the body
    /// carries.
    pub fn payload(&self) -> &str {
        std::str::from_utf8(&self.body[self.payload_at..]).unwrap_or("{}")
    }

    /// What makes the dead letter of this draft's record, should it not be
    /// published after all (an enricher's reason, a check that failed).
    pub fn origin(&self) -> Origin<'a> {
        self.origin
    }

    /// A draft of `envelope` that is not the mapping's (tests elsewhere).
    #[cfg(test)]
    pub(crate) fn of(
        envelope: Envelope<'a>,
        exchange: &'a str,
        routing_key: &str,
        converter: &'a super::Converter,
    ) -> Self {
        let payload = envelope.payload.clone();
        let origin = Origin {
            raw: "{}",
            converter,
        };
        Self::new(
            envelope,
            &payload,
            Cow::Borrowed(exchange),
            routing_key.to_owned(),
            origin,
        )
        .expect("a test's payload is valid")
    }

    /// The message as the mapping alone makes it: nothing added, sent to
    /// its exchange (tests, tools, the benchmark).
    pub fn into_message(self) -> Message {
        message::to_message(self, Added::default(), Sending::default())
    }
}

/// Two drafts are the same when they make the same message: for the tests,
/// which compare plans (it clones both drafts to write their messages).
#[cfg(test)]
impl PartialEq for Draft<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.clone().into_message() == other.clone().into_message()
    }
}

#[cfg(test)]
impl Eq for Draft<'_> {}
