//! Reference values: what a good appliance looks like, in a TOML file the tenant (or the
//! security team) owns. See docs/attestation.md for the format.
//!
//! ```toml
//! version = 1
//! bank = "sha256"
//! ak_name = "000b…"            # optional: pin the appliance's attestation key (TPM name, hex)
//! appliance_pcr = 15
//! [pcrs]                        # golden values of platform PCRs
//! 0 = "…"
//! [[appliance_events]]          # the appliance measurements that are allowed, exactly
//! kind = "wardend-binary"
//! detail = "sha256:…"
//! [[tcg_events]]                # optional event-log policy for the platform log
//! pcr = 0
//! event_type = 0x80000008
//! digest = "…"
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::alg::HashAlg;
use crate::evidence::Evidence;
use crate::tpm2::Public;

pub const MAX_REFERENCE_BYTES: usize = 1024 * 1024;
const NUM_PCRS: u8 = 24;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: u32,
    bank: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ak_name: Option<String>,
    appliance_pcr: u8,
    #[serde(default)]
    pcrs: BTreeMap<String, String>,
    #[serde(default)]
    appliance_events: Vec<AllowedApplianceEvent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tcg_events: Vec<RawTcgEvent>,
}

/// An appliance measurement the reference allows (kind and detail must both match).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedApplianceEvent {
    pub kind: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcgEvent {
    pcr: u32,
    event_type: u32,
    digest: String,
}

/// An allowed platform event: (PCR, event type, digest in the reference bank).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AllowedTcgEvent {
    pub pcr: u32,
    pub event_type: u32,
    pub digest: Vec<u8>,
}

/// Validated reference values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceValues {
    pub bank: HashAlg,
    pub ak_name: Option<Vec<u8>>,
    pub appliance_pcr: u8,
    /// Golden values of platform PCRs.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    pub appliance_events: BTreeSet<AllowedApplianceEvent>,
    /// Empty means no event-log policy (the log, when present, must still replay).
    pub tcg_events: BTreeSet<AllowedTcgEvent>,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReferenceError {
    #[error("reference file is {len} bytes; the limit is {MAX_REFERENCE_BYTES}")]
    TooLarge { len: usize },
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

fn digest_hex(key: &str, value: &str, bank: HashAlg) -> Result<Vec<u8>, ReferenceError> {
    let d = hex::decode(value).map_err(|e| invalid(key, format!("not hex: {e}")))?;
    if d.len() != bank.len() {
        return Err(invalid(
            key,
            format!("{} bytes; a {bank} digest is {}", d.len(), bank.len()),
        ));
    }
    Ok(d)
}

impl ReferenceValues {
    /// Parse and validate a reference file.
    pub fn from_toml(text: &str) -> Result<Self, ReferenceError> {
        if text.len() > MAX_REFERENCE_BYTES {
            return Err(ReferenceError::TooLarge { len: text.len() });
        }
        let raw: Raw = toml::from_str(text)?;
        if raw.version != 1 {
            return Err(invalid("version", "only version 1 is supported"));
        }
        let bank = match HashAlg::from_name(&raw.bank) {
            Some(HashAlg::Sha1) => {
                return Err(invalid(
                    "bank",
                    "sha1 is not accepted; use sha256 or stronger",
                ))
            }
            Some(b) => b,
            None => return Err(invalid("bank", format!("unknown hash {:?}", raw.bank))),
        };
        if raw.appliance_pcr >= NUM_PCRS {
            return Err(invalid("appliance_pcr", "must be below 24"));
        }
        let ak_name = raw
            .ak_name
            .as_deref()
            .map(|n| hex::decode(n).map_err(|e| invalid("ak_name", format!("not hex: {e}"))))
            .transpose()?;
        let mut pcrs = BTreeMap::new();
        for (k, v) in &raw.pcrs {
            let key = format!("pcrs.{k}");
            let idx: u8 = k
                .parse()
                .ok()
                .filter(|i| *i < NUM_PCRS)
                .ok_or_else(|| invalid(&key, "PCR index must be a number below 24"))?;
            if idx == raw.appliance_pcr {
                return Err(invalid(
                    &key,
                    "the appliance PCR is checked by replaying its log, not by a golden value",
                ));
            }
            pcrs.insert(idx, digest_hex(&key, v, bank)?);
        }
        let mut tcg_events = BTreeSet::new();
        for (i, e) in raw.tcg_events.iter().enumerate() {
            let key = format!("tcg_events[{i}]");
            if e.pcr >= u32::from(NUM_PCRS) {
                return Err(invalid(format!("{key}.pcr"), "must be below 24"));
            }
            tcg_events.insert(AllowedTcgEvent {
                pcr: e.pcr,
                event_type: e.event_type,
                digest: digest_hex(&format!("{key}.digest"), &e.digest, bank)?,
            });
        }
        Ok(ReferenceValues {
            bank,
            ak_name,
            appliance_pcr: raw.appliance_pcr,
            pcrs,
            appliance_events: raw.appliance_events.into_iter().collect(),
            tcg_events,
        })
    }

    /// Serialize (for `wardctl reference capture`).
    pub fn to_toml(&self) -> String {
        let raw = Raw {
            version: 1,
            bank: self.bank.name().to_owned(),
            ak_name: self.ak_name.as_ref().map(hex::encode),
            appliance_pcr: self.appliance_pcr,
            pcrs: self
                .pcrs
                .iter()
                .map(|(k, v)| (k.to_string(), hex::encode(v)))
                .collect(),
            appliance_events: self.appliance_events.iter().cloned().collect(),
            tcg_events: self
                .tcg_events
                .iter()
                .map(|e| RawTcgEvent {
                    pcr: e.pcr,
                    event_type: e.event_type,
                    digest: hex::encode(&e.digest),
                })
                .collect(),
        };
        toml::to_string_pretty(&raw).unwrap_or_default()
    }

    /// Reference values that accept exactly the state `evidence` shows: its SHA-256 PCR values
    /// as golden values (the appliance PCR excepted), its appliance measurements, and its AK.
    /// This is trust on first use: only call it on evidence from a known-good appliance, and
    /// verify that evidence against the result before relying on it.
    pub fn from_evidence(evidence: &Evidence) -> Result<Self, ReferenceError> {
        let bank = HashAlg::Sha256;
        let ak_name = Public::decode(&evidence.ak_public)
            .ok()
            .and_then(|p| p.name())
            .ok_or_else(|| {
                invalid(
                    "ak_public",
                    "the evidence's attestation key does not decode",
                )
            })?;
        let values = evidence
            .pcrs
            .get(bank.name())
            .ok_or_else(|| invalid("pcrs", "the evidence has no sha256 PCR values"))?;
        let mut pcrs = BTreeMap::new();
        for (idx, v) in values {
            if *idx != evidence.appliance_pcr {
                pcrs.insert(*idx, digest_hex(&format!("pcrs.{idx}"), v, bank)?);
            }
        }
        Ok(ReferenceValues {
            bank,
            ak_name: Some(ak_name),
            appliance_pcr: evidence.appliance_pcr,
            pcrs,
            appliance_events: evidence
                .appliance_log
                .iter()
                .map(|e| AllowedApplianceEvent {
                    kind: e.kind.clone(),
                    detail: e.detail.clone(),
                })
                .collect(),
            tcg_events: BTreeSet::new(),
        })
    }

    /// The PCRs a quote must cover: every golden PCR, every PCR the event policy names, and the
    /// appliance PCR, ascending.
    pub fn selection(&self) -> Vec<u8> {
        let mut s: BTreeSet<u8> = self.pcrs.keys().copied().collect();
        s.extend(
            self.tcg_events
                .iter()
                .filter_map(|e| u8::try_from(e.pcr).ok()),
        );
        s.insert(self.appliance_pcr);
        s.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1
bank = "sha256"
ak_name = "000b00"
appliance_pcr = 15
[pcrs]
0 = "0000000000000000000000000000000000000000000000000000000000000000"
7 = "1111111111111111111111111111111111111111111111111111111111111111"
[[appliance_events]]
kind = "wardend-binary"
detail = "sha256:ab"
[[tcg_events]]
pcr = 4
event_type = 13
digest = "2222222222222222222222222222222222222222222222222222222222222222"
"#;

    #[test]
    fn parses_round_trips_and_selects() {
        let r = ReferenceValues::from_toml(GOOD).unwrap();
        assert_eq!(r.selection(), vec![0, 4, 7, 15]);
        assert_eq!(ReferenceValues::from_toml(&r.to_toml()).unwrap(), r);
    }

    #[test]
    fn invalid_files_name_the_key() {
        let cases = [
            (GOOD.replace("version = 1", "version = 2"), "version"),
            (GOOD.replace("\"sha256\"", "\"sha1\""), "bank"),
            (GOOD.replace("\"sha256\"", "\"md5\""), "bank"),
            (GOOD.replace("7 = ", "24 = "), "pcrs.24"),
            (GOOD.replace("7 = ", "15 = "), "pcrs.15"),
            (GOOD.replace("1111", "11"), "pcrs.7"),
            (GOOD.replace("0000000000", "zz00000000"), "pcrs.0"),
            (GOOD.replace("pcr = 4", "pcr = 40"), "tcg_events[0].pcr"),
            (GOOD.replace("000b00", "xyz"), "ak_name"),
            (
                GOOD.replace("appliance_pcr = 15", "appliance_pcr = 30"),
                "appliance_pcr",
            ),
        ];
        for (text, key) in cases {
            let err = ReferenceValues::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
        let unknown = format!("{GOOD}\nsurprise = 1\n");
        assert!(ReferenceValues::from_toml(&unknown)
            .unwrap_err()
            .to_string()
            .contains("surprise"));
        assert!(matches!(
            ReferenceValues::from_toml(&" ".repeat(MAX_REFERENCE_BYTES + 1)),
            Err(ReferenceError::TooLarge { .. })
        ));
    }
}
