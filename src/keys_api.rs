//! The key vault API. Tenants provision, list, retire and delete their own keys; operators
//! list every tenant's keys (never material), rotate and disable them. Every change and every
//! refusal is audited, without key bytes.
//!
//! ```text
//!  tenant                                         appliance
//!  POST /v1/keys/challenges ───────────────────►  nonce, one-use X25519 key pkR,
//!                           ◄───────────────────  evidence bound to (nonce, keys/provision, pkR)
//!  verify evidence (reference values), wrap key to pkR (warden-keys envelope)
//!  PUT /v1/keys/{key_id}  envelope ────────────►  challenge used up; binding checked; HPKE open;
//!                                                 sealed by the TPM; audited
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use warden_attest::binding::{purpose, Nonce};
use warden_audit::event::{Event, Kind, Outcome};
use warden_keys::{Binding, Envelope, Expected, KeyMaterial, Purpose};

use crate::api::{ApiError, ApiState};
use crate::audit::now_ms;
use crate::identity::Identity;
use crate::tls::Caller;
use crate::vault::VaultError;

type AppState = Arc<ApiState>;

pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::POST, "/v1/keys/challenges", post(challenge)),
        (Method::GET, "/v1/keys", get(list)),
        (Method::PUT, "/v1/keys/{key_id}", put(provision)),
        (Method::DELETE, "/v1/keys/{key_id}", delete(remove)),
        (Method::POST, "/v1/keys/{key_id}/retire", post(retire)),
        (
            Method::PUT,
            "/v1/keys/{key_id}/release-policy",
            put(set_release_policy),
        ),
        (Method::POST, "/v1/release/{tenant}/{key_id}", post(release)),
        (
            Method::POST,
            "/v1/admin/keys/{tenant}/{key_id}/rotate",
            post(rotate),
        ),
        (
            Method::POST,
            "/v1/admin/keys/{tenant}/{key_id}/disable",
            post(disable),
        ),
        (
            Method::POST,
            "/v1/admin/keys/{tenant}/{key_id}/enable",
            post(enable),
        ),
    ]
}

/// A provisioning challenge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeResponse {
    /// base64: the nonce the evidence and the envelope are bound to.
    pub nonce: String,
    /// base64: the one-use X25519 key to wrap to (the evidence's bound key).
    pub recipient: String,
    /// Unix seconds after which the challenge is void.
    pub expires: u64,
    /// The appliance's name (goes into the envelope's binding).
    pub appliance: String,
    /// TPM evidence bound to (nonce, "warden/keys/provision/v1", recipient).
    pub evidence: warden_attest::evidence::Evidence,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provisioned {
    pub key_id: String,
    pub version: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireRequest {
    version: u32,
}

fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

fn tenant_of(caller: &Caller) -> Result<String, ApiError> {
    match &caller.0 {
        Identity::Tenant(t) => Ok(t.clone()),
        Identity::Operator(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant role required: operators never hold tenant key material",
        )),
    }
}

fn operator_of(caller: &Caller) -> Result<String, ApiError> {
    caller
        .operator()
        .map(str::to_owned)
        .map_err(|r| ApiError::new(r.status(), r.message()))
}

fn vault_error(e: &VaultError) -> ApiError {
    let status = match e {
        VaultError::NotFound(_) => StatusCode::NOT_FOUND,
        VaultError::KindMismatch { .. }
        | VaultError::Version { .. }
        | VaultError::FirstVersion(_)
        | VaultError::Retire { .. }
        | VaultError::Disabled(_) => StatusCode::CONFLICT,
        VaultError::Limit(_) | VaultError::Busy => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

/// Run a vault operation off the async workers: it fsyncs and may wait for the TPM.
async fn in_vault<R: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&crate::vault::Vault) -> Result<R, VaultError> + Send + 'static,
) -> Result<Result<R, VaultError>, ApiError> {
    let st = Arc::clone(s);
    tokio::task::spawn_blocking(move || f(&st.vault))
        .await
        .map_err(|_| ApiError::unavailable("the key operation failed to run"))
}

async fn record(s: &AppState, e: Event) -> Result<(), ApiError> {
    s.audit
        .record_async(e)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::unavailable(format!("{e}; the request is refused")))
}

fn event(kind: Kind, actor: &str, tenant: &str, key_id: &str, outcome: Outcome) -> Event {
    Event::new(now_ms(), kind, actor, key_id, outcome).tenant(tenant)
}

/// Refuse, audited.
async fn refuse(
    s: &AppState,
    actor: &str,
    tenant: &str,
    key_id: &str,
    err: ApiError,
) -> Result<Response, ApiError> {
    record(
        s,
        event(Kind::KeyRefused, actor, tenant, key_id, Outcome::Denied)
            .detail("reason", err.message().to_owned()),
    )
    .await?;
    Err(err)
}

async fn challenge(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller)?;
    let c = s
        .vault
        .challenge(&tenant, now_secs())
        .map_err(|e| vault_error(&e))?;
    let nonce =
        Nonce::try_from(c.nonce.as_slice()).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let evidence = crate::api::collect_evidence(
        &s,
        nonce,
        purpose::KEY_PROVISION,
        c.recipient.to_vec(),
        s.default_pcrs.clone(),
    )
    .await?;
    Ok(Json(ChallengeResponse {
        nonce: B64.encode(&c.nonce),
        recipient: B64.encode(c.recipient),
        expires: c.expires,
        appliance: s.name.clone(),
        evidence,
    })
    .into_response())
}

async fn provision(
    State(s): State<AppState>,
    caller: Caller,
    Path(key_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller)?;
    let actor = format!("tenant:{tenant}");
    if !warden_keys::envelope::valid_name(&key_id) {
        return Err(ApiError::bad_request(
            "key ids are 1-63 of a-z, 0-9 and '-'",
        ));
    }
    let parsed = match Envelope::parse(&body) {
        Ok(p) => p,
        Err(e) => {
            return refuse(
                &s,
                &actor,
                &tenant,
                &key_id,
                ApiError::bad_request(e.to_string()),
            )
            .await
        }
    };
    if parsed.label.key_id != key_id {
        let err = ApiError::bad_request(format!(
            "the envelope is for key {:?}, not {key_id:?}",
            parsed.label.key_id
        ));
        return refuse(&s, &actor, &tenant, &key_id, err).await;
    }
    // The challenge is used up whatever happens next.
    let Some(recipient) = s
        .vault
        .take_challenge(&tenant, &parsed.binding.nonce, now_secs())
    else {
        let err = ApiError::new(
            StatusCode::CONFLICT,
            "no open challenge of yours has this nonce: it expired, was used, or is another \
             tenant's; ask for a new one",
        );
        return refuse(&s, &actor, &tenant, &key_id, err).await;
    };
    let expected_binding = Binding {
        appliance: s.name.clone(),
        appliance_key: s.ak_name.clone(),
        nonce: parsed.binding.nonce.clone(),
    };
    let opened = parsed.open(
        &recipient,
        &Expected {
            purpose: Purpose::Provision,
            binding: &expected_binding,
            tenant: &tenant,
            now: now_secs(),
        },
    );
    let (label, material) = match opened {
        Ok(x) => x,
        Err(e) => {
            let err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
            return refuse(&s, &actor, &tenant, &key_id, err).await;
        }
    };
    let version = label.version;
    let kind = label.kind;
    let (t, k) = (tenant.clone(), key_id.clone());
    let stored = in_vault(&s, move |v| {
        v.put(&t, &k, kind, version, material, now_ms())
    })
    .await?;
    if let Err(e) = stored {
        return refuse(&s, &actor, &tenant, &key_id, vault_error(&e)).await;
    }
    record(
        &s,
        event(
            Kind::KeyProvisioned,
            &actor,
            &tenant,
            &key_id,
            Outcome::Success,
        )
        .detail("version", version.to_string())
        .detail("kind", kind.name()),
    )
    .await?;
    Ok(Json(Provisioned { key_id, version }).into_response())
}

async fn list(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let keys = match &caller.0 {
        Identity::Tenant(t) => s.vault.list(Some(t)),
        Identity::Operator(_) => s.vault.list(None),
    };
    Ok(Json(serde_json::json!({ "keys": keys })).into_response())
}

async fn remove(
    State(s): State<AppState>,
    caller: Caller,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller)?;
    let actor = format!("tenant:{tenant}");
    let (t, k) = (tenant.clone(), key_id.clone());
    in_vault(&s, move |v| v.delete(&t, &k))
        .await?
        .map_err(|e| vault_error(&e))?;
    record(
        &s,
        event(Kind::KeyDeleted, &actor, &tenant, &key_id, Outcome::Success),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn retire(
    State(s): State<AppState>,
    caller: Caller,
    Path(key_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller)?;
    let req: RetireRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"version\": N}}: {e}")))?;
    let (t, k) = (tenant.clone(), key_id.clone());
    in_vault(&s, move |v| v.retire(&t, &k, req.version))
        .await?
        .map_err(|e| vault_error(&e))?;
    record(
        &s,
        event(
            Kind::KeyRetired,
            &format!("tenant:{tenant}"),
            &tenant,
            &key_id,
            Outcome::Success,
        )
        .detail("version", req.version.to_string()),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rotate(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let op = operator_of(&caller)?;
    let (t, k) = (tenant.clone(), key_id.clone());
    // The appliance makes the new version; the operator never sees it.
    let version = in_vault(&s, move |v| {
        let (kind, version) = v.next_version(&t, &k)?;
        let len = v.with_current(&t, &k, |_, m| m.len()).unwrap_or(32);
        let material = KeyMaterial::random(len.max(16))
            .map_err(|_| VaultError::Store("no randomness".into()))?;
        v.put(&t, &k, kind, version, material, now_ms())?;
        Ok(version)
    })
    .await?
    .map_err(|e| vault_error(&e))?;
    record(
        &s,
        event(
            Kind::KeyRotated,
            &format!("operator:{op}"),
            &tenant,
            &key_id,
            Outcome::Success,
        )
        .detail("version", version.to_string()),
    )
    .await?;
    Ok(Json(Provisioned { key_id, version }).into_response())
}

async fn set_disabled(
    s: AppState,
    caller: Caller,
    tenant: String,
    key_id: String,
    disabled: bool,
) -> Result<Response, ApiError> {
    let op = operator_of(&caller)?;
    let (t, k) = (tenant.clone(), key_id.clone());
    in_vault(&s, move |v| v.set_disabled(&t, &k, disabled))
        .await?
        .map_err(|e| vault_error(&e))?;
    let kind = if disabled {
        Kind::KeyDisabled
    } else {
        Kind::KeyEnabled
    };
    record(
        &s,
        event(
            kind,
            &format!("operator:{op}"),
            &tenant,
            &key_id,
            Outcome::Success,
        ),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn disable(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    set_disabled(s, caller, tenant, key_id, true).await
}

async fn enable(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    set_disabled(s, caller, tenant, key_id, false).await
}

/// `PUT /v1/keys/{key_id}/release-policy` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasePolicyRequest {
    /// Reference values (TOML) a workload's evidence must meet.
    pub reference: String,
    pub ttl_secs: u64,
    pub per_minute: u32,
    /// Two-party split: SHA-256 (hex) of the tenant's share; the stored key is then the
    /// appliance's share, and a release must bring the tenant's share.
    #[serde(default)]
    pub tenant_share_sha256: Option<String>,
}

async fn set_release_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(key_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&caller)?;
    let req: ReleasePolicyRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("release policy: {e}")))?;
    warden_attest::reference::ReferenceValues::from_toml(&req.reference)
        .map_err(|e| ApiError::bad_request(format!("release policy: reference: {e}")))?;
    if !(1..=crate::vault::MAX_RELEASE_TTL_SECS).contains(&req.ttl_secs) {
        return Err(ApiError::bad_request(format!(
            "release policy: ttl_secs is 1..={}",
            crate::vault::MAX_RELEASE_TTL_SECS
        )));
    }
    if !(1..=crate::vault::MAX_RELEASES_PER_MINUTE).contains(&req.per_minute) {
        return Err(ApiError::bad_request(format!(
            "release policy: per_minute is 1..={}",
            crate::vault::MAX_RELEASES_PER_MINUTE
        )));
    }
    if let Some(h) = &req.tenant_share_sha256 {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request(
                "release policy: tenant_share_sha256 is 64 hex digits",
            ));
        }
    }
    let policy = crate::vault::ReleasePolicy {
        reference: req.reference,
        ttl_secs: req.ttl_secs,
        per_minute: req.per_minute,
        tenant_share_sha256: req.tenant_share_sha256.map(|h| h.to_ascii_lowercase()),
    };
    let digest = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        policy.reference.as_bytes(),
    ));
    let (ttl, rate, split) = (
        policy.ttl_secs,
        policy.per_minute,
        policy.tenant_share_sha256.is_some(),
    );
    let (t, k) = (tenant.clone(), key_id.clone());
    in_vault(&s, move |v| v.set_release_policy(&t, &k, Some(policy)))
        .await?
        .map_err(|e| vault_error(&e))?;
    record(
        &s,
        event(
            Kind::KeyReleasePolicy,
            &format!("tenant:{tenant}"),
            &tenant,
            &key_id,
            Outcome::Success,
        )
        .detail("reference_sha256", digest)
        .detail("ttl_secs", ttl.to_string())
        .detail("per_minute", rate.to_string())
        .detail("two_party", split.to_string()),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/release/{tenant}/{key_id}` body: a workload's evidence bound to (a challenge
/// nonce from `POST /v1/challenges`, "warden/appraisal/v1", its X25519 key).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub nonce: String,
    /// base64 X25519 public key the key is wrapped to (the evidence's bound key).
    pub recipient: String,
    pub evidence: warden_attest::evidence::Evidence,
    /// Two-party keys: the tenant's share (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_share: Option<String>,
    /// A previous, not yet retired version (to decrypt what it protected); default: current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// A released key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseResponse {
    /// The attestation result this release is bound to (the envelope's nonce), hex.
    pub result_id: String,
    /// Unix seconds after which the workload must not use the key.
    pub not_after: u64,
    pub envelope: Envelope,
}

async fn release(
    State(s): State<AppState>,
    Path((tenant, key_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = "workload".to_owned();
    let req: ReleaseRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return Err(ApiError::bad_request(format!("release request: {e}"))),
    };
    let policy = match s.vault.release_policy(&tenant, &key_id) {
        Ok(Some(p)) => p,
        // The same answer for "no such key" and "no policy": nothing to learn by probing.
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no such key, or its tenant has not allowed any release",
            ))
        }
    };
    let refused = |status: StatusCode, why: String| ApiError::new(status, why);
    let nonce = match B64
        .decode(req.nonce.as_bytes())
        .ok()
        .and_then(|b| Nonce::try_from(b.as_slice()).ok())
    {
        Some(n) => n,
        None => return Err(ApiError::bad_request("nonce: base64 of 16..=64 bytes")),
    };
    let recipient = match B64.decode(req.recipient.as_bytes()) {
        Ok(r) if r.len() == 32 => r,
        _ => {
            return Err(ApiError::bad_request(
                "recipient: base64 of a 32-byte X25519 key",
            ))
        }
    };
    let fresh = s
        .challenges
        .lock()
        .map_err(|_| ApiError::unavailable("challenge store unavailable"))?
        .redeem(&nonce, now_secs());
    let fresh = match fresh {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                &s,
                &actor,
                &tenant,
                &key_id,
                refused(StatusCode::CONFLICT, format!("challenge: {e}")),
            )
            .await
        }
    };
    let reference = warden_attest::reference::ReferenceValues::from_toml(&policy.reference)
        .map_err(|e| ApiError::unavailable(format!("the stored release policy is damaged: {e}")))?;
    let verified = warden_attest::verify::verify(
        &req.evidence,
        warden_attest::verify::Expected {
            nonce: fresh,
            purpose: purpose::APPRAISAL,
            bound_key: &recipient,
            reference: &reference,
            previous: None,
        },
    );
    let verified = match verified {
        Ok(v) => v,
        Err(r) => {
            return refuse(
                &s,
                &actor,
                &tenant,
                &key_id,
                refused(
                    StatusCode::FORBIDDEN,
                    format!("the workload does not meet the release policy: {r}"),
                ),
            )
            .await
        }
    };
    let actor = format!("workload:{}", hex::encode(&verified.ak_name));
    if !s.vault.take_release(&tenant, policy.per_minute, now_secs()) {
        return refuse(
            &s,
            &actor,
            &tenant,
            &key_id,
            refused(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "tenant {tenant}: more than {} releases this minute",
                    policy.per_minute
                ),
            ),
        )
        .await;
    }
    let result_id = KeyMaterial::random(16)
        .map_err(|_| ApiError::unavailable("no randomness"))?
        .expose()
        .to_vec();
    let not_after = now_secs() + policy.ttl_secs;
    let binding = Binding {
        appliance: s.name.clone(),
        appliance_key: s.ak_name.clone(),
        nonce: result_id.clone(),
    };
    // Read before taking the key's lock (no nested locks).
    let kind = s
        .vault
        .list(Some(&tenant))
        .into_iter()
        .find(|k| k.key_id == key_id)
        .map_or(warden_keys::KeyKind::Secret, |k| k.kind);
    // Two-party keys: the tenant's share must be here, and be the committed one.
    let share = match &policy.tenant_share_sha256 {
        None => None,
        Some(want) => {
            let given = req
                .tenant_share
                .as_deref()
                .and_then(|b| B64.decode(b.as_bytes()).ok())
                .map(KeyMaterial::new);
            let Some(given) = given else {
                return refuse(
                    &s,
                    &actor,
                    &tenant,
                    &key_id,
                    refused(
                        StatusCode::FORBIDDEN,
                        "this key is split in two: the release needs the tenant's share".into(),
                    ),
                )
                .await;
            };
            let got = hex::encode(ring::digest::digest(&ring::digest::SHA256, given.expose()));
            // A hash of the share, compared with the public commitment: nothing secret here.
            if got != *want {
                return refuse(
                    &s,
                    &actor,
                    &tenant,
                    &key_id,
                    refused(
                        StatusCode::FORBIDDEN,
                        "the tenant's share is not the one the tenant committed to".into(),
                    ),
                )
                .await;
            }
            Some(given)
        }
    };
    let wrapped = s
        .vault
        .with_version(&tenant, &key_id, req.version, |version, material| {
            let combined;
            let material = match &share {
                None => material,
                Some(t) if t.len() == material.len() => {
                    combined = KeyMaterial::new(
                        material
                            .expose()
                            .iter()
                            .zip(t.expose())
                            .map(|(a, b)| a ^ b)
                            .collect(),
                    );
                    &combined
                }
                Some(_) => {
                    return Err(warden_keys::EnvelopeError::Wrap(
                        "the tenant's share and the appliance's share differ in length".into(),
                    ))
                }
            };
            warden_keys::wrap(
                Purpose::Release,
                &recipient,
                &binding,
                &warden_keys::Label {
                    tenant: tenant.clone(),
                    key_id: key_id.clone(),
                    kind,
                    version,
                    not_after,
                },
                material.expose(),
            )
            .map(|e| (version, e))
        });
    let (version, envelope) = match wrapped {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(ApiError::unavailable(e.to_string())),
        Err(e) => return refuse(&s, &actor, &tenant, &key_id, vault_error(&e)).await,
    };
    record(
        &s,
        event(
            Kind::KeyReleased,
            &actor,
            &tenant,
            &key_id,
            Outcome::Success,
        )
        .detail("result_id", hex::encode(&result_id))
        .detail("version", version.to_string())
        .detail("not_after", not_after.to_string()),
    )
    .await?;
    Ok(Json(ReleaseResponse {
        result_id: hex::encode(result_id),
        not_after,
        envelope,
    })
    .into_response())
}
