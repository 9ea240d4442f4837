//! Signed envelopes. The signed payload travels base64-encoded inside the envelope, and
//! signatures cover those exact bytes (after a domain tag), so nothing is ever re-serialised
//! before verification — no canonical-JSON step to get wrong.
//!
//! ```json
//! {"signed": "<base64 payload>",
//!  "signatures": [{"keyid": "<hex>", "sig": "<base64>", "chain": ["<base64 DER>", …]}]}
//! ```
//!
//! Off-spec: TUF signs canonical JSON of the `signed` object; Warden signs the received bytes
//! (as DSSE does), which removes a whole class of canonicalisation bugs.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::MetadataError;
use crate::x509::{MAX_CERT_BYTES, MAX_CHAIN};

/// Domain tag in front of every signed payload.
pub const SIGNING_CONTEXT: &[u8] = b"warden-update-metadata/v1\0";
/// Most signatures an envelope may carry.
pub const MAX_SIGNATURES: usize = 32;
/// Longest signature accepted (an ECDSA P-256 DER signature is at most 72 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 512;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope {
    signed: String,
    signatures: Vec<RawSignature>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    keyid: String,
    sig: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chain: Vec<String>,
}

/// One signature: by whom, the bytes, and for X.509 keys the chain (leaf first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub keyid: String,
    pub sig: Vec<u8>,
    pub chain: Vec<Vec<u8>>,
}

/// A parsed envelope: the payload bytes exactly as signed, and the signatures over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub payload: Vec<u8>,
    pub signatures: Vec<Signature>,
}

/// The bytes a signature covers.
pub fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + payload.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(payload);
    m
}

impl Envelope {
    /// Parse an envelope of at most `limit` bytes (checked before anything else).
    pub fn parse(what: &str, bytes: &[u8], limit: u64) -> Result<Envelope, MetadataError> {
        if bytes.len() as u64 > limit {
            return Err(MetadataError::TooLarge {
                what: what.to_owned(),
                len: bytes.len() as u64,
                limit,
            });
        }
        let malformed = |reason: String| MetadataError::Malformed {
            what: what.to_owned(),
            reason,
        };
        let raw: RawEnvelope =
            serde_json::from_slice(bytes).map_err(|e| malformed(format!("envelope: {e}")))?;
        let payload = B64
            .decode(&raw.signed)
            .map_err(|e| malformed(format!("`signed` is not base64: {e}")))?;
        if raw.signatures.len() > MAX_SIGNATURES {
            return Err(malformed(format!(
                "{} signatures; at most {MAX_SIGNATURES}",
                raw.signatures.len()
            )));
        }
        let mut signatures = Vec::with_capacity(raw.signatures.len());
        for (i, s) in raw.signatures.into_iter().enumerate() {
            if s.keyid.len() != 64 || !s.keyid.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(malformed(format!(
                    "signature {i}: keyid is not 64 hex digits"
                )));
            }
            let sig = B64
                .decode(&s.sig)
                .map_err(|e| malformed(format!("signature {i}: not base64: {e}")))?;
            if sig.is_empty() || sig.len() > MAX_SIGNATURE_BYTES {
                return Err(malformed(format!(
                    "signature {i}: {} bytes; 1..={MAX_SIGNATURE_BYTES}",
                    sig.len()
                )));
            }
            if s.chain.len() > MAX_CHAIN {
                return Err(malformed(format!(
                    "signature {i}: chain of {} certificates; at most {MAX_CHAIN}",
                    s.chain.len()
                )));
            }
            let mut chain = Vec::with_capacity(s.chain.len());
            for (j, c) in s.chain.iter().enumerate() {
                let der = B64.decode(c).map_err(|e| {
                    malformed(format!("signature {i}: certificate {j} is not base64: {e}"))
                })?;
                if der.len() > MAX_CERT_BYTES {
                    return Err(malformed(format!(
                        "signature {i}: certificate {j} is {} bytes; at most {MAX_CERT_BYTES}",
                        der.len()
                    )));
                }
                chain.push(der);
            }
            signatures.push(Signature {
                keyid: s.keyid.to_ascii_lowercase(),
                sig,
                chain,
            });
        }
        Ok(Envelope {
            payload,
            signatures,
        })
    }

    /// Serialise (for the release tool).
    pub fn to_bytes(&self) -> Vec<u8> {
        let raw = RawEnvelope {
            signed: B64.encode(&self.payload),
            signatures: self
                .signatures
                .iter()
                .map(|s| RawSignature {
                    keyid: s.keyid.clone(),
                    sig: B64.encode(&s.sig),
                    chain: s.chain.iter().map(|c| B64.encode(c)).collect(),
                })
                .collect(),
        };
        let mut out = serde_json::to_vec_pretty(&raw).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn size_is_checked_before_parsing() {
        let e = Envelope::parse("x", &[b'{'; 100], 99).unwrap_err();
        assert!(matches!(e, MetadataError::TooLarge { len: 100, .. }));
    }

    #[test]
    fn round_trip_and_rejections() {
        let env = Envelope {
            payload: b"{\"a\":1}".to_vec(),
            signatures: vec![Signature {
                keyid: "ab".repeat(32),
                sig: vec![1, 2, 3],
                chain: vec![vec![0x30, 0]],
            }],
        };
        let bytes = env.to_bytes();
        assert_eq!(Envelope::parse("x", &bytes, 1 << 20).unwrap(), env);
        for bad in [
            r#"{"signed":"e30=","signatures":[],"extra":1}"#,
            r#"{"signed":"***","signatures":[]}"#,
            r#"{"signed":"e30=","signatures":[{"keyid":"zz","sig":"AQ=="}]}"#,
            r#"{"signed":"e30=","signatures":[{"keyid":"ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB","sig":""}]}"#,
            r#"{"signed":"e30="}"#,
        ] {
            assert!(
                Envelope::parse("x", bad.as_bytes(), 1 << 20).is_err(),
                "{bad}"
            );
        }
    }
}
