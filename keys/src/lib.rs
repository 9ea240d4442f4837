//! warden-keys: the tenant key vault's pure core.
//!
//! - [`secret`]: key material in memory: zeroized on drop, locked in RAM, never printed.
//! - [`envelope`]: wrapped keys (HPKE, RFC 9180) bound to an attested appliance and a
//!   challenge (provisioning) or an attestation result (release).
//!
//! Sealing at rest is the TPM's job (warden-attest `sealed`, PolicyAuthorize over PolicyPCR);
//! the vault service that ties them together lives in wardend.
#![forbid(unsafe_code)]

pub mod envelope;
pub mod secret;

pub use envelope::{
    wrap, Binding, Envelope, EnvelopeError, Expected, KeyKind, Label, Parsed, Purpose,
    RecipientKey, MAX_ENVELOPE_BYTES, SUITE,
};
pub use secret::{KeyMaterial, MAX_KEY_BYTES};
