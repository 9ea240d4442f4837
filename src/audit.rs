//! The appliance's audit log as a service: typed events in, durable and Merkle-committed
//! (warden-audit's store with group commit), checkpoints signed by the appliance's audit key,
//! and a notification for live readers.
//!
//! Fail closed: an operation whose audit entry cannot be written is refused by its caller
//! (`record` returns the error; handlers answer 503).

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use warden_audit::checkpoint::{CheckpointSigner, NoteSigner};
use warden_audit::event::{Event, Kind, Outcome};
use warden_audit::merkle;
use warden_audit::store::{Appender, AppenderConfig, AppenderHandle, Recovery, Store};

/// A clock step backwards larger than this (ms) is recorded as `audit.clock-jump`.
const CLOCK_JUMP_MS: i64 = 1_000;
/// Left in the state directory when an append failed and the failure could not be recorded
/// either; the next start records it and removes the file.
pub const APPEND_FAILED_MARKER: &str = "audit-append-failed.json";
/// Largest marker read back.
const MAX_MARKER_BYTES: u64 = 16 * 1024;

/// What [`APPEND_FAILED_MARKER`] holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct AppendFailures {
    count: u64,
    first_ms: i64,
    last_ms: i64,
    /// The first error and the kind of the entry it refused.
    first_error: String,
    first_kind: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Store(#[from] warden_audit::store::StoreError),
    #[error("audit event refused: {0}")]
    Event(#[from] warden_audit::event::EventError),
    #[error("cannot sign a checkpoint: {0}")]
    Checkpoint(#[from] warden_audit::checkpoint::NoteError),
    #[error("audit log state is poisoned")]
    Poisoned,
}

/// The audit log of one appliance.
pub struct AuditLog {
    store: Arc<Store>,
    appender: Appender,
    handle: Mutex<Option<AppenderHandle>>,
    signer: Mutex<CheckpointSigner>,
    vkey: String,
    last_time: AtomicI64,
    /// The log's length after each append, for live readers.
    size_tx: tokio::sync::watch::Sender<u64>,
    /// Where failures that could not be logged are left for the next start.
    marker: std::path::PathBuf,
    unrecorded: Mutex<Option<AppendFailures>>,
    /// A refused checkpoint is recorded once per run.
    refusal_recorded: std::sync::atomic::AtomicBool,
}

/// A detail value within the event limits.
fn truncate(s: &str) -> String {
    let mut end = s.len().min(warden_audit::event::MAX_DETAIL_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Load the audit signing key, or create it (mode 0600).
fn load_key(path: &Path, name: &str) -> anyhow::Result<NoteSigner> {
    crate::keyfile::load_or_create(
        path,
        "audit signing key (Ed25519 PKCS#8)",
        |der| Ok(NoteSigner::from_pkcs8(name, der)?),
        || Ok(NoteSigner::generate(name)?),
    )
}

impl AuditLog {
    /// Open the log under `state_dir` for the appliance `name` (the checkpoint origin).
    pub fn open(state_dir: &Path, name: &str) -> anyhow::Result<(Arc<AuditLog>, Recovery)> {
        let signer = load_key(&state_dir.join("audit-key.p8"), name)?;
        let vkey = signer.verifier_key();
        let (store, recovery) = Store::open(&state_dir.join("audit"))
            .with_context(|| format!("opening the audit log in {}", state_dir.display()))?;
        let store = Arc::new(store);
        let checkpoints = CheckpointSigner::open(signer, &state_dir.join("audit-checkpoint.note"))?;
        let lost = checkpoints
            .last()
            .filter(|last| last.size > store.len())
            .map(|last| last.size);
        if let Some(signed) = lost {
            tracing::error!(
                signed,
                stored = store.len(),
                "the audit log is shorter than a checkpoint already signed: entries were lost; no new checkpoint can be signed"
            );
        }
        let (appender, handle) = Appender::spawn(Arc::clone(&store), AppenderConfig::default())?;
        let (size_tx, _) = tokio::sync::watch::channel(store.len());
        let log = Arc::new(AuditLog {
            store,
            appender,
            handle: Mutex::new(Some(handle)),
            signer: Mutex::new(checkpoints),
            vkey,
            last_time: AtomicI64::new(i64::MIN),
            size_tx,
            marker: state_dir.join(APPEND_FAILED_MARKER),
            unrecorded: Mutex::new(None),
            refusal_recorded: std::sync::atomic::AtomicBool::new(false),
        });
        if let Some(signed) = lost {
            log.record(
                Event::new(
                    now_ms(),
                    Kind::AuditVerifyFailed,
                    "wardend",
                    "audit-log",
                    Outcome::Failure,
                )
                .detail(
                    "reason",
                    "the log is shorter than a checkpoint signed before",
                )
                .detail("signed_size", signed.to_string())
                .detail("stored_size", log.store.len().to_string()),
            )?;
        }
        log.record_left_failures()?;
        if !recovery.is_clean() {
            log.record(
                Event::new(
                    now_ms(),
                    Kind::AuditTailCut,
                    "wardend",
                    "audit-log",
                    Outcome::Failure,
                )
                .detail("cut_bytes", recovery.cut_bytes.to_string())
                .detail("rebuilt_index", recovery.rebuilt_index.to_string())
                .detail("rebuilt_nodes", recovery.rebuilt_nodes.to_string())
                .detail("index_ahead", recovery.index_ahead.to_string()),
            )?;
        }
        Ok((log, recovery))
    }

    /// The signed-note verifier key of the audit log (`name+keyid+key`).
    pub fn verifier_key(&self) -> &str {
        &self.vkey
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A receiver that sees the log's length change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.size_tx.subscribe()
    }

    /// Record an event durably (blocks until fsynced); returns its sequence number.
    pub fn record(&self, event: Event) -> Result<u64, AuditError> {
        let last = self.last_time.swap(event.time_ms, Ordering::AcqRel);
        if last != i64::MIN && event.time_ms < last.saturating_sub(CLOCK_JUMP_MS) {
            let jump = Event::new(
                event.time_ms,
                Kind::AuditClockJump,
                "wardend",
                "wall-clock",
                Outcome::Failure,
            )
            .detail("previous_ms", last.to_string())
            .detail("now_ms", event.time_ms.to_string());
            self.append(jump)?;
        }
        self.append(event)
    }

    fn append(&self, event: Event) -> Result<u64, AuditError> {
        let kind = event.kind;
        match self.appender.append(event.to_leaf()?) {
            Ok(seq) => {
                self.size_tx.send_replace(self.store.len());
                Ok(seq)
            }
            Err(e) => {
                tracing::error!(error = %e, kind = kind.name(), "audit append failed; the operation is refused");
                self.append_failed(kind, &e);
                if matches!(e, warden_audit::store::StoreError::Full) {
                    // Best effort: the overflow itself is an event once there is room.
                    let _ = self.appender.submit(
                        Event::new(
                            now_ms(),
                            Kind::AuditQueueOverflow,
                            "wardend",
                            "audit-log",
                            Outcome::Failure,
                        )
                        .to_leaf()
                        .unwrap_or_default(),
                    );
                }
                Err(e.into())
            }
        }
    }

    /// Record a failed append as an event; when that fails too, leave it in the marker file
    /// for the next start.
    fn append_failed(&self, kind: Kind, e: &warden_audit::store::StoreError) {
        let now = now_ms();
        let failed = Event::new(
            now,
            Kind::AuditAppendFailed,
            "wardend",
            kind.name(),
            Outcome::Failure,
        )
        .detail("error", e.to_string());
        let recorded = failed
            .to_leaf()
            .ok()
            .is_some_and(|leaf| self.appender.append(leaf).is_ok());
        if recorded {
            self.size_tx.send_replace(self.store.len());
            return;
        }
        let Ok(mut unrecorded) = self.unrecorded.lock() else {
            return;
        };
        let f = unrecorded.get_or_insert_with(|| AppendFailures {
            first_ms: now,
            first_error: e.to_string(),
            first_kind: kind.name().to_owned(),
            ..AppendFailures::default()
        });
        f.count += 1;
        f.last_ms = now;
        let written = serde_json::to_vec(&*f)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::keyfile::write_atomically(&self.marker, &bytes));
        if let Err(w) = written {
            tracing::error!(error = %w, path = %self.marker.display(), "cannot leave a record of the failed append either");
        }
    }

    /// Record what a previous run could not (see [`APPEND_FAILED_MARKER`]).
    fn record_left_failures(&self) -> Result<(), AuditError> {
        let mut text = Vec::new();
        match std::fs::File::open(&self.marker) {
            Ok(f) => {
                if let Err(e) = std::io::Read::read_to_end(
                    &mut std::io::Read::take(f, MAX_MARKER_BYTES),
                    &mut text,
                ) {
                    tracing::error!(error = %e, path = %self.marker.display(), "cannot read the failed-append marker");
                }
            }
            Err(_) => return Ok(()),
        }
        let event = Event::new(
            now_ms(),
            Kind::AuditAppendFailed,
            "wardend",
            "audit-log",
            Outcome::Failure,
        )
        .detail("recorded", "at the next start");
        let event = match serde_json::from_slice::<AppendFailures>(&text) {
            Ok(f) => event
                .detail("count", f.count.to_string())
                .detail("first_ms", f.first_ms.to_string())
                .detail("last_ms", f.last_ms.to_string())
                .detail("first_error", truncate(&f.first_error))
                .detail("first_kind", truncate(&f.first_kind)),
            Err(e) => event.detail("marker", format!("unreadable: {e}")),
        };
        self.record(event)?;
        if let Err(e) = std::fs::remove_file(&self.marker) {
            tracing::error!(error = %e, path = %self.marker.display(), "cannot remove the failed-append marker");
        }
        Ok(())
    }

    /// Record from async code (the append blocks on fsync).
    pub async fn record_async(self: &Arc<Self>, event: Event) -> Result<u64, AuditError> {
        let log = Arc::clone(self);
        tokio::task::spawn_blocking(move || log.record(event))
            .await
            .map_err(|_| AuditError::Poisoned)?
    }

    /// Sign a checkpoint of the log as it is now; returns the note and the size it commits to.
    /// The signer refuses to sign anything that is not an extension of what it signed before.
    pub fn checkpoint(&self) -> Result<(String, u64), AuditError> {
        let size = self.store.len();
        let root = self.store.root(size)?;
        let store = Arc::clone(&self.store);
        let mut signer = self.signer.lock().map_err(|_| AuditError::Poisoned)?;
        let signed = signer.sign(size, root, |old_size, old_root| {
            store
                .consistency_proof(old_size, size)
                .ok()
                .is_some_and(|proof| {
                    merkle::verify_consistency(old_size, size, old_root, &root, &proof).is_ok()
                })
        });
        drop(signer);
        match signed {
            Ok(note) => Ok((note, size)),
            Err(e) => {
                if !self.refusal_recorded.swap(true, Ordering::AcqRel) {
                    let event = Event::new(
                        now_ms(),
                        Kind::AuditVerifyFailed,
                        "wardend",
                        "audit-checkpoint",
                        Outcome::Failure,
                    )
                    .detail("reason", truncate(&e.to_string()))
                    .detail("size", size.to_string());
                    if let Err(r) = self.record(event) {
                        tracing::error!(error = %r, "cannot record the refused checkpoint");
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Commit what is queued and stop the writer.
    pub fn shutdown(&self) {
        if let Some(h) = self.handle.lock().ok().and_then(|mut h| h.take()) {
            let stats = h.shutdown();
            tracing::info!(
                batches = stats.batches,
                entries = stats.entries,
                "audit log closed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(log: &AuditLog) -> Vec<(Kind, Event)> {
        let n = log.store().len();
        log.store()
            .entries(0..n)
            .unwrap()
            .iter()
            .map(|leaf| {
                let e = Event::from_leaf(leaf).unwrap();
                (e.kind, e)
            })
            .collect()
    }

    fn event() -> Event {
        Event::new(
            now_ms(),
            Kind::AttestationServed,
            "tenant:acme",
            "node",
            Outcome::Success,
        )
    }

    #[test]
    fn a_failed_append_is_itself_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = AuditLog::open(dir.path(), "node").unwrap();
        // Within the event limits, but more than a stored entry may hold.
        let mut big = event();
        for i in 0..warden_audit::event::MAX_DETAILS {
            big = big.detail(&format!("k{i}"), "x".repeat(4000));
        }
        let err = log.record(big).unwrap_err();
        assert!(matches!(
            err,
            AuditError::Store(warden_audit::store::StoreError::TooLarge { .. })
        ));
        let all = kinds(&log);
        let (kind, last) = all.last().unwrap();
        assert_eq!(*kind, Kind::AuditAppendFailed);
        assert_eq!(last.subject, "attestation.served");
        assert!(last.details["error"].contains("bytes"), "{last:?}");
        assert!(!dir.path().join(APPEND_FAILED_MARKER).exists());
        log.shutdown();
    }

    #[test]
    fn failures_a_previous_run_could_not_record_are_recorded_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join(APPEND_FAILED_MARKER);
        std::fs::write(
            &marker,
            r#"{"count":3,"first_ms":1,"last_ms":2,"first_error":"disk full","first_kind":"attestation.served"}"#,
        )
        .unwrap();
        let (log, _) = AuditLog::open(dir.path(), "node").unwrap();
        let all = kinds(&log);
        let (kind, e) = all.last().unwrap();
        assert_eq!(*kind, Kind::AuditAppendFailed);
        assert_eq!(e.details["count"], "3");
        assert_eq!(e.details["first_error"], "disk full");
        assert!(!marker.exists());
        log.shutdown();
        drop(log);

        // An unreadable marker is still a signal.
        std::fs::write(&marker, b"\xff garbage").unwrap();
        let (log, _) = AuditLog::open(dir.path(), "node").unwrap();
        let all = kinds(&log);
        let (kind, e) = all.last().unwrap();
        assert_eq!(*kind, Kind::AuditAppendFailed);
        assert!(e.details["marker"].starts_with("unreadable"), "{e:?}");
        assert!(!marker.exists());
        log.shutdown();
    }

    #[test]
    fn a_log_shorter_than_its_signed_checkpoint_is_recorded() {
        let first = tempfile::tempdir().unwrap();
        let (log, _) = AuditLog::open(first.path(), "node").unwrap();
        for _ in 0..3 {
            log.record(event()).unwrap();
        }
        let (_, size) = log.checkpoint().unwrap();
        assert_eq!(size, 3);
        log.shutdown();
        drop(log);
        // Same key and signed checkpoint, but the entries are gone.
        let second = tempfile::tempdir().unwrap();
        for f in ["audit-key.p8", "audit-checkpoint.note"] {
            std::fs::copy(first.path().join(f), second.path().join(f)).unwrap();
        }
        let (log, _) = AuditLog::open(second.path(), "node").unwrap();
        let all = kinds(&log);
        assert_eq!(all.len(), 1);
        let (kind, e) = &all[0];
        assert_eq!(*kind, Kind::AuditVerifyFailed);
        assert_eq!(e.details["signed_size"], "3");
        assert_eq!(e.details["stored_size"], "0");
        // Signing is refused, and the refusal is recorded once per run.
        assert!(log.checkpoint().is_err());
        assert!(log.checkpoint().is_err());
        let all = kinds(&log);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].0, Kind::AuditVerifyFailed);
        assert_eq!(all[1].1.subject, "audit-checkpoint");
        log.shutdown();
    }
}
