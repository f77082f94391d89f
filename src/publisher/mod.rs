//! The narrow port between the batch logic and the broker.
//!
//! [`Broker`] is all the batch loop knows: make a confirm-mode channel ready,
//! publish one message and get its confirm as a future, drop a broken
//! channel. [`amqp::AmqpBroker`] implements it with lapin; the batch tests
//! implement it with scripted fakes.

pub mod amqp;
mod connect;
pub mod trust;

use std::{future::Future, pin::Pin, time::Instant};

/// An AMQP header value; only the kinds the contract uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// A long string.
    String(String),
    /// An unsigned integer.
    Int(u64),
}

/// The AMQP properties the forwarder sets (CONTRACT §4). Every message is
/// persistent (`delivery_mode` 2) and `application/json`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// The envelope's `messageId`.
    pub message_id: String,
    /// The envelope's `correlationId`.
    pub correlation_id: Option<String>,
    /// The envelope's `source`.
    pub app_id: String,
    /// The AMQP `type` property.
    pub kind: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// The forwarder's headers (CONTRACT §4).
    pub headers: Vec<(&'static str, HeaderValue)>,
    /// Headers an [`crate::enrich::Enricher`] added.
    pub extra_headers: Vec<(String, HeaderValue)>,
}

/// One message ready to publish with `mandatory` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The exchange it is published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// The envelope as UTF-8 JSON.
    pub body: Vec<u8>,
    /// Its AMQP properties and headers.
    pub properties: Properties,
}

/// Why a message was not confirmed. The text never holds a payload or a
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No connection or channel could be opened.
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// The broker refused the connection for one of its connection limits
    /// (530 NOT_ALLOWED at `connection.open`: the node's `connection_max`,
    /// a vhost's or a user's `max-connections`). Its reply names the limit.
    #[error("the broker refused the connection: its connection limit is reached ({0})")]
    ConnectionLimit(String),
    /// The topology cannot be declared as configured.
    #[error("topology declaration failed: {0}")]
    Topology(String),
    /// The broker nacked the message.
    #[error("the broker nacked the message")]
    Nacked,
    #[error("the broker returned the message: {code} {text}")]
    /// The broker returned the message (no queue took it).
    Returned {
        /// The reply code (312 NO_ROUTE).
        code: u16,
        /// The reply text.
        text: String,
    },
    /// The broker blocks publishers.
    #[error("the broker blocks publishers (connection.blocked: a memory or disk alarm)")]
    Blocked,
    /// The message was not written in time.
    #[error("the broker did not take the message in time (blocked by a resource alarm?)")]
    WriteTimeout,
    /// No confirm came in time.
    #[error("no publisher confirm within the confirm timeout")]
    ConfirmTimeout,
    /// The channel or connection closed.
    #[error("channel or connection lost: {0}")]
    ChannelLost(String),
    /// The invocation's deadline margin was reached.
    #[error("the invocation deadline margin was reached")]
    Deadline,
    /// The message cannot be encoded (a property too long for AMQP).
    #[error("the message cannot be sent: {0}")]
    Invalid(String),
    /// The enricher could not decide.
    #[error("enrichment failed: {0}")]
    Enrichment(String),
    /// The broker refuses the record's exchange for good (403 access
    /// refused, 406 an exchange with other settings): a record fault.
    #[error("the broker refused the event's exchange: {0}")]
    Refused(String),
    /// The broker closed the channel over a message larger than it takes
    /// (its `max_message_size` is below `MAX_MESSAGE_BYTES`).
    #[error("the broker refused a message of {size} bytes: {text}")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The broker's limit.
        limit: usize,
        /// The broker's reply text.
        text: String,
    },
}

impl PublishError {
    /// Errors after which a new channel (and maybe connection) may succeed
    /// where the old one failed.
    pub fn is_channel_lost(&self) -> bool {
        matches!(self, PublishError::ChannelLost(_))
    }

    /// A short, stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::Unreachable(_) => "unreachable",
            PublishError::ConnectionLimit(_) => "connection_limit",
            PublishError::Topology(_) => "topology",
            PublishError::Nacked => "nack",
            PublishError::Returned { .. } => "returned",
            PublishError::Blocked => "blocked",
            PublishError::WriteTimeout => "write_timeout",
            PublishError::ConfirmTimeout => "confirm_timeout",
            PublishError::ChannelLost(_) => "channel_lost",
            PublishError::Deadline => "deadline",
            PublishError::Invalid(_) => "invalid",
            PublishError::Enrichment(_) => "enrichment",
            PublishError::Refused(_) => "refused",
            PublishError::TooLarge { .. } => "too_large",
        }
    }
}

/// How much to throw away after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The channel: after a nack, a return, a channel error, the deadline
    /// or a blocked broker.
    Channel,
    /// The connection too: after a timeout, when the socket may be dead
    /// without the client knowing it yet. A blocked connection is kept all
    /// the same (see [`Broker::reset`]).
    Connection,
}

impl PublishError {
    /// What to reset after this failure. Reaching the deadline says nothing
    /// about the connection (a slow broker, a large batch), so it keeps it.
    pub fn reset_scope(&self) -> Reset {
        match self {
            PublishError::WriteTimeout | PublishError::ConfirmTimeout => Reset::Connection,
            _ => Reset::Channel,
        }
    }
}

/// A message the broker handed back (`mandatory`, and no queue took it).
/// `basic.return` carries no delivery tag and the client may attach it to
/// any publish's confirm, so it names its record by its own message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    /// The returned message's `messageId`.
    pub message_id: Option<String>,
    /// The reply code.
    pub code: u16,
    /// The reply text.
    pub text: String,
}

impl Returned {
    /// The failure it is for its own record.
    pub fn error(&self) -> PublishError {
        PublishError::Returned {
            code: self.code,
            text: self.text.clone(),
        }
    }
}

/// What one publish's confirm resolved to: its own outcome, and a returned
/// message that came with it, which may belong to another publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// Whether its own message was confirmed.
    pub outcome: Result<(), PublishError>,
    /// A returned message that came with it.
    pub returned: Option<Returned>,
}

impl Confirmation {
    /// Confirmed, nothing returned.
    pub fn ack() -> Self {
        Self {
            outcome: Ok(()),
            returned: None,
        }
    }

    /// Not confirmed, for `error`.
    pub fn failed(error: PublishError) -> Self {
        Self {
            outcome: Err(error),
            returned: None,
        }
    }
}

/// The broker's answer to one publish, resolved when it confirms.
pub type Confirm = Pin<Box<dyn Future<Output = Confirmation> + Send>>;

/// What the batch loop needs from a broker.
pub trait Broker {
    /// Makes sure an open confirm-mode channel exists, connecting (and
    /// declaring the topology) when there is none or the old one died.
    /// Gives up at `until`. Returns `true` when it had to (re)connect.
    fn ensure_ready(&mut self, until: Instant) -> impl Future<Output = Result<bool, PublishError>>;

    /// Sends one message (`mandatory`), after every message sent before it
    /// on this channel. Resolves once the client has it: the lapin broker
    /// leaves the write to its I/O thread, so that one write carries many
    /// messages, and waits (up to `until`) only while too many are still
    /// unwritten. The returned [`Confirm`] resolves on the broker's ack, or
    /// on the failure of the write or of the channel.
    fn publish(
        &mut self,
        message: Message,
        until: Instant,
    ) -> impl Future<Output = Result<Confirm, PublishError>>;

    /// Makes sure what [`Broker::publish`] queued is being written. The
    /// batch calls it before it waits for anything (a confirm, an
    /// enricher): the lapin broker wakes its I/O thread once per several
    /// publishes, and what is queued since would wait with the batch.
    fn flush(&self) {}

    /// Whether `exchange` must be declared before a message goes to it (an
    /// exchange of a templated `EXCHANGE`, on its first use on a channel).
    /// The batch settles what is in flight first: the broker closes the
    /// channel when it refuses the declaration, and confirms still pending
    /// on it would be lost.
    fn needs_declare(&self, _exchange: &str) -> bool {
        false
    }

    /// Declares `exchange`'s topology. [`PublishError::Refused`] when the
    /// broker refuses it for good; the channel is then closed.
    fn declare(
        &mut self,
        _exchange: &str,
        _until: Instant,
    ) -> impl Future<Output = Result<(), PublishError>> {
        std::future::ready(Ok(()))
    }

    /// Forgets the channel (and with [`Reset::Connection`] the connection)
    /// after a failure, so that the next [`Broker::ensure_ready`] opens
    /// fresh ones and no confirm of a failed batch lingers. A connection the
    /// broker blocks is never dropped: nothing can be written to it, not
    /// even its close, so the broker would keep it open (and flush what it
    /// held) for as long as the alarm lasts, beside every new one.
    fn reset(&mut self, scope: Reset);

    /// The batch is over: the broker was last used now.
    fn idle(&mut self) {}

    /// Resolves once the broker blocks publishers (`connection.blocked`);
    /// never, by default. The batch loop races its waits for a confirm
    /// against it: a blocked broker confirms nothing until its alarm ends,
    /// so the batch fails at once instead.
    fn blocked(&self) -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }
}
