//! The event's time: `occurredAt`, else the record's creation time, kept
//! to what RFC 3339 and consumers' date types can hold.

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};

use super::MappingError;
use super::attributes::{attr, wrong_type};
use crate::record::{Attr, Image, Record};

/// `occurredAt`: RFC 3339 text or epoch milliseconds, of years 1 to 9999.
pub(super) fn occurred_at(
    item: &Image<'_>,
    name: &str,
) -> Result<Option<DateTime<Utc>>, MappingError> {
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

/// ApproximateCreationDateTime (epoch seconds, maybe with a fraction);
/// `None` when absent or zero.
pub(super) fn creation_time(record: &Record<'_>) -> Option<DateTime<Utc>> {
    epoch_seconds(record.dynamodb.approximate_creation?)
}

/// Epoch seconds with a fraction, when positive and of years 1 to 9999.
pub(super) fn epoch_seconds(secs: f64) -> Option<DateTime<Utc>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::fixtures::*;
    use serde_dynamo::AttributeValue;
    use serde_json::{Value, json};

    #[test]
    fn timestamps_outside_four_digit_years_are_refused() {
        let mut records = records(INSERTS);
        // 10000-01-01 and the last millisecond of year 0.
        for ms in ["253402300800000", "-62135596800001"] {
            let reason =
                dead_letter_with(&mut records[0], "occurredAt", AttributeValue::N(ms.into()));
            assert_eq!(
                reason,
                "attribute `occurredAt` is not epoch milliseconds of years 1 to 9999"
            );
        }
        // A creation time that far out is ignored, the invocation time used.
        records[0].change.new_image.remove("occurredAt");
        let mut raw: Value = serde_json::to_value(&records[0]).unwrap();
        raw["dynamodb"]["ApproximateCreationDateTime"] = json!(1e13);
        let planned = converter().plan_raw(&raw.to_string(), now()).into_message();
        let (_, body) = publish(planned.plan);
        assert_eq!(body["timestamp"], "2026-11-23T08:00:00.000Z");
    }

    #[test]
    fn occurred_at_texts_outside_four_digit_utc_years_are_refused() {
        let mut records = records(INSERTS);
        // In range as written, out of range once in UTC.
        assert_dead_lettered(
            &mut records[0],
            "occurredAt",
            &[
                "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:30:00-01:00",
                "0000-06-01T00:00:00Z",
            ],
            "attribute `occurredAt` is not an RFC 3339 timestamp of years 1 to 9999",
        );
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
    fn a_missing_creation_time_falls_back_to_now() {
        let mut record = records(INSERTS).swap_remove(0);
        record.change.new_image.remove("occurredAt");
        record.change.approximate_creation_date_time = DateTime::default();
        let (_, body) = publish(converter().plan(&record, now()));
        assert_eq!(body["timestamp"], "2026-11-23T08:00:00.000Z");
    }
}
