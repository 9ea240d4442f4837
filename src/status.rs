//! Readiness (`GET /v1/ready`, unauthenticated) and the one-screen status of the appliance
//! (`GET /v1/status`, operators; `wardctl status`).
//!
//! ```text
//!   probes (I/O, each bounded by PROBE_TIMEOUT)        pure
//!   TPM thread: PCR read + log replay ─┐
//!   audit store: empty append ─────────┼─▶ Facts ──▶ assess() ──▶ Readiness (200 | 503)
//!   policy, peers, export, firmware,   │
//!   keys (in-memory state) ────────────┘
//! ```
//!
//! Only the TPM, the measurement log and the audit log decide readiness: without them the
//! appliance can neither prove what it is nor record what it does (every audited operation is
//! refused). The policy, the peers, the syslog export, a firmware trial and keys the TPM will
//! not unseal are reported as informational checks: the appliance is still doing its job
//! (no policy means default deny) and an orchestrator restarting it would not help.
//!
//! The readiness body carries no secrets and no configuration beyond counts and versions: it
//! is served to anyone who can reach the API port.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiState};
use crate::export::ExportStatus;
use crate::metrics::Counters;
use crate::peering::PeerState;
use crate::tls::Caller;
use crate::updates::{Booted, SlotStatus};
use crate::vault::{KeyInfo, VersionState};

mod probe;
mod ready;

pub use probe::{
    export_status, facts, firmware, last_checkpoint, peer_counts, probe_audit, probe_tpm,
    unavailable_versions, CheckpointInfo, PROBE_TIMEOUT,
};
pub use ready::{assess, check, Check, Facts, PeerCounts, Readiness, TpmProbe, TpmSample};

type AppState = Arc<ApiState>;

/// Where the audit log keeps its last signed checkpoint (`AuditLog::open`).
const CHECKPOINT_NOTE: &str = "audit-checkpoint.note";

/// What readiness, status and metrics need beyond the services themselves: when wardend
/// started, the handlers' counters, and the TPM probe's state.
pub struct Ops {
    started: Instant,
    started_ms: i64,
    checkpoint_note: PathBuf,
    pub counters: Counters,
    /// The last TPM probe, shared by concurrent callers.
    tpm_probe: tokio::sync::Mutex<Option<(Instant, TpmProbe)>>,
    /// A probe job is queued on the TPM thread and has not run yet.
    tpm_pending: Arc<AtomicBool>,
}

impl Ops {
    /// Now is the start; `state_dir` is wardend's state directory.
    pub fn new(state_dir: &Path) -> Ops {
        Ops {
            started: Instant::now(),
            started_ms: crate::audit::now_ms(),
            checkpoint_note: state_dir.join(CHECKPOINT_NOTE),
            counters: Counters::default(),
            tpm_probe: tokio::sync::Mutex::new(None),
            tpm_pending: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }
}

/// `GET /v1/status`: one screen about the appliance. No key material, no secrets.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub appliance: ApplianceInfo,
    pub readiness: Readiness,
    pub attestation: AttestationInfo,
    /// The policy in force; `None`: default deny.
    pub policy: Option<PolicyInfo>,
    /// `None` when `[peering]` is not configured.
    pub peers: Option<PeersInfo>,
    /// Per tenant with keys, by state.
    pub keys: Vec<TenantKeys>,
    /// `None` when `[updates]` is not configured.
    pub firmware: Option<FirmwareStatus>,
    pub audit: AuditInfo,
    /// `None` when `[dataplane]` is not configured.
    pub dataplane: Option<DataplaneInfo>,
    /// Long operations running now (`GET /v1/operations`).
    #[serde(default)]
    pub operations: Vec<crate::progress::OperationStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplianceInfo {
    pub name: String,
    /// wardend's version.
    pub version: String,
    /// TPM name of the attestation key, hex.
    pub ak_name: String,
    pub ak_algorithm: String,
    pub started_ms: i64,
    pub uptime_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationInfo {
    pub appliance_pcr: u8,
    /// Events in the measurement log (`None`: the TPM thread did not answer).
    pub measured_events: Option<usize>,
    /// Whether the log replays to the appliance PCR (`None`: not checked).
    pub log_replays: Option<bool>,
    /// Evidence the TPM produced and failed to produce since start (every purpose).
    pub evidence_served: u64,
    pub evidence_failed: u64,
    /// Whether reference values for `POST /v1/appraisals` are configured.
    pub reference_configured: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    pub version: u64,
    /// `sha256:<hex>` of the policy document.
    pub digest: String,
    /// When it was applied (or loaded at start), Unix ms.
    pub since_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersInfo {
    /// Whether the policy in force names this appliance (no peers until it does).
    pub in_policy: bool,
    pub peers: Vec<PeerInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub node: String,
    pub state: PeerState,
    pub since_ms: i64,
    pub tenants: Vec<TenantSaCount>,
}

/// SAs with one peer for one tenant (one per sending worker and epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSaCount {
    pub tenant: String,
    pub inbound: usize,
    pub outbound: usize,
}

/// One tenant's keys by state. Each key counts once: disabled, else unavailable, else active.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantKeys {
    pub tenant: String,
    /// Enabled, and its current version unsealed.
    pub active: u32,
    /// Disabled by an operator.
    pub disabled: u32,
    /// Enabled, but the TPM would not unseal its current version in this platform state.
    pub unavailable: u32,
    /// Live versions (current and previous) over all the tenant's keys.
    pub versions: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FirmwareStatus {
    pub component: String,
    pub booted: Booted,
    /// The TPM security floor (`None`: not read, see `error`).
    pub floor: Option<u64>,
    pub slots: Vec<SlotStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditInfo {
    pub entries: u64,
    /// The last signed checkpoint (`None`: none signed yet, or see `checkpoint_error`).
    pub checkpoint: Option<CheckpointInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_error: Option<String>,
    /// The syslog export, when `[audit.syslog]` is configured.
    pub export: Option<ExportStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneInfo {
    pub engine: String,
    pub workers: u16,
    /// SAs installed, both directions.
    pub sas: usize,
    /// Packets dropped since start, every direction and reason.
    pub drops_total: u64,
    pub rekeys: u64,
}

/// Count keys per tenant and state.
pub fn key_counts(keys: &[KeyInfo]) -> Vec<TenantKeys> {
    let mut by: std::collections::BTreeMap<&str, TenantKeys> = std::collections::BTreeMap::new();
    for k in keys {
        let t = by.entry(&k.tenant).or_insert_with(|| TenantKeys {
            tenant: k.tenant.clone(),
            ..TenantKeys::default()
        });
        let current_available = k
            .versions
            .iter()
            .any(|v| v.state == VersionState::Current && v.available);
        if k.disabled {
            t.disabled += 1;
        } else if current_available {
            t.active += 1;
        } else {
            t.unavailable += 1;
        }
        let live = k
            .versions
            .iter()
            .filter(|v| v.state != VersionState::Retired)
            .count();
        t.versions += u32::try_from(live).unwrap_or(u32::MAX);
    }
    by.into_values().collect()
}

fn peers_info(s: &ApiState) -> Option<PeersInfo> {
    let p = s.peering.get()?;
    let peers = p
        .status()
        .into_iter()
        .map(|peer| PeerInfo {
            node: peer.node,
            state: peer.state,
            since_ms: peer.since_ms,
            tenants: peer
                .tenants
                .iter()
                .map(|t| TenantSaCount {
                    tenant: t.tenant.clone(),
                    inbound: t.inbound.iter().map(|g| g.spis.len()).sum(),
                    outbound: t.outbound.iter().map(|g| g.spis.len()).sum(),
                })
                .collect(),
        })
        .collect();
    Some(PeersInfo {
        in_policy: p.in_policy(),
        peers,
    })
}

fn dataplane_info(s: &ApiState) -> Option<DataplaneInfo> {
    let d = s.dataplane.as_ref()?;
    let t = d.tunnel();
    Some(DataplaneInfo {
        engine: t.config().engine.to_string(),
        workers: t.workers(),
        sas: t.sa_info().len(),
        drops_total: warden_enforcer::tunnel::Drop::ALL
            .iter()
            .map(|d| t.counters().get(*d))
            .sum(),
        rekeys: t.rekeys(),
    })
}

/// Everything `GET /v1/status` shows.
pub async fn gather(s: &ApiState) -> Status {
    let (facts, keys) = facts(s).await;
    let readiness = assess(&facts);
    let tpm_ok = facts.tpm.as_ref().is_ok_and(|t| t.replays.is_ok());
    let (firmware, checkpoint) = tokio::join!(firmware(s, tpm_ok), last_checkpoint(s));
    let (checkpoint, checkpoint_error) = match checkpoint {
        Ok(c) => (c, None),
        Err(e) => (None, Some(e)),
    };
    let (served, failed) = s.ops.counters.evidence_totals();
    Status {
        appliance: ApplianceInfo {
            name: s.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ak_name: hex::encode(&s.ak_name),
            ak_algorithm: s.identity.ak_algorithm.clone(),
            started_ms: s.ops.started_ms(),
            uptime_secs: s.ops.uptime().as_secs(),
        },
        attestation: AttestationInfo {
            appliance_pcr: s.appliance_pcr,
            measured_events: facts.tpm.as_ref().ok().map(|t| t.events),
            log_replays: facts
                .tpm
                .as_ref()
                .ok()
                .and_then(|t| t.replays.as_ref().ok().copied()),
            evidence_served: served,
            evidence_failed: failed,
            reference_configured: s.reference.is_some(),
        },
        readiness,
        policy: s.policy.active().map(|a| PolicyInfo {
            version: a.policy.version,
            digest: a.policy.digest_hex(),
            since_ms: a.since_ms,
        }),
        peers: peers_info(s),
        keys: key_counts(&keys),
        firmware,
        audit: AuditInfo {
            entries: s.audit.store().len(),
            checkpoint,
            checkpoint_error,
            export: facts.export,
        },
        dataplane: dataplane_info(s),
        operations: s.operations.list(),
    }
}

// ---------------------------------------------------------------------------------------------
// Routes.

pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/v1/ready", get(ready)),
        (Method::GET, "/v1/status", get(status)),
    ]
}

/// `GET /v1/ready` (no client certificate needed).
async fn ready(State(s): State<AppState>) -> Response {
    let (facts, _) = facts(&s).await;
    let r = assess(&facts);
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r)).into_response()
}

/// `GET /v1/status` (operators).
async fn status(State(s): State<AppState>, caller: Caller) -> Result<Json<Status>, ApiError> {
    caller
        .operator()
        .map_err(|r| ApiError::new(r.status(), r.message()))?;
    Ok(Json(gather(&s).await))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::VersionInfo;
    use warden_keys::KeyKind;

    fn key(tenant: &str, disabled: bool, versions: &[(VersionState, bool)]) -> KeyInfo {
        KeyInfo {
            tenant: tenant.into(),
            key_id: "k".into(),
            kind: KeyKind::Secret,
            disabled,
            versions: versions
                .iter()
                .enumerate()
                .map(|(i, (state, available))| VersionInfo {
                    version: u32::try_from(i).unwrap() + 1,
                    state: *state,
                    created_ms: 0,
                    available: *available,
                })
                .collect(),
        }
    }

    #[test]
    fn keys_are_counted_once_per_tenant_and_state() {
        use VersionState::{Current, Previous, Retired};
        let keys = [
            key(
                "acme",
                false,
                &[(Retired, false), (Previous, true), (Current, true)],
            ),
            key("acme", true, &[(Current, true)]),
            key("acme", false, &[(Current, false)]),
            key("globex", false, &[(Current, true)]),
        ];
        assert_eq!(
            key_counts(&keys),
            vec![
                TenantKeys {
                    tenant: "acme".into(),
                    active: 1,
                    disabled: 1,
                    unavailable: 1,
                    versions: 4,
                },
                TenantKeys {
                    tenant: "globex".into(),
                    active: 1,
                    disabled: 0,
                    unavailable: 0,
                    versions: 1,
                },
            ]
        );
        // A retired version is gone: it is not "unavailable".
        assert_eq!(unavailable_versions(&keys), 1);
        assert!(key_counts(&[]).is_empty());
    }
}
