//! Signed firmware updates on the appliance (docs/updates.md): the boot loader's slot choice at
//! start, staging a release from the update inbox, commit, and status.
//!
//! ```text
//!  publish ──▶ inbox/ (untrusted files)
//!  stage:  download ─▶ verify (metadata, floor) ─▶ write slot (streamed, hashed) ─▶ switch
//!          (slot on trial at the next boot) ─▶ save the metadata as trusted
//!  start:  finish an interrupted commit ─▶ choose a slot (trial, good, fallback) ─▶ persist ─▶
//!          measure into PCR and event log ─▶ run
//!  commit: mark good ─▶ raise the TPM floor to its SVN
//! ```
//!
//! Every file is replaced atomically and fsynced before the next step, so a kill -9 anywhere
//! leaves the previous slot bootable and the trusted metadata as it was before the step.

pub mod api;
mod counter;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use warden_audit::event::{Event, Kind, Outcome};
use warden_firmware_update::client::{self, Request, TrustedState};
use warden_firmware_update::image::ImageVerifier;
use warden_firmware_update::metadata::{Role, Root, Snapshot, Targets, Timestamp};
use warden_firmware_update::repo::DirRepository;
use warden_firmware_update::slots::{
    slot_path, BootControl, BootEvent, Installed, SlotId, SlotState,
};
use warden_firmware_update::time::{format_rfc3339, TrustedTime};
use warden_firmware_update::{SecurityCounter, UpdateError};

use crate::appliance::TpmActor;
use crate::audit::{now_ms, AuditLog};
use crate::config::{Clock, UpdatesConfig};
use crate::progress::Progress;
pub use counter::TpmCounter;

/// Kind of the appliance event that measures a booted firmware image.
pub const EVENT_FIRMWARE: &str = "firmware";
/// Largest metadata file the inbox accepts.
pub const MAX_METADATA_FILE: u64 = client::MAX_TARGETS_BYTES;
/// Most files the inbox holds.
pub const MAX_INBOX_FILES: usize = 256;

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The release was refused; `reason` names why.
    #[error("{0}")]
    Refused(#[from] UpdateError),
    /// The request conflicts with the state (an update already on trial, nothing to commit).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<warden_firmware_update::slots::SlotError> for OpError {
    fn from(e: warden_firmware_update::slots::SlotError) -> Self {
        use warden_firmware_update::slots::SlotError as S;
        match e {
            S::TrialInProgress { .. }
            | S::NoFreeSlot { .. }
            | S::WrongState { .. }
            | S::NotBooted { .. } => OpError::Conflict(e.to_string()),
            other => OpError::Internal(other.into()),
        }
    }
}

impl From<std::io::Error> for OpError {
    fn from(e: std::io::Error) -> Self {
        OpError::Internal(e.into())
    }
}

impl From<crate::audit::AuditError> for OpError {
    fn from(e: crate::audit::AuditError) -> Self {
        OpError::Internal(e.into())
    }
}

impl OpError {
    /// One word for the audit log: the update refusal's name, or the kind of failure.
    pub fn reason(&self) -> &'static str {
        match self {
            OpError::Refused(e) => e.reason(),
            OpError::Conflict(_) => "conflict",
            OpError::BadRequest(_) => "bad-request",
            OpError::Internal(_) => "error",
        }
    }
}

/// What booted at start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Booted {
    pub slot: Option<String>,
    pub release: Option<String>,
    pub svn: Option<u64>,
    pub trial: bool,
    /// The measured detail (what attestation shows), when a slot booted.
    pub measurement: Option<String>,
}

/// `POST /v1/updates/stage`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRequest {
    /// A target by name; absent: the highest SVN for this component and hardware.
    #[serde(default)]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageResponse {
    pub target: String,
    pub release: String,
    pub svn: u64,
    pub slot: String,
    pub image_sha256: String,
    pub manifest_sha256: String,
    pub root_version: u64,
    pub targets_version: u64,
    pub next: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitResponse {
    pub slot: String,
    pub release: String,
    pub svn: u64,
    /// The TPM security floor after the commit.
    pub floor: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    pub component: String,
    pub hardware_id: String,
    /// The TPM counter's security floor: no image below this SVN is staged or booted.
    pub floor: u64,
    pub booted: Booted,
    pub slots: Vec<SlotStatus>,
    /// Trusted metadata versions (root, timestamp, snapshot, targets) and expiry.
    pub trusted: Vec<TrustedRole>,
    pub clock: String,
    pub time_floor: String,
    pub inbox_files: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotStatus {
    pub slot: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boots_left: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub active: bool,
    pub booted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustedRole {
    pub role: String,
    pub version: u64,
    pub expires: String,
}

/// The update service: one operation at a time.
pub struct UpdateService {
    cfg: UpdatesConfig,
    dir: PathBuf,
    counter: Mutex<TpmCounter>,
    audit: Arc<AuditLog>,
    /// What runs: set at start, and no longer on trial once committed.
    booted: Mutex<Booted>,
    op: Mutex<()>,
}

impl std::fmt::Debug for UpdateService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateService")
            .field("dir", &self.dir)
            .field("booted", &self.booted())
            .finish_non_exhaustive()
    }
}

fn event(kind: Kind, actor: &str, subject: &str, outcome: Outcome) -> Event {
    Event::new(now_ms(), kind, actor, subject, outcome)
}

fn clip(s: &str) -> String {
    s.chars().take(1024).collect()
}

/// Write `bytes` to `path` atomically and durably.
fn write_durable(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    sync_dir(path);
    Ok(())
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// SHA-256 and length of a slot image, checked against what was recorded when it was written.
fn check_slot(path: &Path, image: &Installed) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut len: u64 = 0;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        if len > image.length {
            return Err(format!(
                "slot image is longer than the recorded {} bytes",
                image.length
            ));
        }
        ctx.update(buf.get(..n).unwrap_or_default());
    }
    if len != image.length {
        return Err(format!(
            "slot image is {len} bytes, {} recorded",
            image.length
        ));
    }
    if hex::encode(ctx.finish()) != image.sha256 {
        return Err("slot image SHA-256 differs from the verified one".into());
    }
    Ok(())
}

/// The measured detail of a booted image: what attestation reference values name.
pub fn measurement_detail(component: &str, image: &Installed) -> String {
    format!(
        "component={component} release={} svn={} image=sha256:{} manifest=sha256:{}",
        image.release, image.svn, image.sha256, image.manifest_sha256
    )
}

impl UpdateService {
    fn boot_path(dir: &Path) -> PathBuf {
        dir.join("boot.json")
    }
    fn trusted_path(&self) -> PathBuf {
        self.dir.join("trusted.json")
    }
    /// Where published files wait to be staged.
    pub fn inbox(&self) -> PathBuf {
        self.dir.join("inbox")
    }

    /// Start: the boot loader's work. Finishes a commit a crash interrupted, chooses the slot
    /// to run, persists that choice, measures the slot into the appliance PCR and event log
    /// before it counts as running, and audits all of it.
    pub fn start(
        cfg: &UpdatesConfig,
        state_dir: &Path,
        tpm: TpmActor,
        audit: Arc<AuditLog>,
    ) -> anyhow::Result<Arc<UpdateService>> {
        let dir = state_dir.join("updates");
        std::fs::create_dir_all(dir.join("inbox"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut counter = TpmCounter::new(tpm.clone(), &cfg.component, cfg.counter_nv_index);
        let boot_path = Self::boot_path(&dir);
        let mut bc = BootControl::load(&boot_path, cfg.max_trial_boots)?;
        let mut floor = counter.floor(&cfg.component)?;
        // A commit marks the slot good first, then raises the floor; finish one a crash cut.
        if let Some(active) = bc.active {
            if let SlotState::Good { image } = bc.slot(active) {
                if image.svn > floor {
                    floor = counter.raise_to(&cfg.component, image.svn)?;
                    audit.record(
                        event(
                            Kind::UpdateCommitted,
                            "wardend",
                            &cfg.component,
                            Outcome::Success,
                        )
                        .detail("slot", active.to_string())
                        .detail("release", image.release.clone())
                        .detail("svn", image.svn.to_string())
                        .detail("floor", floor.to_string())
                        .detail("recovered", "an interrupted commit was finished at start"),
                    )?;
                }
            }
        }
        let decision = bc.boot(floor, |slot, image| {
            check_slot(&slot_path(&dir, slot), image)
        });
        // The choice (and a trial's spent boot) is durable before the slot runs.
        bc.store(&boot_path)?;
        for ev in &decision.events {
            let e = match ev {
                BootEvent::TrialBoot { slot, boots_left } => {
                    tracing::info!(%slot, boots_left, "trial boot");
                    None
                }
                BootEvent::Fallback { from, to, reason } => Some(
                    event(
                        Kind::UpdateFallback,
                        "wardend",
                        &cfg.component,
                        Outcome::Failure,
                    )
                    .detail("from", from.to_string())
                    .detail("to", to.map_or("none".to_owned(), |s| s.to_string()))
                    .detail("reason", clip(reason)),
                ),
                BootEvent::Refused { slot, reason } => Some(
                    event(
                        Kind::UpdateFallback,
                        "wardend",
                        &cfg.component,
                        Outcome::Failure,
                    )
                    .detail("from", slot.to_string())
                    .detail("reason", clip(reason)),
                ),
                BootEvent::Unbootable { reasons } => Some(
                    event(
                        Kind::UpdateFallback,
                        "wardend",
                        &cfg.component,
                        Outcome::Failure,
                    )
                    .detail("to", "none")
                    .detail("reason", clip(&reasons.join("; "))),
                ),
            };
            if let Some(e) = e {
                tracing::warn!(kind = e.kind.name(), details = ?e.details, "firmware boot");
                audit.record(e)?;
            }
        }
        let booted = match (decision.slot, &decision.image) {
            (Some(slot), Some(image)) => {
                let detail = measurement_detail(&cfg.component, image);
                let d = detail.clone();
                tpm.run_blocking(move |a| a.measure(EVENT_FIRMWARE, &d).map(|_| ()))
                    .context("measuring the booted firmware")?;
                audit.record(
                    event(
                        Kind::UpdateBooted,
                        "wardend",
                        &cfg.component,
                        Outcome::Success,
                    )
                    .detail("slot", slot.to_string())
                    .detail("release", image.release.clone())
                    .detail("svn", image.svn.to_string())
                    .detail("trial", decision.trial.to_string())
                    .detail("measurement", detail.clone()),
                )?;
                tracing::info!(%slot, release = %image.release, svn = image.svn, trial = decision.trial, "firmware booted");
                Booted {
                    slot: Some(slot.to_string()),
                    release: Some(image.release.clone()),
                    svn: Some(image.svn),
                    trial: decision.trial,
                    measurement: Some(detail),
                }
            }
            _ => {
                tracing::info!("no installed firmware slot to boot; running the factory image");
                Booted {
                    slot: None,
                    release: None,
                    svn: None,
                    trial: false,
                    measurement: None,
                }
            }
        };
        Ok(Arc::new(UpdateService {
            cfg: cfg.clone(),
            dir,
            counter: Mutex::new(counter),
            audit,
            booted: Mutex::new(booted),
            op: Mutex::new(()),
        }))
    }

    /// The firmware that runs: as booted, and whether it is still on trial.
    pub fn booted(&self) -> Booted {
        self.booted
            .lock()
            .map(|b| b.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Kill the process at `step` when the configuration asks for it (tests only).
    fn crash_point(&self, step: &str) {
        if self.cfg.insecure_crash_at.as_deref() == Some(step) {
            tracing::warn!(step, "insecure_crash_at: killing wardend");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, OpError> {
        self.op
            .try_lock()
            .map_err(|_| OpError::Conflict("another update operation is running".into()))
    }

    fn floor(&self) -> anyhow::Result<u64> {
        let mut c = self
            .counter
            .lock()
            .map_err(|_| anyhow::anyhow!("the counter lock is poisoned"))?;
        Ok(c.floor(&self.cfg.component)?)
    }

    fn trusted_state(&self) -> anyhow::Result<TrustedState> {
        let path = self.trusted_path();
        match std::fs::read(&path) {
            Ok(b) => TrustedState::from_json(&b)
                .with_context(|| format!("{}: the trusted update metadata", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let root = std::fs::read(&self.cfg.root).with_context(|| {
                    format!("updates.root: reading {}", self.cfg.root.display())
                })?;
                TrustedState::bootstrap(root, 0)
                    .with_context(|| format!("updates.root: {}", self.cfg.root.display()))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn trusted_time(&self, state: &TrustedState) -> TrustedTime {
        match self.cfg.clock {
            Clock::System => TrustedTime::Known((now_ms() / 1000).max(state.time_floor)),
            Clock::Untrusted => TrustedTime::Unknown {
                floor: state.time_floor,
            },
        }
    }

    /// Audit an attempt that did not succeed, with its reason.
    pub fn refused(&self, action: &str, actor: &str, subject: &str, e: &OpError) {
        let reason = e.reason();
        let ev = event(Kind::UpdateRefused, actor, subject, Outcome::Denied)
            .detail("action", action)
            .detail("reason", reason)
            .detail("error", clip(&e.to_string()));
        if let Err(ae) = self.audit.record(ev) {
            tracing::error!(error = %ae, "could not audit a refused update");
        }
        tracing::warn!(action, reason, error = %e, "update refused");
    }

    /// Verify the release in the inbox, write it to the free slot, save the trusted metadata
    /// and switch the slot to boot on trial at the next start.
    /// The steps [`UpdateService::stage`] reports through its [`Progress`].
    pub const STAGE_STEPS: u32 = 4;

    pub fn stage(
        &self,
        actor: &str,
        req: &StageRequest,
        progress: &Progress,
    ) -> Result<StageResponse, OpError> {
        let subject = req
            .target
            .clone()
            .unwrap_or_else(|| self.cfg.component.clone());
        let result = self
            .lock()
            .and_then(|_guard| self.stage_locked(actor, req, progress));
        if let Err(e) = &result {
            self.refused("stage", actor, &subject, e);
        }
        result
    }

    fn stage_locked(
        &self,
        actor: &str,
        req: &StageRequest,
        progress: &Progress,
    ) -> Result<StageResponse, OpError> {
        progress.step("checking the signed metadata", 0, "");
        let boot_path = Self::boot_path(&self.dir);
        let mut bc = BootControl::load(&boot_path, self.cfg.max_trial_boots)?;
        if let Some(slot) = bc.pending_trial() {
            return Err(OpError::Conflict(format!(
                "slot {slot} is on trial: commit it (wardctl update commit) or let it fall back first"
            )));
        }
        let state = self.trusted_state()?;
        let floor = self.floor()?;
        let time = self.trusted_time(&state);
        let mut repo = DirRepository::new(&self.inbox());
        self.crash_point("download");
        let release = client::check_update(
            &state,
            &mut repo,
            &time,
            &Request {
                component: &self.cfg.component,
                hardware_id: &self.cfg.hardware_id,
                target: req.target.as_deref(),
                floor,
            },
        )?;
        if release.target().length > self.cfg.max_image_bytes {
            return Err(OpError::Refused(UpdateError::Metadata(
                warden_firmware_update::MetadataError::TooLarge {
                    what: format!("image {}", release.target_name()),
                    len: release.target().length,
                    limit: self.cfg.max_image_bytes,
                },
            )));
        }
        self.crash_point("verify");
        let slot = bc
            .begin_write()
            .map_err(|e| OpError::Conflict(e.to_string()))?;
        bc.store(&boot_path)?;
        let source = repo
            .target_path(release.target_name())
            .ok_or_else(|| OpError::BadRequest("unsafe target name".into()))?;
        let dest = slot_path(&self.dir, slot);
        progress.step(
            &format!("writing and hashing slot {slot}"),
            release.target().length,
            "bytes",
        );
        let verified = self.write_slot(&release, &source, &dest, progress)?;
        let installed = Installed {
            target: release.target_name().to_owned(),
            release: release.target().release.clone(),
            svn: release.target().svn,
            length: verified.length,
            sha256: hex::encode(verified.sha256),
            manifest_sha256: hex::encode(release.manifest_sha256()),
        };
        bc.finish_write(slot, installed.clone())
            .map_err(|e| OpError::Internal(e.into()))?;
        bc.store(&boot_path)?;
        self.crash_point("switch");
        progress.step(
            &format!("switching: slot {slot} boots on trial next"),
            0,
            "",
        );
        bc.activate(slot).map_err(|e| OpError::Internal(e.into()))?;
        bc.store(&boot_path)?;
        self.crash_point("save");
        progress.step("saving the metadata as trusted", 0, "");
        // Every check has passed, the image's too: now the metadata becomes trusted. (A crash
        // just before leaves the previous trusted metadata, which the next update starts from.)
        write_durable(&self.trusted_path(), &release.new_state.to_json())?;
        let resp = StageResponse {
            target: installed.target.clone(),
            release: installed.release.clone(),
            svn: installed.svn,
            slot: slot.to_string(),
            image_sha256: installed.sha256.clone(),
            manifest_sha256: installed.manifest_sha256.clone(),
            root_version: release.root_version(),
            targets_version: release.targets_version(),
            next: format!(
                "restart wardend to boot slot {slot} on trial, then `wardctl update commit`; \
                 without a commit it falls back after {} boots",
                self.cfg.max_trial_boots
            ),
        };
        self.audit.record(
            event(
                Kind::UpdateStaged,
                actor,
                &installed.target,
                Outcome::Success,
            )
            .detail("slot", slot.to_string())
            .detail("release", installed.release.clone())
            .detail("svn", installed.svn.to_string())
            .detail("image_sha256", installed.sha256.clone())
            .detail("manifest_sha256", installed.manifest_sha256.clone())
            .detail("root_version", release.root_version().to_string())
            .detail("targets_version", release.targets_version().to_string()),
        )?;
        tracing::info!(target = %installed.target, release = %installed.release, svn = installed.svn, %slot, "update staged");
        Ok(resp)
    }

    /// Stream the image into the slot file, hashing it; never reads past the signed length.
    fn write_slot(
        &self,
        release: &client::VerifiedRelease,
        source: &Path,
        dest: &Path,
        progress: &Progress,
    ) -> Result<warden_firmware_update::image::ImageVerified, OpError> {
        let target = release.target_name().to_owned();
        let mut input = match std::fs::File::open(source) {
            Ok(f) => f,
            Err(e) => {
                return Err(OpError::Refused(UpdateError::Fetch {
                    file: format!("targets/{target}"),
                    reason: e.to_string(),
                }))
            }
        };
        let mut out =
            std::fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
        let mut verifier = ImageVerifier::new(release);
        let mut buf = vec![0u8; 1 << 20];
        let half = release.target().length / 2;
        let mut written: u64 = 0;
        let mut crashed_mid = false;
        loop {
            let allowance = verifier.remaining_allowance().min(buf.len() as u64) as usize;
            if allowance == 0 {
                break;
            }
            let chunk = buf.get_mut(..allowance).unwrap_or_default();
            let n = input
                .read(chunk)
                .with_context(|| format!("reading {}", source.display()))?;
            if n == 0 {
                break;
            }
            let data = chunk.get(..n).unwrap_or_default();
            verifier.update(data)?;
            out.write_all(data)
                .with_context(|| format!("writing {}", dest.display()))?;
            written += n as u64;
            progress.advance(written);
            if !crashed_mid && written >= half {
                crashed_mid = true;
                self.crash_point("write");
            }
        }
        out.sync_all()?;
        sync_dir(dest);
        Ok(verifier.finish()?)
    }

    /// Mark the slot on trial good, then raise the TPM floor to its SVN.
    pub fn commit(&self, actor: &str) -> Result<CommitResponse, OpError> {
        let result = self.lock().and_then(|_guard| self.commit_locked(actor));
        if let Err(e) = &result {
            self.refused("commit", actor, &self.cfg.component, e);
        }
        result
    }

    fn commit_locked(&self, actor: &str) -> Result<CommitResponse, OpError> {
        let boot_path = Self::boot_path(&self.dir);
        let mut bc = BootControl::load(&boot_path, self.cfg.max_trial_boots)?;
        let Some((slot, _, true)) = bc.booted_image().map(|(s, i, t)| (s, i.clone(), t)) else {
            return Err(OpError::Conflict(
                "no slot is running on trial: stage a release and restart first".into(),
            ));
        };
        let image = bc
            .mark_good(slot)
            .map_err(|e| OpError::Conflict(e.to_string()))?
            .clone();
        bc.store(&boot_path)?;
        self.crash_point("mark-good");
        let floor = {
            let mut c = self
                .counter
                .lock()
                .map_err(|_| anyhow::anyhow!("the counter lock is poisoned"))?;
            c.raise_to(&self.cfg.component, image.svn)
                .context("raising the TPM security floor")?
        };
        // Committed (marked good, floor raised): no longer on trial, whatever the audit says.
        match self.booted.lock() {
            Ok(mut b) => b.trial = false,
            Err(poisoned) => poisoned.into_inner().trial = false,
        }
        self.audit.record(
            event(
                Kind::UpdateCommitted,
                actor,
                &self.cfg.component,
                Outcome::Success,
            )
            .detail("slot", slot.to_string())
            .detail("release", image.release.clone())
            .detail("svn", image.svn.to_string())
            .detail("floor", floor.to_string()),
        )?;
        tracing::info!(%slot, release = %image.release, svn = image.svn, floor, "update committed");
        Ok(CommitResponse {
            slot: slot.to_string(),
            release: image.release,
            svn: image.svn,
            floor,
        })
    }

    pub fn status(&self) -> Result<StatusResponse, OpError> {
        let bc = BootControl::load(&Self::boot_path(&self.dir), self.cfg.max_trial_boots)?;
        let state = self.trusted_state()?;
        let trusted = state
            .parse()
            .map_err(|e| anyhow::anyhow!("trusted metadata: {e}"))?;
        let mut roles = vec![role_row(Role::Root, &trusted.root)];
        if let Some(t) = &trusted.timestamp {
            roles.push(common_row(Role::Timestamp, t));
        }
        if let Some(s) = &trusted.snapshot {
            roles.push(common_row(Role::Snapshot, s));
        }
        if let Some(t) = &trusted.targets {
            roles.push(common_row(Role::Targets, t));
        }
        let booted_now = bc.booted;
        let slots = [SlotId::A, SlotId::B]
            .into_iter()
            .map(|id| {
                slot_status(
                    id,
                    bc.slot(id),
                    bc.active == Some(id),
                    booted_now == Some(id),
                )
            })
            .collect();
        let inbox_files = count_files(&self.inbox(), 2);
        Ok(StatusResponse {
            component: self.cfg.component.clone(),
            hardware_id: self.cfg.hardware_id.clone(),
            floor: self.floor()?,
            booted: self.booted(),
            slots,
            trusted: roles,
            clock: match self.cfg.clock {
                Clock::System => "system".into(),
                Clock::Untrusted => "untrusted".into(),
            },
            time_floor: format_rfc3339(state.time_floor),
            inbox_files,
        })
    }

    /// Empty the inbox.
    pub fn clear_inbox(&self, actor: &str) -> Result<(), OpError> {
        let _guard = self.lock()?;
        let inbox = self.inbox();
        if inbox.exists() {
            std::fs::remove_dir_all(&inbox)
                .with_context(|| format!("clearing {}", inbox.display()))?;
        }
        std::fs::create_dir_all(&inbox).with_context(|| format!("creating {}", inbox.display()))?;
        self.audit.record(
            event(Kind::UpdatePublished, actor, "inbox", Outcome::Success)
                .detail("action", "cleared"),
        )?;
        Ok(())
    }

    /// Check a published file's name and size limit; returns where it goes.
    pub fn inbox_path(&self, file: &str) -> Result<(PathBuf, u64), OpError> {
        let bad = |why: &str| OpError::BadRequest(format!("{file:?}: {why}"));
        let limit = if let Some(name) = file.strip_prefix("targets/") {
            warden_firmware_update::metadata::check_target_name(name)
                .map_err(|e| OpError::BadRequest(e.to_string()))?;
            self.cfg.max_image_bytes
        } else if matches!(
            file,
            client::TIMESTAMP_FILE | client::SNAPSHOT_FILE | client::TARGETS_FILE
        ) || file.strip_suffix(".root.json").is_some_and(|n| {
            !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit())
        }) {
            MAX_METADATA_FILE
        } else {
            return Err(bad(
                "not a repository file: N.root.json, timestamp.json, snapshot.json, targets.json or targets/<name>",
            ));
        };
        if count_files(&self.inbox(), 3) >= MAX_INBOX_FILES {
            return Err(OpError::Conflict(format!(
                "the inbox holds {MAX_INBOX_FILES} files; clear it first"
            )));
        }
        Ok((self.inbox().join(file), limit))
    }

    /// Record a published file.
    pub fn published(&self, actor: &str, file: &str, len: u64) {
        let e = event(Kind::UpdatePublished, actor, file, Outcome::Success)
            .detail("bytes", len.to_string());
        if let Err(ae) = self.audit.record(e) {
            tracing::error!(error = %ae, "could not audit a published update file");
        }
    }

    pub fn component(&self) -> &str {
        &self.cfg.component
    }
}

fn count_files(dir: &Path, depth: u32) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if depth > 0 && e.file_type().is_ok_and(|t| t.is_dir()) {
                count_files(&e.path(), depth - 1)
            } else {
                1
            }
        })
        .sum()
}

trait HasCommon {
    fn common(&self) -> &warden_firmware_update::metadata::Common;
}
impl HasCommon for Timestamp {
    fn common(&self) -> &warden_firmware_update::metadata::Common {
        &self.common
    }
}
impl HasCommon for Snapshot {
    fn common(&self) -> &warden_firmware_update::metadata::Common {
        &self.common
    }
}
impl HasCommon for Targets {
    fn common(&self) -> &warden_firmware_update::metadata::Common {
        &self.common
    }
}

fn common_row(role: Role, m: &dyn HasCommon) -> TrustedRole {
    TrustedRole {
        role: role.name().into(),
        version: m.common().version,
        expires: format_rfc3339(m.common().expires),
    }
}

fn role_row(role: Role, root: &Root) -> TrustedRole {
    TrustedRole {
        role: role.name().into(),
        version: root.common.version,
        expires: format_rfc3339(root.common.expires),
    }
}

fn slot_status(id: SlotId, s: &SlotState, active: bool, booted: bool) -> SlotStatus {
    let mut row = SlotStatus {
        slot: id.to_string(),
        state: String::new(),
        release: None,
        svn: None,
        boots_left: None,
        reason: None,
        active,
        booted,
    };
    let mut with = |state: &str, image: Option<&Installed>| {
        row.state = state.into();
        if let Some(i) = image {
            row.release = Some(i.release.clone());
            row.svn = Some(i.svn);
        }
    };
    match s {
        SlotState::Empty => with("empty", None),
        SlotState::Writing => with("writing", None),
        SlotState::Staged { image } => with("staged", Some(image)),
        SlotState::Trial { image, boots_left } => {
            with("trial", Some(image));
            row.boots_left = Some(*boots_left);
        }
        SlotState::Good { image } => with("good", Some(image)),
        SlotState::Bad { image, reason } => {
            with("bad", Some(image));
            row.reason = Some(reason.clone());
        }
    }
    row
}
