#![no_main]
//! TPMT_PUBLIC decoder: never panics; names are computed over the exact input.
use libfuzzer_sys::fuzz_target;
use warden_attest::tpm2::Public;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Public::decode(data) {
        assert_eq!(p.as_bytes(), data);
        let _ = p.name();
    }
});
