//! Assembling evidence from a TPM: one quote over the requested PCRs plus what a verifier needs
//! to check it. The caller serializes TPM access (the daemon does it in one thread).

use std::collections::BTreeMap;

use thiserror::Error;

use crate::alg::HashAlg;
use crate::applog::ApplianceEvent;
use crate::binding::{self, BindingError, Nonce};
use crate::evidence::{Evidence, VERSION};
use crate::tpm::{Tpm, TpmError};
use crate::tpm2::{Attest, Attested};

/// Everything that goes into one piece of evidence.
#[derive(Debug)]
pub struct Request<'a> {
    pub ak_handle: u32,
    pub ak_public: &'a [u8],
    pub ek_certificate: Option<&'a [u8]>,
    pub nonce: &'a Nonce,
    pub purpose: &'a str,
    pub bound_key: &'a [u8],
    /// PCRs to quote in the SHA-256 bank (the appliance PCR must be among them).
    pub pcrs: &'a [u8],
    pub appliance_pcr: u8,
    pub appliance_log: &'a [ApplianceEvent],
    pub tcg_event_log: Option<&'a [u8]>,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CollectError {
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(transparent)]
    Binding(#[from] BindingError),
    #[error("PCRs kept changing between quote and read ({attempts} attempts)")]
    Unstable { attempts: u32 },
    #[error("the TPM returned a quote that does not decode: {0}")]
    BadQuote(String),
}

const ATTEMPTS: u32 = 3;

/// Quote, read the PCR values, and check they match the signed digest (an extend between the
/// two would make them disagree; then quote again, a bounded number of times).
pub fn collect(tpm: &mut Tpm, req: &Request<'_>) -> Result<Evidence, CollectError> {
    let extra = binding::extra_data(req.nonce, req.purpose, req.bound_key)?;
    let bank = HashAlg::Sha256;
    for _ in 0..ATTEMPTS {
        let quote = tpm.quote(req.ak_handle, &extra, bank, req.pcrs)?;
        let values = tpm.pcr_read(bank, req.pcrs)?;
        let attest =
            Attest::decode(&quote.attest).map_err(|e| CollectError::BadQuote(e.to_string()))?;
        let Attested::Quote {
            selection,
            pcr_digest,
        } = &attest.attested
        else {
            return Err(CollectError::BadQuote("not a quote".into()));
        };
        let mut concat = Vec::new();
        for (_, pcr) in selection.iter() {
            concat.extend_from_slice(values.get(&pcr).map(Vec::as_slice).unwrap_or_default());
        }
        if bank.digest(&[&concat]) != *pcr_digest {
            continue;
        }
        let pcrs: BTreeMap<u8, String> = values.iter().map(|(k, v)| (*k, hex::encode(v))).collect();
        return Ok(Evidence {
            version: VERSION,
            purpose: req.purpose.to_owned(),
            attest: quote.attest,
            signature: quote.signature,
            pcrs: BTreeMap::from([(bank.name().to_owned(), pcrs)]),
            ak_public: req.ak_public.to_vec(),
            ek_certificate: req.ek_certificate.map(<[u8]>::to_vec),
            tcg_event_log: req.tcg_event_log.map(<[u8]>::to_vec),
            appliance_pcr: req.appliance_pcr,
            appliance_log: req.appliance_log.to_vec(),
        });
    }
    Err(CollectError::Unstable { attempts: ATTEMPTS })
}
