//! warden-firmware-update: the appliance runs only software its owners signed, never goes back
//! below its security floor, and a crash mid-update never leaves it unbootable.
//!
//! Sans-I/O core, after The Update Framework (TUF, <https://theupdateframework.github.io/specification/latest/>):
//!
//! - [`envelope`]: signed envelopes; signatures are checked over the exact bytes received.
//! - [`keys`]: signing keys (Ed25519, ECDSA P-256, or an X.509 certificate chained to a pinned CA).
//! - [`x509`]: certificate chains to a pinned root (signature, validity, key usage, path length).
//! - [`metadata`]: the roles root, targets, snapshot and timestamp.
//! - [`client`]: the update workflow (root rotation, timestamp, snapshot, targets) over a
//!   [`client::Repository`], ending in a [`client::VerifiedRelease`].
//! - [`image`]: streaming image verification against the signed length and digest.
//! - [`slots`]: A/B slots, trial boots, mark-good and fallback, as a state machine.
//! - [`sign`]: the release tool: generate keys, write and sign metadata.
//! - [`time`]: trusted time, and what happens without it.
//!
//! The TPM anti-rollback counter sits behind [`SecurityCounter`], which the appliance
//! implements over its TPM.

#![forbid(unsafe_code)]

pub mod client;
pub mod envelope;
pub mod error;
pub mod image;
pub mod keys;
pub mod metadata;
pub mod repo;
pub mod sign;
pub mod slots;
pub mod time;
pub mod x509;

pub use error::{MetadataError, UpdateError};

/// A monotonic security version counter per component (a TPM NV counter on the appliance).
/// It can only go up; the floor it gives is the lowest SVN the component may run.
pub trait SecurityCounter {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The component's current floor (0 for a component never committed).
    fn floor(&mut self, component: &str) -> Result<u64, Self::Error>;
    /// Raise the floor to `svn`; a floor already at or above `svn` is left alone.
    fn raise_to(&mut self, component: &str, svn: u64) -> Result<u64, Self::Error>;
}
