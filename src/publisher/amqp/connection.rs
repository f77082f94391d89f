//! The connection's life: the broker secret read (and read again when the
//! broker refuses its password), connect within the connect timeout (once
//! for all the brokers that share the connection), the
//! `connection.blocked` watcher, a clean close at shutdown, and a failed
//! connect described in an operator's words.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64},
    },
    time::{Duration, Instant},
};

use lapin::{Connection, ConnectionProperties, ErrorKind, tcp::OwnedTLSConfig};
use tokio::sync::watch;

use super::{AmqpBroker, AmqpSettings, Live, Shared};
use crate::config::BrokerAddress;
use crate::publisher::PublishError;
use crate::publisher::connect::{self, ConnectError};
use crate::publisher::trust::{SystemRoots, extra_roots_pem};
use crate::secrets::SecretError;

impl AmqpBroker {
    /// Reads the broker secret (when the URI comes from one), bounded by the
    /// connect timeout and `until`. A no-op with `AMQP_URI`.
    pub async fn load_secret(&mut self, until: Instant) -> Result<(), SecretError> {
        let mut shared = self.link.state.lock().await;
        shared.load_secret(&self.settings, until).await
    }

    /// Closes the connection cleanly (connection.close, 200), for shutdown:
    /// the channels of its siblings with it.
    pub async fn close(&mut self) {
        // Dropping a channel starts its own close, which would race the
        // connection's: keep it until the connection is closed.
        let _channel = self.channel.take();
        self.connection = None;
        let Ok(mut shared) =
            tokio::time::timeout(Duration::from_millis(100), self.link.state.lock()).await
        else {
            tracing::warn!("closing the broker connection: it is being reopened; left as it is");
            return;
        };
        if let Some(live) = shared.connection.take()
            && live.connection.status().connected()
        {
            let closing = live.connection.close(200, "shutdown".into());
            match tokio::time::timeout(Duration::from_millis(400), closing).await {
                Ok(Ok(())) => tracing::info!("broker connection closed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "closing the broker connection failed"),
                Err(_) => tracing::warn!("closing the broker connection timed out"),
            }
        }
    }

    /// Takes the shared connection for this broker, opening a new one when
    /// there is none or it died or was given up. Returns whether it was
    /// there already. Brokers that find it dead together wait for each
    /// other: the first reopens it, the others take that one.
    pub(super) async fn attach(&mut self, until: Instant) -> Result<bool, PublishError> {
        let link = Arc::clone(&self.link);
        let mut shared = tokio::time::timeout_at(until.into(), link.state.lock())
            .await
            .map_err(|_| {
                PublishError::Unreachable(
                    "another invocation was still connecting at the deadline".into(),
                )
            })?;
        let existed = shared.connection.as_ref().is_some_and(|c| c.usable());
        if !existed {
            shared.connect(&self.settings, until).await?;
            link.touch();
        }
        self.connection = shared.connection.clone();
        self.blocked = shared.blocked.clone();
        Ok(existed)
    }
}

impl Shared {
    /// [`AmqpBroker::load_secret`], with the link held.
    async fn load_secret(
        &mut self,
        settings: &AmqpSettings,
        until: Instant,
    ) -> Result<(), SecretError> {
        let BrokerAddress::Secret(source) = &settings.address else {
            return Ok(());
        };
        let deadline = (Instant::now() + settings.connect_timeout).min(until);
        let system_roots = settings
            .system_roots
            .as_ref()
            .map_or(&[][..], SystemRoots::certificates);
        let uri = tokio::time::timeout_at(deadline.into(), source.fetch(system_roots))
            .await
            .map_err(|_| SecretError::Transport {
                endpoint: source.endpoint(),
                reason: "no answer within the connect timeout".into(),
            })??;
        if settings.ca.is_some() && !uri.is_tls() {
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

    /// Opens a new connection in place of the old one.
    async fn connect(
        &mut self,
        settings: &AmqpSettings,
        until: Instant,
    ) -> Result<(), PublishError> {
        self.connection = None;
        let from_secret = matches!(settings.address, BrokerAddress::Secret(_));
        if self.uri.is_none() {
            self.load_secret(settings, until)
                .await
                .map_err(secret_unavailable)?;
        }
        let first = self.try_connect(settings, until).await;
        let connection = match first {
            // The password may have been rotated since the secret was read:
            // read it once more before giving up.
            Err(Attempt::Refused(reason)) if from_secret => {
                tracing::warn!(%reason, "the broker refused the credentials; reading the secret again");
                self.load_secret(settings, until)
                    .await
                    .map_err(secret_unavailable)?;
                self.try_connect(settings, until).await
            }
            other => other,
        }
        .map_err(|e| match e {
            Attempt::Refused(reason) | Attempt::Failed(reason) => PublishError::Unreachable(reason),
            Attempt::AtLimit(reply) => {
                // One line an operator can search for, naming the limit as
                // the broker does; the batch fails now, and the next one
                // tries again (a slot may have freed).
                tracing::error!(
                    limit = %reply,
                    broker = %self.uri_text(),
                    "the broker refused the connection: its connection limit is reached; \
                     raise the limit or size the broker (docs/operations.md, connection budget)"
                );
                PublishError::ConnectionLimit(reply)
            }
        })?;
        tracing::info!(broker = %self.uri_text(), name = %settings.connection_name, "connected to the broker");
        self.blocked = watch_blocked(&connection);
        self.connection = Some(Arc::new(Live {
            connection,
            retired: AtomicBool::new(false),
            answers: AtomicU64::new(0),
        }));
        Ok(())
    }

    /// The URI for logs (password hidden).
    fn uri_text(&self) -> String {
        self.uri
            .as_ref()
            .map_or_else(|| "(secret not read)".to_string(), ToString::to_string)
    }

    async fn try_connect(
        &self,
        settings: &AmqpSettings,
        until: Instant,
    ) -> Result<Connection, Attempt> {
        let Some(uri) = self.uri.as_ref() else {
            return Err(Attempt::Failed("no broker URI".into()));
        };
        let deadline = (Instant::now() + settings.connect_timeout).min(until);
        let properties = ConnectionProperties::default()
            .with_connection_name(settings.connection_name.as_str().into());
        // Verification is never turned off: the TLS configuration can only
        // add trust roots (the system's and AMQP_CA_FILE's) to the bundled
        // webpki ones, which lapin always trusts with its
        // `rustls-webpki-roots-certs` feature.
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: extra_roots_pem(settings.system_roots.as_ref(), settings.ca.as_ref()),
        };
        match connect::open(uri.expose(), properties, tls, deadline).await {
            Err(ConnectError::TimedOut) => Err(Attempt::Failed(format!(
                "no connection to {uri} within the connect timeout"
            ))),
            Ok(connection) => Ok(connection),
            Err(ConnectError::Failed(e)) => {
                let reason = format!("{uri}: {}", describe_connect_error(&e, uri.is_tls()));
                if let Some(reply) = connection_limit(&e) {
                    Err(Attempt::AtLimit(reply))
                } else if is_access_refused(&e) {
                    Err(Attempt::Refused(reason))
                } else {
                    Err(Attempt::Failed(reason))
                }
            }
        }
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
    /// The broker refused it for a connection limit (its reply text).
    AtLimit(String),
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

/// The broker's reply when it refused the connection for a connection
/// limit. Measured: RabbitMQ 4.0.5 and 3.10.8 close the connection at
/// `connection.open` with 530 NOT_ALLOWED and "connection refused: node
/// connection limit (N) is reached" (the node's `connection_max`, 4.x only:
/// 3.10 accepts connections past it), "access to vhost 'V' refused for user
/// 'U': connection limit (N) is reached" (a vhost's `max-connections`) or
/// "connection refused for user 'U': user connection limit (N) is reached"
/// (a user's). The same code answers a vhost the user may not use, so the
/// text decides.
fn connection_limit(e: &lapin::Error) -> Option<String> {
    let ErrorKind::ProtocolError(p) = e.kind() else {
        return None;
    };
    let text = p.get_message().as_str();
    (p.get_id() == 530 && text.contains("connection limit")).then(|| text.to_owned())
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

#[cfg(test)]
mod tests {
    use std::io;

    use super::super::closes::connection_close;
    use super::*;

    /// What rustls reports through lapin's TLS stream.
    fn io_error(kind: io::ErrorKind, text: &str) -> lapin::Error {
        io::Error::new(kind, text.to_owned()).into()
    }

    #[test]
    fn a_wrong_password_is_told_apart_so_the_secret_is_read_again() {
        let refused = connection_close(
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. \
             For details see the broker logfile.",
        );
        assert!(is_access_refused(&refused));
        assert!(!is_access_refused(&connection_close(
            530,
            "NOT_ALLOWED - access to vhost 'other' refused for user 'forwarder'"
        )));
        assert!(!is_access_refused(&io_error(
            io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)"
        )));
    }

    #[test]
    fn a_connection_limit_is_told_apart_by_the_brokers_reply() {
        // The replies of RabbitMQ 4.0.5 and 3.10.8, as measured.
        for text in [
            "NOT_ALLOWED - connection refused: node connection limit (2) is reached",
            "NOT_ALLOWED - access to vhost 'ef' refused for user 'guest': connection limit (1) is reached",
            "NOT_ALLOWED - connection refused for user 'fwd': user connection limit (1) is reached",
        ] {
            assert_eq!(
                connection_limit(&connection_close(530, text)).as_deref(),
                Some(text)
            );
        }
        for other in [
            connection_close(
                530,
                "NOT_ALLOWED - access to vhost 'other' refused for user 'forwarder'",
            ),
            connection_close(403, "ACCESS_REFUSED - Login was refused"),
            io_error(
                io::ErrorKind::ConnectionRefused,
                "Connection refused (os error 111)",
            ),
        ] {
            assert_eq!(connection_limit(&other), None, "{other}");
        }
    }

    #[test]
    fn certificate_and_plain_text_port_errors_are_named_a_tls_handshake_failure() {
        for (kind, text) in [
            // An untrusted certificate.
            (
                io::ErrorKind::InvalidData,
                "invalid peer certificate: UnknownIssuer",
            ),
            // A plain-text port behind amqps://.
            (
                io::ErrorKind::InvalidData,
                "received corrupt message of type InvalidContentType",
            ),
            // A certificate error of another kind.
            (
                io::ErrorKind::Other,
                "invalid peer certificate: NotValidForName",
            ),
        ] {
            assert_eq!(
                describe_connect_error(&io_error(kind, text), true),
                format!("TLS handshake failed: IO error: {text}")
            );
        }
    }

    #[test]
    fn other_connect_errors_and_plain_amqp_are_shown_as_lapin_gives_them() {
        let refused = io_error(
            io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        assert_eq!(
            describe_connect_error(&refused, true),
            "IO error: Connection refused (os error 111)"
        );
        // Without TLS, invalid data is no handshake's fault.
        let garbled = io_error(io::ErrorKind::InvalidData, "invalid frame");
        assert_eq!(
            describe_connect_error(&garbled, false),
            "IO error: invalid frame"
        );
        let login = connection_close(403, "ACCESS_REFUSED - Login was refused");
        assert!(!describe_connect_error(&login, true).starts_with("TLS"));
        assert!(
            describe_connect_error(&login, true).contains("ACCESS_REFUSED - Login was refused")
        );
    }
}
