//! Shared by the fuzz targets: plan records with both mappings and check
//! what every plan must satisfy, whatever the input.

use std::collections::HashMap;

use arbitrary::{Arbitrary, Result, Unstructured};
use aws_lambda_events::dynamodb::EventRecord;
use chrono::{DateTime, TimeZone, Utc};
use event_forwarder::RecordText;
use event_forwarder::convert::{Converter, HeaderValue, MappingConfig, MappingKind, Message, Plan};
use serde_dynamo::AttributeValue;

/// Both mappings, each with the deepest body it may publish: DynamoDB's 32
/// levels of maps and lists, a set's array inside the last, the envelope's
/// object and, for the change mapping, the item's own.
fn converters() -> [(Converter, usize); 2] {
    let mut change = MappingConfig::new("fuzz.events");
    change.kind = MappingKind::Change;
    [
        (Converter::new(MappingConfig::new("fuzz.events")), 34),
        (Converter::new(change), 35),
    ]
}

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_795_348_800, 0)
        .single()
        .unwrap_or_default()
}

/// Plans every record with both mappings and checks the invariants: a
/// published body is JSON with the envelope's required fields, a
/// dead letter has a reason, names fit AMQP short strings, and the same
/// record gives the same bytes twice (message ids are deterministic).
pub fn check_records(records: &[EventRecord]) {
    for (converter, max_depth) in converters() {
        for record in records {
            check(
                &converter.plan(record, now()),
                &converter.plan(record, now()),
                max_depth,
            );
        }
    }
}

/// The same for records as the batch loop gets them: raw JSON text, read
/// while transcoding the payload and read the plain way, alike.
pub fn check_raw<R: RecordText>(records: &[R]) {
    for (converter, max_depth) in converters() {
        for raw in records {
            check(
                &converter.plan_raw(raw.text(), now()).into_message().plan,
                &converter
                    .plan_raw_plain(raw.text(), now())
                    .into_message()
                    .plan,
                max_depth,
            );
        }
    }
}

/// Header values must keep the header frame far below the broker's frame
/// size (128 KiB), or the broker closes the connection.
fn header_bytes(m: &Message) -> usize {
    m.properties
        .headers
        .iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    HeaderValue::String(s) => s.len(),
                    HeaderValue::Int(_) => 8,
                }
        })
        .sum()
}

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check(first: &Plan, again: &Plan, max_depth: usize) {
    match (first, again) {
        (Plan::Publish(m), Plan::Publish(n)) => {
            assert_eq!(m, n, "the same record gave two messages");
            let body: serde_json::Value =
                serde_json::from_slice(&m.body).expect("a published body is JSON");
            for field in ["messageId", "messageType", "timestamp", "partitionKey"] {
                assert!(body.get(field).is_some(), "no {field} in {body}");
            }
            // RFC 3339 with four-digit years, no leap second, in UTC.
            let timestamp = body["timestamp"].as_str().expect("a timestamp text");
            assert_eq!(timestamp.len(), 24, "{timestamp}");
            assert!(
                DateTime::parse_from_rfc3339(timestamp).is_ok(),
                "{timestamp}"
            );
            assert!(!timestamp.contains(":60"), "{timestamp}");
            assert!(header_bytes(m) <= 8192 + 255 + 64, "{}", header_bytes(m));
            assert!(depth(&body) <= max_depth, "{}", depth(&body));
            assert!(m.routing_key.len() <= 255);
            assert!(m.properties.message_id.len() <= 255);
            assert!(m.properties.app_id.len() <= 255);
            assert!(m.properties.kind.as_ref().is_none_or(|k| k.len() <= 255));
            assert!(
                m.properties
                    .correlation_id
                    .as_ref()
                    .is_none_or(|c| c.len() <= 255)
            );
        }
        (Plan::DeadLetter { message: m, reason }, Plan::DeadLetter { message: n, .. }) => {
            assert_eq!(m, n, "the same record gave two dead letters");
            assert!(!reason.is_empty());
            assert!(reason.len() <= 1024, "{}", reason.len());
            assert!(header_bytes(m) <= 4 * 1024 + 64, "{}", header_bytes(m));
            assert!(m.properties.app_id.len() <= 255);
        }
        (Plan::Skip(_), Plan::Skip(_)) => {}
        _ => panic!("the same record was planned two ways"),
    }
}

/// An attribute value of bounded depth, built from fuzz input.
fn attribute(u: &mut Unstructured<'_>, depth: u32) -> Result<AttributeValue> {
    let leaf_only = depth >= 40;
    let kind = u.int_in_range(0..=if leaf_only { 7 } else { 9 })?;
    Ok(match kind {
        0 => AttributeValue::S(String::arbitrary(u)?),
        1 => AttributeValue::N(number(u)?),
        2 => AttributeValue::Bool(bool::arbitrary(u)?),
        3 => AttributeValue::Null(true),
        4 => AttributeValue::B(Vec::<u8>::arbitrary(u)?),
        5 => AttributeValue::Ss(Vec::<String>::arbitrary(u)?),
        6 => AttributeValue::Ns(
            (0..u.int_in_range(0..=8)?)
                .map(|_| number(u))
                .collect::<Result<_>>()?,
        ),
        7 => AttributeValue::Bs(Vec::<Vec<u8>>::arbitrary(u)?),
        8 => AttributeValue::L(
            (0..u.int_in_range(0..=4)?)
                .map(|_| attribute(u, depth + 1))
                .collect::<Result<_>>()?,
        ),
        _ => AttributeValue::M(map(u, depth + 1)?),
    })
}

fn map(u: &mut Unstructured<'_>, depth: u32) -> Result<HashMap<String, AttributeValue>> {
    (0..u.int_in_range(0..=4)?)
        .map(|_| Ok((String::arbitrary(u)?, attribute(u, depth)?)))
        .collect()
}

/// Mostly numbers as DynamoDB writes them, sometimes anything at all.
fn number(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=3)? {
        0 => i64::arbitrary(u)?.to_string(),
        1 => format!("{}.{}", i32::arbitrary(u)?, u32::arbitrary(u)?),
        2 => format!("{}E{}", u8::arbitrary(u)?, i16::arbitrary(u)? % 131),
        _ => String::arbitrary(u)?,
    })
}

/// An RFC 3339 text at the edges: years 0 and 9999, leap seconds, offsets.
fn timestamp(u: &mut Unstructured<'_>) -> Result<String> {
    let year = *u.choose(&[0, 1, 1970, 2026, 9998, 9999])?;
    let offset = match u.int_in_range(0..=2)? {
        0 => "Z".to_string(),
        sign => format!(
            "{}{:02}:{:02}",
            if sign == 1 { '+' } else { '-' },
            u.int_in_range(0..=23)?,
            u.int_in_range(0..=59)?
        ),
    };
    Ok(format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{offset}",
        u.int_in_range(1..=12)?,
        u.int_in_range(1..=31)?,
        u.int_in_range(0..=23)?,
        u.int_in_range(0..=59)?,
        u.int_in_range(0..=60)?,
        u.int_in_range(0..=999)?,
    ))
}

/// A stream record whose images hold fuzz-chosen attributes, often with the
/// event-store attributes present under their default names.
pub fn record(u: &mut Unstructured<'_>) -> Result<EventRecord> {
    let mut image = map(u, 0)?;
    for name in [
        "aggregateId",
        "version",
        "eventType",
        "eventVersion",
        "payload",
        "occurredAt",
        "correlationId",
        "causationId",
        "eventId",
        "aggregateType",
    ] {
        if u.ratio(2, 3)? {
            let value = match (name, u.ratio(3, 4)?) {
                ("version", true) => AttributeValue::N(u64::arbitrary(u)?.to_string()),
                ("occurredAt", true) => AttributeValue::S(timestamp(u)?),
                ("payload", true) if u.ratio(1, 4)? => {
                    // JSON text nested around the limit of 32 levels.
                    let levels = u.int_in_range(0..=130)?;
                    AttributeValue::S(format!("{}{}", "[".repeat(levels), "]".repeat(levels)))
                }
                ("payload" | "occurredAt", _) | (_, false) => attribute(u, 0)?,
                (_, true) => AttributeValue::S(String::arbitrary(u)?),
            };
            image.insert(name.to_string(), value);
        }
    }
    let mut record = EventRecord::default();
    record.event_id = String::arbitrary(u)?;
    record.event_name = u.choose(&["INSERT", "MODIFY", "REMOVE", ""])?.to_string();
    record.event_source_arn = Some(match u.int_in_range(0..=3)? {
        0 => "arn:aws:dynamodb:eu-west-1:123456789012:table/fuzz-events/stream/2026-11-01T00:00:00.000"
            .to_string(),
        1 => String::new(),
        2 => "arn:aws:dynamodb:eu-west-1:1:table/".to_string(),
        // A table name of any length, DynamoDB's 255 or beyond.
        _ => format!(
            "arn:aws:dynamodb:eu-west-1:1:table/{}/stream/x",
            "t".repeat(u.int_in_range(1..=300)?)
        ),
    });
    record.change.sequence_number = Some(u64::arbitrary(u)?.to_string());
    record.change.keys = map(u, 30)?.into();
    record.change.new_image = image.into();
    if u.arbitrary()? {
        record.change.old_image = map(u, 0)?.into();
    }
    Ok(record)
}

/// The stall oracle of #28 (CONTRACT §6.9) on one raw stream record as the
/// batch loop gets it, through draft to message, with a fixed and a
/// templated exchange and `MAX_MESSAGE_BYTES` at its smallest and its
/// default: no panic; a message keeps every property within 255 bytes and
/// all its headers within the budget (so no record can make a header frame
/// the broker refuses); and whatever the record, its dead letter for any
/// reason is within the limit, escaping included, with every header within
/// 1 KiB.
pub fn check_stall(raw: &str) {
    use event_forwarder::convert::{HEADER_BUDGET, header_bytes, within_budget};
    for limit in [4096, 524_288] {
        for template in [false, true] {
            let mut config = MappingConfig::new("fuzz.events");
            config.max_message_bytes = limit;
            if template {
                config = templated(config);
            }
            let converter = Converter::new(config);
            match converter.plan_raw(raw, now()).into_message().plan {
                Plan::Publish(m) => {
                    assert_eq!(within_budget(&m), Ok(()));
                    assert!(header_bytes(&m.properties) <= HEADER_BUDGET);
                }
                Plan::DeadLetter { message, .. } => dead_letter_within(&message, raw, limit),
                Plan::Skip(_) => {}
            }
            // The dead letter the batch makes when the broker refuses the
            // event (too large, its exchange refused).
            let reason = "the broker refused the message";
            let message = converter.dead_letter_within(raw, reason, limit);
            dead_letter_within(&message, raw, limit);
        }
    }
}

fn templated(mut config: MappingConfig) -> MappingConfig {
    use event_forwarder::Config;
    let vars = [
        ("AMQP_URI", "amqp://localhost"),
        ("EXCHANGE", "{aggregateType}.events"),
        ("DEAD_LETTER_EXCHANGE", "fuzz.dead-letter"),
    ];
    if let Ok(c) = Config::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }) {
        config.exchange = c.mapping.exchange;
        config.dead_letter_exchange = c.mapping.dead_letter_exchange;
    }
    config
}

/// A dead letter of `raw`: the record as it came (JSON or not) or its
/// bounded reference (JSON), within `limit` either way.
fn dead_letter_within(m: &Message, raw: &str, limit: usize) {
    use event_forwarder::convert::{HEADER_BUDGET, header_bytes};
    assert!(m.body.len() <= limit, "{} > {limit}", m.body.len());
    if m.body != raw.as_bytes() {
        assert!(serde_json::from_slice::<serde_json::Value>(&m.body).is_ok());
    }
    for (name, value) in &m.properties.headers {
        if let HeaderValue::String(s) = value {
            assert!(s.len() <= 1024, "{name}: {}", s.len());
        }
    }
    assert!(header_bytes(&m.properties) <= HEADER_BUDGET);
    assert!(m.properties.app_id.len() <= 255);
}
