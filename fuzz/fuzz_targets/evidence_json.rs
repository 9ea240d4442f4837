#![no_main]
//! The whole verifier on untrusted evidence JSON: never panics, never accepts.
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warden_attest::binding::{purpose, FreshNonce, Nonce};
use warden_attest::reference::ReferenceValues;
use warden_attest::verify::{verify, Expected};
use warden_attest::Evidence;

fn reference() -> &'static ReferenceValues {
    static R: OnceLock<ReferenceValues> = OnceLock::new();
    R.get_or_init(|| {
        ReferenceValues::from_toml(
            "version = 1\nbank = \"sha256\"\nappliance_pcr = 15\n[pcrs]\n0 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
        )
        .expect("valid reference")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Evidence::from_json(data) {
        let nonce = Nonce::try_from(&[7u8; 32][..]).expect("nonce");
        let r = verify(
            &e,
            Expected {
                nonce: FreshNonce::issued_just_now(nonce),
                purpose: purpose::TENANT_API,
                bound_key: b"fuzz",
                reference: reference(),
                previous: None,
            },
        );
        // Nothing the fuzzer makes can carry a valid TPM signature.
        assert!(r.is_err());
    }
});
