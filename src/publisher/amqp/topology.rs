//! The exchanges and queues of CONTRACT §5, their arguments, and what a
//! declaration the broker refuses means: at cold start a topology that
//! differs from the broker's (fatal, with the way out); for a template's
//! exchange a refusal of that event's exchange or of its `.unrouted`
//! exchange, queue or binding (the record is dead-lettered), but for a
//! queue that exists with other arguments (the operator's fix).

use lapin::{
    Channel, ErrorKind, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

use crate::config::QueueType;
use crate::publisher::PublishError;

/// The exchanges and queues the forwarder declares (CONTRACT §5).
#[derive(Debug, Clone)]
pub struct Topology {
    /// `EXCHANGE` when it is one exchange, declared with every channel; the
    /// exchanges of a template are declared when first published to.
    pub exchange: Option<String>,
    /// Declared with every channel.
    pub dead_letter: String,
    pub queue_type: QueueType,
    /// `MAX_EXCHANGES`: how many exchanges of a template a channel remembers
    /// as declared; one used beyond them is declared again.
    pub max_exchanges: usize,
}

/// `x-delivery-limit` of the quorum queues the forwarder declares. They
/// keep what would otherwise be lost, so no number of redeliveries (a
/// consumer that keeps failing, an operator peeking with get-and-requeue)
/// may drop a message: RabbitMQ 4 drops one after 20 by default. `-1` is
/// "unlimited" on 4.x but dropped a message at its first requeue on 3.10,
/// and the value must be the same on every version (an upgraded broker keeps
/// the declared arguments, and a different one would clash), so it is the
/// largest signed 32-bit number: decades of requeues at a thousand a second.
pub const DELIVERY_LIMIT: i32 = i32::MAX;

const DURABLE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: false,
    durable: true,
    auto_delete: false,
    internal: false,
    nowait: false,
};

/// Declares CONTRACT §5 for a channel: the dead-letter exchange and queue,
/// and the exchange's topology when `EXCHANGE` is one exchange. A
/// declaration that clashes with what exists closes the channel; the error
/// names the object and the way out.
pub(super) async fn declare(channel: &Channel, topology: &Topology) -> Result<(), PublishError> {
    fanout_with_queue(channel, &topology.dead_letter, topology.queue_type, clash).await?;
    if let Some(exchange) = &topology.exchange {
        declare_exchange(channel, exchange, topology.queue_type, clash).await?;
    }
    Ok(())
}

/// Declares the topology of a template's exchange, on its first use on a
/// channel: [`PublishError::Refused`] when the broker refuses the exchange
/// or its `.unrouted` exchange, queue or binding (permissions, a queue
/// limit, an exchange with other settings), which dead-letters the event:
/// the refusal is the record's, as its type is (CONTRACT §6.9).
pub(super) async fn declare_event_exchange(
    channel: &Channel,
    exchange: &str,
    queue_type: QueueType,
) -> Result<(), PublishError> {
    declare_exchange(channel, exchange, queue_type, refusal).await
}

/// How a failed declaration becomes a [`PublishError`]: [`clash`] at cold
/// start, [`refusal`] for a per-event exchange.
type OnError = fn(&str, &str, lapin::Error) -> PublishError;

/// One exchange's topology: the durable topic exchange with its alternate
/// exchange `<exchange>.unrouted`, a fanout to the queue of that name.
async fn declare_exchange(
    channel: &Channel,
    exchange: &str,
    queue_type: QueueType,
    on_error: OnError,
) -> Result<(), PublishError> {
    // The alternate exchange, its queue and their binding follow the same
    // rule as the exchange: a per-event refusal is the record's (its type
    // is new to a user limited to the forwarder's names, or would pass a
    // queue limit), but for a queue with other arguments (see `refusal`).
    let unrouted = format!("{exchange}.unrouted");
    fanout_with_queue(channel, &unrouted, queue_type, on_error).await?;
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(unrouted.as_str().into()),
    );
    channel
        .exchange_declare(exchange.into(), ExchangeKind::Topic, DURABLE, args)
        .await
        .map_err(|e| on_error("exchange", exchange, e))
}

/// A durable fanout exchange bound to the durable queue of the same name.
async fn fanout_with_queue(
    channel: &Channel,
    name: &str,
    queue_type: QueueType,
    on_error: OnError,
) -> Result<(), PublishError> {
    let queue_args = queue_arguments(queue_type);
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            DURABLE,
            FieldTable::default(),
        )
        .await
        .map_err(|e| on_error("exchange", name, e))?;
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            queue_args,
        )
        .await
        .map_err(|e| on_error("queue", name, e))?;
    channel
        .queue_bind(
            name.into(),
            name.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| on_error("binding of queue", name, e))
}

/// The arguments of a queue the forwarder declares.
fn queue_arguments(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.as_str().into()),
    );
    // Classic queues have no delivery limit (and refuse the argument).
    if queue_type == QueueType::Quorum {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(DELIVERY_LIMIT),
        );
    }
    args
}

/// Only a refusal (406 PRECONDITION_FAILED, 403 ACCESS_REFUSED) says the
/// broker's topology or permissions differ; anything else is the
/// connection's trouble and is retried like one.
fn clash(what: &str, name: &str, e: lapin::Error) -> PublishError {
    let refused =
        matches!(e.kind(), ErrorKind::ProtocolError(p) if matches!(p.get_id(), 403 | 406));
    if refused {
        // A queue an earlier version declared without the delivery limit:
        // the way out is specific (operations.md, "Queues that keep what
        // they hold").
        let hint = if e.to_string().contains("x-delivery-limit") {
            "; it was declared without the delivery limit that keeps its messages \
             (forwarders before 2026-12 did): move its messages and delete it so that it is \
             declared again, or set DECLARE_TOPOLOGY=false and keep it as it is"
        } else {
            "; if it already exists with other settings, align them or set \
             DECLARE_TOPOLOGY=false"
        };
        PublishError::Topology(format!("{what} '{name}' could not be declared ({e}){hint}"))
    } else {
        PublishError::ChannelLost(format!("declaring {what} '{name}': {e}"))
    }
}

/// A per-event exchange's declaration that failed: a refusal (403, 406)
/// is for good and dead-letters the record, with the broker's reply; any
/// other error is the connection's. The one exception is a queue that
/// exists with other arguments than ours (an older forwarder declared
/// it): every later record of its type would need the same fix, which is
/// the operator's, so it is a topology clash that names the queue and the
/// way out (failure kind `topology`, the `TopologyErrors` metric).
fn refusal(what: &str, name: &str, e: lapin::Error) -> PublishError {
    match e.kind() {
        ErrorKind::ProtocolError(p)
            if what == "queue" && is_inequivalent(p.get_message().as_str()) =>
        {
            clash(what, name, e)
        }
        ErrorKind::ProtocolError(p) if matches!(p.get_id(), 403 | 406) => PublishError::Refused(
            format!("{what} '{name}': {} {}", p.get_id(), p.get_message()),
        ),
        _ => PublishError::ChannelLost(format!("declaring {what} '{name}': {e}")),
    }
}

/// The broker's reply to a declaration of an object that exists with
/// other arguments (`406 PRECONDITION_FAILED - inequivalent arg …`).
fn is_inequivalent(reply: &str) -> bool {
    reply.contains("inequivalent arg")
}

#[cfg(test)]
mod tests {
    use super::super::closes::{self, QUEUE_DECLARE};
    use super::*;

    /// The reason of the topology clash a broker's `channel.close` over
    /// declaring `kind` `name` is.
    fn clash_reason(kind: &str, name: &str, code: u16, text: &str) -> String {
        match clash(kind, name, channel_close(code, text)) {
            PublishError::Topology(reason) => reason,
            other => panic!("a {code} is a topology clash, not {other:?}"),
        }
    }

    /// The broker's `channel.close` in answer to a declaration.
    fn channel_close(code: u16, text: &str) -> lapin::Error {
        closes::channel_close(code, text, QUEUE_DECLARE)
    }

    fn arguments(queue_type: QueueType) -> Vec<(String, AMQPValue)> {
        queue_arguments(queue_type)
            .inner()
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn a_quorum_queue_is_declared_with_the_largest_delivery_limit() {
        assert_eq!(
            arguments(QueueType::Quorum),
            [
                (
                    "x-delivery-limit".to_owned(),
                    AMQPValue::LongInt(2_147_483_647)
                ),
                (
                    "x-queue-type".to_owned(),
                    AMQPValue::LongString("quorum".into())
                ),
            ]
        );
    }

    #[test]
    fn a_classic_queue_is_declared_without_a_delivery_limit() {
        assert_eq!(
            arguments(QueueType::Classic),
            [(
                "x-queue-type".to_owned(),
                AMQPValue::LongString("classic".into())
            )]
        );
    }

    #[test]
    fn a_queue_that_exists_with_other_arguments_stops_the_cold_start_with_the_way_out() {
        let reason = clash_reason(
            "queue",
            "orders.dead-letter",
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'orders.dead-letter' \
             in vhost '/': received the value 'quorum' of type 'longstr' but current is none",
        );
        assert!(
            reason.starts_with("queue 'orders.dead-letter' could not be declared ("),
            "{reason}"
        );
        assert!(
            reason.contains("inequivalent arg 'x-queue-type' for queue 'orders.dead-letter'"),
            "{reason}"
        );
        assert!(
            reason.ends_with(
                "; if it already exists with other settings, align them or set \
                 DECLARE_TOPOLOGY=false"
            ),
            "{reason}"
        );
    }

    #[test]
    fn a_queue_without_the_delivery_limit_gets_its_own_way_out() {
        let reason = clash_reason(
            "queue",
            "orders.unrouted",
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue \
             'orders.unrouted' in vhost '/': received the value '2147483647' of type 'signedint' \
             but current is none",
        );
        assert!(
            reason.contains("it was declared without the delivery limit that keeps its messages"),
            "{reason}"
        );
        assert!(
            reason.ends_with(
                "move its messages and delete it so that it is declared again, or set \
                 DECLARE_TOPOLOGY=false and keep it as it is"
            ),
            "{reason}"
        );
    }

    #[test]
    fn missing_permissions_at_cold_start_are_a_topology_clash_too() {
        let reason = clash_reason(
            "exchange",
            "orders",
            403,
            "ACCESS_REFUSED - access to exchange 'orders' in vhost '/' refused for user 'forwarder'",
        );
        assert!(
            reason.starts_with("exchange 'orders' could not be declared ("),
            "{reason}"
        );
        assert!(reason.contains("refused for user 'forwarder'"), "{reason}");
    }

    #[test]
    fn a_declaration_lost_with_its_channel_is_retried_not_fatal() {
        let e = channel_close(
            320,
            "CONNECTION_FORCED - Node was put into maintenance mode",
        );
        let PublishError::ChannelLost(reason) = clash("queue", "orders.dead-letter", e) else {
            panic!("a forced close is the connection's trouble");
        };
        assert!(
            reason.starts_with("declaring queue 'orders.dead-letter': "),
            "{reason}"
        );
        assert!(
            reason.contains("Node was put into maintenance mode"),
            "{reason}"
        );
    }

    #[test]
    fn an_event_exchange_the_broker_refuses_is_refused_with_its_reply() {
        let e = channel_close(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'orders.eu' in vhost '/': \
             received 'topic' but current is 'fanout'",
        );
        assert_eq!(
            refusal("exchange", "orders.eu", e),
            PublishError::Refused(
                "exchange 'orders.eu': 406 PRECONDITION_FAILED - inequivalent arg 'type' for \
                 exchange 'orders.eu' in vhost '/': received 'topic' but current is 'fanout'"
                    .into()
            )
        );
        let e = channel_close(
            403,
            "ACCESS_REFUSED - access to exchange 'orders.eu' in vhost '/' refused for user \
             'forwarder'",
        );
        assert_eq!(
            refusal("exchange", "orders.eu", e),
            PublishError::Refused(
                "exchange 'orders.eu': 403 ACCESS_REFUSED - access to exchange 'orders.eu' in \
                 vhost '/' refused for user 'forwarder'"
                    .into()
            )
        );
    }

    #[test]
    fn a_refused_unrouted_queue_of_an_event_exchange_is_the_records_refusal() {
        // Found by an outside review (#28): a user limited to the
        // forwarder's names, or a vhost at its queue limit, refused the
        // `.unrouted` queue of a new type, and the batch failed there for
        // good as a "topology" clash.
        for (code, text) in [
            (
                403,
                "ACCESS_REFUSED - configure access to queue 'invoice.events.unrouted' in vhost \
                 '/' refused for user 'forwarder'",
            ),
            (
                406,
                "PRECONDITION_FAILED - cannot declare queue 'order.events.unrouted': queue limit \
                 in vhost '/' (6) is reached",
            ),
        ] {
            let e = channel_close(code, text);
            assert_eq!(
                refusal("queue", "x.unrouted", e),
                PublishError::Refused(format!("queue 'x.unrouted': {code} {text}"))
            );
        }
    }

    #[test]
    fn an_unrouted_queue_with_other_arguments_is_the_operators_fix() {
        let e = channel_close(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'orders.unrouted' \
             in vhost '/': received the value 'quorum' of type 'longstr' but current is none",
        );
        let PublishError::Topology(reason) = refusal("queue", "orders.unrouted", e) else {
            panic!("a queue with other arguments holds its type's records until it is fixed");
        };
        assert!(
            reason.starts_with("queue 'orders.unrouted' could not be declared ("),
            "{reason}"
        );
        assert!(reason.contains("DECLARE_TOPOLOGY=false"), "{reason}");
        // An exchange with other arguments is the record's, as before.
        let e = channel_close(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'orders.unrouted' in \
             vhost '/': received 'fanout' but current is 'topic'",
        );
        assert!(matches!(
            refusal("exchange", "orders.unrouted", e),
            PublishError::Refused(_)
        ));
    }

    #[test]
    fn a_connection_reset_while_declaring_an_event_exchange_is_the_connections_trouble() {
        let e: lapin::Error = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "Connection reset by peer (os error 104)",
        )
        .into();
        assert_eq!(
            refusal("exchange", "orders.eu", e),
            PublishError::ChannelLost(
                "declaring exchange 'orders.eu': IO error: Connection reset by peer (os error 104)"
                    .into()
            )
        );
    }
}
