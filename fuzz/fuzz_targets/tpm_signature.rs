#![no_main]
//! TPMT_SIGNATURE decoder: never panics; decoded signatures re-encode to the input.
use libfuzzer_sys::fuzz_target;
use warden_attest::tpm2::Signature;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Signature::decode(data) {
        assert_eq!(s.encode(), data);
    }
});
