//! The policy admin API (operators only): show, validate, diff, apply. Bodies are policy
//! documents (TOML, docs/policy.md), up to `warden_policy::MAX_POLICY_BYTES`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::Json;
use serde::{Deserialize, Serialize};
use warden_policy::{Policy, PolicyError};

use crate::api::{ApiError, ApiState};
use crate::policy::ApplyError;
use crate::tls::Caller;

type AppState = Arc<ApiState>;

pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    let limit = || DefaultBodyLimit::max(warden_policy::MAX_POLICY_BYTES);
    vec![
        (Method::GET, "/v1/policy", get(show)),
        (Method::PUT, "/v1/policy", put(apply).layer(limit())),
        (
            Method::POST,
            "/v1/policy/validate",
            post(validate).layer(limit()),
        ),
        (Method::POST, "/v1/policy/diff", post(diff).layer(limit())),
    ]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameQuery {
    /// The document's name in diagnostics (e.g. the operator's file name).
    #[serde(default)]
    name: Option<String>,
}

impl NameQuery {
    fn name(&self) -> String {
        let n: String = self
            .name
            .as_deref()
            .unwrap_or("policy")
            .chars()
            .filter(|c| !c.is_control())
            .take(256)
            .collect();
        if n.is_empty() {
            "policy".into()
        } else {
            n
        }
    }
}

/// One diagnostic as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiagnosticJson {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

fn invalid(e: &PolicyError) -> Response {
    let diagnostics: Vec<DiagnosticJson> = e
        .diagnostics
        .iter()
        .map(|d| DiagnosticJson {
            file: d.file.clone(),
            line: d.line,
            column: d.column,
            path: d.path.clone(),
            message: d.message.clone(),
            hint: d.hint.clone(),
        })
        .collect();
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(serde_json::json!({
            "error": format!("the policy is not valid ({} problems)", diagnostics.len()),
            "diagnostics": diagnostics,
        })),
    )
        .into_response()
}

fn operator(caller: &Caller) -> Result<String, ApiError> {
    caller
        .operator()
        .map(str::to_owned)
        .map_err(|r| ApiError::new(r.status(), r.message()))
}

/// A policy, summarized.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub version: u64,
    pub digest: String,
    pub description: String,
    pub nodes: usize,
    pub tenants: usize,
    pub segments: usize,
    pub rules: Vec<String>,
    /// Each limit, e.g. `l0: tenant globex: 100000000 bit/s (burst 65536 B); drop`.
    #[serde(default)]
    pub limits: Vec<String>,
}

fn summary(p: &Policy) -> Summary {
    Summary {
        version: p.version,
        digest: p.digest_hex(),
        description: p.description.clone(),
        nodes: p.nodes.len(),
        tenants: p.tenants.len(),
        segments: p.segments.len(),
        rules: p.rules.iter().map(|r| p.describe(r)).collect(),
        limits: p
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| format!("l{i}: {}", p.describe_limit(l)))
            .collect(),
    }
}

async fn show(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    operator(&caller)?;
    let service = Arc::clone(&s.policy);
    let counters = tokio::task::spawn_blocking(move || service.counters())
        .await
        .map_err(|_| ApiError::unavailable("reading the counters failed to run"))?;
    let counters = match counters {
        None => serde_json::Value::Null,
        Some(Ok(c)) => {
            let count = |c: &warden_enforcer::nft::Count| serde_json::json!({ "packets": c.packets, "bytes": c.bytes });
            serde_json::json!({
                "rules": c.rules.iter().map(|(k, v)| (k.clone(), count(v))).collect::<serde_json::Map<_, _>>(),
                "flows_dropped": count(&c.flows_dropped),
                "limits": c.limits.iter().map(|(k, v)| (k.clone(), count(v))).collect::<serde_json::Map<_, _>>(),
                "wire_accepted": count(&c.wire_accepted),
                "wire_dropped": count(&c.wire_dropped),
            })
        }
        Some(Err(e)) => serde_json::json!({ "error": e }),
    };
    let body = match s.policy.active() {
        None => serde_json::json!({ "policy": null, "counters": counters }),
        Some(a) => serde_json::json!({
            "policy": summary(&a.policy),
            "since_ms": a.since_ms,
            "document": a.text,
            "counters": counters,
        }),
    };
    Ok(Json(body).into_response())
}

async fn validate(
    caller: Caller,
    Query(q): Query<NameQuery>,
    body: String,
) -> Result<Response, ApiError> {
    operator(&caller)?;
    let name = q.name();
    let parsed = tokio::task::spawn_blocking(move || crate::policy::parse_policy(&body, &name))
        .await
        .map_err(|_| ApiError::unavailable("validation failed to run"))?;
    Ok(match parsed {
        Ok(p) => Json(serde_json::json!({ "valid": true, "policy": summary(&p) })).into_response(),
        Err(e) => invalid(&e),
    })
}

/// What changes between the policy in force and an offered one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Diff {
    pub from: Option<(u64, String)>,
    pub to: (u64, String),
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
    pub segments_added: Vec<String>,
    pub segments_removed: Vec<String>,
    pub segments_changed: Vec<String>,
    pub tenants_added: Vec<String>,
    pub tenants_removed: Vec<String>,
    pub nodes_added: Vec<String>,
    pub nodes_removed: Vec<String>,
}

/// Compare two policies by what they allow.
pub fn diff_policies(old: Option<&Policy>, new: &Policy) -> Diff {
    let rules = |p: Option<&Policy>| -> BTreeSet<String> {
        p.map(|p| p.rules.iter().map(|r| p.describe(r)).collect())
            .unwrap_or_default()
    };
    let segments = |p: Option<&Policy>| -> BTreeMap<String, String> {
        p.map(|p| {
            p.segments
                .iter()
                .map(|s| {
                    let tenant = p.tenants.get(s.tenant).map_or("?", |t| t.id.as_str());
                    let cidrs: Vec<String> = s.cidrs.iter().map(ToString::to_string).collect();
                    (s.name.clone(), format!("{tenant} {}", cidrs.join(",")))
                })
                .collect()
        })
        .unwrap_or_default()
    };
    let names = |v: Vec<String>| -> BTreeSet<String> { v.into_iter().collect() };
    let tenants = |p: Option<&Policy>| {
        names(
            p.map(|p| p.tenants.iter().map(|t| t.id.clone()).collect())
                .unwrap_or_default(),
        )
    };
    let nodes = |p: Option<&Policy>| {
        names(
            p.map(|p| {
                p.nodes
                    .iter()
                    .map(|n| format!("{} {}", n.id, n.address))
                    .collect()
            })
            .unwrap_or_default(),
        )
    };
    let minus = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
        a.difference(b).cloned().collect()
    };
    let (ro, rn) = (rules(old), rules(Some(new)));
    let (so, sn) = (segments(old), segments(Some(new)));
    let (to, tn) = (tenants(old), tenants(Some(new)));
    let (no, nn) = (nodes(old), nodes(Some(new)));
    Diff {
        from: old.map(|p| (p.version, p.digest_hex())),
        to: (new.version, new.digest_hex()),
        rules_added: minus(&rn, &ro),
        rules_removed: minus(&ro, &rn),
        segments_added: sn
            .keys()
            .filter(|k| !so.contains_key(*k))
            .cloned()
            .collect(),
        segments_removed: so
            .keys()
            .filter(|k| !sn.contains_key(*k))
            .cloned()
            .collect(),
        segments_changed: sn
            .iter()
            .filter(|(k, v)| so.get(*k).is_some_and(|o| o != *v))
            .map(|(k, _)| k.clone())
            .collect(),
        tenants_added: minus(&tn, &to),
        tenants_removed: minus(&to, &tn),
        nodes_added: minus(&nn, &no),
        nodes_removed: minus(&no, &nn),
    }
}

async fn diff(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<NameQuery>,
    body: String,
) -> Result<Response, ApiError> {
    operator(&caller)?;
    let name = q.name();
    let parsed = tokio::task::spawn_blocking(move || crate::policy::parse_policy(&body, &name))
        .await
        .map_err(|_| ApiError::unavailable("validation failed to run"))?;
    let new = match parsed {
        Ok(p) => p,
        Err(e) => return Ok(invalid(&e)),
    };
    let active = s.policy.active();
    Ok(Json(diff_policies(active.as_deref().map(|a| &a.policy), &new)).into_response())
}

async fn apply(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<NameQuery>,
    body: String,
) -> Result<Response, ApiError> {
    let op = operator(&caller)?;
    let name = q.name();
    let service = Arc::clone(&s.policy);
    let progress = s.operations.begin(
        "policy-apply",
        &format!("operator:{op}"),
        crate::policy::PolicyService::APPLY_STEPS,
    );
    let result = tokio::task::spawn_blocking(move || service.apply(&body, &name, &op, &progress))
        .await
        .map_err(|_| ApiError::unavailable("the apply failed to run"))?;
    Ok(match result {
        Ok(applied) => Json(applied).into_response(),
        Err(ApplyError::Invalid(e)) => invalid(&e),
        Err(e @ ApplyError::NotNewer { .. }) => {
            ApiError::new(StatusCode::CONFLICT, e.to_string()).into_response()
        }
        Err(e @ ApplyError::Audit(_)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    })
}
