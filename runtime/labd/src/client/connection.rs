//! The gRPC connection to `labd`: where, with which token and CA; server errors as sentences;
//! submissions retried under the same idempotency key.

use super::Conn;
use anyhow::{anyhow, bail, Context, Result};
use protos::labwright::v1 as pb;
use std::path::PathBuf;
use tonic::transport::Channel;

/// Submits, trying again with the same idempotency key when the server could not be reached
/// or did not answer: the key makes a retry return the run a lost answer had created.
pub(super) async fn submit_with_retries(c: &Client, request: pb::SubmitRequest) -> Result<pb::SubmitResponse> {
    let (mut wait, mut attempt) = (std::time::Duration::from_millis(200), 0);
    loop {
        attempt += 1;
        match pb::runs_client::RunsClient::new(c.channel.clone()).submit(c.req(request.clone())?).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if attempt < SUBMIT_ATTEMPTS && transient(&s) => {
                eprintln!("labctl: {}; trying again in {} ms with the same key", sentence(s), wait.as_millis());
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(s) => return Err(sentence(s)),
        }
    }
}

/// Tries of a submission before labctl gives up.
const SUBMIT_ATTEMPTS: u32 = 5;

/// Whether a failed call may have failed for the network's sake alone.
fn transient(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown)
}

pub(super) fn sentence(s: tonic::Status) -> anyhow::Error {
    let what = match s.code() {
        tonic::Code::NotFound => "not found",
        tonic::Code::Unauthenticated => "not signed in",
        tonic::Code::PermissionDenied => "not allowed",
        tonic::Code::InvalidArgument => "invalid request",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::FailedPrecondition => "not possible now",
        tonic::Code::Unavailable => "server unreachable",
        _ => "server error",
    };
    anyhow!("{what}: {}", s.message())
}

pub(crate) struct Client {
    pub(crate) channel: Channel,
    token: String,
}

impl Client {
    pub(crate) async fn connect(conn: &Conn) -> Result<Client> {
        let url = conn
            .url
            .clone()
            .or_else(|| std::env::var("LABWRIGHT_URL").ok())
            .unwrap_or_else(|| "http://127.0.0.1:50051".into());
        let token = conn.token.clone().or_else(|| std::env::var("LABWRIGHT_TOKEN").ok()).ok_or_else(|| {
            anyhow!("no token: pass --token or set LABWRIGHT_TOKEN (an admin's is in labd-data/admin.token)")
        })?;
        let mut endpoint = Channel::from_shared(url.clone()).with_context(|| format!("bad server URL {url}"))?;
        if url.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            match conn.ca.clone().or_else(|| std::env::var_os("LABWRIGHT_CA").map(PathBuf::from)) {
                Some(ca) => {
                    let pem = std::fs::read_to_string(&ca)
                        .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                }
                None => bail!("an https:// server needs the CA that signed its certificate: --ca FILE or LABWRIGHT_CA"),
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| anyhow!("TLS: {e}"))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow!("cannot reach labd at {url}: {e}; is `labd serve` running?"))?;
        Ok(Client { channel, token: token.trim().to_string() })
    }

    pub(crate) fn req<T>(&self, msg: T) -> Result<tonic::Request<T>> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .map_err(|_| anyhow!("the token contains characters a header cannot carry"))?,
        );
        Ok(r)
    }
}
