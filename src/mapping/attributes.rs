//! Typed values read out of a record: its item's attributes, checked
//! against the AMQP limits they end up in, and the record's own fields
//! every mapping reads (table, source, sequence number).

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::MappingError;
use crate::config::MappingConfig;
use crate::envelope::Payload;
use crate::record::{self, Attr, Image, Record, Text, Transcoded};

/// The event's `source`: `EVENT_SOURCE`, else the table's name. It lasts
/// as long as the record's text (and the configuration), not the parsed
/// record: a draft outlives that.
pub(super) fn source<'a>(
    config: &'a MappingConfig,
    record: &Record<'a>,
) -> Result<Cow<'a, str>, MappingError> {
    match &config.event_source {
        Some(s) => Ok(Cow::Borrowed(s)),
        None => {
            let arn = record.event_source_arn.as_ref();
            let name = arn.and_then(|arn| lasting(arn, arn_table));
            match name.or_else(|| {
                record
                    .table_name
                    .as_ref()
                    .and_then(|t| lasting(t, non_empty))
            }) {
                Some(t) if t.len() > 255 => Err(MappingError::LongTableName),
                Some(t) => Ok(t),
                None => Err(MappingError::NoTable),
            }
        }
    }
}

/// The table name from `arn:aws:dynamodb:<region>:<account>:table/<name>/stream/<label>`.
pub(super) fn table_name<'r>(record: &'r Record<'_>) -> Option<&'r str> {
    record
        .event_source_arn
        .as_deref()
        .and_then(arn_table)
        .or_else(|| record.table_name.as_deref().and_then(non_empty))
}

/// The non-empty table name in a stream ARN.
pub(super) fn arn_table(arn: &str) -> Option<&str> {
    let (_, rest) = arn.split_once(":table/")?;
    rest.split('/').next().filter(|name| !name.is_empty())
}

fn non_empty(text: &str) -> Option<&str> {
    Some(text).filter(|t| !t.is_empty())
}

/// The `part` of a string of the record, borrowed from the record's text:
/// copied only when that text wrote it with escapes (then the parsed record
/// holds it decoded).
fn lasting<'a>(text: &Text<'a>, part: fn(&str) -> Option<&str>) -> Option<Cow<'a, str>> {
    match &text.0 {
        Cow::Borrowed(s) => part(s).map(Cow::Borrowed),
        Cow::Owned(s) => part(s).map(|p| Cow::Owned(p.to_owned())),
    }
}

/// The record's SequenceNumber, which consumers compare as an integer:
/// only digits (DynamoDB's are 21 to 40 of them).
pub(super) fn sequence_number<'a>(record: &Record<'a>) -> Result<Cow<'a, str>, MappingError> {
    let seq = record
        .dynamodb
        .sequence_number
        .as_ref()
        .and_then(|seq| lasting(seq, non_empty))
        .ok_or(MappingError::NoSequenceNumber)?;
    if seq.len() > 255 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MappingError::Invalid {
            name: "SequenceNumber".into(),
            problem: "not a string of 1 to 255 digits",
        });
    }
    Ok(seq)
}

/// The attribute `name` of `item`, parsed.
pub(super) fn attr<'a>(item: &Image<'a>, name: &str) -> Result<Option<Attr<'a>>, MappingError> {
    item.get(name)
        .map(|raw| {
            Attr::parse(raw).map_err(|problem| MappingError::Invalid {
                name: name.to_owned(),
                problem,
            })
        })
        .transpose()
}

pub(super) fn required_str<'a>(item: &Image<'a>, name: &str) -> Result<Cow<'a, str>, MappingError> {
    optional_str(item, name)?.ok_or_else(|| MappingError::Missing(name.to_owned()))
}

pub(super) fn optional_str<'a>(
    item: &Image<'a>,
    name: &str,
) -> Result<Option<Cow<'a, str>>, MappingError> {
    match attr(item, name)? {
        None | Some(Attr::Null) => Ok(None),
        Some(Attr::S(s)) => Ok(Some(s.0)),
        Some(other) => Err(wrong_type(name, "S", &other)),
    }
}

/// An optional S attribute that becomes an AMQP short string.
pub(super) fn optional_short<'a>(
    item: &Image<'a>,
    name: &str,
) -> Result<Option<Cow<'a, str>>, MappingError> {
    let value = optional_str(item, name)?;
    if let Some(v) = &value {
        short(name, v)?;
    }
    Ok(value)
}

pub(super) fn wrong_type(name: &str, expected: &'static str, found: &Attr<'_>) -> MappingError {
    MappingError::WrongType {
        name: name.to_owned(),
        expected,
        found: found.type_name(),
    }
}

/// Values that become AMQP short strings (message_id, correlation_id, type)
/// are at most 255 bytes.
pub(super) fn short(name: &str, value: &str) -> Result<(), MappingError> {
    if value.len() > 255 {
        return Err(MappingError::Invalid {
            name: name.to_owned(),
            problem: "longer than 255 bytes",
        });
    }
    Ok(())
}

/// `eventVersion` (S or N), `"1.0"` without one.
pub(super) fn event_version<'a>(
    item: &Image<'a>,
    name: &str,
) -> Result<Cow<'a, str>, MappingError> {
    let version = match attr(item, name)? {
        None => Cow::Borrowed("1.0"),
        Some(Attr::S(s) | Attr::N(s)) => s.0,
        Some(other) => return Err(wrong_type(name, "S or N", &other)),
    };
    short(name, &version)?;
    Ok(version)
}

/// `payload`: a map, or JSON text holding an object; `{}` without one.
/// Read from the image's [`Transcoded`] when the record was read with it.
pub(super) fn payload<'r>(item: &'r Image<'_>, name: &str) -> Result<Payload<'r>, MappingError> {
    let invalid = |problem| MappingError::Invalid {
        name: name.to_owned(),
        problem,
    };
    let value = match &item.1 {
        Some(Transcoded::Map(json)) => return Ok(Payload::Written(json)),
        Some(Transcoded::Other(value)) => Some(value.clone()),
        None => attr(item, name)?,
    };
    match value {
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

pub(super) fn partition_key(name: &str, value: &str) -> Result<(), MappingError> {
    if value.len() > MAX_PARTITION_KEY {
        return Err(MappingError::Invalid {
            name: name.to_owned(),
            problem: "longer than 8192 bytes",
        });
    }
    Ok(())
}

/// Key values joined by `#` in attribute-name order.
pub(super) fn key_value(keys: &Image<'_>) -> Result<String, MappingError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::change::pascal_case;
    use crate::mapping::fixtures::*;
    use crate::publisher::HeaderValue;
    use serde_dynamo::AttributeValue;
    use serde_json::json;

    #[test]
    fn a_json_payload_must_parse_strictly_and_null_means_empty() {
        let mut records = records(INSERTS);
        assert_dead_lettered(
            &mut records[0],
            "payload",
            &[r#"{"x":"\ud800"}"#, r#"{"x":1e400}"#, "{", "secret"],
            "attribute `payload` is not valid JSON",
        );
        assert_dead_lettered(
            &mut records[0],
            "payload",
            &["42", r#""x""#, "[1]", "true", " [] "],
            "attribute `payload` is JSON text that is not an object",
        );
        records[0]
            .change
            .new_image
            .insert("payload".into(), AttributeValue::S("null".into()));
        let (_, body) = publish(converter().plan(&records[0], now()));
        assert_eq!(body["payload"], json!({}));
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
        let reason = dead_letter_with(&mut records[0], "payload", AttributeValue::S(nested(33)));
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
        let reason = dead_letter_with(
            &mut records[0],
            "aggregateId",
            AttributeValue::S("a".repeat(8193)),
        );
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
    fn table_names_come_from_the_stream_arn() {
        let records = records(INSERTS);
        let raw = serde_json::to_string(&records[0]).unwrap();
        let record: Record = serde_json::from_str(&raw).unwrap();
        assert_eq!(table_name(&record), Some("product-events"));
        assert_eq!(pascal_case("customer-accounts"), "CustomerAccounts");
        assert_eq!(pascal_case("orders_v2"), "OrdersV2");
        assert_eq!(pascal_case("Products"), "Products");
    }
}
