//! The function, invoked through the Lambda Invoke API (the deployed
//! function, or `cargo lambda watch` locally): the only way this tool
//! reaches the broker.

use std::time::Duration;

use aws_sdk_lambda::{
    error::SdkError, operation::RequestId, operation::invoke::InvokeError as ApiError,
    primitives::Blob,
};
use event_forwarder::esm::{Answer, InvokeError, Invoker, Rules};
use serde_json::Value;

/// How `redrive` and `backfill` send records through the function: in
/// order, in batches, stopping at the first batch that keeps failing.
#[derive(Debug, Clone, clap::Args)]
pub struct InOrder {
    /// Records per invocation (also bounded by the Invoke API's 6 MB).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// Retries of a failed batch before the command stops there (the
    /// records after it are not sent, so no aggregate skips an event).
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,

    /// Pause before a retry, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub retry_delay: u64,

    /// The function's timeout in seconds: no answer by then is a function
    /// error.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub function_timeout: u64,
}

impl InOrder {
    /// The mapping's rules for in-order delivery.
    pub fn rules(&self) -> Rules {
        Rules {
            batch_size: self.batch_size as usize,
            max_retries: Some(self.max_retries),
            max_record_age: None,
            stop_on_give_up: true,
            ..Rules::default()
        }
    }

    pub fn retry_delay(&self) -> Duration {
        Duration::from_millis(self.retry_delay)
    }

    /// The invoker of the clients' function, with the function's timeout.
    pub fn invoker(&self, clients: &crate::aws::Clients) -> LambdaInvoker {
        LambdaInvoker::new(
            clients.lambda.clone(),
            &clients.function_name,
            Duration::from_secs(self.function_timeout),
        )
    }
}

/// Invokes one function synchronously, with a bound on each invocation.
pub struct LambdaInvoker {
    client: aws_sdk_lambda::Client,
    function_name: String,
    timeout: Duration,
    /// The request id of the last invocation, for OnFailure messages.
    pub last_request_id: String,
}

impl LambdaInvoker {
    pub fn new(client: aws_sdk_lambda::Client, function_name: &str, timeout: Duration) -> Self {
        Self {
            client,
            function_name: function_name.to_owned(),
            timeout,
            last_request_id: String::new(),
        }
    }
}

impl Invoker for LambdaInvoker {
    async fn invoke(&mut self, event: Vec<u8>) -> Result<Answer, InvokeError> {
        let call = self
            .client
            .invoke()
            .function_name(&self.function_name)
            .payload(Blob::new(event))
            .send();
        // Lambda ends an invocation at the function's timeout, and its
        // mapping counts that as a function error.
        let Ok(result) = tokio::time::timeout(self.timeout, call).await else {
            return Ok(Answer::FunctionError {
                error: "Sandbox.Timedout".into(),
                message: format!("no answer within {:?}", self.timeout),
                status: 200,
            });
        };
        match result {
            Ok(out) => {
                self.last_request_id = out.request_id().unwrap_or_default().to_owned();
                let payload = out.payload().map(Blob::as_ref).unwrap_or_default();
                if let Some(error) = out.function_error() {
                    return Ok(Answer::FunctionError {
                        error: error.to_owned(),
                        message: error_message(payload),
                        status: u16::try_from(out.status_code()).unwrap_or(200),
                    });
                }
                let response = if payload.iter().all(u8::is_ascii_whitespace) {
                    Value::Null
                } else {
                    serde_json::from_slice(payload)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into()))
                };
                Ok(Answer::Response(response))
            }
            Err(SdkError::ServiceError(e)) => {
                let status = e.raw().status().as_u16();
                let body = e.raw().body().bytes().unwrap_or_default();
                match e.err() {
                    // Too large for one invocation: the mapping bisects it.
                    ApiError::RequestTooLargeException(_) => Ok(Answer::FunctionError {
                        error: "RequestTooLarge".into(),
                        message: e.err().to_string(),
                        status,
                    }),
                    ApiError::TooManyRequestsException(_) | ApiError::ServiceException(_) => {
                        Err(InvokeError::NotInvoked(format!("{status}: {}", e.err())))
                    }
                    // `cargo lambda watch` answers a function error with 500
                    // and the error document.
                    _ if status >= 500 => Ok(Answer::FunctionError {
                        error: error_type(body).unwrap_or_else(|| "Unhandled".into()),
                        message: error_message(body),
                        status,
                    }),
                    other => Err(InvokeError::Refused(format!(
                        "{} ({status}): {other}",
                        self.function_name
                    ))),
                }
            }
            Err(e) => Err(InvokeError::NotInvoked(
                aws_sdk_lambda::error::DisplayErrorContext(&e).to_string(),
            )),
        }
    }
}

/// The `errorMessage` of an error document (at most 1 KiB), or "".
fn error_message(body: &[u8]) -> String {
    let doc: Value = serde_json::from_slice(body).unwrap_or_default();
    let mut message = doc
        .get("errorMessage")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if message.len() > 1024 {
        let mut end = 1024;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// The `errorType` of an error document, if the body is one.
fn error_type(body: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let t = doc.get("errorType")?.as_str()?;
    // The emulator's error type is a Rust type name; keep it short.
    Some(if t.contains("::") || t.len() > 64 {
        "Unhandled".to_owned()
    } else {
        t.to_owned()
    })
}
