//! Stream record to message draft, for every mapping (CONTRACT §3).
//!
//! Pure: [`Converter::plan_raw`] decides, for one record given as the JSON
//! text the event source mapping sent, whether it is skipped, published
//! (as a [`Draft`]: envelope, exchange, routing key and trace context,
//! made once; [`message::to_message`] writes it) or sent to the
//! dead-letter exchange with the reason it could not be converted. The
//! record is read in place ([`crate::record`]): a payload goes from the
//! record's DynamoDB JSON to JSON text in one pass.
//!
//! Each mapping is one file with a `draft` function, record to envelope:
//! `event_store.rs` (§3a), `change.rs` (§3b). Beside them: `draft.rs` (the
//! draft a record's envelope becomes), `message.rs` (draft to message,
//! the one place a message is shaped), `attributes.rs` (typed values read
//! out of a record), `time.rs`, `trace_context.rs` and `dead_letter.rs`
//! (which a draft carries the means of: [`Origin`]).
//!
//! A new mapping is one file, one variant, one arm: `<name>.rs` here with
//! its `draft`, a [`MappingKind`] variant with its `MAPPING` name, and its
//! arm in `Converter::mapped`, the only match that names every mapping.
//! (`forwarder-ops backfill --mapping` takes the same names; it orders a
//! table's items per mapping, in a `match` on `MappingKind` that the
//! compiler points at when a variant is added.)

mod attributes;
mod change;
mod dead_letter;
mod draft;
mod event_store;
#[cfg(test)]
mod fixtures;
pub mod message;
mod time;
mod trace_context;

use std::borrow::Cow;

use aws_lambda_events::dynamodb::EventRecord;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::config::{AttributeNames, Exchange, MappingConfig, MappingKind, exchange_name_char};
use crate::envelope::{Envelope, Payload};
use crate::publisher::Message;
use crate::record::{self, Record};
use crate::routing::RoutingError;
use dead_letter::DeadLetterIdentity;
use time::creation_time;

pub(crate) use dead_letter::{MAX_HEADER, capped};
pub use dead_letter::{Origin, too_large};
pub use draft::Draft;

/// Namespace of the UUIDv5 message ids. Part of the public contract: the
/// same record must give the same id in every version of the forwarder.
pub const MESSAGE_ID_NAMESPACE: Uuid = uuid::uuid!("08ebb892-d8fe-430a-aad9-6a1cfb75305c");

/// The UUIDv5 of `name` in [`MESSAGE_ID_NAMESPACE`]: a message id.
fn message_id(name: &[u8]) -> String {
    text(Uuid::new_v5(&MESSAGE_ID_NAMESPACE, name))
}

/// A UUID as a message id's text (lower case, hyphenated), written without
/// the formatting machinery.
fn text(id: Uuid) -> String {
    id.hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .to_owned()
}

/// Why a record cannot become an event. The text goes into the
/// dead-letter `x-error` header: it names attributes, never their values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// The record carries no new image.
    #[error("the record has no NewImage (is the stream KEYS_ONLY or OLD_IMAGE?)")]
    NoNewImage,
    /// The record carries no key.
    #[error("the record has no Keys")]
    NoKeys,
    /// A required attribute is absent.
    #[error("missing required attribute `{0}`")]
    Missing(String),
    #[error("attribute `{name}` must be {expected}, found {found}")]
    /// An attribute has another DynamoDB type.
    WrongType {
        /// The attribute.
        name: String,
        /// The types it may have.
        expected: &'static str,
        /// The type it has.
        found: &'static str,
    },
    #[error("attribute `{name}` is {problem}")]
    /// An attribute's value cannot be used.
    Invalid {
        /// The attribute.
        name: String,
        /// What is wrong with it (never the value).
        problem: &'static str,
    },
    /// No table to name the event's source.
    #[error("the record has no eventSourceARN naming its table and EVENT_SOURCE is not set")]
    NoTable,
    // DynamoDB's own limit, so only a forged record gets here; the name
    // would not fit the app_id short string.
    /// The table name does not fit an AMQP short string.
    #[error("the table name in eventSourceARN is longer than 255 bytes")]
    LongTableName,
    /// The record has no `eventID`.
    #[error("the record has no eventID")]
    NoEventId,
    /// The record has no `SequenceNumber`.
    #[error("the record has no SequenceNumber")]
    NoSequenceNumber,
    /// The `eventName` is not one DynamoDB sends.
    #[error("unknown eventName (expected INSERT, MODIFY or REMOVE)")]
    UnknownEventName,
    /// The routing key cannot be made of this event.
    #[error("routing key: {0}")]
    Routing(#[from] RoutingError),
    /// The exchange cannot be made of this event.
    #[error("exchange (EXCHANGE is a template): {0}")]
    ExchangeTemplate(RoutingError),
    // The name is made of the record's values: not quoted.
    #[error(
        "the exchange EXCHANGE's template makes of this event is not a valid name (letters, digits, '-', '_', '.', ':'; at most 246 bytes; not amq.)"
    )]
    /// The exchange made of this event is not a valid name.
    InvalidExchange,
    /// The body cannot be written.
    #[error("payload: {0}")]
    Body(String),
}

/// What to do with one record: `P` is a [`Draft`] from
/// [`Converter::plan_raw`], the message written from it from
/// [`Converter::plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per record and matched at once: a box would cost an allocation per record"
)]
pub enum Plan<P = Message> {
    /// Not an event for this mapping (e.g. MODIFY in an event store).
    Skip(&'static str),
    /// Publish to the exchange (a draft, once enriched and written).
    Publish(P),
    /// Publish the original record to `<EXCHANGE>.dead-letter`.
    DeadLetter {
        /// The dead letter: the record, or its bounded reference.
        message: Message,
        /// Why (`x-error`).
        reason: String,
    },
}

impl Plan<Draft<'_>> {
    /// The plan with its draft written as the mapping alone makes it.
    pub fn into_message(self) -> Plan {
        match self {
            Plan::Skip(reason) => Plan::Skip(reason),
            Plan::Publish(draft) => Plan::Publish(draft.into_message()),
            Plan::DeadLetter { message, reason } => Plan::DeadLetter { message, reason },
        }
    }
}

impl Planned<Draft<'_>> {
    /// The record planned, its draft written as the mapping alone makes it.
    pub fn into_message(self) -> Planned {
        Planned {
            plan: self.plan.into_message(),
            created: self.created,
            dropped: self.dropped,
        }
    }
}

// The unit tests' helpers take either kind of plan; nothing else converts
// implicitly (callers say `into_message`).
#[cfg(test)]
impl<'a> From<Plan<Draft<'a>>> for Plan {
    fn from(plan: Plan<Draft<'a>>) -> Self {
        plan.into_message()
    }
}

/// A record planned from its JSON text: `P` as in [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned<P = Message> {
    /// What to do with the record.
    pub plan: Plan<P>,
    /// ApproximateCreationDateTime, when the record has one.
    pub created: Option<DateTime<Utc>>,
    /// Something of the record left out of its event (an invalid trace
    /// context), for a warning: names attributes, never values.
    pub dropped: Option<String>,
}

/// Turns records into plans with the configured mapping. It holds no state
/// between records: a record's plan never depends on what came before it.
#[derive(Debug, Clone)]
pub struct Converter {
    config: MappingConfig,
    /// The attribute read while the record is read ([`record::read_transcoding`]).
    transcoded: Option<String>,
}

/// The event-store mapping's payload attribute, to transcode as the record
/// is read, unless another setting reads the same attribute: the image
/// then holds `null` for it ([`record::Transcoded`]).
fn transcoded(config: &MappingConfig) -> Option<String> {
    let AttributeNames {
        aggregate_id,
        version,
        event_type,
        event_version,
        payload,
        occurred_at,
        correlation_id,
        causation_id,
        event_id,
        aggregate_type,
        traceparent,
        tracestate,
    } = &config.attributes;
    let others = [
        aggregate_id,
        version,
        event_type,
        event_version,
        occurred_at,
        correlation_id,
        causation_id,
        event_id,
        aggregate_type,
        traceparent,
        tracestate,
    ];
    let alone = !payload.is_empty() && others.iter().all(|other| *other != payload);
    (config.kind == MappingKind::EventStore && alone).then(|| payload.clone())
}

/// What a mapping makes of one record: `'a` is the record's text (and the
/// configuration), `'r` the parsed record, which the draft does not
/// outlast.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per record and matched at once: a box would cost an allocation per record"
)]
enum Mapped<'a, 'r> {
    /// The event, for the draft: its envelope, which lasts as long as the
    /// record's text, and apart from it (the envelope's own left
    /// [`Payload::Empty`]) its payload, which may borrow the parsed record
    /// (an item's image) and is written into the draft's body at once.
    Event {
        envelope: Envelope<'a>,
        payload: Payload<'r>,
    },
    /// Not an event for this mapping, and why (e.g. MODIFY in an event
    /// store).
    Skip(&'static str),
}

impl Converter {
    /// A converter for this mapping.
    pub fn new(config: MappingConfig) -> Self {
        Self {
            transcoded: transcoded(&config),
            config,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &MappingConfig {
        &self.config
    }

    /// Plans one record given as the JSON text the event source mapping
    /// sent. `now` stands in for a missing ApproximateCreationDateTime. A
    /// record that does not even parse as a stream record is dead-lettered
    /// as it came, with the path of the problem, instead of failing the
    /// whole batch.
    pub fn plan_raw<'a>(&'a self, raw: &'a str, now: DateTime<Utc>) -> Planned<Draft<'a>> {
        // The payload transcoded as the record is read: planned alike,
        // unless the record fails (then the plain read below says why).
        if let Some(payload) = &self.transcoded
            && let Ok(record) = record::read_transcoding(raw, payload)
        {
            let (plan, dropped) = self.plan_record(&record, raw, now);
            if !matches!(plan, Plan::DeadLetter { .. }) {
                return Planned {
                    plan,
                    created: creation_time(&record),
                    dropped,
                };
            }
        }
        self.plan_raw_plain(raw, now)
    }

    /// [`Converter::plan_raw`] with the record read the plain way, its
    /// payload transcoded when it is written: how a failing record is
    /// planned, and what tests and the fuzzer hold the other way to.
    #[doc(hidden)]
    pub fn plan_raw_plain<'a>(&'a self, raw: &'a str, now: DateTime<Utc>) -> Planned<Draft<'a>> {
        // Path tracking costs a third of the conversion time (it allocates
        // per field), so it runs only again on the rare record that fails.
        let mut de = serde_json::Deserializer::from_str(raw);
        match Record::deserialize(&mut de).map_err(|_| {
            let mut de = serde_json::Deserializer::from_str(raw);
            serde_path_to_error::deserialize::<_, Record>(&mut de).err()
        }) {
            Ok(record) => {
                let (plan, dropped) = self.plan_record(&record, raw, now);
                Planned {
                    plan,
                    created: creation_time(&record),
                    dropped,
                }
            }
            Err(e) => {
                // The path names attributes, never values; serde's own
                // message could quote a value.
                let reason = capped(match e {
                    Some(e) => format!(
                        "not a valid DynamoDB stream record: {} error at `{}`",
                        record::json_error_kind(e.inner()),
                        e.path()
                    ),
                    // Deserialization is deterministic; this is unreachable
                    // unless the two passes disagree.
                    None => "not a valid DynamoDB stream record".to_string(),
                });
                Planned {
                    plan: Plan::DeadLetter {
                        message: self.dead_letter(DeadLetterIdentity::lenient(raw), raw, &reason),
                        reason,
                    },
                    created: None,
                    dropped: None,
                }
            }
        }
    }

    /// Plans a record already parsed (tests and tools): it is serialized
    /// back to JSON and planned like one that came from the stream. A draft
    /// to publish is written at once ([`Draft::into_message`]): the
    /// record's text does not outlive the call.
    pub fn plan(&self, record: &EventRecord, now: DateTime<Utc>) -> Plan {
        match serde_json::to_string(record) {
            Ok(raw) => self.plan_raw(&raw, now).plan.into_message(),
            // A record that was deserialized always serializes again.
            Err(_) => Plan::Skip("unserializable record"),
        }
    }

    /// The plan of a parsed record (`raw` is its text, for a dead letter),
    /// and what of its trace context was left out.
    fn plan_record<'a>(
        &'a self,
        record: &Record<'a>,
        raw: &'a str,
        now: DateTime<Utc>,
    ) -> (Plan<Draft<'a>>, Option<String>) {
        let draft = match self.mapped(record, now) {
            Ok(Mapped::Event { envelope, payload }) => self.draft(envelope, &payload, raw),
            Ok(Mapped::Skip(reason)) => return (Plan::Skip(reason), None),
            Err(e) => Err(e),
        };
        match draft {
            Ok(mut draft) => {
                let dropped = self.trace_context(record, &mut draft.trace);
                (Plan::Publish(draft), dropped)
            }
            Err(e) => {
                let reason = capped(e.to_string());
                let id = DeadLetterIdentity::of(record, &self.config);
                let message = self.dead_letter(id, raw, &reason);
                (Plan::DeadLetter { message, reason }, None)
            }
        }
    }

    /// The configured mapping's envelope of a record: the one place that
    /// names every mapping.
    fn mapped<'a, 'r>(
        &'a self,
        record: &'r Record<'a>,
        now: DateTime<Utc>,
    ) -> Result<Mapped<'a, 'r>, MappingError> {
        let config = &self.config;
        match config.kind {
            MappingKind::EventStore => event_store::draft(config, record, now),
            MappingKind::Change => change::draft(config, record, now),
        }
    }

    /// The draft of an event: its routing key and exchange decided, its
    /// body written up to the end of its payload (transcoded to JSON text)
    /// while the parsed record is at hand.
    fn draft<'a>(
        &'a self,
        envelope: Envelope<'a>,
        payload: &Payload<'_>,
        raw: &'a str,
    ) -> Result<Draft<'a>, MappingError> {
        let routing_key = self.config.routing_key_template.render(&envelope)?;
        let exchange = self.exchange(&envelope)?;
        let origin = Origin {
            raw,
            converter: self,
        };
        Draft::new(envelope, payload, exchange, routing_key, origin)
            .map_err(|e| MappingError::Body(e.to_string()))
    }

    /// The exchange of an event: the one of `EXCHANGE`, or the one its
    /// template makes of the event. With a template, every placeholder's
    /// value must be a type name ([`crate::routing::is_type_name`]): a rule
    /// about the record alone, so the outcome is the same in every
    /// execution environment (docs/events.md, "Exchanges per event type").
    fn exchange<'e>(&'e self, envelope: &Envelope<'_>) -> Result<Cow<'e, str>, MappingError> {
        let template = match &self.config.exchange {
            Exchange::Fixed(name) => return Ok(Cow::Borrowed(name)),
            Exchange::PerEvent(template) => template,
        };
        let name = template
            .render_exchange(envelope, &|value| self.config.exchange_allow.allows(value))
            .map_err(MappingError::ExchangeTemplate)?;
        // `.unrouted` is appended for its alternate exchange.
        let valid = name.len() <= 255 - ".unrouted".len()
            && !name.is_empty()
            && !name.starts_with("amq.")
            && name.chars().all(exchange_name_char);
        if !valid {
            return Err(MappingError::InvalidExchange);
        }
        Ok(Cow::Owned(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::fixtures::*;
    use crate::publisher::HeaderValue;
    use serde_dynamo::AttributeValue;
    use serde_json::{Value, json};

    #[test]
    fn both_mappings_carry_the_sequence_number_and_refuse_records_without_one() {
        for (converter, mut record) in [
            (converter(), records(INSERTS).remove(0)),
            (
                Converter::new(change_config("customer.events")),
                records(CHANGES).remove(1),
            ),
        ] {
            let seq = record.change.sequence_number.clone().unwrap();
            let (m, body) = publish(converter.plan(&record, now()));
            assert_eq!(body["sequenceNumber"], json!(seq));
            assert_eq!(
                header(&m, "sequenceNumber"),
                Some(&HeaderValue::String(seq))
            );
            for (bad, reason) in [
                (None, "the record has no SequenceNumber"),
                (Some(""), "the record has no SequenceNumber"),
                (
                    Some("41e5"),
                    "attribute `SequenceNumber` is not a string of 1 to 255 digits",
                ),
            ] {
                record.change.sequence_number = bad.map(str::to_owned);
                let (_, got) = dead_letter(converter.plan(&record, now()));
                assert_eq!(got, reason, "{bad:?}");
            }
        }
    }

    #[test]
    fn exchange_allow_dead_letters_a_type_it_does_not_name_with_the_reason() {
        let mut config = MappingConfig::new("unused");
        config.exchange = Exchange::PerEvent(
            crate::routing::RoutingTemplate::parse("{aggregateType}.events").unwrap(),
        );
        config.dead_letter_exchange = "shop.dead-letter".into();
        config.exchange_allow = crate::config::ExchangeAllow::parse("prod*,user").unwrap();
        let c = Converter::new(config);
        // Product, Product, (MODIFY), Order, User, Order.
        let outcomes: Vec<String> = records(INSERTS)
            .iter()
            .filter_map(|r| match c.plan(r, now()) {
                Plan::Publish(m) => Some(m.exchange),
                Plan::DeadLetter { reason, .. } => Some(reason),
                Plan::Skip(_) => None,
            })
            .collect();
        let refused = "exchange (EXCHANGE is a template): {aggregateType} gives \"order\", which \
                       EXCHANGE_ALLOW does not allow";
        assert_eq!(
            outcomes,
            [
                "product.events",
                "product.events",
                refused,
                "user.events",
                refused
            ]
        );
    }

    #[test]
    fn a_templated_exchange_is_chosen_per_event_by_a_rule_about_the_record_alone() {
        let mut config = MappingConfig::new("unused");
        config.exchange = Exchange::PerEvent(
            crate::routing::RoutingTemplate::parse("{aggregateType}.events").unwrap(),
        );
        config.dead_letter_exchange = "shop.dead-letter".into();
        let c = Converter::new(config);
        let mut all = records(INSERTS);
        let event = |r: &EventRecord| c.plan(r, now());
        // Product, Product, (MODIFY), Order, User, Order.
        let exchanges: Vec<String> = all
            .iter()
            .filter_map(|r| match event(r) {
                Plan::Publish(m) => Some(m.exchange),
                Plan::DeadLetter { message, reason } => {
                    assert_eq!(message.exchange, "shop.dead-letter");
                    Some(format!("dead: {reason}"))
                }
                Plan::Skip(_) => None,
            })
            .collect();
        assert_eq!(
            exchanges,
            [
                "product.events",
                "product.events",
                "order.events",
                "user.events",
                "order.events"
            ]
        );
        // The same record gives the same outcome whatever was planned
        // before it: thousands of other types first change nothing.
        let fresh = c.plan(&all[3], now());
        for i in 0..2_000 {
            let mut junk = all[0].clone();
            junk.change.new_image.insert(
                "aggregateType".into(),
                AttributeValue::S(format!("Junk{i}")),
            );
            let _ = event(&junk);
        }
        assert_eq!(c.plan(&all[3], now()), fresh);

        // Without the placeholder's value, or with one no name can hold.
        all[0].change.new_image.remove("aggregateType");
        let (_, reason) = dead_letter(event(&all[0]));
        assert_eq!(
            reason,
            "exchange (EXCHANGE is a template): the event has no aggregateType, needed for {aggregateType}"
        );
        for bad in [
            "Pro duct",
            "",
            "a-type-name-that-goes-on-and-on-for-more-than-sixty-four-characters",
        ] {
            all[0]
                .change
                .new_image
                .insert("aggregateType".into(), AttributeValue::S(bad.into()));
            let (_, reason) = dead_letter(event(&all[0]));
            assert_eq!(
                reason,
                "exchange (EXCHANGE is a template): {aggregateType} gives a value that is not a type name (1 to 64 letters, digits, '.', '_', '-'), so it names no exchange",
                "{bad:?}"
            );
            assert!(!bad.is_empty() && !reason.contains(&bad.to_lowercase()) || bad.is_empty());
        }
    }

    #[test]
    fn a_raw_record_converts_like_a_parsed_one_and_dead_letters_keep_its_bytes() {
        let original: Value = serde_json::from_str(POISON).unwrap();
        let raw = serde_json::to_string(&original["Records"][0]).unwrap();
        let parsed: EventRecord = serde_json::from_str(&raw).unwrap();
        let planned = converter().plan_raw(&raw, now()).into_message();
        let (from_raw, raw_body) = publish(planned.plan.clone());
        let (from_parsed, parsed_body) = publish(converter().plan(&parsed, now()));
        assert_eq!(raw_body, parsed_body);
        assert_eq!(from_raw.routing_key, from_parsed.routing_key);
        assert_eq!(from_raw.properties, from_parsed.properties);
        // The payload keeps the record's attribute order: same record, same bytes.
        assert_eq!(
            converter().plan_raw(&raw, now()).into_message().plan,
            planned.plan
        );
        let text = String::from_utf8(from_raw.body).unwrap();
        assert!(
            text.contains(r#""payload":{"price":5.00,"sku":"SKU-00077"}"#),
            "{text}"
        );
        assert_eq!(
            planned.created,
            Some(parsed.change.approximate_creation_date_time)
        );

        let raw = serde_json::to_string(&original["Records"][1]).unwrap();
        let (m, _) = dead_letter(converter().plan_raw(&raw, now()).into_message().plan);
        assert_eq!(m.body, raw.as_bytes());
    }

    /// A random DynamoDB attribute value as JSON text: every type, valid
    /// and not (numbers past DynamoDB's range, bad base64, unknown or
    /// repeated tags), nested up to 35 levels, in varied spellings.
    fn attribute_text(rng: &mut fastrand::Rng, depth: u32) -> String {
        const STRINGS: &[&str] = &[r#""a""#, r#""""#, r#""\u00e9\n\"q\"""#, r#""😀\/""#];
        const NUMBERS: &[&str] = &["1", "-0.5", "1E+125", "1e400", "01", "1.", "x", "0.000"];
        const BINARIES: &[&str] = &["AQ==", "", "A", "AQ"];
        let pick =
            |rng: &mut fastrand::Rng, from: &[&str]| from[rng.usize(..from.len())].to_owned();
        let space = if rng.u8(..4) == 0 { " " } else { "" };
        let nested = |rng: &mut fastrand::Rng, open: &str, close: &str, keyed: bool| {
            let items: Vec<String> = (0..rng.usize(0..4))
                .map(|i| {
                    let value = attribute_text(rng, depth + 1);
                    if keyed {
                        format!(r#""k{}":{space}{value}"#, i % 3)
                    } else {
                        value
                    }
                })
                .collect();
            format!("{open}{}{close}", items.join(","))
        };
        match rng.u8(..15) {
            _ if depth > 35 => r#"{"NULL":true}"#.to_owned(),
            0 => format!(r#"{{"S":{space}{}}}"#, pick(rng, STRINGS)),
            1 => format!(r#"{{"N":"{}"}}"#, pick(rng, NUMBERS)),
            2 => format!(r#"{{"B":"{}"}}"#, pick(rng, BINARIES)),
            3 => r#"{"BOOL":false}"#.to_owned(),
            4 => format!(r#"{{ "NULL" : {} }}"#, pick(rng, &["true", "1"])),
            5 => format!(r#"{{"SS":[{}]}}"#, pick(rng, &[r#""a","b""#, "", "1"])),
            6 => format!(r#"{{"NS":["{}"]}}"#, pick(rng, NUMBERS)),
            7 => format!(r#"{{"BS":["{}"]}}"#, pick(rng, BINARIES)),
            8..=10 => format!(r#"{{"M":{space}{}}}"#, nested(rng, "{", "}", true)),
            11 | 12 => format!(r#"{{"L":{}}}"#, nested(rng, "[", "]", false)),
            13 => pick(
                rng,
                &[
                    r#"{"S":"a","N":"1"}"#,
                    "{}",
                    r#"{"X":1}"#,
                    r#"{"M":{},"S":"a"}"#,
                    "[]",
                    "null",
                ],
            ),
            _ => {
                let levels = rng.u32(30..36);
                let open = r#"{"M":{"d":"#.repeat(levels as usize);
                format!(r#"{open}{{"N":"1"}}{}"#, "}}".repeat(levels as usize))
            }
        }
    }

    /// Reading a record while transcoding its payload plans it as the
    /// plain read does, on generated records: payloads of every shape,
    /// valid or not, repeated or escaped names, and a payload attribute
    /// another setting also reads. Seeded (`EF_SEED`); a failure prints
    /// the seed and the record.
    #[test]
    fn a_record_read_while_transcoding_its_payload_is_planned_as_the_plain_read_plans_it() {
        let (seed, mut rng) = crate::test_rng();
        let mut renamed = MappingConfig::new("product.events");
        renamed.attributes.payload = "data".into();
        let mut shared = MappingConfig::new("product.events");
        shared.attributes.traceparent = "payload".into();
        let converters = [converter(), Converter::new(renamed), Converter::new(shared)];
        let (mut fused, mut published) = (0, 0);
        for i in 0..3_000 {
            let converter = &converters[i % converters.len()];
            let name = &converter.config.attributes.payload;
            let payload = attribute_text(&mut rng, 1);
            let entry = match rng.u8(..10) {
                0 => String::new(),
                1 => format!(r#""{name}":{payload},"{name}":{{"S":"{{}}"}},"#),
                2 => format!(r#""{}":{payload},"#, name.replace('a', r"\u0061")),
                3 => format!(r#""{name}":{{"S":"{{\"a\":[1,2.50]}}"}},"#),
                _ => format!(r#""{name}":{payload},"#),
            };
            let raw = format!(
                r#"{{"eventID":"e{i}","eventName":"INSERT","eventSource":"aws:dynamodb","eventSourceARN":"arn:aws:dynamodb:eu-west-1:1:table/t/stream/x","dynamodb":{{"ApproximateCreationDateTime":1795348800,"SequenceNumber":"{i}","NewImage":{{"aggregateId":{{"S":"a-1"}},{entry}"version":{{"N":"3"}},"eventType":{{"S":"T"}},"traceparent":{{"S":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}}}}}}"#
            );
            let via = |planned: Planned<Draft<'_>>| {
                let planned = planned.into_message();
                (planned.plan, planned.created, planned.dropped)
            };
            let fast = via(converter.plan_raw(&raw, now()));
            assert_eq!(
                fast,
                via(converter.plan_raw_plain(&raw, now())),
                "EF_SEED={seed}: {raw}"
            );
            if converter.transcoded.is_some()
                && record::read_transcoding(&raw, name)
                    .is_ok_and(|r| r.dynamodb.new_image.is_some_and(|image| image.1.is_some()))
            {
                fused += 1;
            }
            published += usize::from(matches!(fast.0, Plan::Publish(_)));
        }
        // Both ways were taken, and both outcomes seen.
        assert!(
            fused > 1_000 && published > 500 && published < 2_900,
            "{fused} {published}"
        );
    }
}
