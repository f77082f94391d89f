//! The lapin adapter: one connection per execution environment, shared by
//! its brokers (one per invocation in flight, each with its own
//! confirm-mode channel), the topology of CONTRACT §5, and publishes whose
//! confirms are checked one by one (a nack or a returned message fails).
//!
//! Every await on the network has a bound: a frozen or blackholed broker
//! must not outlive the invocation.
//!
//! - this file: the settings, the broker's state and the [`Broker`] impl
//!   (publish, declare a template's exchange, reset).
//! - `connection`: the connection's life (the broker secret, connect once
//!   for all the brokers that share it, close, `connection.blocked`) and its
//!   errors in an operator's words.
//! - `channel`: a confirm-mode channel with the topology declared on it.
//! - `topology`: what is declared and with which arguments, and a refused
//!   declaration in an operator's words.
//! - `declared`: the exchanges a channel has declared (a bounded LRU).
//! - `properties`: a [`Message`]'s AMQP properties and headers.
//! - `confirm`: what one publish's confirm, or its failure, says.

mod channel;
#[cfg(test)]
mod closes;
mod confirm;
mod connection;
mod declared;
mod properties;
mod topology;

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::Poll,
    time::{Duration, Instant},
};

use lapin::{Channel, Connection, PublishWritten, options::BasicPublishOptions};
use tokio::sync::watch;

use super::trust::SystemRoots;
use super::{Broker, Confirm, Message, PublishError, Reset};
use crate::config::{BrokerAddress, TrustedCa};
use crate::uri::AmqpUri;
use confirm::{confirm_error, confirmation};
use declared::Declared;
use properties::{properties, short};

pub use topology::Topology;

/// How to reach the broker, and what to declare there. The caller builds it
/// (the function from its configuration: [`crate::handler::amqp_settings`]).
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
    /// Bound on TCP, TLS and the AMQP handshake.
    pub connect_timeout: Duration,
    /// `None` when `DECLARE_TOPOLOGY=false`.
    pub topology: Option<Topology>,
}

/// A [`Broker`] backed by a lapin connection that is reopened when it dies.
///
/// On Lambda Managed Instances one execution environment serves several
/// invocations at once: each has a broker of its own ([`AmqpBroker::sibling`])
/// with its own channel, confirm window and returned messages, over the one
/// connection they share. A broker that finds the connection dead reopens it
/// for all of them: the others, waiting for it, then find it open.
pub struct AmqpBroker {
    settings: Arc<AmqpSettings>,
    /// The connection this broker shares with its siblings.
    link: Arc<Link>,
    /// The connection its channel is on (the link's, when it was opened).
    connection: Option<Arc<Live>>,
    channel: Option<Channel>,
    /// `true` while the broker blocks the connection (`connection.blocked`).
    blocked: watch::Receiver<bool>,
    /// Exchanges whose topology this channel has declared.
    declared: Declared,
    /// A sibling's first channel, which is no reconnect (the `Reconnects`
    /// metric counts channels and connections opened again).
    first_channel: bool,
    /// Publishes since this broker last woke lapin's I/O thread and let
    /// the runtime poll its reactor.
    since_wake: u32,
    /// The write of the publish that last woke lapin's I/O thread.
    last_wake: Option<PublishWritten>,
    /// Publishes were queued since lapin's I/O thread was last woken.
    unwoken: AtomicBool,
}

/// Publishes queued between two wakes of lapin's I/O thread, each followed
/// by a yield to the runtime. One wake per publish cost a futex call each
/// (and the thread's switch); one per 32 lets one write carry them. The
/// yield: lapin's I/O thread learns that its socket is readable from the
/// runtime's reactor, which a current-thread runtime polls only when its
/// task yields or waits, so a batch that never waited would read no
/// confirm until its last publish (and a connection lost mid-batch would
/// then lose every confirm). What is queued when the batch waits for
/// anything else is written then ([`Broker::flush`]). Before a wake, the
/// write of the publish that woke the thread last must be done: at most
/// twice this many publishes wait in lapin's queue, where a broker slower
/// than the conversion would otherwise collect the whole batch's bodies.
const WAKE_EVERY: u32 = 32;

/// The connection of an execution environment, shared by its brokers.
struct Link {
    /// Held while (re)connecting, so that the brokers that find the
    /// connection dead at the same time reopen it once.
    state: tokio::sync::Mutex<Shared>,
    /// When a batch last ended (or the connection was made), on any broker.
    last_used: std::sync::Mutex<Instant>,
}

impl Link {
    fn touch(&self) {
        *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }
}

/// What the brokers of an environment share.
struct Shared {
    /// The URI in use: `AMQP_URI`, or the secret's value once read.
    uri: Option<AmqpUri>,
    connection: Option<Arc<Live>>,
    blocked: watch::Receiver<bool>,
}

/// A connection, and whether a broker has given it up (it is then being
/// closed, and the next broker to need one opens a new one).
struct Live {
    connection: Connection,
    retired: AtomicBool,
    /// Broker answers (acks and nacks) received on it, by every broker
    /// that shares it: a connection whose count moves is alive, however
    /// long one channel's opening takes (see `channel`).
    answers: AtomicU64,
}

impl Live {
    fn usable(&self) -> bool {
        !self.retired.load(Ordering::SeqCst) && self.connection.status().connected()
    }
}

impl AmqpBroker {
    /// A broker not yet connected.
    pub fn new(settings: AmqpSettings) -> Self {
        let uri = match &settings.address {
            BrokerAddress::Uri(uri) => Some(uri.clone()),
            BrokerAddress::Secret(_) => None,
        };
        let link = Link {
            state: tokio::sync::Mutex::new(Shared {
                uri,
                connection: None,
                blocked: watch::channel(false).1,
            }),
            last_used: std::sync::Mutex::new(Instant::now()),
        };
        Self {
            settings: Arc::new(settings),
            link: Arc::new(link),
            connection: None,
            channel: None,
            blocked: watch::channel(false).1,
            declared: Declared::default(),
            first_channel: false,
            since_wake: 0,
            last_wake: None,
            unwoken: AtomicBool::new(false),
        }
    }

    /// Another broker over the same connection, with a channel of its own:
    /// for another invocation in flight at the same time.
    pub fn sibling(&self) -> Self {
        Self {
            settings: Arc::clone(&self.settings),
            link: Arc::clone(&self.link),
            connection: None,
            channel: None,
            blocked: watch::channel(false).1,
            declared: Declared::default(),
            first_channel: true,
            since_wake: 0,
            last_wake: None,
            unwoken: AtomicBool::new(false),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &AmqpSettings {
        &self.settings
    }

    /// Whether the broker blocks publishers on the connection (a memory or
    /// disk alarm). lapin then writes nothing at all until it is unblocked.
    pub fn is_blocked(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| {
            let status = c.connection.status();
            status.connected() && status.blocked()
        })
    }

    /// Whether no batch has ended on any broker of this connection for
    /// longer than the heartbeat timeout the broker negotiated (none with
    /// heartbeats off).
    fn idle_past_heartbeat(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| {
            let timeout = Duration::from_secs(u64::from(c.connection.configuration().heartbeat()));
            !timeout.is_zero() && self.link.idle_for() > timeout
        })
    }

    /// Whether the connection and the channel are open, as far as the client
    /// knows (a connection that died while frozen is only found out on use).
    pub fn is_open(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.usable())
            && self
                .channel
                .as_ref()
                .is_some_and(|c| c.status().connected())
    }

    /// Gives the connection up for every broker that shares it: the first
    /// to need one opens a new one. A live one is closed in the background
    /// (bounded), which fails the channels of the invocations still on it:
    /// each fails, or resumes, at its own first unconfirmed record.
    fn retire_connection(&mut self) {
        self.channel = None;
        self.declared.clear();
        let Some(live) = self.connection.take() else {
            return;
        };
        if !live.retired.swap(true, Ordering::SeqCst)
            && live.connection.status().connected()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let closing = live.connection.close(200, "replaced".into());
                let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
            });
        }
    }

    /// Waits for the write of the publish that last woke lapin's I/O
    /// thread, which has almost always happened: a broker that takes
    /// messages slower than they come holds the batch here. The write's
    /// own failure is told by its confirm.
    async fn earlier_written(&mut self, until: Instant) -> Result<(), PublishError> {
        let Some(mut written) = self.last_wake.take() else {
            return Ok(());
        };
        if std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut written).poll(cx)))
            .await
            .is_ready()
        {
            return Ok(());
        }
        let mut blocked = self.blocked.clone();
        tokio::select! {
            biased;
            _ = written => Ok(()),
            // lapin writes nothing while the broker blocks the connection.
            _ = blocked.wait_for(|b| *b) => Err(PublishError::Blocked),
            () = tokio::time::sleep_until(until.into()) => Err(PublishError::WriteTimeout),
        }
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
                idle_ms = self.link.idle_for().as_millis() as u64,
                "idle past the heartbeat timeout; reconnecting before publishing"
            );
            self.retire_connection();
        }
        if self.is_open() {
            return Ok(false);
        }
        self.open(until).await?;
        Ok(!std::mem::take(&mut self.first_channel))
    }

    async fn publish(&mut self, message: Message, until: Instant) -> Result<Confirm, PublishError> {
        let wake = self.since_wake + 1 >= WAKE_EVERY;
        if wake {
            self.earlier_written(until).await?;
        }
        let channel = self
            .channel
            .as_ref()
            .ok_or_else(|| PublishError::ChannelLost("no open channel".into()))?;
        // lapin writes nothing while the broker blocks the connection: a
        // message handed to it now would only go out once the alarm ends,
        // after the batch has failed.
        if self.is_blocked() {
            return Err(PublishError::Blocked);
        }
        self.declared.used(&message.exchange);
        // The frames are queued for lapin's I/O thread in the batch's
        // order, and the write is not awaited here: each await of a write
        // cost a hop from that thread back to this one per event
        // (docs/performance.md). A write that fails fails the confirm
        // (lapin rejects the confirms of a channel or connection it
        // loses), one that never ends meets the confirm timeout.
        let (written, pending) = channel
            .basic_publish_queued(
                short(message.exchange)?,
                short(message.routing_key)?,
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                message.body,
                properties(message.properties)?,
                wake,
            )
            .map_err(|e| confirm_error(&e))?;
        self.since_wake += 1;
        if wake {
            self.since_wake = 0;
            self.unwoken.store(false, Ordering::Relaxed);
            self.last_wake = Some(written);
            tokio::task::yield_now().await;
        } else {
            self.unwoken.store(true, Ordering::Relaxed);
        }
        let live = self.connection.clone();
        Ok(Box::pin(async move {
            let answer = pending.await;
            if answer.is_ok()
                && let Some(live) = live
            {
                live.answers.fetch_add(1, Ordering::Relaxed);
            }
            confirmation(answer)
        }))
    }

    fn flush(&self) {
        if self.unwoken.swap(false, Ordering::Relaxed)
            && let Some(channel) = &self.channel
        {
            channel.wake_io();
        }
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
        let declaring = topology::declare_event_exchange(channel, exchange, topology.queue_type);
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
        self.link.touch();
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
        // Dropping the channel closes it in the background (lapin's closer).
        self.channel = None;
        self.last_wake = None;
        self.since_wake = 0;
        self.declared.clear();
        let dead = self
            .connection
            .as_ref()
            .is_some_and(|c| !c.connection.status().connected());
        if dead || (scope == Reset::Connection && !self.is_blocked()) {
            self.retire_connection();
        }
    }
}
