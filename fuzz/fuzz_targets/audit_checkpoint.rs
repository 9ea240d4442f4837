//! Fuzz `NoteVerifier::verify_checkpoint` and `Checkpoint::parse_body` (warden_audit::checkpoint,
//! C2SP signed-note + tlog-checkpoint) with arbitrary text. Neither may panic.
//!
//! The verifier key is fixed and test-only: its private key is the RFC 8032 section 7.1 TEST 1
//! seed (9d61b19d...7f60), so seed notes signed with it stay valid across runs and the fuzzer
//! can mutate past the signature check from a corpus. Never use it elsewhere.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warden_audit::checkpoint::{Checkpoint, NoteVerifier};

const FUZZ_VKEY: &str = "warden.example/fuzz+c25febf7+AddamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea";

fn verifier() -> &'static NoteVerifier {
    static VERIFIER: OnceLock<NoteVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| NoteVerifier::from_vkey(FUZZ_VKEY).expect("fixed fuzz vkey parses"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verifier().verify_checkpoint(text);
        let _ = Checkpoint::parse_body(text);
    }
});
