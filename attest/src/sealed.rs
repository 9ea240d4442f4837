//! Sealing under a signed PCR policy, the pure half (no TPM): the on-disk blob, the policy
//! authority that approves PCR states, and the policy digests the TPM will compute.
//!
//! The pattern is systemd-pcrlock's: the secret is sealed once to "whatever PCR policy the
//! authority signs" (TPM2_PolicyAuthorize), and the authority later signs a TPM2_PolicyPCR
//! digest for each PCR state it accepts — including a *future* state, computed here without a
//! TPM, before a signed firmware update changes the measurements. No re-sealing is needed.
//!
//! ```text
//!   authority (offline)                            appliance (tpm::Tpm)
//!   PolicyAuthority::generate ── public_sec1 ──►   seal(secret, public) ──► SealedBlob ──► disk
//!   policy_pcr_digest(future PCR values)
//!     └─ approve(pcrs, digest, ref) ──► SignedPolicy (JSON, shipped with the update)
//!                                                  unseal(blob, SignedPolicy, public)
//!                                                    software verify ─► TPM2_VerifySignature
//!                                                    ─► PolicyPCR(current) ─► PolicyAuthorize
//!                                                    ─► TPM2_Unseal ──► secret
//! ```
//!
//! What is signed is exactly what TPM2_PolicyAuthorize checks (TCG TPM 2.0 Library Part 3,
//! §23.16): `aHash = H(approvedPolicy ‖ policyRef)`, as an ECDSA-P256-SHA256 signature that
//! TPM2_VerifySignature turns into a ticket. `SignedPolicy::pcrs` is *not* covered by the
//! signature (the TPM cannot check it); it only tells the appliance which PCRs to select, and a
//! wrong selection yields a different PolicyPCR digest, which the TPM refuses.

use std::collections::BTreeMap;

use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::alg::HashAlg;
use crate::codec::{DecodeError, Reader};
use crate::tpm2::{self, PcrSelection};

/// Magic and format version of [`SealedBlob::to_bytes`].
pub const BLOB_MAGIC: [u8; 4] = *b"WSB1";
/// Largest marshalled TPMT_PUBLIC accepted in a blob (a sealed KeyedHash object's is 78 bytes;
/// the TPM's own limit, sizeof(TPMT_PUBLIC), is below this).
pub const MAX_BLOB_PUBLIC: usize = 1024;
/// Largest TPM2B_PRIVATE buffer accepted in a blob (a 128-byte sealed secret makes about 200).
pub const MAX_BLOB_PRIVATE: usize = 1024;
/// Largest secret a sealed data object holds (TPM2B_SENSITIVE_DATA, MAX_SYM_DATA = 128).
pub const MAX_SECRET: usize = 128;
/// Largest policyRef (a TPM2B_NONCE: sizeof(TPMU_HA) = 64 bytes).
pub const MAX_POLICY_REF: usize = 64;
/// Largest signed-policy JSON document [`SignedPolicy::from_json`] parses.
pub const MAX_POLICY_JSON: usize = 4096;
/// PCR indices a policy may select (PC Client TPMs have 24; TCG PC Client PTP §4.6).
pub const PCR_COUNT: u8 = 24;

/// TPM_CC_PolicyPCR (Part 2, Table 12).
const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
/// TPM_CC_PolicyAuthorize (Part 2, Table 12).
const TPM_CC_POLICY_AUTHORIZE: u32 = 0x0000_016A;
/// TPMA_OBJECT `sign` (Part 2, §8.3): the authority key is a verify-only public key.
const AUTHORITY_ATTRIBUTES: u32 = tpm2::attrs::SIGN;
/// SHA-256 digest length, the policy session's and the PCR bank's hash.
const DIGEST_LEN: usize = 32;
/// Uncompressed SEC1 P-256 point: 0x04 ‖ x ‖ y.
const SEC1_LEN: usize = 65;

/// What was wrong with a key, policy or PCR value. Never carries key bytes or secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealedError {
    #[error("authority public key: {reason}")]
    AuthorityPublicKey { reason: &'static str },
    #[error("authority private key: not a PKCS#8 ECDSA P-256 key ({reason})")]
    AuthorityPrivateKey { reason: String },
    #[error("signed policy: {field}: {reason}")]
    InvalidPolicy { field: &'static str, reason: String },
    #[error("PCR values: {reason}")]
    InvalidPcrValues { reason: String },
    #[error("signed policy: the signature does not verify under the authority key")]
    BadSignature,
    #[error("signed policy JSON: {0}")]
    Json(String),
    #[error("the ECDSA signer or the system random number generator failed")]
    Crypto,
}

// ---------------------------------------------------------------------------------------------
// The sealed blob
// ---------------------------------------------------------------------------------------------

/// A sealed data object as the TPM returned it from TPM2_Create: its public area and its
/// private area (encrypted and integrity-protected by the parent storage key). Useless outside
/// the TPM that made it.
///
/// On disk ([`SealedBlob::to_bytes`]), all integers big-endian:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `"WSB1"` (the digit is the format version) |
/// | 4 | 2 + P | TPM2B_PUBLIC: size P (1..=1024), then the marshalled TPMT_PUBLIC |
/// | 6 + P | 2 + Q | TPM2B_PRIVATE: size Q (1..=1024), then the private buffer |
///
/// Nothing may follow. The fields are private so that every `SealedBlob` fits the format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedBlob {
    public: Vec<u8>,
    private: Vec<u8>,
}

impl SealedBlob {
    /// A blob from the marshalled TPMT_PUBLIC and the TPM2B_PRIVATE buffer contents; each must
    /// be non-empty and within [`MAX_BLOB_PUBLIC`] / [`MAX_BLOB_PRIVATE`].
    pub fn new(public: Vec<u8>, private: Vec<u8>) -> Result<Self, DecodeError> {
        check_part(&public, MAX_BLOB_PUBLIC, "public")?;
        check_part(&private, MAX_BLOB_PRIVATE, "private")?;
        Ok(SealedBlob { public, private })
    }

    /// The sealed object's marshalled TPMT_PUBLIC.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The sealed object's TPM2B_PRIVATE buffer (without its size prefix).
    pub fn private(&self) -> &[u8] {
        &self.private
    }

    /// The on-disk form (see the type's documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.public.len() + self.private.len());
        out.extend_from_slice(&BLOB_MAGIC);
        for part in [&self.public, &self.private] {
            // `new` bounds both parts to 1024 bytes, so the length fits a u16.
            let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Parse the on-disk form. The bytes are untrusted: lengths are checked against the limits
    /// before anything is copied, and trailing bytes are refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        const MAX_TOTAL: usize = BLOB_MAGIC.len() + 2 + MAX_BLOB_PUBLIC + 2 + MAX_BLOB_PRIVATE;
        if bytes.len() > MAX_TOTAL {
            return Err(DecodeError::TooLong {
                field: "sealed blob",
                offset: 0,
                len: bytes.len(),
                max: MAX_TOTAL,
            });
        }
        let mut r = Reader::new(bytes);
        if r.take(BLOB_MAGIC.len(), "magic")? != BLOB_MAGIC {
            return Err(DecodeError::Invalid {
                field: "magic",
                offset: 0,
                reason: "not a Warden sealed blob (expected \"WSB1\")",
            });
        }
        let public_at = r.offset();
        let public = r.tpm2b(MAX_BLOB_PUBLIC, "public")?;
        let private_at = r.offset();
        let private = r.tpm2b(MAX_BLOB_PRIVATE, "private")?;
        r.finish("sealed blob")?;
        for (part, field, offset) in [
            (public, "public", public_at),
            (private, "private", private_at),
        ] {
            if part.is_empty() {
                return Err(DecodeError::Invalid {
                    field,
                    offset,
                    reason: "empty",
                });
            }
        }
        Ok(SealedBlob {
            public: public.to_vec(),
            private: private.to_vec(),
        })
    }
}

fn check_part(part: &[u8], max: usize, field: &'static str) -> Result<(), DecodeError> {
    if part.is_empty() {
        return Err(DecodeError::Invalid {
            field,
            offset: 0,
            reason: "empty",
        });
    }
    if part.len() > max {
        return Err(DecodeError::TooLong {
            field,
            offset: 0,
            len: part.len(),
            max,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Policy digests (TCG TPM 2.0 Library Part 3, §23)
// ---------------------------------------------------------------------------------------------

/// The policy digest a SHA-256 policy session holds after TPM2_PolicyPCR over `values`
/// (SHA-256 bank, PCR index → 32-byte value), starting from the all-zero digest.
///
/// Part 3 §23.7: `policyDigest_new = H(policyDigest_old ‖ TPM_CC_PolicyPCR ‖ pcrs ‖ digestTPM)`
/// with `pcrs` the marshalled TPML_PCR_SELECTION (one SHA-256 bank, sizeofSelect 3, as
/// tss-esapi sends it) and `digestTPM = H(values in ascending PCR order)`.
pub fn policy_pcr_digest(values: &BTreeMap<u8, Vec<u8>>) -> Result<[u8; 32], SealedError> {
    let pcrs: Vec<u8> = values.keys().copied().collect();
    check_pcr_indices(&pcrs).map_err(|reason| SealedError::InvalidPcrValues { reason })?;
    if let Some((pcr, v)) = values.iter().find(|(_, v)| v.len() != DIGEST_LEN) {
        return Err(SealedError::InvalidPcrValues {
            reason: format!("PCR {pcr}: {} bytes, a SHA-256 value has 32", v.len()),
        });
    }
    let parts: Vec<&[u8]> = values.values().map(Vec::as_slice).collect();
    let digest_tpm = HashAlg::Sha256.digest(&parts);
    let mut selection = Vec::new();
    PcrSelection::single(HashAlg::Sha256, &pcrs).encode(&mut selection);
    Ok(sha256(&[
        &[0u8; DIGEST_LEN],
        &TPM_CC_POLICY_PCR.to_be_bytes(),
        &selection,
        &digest_tpm,
    ]))
}

/// The policy digest after TPM2_PolicyAuthorize by the key named `authority_name` with
/// `policy_ref` — the authPolicy of an object sealed to that authority.
///
/// Part 3 §23.16: the session digest is reset to zero, then PolicyUpdate:
/// `d = H(0…0 ‖ TPM_CC_PolicyAuthorize ‖ keySign.name)`, `policyDigest = H(d ‖ policyRef)`
/// (the second hash is taken even for an empty policyRef).
pub fn policy_authorize_digest(authority_name: &[u8], policy_ref: &[u8]) -> [u8; 32] {
    let d = sha256(&[
        &[0u8; DIGEST_LEN],
        &TPM_CC_POLICY_AUTHORIZE.to_be_bytes(),
        authority_name,
    ]);
    sha256(&[&d, policy_ref])
}

/// The authority's public key as the TPMT_PUBLIC that TPM2_LoadExternal loads: ECC NIST P-256,
/// nameAlg SHA-256, attributes `sign` only (a verify-only public key: not restricted, no
/// fixedTPM/fixedParent, no userWithAuth — nothing ever authorizes with it), empty authPolicy,
/// symmetric NULL, scheme ECDSA-SHA256, KDF NULL, unique = (x, y) of 32 bytes each.
pub fn authority_tpm_public(public_sec1: &[u8]) -> Result<Vec<u8>, SealedError> {
    let (x, y) = sec1_coordinates(public_sec1)?;
    let mut out = Vec::with_capacity(0x56);
    out.extend_from_slice(&tpm2::ALG_ECC.to_be_bytes());
    out.extend_from_slice(&HashAlg::Sha256.tpm_id().to_be_bytes());
    out.extend_from_slice(&AUTHORITY_ATTRIBUTES.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // authPolicy: empty
    out.extend_from_slice(&tpm2::ALG_NULL.to_be_bytes()); // symmetric
    out.extend_from_slice(&tpm2::ALG_ECDSA.to_be_bytes()); // scheme
    out.extend_from_slice(&HashAlg::Sha256.tpm_id().to_be_bytes()); // scheme hash
    out.extend_from_slice(&tpm2::ECC_NIST_P256.to_be_bytes()); // curveID
    out.extend_from_slice(&tpm2::ALG_NULL.to_be_bytes()); // kdf
    for coordinate in [x, y] {
        out.extend_from_slice(&(DIGEST_LEN as u16).to_be_bytes());
        out.extend_from_slice(coordinate);
    }
    Ok(out)
}

/// The authority key's TPM name (Part 1 §16): `TPM_ALG_SHA256 ‖ SHA-256(TPMT_PUBLIC)`, 34 bytes.
pub fn authority_name(public_sec1: &[u8]) -> Result<Vec<u8>, SealedError> {
    let public = authority_tpm_public(public_sec1)?;
    let mut name = HashAlg::Sha256.tpm_id().to_be_bytes().to_vec();
    name.extend_from_slice(&sha256(&[&public]));
    Ok(name)
}

/// x and y of an uncompressed SEC1 P-256 point. Whether the point is on the curve is checked
/// where it is used: by ring when verifying, by the TPM in TPM2_LoadExternal.
fn sec1_coordinates(public_sec1: &[u8]) -> Result<(&[u8], &[u8]), SealedError> {
    let fail = |reason| SealedError::AuthorityPublicKey { reason };
    if public_sec1.len() != SEC1_LEN {
        return Err(fail("not 65 bytes (an uncompressed SEC1 P-256 point)"));
    }
    match public_sec1.split_first() {
        Some((0x04, xy)) => Ok(xy.split_at(DIGEST_LEN)),
        _ => Err(fail(
            "not an uncompressed SEC1 point (first byte is not 0x04)",
        )),
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let digest = HashAlg::Sha256.digest(parts);
    out.iter_mut().zip(digest).for_each(|(o, d)| *o = d);
    out
}

/// PCR indices of a policy: at least one, each below [`PCR_COUNT`], strictly ascending (one
/// canonical form per selection).
pub(crate) fn check_pcr_indices(pcrs: &[u8]) -> Result<(), String> {
    if pcrs.is_empty() {
        return Err("no PCRs selected".into());
    }
    if let Some(bad) = pcrs.iter().find(|&&p| p >= PCR_COUNT) {
        return Err(format!("PCR {bad} is out of range (0..{PCR_COUNT})"));
    }
    if pcrs.windows(2).any(|w| w.first() >= w.get(1)) {
        return Err(format!("PCR indices {pcrs:?} are not strictly ascending"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The policy authority and its signed policies
// ---------------------------------------------------------------------------------------------

/// The key that approves PCR policies: ECDSA P-256 with SHA-256, held in software (offline, by
/// whoever signs updates). Not `Clone`; its `Debug` shows only the public key.
pub struct PolicyAuthority {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for PolicyAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyAuthority")
            .field("public_sec1", &hex::encode(self.public_sec1()))
            .finish_non_exhaustive()
    }
}

impl PolicyAuthority {
    /// A fresh key. Returns it with its PKCS#8 v1 document (zeroized on drop), which is what
    /// must be stored to sign again later ([`PolicyAuthority::from_pkcs8`]).
    pub fn generate() -> Result<(PolicyAuthority, Zeroizing<Vec<u8>>), SealedError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| SealedError::Crypto)?;
        let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
        let authority = PolicyAuthority::from_pkcs8(&pkcs8)?;
        Ok((authority, pkcs8))
    }

    /// The key from a PKCS#8 document (as [`PolicyAuthority::generate`] returns it).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<PolicyAuthority, SealedError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng).map_err(
            |e| SealedError::AuthorityPrivateKey {
                reason: e.to_string(),
            },
        )?;
        Ok(PolicyAuthority { key, rng })
    }

    /// The public key, uncompressed SEC1 (65 bytes: 0x04 ‖ x ‖ y).
    pub fn public_sec1(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Approve a PolicyPCR digest over `pcrs` (SHA-256 bank, strictly ascending) with
    /// `policy_ref` (≤ 64 bytes; objects sealed by [`crate::tpm::Tpm::seal`] expect it empty).
    /// Signs `aHash = SHA-256(policy_digest ‖ policy_ref)` (Part 3 §23.16).
    pub fn approve(
        &self,
        pcrs: &[u8],
        policy_digest: &[u8],
        policy_ref: &[u8],
    ) -> Result<SignedPolicy, SealedError> {
        let mut policy = SignedPolicy {
            pcrs: pcrs.to_vec(),
            policy_digest: policy_digest.to_vec(),
            policy_ref: policy_ref.to_vec(),
            signature_r: [0; 32],
            signature_s: [0; 32],
        };
        policy.check_shape()?;
        let signature = self
            .key
            .sign(&self.rng, &policy.signed_message())
            .map_err(|_| SealedError::Crypto)?;
        // ECDSA_P256_SHA256_FIXED: r ‖ s, 32 bytes each.
        let (r, s) = signature
            .as_ref()
            .split_at_checked(32)
            .ok_or(SealedError::Crypto)?;
        policy.signature_r = r.try_into().map_err(|_| SealedError::Crypto)?;
        policy.signature_s = s.try_into().map_err(|_| SealedError::Crypto)?;
        Ok(policy)
    }

    /// Approve the PCR state `values` (SHA-256 bank: index → value), present or future:
    /// [`policy_pcr_digest`], then [`PolicyAuthority::approve`].
    pub fn approve_pcr_values(
        &self,
        values: &BTreeMap<u8, Vec<u8>>,
        policy_ref: &[u8],
    ) -> Result<SignedPolicy, SealedError> {
        let digest = policy_pcr_digest(values)?;
        let pcrs: Vec<u8> = values.keys().copied().collect();
        self.approve(&pcrs, &digest, policy_ref)
    }
}

/// A PolicyPCR digest approved by a [`PolicyAuthority`]. Distributed as JSON with updates
/// (byte strings in lower-case hex, unknown fields refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPolicy {
    /// PCR indices (SHA-256 bank), strictly ascending. Not signed: it selects the PCRs whose
    /// current values the TPM hashes; a wrong selection gives a digest the TPM refuses.
    pub pcrs: Vec<u8>,
    /// The approved TPM2_PolicyPCR digest (SHA-256, 32 bytes).
    #[serde(with = "hex_vec")]
    pub policy_digest: Vec<u8>,
    /// policyRef (≤ 64 bytes).
    #[serde(with = "hex_vec")]
    pub policy_ref: Vec<u8>,
    /// ECDSA signature over SHA-256(policy_digest ‖ policy_ref), r and s left-padded.
    #[serde(with = "hex_32")]
    pub signature_r: [u8; 32],
    #[serde(with = "hex_32")]
    pub signature_s: [u8; 32],
}

impl SignedPolicy {
    /// The bytes whose SHA-256 is aHash: `policy_digest ‖ policy_ref`.
    pub fn signed_message(&self) -> Vec<u8> {
        [self.policy_digest.as_slice(), &self.policy_ref].concat()
    }

    /// aHash (Part 3 §23.16), the digest TPM2_VerifySignature checks.
    pub fn a_hash(&self) -> [u8; 32] {
        sha256(&[&self.policy_digest, &self.policy_ref])
    }

    /// Check everything in software: PCR indices canonical, a 32-byte digest, a policyRef of
    /// at most 64 bytes, and the signature under `authority_public_sec1`.
    pub fn verify(&self, authority_public_sec1: &[u8]) -> Result<(), SealedError> {
        self.check_shape()?;
        sec1_coordinates(authority_public_sec1)?;
        let signature = [self.signature_r.as_slice(), &self.signature_s].concat();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, authority_public_sec1)
            .verify(&self.signed_message(), &signature)
            .map_err(|_| SealedError::BadSignature)
    }

    /// Parse the JSON form, refusing documents over [`MAX_POLICY_JSON`] bytes before parsing.
    /// The result is not yet verified.
    pub fn from_json(json: &[u8]) -> Result<SignedPolicy, SealedError> {
        if json.len() > MAX_POLICY_JSON {
            return Err(SealedError::Json(format!(
                "{} bytes, more than {MAX_POLICY_JSON}",
                json.len()
            )));
        }
        serde_json::from_slice(json).map_err(|e| SealedError::Json(e.to_string()))
    }

    /// The JSON form.
    pub fn to_json(&self) -> Result<String, SealedError> {
        serde_json::to_string_pretty(self).map_err(|e| SealedError::Json(e.to_string()))
    }

    fn check_shape(&self) -> Result<(), SealedError> {
        let invalid = |field, reason| SealedError::InvalidPolicy { field, reason };
        check_pcr_indices(&self.pcrs).map_err(|reason| invalid("pcrs", reason))?;
        if self.policy_digest.len() != DIGEST_LEN {
            return Err(invalid(
                "policy_digest",
                format!(
                    "{} bytes, a SHA-256 digest has 32",
                    self.policy_digest.len()
                ),
            ));
        }
        if self.policy_ref.len() > MAX_POLICY_REF {
            return Err(invalid(
                "policy_ref",
                format!("{} bytes, at most {MAX_POLICY_REF}", self.policy_ref.len()),
            ));
        }
        Ok(())
    }
}

mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

mod hex_32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| serde::de::Error::custom(format!("{} bytes, expected 32", bytes.len())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use proptest::prelude::*;

    fn blob() -> SealedBlob {
        SealedBlob::new(vec![0xAA; 78], vec![0xBB; 200]).unwrap()
    }

    #[test]
    fn blob_round_trips() {
        let b = blob();
        let bytes = b.to_bytes();
        assert_eq!(&bytes[..4], b"WSB1");
        assert_eq!(&bytes[4..6], &[0, 78]);
        assert_eq!(bytes.len(), 4 + 2 + 78 + 2 + 200);
        assert_eq!(SealedBlob::from_bytes(&bytes).unwrap(), b);
    }

    #[test]
    fn blob_rejects_truncation_at_every_length() {
        let bytes = blob().to_bytes();
        for n in 0..bytes.len() {
            assert!(
                SealedBlob::from_bytes(&bytes[..n]).is_err(),
                "accepted a blob truncated to {n} bytes"
            );
        }
    }

    #[test]
    fn blob_rejects_trailing_bytes() {
        let mut bytes = blob().to_bytes();
        bytes.push(0);
        assert!(matches!(
            SealedBlob::from_bytes(&bytes),
            Err(DecodeError::TrailingBytes { count: 1, .. })
        ));
    }

    #[test]
    fn blob_rejects_bad_magic_and_other_versions() {
        for magic in [b"WSB0", b"WSB2", b"wsb1", b"\0\0\0\0"] {
            let mut bytes = blob().to_bytes();
            bytes[..4].copy_from_slice(magic);
            assert!(matches!(
                SealedBlob::from_bytes(&bytes),
                Err(DecodeError::Invalid { field: "magic", .. })
            ));
        }
    }

    #[test]
    fn blob_rejects_oversized_parts_before_reading_them() {
        // A public length of 1025 is refused from its size field alone.
        let mut bytes = b"WSB1".to_vec();
        bytes.extend_from_slice(&1025u16.to_be_bytes());
        assert!(matches!(
            SealedBlob::from_bytes(&bytes),
            Err(DecodeError::TooLong {
                field: "public",
                len: 1025,
                max: 1024,
                ..
            })
        ));
        // The largest length field (0xffff) on the private part, with no data behind it.
        let mut bytes = b"WSB1".to_vec();
        bytes.extend_from_slice(&[0, 1, 0xAA, 0xff, 0xff]);
        assert!(matches!(
            SealedBlob::from_bytes(&bytes),
            Err(DecodeError::TooLong {
                field: "private",
                ..
            })
        ));
        // A whole input beyond the largest valid blob is refused before parsing.
        let huge = vec![0u8; 4 + 2 + 1024 + 2 + 1024 + 1];
        assert!(matches!(
            SealedBlob::from_bytes(&huge),
            Err(DecodeError::TooLong {
                field: "sealed blob",
                ..
            })
        ));
        assert!(SealedBlob::new(vec![1; 1025], vec![1]).is_err());
        assert!(SealedBlob::new(vec![1], vec![1; 1025]).is_err());
        // The largest blob is accepted.
        let max = SealedBlob::new(vec![1; 1024], vec![2; 1024]).unwrap();
        assert_eq!(SealedBlob::from_bytes(&max.to_bytes()).unwrap(), max);
    }

    #[test]
    fn blob_rejects_empty_parts() {
        assert!(SealedBlob::new(vec![], vec![1]).is_err());
        assert!(SealedBlob::new(vec![1], vec![]).is_err());
        assert!(matches!(
            SealedBlob::from_bytes(b"WSB1\0\0\0\x01\x01"),
            Err(DecodeError::Invalid {
                field: "public",
                ..
            })
        ));
        assert!(matches!(
            SealedBlob::from_bytes(b"WSB1\0\x01\x01\0\0"),
            Err(DecodeError::Invalid {
                field: "private",
                offset: 7,
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn blob_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2200)) {
            let _ = SealedBlob::from_bytes(&bytes);
        }

        #[test]
        fn blob_parser_never_panics_behind_a_valid_magic(
            tail in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            let bytes = [b"WSB1".as_slice(), &tail].concat();
            if let Ok(b) = SealedBlob::from_bytes(&bytes) {
                prop_assert_eq!(b.to_bytes(), bytes);
            }
        }

        #[test]
        fn blob_round_trips_any_valid_parts(
            public in proptest::collection::vec(any::<u8>(), 1..=1024),
            private in proptest::collection::vec(any::<u8>(), 1..=1024),
        ) {
            let b = SealedBlob::new(public, private).unwrap();
            prop_assert_eq!(SealedBlob::from_bytes(&b.to_bytes()).unwrap(), b);
        }
    }

    fn values(pcrs: &[(u8, u8)]) -> BTreeMap<u8, Vec<u8>> {
        pcrs.iter().map(|&(p, v)| (p, vec![v; 32])).collect()
    }

    /// The PolicyPCR digest written out by hand from Part 3 §23.7 for PCR 15 = 0…0:
    /// selection = count 1, TPM_ALG_SHA256, sizeofSelect 3, bitmap 00 80 00.
    #[test]
    fn policy_pcr_digest_follows_the_spec_layout() {
        let got = policy_pcr_digest(&values(&[(15, 0)])).unwrap();
        let selection = [0, 0, 0, 1, 0x00, 0x0B, 3, 0x00, 0x80, 0x00];
        let digest_tpm = sha256(&[&[0u8; 32]]);
        let want = sha256(&[&[0u8; 32], &[0, 0, 1, 0x7F], &selection, &digest_tpm]);
        assert_eq!(got, want);
        // Different values or PCRs give different digests.
        assert_ne!(got, policy_pcr_digest(&values(&[(15, 1)])).unwrap());
        assert_ne!(got, policy_pcr_digest(&values(&[(14, 0)])).unwrap());
    }

    #[test]
    fn policy_pcr_digest_checks_its_input() {
        assert!(policy_pcr_digest(&BTreeMap::new()).is_err());
        assert!(policy_pcr_digest(&values(&[(24, 0)])).is_err());
        let mut short = values(&[(7, 0)]);
        short.insert(8, vec![0; 20]);
        let err = policy_pcr_digest(&short).unwrap_err().to_string();
        assert!(err.contains("PCR 8"), "{err}");
    }

    #[test]
    fn policy_authorize_digest_follows_the_spec_layout() {
        let name = [0xAB; 34];
        let d = sha256(&[&[0u8; 32], &[0, 0, 1, 0x6A], &name]);
        assert_eq!(policy_authorize_digest(&name, b""), sha256(&[&d]));
        assert_eq!(policy_authorize_digest(&name, b"r"), sha256(&[&d, b"r"]));
    }

    #[test]
    fn authority_public_decodes_as_a_tpmt_public_with_the_same_name() {
        let (authority, _) = PolicyAuthority::generate().unwrap();
        let sec1 = authority.public_sec1();
        let bytes = authority_tpm_public(sec1).unwrap();
        let public = tpm2::Public::decode(&bytes).unwrap();
        assert_eq!(public.name_alg, 0x000B);
        assert!(public.has(tpm2::attrs::SIGN));
        assert!(!public.has(tpm2::attrs::RESTRICTED));
        assert_eq!(public.scheme.scheme, tpm2::ALG_ECDSA);
        match &public.key {
            tpm2::PublicKey::Ecc { curve, x, y } => {
                assert_eq!(*curve, tpm2::ECC_NIST_P256);
                assert_eq!([&[4u8][..], x, y].concat(), sec1);
            }
            other => panic!("{other:?}"),
        }
        let name = authority_name(sec1).unwrap();
        assert_eq!(name.len(), 34);
        assert_eq!(public.name().unwrap(), name);
    }

    #[test]
    fn authority_public_key_shape_is_checked() {
        assert!(authority_name(&[4; 64]).is_err());
        assert!(authority_name(&[2; 65]).is_err());
        assert!(authority_name(&[]).is_err());
    }

    #[test]
    fn approved_policy_verifies_and_survives_json() {
        let (authority, pkcs8) = PolicyAuthority::generate().unwrap();
        let policy = authority
            .approve_pcr_values(&values(&[(10, 1), (15, 2)]), b"")
            .unwrap();
        assert_eq!(policy.pcrs, vec![10, 15]);
        policy.verify(authority.public_sec1()).unwrap();
        let json = policy.to_json().unwrap();
        let back = SignedPolicy::from_json(json.as_bytes()).unwrap();
        assert_eq!(back, policy);
        back.verify(authority.public_sec1()).unwrap();
        // The same key, reloaded from PKCS#8, signs policies the old public key accepts.
        let again = PolicyAuthority::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(again.public_sec1(), authority.public_sec1());
        let p2 = again.approve(&[7], &[9; 32], b"ref").unwrap();
        p2.verify(authority.public_sec1()).unwrap();
    }

    #[test]
    fn every_signed_field_and_the_key_are_checked() {
        let (authority, _) = PolicyAuthority::generate().unwrap();
        let (other, _) = PolicyAuthority::generate().unwrap();
        let policy = authority.approve(&[10, 15], &[7; 32], b"").unwrap();
        let key = authority.public_sec1();
        assert!(matches!(
            policy.verify(other.public_sec1()),
            Err(SealedError::BadSignature)
        ));
        let mut p = policy.clone();
        p.policy_digest[0] ^= 1;
        assert!(matches!(p.verify(key), Err(SealedError::BadSignature)));
        let mut p = policy.clone();
        p.policy_ref = b"x".to_vec();
        assert!(matches!(p.verify(key), Err(SealedError::BadSignature)));
        let mut p = policy.clone();
        p.signature_r[31] ^= 1;
        assert!(matches!(p.verify(key), Err(SealedError::BadSignature)));
        let mut p = policy.clone();
        p.signature_s = [0; 32];
        assert!(matches!(p.verify(key), Err(SealedError::BadSignature)));
        assert!(matches!(
            policy.verify(&key[..64]),
            Err(SealedError::AuthorityPublicKey { .. })
        ));
    }

    #[test]
    fn malformed_policies_are_refused_before_the_signature() {
        let (authority, _) = PolicyAuthority::generate().unwrap();
        let key = authority.public_sec1();
        for (pcrs, digest, policy_ref, field) in [
            (vec![], vec![0; 32], vec![], "pcrs"),
            (vec![24], vec![0; 32], vec![], "pcrs"),
            (vec![15, 10], vec![0; 32], vec![], "pcrs"),
            (vec![10, 10], vec![0; 32], vec![], "pcrs"),
            (vec![10], vec![0; 31], vec![], "policy_digest"),
            (vec![10], vec![0; 48], vec![], "policy_digest"),
            (vec![10], vec![0; 32], vec![0; 65], "policy_ref"),
        ] {
            let err = authority.approve(&pcrs, &digest, &policy_ref).unwrap_err();
            assert!(
                matches!(err, SealedError::InvalidPolicy { field: f, .. } if f == field),
                "{err}"
            );
            let p = SignedPolicy {
                pcrs,
                policy_digest: digest,
                policy_ref,
                signature_r: [1; 32],
                signature_s: [1; 32],
            };
            assert!(matches!(
                p.verify(key),
                Err(SealedError::InvalidPolicy { field: f, .. }) if f == field
            ));
        }
    }

    #[test]
    fn policy_json_is_strict() {
        let (authority, _) = PolicyAuthority::generate().unwrap();
        let policy = authority.approve(&[15], &[1; 32], b"").unwrap();
        let mut value: serde_json::Value =
            serde_json::from_str(&policy.to_json().unwrap()).unwrap();
        value["extra"] = serde_json::json!(1);
        assert!(SignedPolicy::from_json(value.to_string().as_bytes()).is_err());
        let mut value: serde_json::Value =
            serde_json::from_str(&policy.to_json().unwrap()).unwrap();
        value["signature_r"] = serde_json::json!("00ff");
        assert!(SignedPolicy::from_json(value.to_string().as_bytes()).is_err());
        assert!(SignedPolicy::from_json(&vec![b' '; MAX_POLICY_JSON + 1]).is_err());
    }

    #[test]
    fn authority_debug_shows_no_private_key() {
        let (authority, pkcs8) = PolicyAuthority::generate().unwrap();
        let debug = format!("{authority:?}");
        assert!(debug.contains(&hex::encode(authority.public_sec1())));
        // ring's P-256 PKCS#8 v1 document: a 36-byte header, then the 32-byte private scalar.
        let scalar = hex::encode(&pkcs8[36..68]);
        assert!(!debug.contains(&scalar[..16]) && !debug.contains(&scalar[16..32]));
    }
}
