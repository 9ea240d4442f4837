//! The appliance's own measurement log: every value wardend extends into its PCR (its own
//! binary at start, later policy and firmware digests), so a verifier can replay the PCR and see
//! *what* was measured, not just a hash.
//!
//! An event's digest is computed from its content, so content and digest cannot disagree:
//! `SHA-256("warden-event-v1" ‖ len(kind) ‖ kind ‖ len(detail) ‖ detail)` (u16/u32 big-endian
//! lengths). The PCR starts at zero and is extended with each digest in order.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::alg::{ct_eq, HashAlg};

pub const MAX_EVENTS: usize = 4096;
pub const MAX_KIND: usize = 64;
pub const MAX_DETAIL: usize = 4096;

/// One measurement the appliance extended into its PCR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceEvent {
    /// What was measured, e.g. `wardend-binary`, `policy`, `firmware`.
    pub kind: String,
    /// The measured content or its description (e.g. `sha256:…` of a binary).
    pub detail: String,
    /// SHA-256 of the event content, hex; what was extended into the PCR.
    pub digest: String,
}

impl ApplianceEvent {
    /// A new event with its digest computed.
    pub fn new(kind: &str, detail: &str) -> Result<Self, AppLogError> {
        check_lengths(kind, detail)?;
        Ok(ApplianceEvent {
            kind: kind.to_owned(),
            detail: detail.to_owned(),
            digest: hex::encode(content_digest(kind, detail)),
        })
    }

    /// The digest recomputed from content (what must be extended).
    pub fn computed_digest(&self) -> Result<[u8; 32], AppLogError> {
        check_lengths(&self.kind, &self.detail)?;
        Ok(content_digest(&self.kind, &self.detail))
    }
}

fn check_lengths(kind: &str, detail: &str) -> Result<(), AppLogError> {
    if kind.is_empty() || kind.len() > MAX_KIND || detail.len() > MAX_DETAIL {
        return Err(AppLogError::FieldLength {
            kind_len: kind.len(),
            detail_len: detail.len(),
        });
    }
    Ok(())
}

fn content_digest(kind: &str, detail: &str) -> [u8; 32] {
    let d = HashAlg::Sha256.digest(&[
        b"warden-event-v1",
        &(kind.len() as u16).to_be_bytes(),
        kind.as_bytes(),
        &(detail.len() as u32).to_be_bytes(),
        detail.as_bytes(),
    ]);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.get(..32).unwrap_or(&[0u8; 32]));
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AppLogError {
    #[error("appliance event {index}: recorded digest does not match its content (kind {kind:?})")]
    DigestMismatch { index: usize, kind: String },
    #[error("appliance log has {count} events; the limit is {MAX_EVENTS}")]
    TooManyEvents { count: usize },
    #[error("appliance event kind must be 1..={MAX_KIND} bytes and detail at most {MAX_DETAIL} (got {kind_len}, {detail_len})")]
    FieldLength { kind_len: usize, detail_len: usize },
}

/// Replay a log: check every event's digest against its content and return the resulting
/// SHA-256 PCR value (starting from 32 zero bytes).
pub fn replay(events: &[ApplianceEvent]) -> Result<[u8; 32], AppLogError> {
    if events.len() > MAX_EVENTS {
        return Err(AppLogError::TooManyEvents {
            count: events.len(),
        });
    }
    let mut pcr = [0u8; 32];
    for (index, e) in events.iter().enumerate() {
        let computed = e.computed_digest()?;
        let recorded = hex::decode(&e.digest).unwrap_or_default();
        if !ct_eq(&recorded, &computed) {
            return Err(AppLogError::DigestMismatch {
                index,
                kind: e.kind.clone(),
            });
        }
        let next = HashAlg::Sha256.extend(&pcr, &computed);
        pcr.copy_from_slice(next.get(..32).unwrap_or(&[0u8; 32]));
    }
    Ok(pcr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_is_the_extend_chain_of_content_digests() {
        let a = ApplianceEvent::new("wardend-binary", "sha256:00").unwrap();
        let b = ApplianceEvent::new("policy", "v1").unwrap();
        let mut pcr = vec![0u8; 32];
        for e in [&a, &b] {
            pcr = HashAlg::Sha256.extend(&pcr, &hex::decode(&e.digest).unwrap());
        }
        assert_eq!(replay(&[a, b]).unwrap().to_vec(), pcr);
        assert_eq!(replay(&[]).unwrap(), [0u8; 32]);
    }

    #[test]
    fn edited_content_is_caught() {
        let mut a = ApplianceEvent::new("policy", "v1").unwrap();
        a.detail = "v2".into();
        assert!(matches!(
            replay(&[a]),
            Err(AppLogError::DigestMismatch { index: 0, .. })
        ));
        let mut b = ApplianceEvent::new("policy", "v1").unwrap();
        b.digest = "zz".into();
        assert!(replay(&[b]).is_err());
    }

    #[test]
    fn limits() {
        assert!(ApplianceEvent::new("", "x").is_err());
        assert!(ApplianceEvent::new(&"k".repeat(65), "x").is_err());
        assert!(ApplianceEvent::new("k", &"d".repeat(4097)).is_err());
        let e = ApplianceEvent::new("k", "d").unwrap();
        assert!(matches!(
            replay(&vec![e; MAX_EVENTS + 1]),
            Err(AppLogError::TooManyEvents { .. })
        ));
    }
}
