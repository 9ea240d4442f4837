//! The verifier on quotes recorded from swtpm (tests/data/recorded, made by
//! `cargo run -p warden-attest --example record`): runs without a TPM, in the pure build.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use warden_attest::binding::{purpose, FreshNonce, Nonce};
use warden_attest::reference::ReferenceValues;
use warden_attest::tpm2::Attest;
use warden_attest::verify::{verify, Check, Expected, Rejected, Verified};
use warden_attest::Evidence;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/recorded");

struct Recorded {
    evidence: Evidence,
    reference: ReferenceValues,
    nonce: Nonce,
    key: Vec<u8>,
}

fn load(alg: &str) -> Recorded {
    let read = |f: &str| std::fs::read(format!("{DIR}/{alg}-{f}")).unwrap();
    Recorded {
        evidence: Evidence::from_json(&read("evidence.json")).unwrap(),
        reference: ReferenceValues::from_toml(&String::from_utf8(read("reference.toml")).unwrap())
            .unwrap(),
        nonce: Nonce::try_from(hex::decode(read("nonce.hex")).unwrap().as_slice()).unwrap(),
        key: read("bound-key.bin"),
    }
}

impl Recorded {
    fn verify(&self, e: &Evidence) -> Result<Verified, Rejected> {
        verify(
            e,
            Expected {
                nonce: FreshNonce::issued_just_now(self.nonce.clone()),
                purpose: purpose::TENANT_API,
                bound_key: &self.key,
                reference: &self.reference,
                previous: None,
            },
        )
    }
}

#[test]
fn recorded_quotes_verify() {
    for alg in ["ecc", "rsa"] {
        let r = load(alg);
        r.verify(&r.evidence).unwrap();
    }
}

#[test]
fn every_single_bit_flip_in_the_signed_bytes_is_refused() {
    for alg in ["ecc", "rsa"] {
        let r = load(alg);
        for byte in 0..r.evidence.attest.len() {
            for bit in [0, 7] {
                let mut e = r.evidence.clone();
                e.attest[byte] ^= 1 << bit;
                let rej = r.verify(&e).unwrap_err();
                assert!(
                    rej.failed(Check::Decode) || rej.failed(Check::Signature),
                    "{alg} byte {byte} bit {bit}: {rej}"
                );
            }
        }
    }
}

#[test]
fn signature_flips_are_refused() {
    for alg in ["ecc", "rsa"] {
        let r = load(alg);
        let n = r.evidence.signature.len();
        for byte in [n - 1, n / 2, 8] {
            let mut e = r.evidence.clone();
            e.signature[byte] ^= 0x01;
            assert!(r.verify(&e).is_err(), "{alg} byte {byte}");
        }
    }
}

#[test]
fn recorded_quote_is_a_quote_with_the_binding_in_extra_data() {
    let r = load("ecc");
    let a = Attest::decode(&r.evidence.attest).unwrap();
    let want = warden_attest::binding::extra_data(&r.nonce, purpose::TENANT_API, &r.key).unwrap();
    assert_eq!(a.extra_data, want);
    assert_eq!(a.magic, warden_attest::tpm2::TPM_GENERATED);
}
