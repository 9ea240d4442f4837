//! The boot-control record on disk: one JSON file, replaced atomically.
//!
//! ```text
//!  store:  path.tmp ◀─ write, fsync ─▶ rename(path.tmp, path) ─▶ fsync(dir)
//!          a crash before the rename leaves `path` as it was (a stray path.tmp is ignored
//!          and overwritten by the next store); after it, the new record.
//!  load:   missing ─▶ BootControl::new(default)     size > limit, bad JSON, bad record ─▶ Corrupt
//! ```
//!
//! A file that does not load is an error, never a silent reset: a reset would forget the
//! committed slot and the trial's boot count.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use super::{BootControl, SlotError, SlotId, SlotState, FORMAT, TRIAL_BOOTS_RANGE};

/// The largest boot-control file [`BootControl::load`] reads.
pub const MAX_BOOT_CONTROL_BYTES: u64 = 64 * 1024;

/// The slot image file for a slot under `dir`: `dir/slot-a.img`, `dir/slot-b.img`.
pub fn slot_path(dir: &Path, slot: SlotId) -> PathBuf {
    dir.join(format!("slot-{slot}.img"))
}

/// `path` with `.tmp` appended to its file name.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

fn io<'p>(path: &'p Path, op: &'static str) -> impl FnOnce(std::io::Error) -> SlotError + 'p {
    move |error| SlotError::Io {
        path: path.to_owned(),
        op,
        error,
    }
}

impl BootControl {
    /// Load from `path`; a missing file gives `BootControl::new(default_max_trial_boots)`.
    pub fn load(path: &Path, default_max_trial_boots: u32) -> Result<BootControl, SlotError> {
        let corrupt = |reason: String| SlotError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return BootControl::new(default_max_trial_boots)
            }
            Err(e) => return Err(io(path, "opening")(e)),
        };
        let meta = file.metadata().map_err(io(path, "reading metadata"))?;
        if !meta.is_file() {
            return Err(corrupt("not a regular file".into()));
        }
        let too_large = |len: u64| {
            corrupt(format!(
                "{len} bytes; the limit is {MAX_BOOT_CONTROL_BYTES}"
            ))
        };
        if meta.len() > MAX_BOOT_CONTROL_BYTES {
            return Err(too_large(meta.len()));
        }
        // The file may grow between the stat and the read: read at most one byte past the limit.
        let mut bytes = Vec::new();
        file.take(MAX_BOOT_CONTROL_BYTES.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io(path, "reading"))?;
        let len = bytes.len() as u64;
        if len > MAX_BOOT_CONTROL_BYTES {
            return Err(too_large(len));
        }
        let bc: BootControl = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        bc.validate().map_err(corrupt)?;
        Ok(bc)
    }

    /// Durable, atomic replace: write `path.tmp`, fsync, rename over `path`, fsync the directory.
    pub fn store(&self, path: &Path) -> Result<(), SlotError> {
        // Never write what `load` would refuse: that would stop the next start.
        self.validate()
            .map_err(|reason| SlotError::Inconsistent { reason })?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| SlotError::Inconsistent {
            reason: format!("cannot encode: {e}"),
        })?;
        if bytes.len() as u64 > MAX_BOOT_CONTROL_BYTES {
            return Err(SlotError::Inconsistent {
                reason: format!(
                    "{} bytes encoded; the limit is {MAX_BOOT_CONTROL_BYTES}",
                    bytes.len()
                ),
            });
        }
        let tmp = tmp_path(path);
        let written = write_synced(&tmp, &bytes).and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|error| SlotError::Io {
                path: path.to_owned(),
                op: "renaming the new record over it",
                error,
            })
        });
        if let Err(e) = written {
            // Best effort: the stray file is harmless (load ignores it, store overwrites it).
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir, "syncing the directory"))
    }

    /// The invariants a loaded record must hold. `Err` says which field and why.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "field format: {} is not supported (this version reads {FORMAT})",
                self.format
            ));
        }
        if !TRIAL_BOOTS_RANGE.contains(&self.max_trial_boots) {
            return Err(format!(
                "field max_trial_boots: {} is not in 1..=16",
                self.max_trial_boots
            ));
        }
        for id in SlotId::ALL {
            let st = self.slot(id);
            if let Some(image) = st.image() {
                image
                    .validate()
                    .map_err(|(field, reason)| format!("field {id}.image.{field}: {reason}"))?;
            }
            if let SlotState::Trial { boots_left, .. } = st {
                if *boots_left > self.max_trial_boots {
                    return Err(format!(
                        "field {id}.boots_left: {boots_left} is more than max_trial_boots {}",
                        self.max_trial_boots
                    ));
                }
            }
        }
        if SlotId::ALL
            .iter()
            .all(|s| matches!(self.slot(*s), SlotState::Trial { .. }))
        {
            return Err("both slots are on trial; at most one may be".into());
        }
        if let Some(a) = self.active {
            let st = self.slot(a);
            if !matches!(st, SlotState::Good { .. }) {
                return Err(format!(
                    "field active: slot {a} is {}, the active slot must be good",
                    st.name()
                ));
            }
        }
        if let Some(b) = self.booted {
            if matches!(self.slot(b), SlotState::Empty) {
                return Err(format!("field booted: slot {b} is empty"));
            }
        }
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SlotError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io(path, "creating"))?;
    f.write_all(bytes).map_err(io(path, "writing"))?;
    f.sync_all().map_err(io(path, "syncing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_path_appends_to_the_file_name() {
        for (path, tmp) in [
            ("/state/updates/boot.json", "/state/updates/boot.json.tmp"),
            ("boot", "boot.tmp"),
            ("a.b/boot.json", "a.b/boot.json.tmp"),
        ] {
            assert_eq!(tmp_path(Path::new(path)), Path::new(tmp));
        }
    }
}
