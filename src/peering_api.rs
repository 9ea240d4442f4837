//! `GET /v1/peers` (operators): the control channel to each peer appliance, its last
//! attestation, the key-exchange group and the SAs per tenant (docs/peering.md, "Status").

use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::routing::{get, MethodRouter};
use axum::Json;

use crate::api::{ApiError, ApiState};
use crate::peering::PeersResponse;
use crate::tls::Caller;

type AppState = Arc<ApiState>;

pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![(Method::GET, "/v1/peers", get(peers))]
}

async fn peers(State(s): State<AppState>, caller: Caller) -> Result<Json<PeersResponse>, ApiError> {
    caller
        .operator()
        .map_err(|r| ApiError::new(r.status(), r.message()))?;
    Ok(Json(match s.peering.get() {
        Some(p) => p.response(),
        None => PeersResponse {
            node: s.name.clone(),
            enabled: false,
            in_policy: s
                .policy
                .active()
                .is_some_and(|a| a.policy.nodes.iter().any(|n| n.id == s.name)),
            listen: None,
            peers: Vec::new(),
        },
    }))
}
