//! The function, invoked through the Lambda Invoke API (the deployed
//! function, or `cargo lambda watch` locally): the only way this tool
//! reaches the broker. Invocations are synchronous, as the mapping's are:
//! the answer is awaited (up to the function's timeout plus its init), and
//! the Invoke API's errors are sorted as Lambda's mapping sorts them.

use std::time::Duration;

use aws_sdk_lambda::{
    error::{ProvideErrorMetadata, SdkError},
    operation::RequestId,
    primitives::Blob,
};
use event_forwarder::esm::{Answer, InvokeError, Invoker, Rules};
use serde_json::Value;

/// Lambda's limit on a function's init phase: a cold invocation's round
/// trip can take this much longer than the function's timeout.
pub const INIT_LIMIT: Duration = Duration::from_secs(10);

/// Slack on top of timeout and init for the network and the service.
const MARGIN: Duration = Duration::from_secs(5);

/// How long an invocation is awaited: Lambda ends the function at its
/// timeout, which does not include init, so nothing shorter than timeout
/// plus init is safe to cut off; cutting off earlier would retry a batch
/// while the first call is still publishing it.
pub fn answer_within(function_timeout: Duration) -> Duration {
    function_timeout + INIT_LIMIT + MARGIN
}

/// How `redrive` and `backfill` send records through the function: in
/// order, in batches, stopping at the first batch that keeps failing.
#[derive(Debug, Clone, clap::Args)]
pub struct InOrder {
    /// Records per invocation (also bounded by the Invoke API's 6 MB).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// Retries of a batch the function ran and failed (a function error,
    /// a reported record) before the command stops there, with its summary
    /// (the records after it are not sent, so no aggregate skips an event).
    /// Splitting a batch after a function error is not a retry; neither is
    /// a call that never reached the function: --not-invoked-limit bounds
    /// those.
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,

    /// How long the function may stay out of reach (throttled, the Invoke
    /// API's 5xx, the endpoint unreachable: calls Lambda does not count as
    /// attempts) before the command stops there, with its summary, in
    /// seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub not_invoked_limit: u64,

    /// Pause before a retry, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub retry_delay: u64,

    /// The function's Timeout in seconds (template.yaml's). An invocation
    /// is awaited for this plus Lambda's 10 s init limit plus 5 s; still
    /// unanswered then, it counts as a timed-out function error.
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

    /// `--not-invoked-limit`, for [`event_forwarder::esm::Pace`].
    pub fn not_invoked_limit(&self) -> Option<Duration> {
        Some(Duration::from_secs(self.not_invoked_limit))
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

/// Invokes one function synchronously.
#[derive(Clone)]
pub struct LambdaInvoker {
    client: aws_sdk_lambda::Client,
    function_name: String,
    wait: Duration,
    request_id: String,
    executed_version: String,
}

impl LambdaInvoker {
    pub fn new(
        client: aws_sdk_lambda::Client,
        function_name: &str,
        function_timeout: Duration,
    ) -> Self {
        Self {
            client,
            function_name: function_name.to_owned(),
            wait: answer_within(function_timeout),
            request_id: String::new(),
            executed_version: "$LATEST".to_owned(),
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
        let Ok(result) = tokio::time::timeout(self.wait, call).await else {
            // Lambda has ended the function by now: a timeout, which the
            // mapping reports as "Unhandled".
            return Ok(Answer::FunctionError {
                error: "Unhandled".into(),
                message: format!("no answer within {:?}: taken as timed out", self.wait),
                status: 200,
            });
        };
        match result {
            Ok(out) => {
                self.request_id = out.request_id().unwrap_or_default().to_owned();
                self.executed_version = out.executed_version().unwrap_or("$LATEST").to_owned();
                let payload = out.payload().map(Blob::as_ref).unwrap_or_default();
                if let Some(error) = out.function_error() {
                    return Ok(Answer::FunctionError {
                        error: if error.is_empty() { "Unhandled" } else { error }.to_owned(),
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
                let what = format!(
                    "{} ({status} {}): {}",
                    self.function_name,
                    e.err().code().unwrap_or("no error code"),
                    e.err().message().unwrap_or_default()
                );
                sort_error(status, e.err().code(), body, what)
            }
            Err(e) => Err(InvokeError::NotInvoked(
                aws_sdk_lambda::error::DisplayErrorContext(&e).to_string(),
            )),
        }
    }

    fn last_request(&self) -> (&str, &str) {
        (&self.request_id, &self.executed_version)
    }
}

/// An Invoke API error as the mapping sees it
/// (<https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html>,
/// "Errors"; <https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html>:
/// records Lambda could not invoke the function with are retried until they
/// expire or pass the maximum age).
fn sort_error(
    status: u16,
    code: Option<&str>,
    body: &[u8],
    what: String,
) -> Result<Answer, InvokeError> {
    const NOT_RUN: [&str; 4] = [
        "TooManyRequestsException",
        "ResourceConflictException",
        "ServiceException",
        "ResourceNotReadyException",
    ];
    const NOT_RUN_PREFIXES: [&str; 9] = [
        "EC2",
        "ENI",
        "EFS",
        "KMS",
        "Subnet",
        "SnapStart",
        "InvalidSubnet",
        "InvalidSecurityGroup",
        "InvalidRuntime",
    ];
    match code {
        // Too large for one invocation: the mapping splits the batch.
        Some("RequestTooLargeException") => Ok(Answer::FunctionError {
            error: "Unhandled".into(),
            message: what,
            status,
        }),
        Some(c) if NOT_RUN.contains(&c) || NOT_RUN_PREFIXES.iter().any(|p| c.starts_with(p)) => {
            Err(InvokeError::NotInvoked(what))
        }
        _ if status == 429 || status == 409 => Err(InvokeError::NotInvoked(what)),
        // `cargo lambda watch` answers a function error with 500 and the
        // function's error document, not an AWS error code.
        None if status >= 500 && error_type(body).is_some() => Ok(Answer::FunctionError {
            error: "Unhandled".into(),
            message: error_message(body),
            status,
        }),
        _ if status >= 500 => Err(InvokeError::NotInvoked(what)),
        _ => Err(InvokeError::Refused(what)),
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
    Some(doc.get("errorType")?.as_str()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(status: u16, code: Option<&str>, body: &str) -> Result<Answer, InvokeError> {
        sort_error(status, code, body.as_bytes(), "f".into())
    }

    #[test]
    fn errors_where_the_function_did_not_run_are_retried_like_throttles() {
        for (status, code) in [
            (429, "TooManyRequestsException"),
            (409, "ResourceConflictException"),
            (500, "ServiceException"),
            (502, "ResourceNotReadyException"),
            (502, "ENILimitReachedException"),
            (502, "EC2ThrottledException"),
            (502, "KMSAccessDeniedException"),
            (502, "SubnetIPAddressLimitReachedException"),
            (503, "SomethingNewException"),
        ] {
            assert!(
                matches!(
                    sorted(status, Some(code), ""),
                    Err(InvokeError::NotInvoked(_))
                ),
                "{code}"
            );
        }
    }

    #[test]
    fn errors_retrying_cannot_fix_stop_the_delivery() {
        for (status, code) in [
            (404, "ResourceNotFoundException"),
            (403, "AccessDeniedException"),
            (400, "InvalidParameterValueException"),
        ] {
            assert!(
                matches!(sorted(status, Some(code), ""), Err(InvokeError::Refused(_))),
                "{code}"
            );
        }
    }

    #[test]
    fn a_too_large_request_and_the_emulators_error_document_are_function_errors() {
        let Ok(Answer::FunctionError { error, .. }) =
            sorted(413, Some("RequestTooLargeException"), "")
        else {
            panic!("a function error: the batch is split");
        };
        assert_eq!(error, "Unhandled");
        let doc = r#"{"errorType": "&alloc::string::String", "errorMessage": "boom"}"#;
        let Ok(Answer::FunctionError { error, message, .. }) = sorted(500, None, doc) else {
            panic!("a function error");
        };
        assert_eq!((error.as_str(), message.as_str()), ("Unhandled", "boom"));
    }

    #[test]
    fn an_invocation_is_awaited_past_the_timeout_for_the_init_and_a_margin() {
        assert_eq!(
            answer_within(Duration::from_secs(30)),
            Duration::from_secs(45)
        );
        assert!(answer_within(Duration::from_secs(1)) > Duration::from_secs(1) + INIT_LIMIT);
    }
}
