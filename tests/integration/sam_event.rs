//! The event `sam local generate-event dynamodb update` prints (AWS's own
//! sample, saved as `events/sam-dynamodb-update.json`), forwarded to a real
//! RabbitMQ: the function must take events it did not write itself.
//!
//! The sample's items are plain key/value items (`Id`, `Message`) of a table
//! `ExampleTableWithStream`: a change feed, not an event store.

use std::time::Duration;

use event_forwarder::Forwarder;
use lapin::types::FieldTable;
use serde_json::json;
use testkit::*;

const SAMPLE: &str = "sam-dynamodb-update.json";
const TEN_SECONDS: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_sam_sample_becomes_created_updated_deleted_events_with_the_change_mapping() {
    let exchange = unique("sam-change");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(&exchange, &[("MAPPING", "change")]))
        .await
        .expect("cold start");
    let queue = broker
        .bind_queue(
            &exchange,
            "example.table.with.stream.#",
            FieldTable::default(),
        )
        .await;
    let event = event(SAMPLE);

    let (response, report) = forwarder.handle(&event, TEN_SECONDS).await.unwrap();

    assert!(reported(&response).is_empty(), "{:?}", reported(&response));
    assert_eq!(
        (report.published, report.skipped, report.dead_lettered),
        (3, 0, 0)
    );
    let got = broker.take(&queue, 3, Duration::from_secs(5)).await;
    let keys: Vec<String> = got.iter().map(|d| d.routing_key.to_string()).collect();
    assert_eq!(
        keys,
        [
            "example.table.with.stream.created.v1",
            "example.table.with.stream.updated.v1",
            "example.table.with.stream.deleted.v1",
        ]
    );

    // The entity and source come from the table in the stream ARN; the key
    // `Id` (a number) is the partition key; images become plain JSON.
    let created = body(&got[0]);
    assert_eq!(created["messageType"], "ExampleTableWithStreamCreated");
    assert_eq!(created["source"], "ExampleTableWithStream");
    assert_eq!(created["aggregateType"], "ExampleTableWithStream");
    assert_eq!(created["partitionKey"], "101");
    assert_eq!(created["timestamp"], "2015-04-09T00:00:00.000Z");
    assert_eq!(
        created["payload"],
        json!({"Id": 101, "Message": "New item!"})
    );
    assert_eq!(
        body(&got[1])["payload"],
        json!({"Id": 101, "Message": "This item has changed"})
    );
    // A removal carries the item as it was (OldImage).
    assert_eq!(
        body(&got[2])["payload"],
        json!({"Id": 101, "Message": "This item has changed"})
    );

    // One message id per stream record, the same one on every retry.
    let ids: Vec<String> = got
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    let (again, _) = forwarder.handle(&event, TEN_SECONDS).await.unwrap();
    assert!(reported(&again).is_empty());
    let redelivered: Vec<String> = broker
        .take(&queue, 3, Duration::from_secs(5))
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(redelivered, ids);
    assert!(
        broker
            .drain(&format!("{exchange}.dead-letter"))
            .await
            .is_empty()
    );
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn the_sam_sample_is_handled_by_the_default_event_store_mapping() {
    let exchange = unique("sam-store");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(&exchange, &[]))
        .await
        .expect("cold start");
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;
    let event = event(SAMPLE);

    let (response, report) = forwarder.handle(&event, TEN_SECONDS).await.unwrap();

    // Every record is handled, so the stream moves on: the INSERT is not a
    // domain event (no aggregateId, version, eventType) and is dead-lettered
    // with the reason; MODIFY and REMOVE are not events in an event store.
    assert!(reported(&response).is_empty(), "{:?}", reported(&response));
    assert_eq!(
        (report.published, report.skipped, report.dead_lettered),
        (0, 2, 1)
    );
    assert!(broker.drain(&queue).await.is_empty());
    assert!(
        broker
            .drain(&format!("{exchange}.unrouted"))
            .await
            .is_empty()
    );
    let dead = broker
        .take(
            &format!("{exchange}.dead-letter"),
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        header_str(d, "x-error").as_deref(),
        Some("missing required attribute `aggregateId`")
    );
    assert_eq!(
        header_str(d, "x-sequence-number").as_deref(),
        Some("4421584500000000017450439091")
    );
    assert_eq!(
        header_str(d, "x-event-id").as_deref(),
        Some("c4ca4238a0b923820dcc509a6f75849b")
    );
    assert_eq!(
        header_str(d, "x-event-source-arn").as_deref(),
        Some(
            "arn:aws:dynamodb:us-east-1:123456789012:table/ExampleTableWithStream/stream/2015-06-27T00:48:05.899"
        )
    );
    let b = body(d);
    assert_eq!(b["eventName"], "INSERT");
    assert_eq!(
        b["dynamodb"]["NewImage"],
        json!({"Id": {"N": "101"}, "Message": {"S": "New item!"}})
    );
    broker.cleanup(&exchange, &[&queue]).await;
}
