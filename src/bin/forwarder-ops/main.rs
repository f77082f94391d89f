//! `forwarder-ops`: what happens around the function, through the function.
//!
//! A local event source mapping over a real (local) DynamoDB stream
//! (`stream`), redrive of what Lambda gave up on: SQS ranges, or S3
//! objects with their records (`redrive`),
//! backfill from the event store (`backfill`), and the deployed function's
//! event source mapping for deploys without CloudFormation
//! (`deploy-mapping`). Each command that moves records reaches the broker
//! only by invoking the function with the Lambda Invoke API, so one code path,
//! one checkpoint rule and one set of message ids serve every way an event
//! reaches RabbitMQ.
//!
//! A new command is a module of its own with its `Args` and `run` (as
//! `redrive.rs`), a variant of [`Command`] and its arm in `main`; it ends
//! with one summary line made by `progress::summary`, and invokes the
//! function through `invoker` (never the broker itself).

mod aws;
mod backfill;
mod deploy_mapping;
mod deployed;
mod invoker;
mod objects;
mod progress;
mod reader;
mod redrive;
#[cfg(test)]
mod scripted;
mod stream;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, parser::ValueSource};

/// Operations around event-forwarder, through the function: a local event
/// source mapping, redrive of what Lambda gave up on, backfill from the
/// table.
#[derive(Debug, Parser)]
#[command(name = "forwarder-ops", version, about, long_about = None)]
#[command(after_help = "\
Examples:
  # The local loop: moto on 5677, cargo lambda watch on 9000
  forwarder-ops --endpoint-url http://127.0.0.1:5677 \\
      --lambda-endpoint-url http://127.0.0.1:9000 \\
      stream --table product-events --on-failure on-failure --idle-exit 5

  # In AWS, after an outage: the deployed function, the OnFailure queue
  forwarder-ops --function-name product-forwarder \\
      redrive --queue product-forwarder-OnFailureQueue-1A2B3C

Credentials and region come from the usual AWS variables and profiles
(AWS_PROFILE, AWS_REGION, AWS_ACCESS_KEY_ID, ...); AWS_ENDPOINT_URL and
AWS_ENDPOINT_URL_<SERVICE> work as in the AWS CLI.")]
struct Cli {
    #[command(flatten)]
    aws: aws::Args,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Stream(stream::Args),
    Redrive(redrive::Args),
    Backfill(backfill::Args),
    DeployMapping(deploy_mapping::Args),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    init_logging();
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `stream --mapping` refuses a flag given on the command line that
    // contradicts the deployed mapping: it needs to know which were.
    if let (Command::Stream(args), Some(sub)) =
        (&mut cli.command, matches.subcommand_matches("stream"))
    {
        args.given = sub
            .ids()
            .filter(|id| sub.value_source(id.as_str()) == Some(ValueSource::CommandLine))
            .map(ToString::to_string)
            .collect();
    }
    let clients = aws::Clients::new(&cli.aws).await;
    let result = match cli.command {
        Command::Stream(args) => stream::run(args, &clients).await,
        Command::Redrive(args) => redrive::run(args, &clients).await,
        Command::Backfill(args) => backfill::run(args, &clients).await,
        Command::DeployMapping(args) => deploy_mapping::run(args, &clients).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Human-readable lines on stderr; `RUST_LOG` picks the level (INFO).
fn init_logging() {
    use lambda_runtime::tracing::subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn"));
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
