//! The probes behind readiness, status and metrics: each one bounded by [`PROBE_TIMEOUT`]
//! and never queueing more than one job on the TPM thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use warden_attest::applog;
use warden_attest::HashAlg;

use super::ready::{Facts, PeerCounts, TpmProbe, TpmSample};
use super::FirmwareStatus;
use crate::api::ApiState;
use crate::appliance::Appliance;
use crate::export::ExportStatus;
use crate::peering::PeerState;
use crate::vault::{KeyInfo, VersionState};

/// How long a probe (TPM job, audit store) may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A TPM probe result is reused this long, so a burst of requests costs one TPM command.
const PROBE_REUSE: Duration = Duration::from_secs(1);
/// Largest checkpoint note read back (a note is a few hundred bytes).
const MAX_NOTE_BYTES: u64 = 64 * 1024;

/// Clears the pending flag when the probe job has run, or was dropped without running.
struct Pending(Arc<AtomicBool>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// On the TPM thread: read the appliance PCR and replay the log against it.
fn sample(a: &mut Appliance) -> TpmSample {
    let pcr = a.appliance_pcr;
    let replays = a
        .tpm
        .pcr_read(HashAlg::Sha256, &[pcr])
        .map_err(|e| e.to_string())
        .map(|values| {
            let replayed = applog::replay(a.log()).ok();
            match (values.get(&pcr), replayed) {
                (Some(value), Some(r)) => value.as_slice() == r.as_slice(),
                _ => false,
            }
        });
    TpmSample {
        appliance_pcr: pcr,
        events: a.log().len(),
        replays,
    }
}

/// Ask the TPM thread for a PCR read (at most one job queued at a time, and a result at most
/// [`PROBE_REUSE`] old is reused).
pub async fn probe_tpm(s: &ApiState) -> TpmProbe {
    let mut last = s.ops.tpm_probe.lock().await;
    if let Some((at, probe)) = last.as_ref() {
        if at.elapsed() < PROBE_REUSE {
            return probe.clone();
        }
    }
    let probe = if s.ops.tpm_pending.swap(true, Ordering::AcqRel) {
        Err("an earlier probe is still queued on the TPM thread".to_owned())
    } else {
        let pending = Pending(Arc::clone(&s.ops.tpm_pending));
        let job = s.tpm.run(move |a| {
            let _pending = pending;
            sample(a)
        });
        match tokio::time::timeout(PROBE_TIMEOUT, job).await {
            Ok(Ok(sample)) => Ok(sample),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        }
    };
    *last = Some((Instant::now(), probe.clone()));
    probe
}

/// Whether the audit store accepts appends: an empty batch takes the writer's lock and is
/// refused once a failed fsync or rollback has put the store in its failed state; it writes
/// nothing. Returns the log's length.
pub async fn probe_audit(s: &ApiState) -> Result<u64, String> {
    let audit = Arc::clone(&s.audit);
    let job = tokio::task::spawn_blocking(move || {
        audit
            .store()
            .append_batch::<&[u8]>(&[])
            .map(|_| audit.store().len())
            .map_err(|e| e.to_string())
    });
    match tokio::time::timeout(PROBE_TIMEOUT, job).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("the probe failed to run: {e}")),
        Err(_) => Err(format!(
            "the store's writer lock was not free within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// The syslog exporter's status with the log's size now.
pub fn export_status(s: &ApiState) -> Option<ExportStatus> {
    s.export.as_ref().map(|rx| {
        let mut e = rx.borrow().clone();
        e.log_size = s.audit.store().len();
        e
    })
}

pub fn peer_counts(s: &ApiState) -> Option<PeerCounts> {
    s.peering.get().map(|p| {
        let peers = p.status();
        PeerCounts {
            in_policy: p.in_policy(),
            total: peers.len(),
            attested: peers
                .iter()
                .filter(|p| p.state == PeerState::Attested)
                .count(),
        }
    })
}

/// Live versions (not retired) the TPM did not unseal.
pub fn unavailable_versions(keys: &[KeyInfo]) -> usize {
    keys.iter()
        .flat_map(|k| &k.versions)
        .filter(|v| v.state != VersionState::Retired && !v.available)
        .count()
}

/// The facts readiness is decided on.
pub async fn facts(s: &ApiState) -> (Facts, Vec<KeyInfo>) {
    let (tpm, audit) = tokio::join!(probe_tpm(s), probe_audit(s));
    let keys = s.vault.list(None);
    let facts = Facts {
        tpm,
        audit,
        policy: s.policy.active().map(|a| a.policy.version),
        peers: peer_counts(s),
        export: export_status(s),
        firmware: s.updates.as_ref().map(|u| u.booted()),
        keys_unavailable: unavailable_versions(&keys),
    };
    (facts, keys)
}

/// The last signed audit checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The tree size it commits to.
    pub size: u64,
    /// When it was signed (the note's modification time, Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_ms: Option<i64>,
}

/// Read and verify the last signed checkpoint; `Ok(None)`: none was signed yet.
pub async fn last_checkpoint(s: &ApiState) -> Result<Option<CheckpointInfo>, String> {
    use tokio::io::AsyncReadExt as _;
    let path = &s.ops.checkpoint_note;
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let signed_ms = file
        .metadata()
        .await
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok());
    let mut note = String::new();
    file.take(MAX_NOTE_BYTES)
        .read_to_string(&mut note)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let checkpoint = warden_audit::checkpoint::NoteVerifier::from_vkey(s.audit.verifier_key())
        .and_then(|v| v.verify_checkpoint(&note))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(CheckpointInfo {
        size: checkpoint.size,
        signed_ms,
    }))
}

/// The firmware as booted, and the slots and floor (read only when the TPM answered: the
/// floor is a TPM NV read on a blocking thread).
pub async fn firmware(s: &ApiState, tpm_ok: bool) -> Option<FirmwareStatus> {
    let u = s.updates.as_ref()?;
    let mut out = FirmwareStatus {
        component: u.component().to_owned(),
        booted: u.booted(),
        floor: None,
        slots: Vec::new(),
        error: None,
    };
    if !tpm_ok {
        out.error = Some("slots and floor not read: the TPM did not answer".to_owned());
        return Some(out);
    }
    let svc = Arc::clone(u);
    let job = tokio::task::spawn_blocking(move || svc.status());
    match tokio::time::timeout(PROBE_TIMEOUT, job).await {
        Ok(Ok(Ok(st))) => {
            out.floor = Some(st.floor);
            out.slots = st.slots;
        }
        Ok(Ok(Err(e))) => out.error = Some(format!("{e:#}")),
        Ok(Err(e)) => out.error = Some(format!("the status read failed to run: {e}")),
        Err(_) => {
            out.error = Some(format!(
                "the status read took longer than {} s",
                PROBE_TIMEOUT.as_secs()
            ))
        }
    }
    Some(out)
}
