//! Wrapped keys: HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! AES-256-GCM, bound to where the key may go and what it is.
//!
//! ```text
//!  tenant                                            appliance (attested)
//!    verify evidence whose bound key = pkR  ◄──────  challenge: nonce, pkR (single use, TTL)
//!    wrap(pkR, binding{appliance, AK name, nonce}, label{tenant, key id, kind, version}, key)
//!      info = "warden/keys/<purpose>/v1" ‖ lp(appliance) ‖ lp(AK name) ‖ lp(nonce) ‖ lp(pkR)
//!      aad  = lp(tenant) ‖ lp(key id) ‖ lp(kind) ‖ u32 version ‖ u64 not_after
//!    Envelope (JSON) ───────────────────────────►  open(env, skR, expected binding, caller)
//! ```
//! (`lp` = 2-byte big-endian length, then the bytes.) The binding and label travel in the
//! clear so the receiver can refuse early with a precise reason. They are also in the HPKE
//! `info` and AAD, so changing any of them makes the decryption fail. A replayed, stale or
//! redirected envelope names a nonce, a recipient key or an appliance the receiver does not
//! expect.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use crate::secret::{KeyMaterial, Redacted, MAX_KEY_BYTES};

/// Largest envelope accepted (checked before parsing).
pub const MAX_ENVELOPE_BYTES: usize = 8 * 1024;
/// The one suite: RFC 9180 identifiers KEM 0x0020, KDF 0x0001, AEAD 0x0002.
pub const SUITE: &str = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM";
const VERSION: u8 = 1;
const X25519_LEN: usize = 32;
const TAG_LEN: usize = 16;
const MAX_NAME: usize = 63;
const MAX_APPLIANCE_KEY: usize = 80;
const MIN_NONCE: usize = 16;
const MAX_NONCE: usize = 64;

/// What a wrap is for; part of the HPKE `info`, so a provisioning wrap never opens as a
/// release and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// A tenant puts a key into an appliance's vault.
    Provision,
    /// An appliance hands a key to an attested workload.
    Release,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Provision => b"warden/keys/provision/v1",
            Purpose::Release => b"warden/keys/release/v1",
        }
    }
}

/// The two kinds of tenant keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyKind {
    /// An east-west root key: the data plane derives its SA keys from it.
    EastWest,
    /// An opaque secret for the tenant's attested workloads.
    Secret,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::EastWest => "east-west",
            KeyKind::Secret => "secret",
        }
    }
}

/// Where a wrapped key may be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The appliance's name.
    pub appliance: String,
    /// The appliance's attestation key (its TPM name), as the tenant verified it.
    pub appliance_key: Vec<u8>,
    /// The challenge nonce (provisioning) or the attestation-result id (release).
    pub nonce: Vec<u8>,
}

/// What the wrapped key is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub tenant: String,
    pub key_id: String,
    pub kind: KeyKind,
    pub version: u32,
    /// Unix seconds after which the receiver must not use the key; 0: no limit.
    pub not_after: u64,
}

/// A wrapped key, as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub version: u8,
    pub suite: String,
    pub purpose: Purpose,
    pub tenant: String,
    pub key_id: String,
    pub kind: KeyKind,
    pub key_version: u32,
    #[serde(default)]
    pub not_after: u64,
    pub appliance: String,
    /// base64
    pub appliance_key: String,
    /// base64
    pub nonce: String,
    /// base64 of the recipient's X25519 public key.
    pub recipient: String,
    /// base64 of the HPKE encapsulated key.
    pub enc: String,
    /// base64 of the AES-256-GCM ciphertext and tag.
    pub ciphertext: String,
}

/// Why an envelope was refused. Never carries key bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("the envelope is {0} bytes; the limit is {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    #[error("the envelope is malformed: {0}")]
    Malformed(String),
    #[error("envelope version {0} is not supported (expected {VERSION})")]
    Version(u8),
    #[error("suite {0:?} is not supported (expected {SUITE})")]
    Suite(String),
    #[error("field {field}: {why}")]
    Field { field: &'static str, why: String },
    #[error("the envelope is for {0:?}, not for this purpose")]
    Purpose(Purpose),
    #[error("the envelope is for appliance {found:?}, not {expected:?}: it was made for another appliance")]
    WrongAppliance { found: String, expected: String },
    #[error("the envelope is bound to another attestation key: it was made for another appliance")]
    WrongApplianceKey,
    #[error("the envelope is wrapped to a recipient key this appliance did not issue (redirected or stale)")]
    WrongRecipient,
    #[error("the envelope's nonce is not the challenge's (stale or replayed)")]
    WrongNonce,
    #[error("the envelope is for tenant {found:?}, but the caller is {expected:?}")]
    WrongTenant { found: String, expected: String },
    #[error("the envelope does not decrypt: it was altered, or wrapped to another key")]
    Tampered,
    #[error("the key has expired")]
    Expired,
    #[error("cannot wrap: {0}")]
    Wrap(String),
}

/// Length-prefixed concatenation: every field is unambiguous.
fn lp(out: &mut Vec<u8>, field: &[u8]) {
    let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field.get(..usize::from(len)).unwrap_or(field));
}

fn info(purpose: Purpose, b: &Binding, recipient: &[u8]) -> Vec<u8> {
    let mut out = purpose.label().to_vec();
    lp(&mut out, b.appliance.as_bytes());
    lp(&mut out, &b.appliance_key);
    lp(&mut out, &b.nonce);
    lp(&mut out, recipient);
    out
}

fn aad(l: &Label) -> Vec<u8> {
    let mut out = Vec::new();
    lp(&mut out, l.tenant.as_bytes());
    lp(&mut out, l.key_id.as_bytes());
    lp(&mut out, l.kind.name().as_bytes());
    out.extend_from_slice(&l.version.to_be_bytes());
    out.extend_from_slice(&l.not_after.to_be_bytes());
    out
}

/// A name: 1-63 of a-z, 0-9 and '-', not starting with '-'.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn b64(field: &'static str, s: &str, min: usize, max: usize) -> Result<Vec<u8>, EnvelopeError> {
    // Refuse before decoding anything unreasonably long.
    if s.len() > max.saturating_mul(4) / 3 + 4 {
        return Err(EnvelopeError::Field {
            field,
            why: format!("longer than {max} bytes"),
        });
    }
    let bytes = B64.decode(s).map_err(|e| EnvelopeError::Field {
        field,
        why: format!("not base64: {e}"),
    })?;
    if bytes.len() < min || bytes.len() > max {
        return Err(EnvelopeError::Field {
            field,
            why: format!("{} bytes; expected {min}..={max}", bytes.len()),
        });
    }
    Ok(bytes)
}

/// The recipient side of a wrap: an X25519 key pair, made per challenge and used once.
pub struct RecipientKey {
    secret: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    public: [u8; X25519_LEN],
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKey")
            .field("public", &B64.encode(self.public))
            .field("secret", &Redacted)
            .finish()
    }
}

impl RecipientKey {
    pub fn generate() -> RecipientKey {
        let (secret, public) =
            X25519HkdfSha256::gen_keypair(&mut rand_core::UnwrapErr(rand_core::OsRng));
        let mut bytes = [0u8; X25519_LEN];
        let encoded = public.to_bytes();
        bytes.copy_from_slice(encoded.as_slice());
        RecipientKey {
            secret,
            public: bytes,
        }
    }

    /// The public key, to be bound into attestation evidence and wrapped to.
    pub fn public(&self) -> [u8; X25519_LEN] {
        self.public
    }
}

/// Wrap `key` to `recipient` (an X25519 public key the sender verified), for `purpose`.
pub fn wrap(
    purpose: Purpose,
    recipient: &[u8],
    binding: &Binding,
    label: &Label,
    key: &[u8],
) -> Result<Envelope, EnvelopeError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(EnvelopeError::Wrap(format!(
            "a key is 1..={MAX_KEY_BYTES} bytes"
        )));
    }
    if !valid_name(&label.tenant) || !valid_name(&label.key_id) {
        return Err(EnvelopeError::Wrap(
            "tenant and key id are 1-63 of a-z, 0-9 and '-'".into(),
        ));
    }
    let pk = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| EnvelopeError::Wrap("the recipient key is not an X25519 key".into()))?;
    let (enc, ciphertext) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256, _>(
        &OpModeS::Base,
        &pk,
        &info(purpose, binding, recipient),
        key,
        &aad(label),
        &mut rand_core::UnwrapErr(rand_core::OsRng),
    )
    .map_err(|e| EnvelopeError::Wrap(e.to_string()))?;
    Ok(Envelope {
        version: VERSION,
        suite: SUITE.to_owned(),
        purpose,
        tenant: label.tenant.clone(),
        key_id: label.key_id.clone(),
        kind: label.kind,
        key_version: label.version,
        not_after: label.not_after,
        appliance: binding.appliance.clone(),
        appliance_key: B64.encode(&binding.appliance_key),
        nonce: B64.encode(&binding.nonce),
        recipient: B64.encode(recipient),
        enc: B64.encode(enc.to_bytes()),
        ciphertext: B64.encode(ciphertext),
    })
}

/// An envelope whose fields are well-formed (not yet opened).
#[derive(Debug)]
pub struct Parsed {
    pub purpose: Purpose,
    pub binding: Binding,
    pub label: Label,
    recipient: Vec<u8>,
    enc: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl Envelope {
    /// Parse untrusted bytes (size-limited, no unknown fields, every field checked).
    pub fn parse(bytes: &[u8]) -> Result<Parsed, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        env.check()
    }

    /// Check the fields of an envelope already deserialized.
    pub fn check(&self) -> Result<Parsed, EnvelopeError> {
        if self.version != VERSION {
            return Err(EnvelopeError::Version(self.version));
        }
        if self.suite != SUITE {
            return Err(EnvelopeError::Suite(self.suite.chars().take(80).collect()));
        }
        for (field, value) in [
            ("tenant", &self.tenant),
            ("key_id", &self.key_id),
            ("appliance", &self.appliance),
        ] {
            if !valid_name(value) {
                return Err(EnvelopeError::Field {
                    field,
                    why: "not 1-63 of a-z, 0-9 and '-'".into(),
                });
            }
        }
        Ok(Parsed {
            purpose: self.purpose,
            binding: Binding {
                appliance: self.appliance.clone(),
                appliance_key: b64("appliance_key", &self.appliance_key, 1, MAX_APPLIANCE_KEY)?,
                nonce: b64("nonce", &self.nonce, MIN_NONCE, MAX_NONCE)?,
            },
            label: Label {
                tenant: self.tenant.clone(),
                key_id: self.key_id.clone(),
                kind: self.kind,
                version: self.key_version,
                not_after: self.not_after,
            },
            recipient: b64("recipient", &self.recipient, X25519_LEN, X25519_LEN)?,
            enc: b64("enc", &self.enc, X25519_LEN, X25519_LEN)?,
            ciphertext: b64(
                "ciphertext",
                &self.ciphertext,
                1 + TAG_LEN,
                MAX_KEY_BYTES + TAG_LEN,
            )?,
        })
    }
}

/// What the receiver expects.
pub struct Expected<'a> {
    pub purpose: Purpose,
    pub binding: &'a Binding,
    /// The tenant the caller authenticated as.
    pub tenant: &'a str,
    /// Unix seconds now (for `not_after`).
    pub now: u64,
}

impl Parsed {
    /// Check the binding, then decrypt. The checks come first so that each refusal has a
    /// precise reason; the decryption would refuse all of them anyway.
    pub fn open(
        self,
        recipient: &RecipientKey,
        expected: &Expected<'_>,
    ) -> Result<(Label, KeyMaterial), EnvelopeError> {
        if self.purpose != expected.purpose {
            return Err(EnvelopeError::Purpose(self.purpose));
        }
        if self.label.tenant != expected.tenant {
            return Err(EnvelopeError::WrongTenant {
                found: self.label.tenant,
                expected: expected.tenant.to_owned(),
            });
        }
        if self.binding.appliance != expected.binding.appliance {
            return Err(EnvelopeError::WrongAppliance {
                found: self.binding.appliance,
                expected: expected.binding.appliance.clone(),
            });
        }
        if self.binding.appliance_key != expected.binding.appliance_key {
            return Err(EnvelopeError::WrongApplianceKey);
        }
        if self.recipient != recipient.public {
            return Err(EnvelopeError::WrongRecipient);
        }
        if self.binding.nonce != expected.binding.nonce {
            return Err(EnvelopeError::WrongNonce);
        }
        if self.label.not_after != 0 && expected.now > self.label.not_after {
            return Err(EnvelopeError::Expired);
        }
        let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&self.enc)
            .map_err(|_| EnvelopeError::Tampered)?;
        let plaintext = hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &recipient.secret,
            &enc,
            &info(self.purpose, expected.binding, &recipient.public),
            &self.ciphertext,
            &aad(&self.label),
        )
        .map_err(|_| EnvelopeError::Tampered)?;
        Ok((self.label, KeyMaterial::new(plaintext)))
    }
}
