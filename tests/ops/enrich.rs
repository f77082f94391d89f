//! The forwarder as a library: the example's enricher
//! (`examples/enriched/read_model.rs`) over a read-model table in moto's
//! DynamoDB, with the real broker.

#[path = "../../examples/enriched/read_model.rs"]
mod read_model;

use std::{sync::atomic::Ordering, time::Duration};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use event_forwarder::Forwarder;
use lapin::types::FieldTable;
use serde_json::Value;
use testkit::{TestBroker, body, config, event, header_str, local, reported, unique};

const TEN_SECONDS: Duration = Duration::from_secs(10);

/// A read model keyed by `productId`, holding the categories of `products`.
async fn read_model(products: &[(&str, &str)]) -> (aws_sdk_dynamodb::Client, String) {
    local::moto();
    let client = aws_sdk_dynamodb::Client::new(&local::sdk_config().await);
    let table = unique("categories").replace('.', "-");
    client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("productId")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("productId")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    for (id, category) in products {
        client
            .put_item()
            .table_name(&table)
            .item("productId", AttributeValue::S(id.to_string()))
            .item("category", AttributeValue::S(category.to_string()))
            .send()
            .await
            .unwrap();
    }
    (client, table)
}

#[tokio::test]
async fn product_events_get_their_category_from_the_read_model_once_per_invocation() {
    let (client, table) = read_model(&[("prod-00042", "footwear")]).await;
    let exchange = unique("enriched");
    let broker = TestBroker::connect().await;
    let categories = read_model::Categories::new(client.clone(), table.clone());
    let forwarder = Forwarder::start_with(config(&exchange, &[]), categories)
        .await
        .expect("cold start");
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;

    let (response, report) = forwarder
        .handle(&event("insert-batch.json"), TEN_SECONDS)
        .await
        .unwrap();

    assert!(reported(&response).is_empty(), "{report:?}");
    let got = broker.take(&queue, 5, TEN_SECONDS).await;
    let bodies: Vec<Value> = got.iter().map(body).collect();
    let category = |b: &Value| b["payload"].get("category").cloned();
    // ProductCreated, ProductPriceChanged (prod-00042), then Order and User.
    assert_eq!(category(&bodies[0]).unwrap(), "footwear");
    assert_eq!(category(&bodies[1]).unwrap(), "footwear");
    assert!(bodies[2..].iter().all(|b| category(b).is_none()));
    // What the payload had keeps its exact text.
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains(r#""amount":119.99"#), "{text}");
    // Two events of one product, one lookup; a new invocation looks again.
    let lookups = || forwarder_lookups(&forwarder);
    assert_eq!(lookups(), 1);
    forwarder
        .handle(&event("insert-batch.json"), TEN_SECONDS)
        .await
        .unwrap();
    assert_eq!(lookups(), 2);
    broker.drain(&queue).await;

    // A product the read model does not know yet: published, and marked.
    forwarder
        .handle(&event("poison-batch.json"), TEN_SECONDS)
        .await
        .unwrap();
    let unknown = broker.take(&queue, 2, TEN_SECONDS).await;
    assert_eq!(unknown.len(), 2);
    assert!(unknown.iter().all(|d| category(&body(d)).is_none()));
    assert_eq!(
        header_str(&unknown[0], "readModel").as_deref(),
        Some("missing")
    );

    // The read model is gone: the first product event fails, by the
    // checkpoint rule, and is retried.
    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let batch = event("insert-batch.json");
    let (response, report) = forwarder.handle(&batch, TEN_SECONDS).await.unwrap();
    assert_eq!(
        reported(&response),
        [batch.record(0).unwrap().change.sequence_number.unwrap()]
    );
    assert_eq!(report.failure.unwrap().error.kind(), "enrichment");
    broker.cleanup(&exchange, &[&queue]).await;
}

fn forwarder_lookups(
    forwarder: &Forwarder<event_forwarder::engine::AmqpBroker, read_model::Categories>,
) -> usize {
    forwarder.enricher().lookups.load(Ordering::Relaxed)
}
