//! The one quote verifier: pure, fail-closed, every check named.
//!
//! ```text
//!  evidence ──decode──▶ AK attributes ──▶ AK pin ──▶ scheme pinned ──▶ signature ──▶ magic ──▶ quote type
//!                      (any failure here stops: nothing after it can be trusted)
//!           ──▶ binding (extraData) · PCR bank · signed selection · PCR values covered · PCR digest
//!               · clock monotonic · appliance log replay + allowlist · TCG log replay + policy
//!               · golden PCRs          (all evaluated; every failure is reported)
//! ```
//!
//! Only a quote whose every check passes yields [`Verified`], the proof value later operations
//! (key release, SA creation) take as an argument.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::alg::{ct_eq, HashAlg};
use crate::applog::{self, AppLogError, ApplianceEvent};
use crate::binding::{self, BindingError, FreshNonce};
use crate::codec::DecodeError;
use crate::eventlog::{self, EventLogError};
use crate::evidence::Evidence;
use crate::reference::{AllowedApplianceEvent, AllowedTcgEvent, ReferenceValues};
use crate::tpm2::{
    attrs, Attest, Attested, ClockInfo, Public, PublicKey, Signature, ALG_ECDSA, ALG_NULL,
    ALG_RSASSA, ECC_NIST_P256, ST_ATTEST_QUOTE, TPM_GENERATED,
};

/// What the verifier expects of this particular piece of evidence.
#[derive(Debug)]
pub struct Expected<'a> {
    /// The challenge, proven fresh and unused (consumed here).
    pub nonce: FreshNonce,
    pub purpose: &'a str,
    /// The key the evidence must be bound to (e.g. the TLS server key's SPKI).
    pub bound_key: &'a [u8],
    pub reference: &'a ReferenceValues,
    /// The clock of the last result verified for this AK, if any.
    pub previous: Option<ClockInfo>,
}

/// Proof that evidence passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub ak_name: Vec<u8>,
    pub clock: ClockInfo,
    pub firmware_version: u64,
    pub bank: HashAlg,
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    pub pcr_digest: Vec<u8>,
    pub appliance_log: Vec<ApplianceEvent>,
}

/// The named checks, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    Decode,
    AkAttributes,
    AkPin,
    SignatureScheme,
    Signature,
    Magic,
    AttestType,
    Binding,
    PcrBank,
    PcrSelection,
    PcrValues,
    PcrDigest,
    Clock,
    ApplianceLog,
    EventLog,
    ReferenceValues,
}

impl Check {
    pub const fn name(self) -> &'static str {
        match self {
            Check::Decode => "decode",
            Check::AkAttributes => "ak-attributes",
            Check::AkPin => "ak-pin",
            Check::SignatureScheme => "signature-scheme",
            Check::Signature => "signature",
            Check::Magic => "magic",
            Check::AttestType => "attest-type",
            Check::Binding => "binding",
            Check::PcrBank => "pcr-bank",
            Check::PcrSelection => "pcr-selection",
            Check::PcrValues => "pcr-values",
            Check::PcrDigest => "pcr-digest",
            Check::Clock => "clock",
            Check::ApplianceLog => "appliance-log",
            Check::EventLog => "event-log",
            Check::ReferenceValues => "reference-values",
        }
    }
}

/// One failed check. Messages name the structure, PCR or event; never a secret.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("{structure} does not decode: {source}")]
    Decode {
        structure: &'static str,
        #[source]
        source: DecodeError,
    },
    #[error("evidence field {field}: {reason}")]
    Evidence { field: String, reason: String },
    #[error("attestation key is not a restricted signing key bound to this TPM: {reason}")]
    AkAttributes { reason: &'static str },
    #[error("attestation key {found} is not the pinned key {expected}")]
    AkPin { expected: String, found: String },
    #[error("signature scheme not allowed: {reason}")]
    SignatureScheme { reason: String },
    #[error("signature does not verify over the attest structure with the attestation key")]
    Signature,
    #[error(
        "magic is {found:#010x}, not TPM_GENERATED_VALUE: the TPM did not produce this structure"
    )]
    Magic { found: u32 },
    #[error("attest type is {found:#06x}, not TPM_ST_ATTEST_QUOTE (0x8018)")]
    AttestType { found: u16 },
    #[error(
        "extraData does not bind this nonce, purpose and key: wrong, stale or relayed evidence"
    )]
    Binding,
    #[error("{0}")]
    BindingInput(#[from] BindingError),
    #[error("evidence purpose {found:?} is not the expected {expected:?}")]
    Purpose { expected: String, found: String },
    #[error("PCR bank {found} is not allowed (expected exactly one {expected} bank)")]
    PcrBank { expected: HashAlg, found: String },
    #[error("signed PCR selection {signed:?} is not the requested {requested:?}")]
    PcrSelection { requested: Vec<u8>, signed: Vec<u8> },
    #[error("PCR {pcr} ({bank}) is presented but the quote does not cover it")]
    PcrNotCovered { bank: String, pcr: u8 },
    #[error("PCR {pcr} is covered by the quote but its value is missing")]
    PcrMissing { pcr: u8 },
    #[error("PCR {pcr} value is malformed: {reason}")]
    PcrValue { pcr: u8, reason: String },
    #[error("PCR values do not hash to the signed pcrDigest")]
    PcrDigest,
    #[error(
        "TPM {counter} went backwards ({previous} → {found}): replayed or rolled-back evidence"
    )]
    Clock {
        counter: &'static str,
        previous: u64,
        found: u64,
    },
    #[error("appliance log: {0}")]
    ApplianceLog(#[from] AppLogError),
    #[error("appliance log replays to {replayed} but PCR {pcr} is {quoted}")]
    ApplianceReplay {
        pcr: u8,
        quoted: String,
        replayed: String,
    },
    #[error("appliance event {index} ({kind} = {detail:?}) is not in the reference values")]
    ApplianceEventNotAllowed {
        index: usize,
        kind: String,
        detail: String,
    },
    #[error("event log: {0}")]
    EventLog(#[from] EventLogError),
    #[error("event log replays PCR {pcr} to {replayed} but the quote says {quoted}")]
    EventLogReplay {
        pcr: u8,
        quoted: String,
        replayed: String,
    },
    #[error("event log event {seq} (PCR {pcr}, type {event_type:#x}, digest {digest}) is not allowed by the reference values")]
    EventNotAllowed {
        seq: usize,
        pcr: u32,
        event_type: u32,
        digest: String,
    },
    #[error("the reference values have an event-log policy but the evidence has no event log")]
    MissingEventLog,
    #[error("PCR {pcr} is {found}, reference value is {expected}")]
    ReferenceMismatch {
        pcr: u8,
        expected: String,
        found: String,
    },
}

impl VerifyError {
    /// The check this failure belongs to.
    pub fn check(&self) -> Check {
        use VerifyError as E;
        match self {
            E::Decode { .. } | E::Evidence { .. } => Check::Decode,
            E::AkAttributes { .. } => Check::AkAttributes,
            E::AkPin { .. } => Check::AkPin,
            E::SignatureScheme { .. } => Check::SignatureScheme,
            E::Signature => Check::Signature,
            E::Magic { .. } => Check::Magic,
            E::AttestType { .. } => Check::AttestType,
            E::Binding | E::BindingInput(_) | E::Purpose { .. } => Check::Binding,
            E::PcrBank { .. } => Check::PcrBank,
            E::PcrSelection { .. } => Check::PcrSelection,
            E::PcrNotCovered { .. } | E::PcrMissing { .. } | E::PcrValue { .. } => Check::PcrValues,
            E::PcrDigest => Check::PcrDigest,
            E::Clock { .. } => Check::Clock,
            E::ApplianceLog(_) | E::ApplianceReplay { .. } | E::ApplianceEventNotAllowed { .. } => {
                Check::ApplianceLog
            }
            E::EventLog(_)
            | E::EventLogReplay { .. }
            | E::EventNotAllowed { .. }
            | E::MissingEventLog => Check::EventLog,
            E::ReferenceMismatch { .. } => Check::ReferenceValues,
        }
    }
}

/// Evidence was refused. `failures` is never empty and is in check order.
#[derive(Debug, Error)]
#[error("attestation refused: {}", .failures.iter().map(|f| format!("[{}] {f}", f.check().name())).collect::<Vec<_>>().join("; "))]
pub struct Rejected {
    pub failures: Vec<VerifyError>,
}

impl Rejected {
    /// Whether any failure belongs to `check`.
    pub fn failed(&self, check: Check) -> bool {
        self.failures.iter().any(|f| f.check() == check)
    }
}

impl From<VerifyError> for Rejected {
    fn from(e: VerifyError) -> Self {
        Rejected { failures: vec![e] }
    }
}

fn decode_err(structure: &'static str) -> impl Fn(DecodeError) -> VerifyError {
    move |source| VerifyError::Decode { structure, source }
}

/// Verify `evidence` against what the verifier expects.
pub fn verify(evidence: &Evidence, expected: Expected<'_>) -> Result<Verified, Rejected> {
    let reference = expected.reference;
    // Structural phase: each failure stops verification.
    let ak = Public::decode(&evidence.ak_public).map_err(decode_err("ak_public (TPMT_PUBLIC)"))?;
    let attest = Attest::decode(&evidence.attest).map_err(decode_err("attest (TPMS_ATTEST)"))?;
    let sig =
        Signature::decode(&evidence.signature).map_err(decode_err("signature (TPMT_SIGNATURE)"))?;
    check_ak_attributes(&ak)?;
    let ak_name = ak.name().ok_or(VerifyError::AkAttributes {
        reason: "unknown name algorithm",
    })?;
    if let Some(pin) = &reference.ak_name {
        if !ct_eq(pin, &ak_name) {
            return Err(VerifyError::AkPin {
                expected: hex::encode(pin),
                found: hex::encode(&ak_name),
            }
            .into());
        }
    }
    check_scheme(&ak, &sig)?;
    verify_signature(&ak, &sig, &evidence.attest)?;
    // Part 2 §10.12.12: a restricted key signs only structures the TPM made, which start with
    // TPM_GENERATED_VALUE; data signed from outside never does.
    if attest.magic != TPM_GENERATED {
        return Err(VerifyError::Magic {
            found: attest.magic,
        }
        .into());
    }
    let (selection, pcr_digest) = match (&attest.attest_type, &attest.attested) {
        (
            &ST_ATTEST_QUOTE,
            Attested::Quote {
                selection,
                pcr_digest,
            },
        ) => (selection, pcr_digest),
        (t, _) => return Err(VerifyError::AttestType { found: *t }.into()),
    };

    // Semantic phase: every failure is collected.
    let mut failures = Vec::new();
    if evidence.purpose != expected.purpose {
        failures.push(VerifyError::Purpose {
            expected: expected.purpose.to_owned(),
            found: evidence.purpose.clone(),
        });
    }
    match binding::extra_data(expected.nonce.nonce(), expected.purpose, expected.bound_key) {
        Ok(want) if ct_eq(&want, &attest.extra_data) => {}
        Ok(_) => failures.push(VerifyError::Binding),
        Err(e) => failures.push(e.into()),
    }

    let bank = reference.bank;
    let requested = reference.selection();
    let mut selection_ok = true;
    match selection.banks.as_slice() {
        [only] if only.hash == bank.tpm_id() => {
            if only.pcrs != requested {
                selection_ok = false;
                failures.push(VerifyError::PcrSelection {
                    requested: requested.clone(),
                    signed: only.pcrs.clone(),
                });
            }
        }
        banks => {
            selection_ok = false;
            let found = banks
                .iter()
                .map(|b| {
                    HashAlg::from_tpm_id(b.hash)
                        .map(|h| h.name().to_owned())
                        .unwrap_or_else(|| format!("{:#06x}", b.hash))
                })
                .collect::<Vec<_>>()
                .join("+");
            failures.push(VerifyError::PcrBank {
                expected: bank,
                found: if found.is_empty() {
                    "none".into()
                } else {
                    found
                },
            });
        }
    }

    // The values the verifier may rely on: exactly those the signed selection covers, hashed in
    // the signed order (indices come from the signed selection, never from the evidence map).
    let mut values = BTreeMap::new();
    let mut values_ok = true;
    for (name, map) in &evidence.pcrs {
        let covered: Vec<u8> = selection
            .banks
            .iter()
            .filter(|b| HashAlg::from_tpm_id(b.hash).map(HashAlg::name) == Some(name.as_str()))
            .flat_map(|b| b.pcrs.iter().copied())
            .collect();
        for pcr in map.keys() {
            if !covered.contains(pcr) {
                values_ok = false;
                failures.push(VerifyError::PcrNotCovered {
                    bank: name.clone(),
                    pcr: *pcr,
                });
            }
        }
    }
    let mut hasher_input = Vec::new();
    for (hash, pcr) in selection.iter() {
        let Some(alg) = HashAlg::from_tpm_id(hash) else {
            values_ok = false;
            continue;
        };
        let Some(hex_value) = evidence.pcrs.get(alg.name()).and_then(|m| m.get(&pcr)) else {
            values_ok = false;
            failures.push(VerifyError::PcrMissing { pcr });
            continue;
        };
        match hex::decode(hex_value) {
            Ok(v) if v.len() == alg.len() => {
                hasher_input.extend_from_slice(&v);
                if alg == bank {
                    values.insert(pcr, v);
                }
            }
            Ok(v) => {
                values_ok = false;
                failures.push(VerifyError::PcrValue {
                    pcr,
                    reason: format!("{} bytes, a {alg} PCR has {}", v.len(), alg.len()),
                });
            }
            Err(e) => {
                values_ok = false;
                failures.push(VerifyError::PcrValue {
                    pcr,
                    reason: format!("not hex: {e}"),
                });
            }
        }
    }
    // pcrDigest is computed with the AK's signing hash (Part 3 §18.4), which check_scheme pinned
    // to SHA-256.
    let digest_ok = values_ok && ct_eq(&HashAlg::Sha256.digest(&[&hasher_input]), pcr_digest);
    if values_ok && !digest_ok {
        failures.push(VerifyError::PcrDigest);
    }

    if let Some(prev) = expected.previous {
        check_clock(&prev, &attest.clock_info, &mut failures);
    }

    // Everything below compares against PCR values, which mean something only if the signed
    // digest covers them and the selection is the requested one.
    if digest_ok && selection_ok {
        check_appliance_log(evidence, reference, &values, &mut failures);
        check_event_log(evidence, reference, &values, &mut failures);
        for (pcr, want) in &reference.pcrs {
            if let Some(found) = values.get(pcr) {
                if !ct_eq(want, found) {
                    failures.push(VerifyError::ReferenceMismatch {
                        pcr: *pcr,
                        expected: hex::encode(want),
                        found: hex::encode(found),
                    });
                }
            }
        }
    }

    if failures.is_empty() {
        Ok(Verified {
            ak_name,
            clock: attest.clock_info,
            firmware_version: attest.firmware_version,
            bank,
            pcrs: values,
            pcr_digest: pcr_digest.clone(),
            appliance_log: evidence.appliance_log.clone(),
        })
    } else {
        Err(Rejected { failures })
    }
}

fn check_ak_attributes(ak: &Public) -> Result<(), VerifyError> {
    let reason = if !ak.has(attrs::RESTRICTED) {
        "not restricted (a non-restricted key signs anything it is given)"
    } else if !ak.has(attrs::SIGN) {
        "not a signing key"
    } else if ak.has(attrs::DECRYPT) {
        "also a decryption key"
    } else if !ak.has(attrs::FIXED_TPM) {
        "not fixedTPM (could have been duplicated out of the TPM)"
    } else if !ak.has(attrs::FIXED_PARENT) {
        "not fixedParent"
    } else if ak.symmetric != ALG_NULL {
        "has a symmetric algorithm"
    } else {
        return Ok(());
    };
    Err(VerifyError::AkAttributes { reason })
}

fn check_scheme(ak: &Public, sig: &Signature) -> Result<(), VerifyError> {
    let bad = |reason: String| Err(VerifyError::SignatureScheme { reason });
    if sig.hash() != HashAlg::Sha256.tpm_id() {
        let name = HashAlg::from_tpm_id(sig.hash())
            .map(|h| h.name().to_owned())
            .unwrap_or_else(|| format!("{:#06x}", sig.hash()));
        return bad(format!("signature hash {name}; only sha256 is accepted"));
    }
    match (&ak.key, sig) {
        (PublicKey::Ecc { curve, .. }, Signature::Ecdsa { .. }) => {
            if *curve != ECC_NIST_P256 {
                return bad(format!(
                    "ECC curve {curve:#06x}; only NIST P-256 is accepted"
                ));
            }
        }
        (PublicKey::Rsa { bits, .. }, Signature::RsaSsa { .. }) => {
            if *bits < 2048 {
                return bad(format!("RSA-{bits}; at least 2048 bits are required"));
            }
        }
        (PublicKey::Ecc { .. }, _) => return bad("an ECC key with a non-ECDSA signature".into()),
        (PublicKey::Rsa { .. }, _) => {
            return bad("an RSA key with a signature other than RSASSA-SHA256".into())
        }
    }
    // The key's own scheme, when it fixes one, must be the one used.
    if ak.scheme.scheme != ALG_NULL
        && (ak.scheme.scheme != sig.scheme() || ak.scheme.hash != Some(sig.hash()))
    {
        return bad(format!(
            "the key's scheme is {:#06x}/{:?} but the signature uses {:#06x}/{:#06x}",
            ak.scheme.scheme,
            ak.scheme.hash,
            sig.scheme(),
            sig.hash()
        ));
    }
    if !matches!(sig.scheme(), ALG_ECDSA | ALG_RSASSA) {
        return bad(format!("scheme {:#06x}", sig.scheme()));
    }
    Ok(())
}

/// Left-pad a big-endian integer to `len` bytes; None if it does not fit.
fn pad(v: &[u8], len: usize) -> Option<Vec<u8>> {
    let first = v.iter().position(|b| *b != 0).unwrap_or(v.len());
    let v = v.get(first..)?;
    if v.len() > len {
        return None;
    }
    let mut out = vec![0u8; len - v.len()];
    out.extend_from_slice(v);
    Some(out)
}

fn verify_signature(ak: &Public, sig: &Signature, message: &[u8]) -> Result<(), VerifyError> {
    use ring::signature as rs;
    let ok = match (&ak.key, sig) {
        (PublicKey::Ecc { x, y, .. }, Signature::Ecdsa { r, s, .. }) => {
            match (pad(x, 32), pad(y, 32), pad(r, 32), pad(s, 32)) {
                (Some(x), Some(y), Some(r), Some(s)) => {
                    let mut point = vec![0x04];
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    let mut rs_bytes = r;
                    rs_bytes.extend_from_slice(&s);
                    rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_FIXED, point)
                        .verify(message, &rs_bytes)
                        .is_ok()
                }
                _ => false,
            }
        }
        (
            PublicKey::Rsa {
                exponent, modulus, ..
            },
            Signature::RsaSsa { sig, .. },
        ) => {
            // Part 2 §12.2.3.5: an exponent of zero means the default 2^16 + 1.
            let e = if *exponent == 0 { 65537 } else { *exponent };
            let e_bytes = e.to_be_bytes();
            let first = e_bytes.iter().position(|b| *b != 0).unwrap_or(3);
            let key = rs::RsaPublicKeyComponents {
                n: modulus.as_slice(),
                e: e_bytes.get(first..).unwrap_or(&e_bytes),
            };
            key.verify(&rs::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok()
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(VerifyError::Signature)
    }
}

fn check_clock(prev: &ClockInfo, now: &ClockInfo, failures: &mut Vec<VerifyError>) {
    // Part 1 §36: resetCount grows on TPM reset (clock restarts), restartCount on restart/resume
    // within a reset; clock only advances between them.
    if now.reset_count < prev.reset_count {
        failures.push(VerifyError::Clock {
            counter: "resetCount",
            previous: u64::from(prev.reset_count),
            found: u64::from(now.reset_count),
        });
    } else if now.reset_count == prev.reset_count {
        if now.restart_count < prev.restart_count {
            failures.push(VerifyError::Clock {
                counter: "restartCount",
                previous: u64::from(prev.restart_count),
                found: u64::from(now.restart_count),
            });
        } else if now.restart_count == prev.restart_count && now.clock <= prev.clock {
            failures.push(VerifyError::Clock {
                counter: "clock",
                previous: prev.clock,
                found: now.clock,
            });
        }
    }
}

fn check_appliance_log(
    evidence: &Evidence,
    reference: &ReferenceValues,
    values: &BTreeMap<u8, Vec<u8>>,
    failures: &mut Vec<VerifyError>,
) {
    let pcr = reference.appliance_pcr;
    if evidence.appliance_pcr != pcr {
        failures.push(VerifyError::Evidence {
            field: "appliance_pcr".into(),
            reason: format!(
                "{} but the reference values say {pcr}",
                evidence.appliance_pcr
            ),
        });
        return;
    }
    let Some(quoted) = values.get(&pcr) else {
        failures.push(VerifyError::PcrMissing { pcr });
        return;
    };
    if reference.bank != HashAlg::Sha256 {
        failures.push(VerifyError::Evidence {
            field: "appliance_log".into(),
            reason: "the appliance log is a sha256 log; the reference bank must be sha256".into(),
        });
        return;
    }
    match applog::replay(&evidence.appliance_log) {
        Ok(replayed) if ct_eq(&replayed, quoted) => {}
        Ok(replayed) => failures.push(VerifyError::ApplianceReplay {
            pcr,
            quoted: hex::encode(quoted),
            replayed: hex::encode(replayed),
        }),
        Err(e) => {
            failures.push(e.into());
            return;
        }
    }
    for (index, e) in evidence.appliance_log.iter().enumerate() {
        let allowed = AllowedApplianceEvent {
            kind: e.kind.clone(),
            detail: e.detail.clone(),
        };
        if !reference.appliance_events.contains(&allowed) {
            failures.push(VerifyError::ApplianceEventNotAllowed {
                index,
                kind: e.kind.clone(),
                detail: e.detail.clone(),
            });
        }
    }
}

fn check_event_log(
    evidence: &Evidence,
    reference: &ReferenceValues,
    values: &BTreeMap<u8, Vec<u8>>,
    failures: &mut Vec<VerifyError>,
) {
    let Some(bytes) = &evidence.tcg_event_log else {
        if !reference.tcg_events.is_empty() {
            failures.push(VerifyError::MissingEventLog);
        }
        return;
    };
    let log = match eventlog::parse(bytes) {
        Ok(log) => log,
        Err(e) => {
            failures.push(e.into());
            return;
        }
    };
    let replayed = match log.replay(reference.bank) {
        Ok(r) => r,
        Err(e) => {
            failures.push(e.into());
            return;
        }
    };
    // Every quoted PCR the log touches, and every quoted SRTM PCR (0-7, which platform firmware
    // always measures into) whether touched or not, must equal its replay; an untouched PCR
    // replays to zeros. Otherwise dropping an event from the log (or relabelling it as
    // EV_NO_ACTION) would go unnoticed. The appliance PCR belongs to the appliance log.
    let zeros = vec![0u8; reference.bank.len()];
    let srtm = values.keys().copied().filter(|p| *p < 8);
    let touched = replayed.keys().filter_map(|p| u8::try_from(*p).ok());
    let mut pcrs: Vec<u8> = srtm.chain(touched).collect();
    pcrs.sort_unstable();
    pcrs.dedup();
    for pcr in pcrs {
        let value = replayed.get(&u32::from(pcr)).unwrap_or(&zeros);
        if pcr == reference.appliance_pcr {
            if replayed.contains_key(&u32::from(pcr)) {
                failures.push(VerifyError::EventLogReplay {
                    pcr,
                    quoted: "(the appliance PCR, which the platform log must not touch)".into(),
                    replayed: hex::encode(value),
                });
            }
            continue;
        }
        if let Some(quoted) = values.get(&pcr) {
            if !ct_eq(quoted, value) {
                failures.push(VerifyError::EventLogReplay {
                    pcr,
                    quoted: hex::encode(quoted),
                    replayed: hex::encode(value),
                });
            }
        }
    }
    if reference.tcg_events.is_empty() {
        return;
    }
    for e in &log.events {
        if e.event_type == eventlog::EV_NO_ACTION {
            continue;
        }
        let digest = e
            .digests
            .iter()
            .find(|(alg, _)| *alg == reference.bank)
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        let candidate = AllowedTcgEvent {
            pcr: e.pcr,
            event_type: e.event_type,
            digest,
        };
        if !reference.tcg_events.contains(&candidate) {
            failures.push(VerifyError::EventNotAllowed {
                seq: e.seq,
                pcr: e.pcr,
                event_type: e.event_type,
                digest: hex::encode(&candidate.digest),
            });
        }
    }
}
