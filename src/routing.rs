//! Draft to AMQP message (CONTRACT §4): the routing-key template, and
//! [`to_message`], the one place a message is shaped: properties, headers,
//! trace context, exchange or queue, and an enricher's fields in the body
//! the draft wrote.
//!
//! Pure functions: the template is parsed once at cold start and rendered
//! per record; nothing here talks to the broker.

use std::{borrow::Cow, fmt};

use crate::enrich::Added;
use crate::envelope::Envelope;
use crate::mapping::Draft;
use crate::publisher::{HeaderValue, Message, Properties};

/// AMQP short strings (routing keys) are at most 255 bytes.
const MAX_ROUTING_KEY: usize = 255;

/// A `ROUTING_KEY_TEMPLATE` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "unknown placeholder {{{0}}}; known: {{name}}, {{major}}, {{messageType}}, {{messageVersion}}, {{partitionKey}}, {{aggregateType}}"
    )]
    UnknownPlaceholder(String),
    #[error("unbalanced braces in {0:?}")]
    Unbalanced(String),
    #[error("the template is empty")]
    Empty,
}

/// Why a routing key could not be made for one record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("messageVersion does not start with a number, needed for {{major}}")]
    NoMajorVersion,
    #[error("the event has no aggregateType, needed for {{aggregateType}}")]
    NoAggregateType,
    #[error("messageType is only separators (`_ - .` and spaces), needed for {{name}}")]
    NoName,
    #[error("the routing key is longer than 255 bytes")]
    TooLong,
    // The value comes from the record: not quoted.
    #[error(
        "{{{0}}} gives a value that is not a type name (1 to 64 letters, digits, '.', '_', '-'), so it names no exchange"
    )]
    NotATypeName(&'static str),
}

/// The longest value a placeholder may give an exchange name.
pub const MAX_TYPE_NAME: usize = 64;

/// Whether a placeholder's value may be part of an exchange name: a type
/// name (an aggregate or event type, a version), not an instance's id or
/// free text. A rule about the value alone, so every execution environment
/// decides the same for the same record.
pub fn is_type_name(value: &str) -> bool {
    (1..=MAX_TYPE_NAME).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Name,
    Major,
    MessageType,
    MessageVersion,
    PartitionKey,
    AggregateType,
}

impl Placeholder {
    fn name(self) -> &'static str {
        match self {
            Placeholder::Name => "name",
            Placeholder::Major => "major",
            Placeholder::MessageType => "messageType",
            Placeholder::MessageVersion => "messageVersion",
            Placeholder::PartitionKey => "partitionKey",
            Placeholder::AggregateType => "aggregateType",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder(Placeholder),
}

/// A parsed routing-key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTemplate {
    source: String,
    parts: Vec<Part>,
}

impl Default for RoutingTemplate {
    fn default() -> Self {
        Self {
            source: "{name}.v{major}".into(),
            parts: vec![
                Part::Placeholder(Placeholder::Name),
                Part::Literal(".v".into()),
                Part::Placeholder(Placeholder::Major),
            ],
        }
    }
}

impl RoutingTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        if template.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(TemplateError::Unbalanced(template.into()));
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Literal(rest[..i].into()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find('}')
                        .ok_or_else(|| TemplateError::Unbalanced(template.into()))?;
                    let name = &after[..end];
                    let placeholder = match name {
                        "name" => Placeholder::Name,
                        "major" => Placeholder::Major,
                        "messageType" => Placeholder::MessageType,
                        "messageVersion" => Placeholder::MessageVersion,
                        "partitionKey" => Placeholder::PartitionKey,
                        "aggregateType" => Placeholder::AggregateType,
                        _ if name.contains('{') => {
                            return Err(TemplateError::Unbalanced(template.into()));
                        }
                        other => return Err(TemplateError::UnknownPlaceholder(other.into())),
                    };
                    parts.push(Part::Placeholder(placeholder));
                    rest = &after[end + 1..];
                }
                None => {
                    parts.push(Part::Literal(rest.into()));
                    rest = "";
                }
            }
        }
        Ok(Self {
            source: template.into(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template uses `{partitionKey}`.
    pub fn uses_partition_key(&self) -> bool {
        self.parts
            .contains(&Part::Placeholder(Placeholder::PartitionKey))
    }

    /// Renders the routing key of one envelope.
    pub fn render(&self, envelope: &Envelope<'_>) -> Result<String, RoutingError> {
        self.render_checked(envelope, false)
    }

    /// Renders the exchange name of one envelope (`EXCHANGE` as a template):
    /// every placeholder's value must be a type name ([`is_type_name`]).
    pub fn render_exchange(&self, envelope: &Envelope<'_>) -> Result<String, RoutingError> {
        self.render_checked(envelope, true)
    }

    fn render_checked(
        &self,
        envelope: &Envelope<'_>,
        type_names: bool,
    ) -> Result<String, RoutingError> {
        let mut key = String::with_capacity(64);
        for part in &self.parts {
            let before = key.len();
            match part {
                Part::Literal(s) => key.push_str(s),
                Part::Placeholder(Placeholder::Name) => {
                    // `.v1` would route by the version alone.
                    push_dotted_name(&mut key, &envelope.message_type);
                    if key.len() == before {
                        return Err(RoutingError::NoName);
                    }
                }
                Part::Placeholder(Placeholder::Major) => {
                    key.push_str(major_version(&envelope.message_version)?)
                }
                Part::Placeholder(Placeholder::MessageType) => key.push_str(&envelope.message_type),
                Part::Placeholder(Placeholder::MessageVersion) => {
                    key.push_str(&envelope.message_version)
                }
                Part::Placeholder(Placeholder::PartitionKey) => {
                    key.push_str(&envelope.partition_key)
                }
                Part::Placeholder(Placeholder::AggregateType) => {
                    let t = envelope
                        .aggregate_type
                        .as_deref()
                        .ok_or(RoutingError::NoAggregateType)?;
                    key.extend(t.chars().flat_map(char::to_lowercase));
                }
            }
            if let Part::Placeholder(p) = part
                && type_names
                && !is_type_name(&key[before..])
            {
                return Err(RoutingError::NotATypeName(p.name()));
            }
        }
        if key.len() > MAX_ROUTING_KEY {
            return Err(RoutingError::TooLong);
        }
        Ok(key)
    }
}

impl fmt::Display for RoutingTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The leading number of a version: `"2.1"` gives `"2"`, `"10"` gives `"10"`.
fn major_version(version: &str) -> Result<&str, RoutingError> {
    let end = version
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(version.len());
    if end == 0 {
        return Err(RoutingError::NoMajorVersion);
    }
    Ok(&version[..end])
}

/// Splits a message type into lower-case words joined by `.`, dropping a
/// trailing word `event`: `UserProfileUpdated` → `user.profile.updated`,
/// `OrderCreatedEvent` → `order.created`. An acronym stays one word
/// (`HTTPRequestSent` → `http.request.sent`); `_`, `-`, `.` and spaces
/// also separate words.
#[cfg(test)]
fn dotted_name(message_type: &str) -> String {
    let mut out = String::with_capacity(message_type.len() + 4);
    push_dotted_name(&mut out, message_type);
    out
}

fn push_dotted_name(out: &mut String, message_type: &str) {
    let words = split_words(message_type);
    let keep = match words.as_slice() {
        [.., last] if words.len() > 1 && last.eq_ignore_ascii_case("event") => words.len() - 1,
        _ => words.len(),
    };
    for (i, word) in words[..keep].iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
}

fn split_words(s: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut start: Option<usize> = None;
    for (k, &(i, c)) in chars.iter().enumerate() {
        if matches!(c, '_' | '-' | '.' | ' ') {
            if let Some(st) = start.take() {
                words.push(&s[st..i]);
            }
            continue;
        }
        if let Some(st) = start {
            let prev = chars[k - 1].1;
            let next_lower = chars.get(k + 1).is_some_and(|&(_, n)| n.is_lowercase());
            // A capital starts a word after a lower-case letter or digit, or
            // when it is the last capital of an acronym followed by lower case.
            let boundary = c.is_uppercase()
                && (prev.is_lowercase()
                    || prev.is_ascii_digit()
                    || (prev.is_uppercase() && next_lower));
            if boundary {
                words.push(&s[st..i]);
                start = Some(i);
            }
        } else {
            start = Some(i);
        }
    }
    if let Some(st) = start {
        words.push(&s[st..]);
    }
    words
}

/// How this invocation sends its events: to the backfill's queue instead
/// of the exchange, and with its own trace context for the events whose
/// item has none (`TRACEPARENT_FROM_XRAY`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sending<'a> {
    pub traceparent: Option<&'a str>,
    pub to_queue: Option<&'a str>,
}

/// Turns a draft into the message published: properties, headers (the
/// envelope's, the item's trace context or else the invocation's, an
/// enricher's), exchange and routing key (or the backfill's queue, the key
/// kept in the header `routingKey`, so consumers that dispatch on it work
/// unchanged), and the body: the draft's, with an enricher's fields
/// appended to its payload, closed in the buffer it was written in.
pub fn to_message(draft: Draft<'_>, added: Added, sending: Sending<'_>) -> Message {
    let Draft {
        envelope: e,
        exchange,
        routing_key,
        trace,
        mut body,
        ..
    } = draft;
    if !added.fields.is_empty() {
        // The payload is an object: the fields go before its closing brace.
        body.pop();
        body.extend_from_slice(&added.fields);
        body.push(b'}');
    }
    body.push(b'}');
    // Room for the trace context too: no regrowth per message.
    let mut headers = Vec::with_capacity(6);
    headers.push(("partitionKey", HeaderValue::String(e.partition_key.into())));
    headers.push((
        "messageVersion",
        HeaderValue::String(e.message_version.into()),
    ));
    if let Some(v) = e.aggregate_version {
        headers.push(("aggregateVersion", HeaderValue::Int(v)));
    }
    headers.push((
        "sequenceNumber",
        HeaderValue::String(e.sequence_number.into()),
    ));
    match (trace.traceparent, sending.traceparent) {
        (Some(parent), _) => {
            headers.push(("traceparent", HeaderValue::String(parent)));
            if let Some(state) = trace.tracestate {
                headers.push(("tracestate", HeaderValue::String(state)));
            }
        }
        (None, Some(parent)) => {
            headers.push(("traceparent", HeaderValue::String(parent.to_owned())))
        }
        (None, None) => {}
    }
    let (exchange, routing_key) = match sending.to_queue {
        Some(queue) => {
            headers.push(("routingKey", HeaderValue::String(routing_key)));
            (String::new(), queue.to_owned())
        }
        None => (exchange.into_owned(), routing_key),
    };
    Message {
        exchange,
        routing_key,
        body,
        properties: Properties {
            message_id: e.message_id,
            correlation_id: e.correlation_id.map(Cow::into_owned),
            app_id: e.source.into_owned(),
            kind: Some(e.message_type.into_owned()),
            timestamp: u64::try_from(e.timestamp.timestamp()).ok(),
            headers,
            extra_headers: added.headers,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MappingConfig;
    use crate::envelope::Payload;
    use crate::mapping::Converter;
    use chrono::{TimeZone, Utc};
    use std::borrow::Cow;

    fn envelope<'a>(message_type: &'a str, version: &'a str) -> Envelope<'a> {
        Envelope {
            message_id: "id-1".into(),
            message_type: Cow::Borrowed(message_type),
            message_version: Cow::Borrowed(version),
            envelope_version: crate::envelope::ENVELOPE_VERSION,
            timestamp: Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap(),
            source: Cow::Borrowed("ProductService"),
            correlation_id: Some("corr-1".into()),
            causation_id: None,
            partition_key: Cow::Borrowed("prod-00042"),
            aggregate_type: Some(Cow::Borrowed("Product")),
            aggregate_version: Some(7),
            sequence_number: Cow::Borrowed("4100000000012345680601"),
            payload: Payload::Empty,
        }
    }

    fn draft<'a>(converter: &'a Converter, e: &Envelope<'a>) -> Draft<'a> {
        Draft::of(e.clone(), "product.events", "product.created.v1", converter)
    }

    #[test]
    fn a_message_for_one_queue_keeps_its_routing_key_in_a_header() {
        let converter = Converter::new(MappingConfig::new("product.events"));
        let e = envelope("ProductCreated", "1.0");
        let m = to_message(draft(&converter, &e), Added::default(), Sending::default());
        let to_queue = Sending {
            to_queue: Some("projection-orders"),
            ..Sending::default()
        };
        let q = to_message(draft(&converter, &e), Added::default(), to_queue);
        assert_eq!(
            (q.exchange.as_str(), q.routing_key.as_str()),
            ("", "projection-orders")
        );
        assert_eq!(
            q.properties.headers.last(),
            Some(&(
                "routingKey",
                HeaderValue::String("product.created.v1".into())
            ))
        );
        assert_eq!(q.body, m.body);
        assert_eq!(q.properties.message_id, m.properties.message_id);
    }

    #[test]
    fn the_items_trace_context_wins_over_the_invocations_and_the_queue_header_comes_last() {
        const ITEM: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        const XRAY: &str = "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01";
        let converter = Converter::new(MappingConfig::new("product.events"));
        let e = envelope("ProductCreated", "1.0");
        let sending = Sending {
            traceparent: Some(XRAY),
            to_queue: Some("projection-orders"),
        };
        let names = |m: &Message| -> Vec<(&str, HeaderValue)> {
            m.properties.headers[3..]
                .iter()
                .map(|(n, v)| (*n, v.clone()))
                .collect()
        };
        let string = |s: &str| HeaderValue::String(s.into());

        let mut traced = draft(&converter, &e);
        traced.trace.traceparent = Some(ITEM.into());
        traced.trace.tracestate = Some("rojo=1".into());
        let m = to_message(traced, Added::default(), sending);
        assert_eq!(
            names(&m),
            [
                ("sequenceNumber", string("4100000000012345680601")),
                ("traceparent", string(ITEM)),
                ("tracestate", string("rojo=1")),
                ("routingKey", string("product.created.v1")),
            ]
        );

        let m = to_message(draft(&converter, &e), Added::default(), sending);
        assert_eq!(
            names(&m),
            [
                ("sequenceNumber", string("4100000000012345680601")),
                ("traceparent", string(XRAY)),
                ("routingKey", string("product.created.v1")),
            ]
        );
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            ("", "projection-orders")
        );
    }

    #[test]
    fn the_default_template_gives_the_contract_examples() {
        let t = RoutingTemplate::default();
        assert_eq!(
            t.render(&envelope("ProductCreated", "1.0")).unwrap(),
            "product.created.v1"
        );
        assert_eq!(
            t.render(&envelope("UserProfileUpdated", "1.0")).unwrap(),
            "user.profile.updated.v1"
        );
        assert_eq!(
            t.render(&envelope("OrderCreatedEvent", "2.1")).unwrap(),
            "order.created.v2"
        );
        assert_eq!(RoutingTemplate::parse("{name}.v{major}").unwrap(), t);
    }

    #[test]
    fn names_split_at_capitals_acronyms_and_separators() {
        assert_eq!(dotted_name("HTTPRequestSent"), "http.request.sent");
        assert_eq!(dotted_name("order_shipped"), "order.shipped");
        assert_eq!(dotted_name("Event"), "event");
        assert_eq!(dotted_name("Order2Created"), "order2.created");
        assert_eq!(
            dotted_name("PaymentEventRecorded"),
            "payment.event.recorded"
        );
    }

    #[test]
    fn every_placeholder_renders() {
        let t = RoutingTemplate::parse(
            "{aggregateType}/{messageType}/{messageVersion}/{partitionKey}/{name}/{major}",
        )
        .unwrap();
        assert_eq!(
            t.render(&envelope("PriceChanged", "12.3")).unwrap(),
            "product/PriceChanged/12.3/prod-00042/price.changed/12"
        );
    }

    #[test]
    fn bad_templates_are_rejected_at_parse_time() {
        assert_eq!(
            RoutingTemplate::parse("{name}.{minor}"),
            Err(TemplateError::UnknownPlaceholder("minor".into()))
        );
        assert!(matches!(
            RoutingTemplate::parse("{name"),
            Err(TemplateError::Unbalanced(_))
        ));
        assert!(matches!(
            RoutingTemplate::parse("name}"),
            Err(TemplateError::Unbalanced(_))
        ));
        assert!(matches!(
            RoutingTemplate::parse("{{name}"),
            Err(TemplateError::Unbalanced(_))
        ));
        assert_eq!(RoutingTemplate::parse(""), Err(TemplateError::Empty));
    }

    #[test]
    fn records_that_cannot_fill_the_template_are_errors() {
        let t = RoutingTemplate::default();
        assert_eq!(
            t.render(&envelope("X", "beta")),
            Err(RoutingError::NoMajorVersion)
        );
        let mut e = envelope("X", "1");
        e.aggregate_type = None;
        let t = RoutingTemplate::parse("{aggregateType}.x").unwrap();
        assert_eq!(t.render(&e), Err(RoutingError::NoAggregateType));
        let long = "A".repeat(300);
        let t = RoutingTemplate::parse("{messageType}").unwrap();
        assert_eq!(t.render(&envelope(&long, "1")), Err(RoutingError::TooLong));
        for name in ["_", "-. _"] {
            assert_eq!(
                RoutingTemplate::default().render(&envelope(name, "1")),
                Err(RoutingError::NoName),
                "{name:?}"
            );
        }
        // A lone `Event` is a word, kept.
        assert_eq!(
            RoutingTemplate::default().render(&envelope("Event", "1")),
            Ok("event.v1".into())
        );
    }

    #[test]
    fn properties_and_headers_follow_the_contract() {
        let converter = Converter::new(MappingConfig::new("product.events"));
        let e = envelope("ProductCreated", "1.0");
        let m = to_message(draft(&converter, &e), Added::default(), Sending::default());
        assert_eq!(m.exchange, "product.events");
        assert_eq!(m.properties.message_id, "id-1");
        assert_eq!(m.properties.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(m.properties.app_id, "ProductService");
        assert_eq!(m.properties.kind.as_deref(), Some("ProductCreated"));
        assert_eq!(m.properties.timestamp, Some(1_795_348_800));
        assert_eq!(
            m.properties.headers,
            vec![
                ("partitionKey", HeaderValue::String("prod-00042".into())),
                ("messageVersion", HeaderValue::String("1.0".into())),
                ("aggregateVersion", HeaderValue::Int(7)),
                (
                    "sequenceNumber",
                    HeaderValue::String("4100000000012345680601".into())
                ),
            ]
        );
    }
}
