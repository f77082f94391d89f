//! A minimal Lambda Runtime API (and the Extensions API registration the
//! graceful-shutdown helper needs), so tests can run the real binary with
//! deadlines they choose and invoke it without a process per call. Like
//! Lambda Managed Instances, it answers several `next` requests at once,
//! each with its own invocation, and counts how many were in flight.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// What an invocation ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Response(Value),
    /// The function reported an error (invocation or init error).
    Error(Value),
}

struct Pending {
    id: String,
    deadline_ms: u64,
    /// The body of `next`: normally JSON, raw bytes for hostile-input tests.
    event: Vec<u8>,
}

struct Inner {
    queue_tx: mpsc::UnboundedSender<Pending>,
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    next_id: AtomicU64,
    init_error: Mutex<Option<Value>>,
    /// When the function first asked for an invocation: the end of its init.
    first_poll: Mutex<Option<std::time::Instant>>,
    /// Whether the Extensions API is served (some emulators lack it).
    extensions: bool,
    /// The X-Ray trace header of the invocations.
    trace_id: Mutex<String>,
    /// Invocations handed out and not answered yet, and the most at once:
    /// on Lambda Managed Instances the runtime polls `next` again while
    /// invocations are in flight, and gets the next event at once.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// The emulator; dropped with the test.
#[derive(Clone)]
pub struct RuntimeApi {
    port: u16,
    inner: Arc<Inner>,
}

impl RuntimeApi {
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// Without the Extensions API, as some emulators.
    pub async fn without_extensions() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(extensions: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            init_error: Mutex::new(None),
            first_poll: Mutex::new(None),
            extensions,
            trace_id: Mutex::new("Root=1-0-0;Sampled=0".into()),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        });
        let server = inner.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let inner = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| route(inner.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { port, inner }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Invokes the function with `timeout` as its deadline and waits for its
    /// answer, for at most `timeout` plus a grace second (Lambda would kill it
    /// then); `None` means it never answered.
    pub async fn invoke(&self, event: &Value, timeout: Duration) -> Option<Outcome> {
        let body = serde_json::to_vec(event).expect("a JSON event");
        self.invoke_raw(body, timeout).await
    }

    /// Invokes with `body` as it is, JSON or not.
    pub async fn invoke_raw(&self, body: Vec<u8>, timeout: Duration) -> Option<Outcome> {
        let id = format!("req-{}", self.inner.next_id.fetch_add(1, Ordering::SeqCst));
        let deadline = SystemTime::now() + timeout;
        let deadline_ms = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let (tx, rx) = oneshot::channel();
        self.inner.waiting.lock().unwrap().insert(id.clone(), tx);
        self.inner
            .queue_tx
            .send(Pending {
                id,
                deadline_ms,
                event: body,
            })
            .unwrap();
        tokio::time::timeout(timeout + Duration::from_secs(1), rx)
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// The `Lambda-Runtime-Trace-Id` of the next invocations.
    pub fn set_trace_id(&self, header: &str) {
        *self.inner.trace_id.lock().unwrap() = header.to_owned();
    }

    /// When the function first polled for an invocation, if it has.
    pub fn first_poll(&self) -> Option<std::time::Instant> {
        *self.inner.first_poll.lock().unwrap()
    }

    /// The most invocations the function had in flight at once.
    pub fn max_in_flight(&self) -> u64 {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn init_error(&self) -> Option<Value> {
        self.inner.init_error.lock().unwrap().clone()
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn route(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = || serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let response = match (method.as_str(), parts.as_slice()) {
        ("GET", ["2018-06-01", "runtime", "invocation", "next"]) => {
            inner
                .first_poll
                .lock()
                .unwrap()
                .get_or_insert_with(std::time::Instant::now);
            let next = inner.queue_rx.lock().await.recv().await;
            match next {
                Some(p) => {
                    let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    let mut r = reply(StatusCode::OK, p.event.clone());
                    let h = r.headers_mut();
                    h.insert("lambda-runtime-aws-request-id", p.id.parse().unwrap());
                    h.insert(
                        "lambda-runtime-deadline-ms",
                        p.deadline_ms.to_string().parse().unwrap(),
                    );
                    h.insert(
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:eu-west-1:123456789012:function:test"
                            .parse()
                            .unwrap(),
                    );
                    let trace_id = inner.trace_id.lock().unwrap().clone();
                    h.insert("lambda-runtime-trace-id", trace_id.parse().unwrap());
                    r
                }
                None => reply(StatusCode::INTERNAL_SERVER_ERROR, ""),
            }
        }
        ("POST", ["2018-06-01", "runtime", "invocation", id, kind]) => {
            let outcome = if *kind == "response" {
                Outcome::Response(json())
            } else {
                Outcome::Error(json())
            };
            if let Some(tx) = inner.waiting.lock().unwrap().remove(*id) {
                inner.in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = tx.send(outcome);
            }
            reply(StatusCode::ACCEPTED, "")
        }
        ("POST", ["2018-06-01", "runtime", "init", "error"]) => {
            *inner.init_error.lock().unwrap() = Some(json());
            reply(StatusCode::ACCEPTED, "")
        }
        ("POST", ["2020-01-01", "extension", _]) | ("GET", ["2020-01-01", "extension", ..])
            if !inner.extensions =>
        {
            reply(StatusCode::NOT_FOUND, "")
        }
        ("POST", ["2020-01-01", "extension", "register"]) => {
            let mut r = reply(
                StatusCode::OK,
                r#"{"functionName":"test","functionVersion":"1","handler":"bootstrap"}"#,
            );
            r.headers_mut()
                .insert("lambda-extension-identifier", "ext-1".parse().unwrap());
            r
        }
        ("GET", ["2020-01-01", "extension", "event", "next"]) => {
            // No events are subscribed to: the call waits until the end.
            std::future::pending::<()>().await;
            reply(StatusCode::OK, "")
        }
        _ => reply(StatusCode::NOT_FOUND, ""),
    };
    Ok(response)
}
