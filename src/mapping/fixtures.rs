//! The sample batches (`events/`) and the helpers the unit tests of every
//! file of the mapping share.

use aws_lambda_events::dynamodb::{Event, EventRecord};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use super::{Converter, Plan};
use crate::config::MappingConfig;
use crate::publisher::{HeaderValue, Message};

pub(super) const INSERTS: &str = include_str!("../../events/insert-batch.json");
pub(super) const POISON: &str = include_str!("../../events/poison-batch.json");
pub(super) const CHANGES: &str = include_str!("../../events/change-batch.json");

pub(super) fn records(json: &str) -> Vec<EventRecord> {
    serde_json::from_str::<Event>(json).unwrap().records
}

pub(super) fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap()
}

pub(super) fn converter() -> Converter {
    Converter::new(MappingConfig::new("product.events"))
}

/// The change mapping's settings, publishing to `exchange`.
pub(super) fn change_config(exchange: &str) -> MappingConfig {
    let mut config = MappingConfig::new(exchange);
    config.kind = crate::config::MappingKind::Change;
    config
}

pub(super) fn publish(plan: impl Into<Plan>) -> (Message, Value) {
    match plan.into() {
        Plan::Publish(m) => {
            let body = serde_json::from_slice(&m.body).unwrap();
            (m, body)
        }
        other => panic!("expected a publish, got {other:?}"),
    }
}

pub(super) fn dead_letter(plan: impl Into<Plan>) -> (Message, String) {
    match plan.into() {
        Plan::DeadLetter { message, reason } => (message, reason),
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

/// The reason `record` is dead-lettered once its new image holds `value`
/// in `name` (it keeps the value).
pub(super) fn dead_letter_with(
    record: &mut EventRecord,
    name: &str,
    value: serde_dynamo::AttributeValue,
) -> String {
    record.change.new_image.insert(name.into(), value);
    dead_letter(converter().plan(record, now())).1
}

/// Each of `texts`, as the string attribute `name` of `record`, has it
/// dead-lettered with `reason`.
pub(super) fn assert_dead_lettered(
    record: &mut EventRecord,
    name: &str,
    texts: &[&str],
    reason: &str,
) {
    for text in texts {
        let value = serde_dynamo::AttributeValue::S((*text).into());
        assert_eq!(dead_letter_with(record, name, value), reason, "{text}");
    }
}

pub(super) fn header<'m>(m: &'m Message, name: &str) -> Option<&'m HeaderValue> {
    m.properties
        .headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}
