//! The `change` mapping (CONTRACT §3b), for tables that hold entity
//! state: every change of an item is an event about the entity, named by
//! the table (or `ENTITY_NAME`) and a verb, its payload the item's image.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::attributes::{key_value, partition_key, sequence_number, short, source, table_name};
use super::time::creation_time;
use super::{MESSAGE_ID_NAMESPACE, Mapped, MappingError};
use crate::config::MappingConfig;
use crate::envelope::{ENVELOPE_VERSION, Envelope, Payload};
use crate::record::{self, Image, Record, Text};

/// The principal DynamoDB uses for deletions made by TTL.
const TTL_PRINCIPAL: &str = "dynamodb.amazonaws.com";

/// INSERT, MODIFY and REMOVE are `{Entity}Created`, `Updated`, `Deleted`
/// (`Expired` when TTL removed the item); a backfill's INSERT is a
/// `Snapshot`. Nothing is skipped.
pub(super) fn draft<'a, 'r>(
    config: &'a MappingConfig,
    record: &'r Record<'a>,
    now: DateTime<Utc>,
) -> Result<Mapped<'a, 'r>, MappingError> {
    let entity: Cow<'a, str> = match (&config.entity_name, table_name(record)) {
        (Some(e), _) => Cow::Borrowed(e),
        (None, Some(t)) => Cow::Owned(pascal_case(t)),
        (None, None) => return Err(MappingError::NoTable),
    };
    let snapshot = record.event_source.as_deref() == Some(record::BACKFILL_SOURCE);
    let (verb, image) = verb_and_image(record, snapshot)?;
    let event_id = record
        .event_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .ok_or(MappingError::NoEventId)?;
    let message_type = format!("{entity}{verb}");
    short("messageType", &message_type)?;
    let keys = present(&record.dynamodb.keys).ok_or(MappingError::NoKeys)?;
    let key = key_value(keys)?;
    partition_key("Keys", &key)?;
    let message_id = if snapshot {
        snapshot_id(table_name(record).unwrap_or_default(), &key, image)
    } else {
        Uuid::new_v5(&MESSAGE_ID_NAMESPACE, event_id.as_bytes())
    };
    let envelope = Envelope {
        message_id: super::text(message_id),
        message_type: Cow::Owned(message_type),
        message_version: Cow::Borrowed("1.0"),
        envelope_version: ENVELOPE_VERSION,
        timestamp: creation_time(record).unwrap_or(now),
        source: source(config, record)?,
        correlation_id: None,
        causation_id: None,
        partition_key: Cow::Owned(key),
        aggregate_type: Some(entity),
        aggregate_version: None,
        sequence_number: sequence_number(record)?,
        payload: Payload::Empty,
    };
    Ok(Mapped::Event {
        envelope,
        payload: Payload::Image(image),
    })
}

/// The verb of a change and the image that is its payload: the new image,
/// or for a removal the old one, else the keys.
fn verb_and_image<'a, 'r>(
    record: &'r Record<'a>,
    snapshot: bool,
) -> Result<(&'static str, &'r Image<'a>), MappingError> {
    let stream = &record.dynamodb;
    let keys = present(&stream.keys);
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
    Ok((verb, image))
}

/// An image with at least one attribute.
fn present<'a, 'r>(image: &'r Option<Image<'a>>) -> Option<&'r Image<'a>> {
    image.as_ref().filter(|i| !i.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MappingKind;
    use crate::mapping::fixtures::*;
    use crate::mapping::{Converter, Plan};
    use crate::publisher::{HeaderValue, Message};
    use serde_dynamo::AttributeValue;
    use serde_json::{Value, json};
    use std::collections::HashMap;

    #[test]
    fn the_change_mapping_names_created_updated_deleted_and_expired() {
        let c = Converter::new(change_config("customer.events"));
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
    fn a_backfilled_item_is_a_snapshot_with_an_id_of_its_state() {
        let c = Converter::new(change_config("customer.events"));
        let insert = records(CHANGES).remove(0);
        let plan = |record: &Value| c.plan_raw(&record.to_string(), now()).into_message().plan;
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
        let reordered = c.plan_raw(&text, now()).into_message().plan;
        assert_eq!(publish(reordered).1["messageId"], body["messageId"]);
        let mut changed = backfilled.clone();
        changed["dynamodb"]["NewImage"]["tier"] = json!({"S": "bronze"});
        assert_ne!(publish(plan(&changed)).1["messageId"], body["messageId"]);
    }

    #[test]
    fn the_change_mapping_joins_composite_keys_and_uses_keys_when_no_old_image() {
        let mut config = change_config("x");
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
    fn an_enriched_change_event_keeps_its_payload_bytes_and_gets_the_fields_at_its_end() {
        let c = Converter::new(change_config("customer.events"));
        let mut record = records(CHANGES).remove(0);
        let image = &mut record.change.new_image;
        image.insert("price".into(), AttributeValue::N("19.990".into()));
        image.insert(
            "big".into(),
            AttributeValue::N("12345678901234567890123".into()),
        );
        let raw = serde_json::to_string(&record).unwrap();
        let Plan::Publish(draft) = c.plan_raw(&raw, now()).plan else {
            panic!("not published")
        };
        let plain = draft.clone().into_message().body;
        let text = String::from_utf8(plain.clone()).unwrap();
        assert!(text.contains(r#""price":19.990"#), "{text}");
        assert!(text.contains(r#""big":12345678901234567890123"#), "{text}");

        let mut fields = serde_json::Map::new();
        fields.insert("segment".into(), json!("retail"));
        fields.insert("score".into(), json!(7));
        let added = crate::enrich::check(|| draft.payload(), fields, vec![]).unwrap();
        let enriched = crate::mapping::message::to_message(draft, added, Default::default()).body;
        let mut expected = plain[..plain.len() - 2].to_vec();
        // A `Map` iterates in key order, as the splice did.
        expected.extend_from_slice(br#","score":7,"segment":"retail"}}"#);
        assert_eq!(
            String::from_utf8(enriched).unwrap(),
            String::from_utf8(expected).unwrap()
        );
    }

    #[test]
    fn the_ids_of_the_change_mapping_follow_the_documented_formula() {
        let config = change_config("x");
        let mut record = records(CHANGES).swap_remove(0);
        record.event_id = "c81e728d9d4c2f636f067f89cc148620".into();
        let (_, body) = publish(Converter::new(config).plan(&record, now()));
        assert_eq!(body["messageId"], "699a8279-e0d3-5ec5-98bb-b5c1e6fd63e5");
    }

    #[test]
    fn change_keys_too_long_for_a_header_are_refused() {
        let mut change = MappingConfig::new("product.events");
        change.kind = MappingKind::Change;
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
}
