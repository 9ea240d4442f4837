//! Freshness and binding: the verifier's nonce, what the evidence is for, and which key it is
//! bound to all go into the quote's `extraData`, never into a resettable PCR.
//!
//! `extraData = SHA-256("warden-binding-v1" ‖ len(nonce) ‖ nonce ‖ len(purpose) ‖ purpose ‖
//! len(key) ‖ key)` with 2-byte big-endian lengths. The lengths make the encoding injective
//! (`SHA-256(nonce ‖ purpose ‖ key)` alone would let bytes move between fields).

use std::collections::HashMap;

use ring::rand::SecureRandom;
use thiserror::Error;

use crate::alg::HashAlg;

pub const MIN_NONCE: usize = 16;
pub const MAX_NONCE: usize = 64;
/// Purposes and bound keys are short; these limits keep the binding cheap and total.
pub const MAX_PURPOSE: usize = 64;
pub const MAX_BOUND_KEY: usize = 1024;

/// What a piece of evidence is for. Distinct purposes never produce the same binding.
pub mod purpose {
    /// A tenant (or operator) asking the appliance to prove itself over the tenant API; the bound
    /// key is the SubjectPublicKeyInfo of the API's TLS certificate.
    pub const TENANT_API: &str = "warden/tenant-api/v1";
    /// Evidence a peer or workload presents to an appliance's appraisal endpoint; the bound key
    /// is the presenter's own (e.g. an ephemeral key a released secret will be wrapped to).
    pub const APPRAISAL: &str = "warden/appraisal/v1";
    /// A tenant about to provision a key: the bound key is the one-use X25519 key the
    /// appliance issued for the upload (the key is wrapped to it, warden-keys envelope).
    pub const KEY_PROVISION: &str = "warden/keys/provision/v1";
    /// An appliance proving itself to a peer appliance on the control channel that keys the
    /// east-west SAs: the bound key is 32 bytes of that TLS session's exporter (label
    /// `EXPORTER-warden-peer-attest`, context = the challenge nonce), so the evidence cannot be
    /// relayed into another session.
    pub const PEER_CHANNEL: &str = "warden/peer-channel/v1";
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BindingError {
    #[error("nonce is {len} bytes; it must be {MIN_NONCE} to {MAX_NONCE} bytes")]
    NonceLength { len: usize },
    #[error("purpose is {len} bytes; the limit is {MAX_PURPOSE}")]
    PurposeTooLong { len: usize },
    #[error("bound key is {len} bytes; the limit is {MAX_BOUND_KEY}")]
    BoundKeyTooLong { len: usize },
    #[error("the system random number generator failed")]
    Rng,
}

/// A verifier's challenge: 16..=64 random bytes. Parsed once at the boundary.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Nonce(Vec<u8>);

impl Nonce {
    /// A fresh 32-byte nonce from the system RNG.
    pub fn random() -> Result<Self, BindingError> {
        let mut n = vec![0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut n)
            .map_err(|_| BindingError::Rng)?;
        Ok(Nonce(n))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<&[u8]> for Nonce {
    type Error = BindingError;
    fn try_from(b: &[u8]) -> Result<Self, BindingError> {
        if (MIN_NONCE..=MAX_NONCE).contains(&b.len()) {
            Ok(Nonce(b.to_vec()))
        } else {
            Err(BindingError::NonceLength { len: b.len() })
        }
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nonce({})", hex::encode(&self.0))
    }
}

/// The 32-byte value the TPM signs as `extraData`.
pub fn extra_data(
    nonce: &Nonce,
    purpose: &str,
    bound_key: &[u8],
) -> Result<[u8; 32], BindingError> {
    if purpose.len() > MAX_PURPOSE {
        return Err(BindingError::PurposeTooLong { len: purpose.len() });
    }
    if bound_key.len() > MAX_BOUND_KEY {
        return Err(BindingError::BoundKeyTooLong {
            len: bound_key.len(),
        });
    }
    let n = nonce.as_bytes();
    let lens = [n.len() as u16, purpose.len() as u16, bound_key.len() as u16].map(u16::to_be_bytes);
    let d = HashAlg::Sha256.digest(&[
        b"warden-binding-v1",
        &lens[0],
        n,
        &lens[1],
        purpose.as_bytes(),
        &lens[2],
        bound_key,
    ]);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.get(..32).unwrap_or(&[0u8; 32]));
    Ok(out)
}

/// Why a nonce could not be redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ChallengeError {
    #[error("nonce was never issued by this verifier")]
    Unknown,
    #[error("nonce expired {age_secs} s after it was issued (limit {ttl_secs} s)")]
    Expired { age_secs: u64, ttl_secs: u64 },
    #[error("nonce was already used: evidence for it is a replay")]
    Replayed,
    #[error("too many outstanding challenges ({max}); try again later")]
    Full { max: usize },
    #[error(transparent)]
    Binding(#[from] BindingError),
}

/// A proof that a nonce was issued here, is unexpired and is being used for the first time.
/// Verification takes it by value, so it cannot be used twice.
#[derive(Debug)]
pub struct FreshNonce(Nonce);

impl FreshNonce {
    pub fn nonce(&self) -> &Nonce {
        &self.0
    }

    /// For a one-shot client (like `wardctl attest`) that made the nonce itself just now and
    /// checks the answer to its own single request.
    pub fn issued_just_now(nonce: Nonce) -> Self {
        FreshNonce(nonce)
    }
}

/// Outstanding challenges of a long-running verifier: bounded, expiring, single-use.
/// Time is injected (`now` in seconds) so the logic is testable without sleeping.
#[derive(Debug)]
pub struct Challenges {
    ttl_secs: u64,
    max: usize,
    issued: HashMap<Nonce, u64>,
    used: HashMap<Nonce, u64>,
}

impl Challenges {
    pub fn new(ttl_secs: u64, max: usize) -> Self {
        Challenges {
            ttl_secs,
            max,
            issued: HashMap::new(),
            used: HashMap::new(),
        }
    }

    fn expire(&mut self, now: u64) {
        let ttl = self.ttl_secs;
        self.issued.retain(|_, t| now.saturating_sub(*t) <= ttl);
        // A used nonce is remembered for as long as it could otherwise still be redeemed.
        self.used.retain(|_, t| now.saturating_sub(*t) <= ttl);
    }

    /// Issue a fresh nonce at time `now`.
    pub fn issue(&mut self, now: u64) -> Result<Nonce, ChallengeError> {
        self.expire(now);
        if self.issued.len() >= self.max {
            return Err(ChallengeError::Full { max: self.max });
        }
        let n = Nonce::random()?;
        self.issued.insert(n.clone(), now);
        Ok(n)
    }

    /// Redeem a nonce once. A second redeem is a replay; an old one is expired.
    pub fn redeem(&mut self, nonce: &Nonce, now: u64) -> Result<FreshNonce, ChallengeError> {
        if self.used.contains_key(nonce) {
            return Err(ChallengeError::Replayed);
        }
        let Some(issued) = self.issued.remove(nonce) else {
            return Err(ChallengeError::Unknown);
        };
        let age = now.saturating_sub(issued);
        if age > self.ttl_secs {
            return Err(ChallengeError::Expired {
                age_secs: age,
                ttl_secs: self.ttl_secs,
            });
        }
        self.used.insert(nonce.clone(), issued);
        Ok(FreshNonce(nonce.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_length_limits() {
        assert!(Nonce::try_from(&[0u8; 15][..]).is_err());
        assert!(Nonce::try_from(&[0u8; 16][..]).is_ok());
        assert!(Nonce::try_from(&[0u8; 64][..]).is_ok());
        assert_eq!(
            Nonce::try_from(&[0u8; 65][..]).unwrap_err(),
            BindingError::NonceLength { len: 65 }
        );
    }

    #[test]
    fn binding_separates_fields() {
        let n = Nonce::try_from(&[1u8; 16][..]).unwrap();
        let a = extra_data(&n, "ab", b"c").unwrap();
        let b = extra_data(&n, "a", b"bc").unwrap();
        assert_ne!(a, b);
        assert_ne!(a, extra_data(&n, "ab", b"d").unwrap());
        let m = Nonce::try_from(&[2u8; 16][..]).unwrap();
        assert_ne!(a, extra_data(&m, "ab", b"c").unwrap());
        assert!(extra_data(&n, &"p".repeat(65), b"").is_err());
        assert!(extra_data(&n, "p", &[0; 1025]).is_err());
    }

    #[test]
    fn challenges_are_single_use_expire_and_are_bounded() {
        let mut c = Challenges::new(30, 2);
        let a = c.issue(100).unwrap();
        let b = c.issue(100).unwrap();
        assert_eq!(c.issue(100).unwrap_err(), ChallengeError::Full { max: 2 });
        assert!(c.redeem(&a, 110).is_ok());
        assert_eq!(c.redeem(&a, 111).unwrap_err(), ChallengeError::Replayed);
        assert!(matches!(
            c.redeem(&b, 131).unwrap_err(),
            ChallengeError::Expired { age_secs: 31, .. }
        ));
        let never = Nonce::try_from(&[9u8; 32][..]).unwrap();
        assert_eq!(c.redeem(&never, 100).unwrap_err(), ChallengeError::Unknown);
        // Expired entries free their slots.
        assert!(c.issue(200).is_ok());
        assert!(c.issue(200).is_ok());
    }
}
