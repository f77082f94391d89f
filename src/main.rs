//! The Lambda binary: the shipped function, wiring only (see
//! [`event_forwarder::run`]).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    event_forwarder::run().await
}
