//! The broker credentials from AWS Secrets Manager (`AMQP_SECRET_ARN`).
//!
//! One signed `GetSecretValue` call (SigV4 with the function's own
//! credentials from the environment) over HTTPS, instead of the AWS SDK: the
//! same answer for a fraction of the binary and the cold start
//! (docs/security.md). The secret value never appears in an error or a log.

use std::{fmt, time::SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use rustls::pki_types::CertificateDer;

use crate::uri::{AmqpUri, redact_uri};

/// Why the secret could not be turned into a broker URI. Never holds the
/// secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0} is not set (needed to call Secrets Manager)")]
    MissingEnvironment(&'static str),
    #[error("{name} is invalid: {reason}")]
    InvalidEnvironment { name: &'static str, reason: String },
    #[error("signing the GetSecretValue request failed: {0}")]
    Signing(String),
    #[error("calling Secrets Manager at {endpoint} failed: {reason}")]
    Transport { endpoint: String, reason: String },
    #[error("Secrets Manager refused GetSecretValue for {arn}: HTTP {status} {kind}")]
    Refused {
        arn: String,
        status: u16,
        kind: String,
    },
    #[error("the answer of Secrets Manager is not a GetSecretValue response")]
    Response,
    #[error("secret {arn} has no SecretString (binary secrets are not supported)")]
    NotAString { arn: String },
    #[error("secret {arn} is not usable: {reason}")]
    Format { arn: String, reason: String },
}

/// Where the secret lives and how to call for it; built from the
/// environment Lambda gives every function.
#[derive(Clone)]
pub struct SecretSource {
    arn: String,
    region: String,
    endpoint: String,
    credentials: Credentials,
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSource")
            .field("arn", &self.arn)
            .field("region", &self.region)
            .field("endpoint", &redact_uri(&self.endpoint))
            .field("credentials", &"***")
            .finish()
    }
}

impl SecretSource {
    /// The region is the ARN's (else `AWS_REGION`); the endpoint is
    /// `AWS_ENDPOINT_URL_SECRETS_MANAGER`, else `AWS_ENDPOINT_URL`, else
    /// `https://secretsmanager.<region>.<the partition's domain>`
    /// (`amazonaws.com`, `amazonaws.com.cn`, ...); the credentials are
    /// the function's (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`), which Lambda sets for the life of the
    /// execution environment.
    pub fn new(arn: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SecretError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| get(name).ok_or(SecretError::MissingEnvironment(name));
        let credentials = Credentials::new(
            required("AWS_ACCESS_KEY_ID")?,
            required("AWS_SECRET_ACCESS_KEY")?,
            get("AWS_SESSION_TOKEN"),
            None,
            "environment",
        );
        let from_arn = arn
            .strip_prefix("arn:")
            .and_then(|rest| rest.split(':').nth(2))
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
        let region = from_arn
            .or_else(|| get("AWS_REGION"))
            .or_else(|| get("AWS_DEFAULT_REGION"))
            .ok_or(SecretError::MissingEnvironment("AWS_REGION"))?;
        if !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(SecretError::InvalidEnvironment {
                name: "AWS_REGION",
                reason: format!("{region:?} is not a region name"),
            });
        }
        let (endpoint, variable) = match get("AWS_ENDPOINT_URL_SECRETS_MANAGER") {
            Some(e) => (e, "AWS_ENDPOINT_URL_SECRETS_MANAGER"),
            None => match get("AWS_ENDPOINT_URL") {
                Some(e) => (e, "AWS_ENDPOINT_URL"),
                None => {
                    let domain = dns_suffix(&region);
                    (
                        format!("https://secretsmanager.{region}.{domain}"),
                        "AWS_REGION",
                    )
                }
            },
        };
        let endpoint = endpoint.trim().trim_end_matches('/').to_owned();
        // An endpoint URL could carry credentials: never show them.
        let shown = redact_uri(&endpoint);
        let invalid = |reason: String| SecretError::InvalidEnvironment {
            name: variable,
            reason,
        };
        let uri = endpoint
            .parse::<http::Uri>()
            .map_err(|_| invalid(format!("{shown:?} is not a URL")))?;
        // The answer holds the broker password: plain HTTP only to a local
        // endpoint (tests, emulators on the same host).
        let loopback = matches!(uri.host(), Some("localhost" | "127.0.0.1" | "[::1]"));
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if loopback => {}
            Some("http") => {
                return Err(invalid(format!(
                    "{shown:?} is plain HTTP; only https:// (or http:// on loopback) is allowed"
                )));
            }
            _ => return Err(invalid(format!("{shown:?} is not an https:// URL"))),
        }
        Ok(Self {
            arn: arn.to_owned(),
            region,
            endpoint,
            credentials,
        })
    }

    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// The endpoint, with any password in it hidden: for logs.
    pub fn endpoint(&self) -> String {
        redact_uri(&self.endpoint)
    }

    /// Reads the secret and turns it into a broker URI. HTTPS to the
    /// endpoint trusts the bundled webpki roots and `extra_roots` (the
    /// system's); verification is always on.
    pub async fn fetch(
        &self,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<AmqpUri, SecretError> {
        let text = self.get_secret_value(extra_roots).await?;
        parse_secret(&text).map_err(|reason| SecretError::Format {
            arn: self.arn.clone(),
            reason,
        })
    }

    /// The `GetSecretValue` request, signed (SigV4) as of `time`.
    fn signed_request(&self, time: SystemTime) -> Result<http::Request<Full<Bytes>>, SecretError> {
        let body = serde_json::json!({ "SecretId": self.arn }).to_string();
        let url = format!("{}/", self.endpoint);
        let mut request = http::Request::builder()
            .method("POST")
            .uri(&url)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", "secretsmanager.GetSecretValue")
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| SecretError::Signing(e.to_string()))?;

        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("secretsmanager")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| SecretError::Signing(e.to_string()))?
            .into();
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| SecretError::Signing(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| SecretError::Signing(e.to_string()))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);
        Ok(request)
    }

    async fn get_secret_value(
        &self,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<String, SecretError> {
        let request = self.signed_request(SystemTime::now())?;

        let transport = |reason: String| SecretError::Transport {
            endpoint: redact_uri(&self.endpoint),
            reason,
        };
        let mut http = HttpConnector::new_with_resolver(
            hyper_util::client::legacy::connect::dns::GaiResolver::new(),
        );
        // The TLS layer hands https:// URIs down to this connector; left
        // enforcing http://, it refused every real (https) endpoint.
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(extra_roots).map_err(|e| transport(e.to_string()))?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let response = client
            .request(request)
            .await
            .map_err(|e| transport(error_chain(&e)))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            // `__type` names the error (AccessDeniedException, ...); the
            // message is left out, it may quote more than we want to log.
            #[derive(Deserialize)]
            struct AwsError {
                #[serde(rename = "__type")]
                kind: Option<String>,
            }
            let kind = serde_json::from_slice::<AwsError>(&bytes)
                .ok()
                .and_then(|e| e.kind)
                .map(|k| k.rsplit('#').next().unwrap_or_default().to_owned())
                .unwrap_or_default();
            return Err(SecretError::Refused {
                arn: self.arn.clone(),
                status: status.as_u16(),
                kind,
            });
        }
        #[derive(Deserialize)]
        struct GetSecretValue {
            #[serde(rename = "SecretString")]
            secret_string: Option<String>,
        }
        let answer: GetSecretValue =
            serde_json::from_slice(&bytes).map_err(|_| SecretError::Response)?;
        answer.secret_string.ok_or_else(|| SecretError::NotAString {
            arn: self.arn.clone(),
        })
    }
}

/// The error and its sources in one line (hyper's top error says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What RFC 3986 leaves unescaped in user info and a path segment.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The secret's JSON: `{"uri": "amqps://..."}`, or the parts
/// `{"username", "password", "host"[, "port"][, "vhost"]}`, from which an
/// `amqps://` URI is built (port 5671, vhost `/`). Reasons name fields,
/// never values.
pub fn parse_secret(text: &str) -> Result<AmqpUri, String> {
    #[derive(Deserialize)]
    struct Fields {
        uri: Option<String>,
        username: Option<String>,
        password: Option<String>,
        host: Option<String>,
        port: Option<Port>,
        vhost: Option<String>,
    }
    let fields: Fields = serde_json::from_str(text)
        .map_err(|_| "not a JSON object with string fields".to_string())?;
    if let Some(uri) = fields.uri {
        return AmqpUri::parse(&uri).map_err(|e| format!("\"uri\" is invalid: {e}"));
    }
    let required = |value: Option<String>, name: &str| {
        value.filter(|v| !v.is_empty()).ok_or_else(|| {
            format!("needs \"uri\", or \"username\", \"password\" and \"host\" (no \"{name}\")")
        })
    };
    let username = required(fields.username, "username")?;
    let password = required(fields.password, "password")?;
    let host = required(fields.host, "host")?;
    let (host, host_port) = host_and_port(host)?;
    let port = port(fields.port, host_port)?;
    let vhost = fields.vhost.unwrap_or_else(|| "/".into());
    let uri = format!(
        "amqps://{}:{}@{host}:{port}/{}",
        utf8_percent_encode(&username, COMPONENT),
        utf8_percent_encode(&password, COMPONENT),
        utf8_percent_encode(&vhost, COMPONENT),
    );
    AmqpUri::parse(&uri).map_err(|_| "the parts do not make a valid AMQP URI".to_string())
}

/// A secret's `"port"`: a number, or a number written as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Port {
    Number(u64),
    Text(String),
}

/// The host name of a secret's `"host"`, and the port it names, if any.
fn host_and_port(host: String) -> Result<(String, Option<u64>), String> {
    // The Amazon MQ console shows the endpoint as
    // `amqps://b-....mq.<region>.amazonaws.com:5671`, and that is what gets
    // pasted into "host": take the host name and port out of it.
    let (host, host_port) = match host.get(..8) {
        Some(scheme) if scheme.eq_ignore_ascii_case("amqps://") => {
            let endpoint = host[8..].trim_end_matches('/');
            match endpoint.rsplit_once(':') {
                Some((name, port)) => (
                    name.to_owned(),
                    Some(
                        port.parse::<u64>()
                            .map_err(|_| "the port in \"host\" is not a number".to_string())?,
                    ),
                ),
                None => (endpoint.to_owned(), None),
            }
        }
        _ => (host, None),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
    {
        return Err("\"host\" must be a host name, an IPv4 address or an amqps:// endpoint".into());
    }
    Ok((host, host_port))
}

/// The port to use: `"port"`, else the one in `"host"`, else 5671.
fn port(field: Option<Port>, host_port: Option<u64>) -> Result<u64, String> {
    let port = match field {
        None => host_port.unwrap_or(5671),
        Some(Port::Number(n)) => n,
        Some(Port::Text(t)) => t
            .trim()
            .parse()
            .map_err(|_| "\"port\" is not a number".to_string())?,
    };
    if host_port.is_some_and(|p| p != port) {
        return Err("\"port\" and the port in \"host\" differ".into());
    }
    if !(1..=65535).contains(&port) {
        return Err("\"port\" must be from 1 to 65535".into());
    }
    Ok(port)
}

/// The domain of the AWS partition a region belongs to, from the regions'
/// prefixes in the AWS SDKs' partitions.json (botocore 1.43's copy).
fn dns_suffix(region: &str) -> &'static str {
    const PARTITIONS: [(&str, &str); 6] = [
        ("cn-", "amazonaws.com.cn"),
        ("eusc-", "amazonaws.eu"),
        ("us-isob-", "sc2s.sgov.gov"),
        ("us-isof-", "csp.hci.ic.gov"),
        ("us-iso-", "c2s.ic.gov"),
        ("eu-isoe-", "cloud.adc-e.uk"),
    ];
    PARTITIONS
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("amazonaws.com", |(_, domain)| domain)
}

/// rustls settings for the Secrets Manager call: the webpki roots (Amazon's
/// among them) plus `extra_roots`; certificates that are not usable anchors
/// were already left out of them (`SystemRoots`).
fn tls_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    roots.add_parsable_certificates(extra_roots.iter().cloned());
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn a_uri_secret_is_used_as_it_is() {
        let uri = parse_secret(r#"{"uri":"amqps://u:p@b-1.mq.eu-west-1.amazonaws.com:5671/%2f"}"#)
            .unwrap();
        assert_eq!(
            uri.expose(),
            "amqps://u:p@b-1.mq.eu-west-1.amazonaws.com:5671/%2f"
        );
    }

    #[test]
    fn parts_make_an_amqps_uri_with_port_5671_and_vhost_slash() {
        let uri = parse_secret(
            r#"{"username":"forwarder","password":"pw","host":"b-1.mq.eu-west-1.amazonaws.com"}"#,
        )
        .unwrap();
        assert_eq!(
            uri.expose(),
            "amqps://forwarder:pw@b-1.mq.eu-west-1.amazonaws.com:5671/%2F"
        );
        let parsed = lapin::uri::AMQPUri::from_str(uri.expose()).unwrap();
        assert_eq!(parsed.vhost, "/");
    }

    #[test]
    fn a_host_pasted_as_the_console_endpoint_gives_its_host_and_port() {
        let parse = |host: &str, port: &str| {
            parse_secret(&format!(
                r#"{{"username":"u","password":"pw","host":"{host}"{port}}}"#
            ))
        };
        let endpoint = "amqps://b-1.mq.eu-west-1.amazonaws.com:5671";
        for (host, port) in [(endpoint, ""), (endpoint, r#","port":5671"#)] {
            assert_eq!(
                parse(host, port).unwrap().expose(),
                "amqps://u:pw@b-1.mq.eu-west-1.amazonaws.com:5671/%2F"
            );
        }
        assert_eq!(
            parse("AMQPS://localhost:5676/", "").unwrap().expose(),
            "amqps://u:pw@localhost:5676/%2F"
        );
        assert_eq!(
            parse("amqps://localhost", "").unwrap().expose(),
            "amqps://u:pw@localhost:5671/%2F"
        );
        assert_eq!(
            parse(endpoint, r#","port":5676"#).unwrap_err(),
            "\"port\" and the port in \"host\" differ"
        );
        for bad in [
            "amqp://localhost:5672",
            "amqps://",
            "amqps://h:port",
            "amqps://u@h:5671",
        ] {
            assert!(parse(bad, "").is_err(), "{bad}");
        }
    }

    #[test]
    fn user_password_and_vhost_are_percent_encoded() {
        let uri = parse_secret(
            r#"{"username":"us@r:x","password":"p@ss:w/rd?#%é ","host":"localhost","port":"5676","vhost":"shop/prod"}"#,
        )
        .unwrap();
        let parsed = lapin::uri::AMQPUri::from_str(uri.expose()).unwrap();
        assert_eq!(parsed.authority.userinfo.username, "us@r:x");
        assert_eq!(parsed.authority.userinfo.password, "p@ss:w/rd?#%é ");
        assert_eq!(parsed.authority.host, "localhost");
        assert_eq!(parsed.authority.port, 5676);
        assert_eq!(parsed.vhost, "shop/prod");
        assert!(!uri.to_string().contains("p@ss"), "{uri}");
    }

    #[test]
    fn unusable_secrets_name_the_field_and_never_the_value() {
        for (text, expected) in [
            ("hunter2", "not a JSON object"),
            (r#"{"username":"u","host":"h"}"#, "no \"password\""),
            (r#"{"username":"u","password":"hunter2"}"#, "no \"host\""),
            (r#"{"uri":"http://u:hunter2@h"}"#, "\"uri\" is invalid"),
            (
                r#"{"username":"u","password":"hunter2","host":"h/x"}"#,
                "\"host\"",
            ),
            (
                r#"{"username":"u","password":"hunter2","host":"h","port":70000}"#,
                "\"port\"",
            ),
            (
                r#"{"username":"u","password":"hunter2","host":"h","port":"x"}"#,
                "\"port\"",
            ),
        ] {
            let err = parse_secret(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn the_default_endpoint_is_in_the_regions_partition() {
        let keys = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => Some("x".to_string()),
            _ => None,
        };
        // The partitions' DNS suffixes as botocore 1.43's partitions.json
        // gives them.
        for (partition, region, endpoint) in [
            (
                "aws",
                "us-east-1",
                "https://secretsmanager.us-east-1.amazonaws.com",
            ),
            (
                "aws-us-gov",
                "us-gov-west-1",
                "https://secretsmanager.us-gov-west-1.amazonaws.com",
            ),
            (
                "aws-cn",
                "cn-north-1",
                "https://secretsmanager.cn-north-1.amazonaws.com.cn",
            ),
            (
                "aws-eusc",
                "eusc-de-east-1",
                "https://secretsmanager.eusc-de-east-1.amazonaws.eu",
            ),
            (
                "aws-iso",
                "us-iso-east-1",
                "https://secretsmanager.us-iso-east-1.c2s.ic.gov",
            ),
            (
                "aws-iso-b",
                "us-isob-east-1",
                "https://secretsmanager.us-isob-east-1.sc2s.sgov.gov",
            ),
            (
                "aws-iso-e",
                "eu-isoe-west-1",
                "https://secretsmanager.eu-isoe-west-1.cloud.adc-e.uk",
            ),
            (
                "aws-iso-f",
                "us-isof-south-1",
                "https://secretsmanager.us-isof-south-1.csp.hci.ic.gov",
            ),
        ] {
            let arn = format!("arn:{partition}:secretsmanager:{region}:123456789012:secret:mq");
            let s = SecretSource::new(&arn, keys).unwrap();
            assert_eq!(s.endpoint, endpoint, "{arn}");
        }
    }

    #[test]
    fn the_region_comes_from_the_arn_and_the_endpoint_can_be_overridden() {
        let arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:mq-AbCdEf";
        let keys = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIDEXAMPLE".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("wJalrXUtnFEMI".to_string()),
            _ => None,
        };
        let none = keys;
        let err = SecretSource::new(arn, |_: &str| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "AWS_ACCESS_KEY_ID is not set (needed to call Secrets Manager)"
        );
        let s = SecretSource::new(arn, none).unwrap();
        assert_eq!(s.region, "eu-central-1");
        assert_eq!(
            s.endpoint,
            "https://secretsmanager.eu-central-1.amazonaws.com"
        );
        assert!(!format!("{s:?}").contains("wJalrXUtnFEMI"));
        let s = SecretSource::new(arn, |k| {
            (k == "AWS_ENDPOINT_URL")
                .then(|| "http://127.0.0.1:4566/".to_string())
                .or_else(|| keys(k))
        })
        .unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:4566");
        let s = SecretSource::new(arn, |k| match k {
            "AWS_ENDPOINT_URL" => Some("https://generic".to_string()),
            "AWS_ENDPOINT_URL_SECRETS_MANAGER" => Some("https://specific".to_string()),
            k => keys(k),
        })
        .unwrap();
        assert_eq!(s.endpoint, "https://specific");
        let err = SecretSource::new("mq-credentials", none).unwrap_err();
        assert!(err.to_string().contains("AWS_REGION"), "{err}");
        let err = SecretSource::new(arn, |k| {
            (k == "AWS_ENDPOINT_URL")
                .then(|| "ftp://x".to_string())
                .or_else(|| keys(k))
        })
        .unwrap_err();
        assert!(
            err.to_string().starts_with("AWS_ENDPOINT_URL is invalid"),
            "{err}"
        );
        let err = SecretSource::new(arn, |k| {
            (k == "AWS_ENDPOINT_URL_SECRETS_MANAGER")
                .then(|| "http://secrets.internal:4566".to_string())
                .or_else(|| keys(k))
        })
        .unwrap_err();
        assert!(err.to_string().contains("plain HTTP"), "{err}");
    }
    /// The signature is what AWS computes: a known answer from botocore
    /// 1.43 (`SigV4Auth(Credentials(...), "secretsmanager", "eu-west-1")`
    /// on the same request at the same time), since moto, which the other
    /// tests call, does not check signatures.
    #[test]
    fn the_request_is_signed_as_botocore_signs_it() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:broker-AbCdEf";
        let source = SecretSource::new(arn, |k| {
            match k {
                "AWS_ACCESS_KEY_ID" => Some("AKIDEXAMPLE"),
                "AWS_SECRET_ACCESS_KEY" => Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                "AWS_SESSION_TOKEN" => Some("session/token+example="),
                _ => None,
            }
            .map(str::to_owned)
        })
        .unwrap();
        // 2026-11-23T12:00:00Z
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_435_200);
        let request = source.signed_request(time).unwrap();
        assert_eq!(
            request.uri().to_string(),
            "https://secretsmanager.eu-west-1.amazonaws.com/"
        );
        let header = |name: &str| request.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("x-amz-date"), "20261123T120000Z");
        assert_eq!(header("x-amz-security-token"), "session/token+example=");
        assert_eq!(
            header("authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261123/eu-west-1/secretsmanager/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
             Signature=e8c0199f67d05845a02e3fb6ffb94e44b9e7bad39f3604d16bc6e511d02688bd"
        );
    }
}
