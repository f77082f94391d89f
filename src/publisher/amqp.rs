//! The lapin adapter: one connection and one confirm-mode channel per
//! execution environment, the topology of CONTRACT §5, and publishes whose
//! confirms are checked one by one (a nack or a returned message fails).
//!
//! Every await on the network has a bound: a frozen or blackholed broker
//! must not outlive the invocation.

use std::{
    collections::HashMap,
    future::Future,
    task::Poll,
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    tcp::OwnedTLSConfig,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use tokio::sync::watch;

use super::connect::{self, ConnectError};
use super::trust::{SystemRoots, extra_roots_pem};
use super::{Broker, Confirm, Confirmation, HeaderValue, Message, PublishError, Reset, Returned};
use crate::config::{BrokerAddress, Config, QueueType, TrustedCa};
use crate::secrets::SecretError;
use crate::uri::AmqpUri;

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

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// The URI, or the secret that holds it.
    pub address: BrokerAddress,
    /// `AMQP_CA_FILE`: CA certificates trusted for `amqps://` besides the
    /// bundled and the system roots.
    pub ca: Option<TrustedCa>,
    /// The operating system's roots, trusted for `amqps://` besides the
    /// bundled ones; `None` when the URI is `amqp://`.
    pub system_roots: Option<SystemRoots>,
    /// Client-provided connection name, shown in the management UI.
    pub connection_name: String,
    pub connect_timeout: Duration,
    /// `None` when `DECLARE_TOPOLOGY=false`.
    pub topology: Option<Topology>,
}

impl AmqpSettings {
    /// The settings of `config`. Reads the system trust store (once per
    /// cold start, as this is called once) unless the URI is `amqp://`;
    /// a secret's URI is not known yet, so it may need them.
    pub fn from_config(config: &Config) -> Self {
        let tls = match &config.broker {
            BrokerAddress::Uri(uri) => uri.is_tls(),
            BrokerAddress::Secret(_) => true,
        };
        Self {
            address: config.broker.clone(),
            ca: config.ca.clone(),
            system_roots: tls.then(SystemRoots::load),
            connection_name: format!("event-forwarder:{}", config.function_name),
            connect_timeout: config.connect_timeout,
            topology: config.declare_topology.then(|| Topology {
                exchange: config.mapping.exchange.fixed().map(str::to_owned),
                dead_letter: config.mapping.dead_letter_exchange.clone(),
                queue_type: config.queue_type,
                max_exchanges: config.mapping.max_exchanges,
            }),
        }
    }
}

/// A [`Broker`] backed by a lapin connection that is reopened when it dies.
pub struct AmqpBroker {
    settings: AmqpSettings,
    /// The URI in use: `AMQP_URI`, or the secret's value once read.
    uri: Option<AmqpUri>,
    connection: Option<Connection>,
    channel: Option<Channel>,
    /// `true` while the broker blocks the connection (`connection.blocked`).
    blocked: watch::Receiver<bool>,
    /// When the last batch ended (or the connection was made).
    last_used: Instant,
    /// Exchanges whose topology this channel has declared.
    declared: Declared,
}

impl AmqpBroker {
    pub fn new(settings: AmqpSettings) -> Self {
        let uri = match &settings.address {
            BrokerAddress::Uri(uri) => Some(uri.clone()),
            BrokerAddress::Secret(_) => None,
        };
        Self {
            settings,
            uri,
            connection: None,
            channel: None,
            blocked: watch::channel(false).1,
            last_used: Instant::now(),
            declared: Declared::default(),
        }
    }

    /// Reads the broker secret (when the URI comes from one), bounded by the
    /// connect timeout and `until`. A no-op with `AMQP_URI`.
    pub async fn load_secret(&mut self, until: Instant) -> Result<(), SecretError> {
        let BrokerAddress::Secret(source) = &self.settings.address else {
            return Ok(());
        };
        let deadline = (Instant::now() + self.settings.connect_timeout).min(until);
        let system_roots = self
            .settings
            .system_roots
            .as_ref()
            .map_or(&[][..], SystemRoots::certificates);
        let uri = tokio::time::timeout_at(deadline.into(), source.fetch(system_roots))
            .await
            .map_err(|_| SecretError::Transport {
                endpoint: source.endpoint(),
                reason: "no answer within the connect timeout".into(),
            })??;
        if self.settings.ca.is_some() && !uri.is_tls() {
            return Err(SecretError::Format {
                arn: source.arn().to_owned(),
                reason: "its URI is amqp:// (plain text) but AMQP_CA_FILE is set; use amqps://"
                    .into(),
            });
        }
        tracing::info!(secret = source.arn(), broker = %uri, "broker secret read");
        self.uri = Some(uri);
        Ok(())
    }

    pub fn settings(&self) -> &AmqpSettings {
        &self.settings
    }

    /// Whether the broker blocks publishers on the connection (a memory or
    /// disk alarm). lapin then writes nothing at all until it is unblocked.
    pub fn is_blocked(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| c.status().connected() && c.status().blocked())
    }

    /// Whether the last batch ended longer ago than the heartbeat timeout
    /// the broker negotiated (none with heartbeats off).
    fn idle_past_heartbeat(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| {
            let timeout = Duration::from_secs(u64::from(c.configuration().heartbeat()));
            !timeout.is_zero() && self.last_used.elapsed() > timeout
        })
    }

    /// Whether the connection and the channel are open, as far as the client
    /// knows (a connection that died while frozen is only found out on use).
    pub fn is_open(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| c.status().connected())
            && self
                .channel
                .as_ref()
                .is_some_and(|c| c.status().connected())
    }

    /// Closes the connection cleanly (connection.close, 200), for shutdown.
    pub async fn close(&mut self) {
        // Dropping a channel starts its own close, which would race the
        // connection's: keep it until the connection is closed.
        let _channel = self.channel.take();
        if let Some(connection) = self.connection.take()
            && connection.status().connected()
        {
            let closing = connection.close(200, "shutdown".into());
            match tokio::time::timeout(Duration::from_millis(400), closing).await {
                Ok(Ok(())) => tracing::info!("broker connection closed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "closing the broker connection failed"),
                Err(_) => tracing::warn!("closing the broker connection timed out"),
            }
        }
    }

    async fn open(&mut self, until: Instant) -> Result<(), PublishError> {
        let had_connection = self
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected());
        if !had_connection {
            self.connect(until).await?;
        }
        // The broker may block the connection while the channel opens: it
        // then reads nothing from it until the alarm ends, and a blocked
        // connection cannot even be closed, so a new one would stay beside
        // it. Fail at once and keep the one connection.
        let mut blocked = self.blocked.clone();
        let opened = tokio::select! {
            biased;
            _ = blocked.wait_for(|b| *b) => Err(PublishError::Blocked),
            opened = self.open_channel(until) => opened,
        };
        match opened {
            Err(PublishError::ChannelLost(_)) if self.is_blocked() => Err(PublishError::Blocked),
            Err(PublishError::ChannelLost(reason)) if had_connection => {
                // The old connection only looked alive: start over once.
                tracing::warn!(%reason, "opening a channel failed; reconnecting");
                self.connect(until).await?;
                self.open_channel(until).await
            }
            other => other,
        }
    }

    async fn connect(&mut self, until: Instant) -> Result<(), PublishError> {
        self.channel = None;
        self.connection = None;
        let from_secret = matches!(self.settings.address, BrokerAddress::Secret(_));
        if self.uri.is_none() {
            self.load_secret(until).await.map_err(secret_unavailable)?;
        }
        let first = self.try_connect(until).await;
        let connection = match first {
            // The password may have been rotated since the secret was read:
            // read it once more before giving up.
            Err(Attempt::Refused(reason)) if from_secret => {
                tracing::warn!(%reason, "the broker refused the credentials; reading the secret again");
                self.load_secret(until).await.map_err(secret_unavailable)?;
                self.try_connect(until).await
            }
            other => other,
        }
        .map_err(|e| match e {
            Attempt::Refused(reason) | Attempt::Failed(reason) => PublishError::Unreachable(reason),
        })?;
        tracing::info!(broker = %self.uri_text(), name = %self.settings.connection_name, "connected to the broker");
        self.blocked = watch_blocked(&connection);
        self.last_used = Instant::now();
        self.connection = Some(connection);
        Ok(())
    }

    /// The URI for logs (password hidden).
    fn uri_text(&self) -> String {
        self.uri
            .as_ref()
            .map_or_else(|| "(secret not read)".to_string(), ToString::to_string)
    }

    async fn try_connect(&self, until: Instant) -> Result<Connection, Attempt> {
        let Some(uri) = self.uri.as_ref() else {
            return Err(Attempt::Failed("no broker URI".into()));
        };
        let deadline = (Instant::now() + self.settings.connect_timeout).min(until);
        let properties = ConnectionProperties::default()
            .with_connection_name(self.settings.connection_name.as_str().into());
        // Verification is never turned off: the TLS configuration can only
        // add trust roots (the system's and AMQP_CA_FILE's) to the bundled
        // webpki ones, which lapin always trusts with its
        // `rustls-webpki-roots-certs` feature.
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: extra_roots_pem(
                self.settings.system_roots.as_ref(),
                self.settings.ca.as_ref(),
            ),
        };
        match connect::open(uri.expose(), properties, tls, deadline).await {
            Err(ConnectError::TimedOut) => Err(Attempt::Failed(format!(
                "no connection to {uri} within the connect timeout"
            ))),
            Ok(connection) => Ok(connection),
            Err(ConnectError::Failed(e)) => {
                let reason = format!("{uri}: {}", describe_connect_error(&e, uri.is_tls()));
                if is_access_refused(&e) {
                    Err(Attempt::Refused(reason))
                } else {
                    Err(Attempt::Failed(reason))
                }
            }
        }
    }

    async fn open_channel(&mut self, until: Instant) -> Result<(), PublishError> {
        let Some(connection) = self.connection.as_ref() else {
            return Err(PublishError::Unreachable("no connection".into()));
        };
        let deadline = (Instant::now() + self.settings.connect_timeout).min(until);
        let channel = tokio::time::timeout_at(deadline.into(), async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        })
        .await
        .map_err(|_| PublishError::ChannelLost("opening a channel timed out".into()))?
        .map_err(|e| PublishError::ChannelLost(format!("opening a channel: {e}")))?;
        self.declared.clear();
        if let Some(topology) = &self.settings.topology {
            tokio::time::timeout_at(deadline.into(), declare(&channel, topology))
                .await
                .map_err(|_| {
                    PublishError::ChannelLost("declaring the topology timed out".into())
                })??;
            if let Some(exchange) = &topology.exchange {
                self.declared.insert(exchange, usize::MAX);
            }
        }
        self.channel = Some(channel);
        Ok(())
    }
}

impl Broker for AmqpBroker {
    async fn ensure_ready(&mut self, until: Instant) -> Result<bool, PublishError> {
        // Opening a channel or a connection would wait for the alarm to end:
        // fail at once, and keep the one connection.
        if self.is_blocked() {
            return Err(PublishError::Blocked);
        }
        if self.is_open() && self.idle_past_heartbeat() {
            // Lambda froze the environment for longer than the broker waits
            // for a heartbeat: the broker has given the connection up, and
            // if its close was lost on the way the client would only find
            // out after waiting for confirms that never come.
            tracing::info!(
                idle_ms = self.last_used.elapsed().as_millis() as u64,
                "idle past the heartbeat timeout; reconnecting before publishing"
            );
            self.channel = None;
            self.connection = None;
        }
        if self.is_open() {
            return Ok(false);
        }
        self.open(until).await.map(|()| true)
    }

    async fn publish(
        &mut self,
        message: &Message,
        until: Instant,
    ) -> Result<Confirm, PublishError> {
        let channel = self
            .channel
            .as_ref()
            .ok_or_else(|| PublishError::ChannelLost("no open channel".into()))?;
        self.declared.used(&message.exchange);
        let sending = channel.basic_publish(
            short(&message.exchange)?,
            short(&message.routing_key)?,
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &message.body,
            properties(message)?,
        );
        let mut sending = std::pin::pin!(tokio::time::timeout_at(until.into(), sending));
        // The write is almost always done at once; only a write that waits
        // (a blocked broker: lapin writes nothing then) is raced against the
        // blocked notification, which costs a waiter per message.
        let sent = match std::future::poll_fn(|cx| Poll::Ready(sending.as_mut().poll(cx))).await {
            Poll::Ready(sent) => sent,
            Poll::Pending => {
                let mut blocked = self.blocked.clone();
                tokio::select! {
                    biased;
                    sent = &mut sending => sent,
                    _ = blocked.wait_for(|b| *b) => return Err(PublishError::Blocked),
                }
            }
        };
        let confirm = sent
            .map_err(|_| PublishError::WriteTimeout)?
            .map_err(|e| confirm_error(&e))?;
        Ok(Box::pin(async move {
            match confirm.await {
                Ok(lapin::Confirmation::Ack(returned)) => Confirmation {
                    outcome: Ok(()),
                    returned: returned.map(|r| returned_message(&r)),
                },
                Ok(lapin::Confirmation::Nack(returned)) => Confirmation {
                    outcome: Err(PublishError::Nacked),
                    returned: returned.map(|r| returned_message(&r)),
                },
                Ok(lapin::Confirmation::NotRequested) => Confirmation::failed(
                    PublishError::ChannelLost("the channel is not in confirm mode".into()),
                ),
                Err(e) => Confirmation::failed(confirm_error(&e)),
            }
        }))
    }

    fn needs_declare(&self, exchange: &str) -> bool {
        // A fixed EXCHANGE's topology is declared with the channel.
        self.settings.topology.as_ref().is_some_and(|t| {
            t.exchange.is_none()
                && !exchange.is_empty()
                && exchange != t.dead_letter
                && !self.declared.contains(exchange)
        })
    }

    async fn declare(&mut self, exchange: &str, until: Instant) -> Result<(), PublishError> {
        let (Some(topology), Some(channel)) = (&self.settings.topology, &self.channel) else {
            return Err(PublishError::ChannelLost("no open channel".into()));
        };
        // A declaration waits, like a publish, while the broker blocks the
        // connection: fail at once instead (CONTRACT §6.8).
        let mut blocked = self.blocked.clone();
        let declaring = declare_exchange(channel, exchange, topology.queue_type, refusal);
        let declared = tokio::select! {
            biased;
            _ = blocked.wait_for(|b| *b) => return Err(PublishError::Blocked),
            declared = tokio::time::timeout_at(until.into(), declaring) => declared,
        };
        match declared {
            Err(_) => Err(PublishError::ChannelLost(
                "declaring an exchange timed out".into(),
            )),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => {
                self.declared.insert(exchange, topology.max_exchanges);
                Ok(())
            }
        }
    }

    fn idle(&mut self) {
        self.last_used = Instant::now();
    }

    fn blocked(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut blocked = self.blocked.clone();
        async move {
            if blocked.wait_for(|b| *b).await.is_err() {
                // The connection is gone: it will never block again.
                std::future::pending::<()>().await;
            }
        }
    }

    fn reset(&mut self, scope: Reset) {
        // Dropping them closes them in the background (lapin's closers).
        self.channel = None;
        self.declared.clear();
        let dead = self
            .connection
            .as_ref()
            .is_some_and(|c| !c.status().connected());
        if dead || (scope == Reset::Connection && !self.is_blocked()) {
            self.connection = None;
        }
    }
}

/// A returned message, named by its message id; its body is dropped here.
fn returned_message(message: &lapin::message::BasicReturnMessage) -> Returned {
    Returned {
        message_id: message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(ToString::to_string),
        code: message.reply_code,
        text: message.reply_text.to_string(),
    }
}

/// Follows the connection's `connection.blocked` / `connection.unblocked`
/// notifications. The task ends with the connection's event stream.
fn watch_blocked(connection: &Connection) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(connection.status().blocked());
    let mut events = Box::pin(connection.events_listener());
    tokio::spawn(async move {
        while let Some(event) =
            std::future::poll_fn(|cx| futures_core::Stream::poll_next(events.as_mut(), cx)).await
        {
            match event {
                lapin::Event::ConnectionBlocked(_) => tx.send_replace(true),
                lapin::Event::ConnectionUnblocked => tx.send_replace(false),
                _ => continue,
            };
        }
    });
    rx
}

/// How one connection attempt failed.
enum Attempt {
    /// The broker refused the credentials (403 ACCESS_REFUSED).
    Refused(String),
    Failed(String),
}

fn secret_unavailable(e: SecretError) -> PublishError {
    PublishError::Unreachable(format!("reading the broker secret: {e}"))
}

/// RabbitMQ closes the connection with 403 ACCESS_REFUSED when the user
/// name or password is wrong (or the user may not use the vhost).
fn is_access_refused(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(p) if p.get_id() == 403)
}

/// The connect error, with a plain word for the TLS failures an operator
/// meets: an untrusted certificate, a host-name mismatch, or a plain-text
/// port behind `amqps://` (rustls reports all of them as invalid data).
fn describe_connect_error(e: &lapin::Error, tls: bool) -> String {
    let text = e.to_string();
    let invalid_data =
        matches!(e.kind(), ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::InvalidData);
    if tls && (invalid_data || text.contains("certificate")) {
        format!("TLS handshake failed: {text}")
    } else {
        text
    }
}

/// An AMQP short string. The mapping keeps every field within 255 bytes;
/// this turns a slip into an error instead of lapin's panic.
fn short(s: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(s)
        .map_err(|_| PublishError::Invalid("a name or property is longer than 255 bytes".into()))
}

fn properties(message: &Message) -> Result<BasicProperties, PublishError> {
    let p = &message.properties;
    let mut headers = FieldTable::default();
    let all = p
        .headers
        .iter()
        .map(|(n, v)| (*n, v))
        .chain(p.extra_headers.iter().map(|(n, v)| (n.as_str(), v)));
    for (name, value) in all {
        let value = match value {
            HeaderValue::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            HeaderValue::Int(i) => i64::try_from(*i).map_or_else(
                |_| AMQPValue::LongString(LongString::from(i.to_string())),
                AMQPValue::LongLongInt,
            ),
        };
        headers.insert(short(name)?, value);
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(short(&p.message_id)?)
        .with_app_id(short(&p.app_id)?)
        .with_headers(headers);
    if let Some(c) = &p.correlation_id {
        props = props.with_correlation_id(short(c)?);
    }
    if let Some(k) = &p.kind {
        props = props.with_type(short(k)?);
    }
    if let Some(t) = p.timestamp {
        props = props.with_timestamp(t);
    }
    Ok(props)
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
/// other error is the connection's.
fn refusal(what: &str, name: &str, e: lapin::Error) -> PublishError {
    match e.kind() {
        ErrorKind::ProtocolError(p) if matches!(p.get_id(), 403 | 406) => PublishError::Refused(
            format!("{what} '{name}': {} {}", p.get_id(), p.get_message()),
        ),
        _ => PublishError::ChannelLost(format!("declaring {what} '{name}': {e}")),
    }
}

/// How a failed declaration becomes a [`PublishError`]: [`clash`] at cold
/// start, [`refusal`] for a per-event exchange.
type OnError = fn(&str, &str, lapin::Error) -> PublishError;

/// The failure of a confirm that did not come: a channel the broker closed
/// over a message larger than its `max_message_size` is a refusal of that
/// message (`TooLarge`, naming its size); anything else lost the channel.
fn confirm_error(e: &lapin::Error) -> PublishError {
    if let ErrorKind::ProtocolError(p) = e.kind()
        && p.get_id() == 406
        && let Some((size, limit)) = size_refusal(p.get_message().as_str())
    {
        return PublishError::TooLarge {
            size,
            limit,
            text: format!("406 {}", p.get_message()),
        };
    }
    PublishError::ChannelLost(e.to_string())
}

/// The sizes in RabbitMQ's refusal of a message over its limit:
/// `PRECONDITION_FAILED - message size 532123 is larger than configured max
/// size 524288`.
fn size_refusal(text: &str) -> Option<(usize, usize)> {
    let rest = text.split_once("message size ")?.1;
    let (size, rest) = rest.split_once(" is larger than configured max size ")?;
    let limit: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((size.trim().parse().ok()?, limit.parse().ok()?))
}

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
async fn declare(channel: &Channel, topology: &Topology) -> Result<(), PublishError> {
    fanout_with_queue(channel, &topology.dead_letter, topology.queue_type, clash).await?;
    if let Some(exchange) = &topology.exchange {
        declare_exchange(channel, exchange, topology.queue_type, clash).await?;
    }
    Ok(())
}

/// One exchange's topology: the durable topic exchange with its alternate
/// exchange `<exchange>.unrouted`, a fanout to the queue of that name.
async fn declare_exchange(
    channel: &Channel,
    exchange: &str,
    queue_type: QueueType,
    on_error: OnError,
) -> Result<(), PublishError> {
    // A refusal of the alternate exchange, its queue or their binding is
    // the topology's (an old queue, missing permissions), not the event's:
    // it fails the batch with the way out, whatever `on_error` says of the
    // event's own exchange.
    let unrouted = format!("{exchange}.unrouted");
    fanout_with_queue(channel, &unrouted, queue_type, clash).await?;
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

/// `x-delivery-limit` of the quorum queues the forwarder declares. They
/// keep what would otherwise be lost, so no number of redeliveries (a
/// consumer that keeps failing, an operator peeking with get-and-requeue)
/// may drop a message: RabbitMQ 4 drops one after 20 by default. `-1` is
/// "unlimited" on 4.x but dropped a message at its first requeue on 3.10,
/// and the value must be the same on every version (an upgraded broker keeps
/// the declared arguments, and a different one would clash), so it is the
/// largest signed 32-bit number: decades of requeues at a thousand a second.
pub const DELIVERY_LIMIT: i32 = i32::MAX;

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

/// The exchanges a channel has declared, the least recently used forgotten
/// past `MAX_EXCHANGES`: memory stays bounded, and an exchange forgotten is
/// declared again when used, a round trip that changes no outcome.
#[derive(Debug, Default)]
struct Declared {
    last_used: HashMap<String, u64>,
    clock: u64,
}

impl Declared {
    fn contains(&self, exchange: &str) -> bool {
        self.last_used.contains_key(exchange)
    }

    /// Remembers `exchange`, forgetting the least recently used one when
    /// more than `capacity` would be remembered.
    fn insert(&mut self, exchange: &str, capacity: usize) {
        self.clock += 1;
        self.last_used.insert(exchange.to_owned(), self.clock);
        if self.last_used.len() > capacity.max(1)
            && let Some(oldest) = self
                .last_used
                .iter()
                .min_by_key(|(_, used)| **used)
                .map(|(name, _)| name.clone())
        {
            self.last_used.remove(&oldest);
        }
    }

    fn used(&mut self, exchange: &str) {
        self.clock += 1;
        if let Some(used) = self.last_used.get_mut(exchange) {
            *used = self.clock;
        }
    }

    fn clear(&mut self) {
        self.last_used.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_exchange_is_forgotten_past_the_bound() {
        let mut d = Declared::default();
        d.insert("a", 2);
        d.insert("b", 2);
        d.used("a");
        d.insert("c", 2);
        assert!(d.contains("a") && d.contains("c") && !d.contains("b"));
        d.clear();
        assert!(!d.contains("a"));
    }

    #[test]
    fn a_size_refusal_names_the_size_and_the_limit() {
        assert_eq!(
            size_refusal(
                "PRECONDITION_FAILED - message size 532123 is larger than configured max size 524288"
            ),
            Some((532_123, 524_288))
        );
        assert_eq!(
            size_refusal("PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x'"),
            None
        );
        assert_eq!(
            size_refusal("message size many is larger than configured max size 1"),
            None
        );
    }
}
