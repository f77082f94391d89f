//! The routing-key template (CONTRACT §4), parsed once at cold start from
//! `ROUTING_KEY_TEMPLATE` and rendered per event, and the rule an exchange
//! template's values must keep. Below the configuration: it reads the
//! envelope only.

use std::fmt;

use crate::envelope::Envelope;

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
    #[error("{{{0}}} gives {1:?}, which EXCHANGE_ALLOW does not allow")]
    NotAllowed(&'static str, String),
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
        self.render_checked(envelope, None)
    }

    /// Renders the exchange name of one envelope (`EXCHANGE` as a template):
    /// every placeholder's value must be a type name ([`is_type_name`]) that
    /// `allowed` accepts (`EXCHANGE_ALLOW`).
    pub fn render_exchange(
        &self,
        envelope: &Envelope<'_>,
        allowed: &dyn Fn(&str) -> bool,
    ) -> Result<String, RoutingError> {
        self.render_checked(envelope, Some(allowed))
    }

    fn render_checked(
        &self,
        envelope: &Envelope<'_>,
        type_names: Option<&dyn Fn(&str) -> bool>,
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
                && let Some(allowed) = type_names
            {
                let value = &key[before..];
                if !is_type_name(value) {
                    return Err(RoutingError::NotATypeName(p.name()));
                }
                if !allowed(value) {
                    // A type name: safe to quote, and what the operator
                    // needs to decide whether to allow it.
                    return Err(RoutingError::NotAllowed(p.name(), value.to_owned()));
                }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::envelope::Payload;
    use chrono::{TimeZone, Utc};
    use std::borrow::Cow;

    pub(crate) fn envelope<'a>(message_type: &'a str, version: &'a str) -> Envelope<'a> {
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
}
