//! An event source mapping's settings as Lambda's API holds them: read
//! (GetEventSourceMapping / ListEventSourceMappings), compared, and
//! written (Create / UpdateEventSourceMapping). `deploy-mapping` writes
//! them for the cargo-lambda deploy path; `stream --mapping` runs the local
//! mapping with them.

use anyhow::{Context as _, bail};
use aws_sdk_lambda::types::{
    DestinationConfig, EventSourceMappingConfiguration, EventSourcePosition, Filter,
    FilterCriteria, FunctionResponseType, OnFailure,
};

/// The settings template.yaml gives its `AWS::Lambda::EventSourceMapping`
/// (its defaults are CargoLambda.toml's `[default.mapping]`; the template
/// test keeps the two equal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub batch_size: i32,
    pub batching_window: i32,
    pub parallelization_factor: i32,
    pub report_batch_item_failures: bool,
    pub bisect: bool,
    /// -1: until the records expire.
    pub maximum_retry_attempts: i32,
    /// -1: no limit.
    pub maximum_record_age: i32,
    /// Filter patterns (JSON), any one of which lets a record through.
    pub filter_patterns: Vec<String>,
    /// The OnFailure destination's ARN.
    pub on_failure: Option<String>,
    /// TRIM_HORIZON or LATEST; fixed once the mapping exists.
    pub starting_position: String,
}

impl Settings {
    /// The settings of a mapping as Lambda describes it. A field Lambda
    /// leaves out has Lambda's own default (moto leaves out what was not
    /// given).
    pub fn of(mapping: &EventSourceMappingConfiguration) -> Self {
        let mut filter_patterns: Vec<String> = mapping
            .filter_criteria()
            .map(FilterCriteria::filters)
            .unwrap_or_default()
            .iter()
            .filter_map(|f| f.pattern().map(str::to_owned))
            .collect();
        filter_patterns.sort();
        Self {
            batch_size: mapping.batch_size().unwrap_or(100),
            batching_window: mapping.maximum_batching_window_in_seconds().unwrap_or(0),
            parallelization_factor: mapping.parallelization_factor().unwrap_or(1),
            report_batch_item_failures: mapping
                .function_response_types()
                .contains(&FunctionResponseType::ReportBatchItemFailures),
            bisect: mapping.bisect_batch_on_function_error().unwrap_or(false),
            maximum_retry_attempts: mapping.maximum_retry_attempts().unwrap_or(-1),
            maximum_record_age: mapping.maximum_record_age_in_seconds().unwrap_or(-1),
            filter_patterns,
            on_failure: mapping
                .destination_config()
                .and_then(DestinationConfig::on_failure)
                .and_then(OnFailure::destination)
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
            starting_position: mapping
                .starting_position()
                .map_or_else(String::new, |p| p.as_str().to_owned()),
        }
    }

    /// What differs from `other`, one `name: ours -> theirs` per setting.
    pub fn differences(&self, other: &Settings) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} -> {b}"));
            }
        };
        check(
            "BatchSize",
            self.batch_size.to_string(),
            other.batch_size.to_string(),
        );
        check(
            "MaximumBatchingWindowInSeconds",
            self.batching_window.to_string(),
            other.batching_window.to_string(),
        );
        check(
            "ParallelizationFactor",
            self.parallelization_factor.to_string(),
            other.parallelization_factor.to_string(),
        );
        check(
            "FunctionResponseTypes",
            response_types(self.report_batch_item_failures),
            response_types(other.report_batch_item_failures),
        );
        check(
            "BisectBatchOnFunctionError",
            self.bisect.to_string(),
            other.bisect.to_string(),
        );
        check(
            "MaximumRetryAttempts",
            self.maximum_retry_attempts.to_string(),
            other.maximum_retry_attempts.to_string(),
        );
        check(
            "MaximumRecordAgeInSeconds",
            self.maximum_record_age.to_string(),
            other.maximum_record_age.to_string(),
        );
        check(
            "FilterCriteria",
            format!("{:?}", self.filter_patterns),
            format!("{:?}", other.filter_patterns),
        );
        check(
            "DestinationConfig.OnFailure",
            self.on_failure.clone().unwrap_or_else(|| "none".into()),
            other.on_failure.clone().unwrap_or_else(|| "none".into()),
        );
        check(
            "StartingPosition",
            self.starting_position.clone(),
            other.starting_position.clone(),
        );
        out
    }

    fn filter_criteria(&self) -> FilterCriteria {
        FilterCriteria::builder()
            .set_filters(Some(
                self.filter_patterns
                    .iter()
                    .map(|p| Filter::builder().pattern(p).build())
                    .collect(),
            ))
            .build()
    }

    fn destination(&self) -> DestinationConfig {
        let on_failure = OnFailure::builder()
            .set_destination(Some(self.on_failure.clone().unwrap_or_default()))
            .build();
        DestinationConfig::builder().on_failure(on_failure).build()
    }

    fn response_types(&self) -> Vec<FunctionResponseType> {
        if self.report_batch_item_failures {
            vec![FunctionResponseType::ReportBatchItemFailures]
        } else {
            Vec::new()
        }
    }
}

fn response_types(report: bool) -> String {
    if report {
        "[ReportBatchItemFailures]".into()
    } else {
        "[]".into()
    }
}

/// The one mapping of `function` on `stream_arn`, if there is one; more
/// than one is an error (the deploy path never makes a second).
pub async fn find(
    lambda: &aws_sdk_lambda::Client,
    function: &str,
    stream_arn: &str,
) -> anyhow::Result<Option<EventSourceMappingConfiguration>> {
    let pages = lambda
        .list_event_source_mappings()
        .event_source_arn(stream_arn)
        .function_name(function)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_lambda::error::DisplayErrorContext(e)))
        .with_context(|| format!("ListEventSourceMappings of {function} on {stream_arn}"))?;
    let name = function.rsplit(':').next().unwrap_or(function);
    let mine: Vec<_> = pages
        .into_iter()
        .filter(|m| {
            m.function_arn()
                .is_none_or(|arn| arn == function || arn.ends_with(&format!(":function:{name}")))
        })
        .collect();
    match mine.len() {
        0 => Ok(None),
        1 => Ok(mine.into_iter().next()),
        n => bail!(
            "{n} event source mappings of {function} on {stream_arn} ({}): delete all but one",
            mine.iter()
                .filter_map(|m| m.uuid())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The mapping `what` names: a UUID, or a function with exactly one
/// DynamoDB stream mapping.
pub async fn resolve(
    lambda: &aws_sdk_lambda::Client,
    what: &str,
) -> anyhow::Result<EventSourceMappingConfiguration> {
    let is_uuid = what.len() == 36 && what.chars().filter(|c| *c == '-').count() == 4;
    if is_uuid {
        return get(lambda, what).await;
    }
    let all = lambda
        .list_event_source_mappings()
        .function_name(what)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_lambda::error::DisplayErrorContext(e)))
        .with_context(|| format!("ListEventSourceMappings of {what}"))?;
    let mut streams: Vec<_> = all
        .into_iter()
        .filter(|m| {
            m.event_source_arn()
                .is_some_and(|a| a.contains(":dynamodb:") && a.contains("/stream/"))
        })
        .collect();
    match streams.len() {
        1 => streams
            .pop()
            .context("ListEventSourceMappings: the one stream mapping went missing"),
        0 => bail!("{what} has no DynamoDB stream event source mapping"),
        n => bail!(
            "{what} has {n} DynamoDB stream mappings ({}): give one's UUID",
            streams
                .iter()
                .filter_map(|m| m.uuid())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The Timeout of the function a mapping invokes, in seconds, when Lambda's
/// API gives it.
pub async fn function_timeout(lambda: &aws_sdk_lambda::Client, function: &str) -> Option<u64> {
    let out = lambda
        .get_function_configuration()
        .function_name(function)
        .send()
        .await
        .ok()?;
    u64::try_from(out.timeout()?).ok()
}

/// A mapping by its UUID.
pub async fn get(
    lambda: &aws_sdk_lambda::Client,
    uuid: &str,
) -> anyhow::Result<EventSourceMappingConfiguration> {
    let out = lambda
        .get_event_source_mapping()
        .uuid(uuid)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_lambda::error::DisplayErrorContext(e)))
        .with_context(|| format!("GetEventSourceMapping {uuid}"))?;
    Ok(EventSourceMappingConfiguration::builder()
        .set_uuid(out.uuid().map(str::to_owned))
        .set_batch_size(out.batch_size())
        .set_maximum_batching_window_in_seconds(out.maximum_batching_window_in_seconds())
        .set_parallelization_factor(out.parallelization_factor())
        .set_event_source_arn(out.event_source_arn().map(str::to_owned))
        .set_function_arn(out.function_arn().map(str::to_owned))
        .set_function_response_types(Some(out.function_response_types().to_vec()))
        .set_bisect_batch_on_function_error(out.bisect_batch_on_function_error())
        .set_maximum_retry_attempts(out.maximum_retry_attempts())
        .set_maximum_record_age_in_seconds(out.maximum_record_age_in_seconds())
        .set_filter_criteria(out.filter_criteria().cloned())
        .set_destination_config(out.destination_config().cloned())
        .set_starting_position(out.starting_position().cloned())
        .set_state(out.state().map(str::to_owned))
        .build())
}

/// What `apply` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated(Vec<String>),
    Unchanged,
}

/// Creates the mapping of `function` on `stream_arn` with `wanted`, or
/// updates the one that exists where it differs; its UUID and what was
/// done. A different StartingPosition cannot be updated (Lambda fixes it
/// at creation): that is an error naming the mapping to delete.
pub async fn apply(
    lambda: &aws_sdk_lambda::Client,
    function: &str,
    stream_arn: &str,
    wanted: &Settings,
) -> anyhow::Result<(String, Applied)> {
    let Some(existing) = find(lambda, function, stream_arn).await? else {
        let position = EventSourcePosition::from(wanted.starting_position.as_str());
        let mut create = lambda
            .create_event_source_mapping()
            .function_name(function)
            .event_source_arn(stream_arn)
            .enabled(true)
            .starting_position(position)
            .batch_size(wanted.batch_size)
            .maximum_batching_window_in_seconds(wanted.batching_window)
            .parallelization_factor(wanted.parallelization_factor)
            .set_function_response_types(Some(wanted.response_types()))
            .bisect_batch_on_function_error(wanted.bisect)
            .maximum_retry_attempts(wanted.maximum_retry_attempts)
            .maximum_record_age_in_seconds(wanted.maximum_record_age);
        if !wanted.filter_patterns.is_empty() {
            create = create.filter_criteria(wanted.filter_criteria());
        }
        if wanted.on_failure.is_some() {
            create = create.destination_config(wanted.destination());
        }
        let out = create
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_lambda::error::DisplayErrorContext(e)))
            .with_context(|| format!("CreateEventSourceMapping of {function} on {stream_arn}"))?;
        let uuid = out
            .uuid()
            .context("CreateEventSourceMapping gave no UUID")?
            .to_owned();
        return Ok((uuid, Applied::Created));
    };
    let uuid = existing
        .uuid()
        .context("ListEventSourceMappings gave a mapping without a UUID")?
        .to_owned();
    let current = Settings::of(&existing);
    let changes = current.differences(wanted);
    if changes.is_empty() {
        return Ok((uuid, Applied::Unchanged));
    }
    if current.starting_position != wanted.starting_position {
        bail!(
            "the mapping {uuid} starts at {}, not {}: Lambda cannot change that; \
             delete it (aws lambda delete-event-source-mapping --uuid {uuid}) and deploy again",
            current.starting_position,
            wanted.starting_position
        );
    }
    lambda
        .update_event_source_mapping()
        .uuid(&uuid)
        .batch_size(wanted.batch_size)
        .maximum_batching_window_in_seconds(wanted.batching_window)
        .parallelization_factor(wanted.parallelization_factor)
        .set_function_response_types(Some(wanted.response_types()))
        .bisect_batch_on_function_error(wanted.bisect)
        .maximum_retry_attempts(wanted.maximum_retry_attempts)
        .maximum_record_age_in_seconds(wanted.maximum_record_age)
        .filter_criteria(wanted.filter_criteria())
        .destination_config(wanted.destination())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_lambda::error::DisplayErrorContext(e)))
        .with_context(|| format!("UpdateEventSourceMapping {uuid}"))?;
    Ok((uuid, Applied::Updated(changes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Settings {
        Settings {
            batch_size: 500,
            batching_window: 0,
            parallelization_factor: 1,
            report_batch_item_failures: true,
            bisect: true,
            maximum_retry_attempts: 10_000,
            maximum_record_age: 21_600,
            filter_patterns: Vec::new(),
            on_failure: Some("arn:aws:sqs:us-east-1:123456789012:q".into()),
            starting_position: "TRIM_HORIZON".into(),
        }
    }

    #[test]
    fn a_mapping_read_back_with_the_same_settings_has_no_differences() {
        let wanted = template();
        let described = EventSourceMappingConfiguration::builder()
            .batch_size(500)
            .maximum_batching_window_in_seconds(0)
            .parallelization_factor(1)
            .function_response_types(FunctionResponseType::ReportBatchItemFailures)
            .bisect_batch_on_function_error(true)
            .maximum_retry_attempts(10_000)
            .maximum_record_age_in_seconds(21_600)
            .destination_config(wanted.destination())
            .starting_position(EventSourcePosition::TrimHorizon)
            .build();
        assert_eq!(Settings::of(&described), wanted);
        assert!(Settings::of(&described).differences(&wanted).is_empty());
    }

    #[test]
    fn what_lambda_leaves_out_reads_as_lambdas_defaults_and_differs() {
        let bare = Settings::of(
            &EventSourceMappingConfiguration::builder()
                .starting_position(EventSourcePosition::TrimHorizon)
                .build(),
        );
        let changes = bare.differences(&template());
        for name in [
            "BatchSize: 100 -> 500",
            "FunctionResponseTypes: [] -> [ReportBatchItemFailures]",
            "BisectBatchOnFunctionError: false -> true",
            "MaximumRetryAttempts: -1 -> 10000",
            "MaximumRecordAgeInSeconds: -1 -> 21600",
            "DestinationConfig.OnFailure: none -> arn:aws:sqs:us-east-1:123456789012:q",
        ] {
            assert!(changes.iter().any(|c| c == name), "{name} in {changes:?}");
        }
        assert_eq!(changes.len(), 6, "{changes:?}");
    }
}
