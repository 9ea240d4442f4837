//! X.509 certificate chains from an update-metadata signer to a pinned CA.
//!
//! A key of type `x509` in the root metadata is a pinned CA plus the exact subject common name
//! its signer must carry. The signer presents its certificate and any intermediates (leaf
//! first); [`verify_chain`] walks them up to the [`PinnedCa`] and hands back the leaf's key,
//! which then verifies the metadata signature.
//!
//! ```text
//!  PinnedCa ──signs──▶ intermediate ──signs──▶ … ──signs──▶ leaf ──▶ LeafKey
//!  CA, keyCertSign     CA, keyCertSign                     not a CA, digitalSignature,
//!  pathLen ≥ #int.     pathLen ≥ #int. below               codeSigning, CN = expected
//! ```
//!
//! Path validation after RFC 5280 section 6.1, narrowed to this one use:
//!
//! - Bytes: at most [`MAX_CHAIN`] certificates of at most [`MAX_CERT_BYTES`] each, checked
//!   before any parsing; each parsed in full by x509-parser, then its DER framing re-read here
//!   (x509-parser ignores data left inside a SEQUENCE), so nothing trails anywhere.
//! - Signatures: checked with ring over the exact tbsCertificate bytes, for the pairs ECDSA
//!   P-256/SHA-256, ECDSA P-384/SHA-384, Ed25519, and RSA PKCS#1 v1.5 with SHA-256/384/512 and
//!   2048 to 8192-bit keys. AlgorithmIdentifiers are matched byte for byte (as webpki does);
//!   anything else is refused.
//! - Names: each issuer must equal the next subject as DER bytes.
//!   `// Off-spec:` RFC 5280 section 7.1 name comparison (case folding, string types) is not
//!   applied; a CA that re-encodes its name is refused.
//! - Validity: every certificate, the pinned CA included, against [`TrustedTime`]: with an
//!   unknown clock only what is certainly expired is refused (see [`crate::time`]).
//! - Extensions: basicConstraints, keyUsage and extendedKeyUsage are understood; any other
//!   critical extension is refused (RFC 5280 section 4.2: "A certificate-using system MUST
//!   reject the certificate if it encounters a critical extension it does not recognize").
//!   Name constraints, policies and revocation are not implemented, hence refused if critical.
//! - `// Off-spec:` anyExtendedKeyUsage does not stand in for id-kp-codeSigning on the leaf, and
//!   self-issued intermediates count towards pathLenConstraint (RFC 5280 6.1.4 (l) skips them).
//!
//! The pinned CA is trusted because it is pinned: its own signature is not checked, so an
//! intermediate CA may be pinned as well as a root.

use std::collections::BTreeSet;
use std::fmt;

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::{X509Name, X509Version};

use crate::keys::KeyAlg;

mod der;
use crate::time::{format_rfc3339, TrustedTime};
use der::*;

/// Largest DER certificate accepted, in bytes.
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// Most certificates presented in a chain (leaf and intermediates; the pinned CA excluded).
pub const MAX_CHAIN: usize = 4;

/// Longest subject shown in an error message, in characters.
const MAX_SUBJECT_SHOWN: usize = 128;
/// RSA modulus sizes accepted (ring's `RSA_PKCS1_2048_8192_*` bounds).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// A pinned trust anchor, parsed and checked once: a CA (basicConstraints cA=true) with
/// keyUsage keyCertSign, no unknown critical extension, and a key this module can verify with.
#[derive(Clone, PartialEq, Eq)]
pub struct PinnedCa {
    der: Vec<u8>,
    id: CertId,
    /// The subject Name as DER, to compare with the issuer of the certificate below.
    subject: Vec<u8>,
    key: KeyKind,
    /// The subjectPublicKey bits.
    public: Vec<u8>,
    path_len: Option<u32>,
    not_before: i64,
    not_after: i64,
}

impl fmt::Debug for PinnedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCa")
            .field("subject", &self.id.subject)
            .field("key", &self.key)
            .field("der_len", &self.der.len())
            .finish_non_exhaustive()
    }
}

impl PinnedCa {
    /// Parse and check a CA certificate to pin. Its validity period is checked at each use.
    pub fn from_der(der: &[u8]) -> Result<PinnedCa, ChainError> {
        let ca = Parsed::new(der, Place::Anchor)?;
        check_ca(&ca, 0)?;
        let issuer = ca.as_issuer()?;
        let validity = ca.x509.validity();
        Ok(PinnedCa {
            der: der.to_vec(),
            subject: issuer.subject.to_vec(),
            key: issuer.key,
            public: issuer.public.to_vec(),
            path_len: ca.exts.basic.and_then(|(_, path_len)| path_len),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            id: ca.id,
        })
    }

    /// The certificate as pinned.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    fn as_issuer(&self) -> Issuer<'_> {
        Issuer {
            id: &self.id,
            subject: &self.subject,
            key: self.key,
            public: &self.public,
        }
    }
}

/// The algorithm and raw public key of a verified leaf, ready for ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafKey {
    pub alg: KeyAlg,
    /// The subjectPublicKey bits: 32 bytes for Ed25519, an uncompressed SEC1 point for P-256.
    pub public: Vec<u8>,
}

/// Verify `chain` (leaf first, then intermediates, DER each) up to `anchor` at `time`, for a leaf
/// whose subject commonName is exactly `expected_cn`. Returns the leaf's signing key.
pub fn verify_chain(
    chain: &[Vec<u8>],
    anchor: &PinnedCa,
    expected_cn: &str,
    time: &TrustedTime,
) -> Result<LeafKey, ChainError> {
    // Sizes before any work.
    if chain.is_empty() {
        return Err(ChainError::EmptyChain);
    }
    if chain.len() > MAX_CHAIN {
        return Err(ChainError::ChainTooLong { len: chain.len() });
    }
    for (i, der) in chain.iter().enumerate() {
        if der.len() > MAX_CERT_BYTES {
            return Err(ChainError::TooLarge {
                at: Place::Chain(i),
                len: der.len(),
            });
        }
    }
    let certs = chain
        .iter()
        .enumerate()
        .map(|(i, der)| Parsed::new(der, Place::Chain(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((leaf, intermediates)) = certs.split_first() else {
        return Err(ChainError::EmptyChain);
    };

    // Issuer names and signatures, from the anchor down (RFC 5280 6.1.3 (a)(1), (a)(4)).
    let mut issuer = anchor.as_issuer();
    for cert in certs.iter().rev() {
        check_issued_by(cert, &issuer)?;
        if cert.id.place != Place::Chain(0) {
            issuer = cert.as_issuer()?;
        }
    }

    check_common_name(leaf, expected_cn)?;

    // Validity of every certificate (RFC 5280 6.1.3 (a)(2)).
    check_validity(&anchor.id, anchor.not_before, anchor.not_after, time)?;
    for cert in certs.iter().rev() {
        let validity = cert.x509.validity();
        check_validity(
            &cert.id,
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
            time,
        )?;
    }

    // CA roles and path length (RFC 5280 6.1.4 (k), (l), (m), (n)). The anchor's role was
    // checked when pinned; its path length depends on this chain.
    if let Some(path_len) = anchor.path_len {
        check_path_len(&anchor.id, path_len, intermediates.len())?;
    }
    for (below, cert) in intermediates.iter().enumerate() {
        check_ca(cert, below)?;
    }
    check_leaf(leaf)
}

/// Where a certificate sits: in the presented chain (0 is the leaf) or the pinned CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Chain(usize),
    Anchor,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Chain(i) => write!(f, "certificate {i}"),
            Place::Anchor => f.write_str("the pinned CA"),
        }
    }
}

/// A certificate named in an error: where it sits and its subject (as printed by x509-parser,
/// cut to 128 characters; it is untrusted text, shown escaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertId {
    pub place: Place,
    pub subject: String,
}

impl fmt::Display for CertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (subject {:?})", self.place, self.subject)
    }
}

/// Why a certificate chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error("no certificate presented")]
    EmptyChain,
    #[error("chain of {len} certificates; at most {MAX_CHAIN}")]
    ChainTooLong { len: usize },
    #[error("{at} is {len} bytes; at most {MAX_CERT_BYTES}")]
    TooLarge { at: Place, len: usize },
    #[error("{at} is not a DER X.509 certificate: {detail}")]
    Malformed { at: Place, detail: String },
    #[error("{at} has {extra} bytes after the certificate")]
    TrailingBytes { at: Place, extra: usize },
    #[error("{cert} is X.509 version {version}; only version 3 is accepted")]
    Version { cert: CertId, version: u32 },
    #[error("{cert}: the signature algorithm in tbsCertificate differs from the outer one")]
    SignatureAlgorithmMismatch { cert: CertId },
    #[error("{cert}: extension {oid} appears more than once")]
    DuplicateExtension { cert: CertId, oid: String },
    #[error("{cert}: extension {oid} does not parse")]
    BadExtension { cert: CertId, oid: String },
    #[error("{cert}: unknown critical extension {oid}")]
    UnknownCriticalExtension { cert: CertId, oid: String },
    #[error("{cert}: issuer is not the subject of {issuer}")]
    IssuerMismatch { cert: CertId, issuer: CertId },
    #[error("{cert}: signature algorithm {alg} is not accepted")]
    UnsupportedSignatureAlgorithm { cert: CertId, alg: String },
    #[error("{cert}: public key algorithm {alg} is not accepted for a CA")]
    UnsupportedIssuerKey { cert: CertId, alg: String },
    #[error("{cert}: RSA key of {bits} bits; 2048 to 8192 accepted")]
    RsaKeySize { cert: CertId, bits: usize },
    #[error("{cert}: signed with {alg}, which does not go with the {key} key of {issuer}")]
    AlgorithmKeyMismatch {
        cert: CertId,
        issuer: CertId,
        alg: &'static str,
        key: &'static str,
    },
    #[error("{cert}: signature does not verify under the key of {issuer}")]
    BadSignature { cert: CertId, issuer: CertId },
    #[error("{cert} expired at {} (trusted time {})", format_rfc3339(*.not_after), format_rfc3339(*.now))]
    Expired {
        cert: CertId,
        not_after: i64,
        now: i64,
    },
    #[error("{cert} is not valid before {} (trusted time {})", format_rfc3339(*.not_before), format_rfc3339(*.now))]
    NotYetValid {
        cert: CertId,
        not_before: i64,
        now: i64,
    },
    #[error("{cert}: subject has {count} common names; exactly one required")]
    CommonNameCount { cert: CertId, count: usize },
    #[error("{cert}: subject common name is not {expected:?}")]
    WrongCommonName { cert: CertId, expected: String },
    #[error("{cert} is a CA (basicConstraints cA=true); a signing certificate must not be")]
    LeafIsCa { cert: CertId },
    #[error("{cert} is not a CA (basicConstraints cA=true missing)")]
    NotCa { cert: CertId },
    #[error("{cert}: keyUsage missing or without {usage}")]
    MissingKeyUsage { cert: CertId, usage: &'static str },
    #[error("{cert}: extendedKeyUsage missing or without id-kp-codeSigning")]
    NotCodeSigning { cert: CertId },
    #[error(
        "{cert}: pathLenConstraint {path_len}, but {below} intermediate certificates below it"
    )]
    PathLength {
        cert: CertId,
        path_len: u32,
        below: usize,
    },
    #[error("{cert}: {key} cannot sign update metadata (Ed25519 or ECDSA P-256 only)")]
    UnsupportedLeafKey { cert: CertId, key: String },
}

impl ChainError {
    /// The refusal reason as the update API and audit log name it.
    pub fn reason(&self) -> &'static str {
        match self {
            ChainError::ChainTooLong { .. }
            | ChainError::TooLarge { .. }
            | ChainError::Malformed { .. }
            | ChainError::TrailingBytes { .. }
            | ChainError::Version { .. }
            | ChainError::SignatureAlgorithmMismatch { .. }
            | ChainError::DuplicateExtension { .. }
            | ChainError::BadExtension { .. } => "malformed-certificate",
            ChainError::EmptyChain
            | ChainError::UnknownCriticalExtension { .. }
            | ChainError::IssuerMismatch { .. }
            | ChainError::UnsupportedSignatureAlgorithm { .. }
            | ChainError::UnsupportedIssuerKey { .. }
            | ChainError::RsaKeySize { .. }
            | ChainError::AlgorithmKeyMismatch { .. }
            | ChainError::BadSignature { .. }
            | ChainError::CommonNameCount { .. }
            | ChainError::WrongCommonName { .. } => "untrusted-certificate",
            ChainError::Expired { .. } | ChainError::NotYetValid { .. } => "certificate-expired",
            ChainError::LeafIsCa { .. }
            | ChainError::NotCa { .. }
            | ChainError::MissingKeyUsage { .. }
            | ChainError::NotCodeSigning { .. }
            | ChainError::PathLength { .. }
            | ChainError::UnsupportedLeafKey { .. } => "key-usage",
        }
    }
}

/// One certificate, parsed by x509-parser and framed by [`Frame`].
struct Parsed<'a> {
    x509: X509Certificate<'a>,
    frame: Frame<'a>,
    exts: Exts,
    id: CertId,
}

impl<'a> Parsed<'a> {
    fn new(der: &'a [u8], at: Place) -> Result<Parsed<'a>, ChainError> {
        if der.len() > MAX_CERT_BYTES {
            return Err(ChainError::TooLarge { at, len: der.len() });
        }
        let malformed = |detail: String| ChainError::Malformed { at, detail };
        let (rest, x509) = X509Certificate::from_der(der).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ChainError::TrailingBytes {
                at,
                extra: rest.len(),
            });
        }
        let frame = Frame::read(der).map_err(malformed)?;
        if frame.tbs != x509.tbs_certificate.as_ref() {
            return Err(malformed("tbsCertificate framing is ambiguous".into()));
        }
        let id = CertId {
            place: at,
            subject: shown(x509.subject()),
        };
        if x509.version() != X509Version::V3 {
            return Err(ChainError::Version {
                cert: id,
                version: x509.version().0.saturating_add(1),
            });
        }
        if frame.tbs_sig_alg != frame.sig_alg {
            return Err(ChainError::SignatureAlgorithmMismatch { cert: id });
        }
        let exts = Exts::read(&x509, &id)?;
        Ok(Parsed {
            x509,
            frame,
            exts,
            id,
        })
    }

    /// This certificate as the issuer of the one below: its name and a key we can verify with.
    fn as_issuer(&self) -> Result<Issuer<'_>, ChainError> {
        let key = KeyKind::from_spki_alg(self.frame.spki_alg).ok_or_else(|| {
            ChainError::UnsupportedIssuerKey {
                cert: self.id.clone(),
                alg: self.x509.public_key().algorithm.algorithm.to_id_string(),
            }
        })?;
        let public = self.frame.spki_key;
        if key == KeyKind::Rsa {
            let bits = rsa_modulus_bits(public).ok_or_else(|| ChainError::Malformed {
                at: self.id.place,
                detail: "RSA public key does not parse".into(),
            })?;
            if !RSA_BITS.contains(&bits) {
                return Err(ChainError::RsaKeySize {
                    cert: self.id.clone(),
                    bits,
                });
            }
        }
        Ok(Issuer {
            id: &self.id,
            subject: self.x509.subject().as_raw(),
            key,
            public,
        })
    }
}

/// What signs the certificate below: the pinned CA or an intermediate.
struct Issuer<'a> {
    id: &'a CertId,
    subject: &'a [u8],
    key: KeyKind,
    public: &'a [u8],
}

fn check_issued_by(cert: &Parsed<'_>, issuer: &Issuer<'_>) -> Result<(), ChainError> {
    if cert.x509.issuer().as_raw() != issuer.subject {
        return Err(ChainError::IssuerMismatch {
            cert: cert.id.clone(),
            issuer: issuer.id.clone(),
        });
    }
    let Some(sig) = SigAlg::from_der(cert.frame.sig_alg) else {
        return Err(ChainError::UnsupportedSignatureAlgorithm {
            cert: cert.id.clone(),
            alg: cert.x509.signature_algorithm.algorithm.to_id_string(),
        });
    };
    let alg: &'static dyn VerificationAlgorithm = match (sig, issuer.key) {
        (SigAlg::EcdsaSha256, KeyKind::P256) => &signature::ECDSA_P256_SHA256_ASN1,
        (SigAlg::EcdsaSha384, KeyKind::P384) => &signature::ECDSA_P384_SHA384_ASN1,
        (SigAlg::Ed25519, KeyKind::Ed25519) => &signature::ED25519,
        (SigAlg::RsaSha256, KeyKind::Rsa) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (SigAlg::RsaSha384, KeyKind::Rsa) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (SigAlg::RsaSha512, KeyKind::Rsa) => &signature::RSA_PKCS1_2048_8192_SHA512,
        _ => {
            return Err(ChainError::AlgorithmKeyMismatch {
                cert: cert.id.clone(),
                issuer: issuer.id.clone(),
                alg: sig.name(),
                key: issuer.key.name(),
            })
        }
    };
    UnparsedPublicKey::new(alg, issuer.public)
        .verify(cert.frame.tbs, cert.frame.signature)
        .map_err(|_| ChainError::BadSignature {
            cert: cert.id.clone(),
            issuer: issuer.id.clone(),
        })
}

fn check_validity(
    id: &CertId,
    not_before: i64,
    not_after: i64,
    time: &TrustedTime,
) -> Result<(), ChainError> {
    if time.is_expired(not_after) {
        return Err(ChainError::Expired {
            cert: id.clone(),
            not_after,
            now: time.floor(),
        });
    }
    if time.is_before(not_before) {
        return Err(ChainError::NotYetValid {
            cert: id.clone(),
            not_before,
            now: time.floor(),
        });
    }
    Ok(())
}

/// The subject must carry exactly one commonName, equal to `expected` byte for byte.
fn check_common_name(leaf: &Parsed<'_>, expected: &str) -> Result<(), ChainError> {
    let names: Vec<_> = leaf.x509.subject().iter_common_name().collect();
    let [name] = names.as_slice() else {
        return Err(ChainError::CommonNameCount {
            cert: leaf.id.clone(),
            count: names.len(),
        });
    };
    if name.as_str().ok() != Some(expected) {
        return Err(ChainError::WrongCommonName {
            cert: leaf.id.clone(),
            expected: expected.into(),
        });
    }
    Ok(())
}

/// A CA: basicConstraints cA=true, keyUsage keyCertSign, a pathLenConstraint (if any) of at
/// least `below` intermediates, and an extendedKeyUsage (if any) that allows code signing.
fn check_ca(cert: &Parsed<'_>, below: usize) -> Result<(), ChainError> {
    let id = &cert.id;
    match cert.exts.basic {
        Some((true, Some(path_len))) => check_path_len(id, path_len, below)?,
        Some((true, None)) => {}
        _ => return Err(ChainError::NotCa { cert: id.clone() }),
    }
    if !cert.exts.has_key_usage(KU_KEY_CERT_SIGN) {
        return Err(ChainError::MissingKeyUsage {
            cert: id.clone(),
            usage: "keyCertSign",
        });
    }
    // RFC 5280 does not say how a CA's extendedKeyUsage constrains what it signs; like webpki
    // (and CA/Browser Forum practice), one that is present must allow the leaf's purpose.
    if cert
        .exts
        .eku
        .is_some_and(|eku| !eku.code_signing && !eku.any)
    {
        return Err(ChainError::NotCodeSigning { cert: id.clone() });
    }
    Ok(())
}

fn check_path_len(id: &CertId, path_len: u32, below: usize) -> Result<(), ChainError> {
    if usize::try_from(path_len).is_ok_and(|max| below <= max) {
        return Ok(());
    }
    Err(ChainError::PathLength {
        cert: id.clone(),
        path_len,
        below,
    })
}

/// The signer: not a CA, keyUsage digitalSignature, extendedKeyUsage id-kp-codeSigning, and an
/// Ed25519 or ECDSA P-256 key.
fn check_leaf(leaf: &Parsed<'_>) -> Result<LeafKey, ChainError> {
    let id = &leaf.id;
    if leaf.exts.basic.is_some_and(|(ca, _)| ca) {
        return Err(ChainError::LeafIsCa { cert: id.clone() });
    }
    if !leaf.exts.has_key_usage(KU_DIGITAL_SIGNATURE) {
        return Err(ChainError::MissingKeyUsage {
            cert: id.clone(),
            usage: "digitalSignature",
        });
    }
    if !leaf.exts.eku.is_some_and(|eku| eku.code_signing) {
        return Err(ChainError::NotCodeSigning { cert: id.clone() });
    }
    let public = leaf.frame.spki_key;
    let alg = match KeyKind::from_spki_alg(leaf.frame.spki_alg) {
        Some(KeyKind::Ed25519) if public.len() == 32 => KeyAlg::Ed25519,
        Some(KeyKind::P256) if public.len() == 65 && public.first() == Some(&0x04) => {
            KeyAlg::EcdsaP256Sha256
        }
        Some(kind) => {
            return Err(ChainError::UnsupportedLeafKey {
                cert: id.clone(),
                key: format!("a {}-byte {} key", public.len(), kind.name()),
            })
        }
        None => {
            return Err(ChainError::UnsupportedLeafKey {
                cert: id.clone(),
                key: format!(
                    "a key of algorithm {}",
                    leaf.x509.public_key().algorithm.algorithm.to_id_string()
                ),
            })
        }
    };
    Ok(LeafKey {
        alg,
        public: public.to_vec(),
    })
}

/// keyUsage bits as x509-parser numbers them (bit 0 = digitalSignature).
const KU_DIGITAL_SIGNATURE: u16 = 1;
const KU_KEY_CERT_SIGN: u16 = 1 << 5;

#[derive(Clone, Copy)]
struct Eku {
    code_signing: bool,
    any: bool,
}

/// The extensions this module understands, each at most once.
#[derive(Default)]
struct Exts {
    /// basicConstraints: (cA, pathLenConstraint).
    basic: Option<(bool, Option<u32>)>,
    /// keyUsage flags.
    key_usage: Option<u16>,
    eku: Option<Eku>,
}

impl Exts {
    /// Is keyUsage present with `bit` set?
    fn has_key_usage(&self, bit: u16) -> bool {
        self.key_usage.is_some_and(|ku| ku & bit != 0)
    }

    fn read(x509: &X509Certificate<'_>, id: &CertId) -> Result<Exts, ChainError> {
        let mut exts = Exts::default();
        let mut seen = BTreeSet::new();
        for ext in x509.extensions() {
            let oid = || ext.oid.to_id_string();
            // RFC 5280 4.2: "A certificate MUST NOT include more than one instance of a
            // particular extension."
            if !seen.insert(ext.oid.as_bytes()) {
                return Err(ChainError::DuplicateExtension {
                    cert: id.clone(),
                    oid: oid(),
                });
            }
            let bad = || ChainError::BadExtension {
                cert: id.clone(),
                oid: oid(),
            };
            if ext.oid == OID_X509_EXT_BASIC_CONSTRAINTS {
                let ParsedExtension::BasicConstraints(bc) = ext.parsed_extension() else {
                    return Err(bad());
                };
                exts.basic = Some((bc.ca, bc.path_len_constraint));
            } else if ext.oid == OID_X509_EXT_KEY_USAGE {
                let ParsedExtension::KeyUsage(ku) = ext.parsed_extension() else {
                    return Err(bad());
                };
                exts.key_usage = Some(ku.flags);
            } else if ext.oid == OID_X509_EXT_EXTENDED_KEY_USAGE {
                let ParsedExtension::ExtendedKeyUsage(eku) = ext.parsed_extension() else {
                    return Err(bad());
                };
                exts.eku = Some(Eku {
                    code_signing: eku.code_signing,
                    any: eku.any,
                });
            } else if ext.critical {
                return Err(ChainError::UnknownCriticalExtension {
                    cert: id.clone(),
                    oid: oid(),
                });
            }
        }
        Ok(exts)
    }
}

/// A subject name for messages: x509-parser's rendering, cut to [`MAX_SUBJECT_SHOWN`] chars.
fn shown(name: &X509Name<'_>) -> String {
    let full = name.to_string();
    if full.chars().count() <= MAX_SUBJECT_SHOWN {
        return full;
    }
    let mut cut: String = full.chars().take(MAX_SUBJECT_SHOWN).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_named_reason() {
        let id = CertId {
            place: Place::Chain(1),
            subject: "CN=x\n".into(),
        };
        let e = ChainError::NotCa { cert: id.clone() };
        assert_eq!(e.reason(), "key-usage");
        assert_eq!(
            e.to_string(),
            "certificate 1 (subject \"CN=x\\n\") is not a CA (basicConstraints cA=true missing)"
        );
        let e = ChainError::Expired {
            cert: id,
            not_after: 1_735_689_600,
            now: 1_800_000_000,
        };
        assert_eq!(e.reason(), "certificate-expired");
        assert!(
            e.to_string().contains("expired at 2025-01-01T00:00:00Z"),
            "{e}"
        );
    }
}
