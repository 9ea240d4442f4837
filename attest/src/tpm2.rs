//! Decoders for the TPM 2.0 structures a quote carries (TCG TPM 2.0 Library, Part 2:
//! Structures): TPMS_ATTEST (§10.12.12), TPMT_SIGNATURE (§11.3.4) and TPMT_PUBLIC (§12.2.4).
//!
//! These parse untrusted bytes: every length is bounded, trailing bytes are refused, and values
//! are kept raw where the verifier (not the decoder) must name the failed check — a wrong magic
//! or attestation type decodes fine and is rejected by [`crate::verify`] by name.

use crate::alg::HashAlg;
use crate::codec::{DecodeError, Reader};

/// TPM_GENERATED_VALUE (Part 2 §6.2): "the TPM produced this structure".
pub const TPM_GENERATED: u32 = 0xFF54_4347;
/// TPM_ST_ATTEST_QUOTE (Part 2 §6.9).
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// TPM_ST_ATTEST_CERTIFY.
pub const ST_ATTEST_CERTIFY: u16 = 0x8017;
/// TPM_ST_ATTEST_NV.
pub const ST_ATTEST_NV: u16 = 0x8014;

/// Largest structures we accept, checked before decoding. A TPMS_ATTEST for a quote is ~150
/// bytes; an RSA-4096 TPMT_PUBLIC ~600.
pub const MAX_ATTEST_BYTES: usize = 1024;
pub const MAX_SIGNATURE_BYTES: usize = 1024;
pub const MAX_PUBLIC_BYTES: usize = 1024;

/// TPMU_HA is at most a SHA-512 digest; a TPM2B_NAME is an algorithm id plus one.
const MAX_DIGEST: usize = 64;
const MAX_NAME: usize = 2 + MAX_DIGEST;
/// MAX_ECC_KEY_BYTES for NIST P-521.
const MAX_ECC_PARAM: usize = 66;
/// MAX_RSA_KEY_BYTES for RSA-4096.
const MAX_RSA_BYTES: usize = 512;
/// HASH_COUNT bound for TPML_PCR_SELECTION; PCR_SELECT_MAX bytes (32 PCRs).
const MAX_PCR_BANKS: u32 = 8;
const MAX_SIZEOF_SELECT: u8 = 4;

pub const ALG_RSA: u16 = 0x0001;
pub const ALG_NULL: u16 = 0x0010;
pub const ALG_RSASSA: u16 = 0x0014;
pub const ALG_RSAES: u16 = 0x0015;
pub const ALG_RSAPSS: u16 = 0x0016;
pub const ALG_ECDSA: u16 = 0x0018;
pub const ALG_ECDAA: u16 = 0x001A;
pub const ALG_ECC: u16 = 0x0023;
pub const ECC_NIST_P256: u16 = 0x0003;

/// TPMA_OBJECT bits (Part 2 §8.3).
pub mod attrs {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
}

/// TPMS_CLOCK_INFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClockInfo {
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
}

/// One TPMS_PCR_SELECTION: a bank (raw TPM_ALG_ID) and its selected PCR indices, ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrBankSelection {
    pub hash: u16,
    pub pcrs: Vec<u8>,
}

/// TPML_PCR_SELECTION, in the order the TPM signed it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PcrSelection {
    pub banks: Vec<PcrBankSelection>,
}

impl PcrSelection {
    /// A selection of one bank.
    pub fn single(bank: HashAlg, pcrs: &[u8]) -> Self {
        let mut pcrs = pcrs.to_vec();
        pcrs.sort_unstable();
        pcrs.dedup();
        PcrSelection {
            banks: vec![PcrBankSelection {
                hash: bank.tpm_id(),
                pcrs,
            }],
        }
    }

    /// (bank, pcr) pairs in the order the TPM hashes them into the quote's pcrDigest
    /// (Part 3 §18.4: banks in list order, PCRs in ascending order within a bank).
    pub fn iter(&self) -> impl Iterator<Item = (u16, u8)> + '_ {
        self.banks
            .iter()
            .flat_map(|b| b.pcrs.iter().map(move |p| (b.hash, *p)))
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count_at = r.offset();
        let count = r.u32_be("pcrSelections.count")?;
        if count > MAX_PCR_BANKS {
            return Err(DecodeError::TooLong {
                field: "pcrSelections.count",
                offset: count_at,
                len: count as usize,
                max: MAX_PCR_BANKS as usize,
            });
        }
        let mut banks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let hash = r.u16_be("pcrSelections.hash")?;
            let size_at = r.offset();
            let size = r.u8("pcrSelections.sizeofSelect")?;
            if size > MAX_SIZEOF_SELECT {
                return Err(DecodeError::TooLong {
                    field: "pcrSelections.sizeofSelect",
                    offset: size_at,
                    len: usize::from(size),
                    max: usize::from(MAX_SIZEOF_SELECT),
                });
            }
            let bits = r.take(usize::from(size), "pcrSelections.pcrSelect")?;
            let mut pcrs = Vec::new();
            for (byte_index, byte) in (0u8..).zip(bits.iter()) {
                for bit in 0..8u8 {
                    if byte & (1 << bit) != 0 {
                        pcrs.push(byte_index * 8 + bit);
                    }
                }
            }
            banks.push(PcrBankSelection { hash, pcrs });
        }
        Ok(PcrSelection { banks })
    }

    /// Marshal as TPML_PCR_SELECTION (sizeofSelect 3, as TPMs with 24 PCRs use).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.banks.len() as u32).to_be_bytes());
        for b in &self.banks {
            out.extend_from_slice(&b.hash.to_be_bytes());
            let mut bits = [0u8; 3];
            for p in &b.pcrs {
                if let Some(byte) = bits.get_mut(usize::from(p / 8)) {
                    *byte |= 1 << (p % 8);
                }
            }
            out.push(3);
            out.extend_from_slice(&bits);
        }
    }
}

/// What the structure attests, by type. Only quotes are decoded further; anything else is kept
/// so the verifier can name it when refusing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attested {
    /// TPMS_QUOTE_INFO.
    Quote {
        selection: PcrSelection,
        pcr_digest: Vec<u8>,
    },
    /// Any other TPMI_ST_ATTEST (certify, NV, time, audit ...), undecoded.
    Other { body: Vec<u8> },
}

/// TPMS_ATTEST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attest {
    pub magic: u32,
    pub attest_type: u16,
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub clock_info: ClockInfo,
    pub firmware_version: u64,
    pub attested: Attested,
}

impl Attest {
    /// Decode a marshalled TPMS_ATTEST (the exact bytes the TPM signed).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_size(bytes, MAX_ATTEST_BYTES, "TPMS_ATTEST")?;
        let mut r = Reader::new(bytes);
        let magic = r.u32_be("magic")?;
        let attest_type = r.u16_be("type")?;
        let qualified_signer = r.tpm2b(MAX_NAME, "qualifiedSigner")?.to_vec();
        let extra_data = r.tpm2b(MAX_DIGEST, "extraData")?.to_vec();
        let clock = r.u64_be("clockInfo.clock")?;
        let reset_count = r.u32_be("clockInfo.resetCount")?;
        let restart_count = r.u32_be("clockInfo.restartCount")?;
        let safe_at = r.offset();
        let safe = match r.u8("clockInfo.safe")? {
            0 => false,
            1 => true,
            v => {
                return Err(DecodeError::Unsupported {
                    field: "clockInfo.safe",
                    offset: safe_at,
                    value: u64::from(v),
                })
            }
        };
        let firmware_version = r.u64_be("firmwareVersion")?;
        let attested = if attest_type == ST_ATTEST_QUOTE {
            let selection = PcrSelection::decode(&mut r)?;
            let pcr_digest = r.tpm2b(MAX_DIGEST, "quote.pcrDigest")?.to_vec();
            Attested::Quote {
                selection,
                pcr_digest,
            }
        } else {
            Attested::Other {
                body: r.take(r.remaining(), "attested")?.to_vec(),
            }
        };
        r.finish("TPMS_ATTEST")?;
        Ok(Attest {
            magic,
            attest_type,
            qualified_signer,
            extra_data,
            clock_info: ClockInfo {
                clock,
                reset_count,
                restart_count,
                safe,
            },
            firmware_version,
            attested,
        })
    }

    /// Marshal back to bytes (used to build forged structures in tests and fuzz seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(&self.magic.to_be_bytes());
        out.extend_from_slice(&self.attest_type.to_be_bytes());
        put_tpm2b(&mut out, &self.qualified_signer);
        put_tpm2b(&mut out, &self.extra_data);
        out.extend_from_slice(&self.clock_info.clock.to_be_bytes());
        out.extend_from_slice(&self.clock_info.reset_count.to_be_bytes());
        out.extend_from_slice(&self.clock_info.restart_count.to_be_bytes());
        out.push(u8::from(self.clock_info.safe));
        out.extend_from_slice(&self.firmware_version.to_be_bytes());
        match &self.attested {
            Attested::Quote {
                selection,
                pcr_digest,
            } => {
                selection.encode(&mut out);
                put_tpm2b(&mut out, pcr_digest);
            }
            Attested::Other { body } => out.extend_from_slice(body),
        }
        out
    }
}

/// TPMT_SIGNATURE, for the schemes Warden can verify. Others fail to decode (fail closed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// TPMS_SIGNATURE_ECDSA: hash, r, s.
    Ecdsa { hash: u16, r: Vec<u8>, s: Vec<u8> },
    /// TPMS_SIGNATURE_RSASSA (PKCS#1 v1.5).
    RsaSsa { hash: u16, sig: Vec<u8> },
    /// TPMS_SIGNATURE_RSAPSS.
    RsaPss { hash: u16, sig: Vec<u8> },
}

impl Signature {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_size(bytes, MAX_SIGNATURE_BYTES, "TPMT_SIGNATURE")?;
        let mut r = Reader::new(bytes);
        let alg_at = r.offset();
        let alg = r.u16_be("sigAlg")?;
        let sig = match alg {
            ALG_ECDSA => Signature::Ecdsa {
                hash: r.u16_be("signature.hash")?,
                r: r.tpm2b(MAX_ECC_PARAM, "signature.r")?.to_vec(),
                s: r.tpm2b(MAX_ECC_PARAM, "signature.s")?.to_vec(),
            },
            ALG_RSASSA => Signature::RsaSsa {
                hash: r.u16_be("signature.hash")?,
                sig: r.tpm2b(MAX_RSA_BYTES, "signature.sig")?.to_vec(),
            },
            ALG_RSAPSS => Signature::RsaPss {
                hash: r.u16_be("signature.hash")?,
                sig: r.tpm2b(MAX_RSA_BYTES, "signature.sig")?.to_vec(),
            },
            other => {
                return Err(DecodeError::Unsupported {
                    field: "sigAlg",
                    offset: alg_at,
                    value: u64::from(other),
                })
            }
        };
        r.finish("TPMT_SIGNATURE")?;
        Ok(sig)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Signature::Ecdsa { hash, r, s } => {
                out.extend_from_slice(&ALG_ECDSA.to_be_bytes());
                out.extend_from_slice(&hash.to_be_bytes());
                put_tpm2b(&mut out, r);
                put_tpm2b(&mut out, s);
            }
            Signature::RsaSsa { hash, sig } | Signature::RsaPss { hash, sig } => {
                let alg = if matches!(self, Signature::RsaSsa { .. }) {
                    ALG_RSASSA
                } else {
                    ALG_RSAPSS
                };
                out.extend_from_slice(&alg.to_be_bytes());
                out.extend_from_slice(&hash.to_be_bytes());
                put_tpm2b(&mut out, sig);
            }
        }
        out
    }

    /// The signature algorithm id (TPM_ALG_ID).
    pub fn scheme(&self) -> u16 {
        match self {
            Signature::Ecdsa { .. } => ALG_ECDSA,
            Signature::RsaSsa { .. } => ALG_RSASSA,
            Signature::RsaPss { .. } => ALG_RSAPSS,
        }
    }

    /// The hash the signature claims to be over (raw TPM_ALG_ID).
    pub fn hash(&self) -> u16 {
        match self {
            Signature::Ecdsa { hash, .. }
            | Signature::RsaSsa { hash, .. }
            | Signature::RsaPss { hash, .. } => *hash,
        }
    }
}

/// A signing scheme as declared in a key's public area: (scheme, hash) or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheme {
    pub scheme: u16,
    pub hash: Option<u16>,
}

/// The public key of a TPMT_PUBLIC, for the types Warden can verify with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    Ecc {
        curve: u16,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Rsa {
        bits: u16,
        exponent: u32,
        modulus: Vec<u8>,
    },
}

/// TPMT_PUBLIC, with the exact bytes kept for computing the TPM name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Public {
    pub name_alg: u16,
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    /// The symmetric algorithm (must be NULL for a signing key).
    pub symmetric: u16,
    pub scheme: Scheme,
    pub key: PublicKey,
    raw: Vec<u8>,
}

impl Public {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_size(bytes, MAX_PUBLIC_BYTES, "TPMT_PUBLIC")?;
        let mut r = Reader::new(bytes);
        let type_at = r.offset();
        let key_type = r.u16_be("type")?;
        let name_alg = r.u16_be("nameAlg")?;
        let attributes = r.u32_be("objectAttributes")?;
        let auth_policy = r.tpm2b(MAX_DIGEST, "authPolicy")?.to_vec();
        // TPMT_SYM_DEF_OBJECT: algorithm, then keyBits and mode unless NULL.
        let symmetric = r.u16_be("parameters.symmetric.algorithm")?;
        if symmetric != ALG_NULL {
            r.u16_be("parameters.symmetric.keyBits")?;
            r.u16_be("parameters.symmetric.mode")?;
        }
        let scheme_id = r.u16_be("parameters.scheme.scheme")?;
        let (scheme, key) = match key_type {
            ALG_ECC => {
                // TPMT_ECC_SCHEME: ECDAA details carry a count after the hash.
                let hash = if scheme_id == ALG_NULL {
                    None
                } else {
                    let h = r.u16_be("parameters.scheme.hashAlg")?;
                    if scheme_id == ALG_ECDAA {
                        r.u16_be("parameters.scheme.count")?;
                    }
                    Some(h)
                };
                let curve = r.u16_be("parameters.curveID")?;
                let kdf = r.u16_be("parameters.kdf.scheme")?;
                if kdf != ALG_NULL {
                    r.u16_be("parameters.kdf.hashAlg")?;
                }
                let x = r.tpm2b(MAX_ECC_PARAM, "unique.x")?.to_vec();
                let y = r.tpm2b(MAX_ECC_PARAM, "unique.y")?.to_vec();
                (
                    Scheme {
                        scheme: scheme_id,
                        hash,
                    },
                    PublicKey::Ecc { curve, x, y },
                )
            }
            ALG_RSA => {
                // TPMT_RSA_SCHEME: RSAES has empty details, every other non-NULL scheme a hash.
                let hash = if scheme_id == ALG_NULL || scheme_id == ALG_RSAES {
                    None
                } else {
                    Some(r.u16_be("parameters.scheme.hashAlg")?)
                };
                let bits = r.u16_be("parameters.keyBits")?;
                let exponent = r.u32_be("parameters.exponent")?;
                let modulus = r.tpm2b(MAX_RSA_BYTES, "unique.rsa")?.to_vec();
                (
                    Scheme {
                        scheme: scheme_id,
                        hash,
                    },
                    PublicKey::Rsa {
                        bits,
                        exponent,
                        modulus,
                    },
                )
            }
            other => {
                return Err(DecodeError::Unsupported {
                    field: "type",
                    offset: type_at,
                    value: u64::from(other),
                })
            }
        };
        r.finish("TPMT_PUBLIC")?;
        Ok(Public {
            name_alg,
            attributes,
            auth_policy,
            symmetric,
            scheme,
            key,
            raw: bytes.to_vec(),
        })
    }

    /// The exact bytes this was decoded from.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The TPM name (Part 1 §16): nameAlg || H_nameAlg(TPMT_PUBLIC). None for an unknown nameAlg.
    pub fn name(&self) -> Option<Vec<u8>> {
        let alg = HashAlg::from_tpm_id(self.name_alg)?;
        let mut name = self.name_alg.to_be_bytes().to_vec();
        name.extend_from_slice(&alg.digest(&[&self.raw]));
        Some(name)
    }

    pub fn has(&self, attr: u32) -> bool {
        self.attributes & attr == attr
    }
}

fn check_size(bytes: &[u8], max: usize, structure: &'static str) -> Result<(), DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLong {
            field: structure,
            offset: 0,
            len: bytes.len(),
            max,
        });
    }
    Ok(())
}

fn put_tpm2b(out: &mut Vec<u8>, data: &[u8]) {
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data.get(..usize::from(len)).unwrap_or(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_quote() -> Attest {
        Attest {
            magic: TPM_GENERATED,
            attest_type: ST_ATTEST_QUOTE,
            qualified_signer: vec![0, 0x0b, 1, 2, 3],
            extra_data: vec![7; 32],
            clock_info: ClockInfo {
                clock: 42,
                reset_count: 1,
                restart_count: 2,
                safe: true,
            },
            firmware_version: 0x2019_0101,
            attested: Attested::Quote {
                selection: PcrSelection::single(HashAlg::Sha256, &[15, 0, 7, 23]),
                pcr_digest: vec![9; 32],
            },
        }
    }

    #[test]
    fn attest_round_trips_and_selection_is_ascending() {
        let a = sample_quote();
        let bytes = a.encode();
        let b = Attest::decode(&bytes).unwrap();
        assert_eq!(a, b);
        let Attested::Quote { selection, .. } = b.attested else {
            panic!("not a quote")
        };
        let order: Vec<_> = selection.iter().map(|(_, p)| p).collect();
        assert_eq!(order, vec![0, 7, 15, 23]);
    }

    #[test]
    fn every_truncation_of_an_attest_is_an_error() {
        let bytes = sample_quote().encode();
        for n in 0..bytes.len() {
            assert!(Attest::decode(&bytes[..n]).is_err(), "prefix {n} decoded");
        }
    }

    #[test]
    fn trailing_and_oversized_attest_are_refused() {
        let mut bytes = sample_quote().encode();
        bytes.push(0);
        assert!(matches!(
            Attest::decode(&bytes),
            Err(DecodeError::TrailingBytes { .. })
        ));
        assert!(matches!(
            Attest::decode(&vec![0u8; MAX_ATTEST_BYTES + 1]),
            Err(DecodeError::TooLong { .. })
        ));
        // extraData longer than a digest.
        let mut a = sample_quote();
        a.extra_data = vec![1; 65];
        assert!(matches!(
            Attest::decode(&a.encode()),
            Err(DecodeError::TooLong {
                field: "extraData",
                ..
            })
        ));
    }

    #[test]
    fn too_many_banks_and_wide_selects_are_refused() {
        let mut a = sample_quote().encode();
        // count field sits after magic(4) type(2) signer(2+5) extra(2+32) clock(17) fw(8).
        let at = 4 + 2 + 7 + 34 + 17 + 8;
        a[at..at + 4].copy_from_slice(&9u32.to_be_bytes());
        assert!(matches!(
            Attest::decode(&a),
            Err(DecodeError::TooLong {
                field: "pcrSelections.count",
                ..
            })
        ));
        let mut a = sample_quote().encode();
        a[at + 6] = 5;
        assert!(matches!(
            Attest::decode(&a),
            Err(DecodeError::TooLong {
                field: "pcrSelections.sizeofSelect",
                ..
            })
        ));
    }

    #[test]
    fn non_quote_types_decode_as_other() {
        let mut a = sample_quote();
        a.attest_type = ST_ATTEST_CERTIFY;
        a.attested = Attested::Other {
            body: vec![0, 2, 0xAA, 0xBB, 0, 0],
        };
        assert_eq!(Attest::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn signatures_round_trip_and_unknown_schemes_fail() {
        for s in [
            Signature::Ecdsa {
                hash: 0x0b,
                r: vec![1; 32],
                s: vec![2; 32],
            },
            Signature::RsaSsa {
                hash: 0x0b,
                sig: vec![3; 256],
            },
            Signature::RsaPss {
                hash: 0x0b,
                sig: vec![4; 256],
            },
        ] {
            assert_eq!(Signature::decode(&s.encode()).unwrap(), s);
        }
        // TPM_ALG_HMAC signature.
        assert!(matches!(
            Signature::decode(&[0x00, 0x05, 0x00, 0x0b]),
            Err(DecodeError::Unsupported {
                field: "sigAlg",
                ..
            })
        ));
        let mut e = Signature::Ecdsa {
            hash: 0x0b,
            r: vec![1; 67],
            s: vec![2; 32],
        }
        .encode();
        assert!(Signature::decode(&e).is_err());
        e.truncate(3);
        assert!(Signature::decode(&e).is_err());
    }

    fn ecc_public(attributes: u32) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&ALG_ECC.to_be_bytes());
        p.extend_from_slice(&0x000bu16.to_be_bytes());
        p.extend_from_slice(&attributes.to_be_bytes());
        put_tpm2b(&mut p, &[]);
        p.extend_from_slice(&ALG_NULL.to_be_bytes());
        p.extend_from_slice(&ALG_ECDSA.to_be_bytes());
        p.extend_from_slice(&0x000bu16.to_be_bytes());
        p.extend_from_slice(&ECC_NIST_P256.to_be_bytes());
        p.extend_from_slice(&ALG_NULL.to_be_bytes());
        put_tpm2b(&mut p, &[5; 32]);
        put_tpm2b(&mut p, &[6; 32]);
        p
    }

    #[test]
    fn ecc_public_decodes_and_names_are_computed_over_exact_bytes() {
        let bytes = ecc_public(attrs::RESTRICTED | attrs::SIGN | attrs::FIXED_TPM);
        let p = Public::decode(&bytes).unwrap();
        assert!(p.has(attrs::RESTRICTED | attrs::SIGN));
        assert!(!p.has(attrs::DECRYPT));
        assert_eq!(
            p.scheme,
            Scheme {
                scheme: ALG_ECDSA,
                hash: Some(0x0b)
            }
        );
        let name = p.name().unwrap();
        assert_eq!(&name[..2], &[0x00, 0x0b]);
        assert_eq!(&name[2..], HashAlg::Sha256.digest(&[&bytes]).as_slice());
        for n in 0..bytes.len() {
            assert!(Public::decode(&bytes[..n]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Public::decode(&long).is_err());
    }

    #[test]
    fn keyedhash_public_is_unsupported() {
        let mut bytes = ecc_public(0);
        bytes[0..2].copy_from_slice(&0x0008u16.to_be_bytes());
        assert!(matches!(
            Public::decode(&bytes),
            Err(DecodeError::Unsupported { field: "type", .. })
        ));
    }
}
