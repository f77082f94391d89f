//! The forwarder against a real RabbitMQ, through the public API: what
//! arrives in the queues, with which properties, and what the batch
//! response says.

use std::time::{Duration, Instant};

use event_forwarder::Forwarder;
use lapin::{
    ExchangeKind,
    options::{BasicGetOptions, BasicRejectOptions, ExchangeDeleteOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};
use testkit::*;

use crate::support::stream::StreamRecord;

const TEN_SECONDS: Duration = Duration::from_secs(10);

#[tokio::test]
async fn inserts_arrive_in_order_with_the_contract_body_properties_and_headers() {
    let exchange = unique("ordered");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(&exchange, &[("EVENT_SOURCE", "ProductService")]))
        .await
        .expect("cold start");
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;
    let event = event("insert-batch.json");

    let (response, report) = forwarder.handle(&event, TEN_SECONDS).await.unwrap();

    assert!(reported(&response).is_empty());
    assert_eq!((report.published, report.skipped), (5, 1));
    let got = broker.take(&queue, 6, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 5, "the MODIFY record is skipped");
    let types: Vec<Value> = got.iter().map(|d| body(d)["messageType"].clone()).collect();
    assert_eq!(
        types,
        [
            "ProductCreated",
            "ProductPriceChanged",
            "OrderPlaced",
            "UserProfileUpdated",
            "OrderShippedEvent"
        ]
    );
    let keys: Vec<String> = got.iter().map(|d| d.routing_key.to_string()).collect();
    assert_eq!(
        keys,
        [
            "product.created.v1",
            "product.price.changed.v1",
            "order.placed.v1",
            "user.profile.updated.v1",
            "order.shipped.v1"
        ]
    );

    let first = &got[0];
    let b = body(first);
    assert_eq!(
        b,
        json!({
            "messageId": b["messageId"],
            "messageType": "ProductCreated",
            "messageVersion": "1.0",
            "envelopeVersion": "1.0",
            "timestamp": "2026-11-22T12:00:00.123Z",
            "source": "ProductService",
            "correlationId": "corr-7f3a9c",
            "causationId": "cmd-7f3a9c",
            "partitionKey": "prod-00042",
            "aggregateType": "Product",
            "aggregateVersion": 1,
            "sequenceNumber": "4100000000012345678901",
            "payload": {
                "name": "Trail running shoe",
                "price": {"amount": 119.99, "currency": "EUR"},
                "sizes": [41, 42, 43.5],
                "sku": "SKU-00042",
                "tags": ["outdoor", "running"]
            }
        })
    );
    let text = String::from_utf8_lossy(&first.data);
    assert!(text.contains(r#""amount":119.99"#), "{text}");
    let p = &first.properties;
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        p.message_id().as_ref().map(|s| s.to_string()),
        b["messageId"].as_str().map(str::to_string)
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.as_str()),
        Some("corr-7f3a9c")
    );
    assert_eq!(
        p.app_id().as_ref().map(|s| s.as_str()),
        Some("ProductService")
    );
    assert_eq!(
        p.kind().as_ref().map(|s| s.as_str()),
        Some("ProductCreated")
    );
    assert_eq!(*p.timestamp(), Some(1_795_348_800));
    assert_eq!(
        header_str(first, "partitionKey").as_deref(),
        Some("prod-00042")
    );
    assert_eq!(header_str(first, "messageVersion").as_deref(), Some("1.0"));
    assert_eq!(header_int(first, "aggregateVersion"), Some(1));
    assert_eq!(
        header_str(first, "sequenceNumber").as_deref(),
        Some("4100000000012345678901")
    );

    // The 38-digit number survives the trip to the consumer.
    assert!(
        String::from_utf8_lossy(&got[3].data)
            .contains(r#""loyaltyPoints":12345678901234567890123456789012345678"#)
    );
    // A record without correlationId has no correlation_id property.
    assert_eq!(*got[3].properties.correlation_id(), None);

    // Forwarding the same batch again gives the same ids: consumers can
    // deduplicate a retry.
    forwarder.handle(&event, TEN_SECONDS).await.unwrap();
    let again = broker.take(&queue, 5, Duration::from_secs(5)).await;
    let ids = |ds: &[lapin::message::Delivery]| -> Vec<Value> {
        ds.iter().map(|d| body(d)["messageId"].clone()).collect()
    };
    assert_eq!(ids(&again), ids(&got));
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn a_poison_record_lands_in_dead_letter_with_its_reason_and_the_batch_goes_on() {
    let exchange = unique("poison");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(&exchange, &[])).await.unwrap();
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;
    let event = event("poison-batch.json");

    let (response, report) = forwarder.handle(&event, TEN_SECONDS).await.unwrap();

    assert!(reported(&response).is_empty());
    assert_eq!((report.published, report.dead_lettered), (2, 1));
    let good = broker.take(&queue, 2, Duration::from_secs(5)).await;
    let types: Vec<Value> = good
        .iter()
        .map(|d| body(d)["messageType"].clone())
        .collect();
    assert_eq!(types, ["ProductCreated", "ProductDiscontinued"]);

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
        Some("missing required attribute `eventType`")
    );
    let record = &event.record(1).unwrap();
    assert_eq!(
        header_str(d, "x-sequence-number"),
        record.change.sequence_number.clone()
    );
    assert_eq!(
        header_str(d, "x-event-id").as_deref(),
        Some(record.event_id.as_str())
    );
    assert_eq!(
        header_str(d, "x-event-source-arn"),
        record.event_source_arn.clone()
    );
    // The body is the original stream record.
    let original: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/events/poison-batch.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    // The body is the record exactly as the event source mapping sent it.
    assert_eq!(body(d), original["Records"][1]);
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn an_event_nobody_subscribed_to_is_kept_in_unrouted() {
    let exchange = unique("unrouted");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(&exchange, &[])).await.unwrap();
    // Only product events have a subscriber.
    let queue = broker
        .bind_queue(&exchange, "product.#", FieldTable::default())
        .await;

    let (response, _) = forwarder
        .handle(&event("insert-batch.json"), TEN_SECONDS)
        .await
        .unwrap();

    assert!(reported(&response).is_empty());
    let products = broker.drain(&queue).await;
    assert_eq!(products.len(), 2);
    let unrouted = broker
        .take(&format!("{exchange}.unrouted"), 3, Duration::from_secs(5))
        .await;
    let keys: Vec<String> = unrouted.iter().map(|d| d.routing_key.to_string()).collect();
    assert_eq!(
        keys,
        [
            "order.placed.v1",
            "user.profile.updated.v1",
            "order.shipped.v1"
        ]
    );
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn a_broker_nack_reports_exactly_the_first_nacked_record() {
    let exchange = unique("nack");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(&exchange, &[])).await.unwrap();
    let args = reject_publish_after(2);
    let queue = broker.bind_queue(&exchange, "#", args).await;
    let event = event("insert-batch.json");

    let (response, report) = forwarder.handle(&event, TEN_SECONDS).await.unwrap();

    // Records 0 and 1 fit; record 2 is a skipped MODIFY; record 3 is nacked.
    assert_eq!(
        reported(&response),
        [event
            .record(3)
            .unwrap()
            .change
            .sequence_number
            .clone()
            .unwrap()]
    );
    assert_eq!(report.failure.unwrap().error.kind(), "nack");
    assert_eq!((report.published, report.skipped, report.failed), (2, 1, 3));
    assert_eq!(broker.drain(&queue).await.len(), 2);
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn a_connection_closed_between_invocations_is_reopened() {
    let exchange = unique("reopen");
    let function = unique("fn");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(
        &exchange,
        &[("AWS_LAMBDA_FUNCTION_NAME", function.as_str())],
    ))
    .await
    .unwrap();
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;
    let event = event("insert-batch.json");
    let (response, _) = forwarder.handle(&event, TEN_SECONDS).await.unwrap();
    assert!(reported(&response).is_empty());

    // The connection is named after the function; the broker closes it.
    let name = format!("event-forwarder:{function}");
    let pids = connections_named(&name);
    assert_eq!(pids.len(), 1, "one connection named {name}");
    rabbitmqctl(&[
        "close_connection",
        &pids[0],
        "test: closed between invocations",
    ]);
    let gone = Instant::now() + Duration::from_secs(5);
    while !connections_named(&name).is_empty() && Instant::now() < gone {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (response, report) = forwarder.handle(&event, TEN_SECONDS).await.unwrap();

    assert!(reported(&response).is_empty(), "{report:?}");
    assert_eq!(report.published, 5);
    assert_eq!(report.reconnects, 1);
    assert_eq!(
        broker.take(&queue, 10, Duration::from_secs(5)).await.len(),
        10
    );
    assert_eq!(connections_named(&name).len(), 1);
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn a_deleted_exchange_is_redeclared_on_a_new_channel() {
    let exchange = unique("deleted");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(&exchange, &[])).await.unwrap();
    broker
        .channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();

    // The first publish closes the channel (404); the forwarder reopens it,
    // declares the topology again and goes on.
    let (response, report) = forwarder
        .handle(&event("insert-batch.json"), TEN_SECONDS)
        .await
        .unwrap();

    assert!(reported(&response).is_empty(), "{report:?}");
    assert_eq!(report.published, 5);
    assert_eq!(report.reconnects, 1);
    let kept = broker
        .take(&format!("{exchange}.unrouted"), 5, Duration::from_secs(5))
        .await;
    assert_eq!(kept.len(), 5);
    broker.cleanup(&exchange, &[]).await;
}

#[tokio::test]
async fn an_unreachable_broker_reports_the_first_record_within_the_deadline() {
    // A closed port refuses at once; a listener that never answers the AMQP
    // handshake is bounded by CONNECT_TIMEOUT_MS.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let event = event("insert-batch.json");
    let first = event
        .record(0)
        .unwrap()
        .change
        .sequence_number
        .clone()
        .unwrap();
    for port in [closed_port, silent_port] {
        let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let mut c = config("unreachable.events", &[("CONNECT_TIMEOUT_MS", "500")]);
        c.broker = event_forwarder::engine::BrokerAddress::Uri(
            event_forwarder::engine::AmqpUri::parse(&uri).unwrap(),
        );
        let started = Instant::now();
        let forwarder = Forwarder::start(c)
            .await
            .expect("a down broker does not fail init");
        assert!(started.elapsed() < Duration::from_secs(2));

        let started = Instant::now();
        let (response, report) = forwarder
            .handle(&event, Duration::from_secs(3))
            .await
            .unwrap();

        assert!(
            started.elapsed() < Duration::from_secs(3),
            "port {port}: answered in time"
        );
        assert_eq!(reported(&response), vec![first.clone()], "port {port}");
        assert_eq!(report.failure.unwrap().error.kind(), "unreachable");
        assert_eq!(report.failed, 6);
    }
}

#[tokio::test]
async fn a_clashing_exchange_fails_the_cold_start_and_names_it() {
    let exchange = unique("clash");
    let broker = TestBroker::connect().await;
    broker
        .declare_exchange(&exchange, ExchangeKind::Topic, FieldTable::default())
        .await;

    let err = match Forwarder::start(config(&exchange, &[])).await {
        Ok(_) => panic!("the clash must fail the cold start"),
        Err(e) => e.to_string(),
    };

    assert!(err.contains(&format!("exchange '{exchange}'")), "{err}");
    assert!(err.contains("DECLARE_TOPOLOGY=false"), "{err}");

    // With DECLARE_TOPOLOGY=false the existing exchange is used as it is.
    let forwarder = Forwarder::start(config(&exchange, &[("DECLARE_TOPOLOGY", "false")]))
        .await
        .unwrap();
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;
    let (response, _) = forwarder
        .handle(&event("insert-batch.json"), TEN_SECONDS)
        .await
        .unwrap();
    assert!(reported(&response).is_empty());
    assert_eq!(
        broker.take(&queue, 5, Duration::from_secs(5)).await.len(),
        5
    );
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn without_topology_declaration_nothing_is_declared() {
    let exchange = unique("nodeclare");
    let broker = TestBroker::connect().await;
    broker
        .declare_exchange(&exchange, ExchangeKind::Topic, FieldTable::default())
        .await;
    let forwarder = Forwarder::start(config(&exchange, &[("DECLARE_TOPOLOGY", "false")]))
        .await
        .unwrap();
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;

    let (response, _) = forwarder
        .handle(&event("insert-batch.json"), TEN_SECONDS)
        .await
        .unwrap();

    assert!(reported(&response).is_empty());
    assert!(
        !broker
            .exchange_exists(&format!("{exchange}.unrouted"))
            .await
    );
    assert!(
        !broker
            .exchange_exists(&format!("{exchange}.dead-letter"))
            .await
    );
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn a_record_nobody_can_route_without_an_alternate_exchange_is_reported() {
    // Without the forwarder's topology there is no alternate exchange: the
    // broker returns the mandatory message and the record is not confirmed.
    let exchange = unique("returned");
    let broker = TestBroker::connect().await;
    broker
        .declare_exchange(&exchange, ExchangeKind::Topic, FieldTable::default())
        .await;
    let forwarder = Forwarder::start(config(&exchange, &[("DECLARE_TOPOLOGY", "false")]))
        .await
        .unwrap();
    let event = event("insert-batch.json");

    let (response, report) = forwarder.handle(&event, TEN_SECONDS).await.unwrap();

    assert_eq!(
        reported(&response),
        [event
            .record(0)
            .unwrap()
            .change
            .sequence_number
            .clone()
            .unwrap()]
    );
    assert_eq!(report.failure.unwrap().error.kind(), "returned");
    broker.cleanup(&exchange, &[]).await;
}

#[tokio::test]
async fn the_change_mapping_publishes_created_updated_deleted_and_expired() {
    let exchange = unique("change");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(
        &exchange,
        &[("MAPPING", "change"), ("ENTITY_NAME", "Customer")],
    ))
    .await
    .unwrap();
    let queue = broker
        .bind_queue(&exchange, "customer.#", FieldTable::default())
        .await;

    let (response, report) = forwarder
        .handle(&event("change-batch.json"), TEN_SECONDS)
        .await
        .unwrap();

    assert!(reported(&response).is_empty());
    assert_eq!(report.published, 4);
    let got = broker.take(&queue, 4, Duration::from_secs(5)).await;
    let keys: Vec<String> = got.iter().map(|d| d.routing_key.to_string()).collect();
    assert_eq!(
        keys,
        [
            "customer.created.v1",
            "customer.updated.v1",
            "customer.deleted.v1",
            "customer.expired.v1"
        ]
    );
    assert_eq!(body(&got[1])["payload"]["tier"], "platinum");
    assert_eq!(
        header_str(&got[3], "partitionKey").as_deref(),
        Some("cust-999")
    );
    assert_eq!(header_int(&got[0], "aggregateVersion"), None);
    broker.cleanup(&exchange, &[&queue]).await;
}

/// The contract's default queue type (the other tests ask for classic):
/// the forwarder's own `.unrouted` and `.dead-letter` queues are quorum
/// queues, a second cold start declares them again without a clash, and
/// they take what they are for.
#[tokio::test]
async fn the_default_quorum_queues_are_declared_again_and_take_their_messages() {
    let exchange = unique("quorum");
    let broker = TestBroker::connect().await;
    let quorum = [("QUEUE_TYPE", "quorum")];
    let first = Forwarder::start(config(&exchange, &quorum)).await.unwrap();
    first.shutdown().await;
    let forwarder = Forwarder::start(config(&exchange, &quorum))
        .await
        .expect("the same quorum topology declared again");

    let listed = rabbitmqctl(&["-q", "list_queues", "name", "type"]);
    for queue in [
        format!("{exchange}.unrouted"),
        format!("{exchange}.dead-letter"),
    ] {
        let line = listed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(queue.as_str()))
            .unwrap_or_else(|| panic!("{queue} is not declared:\n{listed}"));
        assert_eq!(line.split_whitespace().nth(1), Some("quorum"), "{line}");
    }

    // Nothing is bound: the good records go to .unrouted, the poison one
    // to .dead-letter.
    let (response, report) = forwarder
        .handle(&event("poison-batch.json"), TEN_SECONDS)
        .await
        .unwrap();
    assert!(reported(&response).is_empty());
    assert_eq!((report.published, report.dead_lettered), (2, 1));
    let unrouted = broker
        .take(&format!("{exchange}.unrouted"), 2, Duration::from_secs(5))
        .await;
    assert_eq!(unrouted.len(), 2);
    let dead = broker
        .take(
            &format!("{exchange}.dead-letter"),
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(dead.len(), 1);
    forwarder.shutdown().await;
    broker.cleanup(&exchange, &[]).await;
}

/// Takes the one message of `queue` and hands it back (`basic.reject` with
/// requeue) `times` times, as an operator's "get messages" with requeue
/// or a consumer that keeps failing does. Panics at the get that finds the
/// queue empty.
async fn get_and_requeue(broker: &TestBroker, queue: &str, times: usize) {
    let channel = broker.channel().await;
    for get in 1..=times {
        // A quorum queue takes a requeued message back through its log: it
        // may be a moment before a get sees it again.
        let until = Instant::now() + Duration::from_secs(5);
        let message = loop {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .expect("basic.get");
            match got {
                Some(m) => break m,
                None if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                None => panic!("{queue}: the message was gone at get {get} of {times}"),
            }
        };
        channel
            .basic_reject(
                message.delivery.delivery_tag,
                BasicRejectOptions { requeue: true },
            )
            .await
            .expect("basic.reject");
    }
}

/// `.unrouted` and `.dead-letter` keep what they hold however often it is
/// redelivered (CONTRACT §5), on the broker at `uri`.
async fn the_forwarders_queues_keep_a_message_through_30_requeues_on(uri: &str) {
    let exchange = unique("keep");
    let broker = TestBroker::connect_to(uri).await;
    let forwarder = Forwarder::start(config_on(uri, &exchange, &[("QUEUE_TYPE", "quorum")]))
        .await
        .unwrap();
    // Nothing bound: the good records go to .unrouted, the poison one to
    // .dead-letter.
    let (response, report) = forwarder
        .handle(&event("poison-batch.json"), TEN_SECONDS)
        .await
        .unwrap();
    assert!(reported(&response).is_empty());
    assert_eq!((report.published, report.dead_lettered), (2, 1));
    let dead_letter = format!("{exchange}.dead-letter");
    let unrouted = format!("{exchange}.unrouted");
    broker.take(&unrouted, 1, Duration::from_secs(5)).await;

    get_and_requeue(&broker, &dead_letter, 30).await;
    get_and_requeue(&broker, &unrouted, 30).await;

    assert_eq!(broker.drain(&dead_letter).await.len(), 1);
    assert_eq!(broker.drain(&unrouted).await.len(), 1);
    forwarder.shutdown().await;
    broker.cleanup(&exchange, &[]).await;
}

/// RabbitMQ 4 drops a message from a quorum queue after 20 redeliveries
/// unless the queue says otherwise.
#[tokio::test]
async fn the_forwarders_queues_keep_a_message_through_30_requeues_on_rabbitmq_4() {
    the_forwarders_queues_keep_a_message_through_30_requeues_on(&amqp_uri()).await;
}

/// The same declaration on 3.x, where `x-delivery-limit: -1` (unlimited on
/// 4.x) dropped a message at its first requeue.
#[tokio::test]
async fn the_forwarders_queues_keep_a_message_through_30_requeues_on_rabbitmq_3() {
    the_forwarders_queues_keep_a_message_through_30_requeues_on(RABBITMQ3_URI).await;
}

/// A queue an earlier forwarder declared without the delivery limit fails
/// the cold start with its name and the way out, instead of dropping
/// messages silently.
#[tokio::test]
async fn a_queue_declared_without_the_delivery_limit_fails_the_cold_start_and_names_it() {
    let exchange = unique("old-queue");
    let broker = TestBroker::connect().await;
    let dead_letter = format!("{exchange}.dead-letter");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    broker
        .channel
        .queue_declare(
            dead_letter.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();

    let err = match Forwarder::start(config(&exchange, &[("QUEUE_TYPE", "quorum")])).await {
        Ok(_) => panic!("the old queue must fail the cold start"),
        Err(e) => e.to_string(),
    };

    assert!(err.contains(&format!("queue '{dead_letter}'")), "{err}");
    assert!(err.contains("x-delivery-limit"), "{err}");
    assert!(err.contains("DECLARE_TOPOLOGY=false"), "{err}");
    broker.cleanup(&exchange, &[]).await;
}

/// `n` records of distinct aggregates; from a random index on, every 7th is
/// `odd_one` (by `make`), the others `ProductCreated`. Returns the batch and
/// the index of the first odd record.
fn mixed_batch(
    rng: &mut fastrand::Rng,
    n: usize,
    odd_one: impl Fn(&StreamRecord) -> Value,
) -> (event_forwarder::StreamBatch, Vec<String>, usize) {
    let first = rng.usize(..n);
    let base = rng.u64(1..1_000_000_000) * 10_000;
    let records: Vec<StreamRecord> = (0..n)
        .map(|i| StreamRecord {
            seq: base + i as u64,
            aggregate: format!("prod-{base}-{i}"),
            version: 1,
        })
        .collect();
    let json: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if i >= first && (i - first) % 7 == 0 {
                odd_one(r)
            } else {
                r.to_json_as("ProductCreated")
            }
        })
        .collect();
    let batch = serde_json::from_value(json!({ "Records": json })).unwrap();
    let seqs = records.iter().map(|r| r.sequence_number()).collect();
    (batch, seqs, first)
}

#[tokio::test]
async fn a_returned_message_fails_exactly_its_own_record_whichever_confirm_carries_it() {
    // No alternate exchange: a record nobody is bound for is returned.
    // lapin hands a return to whichever confirm it completes next, so only
    // the return's own message id tells which record it was.
    let exchange = unique("returns");
    let broker = TestBroker::connect().await;
    broker
        .declare_exchange(&exchange, ExchangeKind::Topic, FieldTable::default())
        .await;
    let queue = broker
        .bind_queue(&exchange, "product.created.v1", FieldTable::default())
        .await;
    let forwarder = Forwarder::start(config(&exchange, &[("DECLARE_TOPOLOGY", "false")]))
        .await
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(20261202);

    for round in 0..60 {
        let (batch, seqs, first) = mixed_batch(&mut rng, 500, |r| r.to_json_as("ProductRenamed"));

        let (response, report) = forwarder.handle(&batch, TEN_SECONDS).await.unwrap();

        assert_eq!(
            reported(&response),
            [seqs[first].clone()],
            "round {round}: the first unroutable record is {first}, {report:?}"
        );
        assert_eq!(report.failure.unwrap().error.kind(), "returned");
        assert_eq!(report.published, first, "round {round}");
        // Everything before it was confirmed, so it is in the queue.
        let got = broker.drain(&queue).await;
        let ids: std::collections::HashSet<String> = got
            .iter()
            .map(|d| body(d)["partitionKey"].as_str().unwrap().to_owned())
            .collect();
        for i in 0..first {
            let key = batch.record(i).unwrap().change.new_image["aggregateId"].clone();
            let serde_dynamo::AttributeValue::S(key) = key else {
                panic!()
            };
            assert!(
                ids.contains(&key),
                "round {round}: record {i} confirmed but missing"
            );
        }
    }
    broker.cleanup(&exchange, &[&queue]).await;
}

#[tokio::test]
async fn a_returned_dead_letter_fails_exactly_its_own_record() {
    // The forwarder's topology, set up by hand (a forwarder that declares it
    // would bind the queue again on every new channel), but the dead-letter
    // exchange has lost its queue: dead letters are returned.
    let exchange = unique("returned-dl");
    let broker = TestBroker::connect().await;
    let unrouted = format!("{exchange}.unrouted");
    broker
        .declare_exchange(&unrouted, ExchangeKind::Fanout, FieldTable::default())
        .await;
    let kept = broker
        .bind_queue(&unrouted, "", FieldTable::default())
        .await;
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(unrouted.as_str().into()),
    );
    broker
        .declare_exchange(&exchange, ExchangeKind::Topic, args)
        .await;
    broker
        .declare_exchange(
            &format!("{exchange}.dead-letter"),
            ExchangeKind::Fanout,
            FieldTable::default(),
        )
        .await;
    let forwarder = Forwarder::start(config(&exchange, &[("DECLARE_TOPOLOGY", "false")]))
        .await
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(20261203);

    for round in 0..50 {
        let (batch, seqs, first) = mixed_batch(&mut rng, 500, |r| r.to_json_without_type());

        let (response, report) = forwarder.handle(&batch, TEN_SECONDS).await.unwrap();

        assert_eq!(
            reported(&response),
            [seqs[first].clone()],
            "round {round}: the first poison record is {first}, {report:?}"
        );
        assert_eq!(report.failure.unwrap().error.kind(), "returned");
        assert!(broker.drain(&kept).await.len() >= first, "round {round}");
    }
    broker.cleanup(&exchange, &[&kept]).await;
}

/// A `change` MODIFY of `cust-311` with `tier` and `seq`.
fn tier_update(tier: &str, seq: &str) -> Value {
    let mut record = serde_json::to_value(event("change-batch.json").record(1).unwrap()).unwrap();
    record["dynamodb"]["NewImage"]["tier"] = json!({ "S": tier });
    record["dynamodb"]["SequenceNumber"] = json!(seq);
    record["eventID"] = json!(format!("ev-{seq}"));
    record
}

#[tokio::test]
async fn a_consumer_tells_the_newer_update_from_the_message_alone_after_a_redelivery() {
    let exchange = unique("order-key");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(
        &exchange,
        &[("MAPPING", "change"), ("ENTITY_NAME", "Customer")],
    ))
    .await
    .unwrap();
    let inbox = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;
    // A second subscriber that is full: whatever it rejects is nacked, even
    // though the first one got the message.
    let args = reject_publish_after(0);
    let full = broker.bind_queue(&exchange, "#", args).await;
    // Sequence numbers grow in length: compared as text, the older would
    // look newer.
    let older = tier_update("gold", "900000000000000000001");
    let newer = tier_update("platinum", "1000000000000000000001");
    let batch = |r: &Value| -> event_forwarder::StreamBatch {
        serde_json::from_value(json!({ "Records": [r] })).unwrap()
    };

    let (response, _) = forwarder.handle(&batch(&older), TEN_SECONDS).await.unwrap();
    assert_eq!(reported(&response), ["900000000000000000001"]);
    broker
        .channel()
        .await
        .queue_delete(full.as_str().into(), Default::default())
        .await
        .unwrap();
    // The newer update is confirmed, then the older one is delivered again:
    // the consumer's queue holds older, newer, older.
    for r in [&newer, &older] {
        let (response, _) = forwarder.handle(&batch(r), TEN_SECONDS).await.unwrap();
        assert!(reported(&response).is_empty());
    }

    let out = consumer("latest_by_sequence.py", &[&amqp_uri(), &inbox]);
    let latest: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        latest["cust-311"]["sequenceNumber"],
        "1000000000000000000001"
    );
    assert_eq!(latest["cust-311"]["payload"]["tier"], "platinum");
    broker.cleanup(&exchange, &[&inbox]).await;
}

#[tokio::test]
async fn events_of_three_aggregate_types_land_on_three_exchanges_each_with_its_unrouted() {
    let prefix = unique("per-type");
    let template = format!("{prefix}.{{aggregateType}}.events");
    let dead_letter = format!("{prefix}.dead-letter");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(
        &template,
        &[("DEAD_LETTER_EXCHANGE", dead_letter.as_str())],
    ))
    .await
    .expect("cold start");
    let exchange = |t: &str| format!("{prefix}.{t}.events");
    let event = event("insert-batch.json");

    // Nobody is bound yet: each exchange, declared on first use, keeps its
    // events in its own .unrouted queue, in order.
    let (response, report) = forwarder.handle(&event, TEN_SECONDS).await.unwrap();
    assert!(reported(&response).is_empty(), "{report:?}");
    assert_eq!(report.published, 5);
    for (t, expected) in [
        ("product", vec!["ProductCreated", "ProductPriceChanged"]),
        ("order", vec!["OrderPlaced", "OrderShippedEvent"]),
        ("user", vec!["UserProfileUpdated"]),
    ] {
        let kept = broker
            .take(
                &format!("{}.unrouted", exchange(t)),
                3,
                Duration::from_secs(5),
            )
            .await;
        let types: Vec<Value> = kept
            .iter()
            .map(|d| body(d)["messageType"].clone())
            .collect();
        assert_eq!(types, expected, "{t}");
        assert!(
            kept.iter().all(|d| d.exchange.as_str() == exchange(t)),
            "{t}"
        );
    }

    // A consumer of product events binds to its exchange and gets them.
    let products = broker
        .bind_queue(&exchange("product"), "#", FieldTable::default())
        .await;
    forwarder.handle(&event, TEN_SECONDS).await.unwrap();
    let got = broker.take(&products, 3, Duration::from_secs(5)).await;
    let versions: Vec<Value> = got
        .iter()
        .map(|d| body(d)["aggregateVersion"].clone())
        .collect();
    assert_eq!(versions, [1, 2]);
    for t in ["product", "order", "user"] {
        broker.cleanup(&exchange(t), &[&products]).await;
    }
    broker.cleanup(&prefix, &[]).await;
}

/// A batch of `n` records of distinct aggregates, `odd` (by index) changed
/// by `make`; its sequence numbers.
fn batch_with(
    n: usize,
    make: impl Fn(usize, Value) -> Value,
) -> (event_forwarder::StreamBatch, Vec<String>) {
    let base = fastrand::u64(1..1_000_000_000) * 10_000;
    let records: Vec<StreamRecord> = (0..n)
        .map(|i| StreamRecord {
            seq: base + i as u64,
            aggregate: format!("prod-{base}-{i}"),
            version: 1,
        })
        .collect();
    let json: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| make(i, r.to_json_as("ProductCreated")))
        .collect();
    let batch = serde_json::from_value(json!({ "Records": json })).unwrap();
    (batch, records.iter().map(|r| r.sequence_number()).collect())
}

/// What one batch with a record the broker will never take leaves behind:
/// the response, the events that arrived (sequence numbers), the dead letters.
struct Refusal {
    reported: Vec<String>,
    arrived: Vec<String>,
    dead: Vec<lapin::message::Delivery>,
}

/// Forwards `batch` to a fresh exchange with `extra` settings and collects
/// what arrived.
async fn forward_refusal(batch: &event_forwarder::StreamBatch, extra: &[(&str, &str)]) -> Refusal {
    let exchange = unique("refusal");
    let broker = TestBroker::connect().await;
    let forwarder = Forwarder::start(config(&exchange, extra)).await.unwrap();
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;
    let (response, report) = forwarder.handle(batch, TEN_SECONDS).await.unwrap();
    let arrived = arrived_in(&broker, &queue).await;
    let dead = broker.drain(&format!("{exchange}.dead-letter")).await;
    assert!(report.failure.is_none(), "{report:?}");
    forwarder.shutdown().await;
    broker.cleanup(&exchange, &[&queue]).await;
    Refusal {
        reported: reported(&response),
        arrived,
        dead,
    }
}

/// The sequence numbers of what arrived in `queue`, in the order it came.
async fn arrived_in(broker: &TestBroker, queue: &str) -> Vec<String> {
    broker
        .drain(queue)
        .await
        .iter()
        .map(|d| body(d)["sequenceNumber"].as_str().unwrap().to_string())
        .collect()
}

/// Every good record of `seqs` (all but `bad`) arrived exactly once.
fn every_good_record_once(seqs: &[String], bad: usize, arrived: &[String]) {
    let mut want: Vec<String> = seqs.to_vec();
    want.remove(bad);
    assert_eq!(arrived, want);
}

/// Amazon MQ 4's 512 KiB: a 399,000-byte binary (within DynamoDB's 400 KB
/// item) is 532,000 characters of base64 in the envelope. It is
/// dead-lettered before it is sent, the batch goes on, and its dead letter
/// (the record is as large) is the bounded reference.
#[tokio::test]
async fn an_event_over_max_message_bytes_is_dead_lettered_and_the_batch_goes_on() {
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 399_000]);
    let (batch, seqs) = batch_with(5, |i, mut r| {
        if i == 2 {
            r["dynamodb"]["NewImage"]["payload"]["M"]["scan"] = json!({ "B": blob });
        }
        r
    });
    let got = forward_refusal(&batch, &[]).await;
    assert!(got.reported.is_empty(), "{:?}", got.reported);
    every_good_record_once(&seqs, 2, &got.arrived);
    assert_eq!(got.dead.len(), 1);
    let dead = &got.dead[0];
    assert!(dead.data.len() <= 524_288, "{}", dead.data.len());
    let reason = header_str(dead, "x-error").unwrap();
    assert!(
        reason.starts_with("the event is 53") && reason.contains("over the 524288 bytes"),
        "{reason}"
    );
    assert_eq!(header_str(dead, "x-sequence-number").unwrap(), seqs[2]);
    let reference = body(dead);
    assert_eq!(reference["truncated"], true);
    assert_eq!(reference["dynamodb"]["SequenceNumber"], seqs[2].as_str());
    assert!(reference["dynamodb"]["Keys"]["aggregateId"]["S"].is_string());
    assert!(header_int(dead, "x-original-size").unwrap() > 532_000);
}

/// A poison record (no eventType) that is small as an item and large as
/// DynamoDB JSON: its dead letter, the whole record, would be refused the
/// same way; the bounded reference goes instead.
#[tokio::test]
async fn a_poison_record_too_large_to_carry_is_dead_lettered_as_a_reference() {
    let numbers: Vec<Value> = (0..60_000).map(|i| json!({ "N": i.to_string() })).collect();
    let (batch, seqs) = batch_with(5, |i, mut r| {
        if i == 2 {
            r["dynamodb"]["NewImage"]
                .as_object_mut()
                .unwrap()
                .remove("eventType");
            r["dynamodb"]["NewImage"]["readings"] = json!({ "L": numbers });
        }
        r
    });
    let got = forward_refusal(&batch, &[]).await;
    assert!(got.reported.is_empty(), "{:?}", got.reported);
    every_good_record_once(&seqs, 2, &got.arrived);
    assert_eq!(got.dead.len(), 1);
    let dead = &got.dead[0];
    assert!(dead.data.len() <= 524_288, "{}", dead.data.len());
    assert_eq!(
        header_str(dead, "x-error").unwrap(),
        "missing required attribute `eventType`"
    );
    assert_eq!(body(dead)["truncated"], true);
    assert!(header_int(dead, "x-original-size").unwrap() > 524_288);
}

/// The broker's own limit below MAX_MESSAGE_BYTES: it closes the channel
/// over the message (406), and the record is dead-lettered with its reply.
#[tokio::test]
async fn a_message_over_the_brokers_own_lower_limit_is_dead_lettered_with_its_reply() {
    let (batch, seqs) = batch_with(5, |i, mut r| {
        if i == 2 {
            r["dynamodb"]["NewImage"]["payload"]["M"]["note"] = json!({ "S": "n".repeat(600_000) });
        }
        r
    });
    let got = forward_refusal(&batch, &[("MAX_MESSAGE_BYTES", "1048576")]).await;
    assert!(got.reported.is_empty(), "{:?}", got.reported);
    // What was in flight when the channel closed may arrive twice: the
    // first deliveries are every good record once, in order, and the
    // refused one never arrives.
    let mut first = Vec::new();
    for seq in &got.arrived {
        if !first.contains(seq) {
            first.push(seq.clone());
        }
    }
    every_good_record_once(&seqs, 2, &first);
    assert_eq!(got.dead.len(), 1);
    let dead = &got.dead[0];
    assert!(dead.data.len() <= 524_288, "{}", dead.data.len());
    let reason = header_str(dead, "x-error").unwrap();
    assert!(
        reason.contains("406 PRECONDITION_FAILED - message size")
            && reason.contains("larger than configured max size 524288"),
        "{reason}"
    );
}

/// With `EXCHANGE` a template, an aggregate type whose exchange a consumer
/// already declared as another type (406): that type's events are
/// dead-lettered with the broker's reply, the others go on.
#[tokio::test]
async fn an_exchange_the_broker_refuses_dead_letters_its_events_and_the_batch_goes_on() {
    let prefix = unique("refused-type");
    let template = format!("{prefix}.{{aggregateType}}.events");
    let dead_letter = format!("{prefix}.dead-letter");
    let broker = TestBroker::connect().await;
    let taken = format!("{prefix}.order.events");
    broker
        .declare_exchange(&taken, ExchangeKind::Fanout, FieldTable::default())
        .await;
    let product = format!("{prefix}.product.events");
    let forwarder = Forwarder::start(config(
        &template,
        &[("DEAD_LETTER_EXCHANGE", dead_letter.as_str())],
    ))
    .await
    .unwrap();
    // The product exchange exists once the first Product event is sent; a
    // queue bound before that sees everything after.
    let (warm, _) = batch_with(1, |_, mut r| {
        r["dynamodb"]["NewImage"]["aggregateType"] = json!({ "S": "Product" });
        r
    });
    forwarder.handle(&warm, TEN_SECONDS).await.unwrap();
    let queue = broker
        .bind_queue(&product, "#", FieldTable::default())
        .await;
    let types = ["Product", "Product", "Order", "Product", "Order", "Product"];
    let (batch, seqs) = batch_with(types.len(), |i, mut r| {
        r["dynamodb"]["NewImage"]["aggregateType"] = json!({ "S": types[i] });
        r
    });
    let (response, report) = forwarder.handle(&batch, TEN_SECONDS).await.unwrap();
    assert!(reported(&response).is_empty(), "{report:?}");
    assert_eq!((report.published, report.dead_lettered), (4, 2));
    let arrived = arrived_in(&broker, &queue).await;
    assert_eq!(
        arrived,
        [&seqs[0], &seqs[1], &seqs[3], &seqs[5]].map(String::clone)
    );
    let dead = broker.drain(&dead_letter).await;
    let dead_seqs: Vec<String> = dead
        .iter()
        .map(|d| header_str(d, "x-sequence-number").unwrap())
        .collect();
    assert_eq!(dead_seqs, [&seqs[2], &seqs[4]].map(String::clone));
    for d in &dead {
        let reason = header_str(d, "x-error").unwrap();
        assert!(
            reason.contains(&format!("exchange '{taken}': 406 PRECONDITION_FAILED")),
            "{reason}"
        );
    }
    forwarder.shutdown().await;
    let ch = broker.channel().await;
    for name in [&taken, &product, &format!("{product}.unrouted")] {
        let _ = ch
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    broker
        .cleanup(&dead_letter, &[&queue, &format!("{product}.unrouted")])
        .await;
}

/// `(name, value)` pairs as the function harness takes them.
fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A record's outcome does not depend on the execution environment that
/// handled it, nor on what that environment handled before: one that has
/// seen forty aggregate types and a fresh one publish the same new type
/// alike (with a counter of exchanges, the first dead-lettered it).
#[tokio::test]
async fn two_environments_with_different_histories_give_a_record_the_same_outcome() {
    let prefix = unique("history");
    let template = format!("{prefix}.{{aggregateType}}.events");
    let dead_letter = format!("{prefix}.dead-letter");
    let env = |name: &'static str| {
        [
            ("AMQP_URI", amqp_uri()),
            ("EXCHANGE", template.clone()),
            ("DEAD_LETTER_EXCHANGE", dead_letter.clone()),
            ("QUEUE_TYPE", "quorum".to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", name.to_string()),
        ]
    };
    let (seasoned_env, fresh_env) = (env("seasoned"), env("fresh"));
    let seasoned = Function::start(&borrowed(&seasoned_env)).await;
    let fresh = Function::start(&borrowed(&fresh_env)).await;
    let record = |seq: u64, aggregate_type: &str| {
        let mut r = StreamRecord {
            seq,
            aggregate: format!("{aggregate_type}-{seq}"),
            version: 1,
        }
        .to_json_as("Recorded");
        r["dynamodb"]["NewImage"]["aggregateType"] = json!({ "S": aggregate_type });
        r
    };
    // The seasoned environment's history: forty types, and a value that
    // names no exchange.
    let mut history: Vec<Value> = (0..40).map(|i| record(i, &format!("Kind{i}"))).collect();
    history.push(record(40, "not a type"));
    let (response, _) = seasoned
        .invoke(&json!({ "Records": history }), TEN_SECONDS)
        .await;
    assert_eq!(response["batchItemFailures"], json!([]));

    let broker = TestBroker::connect().await;
    let invoice = format!("{prefix}.invoice.events");
    // The exchange is made by the first event for it; the consumer's queue
    // is bound to it after the first invocation.
    let mut outcomes = Vec::new();
    for (f, seq) in [(&seasoned, 100), (&fresh, 101)] {
        let batch = json!({ "Records": [record(seq, "Invoice"), record(seq + 10, "not a type")] });
        let (response, _) = f.invoke(&batch, TEN_SECONDS).await;
        assert_eq!(response["batchItemFailures"], json!([]));
        let summary = f.summaries().last().cloned().unwrap();
        outcomes.push((
            summary["published"].clone(),
            summary["dead_lettered"].clone(),
        ));
    }
    assert_eq!(outcomes[0], outcomes[1], "the same outcome in both");
    assert_eq!(outcomes[0], (json!(1), json!(1)));
    assert!(broker.exchange_exists(&invoice).await);
    let dead = broker.drain(&dead_letter).await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| header_str(d, "x-error").unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("{aggregateType} gives a value that is not a type name")),
        "{reasons:?}"
    );

    let ch = broker.channel().await;
    for kind in (0..40)
        .map(|i| format!("kind{i}"))
        .chain(["invoice".to_string()])
    {
        let exchange = format!("{prefix}.{kind}.events");
        broker.cleanup(&exchange, &[]).await;
        let _ = ch
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    broker.cleanup(&dead_letter, &[]).await;
}

/// An exchange of a template whose `.unrouted` queue an earlier forwarder
/// declared without the delivery limit: that is the topology's problem, not
/// the event's. The batch fails at the first such event, naming the queue
/// and the way out, instead of dead-lettering every event of the type.
#[tokio::test]
async fn an_old_unrouted_queue_of_a_templated_exchange_fails_the_batch_naming_it() {
    let prefix = unique("old-unrouted");
    let template = format!("{prefix}.{{aggregateType}}.events");
    let dead_letter = format!("{prefix}.dead-letter");
    let broker = TestBroker::connect().await;
    let old = format!("{prefix}.order.events.unrouted");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    broker
        .channel
        .queue_declare(
            old.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let forwarder = Forwarder::start(config(
        &template,
        &[
            ("DEAD_LETTER_EXCHANGE", dead_letter.as_str()),
            ("QUEUE_TYPE", "quorum"),
        ],
    ))
    .await
    .unwrap();
    let types = ["Product", "Order", "Product"];
    let (batch, seqs) = batch_with(types.len(), |i, mut r| {
        r["dynamodb"]["NewImage"]["aggregateType"] = json!({ "S": types[i] });
        r
    });
    let (response, report) = forwarder.handle(&batch, TEN_SECONDS).await.unwrap();
    assert_eq!(reported(&response), [seqs[1].clone()]);
    assert_eq!((report.published, report.dead_lettered), (1, 0));
    let failure = report.failure.unwrap().error;
    assert_eq!(failure.kind(), "topology");
    let text = failure.to_string();
    assert!(text.contains(&format!("queue '{old}'")), "{text}");
    assert!(text.contains("x-delivery-limit"), "{text}");
    assert!(broker.drain(&dead_letter).await.is_empty());
    forwarder.shutdown().await;
    for t in ["product", "order"] {
        broker.cleanup(&format!("{prefix}.{t}.events"), &[]).await;
    }
    broker.cleanup(&dead_letter, &[]).await;
}

/// An enricher whose lookup for the `nth` event it sees (from 0) takes
/// `wait`.
struct SlowFor {
    nth: usize,
    wait: Duration,
    seen: std::sync::atomic::AtomicUsize,
}

impl event_forwarder::Enricher for SlowFor {
    type Batch = ();

    async fn enrich(
        &self,
        _: &event_forwarder::enrich::Event<'_>,
        _: &mut (),
    ) -> Result<event_forwarder::Enrichment, event_forwarder::enrich::EnrichError> {
        let seen = self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if seen == self.nth {
            tokio::time::sleep(self.wait).await;
        }
        Ok(event_forwarder::Enrichment::keep())
    }
}

/// The publisher wakes its I/O thread once per several publishes; while an
/// enricher waits, the publishes queued before it must be written, not
/// held: their confirms are timed from when they were queued. Here the
/// lookup for record 10 takes twice `CONFIRM_TIMEOUT_MS`, so the ten
/// publishes before it would time out (the batch failing at record 0) had
/// they waited for it.
#[tokio::test]
async fn publishes_queued_before_an_enricher_waits_are_written_meanwhile() {
    let (batch, seqs) = batch_with(20, |_, r| r);
    let exchange = unique("enricher-waits");
    let broker = TestBroker::connect().await;
    let enricher = SlowFor {
        nth: 10,
        wait: Duration::from_millis(1_500),
        seen: Default::default(),
    };
    let forwarder = Forwarder::start_with(
        config(&exchange, &[("CONFIRM_TIMEOUT_MS", "750")]),
        enricher,
    )
    .await
    .expect("cold start");
    let queue = broker
        .bind_queue(&exchange, "#", FieldTable::default())
        .await;

    let (response, report) = forwarder.handle(&batch, TEN_SECONDS).await.unwrap();

    assert!(reported(&response).is_empty(), "{report:?}");
    let arrived = arrived_in(&broker, &queue).await;
    assert_eq!(arrived, seqs, "every record once, in order");
    forwarder.shutdown().await;
    broker.cleanup(&exchange, &[&queue]).await;
}
