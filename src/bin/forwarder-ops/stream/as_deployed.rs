//! `stream --mapping`: the local mapping run with a deployed mapping's
//! settings (read through Lambda's API) instead of its flags' defaults.

use anyhow::{Context as _, bail};

use super::{Args, StartingPosition};
use crate::deployed::Settings;

/// Takes a deployed mapping's settings in place of the flags' defaults;
/// says which were used. A flag given on the command line that
/// contradicts one is an error unless --override-mapping, then it wins.
pub(super) fn adopt(
    args: &mut Args,
    deployed: &aws_sdk_lambda::types::EventSourceMappingConfiguration,
) -> anyhow::Result<Vec<String>> {
    let uuid = deployed.uuid().unwrap_or("?").to_owned();
    let source = deployed.event_source_arn().unwrap_or_default().to_owned();
    let s = Settings::of(deployed);
    let on_failure = match &s.on_failure {
        Some(arn)
            if !arn.starts_with("arn:aws:sqs:")
                && crate::objects::Location::parse(arn).is_none() =>
        {
            bail!(
                "the mapping {uuid} sends what it gives up on to {arn}: this local mapping \
                 writes OnFailure records to SQS or S3 only"
            )
        }
        other => other.clone(),
    };
    let position = match s.starting_position.as_str() {
        "TRIM_HORIZON" => StartingPosition::TrimHorizon,
        "LATEST" => StartingPosition::Latest,
        other => bail!("the mapping {uuid} starts at {other}: stream takes TRIM_HORIZON or LATEST"),
    };
    let mut filter = s.filter_patterns.clone();
    filter.sort();
    let mut given_filter = args.filter_pattern.clone();
    given_filter.sort();
    let queue_name = |q: &str| q.rsplit([':', '/']).next().unwrap_or(q).to_owned();
    // (flag, the mapping's setting, its value, the flag's value)
    let settings = [
        (
            "batch_size",
            "BatchSize",
            s.batch_size.to_string(),
            args.batch_size.to_string(),
        ),
        (
            "batching_window",
            "MaximumBatchingWindowInSeconds",
            s.batching_window.to_string(),
            args.batching_window.to_string(),
        ),
        (
            "no_report_batch_item_failures",
            "ReportBatchItemFailures",
            s.report_batch_item_failures.to_string(),
            (!args.no_report_batch_item_failures).to_string(),
        ),
        (
            "no_bisect",
            "BisectBatchOnFunctionError",
            s.bisect.to_string(),
            (!args.no_bisect).to_string(),
        ),
        (
            "maximum_retry_attempts",
            "MaximumRetryAttempts",
            s.maximum_retry_attempts.to_string(),
            args.maximum_retry_attempts.to_string(),
        ),
        (
            "maximum_record_age",
            "MaximumRecordAgeInSeconds",
            s.maximum_record_age.to_string(),
            args.maximum_record_age.to_string(),
        ),
        (
            "filter_pattern",
            "FilterCriteria",
            format!("{filter:?}"),
            format!("{given_filter:?}"),
        ),
        (
            "on_failure",
            "OnFailure",
            on_failure
                .as_deref()
                .map_or_else(|| "none".into(), queue_name),
            args.on_failure
                .as_deref()
                .map_or_else(|| "none".into(), queue_name),
        ),
        (
            "starting_position",
            "StartingPosition",
            s.starting_position.clone(),
            match args.starting_position {
                StartingPosition::TrimHorizon => "TRIM_HORIZON".into(),
                StartingPosition::Latest => "LATEST".into(),
            },
        ),
    ];
    let mut contradictions = Vec::new();
    let mut overridden = Vec::new();
    let mut used = Vec::new();
    let mut keep = Vec::new();
    for (flag, setting, theirs, ours) in settings {
        let given = args.given.iter().any(|g| g == flag);
        if given && theirs != ours {
            let line = format!(
                "--{} ({ours}) contradicts its {setting} {theirs}",
                flag.replace('_', "-")
            );
            if args.override_mapping {
                overridden.push(line);
                keep.push(flag);
            } else {
                contradictions.push(line);
            }
        } else {
            used.push(format!("{setting}={theirs}"));
        }
    }
    if !contradictions.is_empty() {
        bail!(
            "the deployed mapping {uuid}: {}; drop the flag to run as deployed, or add \
             --override-mapping",
            contradictions.join("; ")
        );
    }
    let kept = |flag: &str| keep.contains(&flag);
    if !kept("batch_size") {
        args.batch_size = u32::try_from(s.batch_size).context("the mapping's BatchSize")?;
    }
    if !kept("batching_window") {
        args.batching_window =
            u32::try_from(s.batching_window).context("the mapping's batching window")?;
    }
    if !kept("no_report_batch_item_failures") {
        args.no_report_batch_item_failures = !s.report_batch_item_failures;
    }
    if !kept("no_bisect") {
        args.no_bisect = !s.bisect;
    }
    if !kept("maximum_retry_attempts") {
        args.maximum_retry_attempts = i64::from(s.maximum_retry_attempts);
    }
    if !kept("maximum_record_age") {
        args.maximum_record_age = i64::from(s.maximum_record_age);
    }
    if !kept("filter_pattern") {
        args.filter_pattern = s.filter_patterns.clone();
    }
    if !kept("on_failure") {
        args.on_failure = on_failure;
    }
    if !kept("starting_position") {
        args.starting_position = position;
    }
    let function = deployed.function_arn().unwrap_or("?");
    let mut lines = vec![format!(
        "running as the deployed mapping {uuid} of {function}: {}",
        used.join(" ")
    )];
    if s.parallelization_factor > 1 {
        lines.push(format!(
            "its ParallelizationFactor {} is not emulated: one batch per shard at a time",
            s.parallelization_factor
        ));
    }
    lines.extend(overridden.into_iter().map(|l| format!("overridden: {l}")));
    if args.table.is_none() && args.stream_arn.is_none() {
        args.stream_arn = Some(source);
    } else {
        lines.push(format!(
            "reading {} with those settings; the mapping reads {source}",
            args.stream_arn
                .as_deref()
                .or(args.table.as_deref())
                .unwrap_or_default()
        ));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use aws_sdk_lambda::types::{
        DestinationConfig, EventSourceMappingConfiguration, EventSourcePosition, Filter,
        FilterCriteria, FunctionResponseType, OnFailure,
    };
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// `stream` with `flags`, as `main` fills in the ones given.
    fn parse(flags: &[&str]) -> Args {
        let mapping = ["--mapping", "f"];
        let all = std::iter::once("stream").chain(mapping.iter().chain(flags).copied());
        let mut args = Cli::parse_from(all).args;
        args.given = flags
            .iter()
            .filter_map(|f| f.strip_prefix("--"))
            .map(|f| f.replace('-', "_"))
            .chain(["mapping".to_owned()])
            .collect();
        args
    }

    fn deployed() -> EventSourceMappingConfiguration {
        EventSourceMappingConfiguration::builder()
            .uuid("5f8f1a2e-0000-4000-8000-000000000001")
            .event_source_arn("arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/1")
            .function_arn("arn:aws:lambda:us-east-1:123456789012:function:f")
            .batch_size(100)
            .maximum_batching_window_in_seconds(2)
            .function_response_types(FunctionResponseType::ReportBatchItemFailures)
            .bisect_batch_on_function_error(false)
            .maximum_retry_attempts(3)
            .maximum_record_age_in_seconds(3600)
            .filter_criteria(
                FilterCriteria::builder()
                    .filters(
                        Filter::builder()
                            .pattern(r#"{"eventName":["INSERT"]}"#)
                            .build(),
                    )
                    .build(),
            )
            .destination_config(
                DestinationConfig::builder()
                    .on_failure(
                        OnFailure::builder()
                            .destination("arn:aws:sqs:us-east-1:123456789012:of")
                            .build(),
                    )
                    .build(),
            )
            .starting_position(EventSourcePosition::Latest)
            .build()
    }

    #[test]
    fn the_deployed_settings_replace_the_defaults_and_its_stream_is_read() {
        let mut args = parse(&["--idle-exit", "1"]);
        let lines = adopt(&mut args, &deployed()).expect("no contradiction");
        assert_eq!(args.batch_size, 100);
        assert_eq!(args.batching_window, 2);
        assert!(!args.no_report_batch_item_failures);
        assert!(args.no_bisect);
        assert_eq!(args.maximum_retry_attempts, 3);
        assert_eq!(args.maximum_record_age, 3600);
        assert_eq!(args.filter_pattern, [r#"{"eventName":["INSERT"]}"#]);
        assert_eq!(
            args.on_failure.as_deref(),
            Some("arn:aws:sqs:us-east-1:123456789012:of")
        );
        assert!(matches!(args.starting_position, StartingPosition::Latest));
        assert_eq!(
            args.stream_arn.as_deref(),
            Some("arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/1")
        );
        assert!(
            lines[0].starts_with(
                "running as the deployed mapping 5f8f1a2e-0000-4000-8000-000000000001 of \
                 arn:aws:lambda:us-east-1:123456789012:function:f: BatchSize=100"
            ),
            "{lines:?}"
        );
    }

    #[test]
    fn a_flag_that_contradicts_the_mapping_is_refused_unless_overridden() {
        let mut args = parse(&["--table", "t", "--batch-size", "10", "--no-bisect"]);
        let e = adopt(&mut args, &deployed()).expect_err("a contradiction");
        let e = e.to_string();
        assert!(
            e.contains("--batch-size (10) contradicts its BatchSize 100"),
            "{e}"
        );
        // --no-bisect agrees with the mapping: not a contradiction.
        assert!(!e.contains("bisect"), "{e}");
        assert!(e.contains("--override-mapping"), "{e}");

        let mut args = parse(&["--table", "t", "--batch-size", "10", "--override-mapping"]);
        let lines = adopt(&mut args, &deployed()).expect("overridden");
        assert_eq!(args.batch_size, 10, "the flag wins");
        assert_eq!(args.maximum_retry_attempts, 3, "the rest is the mapping's");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("overridden: --batch-size (10)"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("reading t with those settings")),
            "{lines:?}"
        );
    }

    #[test]
    fn a_mapping_that_sends_to_s3_is_followed_and_one_to_sns_or_at_a_timestamp_refused() {
        let to = |destination: &str| {
            let mut d = deployed();
            d.destination_config = Some(
                DestinationConfig::builder()
                    .on_failure(OnFailure::builder().destination(destination).build())
                    .build(),
            );
            d
        };
        let mut args = parse(&[]);
        assert!(adopt(&mut args, &to("arn:aws:s3:::b")).is_ok());
        assert_eq!(args.on_failure.as_deref(), Some("arn:aws:s3:::b"));
        assert!(adopt(&mut parse(&[]), &to("arn:aws:sns:us-east-1:123456789012:t")).is_err());
        let mut at = deployed();
        at.starting_position = Some(EventSourcePosition::AtTimestamp);
        assert!(adopt(&mut parse(&[]), &at).is_err());
    }
}
