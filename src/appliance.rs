//! The appliance's TPM-side state, owned by one thread: the TPM connection, the AK, and the
//! measurement log. Every TPM operation is a job sent to that thread, so a quote, the PCR read
//! and the log snapshot that go with it can never interleave with an extend.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::Context as _;
use warden_attest::applog::ApplianceEvent;
use warden_attest::tpm::{AkAlgorithm, Tpm};
use warden_attest::HashAlg;

use crate::measure::{MeasurementLog, Recovery};

/// How many TPM jobs may wait before callers are told the TPM is busy.
const QUEUE: usize = 64;

/// Settings for opening the appliance TPM.
#[derive(Debug, Clone)]
pub struct TpmSettings {
    pub tcti: String,
    pub ak_handle: u32,
    pub ak_algorithm: AkAlgorithm,
    pub appliance_pcr: u8,
    pub state_dir: PathBuf,
}

/// The TPM thread's state.
pub struct Appliance {
    pub tpm: Tpm,
    pub ak_handle: u32,
    pub ak_public: Vec<u8>,
    pub ek_certificate: Option<Vec<u8>>,
    pub appliance_pcr: u8,
    log: MeasurementLog,
}

impl Appliance {
    fn open(s: &TpmSettings) -> anyhow::Result<Self> {
        let mut tpm =
            Tpm::open(&s.tcti).with_context(|| format!("opening the TPM at {}", s.tcti))?;
        let ak_public = tpm
            .ensure_ak(s.ak_handle, s.ak_algorithm)
            .with_context(|| format!("loading the attestation key at {:#x}", s.ak_handle))?;
        let ek_certificate = tpm.ek_certificate().context("reading the EK certificate")?;
        let pcr_now = tpm
            .pcr_read(HashAlg::Sha256, &[s.appliance_pcr])?
            .remove(&s.appliance_pcr)
            .context("the TPM did not return the appliance PCR")?;
        let (log, recovery) =
            MeasurementLog::open(&s.state_dir.join("measurements.jsonl"), &pcr_now)?;
        let mut appliance = Appliance {
            tpm,
            ak_handle: s.ak_handle,
            ak_public,
            ek_certificate,
            appliance_pcr: s.appliance_pcr,
            log,
        };
        match recovery {
            Recovery::Consistent => {}
            Recovery::TpmReset { archived } => {
                tracing::info!(archived, "TPM was reset since the last run; measurement log restarted")
            }
            Recovery::PendingExtend(d) => {
                tracing::warn!("finishing a measurement interrupted by a crash");
                appliance.tpm.pcr_extend_sha256(s.appliance_pcr, d)?;
            }
            Recovery::Diverged => tracing::error!(
                pcr = s.appliance_pcr,
                "measurement log does not replay to the appliance PCR; attestation will fail until the TPM is reset"
            ),
        }
        Ok(appliance)
    }

    /// Record an event durably, then extend it into the appliance PCR.
    pub fn measure(&mut self, kind: &str, detail: &str) -> anyhow::Result<ApplianceEvent> {
        let event = ApplianceEvent::new(kind, detail)?;
        let digest = event.computed_digest()?;
        self.log.append(event.clone())?;
        self.tpm.pcr_extend_sha256(self.appliance_pcr, digest)?;
        tracing::info!(kind, detail, pcr = self.appliance_pcr, "measured");
        Ok(event)
    }

    pub fn log(&self) -> &[ApplianceEvent] {
        self.log.events()
    }
}

type Job = Box<dyn FnOnce(&mut Appliance) + Send>;

/// Handle to the TPM thread.
#[derive(Clone)]
pub struct TpmActor {
    tx: mpsc::SyncSender<Job>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error("the TPM is busy ({QUEUE} requests queued); try again")]
    Busy,
    #[error("the TPM thread has stopped")]
    Gone,
}

impl TpmActor {
    /// Open the TPM on its own thread; fails if the TPM cannot be opened (fail closed: no TPM,
    /// no appliance).
    pub fn spawn(settings: TpmSettings) -> anyhow::Result<TpmActor> {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("tpm".into())
            .spawn(move || match Appliance::open(&settings) {
                Ok(mut appliance) => {
                    let _ = ready_tx.send(Ok(()));
                    while let Ok(job) = rx.recv() {
                        job(&mut appliance);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .context("starting the TPM thread")?;
        ready_rx
            .recv()
            .context("the TPM thread exited during start-up")??;
        Ok(TpmActor { tx })
    }

    /// Run `f` on the TPM thread and wait for its result.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Appliance) -> R + Send + 'static,
    ) -> Result<R, ActorError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |a| {
            let _ = tx.send(f(a));
        });
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => ActorError::Busy,
            mpsc::TrySendError::Disconnected(_) => ActorError::Gone,
        })?;
        rx.await.map_err(|_| ActorError::Gone)
    }
}

impl TpmActor {
    /// Like [`TpmActor::run`], for blocking code (never call it on an async worker thread).
    pub fn run_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Appliance) -> anyhow::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |a| {
            let _ = tx.send(f(a));
        });
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => ActorError::Busy,
            mpsc::TrySendError::Disconnected(_) => ActorError::Gone,
        })?;
        rx.recv().map_err(|_| ActorError::Gone)?
    }
}

/// SHA-256 of a file, hex (used to measure wardend's own binary).
pub fn file_sha256(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex::encode(ctx.finish()))
}
