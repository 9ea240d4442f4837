//! The policy in force: validated, versioned, persisted, measured, enforced, audited.
//!
//! ```text
//!  apply(text) ─validate─► newer than in force? ─► nftables batch (atomic) ─► persist (rename)
//!      │ any failure: refused, previous policy untouched            │
//!      └──────────────────────────────────────────────── measure (PCR) ─► audit ─► swap
//!                                              audit fails: roll back (nft + file), 503
//! ```
//!
//! The document bytes in force live in `state_dir/policy/current.toml`. At start wardend
//! loads, measures and enforces it; with no policy the table denies every forwarded packet
//! (default deny).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context as _;
use warden_audit::event::{Event, Kind, Outcome};
use warden_policy::plan::NftPlan;
use warden_policy::{Classifier, Policy, PolicyError, WireSettings};

use crate::appliance::TpmActor;
use crate::audit::{now_ms, AuditLog};
use crate::config::PolicyConfig;
use crate::progress::Progress;

/// The appliance event kind of a policy measurement; detail `v<version> sha256:<hex>`.
pub const EVENT_POLICY: &str = "policy";
const CURRENT: &str = "current.toml";

/// A policy in force.
pub struct ActivePolicy {
    pub text: String,
    pub policy: Policy,
    pub classifier: Classifier,
    /// Unix ms when it was applied (or loaded at start).
    pub since_ms: i64,
}

impl ActivePolicy {
    fn new(text: String, policy: Policy) -> ActivePolicy {
        let classifier = policy.classifier();
        ActivePolicy {
            text,
            policy,
            classifier,
            since_ms: now_ms(),
        }
    }

    /// `v<version> sha256:<hex>`: what is measured and audited.
    pub fn label(&self) -> String {
        format!("v{} {}", self.policy.version, self.policy.digest_hex())
    }
}

/// Why a policy was not put in force.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("the policy is not valid:\n{0}")]
    Invalid(#[from] PolicyError),
    #[error("version {offered} is not newer than version {in_force} in force")]
    NotNewer { offered: u64, in_force: u64 },
    #[error("the nftables table could not be installed; the previous policy stays in force: {0}")]
    Enforce(String),
    #[error("the policy could not be stored; the previous policy stays in force: {0}")]
    Store(String),
    #[error("the policy could not be measured; the previous policy stays in force: {0}")]
    Measure(String),
    #[error("the policy could not be audited and was rolled back: {0}")]
    Audit(String),
}

/// Parse and validate `text`, including each node's attestation reference values (which the
/// policy crate carries as an opaque table).
pub fn parse_policy(text: &str, name: &str) -> Result<Policy, PolicyError> {
    let policy = warden_policy::parse(text, name)?;
    let mut diagnostics = Vec::new();
    for (i, node) in policy.nodes.iter().enumerate() {
        let Some(reference) = &node.reference else {
            continue;
        };
        let checked = toml::to_string(reference)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                warden_attest::reference::ReferenceValues::from_toml(&t).map_err(|e| e.to_string())
            });
        if let Err(why) = checked {
            diagnostics.push(warden_policy::Diagnostic {
                file: name.to_owned(),
                line: 0,
                column: 0,
                path: format!("node[{i}].reference"),
                message: format!(
                    "node {:?}: the reference values are not valid: {why}",
                    node.id
                ),
                hint: Some(
                    "write them as `wardctl reference capture` does (docs/attestation.md)".into(),
                ),
            });
        }
    }
    if diagnostics.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyError { diagnostics })
    }
}

/// Installs nftables plans (a trait so the admin API can be tested without CAP_NET_ADMIN).
pub trait Enforcer: Send + Sync {
    fn apply(&self, plan: &NftPlan) -> Result<(), String>;
    /// The table's counters, when there is a table.
    fn counters(&self) -> Option<Result<warden_enforcer::nft::Counters, String>> {
        None
    }
}

/// The real thing: Warden's table in wardend's network namespace.
pub struct Nftables;

impl Enforcer for Nftables {
    fn apply(&self, plan: &NftPlan) -> Result<(), String> {
        warden_enforcer::nft::apply(plan).map_err(|e| e.to_string())
    }

    fn counters(&self) -> Option<Result<warden_enforcer::nft::Counters, String>> {
        Some(warden_enforcer::nft::counters().map_err(|e| e.to_string()))
    }
}

/// No enforcement (`[policy] nftables = false`): plans are computed and dropped.
pub struct NoEnforcement;

impl Enforcer for NoEnforcement {
    fn apply(&self, _: &NftPlan) -> Result<(), String> {
        Ok(())
    }
}

/// The policy service of one appliance.
pub struct PolicyService {
    dir: PathBuf,
    active: RwLock<Option<Arc<ActivePolicy>>>,
    /// Serializes applies.
    apply_lock: Mutex<()>,
    enforcer: Box<dyn Enforcer>,
    wire: Option<WireSettings>,
    audit: Arc<AuditLog>,
    tpm: TpmActor,
    /// The policy in force, for the services that follow it (data plane, peering).
    changes: tokio::sync::watch::Sender<Option<Arc<ActivePolicy>>>,
}

/// What an apply did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    pub version: u64,
    pub digest: String,
    pub previous_version: Option<u64>,
    pub unchanged: bool,
}

impl PolicyService {
    /// Load the stored policy (if any), enforce it (or default deny) and measure it.
    pub async fn start(
        state_dir: &Path,
        config: &PolicyConfig,
        tcp_ports: Vec<u16>,
        audit: Arc<AuditLog>,
        tpm: TpmActor,
    ) -> anyhow::Result<Arc<PolicyService>> {
        let enforcer: Box<dyn Enforcer> = if config.nftables {
            Box::new(Nftables)
        } else {
            Box::new(NoEnforcement)
        };
        Self::start_with(state_dir, config, tcp_ports, audit, tpm, enforcer).await
    }

    /// [`PolicyService::start`] with a given enforcer.
    pub async fn start_with(
        state_dir: &Path,
        config: &PolicyConfig,
        mut tcp_ports: Vec<u16>,
        audit: Arc<AuditLog>,
        tpm: TpmActor,
        enforcer: Box<dyn Enforcer>,
    ) -> anyhow::Result<Arc<PolicyService>> {
        tcp_ports.sort_unstable();
        tcp_ports.dedup();
        let dir = state_dir.join("policy");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let wire = config.wire_interface.as_ref().map(|w| WireSettings {
            interface: w.clone(),
            esp_udp_port: config.esp_udp_port,
            tcp_ports,
        });
        let path = dir.join(CURRENT);
        let active = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let policy =
                    parse_policy(&text, &path.display().to_string()).with_context(|| {
                        format!("the stored policy {} is not valid", path.display())
                    })?;
                Some(Arc::new(ActivePolicy::new(text, policy)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let service = Arc::new(PolicyService {
            dir,
            changes: tokio::sync::watch::Sender::new(active.clone()),
            active: RwLock::new(active.clone()),
            apply_lock: Mutex::new(()),
            enforcer,
            wire,
            audit,
            tpm,
        });
        let plan = service.plan(active.as_deref().map(|a| &a.policy));
        let s = Arc::clone(&service);
        tokio::task::spawn_blocking(move || s.enforcer.apply(&plan))
            .await?
            .map_err(|e| anyhow::anyhow!("installing the nftables table at start: {e}"))?;
        if let Some(a) = &active {
            let label = a.label();
            service
                .tpm
                .run(move |t| t.measure(EVENT_POLICY, &label).map(|_| ()))
                .await??;
            tracing::info!(version = a.policy.version, digest = %a.policy.digest_hex(), "policy in force");
        } else {
            tracing::info!("no policy applied yet: every forwarded packet is denied");
        }
        Ok(service)
    }

    /// The nftables counters (blocking: a netlink dump), when nftables enforcement is on.
    pub fn counters(&self) -> Option<Result<warden_enforcer::nft::Counters, String>> {
        self.enforcer.counters()
    }

    /// Follow the policy in force: the receiver sees the current one and every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Arc<ActivePolicy>>> {
        self.changes.subscribe()
    }

    /// The policy in force.
    pub fn active(&self) -> Option<Arc<ActivePolicy>> {
        self.active.read().ok().and_then(|a| a.clone())
    }

    /// The nftables plan for `policy` (an empty, deny-all plan without one).
    fn plan(&self, policy: Option<&Policy>) -> NftPlan {
        match policy {
            Some(p) => p.nft_plan(self.wire.as_ref()),
            None => NftPlan {
                version: 0,
                digest: String::new(),
                wire: self.wire.as_ref().map(|w| warden_policy::plan::WirePlan {
                    interface: w.interface.clone(),
                    appliances: Vec::new(),
                    esp_udp_port: w.esp_udp_port,
                    tcp_ports: w.tcp_ports.clone(),
                }),
                flows: Vec::new(),
                limits: Vec::new(),
            },
        }
    }

    fn refuse(&self, operator: &str, why: &ApplyError, offered: Option<&Policy>) {
        let mut e = Event::new(
            now_ms(),
            Kind::PolicyRefused,
            &format!("operator:{operator}"),
            "policy",
            Outcome::Denied,
        )
        .detail("reason", truncate(&why.to_string()));
        if let Some(p) = offered {
            e = e
                .detail("version", p.version.to_string())
                .detail("digest", p.digest_hex());
        }
        if let Err(err) = self.audit.record(e) {
            tracing::error!(error = %err, "cannot record the refused policy");
        }
    }

    /// Validate and put `text` in force (blocking: nftables, fsync, TPM). `name` names the
    /// document in diagnostics.
    /// The steps [`PolicyService::apply`] reports through its [`Progress`].
    pub const APPLY_STEPS: u32 = 5;

    pub fn apply(
        &self,
        text: &str,
        name: &str,
        operator: &str,
        progress: &Progress,
    ) -> Result<Applied, ApplyError> {
        let _serial = self
            .apply_lock
            .lock()
            .map_err(|_| ApplyError::Store("poisoned".into()))?;
        progress.step(
            &format!(
                "parsing and validating {name} ({} KiB)",
                text.len().div_ceil(1024)
            ),
            0,
            "",
        );
        let policy = match parse_policy(text, name) {
            Ok(p) => p,
            Err(e) => {
                let err = ApplyError::Invalid(e);
                self.refuse(operator, &err, None);
                return Err(err);
            }
        };
        let previous = self.active();
        if let Some(prev) = &previous {
            if prev.policy.digest == policy.digest {
                return Ok(Applied {
                    version: policy.version,
                    digest: policy.digest_hex(),
                    previous_version: Some(prev.policy.version),
                    unchanged: true,
                });
            }
            if policy.version <= prev.policy.version {
                let err = ApplyError::NotNewer {
                    offered: policy.version,
                    in_force: prev.policy.version,
                };
                self.refuse(operator, &err, Some(&policy));
                return Err(err);
            }
        }
        // 1. Enforce: one atomic batch; a failure leaves the previous table in force.
        progress.step(
            &format!(
                "enforcing {} rules over {} segments (one atomic nftables batch)",
                policy.rules.len(),
                policy.segments.len()
            ),
            0,
            "",
        );
        if let Err(e) = self.enforcer.apply(&self.plan(Some(&policy))) {
            let err = ApplyError::Enforce(e);
            self.refuse(operator, &err, Some(&policy));
            return Err(err);
        }
        let offered_version = policy.version;
        let restore = |why: &str| {
            let old = self.plan(previous.as_deref().map(|a| &a.policy));
            let back = self.enforcer.apply(&old);
            let old_file = previous.as_ref().map(|a| a.text.as_bytes());
            let file = match old_file {
                Some(bytes) => crate::keyfile::write_atomically(&self.dir.join(CURRENT), bytes),
                None => match std::fs::remove_file(self.dir.join(CURRENT)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                },
            };
            if back.is_err() || file.is_err() {
                tracing::error!(?back, ?file, "rolling the policy back failed");
            }
            let e = Event::new(
                now_ms(),
                Kind::PolicyRolledBack,
                &format!("operator:{operator}"),
                "policy",
                Outcome::Failure,
            )
            .detail("reason", truncate(why))
            .detail("version", offered_version.to_string())
            .detail(
                "restored_version",
                previous
                    .as_ref()
                    .map_or(0, |a| a.policy.version)
                    .to_string(),
            );
            if let Err(err) = self.audit.record(e) {
                tracing::error!(error = %err, "cannot record the rollback");
            }
        };
        // 2. Persist the document.
        progress.step("storing the document", 0, "");
        if let Err(e) = crate::keyfile::write_atomically(&self.dir.join(CURRENT), text.as_bytes()) {
            restore(&format!("storing failed: {e}"));
            let err = ApplyError::Store(e.to_string());
            self.refuse(operator, &err, Some(&policy));
            return Err(err);
        }
        let active = Arc::new(ActivePolicy::new(text.to_owned(), policy));
        // 3. Measure, so attestation shows the policy in force.
        progress.step("measuring it into the TPM", 0, "");
        let label = active.label();
        let measured = self
            .tpm
            .run_blocking(move |t| t.measure(EVENT_POLICY, &label).map(|_| ()));
        if let Err(e) = measured {
            restore(&format!("measuring failed: {e}"));
            let err = ApplyError::Measure(e.to_string());
            self.refuse(operator, &err, Some(&active.policy));
            return Err(err);
        }
        // 4. Audit; without the entry the change does not stand.
        progress.step("recording the audit entry", 0, "");
        let mut event = Event::new(
            now_ms(),
            Kind::PolicyApplied,
            &format!("operator:{operator}"),
            "policy",
            Outcome::Success,
        )
        .detail("version", active.policy.version.to_string())
        .detail("digest", active.policy.digest_hex())
        .detail("rules", active.policy.rules.len().to_string());
        if let Some(prev) = &previous {
            event = event
                .detail("previous_version", prev.policy.version.to_string())
                .detail("previous_digest", prev.policy.digest_hex());
        }
        if let Err(e) = self.audit.record(event) {
            restore(&format!("the audit entry could not be written: {e}"));
            return Err(ApplyError::Audit(e.to_string()));
        }
        // 5. Swap.
        let applied = Applied {
            version: active.policy.version,
            digest: active.policy.digest_hex(),
            previous_version: previous.as_ref().map(|p| p.policy.version),
            unchanged: false,
        };
        if let Ok(mut slot) = self.active.write() {
            *slot = Some(Arc::clone(&active));
        }
        self.changes.send_replace(Some(active));
        tracing::info!(version = applied.version, digest = %applied.digest, "policy applied");
        Ok(applied)
    }
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(warden_audit::event::MAX_DETAIL_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;

    const EXAMPLE: &str = include_str!("../policy/tests/data/example.toml");

    /// Records the versions it was asked to install; refuses version 7.
    struct Recording(Arc<Mutex<Vec<u64>>>);

    impl Enforcer for Recording {
        fn apply(&self, plan: &NftPlan) -> Result<(), String> {
            if plan.version == 7 {
                return Err("the kernel said no (test)".into());
            }
            self.0.lock().unwrap().push(plan.version);
            Ok(())
        }
    }

    fn version(v: u64) -> String {
        EXAMPLE.replace("version = 3", &format!("version = {v}"))
    }

    fn kinds(audit: &AuditLog) -> Vec<Event> {
        let n = audit.store().len();
        audit
            .store()
            .entries(0..n)
            .unwrap()
            .iter()
            .map(|l| Event::from_leaf(l).unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_keep_the_policy_in_force_and_are_audited() {
        if warden_testkit::skip_without_swtpm("policy service") {
            return;
        }
        let swtpm = warden_testkit::Swtpm::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tpm = TpmActor::spawn(crate::appliance::TpmSettings {
            tcti: swtpm.tcti(),
            ak_handle: 0x8101_0002,
            ak_algorithm: warden_attest::tpm::AkAlgorithm::EccP256,
            appliance_pcr: 15,
            state_dir: dir.path().to_owned(),
        })
        .unwrap();
        let (audit, _) = AuditLog::open(dir.path(), "node").unwrap();
        let installed = Arc::new(Mutex::new(Vec::new()));
        let service = PolicyService::start_with(
            dir.path(),
            &PolicyConfig::default(),
            vec![8443],
            Arc::clone(&audit),
            tpm,
            Box::new(Recording(Arc::clone(&installed))),
        )
        .await
        .unwrap();
        // No policy: the empty, deny-all plan (version 0) went in at start.
        assert_eq!(*installed.lock().unwrap(), vec![0]);

        let svc = Arc::clone(&service);
        let v3 = tokio::task::spawn_blocking(move || {
            svc.apply(EXAMPLE, "p.toml", "alice", &Progress::none())
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(v3.version, 3);

        // The enforcer fails: refused, v3 stays, nothing stored, the refusal audited.
        let svc = Arc::clone(&service);
        let err = tokio::task::spawn_blocking(move || {
            svc.apply(&version(7), "p.toml", "alice", &Progress::none())
        })
        .await
        .unwrap()
        .unwrap_err();
        assert!(matches!(err, ApplyError::Enforce(_)), "{err}");
        assert_eq!(service.active().unwrap().policy.version, 3);
        let stored = std::fs::read_to_string(dir.path().join("policy").join(CURRENT)).unwrap();
        assert_eq!(stored, EXAMPLE);
        let last = kinds(&audit).pop().unwrap();
        assert_eq!(last.kind, Kind::PolicyRefused);
        assert!(
            last.details["reason"].contains("the kernel said no"),
            "{last:?}"
        );
        assert_eq!(last.actor, "operator:alice");

        // Storing fails after the table went in: rolled back to v3 in nftables, audited.
        let policy_dir = dir.path().join("policy");
        std::fs::remove_dir_all(&policy_dir).unwrap();
        std::fs::write(&policy_dir, b"not a directory").unwrap();
        let svc = Arc::clone(&service);
        let err = tokio::task::spawn_blocking(move || {
            svc.apply(&version(8), "p.toml", "alice", &Progress::none())
        })
        .await
        .unwrap()
        .unwrap_err();
        assert!(matches!(err, ApplyError::Store(_)), "{err}");
        assert_eq!(*installed.lock().unwrap(), vec![0, 3, 8, 3]);
        assert_eq!(service.active().unwrap().policy.version, 3);
        let events = kinds(&audit);
        let n = events.len();
        assert_eq!(events[n - 2].kind, Kind::PolicyRolledBack);
        assert_eq!(events[n - 2].details["restored_version"], "3");
        assert_eq!(events[n - 1].kind, Kind::PolicyRefused);
        audit.shutdown();
    }
}
