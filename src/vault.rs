//! The tenant key vault: per-tenant namespaces of versioned keys, sealed at rest by the TPM,
//! in memory only as [`KeyMaterial`] (zeroized, locked, never printed).
//!
//! ```text
//!  state_dir/keys/<tenant>/<key id>/meta.json     kind, disabled, versions and their states
//!                                  /v<N>.sealed   the TPM-sealed bytes of version N
//! ```
//! Every file is replaced atomically (temporary file, fsync, rename). Deleting a key removes
//! its directory and then drops the memory copy; a restart cannot bring it back. Provisioning
//! challenges (nonce → one-use recipient key) live in memory only: a restart voids them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};
use warden_keys::{KeyKind, KeyMaterial, RecipientKey};

/// Seconds a provisioning challenge stays valid.
pub const CHALLENGE_TTL_SECS: u64 = 120;
/// Outstanding challenges per tenant, and in all.
pub const MAX_CHALLENGES_PER_TENANT: usize = 16;
pub const MAX_CHALLENGES: usize = 1024;
/// Keys per tenant, and versions kept per key.
pub const MAX_KEYS_PER_TENANT: usize = 256;
pub const MAX_VERSIONS: usize = 16;
/// Largest meta.json read back.
const MAX_META_BYTES: u64 = 64 * 1024;

/// Seals bytes to the appliance's state (the TPM) and unseals them.
pub trait Sealer: Send + Sync {
    fn seal(&self, secret: &[u8]) -> Result<Vec<u8>, String>;
    fn unseal(&self, blob: &[u8]) -> Result<KeyMaterial, String>;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    #[error("no key {0:?}")]
    NotFound(String),
    #[error("key {key:?} is a {existing} key, not {offered}")]
    KindMismatch {
        key: String,
        existing: &'static str,
        offered: &'static str,
    },
    #[error("version {offered} of key {key:?} does not follow version {current} (rotation adds exactly one)")]
    Version {
        key: String,
        offered: u32,
        current: u32,
    },
    #[error("a new key starts at version 1, not {0}")]
    FirstVersion(u32),
    #[error("key {0:?} is disabled by an operator")]
    Disabled(String),
    #[error("version {version} of key {key:?} cannot be retired: {why}")]
    Retire {
        key: String,
        version: u32,
        why: &'static str,
    },
    #[error("too many {0}")]
    Limit(&'static str),
    #[error("the TPM could not seal the key: {0}")]
    Seal(String),
    #[error("storing the key failed: {0}")]
    Store(String),
    #[error("too many outstanding challenges; try again later")]
    Busy,
}

/// The state of one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// The newest version: used for new encryption and released.
    Current,
    /// An older version: still usable for decryption until retired.
    Previous,
    /// Retired: gone from disk and memory.
    Retired,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaVersion {
    version: u32,
    state: VersionState,
    created_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    kind: KeyKind,
    disabled: bool,
    versions: Vec<MetaVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    release: Option<ReleasePolicy>,
}

/// Who may receive a key: workloads whose evidence meets `reference`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasePolicy {
    /// Reference values (TOML, docs/attestation.md) the workload's evidence must meet.
    pub reference: String,
    /// How long a released key may be used (seconds; the envelope's not_after).
    pub ttl_secs: u64,
    /// Releases per minute, for the whole tenant.
    pub per_minute: u32,
    /// Two-party split: the stored key is only the appliance's share. A release needs the
    /// tenant's share too (its SHA-256, hex, is this value); the released key is the XOR of
    /// both shares. Neither the appliance's storage nor the tenant's share alone is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_share_sha256: Option<String>,
}

/// Bounds for release policies.
pub const MAX_RELEASE_TTL_SECS: u64 = 86_400;
pub const MAX_RELEASES_PER_MINUTE: u32 = 600;

struct Entry {
    meta: Meta,
    /// Unsealed material per live version; `None` if the TPM refused to unseal it (the
    /// appliance's state is not one the policy authority approved).
    material: BTreeMap<u32, Option<KeyMaterial>>,
}

/// What `list` shows: never material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub tenant: String,
    pub key_id: String,
    pub kind: KeyKind,
    pub disabled: bool,
    pub versions: Vec<VersionInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u32,
    pub state: VersionState,
    pub created_ms: i64,
    /// Whether the TPM unsealed it on this appliance state.
    pub available: bool,
}

struct Pending {
    tenant: String,
    recipient: RecipientKey,
    expires: u64,
}

/// A key version the TPM would not unseal at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsealFailure {
    pub tenant: String,
    pub key_id: String,
    pub version: u32,
    pub error: String,
}

/// A provisioning challenge, as issued.
pub struct Challenge {
    pub nonce: Vec<u8>,
    pub recipient: [u8; 32],
    pub expires: u64,
}

/// The vault of one appliance.
pub struct Vault {
    dir: PathBuf,
    sealer: Box<dyn Sealer>,
    keys: RwLock<BTreeMap<(String, String), Entry>>,
    pending: Mutex<HashMap<Vec<u8>, Pending>>,
    /// Releases per tenant in the current minute: (minute, count).
    releases: Mutex<HashMap<String, (u64, u32)>>,
    /// Counts changes to keys and versions (put, retire, delete, disable), so the control
    /// channel re-keys at once when a tenant rotates.
    changes: tokio::sync::watch::Sender<u64>,
}

fn io(e: impl std::fmt::Display) -> VaultError {
    VaultError::Store(e.to_string())
}

impl Vault {
    /// Wakes on every change to keys and versions.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Load every key's metadata and unseal its live versions. Keys the TPM refuses to unseal
    /// stay listed as unavailable; the names are returned for the caller to audit.
    pub fn open(
        state_dir: &Path,
        sealer: Box<dyn Sealer>,
    ) -> anyhow::Result<(Vault, Vec<UnsealFailure>)> {
        let dir = state_dir.join("keys");
        std::fs::create_dir_all(&dir)?;
        let mut keys = BTreeMap::new();
        let mut failed = Vec::new();
        for tenant in read_dirs(&dir)? {
            for key_id in read_dirs(&dir.join(&tenant))? {
                let kdir = dir.join(&tenant).join(&key_id);
                let meta = read_meta(&kdir.join("meta.json"))?;
                let mut material = BTreeMap::new();
                for v in meta
                    .versions
                    .iter()
                    .filter(|v| v.state != VersionState::Retired)
                {
                    let blob = std::fs::read(kdir.join(format!("v{}.sealed", v.version)))?;
                    match sealer.unseal(&blob) {
                        Ok(k) => {
                            material.insert(v.version, Some(k));
                        }
                        Err(why) => {
                            tracing::error!(tenant = %tenant, key = %key_id, version = v.version, error = %why, "a sealed key does not unseal in this state");
                            failed.push(UnsealFailure {
                                tenant: tenant.clone(),
                                key_id: key_id.clone(),
                                version: v.version,
                                error: why,
                            });
                            material.insert(v.version, None);
                        }
                    }
                }
                keys.insert((tenant.clone(), key_id.clone()), Entry { meta, material });
            }
        }
        Ok((
            Vault {
                dir,
                sealer,
                keys: RwLock::new(keys),
                pending: Mutex::new(HashMap::new()),
                releases: Mutex::new(HashMap::new()),
                changes: tokio::sync::watch::Sender::new(0),
            },
            failed,
        ))
    }

    /// Issue a provisioning challenge for `tenant`: a fresh nonce and a one-use recipient key.
    pub fn challenge(&self, tenant: &str, now: u64) -> Result<Challenge, VaultError> {
        let mut pending = self.pending.lock().map_err(|_| VaultError::Busy)?;
        pending.retain(|_, p| p.expires > now);
        let mine = pending.values().filter(|p| p.tenant == tenant).count();
        if mine >= MAX_CHALLENGES_PER_TENANT || pending.len() >= MAX_CHALLENGES {
            return Err(VaultError::Busy);
        }
        let nonce = KeyMaterial::random(32)
            .map_err(|_| VaultError::Store("no randomness".into()))?
            .expose()
            .to_vec();
        let recipient = RecipientKey::generate();
        let public = recipient.public();
        let expires = now + CHALLENGE_TTL_SECS;
        pending.insert(
            nonce.clone(),
            Pending {
                tenant: tenant.to_owned(),
                recipient,
                expires,
            },
        );
        Ok(Challenge {
            nonce,
            recipient: public,
            expires,
        })
    }

    /// Take (use up) the challenge `nonce` of `tenant`: its recipient key, if it exists, is
    /// this tenant's and has not expired.
    pub fn take_challenge(&self, tenant: &str, nonce: &[u8], now: u64) -> Option<RecipientKey> {
        let mut pending = self.pending.lock().ok()?;
        let p = pending.remove(nonce)?;
        (p.tenant == tenant && p.expires > now).then_some(p.recipient)
    }

    fn key_dir(&self, tenant: &str, key_id: &str) -> PathBuf {
        self.dir.join(tenant).join(key_id)
    }

    /// Store version `version` of `tenant`'s key `key_id` (1 for a new key, current + 1 for a
    /// rotation, which makes the current version `previous`).
    pub fn put(
        &self,
        tenant: &str,
        key_id: &str,
        kind: KeyKind,
        version: u32,
        material: KeyMaterial,
        now_ms: i64,
    ) -> Result<(), VaultError> {
        let mut keys = self.keys.write().map_err(|_| VaultError::Busy)?;
        let id = (tenant.to_owned(), key_id.to_owned());
        let mut meta = match keys.get(&id) {
            None => {
                if version != 1 {
                    return Err(VaultError::FirstVersion(version));
                }
                if keys.keys().filter(|(t, _)| t == tenant).count() >= MAX_KEYS_PER_TENANT {
                    return Err(VaultError::Limit("keys for this tenant"));
                }
                Meta {
                    kind,
                    disabled: false,
                    versions: Vec::new(),
                    release: None,
                }
            }
            Some(e) => {
                if e.meta.kind != kind {
                    return Err(VaultError::KindMismatch {
                        key: key_id.to_owned(),
                        existing: e.meta.kind.name(),
                        offered: kind.name(),
                    });
                }
                if e.meta.disabled {
                    return Err(VaultError::Disabled(key_id.to_owned()));
                }
                let current = e.meta.versions.iter().map(|v| v.version).max().unwrap_or(0);
                if version != current.saturating_add(1) {
                    return Err(VaultError::Version {
                        key: key_id.to_owned(),
                        offered: version,
                        current,
                    });
                }
                if e.meta
                    .versions
                    .iter()
                    .filter(|v| v.state != VersionState::Retired)
                    .count()
                    >= MAX_VERSIONS
                {
                    return Err(VaultError::Limit("live versions: retire old ones first"));
                }
                e.meta.clone()
            }
        };
        let blob = self
            .sealer
            .seal(material.expose())
            .map_err(VaultError::Seal)?;
        let kdir = self.key_dir(tenant, key_id);
        std::fs::create_dir_all(&kdir).map_err(io)?;
        crate::keyfile::write_atomically(&kdir.join(format!("v{version}.sealed")), &blob)
            .map_err(io)?;
        for v in &mut meta.versions {
            if v.state == VersionState::Current {
                v.state = VersionState::Previous;
            }
        }
        meta.versions.push(MetaVersion {
            version,
            state: VersionState::Current,
            created_ms: now_ms,
        });
        write_meta(&kdir, &meta)?;
        let entry = keys.entry(id).or_insert_with(|| Entry {
            meta: meta.clone(),
            material: BTreeMap::new(),
        });
        entry.meta = meta;
        entry.material.insert(version, Some(material));
        self.changed();
        Ok(())
    }

    /// Retire a previous version: its sealed blob and memory copy are removed.
    pub fn retire(&self, tenant: &str, key_id: &str, version: u32) -> Result<(), VaultError> {
        let mut keys = self.keys.write().map_err(|_| VaultError::Busy)?;
        let id = (tenant.to_owned(), key_id.to_owned());
        let entry = keys
            .get_mut(&id)
            .ok_or_else(|| VaultError::NotFound(key_id.to_owned()))?;
        let mut meta = entry.meta.clone();
        let v = meta
            .versions
            .iter_mut()
            .find(|v| v.version == version)
            .ok_or(VaultError::Retire {
                key: key_id.to_owned(),
                version,
                why: "no such version",
            })?;
        match v.state {
            VersionState::Current => {
                return Err(VaultError::Retire {
                    key: key_id.to_owned(),
                    version,
                    why: "it is the current version; rotate first",
                })
            }
            VersionState::Retired => {
                return Err(VaultError::Retire {
                    key: key_id.to_owned(),
                    version,
                    why: "it is already retired",
                })
            }
            VersionState::Previous => v.state = VersionState::Retired,
        }
        let kdir = self.key_dir(tenant, key_id);
        write_meta(&kdir, &meta)?;
        remove_file(&kdir.join(format!("v{version}.sealed")))?;
        entry.meta = meta;
        entry.material.remove(&version);
        self.changed();
        Ok(())
    }

    /// Delete a key for good: files first, then the memory copy (zeroized on drop).
    pub fn delete(&self, tenant: &str, key_id: &str) -> Result<(), VaultError> {
        let mut keys = self.keys.write().map_err(|_| VaultError::Busy)?;
        let id = (tenant.to_owned(), key_id.to_owned());
        if !keys.contains_key(&id) {
            return Err(VaultError::NotFound(key_id.to_owned()));
        }
        let kdir = self.key_dir(tenant, key_id);
        std::fs::remove_dir_all(&kdir).map_err(io)?;
        std::fs::File::open(self.dir.join(tenant))
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        keys.remove(&id);
        self.changed();
        Ok(())
    }

    /// Disable or enable a key (operators): a disabled key is neither released nor rotated.
    pub fn set_disabled(
        &self,
        tenant: &str,
        key_id: &str,
        disabled: bool,
    ) -> Result<(), VaultError> {
        let mut keys = self.keys.write().map_err(|_| VaultError::Busy)?;
        let id = (tenant.to_owned(), key_id.to_owned());
        let entry = keys
            .get_mut(&id)
            .ok_or_else(|| VaultError::NotFound(key_id.to_owned()))?;
        let mut meta = entry.meta.clone();
        meta.disabled = disabled;
        write_meta(&self.key_dir(tenant, key_id), &meta)?;
        entry.meta = meta;
        self.changed();
        Ok(())
    }

    /// The next version number of a key, and its kind (for operator rotation).
    pub fn next_version(&self, tenant: &str, key_id: &str) -> Result<(KeyKind, u32), VaultError> {
        let keys = self.keys.read().map_err(|_| VaultError::Busy)?;
        let e = keys
            .get(&(tenant.to_owned(), key_id.to_owned()))
            .ok_or_else(|| VaultError::NotFound(key_id.to_owned()))?;
        let current = e.meta.versions.iter().map(|v| v.version).max().unwrap_or(0);
        Ok((e.meta.kind, current.saturating_add(1)))
    }

    /// Set (or clear) who may receive a key.
    pub fn set_release_policy(
        &self,
        tenant: &str,
        key_id: &str,
        policy: Option<ReleasePolicy>,
    ) -> Result<(), VaultError> {
        let mut keys = self.keys.write().map_err(|_| VaultError::Busy)?;
        let entry = keys
            .get_mut(&(tenant.to_owned(), key_id.to_owned()))
            .ok_or_else(|| VaultError::NotFound(key_id.to_owned()))?;
        let mut meta = entry.meta.clone();
        meta.release = policy;
        write_meta(&self.key_dir(tenant, key_id), &meta)?;
        entry.meta = meta;
        Ok(())
    }

    /// The key's release policy, if the tenant set one.
    pub fn release_policy(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<Option<ReleasePolicy>, VaultError> {
        let keys = self.keys.read().map_err(|_| VaultError::Busy)?;
        let e = keys
            .get(&(tenant.to_owned(), key_id.to_owned()))
            .ok_or_else(|| VaultError::NotFound(key_id.to_owned()))?;
        Ok(e.meta.release.clone())
    }

    /// Count a release against `tenant`'s per-minute budget; false when it is spent.
    pub fn take_release(&self, tenant: &str, per_minute: u32, now: u64) -> bool {
        let Ok(mut r) = self.releases.lock() else {
            return false;
        };
        let minute = now / 60;
        let slot = r.entry(tenant.to_owned()).or_insert((minute, 0));
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        if slot.1 >= per_minute {
            return false;
        }
        slot.1 += 1;
        true
    }

    /// Keys of `tenant`, or of every tenant (`None`, operators). Never material.
    pub fn list(&self, tenant: Option<&str>) -> Vec<KeyInfo> {
        let Ok(keys) = self.keys.read() else {
            return Vec::new();
        };
        keys.iter()
            .filter(|((t, _), _)| tenant.is_none_or(|want| want == t))
            .map(|((t, k), e)| KeyInfo {
                tenant: t.clone(),
                key_id: k.clone(),
                kind: e.meta.kind,
                disabled: e.meta.disabled,
                versions: e
                    .meta
                    .versions
                    .iter()
                    .map(|v| VersionInfo {
                        version: v.version,
                        state: v.state,
                        created_ms: v.created_ms,
                        available: e.material.get(&v.version).is_some_and(Option::is_some),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Run `f` on the current version's material (for release and the data plane).
    pub fn with_current<R>(
        &self,
        tenant: &str,
        key_id: &str,
        f: impl FnOnce(u32, &KeyMaterial) -> R,
    ) -> Result<R, VaultError> {
        self.with_version(tenant, key_id, None, f)
    }

    /// Run `f` on a live version's material: `version`, or the current one. A previous
    /// version stays usable (to decrypt what it protected) until it is retired.
    pub fn with_version<R>(
        &self,
        tenant: &str,
        key_id: &str,
        version: Option<u32>,
        f: impl FnOnce(u32, &KeyMaterial) -> R,
    ) -> Result<R, VaultError> {
        let keys = self.keys.read().map_err(|_| VaultError::Busy)?;
        let e = keys
            .get(&(tenant.to_owned(), key_id.to_owned()))
            .ok_or_else(|| VaultError::NotFound(key_id.to_owned()))?;
        if e.meta.disabled {
            return Err(VaultError::Disabled(key_id.to_owned()));
        }
        let v = e
            .meta
            .versions
            .iter()
            .find(|v| match version {
                None => v.state == VersionState::Current,
                Some(n) => v.version == n && v.state != VersionState::Retired,
            })
            .ok_or_else(|| VaultError::NotFound(format!("{key_id} version {version:?}")))?;
        match e.material.get(&v.version) {
            Some(Some(k)) => Ok(f(v.version, k)),
            _ => Err(VaultError::Seal(
                "the key did not unseal in this appliance state".into(),
            )),
        }
    }
}

fn read_dirs(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            if let Some(name) = entry.file_name().to_str() {
                if warden_keys::envelope::valid_name(name) {
                    out.push(name.to_owned());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_meta(path: &Path) -> anyhow::Result<Meta> {
    let f = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_META_BYTES), &mut bytes)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn write_meta(kdir: &Path, meta: &Meta) -> Result<(), VaultError> {
    let bytes = serde_json::to_vec_pretty(meta).map_err(io)?;
    crate::keyfile::write_atomically(&kdir.join("meta.json"), &bytes).map_err(io)
}

fn remove_file(path: &Path) -> Result<(), VaultError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
        _ => Ok(()),
    }
}

/// Seals with the appliance's TPM under the configured authority's signed PCR policy.
pub struct TpmSealer {
    tpm: crate::appliance::TpmActor,
    authority: Vec<u8>,
    policy: warden_attest::sealed::SignedPolicy,
}

impl TpmSealer {
    /// Load the authority's public key (hex SEC1) and its signed policy; the policy must
    /// carry the authority's valid signature.
    pub fn load(
        tpm: crate::appliance::TpmActor,
        authority: &Path,
        policy: &Path,
    ) -> anyhow::Result<TpmSealer> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(authority)
            .with_context(|| format!("keys.authority: reading {}", authority.display()))?;
        let authority_key = hex::decode(text.trim()).with_context(|| {
            format!(
                "keys.authority: {} is not a hex SEC1 public key",
                authority.display()
            )
        })?;
        let bytes = std::fs::read(policy)
            .with_context(|| format!("keys.pcr_policy: reading {}", policy.display()))?;
        let signed = warden_attest::sealed::SignedPolicy::from_json(&bytes)
            .with_context(|| format!("keys.pcr_policy: {}", policy.display()))?;
        signed.verify(&authority_key).with_context(|| {
            format!(
                "keys.pcr_policy: {} is not signed by the configured authority",
                policy.display()
            )
        })?;
        Ok(TpmSealer {
            tpm,
            authority: authority_key,
            policy: signed,
        })
    }
}

impl Sealer for TpmSealer {
    fn seal(&self, secret: &[u8]) -> Result<Vec<u8>, String> {
        let secret = zeroize::Zeroizing::new(secret.to_vec());
        let authority = self.authority.clone();
        self.tpm
            .run_blocking(move |a| Ok(a.tpm.seal(&secret, &authority)?))
            .map(|blob| blob.to_bytes())
            .map_err(|e| format!("{e:#}"))
    }

    fn unseal(&self, blob: &[u8]) -> Result<KeyMaterial, String> {
        let blob = warden_attest::sealed::SealedBlob::from_bytes(blob)
            .map_err(|e| format!("the sealed blob is damaged: {e}"))?;
        let authority = self.authority.clone();
        let policy = self.policy.clone();
        self.tpm
            .run_blocking(move |a| Ok(a.tpm.unseal(&blob, &policy, &authority)?))
            .map(|secret| KeyMaterial::new(secret.to_vec()))
            .map_err(|e| format!("{e:#}"))
    }
}

/// The vault without `[keys]`: nothing can be sealed, so nothing is provisioned.
pub struct DisabledSealer;

const DISABLED: &str =
    "the key vault is off: configure [keys] authority and pcr_policy (docs/keys.md)";

impl Sealer for DisabledSealer {
    fn seal(&self, _: &[u8]) -> Result<Vec<u8>, String> {
        Err(DISABLED.into())
    }
    fn unseal(&self, _: &[u8]) -> Result<KeyMaterial, String> {
        Err(DISABLED.into())
    }
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

    /// A stand-in for the TPM: "seals" by prefixing a tag; refuses blobs without it, and
    /// refuses everything when `locked` (a state the policy authority did not approve).
    struct TagSealer {
        locked: bool,
    }

    impl Sealer for TagSealer {
        fn seal(&self, secret: &[u8]) -> Result<Vec<u8>, String> {
            Ok([b"SEALED:".as_slice(), secret].concat())
        }
        fn unseal(&self, blob: &[u8]) -> Result<KeyMaterial, String> {
            if self.locked {
                return Err("policy check failed".into());
            }
            blob.strip_prefix(b"SEALED:")
                .map(|b| KeyMaterial::new(b.to_vec()))
                .ok_or_else(|| "not a sealed blob".into())
        }
    }

    fn open(dir: &Path, locked: bool) -> (Vault, Vec<UnsealFailure>) {
        Vault::open(dir, Box::new(TagSealer { locked })).unwrap()
    }

    fn k(b: u8) -> KeyMaterial {
        KeyMaterial::new(vec![b; 32])
    }

    fn current(v: &Vault, t: &str, id: &str) -> (u32, Vec<u8>) {
        v.with_current(t, id, |ver, m| (ver, m.expose().to_vec()))
            .unwrap()
    }

    #[test]
    fn versions_rotate_retire_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (v, _) = open(dir.path(), false);
        assert!(matches!(
            v.put("acme", "ew", KeyKind::EastWest, 2, k(1), 0),
            Err(VaultError::FirstVersion(2))
        ));
        v.put("acme", "ew", KeyKind::EastWest, 1, k(1), 0).unwrap();
        assert!(matches!(
            v.put("acme", "ew", KeyKind::EastWest, 3, k(3), 0),
            Err(VaultError::Version { .. })
        ));
        assert!(matches!(
            v.put("acme", "ew", KeyKind::Secret, 2, k(2), 0),
            Err(VaultError::KindMismatch { .. })
        ));
        v.put("acme", "ew", KeyKind::EastWest, 2, k(2), 0).unwrap();
        assert_eq!(current(&v, "acme", "ew"), (2, vec![2; 32]));
        let states: Vec<_> = v.list(Some("acme"))[0]
            .versions
            .iter()
            .map(|x| x.state)
            .collect();
        assert_eq!(states, [VersionState::Previous, VersionState::Current]);
        assert!(matches!(
            v.retire("acme", "ew", 2),
            Err(VaultError::Retire { .. })
        ));
        // The previous version stays usable until it is retired.
        let old = v.with_version("acme", "ew", Some(1), |n, m| (n, m.expose().to_vec()));
        assert_eq!(old.unwrap(), (1, vec![1; 32]));
        v.retire("acme", "ew", 1).unwrap();
        assert!(!dir.path().join("keys/acme/ew/v1.sealed").exists());
        assert!(matches!(
            v.with_version("acme", "ew", Some(1), |_, _| ()),
            Err(VaultError::NotFound(_))
        ));
        assert!(v.with_version("acme", "ew", Some(9), |_, _| ()).is_err());
        assert!(matches!(
            v.retire("acme", "ew", 1),
            Err(VaultError::Retire { .. })
        ));
        drop(v);
        let (v, failed) = open(dir.path(), false);
        assert!(failed.is_empty());
        assert_eq!(current(&v, "acme", "ew"), (2, vec![2; 32]));
        // No key bytes on disk in the clear besides what the sealer produced.
        let meta = std::fs::read_to_string(dir.path().join("keys/acme/ew/meta.json")).unwrap();
        assert!(!meta.contains("SEALED"));
    }

    #[test]
    fn deletion_is_final_and_tenants_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (v, _) = open(dir.path(), false);
        v.put("acme", "model", KeyKind::Secret, 1, k(5), 0).unwrap();
        v.put("globex", "model", KeyKind::Secret, 1, k(6), 0)
            .unwrap();
        assert_eq!(v.list(Some("acme")).len(), 1);
        assert_eq!(v.list(Some("acme"))[0].tenant, "acme");
        assert_eq!(v.list(None).len(), 2);
        assert_eq!(current(&v, "globex", "model").1, vec![6; 32]);
        v.delete("acme", "model").unwrap();
        assert!(matches!(
            v.delete("acme", "model"),
            Err(VaultError::NotFound(_))
        ));
        assert!(v.with_current("acme", "model", |_, _| ()).is_err());
        drop(v);
        let (v, _) = open(dir.path(), false);
        assert!(v.list(Some("acme")).is_empty());
        assert_eq!(current(&v, "globex", "model").1, vec![6; 32]);
    }

    #[test]
    fn disabled_keys_are_not_used_or_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let (v, _) = open(dir.path(), false);
        v.put("acme", "ew", KeyKind::EastWest, 1, k(1), 0).unwrap();
        v.set_disabled("acme", "ew", true).unwrap();
        assert!(matches!(
            v.with_current("acme", "ew", |_, _| ()),
            Err(VaultError::Disabled(_))
        ));
        assert!(matches!(
            v.put("acme", "ew", KeyKind::EastWest, 2, k(2), 0),
            Err(VaultError::Disabled(_))
        ));
        drop(v);
        let (v, _) = open(dir.path(), false);
        assert!(v.list(Some("acme"))[0].disabled);
        v.set_disabled("acme", "ew", false).unwrap();
        assert!(v.with_current("acme", "ew", |_, _| ()).is_ok());
    }

    #[test]
    fn keys_that_do_not_unseal_are_listed_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let (v, _) = open(dir.path(), false);
        v.put("acme", "ew", KeyKind::EastWest, 1, k(1), 0).unwrap();
        drop(v);
        let (v, failed) = open(dir.path(), true);
        assert_eq!(failed.len(), 1);
        assert_eq!(
            (
                failed[0].tenant.as_str(),
                failed[0].key_id.as_str(),
                failed[0].version
            ),
            ("acme", "ew", 1)
        );
        assert!(!v.list(Some("acme"))[0].versions[0].available);
        assert!(matches!(
            v.with_current("acme", "ew", |_, _| ()),
            Err(VaultError::Seal(_))
        ));
    }

    #[test]
    fn challenges_are_single_use_per_tenant_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (v, _) = open(dir.path(), false);
        let c = v.challenge("acme", 100).unwrap();
        // Another tenant cannot use it, and the attempt uses it up.
        assert!(v.take_challenge("globex", &c.nonce, 101).is_none());
        assert!(v.take_challenge("acme", &c.nonce, 101).is_none());
        let c = v.challenge("acme", 100).unwrap();
        let r = v.take_challenge("acme", &c.nonce, 101).unwrap();
        assert_eq!(r.public(), c.recipient);
        assert!(v.take_challenge("acme", &c.nonce, 101).is_none());
        let c = v.challenge("acme", 100).unwrap();
        assert!(v
            .take_challenge("acme", &c.nonce, 100 + CHALLENGE_TTL_SECS)
            .is_none());
        for _ in 0..MAX_CHALLENGES_PER_TENANT {
            v.challenge("acme", 200).unwrap();
        }
        assert!(matches!(v.challenge("acme", 200), Err(VaultError::Busy)));
        assert!(v.challenge("globex", 200).is_ok());
    }
}
