//! The extension point: the forwarder as a library. An [`Enricher`] sees
//! each record's event after the mapping and before it is published, and may
//! add fields to its `payload` or headers to its message (data from a read
//! model, say, when the integration event needs a broader context than the
//! domain event), skip it, or dead-letter it with a reason.
//!
//! It runs inside the batch loop, so the checkpoint rule holds: an error is
//! a failure of that record (it and everything after it are retried), never
//! a panic or a silent drop, and no enrichment may outlast the invocation's
//! deadline margin. The shipped function uses [`NoEnricher`]; a team's own
//! `main.rs` passes its enricher to [`crate::run_with`].

use std::{borrow::Cow, collections::HashMap, future::Future};

use serde::de::IgnoredAny;
use serde_json::{Map, Value, value::RawValue};

use crate::publisher::{HeaderValue, Message};

/// Decides, for each event, what is added to it or whether it goes out.
pub trait Enricher: Send + Sync + 'static {
    /// State kept for one invocation, made fresh for each batch: a cache of
    /// read-model lookups, so a batch with many events of one aggregate
    /// reads its data once.
    type Batch: Default + Send;

    /// Called once per event, in stream order, before it is published. The
    /// error's text goes into the logs: never put payload values in it.
    fn enrich(
        &self,
        event: &Event<'_>,
        batch: &mut Self::Batch,
    ) -> impl Future<Output = Result<Enrichment, EnrichError>> + Send;
}

/// The shipped function's enricher: every event as the mapping made it.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnricher;

impl Enricher for NoEnricher {
    type Batch = ();

    async fn enrich(&self, _event: &Event<'_>, _batch: &mut ()) -> Result<Enrichment, EnrichError> {
        Ok(Enrichment::keep())
    }
}

/// An event as an enricher sees it: the message the forwarder would
/// publish.
#[derive(Debug)]
pub struct Event<'a> {
    message: &'a Message,
}

impl<'a> Event<'a> {
    pub(crate) fn new(message: &'a Message) -> Self {
        Self { message }
    }

    /// The envelope's `messageId`.
    pub fn message_id(&self) -> &str {
        &self.message.properties.message_id
    }

    /// The envelope's `messageType`.
    pub fn message_type(&self) -> &str {
        self.message.properties.kind.as_deref().unwrap_or_default()
    }

    /// The envelope's `partitionKey` (the aggregate id, or the item key).
    pub fn partition_key(&self) -> &str {
        self.header("partitionKey").unwrap_or_default()
    }

    /// The exchange and routing key it goes to.
    pub fn exchange(&self) -> &str {
        &self.message.exchange
    }

    /// The routing key it is published with.
    pub fn routing_key(&self) -> &str {
        &self.message.routing_key
    }

    /// A string header of the message (`partitionKey`, `messageVersion`,
    /// `sequenceNumber`, `traceparent`...).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.message
            .properties
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| match v {
                HeaderValue::String(s) => Some(s.as_str()),
                HeaderValue::Int(_) => None,
            })
    }

    /// The envelope as the message body holds it (UTF-8 JSON).
    pub fn body(&self) -> &[u8] {
        &self.message.body
    }

    /// The envelope parsed. Numbers beyond an `f64` lose digits here; the
    /// published body keeps them as they are.
    pub fn envelope(&self) -> serde_json::Result<Value> {
        serde_json::from_slice(&self.message.body)
    }
}

/// What becomes of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Enrichment {
    /// Publish it, with these fields added to its `payload` and these
    /// headers added to its message.
    Publish {
        /// Fields added to the end of the `payload` object.
        payload: Map<String, Value>,
        /// String headers added to the message.
        headers: Vec<(String, String)>,
    },
    /// Not an event for consumers after all: counted as skipped.
    Skip(String),
    /// Cannot be published: the record goes to the dead-letter exchange
    /// with this reason (`x-error`), and the batch goes on.
    DeadLetter(String),
}

impl Enrichment {
    /// Publish the event as it is.
    pub fn keep() -> Self {
        Enrichment::Publish {
            payload: Map::new(),
            headers: Vec::new(),
        }
    }

    /// Adds a field to the payload (of a `Publish`).
    pub fn with_field(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        if let Enrichment::Publish { payload, .. } = &mut self {
            payload.insert(name.into(), value.into());
        }
        self
    }

    /// Adds a header to the message (of a `Publish`).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Enrichment::Publish { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

/// An enricher that could not decide (its read model is unreachable, say):
/// the record fails by the checkpoint rule and is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnrichError(pub String);

impl EnrichError {
    /// An error with this reason (no payload values in it).
    pub fn new(reason: impl std::fmt::Display) -> Self {
        Self(reason.to_string())
    }
}

/// Headers the forwarder sets itself; an enricher may not replace them.
const OWN_HEADERS: [&str; 7] = [
    "partitionKey",
    "messageVersion",
    "aggregateVersion",
    "sequenceNumber",
    "traceparent",
    "tracestate",
    "routingKey",
];

/// The most header bytes an enricher may add: the broker takes properties
/// and headers in one frame (16 KiB at the least `frame_max` accepted).
const MAX_ADDED_HEADER_BYTES: usize = 4096;

/// Applies a `Publish` enrichment to `message`: payload fields are spliced
/// into the body (the payload is the envelope's last field), so what was
/// there keeps its exact bytes. `Err` is the reason to dead-letter the
/// record instead: an addition that would replace a payload field or a
/// header of the forwarder's, or headers too large for a frame.
pub(crate) fn apply(
    message: &mut Message,
    payload: Map<String, Value>,
    headers: Vec<(String, String)>,
) -> Result<(), String> {
    let mut added = 0;
    for (name, value) in &headers {
        if OWN_HEADERS.contains(&name.as_str()) || name.starts_with("x-") {
            return Err(format!(
                "enrichment sets the header `{name}`, which is the forwarder's"
            ));
        }
        if name.is_empty() || name.len() > 255 {
            return Err("enrichment sets a header name of 0 or more than 255 bytes".into());
        }
        added += name.len() + value.len();
    }
    if added > MAX_ADDED_HEADER_BYTES {
        return Err(format!(
            "enrichment adds more than {MAX_ADDED_HEADER_BYTES} bytes of headers"
        ));
    }
    if !payload.is_empty() {
        splice(&mut message.body, &payload)?;
    }
    message.properties.extra_headers.extend(
        headers
            .into_iter()
            .map(|(n, v)| (n, HeaderValue::String(v))),
    );
    Ok(())
}

/// Adds `fields` to the `payload` object that ends the envelope's body.
fn splice(body: &mut Vec<u8>, fields: &Map<String, Value>) -> Result<(), String> {
    let not_an_envelope =
        || "enrichment: the body is not an envelope ending with its payload".to_string();
    let envelope: HashMap<Cow<'_, str>, &RawValue> =
        serde_json::from_slice(body).map_err(|_| not_an_envelope())?;
    let payload = envelope.get("payload").ok_or_else(not_an_envelope)?.get();
    let existing: HashMap<Cow<'_, str>, IgnoredAny> =
        serde_json::from_str(payload).map_err(|_| not_an_envelope())?;
    if let Some(name) = fields.keys().find(|k| existing.contains_key(k.as_str())) {
        return Err(format!(
            "enrichment adds the payload field `{name}`, which it already has"
        ));
    }
    // The payload's closing brace is the body's second to last byte.
    let empty = existing.is_empty();
    drop(envelope);
    let end = body.len().checked_sub(2).ok_or_else(not_an_envelope)?;
    if body.get(end) != Some(&b'}') || body.last() != Some(&b'}') {
        return Err(not_an_envelope());
    }
    let mut insert = Vec::new();
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 || !empty {
            insert.push(b',');
        }
        // Strings and values always serialize.
        insert.extend(serde_json::to_vec(name).unwrap_or_default());
        insert.push(b':');
        insert.extend(serde_json::to_vec(value).unwrap_or_default());
    }
    body.splice(end..end, insert);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::Properties;
    use serde_json::json;

    fn message(body: &str) -> Message {
        Message {
            exchange: "product.events".into(),
            routing_key: "product.created.v1".into(),
            body: body.as_bytes().to_vec(),
            properties: Properties::default(),
        }
    }

    #[test]
    fn fields_are_spliced_into_the_payload_keeping_its_exact_bytes() {
        let mut m =
            message(r#"{"messageId":"1","payload":{"price":19.990,"n":12345678901234567890123}}"#);
        let fields = Enrichment::keep()
            .with_field("name", "Mug")
            .with_field("stock", 3);
        let Enrichment::Publish { payload, headers } = fields else {
            panic!()
        };
        apply(&mut m, payload, headers).unwrap();
        assert_eq!(
            String::from_utf8(m.body).unwrap(),
            r#"{"messageId":"1","payload":{"price":19.990,"n":12345678901234567890123,"name":"Mug","stock":3}}"#
        );

        let mut empty = message(r#"{"messageId":"1","payload":{}}"#);
        let mut one = Map::new();
        one.insert("name".into(), json!("Mug"));
        apply(&mut empty, one, vec![("region".into(), "eu".into())]).unwrap();
        let body: Value = serde_json::from_slice(&empty.body).unwrap();
        assert_eq!(body["payload"], json!({"name": "Mug"}));
        assert_eq!(
            empty.properties.extra_headers,
            [("region".to_string(), HeaderValue::String("eu".into()))]
        );
    }

    #[test]
    fn an_addition_may_not_replace_what_is_there() {
        let body = r#"{"messageId":"1","payload":{"name":"Cup"}}"#;
        let mut fields = Map::new();
        fields.insert("name".into(), json!("Mug"));
        let mut m = message(body);
        assert_eq!(
            apply(&mut m, fields, vec![]),
            Err("enrichment adds the payload field `name`, which it already has".into())
        );
        assert_eq!(m.body, body.as_bytes(), "nothing was changed");
        for name in ["partitionKey", "traceparent", "x-error", ""] {
            let e = apply(
                &mut message(body),
                Map::new(),
                vec![(name.into(), "v".into())],
            );
            assert!(e.is_err(), "{name}");
        }
        let big = vec![("big".to_string(), "v".repeat(5000))];
        assert!(apply(&mut message(body), Map::new(), big).is_err());
    }
}
