//! Sealing under a signed PCR policy (PolicyAuthorize over PolicyPCR) against a real software
//! TPM: each test manufactures its own swtpm.
//!
//! Skips with a message only when swtpm is missing, the process is not root and `CI` is unset
//! (`warden_testkit::skip_without_swtpm`). The PCRs used are 10 and 15 (PC Client: free for
//! the OS and debug, resettable-by-restart, extendable at locality 0); never 16 or 23.
#![cfg(feature = "tpm")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warden_attest::sealed::{self, PolicyAuthority, SealedBlob, SignedPolicy};
use warden_attest::tpm::{SealError, Tpm};
use warden_attest::HashAlg;
use warden_testkit::Swtpm;

const PCRS: [u8; 2] = [10, 15];
const SECRET: &[u8] = b"disk key: 0123456789abcdef0123456789abcdef";

fn swtpm(test: &str) -> Option<(Swtpm, Tpm)> {
    if warden_testkit::skip_without_swtpm(test) {
        return None;
    }
    let sw = Swtpm::start().unwrap();
    let tpm = Tpm::open(&sw.tcti()).unwrap();
    Some((sw, tpm))
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    HashAlg::Sha256.digest(parts).try_into().unwrap()
}

/// Extend `pcr` with SHA-256(`event`), as a measured component would.
fn measure(tpm: &mut Tpm, pcr: u8, event: &str) {
    tpm.pcr_extend_sha256(pcr, sha256(&[event.as_bytes()]))
        .unwrap();
}

/// A state other than all-zero, so that the restart test proves values are restored.
fn boot(tpm: &mut Tpm) {
    measure(tpm, 10, "kernel 6.1");
    measure(tpm, 15, "warden 1.0");
}

/// The authority approves the PCRs' current state, from the values the TPM reports; the pure
/// digest and the TPM's trial-session digest must agree.
fn approve_current(tpm: &mut Tpm, authority: &PolicyAuthority, pcrs: &[u8]) -> SignedPolicy {
    let values = tpm.pcr_read(HashAlg::Sha256, pcrs).unwrap();
    let pure = sealed::policy_pcr_digest(&values).unwrap();
    let trial = tpm.pcr_policy_digest(pcrs).unwrap();
    assert_eq!(
        trial, pure,
        "pure PolicyPCR digest vs trial session for {pcrs:?}"
    );
    authority.approve(pcrs, &trial, b"").unwrap()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
fn sealed_secret_unseals_under_the_approved_pcr_state() {
    let Some((_sw, mut tpm)) = swtpm("sealed_secret_unseals_under_the_approved_pcr_state") else {
        return;
    };
    boot(&mut tpm);
    let (authority, _) = PolicyAuthority::generate().unwrap();
    let approved = approve_current(&mut tpm, &authority, &PCRS);
    let key = authority.public_sec1();

    let blob = tpm.seal(SECRET, key).unwrap();
    let secret = tpm.unseal(&blob, &approved, key).unwrap();
    assert_eq!(secret.as_slice(), SECRET);

    // The blob is exactly what TPM2_Create returned, wrapped; the policy survives JSON.
    let blob = SealedBlob::from_bytes(&blob.to_bytes()).unwrap();
    let approved = SignedPolicy::from_json(approved.to_json().unwrap().as_bytes()).unwrap();
    assert_eq!(
        tpm.unseal(&blob, &approved, key).unwrap().as_slice(),
        SECRET
    );

    // Timings (informational, never asserted): median of 5 on this swtpm.
    let (mut seals, mut unseals) = (Vec::new(), Vec::new());
    for i in 0..5u8 {
        let secret = [i; 32];
        let t = Instant::now();
        let blob = tpm.seal(&secret, key).unwrap();
        seals.push(t.elapsed());
        let t = Instant::now();
        let out = tpm.unseal(&blob, &approved, key).unwrap();
        unseals.push(t.elapsed());
        assert_eq!(out.as_slice(), &secret);
    }
    eprintln!(
        "swtpm timings, median of 5: seal {:?}, unseal {:?}",
        median(seals),
        median(unseals)
    );
}

#[test]
fn secret_sizes_are_bounded_to_one_sealed_object() {
    let Some((_sw, mut tpm)) = swtpm("secret_sizes_are_bounded_to_one_sealed_object") else {
        return;
    };
    let (authority, _) = PolicyAuthority::generate().unwrap();
    let key = authority.public_sec1();
    let approved = approve_current(&mut tpm, &authority, &PCRS);
    assert!(matches!(tpm.seal(b"", key), Err(SealError::EmptySecret)));
    assert!(matches!(
        tpm.seal(&[1; 129], key),
        Err(SealError::SecretTooLong { len: 129, max: 128 })
    ));
    let blob = tpm.seal(&[0xA5; 128], key).unwrap();
    assert_eq!(
        tpm.unseal(&blob, &approved, key).unwrap().as_slice(),
        &[0xA5; 128]
    );
    // A malformed authority key is refused before the TPM is asked.
    assert!(matches!(
        tpm.seal(SECRET, &key[..64]),
        Err(SealError::Policy(_))
    ));
}

#[test]
fn blob_survives_reopen_and_swtpm_restart() {
    let Some((mut sw, mut tpm)) = swtpm("blob_survives_reopen_and_swtpm_restart") else {
        return;
    };
    boot(&mut tpm);
    let (authority, _) = PolicyAuthority::generate().unwrap();
    let key = authority.public_sec1().to_vec();
    let approved = approve_current(&mut tpm, &authority, &PCRS);
    let on_disk = tpm.seal(SECRET, &key).unwrap().to_bytes();
    drop(tpm);

    // A new TPM context (new ESYS context, new SRK derivation).
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    let blob = SealedBlob::from_bytes(&on_disk).unwrap();
    assert_eq!(
        tpm.unseal(&blob, &approved, &key).unwrap().as_slice(),
        SECRET
    );
    drop(tpm);

    // A power cycle resets the PCRs: the approved state is gone until it is measured again.
    sw.restart().unwrap();
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    assert!(matches!(
        tpm.unseal(&blob, &approved, &key),
        Err(SealError::PcrMismatch { .. })
    ));
    boot(&mut tpm);
    assert_eq!(
        tpm.unseal(&blob, &approved, &key).unwrap().as_slice(),
        SECRET
    );
}

#[test]
fn pcr_change_outside_the_approved_state_refuses_unseal() {
    let Some((_sw, mut tpm)) = swtpm("pcr_change_outside_the_approved_state_refuses_unseal") else {
        return;
    };
    boot(&mut tpm);
    let (authority, _) = PolicyAuthority::generate().unwrap();
    let key = authority.public_sec1();
    let approved = approve_current(&mut tpm, &authority, &PCRS);
    let blob = tpm.seal(SECRET, key).unwrap();

    measure(&mut tpm, 10, "unapproved kernel");
    let err = tpm.unseal(&blob, &approved, key).unwrap_err();
    match &err {
        SealError::PcrMismatch { pcrs, .. } => assert_eq!(pcrs, &PCRS.to_vec()),
        other => panic!("expected PcrMismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("[10, 15]"), "{message}");
    assert!(!message.contains("disk key"), "{message}");
}

#[test]
fn newly_signed_policy_unseals_without_resealing() {
    let Some((_sw, mut tpm)) = swtpm("newly_signed_policy_unseals_without_resealing") else {
        return;
    };
    boot(&mut tpm);
    let (authority, _) = PolicyAuthority::generate().unwrap();
    let key = authority.public_sec1();
    let old_policy = approve_current(&mut tpm, &authority, &PCRS);
    let blob = tpm.seal(SECRET, key).unwrap();

    // Before the update, the authority computes the *future* state without a TPM:
    // PCR_new = SHA-256(PCR_old ‖ SHA-256(event)) (Part 3 §22.2, TPM2_PCR_Extend).
    let update = "kernel 6.2 (signed update)";
    let mut future = tpm.pcr_read(HashAlg::Sha256, &PCRS).unwrap();
    let old10 = future[&10].clone();
    future.insert(
        10,
        sha256(&[&old10, &sha256(&[update.as_bytes()])]).to_vec(),
    );
    let new_policy = authority.approve_pcr_values(&future, b"").unwrap();
    // Not yet valid: the PCRs still hold the old state.
    assert!(matches!(
        tpm.unseal(&blob, &new_policy, key),
        Err(SealError::PcrMismatch { .. })
    ));

    measure(&mut tpm, 10, update);
    assert_eq!(
        tpm.pcr_policy_digest(&PCRS).unwrap(),
        new_policy.policy_digest,
        "pure future digest vs trial session after the update"
    );
    assert_eq!(tpm.pcr_read(HashAlg::Sha256, &PCRS).unwrap(), future);
    assert!(matches!(
        tpm.unseal(&blob, &old_policy, key),
        Err(SealError::PcrMismatch { .. })
    ));
    assert_eq!(
        tpm.unseal(&blob, &new_policy, key).unwrap().as_slice(),
        SECRET
    );
}

#[test]
fn foreign_and_tampered_approvals_are_refused() {
    let Some((_sw, mut tpm)) = swtpm("foreign_and_tampered_approvals_are_refused") else {
        return;
    };
    boot(&mut tpm);
    let (authority, _) = PolicyAuthority::generate().unwrap();
    let (other, _) = PolicyAuthority::generate().unwrap();
    let key = authority.public_sec1();
    let approved = approve_current(&mut tpm, &authority, &PCRS);
    let blob = tpm.seal(SECRET, key).unwrap();
    let rejected = |r: Result<_, SealError>| matches!(r, Err(SealError::SignatureRejected { .. }));

    // Signed by another authority, presented as ours.
    let forged = approve_current(&mut tpm, &other, &PCRS);
    assert!(rejected(tpm.unseal(&blob, &forged, key)));
    // Another authority's own policy and key: the blob is not sealed to it.
    assert!(matches!(
        tpm.unseal(&blob, &forged, other.public_sec1()),
        Err(SealError::AuthorityMismatch)
    ));
    // Tampered signature.
    let mut p = approved.clone();
    p.signature_s[7] ^= 0x40;
    assert!(rejected(tpm.unseal(&blob, &p, key)));
    // Tampered policy digest (e.g. swapped for the digest of a state the attacker controls).
    let mut p = approved.clone();
    p.policy_digest[0] ^= 1;
    assert!(rejected(tpm.unseal(&blob, &p, key)));
    // A policyRef the signature does not cover.
    let mut p = approved.clone();
    p.policy_ref = b"other".to_vec();
    assert!(rejected(tpm.unseal(&blob, &p, key)));
    // Validly signed with a policyRef the blob is not sealed under.
    let with_ref = authority
        .approve(&PCRS, &approved.policy_digest, b"other")
        .unwrap();
    assert!(matches!(
        tpm.unseal(&blob, &with_ref, key),
        Err(SealError::AuthorityMismatch)
    ));
    // The same signed digest, presented for other PCR indices (`pcrs` is not signed): the
    // TPM hashes PCRs 11 and 15 and reaches another digest.
    let mut p = approved.clone();
    p.pcrs = vec![11, 15];
    assert!(matches!(
        tpm.unseal(&blob, &p, key),
        Err(SealError::PcrMismatch { .. })
    ));
    // A validly signed policy over other PCRs, but computed for a state they are not in.
    let wrong_state = authority
        .approve_pcr_values(
            &BTreeMap::from([(11, vec![0x11; 32]), (15, vec![0; 32])]),
            b"",
        )
        .unwrap();
    assert!(matches!(
        tpm.unseal(&blob, &wrong_state, key),
        Err(SealError::PcrMismatch { .. })
    ));
    // None of this used up a TPM object slot: the genuine approval still works.
    assert_eq!(
        tpm.unseal(&blob, &approved, key).unwrap().as_slice(),
        SECRET
    );
}

#[test]
fn corrupted_or_foreign_blobs_are_refused() {
    let Some((_sw, mut tpm)) = swtpm("corrupted_or_foreign_blobs_are_refused") else {
        return;
    };
    let (authority, _) = PolicyAuthority::generate().unwrap();
    let key = authority.public_sec1();
    let approved = approve_current(&mut tpm, &authority, &PCRS);
    let blob = tpm.seal(SECRET, key).unwrap();

    // A flipped bit in the private part fails the TPM's integrity check.
    let mut private = blob.private().to_vec();
    let last = private.len() - 1;
    private[last] ^= 1;
    let bad = SealedBlob::new(blob.public().to_vec(), private).unwrap();
    assert!(matches!(
        tpm.unseal(&bad, &approved, key),
        Err(SealError::BlobRejected { .. })
    ));
    // A public part that is not a sealed object at all.
    let bad = SealedBlob::new(vec![0, 1, 2, 3], blob.private().to_vec()).unwrap();
    assert!(matches!(
        tpm.unseal(&bad, &approved, key),
        Err(SealError::InvalidBlob { .. })
    ));
    // Another blob's public part: the pair no longer matches (the private part's integrity
    // covers the public's name).
    let other = tpm.seal(b"another secret", key).unwrap();
    let mixed = SealedBlob::new(other.public().to_vec(), blob.private().to_vec()).unwrap();
    assert!(matches!(
        tpm.unseal(&mixed, &approved, key),
        Err(SealError::BlobRejected { .. })
    ));
    assert_eq!(
        tpm.unseal(&blob, &approved, key).unwrap().as_slice(),
        SECRET
    );
}

#[test]
fn pure_policy_pcr_digest_matches_the_trial_session() {
    let Some((_sw, mut tpm)) = swtpm("pure_policy_pcr_digest_matches_the_trial_session") else {
        return;
    };
    // All-zero PCRs first, then measured ones; sets of one, two, spread and eight PCRs.
    let sets: [&[u8]; 4] = [
        &[15],
        &[10, 15],
        &[0, 7, 14, 15],
        &[8, 9, 10, 11, 12, 13, 14, 15],
    ];
    for round in 0..2 {
        for pcrs in sets {
            let values = tpm.pcr_read(HashAlg::Sha256, pcrs).unwrap();
            assert_eq!(
                tpm.pcr_policy_digest(pcrs).unwrap(),
                sealed::policy_pcr_digest(&values).unwrap(),
                "round {round}, PCRs {pcrs:?}"
            );
        }
        for pcr in [0, 7, 8, 10, 14, 15] {
            measure(&mut tpm, pcr, &format!("event {pcr}"));
        }
    }
    // The trial session refuses what the pure function refuses.
    assert!(tpm.pcr_policy_digest(&[]).is_err());
    assert!(tpm.pcr_policy_digest(&[15, 10]).is_err());
    assert!(tpm.pcr_policy_digest(&[24]).is_err());
}
