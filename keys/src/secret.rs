//! Key material in memory: zeroized on drop, locked into RAM where the OS allows (so it is
//! never written to swap), never printed.
//!
//! `KeyMaterial` has no `Debug`, `Display`, `Clone` or `Serialize`: the only ways to see the
//! bytes are [`KeyMaterial::expose`] (for the operation that needs them) and the wrap for an
//! authorized party.

use zeroize::Zeroize;

/// Largest key or secret the vault holds (a sealed TPM object carries at most 128 bytes).
pub const MAX_KEY_BYTES: usize = 128;

/// Secret bytes.
pub struct KeyMaterial {
    bytes: Box<[u8]>,
    /// Held while the bytes are locked in RAM; unlocked on drop (after zeroizing).
    lock: Option<region::LockGuard>,
}

impl KeyMaterial {
    /// Takes ownership of `bytes` (zeroizing the source), locks them in RAM if the OS allows.
    pub fn new(mut bytes: Vec<u8>) -> KeyMaterial {
        let boxed: Box<[u8]> = bytes.clone().into_boxed_slice();
        bytes.zeroize();
        let lock = if boxed.is_empty() {
            None
        } else {
            // Best effort: RLIMIT_MEMLOCK or a missing capability may refuse it.
            region::lock(boxed.as_ptr(), boxed.len()).ok()
        };
        KeyMaterial { bytes: boxed, lock }
    }

    /// `len` random bytes from the OS.
    pub fn random(len: usize) -> Result<KeyMaterial, ring::error::Unspecified> {
        let mut bytes = vec![0u8; len];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
        Ok(KeyMaterial::new(bytes))
    }

    /// The bytes, for the operation that needs them. Do not copy them anywhere else.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether the OS locked the bytes in RAM.
    pub fn is_locked(&self) -> bool {
        self.lock.is_some()
    }

    /// A copy, deliberately named: every copy is another place to zeroize.
    pub fn duplicate(&self) -> KeyMaterial {
        KeyMaterial::new(self.bytes.to_vec())
    }

    /// Constant-time comparison.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.bytes.len() == other.len() && bool::from(self.bytes.ct_eq(other))
    }
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        self.bytes.zeroize();
        // The guard unlocks after the bytes are zero.
        self.lock.take();
    }
}

/// What a `{:?}` of a struct holding key material prints instead of it.
pub struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn material_is_taken_locked_and_compared_in_constant_time() {
        let k = KeyMaterial::new(vec![7u8; 32]);
        assert_eq!(k.expose(), &[7u8; 32]);
        assert!(k.ct_eq(&[7u8; 32]));
        assert!(!k.ct_eq(&[8u8; 32]));
        assert!(!k.ct_eq(&[7u8; 31]));
        // Root (and CI) may lock; an unprivileged process may or may not.
        if std::env::var_os("CI").is_some() {
            assert!(k.is_locked());
        }
        let r = KeyMaterial::random(32).unwrap();
        assert_eq!(r.len(), 32);
        assert!(!r.ct_eq(&[0u8; 32]));
        let d = r.duplicate();
        assert!(d.ct_eq(r.expose()));
        assert_eq!(format!("{:?}", Redacted), "<redacted>");
    }
}
