//! Progress of long operations (staging an update, applying a policy), for the operator who
//! started them and for anyone watching.
//!
//! A service reports through a [`Progress`] handle: the step it is in and, for steps that move
//! bytes or items, how far along it is. The API registers each operation in [`Operations`]
//! (`GET /v1/operations`) and wardctl polls that while it waits for the operation's answer
//! ([`watch`]), drawing one line that updates in place on a terminal, or a line per step (and
//! per quarter of a long step) when its output goes to a file. Each step is also logged, so
//! wardend's journal shows where a slow or stuck operation is.
//!
//! The handle unregisters the operation when dropped, so an operation that fails or panics
//! leaves nothing behind.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::Method;
use axum::routing::{get, MethodRouter};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiState};
use crate::tls::Caller;

type AppState = Arc<ApiState>;

/// Operations shown at once; more are still run, but not listed.
pub const MAX_LISTED: usize = 64;
/// How often wardctl asks for progress.
pub const POLL_EVERY: Duration = Duration::from_millis(300);

/// One running operation, as `GET /v1/operations` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationStatus {
    pub id: u64,
    /// `update-stage`, `policy-apply`.
    pub kind: String,
    pub actor: String,
    /// What it does now, e.g. `writing slot a`.
    pub step: String,
    /// Steps started so far (1-based) and the steps it has in all.
    pub step_number: u32,
    pub steps: u32,
    /// Progress within the step, when it has a size (`total` > 0).
    pub done: u64,
    pub total: u64,
    /// `bytes`, `rules` or empty.
    pub unit: String,
    pub elapsed_ms: u64,
}

struct Running {
    status: OperationStatus,
    started: Instant,
}

/// The registry of running operations.
#[derive(Default)]
pub struct Operations {
    next: AtomicU64,
    running: Mutex<BTreeMap<u64, Running>>,
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operations")
            .field("running", &self.list().len())
            .finish()
    }
}

impl Operations {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Register an operation of `kind` with `steps` steps; it is listed until the handle drops.
    pub fn begin(self: &Arc<Self>, kind: &str, actor: &str, steps: u32) -> Progress {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let status = OperationStatus {
            id,
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            step: "starting".into(),
            step_number: 0,
            steps,
            done: 0,
            total: 0,
            unit: String::new(),
            elapsed_ms: 0,
        };
        if let Ok(mut r) = self.running.lock() {
            r.insert(
                id,
                Running {
                    status,
                    started: Instant::now(),
                },
            );
        }
        Progress {
            registry: Some(Arc::clone(self)),
            id,
            kind: kind.to_owned(),
            step: Mutex::new(StepLog::default()),
        }
    }

    /// The running operations, oldest first.
    pub fn list(&self) -> Vec<OperationStatus> {
        let Ok(r) = self.running.lock() else {
            return Vec::new();
        };
        r.values()
            .take(MAX_LISTED)
            .map(|op| {
                let mut s = op.status.clone();
                s.elapsed_ms = u64::try_from(op.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                s
            })
            .collect()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut OperationStatus)) {
        if let Ok(mut r) = self.running.lock() {
            if let Some(op) = r.get_mut(&id) {
                f(&mut op.status);
            }
        }
    }

    fn end(&self, id: u64) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(&id);
        }
    }
}

#[derive(Default)]
struct StepLog {
    number: u32,
    started: Option<Instant>,
    logged_quarter: u64,
}

/// What a service reports through; [`Progress::none`] reports nowhere (tests, start-up).
pub struct Progress {
    registry: Option<Arc<Operations>>,
    id: u64,
    kind: String,
    step: Mutex<StepLog>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Progress {
    pub fn none() -> Self {
        Progress {
            registry: None,
            id: 0,
            kind: String::new(),
            step: Mutex::new(StepLog::default()),
        }
    }

    /// Enter the next step; `total` > 0 gives it a size in `unit`.
    pub fn step(&self, step: &str, total: u64, unit: &str) {
        let number = match self.step.lock() {
            Ok(mut s) => {
                if let Some(at) = s.started {
                    tracing::debug!(operation = %self.kind, step = s.number, ms = at.elapsed().as_millis(), "operation step done");
                }
                s.number = s.number.saturating_add(1);
                s.started = Some(Instant::now());
                s.logged_quarter = 0;
                s.number
            }
            Err(_) => 0,
        };
        if self.registry.is_some() {
            tracing::info!(operation = %self.kind, step, number, total, unit, "operation step");
        }
        if let Some(r) = &self.registry {
            r.update(self.id, |s| {
                s.step = step.to_owned();
                s.step_number = number;
                s.done = 0;
                s.total = total;
                s.unit = unit.to_owned();
            });
        }
    }

    /// `done` of the step's `total` so far (logged at each quarter).
    pub fn advance(&self, done: u64) {
        let Some(r) = &self.registry else { return };
        let mut total = 0;
        r.update(self.id, |s| {
            s.done = done;
            total = s.total;
        });
        if let Some(quarter) = done.saturating_mul(4).checked_div(total) {
            if let Ok(mut s) = self.step.lock() {
                if quarter > s.logged_quarter && quarter < 4 {
                    s.logged_quarter = quarter;
                    tracing::info!(operation = %self.kind, done, total, "operation progress");
                }
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(r) = &self.registry {
            r.end(self.id);
        }
    }
}

/// `GET /v1/operations` (operators): what runs now.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![(Method::GET, "/v1/operations", get(list))]
}

async fn list(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<OperationStatus>>, ApiError> {
    caller
        .operator()
        .map_err(|r| ApiError::new(r.status(), r.message()))?;
    Ok(Json(s.operations.list()))
}

/// One line for an operation: `[2/5] writing slot a  48.0 of 100.0 MiB (48%)  1.2 s`.
pub fn render(op: &OperationStatus) -> String {
    let mut line = format!("[{}/{}] {}", op.step_number, op.steps, op.step);
    if let Some(pct) = op.done.saturating_mul(100).checked_div(op.total) {
        let (done, total) = match op.unit.as_str() {
            "bytes" => (mib(op.done), format!("{} MiB", mib(op.total))),
            unit => (
                op.done.to_string(),
                format!("{} {unit}", op.total).trim_end().to_owned(),
            ),
        };
        line.push_str(&format!("  {done} of {total} ({pct}%)"));
    }
    line.push_str(&format!("  {:.1} s", op.elapsed_ms as f64 / 1000.0));
    line
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

/// What [`watch`] prints when it is not drawing in place: the step changed, or a long step
/// passed another quarter.
fn worth_a_line(last: Option<&OperationStatus>, now: &OperationStatus) -> bool {
    match last {
        None => true,
        Some(l) if l.step_number != now.step_number || l.step != now.step => true,
        Some(l) => {
            let quarter = |done: u64| done.saturating_mul(4).checked_div(now.total);
            quarter(l.done) < quarter(now.done)
        }
    }
}

/// Run `request` (the call that starts an operation of `kind` and answers when it is done),
/// showing the operation's progress on stderr meanwhile. Progress is best effort: when the
/// caller may not list operations, or the server is older, nothing is shown.
pub async fn watch<T>(
    http: &reqwest::Client,
    base: &str,
    kind: &str,
    request: impl std::future::Future<Output = T>,
) -> T {
    let url = format!("{base}/v1/operations");
    let in_place = std::io::stderr().is_terminal();
    let mut last: Option<OperationStatus> = None;
    let mut drew = false;
    tokio::pin!(request);
    let mut ticker = tokio::time::interval(POLL_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let out = loop {
        tokio::select! {
            out = &mut request => break out,
            _ = ticker.tick() => {
                let Some(op) = poll(http, &url, kind).await else { continue };
                let mut err = std::io::stderr().lock();
                if in_place {
                    let _ = write!(err, "\r\x1b[2K{}", render(&op));
                    drew = true;
                } else if worth_a_line(last.as_ref(), &op) {
                    let _ = writeln!(err, "{}", render(&op));
                }
                let _ = err.flush();
                last = Some(op);
            }
        }
    };
    if drew {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
    out
}

/// The newest running operation of `kind`, if the server shows one.
async fn poll(http: &reqwest::Client, url: &str, kind: &str) -> Option<OperationStatus> {
    let resp = http
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let ops: Vec<OperationStatus> = resp.json().await.ok()?;
    ops.into_iter()
        .filter(|o| o.kind == kind)
        .max_by_key(|o| o.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_is_listed_with_its_step_until_its_handle_drops() {
        let ops = Operations::new();
        let p = ops.begin("update-stage", "operator:alice", 3);
        p.step("verifying metadata", 0, "");
        p.step("writing slot a", 4 << 20, "bytes");
        p.advance(1 << 20);
        let list = ops.list();
        assert_eq!(list.len(), 1, "{list:?}");
        let s = &list[0];
        assert_eq!(s.kind, "update-stage");
        assert_eq!(s.step, "writing slot a");
        assert_eq!((s.step_number, s.steps), (2, 3));
        assert_eq!((s.done, s.total), (1 << 20, 4 << 20));
        assert_eq!(render(s).split("  ").nth(1), Some("1.0 of 4.0 MiB (25%)"));
        drop(p);
        assert!(ops.list().is_empty());
    }

    #[test]
    fn a_failed_operation_leaves_nothing_behind() {
        let ops = Operations::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let p = ops.begin("policy-apply", "operator:alice", 5);
            p.step("validating", 10, "rules");
            panic!("the step failed");
        }));
        assert!(r.is_err());
        assert!(ops.list().is_empty());
    }

    #[test]
    fn ids_are_distinct_and_the_list_is_bounded() {
        let ops = Operations::new();
        let handles: Vec<_> = (0..MAX_LISTED + 5)
            .map(|_| ops.begin("policy-apply", "a", 1))
            .collect();
        let list = ops.list();
        assert_eq!(list.len(), MAX_LISTED);
        let mut ids: Vec<u64> = list.iter().map(|o| o.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), MAX_LISTED);
        drop(handles);
        assert!(ops.list().is_empty());
    }

    #[test]
    fn a_line_per_step_and_per_quarter_when_not_drawing_in_place() {
        let op = |n: u32, done: u64| OperationStatus {
            id: 1,
            kind: "update-stage".into(),
            actor: "a".into(),
            step: format!("step {n}"),
            step_number: n,
            steps: 3,
            done,
            total: 100,
            unit: "bytes".into(),
            elapsed_ms: 0,
        };
        assert!(worth_a_line(None, &op(1, 0)));
        assert!(!worth_a_line(Some(&op(1, 0)), &op(1, 10)));
        assert!(worth_a_line(Some(&op(1, 10)), &op(1, 30)));
        assert!(worth_a_line(Some(&op(1, 30)), &op(2, 0)));
        let none = Progress::none();
        none.step("nothing registered", 10, "rules");
        none.advance(5);
    }

    #[test]
    fn rendering_names_the_unit_and_never_divides_by_zero() {
        let mut op = OperationStatus {
            id: 1,
            kind: "policy-apply".into(),
            actor: "a".into(),
            step: "validating".into(),
            step_number: 1,
            steps: 5,
            done: 0,
            total: 0,
            unit: String::new(),
            elapsed_ms: 1500,
        };
        assert_eq!(render(&op), "[1/5] validating  1.5 s");
        op.total = 200;
        op.done = 50;
        op.unit = "rules".into();
        assert_eq!(
            render(&op),
            "[1/5] validating  50 of 200 rules (25%)  1.5 s"
        );
    }
}
