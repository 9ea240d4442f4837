//! TPM algorithm identifiers (TCG TPM 2.0 Library, Part 2, Table 9 "TPM_ALG_ID") and digests.

use std::fmt;

/// A hash algorithm Warden understands. Anything else is rejected at the boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlg {
    /// SHA-1: parsed so it can be *refused* by name; never accepted for a quote or signature.
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// TPM_ALG_ID of this hash.
    pub const fn tpm_id(self) -> u16 {
        match self {
            HashAlg::Sha1 => 0x0004,
            HashAlg::Sha256 => 0x000B,
            HashAlg::Sha384 => 0x000C,
            HashAlg::Sha512 => 0x000D,
        }
    }

    /// The hash for a TPM_ALG_ID, if it is one we know.
    pub const fn from_tpm_id(id: u16) -> Option<Self> {
        match id {
            0x0004 => Some(HashAlg::Sha1),
            0x000B => Some(HashAlg::Sha256),
            0x000C => Some(HashAlg::Sha384),
            0x000D => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    /// Digest length in bytes.
    #[allow(clippy::len_without_is_empty)] // a digest length, not a collection
    pub const fn len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// Lower-case name as used in reference files and JSON ("sha256").
    pub const fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// Parse a name as written by [`HashAlg::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(HashAlg::Sha1),
            "sha256" => Some(HashAlg::Sha256),
            "sha384" => Some(HashAlg::Sha384),
            "sha512" => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    fn ring_alg(self) -> &'static ring::digest::Algorithm {
        match self {
            HashAlg::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &ring::digest::SHA256,
            HashAlg::Sha384 => &ring::digest::SHA384,
            HashAlg::Sha512 => &ring::digest::SHA512,
        }
    }

    /// Hash the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        let mut ctx = ring::digest::Context::new(self.ring_alg());
        for p in parts {
            ctx.update(p);
        }
        ctx.finish().as_ref().to_vec()
    }

    /// TPM2_PCR_Extend semantics: `new = H(old || digest)`.
    pub fn extend(self, old: &[u8], digest: &[u8]) -> Vec<u8> {
        self.digest(&[old, digest])
    }
}

/// Equality of digests, MACs and nonces in time that depends only on the lengths (which are
/// not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(diff) == 0
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_are_refused() {
        for alg in [
            HashAlg::Sha1,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ] {
            assert_eq!(HashAlg::from_tpm_id(alg.tpm_id()), Some(alg));
            assert_eq!(HashAlg::from_name(alg.name()), Some(alg));
            assert_eq!(alg.digest(&[b"abc"]).len(), alg.len());
        }
        assert_eq!(HashAlg::from_tpm_id(0x0012), None); // SM3_256
        assert_eq!(HashAlg::from_name("md5"), None);
    }

    #[test]
    fn sha256_known_answer() {
        // FIPS 180-2 appendix B.1: SHA-256("abc").
        assert_eq!(
            hex::encode(HashAlg::Sha256.digest(&[b"a", b"bc"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
