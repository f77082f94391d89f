//! The item's W3C trace context, checked, for the draft (either mapping):
//! the message's `traceparent` and `tracestate` headers.

use super::Converter;
use super::attributes::attr;
use super::dead_letter::capped;
use super::draft::TraceContext;
use crate::record::{Attr, Record};
use crate::trace;

impl Converter {
    /// The item's W3C trace context, from the NewImage of either mapping.
    /// An invalid value is left out (the event is still published); the
    /// reason comes back for a warning.
    pub(super) fn trace_context(
        &self,
        record: &Record<'_>,
        context: &mut TraceContext,
    ) -> Option<String> {
        let item = record.dynamodb.new_image.as_ref()?;
        let names = &self.config.attributes;
        let text = |name: &str| match attr(item, name) {
            Ok(Some(Attr::S(s))) => Ok(Some(s.0)),
            Ok(None | Some(Attr::Null)) => Ok(None),
            _ => Err(()),
        };
        let (parent, state) = (text(&names.traceparent), text(&names.tracestate));
        let dropped = |name: &str, why: &dyn std::fmt::Display| {
            Some(capped(format!(
                "attribute `{name}` is {why}; left out of the headers"
            )))
        };
        // A later version is read as its first 55 characters (W3C), so the
        // header is 55 bytes whatever the item holds.
        let parent = match parent {
            Ok(None) => {
                return match state {
                    Ok(None) => None,
                    _ => dropped(&names.tracestate, &trace::TraceError::Orphan),
                };
            }
            Ok(Some(p)) => match trace::parse_traceparent(&p) {
                Ok(parsed) => parsed,
                Err(e) => return dropped(&names.traceparent, &e),
            },
            Err(()) => {
                return dropped(&names.traceparent, &trace::TraceError::Traceparent);
            }
        };
        context.traceparent = Some(parent);
        match state {
            Ok(None) => None,
            Ok(Some(s)) if trace::check_tracestate(&s).is_ok() => {
                context.tracestate = Some(s.into_owned());
                None
            }
            _ => dropped(&names.tracestate, &trace::TraceError::Tracestate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MappingConfig;
    use crate::mapping::fixtures::*;
    use crate::publisher::{HeaderValue, Message};
    use aws_lambda_events::dynamodb::EventRecord;
    use serde_dynamo::AttributeValue;

    #[test]
    fn an_items_trace_context_becomes_headers_and_a_malformed_one_is_left_out() {
        const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut record = records(INSERTS).remove(0);
        let set = |r: &mut EventRecord, name: &str, v: &str| {
            r.change
                .new_image
                .insert(name.into(), AttributeValue::S(v.into()));
        };
        let planned = |c: &Converter, r: &EventRecord| {
            c.plan_raw(&serde_json::to_string(r).unwrap(), now())
                .into_message()
        };
        let trace = |m: &Message| {
            ["traceparent", "tracestate"].map(|n| match header(m, n) {
                Some(HeaderValue::String(s)) => Some(s.clone()),
                _ => None,
            })
        };
        set(&mut record, "traceparent", PARENT);
        set(&mut record, "tracestate", "rojo=00f067aa0ba902b7");
        let p = planned(&converter(), &record);
        let (m, _) = publish(p.plan);
        assert_eq!(
            trace(&m),
            [Some(PARENT.into()), Some("rojo=00f067aa0ba902b7".into())]
        );
        assert_eq!(p.dropped, None);

        // A bad tracestate goes; the traceparent stays.
        set(&mut record, "tracestate", "Not Valid");
        let p = planned(&converter(), &record);
        assert_eq!(
            p.dropped.as_deref(),
            Some(
                "attribute `tracestate` is not a W3C tracestate (at most 32 key=value members, 512 bytes); left out of the headers"
            )
        );
        assert_eq!(trace(&publish(p.plan).0), [Some(PARENT.into()), None]);

        // A bad traceparent takes its tracestate with it; the value is not
        // in the reason, and the event is still published.
        set(&mut record, "traceparent", "secret-looking-garbage");
        set(&mut record, "tracestate", "rojo=1");
        let p = planned(&converter(), &record);
        let why = p.dropped.clone().unwrap();
        assert!(
            why.starts_with("attribute `traceparent` is not a W3C traceparent"),
            "{why}"
        );
        assert!(!why.contains("garbage"));
        assert_eq!(trace(&publish(p.plan).0), [None, None]);

        // A later version becomes its first 55 characters as version 00,
        // however long the rest (#28: 150 KB of it closed the connection).
        let later = format!("01{}-{}", &PARENT[2..], "v".repeat(150 * 1024));
        set(&mut record, "traceparent", &later);
        set(&mut record, "tracestate", "rojo=1");
        let p = planned(&converter(), &record);
        assert_eq!(p.dropped, None);
        assert_eq!(
            trace(&publish(p.plan).0),
            [Some(PARENT.into()), Some("rojo=1".into())]
        );

        // Names are configurable.
        let mut config = MappingConfig::new("product.events");
        config.attributes.traceparent = "trace".into();
        let mut renamed = records(INSERTS).remove(0);
        set(&mut renamed, "trace", PARENT);
        let (m, _) = publish(planned(&Converter::new(config), &renamed).plan);
        assert_eq!(trace(&m)[0].as_deref(), Some(PARENT));
    }
}
