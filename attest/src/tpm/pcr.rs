//! PCRs: read, extend, quote.

use std::collections::{BTreeMap, BTreeSet};

use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Data, Digest, DigestValues, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, SignatureScheme,
};

use super::{hashing_algorithm, marshal, tss, Quote, Tpm, TpmError};
use crate::alg::HashAlg;

/// PCRs addressable here: a PC Client TPM has 24 (TCG PC Client Platform TPM Profile §4.6),
/// and tss-esapi's default selection is 3 octets.
pub const PCR_COUNT: u8 = 24;

/// Largest qualifying data (`extraData`, a TPM2B_DATA: sizeof(TPMU_HA) = 64 bytes).
pub const MAX_EXTRA_DATA: usize = 64;

impl Tpm {
    /// Read `pcrs` of one bank: PCR index → value.
    ///
    /// TPM2_PCR_Read returns at most 8 digests per call (TPML_DIGEST), so this loops until every
    /// PCR is read, at most once per PCR. Values from different calls are not one atomic
    /// snapshot: compare them with a quote's digest before trusting them together.
    /// A bank the TPM has not allocated is an error, not an empty map.
    pub fn pcr_read(
        &mut self,
        bank: HashAlg,
        pcrs: &[u8],
    ) -> Result<BTreeMap<u8, Vec<u8>>, TpmError> {
        const OP: &str = "TPM2_PCR_Read";
        let mut remaining = pcr_set(OP, pcrs)?;
        let mut values = BTreeMap::new();
        for _ in 0..=pcrs.len() {
            if remaining.is_empty() {
                break;
            }
            let selection = selection(OP, bank, &remaining)?;
            let (_update_counter, read, digests) = self
                .ctx
                .execute_without_session(|ctx| ctx.pcr_read(selection))
                .map_err(tss(OP))?;
            let mut digests = digests.value().iter();
            let mut progressed = false;
            for sel in read.get_selections() {
                if sel.hashing_algorithm() != hashing_algorithm(bank) {
                    return Err(unexpected(format!(
                        "answered for bank {:?}",
                        sel.hashing_algorithm()
                    )));
                }
                for slot in sel.selected() {
                    let index = slot_index(slot);
                    let digest = digests
                        .next()
                        .ok_or_else(|| unexpected("fewer digests than selected PCRs".into()))?;
                    if digest.len() != bank.len() {
                        return Err(unexpected(format!(
                            "PCR {index} value has {} bytes, {} has {}",
                            digest.len(),
                            bank.name(),
                            bank.len()
                        )));
                    }
                    if !remaining.remove(&index) {
                        return Err(unexpected(format!("PCR {index} was not asked for")));
                    }
                    values.insert(index, digest.value().to_vec());
                    progressed = true;
                }
            }
            if digests.next().is_some() {
                return Err(unexpected("more digests than selected PCRs".into()));
            }
            if !progressed {
                return Err(unexpected(format!(
                    "no values for PCRs {remaining:?} in bank {} (is the bank allocated?)",
                    bank.name()
                )));
            }
        }
        if remaining.is_empty() {
            Ok(values)
        } else {
            Err(unexpected(format!("PCRs {remaining:?} never returned")))
        }
    }

    /// TPM2_PCR_Extend of `pcr` with a SHA-256 `digest`, in the SHA-256 bank only: other
    /// allocated banks (e.g. SHA-1) are left unchanged, so their values no longer describe the
    /// same events. Quote the SHA-256 bank. PCR auth is the empty password (PCRs 0–16, 23 on
    /// a PC Client TPM; 17–22 need a higher locality and fail with TPM_RC_LOCALITY).
    pub fn pcr_extend_sha256(&mut self, pcr: u8, digest: [u8; 32]) -> Result<(), TpmError> {
        const OP: &str = "TPM2_PCR_Extend";
        pcr_set(OP, &[pcr])?;
        let handle =
            PcrHandle::try_from(u32::from(pcr)).map_err(|_| TpmError::InvalidArgument {
                op: OP,
                reason: format!("PCR {pcr} has no handle"),
            })?;
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.to_vec()).map_err(tss(OP))?,
        );
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.pcr_extend(handle, values)
            })
            .map_err(tss(OP))
    }

    /// TPM2_Quote with the key at persistent `ak_handle` over `pcrs` of `bank`, qualifying data
    /// `extra_data` (≤ 64 bytes), signature scheme NULL (the key's own scheme; a restricted key
    /// allows nothing else). Authorized by an unbound, unsalted HMAC session with the AK's empty
    /// authValue.
    pub fn quote(
        &mut self,
        ak_handle: u32,
        extra_data: &[u8],
        bank: HashAlg,
        pcrs: &[u8],
    ) -> Result<Quote, TpmError> {
        const OP: &str = "TPM2_Quote";
        let data = qualifying_data(OP, extra_data)?;
        let selection = selection(OP, bank, &pcr_set(OP, pcrs)?)?;
        self.with_persistent(ak_handle, OP, |ctx, key| {
            let (attest, signature) = ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.quote(key, data, SignatureScheme::Null, selection)
                })
                .map_err(tss(OP))?;
            Ok(Quote {
                attest: marshal(&attest, "marshal TPMS_ATTEST")?,
                signature: marshal(&signature, "marshal TPMT_SIGNATURE")?,
            })
        })
    }
}

/// `extra_data` as a TPM2B_DATA, refusing more than [`MAX_EXTRA_DATA`] bytes.
pub(super) fn qualifying_data(op: &'static str, extra_data: &[u8]) -> Result<Data, TpmError> {
    if extra_data.len() > MAX_EXTRA_DATA {
        return Err(TpmError::InvalidArgument {
            op,
            reason: format!(
                "qualifying data is {} bytes, at most {MAX_EXTRA_DATA}",
                extra_data.len()
            ),
        });
    }
    Data::try_from(extra_data.to_vec()).map_err(tss(op))
}

/// Distinct PCR indices, each below [`PCR_COUNT`]; at least one.
fn pcr_set(op: &'static str, pcrs: &[u8]) -> Result<BTreeSet<u8>, TpmError> {
    if let Some(bad) = pcrs.iter().find(|&&p| p >= PCR_COUNT) {
        return Err(TpmError::InvalidArgument {
            op,
            reason: format!("PCR {bad} is out of range (0..{PCR_COUNT})"),
        });
    }
    if pcrs.is_empty() {
        return Err(TpmError::InvalidArgument {
            op,
            reason: "no PCRs selected".into(),
        });
    }
    Ok(pcrs.iter().copied().collect())
}

fn selection(
    op: &'static str,
    bank: HashAlg,
    pcrs: &BTreeSet<u8>,
) -> Result<PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|&p| PcrSlot::try_from(1u32 << p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(tss(op))?;
    PcrSelectionListBuilder::new()
        .with_selection(hashing_algorithm(bank), &slots)
        .build()
        .map_err(tss(op))
}

/// PcrSlot values are bit masks (Slot5 = 1 << 5).
fn slot_index(slot: PcrSlot) -> u8 {
    // trailing_zeros of a one-bit u32 is below 32.
    u8::try_from(u32::from(slot).trailing_zeros()).unwrap_or(u8::MAX)
}

fn unexpected(reason: String) -> TpmError {
    TpmError::Unexpected {
        op: "TPM2_PCR_Read",
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_indices_are_checked() {
        assert!(pcr_set("t", &[]).is_err());
        assert!(pcr_set("t", &[24]).is_err());
        assert_eq!(
            pcr_set("t", &[23, 0, 0])
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![0, 23]
        );
    }

    #[test]
    fn slots_round_trip() {
        for p in 0..PCR_COUNT {
            let slot = PcrSlot::try_from(1u32 << p).unwrap();
            assert_eq!(slot_index(slot), p);
        }
    }

    #[test]
    fn qualifying_data_is_bounded() {
        assert!(qualifying_data("t", &[0; 64]).is_ok());
        assert!(matches!(
            qualifying_data("t", &[0; 65]),
            Err(TpmError::InvalidArgument { .. })
        ));
    }
}
