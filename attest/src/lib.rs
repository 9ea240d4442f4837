//! warden-attest: what Warden is, proven through its TPM 2.0, and a fail-closed verifier that
//! tenants embed to check it.
//!
//! The pure core (everything except [`tpm`]) is sans-I/O: bytes and a `now` in, a typed verdict
//! out. It builds without system libraries (`--no-default-features`), which is how the fuzz
//! targets and tenants use it. The `tpm` feature adds the tss-esapi driver that produces evidence.
#![forbid(unsafe_code)]

pub mod alg;
pub mod applog;
pub mod binding;
pub mod codec;
#[cfg(feature = "tpm")]
pub mod collect;
pub mod ear;
pub mod eventlog;
pub mod evidence;
pub mod reference;
pub mod sealed;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod tpm2;
pub mod verify;

pub use alg::HashAlg;
pub use binding::{Challenges, FreshNonce, Nonce};
pub use evidence::Evidence;
pub use reference::ReferenceValues;
pub use verify::{verify, Check, Expected, Rejected, Verified, VerifyError};
