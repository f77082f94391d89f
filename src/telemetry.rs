//! JSON logs and the per-invocation summary and CloudWatch EMF document
//! (CONTRACT §7).
//!
//! lapin logs returned messages with their payload at WARN, so its log level
//! is held at ERROR whatever `RUST_LOG` says; lambda_runtime logs the raw
//! event at TRACE, so only this crate may log at TRACE: payloads never reach
//! the logs.

use std::io::Write;

use chrono::{DateTime, Utc};
use lambda_runtime::tracing::subscriber::{
    self as tracing_subscriber, EnvFilter, Layer, filter, filter::LevelFilter, fmt,
    layer::SubscriberExt, util::SubscriberInitExt,
};
use serde_json::json;
use tracing::Level;

use crate::batch::BatchReport;

/// Installs a JSON-lines subscriber on stdout. The level comes from
/// `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else INFO. Whatever they say,
/// lapin and its protocol crate log at ERROR only, other crates at DEBUG.
pub fn init_logging() {
    let directives = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_default();
    let env_filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy(directives.to_lowercase());
    let quiet_client = filter::filter_fn(|meta| {
        let target = meta.target();
        let client = target.starts_with("lapin") || target.starts_with("amq_protocol");
        // lambda_runtime logs the raw event (payloads) at TRACE, and
        // aws-sigv4 the canonical request with the session token: only this
        // crate may log at TRACE. Keep this filter.
        let ours = target.starts_with("event_forwarder");
        (!client || *meta.level() <= Level::ERROR) && (ours || *meta.level() <= Level::DEBUG)
    });
    let json = fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_filter(env_filter)
        .with_filter(quiet_client);
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(json).try_init();
}

/// Logs the one summary line of an invocation.
pub fn log_summary(report: &BatchReport, duration_ms: u64, first_failed: Option<&str>) {
    let failure = report.failure.as_ref();
    let reason = failure.map(|f| f.error.to_string());
    let kind = failure.map(|f| f.error.kind());
    if failure.is_some() {
        tracing::warn!(
            records = report.records,
            published = report.published,
            skipped = report.skipped,
            dead_lettered = report.dead_lettered,
            failed = report.failed,
            duration_ms,
            reconnects = report.reconnects,
            first_failed_sequence_number = first_failed,
            failure_kind = kind,
            failure = reason.as_deref(),
            "batch forwarded with a failure"
        );
    } else {
        tracing::info!(
            records = report.records,
            published = report.published,
            skipped = report.skipped,
            dead_lettered = report.dead_lettered,
            failed = report.failed,
            duration_ms,
            reconnects = report.reconnects,
            "batch forwarded"
        );
    }
}

/// The EMF document of one invocation, one JSON line.
pub fn emf_document(
    namespace: &str,
    function_name: &str,
    report: &BatchReport,
    duration_ms: u64,
    max_record_age_ms: Option<u64>,
    now: DateTime<Utc>,
) -> String {
    let mut metrics = vec![
        json!({"Name": "RecordsReceived", "Unit": "Count"}),
        json!({"Name": "RecordsPublished", "Unit": "Count"}),
        json!({"Name": "RecordsSkipped", "Unit": "Count"}),
        json!({"Name": "RecordsDeadLettered", "Unit": "Count"}),
        json!({"Name": "RecordsFailed", "Unit": "Count"}),
        json!({"Name": "BatchDurationMs", "Unit": "Milliseconds"}),
        json!({"Name": "Reconnects", "Unit": "Count"}),
        json!({"Name": "TopologyErrors", "Unit": "Count"}),
        json!({"Name": "ConnectionLimitReached", "Unit": "Count"}),
    ];
    // The one failure that is neither the broker's trouble nor passes by
    // itself: a queue that exists with other arguments than ours holds
    // every record of its exchange until an operator fixes it (CONTRACT
    // §6.9); the template alarms on it.
    let topology_errors = report
        .failure
        .as_ref()
        .is_some_and(|f| matches!(f.error, crate::publisher::PublishError::Topology(_)));
    let mut doc = json!({
        "_aws": {
            "Timestamp": now.timestamp_millis(),
            "CloudWatchMetrics": [],
        },
        "FunctionName": function_name,
        "RecordsReceived": report.records,
        "RecordsPublished": report.published,
        "RecordsSkipped": report.skipped,
        "RecordsDeadLettered": report.dead_lettered,
        "RecordsFailed": report.failed,
        "BatchDurationMs": duration_ms,
        "Reconnects": report.reconnects,
        "TopologyErrors": u32::from(topology_errors),
        // 1 when the broker refused this invocation's connection for a
        // connection limit (the template alarms on it), else 0: a metric
        // always present reads as "no refusals", not as missing data.
        "ConnectionLimitReached": u32::from(
            report.failure.as_ref().is_some_and(|f| f.error.kind() == "connection_limit"),
        ),
    });
    // Not a metric but a property of the document, so that a failed
    // invocation's kind (`blocked`, `unreachable`, ...) can be queried with
    // its figures in CloudWatch Logs Insights.
    if let Some(f) = &report.failure {
        doc["FailureKind"] = json!(f.error.kind());
    }
    // An empty batch has no oldest record; the metric is left out rather
    // than reported as zero lag.
    if let Some(age) = max_record_age_ms {
        metrics.push(json!({"Name": "MaxRecordAgeMs", "Unit": "Milliseconds"}));
        doc["MaxRecordAgeMs"] = json!(age);
    }
    doc["_aws"]["CloudWatchMetrics"] = json!([{
        "Namespace": namespace,
        "Dimensions": [["FunctionName"]],
        "Metrics": metrics,
    }]);
    doc.to_string()
}

/// Prints the EMF document as its own line on stdout, where the Lambda
/// agent picks it up.
pub fn emit_emf(document: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout cannot be reported anywhere else; the batch result
    // does not depend on it.
    let _ = writeln!(out, "{document}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchReport, Failure};
    use crate::publisher::PublishError;
    use chrono::TimeZone;

    #[test]
    fn the_emf_document_names_every_metric_with_its_value() {
        let report = BatchReport {
            records: 10,
            published: 6,
            skipped: 1,
            dead_lettered: 1,
            failed: 2,
            failure: Some(Failure::new(8, PublishError::Nacked)),
            reconnects: 1,
            dead_letter_reasons: vec![],
            skip_reasons: vec![],
            dropped: vec![],
            oldest_record: None,
        };
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&emf_document("Shop", "fwd", &report, 42, Some(1500), now))
                .unwrap();
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "Shop");
        assert_eq!(directive["Dimensions"], json!([["FunctionName"]]));
        let names: Vec<&str> = directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for (name, value) in [
            ("RecordsReceived", 10),
            ("RecordsPublished", 6),
            ("RecordsSkipped", 1),
            ("RecordsDeadLettered", 1),
            ("RecordsFailed", 2),
            ("BatchDurationMs", 42),
            ("MaxRecordAgeMs", 1500),
            ("Reconnects", 1),
            ("TopologyErrors", 0),
            ("ConnectionLimitReached", 0),
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
            assert_eq!(doc[name], value, "{name}");
        }
        assert_eq!(doc["FunctionName"], "fwd");
        assert_eq!(doc["FailureKind"], "nack");
        assert!(!names.contains(&"FailureKind"), "a property, not a metric");
        assert_eq!(doc["_aws"]["Timestamp"], now.timestamp_millis());
    }

    #[test]
    fn a_topology_failure_raises_the_metric_the_template_alarms_on() {
        let report = |error| BatchReport {
            records: 3,
            published: 1,
            skipped: 0,
            dead_lettered: 0,
            failed: 2,
            failure: Some(Failure::new(1, error)),
            reconnects: 0,
            dead_letter_reasons: vec![],
            skip_reasons: vec![],
            dropped: vec![],
            oldest_record: None,
        };
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        let doc = |error| -> serde_json::Value {
            serde_json::from_str(&emf_document("Shop", "fwd", &report(error), 1, None, now))
                .unwrap()
        };
        let clash = PublishError::Topology("queue 'orders.unrouted' could not be declared".into());
        assert_eq!(doc(clash)["TopologyErrors"], 1);
        assert_eq!(doc(PublishError::Blocked)["TopologyErrors"], 0);
    }

    #[test]
    fn a_connection_refused_at_the_brokers_limit_is_counted() {
        let refused = PublishError::ConnectionLimit(
            "NOT_ALLOWED - connection refused: node connection limit (100) is reached".into(),
        );
        for (error, counted) in [(refused, 1), (PublishError::Unreachable("down".into()), 0)] {
            let report = BatchReport {
                records: 3,
                published: 0,
                skipped: 0,
                dead_lettered: 0,
                failed: 3,
                failure: Some(Failure::new(0, error)),
                reconnects: 0,
                dead_letter_reasons: vec![],
                skip_reasons: vec![],
                dropped: vec![],
                oldest_record: None,
            };
            let doc: serde_json::Value =
                serde_json::from_str(&emf_document("Shop", "fwd", &report, 1, None, Utc::now()))
                    .unwrap();
            assert_eq!(doc["ConnectionLimitReached"], counted, "{doc}");
        }
    }
}
