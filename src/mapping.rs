//! Stream record to envelope to message, for both mappings (CONTRACT §3).
//!
//! Pure: [`Converter::plan_raw`] decides, for one record given as the JSON
//! text the event source mapping sent, whether it is skipped, published
//! (with its body, routing key and properties ready) or sent to the
//! dead-letter exchange with the reason it could not be converted. The
//! record is read in place ([`crate::record`]): a payload goes from the
//! record's DynamoDB JSON to the message body in one pass.

use std::borrow::Cow;

use aws_lambda_events::dynamodb::EventRecord;
use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::config::{AttributeNames, Exchange, MappingConfig, MappingKind, exchange_name_char};
use crate::envelope::{ENVELOPE_VERSION, Envelope, Payload};
use crate::publisher::{HeaderValue, Message, Properties};
use crate::record::{self, Attr, Image, Record, Text};
use crate::routing::{self, RoutingError};
use crate::trace;

/// Namespace of the UUIDv5 message ids. Part of the public contract: the
/// same record must give the same id in every version of the forwarder.
pub const MESSAGE_ID_NAMESPACE: Uuid = uuid::uuid!("08ebb892-d8fe-430a-aad9-6a1cfb75305c");

/// The principal DynamoDB uses for deletions made by TTL.
const TTL_PRINCIPAL: &str = "dynamodb.amazonaws.com";

/// Why a record cannot become an event. The text goes into the
/// dead-letter `x-error` header: it names attributes, never their values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("the record has no NewImage (is the stream KEYS_ONLY or OLD_IMAGE?)")]
    NoNewImage,
    #[error("the record has no Keys")]
    NoKeys,
    #[error("missing required attribute `{0}`")]
    Missing(String),
    #[error("attribute `{name}` must be {expected}, found {found}")]
    WrongType {
        name: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("attribute `{name}` is {problem}")]
    Invalid { name: String, problem: &'static str },
    #[error("the record has no eventSourceARN naming its table and EVENT_SOURCE is not set")]
    NoTable,
    // DynamoDB's own limit, so only a forged record gets here; the name
    // would not fit the app_id short string.
    #[error("the table name in eventSourceARN is longer than 255 bytes")]
    LongTableName,
    #[error("the record has no eventID")]
    NoEventId,
    #[error("the record has no SequenceNumber")]
    NoSequenceNumber,
    #[error("unknown eventName (expected INSERT, MODIFY or REMOVE)")]
    UnknownEventName,
    #[error("routing key: {0}")]
    Routing(#[from] RoutingError),
    #[error("exchange (EXCHANGE is a template): {0}")]
    ExchangeTemplate(RoutingError),
    // The name is made of the record's values: not quoted.
    #[error(
        "the exchange EXCHANGE's template makes of this event is not a valid name (letters, digits, '-', '_', '.', ':'; at most 246 bytes; not amq.)"
    )]
    InvalidExchange,
    #[error("payload: {0}")]
    Body(String),
}

/// What to do with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Not an event for this mapping (e.g. MODIFY in an event store).
    Skip(&'static str),
    /// Publish to the exchange.
    Publish(Message),
    /// Publish the original record to `<EXCHANGE>.dead-letter`.
    DeadLetter { message: Message, reason: String },
}

/// A record planned from its JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub plan: Plan,
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
}

impl Converter {
    pub fn new(config: MappingConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &MappingConfig {
        &self.config
    }

    /// Plans one record given as the JSON text the event source mapping
    /// sent. `now` stands in for a missing ApproximateCreationDateTime. A
    /// record that does not even parse as a stream record is dead-lettered
    /// as it came, with the path of the problem, instead of failing the
    /// whole batch.
    pub fn plan_raw(&self, raw: &str, now: DateTime<Utc>) -> Planned {
        // Path tracking costs a third of the conversion time (it allocates
        // per field), so it runs only again on the rare record that fails.
        let mut de = serde_json::Deserializer::from_str(raw);
        match Record::deserialize(&mut de).map_err(|_| {
            let mut de = serde_json::Deserializer::from_str(raw);
            serde_path_to_error::deserialize::<_, Record>(&mut de).err()
        }) {
            Ok(record) => {
                let created = creation_time(&record);
                let mut dropped = None;
                let plan = match self.message(&record, now) {
                    Ok(Some(mut message)) => {
                        dropped = self.trace_context(&record, &mut message);
                        Plan::Publish(message)
                    }
                    Ok(None) => Plan::Skip(skip_reason(self.config.mapping)),
                    Err(e) => {
                        let reason = capped(e.to_string());
                        Plan::DeadLetter {
                            message: self.dead_letter(Identity::of(&record, self), raw, &reason),
                            reason,
                        }
                    }
                };
                Planned {
                    plan,
                    created,
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
                        message: self.dead_letter(Identity::lenient(raw), raw, &reason),
                        reason,
                    },
                    created: None,
                    dropped: None,
                }
            }
        }
    }

    /// The item's W3C trace context as the headers `traceparent` and
    /// `tracestate`, from the NewImage of either mapping. An invalid value
    /// is left out (the event is still published); the reason comes back
    /// for a warning.
    fn trace_context(&self, record: &Record<'_>, message: &mut Message) -> Option<String> {
        let item = record.dynamodb.new_image.as_ref()?;
        let names = &self.config.attributes;
        let text = |name: &str| match attr(item, name) {
            Ok(Some(Attr::S(s))) => Ok(Some(s.0)),
            Ok(None | Some(Attr::Null)) => Ok(None),
            _ => Err(()),
        };
        let (parent, state) = (text(&names.traceparent), text(&names.tracestate));
        let dropped = |name: &str, why: &dyn std::fmt::Display| {
            Some(capped(format!(
                "attribute `{name}` is {why}; left out of the headers"
            )))
        };
        let parent = match parent {
            Ok(None) => {
                return match state {
                    Ok(None) => None,
                    _ => dropped(&names.tracestate, &trace::TraceError::Orphan),
                };
            }
            Ok(Some(p)) if trace::check_traceparent(&p).is_ok() => p,
            _ => {
                return dropped(&names.traceparent, &trace::TraceError::Traceparent);
            }
        };
        let headers = &mut message.properties.headers;
        headers.push(("traceparent", HeaderValue::String(parent.into_owned())));
        match state {
            Ok(None) => None,
            Ok(Some(s)) if trace::check_tracestate(&s).is_ok() => {
                headers.push(("tracestate", HeaderValue::String(s.into_owned())));
                None
            }
            _ => dropped(&names.tracestate, &trace::TraceError::Tracestate),
        }
    }

    /// Plans a record already parsed (tests and tools): it is serialized
    /// back to JSON and planned like one that came from the stream.
    pub fn plan(&self, record: &EventRecord, now: DateTime<Utc>) -> Plan {
        match serde_json::to_string(record) {
            Ok(raw) => self.plan_raw(&raw, now).plan,
            // A record that was deserialized always serializes again.
            Err(_) => Plan::Skip("unserializable record"),
        }
    }

    /// The message for a record, `None` when the mapping skips it.
    fn message(
        &self,
        record: &Record<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<Message>, MappingError> {
        let envelope = match self.config.mapping {
            MappingKind::EventStore => self.event_store(record, now)?,
            MappingKind::Change => Some(self.change(record, now)?),
        };
        let Some(envelope) = envelope else {
            return Ok(None);
        };
        let routing_key = self.config.routing_key_template.render(&envelope)?;
        let exchange = self.exchange(&envelope)?;
        let body = envelope
            .to_body()
            .map_err(|e| MappingError::Body(e.to_string()))?;
        Ok(Some(routing::to_message(
            &exchange,
            routing_key,
            &envelope,
            body,
        )))
    }

    /// The exchange of an event: the one of `EXCHANGE`, or the one its
    /// template makes of the event. With a template, every placeholder's
    /// value must be a type name ([`routing::is_type_name`]): a rule about
    /// the record alone, so the outcome is the same in every execution
    /// environment (docs/events.md, "Exchanges per event type").
    fn exchange<'e>(&'e self, envelope: &Envelope<'_>) -> Result<Cow<'e, str>, MappingError> {
        let template = match &self.config.exchange {
            Exchange::Fixed(name) => return Ok(Cow::Borrowed(name)),
            Exchange::PerEvent(template) => template,
        };
        let name = template
            .render_exchange(envelope)
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

    fn source<'a>(&'a self, record: &'a Record<'a>) -> Result<Cow<'a, str>, MappingError> {
        match &self.config.event_source {
            Some(s) => Ok(Cow::Borrowed(s)),
            None => match table_name(record) {
                Some(t) if t.len() > 255 => Err(MappingError::LongTableName),
                Some(t) => Ok(Cow::Borrowed(t)),
                None => Err(MappingError::NoTable),
            },
        }
    }

    /// The `event-store` mapping: an INSERT is one domain event; MODIFY and
    /// REMOVE are skipped (`None`).
    fn event_store<'a>(
        &'a self,
        record: &'a Record<'a>,
        now: DateTime<Utc>,
    ) -> Result<Option<Envelope<'a>>, MappingError> {
        match record.event_name.as_deref() {
            Some("INSERT") => {}
            Some("MODIFY" | "REMOVE") => return Ok(None),
            _ => return Err(MappingError::UnknownEventName),
        }
        let item = match &record.dynamodb.new_image {
            Some(image) if !image.is_empty() => image,
            _ => return Err(MappingError::NoNewImage),
        };
        let names = &self.config.attributes;
        // In this order: a record with several problems is dead-lettered
        // for the first.
        let Required {
            aggregate_id,
            version,
            event_type,
        } = required_attributes(item, names)?;
        let message_version = event_version(item, &names.event_version)?;
        let payload = payload(item, &names.payload)?;
        let timestamp = occurred_at(item, &names.occurred_at)?
            .or_else(|| creation_time(record))
            .unwrap_or(now);
        let source = self.source(record)?;
        let message_id = event_store_id(item, names, record, &aggregate_id, version)?;
        Ok(Some(Envelope {
            message_id,
            message_type: event_type,
            message_version,
            envelope_version: ENVELOPE_VERSION,
            timestamp,
            source,
            correlation_id: optional_short(item, &names.correlation_id)?,
            causation_id: optional_str(item, &names.causation_id)?,
            partition_key: aggregate_id,
            aggregate_type: optional_str(item, &names.aggregate_type)?,
            aggregate_version: Some(version),
            sequence_number: sequence_number(record)?,
            payload,
        }))
    }

    fn change<'a>(
        &'a self,
        record: &'a Record<'a>,
        now: DateTime<Utc>,
    ) -> Result<Envelope<'a>, MappingError> {
        let stream = &record.dynamodb;
        let entity: Cow<'a, str> = match (&self.config.entity_name, table_name(record)) {
            (Some(e), _) => Cow::Borrowed(e),
            (None, Some(t)) => Cow::Owned(pascal_case(t)),
            (None, None) => return Err(MappingError::NoTable),
        };
        let present = |image: &'a Option<Image<'a>>| image.as_ref().filter(|i| !i.is_empty());
        let keys = present(&stream.keys);
        let snapshot = record.event_source.as_deref() == Some(record::BACKFILL_SOURCE);
        let (verb, image) = match record.event_name.as_deref() {
            // A backfill's record is the item as it is now, not a change.
            Some("INSERT") if snapshot => ("Snapshot", present(&stream.new_image)),
            Some("INSERT") => ("Created", present(&stream.new_image)),
            Some("MODIFY") => ("Updated", present(&stream.new_image)),
            Some("REMOVE") => {
                let by_ttl = record
                    .user_identity
                    .as_ref()
                    .and_then(|u| u.principal_id.as_deref())
                    == Some(TTL_PRINCIPAL);
                let verb = if by_ttl { "Expired" } else { "Deleted" };
                (verb, present(&stream.old_image).or(keys))
            }
            _ => return Err(MappingError::UnknownEventName),
        };
        let Some(image) = image else {
            return Err(if keys.is_none() {
                MappingError::NoKeys
            } else {
                MappingError::NoNewImage
            });
        };
        let event_id = record
            .event_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .ok_or(MappingError::NoEventId)?;
        let message_type = format!("{entity}{verb}");
        short("messageType", &message_type)?;
        let key = key_value(keys.ok_or(MappingError::NoKeys)?)?;
        partition_key("Keys", &key)?;
        let message_id = if snapshot {
            snapshot_id(table_name(record).unwrap_or_default(), &key, image)
        } else {
            Uuid::new_v5(&MESSAGE_ID_NAMESPACE, event_id.as_bytes())
        };
        Ok(Envelope {
            message_id: message_id.to_string(),
            message_type: Cow::Owned(message_type),
            message_version: Cow::Borrowed("1.0"),
            envelope_version: ENVELOPE_VERSION,
            timestamp: creation_time(record).unwrap_or(now),
            source: self.source(record)?,
            correlation_id: None,
            causation_id: None,
            partition_key: Cow::Owned(key),
            aggregate_type: Some(entity),
            aggregate_version: None,
            sequence_number: sequence_number(record)?,
            payload: Payload::Image(image),
        })
    }

    /// The dead-letter message of a record given as JSON text, for a reason
    /// found after the mapping (an enricher's, at most 1 KiB).
    pub fn dead_letter_raw(&self, raw: &str, reason: &str) -> Message {
        self.dead_letter_within(raw, reason, self.config.max_message_bytes)
    }

    /// [`Converter::dead_letter_raw`] with a body of at most `limit` bytes
    /// (a broker that takes less than `MAX_MESSAGE_BYTES`).
    pub fn dead_letter_within(&self, raw: &str, reason: &str, limit: usize) -> Message {
        self.dead_letter_bounded(Identity::lenient(raw), raw, reason, limit)
    }

    /// The dead-letter message: the record as it came, with the reason.
    fn dead_letter(&self, id: Identity, raw: &str, reason: &str) -> Message {
        self.dead_letter_bounded(id, raw, reason, self.config.max_message_bytes)
    }

    /// The dead letter, its body the record as it came when that fits in
    /// `limit` bytes, else the record's bounded reference (CONTRACT §5)
    /// with the record's size in `x-original-size`: a dead letter the
    /// broker refused would stall the shard as the record itself did.
    fn dead_letter_bounded(&self, id: Identity, raw: &str, reason: &str, limit: usize) -> Message {
        let mut message = self.dead_letter_of(id, raw, reason);
        if raw.len() > limit {
            message.body = reference_body(raw, &message.properties.headers, limit);
            message
                .properties
                .headers
                .push(("x-original-size", HeaderValue::Int(raw.len() as u64)));
        }
        message
    }

    fn dead_letter_of(&self, id: Identity, raw: &str, reason: &str) -> Message {
        let mut headers = vec![("x-error", HeaderValue::String(reason.to_owned()))];
        if let Some(seq) = id.sequence_number {
            headers.push(("x-sequence-number", HeaderValue::String(seq)));
        }
        let event_id = id.event_id.unwrap_or_default();
        headers.push(("x-event-id", HeaderValue::String(event_id.clone())));
        // Deterministic like every id; without an eventID the record's own
        // bytes name it, so two such dead letters never share an id.
        let message_id = if event_id.is_empty() {
            Uuid::new_v5(&MESSAGE_ID_NAMESPACE, raw.as_bytes())
        } else {
            Uuid::new_v5(&MESSAGE_ID_NAMESPACE, event_id.as_bytes())
        };
        if let Some(arn) = id.event_source_arn {
            headers.push(("x-event-source-arn", HeaderValue::String(arn)));
        }
        Message {
            exchange: self.config.dead_letter_exchange.clone(),
            routing_key: String::new(),
            body: raw.as_bytes().to_vec(),
            properties: Properties {
                message_id: message_id.to_string(),
                correlation_id: None,
                // EVENT_SOURCE first, as for a record that converts.
                app_id: self
                    .config
                    .event_source
                    .clone()
                    .or(id.source)
                    .unwrap_or_default(),
                kind: None,
                timestamp: id.created_secs,
                headers,
                extra_headers: Vec::new(),
            },
        }
    }
}

/// The bounded reference to a record too large to carry: `eventID`,
/// `eventName`, `eventSourceARN` and the stream's `Keys`, `SequenceNumber`
/// and `SizeBytes` (CONTRACT §5), never the images. Keys are left out when
/// even they would not fit (only a forged record has such keys).
fn reference_body(raw: &str, headers: &[(&'static str, HeaderValue)], limit: usize) -> Vec<u8> {
    use serde_json::{Map, Value};
    let header = |name: &str| {
        headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if *n == name => Some(Value::String(s.clone())),
            _ => None,
        })
    };
    let found = record::Reference::read(raw);
    // Raw JSON as the record gave it; a value that is not JSON is left out.
    let json = |v: Option<&RawValue>| v.and_then(|v| serde_json::from_str::<Value>(v.get()).ok());
    let event_name = json(found.event_name).filter(|n| n.as_str().is_some_and(|s| s.len() <= 64));
    let mut stream = Map::new();
    stream.extend(json(found.keys).map(|k| ("Keys".to_string(), k)));
    stream.extend(header("x-sequence-number").map(|s| ("SequenceNumber".to_string(), s)));
    stream.extend(
        json(found.size_bytes)
            .filter(Value::is_number)
            .map(|s| ("SizeBytes".to_string(), s)),
    );
    let mut reference = Map::new();
    reference.extend(header("x-event-id").map(|id| ("eventID".to_string(), id)));
    reference.extend(event_name.map(|n| ("eventName".to_string(), n)));
    reference.extend(header("x-event-source-arn").map(|a| ("eventSourceARN".to_string(), a)));
    reference.insert("dynamodb".into(), Value::Object(stream));
    reference.insert("truncated".into(), Value::Bool(true));
    let body = serde_json::to_vec(&reference).unwrap_or_default();
    if body.len() <= limit {
        return body;
    }
    if let Some(Value::Object(stream)) = reference.get_mut("dynamodb") {
        stream.remove("Keys");
    }
    serde_json::to_vec(&reference).unwrap_or_default()
}

/// The reason an event too large for the broker is dead-lettered; the
/// limit is `MAX_MESSAGE_BYTES`, or the broker's own when it refused less.
pub fn too_large(size: usize, limit: usize, setting: usize) -> String {
    let which = if limit < setting {
        "the broker's own max_message_size, below MAX_MESSAGE_BYTES"
    } else {
        "MAX_MESSAGE_BYTES"
    };
    format!(
        "the event is {size} bytes, over the {limit} bytes the broker takes ({which}): \
         it would be refused on every attempt"
    )
}

/// What identifies a record in the dead-letter headers.
#[derive(Debug, Default)]
struct Identity {
    sequence_number: Option<String>,
    event_id: Option<String>,
    event_source_arn: Option<String>,
    source: Option<String>,
    created_secs: Option<u64>,
}

/// Header values come from the record; anything absurdly long is left out
/// rather than copied into every dead letter's headers.
pub(crate) const MAX_HEADER: usize = 1024;

impl Identity {
    fn of(record: &Record<'_>, converter: &Converter) -> Self {
        let text = |t: &Option<Text<'_>>| {
            t.as_deref()
                .filter(|s| s.len() <= MAX_HEADER)
                .map(str::to_owned)
        };
        Self {
            sequence_number: text(&record.dynamodb.sequence_number),
            event_id: text(&record.event_id),
            event_source_arn: text(&record.event_source_arn),
            source: converter.source(record).ok().map(Cow::into_owned),
            created_secs: creation_time(record).and_then(|t| u64::try_from(t.timestamp()).ok()),
        }
    }

    /// Whatever can be read from a record that does not parse as one.
    fn lenient(raw: &str) -> Self {
        let id = record::Identity::read(raw);
        let cap = |s: Option<String>| s.filter(|s| s.len() <= MAX_HEADER);
        let arn = cap(id.event_source_arn);
        Self {
            sequence_number: cap(id.sequence_number),
            event_id: cap(id.event_id),
            source: arn
                .as_deref()
                .and_then(arn_table)
                .filter(|t| t.len() <= 255)
                .map(str::to_owned),
            event_source_arn: arn,
            created_secs: id
                .created
                .and_then(epoch_seconds)
                .and_then(|t| u64::try_from(t.timestamp()).ok()),
        }
    }
}

/// The attributes every domain event must have.
struct Required<'a> {
    aggregate_id: Cow<'a, str>,
    version: u64,
    event_type: Cow<'a, str>,
}

/// `aggregateId` (S, fits a header), `version` (N, an integer ≥ 0) and
/// `eventType` (S, not empty, fits a short string).
fn required_attributes<'a>(
    item: &Image<'a>,
    names: &AttributeNames,
) -> Result<Required<'a>, MappingError> {
    let aggregate_id = required_str(item, &names.aggregate_id)?;
    partition_key(&names.aggregate_id, &aggregate_id)?;
    let version = match attr(item, &names.version)? {
        None => return Err(MappingError::Missing(names.version.clone())),
        Some(Attr::N(n)) => n.parse::<u64>().map_err(|_| MappingError::Invalid {
            name: names.version.clone(),
            problem: "not a non-negative integer",
        })?,
        Some(other) => return Err(wrong_type(&names.version, "N", &other)),
    };
    let event_type = required_str(item, &names.event_type)?;
    short(&names.event_type, &event_type)?;
    if event_type.is_empty() {
        return Err(MappingError::Invalid {
            name: names.event_type.clone(),
            problem: "empty",
        });
    }
    Ok(Required {
        aggregate_id,
        version,
        event_type,
    })
}

/// `eventVersion` (S or N), `"1.0"` without one.
fn event_version<'a>(item: &Image<'a>, name: &str) -> Result<Cow<'a, str>, MappingError> {
    let version = match attr(item, name)? {
        None => Cow::Borrowed("1.0"),
        Some(Attr::S(s) | Attr::N(s)) => s.0,
        Some(other) => return Err(wrong_type(name, "S or N", &other)),
    };
    short(name, &version)?;
    Ok(version)
}

/// `payload`: a map, or JSON text holding an object; `{}` without one.
fn payload<'a>(item: &Image<'a>, name: &str) -> Result<Payload<'a>, MappingError> {
    let invalid = |problem| MappingError::Invalid {
        name: name.to_owned(),
        problem,
    };
    match attr(item, name)? {
        None | Some(Attr::Null) => Ok(Payload::Empty),
        Some(Attr::Nested("M", raw)) => Ok(Payload::Map(raw)),
        // Parsed in full, not skimmed: a lone surrogate escape or a number
        // out of range would pass a skim and leave consumers with a body
        // they cannot parse.
        Some(Attr::S(s)) => match serde_json::from_str::<serde_json::Value>(&s) {
            Ok(serde_json::Value::Null) => Ok(Payload::Empty),
            // Typed consumers take `payload` as an object.
            Ok(v) if !v.is_object() => Err(invalid("JSON text that is not an object")),
            Ok(_) if json_depth(&s) > MAX_PAYLOAD_DEPTH => {
                Err(invalid("JSON nested more than 32 levels deep"))
            }
            Ok(_) => Ok(Payload::Json(s.0)),
            Err(_) => Err(invalid("not valid JSON")),
        },
        Some(other) => Err(wrong_type(name, "M or S", &other)),
    }
}

/// `occurredAt`: RFC 3339 text or epoch milliseconds, of years 1 to 9999.
fn occurred_at(item: &Image<'_>, name: &str) -> Result<Option<DateTime<Utc>>, MappingError> {
    let invalid = |problem| MappingError::Invalid {
        name: name.to_owned(),
        problem,
    };
    match attr(item, name)? {
        None => Ok(None),
        Some(Attr::S(s)) => DateTime::parse_from_rfc3339(&s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .and_then(rfc3339_year)
            .map(without_leap_second)
            .map(Some)
            .ok_or_else(|| invalid("not an RFC 3339 timestamp of years 1 to 9999")),
        Some(Attr::N(n)) => n
            .parse::<i64>()
            .ok()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .and_then(rfc3339_year)
            .map(Some)
            .ok_or_else(|| invalid("not epoch milliseconds of years 1 to 9999")),
        Some(other) => Err(wrong_type(name, "S or N", &other)),
    }
}

/// A domain event's `messageId`: its `eventId` attribute, else the UUIDv5
/// of `<table>/<aggregateId>/<version>`.
fn event_store_id(
    item: &Image<'_>,
    names: &AttributeNames,
    record: &Record<'_>,
    aggregate_id: &str,
    version: u64,
) -> Result<String, MappingError> {
    match optional_str(item, &names.event_id)? {
        Some(id) if !id.is_empty() => {
            short(&names.event_id, &id)?;
            Ok(id.into_owned())
        }
        _ => {
            let table = table_name(record).ok_or(MappingError::NoTable)?;
            let name = format!("{table}/{aggregate_id}/{version}");
            Ok(Uuid::new_v5(&MESSAGE_ID_NAMESPACE, name.as_bytes()).to_string())
        }
    }
}

/// An optional S attribute that becomes an AMQP short string.
fn optional_short<'a>(item: &Image<'a>, name: &str) -> Result<Option<Cow<'a, str>>, MappingError> {
    let value = optional_str(item, name)?;
    if let Some(v) = &value {
        short(name, v)?;
    }
    Ok(value)
}

fn skip_reason(kind: MappingKind) -> &'static str {
    match kind {
        MappingKind::EventStore => "not an INSERT",
        MappingKind::Change => "not a change",
    }
}

/// The table name from `arn:aws:dynamodb:<region>:<account>:table/<name>/stream/<label>`.
fn table_name<'a>(record: &'a Record<'a>) -> Option<&'a str> {
    record
        .event_source_arn
        .as_deref()
        .and_then(arn_table)
        .or_else(|| record.table_name.as_deref().filter(|t| !t.is_empty()))
}

/// The non-empty table name in a stream ARN.
fn arn_table(arn: &str) -> Option<&str> {
    let (_, rest) = arn.split_once(":table/")?;
    rest.split('/').next().filter(|name| !name.is_empty())
}

/// The id of a snapshot: the same state of an item always gives the same
/// id (a backfill run twice is deduplicated), another state another id.
/// Named by the table, the key and the attributes in name order.
fn snapshot_id(table: &str, key: &str, image: &Image<'_>) -> Uuid {
    let mut attributes: Vec<&(Text<'_>, &RawValue)> = image.0.iter().collect();
    attributes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut name = format!("snapshot/{table}/{key}/");
    for (attribute, value) in attributes {
        name.push_str(attribute);
        name.push('\0');
        name.push_str(value.get());
        name.push('\0');
    }
    Uuid::new_v5(&MESSAGE_ID_NAMESPACE, name.as_bytes())
}

/// The record's SequenceNumber, which consumers compare as an integer:
/// only digits (DynamoDB's are 21 to 40 of them).
fn sequence_number<'a>(record: &'a Record<'a>) -> Result<Cow<'a, str>, MappingError> {
    let seq = record
        .dynamodb
        .sequence_number
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(MappingError::NoSequenceNumber)?;
    if seq.len() > 255 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MappingError::Invalid {
            name: "SequenceNumber".into(),
            problem: "not a string of 1 to 255 digits",
        });
    }
    Ok(Cow::Borrowed(seq))
}

/// `product-catalog` → `ProductCatalog`, `orders_v2` → `OrdersV2`.
pub fn pascal_case(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .flat_map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase())
                .into_iter()
                .chain(chars)
        })
        .collect()
}

/// ApproximateCreationDateTime (epoch seconds, maybe with a fraction);
/// `None` when absent or zero.
fn creation_time(record: &Record<'_>) -> Option<DateTime<Utc>> {
    epoch_seconds(record.dynamodb.approximate_creation?)
}

/// Epoch seconds with a fraction, when positive and of years 1 to 9999.
fn epoch_seconds(secs: f64) -> Option<DateTime<Utc>> {
    if !secs.is_finite() || secs < 1.0 {
        return None;
    }
    let whole = secs.trunc();
    let nanos = ((secs - whole) * 1e9).round().clamp(0.0, 999_999_999.0) as u32;
    // `as` saturates; out-of-range years are refused by chrono.
    Utc.timestamp_opt(whole as i64, nanos)
        .single()
        .and_then(rfc3339_year)
}

/// RFC 3339 has four-digit years (chrono would write others as `+10000`),
/// and year 0 is beyond Python's and .NET's date types.
fn rfc3339_year(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (1..=9999).contains(&t.year()).then_some(t)
}

/// A leap second (`23:59:60`) as the last instant of the second before:
/// RFC 3339 allows it but many consumers' parsers do not.
fn without_leap_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(t.nanosecond().min(999_999_999))
        .unwrap_or(t)
}

/// JSON text gets the nesting DynamoDB allows its maps and lists: with the
/// envelope's level it stays far within consumers' own limits (.NET's
/// default is 64, serde_json's 128).
const MAX_PAYLOAD_DEPTH: usize = record::MAX_NESTING as usize;

/// How deeply arrays and objects nest in `json`, known to be valid JSON.
fn json_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A key value goes into the `partitionKey` header and the body. DynamoDB
/// keys are at most 2048 + 1024 bytes (base64 makes a binary key a third
/// longer); only a non-key aggregateId or a forged record gets past this,
/// and a header that size would exceed the broker's frame size and close
/// the connection for the whole batch.
const MAX_PARTITION_KEY: usize = 8192;

fn partition_key(name: &str, value: &str) -> Result<(), MappingError> {
    if value.len() > MAX_PARTITION_KEY {
        return Err(MappingError::Invalid {
            name: name.to_owned(),
            problem: "longer than 8192 bytes",
        });
    }
    Ok(())
}

/// A reason goes into the `x-error` header and the log: attribute names in
/// it come from the record, so it is cut at [`MAX_HEADER`] bytes.
pub(crate) fn capped(mut reason: String) -> String {
    if reason.len() > MAX_HEADER {
        let mut end = MAX_HEADER - '…'.len_utf8();
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// Key values joined by `#` in attribute-name order.
fn key_value(keys: &Image<'_>) -> Result<String, MappingError> {
    let mut sorted: Vec<&(Text<'_>, &RawValue)> = keys.0.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (i, (name, raw)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push('#');
        }
        match Attr::parse(raw).map_err(|problem| MappingError::Invalid {
            name: name.to_string(),
            problem,
        })? {
            Attr::S(s) | Attr::N(s) | Attr::B(s) => out.push_str(&s),
            other => return Err(wrong_type(name, "S, N or B", &other)),
        }
    }
    Ok(out)
}

fn wrong_type(name: &str, expected: &'static str, found: &Attr<'_>) -> MappingError {
    MappingError::WrongType {
        name: name.to_owned(),
        expected,
        found: found.type_name(),
    }
}

/// Values that become AMQP short strings (message_id, correlation_id, type)
/// are at most 255 bytes.
fn short(name: &str, value: &str) -> Result<(), MappingError> {
    if value.len() > 255 {
        return Err(MappingError::Invalid {
            name: name.to_owned(),
            problem: "longer than 255 bytes",
        });
    }
    Ok(())
}

/// The attribute `name` of `item`, parsed.
fn attr<'a>(item: &Image<'a>, name: &str) -> Result<Option<Attr<'a>>, MappingError> {
    item.get(name)
        .map(|raw| {
            Attr::parse(raw).map_err(|problem| MappingError::Invalid {
                name: name.to_owned(),
                problem,
            })
        })
        .transpose()
}

fn required_str<'a>(item: &Image<'a>, name: &str) -> Result<Cow<'a, str>, MappingError> {
    optional_str(item, name)?.ok_or_else(|| MappingError::Missing(name.to_owned()))
}

fn optional_str<'a>(item: &Image<'a>, name: &str) -> Result<Option<Cow<'a, str>>, MappingError> {
    match attr(item, name)? {
        None | Some(Attr::Null) => Ok(None),
        Some(Attr::S(s)) => Ok(Some(s.0)),
        Some(other) => Err(wrong_type(name, "S", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::dynamodb::Event;
    use chrono::TimeZone;
    use serde_dynamo::AttributeValue;
    use serde_json::{Value, json};
    use std::collections::HashMap;

    const INSERTS: &str = include_str!("../events/insert-batch.json");
    const POISON: &str = include_str!("../events/poison-batch.json");
    const CHANGES: &str = include_str!("../events/change-batch.json");

    fn records(json: &str) -> Vec<EventRecord> {
        serde_json::from_str::<Event>(json).unwrap().records
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap()
    }

    fn converter() -> Converter {
        Converter::new(MappingConfig::new("product.events"))
    }

    fn publish(plan: Plan) -> (Message, Value) {
        match plan {
            Plan::Publish(m) => {
                let body = serde_json::from_slice(&m.body).unwrap();
                (m, body)
            }
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    fn dead_letter(plan: Plan) -> (Message, String) {
        match plan {
            Plan::DeadLetter { message, reason } => (message, reason),
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    fn header<'m>(m: &'m Message, name: &str) -> Option<&'m HeaderValue> {
        m.properties
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn an_insert_becomes_the_contract_envelope() {
        let records = records(INSERTS);
        let (m, body) = publish(converter().plan(&records[0], now()));
        assert_eq!(
            body,
            json!({
                "messageId": "208b257d-cc48-58fe-9af4-b7ba4eb97925",
                "messageType": "ProductCreated",
                "messageVersion": "1.0",
                "envelopeVersion": "1.0",
                "timestamp": "2026-11-22T12:00:00.123Z",
                "source": "product-events",
                "correlationId": "corr-7f3a9c",
                "causationId": "cmd-7f3a9c",
                "partitionKey": "prod-00042",
                "aggregateType": "Product",
                "aggregateVersion": 1,
                "sequenceNumber": "4100000000012345678901",
                "payload": {
                    "name": "Trail running shoe",
                    "price": {"amount": 119.99, "currency": "EUR"},
                    "sizes": [41, 42, 43.5],
                    "sku": "SKU-00042",
                    "tags": ["outdoor", "running"]
                }
            })
        );
        // The number is written as DynamoDB's text, not via f64.
        assert!(String::from_utf8_lossy(&m.body).contains(r#""amount":119.99"#));
        assert_eq!(m.exchange, "product.events");
        assert_eq!(m.routing_key, "product.created.v1");
        assert_eq!(
            m.properties.message_id,
            "208b257d-cc48-58fe-9af4-b7ba4eb97925"
        );
        assert_eq!(m.properties.timestamp, Some(1_795_348_800));
    }

    #[test]
    fn a_38_digit_number_keeps_all_its_digits_in_the_body() {
        let records = records(INSERTS);
        let (m, body) = publish(converter().plan(&records[4], now()));
        assert_eq!(body["messageType"], "UserProfileUpdated");
        assert!(
            String::from_utf8_lossy(&m.body)
                .contains(r#""loyaltyPoints":12345678901234567890123456789012345678"#)
        );
        assert_eq!(body["payload"]["avatar"], "iVBORw0KGgo=");
        assert_eq!(m.routing_key, "user.profile.updated.v1");
    }

    #[test]
    fn modify_and_remove_are_skipped_by_the_event_store_mapping() {
        let mut records = records(INSERTS);
        assert_eq!(records[2].event_name, "MODIFY");
        assert!(matches!(
            converter().plan(&records[2], now()),
            Plan::Skip(_)
        ));
        records[0].event_name = "REMOVE".into();
        assert!(matches!(
            converter().plan(&records[0], now()),
            Plan::Skip(_)
        ));
    }

    #[test]
    fn message_ids_are_deterministic_and_distinct() {
        let records = records(INSERTS);
        let c = converter();
        let ids: Vec<String> = records
            .iter()
            .filter_map(|r| match c.plan(r, now()) {
                Plan::Publish(m) => Some(m.properties.message_id),
                _ => None,
            })
            .collect();
        let again: Vec<String> = records
            .iter()
            .filter_map(|r| match c.plan(r, now() + chrono::Duration::hours(5)) {
                Plan::Publish(m) => Some(m.properties.message_id),
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 5);
        assert_eq!(ids, again);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn an_event_id_attribute_is_used_verbatim() {
        let mut records = records(INSERTS);
        records[0]
            .change
            .new_image
            .insert("eventId".into(), AttributeValue::S("evt-123".into()));
        let (m, body) = publish(converter().plan(&records[0], now()));
        assert_eq!(body["messageId"], "evt-123");
        assert_eq!(m.properties.message_id, "evt-123");
    }

    #[test]
    fn optional_attributes_take_their_defaults_and_other_shapes() {
        let mut records = records(INSERTS);
        let item = &mut records[0].change.new_image;
        for name in [
            "eventVersion",
            "occurredAt",
            "correlationId",
            "causationId",
            "aggregateType",
        ] {
            item.remove(name);
        }
        item.insert(
            "payload".into(),
            AttributeValue::S(r#"{"price": 19.99, "big": 123456789012345678901234567890}"#.into()),
        );
        let (m, body) = publish(converter().plan(&records[0], now()));
        assert_eq!(body["messageVersion"], "1.0");
        assert_eq!(body["timestamp"], "2026-11-22T12:00:00.000Z");
        for absent in ["correlationId", "causationId", "aggregateType"] {
            assert!(body.get(absent).is_none(), "{absent} should be omitted");
        }
        assert!(
            String::from_utf8_lossy(&m.body)
                .contains(r#""payload":{"price": 19.99, "big": 123456789012345678901234567890}"#)
        );
        assert!(m.properties.correlation_id.is_none());

        let item = &mut records[0].change.new_image;
        item.insert("eventVersion".into(), AttributeValue::N("2".into()));
        item.insert(
            "occurredAt".into(),
            AttributeValue::N("1795348800250".into()),
        );
        item.remove("payload");
        let (m, body) = publish(converter().plan(&records[0], now()));
        assert_eq!(body["messageVersion"], "2");
        assert_eq!(body["timestamp"], "2026-11-22T12:00:00.250Z");
        assert_eq!(body["payload"], json!({}));
        assert_eq!(m.routing_key, "product.created.v2");
    }

    #[test]
    fn attribute_names_are_configurable() {
        let mut config = MappingConfig::new("x");
        config.attributes.aggregate_id = "streamId".into();
        config.attributes.event_type = "type".into();
        config.event_source = Some("CatalogService".into());
        let mut records = records(INSERTS);
        let item = &mut records[0].change.new_image;
        let id = item.remove("aggregateId").unwrap();
        item.insert("streamId".into(), id);
        let t = item.remove("eventType").unwrap();
        item.insert("type".into(), t);
        let (_, body) = publish(Converter::new(config).plan(&records[0], now()));
        assert_eq!(body["partitionKey"], "prod-00042");
        assert_eq!(body["messageType"], "ProductCreated");
        assert_eq!(body["source"], "CatalogService");
        // The id depends on the table, aggregate and version only.
        assert_eq!(body["messageId"], "208b257d-cc48-58fe-9af4-b7ba4eb97925");
    }

    #[test]
    fn a_dead_letter_carries_the_record_while_it_fits_and_a_bounded_reference_after() {
        let mut record = records(POISON).remove(1);
        let raw = serde_json::to_string(&record).unwrap();
        let c = converter();
        let whole = c.dead_letter_within(&raw, "why", raw.len());
        assert_eq!(whole.body, raw.as_bytes());
        assert!(header(&whole, "x-original-size").is_none());

        let cut = c.dead_letter_within(&raw, "why", raw.len() - 1);
        assert!(cut.body.len() < raw.len());
        assert_eq!(
            header(&cut, "x-original-size"),
            Some(&HeaderValue::Int(raw.len() as u64))
        );
        let body: Value = serde_json::from_slice(&cut.body).unwrap();
        assert_eq!(body["truncated"], true);
        assert_eq!(body["eventID"], record.event_id.as_str());
        assert_eq!(body["eventName"], "INSERT");
        assert_eq!(
            body["dynamodb"]["SequenceNumber"],
            record.change.sequence_number.as_deref().unwrap()
        );
        assert!(body["dynamodb"]["Keys"].is_object());
        assert!(body["dynamodb"].get("NewImage").is_none());
        // The reference keeps the record's identity in the headers too.
        assert_eq!(
            header(&cut, "x-error"),
            Some(&HeaderValue::String("why".into()))
        );

        // Keys too large for the smallest limit (a forged record) are left
        // out rather than break the bound.
        record
            .change
            .keys
            .insert("aggregateId".into(), AttributeValue::S("k".repeat(5000)));
        let raw = serde_json::to_string(&record).unwrap();
        let cut = c.dead_letter_within(&raw, "why", 4096);
        assert!(cut.body.len() <= 4096, "{}", cut.body.len());
        let body: Value = serde_json::from_slice(&cut.body).unwrap();
        assert!(body["dynamodb"].get("Keys").is_none());
        assert!(body["dynamodb"]["SequenceNumber"].is_string());
    }

    #[test]
    fn a_poison_record_is_dead_lettered_with_its_reason_and_identity() {
        let records = records(POISON);
        let (m, reason) = dead_letter(converter().plan(&records[1], now()));
        assert_eq!(reason, "missing required attribute `eventType`");
        assert_eq!(m.exchange, "product.events.dead-letter");
        assert_eq!(
            header(&m, "x-error"),
            Some(&HeaderValue::String(reason.clone()))
        );
        assert_eq!(
            header(&m, "x-sequence-number"),
            Some(&HeaderValue::String("4100000000012345680601".into()))
        );
        assert_eq!(
            header(&m, "x-event-id"),
            Some(&HeaderValue::String(records[1].event_id.clone()))
        );
        assert_eq!(
            header(&m, "x-event-source-arn"),
            Some(&HeaderValue::String(
                records[1].event_source_arn.clone().unwrap()
            ))
        );
        let original: Value = serde_json::from_str(POISON).unwrap();
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(
            body["dynamodb"]["NewImage"],
            original["Records"][1]["dynamodb"]["NewImage"]
        );
        assert_eq!(body["eventID"], original["Records"][1]["eventID"]);
    }

    #[test]
    fn unconvertible_records_name_the_problem_without_values() {
        let base = records(INSERTS).swap_remove(0);
        type Mutation = Box<dyn Fn(&mut EventRecord)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|r| r.change.new_image.clear()),
                "the record has no NewImage (is the stream KEYS_ONLY or OLD_IMAGE?)",
            ),
            (
                Box::new(|r| {
                    r.change
                        .new_image
                        .insert("version".into(), AttributeValue::S("7".into()));
                }),
                "attribute `version` must be N, found S",
            ),
            (
                Box::new(|r| {
                    r.change
                        .new_image
                        .insert("version".into(), AttributeValue::N("7.5".into()));
                }),
                "attribute `version` is not a non-negative integer",
            ),
            (
                Box::new(|r| {
                    r.change.new_image.insert(
                        "payload".into(),
                        AttributeValue::S("secret <not json>".into()),
                    );
                }),
                "attribute `payload` is not valid JSON",
            ),
            (
                Box::new(|r| {
                    r.change
                        .new_image
                        .insert("occurredAt".into(), AttributeValue::S("yesterday".into()));
                }),
                "attribute `occurredAt` is not an RFC 3339 timestamp of years 1 to 9999",
            ),
            (
                Box::new(|r| {
                    r.change
                        .new_image
                        .insert("eventVersion".into(), AttributeValue::S("beta".into()));
                }),
                "routing key: messageVersion does not start with a number, needed for {major}",
            ),
            (
                Box::new(|r| {
                    r.change.new_image.insert(
                        "payload".into(),
                        AttributeValue::M(
                            [("n".to_string(), AttributeValue::N("1.2.3".into()))].into(),
                        ),
                    );
                }),
                "payload: a number attribute is not a valid decimal number",
            ),
            (
                Box::new(|r| {
                    r.change
                        .new_image
                        .insert("correlationId".into(), AttributeValue::S("c".repeat(256)));
                }),
                "attribute `correlationId` is longer than 255 bytes",
            ),
            (
                Box::new(|r| {
                    r.change
                        .new_image
                        .insert("eventId".into(), AttributeValue::S("e".repeat(256)));
                }),
                "attribute `eventId` is longer than 255 bytes",
            ),
            (
                Box::new(|r| r.event_name = "UPSERT".into()),
                "unknown eventName (expected INSERT, MODIFY or REMOVE)",
            ),
        ];
        for (mutate, expected) in cases {
            let mut record = base.clone();
            mutate(&mut record);
            let (_, reason) = dead_letter(converter().plan(&record, now()));
            assert_eq!(reason, expected);
            assert!(!reason.contains("secret"));
        }
    }

    #[test]
    fn a_table_name_too_long_for_app_id_is_left_out_of_the_dead_letter() {
        let mut record = records(INSERTS).swap_remove(0);
        let long = "t".repeat(256);
        record.event_source_arn = Some(format!(
            "arn:aws:dynamodb:eu-west-1:1:table/{long}/stream/x"
        ));
        let (message, reason) = dead_letter(converter().plan(&record, now()));
        assert!(reason.contains("255"), "{reason}");
        assert_eq!(message.properties.app_id, "");
        // The ARN itself is a long-string header and stays.
        assert!(header(&message, "x-event-source-arn").is_some());
        // The same for a record that does not parse at all.
        let mut raw = serde_json::to_value(&record).unwrap();
        raw["dynamodb"]["NewImage"] = json!("not a map");
        let planned = converter().plan_raw(&raw.to_string(), now());
        let (message, _) = dead_letter(planned.plan);
        assert_eq!(message.properties.app_id, "");
    }

    #[test]
    fn the_change_mapping_names_created_updated_deleted_and_expired() {
        let mut config = MappingConfig::new("customer.events");
        config.mapping = MappingKind::Change;
        let c = Converter::new(config);
        let records = records(CHANGES);
        let planned: Vec<(Message, Value)> =
            records.iter().map(|r| publish(c.plan(r, now()))).collect();
        let types: Vec<&str> = planned
            .iter()
            .map(|(_, b)| b["messageType"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "CustomerAccountsCreated",
                "CustomerAccountsUpdated",
                "CustomerAccountsDeleted",
                "CustomerAccountsExpired"
            ]
        );
        let (m, created) = &planned[0];
        assert_eq!(m.routing_key, "customer.accounts.created.v1");
        assert_eq!(created["partitionKey"], "cust-311");
        assert_eq!(created["messageVersion"], "1.0");
        assert_eq!(created["aggregateType"], "CustomerAccounts");
        assert_eq!(created["timestamp"], "2026-11-22T12:00:32.000Z");
        assert_eq!(created["payload"]["balance"], json!(10.50));
        assert_eq!(planned[1].1["payload"]["tier"], "platinum");
        // Deletions carry the old image.
        assert_eq!(planned[2].1["payload"]["tier"], "platinum");
        assert_eq!(planned[3].1["payload"]["email"], "temp@example.com");
        assert!(created.get("aggregateVersion").is_none());
        assert_eq!(
            created["messageId"],
            Uuid::new_v5(&MESSAGE_ID_NAMESPACE, records[0].event_id.as_bytes()).to_string()
        );
    }

    #[test]
    fn both_mappings_carry_the_sequence_number_and_refuse_records_without_one() {
        let mut config = MappingConfig::new("customer.events");
        config.mapping = MappingKind::Change;
        for (converter, mut record) in [
            (converter(), records(INSERTS).remove(0)),
            (Converter::new(config), records(CHANGES).remove(1)),
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
    fn a_backfilled_item_is_a_snapshot_with_an_id_of_its_state() {
        let mut config = MappingConfig::new("customer.events");
        config.mapping = MappingKind::Change;
        let c = Converter::new(config);
        let insert = records(CHANGES).remove(0);
        let plan = |record: &Value| c.plan_raw(&record.to_string(), now()).plan;
        let mut backfilled = serde_json::to_value(&insert).unwrap();
        backfilled["eventSource"] = json!(record::BACKFILL_SOURCE);

        let (m, body) = publish(plan(&backfilled));
        assert_eq!(body["messageType"], "CustomerAccountsSnapshot");
        assert_eq!(m.routing_key, "customer.accounts.snapshot.v1");
        let (_, live) = publish(c.plan(&insert, now()));
        assert_ne!(body["messageId"], live["messageId"]);
        assert_eq!(body["payload"], live["payload"]);

        // The same state gives the same id, whatever the attribute order
        // or the eventID; another state another id.
        let image = backfilled["dynamodb"]["NewImage"].as_object().unwrap();
        let reversed: Vec<String> = image
            .iter()
            .rev()
            .map(|(k, v)| format!("{}:{v}", json!(k)))
            .collect();
        let mut other_id = backfilled.clone();
        other_id["eventID"] = json!("another");
        let text = other_id.to_string().replace(
            &json!(image).to_string(),
            &format!("{{{}}}", reversed.join(",")),
        );
        assert!(text.contains(&reversed.join(",")));
        let reordered = c.plan_raw(&text, now()).plan;
        assert_eq!(publish(reordered).1["messageId"], body["messageId"]);
        let mut changed = backfilled.clone();
        changed["dynamodb"]["NewImage"]["tier"] = json!({"S": "bronze"});
        assert_ne!(publish(plan(&changed)).1["messageId"], body["messageId"]);
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
    fn an_items_trace_context_becomes_headers_and_a_malformed_one_is_left_out() {
        const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut record = records(INSERTS).remove(0);
        let set = |r: &mut EventRecord, name: &str, v: &str| {
            r.change
                .new_image
                .insert(name.into(), AttributeValue::S(v.into()));
        };
        let planned =
            |c: &Converter, r: &EventRecord| c.plan_raw(&serde_json::to_string(r).unwrap(), now());
        let trace = |m: &Message| {
            ["traceparent", "tracestate"].map(|n| match header(m, n) {
                Some(HeaderValue::String(s)) => Some(s.clone()),
                _ => None,
            })
        };
        set(&mut record, "traceparent", PARENT);
        set(&mut record, "tracestate", "rojo=00f067aa0ba902b7");
        let p = planned(&converter(), &record);
        let (m, _) = publish(p.plan);
        assert_eq!(
            trace(&m),
            [Some(PARENT.into()), Some("rojo=00f067aa0ba902b7".into())]
        );
        assert_eq!(p.dropped, None);

        // A bad tracestate goes; the traceparent stays.
        set(&mut record, "tracestate", "Not Valid");
        let p = planned(&converter(), &record);
        assert_eq!(
            p.dropped.as_deref(),
            Some(
                "attribute `tracestate` is not a W3C tracestate (at most 32 key=value members, 512 bytes); left out of the headers"
            )
        );
        assert_eq!(trace(&publish(p.plan).0), [Some(PARENT.into()), None]);

        // A bad traceparent takes its tracestate with it; the value is not
        // in the reason, and the event is still published.
        set(&mut record, "traceparent", "secret-looking-garbage");
        set(&mut record, "tracestate", "rojo=1");
        let p = planned(&converter(), &record);
        let why = p.dropped.clone().unwrap();
        assert!(
            why.starts_with("attribute `traceparent` is not a W3C traceparent"),
            "{why}"
        );
        assert!(!why.contains("garbage"));
        assert_eq!(trace(&publish(p.plan).0), [None, None]);

        // Names are configurable.
        let mut config = MappingConfig::new("product.events");
        config.attributes.traceparent = "trace".into();
        let mut renamed = records(INSERTS).remove(0);
        set(&mut renamed, "trace", PARENT);
        let (m, _) = publish(planned(&Converter::new(config), &renamed).plan);
        assert_eq!(trace(&m)[0].as_deref(), Some(PARENT));
    }

    #[test]
    fn the_change_mapping_joins_composite_keys_and_uses_keys_when_no_old_image() {
        let mut config = MappingConfig::new("x");
        config.mapping = MappingKind::Change;
        config.entity_name = Some("Customer".into());
        let mut record = records(CHANGES).swap_remove(2);
        record.change.old_image.clear();
        record
            .change
            .keys
            .insert("accountNo".into(), AttributeValue::N("42".into()));
        let (m, body) = publish(Converter::new(config).plan(&record, now()));
        assert_eq!(body["messageType"], "CustomerDeleted");
        assert_eq!(body["partitionKey"], "42#cust-311");
        assert_eq!(
            body["payload"],
            json!({"accountNo": 42, "customerId": "cust-311"})
        );
        assert_eq!(m.routing_key, "customer.deleted.v1");
    }

    #[test]
    fn the_ids_of_the_change_mapping_follow_the_documented_formula() {
        let mut config = MappingConfig::new("x");
        config.mapping = MappingKind::Change;
        let mut record = records(CHANGES).swap_remove(0);
        record.event_id = "c81e728d9d4c2f636f067f89cc148620".into();
        let (_, body) = publish(Converter::new(config).plan(&record, now()));
        assert_eq!(body["messageId"], "699a8279-e0d3-5ec5-98bb-b5c1e6fd63e5");
    }

    #[test]
    fn a_record_that_does_not_parse_is_dead_lettered_as_it_came() {
        let original: Value = serde_json::from_str(POISON).unwrap();
        let mut broken = original["Records"][0].clone();
        broken["dynamodb"]["NewImage"] = json!(["secret", "not an item"]);
        let raw = serde_json::to_string(&broken).unwrap();

        let planned = converter().plan_raw(&raw, now());

        let (m, reason) = dead_letter(planned.plan);
        assert!(
            reason.starts_with(
                "not a valid DynamoDB stream record: data error at `dynamodb.NewImage"
            ),
            "{reason}"
        );
        assert!(!reason.contains("secret"), "{reason}");
        assert_eq!(m.body, raw.as_bytes());
        assert_eq!(
            header(&m, "x-sequence-number"),
            Some(&HeaderValue::String("4100000000012345680501".into()))
        );
        assert_eq!(m.properties.app_id, "product-events");
        assert_eq!(planned.created, None);

        let (_, reason) = dead_letter(converter().plan_raw("[1, 2]", now()).plan);
        assert!(
            reason.starts_with("not a valid DynamoDB stream record"),
            "{reason}"
        );

        // EVENT_SOURCE names the source of such a dead letter too, and an
        // ARN with an empty table name names none.
        let mut config = MappingConfig::new("product.events");
        config.event_source = Some("ProductService".into());
        let (m, _) = dead_letter(Converter::new(config).plan_raw(&raw, now()).plan);
        assert_eq!(m.properties.app_id, "ProductService");
        broken["eventSourceARN"] = json!("arn:aws:dynamodb:eu-west-1:1:table//stream/x");
        let raw = serde_json::to_string(&broken).unwrap();
        let (m, _) = dead_letter(converter().plan_raw(&raw, now()).plan);
        assert_eq!(m.properties.app_id, "");
    }

    #[test]
    fn a_raw_record_converts_like_a_parsed_one_and_dead_letters_keep_its_bytes() {
        let original: Value = serde_json::from_str(POISON).unwrap();
        let raw = serde_json::to_string(&original["Records"][0]).unwrap();
        let parsed: EventRecord = serde_json::from_str(&raw).unwrap();
        let planned = converter().plan_raw(&raw, now());
        let (from_raw, raw_body) = publish(planned.plan.clone());
        let (from_parsed, parsed_body) = publish(converter().plan(&parsed, now()));
        assert_eq!(raw_body, parsed_body);
        assert_eq!(from_raw.routing_key, from_parsed.routing_key);
        assert_eq!(from_raw.properties, from_parsed.properties);
        // The payload keeps the record's attribute order: same record, same bytes.
        assert_eq!(converter().plan_raw(&raw, now()).plan, planned.plan);
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
        let (m, _) = dead_letter(converter().plan_raw(&raw, now()).plan);
        assert_eq!(m.body, raw.as_bytes());
    }

    #[test]
    fn a_json_payload_must_parse_strictly_and_null_means_empty() {
        let mut records = records(INSERTS);
        for bad in [r#"{"x":"\ud800"}"#, r#"{"x":1e400}"#, "{", "secret"] {
            records[0]
                .change
                .new_image
                .insert("payload".into(), AttributeValue::S(bad.into()));
            let (_, reason) = dead_letter(converter().plan(&records[0], now()));
            assert_eq!(reason, "attribute `payload` is not valid JSON", "{bad}");
        }
        for not_an_object in ["42", r#""x""#, "[1]", "true", " [] "] {
            records[0]
                .change
                .new_image
                .insert("payload".into(), AttributeValue::S(not_an_object.into()));
            let (_, reason) = dead_letter(converter().plan(&records[0], now()));
            assert_eq!(
                reason, "attribute `payload` is JSON text that is not an object",
                "{not_an_object}"
            );
        }
        records[0]
            .change
            .new_image
            .insert("payload".into(), AttributeValue::S("null".into()));
        let (_, body) = publish(converter().plan(&records[0], now()));
        assert_eq!(body["payload"], json!({}));
    }

    #[test]
    fn timestamps_outside_four_digit_years_are_refused() {
        let mut records = records(INSERTS);
        // 10000-01-01 and the last millisecond of year 0.
        for ms in ["253402300800000", "-62135596800001"] {
            records[0]
                .change
                .new_image
                .insert("occurredAt".into(), AttributeValue::N(ms.into()));
            let (_, reason) = dead_letter(converter().plan(&records[0], now()));
            assert_eq!(
                reason,
                "attribute `occurredAt` is not epoch milliseconds of years 1 to 9999"
            );
        }
        // A creation time that far out is ignored, the invocation time used.
        records[0].change.new_image.remove("occurredAt");
        let mut raw: Value = serde_json::to_value(&records[0]).unwrap();
        raw["dynamodb"]["ApproximateCreationDateTime"] = json!(1e13);
        let planned = converter().plan_raw(&raw.to_string(), now());
        let (_, body) = publish(planned.plan);
        assert_eq!(body["timestamp"], "2026-11-23T08:00:00.000Z");
    }

    #[test]
    fn occurred_at_texts_outside_four_digit_utc_years_are_refused() {
        let mut records = records(INSERTS);
        // In range as written, out of range once in UTC.
        for text in [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:30:00-01:00",
            "0000-06-01T00:00:00Z",
        ] {
            records[0]
                .change
                .new_image
                .insert("occurredAt".into(), AttributeValue::S(text.into()));
            let (_, reason) = dead_letter(converter().plan(&records[0], now()));
            assert_eq!(
                reason, "attribute `occurredAt` is not an RFC 3339 timestamp of years 1 to 9999",
                "{text}"
            );
        }
        for (text, published) in [
            ("0001-01-01T00:30:00+00:30", "0001-01-01T00:00:00.000Z"),
            ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
            // A leap second becomes the end of the second before it.
            ("2016-12-31T23:59:60.5Z", "2016-12-31T23:59:59.999Z"),
        ] {
            records[0]
                .change
                .new_image
                .insert("occurredAt".into(), AttributeValue::S(text.into()));
            let (m, body) = publish(converter().plan(&records[0], now()));
            assert_eq!(body["timestamp"], published, "{text}");
            let again = serde_json::from_slice::<Value>(&m.body).unwrap();
            assert_eq!(again["timestamp"], published);
        }
    }

    #[test]
    fn a_json_payload_nested_past_32_levels_is_refused() {
        let mut records = records(INSERTS);
        let nested = |levels: usize| {
            // Brackets inside strings do not count.
            format!(
                "{}\"[{{\\\"\"{}",
                "{\"a\":".repeat(levels),
                "}".repeat(levels)
            )
        };
        records[0]
            .change
            .new_image
            .insert("payload".into(), AttributeValue::S(nested(32)));
        let (_, body) = publish(converter().plan(&records[0], now()));
        let mut inner = &body["payload"];
        for _ in 0..31 {
            inner = &inner["a"];
        }
        assert_eq!(inner, &json!({"a": "[{\""}));
        records[0]
            .change
            .new_image
            .insert("payload".into(), AttributeValue::S(nested(33)));
        let (_, reason) = dead_letter(converter().plan(&records[0], now()));
        assert_eq!(
            reason,
            "attribute `payload` is JSON nested more than 32 levels deep"
        );
    }

    #[test]
    fn values_too_long_for_a_header_are_refused() {
        let mut records = records(INSERTS);
        let base = records[0].clone();
        records[0].change.new_image.insert(
            "eventVersion".into(),
            AttributeValue::S(format!("1.{}", "0".repeat(254))),
        );
        let (_, reason) = dead_letter(converter().plan(&records[0], now()));
        assert_eq!(reason, "attribute `eventVersion` is longer than 255 bytes");
        records[0].change.new_image.insert(
            "eventVersion".into(),
            AttributeValue::S(format!("1.{}", "0".repeat(253))),
        );
        let (m, _) = publish(converter().plan(&records[0], now()));
        assert_eq!(
            header(&m, "messageVersion"),
            Some(&HeaderValue::String(format!("1.{}", "0".repeat(253))))
        );
        records[0] = base.clone();
        records[0]
            .change
            .new_image
            .insert("aggregateId".into(), AttributeValue::S("a".repeat(8193)));
        let (_, reason) = dead_letter(converter().plan(&records[0], now()));
        assert_eq!(reason, "attribute `aggregateId` is longer than 8192 bytes");
        records[0] = base;
        records[0]
            .change
            .new_image
            .insert("aggregateId".into(), AttributeValue::S("a".repeat(8192)));
        let (m, _) = publish(converter().plan(&records[0], now()));
        assert_eq!(
            header(&m, "partitionKey"),
            Some(&HeaderValue::String("a".repeat(8192)))
        );
    }

    #[test]
    fn change_keys_too_long_for_a_header_are_refused() {
        let mut change = MappingConfig::new("product.events");
        change.mapping = MappingKind::Change;
        let converter = Converter::new(change);
        let mut records = records(CHANGES);
        // Two keys joined by `#`: 8,192 bytes in all is the most allowed.
        for (sort_key, fits) in [(4095, true), (4096, false)] {
            records[0].change.keys = HashMap::from([
                ("a".to_string(), AttributeValue::S("p".repeat(4096))),
                ("b".to_string(), AttributeValue::S("s".repeat(sort_key))),
            ])
            .into();
            match converter.plan(&records[0], now()) {
                Plan::Publish(m) if fits => {
                    let key = format!("{}#{}", "p".repeat(4096), "s".repeat(sort_key));
                    assert_eq!(header(&m, "partitionKey"), Some(&HeaderValue::String(key)));
                }
                Plan::DeadLetter { reason, .. } if !fits => {
                    assert_eq!(reason, "attribute `Keys` is longer than 8192 bytes");
                }
                other => panic!("{sort_key}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_reason_is_cut_to_a_header_size_at_a_character_boundary() {
        let mut change = MappingConfig::new("product.events");
        change.mapping = MappingKind::Change;
        let mut records = records(CHANGES);
        let name = format!("k{}", "é".repeat(2000));
        records[0].change.keys = HashMap::from([(name, AttributeValue::Bool(true))]).into();
        let (m, reason) = dead_letter(Converter::new(change).plan(&records[0], now()));
        assert!(reason.starts_with("attribute `ké"), "{reason}");
        assert!(reason.ends_with('…'));
        assert!((1020..=1024).contains(&reason.len()), "{}", reason.len());
        assert_eq!(
            header(&m, "x-error"),
            Some(&HeaderValue::String(reason.clone()))
        );
    }

    #[test]
    fn dead_letters_without_an_event_id_get_distinct_ids() {
        let first = r#"{"dynamodb": 1}"#;
        let second = r#"{"dynamodb": 2}"#;
        let (a, _) = dead_letter(converter().plan_raw(first, now()).plan);
        let (b, _) = dead_letter(converter().plan_raw(second, now()).plan);
        let (a2, _) = dead_letter(converter().plan_raw(first, now()).plan);
        assert_ne!(a.properties.message_id, b.properties.message_id);
        assert_eq!(a.properties.message_id, a2.properties.message_id);
    }

    #[test]
    fn table_names_come_from_the_stream_arn() {
        let records = records(INSERTS);
        let raw = serde_json::to_string(&records[0]).unwrap();
        let record: Record = serde_json::from_str(&raw).unwrap();
        assert_eq!(table_name(&record), Some("product-events"));
        assert_eq!(pascal_case("customer-accounts"), "CustomerAccounts");
        assert_eq!(pascal_case("orders_v2"), "OrdersV2");
        assert_eq!(pascal_case("Products"), "Products");
    }

    #[test]
    fn a_missing_creation_time_falls_back_to_now() {
        let mut record = records(INSERTS).swap_remove(0);
        record.change.new_image.remove("occurredAt");
        record.change.approximate_creation_date_time = DateTime::default();
        let (_, body) = publish(converter().plan(&record, now()));
        assert_eq!(body["timestamp"], "2026-11-23T08:00:00.000Z");
    }
}
