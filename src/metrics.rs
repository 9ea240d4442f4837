//! `GET /metrics`: Prometheus text exposition (format 0.0.4) for operators' scrapers, which
//! authenticate with an operator client certificate like any other operator.
//!
//! Every label has a bounded set of values: fixed names (purposes, results, states, checks,
//! slots), or names from the configuration and the policy (peers, tenants, the component).
//! Nothing is labelled per request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use warden_attest::binding::purpose;

use crate::api::{ApiError, ApiState};
use crate::dataplane::{label, metric};
use crate::status::{self, FirmwareStatus, TenantKeys};
use crate::tls::Caller;

type AppState = Arc<ApiState>;

pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![(Method::GET, "/metrics", get(metrics))]
}

/// Evidence purposes and their label values; anything else counts as `other`.
const PURPOSES: [(&str, &str); 3] = [
    (purpose::TENANT_API, "tenant-api"),
    (purpose::KEY_PROVISION, "key-provision"),
    (purpose::PEER_CHANNEL, "peer-channel"),
];
const OTHER_PURPOSE: &str = "other";

/// How an appraisal (`POST /v1/appraisals`) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appraised {
    Affirming,
    Contraindicated,
    /// The nonce was not one this appliance issued, or expired, or was used.
    Refused,
}

impl Appraised {
    const ALL: [Appraised; 3] = [
        Appraised::Affirming,
        Appraised::Contraindicated,
        Appraised::Refused,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Appraised::Affirming => "affirming",
            Appraised::Contraindicated => "contraindicated",
            Appraised::Refused => "refused",
        }
    }
}

/// How a `PUT /v1/policy` by an operator ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyApply {
    /// A new policy is in force.
    Applied,
    /// The policy offered is the one in force.
    Unchanged,
    /// Invalid, not newer, too large, or it could not be enforced, stored, measured or audited.
    Refused,
}

impl PolicyApply {
    const ALL: [PolicyApply; 3] = [
        PolicyApply::Applied,
        PolicyApply::Unchanged,
        PolicyApply::Refused,
    ];
    fn as_str(self) -> &'static str {
        match self {
            PolicyApply::Applied => "applied",
            PolicyApply::Unchanged => "unchanged",
            PolicyApply::Refused => "refused",
        }
    }
}

/// Counters the handlers bump.
#[derive(Debug, Default)]
pub struct Counters {
    /// Per purpose (`PURPOSES`, then other): [served, failed].
    evidence: [[AtomicU64; 2]; 4],
    appraisals: [AtomicU64; 3],
    policy: [AtomicU64; 3],
}

fn bump(c: Option<&AtomicU64>) {
    if let Some(c) = c {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn load(c: Option<&AtomicU64>) -> u64 {
    c.map_or(0, |c| c.load(Ordering::Relaxed))
}

impl Counters {
    fn purpose_index(purpose: &str) -> usize {
        PURPOSES
            .iter()
            .position(|(p, _)| *p == purpose)
            .unwrap_or(PURPOSES.len())
    }

    /// The TPM produced evidence (`served`) or failed to, for `purpose`.
    pub fn evidence(&self, purpose: &str, served: bool) {
        let row = self.evidence.get(Self::purpose_index(purpose));
        bump(row.and_then(|r| r.get(usize::from(!served))));
    }

    /// Evidence served and failed since start, every purpose.
    pub fn evidence_totals(&self) -> (u64, u64) {
        self.evidence.iter().fold((0, 0), |(s, f), row| {
            (s + load(row.first()), f + load(row.get(1)))
        })
    }

    pub fn appraisal(&self, a: Appraised) {
        bump(self.appraisals.get(a as usize));
    }

    pub fn policy_apply(&self, p: PolicyApply) {
        bump(self.policy.get(p as usize));
    }

    fn render(&self, out: &mut String) {
        metric(
            out,
            "warden_attestation_evidence_total",
            "counter",
            "Evidence the TPM produced (served) or failed to produce, by purpose.",
        );
        let labels = PURPOSES
            .iter()
            .map(|(_, l)| *l)
            .chain(std::iter::once(OTHER_PURPOSE));
        for (row, purpose) in self.evidence.iter().zip(labels) {
            for (i, result) in ["served", "failed"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "warden_attestation_evidence_total{{purpose=\"{purpose}\",result=\"{result}\"}} {}",
                    load(row.get(i))
                );
            }
        }
        metric(
            out,
            "warden_attestation_appraisals_total",
            "counter",
            "Appraisals of others' evidence (POST /v1/appraisals), by result.",
        );
        for a in Appraised::ALL {
            let _ = writeln!(
                out,
                "warden_attestation_appraisals_total{{result=\"{}\"}} {}",
                a.as_str(),
                load(self.appraisals.get(a as usize))
            );
        }
        metric(
            out,
            "warden_policy_applies_total",
            "counter",
            "Policy applies by operators (PUT /v1/policy), by result.",
        );
        for p in PolicyApply::ALL {
            let _ = writeln!(
                out,
                "warden_policy_applies_total{{result=\"{}\"}} {}",
                p.as_str(),
                load(self.policy.get(p as usize))
            );
        }
    }
}

/// Router middleware: count policy applies by how they ended. Callers refused for want of the
/// operator role (401, 403) are not applies.
pub async fn observe(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if !(req.method() == Method::PUT && req.uri().path() == "/v1/policy") {
        return next.run(req).await;
    }
    let before = s.policy.active();
    let resp = next.run(req).await;
    let code = resp.status();
    let result = if code.is_success() {
        let after = s.policy.active();
        let same = match (&before, &after) {
            (Some(b), Some(a)) => Arc::ptr_eq(b, a),
            (None, None) => true,
            _ => false,
        };
        if same {
            PolicyApply::Unchanged
        } else {
            PolicyApply::Applied
        }
    } else if code == StatusCode::UNAUTHORIZED || code == StatusCode::FORBIDDEN {
        return resp;
    } else {
        PolicyApply::Refused
    };
    s.ops.counters.policy_apply(result);
    resp
}

/// A metric without labels.
fn gauge(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    metric(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

fn render_keys(out: &mut String, keys: &[TenantKeys]) {
    if keys.is_empty() {
        return;
    }
    metric(
        out,
        "warden_keys",
        "gauge",
        "Keys per tenant by state: active, disabled (by an operator), unavailable (the TPM does not unseal the current version).",
    );
    for k in keys {
        for (state, n) in [
            ("active", k.active),
            ("disabled", k.disabled),
            ("unavailable", k.unavailable),
        ] {
            let _ = writeln!(
                out,
                "warden_keys{{tenant=\"{}\",state=\"{state}\"}} {n}",
                label(&k.tenant)
            );
        }
    }
    metric(
        out,
        "warden_key_versions",
        "gauge",
        "Live key versions (current and previous) per tenant.",
    );
    for k in keys {
        let _ = writeln!(
            out,
            "warden_key_versions{{tenant=\"{}\"}} {}",
            label(&k.tenant),
            k.versions
        );
    }
}

/// Slot states, as `GET /v1/updates` names them.
const SLOT_STATES: [&str; 6] = ["empty", "writing", "staged", "trial", "good", "bad"];

fn render_firmware(out: &mut String, f: &FirmwareStatus) {
    let c = label(&f.component);
    if let Some(floor) = f.floor {
        metric(
            out,
            "warden_update_floor",
            "gauge",
            "The TPM security floor (SVN) of the component: nothing below it is staged or booted.",
        );
        let _ = writeln!(out, "warden_update_floor{{component=\"{c}\"}} {floor}");
    }
    metric(
        out,
        "warden_update_booted_svn",
        "gauge",
        "SVN of the firmware that booted (0: the factory image).",
    );
    let _ = writeln!(
        out,
        "warden_update_booted_svn{{component=\"{c}\"}} {}",
        f.booted.svn.unwrap_or(0)
    );
    metric(
        out,
        "warden_update_trial",
        "gauge",
        "1 while the booted slot runs on trial (commit it, or the next start falls back).",
    );
    let _ = writeln!(
        out,
        "warden_update_trial{{component=\"{c}\"}} {}",
        u8::from(f.booted.trial)
    );
    if !f.slots.is_empty() {
        metric(
            out,
            "warden_update_slot",
            "gauge",
            "The firmware slots: 1 for the state each is in.",
        );
        for slot in &f.slots {
            for state in SLOT_STATES {
                let _ = writeln!(
                    out,
                    "warden_update_slot{{slot=\"{}\",state=\"{state}\"}} {}",
                    label(&slot.slot),
                    u8::from(slot.state == state)
                );
            }
        }
    }
}

fn render_export(out: &mut String, e: &crate::export::ExportStatus) {
    gauge(
        out,
        "warden_audit_export_backlog",
        "gauge",
        "Audit entries not yet delivered to the syslog collector.",
        e.log_size.saturating_sub(e.delivered),
    );
    gauge(
        out,
        "warden_audit_export_delivered",
        "gauge",
        "Audit entries delivered to the syslog collector (or skipped): [0, delivered).",
        e.delivered,
    );
    gauge(
        out,
        "warden_audit_export_skipped_total",
        "counter",
        "Entries skipped because the backlog passed max_backlog (each skip is an audit.export-gap event).",
        e.skipped,
    );
    gauge(
        out,
        "warden_audit_export_batches_total",
        "counter",
        "Batches the collector confirmed since wardend started.",
        e.batches,
    );
    gauge(
        out,
        "warden_audit_export_up",
        "gauge",
        "0 when the last delivery to the collector failed.",
        u8::from(e.last_error.is_none()),
    );
    if let Some(ms) = e.last_delivery_ms {
        gauge(
            out,
            "warden_audit_export_last_delivery_timestamp_seconds",
            "gauge",
            "When the collector last confirmed a batch.",
            ms / 1000,
        );
    }
}

async fn metrics(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller
        .operator()
        .map_err(|r| ApiError::new(r.status(), r.message()))?;
    let (facts, keys) = status::facts(&s).await;
    let readiness = status::assess(&facts);
    let tpm_ok = facts.tpm.as_ref().is_ok_and(|t| t.replays.is_ok());
    let (firmware, checkpoint) =
        tokio::join!(status::firmware(&s, tpm_ok), status::last_checkpoint(&s));
    let mut out = String::new();

    metric(
        &mut out,
        "warden_build_info",
        "gauge",
        "wardend's version (always 1).",
    );
    let _ = writeln!(
        out,
        "warden_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    gauge(
        &mut out,
        "warden_start_time_seconds",
        "gauge",
        "When wardend started (Unix seconds).",
        s.ops.started_ms() / 1000,
    );
    gauge(
        &mut out,
        "warden_ready",
        "gauge",
        "1 when GET /v1/ready answers 200 (every required check passes).",
        u8::from(readiness.ready),
    );
    metric(
        &mut out,
        "warden_ready_check",
        "gauge",
        "Each check of GET /v1/ready: 1 when it passes.",
    );
    for c in &readiness.checks {
        let _ = writeln!(
            out,
            "warden_ready_check{{check=\"{}\"}} {}",
            c.name,
            u8::from(c.ok)
        );
    }

    // TPM and attestation.
    gauge(
        &mut out,
        "warden_tpm_up",
        "gauge",
        "1 when the TPM thread answered a PCR read within 2 s.",
        u8::from(tpm_ok),
    );
    if let Ok(t) = &facts.tpm {
        gauge(
            &mut out,
            "warden_measurement_log_events",
            "gauge",
            "Events in the appliance measurement log.",
            t.events,
        );
        if let Ok(replays) = t.replays {
            gauge(
                &mut out,
                "warden_measurement_log_consistent",
                "gauge",
                "1 when the measurement log replays to the appliance PCR.",
                u8::from(replays),
            );
        }
    }
    s.ops.counters.render(&mut out);

    // Policy.
    let active = s.policy.active();
    gauge(
        &mut out,
        "warden_policy_version",
        "gauge",
        "Version of the policy in force (0: none).",
        active.as_ref().map_or(0, |a| a.policy.version),
    );
    if let Some(a) = &active {
        gauge(
            &mut out,
            "warden_policy_applied_timestamp_seconds",
            "gauge",
            "When the policy in force was applied (or loaded at start).",
            a.since_ms / 1000,
        );
    }

    // Keys.
    render_keys(&mut out, &status::key_counts(&keys));

    // Audit.
    gauge(
        &mut out,
        "warden_audit_log_entries",
        "gauge",
        "Entries in the audit log.",
        s.audit.store().len(),
    );
    gauge(
        &mut out,
        "warden_audit_log_writable",
        "gauge",
        "1 when the audit store accepts appends.",
        u8::from(facts.audit.is_ok()),
    );
    if let Ok(Some(c)) = &checkpoint {
        gauge(
            &mut out,
            "warden_audit_checkpoint_size",
            "gauge",
            "Tree size of the last signed checkpoint.",
            c.size,
        );
        if let Some(ms) = c.signed_ms {
            gauge(
                &mut out,
                "warden_audit_checkpoint_timestamp_seconds",
                "gauge",
                "When the last checkpoint was signed.",
                ms / 1000,
            );
        }
    }
    if let Some(e) = &facts.export {
        render_export(&mut out, e);
    }

    // Firmware.
    if let Some(f) = &firmware {
        render_firmware(&mut out, f);
    }

    // Data plane and peers.
    if let Some(d) = &s.dataplane {
        d.render_metrics(&mut out);
    }
    if let Some(t) = &s.telemetry {
        t.render_metrics(&mut out);
    }
    if let Some(p) = s.peering.get() {
        let peers = p.status();
        metric(
            &mut out,
            "warden_peer_state",
            "gauge",
            "The control channel to each peer appliance: 1 for the state it is in.",
        );
        for peer in &peers {
            for state in crate::peering::PeerState::ALL {
                let _ = writeln!(
                    out,
                    "warden_peer_state{{peer=\"{}\",state=\"{}\"}} {}",
                    label(&peer.node),
                    state.as_str(),
                    u8::from(peer.state == state)
                );
            }
        }
        metric(
            &mut out,
            "warden_peer_attested",
            "gauge",
            "1 when the peer's evidence verified and its SAs may exist, else 0.",
        );
        for peer in &peers {
            let _ = writeln!(
                out,
                "warden_peer_attested{{peer=\"{}\"}} {}",
                label(&peer.node),
                u8::from(peer.state == crate::peering::PeerState::Attested)
            );
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_purposes_and_results_apart() {
        let c = Counters::default();
        c.evidence(purpose::TENANT_API, true);
        c.evidence(purpose::TENANT_API, true);
        c.evidence(purpose::PEER_CHANNEL, false);
        c.evidence("something/else", true);
        c.appraisal(Appraised::Refused);
        c.policy_apply(PolicyApply::Applied);
        c.policy_apply(PolicyApply::Refused);
        c.policy_apply(PolicyApply::Refused);
        assert_eq!(c.evidence_totals(), (3, 1));
        let mut out = String::new();
        c.render(&mut out);
        for line in [
            "warden_attestation_evidence_total{purpose=\"tenant-api\",result=\"served\"} 2",
            "warden_attestation_evidence_total{purpose=\"tenant-api\",result=\"failed\"} 0",
            "warden_attestation_evidence_total{purpose=\"peer-channel\",result=\"failed\"} 1",
            "warden_attestation_evidence_total{purpose=\"key-provision\",result=\"served\"} 0",
            "warden_attestation_evidence_total{purpose=\"other\",result=\"served\"} 1",
            "warden_attestation_appraisals_total{result=\"refused\"} 1",
            "warden_attestation_appraisals_total{result=\"affirming\"} 0",
            "warden_policy_applies_total{result=\"applied\"} 1",
            "warden_policy_applies_total{result=\"unchanged\"} 0",
            "warden_policy_applies_total{result=\"refused\"} 2",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in:\n{out}");
        }
    }

    #[test]
    fn firmware_series_name_the_state_each_slot_is_in() {
        let f = FirmwareStatus {
            component: "firmware".into(),
            booted: crate::updates::Booted {
                slot: Some("b".into()),
                release: Some("1.1".into()),
                svn: Some(4),
                trial: true,
                measurement: None,
            },
            floor: Some(3),
            slots: vec![crate::updates::SlotStatus {
                slot: "b".into(),
                state: "trial".into(),
                release: Some("1.1".into()),
                svn: Some(4),
                boots_left: Some(1),
                reason: None,
                active: false,
                booted: true,
            }],
            error: None,
        };
        let mut out = String::new();
        render_firmware(&mut out, &f);
        for line in [
            "warden_update_floor{component=\"firmware\"} 3",
            "warden_update_booted_svn{component=\"firmware\"} 4",
            "warden_update_trial{component=\"firmware\"} 1",
            "warden_update_slot{slot=\"b\",state=\"trial\"} 1",
            "warden_update_slot{slot=\"b\",state=\"good\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in:\n{out}");
        }
        // No floor read: no floor series (never a made-up 0).
        let mut out = String::new();
        render_firmware(
            &mut out,
            &FirmwareStatus {
                floor: None,
                slots: Vec::new(),
                ..f
            },
        );
        assert!(!out.contains("warden_update_floor{"), "{out}");
        assert!(!out.contains("warden_update_slot{"), "{out}");
    }
}
