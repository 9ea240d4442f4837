//! Fuzz the audit log's stored-record decoder: segment bytes are untrusted on reopen, so no
//! input may panic, over-read, or allocate from an unchecked length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_audit::store::{decode_record, MAX_ENTRY_BYTES};

fuzz_target!(|data: &[u8]| {
    // Walk the input as a segment would be scanned: record after record until one fails.
    let mut rest = data;
    while let Ok((payload, used)) = decode_record(rest) {
        assert!(payload.len() <= MAX_ENTRY_BYTES);
        assert_eq!(used, 8 + payload.len());
        match rest.get(used..) {
            Some(next) => rest = next,
            None => unreachable!("decode_record consumed more than it was given"),
        }
    }
});
