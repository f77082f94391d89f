//! Draft to AMQP message (CONTRACT §4): [`to_message`], the one place a
//! message is shaped: properties, headers, trace context, exchange or
//! queue, and an enricher's fields (checked by `enrich`, carried as
//! [`Added`]) in the body the draft wrote. Pure.

use std::borrow::Cow;

use super::Draft;
use crate::publisher::{HeaderValue, Message, Properties};

/// What an enrichment adds to a message, checked: payload fields as JSON
/// text (`,"name":value…`, appended to the payload object in the
/// enricher's order) and headers. [`to_message`] writes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Added {
    pub(crate) fields: Vec<u8>,
    pub(crate) headers: Vec<(String, HeaderValue)>,
}

/// How this invocation sends its events: to the backfill's queue instead
/// of the exchange, and with its own trace context for the events whose
/// item has none (`TRACEPARENT_FROM_XRAY`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sending<'a> {
    pub traceparent: Option<&'a str>,
    pub to_queue: Option<&'a str>,
}

/// Turns a draft into the message published: properties, headers (the
/// envelope's, the item's trace context or else the invocation's, an
/// enricher's), exchange and routing key (or the backfill's queue, the key
/// kept in the header `routingKey`, so consumers that dispatch on it work
/// unchanged), and the body: the draft's, with an enricher's fields
/// appended to its payload, closed in the buffer it was written in.
pub fn to_message(draft: Draft<'_>, added: Added, sending: Sending<'_>) -> Message {
    let Draft {
        envelope: e,
        exchange,
        routing_key,
        trace,
        mut body,
        ..
    } = draft;
    if !added.fields.is_empty() {
        // The payload is an object: the fields go before its closing brace.
        body.pop();
        body.extend_from_slice(&added.fields);
        body.push(b'}');
    }
    body.push(b'}');
    // Room for the trace context too: no regrowth per message.
    let mut headers = Vec::with_capacity(6);
    headers.push(("partitionKey", HeaderValue::String(e.partition_key.into())));
    headers.push((
        "messageVersion",
        HeaderValue::String(e.message_version.into()),
    ));
    if let Some(v) = e.aggregate_version {
        headers.push(("aggregateVersion", HeaderValue::Int(v)));
    }
    headers.push((
        "sequenceNumber",
        HeaderValue::String(e.sequence_number.into()),
    ));
    match (trace.traceparent, sending.traceparent) {
        (Some(parent), _) => {
            headers.push(("traceparent", HeaderValue::String(parent)));
            if let Some(state) = trace.tracestate {
                headers.push(("tracestate", HeaderValue::String(state)));
            }
        }
        (None, Some(parent)) => {
            headers.push(("traceparent", HeaderValue::String(parent.to_owned())))
        }
        (None, None) => {}
    }
    let (exchange, routing_key) = match sending.to_queue {
        Some(queue) => {
            headers.push(("routingKey", HeaderValue::String(routing_key)));
            (String::new(), queue.to_owned())
        }
        None => (exchange.into_owned(), routing_key),
    };
    Message {
        exchange,
        routing_key,
        body,
        properties: Properties {
            message_id: e.message_id,
            correlation_id: e.correlation_id.map(Cow::into_owned),
            app_id: e.source.into_owned(),
            kind: Some(e.message_type.into_owned()),
            timestamp: u64::try_from(e.timestamp.timestamp()).ok(),
            headers,
            extra_headers: added.headers,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MappingConfig;
    use crate::envelope::Envelope;
    use crate::mapping::Converter;
    use crate::routing::tests::envelope;

    fn draft<'a>(converter: &'a Converter, e: &Envelope<'a>) -> Draft<'a> {
        Draft::of(e.clone(), "product.events", "product.created.v1", converter)
    }

    #[test]
    fn a_message_for_one_queue_keeps_its_routing_key_in_a_header() {
        let converter = Converter::new(MappingConfig::new("product.events"));
        let e = envelope("ProductCreated", "1.0");
        let m = to_message(draft(&converter, &e), Added::default(), Sending::default());
        let to_queue = Sending {
            to_queue: Some("projection-orders"),
            ..Sending::default()
        };
        let q = to_message(draft(&converter, &e), Added::default(), to_queue);
        assert_eq!(
            (q.exchange.as_str(), q.routing_key.as_str()),
            ("", "projection-orders")
        );
        assert_eq!(
            q.properties.headers.last(),
            Some(&(
                "routingKey",
                HeaderValue::String("product.created.v1".into())
            ))
        );
        assert_eq!(q.body, m.body);
        assert_eq!(q.properties.message_id, m.properties.message_id);
    }

    #[test]
    fn the_items_trace_context_wins_over_the_invocations_and_the_queue_header_comes_last() {
        const ITEM: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        const XRAY: &str = "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01";
        let converter = Converter::new(MappingConfig::new("product.events"));
        let e = envelope("ProductCreated", "1.0");
        let sending = Sending {
            traceparent: Some(XRAY),
            to_queue: Some("projection-orders"),
        };
        let names = |m: &Message| -> Vec<(&str, HeaderValue)> {
            m.properties.headers[3..]
                .iter()
                .map(|(n, v)| (*n, v.clone()))
                .collect()
        };
        let string = |s: &str| HeaderValue::String(s.into());

        let mut traced = draft(&converter, &e);
        traced.trace.traceparent = Some(ITEM.into());
        traced.trace.tracestate = Some("rojo=1".into());
        let m = to_message(traced, Added::default(), sending);
        assert_eq!(
            names(&m),
            [
                ("sequenceNumber", string("4100000000012345680601")),
                ("traceparent", string(ITEM)),
                ("tracestate", string("rojo=1")),
                ("routingKey", string("product.created.v1")),
            ]
        );

        let m = to_message(draft(&converter, &e), Added::default(), sending);
        assert_eq!(
            names(&m),
            [
                ("sequenceNumber", string("4100000000012345680601")),
                ("traceparent", string(XRAY)),
                ("routingKey", string("product.created.v1")),
            ]
        );
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            ("", "projection-orders")
        );
    }

    #[test]
    fn properties_and_headers_follow_the_contract() {
        let converter = Converter::new(MappingConfig::new("product.events"));
        let e = envelope("ProductCreated", "1.0");
        let m = to_message(draft(&converter, &e), Added::default(), Sending::default());
        assert_eq!(m.exchange, "product.events");
        assert_eq!(m.properties.message_id, "id-1");
        assert_eq!(m.properties.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(m.properties.app_id, "ProductService");
        assert_eq!(m.properties.kind.as_deref(), Some("ProductCreated"));
        assert_eq!(m.properties.timestamp, Some(1_795_348_800));
        assert_eq!(
            m.properties.headers,
            vec![
                ("partitionKey", HeaderValue::String("prod-00042".into())),
                ("messageVersion", HeaderValue::String("1.0".into())),
                ("aggregateVersion", HeaderValue::Int(7)),
                (
                    "sequenceNumber",
                    HeaderValue::String("4100000000012345680601".into())
                ),
            ]
        );
    }
}
