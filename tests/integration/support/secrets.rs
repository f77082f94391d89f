//! A local Secrets Manager endpoint (moto's server, `scripts/moto.sh`) and
//! the calls the tests make to it to create and rotate secrets.

use std::{process::Command, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

pub const MOTO_PORT: u16 = 5677;
pub const REGION: &str = "eu-west-1";

/// Starts moto's server if it is not running.
pub fn moto() {
    let script = format!("{}/scripts/moto.sh", env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .args([&script, "start"])
        .env("MOTO_PORT", MOTO_PORT.to_string())
        .status()
        .expect("bash runs");
    assert!(status.success(), "moto_server did not start");
}

pub fn endpoint() -> String {
    format!("http://127.0.0.1:{MOTO_PORT}")
}

/// The environment a function needs to read a secret from moto.
pub fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_REGION", REGION.to_string()),
        ("AWS_ACCESS_KEY_ID", "AKIDTESTONLY".to_string()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "test-secret-access-key".to_string(),
        ),
        ("AWS_SESSION_TOKEN", "test-session-token".to_string()),
    ]
}

async fn call(target: &str, body: Value) -> Value {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    // moto does not check signatures; it takes the region from the scope.
    let request = http::Request::post(format!("{}/", endpoint()))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("secretsmanager.{target}"))
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDTESTONLY/20260101/{REGION}/secretsmanager/aws4_request, SignedHeaders=host, Signature=00"
            ),
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.expect("moto answers");
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        status.is_success(),
        "{target}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).unwrap()
}

/// Creates a secret holding `value` (as JSON text); returns its ARN.
pub async fn create_secret(name: &str, value: &Value) -> String {
    let answer = call(
        "CreateSecret",
        json!({"Name": name, "SecretString": value.to_string()}),
    )
    .await;
    answer["ARN"].as_str().expect("an ARN").to_string()
}

/// Stores a new current version of the secret (what a rotation does).
pub async fn put_secret_value(arn: &str, value: &Value) {
    call(
        "PutSecretValue",
        json!({"SecretId": arn, "SecretString": value.to_string()}),
    )
    .await;
}

/// An HTTPS front for moto: TLS with the TLS node's server certificate
/// (`localhost`, `127.0.0.1`, signed by its test CA; start the node first),
/// forwarded in plain text to moto. Returns the `https://` endpoint; it
/// serves while the test's runtime lives.
pub async fn tls_front() -> String {
    let dir = format!("{}/certs", super::tls::TLS_DIR);
    let certs = CertificateDer::pem_file_iter(format!("{dir}/server.pem"))
        .expect("the TLS node's certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates");
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/server.key")).expect("its key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("a usable certificate and key");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let port = listener.local_addr().expect("bound").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut moto) = tokio::net::TcpStream::connect(("127.0.0.1", MOTO_PORT)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut moto).await;
            });
        }
    });
    format!("https://localhost:{port}")
}
