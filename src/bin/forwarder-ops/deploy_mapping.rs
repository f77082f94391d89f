//! `deploy-mapping`: the function's event source mapping, created or
//! updated with the template's settings, for deploys without
//! CloudFormation (`make deploy-cargo-lambda`: `cargo lambda deploy`
//! makes the function, never its mapping). Idempotent: a second run with
//! the same settings changes nothing; a changed setting is updated in the
//! one mapping, never a second one made.

use anyhow::bail;

use crate::{
    aws::Clients,
    deployed::{self, Applied, Settings},
    progress,
};

/// Create or update the function's event source mapping on a stream.
///
/// Every default is template.yaml's (its parameters' defaults and its
/// event source's fixed properties); `make deploy-cargo-lambda` passes
/// CargoLambda.toml's `[<env>.mapping]` over `[default.mapping]`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  # The mapping of the function cargo lambda deployed, as the template makes it
  forwarder-ops --function-name event-forwarder-dev deploy-mapping \\
      --stream-arn arn:aws:dynamodb:eu-west-1:111111111111:table/product-events-dev/stream/2026-01-01T00:00:00.000 \\
      --on-failure arn:aws:sqs:eu-west-1:111111111111:event-forwarder-dev-on-failure

Prints `deploy-mapping: uuid=... action=created|updated|unchanged`, and
each changed setting on stderr. Exit status 0 when the mapping has the
settings, 2 on an error.")]
pub struct Args {
    /// The DynamoDB stream (the table's LatestStreamArn).
    #[arg(long)]
    stream_arn: String,

    /// DestinationConfig.OnFailure: the ARN of the SQS queue (or SNS topic,
    /// or S3 bucket) that gets the batches given up on. Default: none.
    #[arg(long, value_name = "ARN")]
    on_failure: Option<String>,

    /// BatchSize.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    batch_size: i32,

    /// MaximumBatchingWindowInSeconds.
    #[arg(long, default_value_t = 0, value_name = "SECONDS", value_parser = clap::value_parser!(i32).range(0..=300))]
    batching_window: i32,

    /// ParallelizationFactor (above 1 reorders one aggregate's events with
    /// the event-store mapping: template.yaml's OrderPerAggregate rule).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=10))]
    parallelization_factor: i32,

    /// FunctionResponseTypes without ReportBatchItemFailures.
    #[arg(long)]
    no_report_batch_item_failures: bool,

    /// BisectBatchOnFunctionError false.
    #[arg(long)]
    no_bisect: bool,

    /// MaximumRetryAttempts (-1: until the records expire).
    #[arg(long, default_value_t = 10_000, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-1..=10_000))]
    maximum_retry_attempts: i32,

    /// MaximumRecordAgeInSeconds: -1 or 60 to 604800.
    #[arg(long, default_value_t = 21_600, value_name = "SECONDS", allow_negative_numbers = true, value_parser = record_age)]
    maximum_record_age: i32,

    /// FilterCriteria: a filter pattern (JSON); repeat for more. Empty:
    /// none (template.yaml's FilterPattern "").
    #[arg(long, value_name = "JSON")]
    filter_pattern: Vec<String>,

    /// StartingPosition: TRIM_HORIZON or LATEST (fixed once created).
    #[arg(long, default_value = "TRIM_HORIZON", value_parser = ["TRIM_HORIZON", "LATEST"])]
    starting_position: String,
}

fn record_age(s: &str) -> Result<i32, String> {
    let n: i32 = s
        .parse()
        .map_err(|_| format!("{s} is not a number of seconds"))?;
    match n {
        -1 | 60..=604_800 => Ok(n),
        _ => Err(format!(
            "{n}: MaximumRecordAgeInSeconds is -1 or 60 to 604800"
        )),
    }
}

impl Args {
    fn settings(&self) -> Settings {
        let mut filter_patterns: Vec<String> = self
            .filter_pattern
            .iter()
            .filter(|p| !p.trim().is_empty())
            .cloned()
            .collect();
        filter_patterns.sort();
        Settings {
            batch_size: self.batch_size,
            batching_window: self.batching_window,
            parallelization_factor: self.parallelization_factor,
            report_batch_item_failures: !self.no_report_batch_item_failures,
            bisect: !self.no_bisect,
            maximum_retry_attempts: self.maximum_retry_attempts,
            maximum_record_age: self.maximum_record_age,
            filter_patterns,
            on_failure: self.on_failure.clone().filter(|a| !a.is_empty()),
            starting_position: self.starting_position.clone(),
        }
    }
}

pub async fn run(args: Args, clients: &Clients) -> anyhow::Result<bool> {
    let function = &clients.function_name;
    if function == "_" {
        bail!("give the deployed function: --function-name NAME (or FORWARDER_FUNCTION)");
    }
    let wanted = args.settings();
    let (uuid, applied) =
        deployed::apply(&clients.lambda_api, function, &args.stream_arn, &wanted).await?;
    let action = match &applied {
        Applied::Created => "created",
        Applied::Updated(changes) => {
            for change in changes {
                eprintln!("updated {change}");
            }
            "updated"
        }
        Applied::Unchanged => "unchanged",
    };
    println!(
        "{}",
        progress::summary(
            "deploy-mapping",
            &[("uuid", &uuid), ("function", function), ("action", &action)]
        )
    );
    Ok(true)
}
