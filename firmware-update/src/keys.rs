//! Signing keys as the root metadata lists them, and signature verification.
//!
//! A key is a bare public key (Ed25519, or ECDSA P-256 with SHA-256) or an X.509 identity: a
//! pinned CA and the exact subject common name a signer's certificate must carry. A key's id is
//! computed from its content, never taken on trust, so one key cannot appear under two ids.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{self, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::error::MetadataError;
use crate::x509::PinnedCa;

/// Longest CN an X.509 key may name.
pub const MAX_SUBJECT: usize = 256;

/// A signature algorithm metadata may be signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyAlg {
    Ed25519,
    /// ECDSA P-256 with SHA-256, ASN.1 DER signatures.
    EcdsaP256Sha256,
}

impl KeyAlg {
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::Ed25519 => "ed25519",
            KeyAlg::EcdsaP256Sha256 => "ecdsa-p256",
        }
    }

    fn ring(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            KeyAlg::Ed25519 => &signature::ED25519,
            KeyAlg::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1,
        }
    }

    fn public_len_ok(self, len: usize) -> bool {
        match self {
            KeyAlg::Ed25519 => len == 32,
            KeyAlg::EcdsaP256Sha256 => len == 65,
        }
    }
}

/// Verify `sig` over `msg` with a raw public key (Ed25519: 32 bytes; P-256: SEC1 uncompressed).
pub fn verify_signature(alg: KeyAlg, public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(alg.ring(), public)
        .verify(msg, sig)
        .is_ok()
}

/// A key the root metadata trusts for one or more roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySpec {
    /// A bare public key.
    Bare { alg: KeyAlg, public: Vec<u8> },
    /// Whoever holds a certificate for `subject` chained to `ca`.
    X509 { ca: PinnedCa, subject: String },
}

/// The JSON form of a key: `{"keytype": "ed25519"|"ecdsa-p256", "public": b64}` or
/// `{"keytype": "x509", "ca": b64 DER, "subject": "CN"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub keytype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

fn bad(field: &'static str, reason: impl Into<String>) -> MetadataError {
    MetadataError::BadField {
        field,
        reason: reason.into(),
    }
}

impl KeySpec {
    pub fn from_raw(raw: &RawKey) -> Result<KeySpec, MetadataError> {
        let b64 = |field: &'static str, v: &Option<String>| -> Result<Vec<u8>, MetadataError> {
            let v = v.as_deref().ok_or_else(|| bad(field, "missing"))?;
            B64.decode(v)
                .map_err(|e| bad(field, format!("not base64: {e}")))
        };
        let bare = |alg: KeyAlg| -> Result<KeySpec, MetadataError> {
            if raw.ca.is_some() || raw.subject.is_some() {
                return Err(bad("keys", "a bare key has only `public`"));
            }
            let public = b64("keys.public", &raw.public)?;
            if !alg.public_len_ok(public.len()) {
                return Err(bad(
                    "keys.public",
                    format!("{} bytes is not a {} public key", public.len(), alg.name()),
                ));
            }
            Ok(KeySpec::Bare { alg, public })
        };
        match raw.keytype.as_str() {
            "ed25519" => bare(KeyAlg::Ed25519),
            "ecdsa-p256" => bare(KeyAlg::EcdsaP256Sha256),
            "x509" => {
                if raw.public.is_some() {
                    return Err(bad(
                        "keys",
                        "an x509 key has `ca` and `subject`, not `public`",
                    ));
                }
                let ca = PinnedCa::from_der(&b64("keys.ca", &raw.ca)?)
                    .map_err(|e| bad("keys.ca", e.to_string()))?;
                let subject = raw
                    .subject
                    .clone()
                    .ok_or_else(|| bad("keys.subject", "missing"))?;
                if subject.is_empty() || subject.len() > MAX_SUBJECT {
                    return Err(bad(
                        "keys.subject",
                        format!("must be 1..={MAX_SUBJECT} bytes"),
                    ));
                }
                Ok(KeySpec::X509 { ca, subject })
            }
            other => Err(bad(
                "keys.keytype",
                format!("{other:?} is not ed25519, ecdsa-p256 or x509"),
            )),
        }
    }

    pub fn to_raw(&self) -> RawKey {
        match self {
            KeySpec::Bare { alg, public } => RawKey {
                keytype: alg.name().into(),
                public: Some(B64.encode(public)),
                ca: None,
                subject: None,
            },
            KeySpec::X509 { ca, subject } => RawKey {
                keytype: "x509".into(),
                public: None,
                ca: Some(B64.encode(ca.der())),
                subject: Some(subject.clone()),
            },
        }
    }

    /// The key id: hex SHA-256 over a domain tag, the key type and the key material.
    pub fn keyid(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"warden-update-key/v1\0");
        match self {
            KeySpec::Bare { alg, public } => {
                ctx.update(alg.name().as_bytes());
                ctx.update(b"\0");
                ctx.update(public);
            }
            KeySpec::X509 { ca, subject } => {
                ctx.update(b"x509\0");
                ctx.update(&(ca.der().len() as u64).to_be_bytes());
                ctx.update(ca.der());
                ctx.update(subject.as_bytes());
            }
        }
        hex::encode(ctx.finish())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    #[test]
    fn key_ids_depend_on_type_and_material() {
        let a = KeySpec::Bare {
            alg: KeyAlg::Ed25519,
            public: vec![1; 32],
        };
        let b = KeySpec::Bare {
            alg: KeyAlg::Ed25519,
            public: vec![2; 32],
        };
        assert_ne!(a.keyid(), b.keyid());
        assert_eq!(a.keyid(), KeySpec::from_raw(&a.to_raw()).unwrap().keyid());
    }

    #[test]
    fn raw_keys_are_checked() {
        let raw = |t: &str, p: Option<&str>| RawKey {
            keytype: t.into(),
            public: p.map(str::to_owned),
            ca: None,
            subject: None,
        };
        assert!(KeySpec::from_raw(&raw("rsa", Some("AA=="))).is_err());
        assert!(KeySpec::from_raw(&raw("ed25519", None)).is_err());
        assert!(KeySpec::from_raw(&raw("ed25519", Some("!!"))).is_err());
        assert!(KeySpec::from_raw(&raw("ed25519", Some(&B64.encode([0u8; 31])))).is_err());
        assert!(KeySpec::from_raw(&raw("ecdsa-p256", Some(&B64.encode([4u8; 32])))).is_err());
        assert!(KeySpec::from_raw(&raw("x509", Some("AA=="))).is_err());
        let mut r = raw("ed25519", Some(&B64.encode([0u8; 32])));
        r.subject = Some("x".into());
        assert!(KeySpec::from_raw(&r).is_err());
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let sig = kp.sign(b"msg");
        let public = kp.public_key().as_ref();
        assert!(verify_signature(
            KeyAlg::Ed25519,
            public,
            b"msg",
            sig.as_ref()
        ));
        assert!(!verify_signature(
            KeyAlg::Ed25519,
            public,
            b"msh",
            sig.as_ref()
        ));
        assert!(!verify_signature(
            KeyAlg::EcdsaP256Sha256,
            public,
            b"msg",
            sig.as_ref()
        ));
    }
}
