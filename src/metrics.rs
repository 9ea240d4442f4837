//! `GET /metrics`: Prometheus text exposition (format 0.0.4) for operators' scrapers, which
//! authenticate with an operator client certificate like any other operator.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};

use crate::api::{ApiError, ApiState};
use crate::dataplane::{label, metric};
use crate::tls::Caller;

type AppState = std::sync::Arc<ApiState>;

pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![(Method::GET, "/metrics", get(metrics))]
}

async fn metrics(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller
        .operator()
        .map_err(|r| ApiError::new(r.status(), r.message()))?;
    let mut out = String::new();
    metric(
        &mut out,
        "warden_policy_version",
        "gauge",
        "Version of the policy in force (0: none).",
    );
    let version = s.policy.active().map_or(0, |a| a.policy.version);
    let _ = writeln!(out, "warden_policy_version {version}");
    metric(
        &mut out,
        "warden_audit_log_entries",
        "gauge",
        "Entries in the audit log.",
    );
    let _ = writeln!(out, "warden_audit_log_entries {}", s.audit.store().len());
    if let Some(d) = &s.dataplane {
        d.render_metrics(&mut out);
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
