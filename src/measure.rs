//! The appliance's measurement log on disk: one JSON line per event, each fsynced before its
//! digest is extended into the appliance PCR. On start the log is replayed against the PCR:
//!
//! ```text
//!   replay(log) == PCR            → consistent, carry on
//!   PCR == 0…0                    → the TPM was reset (power cycle): archive the log, start anew
//!   replay(log minus last) == PCR → crashed between fsync and extend: finish the extend
//!   anything else                 → diverged: keep the log; verifiers will refuse the quote
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use warden_attest::applog::{self, ApplianceEvent, MAX_EVENTS};

/// A line longer than this is corrupt.
const MAX_LINE: usize = 16 * 1024;

/// What opening the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    Consistent,
    /// The TPM was reset since the log was written; the old log was archived.
    TpmReset {
        archived: usize,
    },
    /// The last event was written but not extended; the caller must extend this digest.
    PendingExtend([u8; 32]),
    /// Log and PCR disagree beyond repair; evidence will fail verification until the TPM resets.
    Diverged,
}

#[derive(Debug)]
pub struct MeasurementLog {
    path: PathBuf,
    events: Vec<ApplianceEvent>,
}

impl MeasurementLog {
    /// Open (or create) the log at `path` and reconcile it with the PCR's current value.
    pub fn open(path: &Path, pcr_now: &[u8]) -> anyhow::Result<(Self, Recovery)> {
        let mut events = Vec::new();
        match File::open(path) {
            Ok(f) => {
                for (i, line) in BufReader::new(f).split(b'\n').enumerate() {
                    let line = line.with_context(|| format!("reading {}", path.display()))?;
                    if line.len() > MAX_LINE || events.len() >= MAX_EVENTS {
                        anyhow::bail!(
                            "{}: line {} is too long or too many events",
                            path.display(),
                            i + 1
                        );
                    }
                    match serde_json::from_slice::<ApplianceEvent>(&line) {
                        Ok(e) => events.push(e),
                        // A torn final line from a crash mid-write: it was never extended.
                        Err(_) => {
                            tracing::warn!(path = %path.display(), line = i + 1, "dropping a torn measurement-log line");
                            break;
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
        let replayed = applog::replay(&events).ok();
        let recovery = if replayed.as_ref().map(|r| r.as_slice()) == Some(pcr_now) {
            Recovery::Consistent
        } else if pcr_now.iter().all(|b| *b == 0) {
            let archived = events.len();
            if archived > 0 {
                let prev = path.with_extension("prev");
                std::fs::rename(path, &prev).with_context(|| {
                    format!("archiving {} to {}", path.display(), prev.display())
                })?;
            }
            events.clear();
            Recovery::TpmReset { archived }
        } else {
            let n = events.len();
            let pending = events.last().and_then(|last| {
                let before = applog::replay(events.get(..n - 1)?).ok()?;
                (before.as_slice() == pcr_now).then(|| last.computed_digest().ok())?
            });
            match pending {
                Some(d) => Recovery::PendingExtend(d),
                None => Recovery::Diverged,
            }
        };
        // Rewrite the file so a dropped torn line does not linger.
        let log = MeasurementLog {
            path: path.to_owned(),
            events,
        };
        log.rewrite()?;
        Ok((log, recovery))
    }

    fn rewrite(&self) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for e in &self.events {
            serde_json::to_writer(&mut f, e)?;
            f.write_all(b"\n")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).ok();
        }
        Ok(())
    }

    /// Append an event durably (written and fsynced). The caller extends its digest afterwards.
    pub fn append(&mut self, event: ApplianceEvent) -> anyhow::Result<()> {
        if self.events.len() >= MAX_EVENTS {
            anyhow::bail!("the measurement log is full ({MAX_EVENTS} events)");
        }
        let mut line = serde_json::to_vec(&event)?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        f.write_all(&line)?;
        f.sync_all()?;
        self.events.push(event);
        Ok(())
    }

    pub fn events(&self) -> &[ApplianceEvent] {
        &self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_attest::HashAlg;

    fn extend(pcr: &[u8], e: &ApplianceEvent) -> Vec<u8> {
        HashAlg::Sha256.extend(pcr, &e.computed_digest().unwrap())
    }

    #[test]
    fn recovers_every_crash_point() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let zero = vec![0u8; 32];
        let (mut log, r) = MeasurementLog::open(&path, &zero).unwrap();
        assert_eq!(r, Recovery::Consistent);
        let a = ApplianceEvent::new("a", "1").unwrap();
        log.append(a.clone()).unwrap();
        let pcr_a = extend(&zero, &a);
        let (log2, r) = MeasurementLog::open(&path, &pcr_a).unwrap();
        assert_eq!(r, Recovery::Consistent);
        drop(log2);
        let (mut log3, _) = MeasurementLog::open(&path, &pcr_a).unwrap();
        let b = ApplianceEvent::new("b", "2").unwrap();
        log3.append(b.clone()).unwrap();
        // Written, not extended.
        let (_, r) = MeasurementLog::open(&path, &pcr_a).unwrap();
        assert_eq!(r, Recovery::PendingExtend(b.computed_digest().unwrap()));
        // A torn line is dropped.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"kind\":\"c\",\"de").unwrap();
        let pcr_ab = extend(&pcr_a, &b);
        let (l, r) = MeasurementLog::open(&path, &pcr_ab).unwrap();
        assert_eq!(r, Recovery::Consistent);
        assert_eq!(l.events().len(), 2);
        // Diverged: a PCR nobody logged.
        let (_, r) = MeasurementLog::open(&path, &[7u8; 32]).unwrap();
        assert_eq!(r, Recovery::Diverged);
        // TPM reset archives.
        let (l, r) = MeasurementLog::open(&path, &zero).unwrap();
        assert_eq!(r, Recovery::TpmReset { archived: 2 });
        assert!(l.events().is_empty());
        assert!(path.with_extension("prev").exists());
    }
}
