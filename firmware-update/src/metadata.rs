//! The four roles (TUF specification §2.1) and their checks.
//!
//! - **root** lists every key and, per role, which keys may sign it and how many must.
//! - **timestamp** names the current snapshot (version, length, SHA-256); it expires soon, so a
//!   frozen mirror is noticed.
//! - **snapshot** names the current targets metadata (version, length, SHA-256), so targets
//!   from different releases cannot be mixed.
//! - **targets** lists the images: length, SHA-256, hardware id, component, security version
//!   (SVN) and release version.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::envelope::{signed_message, Envelope};
use crate::error::{MetadataError, RejectReason, Rejection, UpdateError};
use crate::keys::{verify_signature, KeySpec, RawKey};
use crate::time::{format_rfc3339, parse_rfc3339, TrustedTime};
use crate::x509::verify_chain;

/// The format this code reads and writes.
pub const SPEC_VERSION: &str = "warden-update/1";
/// Most keys a root may list.
pub const MAX_KEYS: usize = 64;
/// Most targets one targets file may list.
pub const MAX_TARGETS: usize = 1024;
/// Longest target name.
pub const MAX_TARGET_NAME: usize = 128;
/// Longest hardware id, component or release string.
pub const MAX_LABEL: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Root,
    Timestamp,
    Snapshot,
    Targets,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Root, Role::Timestamp, Role::Snapshot, Role::Targets];

    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Timestamp => "timestamp",
            Role::Snapshot => "snapshot",
            Role::Targets => "targets",
        }
    }
}

/// Which keys sign a role, and how many must.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u32,
}

/// Version, length and digest of another metadata file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaRef {
    pub version: u64,
    pub length: u64,
    #[serde(with = "hex32")]
    pub sha256: [u8; 32],
}

/// One image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub length: u64,
    #[serde(with = "hex32")]
    pub sha256: [u8; 32],
    pub hardware_id: String,
    pub component: String,
    /// Security version: the anti-rollback floor moves to this once the image is committed.
    pub svn: u64,
    /// Release version, for people.
    pub release: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoot {
    #[serde(rename = "_type")]
    pub type_: Role,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub keys: BTreeMap<String, RawKey>,
    pub roles: BTreeMap<Role, RoleKeys>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimestamp {
    #[serde(rename = "_type")]
    pub type_: Role,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub snapshot: MetaRef,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnapshot {
    #[serde(rename = "_type")]
    pub type_: Role,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub targets: MetaRef,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTargets {
    #[serde(rename = "_type")]
    pub type_: Role,
    pub spec_version: String,
    pub version: u64,
    pub expires: String,
    pub targets: BTreeMap<String, Target>,
}

/// Fields every role has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Common {
    pub version: u64,
    pub expires: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub common: Common,
    pub keys: BTreeMap<String, KeySpec>,
    pub roles: BTreeMap<Role, RoleKeys>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timestamp {
    pub common: Common,
    pub snapshot: MetaRef,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub common: Common,
    pub targets: MetaRef,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub common: Common,
    pub targets: BTreeMap<String, Target>,
}

fn malformed(role: Role, reason: impl Into<String>) -> MetadataError {
    MetadataError::Malformed {
        what: format!("{} metadata", role.name()),
        reason: reason.into(),
    }
}

fn common(
    role: Role,
    type_: Role,
    spec: &str,
    version: u64,
    expires: &str,
) -> Result<Common, MetadataError> {
    if type_ != role {
        return Err(malformed(
            role,
            format!("_type is {:?}, expected {:?}", type_.name(), role.name()),
        ));
    }
    if spec != SPEC_VERSION {
        return Err(malformed(
            role,
            format!("spec_version {spec:?} is not {SPEC_VERSION:?}"),
        ));
    }
    if version == 0 || version > i64::MAX as u64 {
        return Err(malformed(role, "version must be 1 or more"));
    }
    Ok(Common {
        version,
        expires: parse_rfc3339("expires", expires)?,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(
    role: Role,
    payload: &[u8],
) -> Result<T, MetadataError> {
    serde_json::from_slice(payload).map_err(|e| malformed(role, e.to_string()))
}

fn check_label(field: &'static str, s: &str) -> Result<(), MetadataError> {
    if s.is_empty() || s.len() > MAX_LABEL || s.chars().any(|c| c.is_control()) {
        return Err(MetadataError::BadField {
            field,
            reason: format!("must be 1..={MAX_LABEL} printable characters"),
        });
    }
    Ok(())
}

/// A target name must be safe as a file name anywhere: path segments of `[A-Za-z0-9._-]`,
/// none empty, `.` or `..`, not starting with `/`. (TUF §5.7.3 warns clients not to trust
/// target paths; Warden refuses the whole targets file instead.)
pub fn check_target_name(name: &str) -> Result<(), MetadataError> {
    let fail = |reason: &'static str| MetadataError::UnsafeTargetName {
        name: name.chars().take(MAX_TARGET_NAME).collect(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_TARGET_NAME {
        return Err(fail("length must be 1..=128"));
    }
    if name.starts_with('/') {
        return Err(fail("absolute path"));
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return Err(fail("empty path segment"));
        }
        if seg == "." || seg == ".." {
            return Err(fail("`.` or `..` segment"));
        }
        if seg.starts_with('-') {
            return Err(fail("segment starts with `-`"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(fail("characters outside [A-Za-z0-9._-]"));
        }
    }
    Ok(())
}

impl Root {
    pub fn parse(payload: &[u8]) -> Result<Root, MetadataError> {
        let raw: RawRoot = parse_json(Role::Root, payload)?;
        let common = common(
            Role::Root,
            raw.type_,
            &raw.spec_version,
            raw.version,
            &raw.expires,
        )?;
        if raw.keys.len() > MAX_KEYS {
            return Err(malformed(Role::Root, format!("more than {MAX_KEYS} keys")));
        }
        let mut keys = BTreeMap::new();
        for (id, rk) in &raw.keys {
            let spec = KeySpec::from_raw(rk)?;
            let computed = spec.keyid();
            if *id != computed {
                return Err(malformed(
                    Role::Root,
                    format!("key {id} has id {computed} by its content"),
                ));
            }
            keys.insert(computed, spec);
        }
        for role in Role::ALL {
            let rk = raw
                .roles
                .get(&role)
                .ok_or_else(|| malformed(Role::Root, format!("role {} is missing", role.name())))?;
            let distinct: BTreeSet<&String> = rk.keyids.iter().collect();
            if distinct.len() != rk.keyids.len() {
                return Err(malformed(
                    Role::Root,
                    format!("role {} lists a key twice", role.name()),
                ));
            }
            if rk.threshold == 0 || rk.threshold as usize > rk.keyids.len() {
                return Err(malformed(
                    Role::Root,
                    format!(
                        "role {}: threshold {} with {} keys",
                        role.name(),
                        rk.threshold,
                        rk.keyids.len()
                    ),
                ));
            }
            if let Some(missing) = rk.keyids.iter().find(|k| !keys.contains_key(*k)) {
                return Err(malformed(
                    Role::Root,
                    format!("role {} names unknown key {missing}", role.name()),
                ));
            }
        }
        Ok(Root {
            common,
            keys,
            roles: raw.roles,
        })
    }

    /// Check that `envelope` carries at least the threshold of valid signatures for `role`,
    /// counted over distinct keys (TUF §5.3.4 and §5.4.2 etc.).
    pub fn verify(
        &self,
        role: Role,
        envelope: &Envelope,
        time: &TrustedTime,
    ) -> Result<(), UpdateError> {
        let Some(rk) = self.roles.get(&role) else {
            return Err(malformed(Role::Root, format!("role {} is missing", role.name())).into());
        };
        let msg = signed_message(&envelope.payload);
        let mut seen_ids = BTreeSet::new();
        let mut counted_keys: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut rejected = Vec::new();
        for s in &envelope.signatures {
            if !seen_ids.insert(s.keyid.as_str()) {
                return Err(UpdateError::DuplicateSignature {
                    role: role.name(),
                    keyid: s.keyid.clone(),
                });
            }
            let reject = |why| Rejection {
                keyid: s.keyid.clone(),
                why,
            };
            let spec = match self.keys.get(&s.keyid) {
                Some(spec) if rk.keyids.contains(&s.keyid) => spec,
                _ => {
                    rejected.push(reject(RejectReason::NotARoleKey));
                    continue;
                }
            };
            let (alg, public) = match spec {
                KeySpec::Bare { alg, public } => (*alg, public.clone()),
                KeySpec::X509 { ca, subject } => match verify_chain(&s.chain, ca, subject, time) {
                    Ok(leaf) => (leaf.alg, leaf.public),
                    Err(e) => {
                        rejected.push(reject(RejectReason::Certificate(e)));
                        continue;
                    }
                },
            };
            if !verify_signature(alg, &public, &msg, &s.sig) {
                rejected.push(reject(RejectReason::BadSignature));
                continue;
            }
            if !counted_keys.insert(public) {
                rejected.push(reject(RejectReason::SameKeyTwice));
                continue;
            }
        }
        let valid = counted_keys.len();
        if valid < rk.threshold as usize {
            return Err(UpdateError::Threshold {
                role: role.name(),
                valid,
                threshold: rk.threshold,
                rejected,
            });
        }
        Ok(())
    }

    /// The key ids of a role, for noticing a rotation of that role's keys.
    pub fn role_keys(&self, role: Role) -> Option<&RoleKeys> {
        self.roles.get(&role)
    }
}

impl Timestamp {
    pub fn parse(payload: &[u8]) -> Result<Timestamp, MetadataError> {
        let raw: RawTimestamp = parse_json(Role::Timestamp, payload)?;
        Ok(Timestamp {
            common: common(
                Role::Timestamp,
                raw.type_,
                &raw.spec_version,
                raw.version,
                &raw.expires,
            )?,
            snapshot: raw.snapshot,
        })
    }
}

impl Snapshot {
    pub fn parse(payload: &[u8]) -> Result<Snapshot, MetadataError> {
        let raw: RawSnapshot = parse_json(Role::Snapshot, payload)?;
        Ok(Snapshot {
            common: common(
                Role::Snapshot,
                raw.type_,
                &raw.spec_version,
                raw.version,
                &raw.expires,
            )?,
            targets: raw.targets,
        })
    }
}

impl Targets {
    pub fn parse(payload: &[u8]) -> Result<Targets, MetadataError> {
        let raw: RawTargets = parse_json(Role::Targets, payload)?;
        let common = common(
            Role::Targets,
            raw.type_,
            &raw.spec_version,
            raw.version,
            &raw.expires,
        )?;
        if raw.targets.len() > MAX_TARGETS {
            return Err(malformed(
                Role::Targets,
                format!("more than {MAX_TARGETS} targets"),
            ));
        }
        for (name, t) in &raw.targets {
            check_target_name(name)?;
            check_label("hardware_id", &t.hardware_id)?;
            check_label("component", &t.component)?;
            check_label("release", &t.release)?;
            if t.svn > i64::MAX as u64 {
                return Err(MetadataError::BadField {
                    field: "svn",
                    reason: "too large".into(),
                });
            }
        }
        Ok(Targets {
            common,
            targets: raw.targets,
        })
    }
}

/// Refuse metadata that expired (TUF §5.3.10, §5.4.4, §5.5.6, §5.6.5).
pub fn check_expiry(role: Role, c: &Common, time: &TrustedTime) -> Result<(), UpdateError> {
    if time.is_expired(c.expires) {
        return Err(UpdateError::Expired {
            role: role.name(),
            version: c.version,
            expires: format_rfc3339(c.expires),
        });
    }
    Ok(())
}

/// Lowercase hex for 32-byte digests.
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out)
            .map_err(|e| serde::de::Error::custom(format!("not 64 hex digits: {e}")))?;
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn target_names() {
        for ok in ["fw.img", "bf3/fw-1.2.0.bin", "A_b.c"] {
            check_target_name(ok).unwrap();
        }
        for bad in [
            "",
            "../etc/passwd",
            "a/../../b",
            "/abs",
            "a//b",
            "./a",
            "a/.",
            "-rf",
            "a b",
            "a\\b",
            "a\0b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(
                matches!(
                    check_target_name(bad),
                    Err(MetadataError::UnsafeTargetName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn common_fields_are_checked() {
        assert!(common(
            Role::Root,
            Role::Targets,
            SPEC_VERSION,
            1,
            "2030-01-01T00:00:00Z"
        )
        .is_err());
        assert!(common(Role::Root, Role::Root, "tuf/1", 1, "2030-01-01T00:00:00Z").is_err());
        assert!(common(
            Role::Root,
            Role::Root,
            SPEC_VERSION,
            0,
            "2030-01-01T00:00:00Z"
        )
        .is_err());
        assert!(common(Role::Root, Role::Root, SPEC_VERSION, 1, "soon").is_err());
        assert!(common(
            Role::Root,
            Role::Root,
            SPEC_VERSION,
            1,
            "2030-01-01T00:00:00Z"
        )
        .is_ok());
    }
}
