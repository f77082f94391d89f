//! Draft to AMQP message (CONTRACT §4): [`to_message`], the one place a
//! message is shaped: properties, headers, trace context, exchange or
//! queue, and an enricher's fields (checked by `enrich`, carried as
//! [`Added`]) in the body the draft wrote; and the budget every message's
//! properties and headers keep ([`HEADER_BUDGET`], [`within_budget`]).
//! Pure.

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

/// The most bytes a message's properties and headers take as AMQP writes
/// them (its content header frame): three quarters of the smallest
/// `frame_max` the forwarder accepts (16,384). A content header cannot be
/// split over frames; one over `frame_max` makes the broker close the whole
/// connection, every confirm in flight lost, at every retry. The
/// forwarder's own properties and headers fit by construction (each has its
/// bound: short strings 255 bytes, `partitionKey` 8,192, `tracestate` 512,
/// `traceparent` 55); an enricher's headers take what the record leaves, and
/// a record they would take over it is dead-lettered ([`within_budget`]).
pub const HEADER_BUDGET: usize = 12 * 1024;

// Room below the smallest frame_max (16,384, less the frame's 8 bytes).
const _: () = assert!(HEADER_BUDGET + 8 <= 16_384);

/// The bytes of `properties` as a content header frame's payload: class,
/// weight, body size and property flags, then each property set (short
/// strings with their length byte, the header table with its entries).
pub fn header_bytes(properties: &Properties) -> usize {
    let short = |s: &str| 1 + s.len();
    let value = |v: &HeaderValue| match v {
        HeaderValue::String(s) => 1 + 4 + s.len(),
        // Beyond i64 it goes as its decimal text (publisher::amqp).
        HeaderValue::Int(i) if i64::try_from(*i).is_err() => 1 + 4 + i.to_string().len(),
        HeaderValue::Int(_) => 1 + 8,
    };
    let table: usize = properties
        .headers
        .iter()
        .map(|(n, v)| short(n) + value(v))
        .chain(
            properties
                .extra_headers
                .iter()
                .map(|(n, v)| short(n) + value(v)),
        )
        .sum();
    // class id, weight, body size, property flags
    2 + 2 + 8 + 2
        + short("application/json")
        + 4
        + table
        + 1 // delivery mode
        + properties.correlation_id.as_deref().map_or(0, short)
        + short(&properties.message_id)
        + properties.timestamp.map_or(0, |_| 8)
        + properties.kind.as_deref().map_or(0, short)
        + short(&properties.app_id)
}

/// `Err` with the reason to dead-letter the record when `message`'s
/// properties and headers are over [`HEADER_BUDGET`] (only an enricher's
/// headers can take them there) or a property over an AMQP short string's
/// 255 bytes (the mapping keeps its own within it).
pub fn within_budget(message: &Message) -> Result<(), String> {
    let p = &message.properties;
    let names = p.extra_headers.iter().map(|(n, _)| n.as_str());
    let shorts = [Some(p.message_id.as_str()), Some(p.app_id.as_str())]
        .into_iter()
        .chain([p.correlation_id.as_deref(), p.kind.as_deref()])
        .flatten()
        .chain(names);
    if shorts.into_iter().any(|s| s.len() > 255) {
        return Err("a property or header name is longer than the 255 bytes AMQP allows".into());
    }
    let size = header_bytes(p);
    if size > HEADER_BUDGET {
        return Err(format!(
            "the event's properties and headers take {size} bytes with the enrichment's, over \
             the {HEADER_BUDGET} a message's headers may take"
        ));
    }
    Ok(())
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
    fn the_forwarders_own_headers_at_their_bounds_keep_the_budget() {
        let converter = Converter::new(MappingConfig::new("product.events"));
        let long = |n: usize| "é".repeat(n / 2);
        let mut e = envelope("ProductCreated", "1.0");
        e.partition_key = long(8192).into();
        e.message_version = long(254).into();
        e.sequence_number = "9".repeat(255).into();
        e.message_id = long(254);
        e.correlation_id = Some(long(254).into());
        e.source = long(254).into();
        e.message_type = long(254).into();
        let mut d = draft(&converter, &e);
        d.routing_key = "k".repeat(255);
        d.trace.traceparent = Some("0".repeat(55));
        d.trace.tracestate = Some("s".repeat(512));
        let sending = Sending {
            traceparent: None,
            to_queue: Some("q"),
        };
        let m = to_message(d, Added::default(), sending);
        let size = header_bytes(&m.properties);
        assert!(size <= HEADER_BUDGET, "{size}");
        assert_eq!(within_budget(&m), Ok(()));
    }

    #[test]
    fn an_enrichers_headers_over_what_the_record_leaves_dead_letter_it() {
        let converter = Converter::new(MappingConfig::new("product.events"));
        let mut e = envelope("ProductCreated", "1.0");
        e.partition_key = "p".repeat(8192).into();
        let added = |n: usize| Added {
            fields: Vec::new(),
            headers: vec![("tenant".into(), HeaderValue::String("t".repeat(n)))],
        };
        let fits = to_message(draft(&converter, &e), added(1000), Sending::default());
        assert_eq!(within_budget(&fits), Ok(()));
        let over = to_message(draft(&converter, &e), added(4000), Sending::default());
        let why = within_budget(&over).unwrap_err();
        assert!(
            why.starts_with("the event's properties and headers take"),
            "{why}"
        );
        assert!(!why.contains("ttt"), "never the value: {why}");
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
