//! The function, invoked through the Lambda Invoke API (the deployed
//! function, or `cargo lambda watch` locally): the only way this tool
//! reaches the broker.

use std::time::Duration;

use aws_sdk_lambda::{
    error::SdkError, operation::RequestId, operation::invoke::InvokeError as ApiError,
    primitives::Blob,
};
use event_forwarder::esm::{Answer, InvokeError, Invoker};
use serde_json::Value;

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
                        Err(InvokeError::Unreachable(format!("{status}: {}", e.err())))
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
            Err(e) => Err(InvokeError::Unreachable(
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
