//! Evidence as it travels: JSON with base64 for binary TPM structures. Parsing checks the size
//! first and refuses unknown fields; the TPM structures inside are decoded by the verifier.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::applog::ApplianceEvent;

/// Evidence JSON larger than this is refused before parsing (the platform event log dominates).
pub const MAX_EVIDENCE_BYTES: usize = 8 * 1024 * 1024;
pub const VERSION: u32 = 1;

/// Everything an appliance presents to prove its state for one challenge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    pub version: u32,
    /// What the evidence is for (see [`crate::binding::purpose`]); part of the extraData binding.
    pub purpose: String,
    /// Marshalled TPMS_ATTEST: the exact bytes the AK signed.
    #[serde(with = "b64")]
    pub attest: Vec<u8>,
    /// Marshalled TPMT_SIGNATURE over `attest`.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    /// PCR values the quote covers: bank name ("sha256") → PCR index → hex value.
    pub pcrs: BTreeMap<String, BTreeMap<u8, String>>,
    /// Marshalled TPMT_PUBLIC of the attestation key.
    #[serde(with = "b64")]
    pub ak_public: Vec<u8>,
    /// DER EK certificate from the TPM's NV, when the TPM has one.
    #[serde(default, with = "b64_opt", skip_serializing_if = "Option::is_none")]
    pub ek_certificate: Option<Vec<u8>>,
    /// The platform's TCG crypto-agile event log, when the platform has one.
    #[serde(default, with = "b64_opt", skip_serializing_if = "Option::is_none")]
    pub tcg_event_log: Option<Vec<u8>>,
    /// The PCR the appliance extends its own measurements into, and what it extended.
    pub appliance_pcr: u8,
    pub appliance_log: Vec<ApplianceEvent>,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EvidenceError {
    #[error("evidence is {len} bytes; the limit is {MAX_EVIDENCE_BYTES}")]
    TooLarge { len: usize },
    #[error("evidence JSON is malformed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("evidence version {found} is not supported (expected {VERSION})")]
    Version { found: u32 },
}

impl Evidence {
    /// Parse untrusted JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_EVIDENCE_BYTES {
            return Err(EvidenceError::TooLarge { len: bytes.len() });
        }
        let e: Evidence = serde_json::from_slice(bytes)?;
        if e.version != VERSION {
            return Err(EvidenceError::Version { found: e.version });
        }
        Ok(e)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Base64 (standard alphabet, padded) for byte fields.
pub mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// Optional base64 byte fields.
pub mod b64_opt {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&B64.encode(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| B64.decode(s.as_bytes()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Evidence {
        Evidence {
            version: VERSION,
            purpose: "p".into(),
            attest: vec![1, 2, 3],
            signature: vec![4],
            pcrs: BTreeMap::from([(
                "sha256".to_string(),
                BTreeMap::from([(0u8, "00".repeat(32))]),
            )]),
            ak_public: vec![5],
            ek_certificate: None,
            tcg_event_log: Some(vec![6, 7]),
            appliance_pcr: 15,
            appliance_log: vec![],
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Evidence::from_json(&e.to_json()).unwrap(), e);
    }

    #[test]
    fn unknown_fields_bad_base64_versions_and_size_are_refused() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(Evidence::from_json(&serde_json::to_vec(&v).unwrap()).is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["attest"] = serde_json::json!("!!!");
        assert!(Evidence::from_json(&serde_json::to_vec(&v).unwrap()).is_err());
        let mut e = sample();
        e.version = 2;
        assert!(matches!(
            Evidence::from_json(&e.to_json()),
            Err(EvidenceError::Version { found: 2 })
        ));
        assert!(matches!(
            Evidence::from_json(&vec![b' '; MAX_EVIDENCE_BYTES + 1]),
            Err(EvidenceError::TooLarge { .. })
        ));
    }
}
