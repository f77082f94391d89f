//! The function's whole life, for `main.rs`: JSON logs, the configuration
//! and the broker connection during init, a clean close on SIGTERM, then the
//! Lambda runtime loop. [`run`] is the shipped function; [`run_with`] the
//! same with an [`Enricher`] of a team's own.

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, Runtime, layers::TracingLayer, service_fn};

use crate::{
    config::Config,
    enrich::{Enricher, NoEnricher},
    handler::{Forwarder, KeepBody},
    shutdown, telemetry,
};

/// Runs the shipped function (no enricher) until the runtime ends.
pub async fn run() -> Result<(), lambda_runtime::Error> {
    run_with(NoEnricher).await
}

/// Runs the function with `enricher` between the mapping and publishing.
/// A configuration or topology the function cannot use ends the init with
/// one clear log line (and exit status 1), as Lambda expects.
pub async fn run_with<E: Enricher>(enricher: E) -> Result<(), lambda_runtime::Error> {
    telemetry::init_logging();
    unmap_large_frees();
    // One clear log line and a failed init, rather than the error printed
    // a second time by the runtime.
    let config = Config::from_env().unwrap_or_else(|e| fail(format_args!("configuration: {e}")));
    let forwarder = match Forwarder::start_with(config, enricher).await {
        Ok(f) => Arc::new(f),
        Err(e) => fail(format_args!("cold start: {e}")),
    };

    let on_shutdown = Arc::clone(&forwarder);
    shutdown::on_sigterm(move || async move { on_shutdown.shutdown().await }).await;

    // The body is kept whole and the batch read from it in place, rather
    // than deserialized by the runtime into a copy of every record.
    let body = KeepBody::default();
    let handler_body = body.clone();
    // With AWS_LAMBDA_MAX_CONCURRENCY above 1 (Lambda Managed Instances)
    // the runtime serves that many invocations at once, each on a broker of
    // its own over the one connection; otherwise one at a time, as before.
    Runtime::new(service_fn(move |event: LambdaEvent<()>| {
        let forwarder = Arc::clone(&forwarder);
        let body = handler_body.take(&event.context.request_id);
        async move { forwarder.handle_lambda(body, &event.context).await }
    }))
    .layer(TracingLayer::new())
    .layer(body)
    .run_concurrent()
    .await
}

/// A batch's body arrives in chunks of up to 400 KB that the runtime copies
/// into one buffer. glibc's adaptive threshold soon serves such sizes from
/// the heap, where freed chunks stay resident: the function's peak then
/// holds the body twice. A fixed threshold (glibc's initial 128 KiB) keeps
/// them mapped, so each is returned to the system when freed. `make bench`:
/// peak RSS for 10,000 records 51.8 → 39.3 MB.
fn unmap_large_frees() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; glibc serializes it
    // with allocations.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) } != 1 {
        tracing::warn!("mallopt(M_MMAP_THRESHOLD) failed; peak memory may be higher");
    }
}

fn fail(message: std::fmt::Arguments<'_>) -> ! {
    tracing::error!("{message}");
    std::process::exit(1)
}
