//! `wardctl keys`: the tenant side of provisioning (verify the appliance, then wrap the key to
//! its attested one-use key), and list, retire, delete, and the operators' rotate and disable.

use std::path::Path;

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use warden_attest::binding::{purpose, FreshNonce, Nonce};
use warden_attest::reference::ReferenceValues;
use warden_attest::verify::{self, Expected};
use warden_keys::{wrap, Binding, KeyKind, Label, Purpose};

use crate::identity::Identity;
use crate::keys_api::{ChallengeResponse, Provisioned};

/// The tenant named in a client certificate (PEM).
pub fn tenant_of_cert(cert_pem: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(cert_pem).with_context(|| format!("reading {}", cert_pem.display()))?;
    let der = rustls_pemfile_first(&pem)
        .with_context(|| format!("{}: no certificate", cert_pem.display()))?;
    match crate::identity::from_cert_der(&der) {
        Some(Identity::Tenant(t)) => Ok(t),
        Some(Identity::Operator(o)) => {
            bail!(
                "{} is operator {o}'s: keys are provisioned by tenants",
                cert_pem.display()
            )
        }
        None => bail!("{} carries no warden: identity", cert_pem.display()),
    }
}

fn rustls_pemfile_first(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
}

async fn check(resp: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or(text);
    bail!("{what}: the appliance answered {status}: {msg}")
}

/// Provision version `version` of `key_id`: ask for a challenge, verify the appliance's
/// evidence against `reference` (bound to the challenge's nonce and one-use key), wrap the key
/// to that key, upload.
#[allow(clippy::too_many_arguments)]
pub async fn put(
    http: &reqwest::Client,
    base: &str,
    tenant: &str,
    reference: &ReferenceValues,
    key_id: &str,
    kind: KeyKind,
    version: u32,
    key: &[u8],
) -> anyhow::Result<Provisioned> {
    let resp = http
        .post(format!("{base}/v1/keys/challenges"))
        .send()
        .await
        .with_context(|| format!("calling {base}"))?;
    let challenge: ChallengeResponse = check(resp, "challenge").await?.json().await?;
    let nonce_bytes = B64.decode(&challenge.nonce).context("challenge nonce")?;
    let recipient = B64
        .decode(&challenge.recipient)
        .context("challenge recipient")?;
    let nonce = Nonce::try_from(nonce_bytes.as_slice()).context("challenge nonce")?;
    let verified = verify::verify(
        &challenge.evidence,
        Expected {
            nonce: FreshNonce::issued_just_now(nonce),
            purpose: purpose::KEY_PROVISION,
            bound_key: &recipient,
            reference,
            previous: None,
        },
    )
    .map_err(|r| {
        anyhow::anyhow!("the appliance failed verification; the key was not sent:\n{r}")
    })?;
    let envelope = wrap(
        Purpose::Provision,
        &recipient,
        &Binding {
            appliance: challenge.appliance,
            appliance_key: verified.ak_name,
            nonce: nonce_bytes,
        },
        &Label {
            tenant: tenant.to_owned(),
            key_id: key_id.to_owned(),
            kind,
            version,
            not_after: 0,
        },
        key,
    )?;
    let resp = http
        .put(format!("{base}/v1/keys/{key_id}"))
        .json(&envelope)
        .send()
        .await?;
    Ok(check(resp, "upload").await?.json().await?)
}

/// GET /v1/keys: the caller's keys (a tenant) or every tenant's (an operator).
pub async fn list(
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<Vec<crate::vault::KeyInfo>> {
    let resp = http.get(format!("{base}/v1/keys")).send().await?;
    let v: serde_json::Value = check(resp, "list").await?.json().await?;
    Ok(serde_json::from_value(
        v.get("keys").cloned().unwrap_or_default(),
    )?)
}

/// A request without a meaningful body (delete, retire, rotate, disable, enable).
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
    what: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let mut req = http.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = check(req.send().await?, what).await?;
    let text = resp.text().await?;
    Ok(serde_json::from_str(&text).ok())
}
