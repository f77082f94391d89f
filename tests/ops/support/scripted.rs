//! A function scripted behind the Lambda Invoke API, so the tool's event
//! source mapping is seen apart from our own function: it answers each
//! invocation as the test's script says (a response such as `[]` or a
//! partial batch response, a thrown error with `X-Amz-Function-Error:
//! Unhandled`, an Invoke API error such as a 429, or any of these late) and
//! keeps what it was sent and how many invocations were in flight at once.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// How the function answers one invocation.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The function returns this.
    Json(Value),
    /// The function throws (Lambda: 200, `X-Amz-Function-Error: Unhandled`).
    Thrown(&'static str),
    /// The Invoke API refuses or fails the call: HTTP status and error code
    /// (`x-amzn-ErrorType`); the function does not run.
    ApiError(u16, &'static str),
    /// One of the above, after a while.
    Late(Duration, Box<Reply>),
}

/// One invocation as the function saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// 0 for the first invocation.
    pub n: usize,
    pub event: Value,
}

impl Call {
    pub fn records(&self) -> &[Value] {
        self.event["Records"].as_array().map_or(&[], Vec::as_slice)
    }

    /// The `version` attribute of its records' new images.
    pub fn versions(&self) -> Vec<u64> {
        self.records()
            .iter()
            .filter_map(|r| {
                r["dynamodb"]["NewImage"]["version"]["N"]
                    .as_str()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// `{"batchItemFailures": [{"itemIdentifier": <the record of version v>}]}`,
    /// or `[]` when the call does not carry it.
    pub fn report_version(&self, v: u64) -> Reply {
        let failures: Vec<Value> = self
            .records()
            .iter()
            .filter(|r| r["dynamodb"]["NewImage"]["version"]["N"] == json!(v.to_string()))
            .map(|r| json!({"itemIdentifier": r["dynamodb"]["SequenceNumber"]}))
            .collect();
        Reply::Json(json!({ "batchItemFailures": failures }))
    }
}

type Script = Box<dyn Fn(&Call) -> Reply + Send + Sync>;

struct State {
    script: Script,
    arn: Option<String>,
    calls: Mutex<Vec<Call>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

/// The scripted function; stops with the test.
pub struct ScriptedFunction {
    pub port: u16,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedFunction {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ScriptedFunction {
    /// Starts it; `arn` is what GetFunctionConfiguration answers (none: a
    /// 404, as from an emulator without that API).
    pub async fn start(
        arn: Option<&str>,
        script: impl Fn(&Call) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            script: Box::new(script),
            arn: arn.map(str::to_owned),
            calls: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(state.clone(), req));
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

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every invocation so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// How many invocations carried the record of `version`.
    pub fn carrying(&self, version: u64) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.versions().contains(&version))
            .count()
    }

    /// The most invocations that were in flight at once.
    pub fn most_in_flight(&self) -> usize {
        self.state.most_in_flight.load(Ordering::SeqCst)
    }
}

fn respond(status: u16, headers: &[(&str, &str)], body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        response = response.header(*k, *v);
    }
    response
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if path.ends_with("/configuration") {
        return Ok(match &state.arn {
            Some(arn) => respond(
                200,
                &[],
                json!({"FunctionName": "scripted", "FunctionArn": arn}),
            ),
            None => respond(
                404,
                &[("x-amzn-ErrorType", "ResourceNotFoundException")],
                json!({"Type": "User", "message": "Function not found"}),
            ),
        });
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.most_in_flight.fetch_max(now, Ordering::SeqCst);
    let mut reply = {
        let mut calls = state.calls.lock().unwrap();
        let call = Call {
            n: calls.len(),
            event,
        };
        let reply = (state.script)(&call);
        calls.push(call);
        reply
    };
    while let Reply::Late(after, then) = reply {
        tokio::time::sleep(after).await;
        reply = *then;
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let request_id = format!("req-{now}-{}", state.calls.lock().unwrap().len());
    let id = ("x-amzn-RequestId", request_id.as_str());
    let version = ("X-Amz-Executed-Version", "$LATEST");
    Ok(match reply {
        Reply::Json(v) => respond(200, &[id, version], v),
        Reply::Thrown(message) => respond(
            200,
            &[id, version, ("X-Amz-Function-Error", "Unhandled")],
            json!({"errorType": "Exception", "errorMessage": message}),
        ),
        Reply::ApiError(status, code) => respond(
            status,
            &[id, ("x-amzn-ErrorType", code)],
            json!({"Type": "User", "message": code}),
        ),
        Reply::Late(..) => unreachable!("taken apart above"),
    })
}
