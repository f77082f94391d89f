//! The AWS clients every command shares, from the usual configuration
//! chain, with the endpoints pointed at local servers when asked.

use std::time::Duration;

use aws_config::{BehaviorVersion, retry::RetryConfig, timeout::TimeoutConfig};

/// Where the AWS APIs are.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Endpoint of DynamoDB, DynamoDB Streams, SQS and S3 (e.g. moto's server,
    /// http://127.0.0.1:5677). Default: AWS, or AWS_ENDPOINT_URL.
    #[arg(long, global = true, value_name = "URL", help_heading = "AWS")]
    pub endpoint_url: Option<String>,

    /// Endpoint of the Lambda Invoke API only (e.g. `cargo lambda watch`,
    /// http://127.0.0.1:9000). Lambda's other calls (the function's
    /// configuration, event source mappings) go to --endpoint-url: the
    /// emulator answers any other path by invoking the function with it.
    /// Default: --endpoint-url, else AWS.
    #[arg(long, global = true, value_name = "URL", help_heading = "AWS")]
    pub lambda_endpoint_url: Option<String>,

    /// AWS region. Default: AWS_REGION or the profile's.
    #[arg(long, global = true, help_heading = "AWS")]
    pub region: Option<String>,

    /// The function to invoke: name or ARN. `_` is the function of
    /// `cargo lambda watch --only-lambda-apis`. OnFailure messages name its
    /// ARN: as given, else from GetFunctionConfiguration when allowed.
    #[arg(
        long,
        global = true,
        default_value = "_",
        env = "FORWARDER_FUNCTION",
        help_heading = "AWS"
    )]
    pub function_name: String,
}

/// One client per API.
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub sqs: aws_sdk_sqs::Client,
    /// OnFailure objects (path-style addressing with --endpoint-url, as
    /// local servers such as moto need).
    pub s3: aws_sdk_s3::Client,
    /// The Invoke API (--lambda-endpoint-url): invocations only.
    pub lambda: aws_sdk_lambda::Client,
    /// Lambda's control plane (--endpoint-url): configurations and event
    /// source mappings. Never the Invoke endpoint: `cargo lambda watch`
    /// turns any request it has no route for into a function URL
    /// invocation, so a GetFunctionConfiguration sent there ran the
    /// function with an HTTP event.
    pub lambda_api: aws_sdk_lambda::Client,
    pub function_name: String,
    pub region: String,
}

impl Clients {
    pub async fn new(args: &Args) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &args.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &args.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let shared = loader.load().await;
        let mut lambda = aws_sdk_lambda::config::Builder::from(&shared)
            // An invocation is never repeated by the client: a retry is the
            // mapping's decision (and counts), not the SDK's.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            );
        if let Some(url) = &args.lambda_endpoint_url {
            lambda = lambda.endpoint_url(url);
        }
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(&shared),
            streams: aws_sdk_dynamodbstreams::Client::new(&shared),
            sqs: aws_sdk_sqs::Client::new(&shared),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&shared)
                    .force_path_style(args.endpoint_url.is_some())
                    .build(),
            ),
            lambda: aws_sdk_lambda::Client::from_conf(lambda.build()),
            lambda_api: aws_sdk_lambda::Client::new(&shared),
            function_name: args.function_name.clone(),
            region: shared
                .region()
                .map_or_else(|| "us-east-1".to_string(), ToString::to_string),
        }
    }

    /// The function's own ARN, for OnFailure messages: as given when an
    /// ARN is given; else the one Lambda gives (GetFunctionConfiguration,
    /// which needs `lambda:GetFunctionConfiguration`); else made of the
    /// name, a partial ARN's account, or the account `000000000000` when it
    /// is not known (locally).
    pub async fn function_arn(&self) -> String {
        let name = &self.function_name;
        if name.starts_with("arn:") {
            return name.clone();
        }
        let ask = self
            .lambda_api
            .get_function_configuration()
            .function_name(name)
            .send();
        let given = match tokio::time::timeout(Duration::from_secs(5), ask).await {
            Ok(Ok(out)) => out.function_arn().map(str::to_owned),
            Ok(Err(e)) => {
                tracing::debug!(
                    error = %aws_sdk_lambda::error::DisplayErrorContext(&e),
                    "GetFunctionConfiguration failed"
                );
                None
            }
            Err(_) => None,
        };
        given
            .filter(|arn| arn.starts_with("arn:"))
            .unwrap_or_else(|| made_arn(&self.region, name))
    }

    /// A table's description (key schema, stream).
    pub async fn describe_table(
        &self,
        table: &str,
    ) -> anyhow::Result<aws_sdk_dynamodb::types::TableDescription> {
        use anyhow::Context as _;
        let out = self
            .dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .with_context(|| format!("DescribeTable {table}"))?;
        out.table()
            .cloned()
            .with_context(|| format!("DescribeTable {table} gave no table"))
    }

    /// The URL of an SQS queue given by URL, ARN or name.
    pub async fn queue_url(&self, queue: &str) -> anyhow::Result<String> {
        use anyhow::Context as _;
        if queue.starts_with("http://") || queue.starts_with("https://") {
            return Ok(queue.to_owned());
        }
        let name = queue.rsplit(':').next().unwrap_or(queue);
        let out = self
            .sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .with_context(|| format!("the SQS queue {name} (GetQueueUrl)"))?;
        out.queue_url()
            .map(str::to_owned)
            .with_context(|| format!("GetQueueUrl gave no URL for {name}"))
    }
}

/// A function ARN made of a name (`f`) or a partial ARN
/// (`123456789012:function:f`).
fn made_arn(region: &str, name: &str) -> String {
    if name.contains(":function:") {
        format!("arn:aws:lambda:{region}:{name}")
    } else {
        format!("arn:aws:lambda:{region}:000000000000:function:{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_arn_keeps_its_account() {
        assert_eq!(
            made_arn("eu-west-1", "123456789012:function:f"),
            "arn:aws:lambda:eu-west-1:123456789012:function:f"
        );
        assert_eq!(
            made_arn("eu-west-1", "f"),
            "arn:aws:lambda:eu-west-1:000000000000:function:f"
        );
    }
}
