#![no_main]
//! Merkle proof wire form and verifiers on untrusted input: never panic, never accept.
//! Input: 8 bytes of size `a`, 8 of size `b` (little endian), then a JSON array of strings.
use libfuzzer_sys::fuzz_target;
use warden_audit::merkle::{
    decode_proof, encode_proof, leaf_hash, verify_consistency, verify_inclusion,
};

fuzz_target!(|data: &[u8]| {
    let (Some(a), Some(b), Some(json)) = (data.get(..8), data.get(8..16), data.get(16..)) else {
        return;
    };
    let a = u64::from_le_bytes(a.try_into().expect("8 bytes"));
    let b = u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let Ok(items) = serde_json::from_slice::<Vec<String>>(json) else {
        return;
    };
    let Ok(proof) = decode_proof(&items) else {
        return;
    };
    // Accepted hashes have one encoding only.
    assert_eq!(encode_proof(&proof), items);
    // Distinct roots and leaf: accepting would take a SHA-256 preimage.
    let (leaf, old_root, new_root) = (leaf_hash(b"leaf"), leaf_hash(b"old"), leaf_hash(b"new"));
    assert!(verify_inclusion(&leaf, a, b, &proof, &new_root).is_err());
    assert!(verify_consistency(a, b, &old_root, &new_root, &proof).is_err());
});
