//! The tenant side of attestation, used by `wardctl`: fetch evidence over TLS with a fresh
//! nonce, bind it to the TLS key actually seen, and verify it with the same pure verifier a
//! tenant embeds.

use std::path::Path;

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use warden_attest::binding::{purpose, FreshNonce, Nonce};
use warden_attest::evidence::{Evidence, MAX_EVIDENCE_BYTES};
use warden_attest::reference::ReferenceValues;
use warden_attest::tpm2::ClockInfo;
use warden_attest::verify::{self, Expected, Rejected, Verified};

use crate::tls;
use crate::wire::{AttestationRequest, ErrorBody, Identity};

/// Largest non-evidence response wardctl reads.
const MAX_RESPONSE: usize = 1024 * 1024;

/// An HTTPS client for one appliance.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// Evidence as fetched, with the TLS key of the server that sent it.
#[derive(Debug)]
pub struct Fetched {
    pub evidence: Evidence,
    pub server_spki: Vec<u8>,
}

impl Client {
    /// A client for `url` (e.g. `https://127.0.0.1:8443`) trusting only the CA in `ca_pem`.
    pub fn new(url: &str, ca_pem: &Path) -> anyhow::Result<Self> {
        if !url.starts_with("https://") {
            bail!("--url must be an https:// URL, got {url:?}");
        }
        Ok(Client {
            http: tls::client(ca_pem)?,
            base: url.trim_end_matches('/').to_owned(),
        })
    }

    /// Like [`Client::new`], presenting a client certificate (so the appliance records the
    /// request as this operator's or tenant's).
    pub fn with_identity(
        url: &str,
        ca_pem: &Path,
        cert: &Path,
        key: &Path,
    ) -> anyhow::Result<Self> {
        let mut c = Client::new(url, ca_pem)?;
        c.http = tls::client_with_identity(ca_pem, cert, key)?;
        Ok(c)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!("{what}: cannot reach {}: {}", self.base, error_chain(&e))
        })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = read_limited(resp, MAX_RESPONSE).await.unwrap_or_default();
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{what}: the appliance answered {status}: {msg}");
        }
        Ok(resp)
    }

    pub async fn identity(&self) -> anyhow::Result<Identity> {
        let resp = self
            .send(
                self.http.get(format!("{}/v1/identity", self.base)),
                "identity",
            )
            .await?;
        let body = read_limited(resp, MAX_RESPONSE).await?;
        serde_json::from_slice(&body).context("identity: malformed response")
    }

    /// `POST /v1/attestation` with `nonce`.
    pub async fn evidence(&self, nonce: &Nonce, pcrs: Option<Vec<u8>>) -> anyhow::Result<Fetched> {
        let req = AttestationRequest {
            nonce: B64.encode(nonce.as_bytes()),
            pcrs,
        };
        let resp = self
            .send(
                self.http
                    .post(format!("{}/v1/attestation", self.base))
                    .json(&req),
                "attestation",
            )
            .await?;
        let cert = resp
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .map(<[u8]>::to_vec)
            .context("attestation: the TLS session exposed no server certificate")?;
        let server_spki = tls::spki_of_cert_der(&cert)?;
        let body = read_limited(resp, MAX_EVIDENCE_BYTES).await?;
        let evidence = Evidence::from_json(&body).context("attestation: malformed evidence")?;
        Ok(Fetched {
            evidence,
            server_spki,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

async fn read_limited(mut resp: reqwest::Response, max: usize) -> anyhow::Result<Vec<u8>> {
    if resp.content_length().is_some_and(|l| l > max as u64) {
        bail!("response larger than {max} bytes");
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > max {
            bail!("response larger than {max} bytes");
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Verify fetched evidence for `nonce` against `reference`, bound to the TLS key seen.
pub fn verify_fetched(
    fetched: &Fetched,
    nonce: Nonce,
    reference: &ReferenceValues,
) -> Result<Verified, Rejected> {
    verify_fetched_after(fetched, nonce, reference, None)
}

/// [`verify_fetched`], also requiring the TPM clock to have moved on from `previous`.
pub fn verify_fetched_after(
    fetched: &Fetched,
    nonce: Nonce,
    reference: &ReferenceValues,
    previous: Option<ClockInfo>,
) -> Result<Verified, Rejected> {
    verify::verify(
        &fetched.evidence,
        Expected {
            nonce: FreshNonce::issued_just_now(nonce),
            purpose: purpose::TENANT_API,
            bound_key: &fetched.server_spki,
            reference,
            previous,
        },
    )
}

/// The TPM clock of the last successful verification per attestation key, kept by a verifier
/// between runs so that older evidence is refused after newer (`wardctl attest --state`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierState {
    /// hex AK name → clock of the last accepted quote.
    pub clocks: std::collections::BTreeMap<String, ClockInfo>,
}

impl VerifierState {
    /// Load, or start empty if the file does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{}: not a wardctl state file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Write atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        let tmp = path.with_extension("tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Load a reference-values file with errors that name it.
pub fn load_reference(path: &Path) -> anyhow::Result<ReferenceValues> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read reference values", path.display()))?;
    ReferenceValues::from_toml(&text)
        .with_context(|| format!("{}: invalid reference values", path.display()))
}

/// Trust on first use: build reference values from what a known-good appliance reports now.
/// The evidence must still pass every check against the values built from it (signature,
/// binding, digest, log replay) before anything is written.
pub async fn capture_reference(
    client: &Client,
    pcrs: Option<Vec<u8>>,
) -> anyhow::Result<ReferenceValues> {
    let identity = client.identity().await?;
    let nonce = Nonce::random()?;
    let fetched = client.evidence(&nonce, pcrs).await?;
    let reference = ReferenceValues::from_evidence(&fetched.evidence)?;
    if reference.ak_name.as_ref().map(hex::encode) != Some(identity.ak_name.clone()) {
        bail!("the evidence's attestation key is not the one in /v1/identity");
    }
    verify_fetched(&fetched, nonce, &reference)
        .map_err(|r| anyhow::anyhow!("the appliance's own evidence does not verify: {r}"))?;
    Ok(reference)
}

/// `GET url` and the body of a 2xx answer; any other answer is an error that carries the
/// server's `error` message (or the start of its body).
pub async fn get_text(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .with_context(|| format!("reading {url}"))?;
    if !status.is_success() {
        let why = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(300).collect());
        bail!("{url}: {status}: {why}");
    }
    Ok(text)
}
