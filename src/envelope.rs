//! The integration-event envelope (CONTRACT §3c) and its body bytes.
//!
//! The body is written by hand, field by field in the contract's order, with
//! the payload transcoded from the record's DynamoDB JSON (see
//! [`crate::record`]): no intermediate tree, numbers exactly as DynamoDB
//! wrote them. A draft writes its body this way, the head
//! ([`Envelope::write_head`]) then the payload ([`Payload::write`]), once.

use std::borrow::Cow;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

use crate::record::{self, Image, write_str};

/// Version of the envelope format itself.
pub const ENVELOPE_VERSION: &str = "1.0";

/// One integration event. Borrows from the stream record it came from.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    pub message_id: String,
    pub message_type: Cow<'a, str>,
    pub message_version: Cow<'a, str>,
    /// Always [`ENVELOPE_VERSION`].
    pub envelope_version: &'static str,
    pub timestamp: DateTime<Utc>,
    pub source: Cow<'a, str>,
    pub correlation_id: Option<Cow<'a, str>>,
    pub causation_id: Option<Cow<'a, str>>,
    pub partition_key: Cow<'a, str>,
    pub aggregate_type: Option<Cow<'a, str>>,
    pub aggregate_version: Option<u64>,
    /// The stream record's SequenceNumber (digits): consumers order the
    /// events of one partition key by it, compared as integers.
    pub sequence_number: Cow<'a, str>,
    pub payload: Payload<'a>,
}

/// The envelope's `payload`.
#[derive(Debug, Clone)]
pub enum Payload<'a> {
    /// No payload attribute: `{}`.
    Empty,
    /// The inner map of an `M` attribute, as DynamoDB JSON.
    Map(&'a str),
    /// The payload already written as plain JSON (an `M` transcoded while
    /// the record was read).
    Written(&'a [u8]),
    /// A whole item (the `change` mapping).
    Image(&'a Image<'a>),
    /// JSON text stored in an `S` attribute (checked to be JSON), embedded
    /// as it is.
    Json(Cow<'a, str>),
}

impl Envelope<'_> {
    /// The message body: UTF-8 JSON, optional fields left out when absent.
    /// Fails only on a payload that is not valid DynamoDB JSON (a number
    /// that is not a number, say), which makes the record unconvertible.
    pub fn to_body(&self) -> Result<Vec<u8>, &'static str> {
        let mut out = Vec::with_capacity(384 + self.payload.hint());
        self.write_head(&mut out);
        self.payload.write(&mut out)?;
        out.push(b'}');
        Ok(out)
    }

    /// The body up to its payload: every field but the last, then
    /// `"payload":`. The payload and the closing brace are the caller's.
    pub fn write_head(&self, out: &mut Vec<u8>) {
        let field = |out: &mut Vec<u8>, name: &str| {
            out.push(b',');
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
        };
        out.extend_from_slice(b"{\"messageId\":");
        write_str(out, &self.message_id);
        field(out, "messageType");
        write_str(out, &self.message_type);
        field(out, "messageVersion");
        write_str(out, &self.message_version);
        field(out, "envelopeVersion");
        write_str(out, self.envelope_version);
        field(out, "timestamp");
        write_timestamp(out, &self.timestamp);
        field(out, "source");
        write_str(out, &self.source);
        if let Some(c) = &self.correlation_id {
            field(out, "correlationId");
            write_str(out, c);
        }
        if let Some(c) = &self.causation_id {
            field(out, "causationId");
            write_str(out, c);
        }
        field(out, "partitionKey");
        write_str(out, &self.partition_key);
        if let Some(t) = &self.aggregate_type {
            field(out, "aggregateType");
            write_str(out, t);
        }
        if let Some(v) = self.aggregate_version {
            field(out, "aggregateVersion");
            write_u64(out, v);
        }
        field(out, "sequenceNumber");
        write_str(out, &self.sequence_number);
        field(out, "payload");
    }
}

/// `t` as a JSON string, RFC 3339 in UTC to the millisecond
/// (`"2026-11-22T12:00:00.123Z"`): what chrono's
/// `to_rfc3339_opts(SecondsFormat::Millis, true)` writes, without a
/// `String` per record. A year beyond 0–9999 or a leap second is left to
/// chrono.
fn write_timestamp(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    let t = t.naive_utc();
    let millis = t.nanosecond() / 1_000_000;
    let year = match u32::try_from(t.year()) {
        Ok(year) if year <= 9999 && millis < 1000 => year,
        _ => {
            return write_str(
                out,
                &t.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true),
            );
        }
    };
    let parts = [
        (year, 4, b'-'),
        (t.month(), 2, b'-'),
        (t.day(), 2, b'T'),
        (t.hour(), 2, b':'),
        (t.minute(), 2, b':'),
        (t.second(), 2, b'.'),
        (millis, 3, b'Z'),
    ];
    out.push(b'"');
    for (n, width, then) in parts {
        for place in (0..width).rev() {
            out.push(b'0' + (n / 10u32.pow(place) % 10) as u8);
        }
        out.push(then);
    }
    out.push(b'"');
}

/// `v` in decimal, without the formatting machinery (itoa, serde_json's
/// own integer writer).
pub(crate) fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

impl Payload<'_> {
    /// The payload's JSON text as the body carries it.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), &'static str> {
        match self {
            Payload::Empty => out.extend_from_slice(b"{}"),
            Payload::Map(raw) => record::write_nested(out, "M", raw)?,
            Payload::Written(json) => out.extend_from_slice(json),
            Payload::Image(image) => record::write_image(out, image)?,
            Payload::Json(text) => out.extend_from_slice(text.trim().as_bytes()),
        }
        Ok(())
    }

    pub(crate) fn hint(&self) -> usize {
        match self {
            Payload::Empty => 2,
            Payload::Map(raw) => raw.len(),
            Payload::Written(json) => json.len(),
            Payload::Json(text) => text.len(),
            Payload::Image(image) => image.0.iter().map(|(n, v)| n.len() + v.get().len()).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::value::RawValue;

    fn envelope(payload: Payload<'_>) -> Envelope<'_> {
        Envelope {
            message_id: "m-1".into(),
            message_type: "ProductPriceChanged".into(),
            message_version: "1.0".into(),
            envelope_version: ENVELOPE_VERSION,
            timestamp: Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
                + chrono::Duration::milliseconds(123),
            source: "ProductService".into(),
            correlation_id: Some("c-1".into()),
            causation_id: None,
            partition_key: "prod-00042".into(),
            aggregate_type: None,
            aggregate_version: Some(7),
            sequence_number: "4100000000012345680601".into(),
            payload,
        }
    }

    #[test]
    fn the_envelope_serializes_in_contract_order_without_absent_fields() {
        let e = envelope(Payload::Empty);
        assert_eq!(
            String::from_utf8(e.to_body().unwrap()).unwrap(),
            r#"{"messageId":"m-1","messageType":"ProductPriceChanged","messageVersion":"1.0","envelopeVersion":"1.0","timestamp":"2026-11-22T12:00:00.123Z","source":"ProductService","correlationId":"c-1","partitionKey":"prod-00042","aggregateVersion":7,"sequenceNumber":"4100000000012345680601","payload":{}}"#
        );
    }

    #[test]
    fn every_payload_shape_is_written_as_json() {
        let map: Box<RawValue> =
            serde_json::from_str(r#"{"price": {"N": "19.99"}, "tags": {"SS": ["a"]}}"#).unwrap();
        let body = envelope(Payload::Map(map.get())).to_body().unwrap();
        assert!(
            String::from_utf8_lossy(&body).ends_with(r#""payload":{"price":19.99,"tags":["a"]}}"#)
        );

        let body = envelope(Payload::Json(r#" {"a": [1, 2.50]} "#.into()))
            .to_body()
            .unwrap();
        assert!(String::from_utf8_lossy(&body).ends_with(r#""payload":{"a": [1, 2.50]}}"#));

        let bad: Box<RawValue> = serde_json::from_str(r#"{"n": {"N": "x"}}"#).unwrap();
        assert_eq!(
            envelope(Payload::Map(bad.get())).to_body(),
            Err(record::INVALID_NUMBER)
        );
    }

    #[test]
    fn timestamps_and_versions_are_written_as_chrono_and_std_write_them() {
        let millis = chrono::Duration::milliseconds;
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        let times = [
            DateTime::UNIX_EPOCH,
            Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap() + millis(123),
            Utc.with_ymd_and_hms(1999, 1, 9, 3, 4, 5).unwrap() + millis(7),
            Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 59).unwrap() + millis(999),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap() + millis(999),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap() + millis(1),
            Utc.with_ymd_and_hms(-1, 12, 31, 0, 0, 0).unwrap(),
            Utc.timestamp_opt(1_764_000_000, 123_456_789).unwrap(),
            leap,
        ];
        for t in times {
            let mut out = Vec::new();
            write_timestamp(&mut out, &t);
            let chrono = format!("\"{}\"", t.to_rfc3339_opts(SecondsFormat::Millis, true));
            assert_eq!(String::from_utf8(out).unwrap(), chrono);
        }
        for v in [0, 7, 10, 99, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }

    #[test]
    fn text_fields_are_escaped() {
        let mut e = envelope(Payload::Empty);
        e.partition_key = "a\"b\\c\n".into();
        let body: serde_json::Value = serde_json::from_slice(&e.to_body().unwrap()).unwrap();
        assert_eq!(body["partitionKey"], "a\"b\\c\n");
    }
}
