//! Dead letters: a record that cannot become an event goes to the
//! dead-letter exchange as it came, with the reason, or as its bounded
//! reference when it is too large for the broker (CONTRACT §5).

use std::borrow::Cow;

use serde_json::value::RawValue;
use uuid::Uuid;

use super::attributes::{arn_table, source};
use super::time::{creation_time, epoch_seconds};
use super::{Converter, MESSAGE_ID_NAMESPACE};
use crate::config::MappingConfig;
use crate::publisher::{HeaderValue, Message, Properties};
use crate::record::{self, Record, Text};

/// A record's text and the converter that read it: what a
/// [`super::Draft`] carries to become its dead letter after the mapping (an
/// enricher's reason, an addition refused).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub(super) raw: &'a str,
    pub(super) converter: &'a Converter,
}

impl Origin<'_> {
    /// The dead letter for `reason`, cut to a header's size; the reason
    /// comes back as it went into `x-error`, for the log.
    pub fn dead_letter(&self, reason: String) -> (Message, String) {
        let reason = capped(reason);
        let limit = self.converter.config.max_message_bytes;
        let message = self.converter.dead_letter_within(self.raw, &reason, limit);
        (message, reason)
    }
}

impl Converter {
    /// The dead-letter message of a record given as JSON text, for a reason
    /// found after the mapping (the broker's refusal), with a body of at
    /// most `limit` bytes (a broker that takes less than
    /// `MAX_MESSAGE_BYTES`).
    pub fn dead_letter_within(&self, raw: &str, reason: &str, limit: usize) -> Message {
        self.dead_letter_bounded(DeadLetterIdentity::lenient(raw), raw, reason, limit)
    }

    /// The dead-letter message: the record as it came, with the reason.
    pub(super) fn dead_letter(&self, id: DeadLetterIdentity, raw: &str, reason: &str) -> Message {
        self.dead_letter_bounded(id, raw, reason, self.config.max_message_bytes)
    }

    /// The dead letter, its body the record as it came when that fits in
    /// `limit` bytes, else the record's bounded reference (CONTRACT §5)
    /// with the record's size in `x-original-size`: a dead letter the
    /// broker refused would stall the shard as the record itself did.
    fn dead_letter_bounded(
        &self,
        id: DeadLetterIdentity,
        raw: &str,
        reason: &str,
        limit: usize,
    ) -> Message {
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

    fn dead_letter_of(&self, id: DeadLetterIdentity, raw: &str, reason: &str) -> Message {
        // Every header bounded where the message is made, whoever gave
        // the reason.
        let mut headers = vec![("x-error", HeaderValue::String(capped(reason.to_owned())))];
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
/// and `SizeBytes` (CONTRACT §5), never the images. Within `limit` bytes as
/// written, escapes included: when it would not fit (only a forged record
/// has such keys or ids; a control character takes six bytes escaped),
/// fields are left out, the least useful first, down to
/// `{"dynamodb":{},"truncated":true}`, which fits any limit the forwarder
/// accepts (4096 at the least).
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
    // Left out while the body is over the limit: the keys first (only a
    // forged record has keys that large), then the largest field left, so
    // that a forged id does not take the others with it.
    let mut body = serde_json::to_vec(&reference).unwrap_or_default();
    let mut dropped_keys = false;
    while body.len() > limit {
        let stream = match reference.get_mut("dynamodb") {
            Some(Value::Object(stream)) => stream,
            _ => break,
        };
        if !dropped_keys {
            dropped_keys = true;
            stream.remove("Keys");
        } else {
            let size = |v: &Value| serde_json::to_vec(v).map_or(0, |b| b.len());
            let in_stream = stream.iter().map(|(k, v)| (size(v), true, k.clone())).max();
            let top = reference
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "dynamodb" | "truncated"))
                .map(|(k, v)| (size(v), false, k.clone()))
                .max();
            match in_stream.max(top) {
                // Only `{"dynamodb":{},"truncated":true}` is left: 32 bytes.
                None => break,
                Some((_, true, name)) => {
                    if let Some(Value::Object(stream)) = reference.get_mut("dynamodb") {
                        stream.remove(&name);
                    }
                }
                Some((_, false, name)) => {
                    reference.remove(&name);
                }
            }
        }
        body = serde_json::to_vec(&reference).unwrap_or_default();
    }
    body
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
pub(super) struct DeadLetterIdentity {
    sequence_number: Option<String>,
    event_id: Option<String>,
    event_source_arn: Option<String>,
    source: Option<String>,
    created_secs: Option<u64>,
}

/// Header values come from the record; anything absurdly long is left out
/// rather than copied into every dead letter's headers.
pub(crate) const MAX_HEADER: usize = 1024;

impl DeadLetterIdentity {
    pub(super) fn of(record: &Record<'_>, config: &MappingConfig) -> Self {
        let text = |t: &Option<Text<'_>>| {
            t.as_deref()
                .filter(|s| s.len() <= MAX_HEADER)
                .map(str::to_owned)
        };
        Self {
            sequence_number: text(&record.dynamodb.sequence_number),
            event_id: text(&record.event_id),
            event_source_arn: text(&record.event_source_arn),
            source: source(config, record).ok().map(Cow::into_owned),
            created_secs: creation_time(record).and_then(|t| u64::try_from(t.timestamp()).ok()),
        }
    }

    /// Whatever can be read from a record that does not parse as one.
    pub(super) fn lenient(raw: &str) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MappingKind;
    use crate::mapping::fixtures::*;
    use serde_dynamo::AttributeValue;
    use serde_json::{Value, json};
    use std::collections::HashMap;

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

    /// A record over `size` bytes whose identity is `event_id`, `arn` and
    /// `seq` (JSON values), its keys `keys`.
    fn oversize(event_id: &Value, arn: &Value, seq: &Value, keys: &Value, size: usize) -> String {
        json!({
            "eventID": event_id,
            "eventName": "INSERT",
            "eventSourceARN": arn,
            "dynamodb": {
                "Keys": keys,
                "NewImage": {"blob": {"S": "x".repeat(size)}},
                "SequenceNumber": seq,
                "SizeBytes": size,
            }
        })
        .to_string()
    }

    #[test]
    fn an_event_id_of_control_characters_keeps_the_reference_within_the_smallest_limit() {
        // Found by an outside review (#28): ids were cut at 1,024 bytes
        // before escaping, so 1,000 control characters (six bytes each,
        // escaped) made a 6,238-byte "bounded" body at MAX_MESSAGE_BYTES
        // 4096, which the broker refused: the record stalled its shard.
        let id = Value::String("\u{1}".repeat(1000));
        let arn = json!("arn:aws:dynamodb:eu-west-1:1:table/t/stream/x");
        let raw = oversize(
            &id,
            &arn,
            &json!("4100000000012345680601"),
            &json!({}),
            5000,
        );
        let m = converter().dead_letter_within(&raw, "too large", 4096);
        assert!(m.body.len() <= 4096, "{}", m.body.len());
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body["truncated"], true);
        // What names the record in its stream is kept.
        assert_eq!(body["dynamodb"]["SequenceNumber"], "4100000000012345680601");
        assert_eq!(body["eventSourceARN"], arn);
    }

    /// One of the shapes a hostile producer (or a forged record) gives a
    /// string: control characters, quotes and backslashes (escaped on the
    /// way out), right-to-left marks, multi-byte characters, at and past
    /// the 1,024 bytes a header takes.
    fn hostile_text(rng: &mut fastrand::Rng) -> String {
        let len = match rng.u8(0..4) {
            0 => rng.usize(0..16),
            1 => rng.usize(1000..1030),
            2 => rng.usize(0..2000),
            _ => 1024,
        };
        let alphabet = [
            '\u{0}', '\u{1f}', '"', '\\', '\u{200f}', '\u{202e}', 'é', '😀', 'a', '1',
        ];
        let pick = rng.usize(0..alphabet.len());
        (0..len)
            .map(|_| {
                if rng.bool() {
                    alphabet[pick]
                } else {
                    alphabet[rng.usize(0..alphabet.len())]
                }
            })
            .collect()
    }

    #[test]
    fn every_dead_letter_is_within_its_limit_whatever_the_ids() {
        // Seeded: a failure names its case, the same on every run.
        let mut rng = fastrand::Rng::with_seed(28);
        let c = converter();
        for case in 0..2000 {
            let limit = match rng.u8(0..20) {
                0..=7 => 4096,
                8..=18 => rng.usize(4096..16_384),
                _ => rng.usize(4096..600_000),
            };
            let text = |rng: &mut fastrand::Rng| Value::String(hostile_text(rng));
            let (id, arn) = (text(&mut rng), text(&mut rng));
            let seq = if rng.bool() {
                Value::String("9".repeat(rng.usize(1..2000)))
            } else {
                text(&mut rng)
            };
            let keys = json!({"aggregateId": {"S": hostile_text(&mut rng)}});
            let size = limit + rng.usize(0..3) * rng.usize(1..5000);
            let raw = oversize(&id, &arn, &seq, &keys, size);
            let reason = hostile_text(&mut rng);
            let m = c.dead_letter_within(&raw, &reason, limit);
            assert!(
                m.body.len() <= limit,
                "case {case}: a dead letter of {} bytes over its limit {limit}",
                m.body.len()
            );
            let body: Value = serde_json::from_slice(&m.body)
                .unwrap_or_else(|e| panic!("case {case}: the body is not JSON: {e}"));
            if raw.len() > limit {
                assert_eq!(body["truncated"], true, "case {case}");
            }
            for (name, value) in &m.properties.headers {
                if let HeaderValue::String(v) = value {
                    assert!(v.len() <= MAX_HEADER, "case {case}: header {name}");
                }
            }
        }
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
        let planned = converter().plan_raw(&raw.to_string(), now()).into_message();
        let (message, _) = dead_letter(planned.plan);
        assert_eq!(message.properties.app_id, "");
    }

    #[test]
    fn a_record_that_does_not_parse_is_dead_lettered_as_it_came() {
        let original: Value = serde_json::from_str(POISON).unwrap();
        let mut broken = original["Records"][0].clone();
        broken["dynamodb"]["NewImage"] = json!(["secret", "not an item"]);
        let raw = serde_json::to_string(&broken).unwrap();

        let planned = converter().plan_raw(&raw, now()).into_message();

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

        let (_, reason) = dead_letter(converter().plan_raw("[1, 2]", now()).into_message().plan);
        assert!(
            reason.starts_with("not a valid DynamoDB stream record"),
            "{reason}"
        );

        // EVENT_SOURCE names the source of such a dead letter too, and an
        // ARN with an empty table name names none.
        let mut config = MappingConfig::new("product.events");
        config.event_source = Some("ProductService".into());
        let (m, _) = dead_letter(
            Converter::new(config)
                .plan_raw(&raw, now())
                .into_message()
                .plan,
        );
        assert_eq!(m.properties.app_id, "ProductService");
        broken["eventSourceARN"] = json!("arn:aws:dynamodb:eu-west-1:1:table//stream/x");
        let raw = serde_json::to_string(&broken).unwrap();
        let (m, _) = dead_letter(converter().plan_raw(&raw, now()).into_message().plan);
        assert_eq!(m.properties.app_id, "");
    }

    #[test]
    fn a_reason_is_cut_to_a_header_size_at_a_character_boundary() {
        let mut change = MappingConfig::new("product.events");
        change.kind = MappingKind::Change;
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
        let (a, _) = dead_letter(converter().plan_raw(first, now()).into_message().plan);
        let (b, _) = dead_letter(converter().plan_raw(second, now()).into_message().plan);
        let (a2, _) = dead_letter(converter().plan_raw(first, now()).into_message().plan);
        assert_ne!(a.properties.message_id, b.properties.message_id);
        assert_eq!(a.properties.message_id, a2.properties.message_id);
    }
}
