//! AES-256-GCM engines behind one trait, so the data plane can use the fastest library here
//! (aws-lc-rs), a second native one (ring) or a pure-Rust one (RustCrypto aes-gcm), and a
//! DPU's hardware engine later. Each engine seals and opens in place with a detached tag.

use std::fmt;

/// Sealing failed (buffer too large for the library) or a tag did not verify. Carries
/// nothing: callers count it as an authentication failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("AES-GCM failure")]
pub struct AeadError;

/// One packet of a batch: nonce, AAD, the buffer sealed in place, where the tag goes.
pub type SealJob<'a> = (&'a [u8; 12], &'a [u8], &'a mut [u8], &'a mut [u8; 16]);

/// The AEAD of one SA direction.
pub trait Aead: Send + Sync {
    /// Encrypt `buf` in place; returns the 16-byte tag.
    fn seal(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16], AeadError>;
    /// Check the tag at the end of `ct_tag` (ciphertext ‖ 16-byte tag) and decrypt in place;
    /// returns the plaintext length. On failure the buffer is unspecified.
    fn open(&self, nonce: [u8; 12], aad: &[u8], ct_tag: &mut [u8]) -> Result<usize, AeadError>;

    /// Seal several packets with one call (engines with a native batch path override it).
    fn seal_batch(&self, jobs: &mut [SealJob<'_>]) -> Result<(), AeadError> {
        for (nonce, aad, buf, tag) in jobs.iter_mut() {
            **tag = self.seal(**nonce, aad, buf)?;
        }
        Ok(())
    }
}

/// Which library does the AES-GCM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Engine {
    /// aws-lc-rs: the fastest here (docs/performance.md); the default.
    #[default]
    AwsLc,
    Ring,
    /// RustCrypto aes-gcm: pure Rust, portable.
    RustCrypto,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::AwsLc, Engine::Ring, Engine::RustCrypto];

    pub fn name(self) -> &'static str {
        match self {
            Engine::AwsLc => "aws-lc-rs",
            Engine::Ring => "ring",
            Engine::RustCrypto => "aes-gcm",
        }
    }

    /// An AES-256-GCM instance for `key`.
    pub fn key(self, key: &[u8; 32]) -> Box<dyn Aead> {
        match self {
            Engine::AwsLc => Box::new(AwsLc(aws_lc_rs::aead::LessSafeKey::new(
                aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, key)
                    .unwrap_or_else(|_| unreachable_key()),
            ))),
            Engine::Ring => Box::new(Ring(ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
                    .unwrap_or_else(|_| unreachable_key()),
            ))),
            Engine::RustCrypto => {
                use aes_gcm::KeyInit as _;
                Box::new(RustCrypto(Box::new(aes_gcm::Aes256Gcm::new(key.into()))))
            }
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Engine::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("{s:?} is not an engine: use aws-lc-rs, ring or aes-gcm"))
    }
}

#[allow(clippy::panic)] // 32 bytes is AES-256's key length in every library: cannot happen
fn unreachable_key<T>() -> T {
    panic!("AES-256-GCM accepts every 32-byte key")
}

struct AwsLc(aws_lc_rs::aead::LessSafeKey);
struct Ring(ring::aead::LessSafeKey);
struct RustCrypto(Box<aes_gcm::Aes256Gcm>);

fn tag16(t: &[u8]) -> Result<[u8; 16], AeadError> {
    t.try_into().map_err(|_| AeadError)
}

/// aws-lc-rs mirrors ring's AEAD API: one implementation for both.
macro_rules! ring_like {
    ($engine:ident, $lib:ident) => {
        impl Aead for $engine {
            fn seal(
                &self,
                nonce: [u8; 12],
                aad: &[u8],
                buf: &mut [u8],
            ) -> Result<[u8; 16], AeadError> {
                use $lib::aead::{Aad, Nonce};
                let tag = self
                    .0
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        buf,
                    )
                    .map_err(|_| AeadError)?;
                tag16(tag.as_ref())
            }

            fn open(
                &self,
                nonce: [u8; 12],
                aad: &[u8],
                ct_tag: &mut [u8],
            ) -> Result<usize, AeadError> {
                use $lib::aead::{Aad, Nonce};
                self.0
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), ct_tag)
                    .map(|p| p.len())
                    .map_err(|_| AeadError)
            }
        }
    };
}

ring_like!(AwsLc, aws_lc_rs);
ring_like!(Ring, ring);

impl Aead for RustCrypto {
    fn seal(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16], AeadError> {
        use aes_gcm::AeadInPlace as _;
        let tag = self
            .0
            .encrypt_in_place_detached(&nonce.into(), aad, buf)
            .map_err(|_| AeadError)?;
        tag16(tag.as_slice())
    }

    fn open(&self, nonce: [u8; 12], aad: &[u8], ct_tag: &mut [u8]) -> Result<usize, AeadError> {
        use aes_gcm::AeadInPlace as _;
        let len = ct_tag.len().checked_sub(16).ok_or(AeadError)?;
        let (ct, tag) = ct_tag.split_at_mut(len);
        let tag: [u8; 16] = (&*tag).try_into().map_err(|_| AeadError)?;
        self.0
            .decrypt_in_place_detached(&nonce.into(), aad, ct, &tag.into())
            .map(|()| len)
            .map_err(|_| AeadError)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn engines_agree_and_refuse_forgeries() {
        let key = [7u8; 32];
        let nonce = [1u8; 12];
        let plain: Vec<u8> = (0..1420).map(|i| i as u8).collect();
        let mut outputs = Vec::new();
        for e in Engine::ALL {
            let k = e.key(&key);
            let mut buf = plain.clone();
            let tag = k.seal(nonce, b"aad", &mut buf).unwrap();
            outputs.push((buf.clone(), tag));
            // Every engine opens every engine's output.
            let sealed: Vec<u8> = [buf.as_slice(), tag.as_slice()].concat();
            for other in Engine::ALL {
                let mut b = sealed.clone();
                let n = other.key(&key).open(nonce, b"aad", &mut b).unwrap();
                assert_eq!(&b[..n], plain.as_slice(), "{e} -> {other}");
                let mut bad = sealed.clone();
                bad[0] ^= 1;
                assert!(other.key(&key).open(nonce, b"aad", &mut bad).is_err());
                let mut b = sealed.clone();
                assert!(other.key(&key).open(nonce, b"aaD", &mut b).is_err());
                assert!(other.key(&key).open(nonce, b"aad", &mut [0u8; 15]).is_err());
            }
            assert_eq!(e.name().parse::<Engine>().unwrap(), e);
        }
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
        // The batch path gives the same as one by one.
        let k = Engine::Ring.key(&key);
        let (mut a, mut b) = (plain.clone(), plain.clone());
        let (mut ta, mut tb) = ([0u8; 16], [0u8; 16]);
        let n2 = [2u8; 12];
        k.seal_batch(&mut [
            (&nonce, b"aad", &mut a, &mut ta),
            (&n2, b"x", &mut b, &mut tb),
        ])
        .unwrap();
        assert_eq!((a, ta), outputs[0].clone());
        let mut c = plain.clone();
        assert_eq!(k.seal(n2, b"x", &mut c).unwrap(), tb);
        assert!("openssl".parse::<Engine>().is_err());
        assert_eq!(Engine::default(), Engine::AwsLc);
    }
}
