//! The Lambda binary: logging, configuration, the broker connection opened
//! during init, a clean close on SIGTERM, then the runtime loop.

use std::sync::Arc;

use event_forwarder::{Config, Forwarder, handler::StreamBatch, telemetry};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init_logging();
    // One clear log line and a failed init, rather than the error printed
    // a second time by the runtime.
    let config = Config::from_env().unwrap_or_else(|e| fail(format_args!("configuration: {e}")));
    let forwarder = match Forwarder::start(config).await {
        Ok(f) => Arc::new(f),
        Err(e) => fail(format_args!("cold start: {e}")),
    };

    let on_shutdown = Arc::clone(&forwarder);
    lambda_runtime::spawn_graceful_shutdown_handler(move || async move {
        on_shutdown.shutdown().await;
    })
    .await;

    lambda_runtime::run(service_fn(|event: LambdaEvent<StreamBatch>| {
        let forwarder = Arc::clone(&forwarder);
        async move { forwarder.handle_lambda(event).await }
    }))
    .await
}

fn fail(message: std::fmt::Arguments<'_>) -> ! {
    tracing::error!("{message}");
    std::process::exit(1)
}
