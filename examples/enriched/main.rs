//! A team's own function: the forwarder with an enricher that adds each
//! product's category from a read-model table (`READ_MODEL_TABLE`) to its
//! product events. The whole `main.rs` a team writes, besides the
//! enricher (`read_model.rs`).

mod read_model;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let table = std::env::var("READ_MODEL_TABLE").map_err(|_| "READ_MODEL_TABLE is required")?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let categories = read_model::Categories::new(aws_sdk_dynamodb::Client::new(&aws), table);
    event_forwarder::run_with(categories).await
}
