//! The audit API: checkpoints, entries with inclusion proofs, consistency proofs and a live
//! stream. Every route needs a client certificate: operators see every entry, a tenant only
//! entries whose `tenant` is its own (other entries are not found, on every route).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::Method;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Json;
use serde::{Deserialize, Serialize};
use warden_audit::event::Event;
use warden_audit::merkle;

use crate::api::{ApiError, ApiState};
use crate::identity::Identity;
use crate::tls::Caller;

/// Most entries one request returns.
pub const MAX_PAGE: u64 = 1000;

type AppState = Arc<ApiState>;

pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/v1/audit/checkpoint", get(checkpoint)),
        (Method::GET, "/v1/audit/entries", get(entries)),
        (Method::GET, "/v1/audit/proof/inclusion", get(inclusion)),
        (Method::GET, "/v1/audit/proof/consistency", get(consistency)),
        (Method::GET, "/v1/audit/stream", get(stream)),
        (Method::GET, "/v1/audit/export", get(export_status)),
    ]
}

/// One entry as served: the exact stored bytes (`data`, the leaf) and, in lists, its proof.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    /// The stored event JSON, exactly as hashed into the leaf.
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesResponse {
    /// The tree size the proofs are against: the size of `checkpoint`.
    pub size: u64,
    pub checkpoint: String,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofResponse {
    pub proof: Vec<String>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "audit API failure");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("audit log unavailable: {e}"),
    )
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such audit entry")
}

/// The entry at `seq` if `caller` may see it.
fn visible(s: &ApiState, caller: &Identity, seq: u64) -> Result<Option<Vec<u8>>, ApiError> {
    let data = s.audit.store().entry(seq).map_err(internal)?;
    Ok(match caller {
        Identity::Operator(_) => Some(data),
        Identity::Tenant(t) => Event::from_leaf(&data)
            .ok()
            .filter(|e| e.tenant.as_deref() == Some(t.as_str()))
            .map(|_| data),
    })
}

/// Operators only: where the exports stand.
async fn export_status(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller
        .operator()
        .map_err(|r| ApiError::new(r.status(), r.message()))?;
    let syslog = s.export.as_ref().map(|rx| {
        let mut status = rx.borrow().clone();
        // The log's size now, not at the exporter's last look.
        status.log_size = s.audit.store().len();
        status
    });
    Ok(Json(serde_json::json!({ "syslog": syslog })).into_response())
}

async fn checkpoint(State(s): State<AppState>, _caller: Caller) -> Result<Response, ApiError> {
    let (note, _) = s.audit.checkpoint().map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    start: u64,
    end: Option<u64>,
}

async fn entries(
    State(s): State<AppState>,
    Caller(caller): Caller,
    Query(q): Query<Range>,
) -> Result<Json<EntriesResponse>, ApiError> {
    let st = Arc::clone(&s);
    tokio::task::spawn_blocking(move || {
        let (note, size) = st.audit.checkpoint().map_err(internal)?;
        let end = q
            .end
            .unwrap_or(size)
            .min(size)
            .min(q.start.saturating_add(MAX_PAGE));
        let mut out = Vec::new();
        for seq in q.start..end {
            if let Some(data) = visible(&st, &caller, seq)? {
                let proof = st
                    .audit
                    .store()
                    .inclusion_proof(seq, size)
                    .map_err(internal)?;
                out.push(Entry {
                    seq,
                    data: String::from_utf8_lossy(&data).into_owned(),
                    proof: Some(merkle::encode_proof(&proof)),
                });
            }
        }
        Ok(Json(EntriesResponse {
            size,
            checkpoint: note,
            entries: out,
        }))
    })
    .await
    .map_err(internal)?
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionQuery {
    seq: u64,
    size: u64,
}

async fn inclusion(
    State(s): State<AppState>,
    Caller(caller): Caller,
    Query(q): Query<InclusionQuery>,
) -> Result<Json<ProofResponse>, ApiError> {
    if q.seq >= q.size || q.size > s.audit.store().len() {
        return Err(ApiError::bad_request(format!(
            "seq {} is not in a tree of size {} (the log has {} entries)",
            q.seq,
            q.size,
            s.audit.store().len()
        )));
    }
    if visible(&s, &caller, q.seq)?.is_none() {
        return Err(not_found());
    }
    let proof = s
        .audit
        .store()
        .inclusion_proof(q.seq, q.size)
        .map_err(internal)?;
    Ok(Json(ProofResponse {
        proof: merkle::encode_proof(&proof),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    old: u64,
    new: u64,
}

/// Consistency proofs carry only subtree hashes, so every caller may have them.
async fn consistency(
    State(s): State<AppState>,
    _caller: Caller,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Json<ProofResponse>, ApiError> {
    if q.old == 0 || q.old > q.new || q.new > s.audit.store().len() {
        return Err(ApiError::bad_request(format!(
            "need 0 < old <= new <= {} (got old {}, new {})",
            s.audit.store().len(),
            q.old,
            q.new
        )));
    }
    let proof = s
        .audit
        .store()
        .consistency_proof(q.old, q.new)
        .map_err(internal)?;
    Ok(Json(ProofResponse {
        proof: merkle::encode_proof(&proof),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    #[serde(default)]
    from: u64,
    /// `entries` (default): `{seq, data}`; `ocsf`: OCSF events for a SIEM.
    #[serde(default)]
    format: Format,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Entries,
    Ocsf,
}

struct Follow {
    s: AppState,
    caller: Identity,
    next: u64,
    rx: tokio::sync::watch::Receiver<u64>,
    format: Format,
    /// Size of the last checkpoint signed for OCSF references.
    signed: u64,
}

/// One line for entry `seq`, if the caller may see it.
fn line(f: &Follow, seq: u64) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(data) = visible(&f.s, &f.caller, seq)? else {
        return Ok(None);
    };
    let mut out = match f.format {
        Format::Entries => serde_json::to_vec(&Entry {
            seq,
            data: String::from_utf8_lossy(&data).into_owned(),
            proof: None,
        }),
        Format::Ocsf => {
            let Ok(event) = Event::from_leaf(&data) else {
                return Err(internal(format!("entry {seq} does not decode")));
            };
            let leaf = merkle::leaf_hash(&data);
            serde_json::to_vec(&warden_audit::ocsf::to_ocsf(
                &event,
                warden_audit::ocsf::LogPosition {
                    seq,
                    leaf_hash: &leaf,
                    origin: &f.s.name,
                    checkpoint_size: f.signed,
                },
            ))
        }
    }
    .map_err(internal)?;
    out.push(b'\n');
    Ok(Some(out))
}

/// `GET /v1/audit/stream?from=N[&format=ocsf]`: JSON lines from sequence number N on,
/// following new entries as they are appended. A consumer that reconnects with
/// `from = last seq + 1` gets every entry exactly once. In OCSF form every line names a signed
/// checkpoint that includes it (one is signed whenever the stream catches up with the log).
async fn stream(
    State(s): State<AppState>,
    Caller(caller): Caller,
    Query(q): Query<StreamQuery>,
) -> Response {
    let follow = Follow {
        rx: s.audit.subscribe(),
        s,
        caller,
        next: q.from,
        format: q.format,
        signed: 0,
    };
    let lines = futures_util::stream::unfold(follow, |mut f| async move {
        loop {
            let len = f.s.audit.store().len();
            if f.next < len {
                if f.format == Format::Ocsf && f.signed <= f.next {
                    let st = Arc::clone(&f.s);
                    match tokio::task::spawn_blocking(move || st.audit.checkpoint()).await {
                        Ok(Ok((_, size))) => f.signed = size,
                        _ => return None,
                    }
                }
                let seq = f.next;
                f.next += 1;
                let (follow, found) = tokio::task::spawn_blocking(move || {
                    let r = line(&f, seq);
                    (f, r)
                })
                .await
                .ok()?;
                f = follow;
                match found {
                    Ok(Some(bytes)) => return Some((Ok::<_, std::io::Error>(bytes), f)),
                    Ok(None) => continue,
                    Err(_) => return None,
                }
            }
            if f.rx.changed().await.is_err() {
                return None;
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}
