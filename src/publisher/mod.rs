//! The narrow port between the batch logic and the broker.
//!
//! [`Broker`] is all the batch loop knows: make a confirm-mode channel ready,
//! publish one message and get its confirm as a future, drop a broken
//! channel. [`amqp::AmqpBroker`] implements it with lapin; the batch tests
//! implement it with scripted fakes.

pub mod amqp;
pub mod trust;

use std::{future::Future, pin::Pin, time::Instant};

/// An AMQP header value; only the kinds the contract uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    String(String),
    Int(u64),
}

/// The AMQP properties the forwarder sets (CONTRACT §4). Every message is
/// persistent (`delivery_mode` 2) and `application/json`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub app_id: String,
    /// The AMQP `type` property.
    pub kind: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    pub headers: Vec<(&'static str, HeaderValue)>,
}

/// One message ready to publish with `mandatory` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: Properties,
}

/// Why a message was not confirmed. The text never holds a payload or a
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    #[error("topology declaration failed: {0}")]
    Topology(String),
    #[error("the broker nacked the message")]
    Nacked,
    #[error("the broker returned the message: {code} {text}")]
    Returned { code: u16, text: String },
    #[error("the broker did not take the message in time (blocked by a resource alarm?)")]
    WriteTimeout,
    #[error("no publisher confirm within the confirm timeout")]
    ConfirmTimeout,
    #[error("channel or connection lost: {0}")]
    ChannelLost(String),
    #[error("the invocation deadline margin was reached")]
    Deadline,
    #[error("the message cannot be sent: {0}")]
    Invalid(String),
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
            PublishError::Topology(_) => "topology",
            PublishError::Nacked => "nack",
            PublishError::Returned { .. } => "returned",
            PublishError::WriteTimeout => "write_timeout",
            PublishError::ConfirmTimeout => "confirm_timeout",
            PublishError::ChannelLost(_) => "channel_lost",
            PublishError::Deadline => "deadline",
            PublishError::Invalid(_) => "invalid",
        }
    }
}

/// How much to throw away after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The channel: after a nack, a return or a channel error.
    Channel,
    /// The connection too: after a timeout, when the socket may be dead
    /// without the client knowing it yet.
    Connection,
}

impl PublishError {
    /// What to reset after this failure.
    pub fn reset_scope(&self) -> Reset {
        match self {
            PublishError::WriteTimeout | PublishError::ConfirmTimeout | PublishError::Deadline => {
                Reset::Connection
            }
            _ => Reset::Channel,
        }
    }
}

/// The broker's answer to one publish, resolved when it confirms.
pub type Confirm = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;

/// What the batch loop needs from a broker.
pub trait Broker {
    /// Makes sure an open confirm-mode channel exists, connecting (and
    /// declaring the topology) when there is none or the old one died.
    /// Gives up at `until`. Returns `true` when it had to (re)connect.
    fn ensure_ready(&mut self, until: Instant) -> impl Future<Output = Result<bool, PublishError>>;

    /// Sends one message (`mandatory`). Resolves once the message is written,
    /// not confirmed; the returned [`Confirm`] resolves on the broker's ack.
    /// Gives up at `until`.
    fn publish(
        &mut self,
        message: &Message,
        until: Instant,
    ) -> impl Future<Output = Result<Confirm, PublishError>>;

    /// Forgets the channel (and with [`Reset::Connection`] the connection)
    /// after a failure, so that the next [`Broker::ensure_ready`] opens
    /// fresh ones and no confirm of a failed batch lingers.
    fn reset(&mut self, scope: Reset);
}
