//! Signed attestation results in the shape of EAR (draft-ietf-rats-ear, "EAT Attestation
//! Results"): a JWT (RFC 7519) in JWS compact serialization (RFC 7515 §7.1) signed with ES256
//! (RFC 7518 §3.4), so relying parties can cache a verdict instead of re-appraising evidence.
//!
//! ```text
//!  verifier: ResultSigner::sign(&Claims) ──► "hdr.payload.sig" ──► relying party:
//!            ResultVerifier::verify(token, now, Some(nonce)) ──► Claims | EarError
//! ```
//!
//! Sans-I/O: `now` and the nonce come in as arguments. No JWT crate: the accepted subset is small
//! enough to check line by line against the RFC text quoted beside each check.

use std::collections::btree_map::{BTreeMap, Entry};
use std::fmt;

use crate::alg::ct_eq;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::agreement;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::de::{DeserializeOwned, Error as _, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use zeroize::Zeroizing;

/// Largest token accepted, checked before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The `eat_profile` of every Warden result (draft-ietf-rats-ear §3.1).
pub const PROFILE: &str = "tag:warden.dev,2026:ear";
/// Longest allowed `exp - iat`: a cached verdict must be re-earned at least daily.
pub const MAX_LIFETIME_SECS: i64 = 24 * 60 * 60;
/// How far `iat` may lie in the relying party's future.
pub const CLOCK_SKEW_SECS: i64 = 60;

/// The only JWS algorithm accepted (RFC 8725 §3.1: "perform algorithm verification").
const ALG: &str = "ES256";
/// RFC 7518 §3.4: an ES256 signature is R || S, 32 octets each.
const SIG_LEN: usize = 64;
const COORD_LEN: usize = 32;
/// Attacker-supplied strings echoed in errors are cut to this many characters.
const ECHO_MAX: usize = 64;

/// EAR trust tiers (draft-ietf-rats-ear §3.2 "ear.status").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Affirming,
    Warning,
    Contraindicated,
    /// The verifier makes no claim about this submodule.
    None,
}

/// Who produced the result (draft-ietf-rats-ear §3.1 "ear.verifier-id").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierId {
    pub developer: String,
    pub build: String,
}

/// The appraisal of one submodule (draft-ietf-rats-ear §3.2, plus `warden.*` extensions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appraisal {
    #[serde(rename = "ear.status")]
    pub status: Status,
    #[serde(rename = "ear.appraisal-policy-id")]
    pub policy_id: String,
    #[serde(
        rename = "warden.pcr-digest",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub pcr_digest: Option<String>,
    #[serde(
        rename = "warden.failed-checks",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub failed: Vec<String>,
}

/// The JWT claims set of a Warden attestation result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Always [`PROFILE`].
    #[serde(rename = "eat_profile")]
    pub profile: String,
    pub iat: i64,
    pub exp: i64,
    /// base64url of the verifier's nonce ([`encode_nonce`]).
    #[serde(rename = "eat_nonce")]
    pub nonce: String,
    #[serde(rename = "ear.verifier-id")]
    pub verifier_id: VerifierId,
    /// Result id, unique: hex of 16 random bytes ([`random_jti`]).
    pub jti: String,
    /// The attested appliance, e.g. `"ak:" + hex(AK name)`.
    pub sub: String,
    /// One or more entries; a repeated name is an error, not last-one-wins.
    #[serde(deserialize_with = "unique_submods")]
    pub submods: BTreeMap<String, Appraisal>,
}

impl Claims {
    /// The fail-closed gate: at least one submodule, and every one `affirming`.
    pub fn all_affirming(&self) -> bool {
        !self.submods.is_empty() && self.submods.values().all(|a| a.status == Status::Affirming)
    }
}

/// The `eat_nonce` encoding of raw nonce bytes (base64url, no padding).
pub fn encode_nonce(nonce: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(nonce)
}

/// A fresh `jti`: hex of 16 random bytes.
pub fn random_jti() -> Result<String, EarError> {
    let mut id = [0u8; 16];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| EarError::Crypto)?;
    Ok(hex::encode(id))
}

/// Why a result could not be signed or verified. Never carries key bytes or the expected nonce;
/// attacker-supplied strings are truncated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EarError {
    #[error("token is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {part}: {reason}")]
    Malformed { part: &'static str, reason: String },
    #[error("JWS algorithm {alg:?} is not allowed (only ES256)")]
    AlgorithmNotAllowed { alg: String },
    #[error("JWS header has a \"crit\" parameter; no extensions are supported")]
    CriticalHeader,
    #[error("token is for key id {kid:?}, not this verifier's key")]
    WrongKey { kid: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("result expired at {exp}, now is {now}")]
    Expired { exp: i64, now: i64 },
    #[error("result issued at {iat}, in the future (now is {now})")]
    NotYetValid { iat: i64, now: i64 },
    #[error("result lifetime {secs}s exceeds the {MAX_LIFETIME_SECS}s maximum")]
    LifetimeTooLong { secs: i64 },
    #[error("eat_nonce does not match the expected nonce")]
    NonceMismatch,
    #[error("eat_profile {found:?} is not {PROFILE:?}")]
    WrongProfile { found: String },
    #[error("key rejected: {reason}")]
    Key { reason: &'static str },
    #[error("cryptographic operation failed")]
    Crypto,
}

fn malformed(part: &'static str, reason: impl Into<String>) -> EarError {
    let reason = reason.into();
    EarError::Malformed { part, reason }
}

fn check_size(len: usize) -> Result<(), EarError> {
    match len > MAX_TOKEN_BYTES {
        true => Err(EarError::TooLarge {
            len,
            max: MAX_TOKEN_BYTES,
        }),
        false => Ok(()),
    }
}

/// An ES256 public key as a JWK (RFC 7517 §4, RFC 7518 §6.2.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub kid: String,
}

impl Jwk {
    /// Parse into a verifier. Accepts only an ES256 P-256 signing key whose coordinates are 32
    /// bytes of canonical base64url forming a point on the curve, and whose `kid` is the one
    /// derived from that point.
    pub fn verifier(&self) -> Result<ResultVerifier, EarError> {
        let fields = [
            (self.kty == "EC", "kty is not \"EC\""),
            (self.crv == "P-256", "crv is not \"P-256\""),
            (self.alg == ALG, "alg is not \"ES256\""),
            (self.use_ == "sig", "use is not \"sig\""),
        ];
        if let Some((_, reason)) = fields.into_iter().find(|(ok, _)| !ok) {
            return Err(EarError::Key { reason });
        }
        let coord = |s: &str, reason| match URL_SAFE_NO_PAD.decode(s) {
            Ok(c) if c.len() == COORD_LEN => Ok(c),
            _ => Err(EarError::Key { reason }),
        };
        // SEC 1 §2.3.3 uncompressed point: 0x04 || X || Y.
        let mut point = vec![0x04];
        point.extend(coord(&self.x, "x is not 32 bytes of base64url")?);
        point.extend(coord(&self.y, "y is not 32 bytes of base64url")?);
        // ring checks an ECDSA key only when verifying, and reports a bad point as a bad
        // signature. ECDH public-key validation (SP 800-56A §5.6.2.3.4: range and on-curve) runs
        // the same checks now, so a bad key fails here, by name.
        let rng = SystemRandom::new();
        let ours = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
            .map_err(|_| EarError::Crypto)?;
        let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &point);
        agreement::agree_ephemeral(ours, &peer, |_| ()).map_err(|_| EarError::Key {
            reason: "x, y is not a point on P-256",
        })?;
        let kid = kid_for(&point);
        if self.kid != kid {
            return Err(EarError::Key {
                reason: "kid does not match the key",
            });
        }
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point);
        Ok(ResultVerifier { key, kid })
    }
}

/// `kid`: the first 16 characters of base64url(SHA-256(uncompressed point)).
fn kid_for(point: &[u8]) -> String {
    let full = URL_SAFE_NO_PAD.encode(digest(&SHA256, point));
    full.chars().take(16).collect()
}

/// The result-signing key (PKCS#8 P-256). Not `Clone`; `Debug` shows only the key id.
///
/// Off-spec for "zeroized on drop": the scalar lives inside ring's `EcdsaKeyPair`, which does not
/// expose it. The PKCS#8 bytes handed out by [`ResultSigner::generate`] are `Zeroizing`.
pub struct ResultSigner {
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
}

impl fmt::Debug for ResultSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResultSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ResultSigner {
    /// A fresh key, and its PKCS#8 encoding for sealing to storage.
    pub fn generate() -> Result<(ResultSigner, Zeroizing<Vec<u8>>), EarError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| EarError::Crypto)?;
        let der = Zeroizing::new(doc.as_ref().to_vec());
        Ok((Self::from_pkcs8(&der)?, der))
    }

    /// Load a PKCS#8 v1 P-256 key (ring checks the public key matches the private key).
    pub fn from_pkcs8(der: &[u8]) -> Result<ResultSigner, EarError> {
        let rng = SystemRandom::new();
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| EarError::Key {
                reason: "not a PKCS#8 P-256 private key",
            })?;
        let kid = kid_for(key_pair.public_key().as_ref());
        Ok(ResultSigner { key_pair, rng, kid })
    }

    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The public half, for relying parties.
    pub fn public_jwk(&self) -> Jwk {
        let point = self.key_pair.public_key().as_ref();
        let xy = point.split_first().map(|(_, xy)| xy).unwrap_or_default();
        let (x, y) = xy.split_at_checked(COORD_LEN).unwrap_or_default();
        Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
            alg: ALG.into(),
            use_: "sig".into(),
            kid: self.kid.clone(),
        }
    }

    /// Sign a result. Refuses what every verifier would reject whatever the time (profile,
    /// lifetime, no submodules, size), so a bad result fails here rather than at each reader.
    pub fn sign(&self, claims: &Claims) -> Result<String, EarError> {
        check_claims(claims)?;
        let header = serde_json::json!({"alg": ALG, "typ": "JWT", "kid": self.kid});
        let payload =
            serde_json::to_vec(claims).map_err(|e| malformed("payload", e.to_string()))?;
        self.sign_parts(header.to_string().as_bytes(), &payload)
    }

    /// RFC 7515 §5.1: sign ASCII(BASE64URL(header) || '.' || BASE64URL(payload)).
    fn sign_parts(&self, header: &[u8], payload: &[u8]) -> Result<String, EarError> {
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let sig = self
            .key_pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| EarError::Crypto)?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut token);
        check_size(token.len())?;
        Ok(token)
    }
}

/// Verifies results against one ES256 public key; built by [`Jwk::verifier`].
#[derive(Debug)]
pub struct ResultVerifier {
    key: UnparsedPublicKey<Vec<u8>>,
    kid: String,
}

/// The JOSE header as received. RFC 7515 §4: other parameters "MUST be ignored" unless listed in
/// "crit"; we never fetch keys, so `jku`/`jwk`/`x5u` cannot redirect us. A repeated `alg`, `kid`
/// or `crit` fails to parse.
#[derive(Deserialize)]
struct ReceivedHeader {
    alg: Option<String>,
    kid: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

impl ResultVerifier {
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// Verify a compact JWS and return its claims. In order: size; exactly 3 parts; header `alg`
    /// exactly "ES256"; no `crit`; `kid`, when present, is ours; the signature over the exact
    /// received `header.payload` bytes; then the claims: no unknown or repeated fields,
    /// `iat <= now + 60`, `now < exp`, `0 < exp - iat <= 24h`, at least one submodule, profile
    /// [`PROFILE`], and the nonce equal to `expected_nonce` when given (constant time).
    pub fn verify(
        &self,
        token: &str,
        now_unix: i64,
        expected_nonce: Option<&[u8]>,
    ) -> Result<Claims, EarError> {
        check_size(token.len())?;
        // RFC 7515 §7.1: BASE64URL(header) '.' BASE64URL(payload) '.' BASE64URL(signature).
        let parts = || {
            let found = token.split('.').count();
            malformed(
                "token",
                format!("expected 3 dot-separated parts, found {found}"),
            )
        };
        let (signing_input, sig_b64) = token.rsplit_once('.').ok_or_else(parts)?;
        let (header_b64, payload_b64) = signing_input.split_once('.').ok_or_else(parts)?;
        if payload_b64.contains('.') {
            return Err(parts());
        }

        // RFC 7515 §5.2 steps 2-4; RFC 8725 §2.1, §3.1: the algorithm is ours to pick, not the
        // token's. "none", HS256 keyed with our public key, ES384, a missing alg all stop here.
        let header: ReceivedHeader = parse_json("header", &b64("header", header_b64)?)?;
        match header.alg.as_deref() {
            Some(ALG) => {}
            Some(other) => return Err(EarError::AlgorithmNotAllowed { alg: clip(other) }),
            None => return Err(malformed("header", "missing \"alg\"")),
        }
        // RFC 7515 §4.1.11: "If any of the listed extension Header Parameters are not understood
        // and supported by the recipient, then the JWS is invalid." We support none.
        if header.crit {
            return Err(EarError::CriticalHeader);
        }
        if let Some(kid) = header.kid.filter(|kid| *kid != self.kid) {
            return Err(EarError::WrongKey { kid: clip(&kid) });
        }

        // RFC 7515 §5.2 step 8, over the bytes as received, never re-encoded.
        let sig = b64("signature", sig_b64)?;
        if sig.len() != SIG_LEN {
            let reason = format!("expected {SIG_LEN} bytes, found {}", sig.len());
            return Err(malformed("signature", reason));
        }
        (self.key.verify(signing_input.as_bytes(), &sig)).map_err(|_| EarError::BadSignature)?;

        let claims: Claims = parse_json("payload", &b64("payload", payload_b64)?)?;
        // RFC 7519 §4.1.6 "iat": a result from the future means a skewed or lying clock.
        if claims.iat > now_unix.saturating_add(CLOCK_SKEW_SECS) {
            return Err(EarError::NotYetValid {
                iat: claims.iat,
                now: now_unix,
            });
        }
        // RFC 7519 §4.1.4: "the current date/time MUST be before the expiration date/time".
        if now_unix >= claims.exp {
            return Err(EarError::Expired {
                exp: claims.exp,
                now: now_unix,
            });
        }
        check_claims(&claims)?;
        // Canonical base64url on both sides (the decoder rejects padding and stray bits), so
        // string equality is nonce equality.
        if let Some(expected) = expected_nonce {
            if !ct_eq(claims.nonce.as_bytes(), encode_nonce(expected).as_bytes()) {
                return Err(EarError::NonceMismatch);
            }
        }
        Ok(claims)
    }
}

/// The claim checks that need neither the time nor the nonce; shared with signing.
fn check_claims(claims: &Claims) -> Result<(), EarError> {
    if claims.exp <= claims.iat {
        return Err(malformed("payload", "exp is not after iat"));
    }
    let secs = claims.exp.saturating_sub(claims.iat);
    if secs > MAX_LIFETIME_SECS {
        return Err(EarError::LifetimeTooLong { secs });
    }
    // draft-ietf-rats-ear §3.1: "submods" holds one or more appraisals. An empty map would make
    // "every submodule is affirming" vacuously true.
    if claims.submods.is_empty() {
        return Err(malformed("payload", "submods is empty"));
    }
    if claims.profile != PROFILE {
        return Err(EarError::WrongProfile {
            found: clip(&claims.profile),
        });
    }
    Ok(())
}

/// base64url without padding. The engine rejects padding, the standard alphabet and non-zero
/// trailing bits, so each byte string has exactly one accepted encoding.
fn b64(part: &'static str, s: &str) -> Result<Vec<u8>, EarError> {
    (URL_SAFE_NO_PAD.decode(s)).map_err(|e| malformed(part, format!("bad base64url: {e}")))
}

/// RFC 7515 §5.2 steps 3, 6: header and claims set are JSON objects (serde would also take an
/// array for a struct). serde_json rejects trailing data.
fn parse_json<T: DeserializeOwned>(part: &'static str, bytes: &[u8]) -> Result<T, EarError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(malformed(part, "not a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| malformed(part, e.to_string()))
}

/// `crit` with any value at all, even `null`, counts as present.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

fn unique_submods<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Appraisal>, D::Error> {
    struct Submods;
    impl<'de> Visitor<'de> for Submods {
        type Value = BTreeMap<String, Appraisal>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of submodule name to appraisal")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((name, appraisal)) = map.next_entry::<String, Appraisal>()? {
                match out.entry(name) {
                    Entry::Vacant(e) => e.insert(appraisal),
                    Entry::Occupied(e) => {
                        let name = clip(e.key());
                        return Err(A::Error::custom(format_args!(
                            "duplicate submodule {name:?}"
                        )));
                    }
                };
            }
            Ok(out)
        }
    }
    d.deserialize_map(Submods)
}

fn clip(s: &str) -> String {
    s.chars().take(ECHO_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use EarError as E;

    const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
    const NONCE: &[u8] = b"relying-party-nonce-0001";

    fn claims() -> Claims {
        let tpm = Appraisal {
            status: Status::Affirming,
            policy_id: "policy:warden/boot@1".into(),
            pcr_digest: Some("ab".repeat(32)),
            failed: vec![],
        };
        Claims {
            profile: PROFILE.into(),
            iat: NOW,
            exp: NOW + 300,
            nonce: encode_nonce(NONCE),
            verifier_id: VerifierId {
                developer: "warden.dev".into(),
                build: "0.1.0".into(),
            },
            jti: random_jti().unwrap(),
            sub: format!("ak:000b{}", "cd".repeat(32)),
            submods: BTreeMap::from([("tpm".to_string(), tpm)]),
        }
    }

    fn setup() -> (ResultSigner, ResultVerifier) {
        let (signer, _) = ResultSigner::generate().unwrap();
        let verifier = signer.public_jwk().verifier().unwrap();
        (signer, verifier)
    }

    fn enc(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn hdr(s: &ResultSigner) -> Value {
        json!({"alg": "ES256", "typ": "JWT", "kid": s.key_id()})
    }

    /// Signs an arbitrary signing input with a real key, so only the check under test can fail.
    fn sign_input(s: &ResultSigner, input: &str) -> String {
        let sig = s.key_pair.sign(&s.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", enc(sig))
    }

    /// `header` over the claims JSON after `edit`, validly signed, bypassing `sign`'s checks.
    fn raw(s: &ResultSigner, header: Value, edit: impl FnOnce(&mut Value)) -> String {
        let mut payload = serde_json::to_value(claims()).unwrap();
        edit(&mut payload);
        sign_input(
            s,
            &format!("{}.{}", enc(header.to_string()), enc(payload.to_string())),
        )
    }

    /// base64url of the decoded bytes with every low bit flipped.
    fn flip(b64: &str) -> String {
        enc(URL_SAFE_NO_PAD
            .decode(b64)
            .unwrap()
            .iter()
            .map(|b| b ^ 1)
            .collect::<Vec<_>>())
    }

    fn span(payload: &mut Value, iat: i64, exp: i64) {
        (payload["iat"], payload["exp"]) = (json!(iat), json!(exp));
    }

    macro_rules! rejects {
        ($v:expr, $($name:literal: $token:expr => $want:pat),+ $(,)?) => {$(
            match $v.verify(&$token, NOW, Some(NONCE)) {
                Err($want) => {}
                other => panic!("{}: {other:?}", $name),
            }
        )+};
    }

    #[test]
    fn round_trip() {
        let (signer, verifier) = setup();
        let c = claims();
        let token = signer.sign(&c).unwrap();
        assert_eq!(verifier.verify(&token, NOW, Some(NONCE)).unwrap(), c);
        assert_eq!(verifier.verify(&token, NOW + 299, None).unwrap(), c);
        assert!(c.all_affirming());
        assert!(token.starts_with(&format!("{}.", enc(hdr(&signer).to_string()))));
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["submods"]["tpm"]["ear.status"], "affirming");
        assert!(v["submods"]["tpm"].get("warden.failed-checks").is_none());
        assert_eq!(serde_json::to_value(Status::None).unwrap(), "none");
        // Accepted edges: no kid, iat at the skew limit, lifetime exactly 24h.
        let edges = [
            raw(&signer, json!({"alg": "ES256"}), |_| {}),
            raw(&signer, hdr(&signer), |p| span(p, NOW + 60, NOW + 61)),
            raw(&signer, hdr(&signer), |p| {
                span(p, NOW, NOW + MAX_LIFETIME_SECS)
            }),
        ];
        for token in edges {
            verifier.verify(&token, NOW, Some(NONCE)).unwrap();
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let (s, v) = setup();
        let (other, _) = ResultSigner::generate().unwrap();
        let payload = enc(serde_json::to_vec(&claims()).unwrap());
        // HS256 keyed with the public key, the classic algorithm-confusion forgery.
        let input = format!("{}.{payload}", enc(r#"{"alg":"HS256"}"#));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.public_jwk().x.as_bytes());
        let hs256 = format!("{input}.{}", enc(ring::hmac::sign(&key, input.as_bytes())));
        let dup_alg = r#"{"alg":"ES256","alg":"none"}"#;
        let crit = |c: Value| json!({"alg": "ES256", "crit": c, "b64": false});
        rejects!(v,
            "alg none": raw(&s, json!({"alg": "none"}), |_| {}) => E::AlgorithmNotAllowed { .. },
            "alg none, empty sig": format!("{}.{payload}.", enc(r#"{"alg":"none"}"#))
                => E::AlgorithmNotAllowed { .. },
            "alg HS256": hs256 => E::AlgorithmNotAllowed { .. },
            "alg ES384": raw(&s, json!({"alg": "ES384"}), |_| {}) => E::AlgorithmNotAllowed { .. },
            "alg es256": raw(&s, json!({"alg": "es256"}), |_| {}) => E::AlgorithmNotAllowed { .. },
            "missing alg": raw(&s, json!({"typ": "JWT"}), |_| {})
                => E::Malformed { part: "header", .. },
            "alg null": raw(&s, json!({"alg": null}), |_| {})
                => E::Malformed { part: "header", .. },
            "alg number": raw(&s, json!({"alg": 7}), |_| {}) => E::Malformed { part: "header", .. },
            "duplicate alg": sign_input(&s, &format!("{}.{payload}", enc(dup_alg)))
                => E::Malformed { part: "header", .. },
            "header array": raw(&s, json!(["ES256"]), |_| {})
                => E::Malformed { part: "header", .. },
            "crit": raw(&s, crit(json!(["b64"])), |_| {}) => E::CriticalHeader,
            "crit empty": raw(&s, crit(json!([])), |_| {}) => E::CriticalHeader,
            "crit null": raw(&s, crit(json!(null)), |_| {}) => E::CriticalHeader,
            "wrong kid": raw(&s, json!({"alg": "ES256", "kid": "someone-else"}), |_| {})
                => E::WrongKey { .. },
            "other key, own kid": other.sign(&claims()).unwrap() => E::WrongKey { .. },
            "other key, our kid": raw(&other, hdr(&s), |_| {}) => E::BadSignature,
        );
    }

    #[test]
    fn rejects_bad_framing_and_signatures() {
        let (s, v) = setup();
        let token = s.sign(&claims()).unwrap();
        let [h, p, sig]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
        let mut forged = claims();
        forged.sub = "ak:attacker".into();
        let forged = enc(serde_json::to_vec(&forged).unwrap());
        // 64 bytes are 86 characters; the last one carries 4 spare bits, which must be zero.
        let last = match sig.chars().last() {
            Some('A') => 'B',
            Some('Q') => 'R',
            Some('g') => 'h',
            _ => 'x',
        };
        let non_canonical = format!("{h}.{p}.{}{last}", &sig[..sig.len() - 1]);
        rejects!(v,
            "tampered payload": format!("{h}.{forged}.{sig}") => E::BadSignature,
            "tampered signature": format!("{h}.{p}.{}", flip(sig)) => E::BadSignature,
            "short signature": format!("{h}.{p}.{}", &sig[..84])
                => E::Malformed { part: "signature", .. },
            "2 parts": format!("{h}.{p}") => E::Malformed { part: "token", .. },
            "4 parts": format!("{token}.{sig}") => E::Malformed { part: "token", .. },
            "oversized": "!".repeat(MAX_TOKEN_BYTES + 1)
                => E::TooLarge { len: 16385, max: MAX_TOKEN_BYTES },
            "padding": format!("{h}=.{p}.{sig}") => E::Malformed { part: "header", .. },
            "std alphabet": format!("+{h}.{p}.{sig}") => E::Malformed { part: "header", .. },
            "bad char in sig": format!("{h}.{p}.*{sig}") => E::Malformed { part: "signature", .. },
            "non-canonical sig": non_canonical => E::Malformed { part: "signature", .. },
            "payload not base64": sign_input(&s, &format!("{h}.{p}*"))
                => E::Malformed { part: "payload", .. },
        );
        for end in 0..token.len() {
            assert!(v.verify(&token[..end], NOW, None).is_err(), "prefix {end}");
        }
    }

    #[test]
    fn rejects_bad_claims() {
        let (s, v) = setup();
        let h = || hdr(&s);
        let c = serde_json::to_string(&claims()).unwrap();
        let dup = c.replace(
            r#""submods":{"#,
            r#""submods":{"tpm":{"ear.status":"warning","ear.appraisal-policy-id":"x"},"#,
        );
        let input = |json: &str| format!("{}.{}", enc(h().to_string()), enc(json));
        rejects!(v,
            "expired": raw(&s, h(), |p| span(p, NOW - 300, NOW)) => E::Expired { now: NOW, .. },
            "iat in future": raw(&s, h(), |p| p["iat"] = json!(NOW + 61)) => E::NotYetValid { .. },
            "lifetime": raw(&s, h(), |p| p["exp"] = json!(NOW + MAX_LIFETIME_SECS + 1))
                => E::LifetimeTooLong { secs: 86_401 },
            "lifetime overflow": raw(&s, h(), |p| span(p, i64::MIN, i64::MAX))
                => E::LifetimeTooLong { .. },
            "exp before iat": raw(&s, h(), |p| span(p, NOW + 50, NOW + 40))
                => E::Malformed { part: "payload", .. },
            "nonce": raw(&s, h(), |p| p["eat_nonce"] = json!(encode_nonce(b"other")))
                => E::NonceMismatch,
            "profile": raw(&s, h(), |p| p["eat_profile"] = json!("tag:ietf.org,2023:ear"))
                => E::WrongProfile { .. },
            "unknown claim": raw(&s, h(), |p| p["admin"] = json!(true))
                => E::Malformed { part: "payload", .. },
            "unknown appraisal field": raw(&s, h(), |p| p["submods"]["tpm"]["ear.x"] = json!(1))
                => E::Malformed { part: "payload", .. },
            "unknown verifier-id field": raw(&s, h(), |p| p["ear.verifier-id"]["x"] = json!(1))
                => E::Malformed { part: "payload", .. },
            "missing exp": raw(&s, h(), |p| { p.as_object_mut().unwrap().remove("exp"); })
                => E::Malformed { part: "payload", .. },
            "status case": raw(&s, h(), |p| p["submods"]["tpm"]["ear.status"] = json!("Affirming"))
                => E::Malformed { part: "payload", .. },
            "empty submods": raw(&s, h(), |p| p["submods"] = json!({}))
                => E::Malformed { part: "payload", .. },
            "duplicate submod": sign_input(&s, &input(&dup))
                => E::Malformed { part: "payload", .. },
            "array payload": raw(&s, h(), |p| *p = json!([PROFILE, NOW]))
                => E::Malformed { part: "payload", .. },
            "trailing data": sign_input(&s, &input(&format!("{c}{{}}")))
                => E::Malformed { part: "payload", .. },
        );
        let token = s.sign(&claims()).unwrap();
        let err = v.verify(&token, NOW, Some(b"secret-expected")).unwrap_err();
        assert!(matches!(err, E::NonceMismatch));
        assert!(
            !err.to_string().contains("secret")
                && !err.to_string().contains(&enc("secret-expected"))
        );
    }

    #[test]
    fn sign_refuses_unverifiable_claims() {
        let (s, _) = setup();
        let edits: [fn(&mut Claims); 4] = [
            |c| c.profile = "other".into(),
            |c| c.exp = c.iat + MAX_LIFETIME_SECS + 1,
            |c| c.submods.clear(),
            |c| c.sub = "x".repeat(MAX_TOKEN_BYTES),
        ];
        for edit in edits {
            let mut c = claims();
            edit(&mut c);
            assert!(s.sign(&c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn jwk_round_trips_and_rejects_foreign_keys() {
        let (signer, der) = ResultSigner::generate().unwrap();
        let jwk = signer.public_jwk();
        let back: Jwk = serde_json::from_str(&serde_json::to_string(&jwk).unwrap()).unwrap();
        let (verifier, reloaded) = (back.verifier().unwrap(), ResultSigner::from_pkcs8(&der));
        assert_eq!(
            [verifier.key_id(), reloaded.unwrap().key_id()],
            [&jwk.kid; 2]
        );
        assert_eq!(jwk.kid.len(), 16);
        assert!(matches!(
            ResultSigner::from_pkcs8(&der[1..]),
            Err(E::Key { .. })
        ));
        let edits: [fn(&mut Jwk); 10] = [
            |j| j.crv = "P-384".into(),
            |j| j.crv = "secp256k1".into(),
            |j| j.kty = "oct".into(),
            |j| j.alg = "none".into(),
            |j| j.use_ = "enc".into(),
            |j| j.kid = "AAAAAAAAAAAAAAAA".into(),
            |j| j.x = enc([0u8; 31]),
            |j| j.y = format!("{}=", j.y),
            |j| j.y = enc([0xFFu8; 32]), // >= p
            |j| j.y = flip(&j.y),        // off the curve: only y and p - y are on it
        ];
        for edit in edits {
            let mut j = jwk.clone();
            edit(&mut j);
            assert!(matches!(j.verifier(), Err(E::Key { .. })), "{j:?}");
        }
    }

    #[test]
    fn debug_does_not_print_key_bytes() {
        let (signer, der) = ResultSigner::generate().unwrap();
        let dbg = format!("{signer:?}");
        assert_eq!(
            dbg,
            format!("ResultSigner {{ kid: {:?}, .. }}", signer.key_id())
        );
        for w in der.windows(8) {
            assert!(!dbg.contains(&hex::encode(w)) && !dbg.as_bytes().windows(8).any(|d| d == w));
        }
    }
}
