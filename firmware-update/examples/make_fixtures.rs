//! Writes the attack fixtures under `tests/data/` (one folder per attack), each with:
//! `trusted.json` (the appliance's trusted state), `repo/` (what the repository serves),
//! `request.json` (component, hardware id, floor, time) and `expect` (the refusal reason, or
//! `ok`). `tests/attacks.rs` runs every folder through the real client.
//!
//! Regenerate: `cargo run -p warden-firmware-update --example make_fixtures -- firmware-update/tests/data`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::type_complexity
)]

use std::collections::BTreeMap;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519,
};
use warden_firmware_update::client::{root_file, TrustedState};
use warden_firmware_update::envelope::Envelope;
use warden_firmware_update::keys::{KeyAlg, KeySpec};
use warden_firmware_update::metadata::{Role, Target};
use warden_firmware_update::sign::{
    root_payload, sign_envelope, snapshot_payload, target_for, targets_payload, timestamp_payload,
    Signer,
};
use warden_firmware_update::x509::PinnedCa;

const VALID: i64 = 4_070_908_800; // 2099-01-01
const EXPIRED: i64 = 1_735_689_600; // 2025-01-01
const HW: &str = "bf3-dpu-rev1";
const IMAGE: &[u8] = b"WARDEN-FIRMWARE 2.0.0\nthis stands in for a flash image\n";

fn signer(name: &str) -> Signer {
    Signer::generate(name, KeyAlg::Ed25519).unwrap().0
}

/// Keys for one repository: one per role, plus spares.
struct Keys {
    root: Vec<Signer>,
    timestamp: Signer,
    snapshot: Signer,
    targets: Vec<Signer>,
    root_threshold: u32,
    targets_threshold: u32,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            root: vec![signer("root-1")],
            timestamp: signer("timestamp-1"),
            snapshot: signer("snapshot-1"),
            targets: vec![signer("targets-1")],
            root_threshold: 1,
            targets_threshold: 1,
        }
    }

    fn root_payload(&self, version: u64, expires: i64) -> Vec<u8> {
        root_payload(
            version,
            expires,
            &[
                (
                    Role::Root,
                    self.root.iter().map(|s| s.spec().clone()).collect(),
                    self.root_threshold,
                ),
                (Role::Timestamp, vec![self.timestamp.spec().clone()], 1),
                (Role::Snapshot, vec![self.snapshot.spec().clone()], 1),
                (
                    Role::Targets,
                    self.targets.iter().map(|s| s.spec().clone()).collect(),
                    self.targets_threshold,
                ),
            ],
        )
    }

    fn root(&self, version: u64) -> Vec<u8> {
        let refs: Vec<&Signer> = self.root.iter().collect();
        sign_envelope(&self.root_payload(version, VALID), &refs).unwrap()
    }
}

/// A release's files, each step overridable.
struct Release {
    targets: BTreeMap<String, Target>,
    targets_expires: i64,
    timestamp_expires: i64,
    versions: (u64, u64, u64), // targets, snapshot, timestamp
}

impl Release {
    fn new() -> Release {
        let mut targets = BTreeMap::new();
        targets.insert(
            "fw-2.0.0.img".to_owned(),
            target_for(IMAGE, HW, "firmware", 2, "2.0.0"),
        );
        Release {
            targets,
            targets_expires: VALID,
            timestamp_expires: VALID,
            versions: (1, 1, 1),
        }
    }
}

struct Files {
    targets: Vec<u8>,
    snapshot: Vec<u8>,
    timestamp: Vec<u8>,
}

fn sign_release(keys: &Keys, r: &Release) -> Files {
    let (tv, sv, ts) = r.versions;
    let t_refs: Vec<&Signer> = keys.targets.iter().collect();
    let targets = sign_envelope(
        &targets_payload(tv, r.targets_expires, r.targets.clone()),
        &t_refs,
    )
    .unwrap();
    let snapshot = sign_envelope(
        &snapshot_payload(sv, VALID, tv, &targets),
        &[&keys.snapshot],
    )
    .unwrap();
    let timestamp = sign_envelope(
        &timestamp_payload(ts, r.timestamp_expires, sv, &snapshot),
        &[&keys.timestamp],
    )
    .unwrap();
    Files {
        targets,
        snapshot,
        timestamp,
    }
}

/// Re-sign snapshot and timestamp over an edited targets.json, so only the edit is wrong.
fn relist(files: &mut Files, keys: &Keys) {
    files.snapshot = sign_envelope(
        &snapshot_payload(1, VALID, 1, &files.targets),
        &[&keys.snapshot],
    )
    .unwrap();
    files.timestamp = sign_envelope(
        &timestamp_payload(1, VALID, 1, &files.snapshot),
        &[&keys.timestamp],
    )
    .unwrap();
}

struct Fixture<'a> {
    out: &'a Path,
}

impl Fixture<'_> {
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        name: &str,
        expect: &str,
        about: &str,
        trusted: &TrustedState,
        roots: &[(u64, Vec<u8>)],
        files: &Files,
        images: &[(&str, &[u8])],
        floor: u64,
    ) {
        let dir = self.out.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("repo/targets")).unwrap();
        std::fs::write(dir.join("trusted.json"), trusted.to_json()).unwrap();
        for (v, bytes) in roots {
            std::fs::write(dir.join("repo").join(root_file(*v)), bytes).unwrap();
        }
        std::fs::write(dir.join("repo/targets.json"), &files.targets).unwrap();
        std::fs::write(dir.join("repo/snapshot.json"), &files.snapshot).unwrap();
        std::fs::write(dir.join("repo/timestamp.json"), &files.timestamp).unwrap();
        for (n, bytes) in images {
            std::fs::write(dir.join("repo/targets").join(n), bytes).unwrap();
        }
        let request = serde_json::json!({
            "component": "firmware",
            "hardware_id": HW,
            "floor": floor,
            "now": "2030-01-01T00:00:00Z",
        });
        std::fs::write(
            dir.join("request.json"),
            serde_json::to_vec_pretty(&request).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join("expect"), format!("{expect}\n")).unwrap();
        std::fs::write(dir.join("README"), format!("{about}\n")).unwrap();
        println!("{name:<28} {expect}");
    }
}

impl Fixture<'_> {
    /// The common case: root v1 only, the standard image, floor 1.
    fn simple(&self, name: &str, expect: &str, about: &str, root: &[u8], files: &Files) {
        let img: &[(&str, &[u8])] = &[("fw-2.0.0.img", IMAGE)];
        self.write(
            name,
            expect,
            about,
            &trusted(root),
            &[(1, root.to_vec())],
            files,
            img,
            1,
        );
    }
}

fn trusted(root: &[u8]) -> TrustedState {
    TrustedState::bootstrap(root.to_vec(), 0).unwrap()
}

/// Re-sign a payload edited by `f` with the given signers.
fn edit_envelope(
    bytes: &[u8],
    signers: &[&Signer],
    f: impl FnOnce(&mut serde_json::Value),
) -> Vec<u8> {
    let env = Envelope::parse("x", bytes, u64::MAX).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&env.payload).unwrap();
    f(&mut v);
    sign_envelope(&serde_json::to_vec_pretty(&v).unwrap(), signers).unwrap()
}

/// A CA, and a leaf for `cn` signed by it, for an X.509 targets signer.
struct Pki {
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca_der: Vec<u8>,
}

fn pki(cn: &str) -> Pki {
    let ca_key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let ca_der = p.self_signed(&ca_key).unwrap().der().to_vec();
    Pki {
        ca_params: p,
        ca_key,
        ca_der,
    }
}

/// An X.509 signer: its leaf certificate for `cn`, issued by `issuer`, listed in root as
/// (`anchor`, `cn`).
fn x509_signer(
    anchor: &Pki,
    issuer: &Pki,
    cn: &str,
    not_after: (i32, u8, u8),
    eku: bool,
) -> Signer {
    let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if eku {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    }
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let iss = Issuer::from_params(&issuer.ca_params, &issuer.ca_key);
    let leaf = p.signed_by(&key, &iss).unwrap().der().to_vec();
    let spec = KeySpec::X509 {
        ca: PinnedCa::from_der(&anchor.ca_der).unwrap(),
        subject: cn.to_owned(),
    };
    Signer::from_pkcs8(cn, KeyAlg::Ed25519, &key.serialize_der())
        .unwrap()
        .with_certificate(spec, vec![leaf])
}

fn main() {
    let out = std::env::args().nth(1).expect("usage: make_fixtures <dir>");
    let out = Path::new(&out);
    std::fs::create_dir_all(out).unwrap();
    let fx = Fixture { out };
    let img: &[(&str, &[u8])] = &[("fw-2.0.0.img", IMAGE)];

    // valid: everything in order.
    let keys = Keys::new();
    let root1 = keys.root(1);
    let files = sign_release(&keys, &Release::new());
    fx.simple(
        "valid",
        "ok",
        "A correct release: must be accepted (the control for every attack).",
        &root1,
        &files,
    );

    // expired-metadata: targets expired.
    let mut r = Release::new();
    r.targets_expires = EXPIRED;
    fx.simple(
        "expired-metadata",
        "expired",
        "targets.json expired in 2025; the time is 2030.",
        &root1,
        &sign_release(&keys, &r),
    );

    // freeze: the mirror keeps serving an old timestamp that has expired.
    let mut r = Release::new();
    r.timestamp_expires = EXPIRED;
    fx.simple(
        "freeze-old-timestamp",
        "expired",
        "A frozen mirror serves a timestamp that expired in 2025.",
        &root1,
        &sign_release(&keys, &r),
    );

    // rollback-timestamp: the appliance trusts timestamp v5, the repository serves v4.
    let mut newer = Release::new();
    newer.versions = (1, 1, 5);
    let newer_files = sign_release(&keys, &newer);
    let mut t = trusted(&root1);
    t.timestamp = Some(newer_files.timestamp.clone());
    let mut older = Release::new();
    older.versions = (1, 1, 4);
    fx.write(
        "rollback-timestamp",
        "rollback",
        "Trusted timestamp is v5; the repository serves v4.",
        &t,
        &[(1, root1.clone())],
        &sign_release(&keys, &older),
        img,
        1,
    );

    // duplicate-signature: threshold 2 for targets, one key signs twice.
    let mut k2 = Keys::new();
    k2.targets.push(signer("targets-2"));
    k2.targets_threshold = 2;
    let root_k2 = k2.root(1);
    let mut files = sign_release(&k2, &Release::new());
    {
        let mut env = Envelope::parse("t", &files.targets, u64::MAX).unwrap();
        env.signatures.truncate(1);
        let dup = env.signatures[0].clone();
        env.signatures.push(dup);
        files.targets = env.to_bytes();
        // The snapshot must list the tampered file, so only the duplicate is wrong.
        relist(&mut files, &k2);
    }
    fx.simple(
        "duplicate-signature",
        "duplicate-signature",
        "Targets needs 2 of 2 keys; one key's signature appears twice.",
        &root_k2,
        &files,
    );

    // below-threshold: 2 of 2 required, only one signs (the other signature is by a stranger).
    let mut files = sign_release(&k2, &Release::new());
    {
        let stranger = signer("stranger");
        let env = Envelope::parse("t", &files.targets, u64::MAX).unwrap();
        let mut sigs = vec![env.signatures[0].clone()];
        sigs.push(stranger.sign(&env.payload).unwrap());
        files.targets = Envelope {
            payload: env.payload,
            signatures: sigs,
        }
        .to_bytes();
        relist(&mut files, &k2);
    }
    fx.simple(
        "below-threshold",
        "threshold",
        "Targets needs 2 of 2 keys; one valid signature and one by an unknown key.",
        &root_k2,
        &files,
    );

    // wrong-hardware.
    let mut r = Release::new();
    r.targets.insert(
        "fw-2.0.0.img".into(),
        target_for(IMAGE, "other-board", "firmware", 2, "2.0.0"),
    );
    fx.simple(
        "wrong-hardware",
        "wrong-hardware",
        "The only target is for hardware other-board.",
        &root1,
        &sign_release(&keys, &r),
    );

    // below-floor: the TPM floor is 5, the release has SVN 2.
    fx.write(
        "rollback-below-floor",
        "below-floor",
        "The TPM security floor is 5; the release's SVN is 2.",
        &trusted(&root1),
        &[(1, root1.clone())],
        &sign_release(&keys, &Release::new()),
        img,
        5,
    );

    // mix-and-match: the timestamp of one release with the snapshot of another.
    let mut a = Release::new();
    a.versions = (2, 2, 2);
    let files_a = sign_release(&keys, &a);
    let files_b = sign_release(&keys, &Release::new());
    let mixed = Files {
        targets: files_b.targets.clone(),
        snapshot: files_b.snapshot.clone(),
        timestamp: files_a.timestamp.clone(),
    };
    fx.simple(
        "mix-and-match-snapshot",
        "mix-and-match",
        "timestamp.json of release 2 with snapshot.json and targets.json of release 1.",
        &root1,
        &mixed,
    );

    // oversized: a timestamp over the 16 KiB limit (padding in an unknown field is never parsed).
    let mut files = sign_release(&keys, &Release::new());
    let mut big = files.timestamp.clone();
    big.truncate(big.len() - 2);
    big.extend_from_slice(format!(",\"pad\":\"{}\"}}\n", "A".repeat(20_000)).as_bytes());
    files.timestamp = big;
    fx.simple(
        "oversized-timestamp",
        "too-large",
        "timestamp.json is over 16 KiB: refused before parsing.",
        &root1,
        &files,
    );

    // endless: targets.json longer than the snapshot lists (the reader stops at the limit).
    let mut files = sign_release(&keys, &Release::new());
    files.targets.extend(std::iter::repeat_n(b' ', 100_000));
    fx.simple(
        "endless-targets",
        "too-large",
        "targets.json keeps going past the length snapshot.json lists.",
        &root1,
        &files,
    );

    // tampered image.
    let mut bad = IMAGE.to_vec();
    bad[0] ^= 1;
    fx.write(
        "tampered-image",
        "tampered-image",
        "The image's bytes differ from the signed SHA-256.",
        &trusted(&root1),
        &[(1, root1.clone())],
        &sign_release(&keys, &Release::new()),
        &[("fw-2.0.0.img", &bad)],
        1,
    );

    // path traversal in a target name.
    let mut r = Release::new();
    r.targets.insert(
        "../../etc/passwd".into(),
        target_for(IMAGE, HW, "firmware", 3, "3.0.0"),
    );
    fx.simple(
        "path-traversal",
        "unsafe-target-name",
        "A target named ../../etc/passwd.",
        &root1,
        &sign_release(&keys, &r),
    );

    // X.509 signers for targets.
    let vendor = pki("Vendor Release CA");
    let other = pki("Someone Else CA");
    let x509_keys = |s: Signer| Keys {
        root: vec![signer("root-1")],
        timestamp: signer("timestamp-1"),
        snapshot: signer("snapshot-1"),
        targets: vec![s],
        root_threshold: 1,
        targets_threshold: 1,
    };
    // (name, expect, about, issuer, not_after, codeSigning EKU)
    let cases: [(&str, &str, &str, &Pki, (i32, u8, u8), bool); 4] = [
        (
            "valid-x509",
            "ok",
            "Targets signed by a certificate chained to the pinned vendor CA.",
            &vendor,
            (2099, 1, 1),
            true,
        ),
        (
            "untrusted-certificate",
            "untrusted-certificate",
            "The signer's certificate was issued by another CA than the pinned one.",
            &other,
            (2099, 1, 1),
            true,
        ),
        (
            "expired-certificate",
            "certificate-expired",
            "The signer's certificate expired in 2025.",
            &vendor,
            (2025, 1, 1),
            true,
        ),
        (
            "wrong-key-usage",
            "key-usage",
            "The signer's certificate lacks the codeSigning extended key usage.",
            &vendor,
            (2099, 1, 1),
            false,
        ),
    ];
    for (name, expect, about, issuer, not_after, eku) in cases {
        let kx = x509_keys(x509_signer(
            &vendor,
            issuer,
            "release-signer",
            not_after,
            eku,
        ));
        let rx = kx.root(1);
        fx.simple(
            name,
            expect,
            about,
            &rx,
            &sign_release(&kx, &Release::new()),
        );
    }

    // Root rotation: 1 → 2 (new root keys), signed by both: accepted.
    let k_new = Keys::new();
    let root2 = {
        let payload = k_new.root_payload(2, VALID);
        sign_envelope(&payload, &[&keys.root[0], &k_new.root[0]]).unwrap()
    };
    fx.write(
        "valid-root-rotation",
        "ok",
        "Root v2 with new keys, signed by the v1 and v2 root keys.",
        &trusted(&root1),
        &[(1, root1.clone()), (2, root2)],
        &sign_release(&k_new, &Release::new()),
        img,
        1,
    );

    // Root rotation signed only by the new keys: refused.
    let root2_bad = sign_envelope(&k_new.root_payload(2, VALID), &[&k_new.root[0]]).unwrap();
    fx.write(
        "root-rotation-unsigned",
        "threshold",
        "Root v2 signed only by its own new key, not by the trusted v1 root key.",
        &trusted(&root1),
        &[(1, root1.clone()), (2, root2_bad)],
        &sign_release(&k_new, &Release::new()),
        img,
        1,
    );

    // Root rotation that skips a version number: file 2.root.json says version 3.
    let root3_as_2 = sign_envelope(
        &k_new.root_payload(3, VALID),
        &[&keys.root[0], &k_new.root[0]],
    )
    .unwrap();
    fx.write(
        "root-version-skip",
        "root-rotation",
        "2.root.json holds version 3: rotation must go one version at a time.",
        &trusted(&root1),
        &[(1, root1.clone()), (2, root3_as_2)],
        &sign_release(&k_new, &Release::new()),
        img,
        1,
    );

    // Snapshot that rolls targets back: trusted snapshot lists targets v3, new lists v2.
    let mut r3 = Release::new();
    r3.versions = (3, 3, 3);
    let f3 = sign_release(&keys, &r3);
    let mut t = trusted(&root1);
    t.timestamp = Some(f3.timestamp);
    t.snapshot = Some(f3.snapshot);
    let mut r4 = Release::new();
    r4.versions = (2, 4, 4);
    fx.write(
        "rollback-targets",
        "rollback",
        "Trusted snapshot lists targets v3; the new snapshot lists targets v2.",
        &t,
        &[(1, root1.clone())],
        &sign_release(&keys, &r4),
        img,
        1,
    );

    // A payload edit after signing (a field changed, signatures kept): threshold.
    let mut files = sign_release(&keys, &Release::new());
    {
        let env = Envelope::parse("t", &files.targets, u64::MAX).unwrap();
        let edited = edit_envelope(&files.targets, &[], |v| {
            v["targets"]["fw-2.0.0.img"]["svn"] = 9.into()
        });
        let mut e2 = Envelope::parse("t", &edited, u64::MAX).unwrap();
        e2.signatures = env.signatures;
        files.targets = e2.to_bytes();
        relist(&mut files, &keys);
    }
    fx.simple(
        "edited-after-signing",
        "threshold",
        "targets.json's SVN was edited after signing; the signature no longer verifies.",
        &root1,
        &files,
    );
}
