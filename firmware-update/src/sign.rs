//! The release tool's core: generate signing keys, build role metadata, sign it, and lay out a
//! repository directory that `wardctl update publish` sends to an appliance.
//!
//! Repository layout: `1.root.json`, `2.root.json`, … (every root version, for rotation),
//! `timestamp.json`, `snapshot.json`, `targets.json`, and `targets/<name>` (the images).
//!
//! A key directory holds one PKCS#8 file per key (mode 0600) and `roles.json`, which says which
//! keys sign each role and the threshold.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde::{Deserialize, Serialize};

use crate::client::{root_file, SNAPSHOT_FILE, TARGETS_FILE, TIMESTAMP_FILE};
use crate::envelope::{signed_message, Envelope, Signature};
use crate::keys::{KeyAlg, KeySpec};
use crate::metadata::{
    MetaRef, RawRoot, RawSnapshot, RawTargets, RawTimestamp, Role, RoleKeys, Target, SPEC_VERSION,
};
use crate::time::format_rfc3339;

/// Errors of the release tool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key {name}: {reason}")]
    Key { name: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SignError + '_ {
    move |source| SignError::Io {
        path: path.to_owned(),
        source,
    }
}

enum Pair {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

/// A private signing key. Its `Debug` shows the key id only.
pub struct Signer {
    name: String,
    pair: Pair,
    spec: KeySpec,
    chain: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .field("keyid", &self.keyid())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A new key; returns it and its PKCS#8 document (to be stored, mode 0600).
    pub fn generate(name: &str, alg: KeyAlg) -> Result<(Signer, Vec<u8>), SignError> {
        let rng = SystemRandom::new();
        let err = |e: ring::error::Unspecified| SignError::Key {
            name: name.to_owned(),
            reason: e.to_string(),
        };
        let pkcs8 = match alg {
            KeyAlg::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng).map_err(err)?,
            KeyAlg::EcdsaP256Sha256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).map_err(err)?
            }
        };
        let der = pkcs8.as_ref().to_vec();
        Ok((Signer::from_pkcs8(name, alg, &der)?, der))
    }

    pub fn from_pkcs8(name: &str, alg: KeyAlg, der: &[u8]) -> Result<Signer, SignError> {
        let fail = |reason: String| SignError::Key {
            name: name.to_owned(),
            reason,
        };
        let pair = match alg {
            KeyAlg::Ed25519 => Pair::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| fail(format!("not an Ed25519 PKCS#8 key: {e}")))?,
            ),
            KeyAlg::EcdsaP256Sha256 => Pair::P256(
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_ASN1_SIGNING,
                    der,
                    &SystemRandom::new(),
                )
                .map_err(|e| fail(format!("not a P-256 PKCS#8 key: {e}")))?,
            ),
        };
        let public = match &pair {
            Pair::Ed25519(k) => k.public_key().as_ref().to_vec(),
            Pair::P256(k) => k.public_key().as_ref().to_vec(),
        };
        Ok(Signer {
            name: name.to_owned(),
            pair,
            spec: KeySpec::Bare { alg, public },
            chain: Vec::new(),
        })
    }

    /// Sign as an X.509 identity instead of a bare key: the root lists `spec` (a pinned CA and
    /// subject), and each signature carries `chain` (leaf first).
    pub fn with_certificate(mut self, spec: KeySpec, chain: Vec<Vec<u8>>) -> Signer {
        self.spec = spec;
        self.chain = chain;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn spec(&self) -> &KeySpec {
        &self.spec
    }
    pub fn keyid(&self) -> String {
        self.spec.keyid()
    }

    /// The raw public key (for certificates).
    pub fn public_key(&self) -> Vec<u8> {
        match &self.pair {
            Pair::Ed25519(k) => k.public_key().as_ref().to_vec(),
            Pair::P256(k) => k.public_key().as_ref().to_vec(),
        }
    }

    pub fn sign(&self, payload: &[u8]) -> Result<Signature, SignError> {
        let msg = signed_message(payload);
        let sig = match &self.pair {
            Pair::Ed25519(k) => k.sign(&msg).as_ref().to_vec(),
            Pair::P256(k) => k
                .sign(&SystemRandom::new(), &msg)
                .map_err(|e| SignError::Key {
                    name: self.name.clone(),
                    reason: e.to_string(),
                })?
                .as_ref()
                .to_vec(),
        };
        Ok(Signature {
            keyid: self.keyid(),
            sig,
            chain: self.chain.clone(),
        })
    }
}

/// Sign `payload` with every signer, in order.
pub fn sign_envelope(payload: &[u8], signers: &[&Signer]) -> Result<Vec<u8>, SignError> {
    let signatures = signers
        .iter()
        .map(|s| s.sign(payload))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Envelope {
        payload: payload.to_vec(),
        signatures,
    }
    .to_bytes())
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

fn meta_ref(version: u64, bytes: &[u8]) -> MetaRef {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(d.as_ref().get(..32).unwrap_or(&[0u8; 32]));
    MetaRef {
        version,
        length: bytes.len() as u64,
        sha256,
    }
}

/// Root payload listing `roles` (role → signers' key specs and threshold).
pub fn root_payload(version: u64, expires: i64, roles: &[(Role, Vec<KeySpec>, u32)]) -> Vec<u8> {
    let mut keys = BTreeMap::new();
    let mut role_map = BTreeMap::new();
    for (role, specs, threshold) in roles {
        let keyids = specs.iter().map(|s| s.keyid()).collect();
        for s in specs {
            keys.insert(s.keyid(), s.to_raw());
        }
        role_map.insert(
            *role,
            RoleKeys {
                keyids,
                threshold: *threshold,
            },
        );
    }
    to_json(&RawRoot {
        type_: Role::Root,
        spec_version: SPEC_VERSION.into(),
        version,
        expires: format_rfc3339(expires),
        keys,
        roles: role_map,
    })
}

pub fn targets_payload(version: u64, expires: i64, targets: BTreeMap<String, Target>) -> Vec<u8> {
    to_json(&RawTargets {
        type_: Role::Targets,
        spec_version: SPEC_VERSION.into(),
        version,
        expires: format_rfc3339(expires),
        targets,
    })
}

pub fn snapshot_payload(
    version: u64,
    expires: i64,
    targets_version: u64,
    targets_file: &[u8],
) -> Vec<u8> {
    to_json(&RawSnapshot {
        type_: Role::Snapshot,
        spec_version: SPEC_VERSION.into(),
        version,
        expires: format_rfc3339(expires),
        targets: meta_ref(targets_version, targets_file),
    })
}

pub fn timestamp_payload(
    version: u64,
    expires: i64,
    snapshot_version: u64,
    snapshot_file: &[u8],
) -> Vec<u8> {
    to_json(&RawTimestamp {
        type_: Role::Timestamp,
        spec_version: SPEC_VERSION.into(),
        version,
        expires: format_rfc3339(expires),
        snapshot: meta_ref(snapshot_version, snapshot_file),
    })
}

/// The target entry for an image.
pub fn target_for(
    image: &[u8],
    hardware_id: &str,
    component: &str,
    svn: u64,
    release: &str,
) -> Target {
    let m = meta_ref(0, image);
    Target {
        length: m.length,
        sha256: m.sha256,
        hardware_id: hardware_id.into(),
        component: component.into(),
        svn,
        release: release.into(),
    }
}

/// The signers of one role and its threshold.
#[derive(Debug)]
pub struct RoleSigners {
    pub signers: Vec<Signer>,
    pub threshold: u32,
}

impl RoleSigners {
    fn refs(&self) -> Vec<&Signer> {
        self.signers.iter().collect()
    }
    fn specs(&self) -> Vec<KeySpec> {
        self.signers.iter().map(|s| s.spec().clone()).collect()
    }
}

/// Every role's signers.
#[derive(Debug)]
pub struct KeySet {
    pub root: RoleSigners,
    pub timestamp: RoleSigners,
    pub snapshot: RoleSigners,
    pub targets: RoleSigners,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesFile {
    algorithm: String,
    roles: BTreeMap<Role, RoleFileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFileEntry {
    threshold: u32,
    keys: Vec<String>,
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SignError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Write `bytes` to `path` durably and atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SignError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl KeySet {
    /// New keys: `counts[role] = (keys, threshold)`.
    pub fn generate(
        alg: KeyAlg,
        counts: &[(Role, usize, u32)],
        dir: &Path,
    ) -> Result<KeySet, SignError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut roles = BTreeMap::new();
        let mut sets: BTreeMap<Role, RoleSigners> = BTreeMap::new();
        for (role, n, threshold) in counts {
            if *n == 0 || *threshold == 0 || *threshold as usize > *n || *n > 16 {
                return Err(SignError::Invalid(format!(
                    "role {}: {threshold} of {n} keys is not a valid threshold (1 ≤ k ≤ n ≤ 16)",
                    role.name()
                )));
            }
            let mut names = Vec::new();
            let mut signers = Vec::new();
            for i in 1..=*n {
                let name = format!("{}-{i}", role.name());
                let (signer, der) = Signer::generate(&name, alg)?;
                write_private(&dir.join(format!("{name}.p8")), &der)?;
                names.push(name);
                signers.push(signer);
            }
            roles.insert(
                *role,
                RoleFileEntry {
                    threshold: *threshold,
                    keys: names,
                },
            );
            sets.insert(
                *role,
                RoleSigners {
                    signers,
                    threshold: *threshold,
                },
            );
        }
        let file = RolesFile {
            algorithm: alg.name().into(),
            roles,
        };
        write_atomic(&dir.join("roles.json"), &to_json(&file))?;
        Self::from_map(sets)
    }

    fn from_map(mut sets: BTreeMap<Role, RoleSigners>) -> Result<KeySet, SignError> {
        let mut take = |role: Role| {
            sets.remove(&role)
                .ok_or_else(|| SignError::Invalid(format!("no keys for role {}", role.name())))
        };
        Ok(KeySet {
            root: take(Role::Root)?,
            timestamp: take(Role::Timestamp)?,
            snapshot: take(Role::Snapshot)?,
            targets: take(Role::Targets)?,
        })
    }

    /// Load a key directory written by [`KeySet::generate`].
    pub fn load(dir: &Path) -> Result<KeySet, SignError> {
        let path = dir.join("roles.json");
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let file: RolesFile = serde_json::from_slice(&bytes)
            .map_err(|e| SignError::Invalid(format!("{}: {e}", path.display())))?;
        let alg = match file.algorithm.as_str() {
            "ed25519" => KeyAlg::Ed25519,
            "ecdsa-p256" => KeyAlg::EcdsaP256Sha256,
            other => return Err(SignError::Invalid(format!("unknown algorithm {other:?}"))),
        };
        let mut sets = BTreeMap::new();
        for (role, entry) in file.roles {
            let mut signers = Vec::new();
            for name in &entry.keys {
                if !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(SignError::Invalid(format!("bad key name {name:?}")));
                }
                let p = dir.join(format!("{name}.p8"));
                let der = std::fs::read(&p).map_err(io(&p))?;
                signers.push(Signer::from_pkcs8(name, alg, &der)?);
            }
            sets.insert(
                role,
                RoleSigners {
                    signers,
                    threshold: entry.threshold,
                },
            );
        }
        Self::from_map(sets)
    }

    fn role_specs(&self) -> Vec<(Role, Vec<KeySpec>, u32)> {
        vec![
            (Role::Root, self.root.specs(), self.root.threshold),
            (
                Role::Timestamp,
                self.timestamp.specs(),
                self.timestamp.threshold,
            ),
            (
                Role::Snapshot,
                self.snapshot.specs(),
                self.snapshot.threshold,
            ),
            (Role::Targets, self.targets.specs(), self.targets.threshold),
        ]
    }

    /// A signed root of `version` for these keys. `previous` are the old root's signers when
    /// rotating: the new root must carry a threshold of both (TUF §5.3.4).
    pub fn signed_root(
        &self,
        version: u64,
        expires: i64,
        previous: Option<&RoleSigners>,
    ) -> Result<Vec<u8>, SignError> {
        let payload = root_payload(version, expires, &self.role_specs());
        let mut signers = self.root.refs();
        if let Some(prev) = previous {
            for s in &prev.signers {
                if !signers.iter().any(|x| x.keyid() == s.keyid()) {
                    signers.push(s);
                }
            }
        }
        sign_envelope(&payload, &signers)
    }
}

/// The repository's current versions, read back from its files (0 when absent).
fn current_version(dir: &Path, file: &str) -> Result<u64, SignError> {
    let path = dir.join(file);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(&path)(e)),
    };
    let env =
        Envelope::parse(file, &bytes, u64::MAX).map_err(|e| SignError::Invalid(e.to_string()))?;
    #[derive(Deserialize)]
    struct V {
        version: u64,
    }
    serde_json::from_slice::<V>(&env.payload)
        .map(|v| v.version)
        .map_err(|e| SignError::Invalid(format!("{}: {e}", path.display())))
}

/// Highest `N.root.json` in `dir`.
pub fn latest_root_version(dir: &Path) -> Result<u64, SignError> {
    let mut n = 0;
    while dir.join(root_file(n + 1)).exists() {
        n += 1;
    }
    Ok(n)
}

/// Start a repository: writes `1.root.json`.
pub fn init_repository(dir: &Path, keys: &KeySet, expires: i64) -> Result<PathBuf, SignError> {
    std::fs::create_dir_all(dir.join("targets")).map_err(io(dir))?;
    if latest_root_version(dir)? > 0 {
        return Err(SignError::Invalid(format!(
            "{} already holds a repository",
            dir.display()
        )));
    }
    let path = dir.join(root_file(1));
    write_atomic(&path, &keys.signed_root(1, expires, None)?)?;
    Ok(path)
}

/// Add an image as a target and publish new targets, snapshot and timestamp metadata
/// (each one version up). Returns the target entry.
pub struct NewTarget<'a> {
    pub name: &'a str,
    pub image: &'a Path,
    pub hardware_id: &'a str,
    pub component: &'a str,
    pub svn: u64,
    pub release: &'a str,
}

pub fn add_target(
    dir: &Path,
    keys: &KeySet,
    new: &NewTarget<'_>,
    expires: i64,
    timestamp_expires: i64,
) -> Result<Target, SignError> {
    crate::metadata::check_target_name(new.name).map_err(|e| SignError::Invalid(e.to_string()))?;
    let image = std::fs::read(new.image).map_err(io(new.image))?;
    let target = target_for(&image, new.hardware_id, new.component, new.svn, new.release);
    // Keep the existing targets.
    let mut targets: BTreeMap<String, Target> = BTreeMap::new();
    let tpath = dir.join(TARGETS_FILE);
    if tpath.exists() {
        let bytes = std::fs::read(&tpath).map_err(io(&tpath))?;
        let env = Envelope::parse(TARGETS_FILE, &bytes, u64::MAX)
            .map_err(|e| SignError::Invalid(e.to_string()))?;
        let raw: RawTargets =
            serde_json::from_slice(&env.payload).map_err(|e| SignError::Invalid(e.to_string()))?;
        targets = raw.targets;
    }
    targets.insert(new.name.to_owned(), target.clone());
    let img_path = dir.join("targets").join(new.name);
    if let Some(parent) = img_path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    write_atomic(&img_path, &image)?;
    publish(dir, keys, targets, expires, timestamp_expires)?;
    Ok(target)
}

/// Sign and write targets, snapshot and timestamp, each one version above the current.
pub fn publish(
    dir: &Path,
    keys: &KeySet,
    targets: BTreeMap<String, Target>,
    expires: i64,
    timestamp_expires: i64,
) -> Result<(), SignError> {
    let tv = current_version(dir, TARGETS_FILE)? + 1;
    let sv = current_version(dir, SNAPSHOT_FILE)? + 1;
    let ts = current_version(dir, TIMESTAMP_FILE)? + 1;
    let targets_file = sign_envelope(&targets_payload(tv, expires, targets), &keys.targets.refs())?;
    let snapshot_file = sign_envelope(
        &snapshot_payload(sv, expires, tv, &targets_file),
        &keys.snapshot.refs(),
    )?;
    let timestamp_file = sign_envelope(
        &timestamp_payload(ts, timestamp_expires, sv, &snapshot_file),
        &keys.timestamp.refs(),
    )?;
    // Targets first, timestamp last: a reader in between sees the old timestamp, whose
    // snapshot digest no longer matches, and retries later (no mixed release is ever accepted).
    write_atomic(&dir.join(TARGETS_FILE), &targets_file)?;
    write_atomic(&dir.join(SNAPSHOT_FILE), &snapshot_file)?;
    write_atomic(&dir.join(TIMESTAMP_FILE), &timestamp_file)
}

/// Re-sign only the timestamp (to keep a repository fresh without a release).
pub fn refresh_timestamp(
    dir: &Path,
    keys: &KeySet,
    timestamp_expires: i64,
) -> Result<(), SignError> {
    let spath = dir.join(SNAPSHOT_FILE);
    let snapshot_file = std::fs::read(&spath).map_err(io(&spath))?;
    let sv = current_version(dir, SNAPSHOT_FILE)?;
    let ts = current_version(dir, TIMESTAMP_FILE)? + 1;
    let timestamp_file = sign_envelope(
        &timestamp_payload(ts, timestamp_expires, sv, &snapshot_file),
        &keys.timestamp.refs(),
    )?;
    write_atomic(&dir.join(TIMESTAMP_FILE), &timestamp_file)
}

/// Write the next root version for `new` keys, signed by `new` and by `old`'s root keys.
pub fn rotate_root(
    dir: &Path,
    old: &KeySet,
    new: &KeySet,
    expires: i64,
) -> Result<PathBuf, SignError> {
    let next = latest_root_version(dir)? + 1;
    let path = dir.join(root_file(next));
    write_atomic(&path, &new.signed_root(next, expires, Some(&old.root))?)?;
    Ok(path)
}
