//! The update admin API (operators only; docs/updates.md):
//!
//! - `PUT /v1/updates/inbox/{file}`: publish one repository file (metadata or `targets/<name>`)
//! - `DELETE /v1/updates/inbox`: empty the inbox
//! - `POST /v1/updates/stage`: verify the inbox's release and write it to the free slot
//! - `POST /v1/updates/commit`: mark the slot on trial good and raise the TPM floor
//! - `GET /v1/updates`: slots, floor, trusted metadata

use std::io::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Json;
use futures_util::StreamExt as _;

use super::{OpError, StageRequest, UpdateService};
use crate::api::{ApiError, ApiState};
use crate::tls::Caller;

type AppState = Arc<ApiState>;

pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/v1/updates", get(status)),
        (Method::POST, "/v1/updates/stage", post(stage)),
        (Method::POST, "/v1/updates/commit", post(commit)),
        (Method::DELETE, "/v1/updates/inbox", delete(clear)),
        (
            Method::PUT,
            "/v1/updates/inbox/{*file}",
            // The body is streamed to disk under the service's own limit.
            put(publish).layer(DefaultBodyLimit::disable()),
        ),
    ]
}

impl IntoResponse for OpError {
    fn into_response(self) -> Response {
        match &self {
            OpError::Refused(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(serde_json::json!({ "error": e.to_string(), "reason": e.reason() })),
            )
                .into_response(),
            OpError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m.clone()).into_response(),
            OpError::BadRequest(m) => ApiError::bad_request(m.clone()).into_response(),
            OpError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "update operation failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response()
            }
        }
    }
}

fn service(s: &ApiState, caller: &Caller) -> Result<(Arc<UpdateService>, String), ApiError> {
    let operator = caller
        .operator()
        .map_err(|r| ApiError::new(r.status(), r.message()))?
        .to_owned();
    let svc = s.updates.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "updates are not configured ([updates] in the config)",
        )
    })?;
    Ok((svc, format!("operator:{operator}")))
}

/// A file name from the request, made safe for the audit log.
fn clip_name(file: &str) -> String {
    file.chars().filter(|c| !c.is_control()).take(200).collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OpError::Internal(anyhow::anyhow!("the update task failed: {e}")))?
}

async fn status(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let (svc, _) = service(&s, &caller)?;
    Ok(match blocking(move || svc.status()).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    })
}

async fn stage(
    State(s): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (svc, actor) = service(&s, &caller)?;
    let req: StageRequest = if body.is_empty() {
        StageRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let progress = s
        .operations
        .begin("update-stage", &actor, UpdateService::STAGE_STEPS);
    Ok(
        match blocking(move || svc.stage(&actor, &req, &progress)).await {
            Ok(r) => Json(r).into_response(),
            Err(e) => e.into_response(),
        },
    )
}

async fn commit(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let (svc, actor) = service(&s, &caller)?;
    Ok(match blocking(move || svc.commit(&actor)).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    })
}

async fn clear(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let (svc, actor) = service(&s, &caller)?;
    Ok(match blocking(move || svc.clear_inbox(&actor)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    })
}

async fn publish(
    State(s): State<AppState>,
    caller: Caller,
    Path(file): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let (svc, actor) = service(&s, &caller)?;
    let (dest, limit) = match svc.inbox_path(&file) {
        Ok(v) => v,
        Err(e) => {
            svc.refused("publish", &actor, &clip_name(&file), &e);
            return Ok(e.into_response());
        }
    };
    // Stream to a temporary file, counting against the limit; rename when complete.
    let tmp = dest.with_extension("part");
    let parent = dest.parent().map(std::path::Path::to_path_buf);
    let result: Result<u64, OpError> = async {
        if let Some(p) = &parent {
            std::fs::create_dir_all(p)
                .map_err(|e| OpError::Internal(anyhow::anyhow!("creating {}: {e}", p.display())))?;
        }
        let mut out = std::fs::File::create(&tmp)
            .map_err(|e| OpError::Internal(anyhow::anyhow!("creating {}: {e}", tmp.display())))?;
        let mut len: u64 = 0;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| OpError::BadRequest(format!("reading the body: {e}")))?;
            len += chunk.len() as u64;
            if len > limit {
                return Err(OpError::Refused(
                    warden_firmware_update::UpdateError::Metadata(
                        warden_firmware_update::MetadataError::TooLarge {
                            what: file.clone(),
                            len,
                            limit,
                        },
                    ),
                ));
            }
            out.write_all(&chunk).map_err(|e| {
                OpError::Internal(anyhow::anyhow!("writing {}: {e}", tmp.display()))
            })?;
        }
        out.sync_all()
            .map_err(|e| OpError::Internal(anyhow::anyhow!("syncing {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &dest)
            .map_err(|e| OpError::Internal(anyhow::anyhow!("renaming {}: {e}", dest.display())))?;
        Ok(len)
    }
    .await;
    Ok(match result {
        Ok(len) => {
            svc.published(&actor, &file, len);
            Json(serde_json::json!({ "file": file, "bytes": len })).into_response()
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            svc.refused("publish", &actor, &clip_name(&file), &e);
            e.into_response()
        }
    })
}
