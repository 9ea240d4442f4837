//! Fuzz the crypto-agile event-log parser and replay: no input may panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_attest::{eventlog, HashAlg};

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = eventlog::parse(data) {
        for alg in [
            HashAlg::Sha1,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ] {
            let _ = log.replay(alg);
        }
    }
});
