//! The tenant API over HTTPS: identity, attestation, health, and appraisal of other parties'
//! evidence. Handlers parse untrusted bodies themselves (size-limited by the router) so every
//! bad request gets a 4xx with a message that says what was wrong.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use warden_attest::binding::{purpose, Challenges, Nonce};
use warden_attest::collect::{self, Request as CollectRequest};
use warden_attest::ear::{Appraisal, Claims, ResultSigner, Status, VerifierId};
use warden_attest::reference::ReferenceValues;
use warden_attest::verify::{self, Expected};

use crate::appliance::TpmActor;
use crate::audit::{now_ms, AuditLog};
use crate::identity::{Identity as Caller, PeerIdentity};
use crate::metrics::Appraised;
use crate::wire::{
    AppraisalRequest, AppraisalResponse, AttestationRequest, Challenge, ErrorBody, Identity,
};
use std::net::SocketAddr;
use warden_audit::event::{Event, Kind, Outcome};

/// How long an appraisal challenge stays redeemable, and how many may be outstanding.
pub const CHALLENGE_TTL_SECS: u64 = 120;
pub const MAX_CHALLENGES: usize = 4096;
/// Lifetime of a signed attestation result.
pub const RESULT_TTL_SECS: i64 = 300;

/// Shared state of the API handlers.
pub struct ApiState {
    pub tpm: TpmActor,
    pub identity: Identity,
    /// SPKI of the TLS certificate: the key tenant-API evidence is bound to.
    pub tls_spki: Vec<u8>,
    /// Quoted by default: platform PCRs and the appliance PCR.
    pub default_pcrs: Vec<u8>,
    pub appliance_pcr: u8,
    /// The platform event log, read once at start.
    pub tcg_event_log: Option<Vec<u8>>,
    pub signer: ResultSigner,
    pub challenges: Mutex<Challenges>,
    /// Reference values for appraising others' evidence, if configured.
    pub reference: Option<ReferenceValues>,
    pub reference_path: Option<PathBuf>,
    pub audit: Arc<AuditLog>,
    pub policy: Arc<crate::policy::PolicyService>,
    pub vault: Arc<crate::vault::Vault>,
    /// The TPM name of the attestation key (what key envelopes are bound to).
    pub ak_name: Vec<u8>,
    /// The syslog exporter's status, when `[audit.syslog]` is configured.
    pub export: Option<tokio::sync::watch::Receiver<crate::export::ExportStatus>>,
    pub name: String,
    /// The east-west data plane, when `[dataplane]` is configured.
    pub dataplane: Option<std::sync::Arc<crate::dataplane::Dataplane>>,
    /// The control channel to the peer appliances, when `[peering]` is configured (set once
    /// the service has started; it needs this state for evidence).
    pub peering: std::sync::OnceLock<Arc<crate::peering::PeerService>>,
    /// Signed firmware updates, when `[updates]` is configured.
    pub updates: Option<Arc<crate::updates::UpdateService>>,
    /// Flow telemetry, when `[telemetry]` is configured.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// Long operations in progress (`GET /v1/operations`).
    pub operations: Arc<crate::progress::Operations>,
    /// Start time, counters and probes for readiness, status and metrics.
    pub ops: crate::status::Ops,
}

type AppState = Arc<ApiState>;

/// An API error: a status and a message for the client (never a secret).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// The message for the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Parse a JSON body with a message that names the problem.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "request body is empty; expected JSON",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn parse_nonce(b64: &str) -> Result<Nonce, ApiError> {
    let bytes = B64
        .decode(b64.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("nonce is not base64: {e}")))?;
    Nonce::try_from(bytes.as_slice()).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every route the server serves: (method, path, handler). docs/openapi.json must list each
/// (a test checks it).
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/v1/health", get(health)),
        (Method::GET, "/v1/identity", get(identity)),
        (Method::POST, "/v1/attestation", post(attestation)),
        (Method::POST, "/v1/challenges", post(challenge)),
        (Method::POST, "/v1/appraisals", post(appraisal)),
    ]
    .into_iter()
    .chain(crate::audit_api::routes())
    .chain(crate::policy_api::routes())
    .chain(crate::keys_api::routes())
    .chain(crate::metrics::routes())
    .chain(crate::peering_api::routes())
    .chain(crate::updates::api::routes())
    .chain(crate::status::routes())
    .chain(crate::progress::routes())
    .chain(crate::telemetry::top::routes())
    .collect()
}

/// The router with body limits and state.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    // One MethodRouter per path: methods of the same path are merged.
    let mut by_path: std::collections::BTreeMap<&'static str, MethodRouter<AppState>> =
        std::collections::BTreeMap::new();
    for (_, path, handler) in routes() {
        let merged = match by_path.remove(path) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(path, merged);
    }
    by_path
        .into_iter()
        .fold(Router::new(), |r, (path, handler)| r.route(path, handler))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such endpoint; see docs/openapi.json".into(),
            }
        })
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::metrics::observe,
        ))
        .with_state(state)
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn identity(State(s): State<AppState>) -> impl IntoResponse {
    Json(s.identity.clone())
}

/// The party on the other end of the connection, for audit entries: its certificate identity
/// when it presented one, else its address; and the tenant the entry belongs to.
fn actor(
    peer: Option<&Extension<ConnectInfo<SocketAddr>>>,
    who: Option<&Extension<PeerIdentity>>,
) -> (String, Option<String>) {
    match who.and_then(|w| (w.0).0.clone()) {
        Some(Caller::Tenant(t)) => (format!("tenant:{t}"), Some(t)),
        Some(id) => (id.to_string(), None),
        None => (
            peer.map_or_else(
                || "peer:unknown".to_owned(),
                |c| format!("peer:{}", (c.0).0),
            ),
            None,
        ),
    }
}

/// An event with the caller's actor and tenant filled in.
fn event(kind: Kind, caller: &(String, Option<String>), subject: &str, outcome: Outcome) -> Event {
    let e = Event::new(now_ms(), kind, &caller.0, subject, outcome);
    match &caller.1 {
        Some(t) => e.tenant(t),
        None => e,
    }
}

/// Record an audit event; if it cannot be recorded the operation is refused (fail closed).
async fn audited(s: &AppState, event: Event) -> Result<u64, ApiError> {
    s.audit
        .record_async(event)
        .await
        .map_err(|e| ApiError::unavailable(format!("{e}; the request is refused")))
}

/// Evidence from the TPM thread: a quote over `pcrs` (the appliance PCR is added) bound to
/// (`nonce`, `purpose`, `bound_key`), with the appliance and platform event logs.
pub async fn collect_evidence(
    s: &AppState,
    nonce: Nonce,
    purpose: &'static str,
    bound_key: Vec<u8>,
    mut pcrs: Vec<u8>,
) -> Result<warden_attest::Evidence, ApiError> {
    pcrs.push(s.appliance_pcr);
    pcrs.sort_unstable();
    pcrs.dedup();
    let st = Arc::clone(s);
    let evidence = s
        .tpm
        .run(move |a| {
            let log = a.log().to_vec();
            collect::collect(
                &mut a.tpm,
                &CollectRequest {
                    ak_handle: a.ak_handle,
                    ak_public: &a.ak_public,
                    ek_certificate: a.ek_certificate.as_deref(),
                    nonce: &nonce,
                    purpose,
                    bound_key: &bound_key,
                    pcrs: &pcrs,
                    appliance_pcr: a.appliance_pcr,
                    appliance_log: &log,
                    tcg_event_log: st.tcg_event_log.as_deref(),
                },
            )
        })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))
        .and_then(|r| {
            r.map_err(|e| {
                tracing::error!(error = %e, "quote failed");
                ApiError::unavailable(format!("the TPM could not produce evidence: {e}"))
            })
        });
    s.ops.counters.evidence(purpose, evidence.is_ok());
    evidence
}

/// `POST /v1/attestation`: nonce in, evidence bound to (nonce, tenant-API purpose, TLS key) out.
async fn attestation(
    State(s): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    who: Option<Extension<PeerIdentity>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = actor(peer.as_ref(), who.as_ref());
    let req: AttestationRequest = parse_json(&body)?;
    let nonce = parse_nonce(&req.nonce)?;
    let pcrs = match req.pcrs {
        Some(p) => {
            if p.len() > 24 || p.iter().any(|i| *i >= 24) {
                return Err(ApiError::bad_request(
                    "pcrs: at most 24 PCR indices, each below 24",
                ));
            }
            p
        }
        None => s.default_pcrs.clone(),
    };

    let nonce_hex = hex::encode(nonce.as_bytes());
    let evidence = collect_evidence(&s, nonce, purpose::TENANT_API, s.tls_spki.clone(), pcrs).await;
    let evidence = match evidence {
        Ok(e) => e,
        Err(err) => {
            let entry = event(Kind::AttestationFailed, &caller, &s.name, Outcome::Failure)
                .detail("error", err.message.clone());
            audited(&s, entry).await?;
            return Err(err);
        }
    };
    let entry = event(Kind::AttestationServed, &caller, &s.name, Outcome::Success)
        .detail("nonce", nonce_hex)
        .detail("purpose", purpose::TENANT_API);
    audited(&s, entry).await?;
    tracing::info!(actor = %caller.0, "served attestation evidence");
    Ok(Json(evidence).into_response())
}

/// `POST /v1/challenges`: a single-use nonce for a later appraisal.
async fn challenge(State(s): State<AppState>) -> Result<Json<Challenge>, ApiError> {
    let nonce = s
        .challenges
        .lock()
        .map_err(|_| ApiError::unavailable("challenge store unavailable"))?
        .issue(now_unix())
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(Challenge {
        nonce: B64.encode(nonce.as_bytes()),
        expires_in_secs: CHALLENGE_TTL_SECS,
    }))
}

/// `POST /v1/appraisals`: verify another party's evidence against this appliance's reference
/// values and return a signed result. The nonce must be one this appliance issued, unexpired
/// and unused.
async fn appraisal(
    State(s): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    who: Option<Extension<PeerIdentity>>,
    body: Bytes,
) -> Result<Json<AppraisalResponse>, ApiError> {
    let caller = actor(peer.as_ref(), who.as_ref());
    let req: AppraisalRequest = parse_json(&body)?;
    let nonce = parse_nonce(&req.nonce)?;
    let bound_key = B64
        .decode(req.bound_key.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("bound_key is not base64: {e}")))?;
    let Some(reference) = s.reference.as_ref() else {
        return Err(ApiError::unavailable(
            "this appliance has no reference values configured ([attestation] reference)",
        ));
    };
    let redeemed = s
        .challenges
        .lock()
        .map_err(|_| ApiError::unavailable("challenge store unavailable"))?
        .redeem(&nonce, now_unix());
    let fresh = match redeemed {
        Ok(f) => f,
        Err(e) => {
            s.ops.counters.appraisal(Appraised::Refused);
            let entry = event(Kind::AppraisalRefused, &caller, "evidence", Outcome::Denied)
                .detail("reason", e.to_string());
            audited(&s, entry).await?;
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.to_string(),
            ));
        }
    };
    let outcome = verify::verify(
        &req.evidence,
        Expected {
            nonce: fresh,
            purpose: purpose::APPRAISAL,
            bound_key: &bound_key,
            reference,
            previous: None,
        },
    );
    let (status, failures, sub, pcr_digest) = match &outcome {
        Ok(v) => (
            Status::Affirming,
            vec![],
            format!("ak:{}", hex::encode(&v.ak_name)),
            Some(hex::encode(&v.pcr_digest)),
        ),
        Err(r) => (
            Status::Contraindicated,
            r.failures
                .iter()
                .map(|f| format!("[{}] {f}", f.check().name()))
                .collect(),
            "unverified".to_owned(),
            None,
        ),
    };
    let now = i64::try_from(now_unix()).unwrap_or(i64::MAX);
    let claims = Claims {
        profile: warden_attest::ear::PROFILE.to_owned(),
        iat: now,
        exp: now.saturating_add(RESULT_TTL_SECS),
        nonce: warden_attest::ear::encode_nonce(nonce.as_bytes()),
        verifier_id: VerifierId {
            developer: "warden".into(),
            build: concat!("wardend ", env!("CARGO_PKG_VERSION")).into(),
        },
        jti: warden_attest::ear::random_jti().map_err(|e| ApiError::unavailable(e.to_string()))?,
        sub,
        submods: [(
            "warden".to_owned(),
            Appraisal {
                status,
                policy_id: s
                    .reference_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                pcr_digest,
                failed: failures.clone(),
            },
        )]
        .into_iter()
        .collect(),
    };
    let token = s
        .signer
        .sign(&claims)
        .map_err(|e| ApiError::unavailable(format!("cannot sign the result: {e}")))?;
    let (kind, result, counted) = match status {
        Status::Affirming => (
            Kind::AppraisalAffirming,
            Outcome::Success,
            Appraised::Affirming,
        ),
        _ => (
            Kind::AppraisalContraindicated,
            Outcome::Failure,
            Appraised::Contraindicated,
        ),
    };
    s.ops.counters.appraisal(counted);
    let mut entry =
        event(kind, &caller, &claims.sub, result).detail("result_id", claims.jti.clone());
    if !failures.is_empty() {
        entry = entry.detail(
            "failures",
            failures.join("; ").chars().take(4000).collect::<String>(),
        );
    }
    audited(&s, entry).await?;
    tracing::info!(status = ?status, failures = failures.len(), "appraised evidence");
    Ok(Json(AppraisalResponse {
        status,
        failures,
        token,
    }))
}
