//! Opening one AMQP connection within a deadline, and leaving nothing
//! behind when the attempt is given up.
//!
//! lapin drives a connection from a thread of its own from the first byte,
//! and the connection lives there until its handshake ends. A handshake
//! that never ends (a load balancer that accepted the TCP connection and has
//! no node to give it, a broker that never answers) kept its socket open
//! after the attempt timed out: with the next attempt, a second connection
//! of one execution environment, held until the peer gave up on it (350 s
//! behind Amazon MQ's load balancer). So the socket is made here, a second
//! handle to it is kept, and an attempt given up is shut through it: lapin's
//! thread sees the socket closed and ends.

use std::{
    net::Shutdown,
    os::fd::AsFd,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use async_rs::Runtime;
use lapin::{
    AsyncTcpStream, Connection, ConnectionProperties,
    tcp::OwnedTLSConfig,
    uri::{AMQPScheme, AMQPUri},
};

/// Why an attempt did not give a connection.
#[derive(Debug)]
pub(super) enum ConnectError {
    /// The deadline came first; the attempt's socket was shut.
    TimedOut,
    /// The broker or the network said no.
    Failed(lapin::Error),
}

/// The socket of one attempt, as long as the attempt may still be given up.
#[derive(Clone, Default)]
struct Attempt(Arc<Mutex<Held>>);

#[derive(Default)]
struct Held {
    socket: Option<std::net::TcpStream>,
    given_up: bool,
}

impl Attempt {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps a second handle to the attempt's socket; `false` when the
    /// attempt was given up while the socket was being made.
    fn keep(&self, socket: &tokio::net::TcpStream) -> bool {
        let mut held = self.held();
        if held.given_up {
            return false;
        }
        held.socket = socket
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(std::net::TcpStream::from);
        true
    }

    /// Gives the attempt up: its socket is shut both ways (whoever holds it
    /// then reads its end), and a socket still being made is refused.
    fn give_up(&self) {
        let mut held = self.held();
        held.given_up = true;
        if let Some(socket) = held.socket.take() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// The connection is made: only lapin holds its socket from now on.
    fn succeeded(&self) {
        self.held().socket = None;
    }
}

/// Connects to `uri` (TLS for `amqps://`, verified with `tls`'s extra
/// roots) and completes the AMQP handshake by `deadline`, or shuts what the
/// attempt opened.
pub(super) async fn open(
    uri: &str,
    properties: ConnectionProperties,
    tls: OwnedTLSConfig,
    deadline: Instant,
) -> Result<Connection, ConnectError> {
    let uri: AMQPUri = uri
        .parse()
        .map_err(|e: String| ConnectError::Failed(std::io::Error::other(e).into()))?;
    let runtime = lapin::runtime::default_runtime().map_err(ConnectError::Failed)?;
    let attempt = Attempt::default();
    let held = attempt.clone();
    // What lapin's own connector does (resolve, connect with TCP_NODELAY,
    // TLS for amqps), with the socket kept by the attempt.
    let connect = async move |uri: AMQPUri, runtime: Runtime<async_rs::Tokio>| {
        let host = uri.authority.host.clone();
        let addresses = runtime.to_socket_addrs((host.clone(), uri.authority.port));
        let stream = AsyncTcpStream::connect(&runtime, addresses).await?;
        let kept = match &stream {
            AsyncTcpStream::Plain(socket) => held.keep(socket.get_ref()),
            _ => true,
        };
        if !kept {
            return Err(std::io::Error::other("the connect attempt was given up").into());
        }
        Ok(match uri.scheme {
            AMQPScheme::AMQP => stream,
            AMQPScheme::AMQPS => stream.into_tls(&host, tls.as_ref()).await?,
        })
    };
    let connecting = Connection::connector(uri, runtime, connect, properties);
    match tokio::time::timeout_at(deadline.into(), connecting).await {
        Ok(Ok(connection)) => {
            attempt.succeeded();
            Ok(connection)
        }
        Ok(Err(e)) => {
            attempt.give_up();
            Err(ConnectError::Failed(e))
        }
        Err(_) => {
            attempt.give_up();
            Err(ConnectError::TimedOut)
        }
    }
}
