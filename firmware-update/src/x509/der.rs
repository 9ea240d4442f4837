//! The DER underneath: a strict reader (definite, minimal lengths; nothing left over) that
//! re-reads each certificate's outer structure for the exact signed bytes, and the algorithm
//! identifiers the chain verifier accepts, matched byte for byte.

/// Public keys a CA in the chain may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    P256,
    P384,
    Ed25519,
    Rsa,
}

impl KeyKind {
    /// Match a SubjectPublicKeyInfo AlgorithmIdentifier, DER byte for byte.
    pub(super) fn from_spki_alg(der: &[u8]) -> Option<KeyKind> {
        match der {
            SPKI_EC_P256 => Some(KeyKind::P256),
            SPKI_EC_P384 => Some(KeyKind::P384),
            ALG_ED25519 => Some(KeyKind::Ed25519),
            SPKI_RSA => Some(KeyKind::Rsa),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            KeyKind::P256 => "ECDSA P-256",
            KeyKind::P384 => "ECDSA P-384",
            KeyKind::Ed25519 => "Ed25519",
            KeyKind::Rsa => "RSA",
        }
    }
}

/// Certificate signature algorithms accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SigAlg {
    EcdsaSha256,
    EcdsaSha384,
    Ed25519,
    RsaSha256,
    RsaSha384,
    RsaSha512,
}

impl SigAlg {
    /// Match a signature AlgorithmIdentifier, DER byte for byte.
    pub(super) fn from_der(der: &[u8]) -> Option<SigAlg> {
        match der {
            SIG_ECDSA_SHA256 => Some(SigAlg::EcdsaSha256),
            SIG_ECDSA_SHA384 => Some(SigAlg::EcdsaSha384),
            ALG_ED25519 => Some(SigAlg::Ed25519),
            SIG_RSA_SHA256 => Some(SigAlg::RsaSha256),
            SIG_RSA_SHA384 => Some(SigAlg::RsaSha384),
            SIG_RSA_SHA512 => Some(SigAlg::RsaSha512),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            SigAlg::EcdsaSha256 => "ecdsa-with-SHA256",
            SigAlg::EcdsaSha384 => "ecdsa-with-SHA384",
            SigAlg::Ed25519 => "Ed25519",
            SigAlg::RsaSha256 => "sha256WithRSAEncryption",
            SigAlg::RsaSha384 => "sha384WithRSAEncryption",
            SigAlg::RsaSha512 => "sha512WithRSAEncryption",
        }
    }
}

// AlgorithmIdentifiers, DER. RFC 5758 3.2 (ECDSA: parameters absent), RFC 8410 3 (Ed25519:
// parameters absent), RFC 4055 5 / RFC 3279 2.3.1 (RSA: parameters NULL), RFC 5480 2.1.1
// (id-ecPublicKey with a namedCurve).
pub(super) const SIG_ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
pub(super) const SIG_ECDSA_SHA384: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];
pub(super) const ALG_ED25519: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
pub(super) const SIG_RSA_SHA256: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
];
pub(super) const SIG_RSA_SHA384: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c, 0x05, 0x00,
];
pub(super) const SIG_RSA_SHA512: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d, 0x05, 0x00,
];
pub(super) const SPKI_EC_P256: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
pub(super) const SPKI_EC_P384: &[u8] = &[
    0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04,
    0x00, 0x22,
];
pub(super) const SPKI_RSA: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// The bytes a signature check needs, read with a strict DER reader: every SEQUENCE consumed
/// exactly, definite minimal lengths, and the fields of RFC 5280 section 4.1 in order.
pub(super) struct Frame<'a> {
    /// tbsCertificate, header included: the signed bytes.
    pub(super) tbs: &'a [u8],
    /// Certificate.signatureAlgorithm, DER.
    pub(super) sig_alg: &'a [u8],
    /// TBSCertificate.signature, DER ("MUST contain the same algorithm identifier as the
    /// signatureAlgorithm field in the sequence Certificate", RFC 5280 4.1.2.3).
    pub(super) tbs_sig_alg: &'a [u8],
    /// signatureValue bits.
    pub(super) signature: &'a [u8],
    /// SubjectPublicKeyInfo.algorithm, DER.
    pub(super) spki_alg: &'a [u8],
    /// SubjectPublicKeyInfo.subjectPublicKey bits.
    pub(super) spki_key: &'a [u8],
}

pub(super) const SEQUENCE: u8 = 0x30;
pub(super) const INTEGER: u8 = 0x02;
pub(super) const BIT_STRING: u8 = 0x03;

impl<'a> Frame<'a> {
    pub(super) fn read(der: &'a [u8]) -> Result<Frame<'a>, String> {
        let mut outer = Reader(der);
        let cert = outer.next(SEQUENCE, "Certificate")?;
        outer.end("Certificate")?;
        let mut cert = Reader(cert.content);
        let tbs = cert.next(SEQUENCE, "tbsCertificate")?;
        let sig_alg = cert.next(SEQUENCE, "signatureAlgorithm")?;
        let signature = bits(cert.next(BIT_STRING, "signatureValue")?, "signatureValue")?;
        cert.end("signatureValue")?;

        // TBSCertificate ::= SEQUENCE { version [0] EXPLICIT, serialNumber, signature, issuer,
        //   validity, subject, subjectPublicKeyInfo, issuerUniqueID [1] IMPLICIT,
        //   subjectUniqueID [2] IMPLICIT, extensions [3] EXPLICIT }
        let mut fields = Reader(tbs.content);
        fields.optional(0xa0, "version")?;
        fields.next(INTEGER, "serialNumber")?;
        let tbs_sig_alg = fields.next(SEQUENCE, "signature")?;
        fields.next(SEQUENCE, "issuer")?;
        fields.next(SEQUENCE, "validity")?;
        fields.next(SEQUENCE, "subject")?;
        let spki = fields.next(SEQUENCE, "subjectPublicKeyInfo")?;
        fields.optional(0x81, "issuerUniqueID")?;
        fields.optional(0x82, "subjectUniqueID")?;
        fields.optional(0xa3, "extensions")?;
        fields.end("tbsCertificate")?;

        let mut spki = Reader(spki.content);
        let spki_alg = spki.next(SEQUENCE, "subjectPublicKeyInfo.algorithm")?;
        let spki_key = bits(
            spki.next(BIT_STRING, "subjectPublicKey")?,
            "subjectPublicKey",
        )?;
        spki.end("subjectPublicKeyInfo")?;

        Ok(Frame {
            tbs: tbs.raw,
            sig_alg: sig_alg.raw,
            tbs_sig_alg: tbs_sig_alg.raw,
            signature,
            spki_alg: spki_alg.raw,
            spki_key,
        })
    }
}

/// The bits of a BIT STRING that holds whole bytes (a key or a signature).
pub(super) fn bits<'a>(tlv: Tlv<'a>, field: &str) -> Result<&'a [u8], String> {
    match tlv.content.split_first() {
        Some((0, bits)) => Ok(bits),
        _ => Err(format!("{field} is not a whole number of bytes")),
    }
}

/// The size in bits of an RSAPublicKey's modulus (RFC 8017 A.1.1), if it parses.
pub(super) fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    let mut outer = Reader(der);
    let key = outer.next(SEQUENCE, "RSAPublicKey").ok()?;
    outer.end("RSAPublicKey").ok()?;
    let mut fields = Reader(key.content);
    let modulus = fields.next(INTEGER, "modulus").ok()?;
    fields.next(INTEGER, "publicExponent").ok()?;
    fields.end("RSAPublicKey").ok()?;
    let start = modulus.content.iter().position(|&b| b != 0)?;
    let significant = modulus.content.get(start..)?;
    let top = significant.first()?;
    Some((significant.len() - 1) * 8 + (8 - top.leading_zeros() as usize))
}

/// One DER element.
#[derive(Clone, Copy)]
pub(super) struct Tlv<'a> {
    pub(super) tag: u8,
    /// The whole element, header included.
    pub(super) raw: &'a [u8],
    pub(super) content: &'a [u8],
}

/// A DER reader over a run of elements. Single-byte tags only; lengths definite, minimal, and
/// at most two bytes (no certificate here exceeds [`super::MAX_CERT_BYTES`]).
pub(super) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn element(&self) -> Option<(Tlv<'a>, &'a [u8])> {
        let input = self.0;
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = match first {
            0x00..=0x7f => (usize::from(first), rest),
            0x81 => {
                let (&b, rest) = rest.split_first()?;
                if b < 0x80 {
                    return None;
                }
                (usize::from(b), rest)
            }
            0x82 => {
                let (&[hi, lo], rest) = rest.split_first_chunk::<2>()?;
                if hi == 0 {
                    return None;
                }
                (usize::from(u16::from_be_bytes([hi, lo])), rest)
            }
            _ => return None,
        };
        let (content, rest) = rest.split_at_checked(len)?;
        let raw = input.get(..input.len() - rest.len())?;
        Some((Tlv { tag, raw, content }, rest))
    }

    /// The next element, which must have `tag`.
    pub(super) fn next(&mut self, tag: u8, field: &str) -> Result<Tlv<'a>, String> {
        match self.element() {
            Some((tlv, rest)) if tlv.tag == tag => {
                self.0 = rest;
                Ok(tlv)
            }
            _ => Err(format!("bad or missing {field}")),
        }
    }

    /// The next element if it has `tag`.
    pub(super) fn optional(&mut self, tag: u8, field: &str) -> Result<Option<Tlv<'a>>, String> {
        if self.0.first() == Some(&tag) {
            self.next(tag, field).map(Some)
        } else {
            Ok(None)
        }
    }

    pub(super) fn end(&self, field: &str) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected bytes after {field}", self.0.len()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn one(der: &[u8]) -> Option<(u8, Vec<u8>)> {
        let (tlv, rest) = Reader(der).element()?;
        assert!(rest.is_empty());
        assert_eq!(tlv.raw, der);
        Some((tlv.tag, tlv.content.to_vec()))
    }

    #[test]
    fn der_reader_takes_only_definite_minimal_lengths() {
        assert_eq!(one(&[0x02, 0x01, 0x05]), Some((0x02, vec![5])));
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7; 0x80]);
        assert_eq!(one(&long).unwrap().1.len(), 0x80);
        let mut longer = vec![0x04, 0x82, 0x01, 0x00];
        longer.extend([7; 0x100]);
        assert_eq!(one(&longer).unwrap().1.len(), 0x100);

        assert_eq!(one(&[0x30, 0x80, 0x00, 0x00]), None, "indefinite length");
        assert_eq!(
            one(&[0x02, 0x81, 0x01, 0x05]),
            None,
            "long form for a short length"
        );
        assert_eq!(
            one(&[0x02, 0x82, 0x00, 0x81]),
            None,
            "leading zero length byte"
        );
        assert_eq!(
            one(&[0x02, 0x83, 0x00, 0x00, 0x01]),
            None,
            "three length bytes"
        );
        assert_eq!(one(&[0x1f, 0x01, 0x00]), None, "multi-byte tag");
        assert_eq!(one(&[0x02, 0x02, 0x05]), None, "content runs past the end");
        assert_eq!(one(&[]), None);
    }

    #[test]
    fn rsa_modulus_size_counts_significant_bits() {
        // SEQUENCE { INTEGER 0x00 0x80 0x01 (a 16-bit modulus), INTEGER 3 }
        let key = [0x30, 0x08, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x01, 0x03];
        assert_eq!(rsa_modulus_bits(&key), Some(16));
        let key = [0x30, 0x07, 0x02, 0x02, 0x01, 0x01, 0x02, 0x01, 0x03];
        assert_eq!(rsa_modulus_bits(&key), Some(9));
        assert_eq!(rsa_modulus_bits(&[0x30, 0x00]), None);
    }
}
