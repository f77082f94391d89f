//! The `event-store` mapping (CONTRACT §3a), the default: the table is an
//! event store, each INSERT one domain event whose attributes are named by
//! the `ATTR_*` settings.

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use super::attributes::{
    attr, event_version, optional_short, optional_str, partition_key, payload, required_str,
    sequence_number, short, source, table_name, wrong_type,
};
use super::time::{creation_time, occurred_at};
use super::{Mapped, MappingError, message_id};
use crate::config::{AttributeNames, MappingConfig};
use crate::envelope::{ENVELOPE_VERSION, Envelope, Payload, write_u64};
use crate::record::{Attr, Image, Record};

/// An INSERT is one domain event; MODIFY and REMOVE (e.g. TTL archival)
/// are skipped.
pub(super) fn draft<'a, 'r>(
    config: &'a MappingConfig,
    record: &'r Record<'a>,
    now: DateTime<Utc>,
) -> Result<Mapped<'a, 'r>, MappingError> {
    match record.event_name.as_deref() {
        Some("INSERT") => {}
        Some("MODIFY" | "REMOVE") => return Ok(Mapped::Skip("not an INSERT")),
        _ => return Err(MappingError::UnknownEventName),
    }
    let item = match &record.dynamodb.new_image {
        Some(image) if !image.is_empty() => image,
        _ => return Err(MappingError::NoNewImage),
    };
    let names = &config.attributes;
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
    let source = source(config, record)?;
    let message_id = event_store_id(item, names, record, &aggregate_id, version)?;
    let envelope = Envelope {
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
        payload: Payload::Empty,
    };
    Ok(Mapped::Event { envelope, payload })
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
            // `<table>/<aggregateId>/<version>`, written without `format!`.
            let mut name = Vec::with_capacity(table.len() + aggregate_id.len() + 22);
            name.extend_from_slice(table.as_bytes());
            name.push(b'/');
            name.extend_from_slice(aggregate_id.as_bytes());
            name.push(b'/');
            write_u64(&mut name, version);
            Ok(message_id(&name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::fixtures::*;
    use crate::mapping::{Converter, Plan};
    use aws_lambda_events::dynamodb::EventRecord;
    use serde_dynamo::AttributeValue;
    use serde_json::json;

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
}
