//! A TCP proxy between the function and the broker that injects network
//! faults on command: refuse connections, blackhole them (accept, then
//! forward nothing), or sever every open connection, now or once the
//! function has sent a number of bytes (to cut a batch in the middle).

use std::sync::{
    Arc,
    atomic::{AtomicU8, AtomicU64, Ordering},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Forward = 0,
    /// New connections are closed at once (a stopped broker, a closed port).
    Refuse = 1,
    /// Bytes stop flowing both ways; sockets stay open (a partition).
    Blackhole = 2,
}

struct State {
    mode: AtomicU8,
    /// Bumped to sever every open connection.
    generation: watch::Sender<u64>,
    /// Bytes sent by clients since the last `sever_after`.
    sent: AtomicU64,
    /// Sever once `sent` reaches this (0: never), then switch to `then`.
    sever_at: AtomicU64,
    then: AtomicU8,
    mode_changed: watch::Sender<u8>,
    /// Connections numbered below this never carry a byte again.
    abandon_below: AtomicU64,
    /// Connections numbered below this lose their broker side: it is
    /// closed, and whatever the client sends is swallowed without a word.
    vanish_below: watch::Sender<u64>,
    next_id: AtomicU64,
    /// Client sockets the proxy holds open now.
    open: AtomicU64,
    /// Connections numbered below this act as a broker that has blocked
    /// them once their client sends its next bytes: those are swallowed, a
    /// `connection.blocked` goes to the client, and nothing flows again.
    block_below: AtomicU64,
    /// Bytes per second forwarded from clients to the broker (0: no limit).
    up_rate: AtomicU64,
}

/// Counts a client socket as open for as long as it lives.
struct Open(Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
}

impl Proxy {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            mode: AtomicU8::new(Mode::Forward as u8),
            generation: watch::channel(0).0,
            sent: AtomicU64::new(0),
            sever_at: AtomicU64::new(0),
            then: AtomicU8::new(Mode::Forward as u8),
            mode_changed: watch::channel(Mode::Forward as u8).0,
            abandon_below: AtomicU64::new(0),
            vanish_below: watch::channel(0).0,
            next_id: AtomicU64::new(0),
            open: AtomicU64::new(0),
            block_below: AtomicU64::new(0),
            up_rate: AtomicU64::new(0),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let state = shared.clone();
                state.open.fetch_add(1, Ordering::SeqCst);
                let open = Open(state.clone());
                tokio::spawn(async move {
                    let _open = open;
                    match mode(&state) {
                        Mode::Refuse => drop(client),
                        Mode::Blackhole => {
                            // Hold the socket until severed or closed by the
                            // client; swallow what it sends, never answer.
                            let mut gen_rx = state.generation.subscribe();
                            let mut sink = vec![0u8; 4096];
                            loop {
                                tokio::select! {
                                    _ = gen_rx.changed() => break,
                                    read = client.read(&mut sink) => {
                                        if matches!(read, Ok(0) | Err(_)) {
                                            break;
                                        }
                                    }
                                }
                            }
                            drop(client);
                        }
                        Mode::Forward => {
                            if let Ok(upstream) =
                                TcpStream::connect(("127.0.0.1", upstream_port)).await
                            {
                                pump(state, client, upstream).await;
                            }
                        }
                    }
                });
            }
        });
        Self { port, state }
    }

    /// Client sockets the proxy holds open now: one the client closed is
    /// no longer counted.
    pub fn open_clients(&self) -> u64 {
        self.state.open.load(Ordering::SeqCst)
    }

    pub fn uri(&self, query: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f{query}", self.port)
    }

    pub fn set(&self, m: Mode) {
        self.state.mode.store(m as u8, Ordering::SeqCst);
        self.state.mode_changed.send_replace(m as u8);
    }

    /// Leaves every open connection half-open for good: no byte flows and
    /// no FIN is sent, as when a peer vanishes. New connections are not
    /// affected.
    pub fn abandon(&self) {
        let below = self.state.next_id.load(Ordering::SeqCst);
        self.state.abandon_below.store(below, Ordering::SeqCst);
        self.state.mode_changed.send_modify(|_| {});
    }

    /// Closes the broker's side of every open connection, while the client
    /// side stays open and swallows what it is sent, with no answer and no
    /// FIN: what a client frozen for a while finds when the broker's close
    /// never reached it. New connections are not affected.
    pub fn vanish(&self) {
        let below = self.state.next_id.load(Ordering::SeqCst);
        self.state.vanish_below.send_replace(below);
    }

    /// Every open connection acts as a broker that blocks it (a memory
    /// alarm) as soon as its client sends again: what the client sends is
    /// not delivered, the client is told `connection.blocked`, and nothing
    /// flows either way after that. New connections are not affected.
    pub fn block_on_next_send(&self) {
        let below = self.state.next_id.load(Ordering::SeqCst);
        self.state.block_below.store(below, Ordering::SeqCst);
        self.state.mode_changed.send_modify(|_| {});
    }

    /// Forwards at most `bytes_per_sec` from clients to the broker (0: no
    /// limit), on open connections too: a slow link, or a broker that
    /// reads slowly. What clients write beyond it waits in the sockets'
    /// buffers, so whatever they send next waits behind it.
    pub fn throttle_up(&self, bytes_per_sec: u64) {
        self.state.up_rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Closes every open connection now.
    pub fn sever(&self) {
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Severs every connection once clients have sent `bytes` more bytes,
    /// then switches to `then`.
    pub fn sever_after(&self, bytes: u64, then: Mode) {
        self.state.sent.store(0, Ordering::SeqCst);
        self.state.then.store(then as u8, Ordering::SeqCst);
        self.state.sever_at.store(bytes, Ordering::SeqCst);
    }
}

fn mode(state: &State) -> Mode {
    match state.mode.load(Ordering::SeqCst) {
        1 => Mode::Refuse,
        2 => Mode::Blackhole,
        _ => Mode::Forward,
    }
}

/// `connection.blocked` ("test"), as a frame on channel 0.
const CONNECTION_BLOCKED: [u8; 17] = [
    1, 0, 0, 0, 0, 0, 9, 0, 10, 0, 60, 4, b't', b'e', b's', b't', 0xCE,
];

async fn pump(state: Arc<State>, client: TcpStream, upstream: TcpStream) {
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    // Set by the client side when a block is due: the broker side writes
    // `connection.blocked` between two frames, then forwards nothing more.
    let blocking = Arc::new(tokio::sync::Notify::new());
    let up = copy_up(state.clone(), id, blocking.clone(), &mut cr, &mut uw);
    let down = copy_down(state.clone(), id, blocking, &mut ur, &mut cw);
    let mut gen_rx = state.generation.subscribe();
    let mut vanish_rx = state.vanish_below.subscribe();
    let vanished = tokio::select! {
        _ = up => false,
        _ = down => false,
        _ = gen_rx.changed() => false,
        _ = vanish_rx.wait_for(|below| id < *below) => true,
    };
    if vanished {
        drop((ur, uw));
        let mut sink = vec![0u8; 64 * 1024];
        while let Ok(n) = cr.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        drop(cw);
    }
}

/// Client to broker, unless the connection is to be blocked: then its
/// next bytes are swallowed and the broker side is told to block it.
async fn copy_up<R, W>(
    state: Arc<State>,
    id: u64,
    blocking: Arc<tokio::sync::Notify>,
    read: &mut R,
    write: &mut W,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A tenth of a second's worth at a time under a throttle.
        let rate = state.up_rate.load(Ordering::SeqCst);
        let take = if rate == 0 {
            buf.len()
        } else {
            (rate / 10).clamp(1, buf.len() as u64) as usize
        };
        let n = match read.read(&mut buf[..take]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if rate > 0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
        if id < state.block_below.load(Ordering::SeqCst) {
            blocking.notify_one();
            // A blocked connection is not read by the broker: swallow
            // whatever the client sends until it goes away.
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
            return;
        }
        if !forward(&state, id, true, &buf[..n], write).await {
            return;
        }
    }
}

/// Broker to client, frame by frame so that a `connection.blocked` can go
/// in between two frames.
async fn copy_down<R, W>(
    state: Arc<State>,
    id: u64,
    blocking: Arc<tokio::sync::Notify>,
    read: &mut R,
    write: &mut W,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes left of the frame in progress; a frame header is 7 bytes, a
    // frame its header, payload and end byte. The protocol header the
    // broker never sends; its first frame starts the count.
    let mut frame = Frames::default();
    loop {
        let n = tokio::select! {
            read = read.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            () = blocking.notified(), if frame.at_boundary() => {
                let _ = write.write_all(&CONNECTION_BLOCKED).await;
                // Nothing flows once the broker has blocked the connection.
                std::future::pending::<()>().await;
                return;
            }
        };
        frame.advance(&buf[..n]);
        if !forward(&state, id, false, &buf[..n], write).await {
            return;
        }
    }
}

/// Where a byte stream of AMQP frames stands.
#[derive(Default)]
struct Frames {
    header: Vec<u8>,
    left: usize,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.left == 0
    }

    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let take = self.left.min(bytes.len());
                self.left -= take;
                bytes = &bytes[take..];
                continue;
            }
            let take = (7 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.header.len() == 7 {
                let size = u32::from_be_bytes([
                    self.header[3],
                    self.header[4],
                    self.header[5],
                    self.header[6],
                ]);
                self.left = size as usize + 1;
                self.header.clear();
            }
        }
    }
}

/// Writes `bytes` on, held while the proxy is a blackhole; `false` once
/// the connection is over.
async fn forward<W: AsyncWrite + Unpin>(
    state: &Arc<State>,
    id: u64,
    from_client: bool,
    bytes: &[u8],
    write: &mut W,
) -> bool {
    let mut mode_rx = state.mode_changed.subscribe();
    // In a blackhole the bytes are held, not delivered, until it ends.
    while mode(state) == Mode::Blackhole || id < state.abandon_below.load(Ordering::SeqCst) {
        if mode_rx.changed().await.is_err() {
            return false;
        }
    }
    if write.write_all(bytes).await.is_err() {
        return false;
    }
    if from_client {
        let sent = state.sent.fetch_add(bytes.len() as u64, Ordering::SeqCst) + bytes.len() as u64;
        let at = state.sever_at.load(Ordering::SeqCst);
        if at > 0 && sent >= at {
            state.sever_at.store(0, Ordering::SeqCst);
            let then = state.then.load(Ordering::SeqCst);
            state.mode.store(then, Ordering::SeqCst);
            state.mode_changed.send_replace(then);
            state.generation.send_modify(|g| *g += 1);
        }
    }
    true
}
