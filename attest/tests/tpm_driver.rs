//! The TPM driver against a real (software) TPM: each test manufactures its own swtpm.
//!
//! Skips with a message when swtpm is not installed and the process is not root; with `CI` set
//! it never skips. `warden_testkit::Swtpm` sets `TSS2_LOG=esys+none,tcti+none` for this process
//! (expected TPM errors in negative tests would otherwise be logged by tpm2-tss).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use warden_attest::tpm::{forge, AkAlgorithm, Tpm, TpmError};
use warden_attest::HashAlg;
use warden_testkit::{Swtpm, SwtpmOptions};

const AK: u32 = 0x8101_0002;
/// swtpm_setup persists its RSA EK (a restricted *decryption* key) here.
const SWTPM_RSA_EK: u32 = 0x8101_0001;
const TPM_GENERATED: [u8; 4] = [0xff, 0x54, 0x43, 0x47];
const ST_ATTEST_QUOTE: [u8; 2] = [0x80, 0x18];
const ST_ATTEST_CERTIFY: [u8; 2] = [0x80, 0x17];

fn swtpm(test: &str, opts: SwtpmOptions) -> Option<(Swtpm, Tpm)> {
    if warden_testkit::skip_without_swtpm(test) {
        return None;
    }
    let sw = Swtpm::start_with(opts).unwrap();
    let tpm = Tpm::open(&sw.tcti()).unwrap();
    Some((sw, tpm))
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    HashAlg::Sha256.digest(parts)
}

/// Minimal big-endian reader for the few TPM structures the tests look into.
struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn tpm2b(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.take(n)
    }
}

/// Check `signature` (TPMT_SIGNATURE) over `message` with the key in `public` (TPMT_PUBLIC):
/// ECDSA-P256-SHA256 or RSASSA-SHA256, the schemes the driver creates.
fn verify(public: &[u8], message: &[u8], signature: &[u8]) {
    use ring::signature::{self as sig, UnparsedPublicKey};
    let mut p = Rd(public);
    let kind = p.u16();
    assert_eq!(p.u16(), 0x000b, "nameAlg");
    let _attributes = p.u32();
    let _policy = p.tpm2b();
    assert_eq!(p.u16(), 0x0010, "symmetric NULL");
    let _scheme = (p.u16(), p.u16());
    let mut s = Rd(signature);
    match kind {
        0x0023 => {
            assert_eq!(p.u16(), 0x0003, "curve P-256");
            assert_eq!(p.u16(), 0x0010, "kdf NULL");
            let (x, y) = (p.tpm2b(), p.tpm2b());
            assert_eq!((s.u16(), s.u16()), (0x0018, 0x000b), "ECDSA-SHA256");
            let (r, sv) = (s.tpm2b(), s.tpm2b());
            let mut point = vec![4];
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            let mut fixed = vec![0; 64];
            fixed[32 - r.len()..32].copy_from_slice(r);
            fixed[64 - sv.len()..].copy_from_slice(sv);
            UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, &point)
                .verify(message, &fixed)
                .expect("ECDSA signature verifies over the exact bytes");
        }
        0x0001 => {
            assert_eq!(p.u16(), 2048, "key bits");
            let e = match p.u32() {
                0 => 65537u32,
                e => e,
            };
            let n = p.tpm2b();
            assert_eq!((s.u16(), s.u16()), (0x0014, 0x000b), "RSASSA-SHA256");
            let signature = s.tpm2b();
            let e = e.to_be_bytes();
            let first = e.iter().position(|&b| b != 0).unwrap();
            // ring wants minimal big-endian integers (no leading zero bytes).
            let key = sig::RsaPublicKeyComponents { n, e: &e[first..] };
            key.verify(&sig::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .expect("RSASSA signature verifies over the exact bytes");
        }
        other => panic!("unexpected key type {other:#06x}"),
    }
    assert!(s.0.is_empty() && p.0.is_empty(), "no trailing bytes");
}

fn invalid<T>(r: Result<T, TpmError>) -> bool {
    matches!(r, Err(TpmError::InvalidArgument { .. }))
}

/// TPMS_ATTEST: magic, type, qualifiedSigner, extraData.
fn attest_header(attest: &[u8]) -> ([u8; 4], [u8; 2], Vec<u8>) {
    let mut r = Rd(attest);
    let magic = r.take(4).try_into().unwrap();
    let kind = r.take(2).try_into().unwrap();
    let _signer = r.tpm2b();
    (magic, kind, r.tpm2b().to_vec())
}

#[test]
fn ak_is_the_same_after_reopen_and_power_cycle() {
    let Some((mut sw, mut tpm)) = swtpm(
        "ak_is_the_same_after_reopen_and_power_cycle",
        SwtpmOptions::default(),
    ) else {
        return;
    };
    let created = tpm.ensure_ak(AK, AkAlgorithm::EccP256).unwrap();
    assert_eq!(created[..2], [0x00, 0x23], "TPM_ALG_ECC");
    tpm.pcr_extend_sha256(16, [7; 32]).unwrap();
    drop(tpm);

    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    assert_eq!(tpm.ensure_ak(AK, AkAlgorithm::EccP256).unwrap(), created);
    assert_ne!(
        tpm.pcr_read(HashAlg::Sha256, &[16]).unwrap()[&16],
        vec![0; 32]
    );
    drop(tpm);

    sw.restart().unwrap();
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    assert_eq!(tpm.ensure_ak(AK, AkAlgorithm::EccP256).unwrap(), created);
    assert_eq!(
        tpm.pcr_read(HashAlg::Sha256, &[16]).unwrap()[&16],
        vec![0; 32],
        "PCRs reset"
    );
}

#[test]
fn ecc_and_rsa_aks_quote_with_their_own_scheme() {
    let Some((_sw, mut tpm)) = swtpm(
        "ecc_and_rsa_aks_quote_with_their_own_scheme",
        SwtpmOptions::default(),
    ) else {
        return;
    };
    for (handle, alg, kind) in [
        (AK, AkAlgorithm::EccP256, [0x00, 0x23]),
        (AK + 1, AkAlgorithm::Rsa2048, [0x00, 0x01]),
    ] {
        let public = tpm.ensure_ak(handle, alg).unwrap();
        assert_eq!(public[..2], kind, "{alg:?}");
        let extra = sha256(&[b"nonce"]);
        let q = tpm
            .quote(handle, &extra, HashAlg::Sha256, &[0, 7, 16])
            .unwrap();
        let (magic, st, qualifying) = attest_header(&q.attest);
        assert_eq!(magic, TPM_GENERATED);
        assert_eq!(st, ST_ATTEST_QUOTE);
        assert_eq!(qualifying, extra);
        verify(&public, &q.attest, &q.signature);
    }
}

#[test]
fn an_object_that_is_not_the_requested_ak_is_refused() {
    let Some((_sw, mut tpm)) = swtpm(
        "an_object_that_is_not_the_requested_ak_is_refused",
        SwtpmOptions::default(),
    ) else {
        return;
    };
    // The EK: restricted, but a decryption key.
    let err = tpm
        .ensure_ak(SWTPM_RSA_EK, AkAlgorithm::Rsa2048)
        .unwrap_err();
    assert!(
        matches!(
            err,
            TpmError::NotAnAk {
                handle: SWTPM_RSA_EK,
                ..
            }
        ),
        "{err}"
    );
    // An AK of the other algorithm.
    tpm.ensure_ak(AK, AkAlgorithm::EccP256).unwrap();
    let err = tpm.ensure_ak(AK, AkAlgorithm::Rsa2048).unwrap_err();
    assert!(err.to_string().contains("ECC"), "{err}");
    // Neither was touched.
    assert!(tpm.ensure_ak(AK, AkAlgorithm::EccP256).is_ok());
    assert!(tpm.ensure_ak(SWTPM_RSA_EK, AkAlgorithm::Rsa2048).is_err());
}

#[test]
fn bad_arguments_are_refused_before_the_tpm() {
    let Some((_sw, mut tpm)) = swtpm(
        "bad_arguments_are_refused_before_the_tpm",
        SwtpmOptions::default(),
    ) else {
        return;
    };
    assert!(invalid(tpm.ensure_ak(0x0100_0000, AkAlgorithm::EccP256)));
    tpm.ensure_ak(AK, AkAlgorithm::EccP256).unwrap();
    assert!(invalid(tpm.quote(AK, &[0; 65], HashAlg::Sha256, &[0])));
    assert!(invalid(tpm.quote(AK, &[], HashAlg::Sha256, &[24])));
    assert!(invalid(tpm.pcr_read(HashAlg::Sha256, &[])));
    assert!(invalid(tpm.pcr_extend_sha256(24, [0; 32])));
    assert!(matches!(
        Tpm::open("nonsense:x"),
        Err(TpmError::Tcti { .. })
    ));
    let closed = format!(
        "swtpm:host=127.0.0.1,port={}",
        warden_testkit::free_port_pair()
    );
    assert!(matches!(Tpm::open(&closed), Err(TpmError::Tcti { .. })));
    // Quoting with a handle where nothing lives is a TPM error naming the step.
    let err = tpm
        .quote(AK + 0x10, &[], HashAlg::Sha256, &[0])
        .unwrap_err();
    assert!(err.to_string().contains("TR_FromTPMPublic"), "{err}");
}

#[test]
fn ek_certificate_is_read_from_nv_when_manufactured() {
    let Some((_sw, mut tpm)) = swtpm(
        "ek_certificate_is_read_from_nv_when_manufactured",
        SwtpmOptions::default(),
    ) else {
        return;
    };
    let cert = tpm
        .ek_certificate()
        .unwrap()
        .expect("swtpm_setup --create-ek-cert wrote one");
    assert_eq!(cert[0], 0x30, "DER SEQUENCE");
    assert!(cert.len() > 500, "{} bytes", cert.len());

    let Some((_sw, mut tpm)) = swtpm(
        "ek_certificate",
        SwtpmOptions {
            ek_cert: false,
            ..SwtpmOptions::default()
        },
    ) else {
        return;
    };
    assert_eq!(tpm.ek_certificate().unwrap(), None);
}

#[test]
fn pcr_read_returns_every_pcr_even_past_eight_per_call() {
    let Some((_sw, mut tpm)) = swtpm(
        "pcr_read_returns_every_pcr_even_past_eight_per_call",
        SwtpmOptions::default(),
    ) else {
        return;
    };
    let all: Vec<u8> = (0..24).collect();
    let values = tpm.pcr_read(HashAlg::Sha256, &all).unwrap();
    assert_eq!(values.keys().copied().collect::<Vec<_>>(), all);
    assert!(values.values().all(|v| v.len() == 32));
    // Bank not allocated (default is SHA-256 only).
    assert!(tpm.pcr_read(HashAlg::Sha1, &[0]).is_err());
}

#[test]
fn extend_is_sha256_of_old_value_and_digest() {
    let Some((_sw, mut tpm)) = swtpm(
        "extend_is_sha256_of_old_value_and_digest",
        SwtpmOptions::default(),
    ) else {
        return;
    };
    let digest: [u8; 32] = sha256(&[b"event"]).try_into().unwrap();
    for _ in 0..2 {
        let old = tpm.pcr_read(HashAlg::Sha256, &[16]).unwrap()[&16].clone();
        tpm.pcr_extend_sha256(16, digest).unwrap();
        let new = tpm.pcr_read(HashAlg::Sha256, &[16]).unwrap()[&16].clone();
        assert_eq!(new, sha256(&[&old, &digest]));
    }
}

#[test]
fn extend_leaves_the_sha1_bank_alone() {
    let opts = SwtpmOptions {
        pcr_banks: "sha1,sha256",
        ..SwtpmOptions::default()
    };
    let Some((_sw, mut tpm)) = swtpm("extend_leaves_the_sha1_bank_alone", opts) else {
        return;
    };
    tpm.pcr_extend_sha256(16, [1; 32]).unwrap();
    assert_eq!(
        tpm.pcr_read(HashAlg::Sha1, &[16]).unwrap()[&16],
        vec![0; 20]
    );
    assert_ne!(
        tpm.pcr_read(HashAlg::Sha256, &[16]).unwrap()[&16],
        vec![0; 32]
    );
    tpm.ensure_ak(AK, AkAlgorithm::EccP256).unwrap();
    let q = tpm.quote(AK, b"x", HashAlg::Sha1, &[16]).unwrap();
    assert_eq!(attest_header(&q.attest).1, ST_ATTEST_QUOTE);
}

#[test]
fn certify_with_ak_yields_a_signed_certify_not_a_quote() {
    let Some((_sw, mut tpm)) = swtpm(
        "certify_with_ak_yields_a_signed_certify_not_a_quote",
        SwtpmOptions::default(),
    ) else {
        return;
    };
    let public = tpm.ensure_ak(AK, AkAlgorithm::EccP256).unwrap();
    let q = forge::certify_with_ak(&mut tpm, AK, b"binding").unwrap();
    let (magic, st, qualifying) = attest_header(&q.attest);
    assert_eq!(magic, TPM_GENERATED);
    assert_eq!(st, ST_ATTEST_CERTIFY);
    assert_eq!(qualifying, b"binding");
    verify(&public, &q.attest, &q.signature);
}

#[test]
fn sign_with_ak_refuses_tpm_generated_data() {
    let Some((_sw, mut tpm)) = swtpm(
        "sign_with_ak_refuses_tpm_generated_data",
        SwtpmOptions::default(),
    ) else {
        return;
    };
    let public = tpm.ensure_ak(AK, AkAlgorithm::Rsa2048).unwrap();
    let genuine = tpm.quote(AK, b"n", HashAlg::Sha256, &[0]).unwrap();
    let err = forge::sign_with_ak(&mut tpm, AK, &genuine.attest).unwrap_err();
    assert!(
        matches!(
            err,
            TpmError::Tss {
                op: "TPM2_Sign(AK)",
                ..
            }
        ),
        "{err}"
    );

    let mut not_magic = genuine.attest.clone();
    not_magic[0] = 0xfe;
    let signature = forge::sign_with_ak(&mut tpm, AK, &not_magic).unwrap();
    verify(&public, &not_magic, &signature);
}

#[test]
fn unrestricted_key_signs_anything() {
    let Some((_sw, mut tpm)) = swtpm("unrestricted_key_signs_anything", SwtpmOptions::default())
    else {
        return;
    };
    tpm.ensure_ak(AK, AkAlgorithm::EccP256).unwrap();
    let forged = tpm.quote(AK, b"n", HashAlg::Sha256, &[0]).unwrap().attest;
    // Run more often than swtpm has transient slots: every key must be flushed.
    for _ in 0..4 {
        let (public, signature) = forge::sign_with_unrestricted_key(&mut tpm, &forged).unwrap();
        let attributes = u32::from_be_bytes(public[4..8].try_into().unwrap());
        assert_eq!(attributes & (1 << 16), 0, "not restricted");
        assert_ne!(attributes & (1 << 18), 0, "sign");
        verify(&public, &forged, &signature);
    }
}
