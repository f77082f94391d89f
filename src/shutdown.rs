//! A clean close when Lambda shuts the environment down.
//!
//! Lambda sends the runtime SIGTERM (and waits up to 500 ms) only when an
//! extension is registered, so the function registers an internal one that
//! subscribes to no events. Some emulators have no Extensions API: that is
//! a warning, never a failed cold start, and SIGTERM is still handled.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// The internal extension's name; unique within the function.
const EXTENSION_NAME: &str = "event-forwarder-shutdown";

/// Registers the shutdown extension and runs `on_shutdown` on SIGTERM or
/// SIGINT, then exits. Call it before the runtime loop starts (extensions
/// register during init).
pub async fn on_sigterm<F, Fut>(on_shutdown: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match lambda_extension::Extension::new()
        .with_events(&[])
        .with_extension_name(EXTENSION_NAME)
        .register()
        .await
    {
        // It receives no events: its `next` call waits until the end.
        Ok(extension) => {
            tokio::spawn(async move {
                let _ = extension.run().await;
            });
        }
        Err(e) => tracing::warn!(
            error = %e,
            "the shutdown extension could not be registered (no Extensions API?); \
             SIGTERM is still handled but Lambda may not send it"
        ),
    }
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "no SIGTERM handler: the connection will not be closed cleanly");
            return;
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        on_shutdown().await;
        std::process::exit(0);
    });
}
