//! The TPM driver: the only code in Warden that talks to a TPM (tss-esapi 7.6 over tpm2-tss).
//!
//! It produces evidence; it checks nothing an attacker controls — the verifier does. Everything
//! it returns is in TPM wire format (TCG TPM 2.0 Library Part 2, marshalled big-endian), which is
//! what the sans-I/O verifier in [`crate::tpm2`] parses:
//!
//! * [`Tpm::ensure_ak`]: the attestation key's `TPMT_PUBLIC` (no `TPM2B` size prefix);
//! * [`Tpm::quote`]: the signed `TPMS_ATTEST` bytes and the `TPMT_SIGNATURE` over them;
//! * [`Tpm::ek_certificate`]: the EK certificate DER from NV.
//!
//! A [`Tpm`] is one tpm2-tss ESYS context; it is not `Send` and commands are serialized by
//! `&mut self`. Only three transient objects fit in swtpm (NOTES.md), so every transient object
//! this module creates is flushed before the call returns, and ESYS references to persistent
//! objects are closed.
//!
//! tpm2-tss logs its own errors to stderr; `TSS2_LOG=esys+none,tcti+none` silences it (the
//! swtpm test harness sets that; `esys+none` alone leaves the TCTI loader's messages).

mod ak;
mod ek;
pub mod forge;
mod nv;
mod pcr;
mod seal;

pub use ek::EK_CERT_INDICES;
pub use nv::MAX_SVN_STEP;
pub use pcr::{MAX_EXTRA_DATA, PCR_COUNT};
pub use seal::SealError;

use std::str::FromStr;

use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::CapabilityData;
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall;
use tss_esapi::Context;

use crate::alg::HashAlg;

/// What went wrong, naming the TPM command or step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    #[error("cannot open the TPM through TCTI {tcti:?}: {reason}")]
    Tcti { tcti: String, reason: String },
    #[error("{op} failed: {source}")]
    Tss {
        op: &'static str,
        #[source]
        source: tss_esapi::Error,
    },
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument { op: &'static str, reason: String },
    /// Something already lives at the AK's persistent handle, and it is not the key asked for.
    /// It is neither used nor overwritten.
    #[error(
        "persistent handle {handle:#010x} holds an object that is not an {expected:?} \
         attestation key: {reason}"
    )]
    NotAnAk {
        handle: u32,
        expected: AkAlgorithm,
        reason: String,
    },
    #[error("{op}: unexpected answer from the TPM: {reason}")]
    Unexpected { op: &'static str, reason: String },
}

/// Shorthand for mapping a tss-esapi error to [`TpmError::Tss`] naming the command.
pub(crate) fn tss(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Tss { op, source }
}

/// Algorithm of the attestation key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum AkAlgorithm {
    /// ECC NIST P-256, ECDSA with SHA-256.
    #[serde(rename = "ecc-p256")]
    EccP256,
    /// RSA 2048 (exponent 65537), RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

/// A quote or other attestation as the TPM produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    /// Marshalled `TPMS_ATTEST`: exactly the bytes the signature covers.
    pub attest: Vec<u8>,
    /// Marshalled `TPMT_SIGNATURE`.
    pub signature: Vec<u8>,
}

/// An open TPM.
pub struct Tpm {
    ctx: Context,
    tcti: String,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm")
            .field("tcti", &self.tcti)
            .finish_non_exhaustive()
    }
}

impl Tpm {
    /// Open a TPM by TCTI name: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`,
    /// `mssim:host=…,port=…`, `tabrmd` (or `tabrmd:bus_name=…`).
    pub fn open(tcti: &str) -> Result<Tpm, TpmError> {
        let fail = |reason: String| TpmError::Tcti {
            tcti: tcti.to_owned(),
            reason,
        };
        let conf = TctiNameConf::from_str(tcti).map_err(|e| {
            fail(format!(
                "not a TCTI name (device:…, swtpm:…, mssim:…, tabrmd): {e}"
            ))
        })?;
        let ctx = Context::new(conf).map_err(|e| fail(e.to_string()))?;
        Ok(Tpm {
            ctx,
            tcti: tcti.to_owned(),
        })
    }

    /// The TCTI this TPM was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Whether a TPM handle (persistent object, NV index) exists, from TPM2_GetCapability
    /// (TPM_CAP_HANDLES lists handles at or above `handle`, in order).
    fn handle_exists(&mut self, handle: u32) -> Result<bool, TpmError> {
        let (data, _more) = self
            .ctx
            .execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, handle, 1))
            .map_err(tss("TPM2_GetCapability(handles)"))?;
        match data {
            CapabilityData::Handles(list) => {
                Ok(list.first().is_some_and(|&h| u32::from(h) == handle))
            }
            _ => Err(TpmError::Unexpected {
                op: "TPM2_GetCapability(handles)",
                reason: "answer is not a handle list".into(),
            }),
        }
    }

    /// Run `f` with an ESYS reference to the persistent key at `handle`; the reference is
    /// closed afterwards (it is metadata only: the key stays in the TPM).
    fn with_persistent<T>(
        &mut self,
        handle: u32,
        op: &'static str,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let tpm_handle =
            PersistentTpmHandle::new(handle).map_err(|_| TpmError::InvalidArgument {
                op,
                reason: format!("{handle:#010x} is not a persistent handle (0x81xxxxxx)"),
            })?;
        let mut object = self
            .ctx
            .execute_without_session(|ctx| {
                ctx.tr_from_tpm_public(TpmHandle::Persistent(tpm_handle))
            })
            .map_err(tss("Esys_TR_FromTPMPublic(persistent key)"))?;
        let result = f(&mut self.ctx, KeyHandle::from(object));
        let closed = self.ctx.tr_close(&mut object).map_err(tss("Esys_TR_Close"));
        let value = result?;
        closed?;
        Ok(value)
    }

    /// Flush a transient object, keeping the first error.
    fn flush(ctx: &mut Context, key: KeyHandle) -> Result<(), TpmError> {
        ctx.flush_context(ObjectHandle::from(key))
            .map_err(tss("TPM2_FlushContext"))
    }
}

/// Our hash identifiers to tss-esapi's.
fn hashing_algorithm(alg: HashAlg) -> HashingAlgorithm {
    match alg {
        HashAlg::Sha1 => HashingAlgorithm::Sha1,
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        HashAlg::Sha512 => HashingAlgorithm::Sha512,
    }
}

/// Marshal a tss-esapi structure to its TPM wire format.
fn marshal<T: Marshall>(value: &T, what: &'static str) -> Result<Vec<u8>, TpmError> {
    value.marshall().map_err(tss(what))
}
