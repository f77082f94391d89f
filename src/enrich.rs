//! The extension point: the forwarder as a library. An [`Enricher`] sees
//! each record's event after the mapping and before it is published (its
//! draft, typed: never bytes to re-parse), and may add fields to its
//! `payload` or headers to its message (data from a read model, say, when
//! the integration event needs a broader context than the domain event),
//! skip it, or dead-letter it with a reason. What it adds is checked here
//! (`Added`) and written into the message in one place
//! (`mapping::message::to_message`).
//!
//! It runs inside the batch loop, so the checkpoint rule holds: an error is
//! a failure of that record (it and everything after it are retried), never
//! a panic or a silent drop, and no enrichment may outlast the invocation's
//! deadline margin. The shipped function uses [`NoEnricher`]; a team's own
//! `main.rs` passes its enricher to [`crate::run_with`].

use std::{borrow::Cow, collections::HashMap, future::Future};

use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use crate::envelope::Envelope;
use crate::mapping::Draft;
use crate::mapping::message::Added;
use crate::publisher::HeaderValue;

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

/// An event as an enricher sees it: the draft of the message the forwarder
/// would publish, typed, before any byte of it is written.
#[derive(Debug)]
pub struct Event<'a> {
    draft: &'a Draft<'a>,
}

impl<'a> Event<'a> {
    pub(crate) fn new(draft: &'a Draft<'a>) -> Self {
        Self { draft }
    }

    /// The envelope's `messageId`.
    pub fn message_id(&self) -> &str {
        &self.draft.envelope.message_id
    }

    /// The envelope's `messageType`.
    pub fn message_type(&self) -> &str {
        &self.draft.envelope.message_type
    }

    /// The envelope's `partitionKey` (the aggregate id, or the item key).
    pub fn partition_key(&self) -> &str {
        &self.draft.envelope.partition_key
    }

    /// The exchange and routing key it goes to.
    pub fn exchange(&self) -> &str {
        &self.draft.exchange
    }

    /// The routing key it is published with.
    pub fn routing_key(&self) -> &str {
        &self.draft.routing_key
    }

    /// A string header the message will have (`partitionKey`,
    /// `messageVersion`, `sequenceNumber`, `traceparent`, `tracestate`).
    pub fn header(&self, name: &str) -> Option<&str> {
        let e = &self.draft.envelope;
        let trace = &self.draft.trace;
        match name {
            "partitionKey" => Some(&e.partition_key),
            "messageVersion" => Some(&e.message_version),
            "sequenceNumber" => Some(&e.sequence_number),
            "traceparent" => trace.traceparent.as_deref(),
            "tracestate" => trace.tracestate.as_deref(),
            _ => None,
        }
    }

    /// The envelope, typed, but for its payload: that is [`Event::payload`].
    pub fn envelope_fields(&self) -> &Envelope<'a> {
        &self.draft.envelope
    }

    /// The envelope's `payload` as JSON text, the exact bytes the body
    /// carries.
    pub fn payload(&self) -> &str {
        self.draft.payload()
    }

    /// The envelope as a JSON value. Numbers beyond an `f64` lose digits
    /// here; the published body keeps them as they are.
    pub fn envelope(&self) -> serde_json::Result<Value> {
        let mut body = Vec::with_capacity(self.draft.body.len() + 1);
        body.extend_from_slice(&self.draft.body);
        body.push(b'}');
        serde_json::from_slice(&body)
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
/// With the record's own they keep `mapping::message::HEADER_BUDGET` too,
/// checked once the message is made.
const MAX_ADDED_HEADER_BYTES: usize = 4096;

/// Checks a `Publish` enrichment against the draft's `payload` (JSON
/// text). `Err` is the reason to dead-letter the record instead: an
/// addition that would replace a payload field or a header of the
/// forwarder's, or headers too large for a frame. The payload's fields are
/// read only when fields are added.
pub(crate) fn check<'p>(
    payload_text: impl FnOnce() -> &'p str,
    payload: Map<String, Value>,
    headers: Vec<(String, String)>,
) -> Result<Added, String> {
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
    let fields = if payload.is_empty() {
        Vec::new()
    } else {
        fields(payload_text(), &payload)?
    };
    Ok(Added {
        fields,
        headers: headers
            .into_iter()
            .map(|(n, v)| (n, HeaderValue::String(v)))
            .collect(),
    })
}

/// `fields` as JSON text to append to the `payload` object.
fn fields(payload: &str, fields: &Map<String, Value>) -> Result<Vec<u8>, String> {
    let not_an_envelope =
        || "enrichment: the body is not an envelope ending with its payload".to_string();
    let existing: HashMap<Cow<'_, str>, IgnoredAny> =
        serde_json::from_str(payload).map_err(|_| not_an_envelope())?;
    if let Some(name) = fields.keys().find(|k| existing.contains_key(k.as_str())) {
        return Err(format!(
            "enrichment adds the payload field `{name}`, which it already has"
        ));
    }
    if !payload.ends_with('}') {
        return Err(not_an_envelope());
    }
    let empty = existing.is_empty();
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
    Ok(insert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::{Message, Properties};
    use serde_json::json;

    /// `check`, then the additions written into a body whose payload is
    /// its last field, as `mapping::message::to_message` writes them.
    fn apply(
        m: &mut Message,
        payload: Map<String, Value>,
        headers: Vec<(String, String)>,
    ) -> Result<(), String> {
        let text = std::str::from_utf8(&m.body).unwrap();
        let start = text.find(r#""payload":"#).unwrap() + r#""payload":"#.len();
        let added = check(|| &text[start..text.len() - 1], payload, headers)?;
        let end = m.body.len() - 2;
        m.body.splice(end..end, added.fields);
        m.properties.extra_headers.extend(added.headers);
        Ok(())
    }

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
    fn an_enricher_reads_the_drafts_typed_fields() {
        let converter =
            crate::mapping::Converter::new(crate::config::MappingConfig::new("product.events"));
        let envelope = Envelope {
            message_id: "id-1".into(),
            message_type: "ProductCreated".into(),
            message_version: "1.0".into(),
            envelope_version: crate::envelope::ENVELOPE_VERSION,
            timestamp: chrono::DateTime::UNIX_EPOCH,
            source: "ProductService".into(),
            correlation_id: None,
            causation_id: None,
            partition_key: "prod-00042".into(),
            aggregate_type: Some("Product".into()),
            aggregate_version: Some(7),
            sequence_number: "41".into(),
            payload: crate::envelope::Payload::Json(r#"{"price":19.990}"#.into()),
        };
        let mut draft = Draft::of(envelope, "product.events", "product.created.v1", &converter);
        draft.trace.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let event = Event::new(&draft);
        assert_eq!(
            [
                event.message_id(),
                event.message_type(),
                event.partition_key()
            ],
            ["id-1", "ProductCreated", "prod-00042"]
        );
        assert_eq!(
            [event.exchange(), event.routing_key()],
            ["product.events", "product.created.v1"]
        );
        assert_eq!(event.header("sequenceNumber"), Some("41"));
        assert_eq!(event.header("messageVersion"), Some("1.0"));
        assert_eq!(
            event.header("traceparent"),
            draft.trace.traceparent.as_deref()
        );
        assert_eq!(event.header("tracestate"), None);
        assert_eq!(event.header("aggregateVersion"), None, "not a string");
        assert_eq!(event.payload(), r#"{"price":19.990}"#);
        let body: Value = serde_json::from_slice(&draft.clone().into_message().body).unwrap();
        assert_eq!(event.envelope().unwrap(), body);
        assert_eq!(event.envelope_fields().aggregate_version, Some(7));
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
