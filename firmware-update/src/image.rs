//! Streaming image verification: the image is hashed as it is written to its slot, and never
//! read past the signed length, so an endless or oversized image costs at most length + 1 bytes.

use ring::digest::{Context, SHA256};

use crate::client::VerifiedRelease;
use crate::error::UpdateError;

/// Hashes an image as it streams by, bounded by the signed length.
pub struct ImageVerifier {
    target: String,
    expected_len: u64,
    expected_sha256: [u8; 32],
    seen: u64,
    ctx: Context,
}

impl std::fmt::Debug for ImageVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageVerifier")
            .field("target", &self.target)
            .field("expected_len", &self.expected_len)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

/// Proof that an image matched its signed length and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageVerified {
    pub target: String,
    pub length: u64,
    pub sha256: [u8; 32],
}

impl ImageVerifier {
    pub fn new(release: &VerifiedRelease) -> Self {
        ImageVerifier {
            target: release.target_name().to_owned(),
            expected_len: release.target().length,
            expected_sha256: release.target().sha256,
            seen: 0,
            ctx: Context::new(&SHA256),
        }
    }

    /// How many more bytes may be read: one past the signed length, so a longer image is seen.
    pub fn remaining_allowance(&self) -> u64 {
        (self.expected_len + 1).saturating_sub(self.seen)
    }

    /// Feed the next chunk. Fails as soon as the image is longer than signed.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), UpdateError> {
        self.seen = self.seen.saturating_add(chunk.len() as u64);
        if self.seen > self.expected_len {
            return Err(self.tampered(format!(
                "longer than the signed length {}",
                self.expected_len
            )));
        }
        self.ctx.update(chunk);
        Ok(())
    }

    /// The image ended: check its length and digest.
    pub fn finish(self) -> Result<ImageVerified, UpdateError> {
        if self.seen != self.expected_len {
            return Err(self.tampered(format!(
                "{} bytes, the signed length is {}",
                self.seen, self.expected_len
            )));
        }
        let digest = self.ctx.clone().finish();
        if digest.as_ref() != self.expected_sha256.as_slice() {
            return Err(self.tampered("SHA-256 does not match the signed digest".into()));
        }
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref().get(..32).unwrap_or(&[0u8; 32]));
        Ok(ImageVerified {
            target: self.target,
            length: self.seen,
            sha256,
        })
    }

    fn tampered(&self, reason: String) -> UpdateError {
        UpdateError::TamperedImage {
            target: self.target.clone(),
            reason,
        }
    }
}
