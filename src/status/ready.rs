//! Readiness as a pure decision: the facts the probes gathered in, every check out.

use serde::{Deserialize, Serialize};

use crate::export::ExportStatus;
use crate::updates::Booted;

/// Check names, as they appear in `/v1/ready`, `/v1/status` and `warden_ready_check{check}`.
pub mod check {
    pub const TPM: &str = "tpm";
    pub const MEASUREMENT_LOG: &str = "measurement-log";
    pub const AUDIT_LOG: &str = "audit-log";
    pub const POLICY: &str = "policy";
    pub const PEERS: &str = "peers";
    pub const AUDIT_EXPORT: &str = "audit-export";
    pub const FIRMWARE: &str = "firmware";
    pub const KEYS: &str = "keys";
}

/// One check: whether it passed and why, in a short sentence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Whether a failure makes the appliance not ready (else it is informational).
    pub required: bool,
    pub detail: String,
}

/// `GET /v1/ready`: 200 when `ready`, else 503; the same body either way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

impl Readiness {
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// What the TPM thread reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmSample {
    pub appliance_pcr: u8,
    /// Events in the appliance measurement log.
    pub events: usize,
    /// Whether the log replays to the appliance PCR's value; `Err`: the PCR read failed.
    pub replays: Result<bool, String>,
}

/// `Err`: the TPM thread did not answer (why).
pub type TpmProbe = Result<TpmSample, String>;

/// The peers of the policy in force, when `[peering]` is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCounts {
    pub in_policy: bool,
    pub total: usize,
    pub attested: usize,
}

/// Everything readiness is decided on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub tpm: TpmProbe,
    /// Entries in the audit log, or why it does not accept appends.
    pub audit: Result<u64, String>,
    /// Version of the policy in force.
    pub policy: Option<u64>,
    pub peers: Option<PeerCounts>,
    pub export: Option<ExportStatus>,
    pub firmware: Option<Booted>,
    /// Live key versions the TPM would not unseal in this platform state.
    pub keys_unavailable: usize,
}

fn required(name: &str, ok: bool, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        ok,
        required: true,
        detail,
    }
}

fn informational(name: &str, ok: bool, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        ok,
        required: false,
        detail,
    }
}

/// Decide readiness: ready when every required check passes.
pub fn assess(f: &Facts) -> Readiness {
    let mut checks = Vec::new();
    match &f.tpm {
        Ok(TpmSample {
            appliance_pcr,
            replays: Ok(_),
            ..
        }) => checks.push(required(
            check::TPM,
            true,
            format!("the TPM answered (PCR {appliance_pcr} read)"),
        )),
        Ok(TpmSample {
            replays: Err(e), ..
        }) => checks.push(required(
            check::TPM,
            false,
            format!("the TPM failed a PCR read: {e}"),
        )),
        Err(e) => checks.push(required(
            check::TPM,
            false,
            format!("the TPM thread did not answer: {e}"),
        )),
    }
    checks.push(match &f.tpm {
        Ok(TpmSample {
            appliance_pcr,
            events,
            replays: Ok(true),
        }) => required(
            check::MEASUREMENT_LOG,
            true,
            format!("{events} events replay to PCR {appliance_pcr}"),
        ),
        Ok(TpmSample {
            appliance_pcr,
            events,
            replays: Ok(false),
        }) => required(
            check::MEASUREMENT_LOG,
            false,
            format!(
                "the {events} logged events do not replay to PCR {appliance_pcr}: verifiers \
                 refuse this appliance until the TPM is reset"
            ),
        ),
        Ok(TpmSample {
            replays: Err(_), ..
        }) => required(
            check::MEASUREMENT_LOG,
            false,
            "not checked: the PCR read failed".to_owned(),
        ),
        Err(_) => required(
            check::MEASUREMENT_LOG,
            false,
            "not checked: the TPM thread did not answer".to_owned(),
        ),
    });
    checks.push(match &f.audit {
        Ok(n) => required(
            check::AUDIT_LOG,
            true,
            format!("accepting appends ({n} entries)"),
        ),
        Err(e) => required(
            check::AUDIT_LOG,
            false,
            format!("not accepting appends, so audited operations are refused: {e}"),
        ),
    });
    checks.push(match f.policy {
        Some(v) => informational(check::POLICY, true, format!("version {v} in force")),
        None => informational(
            check::POLICY,
            false,
            "no policy: every forwarded packet is denied".to_owned(),
        ),
    });
    if let Some(p) = &f.peers {
        checks.push(if !p.in_policy {
            informational(
                check::PEERS,
                false,
                "the policy in force does not name this appliance: no peers".to_owned(),
            )
        } else {
            informational(
                check::PEERS,
                p.attested == p.total,
                format!("{} of {} peers attested", p.attested, p.total),
            )
        });
    }
    if let Some(e) = &f.export {
        let behind = e.log_size.saturating_sub(e.delivered);
        checks.push(match &e.last_error {
            None => informational(
                check::AUDIT_EXPORT,
                true,
                format!("delivering; {behind} entries behind, {} skipped", e.skipped),
            ),
            Some(_) => informational(
                check::AUDIT_EXPORT,
                false,
                format!(
                    "the last delivery failed; {behind} entries behind, {} skipped",
                    e.skipped
                ),
            ),
        });
    }
    if let Some(b) = &f.firmware {
        checks.push(match (&b.release, b.svn) {
            (Some(r), Some(svn)) if b.trial => informational(
                check::FIRMWARE,
                false,
                format!(
                    "release {r} (svn {svn}) runs on trial: commit it, or the next start falls back"
                ),
            ),
            (Some(r), Some(svn)) => {
                informational(check::FIRMWARE, true, format!("release {r} (svn {svn})"))
            }
            _ => informational(check::FIRMWARE, true, "the factory image".to_owned()),
        });
    }
    checks.push(match f.keys_unavailable {
        0 => informational(check::KEYS, true, "every key version unseals".to_owned()),
        n => informational(
            check::KEYS,
            false,
            format!("{n} key versions do not unseal in this platform state"),
        ),
    });
    Readiness {
        ready: checks.iter().all(|c| c.ok || !c.required),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Facts {
        Facts {
            tpm: Ok(TpmSample {
                appliance_pcr: 15,
                events: 4,
                replays: Ok(true),
            }),
            audit: Ok(10),
            policy: Some(3),
            peers: Some(PeerCounts {
                in_policy: true,
                total: 2,
                attested: 2,
            }),
            export: Some(ExportStatus {
                collector: "c:6514".into(),
                delivered: 8,
                log_size: 10,
                ..ExportStatus::default()
            }),
            firmware: Some(Booted {
                slot: Some("a".into()),
                release: Some("1.2".into()),
                svn: Some(2),
                trial: false,
                measurement: None,
            }),
            keys_unavailable: 0,
        }
    }

    fn failed(r: &Readiness) -> Vec<&str> {
        r.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn every_check_passes_on_a_healthy_appliance() {
        let r = assess(&good());
        assert!(r.ready);
        assert!(failed(&r).is_empty(), "{r:?}");
        for name in [
            check::TPM,
            check::MEASUREMENT_LOG,
            check::AUDIT_LOG,
            check::POLICY,
            check::PEERS,
            check::AUDIT_EXPORT,
            check::FIRMWARE,
            check::KEYS,
        ] {
            assert!(r.check(name).is_some(), "{name} missing: {r:?}");
        }
        assert_eq!(
            r.check(check::MEASUREMENT_LOG).unwrap().detail,
            "4 events replay to PCR 15"
        );
        assert_eq!(
            r.check(check::AUDIT_EXPORT).unwrap().detail,
            "delivering; 2 entries behind, 0 skipped"
        );
    }

    /// Each failure, and whether it makes the appliance not ready.
    #[test]
    fn each_failed_check_is_named_and_only_required_ones_decide() {
        type Breaks = fn(&mut Facts);
        let table: [(&str, Breaks, bool); 12] = [
            (check::TPM, |f| f.tpm = Err("gone".into()), false),
            (
                check::TPM,
                |f| {
                    f.tpm = Ok(TpmSample {
                        appliance_pcr: 15,
                        events: 4,
                        replays: Err("TPM2_PCR_Read: io error".into()),
                    })
                },
                false,
            ),
            (
                check::MEASUREMENT_LOG,
                |f| {
                    f.tpm = Ok(TpmSample {
                        appliance_pcr: 15,
                        events: 4,
                        replays: Ok(false),
                    })
                },
                false,
            ),
            (check::AUDIT_LOG, |f| f.audit = Err("failed".into()), false),
            (check::POLICY, |f| f.policy = None, true),
            (
                check::PEERS,
                |f| {
                    f.peers = Some(PeerCounts {
                        in_policy: true,
                        total: 2,
                        attested: 1,
                    })
                },
                true,
            ),
            (
                check::PEERS,
                |f| {
                    f.peers = Some(PeerCounts {
                        in_policy: false,
                        total: 0,
                        attested: 0,
                    })
                },
                true,
            ),
            (
                check::AUDIT_EXPORT,
                |f| {
                    if let Some(e) = f.export.as_mut() {
                        e.last_error = Some("connection refused".into());
                    }
                },
                true,
            ),
            (
                check::FIRMWARE,
                |f| {
                    if let Some(b) = f.firmware.as_mut() {
                        b.trial = true;
                    }
                },
                true,
            ),
            (check::KEYS, |f| f.keys_unavailable = 2, true),
            // Both TPM checks fail when the thread does not answer.
            (
                check::MEASUREMENT_LOG,
                |f| f.tpm = Err("gone".into()),
                false,
            ),
            (
                check::MEASUREMENT_LOG,
                |f| {
                    f.tpm = Ok(TpmSample {
                        appliance_pcr: 15,
                        events: 4,
                        replays: Err("io".into()),
                    })
                },
                false,
            ),
        ];
        for (name, breaks, still_ready) in table {
            let mut f = good();
            breaks(&mut f);
            let r = assess(&f);
            assert!(failed(&r).contains(&name), "{name}: {r:?}");
            assert_eq!(r.ready, still_ready, "{name}: {r:?}");
            let c = r.check(name).unwrap();
            assert_eq!(c.required, !still_ready, "{name}");
            assert!(!c.detail.is_empty());
        }
    }

    #[test]
    fn the_export_error_text_is_not_in_the_readiness_body() {
        let mut f = good();
        if let Some(e) = f.export.as_mut() {
            e.last_error = Some("cannot connect to 10.9.8.7:6514".into());
        }
        let body = serde_json::to_string(&assess(&f)).unwrap();
        assert!(!body.contains("10.9.8.7"), "{body}");
    }

    #[test]
    fn optional_subsystems_have_no_check_when_not_configured() {
        let mut f = good();
        f.peers = None;
        f.export = None;
        f.firmware = None;
        let r = assess(&f);
        assert!(r.ready);
        for name in [check::PEERS, check::AUDIT_EXPORT, check::FIRMWARE] {
            assert!(r.check(name).is_none(), "{name}");
        }
    }
}
