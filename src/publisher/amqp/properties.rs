//! A [`Message`]'s properties and headers as lapin's `BasicProperties`
//! (CONTRACT §4): persistent, `application/json`, the ids and the headers
//! the mapping and the enricher set.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::publisher::{HeaderValue, Properties, PublishError};

/// An AMQP short string. The mapping keeps every field within 255 bytes;
/// this turns a slip into an error instead of lapin's panic. A `String`
/// is moved, not copied.
pub(super) fn short(s: impl Into<String>) -> Result<ShortString, PublishError> {
    ShortString::try_new(s)
        .map_err(|_| PublishError::Invalid("a name or property is longer than 255 bytes".into()))
}

/// The AMQP properties of a message: the mapping's headers, then the
/// enricher's. A number beyond a signed 64-bit integer (AMQP has no
/// unsigned one) goes as its decimal text. The strings are moved into
/// lapin's, not copied.
pub(super) fn properties(p: Properties) -> Result<BasicProperties, PublishError> {
    let mut headers = FieldTable::default();
    let all = p
        .headers
        .into_iter()
        .map(|(n, v)| (short(n), v))
        .chain(p.extra_headers.into_iter().map(|(n, v)| (short(n), v)));
    for (name, value) in all {
        let value = match value {
            HeaderValue::String(s) => AMQPValue::LongString(LongString::from(s)),
            HeaderValue::Int(i) => i64::try_from(i).map_or_else(
                |_| AMQPValue::LongString(LongString::from(i.to_string())),
                AMQPValue::LongLongInt,
            ),
        };
        headers.insert(name?, value);
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(short(p.message_id)?)
        .with_app_id(short(p.app_id)?)
        .with_headers(headers);
    if let Some(c) = p.correlation_id {
        props = props.with_correlation_id(short(c)?);
    }
    if let Some(k) = p.kind {
        props = props.with_type(short(k)?);
    }
    if let Some(t) = p.timestamp {
        props = props.with_timestamp(t);
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Properties {
        Properties {
            message_id: "b0f5b3a0-5c1e-5f7e-9a43-2b8b6f0d1c2e".into(),
            app_id: "event-forwarder".into(),
            ..Properties::default()
        }
    }

    fn text(s: &str) -> Option<ShortString> {
        Some(s.into())
    }

    fn headers(props: &BasicProperties) -> Vec<(String, AMQPValue)> {
        props
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn every_message_is_persistent_json_with_its_ids() {
        let props = properties(Properties {
            correlation_id: Some("order-42".into()),
            kind: Some("OrderPlaced".into()),
            timestamp: Some(1_796_537_257),
            ..minimal()
        })
        .expect("fits");
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(props.content_type(), &text("application/json"));
        assert_eq!(
            props.message_id(),
            &text("b0f5b3a0-5c1e-5f7e-9a43-2b8b6f0d1c2e")
        );
        assert_eq!(props.app_id(), &text("event-forwarder"));
        assert_eq!(props.correlation_id(), &text("order-42"));
        assert_eq!(props.kind(), &text("OrderPlaced"));
        assert_eq!(props.timestamp(), &Some(1_796_537_257));
    }

    #[test]
    fn properties_the_message_lacks_are_left_out_not_sent_empty() {
        let props = properties(minimal()).expect("fits");
        assert_eq!(props.correlation_id(), &None);
        assert_eq!(props.kind(), &None);
        assert_eq!(props.timestamp(), &None);
        assert_eq!(headers(&props), []);
    }

    #[test]
    fn every_header_kind_is_sent_as_its_amqp_type_and_the_enrichers_come_too() {
        let props = properties(Properties {
            headers: vec![
                ("x-aggregate-id", HeaderValue::String("order-42".into())),
                ("x-version", HeaderValue::Int(7)),
                ("x-largest-signed", HeaderValue::Int(i64::MAX as u64)),
                ("x-beyond-signed", HeaderValue::Int(u64::MAX)),
            ],
            extra_headers: vec![
                ("x-tenant".into(), HeaderValue::String("acme".into())),
                ("x-priority".into(), HeaderValue::Int(3)),
            ],
            ..minimal()
        })
        .expect("fits");
        assert_eq!(
            headers(&props),
            [
                (
                    "x-aggregate-id".to_owned(),
                    AMQPValue::LongString("order-42".into())
                ),
                (
                    "x-beyond-signed".to_owned(),
                    AMQPValue::LongString("18446744073709551615".into())
                ),
                (
                    "x-largest-signed".to_owned(),
                    AMQPValue::LongLongInt(9_223_372_036_854_775_807)
                ),
                ("x-priority".to_owned(), AMQPValue::LongLongInt(3)),
                ("x-tenant".to_owned(), AMQPValue::LongString("acme".into())),
                ("x-version".to_owned(), AMQPValue::LongLongInt(7)),
            ]
        );
    }

    #[test]
    fn a_short_string_of_255_bytes_fits_and_one_of_256_is_an_invalid_message() {
        let too_long = PublishError::Invalid("a name or property is longer than 255 bytes".into());
        assert_eq!(short("a".repeat(255)).map(|s| s.as_str().len()), Ok(255));
        assert_eq!(short("a".repeat(256)), Err(too_long.clone()));
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert_eq!(short("é".repeat(128)), Err(too_long));
    }

    #[test]
    fn a_property_or_header_name_too_long_for_amqp_fails_the_message_not_the_process() {
        let too_long = Err(PublishError::Invalid(
            "a name or property is longer than 255 bytes".into(),
        ));
        let long = "x".repeat(256);
        let cases = [
            Properties {
                message_id: long.clone(),
                ..minimal()
            },
            Properties {
                app_id: long.clone(),
                ..minimal()
            },
            Properties {
                correlation_id: Some(long.clone()),
                ..minimal()
            },
            Properties {
                kind: Some(long.clone()),
                ..minimal()
            },
            Properties {
                extra_headers: vec![(long.clone(), HeaderValue::Int(1))],
                ..minimal()
            },
        ];
        for case in cases {
            assert_eq!(properties(case.clone()), too_long, "{case:?}");
        }
    }

    /// The bytes lapin writes for `props` after a content header's class,
    /// weight and body size.
    fn written(props: &BasicProperties) -> usize {
        let write = lapin::protocol::basic::gen_properties(props);
        write(Vec::new().into()).map_or(0, |w| w.write.len())
    }

    #[test]
    fn the_header_budget_counts_what_lapin_writes() {
        use crate::mapping::message::header_bytes;
        for p in [
            minimal(),
            Properties {
                correlation_id: Some("order-42".into()),
                kind: Some("OrderPlaced".into()),
                timestamp: Some(1_796_537_257),
                headers: vec![
                    ("partitionKey", HeaderValue::String("é".repeat(3000))),
                    ("aggregateVersion", HeaderValue::Int(7)),
                    ("x-beyond-signed", HeaderValue::Int(u64::MAX)),
                ],
                extra_headers: vec![("tenant".into(), HeaderValue::String("acme".into()))],
                ..minimal()
            },
        ] {
            let props = properties(p.clone()).expect("fits");
            assert_eq!(header_bytes(&p), 2 + 2 + 8 + written(&props), "{p:?}");
        }
    }
}
