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
        if let Some(last) = checkpoints.last() {
            if last.size > store.len() {
                tracing::error!(
                    signed = last.size,
                    stored = store.len(),
                    "the audit log is shorter than a checkpoint already signed: entries were lost; no new checkpoint can be signed"
                );
            }
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
        });
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
        let note = signer.sign(size, root, |old_size, old_root| {
            store
                .consistency_proof(old_size, size)
                .ok()
                .is_some_and(|proof| {
                    merkle::verify_consistency(old_size, size, old_root, &root, &proof).is_ok()
                })
        })?;
        Ok((note, size))
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
