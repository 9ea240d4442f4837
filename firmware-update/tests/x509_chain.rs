//! X.509 signer chains (`warden_firmware_update::x509`) against real certificates built with
//! rcgen: the chains a release CA would issue are accepted, and each check refuses the chain
//! that breaks it, with its named reason.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
    PKCS_RSA_SHA256,
};
use time::OffsetDateTime;
use warden_firmware_update::keys::{verify_signature, KeyAlg};
use warden_firmware_update::time::TrustedTime;
use warden_firmware_update::x509::{
    verify_chain, ChainError, LeafKey, PinnedCa, Place, MAX_CERT_BYTES, MAX_CHAIN,
};

/// The trusted time of these tests: 2027-01-15T08:00:00Z.
const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;
const SIGNER: &str = "release-signer-1";

/// A test-only RSA-2048 key (ring cannot generate RSA keys). Never use it elsewhere.
const TEST_RSA_2048: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCyqZOq0XIzo9IR
mGS2IKKTxwmp+WK0o6QiG97WiJUKFIeZ4Giq4Hdpm3lJLil9zeQxOGMO7x1Eepau
r2atlFgpSFj36Er+N+/9cZ4H9o9Wk7+dvJVf7F6erAU+rc683RP7U8AuzjqGSA+/
wK/r3kE2wrlU/HF++c6wwDHPG+wiQjHkEf2R+G4hyCJvrt+3zd7r/G34NBoaTnSF
ljv5+4ABctPN7W01PIg3lyM3QL6DBCr75Rc0wlvUAibw01bYWZAgYd+i/sDztNhD
9taBzbxLHl4cwPF0ybXfoCg21sT8IOUvECbt6RjSMmzrhmWx4XMzGkLVwB6qOWNh
iGiWSHunAgMBAAECggEALXM2PZ5Kjxh9uDwsYqiqsy1PKA5pLcrzVjoA1lKol4fh
dyO/fLjdp+AFWriDlZ1rD5pomMP7jhAhhQ7Z8A5s3xOojmhpq4JPawocSapPjJbJ
iDcRSPW4nGTmcKuGjEUxcB4+JaoQ+VgbqYw7NKW1sViYDSarOMIT8qLyCN3xlEUV
k/JXbY8Eg+IdOsOZDqQmB8QEW1W26HrZlvrDoKMhQY3DZfy11kYBuz3Nxj8RQ2Wa
zCNE5cB5Jp0GXWpKEsESE6GEZLxOWkfYcRFLaIMozSRBB/rSoCI9xQAywdh1Tjdv
mF2hdJRIjzAXhsnSptPlRvh+OHM5swwBhRJbRIOtAQKBgQDl2TYSXJVyvG7+g6Vt
9CNsuQ8LjuMoAIKdu0q+zg6P/M9CuWr30SHT/DBAY70o8TeTqZFoU/c6yaRc3HBo
nS2p2yozZE/TVcXsKCStNclzQXXy4kHMhJjnbLos8Npn5+7PrNOLuvcNNiTSmJYS
lIfITmL4XBxBgH5Hf2HT6kJyGwKBgQDG/Xh9JRKcw5aLJ/hvBwaBP4xmWizLzVzC
Xt2BqhodJs2/dNCmPF4kvCVld26WBeapOsVq7ngbCQsKiJVtDFImz/jmnvrL24EP
mHpC8WHepy9TdIqHScok0UVutlXtb+KEUGfw6Gp5IVNF8xow9Hd0blTwS6zrzr29
xVixzXPVZQKBgH6EY5kT0UeIpWf/Os4dNmqgKsHn8u2P6lW8RFZmwelL9SH7QgAK
4532EPFAdVzV+guTqPBOV6XKXGipBk7vRbVbaA1FyBLCAeIN7rJRCwQgIjaBiEp1
Kl0oogoewXm0VuWFciRV06s4BGjPiLvNejgtvZiLyxnbCqd8XHLzXYPFAoGARWzP
qdHSYZE3p8tFOO9ZjKRwRpF1iZFXqJTScVe4jq0oIYEO/sCXE/f0kCcQFRVv+WEA
2aLjkoMgMAehIo+m5dWvgD69P3yQ1bEcDtkKjVUFBPfnEPZkqV29/Ldu2U0s2X74
FKvx4dsHo6MCY0wXlS6dQc0VQpw5xMjiff4xSKUCgYAnmIxNesAOhVE5aQhIL098
I9zdQctkSt++R2AEhmbchPnv2pR09NuTO1vprxOKa2EPjfC5bKiQz7mcfFGusNbv
m9f5W7OCh5N/0qOC6NnHTHcHRrx5fVl51SKbwdGc7CywiQTrR35lc7ZzODNrBbVu
99+z9riClK8UQOrLDOjVdA==
-----END PRIVATE KEY-----";

fn at(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).unwrap()
}

fn key(alg: &'static SignatureAlgorithm) -> KeyPair {
    if alg == &PKCS_RSA_SHA256 {
        return KeyPair::from_pem(TEST_RSA_2048).unwrap();
    }
    KeyPair::generate_for(alg).unwrap()
}

fn named(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Warden Test");
    dn.push(DnType::CommonName, cn);
    dn
}

/// A CA as a release PKI would issue it: cA=true (pathLen if given), keyCertSign and cRLSign.
fn ca_params(cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = named(cn);
    p.is_ca = IsCa::Ca(path_len.map_or(
        BasicConstraints::Unconstrained,
        BasicConstraints::Constrained,
    ));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A metadata signer: not a CA, digitalSignature, id-kp-codeSigning.
fn leaf_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = named(cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    p
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

impl Ca {
    fn root(params: CertificateParams, alg: &'static SignatureAlgorithm) -> Ca {
        let key = key(alg);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Ca { params, key, der }
    }

    fn issue(&self, params: &CertificateParams, subject: &impl PublicKeyData) -> Vec<u8> {
        let issuer = Issuer::from_params(&self.params, &self.key);
        params.signed_by(subject, &issuer).unwrap().der().to_vec()
    }

    fn sub_ca(&self, params: CertificateParams, alg: &'static SignatureAlgorithm) -> Ca {
        let key = key(alg);
        let der = self.issue(&params, &key);
        Ca { params, key, der }
    }

    fn pinned(&self) -> PinnedCa {
        PinnedCa::from_der(&self.der).unwrap()
    }
}

/// Root (P-256) → intermediate (P-256), the usual release PKI.
fn pki() -> (Ca, Ca) {
    let root = Ca::root(ca_params("Warden Test Root", None), &PKCS_ECDSA_P256_SHA256);
    let int = root.sub_ca(
        ca_params("Warden Test Intermediate", None),
        &PKCS_ECDSA_P256_SHA256,
    );
    (root, int)
}

/// A P-256 leaf for `params` issued by `by`.
fn leaf(by: &Ca, params: &CertificateParams) -> Vec<u8> {
    by.issue(params, &key(&PKCS_ECDSA_P256_SHA256))
}

fn verify(chain: &[&[u8]], root: &Ca) -> Result<LeafKey, ChainError> {
    verify_at(chain, root, &TrustedTime::Known(NOW))
}

fn verify_at(chain: &[&[u8]], root: &Ca, time: &TrustedTime) -> Result<LeafKey, ChainError> {
    let chain: Vec<Vec<u8>> = chain.iter().map(|c| c.to_vec()).collect();
    verify_chain(&chain, &root.pinned(), SIGNER, time)
}

/// The chain is refused with `reason`; returns the error for closer checks.
#[track_caller]
fn refused(result: Result<LeafKey, ChainError>, reason: &str) -> ChainError {
    match result {
        Ok(key) => panic!("accepted ({key:?}); expected {reason}"),
        Err(e) => {
            assert_eq!(e.reason(), reason, "{e}");
            e
        }
    }
}

/// The key `verify_chain` returns is the leaf's: it verifies what the leaf's private key signs.
#[track_caller]
fn assert_leaf_key(got: &LeafKey, leaf_key: &KeyPair, alg: KeyAlg) {
    assert_eq!(got.alg, alg);
    assert_eq!(got.public, leaf_key.public_key_raw());
    let sig = leaf_key.sign(b"targets.json").unwrap();
    assert!(verify_signature(
        got.alg,
        &got.public,
        b"targets.json",
        &sig
    ));
    assert!(!verify_signature(
        got.alg,
        &got.public,
        b"targets.jsoN",
        &sig
    ));
}

#[test]
fn p256_and_ed25519_leaves_chain_to_the_pinned_ca() {
    let (root, int) = pki();
    for (alg, want) in [
        (&PKCS_ECDSA_P256_SHA256, KeyAlg::EcdsaP256Sha256),
        (&PKCS_ED25519, KeyAlg::Ed25519),
    ] {
        let leaf_key = key(alg);
        let via_int = int.issue(&leaf_params(SIGNER), &leaf_key);
        let got = verify(&[&via_int, &int.der], &root).unwrap();
        assert_leaf_key(&got, &leaf_key, want);

        let direct = root.issue(&leaf_params(SIGNER), &leaf_key);
        let got = verify(&[&direct], &root).unwrap();
        assert_leaf_key(&got, &leaf_key, want);
    }
}

#[test]
fn every_accepted_ca_algorithm_verifies() {
    for alg in [
        &PKCS_ECDSA_P256_SHA256,
        &PKCS_ECDSA_P384_SHA384,
        &PKCS_ED25519,
        &PKCS_RSA_SHA256,
    ] {
        let root = Ca::root(ca_params("Warden Test Root", None), alg);
        let int = root.sub_ca(ca_params("Warden Test Intermediate", None), alg);
        let leaf_key = key(&PKCS_ED25519);
        let der = int.issue(&leaf_params(SIGNER), &leaf_key);
        let got = verify(&[&der, &int.der], &root).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_leaf_key(&got, &leaf_key, KeyAlg::Ed25519);
    }
}

#[test]
fn a_chain_to_another_ca_is_untrusted() {
    let (root, int) = pki();
    let der = leaf(&int, &leaf_params(SIGNER));
    // Same name, other key: the names chain, the signature does not.
    let (impostor, _) = pki();
    let e = refused(
        verify(&[&der, &int.der], &impostor),
        "untrusted-certificate",
    );
    assert!(
        matches!(e, ChainError::BadSignature { ref cert, .. } if cert.place == Place::Chain(1)),
        "{e}"
    );
    // Another name altogether.
    let other = Ca::root(ca_params("Other Root", None), &PKCS_ECDSA_P256_SHA256);
    let e = refused(verify(&[&der, &int.der], &other), "untrusted-certificate");
    assert!(matches!(e, ChainError::IssuerMismatch { .. }), "{e}");
    // The intermediate left out.
    let e = refused(verify(&[&der], &root), "untrusted-certificate");
    assert!(matches!(e, ChainError::IssuerMismatch { .. }), "{e}");
}

#[test]
fn a_flipped_signature_byte_is_untrusted() {
    let (root, int) = pki();
    let der = leaf(&int, &leaf_params(SIGNER));
    assert!(verify(&[&der, &int.der], &root).is_ok());
    let mut bad_leaf = der.clone();
    *bad_leaf.last_mut().unwrap() ^= 0x01;
    let e = refused(
        verify(&[&bad_leaf, &int.der], &root),
        "untrusted-certificate",
    );
    assert!(
        matches!(e, ChainError::BadSignature { ref cert, .. } if cert.place == Place::Chain(0)),
        "{e}"
    );
    let mut bad_int = int.der.clone();
    *bad_int.last_mut().unwrap() ^= 0x01;
    let e = refused(verify(&[&der, &bad_int], &root), "untrusted-certificate");
    assert!(
        matches!(e, ChainError::BadSignature { ref cert, .. } if cert.place == Place::Chain(1)),
        "{e}"
    );
}

#[test]
fn a_self_signed_leaf_is_untrusted() {
    let (root, _) = pki();
    let leaf_key = key(&PKCS_ECDSA_P256_SHA256);
    let der = leaf_params(SIGNER)
        .self_signed(&leaf_key)
        .unwrap()
        .der()
        .to_vec();
    let e = refused(verify(&[&der], &root), "untrusted-certificate");
    assert!(matches!(e, ChainError::IssuerMismatch { .. }), "{e}");
    // Claiming the root as issuer, signed with its own key.
    let forged = leaf_params(SIGNER)
        .signed_by(&leaf_key, &Issuer::from_params(&root.params, &leaf_key))
        .unwrap();
    let e = refused(verify(&[forged.der()], &root), "untrusted-certificate");
    assert!(matches!(e, ChainError::BadSignature { .. }), "{e}");
}

#[test]
fn an_expired_certificate_anywhere_in_the_chain_is_refused() {
    let expired = |mut p: CertificateParams| {
        p.not_after = at(NOW - DAY);
        p
    };
    let (root, int) = pki();
    let der = leaf(&int, &expired(leaf_params(SIGNER)));
    let e = refused(verify(&[&der, &int.der], &root), "certificate-expired");
    assert!(
        matches!(e, ChainError::Expired { ref cert, .. } if cert.place == Place::Chain(0)),
        "{e}"
    );

    let old_int = root.sub_ca(
        expired(ca_params("Warden Test Intermediate", None)),
        &PKCS_ED25519,
    );
    let der = leaf(&old_int, &leaf_params(SIGNER));
    let e = refused(verify(&[&der, &old_int.der], &root), "certificate-expired");
    assert!(
        matches!(e, ChainError::Expired { ref cert, .. } if cert.place == Place::Chain(1)),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("certificate 1") && msg.contains("Warden Test Intermediate"),
        "{msg}"
    );
    assert!(msg.contains("expired at 2027-01-14T08:00:00Z"), "{msg}");

    let old_root = Ca::root(
        expired(ca_params("Warden Test Root", None)),
        &PKCS_ECDSA_P256_SHA256,
    );
    let der = leaf(&old_root, &leaf_params(SIGNER));
    let e = refused(verify(&[&der], &old_root), "certificate-expired");
    assert!(
        matches!(e, ChainError::Expired { ref cert, .. } if cert.place == Place::Anchor),
        "{e}"
    );
}

#[test]
fn a_not_yet_valid_leaf_is_refused_only_with_a_trusted_clock() {
    let (root, int) = pki();
    let mut p = leaf_params(SIGNER);
    p.not_before = at(NOW + DAY);
    let der = leaf(&int, &p);
    let e = refused(verify(&[&der, &int.der], &root), "certificate-expired");
    assert!(matches!(e, ChainError::NotYetValid { .. }), "{e}");
    // Without a clock, the real time may well be past not_before.
    let unknown = TrustedTime::Unknown { floor: NOW };
    verify_at(&[&der, &int.der], &root, &unknown).unwrap();
}

#[test]
fn without_a_clock_a_leaf_expired_before_the_floor_is_refused() {
    let (root, int) = pki();
    let mut p = leaf_params(SIGNER);
    p.not_after = at(NOW - DAY);
    let der = leaf(&int, &p);
    let past_expiry = TrustedTime::Unknown { floor: NOW };
    let e = refused(
        verify_at(&[&der, &int.der], &root, &past_expiry),
        "certificate-expired",
    );
    assert!(matches!(e, ChainError::Expired { .. }), "{e}");
    // A floor before not_after proves nothing.
    let before_expiry = TrustedTime::Unknown {
        floor: NOW - 2 * DAY,
    };
    verify_at(&[&der, &int.der], &root, &before_expiry).unwrap();
}

#[test]
fn the_leaf_must_be_for_code_signing() {
    let (root, int) = pki();
    for ekus in [
        vec![],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
        vec![ExtendedKeyUsagePurpose::Any],
    ] {
        let mut p = leaf_params(SIGNER);
        p.extended_key_usages = ekus.clone();
        let der = leaf(&int, &p);
        let e = refused(verify(&[&der, &int.der], &root), "key-usage");
        assert!(
            matches!(e, ChainError::NotCodeSigning { .. }),
            "{ekus:?}: {e}"
        );
    }
}

#[test]
fn the_leaf_must_allow_digital_signatures() {
    let (root, int) = pki();
    for usages in [vec![], vec![KeyUsagePurpose::ContentCommitment]] {
        let mut p = leaf_params(SIGNER);
        p.key_usages = usages.clone();
        let der = leaf(&int, &p);
        let e = refused(verify(&[&der, &int.der], &root), "key-usage");
        assert!(
            matches!(
                e,
                ChainError::MissingKeyUsage {
                    usage: "digitalSignature",
                    ..
                }
            ),
            "{usages:?}: {e}"
        );
    }
}

#[test]
fn the_leaf_must_not_be_a_ca() {
    let (root, int) = pki();
    let mut p = leaf_params(SIGNER);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let der = leaf(&int, &p);
    let e = refused(verify(&[&der, &int.der], &root), "key-usage");
    assert!(matches!(e, ChainError::LeafIsCa { .. }), "{e}");
    // cA=false, stated explicitly, is fine.
    let mut p = leaf_params(SIGNER);
    p.is_ca = IsCa::ExplicitNoCa;
    verify(&[&leaf(&int, &p), &int.der], &root).unwrap();
}

#[test]
fn an_intermediate_must_be_a_ca_that_signs_certificates() {
    let (root, _) = pki();
    let check = |params: CertificateParams| {
        let int = root.sub_ca(params, &PKCS_ECDSA_P256_SHA256);
        let der = leaf(&int, &leaf_params(SIGNER));
        refused(verify(&[&der, &int.der], &root), "key-usage")
    };
    let mut p = ca_params("Warden Test Intermediate", None);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let e = check(p);
    assert!(
        matches!(
            e,
            ChainError::MissingKeyUsage {
                usage: "keyCertSign",
                ..
            }
        ),
        "{e}"
    );

    for is_ca in [IsCa::ExplicitNoCa, IsCa::NoCa] {
        let mut p = ca_params("Warden Test Intermediate", None);
        p.is_ca = is_ca;
        let e = check(p);
        assert!(
            matches!(e, ChainError::NotCa { ref cert } if cert.place == Place::Chain(1)),
            "{e}"
        );
    }

    let mut p = ca_params("Warden Test Intermediate", None);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let e = check(p);
    assert!(
        matches!(e, ChainError::NotCodeSigning { ref cert } if cert.place == Place::Chain(1)),
        "{e}"
    );
}

#[test]
fn the_pinned_ca_must_be_a_ca_that_signs_certificates() {
    let (root, int) = pki();
    let der = leaf(&int, &leaf_params(SIGNER));
    let e = PinnedCa::from_der(&der).unwrap_err();
    assert!(
        matches!(e, ChainError::NotCa { ref cert } if cert.place == Place::Anchor),
        "{e}"
    );
    let mut p = ca_params("Warden Test Root", None);
    p.key_usages = vec![KeyUsagePurpose::CrlSign];
    let e = PinnedCa::from_der(&Ca::root(p, &PKCS_ED25519).der).unwrap_err();
    assert!(
        matches!(
            e,
            ChainError::MissingKeyUsage {
                usage: "keyCertSign",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.reason(), "key-usage");
    let e = PinnedCa::from_der(b"not a certificate").unwrap_err();
    assert!(
        matches!(
            e,
            ChainError::Malformed {
                at: Place::Anchor,
                ..
            }
        ),
        "{e}"
    );
    // Pinned as given.
    assert_eq!(PinnedCa::from_der(&root.der).unwrap().der(), &root.der[..]);
}

#[test]
fn path_length_constraints_are_respected() {
    // A root with pathLen 0 may sign the leaf, but no intermediate.
    let root = Ca::root(
        ca_params("Warden Test Root", Some(0)),
        &PKCS_ECDSA_P256_SHA256,
    );
    verify(&[&leaf(&root, &leaf_params(SIGNER))], &root).unwrap();
    let int = root.sub_ca(
        ca_params("Warden Test Intermediate", None),
        &PKCS_ECDSA_P256_SHA256,
    );
    let der = leaf(&int, &leaf_params(SIGNER));
    let e = refused(verify(&[&der, &int.der], &root), "key-usage");
    assert!(
        matches!(e, ChainError::PathLength { ref cert, path_len: 0, below: 1 } if cert.place == Place::Anchor),
        "{e}"
    );

    // An intermediate with pathLen 0 may not have another intermediate below it.
    let root = Ca::root(ca_params("Warden Test Root", None), &PKCS_ECDSA_P256_SHA256);
    let int1 = root.sub_ca(
        ca_params("Warden Test Intermediate 1", Some(0)),
        &PKCS_ED25519,
    );
    verify(&[&leaf(&int1, &leaf_params(SIGNER)), &int1.der], &root).unwrap();
    let int2 = int1.sub_ca(ca_params("Warden Test Intermediate 2", None), &PKCS_ED25519);
    let der = leaf(&int2, &leaf_params(SIGNER));
    let e = refused(verify(&[&der, &int2.der, &int1.der], &root), "key-usage");
    assert!(
        matches!(e, ChainError::PathLength { ref cert, path_len: 0, below: 1 } if cert.place == Place::Chain(2)),
        "{e}"
    );
    // Nor may a root with pathLen 1 have two.
    let params = ca_params("Warden Test Root", Some(1));
    let der1 = params.self_signed(&root.key).unwrap().der().to_vec();
    let root1 = Ca {
        params,
        key: root.key,
        der: der1,
    };
    let e = refused(verify(&[&der, &int2.der, &int1.der], &root1), "key-usage");
    assert!(
        matches!(e, ChainError::PathLength { ref cert, path_len: 1, below: 2 } if cert.place == Place::Anchor),
        "{e}"
    );
}

#[test]
fn the_leaf_common_name_must_match_exactly() {
    let (root, int) = pki();
    for cn in [
        "release-signer-10",
        "Release-signer-1",
        "release-signer-1 ",
        "release",
    ] {
        let der = leaf(&int, &leaf_params(cn));
        let e = refused(verify(&[&der, &int.der], &root), "untrusted-certificate");
        assert!(
            matches!(e, ChainError::WrongCommonName { .. }),
            "{cn:?}: {e}"
        );
    }
    // Two common names (the second pushed under the raw OID), or none.
    let mut p = leaf_params(SIGNER);
    p.distinguished_name
        .push(DnType::CustomDnType(vec![2, 5, 4, 3]), SIGNER);
    let e = refused(
        verify(&[&leaf(&int, &p), &int.der], &root),
        "untrusted-certificate",
    );
    assert!(
        matches!(e, ChainError::CommonNameCount { count: 2, .. }),
        "{e}"
    );
    let mut p = leaf_params(SIGNER);
    p.distinguished_name.remove(DnType::CommonName);
    let e = refused(
        verify(&[&leaf(&int, &p), &int.der], &root),
        "untrusted-certificate",
    );
    assert!(
        matches!(e, ChainError::CommonNameCount { count: 0, .. }),
        "{e}"
    );
}

#[test]
fn sizes_are_checked_before_parsing() {
    let (root, int) = pki();
    let der = leaf(&int, &leaf_params(SIGNER));
    let e = refused(verify(&[], &root), "untrusted-certificate");
    assert_eq!(e, ChainError::EmptyChain);
    let long = vec![&der[..]; MAX_CHAIN + 1];
    let e = refused(verify(&long, &root), "malformed-certificate");
    assert_eq!(e, ChainError::ChainTooLong { len: MAX_CHAIN + 1 });
    // A well-formed certificate grown past the limit by a large (non-critical) extension.
    let mut p = leaf_params(SIGNER);
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 55555, 2],
        [&[0x04, 0x82, 0x40, 0x00][..], &[0u8; 0x4000][..]].concat(),
    )];
    let big = leaf(&int, &p);
    assert!(big.len() > MAX_CERT_BYTES);
    let e = refused(verify(&[&der, &big], &root), "malformed-certificate");
    assert!(
        matches!(
            e,
            ChainError::TooLarge {
                at: Place::Chain(1),
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bytes_after_or_inside_the_certificate_are_malformed() {
    let (root, int) = pki();
    let der = leaf(&int, &leaf_params(SIGNER));
    let trailing = [&der[..], &[0x00]].concat();
    let e = refused(
        verify(&[&trailing, &int.der], &root),
        "malformed-certificate",
    );
    assert!(
        matches!(
            e,
            ChainError::TrailingBytes {
                at: Place::Chain(0),
                extra: 1
            }
        ),
        "{e}"
    );
    // A NULL slipped inside the Certificate SEQUENCE, after the signature.
    assert_eq!(&der[..2], &[0x30, 0x82]);
    let inner = [&der[4..], &[0x05, 0x00]].concat();
    let len = u16::try_from(inner.len()).unwrap().to_be_bytes();
    let smuggled = [&[0x30, 0x82, len[0], len[1]][..], &inner].concat();
    let e = refused(
        verify(&[&smuggled, &int.der], &root),
        "malformed-certificate",
    );
    assert!(
        matches!(
            e,
            ChainError::Malformed {
                at: Place::Chain(0),
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn garbage_is_malformed() {
    let (root, int) = pki();
    let der = leaf(&int, &leaf_params(SIGNER));
    let pem = format!("-----BEGIN CERTIFICATE-----\n{der:?}\n");
    for junk in [
        &b""[..],
        &b"\x30"[..],
        &b"\x30\x80\x00\x00"[..],
        &[0xff; 64][..],
        pem.as_bytes(),
        &der[..der.len() - 1],
        &der[1..],
    ] {
        let e = refused(verify(&[junk, &int.der], &root), "malformed-certificate");
        assert!(
            matches!(
                e,
                ChainError::Malformed {
                    at: Place::Chain(0),
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn an_unknown_critical_extension_is_refused() {
    let (root, int) = pki();
    let mut ext =
        CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00]);
    let mut p = leaf_params(SIGNER);
    p.custom_extensions = vec![ext.clone()];
    verify(&[&leaf(&int, &p), &int.der], &root).expect("non-critical is ignored");
    ext.set_criticality(true);
    p.custom_extensions = vec![ext.clone()];
    let e = refused(
        verify(&[&leaf(&int, &p), &int.der], &root),
        "untrusted-certificate",
    );
    assert!(
        matches!(e, ChainError::UnknownCriticalExtension { ref oid, .. } if oid == "1.3.6.1.4.1.55555.1"),
        "{e}"
    );
    // On an intermediate too.
    let mut p = ca_params("Warden Test Intermediate", None);
    p.custom_extensions = vec![ext];
    let int = root.sub_ca(p, &PKCS_ECDSA_P256_SHA256);
    let e = refused(
        verify(&[&leaf(&int, &leaf_params(SIGNER)), &int.der], &root),
        "untrusted-certificate",
    );
    assert!(
        matches!(e, ChainError::UnknownCriticalExtension { ref cert, .. } if cert.place == Place::Chain(1)),
        "{e}"
    );
}

#[test]
fn a_duplicated_extension_is_malformed() {
    let (root, int) = pki();
    let mut p = leaf_params(SIGNER);
    // A second keyUsage (digitalSignature) beside rcgen's own.
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        &[2, 5, 29, 15],
        vec![0x03, 0x02, 0x07, 0x80],
    )];
    let e = refused(
        verify(&[&leaf(&int, &p), &int.der], &root),
        "malformed-certificate",
    );
    assert!(
        matches!(e, ChainError::DuplicateExtension { ref oid, .. } if oid == "2.5.29.15"),
        "{e}"
    );
}

#[test]
fn only_ed25519_and_p256_leaf_keys_can_sign_metadata() {
    let (root, int) = pki();
    for alg in [&PKCS_RSA_SHA256, &PKCS_ECDSA_P384_SHA384] {
        let der = int.issue(&leaf_params(SIGNER), &key(alg));
        let e = refused(verify(&[&der, &int.der], &root), "key-usage");
        assert!(
            matches!(e, ChainError::UnsupportedLeafKey { .. }),
            "{alg:?}: {e}"
        );
    }
}

/// Replace every occurrence of `from` in `der` with `to` (same length).
fn patch(der: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = der.to_vec();
    let mut found = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if out[i..i + from.len()] == *from {
            out[i..i + from.len()].copy_from_slice(to);
            found += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(found > 0);
    out
}

const ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_SHA384: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_SHA224: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01];

#[test]
fn signature_algorithms_are_checked_before_signatures() {
    let (root, int) = pki();
    let der = leaf(&int, &leaf_params(SIGNER));
    // Outer and inner algorithms disagree.
    let last = der
        .windows(ECDSA_SHA256.len())
        .rposition(|w| w == ECDSA_SHA256)
        .unwrap();
    let outer = [
        &der[..last],
        &patch(&der[last..], ECDSA_SHA256, ECDSA_SHA384),
    ]
    .concat();
    let e = refused(verify(&[&outer, &int.der], &root), "malformed-certificate");
    assert!(
        matches!(e, ChainError::SignatureAlgorithmMismatch { .. }),
        "{e}"
    );
    // Both say SHA-384, under a P-256 key: not an accepted pair.
    let both = patch(&der, ECDSA_SHA256, ECDSA_SHA384);
    let e = refused(verify(&[&both, &int.der], &root), "untrusted-certificate");
    assert!(matches!(e, ChainError::AlgorithmKeyMismatch { .. }), "{e}");
    // Both say SHA-224: not accepted at all.
    let weak = patch(&der, ECDSA_SHA256, ECDSA_SHA224);
    let e = refused(verify(&[&weak, &int.der], &root), "untrusted-certificate");
    assert!(
        matches!(e, ChainError::UnsupportedSignatureAlgorithm { ref alg, .. } if alg == "1.2.840.10045.4.3.1"),
        "{e}"
    );
}

/// A public key with no private half, to put keys rcgen cannot make into certificates.
struct BareKey(Vec<u8>);

impl PublicKeyData for BareKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_RSA_SHA256
    }
}

/// A DER element: `tag`, a minimal length, `content`.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match u8::try_from(content.len()) {
        Ok(n) if n < 0x80 => out.push(n),
        Ok(n) => out.extend([0x81, n]),
        Err(_) => {
            out.push(0x82);
            out.extend(u16::try_from(content.len()).unwrap().to_be_bytes());
        }
    }
    out.extend(content);
    out
}

/// An RSAPublicKey (RFC 8017 A.1.1) with a `bits`-bit modulus (a multiple of 8) and e = 65537.
fn rsa_public(bits: usize) -> Vec<u8> {
    let mut modulus = vec![0x00, 0xc5];
    modulus.resize(bits / 8 + 1, 0x5b);
    let body = [tlv(0x02, &modulus), tlv(0x02, &[0x01, 0x00, 0x01])].concat();
    tlv(0x30, &body)
}

#[test]
fn a_ca_with_a_short_rsa_key_is_refused() {
    let (root, _) = pki();
    let params = ca_params("Warden Weak CA", None);
    let weak = root.issue(&params, &BareKey(rsa_public(1024)));
    let e = PinnedCa::from_der(&weak).unwrap_err();
    assert!(
        matches!(e, ChainError::RsaKeySize { bits: 1024, .. }),
        "{e}"
    );
    assert_eq!(e.reason(), "untrusted-certificate");
    let fine = root.issue(&params, &BareKey(rsa_public(2048)));
    PinnedCa::from_der(&fine).unwrap();
}
