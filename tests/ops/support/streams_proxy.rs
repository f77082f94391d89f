//! An HTTP endpoint in front of moto that makes DynamoDB Streams behave as
//! AWS's does where moto does not: shard iterators that expire a while
//! after they were issued (AWS: 15 minutes; moto: never), empty GetRecords
//! pages before the records (AWS: "it might take multiple calls"), a
//! position that is trimmed (TrimmedDataAccessException), and records older
//! than they are (their ApproximateCreationDateTime moved back). Everything
//! else goes to moto as it came.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{client::legacy::Client, rt::TokioExecutor, rt::TokioIo};
use serde_json::{Value, json};

#[derive(Default)]
struct Faults {
    /// Iterators older than this answer ExpiredIteratorException.
    expire_after: Option<Duration>,
    /// GetShardIterator at this sequence number answers
    /// TrimmedDataAccessException.
    trimmed_at: Option<String>,
    /// Records come this many seconds old.
    age: Option<f64>,
}

struct State {
    upstream: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    faults: Mutex<Faults>,
    /// When each iterator was handed out.
    issued: Mutex<HashMap<String, Instant>>,
    empty_pages: AtomicUsize,
    expired: AtomicUsize,
}

/// The endpoint; give its URL to the tool as `--endpoint-url`.
pub struct StreamsProxy {
    pub port: u16,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for StreamsProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl StreamsProxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            faults: Mutex::default(),
            issued: Mutex::default(),
            empty_pages: AtomicUsize::new(0),
            expired: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| forward(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            port,
            state,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn expire_iterators_after(&self, age: Duration) {
        self.state.faults.lock().unwrap().expire_after = Some(age);
    }

    pub fn empty_pages(&self, n: usize) {
        self.state.empty_pages.store(n, Ordering::SeqCst);
    }

    pub fn trim_at(&self, seq: &str) {
        self.state.faults.lock().unwrap().trimmed_at = Some(seq.to_owned());
    }

    /// Records read from now on are `seconds` old when they are read.
    pub fn records_aged(&self, seconds: f64) {
        self.state.faults.lock().unwrap().age = Some(seconds);
    }

    /// How many GetRecords calls were answered ExpiredIteratorException.
    pub fn expired(&self) -> usize {
        self.state.expired.load(Ordering::SeqCst)
    }
}

fn error(kind: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"),
        "message": message,
    });
    Response::builder()
        .status(400)
        .header("content-type", "application/x-amz-json-1.0")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn json_response(body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(200)
        .header("content-type", "application/x-amz-json-1.0")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn forward(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if target.ends_with(".GetRecords") {
        let iterator = request["ShardIterator"].as_str().unwrap_or_default();
        let expire_after = state.faults.lock().unwrap().expire_after;
        let issued = state.issued.lock().unwrap().get(iterator).copied();
        if let (Some(age), Some(at)) = (expire_after, issued) {
            if at.elapsed() > age {
                state.expired.fetch_add(1, Ordering::SeqCst);
                return Ok(error("ExpiredIteratorException", "Iterator expired"));
            }
        }
        let empty = state
            .empty_pages
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if empty {
            state
                .issued
                .lock()
                .unwrap()
                .insert(iterator.to_owned(), Instant::now());
            return Ok(json_response(
                &json!({"Records": [], "NextShardIterator": iterator}),
            ));
        }
    }
    if target.ends_with(".GetShardIterator") {
        let trimmed = state.faults.lock().unwrap().trimmed_at.clone();
        if trimmed.is_some() && request["SequenceNumber"].as_str() == trimmed.as_deref() {
            return Ok(error(
                "TrimmedDataAccessException",
                "the position is beyond the trim horizon",
            ));
        }
    }
    let uri = format!(
        "{}{}",
        state.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = Request::builder().method(parts.method).uri(uri);
    for (k, v) in &parts.headers {
        if k != "host" {
            upstream = upstream.header(k, v);
        }
    }
    let upstream = upstream.body(Full::new(body)).unwrap();
    let Ok(answer) = state.client.request(upstream).await else {
        return Ok(Response::builder()
            .status(502)
            .body(Full::new(Bytes::new()))
            .unwrap());
    };
    let (parts, body) = answer.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !(target.ends_with(".GetRecords") || target.ends_with(".GetShardIterator"))
        || !parts.status.is_success()
    {
        return Ok(Response::from_parts(parts, Full::new(body)));
    }
    let mut answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    for key in ["ShardIterator", "NextShardIterator"] {
        if let Some(it) = answer[key].as_str() {
            state
                .issued
                .lock()
                .unwrap()
                .insert(it.to_owned(), Instant::now());
        }
    }
    if let (Some(age), Some(records)) = (
        state.faults.lock().unwrap().age,
        answer["Records"].as_array_mut(),
    ) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        for r in records {
            r["dynamodb"]["ApproximateCreationDateTime"] = json!(now - age);
        }
    }
    let mut response = json_response(&answer);
    *response.status_mut() = parts.status;
    Ok(response)
}
