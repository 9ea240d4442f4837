//! The update workflow (TUF specification §5, "Detailed client workflow"), sans-I/O apart from
//! the [`Repository`] it reads from:
//!
//! ```text
//!  trusted root ──(N+1).root.json, one version at a time, signed by old AND new root──▶ root
//!       │ root not expired
//!       ▼
//!  timestamp.json ── signed, not older than trusted, not expired ──▶ snapshot (version, length, digest)
//!       ▼
//!  snapshot.json ── length ≤ listed, digest and version as listed, signed, no targets rollback,
//!       │           not expired ──▶ targets (version, length, digest)
//!       ▼
//!  targets.json ── length ≤ listed, digest and version as listed, signed, names safe, not expired
//!       ▼
//!  target for this component and hardware, SVN ≥ floor ──▶ VerifiedRelease
//! ```
//!
//! Nothing is saved here: the caller persists [`VerifiedRelease::new_state`] only after the
//! image itself has been verified too.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::error::{MetadataError, UpdateError};
use crate::metadata::{check_expiry, MetaRef, Role, Root, Snapshot, Target, Targets, Timestamp};
use crate::time::TrustedTime;

/// Size limits, checked before parsing (tough's `max_root_size` and friends).
pub const MAX_ROOT_BYTES: u64 = 512 * 1024;
pub const MAX_TIMESTAMP_BYTES: u64 = 16 * 1024;
pub const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024;
pub const MAX_TARGETS_BYTES: u64 = 2 * 1024 * 1024;
/// Root rotations followed in one update (TUF §5.3.3 suggests a fixed maximum).
pub const MAX_ROOT_ROTATIONS: u64 = 64;
/// Largest saved trusted state.
pub const MAX_STATE_BYTES: u64 = 4 * MAX_ROOT_BYTES + MAX_TARGETS_BYTES * 2;

pub const TIMESTAMP_FILE: &str = "timestamp.json";
pub const SNAPSHOT_FILE: &str = "snapshot.json";
pub const TARGETS_FILE: &str = "targets.json";

/// The file holding root version `n`.
pub fn root_file(n: u64) -> String {
    format!("{n}.root.json")
}

/// Why a repository could not produce a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The file is longer than the limit given (it was not read further).
    #[error("longer than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Io(String),
}

/// Where metadata comes from. Everything it returns is untrusted.
pub trait Repository {
    /// Read `file`, at most `max_len` bytes; `Ok(None)` when it does not exist.
    fn fetch(&mut self, file: &str, max_len: u64) -> Result<Option<Vec<u8>>, FetchError>;
}

/// The metadata the appliance trusts, exactly as received, and the trusted-time floor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedState {
    #[serde(with = "b64")]
    pub root: Vec<u8>,
    #[serde(default, with = "b64opt", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Vec<u8>>,
    #[serde(default, with = "b64opt", skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Vec<u8>>,
    #[serde(default, with = "b64opt", skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<u8>>,
    /// The latest trusted time seen (Unix seconds); the floor when no clock is trusted.
    pub time_floor: i64,
}

/// [`TrustedState`] parsed. Signatures are checked when a state is loaded (the root against
/// itself, the rest against the root) so a corrupted file is noticed; expiry is not, because
/// trusted metadata that expired is still the baseline for rollback checks.
#[derive(Clone, Debug)]
pub struct Trusted {
    pub root: Root,
    pub timestamp: Option<Timestamp>,
    pub snapshot: Option<Snapshot>,
    pub targets: Option<Targets>,
}

fn fetch_err(file: &str, e: FetchError) -> UpdateError {
    match e {
        FetchError::TooLarge { limit } => UpdateError::Metadata(MetadataError::TooLarge {
            what: file.to_owned(),
            len: limit + 1,
            limit,
        }),
        FetchError::Io(reason) => UpdateError::Fetch {
            file: file.to_owned(),
            reason,
        },
    }
}

fn fetch_required(
    repo: &mut dyn Repository,
    file: &str,
    limit: u64,
) -> Result<Vec<u8>, UpdateError> {
    repo.fetch(file, limit)
        .map_err(|e| fetch_err(file, e))?
        .ok_or_else(|| UpdateError::Fetch {
            file: file.to_owned(),
            reason: "not in the repository".into(),
        })
        .and_then(|b| {
            // A repository that ignored the limit is still held to it.
            if b.len() as u64 > limit {
                Err(fetch_err(file, FetchError::TooLarge { limit }))
            } else {
                Ok(b)
            }
        })
}

/// Check a file against what the previous role listed for it (length and SHA-256).
fn check_listed(
    role: Role,
    listed_by: Role,
    bytes: &[u8],
    meta: &MetaRef,
) -> Result<(), UpdateError> {
    let mismatch = |reason: String| UpdateError::MixAndMatch {
        role: role.name(),
        listed_by: listed_by.name(),
        reason,
    };
    if bytes.len() as u64 != meta.length {
        return Err(mismatch(format!(
            "{} bytes, {} listed",
            bytes.len(),
            meta.length
        )));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    if digest.as_ref() != meta.sha256.as_slice() {
        return Err(mismatch("SHA-256 differs from the listed digest".into()));
    }
    Ok(())
}

impl TrustedState {
    /// The starting state: a root shipped with the appliance. It must be signed by its own
    /// root role (TUF §5.2: the trusted root is provisioned out of band).
    pub fn bootstrap(root_bytes: Vec<u8>, time_floor: i64) -> Result<TrustedState, UpdateError> {
        let env = Envelope::parse("root metadata", &root_bytes, MAX_ROOT_BYTES)?;
        let root = Root::parse(&env.payload)?;
        root.verify(
            Role::Root,
            &env,
            &TrustedTime::Unknown { floor: time_floor },
        )?;
        Ok(TrustedState {
            root: root_bytes,
            timestamp: None,
            snapshot: None,
            targets: None,
            time_floor,
        })
    }

    /// Parse and re-check signatures (not expiry).
    pub fn parse(&self) -> Result<Trusted, UpdateError> {
        let time = TrustedTime::Unknown { floor: i64::MIN };
        let env = Envelope::parse("trusted root", &self.root, MAX_ROOT_BYTES)?;
        let root = Root::parse(&env.payload)?;
        root.verify(Role::Root, &env, &time)?;
        let load = |role: Role,
                    bytes: &Option<Vec<u8>>,
                    limit: u64|
         -> Result<Option<Vec<u8>>, UpdateError> {
            let Some(b) = bytes else { return Ok(None) };
            let env = Envelope::parse(role.name(), b, limit)?;
            root.verify(role, &env, &time)?;
            Ok(Some(env.payload))
        };
        let timestamp = load(Role::Timestamp, &self.timestamp, MAX_TIMESTAMP_BYTES)?
            .map(|p| Timestamp::parse(&p))
            .transpose()?;
        let snapshot = load(Role::Snapshot, &self.snapshot, MAX_SNAPSHOT_BYTES)?
            .map(|p| Snapshot::parse(&p))
            .transpose()?;
        let targets = load(Role::Targets, &self.targets, MAX_TARGETS_BYTES)?
            .map(|p| Targets::parse(&p))
            .transpose()?;
        Ok(Trusted {
            root,
            timestamp,
            snapshot,
            targets,
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn from_json(bytes: &[u8]) -> Result<TrustedState, MetadataError> {
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(MetadataError::TooLarge {
                what: "trusted state".into(),
                len: bytes.len() as u64,
                limit: MAX_STATE_BYTES,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| MetadataError::Malformed {
            what: "trusted state".into(),
            reason: e.to_string(),
        })
    }
}

/// What to look for.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub component: &'a str,
    pub hardware_id: &'a str,
    /// A target by name, or `None` for the highest SVN for this component and hardware.
    pub target: Option<&'a str>,
    /// The component's security floor (the TPM counter).
    pub floor: u64,
}

/// Metadata that passed every check, and the target chosen. Only this value opens the way to
/// writing a slot ([`crate::image::ImageVerifier::new`]).
#[derive(Debug, Clone)]
pub struct VerifiedRelease {
    target_name: String,
    target: Target,
    manifest_sha256: [u8; 32],
    root_version: u64,
    targets_version: u64,
    /// The trusted state to save once the image is verified too.
    pub new_state: TrustedState,
}

impl VerifiedRelease {
    pub fn target_name(&self) -> &str {
        &self.target_name
    }
    pub fn target(&self) -> &Target {
        &self.target
    }
    /// SHA-256 of the signed targets payload: what is measured with the image.
    pub fn manifest_sha256(&self) -> [u8; 32] {
        self.manifest_sha256
    }
    pub fn root_version(&self) -> u64 {
        self.root_version
    }
    pub fn targets_version(&self) -> u64 {
        self.targets_version
    }
}

/// Run the whole workflow against `repo`.
pub fn check_update(
    state: &TrustedState,
    repo: &mut dyn Repository,
    time: &TrustedTime,
    req: &Request<'_>,
) -> Result<VerifiedRelease, UpdateError> {
    let trusted = state.parse()?;
    let mut root = trusted.root;
    let mut root_bytes = state.root.clone();
    let mut old_ts = trusted.timestamp;
    let mut old_snap = trusted.snapshot;

    // §5.3: root rotation, one version at a time.
    for _ in 0..MAX_ROOT_ROTATIONS {
        let next = root.common.version + 1;
        let file = root_file(next);
        let Some(bytes) = repo
            .fetch(&file, MAX_ROOT_BYTES)
            .map_err(|e| fetch_err(&file, e))?
        else {
            break;
        };
        let env = Envelope::parse(&file, &bytes, MAX_ROOT_BYTES)?;
        // Signed by a threshold of the trusted root's root keys…
        root.verify(Role::Root, &env, time)?;
        let new = Root::parse(&env.payload)?;
        // …and of the new root's own (§5.3.4).
        new.verify(Role::Root, &env, time)?;
        if new.common.version != next {
            return Err(UpdateError::RootVersion {
                expected: next,
                found: new.common.version,
            });
        }
        // §5.3.11: if the timestamp or snapshot keys rotated, forget what they signed, so a
        // fast-forward attack by a compromised key can be recovered from.
        if new.role_keys(Role::Timestamp) != root.role_keys(Role::Timestamp) {
            old_ts = None;
        }
        if new.role_keys(Role::Snapshot) != root.role_keys(Role::Snapshot) {
            old_snap = None;
        }
        root = new;
        root_bytes = bytes;
    }
    check_expiry(Role::Root, &root.common, time)?;

    // §5.4: timestamp.
    let ts_bytes = fetch_required(repo, TIMESTAMP_FILE, MAX_TIMESTAMP_BYTES)?;
    let env = Envelope::parse(TIMESTAMP_FILE, &ts_bytes, MAX_TIMESTAMP_BYTES)?;
    root.verify(Role::Timestamp, &env, time)?;
    let ts = Timestamp::parse(&env.payload)?;
    if let Some(old) = &old_ts {
        if ts.common.version < old.common.version {
            return Err(UpdateError::Rollback {
                role: "timestamp",
                version: ts.common.version,
                trusted: old.common.version,
            });
        }
        if ts.snapshot.version < old.snapshot.version {
            return Err(UpdateError::Rollback {
                role: "snapshot",
                version: ts.snapshot.version,
                trusted: old.snapshot.version,
            });
        }
    }
    check_expiry(Role::Timestamp, &ts.common, time)?;

    // §5.5: snapshot, no longer than the timestamp says.
    let snap_limit = ts.snapshot.length.min(MAX_SNAPSHOT_BYTES);
    let snap_bytes = fetch_required(repo, SNAPSHOT_FILE, snap_limit)?;
    check_listed(Role::Snapshot, Role::Timestamp, &snap_bytes, &ts.snapshot)?;
    let env = Envelope::parse(SNAPSHOT_FILE, &snap_bytes, snap_limit)?;
    root.verify(Role::Snapshot, &env, time)?;
    let snap = Snapshot::parse(&env.payload)?;
    if snap.common.version != ts.snapshot.version {
        return Err(UpdateError::MixAndMatch {
            role: "snapshot",
            listed_by: "timestamp",
            reason: format!(
                "version {}, timestamp lists {}",
                snap.common.version, ts.snapshot.version
            ),
        });
    }
    if let Some(old) = &old_snap {
        if snap.targets.version < old.targets.version {
            return Err(UpdateError::Rollback {
                role: "targets",
                version: snap.targets.version,
                trusted: old.targets.version,
            });
        }
    }
    check_expiry(Role::Snapshot, &snap.common, time)?;

    // §5.6: targets.
    let tgt_limit = snap.targets.length.min(MAX_TARGETS_BYTES);
    let tgt_bytes = fetch_required(repo, TARGETS_FILE, tgt_limit)?;
    check_listed(Role::Targets, Role::Snapshot, &tgt_bytes, &snap.targets)?;
    let env = Envelope::parse(TARGETS_FILE, &tgt_bytes, tgt_limit)?;
    root.verify(Role::Targets, &env, time)?;
    let targets = Targets::parse(&env.payload)?;
    if targets.common.version != snap.targets.version {
        return Err(UpdateError::MixAndMatch {
            role: "targets",
            listed_by: "snapshot",
            reason: format!(
                "version {}, snapshot lists {}",
                targets.common.version, snap.targets.version
            ),
        });
    }
    check_expiry(Role::Targets, &targets.common, time)?;
    let manifest = ring::digest::digest(&ring::digest::SHA256, &env.payload);
    let mut manifest_sha256 = [0u8; 32];
    manifest_sha256.copy_from_slice(manifest.as_ref().get(..32).unwrap_or(&[0u8; 32]));

    let (name, target) = choose_target(&targets, req)?;
    if target.svn < req.floor {
        return Err(UpdateError::BelowFloor {
            target: name.clone(),
            svn: target.svn,
            floor: req.floor,
        });
    }
    Ok(VerifiedRelease {
        target_name: name,
        target,
        manifest_sha256,
        root_version: root.common.version,
        targets_version: targets.common.version,
        new_state: TrustedState {
            root: root_bytes,
            timestamp: Some(ts_bytes),
            snapshot: Some(snap_bytes),
            targets: Some(tgt_bytes),
            time_floor: state.time_floor.max(time.floor()),
        },
    })
}

fn choose_target(targets: &Targets, req: &Request<'_>) -> Result<(String, Target), UpdateError> {
    let for_component = targets
        .targets
        .iter()
        .filter(|(name, t)| t.component == req.component && req.target.is_none_or(|n| n == *name));
    let mut other_hardware = Vec::new();
    let mut best: Option<(&String, &Target)> = None;
    for (name, t) in for_component {
        if t.hardware_id != req.hardware_id {
            if !other_hardware.contains(&t.hardware_id) {
                other_hardware.push(t.hardware_id.clone());
            }
            continue;
        }
        if best.is_none_or(|(bn, bt)| (t.svn, name) > (bt.svn, bn)) {
            best = Some((name, t));
        }
    }
    match best {
        Some((n, t)) => Ok((n.clone(), t.clone())),
        None if !other_hardware.is_empty() => Err(UpdateError::WrongHardware {
            component: req.component.to_owned(),
            hardware_id: req.hardware_id.to_owned(),
            other_hardware,
        }),
        None => Err(UpdateError::NoTarget {
            name: req.target.unwrap_or("*").to_owned(),
            component: req.component.to_owned(),
        }),
    }
}

mod b64 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

mod b64opt {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&B64.encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| B64.decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
