//! TCG PC Client "crypto agile" event log: parser and PCR replay.
//!
//! Layout (TCG PC Client Platform Firmware Profile, §10 "Event Logging"; integers little-endian):
//!
//! ```text
//! TCG_PCR_EVENT    pcrIndex u32 | eventType u32 | digest [20] | eventDataSize u32 | event
//!   (header, once; event = TCG_EfiSpecIDEvent: "Spec ID Event03\0" | platformClass u32 |
//!    specVersionMinor u8 | specVersionMajor u8 | specErrata u8 | uintnSize u8 |
//!    numberOfAlgorithms u32 | {algorithmId u16, digestSize u16}* | vendorInfoSize u8 | vendorInfo)
//! TCG_PCR_EVENT2   pcrIndex u32 | eventType u32 | count u32 | {hashAlg u16, digest}* |
//!   (repeated)     eventSize u32 | event
//! ```
//!
//! Every byte is untrusted. Event types never steer parsing, except for the two EV_NO_ACTION
//! structures that describe the log itself: the Spec ID header and StartupLocality. A parsed log
//! proves nothing by itself: [`EventLog::replay`] recomputes PCRs, which the caller must compare
//! with PCR values from a verified quote.

use std::collections::BTreeMap;

use crate::alg::HashAlg;
use crate::codec::{DecodeError, Reader};

/// Largest log accepted; checked before any parsing. Real firmware logs are tens of KiB.
pub const MAX_LOG_BYTES: usize = 4 * 1024 * 1024;
/// Most TCG_PCR_EVENT2 records accepted (the header is not counted).
pub const MAX_EVENTS: usize = 16_384;
/// Largest event data (`eventDataSize` / `eventSize`) accepted for one event.
pub const MAX_EVENT_DATA: usize = 1024 * 1024;
/// PCR indices run 0..PCR_COUNT (PC Client TPMs implement 24 PCRs).
pub const PCR_COUNT: u32 = 24;
/// Most algorithms a Spec ID header may list (one per possible PCR bank).
pub const MAX_ALGORITHMS: u32 = 8;

// Event types (PFP §10, Events table). Just numbers: only EV_NO_ACTION changes what replay does.
pub const EV_POST_CODE: u32 = 0x0000_0001;
pub const EV_NO_ACTION: u32 = 0x0000_0003;
pub const EV_SEPARATOR: u32 = 0x0000_0004;
pub const EV_ACTION: u32 = 0x0000_0005;
pub const EV_S_CRTM_CONTENTS: u32 = 0x0000_0007;
pub const EV_S_CRTM_VERSION: u32 = 0x0000_0008;
pub const EV_CPU_MICROCODE: u32 = 0x0000_0009;
pub const EV_PLATFORM_CONFIG_FLAGS: u32 = 0x0000_000A;
pub const EV_IPL: u32 = 0x0000_000D;
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
pub const EV_EFI_ACTION: u32 = 0x8000_0007;
pub const EV_EFI_PLATFORM_FIRMWARE_BLOB2: u32 = 0x8000_000A;
pub const EV_EFI_HANDOFF_TABLES2: u32 = 0x8000_000B;
pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00E0;

/// TCG_EfiSpecIDEvent.signature of a crypto-agile log (PFP §10, Specification ID Version Event).
pub const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// TCG_EfiStartupLocalityEvent.signature (PFP §10, Startup Locality Event).
pub const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";

/// The log header's TCG_EfiSpecIDEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecId {
    pub platform_class: u32,
    /// (major, minor, errata).
    pub spec_version: (u8, u8, u8),
    /// 1 = UINTN is 32 bits, 2 = 64 bits.
    pub uintn_size: u8,
    /// (TPM_ALG_ID, digest size), in header order. Every entry is a known [`HashAlg`] whose
    /// digest size matches.
    pub algorithms: Vec<(u16, u16)>,
}

/// One TCG_PCR_EVENT2 record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// 0-based position in the log; the header is 0, so the first record is 1.
    pub seq: usize,
    /// Byte offset of the record in the log.
    pub offset: usize,
    pub pcr: u32,
    pub event_type: u32,
    /// At most one digest per algorithm, each listed in the header, in log order.
    pub digests: Vec<(HashAlg, Vec<u8>)>,
    pub data: Vec<u8>,
}

impl Event {
    /// This event's digest in the `alg` bank, if it carries one.
    pub fn digest(&self, alg: HashAlg) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, d)| d.as_slice())
    }
}

/// A parsed crypto-agile event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    pub spec: SpecId,
    /// TCG_PCR_EVENT2 records only; the header is in `spec`.
    pub events: Vec<Event>,
    /// Locality of TPM2_Startup, from a StartupLocality EV_NO_ACTION event in PCR 0.
    pub startup_locality: Option<u8>,
}

/// Why an event log was refused. `event` is the record number (header = 0).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventLogError {
    #[error("event log is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("event {event}: {source}")]
    Decode {
        event: usize,
        #[source]
        source: DecodeError,
    },
    #[error("not a crypto-agile event log: {reason}")]
    NotCryptoAgile { reason: &'static str },
    #[error("event log has more than {max} events")]
    TooManyEvents { max: usize },
    #[error("event {event}: digest algorithm {alg:#06x} is not a supported Spec ID header bank")]
    UnknownAlgorithm { event: usize, alg: u16 },
    #[error("the event log's Spec ID header has no {alg} bank")]
    BankNotInLog { alg: HashAlg },
    #[error("event {event}: PCR index {pcr} is out of range (must be below 24)")]
    PcrIndexOutOfRange { event: usize, pcr: u32 },
    #[error("event {event} at byte {offset}: no {alg} digest to replay")]
    MissingDigest {
        event: usize,
        offset: usize,
        alg: HashAlg,
    },
    #[error("event {event} at byte {offset}: invalid StartupLocality event: {reason}")]
    BadStartupLocality {
        event: usize,
        offset: usize,
        reason: &'static str,
    },
}

/// Parse a crypto-agile event log (PFP §10): a SHA-1-format TCG_PCR_EVENT carrying the
/// TCG_EfiSpecIDEvent, then TCG_PCR_EVENT2 records up to the last byte.
///
/// A log cut exactly at a record boundary parses as a shorter log; only replay against a quote
/// detects that.
pub fn parse(bytes: &[u8]) -> Result<EventLog, EventLogError> {
    if bytes.len() > MAX_LOG_BYTES {
        let (len, max) = (bytes.len(), MAX_LOG_BYTES);
        return Err(EventLogError::TooLarge { len, max });
    }
    if bytes.is_empty() {
        return Err(not_agile("the log is empty"));
    }
    let mut r = Reader::new(bytes);
    let (spec, banks) = parse_header(bytes, &mut r).map_err(|f| f.at(0))?;

    let mut events: Vec<Event> = Vec::new();
    let mut startup_locality = None;
    let mut pcr0_measured = false;
    while r.remaining() > 0 {
        if events.len() >= MAX_EVENTS {
            return Err(EventLogError::TooManyEvents { max: MAX_EVENTS });
        }
        let seq = events.len().saturating_add(1);
        let event = parse_event2(&mut r, seq, &banks).map_err(|f| f.at(seq))?;
        if event.event_type == EV_NO_ACTION {
            let seen = startup_locality.is_some();
            if let Some(locality) = startup_locality_of(&event, seen, pcr0_measured)? {
                startup_locality = Some(locality);
            }
        } else if event.pcr == 0 {
            pcr0_measured = true;
        }
        events.push(event);
    }
    Ok(EventLog {
        spec,
        events,
        startup_locality,
    })
}

impl EventLog {
    /// Replay every measured event (all but EV_NO_ACTION, which PFP §10 says is not extended)
    /// into `alg` PCRs, each starting from zeros; PCR 0 starts at 0..0||locality when a
    /// StartupLocality event is present (PFP §10, Startup Locality Event).
    ///
    /// Returns the final value of every PCR the log extends (and PCR 0 if a locality was set).
    /// A measured event without an `alg` digest is an error: it would leave the bank unknown.
    pub fn replay(&self, alg: HashAlg) -> Result<BTreeMap<u32, Vec<u8>>, EventLogError> {
        if !self
            .spec
            .algorithms
            .iter()
            .any(|&(id, _)| id == alg.tpm_id())
        {
            return Err(EventLogError::BankNotInLog { alg });
        }
        let mut pcrs = BTreeMap::new();
        if let Some(locality) = self.startup_locality {
            let mut start = vec![0u8; alg.len()];
            if let Some(last) = start.last_mut() {
                *last = locality;
            }
            pcrs.insert(0, start);
        }
        for event in self.events.iter().filter(|e| e.event_type != EV_NO_ACTION) {
            let (seq, pcr) = (event.seq, event.pcr);
            // The fields are public, so check again what parse() guarantees.
            if pcr >= PCR_COUNT {
                return Err(EventLogError::PcrIndexOutOfRange { event: seq, pcr });
            }
            let offset = event.offset;
            let digest = event.digest(alg).ok_or(EventLogError::MissingDigest {
                event: seq,
                offset,
                alg,
            })?;
            let value = pcrs.entry(pcr).or_insert_with(|| vec![0u8; alg.len()]);
            *value = alg.extend(value, digest);
        }
        Ok(pcrs)
    }
}

fn not_agile(reason: &'static str) -> EventLogError {
    EventLogError::NotCryptoAgile { reason }
}

fn invalid(field: &'static str, offset: usize, reason: &'static str) -> DecodeError {
    DecodeError::Invalid {
        field,
        offset,
        reason,
    }
}

fn unsupported(field: &'static str, offset: usize, value: u64) -> DecodeError {
    DecodeError::Unsupported {
        field,
        offset,
        value,
    }
}

/// Error inside one record's decoder; the caller adds the event number to decode errors.
enum Fail {
    Decode(DecodeError),
    Log(EventLogError),
}

impl From<DecodeError> for Fail {
    fn from(e: DecodeError) -> Self {
        Fail::Decode(e)
    }
}

impl From<EventLogError> for Fail {
    fn from(e: EventLogError) -> Self {
        Fail::Log(e)
    }
}

impl Fail {
    fn at(self, event: usize) -> EventLogError {
        match self {
            Fail::Decode(source) => EventLogError::Decode { event, source },
            Fail::Log(e) => e,
        }
    }
}

/// The SHA-1-format TCG_PCR_EVENT and the TCG_EfiSpecIDEvent it carries (PFP §10,
/// Specification ID Version Event). Returns the header and its banks, in header order.
fn parse_header(bytes: &[u8], r: &mut Reader<'_>) -> Result<(SpecId, Vec<HashAlg>), Fail> {
    let pcr = r.u32_le("TCG_PCR_EVENT.pcrIndex")?;
    let event_type = r.u32_le("TCG_PCR_EVENT.eventType")?;
    if event_type != EV_NO_ACTION {
        return Err(not_agile("the first event is not EV_NO_ACTION").into());
    }
    if pcr != 0 {
        return Err(not_agile("the first event is not in PCR 0").into());
    }
    let digest = r.take(HashAlg::Sha1.len(), "TCG_PCR_EVENT.digest")?;
    if digest.iter().any(|&b| b != 0) {
        return Err(not_agile("the first event's SHA-1 digest is not zero").into());
    }
    let data = event_data(r, "TCG_PCR_EVENT.eventDataSize", "TCG_PCR_EVENT.event")?;

    // Decode the Spec ID with a reader that ends where the event data ends, so error offsets
    // are log offsets and no field can run into the next record.
    let end = r.offset();
    let mut s = Reader::new(bytes.get(..end).unwrap_or_default());
    s.take(end.saturating_sub(data.len()), "TCG_PCR_EVENT")?;

    if s.take(16, "TCG_EfiSpecIDEvent.signature")? != SPEC_ID_SIGNATURE {
        return Err(not_agile("the Spec ID signature is not \"Spec ID Event03\"").into());
    }
    let platform_class = s.u32_le("TCG_EfiSpecIDEvent.platformClass")?;
    let minor = s.u8("TCG_EfiSpecIDEvent.specVersionMinor")?;
    let major = s.u8("TCG_EfiSpecIDEvent.specVersionMajor")?;
    let errata = s.u8("TCG_EfiSpecIDEvent.specErrata")?;
    let (field, offset) = ("TCG_EfiSpecIDEvent.uintnSize", s.offset());
    let uintn_size = s.u8(field)?;
    if !matches!(uintn_size, 1 | 2) {
        return Err(unsupported(field, offset, uintn_size.into()).into());
    }
    let (field, offset) = ("TCG_EfiSpecIDEvent.numberOfAlgorithms", s.offset());
    let count = s.u32_le(field)?;
    if count == 0 || count > MAX_ALGORITHMS {
        return Err(unsupported(field, offset, count.into()).into());
    }
    let mut algorithms = Vec::new();
    let mut banks: Vec<HashAlg> = Vec::new();
    for _ in 0..count {
        let (id_field, id_offset) = ("TCG_EfiSpecIDEvent.algorithmId", s.offset());
        let id = s.u16_le(id_field)?;
        let (size_field, size_offset) = ("TCG_EfiSpecIDEvent.digestSize", s.offset());
        let size = s.u16_le(size_field)?;
        // Off-spec: the spec allows any TPM_ALG_ID here; we refuse banks we cannot replay
        // (e.g. SM3_256) rather than carry digests nobody can check.
        let alg = HashAlg::from_tpm_id(id)
            .ok_or(EventLogError::UnknownAlgorithm { event: 0, alg: id })?;
        if usize::from(size) != alg.len() {
            let reason = "does not match the algorithm's digest length";
            return Err(invalid(size_field, size_offset, reason).into());
        }
        if banks.contains(&alg) {
            return Err(invalid(id_field, id_offset, "algorithm listed twice").into());
        }
        banks.push(alg);
        algorithms.push((id, size));
    }
    let vendor_len = s.u8("TCG_EfiSpecIDEvent.vendorInfoSize")?;
    s.take(usize::from(vendor_len), "TCG_EfiSpecIDEvent.vendorInfo")?;
    s.finish("TCG_EfiSpecIDEvent")?;

    let spec_version = (major, minor, errata);
    let spec = SpecId {
        platform_class,
        spec_version,
        uintn_size,
        algorithms,
    };
    Ok((spec, banks))
}

/// One TCG_PCR_EVENT2 (PFP §10, TCG_PCR_EVENT2 Structure). Digest sizes come from `banks`,
/// the header's algorithm table.
fn parse_event2(r: &mut Reader<'_>, seq: usize, banks: &[HashAlg]) -> Result<Event, Fail> {
    let offset = r.offset();
    let pcr = r.u32_le("TCG_PCR_EVENT2.pcrIndex")?;
    if pcr >= PCR_COUNT {
        return Err(EventLogError::PcrIndexOutOfRange { event: seq, pcr }.into());
    }
    let event_type = r.u32_le("TCG_PCR_EVENT2.eventType")?;
    let (field, count_offset) = ("TPML_DIGEST_VALUES.count", r.offset());
    let count = usize::try_from(r.u32_le(field)?).unwrap_or(usize::MAX);
    if count > banks.len() {
        let (offset, len, max) = (count_offset, count, banks.len());
        return Err(DecodeError::TooLong {
            field,
            offset,
            len,
            max,
        }
        .into());
    }
    if count == 0 {
        let reason = "an event must carry at least one digest";
        return Err(invalid(field, count_offset, reason).into());
    }
    let mut digests: Vec<(HashAlg, Vec<u8>)> = Vec::with_capacity(count);
    for _ in 0..count {
        let (field, alg_offset) = ("TPMT_HA.hashAlg", r.offset());
        let id = r.u16_le(field)?;
        let Some(alg) = banks.iter().copied().find(|a| a.tpm_id() == id) else {
            return Err(EventLogError::UnknownAlgorithm {
                event: seq,
                alg: id,
            }
            .into());
        };
        if digests.iter().any(|(a, _)| *a == alg) {
            let reason = "algorithm appears twice in one event";
            return Err(invalid(field, alg_offset, reason).into());
        }
        let digest = r.take(alg.len(), "TPMT_HA.digest")?;
        digests.push((alg, digest.to_vec()));
    }
    let data = event_data(r, "TCG_PCR_EVENT2.eventSize", "TCG_PCR_EVENT2.event")?.to_vec();
    Ok(Event {
        seq,
        offset,
        pcr,
        event_type,
        digests,
        data,
    })
}

/// A u32 length, checked against [`MAX_EVENT_DATA`], then that many bytes.
fn event_data<'a>(
    r: &mut Reader<'a>,
    field: &'static str,
    data_field: &'static str,
) -> Result<&'a [u8], DecodeError> {
    let offset = r.offset();
    let len = usize::try_from(r.u32_le(field)?).unwrap_or(usize::MAX);
    if len > MAX_EVENT_DATA {
        return Err(DecodeError::TooLong {
            field,
            offset,
            len,
            max: MAX_EVENT_DATA,
        });
    }
    r.take(len, data_field)
}

/// TCG_EfiStartupLocalityEvent (PFP §10, Startup Locality Event): an EV_NO_ACTION event in
/// PCR 0, before anything is measured into PCR 0, whose data is the signature and one byte.
/// `None` for any other EV_NO_ACTION event.
fn startup_locality_of(
    event: &Event,
    already_seen: bool,
    pcr0_measured: bool,
) -> Result<Option<u8>, EventLogError> {
    let Some(rest) = event
        .data
        .strip_prefix(STARTUP_LOCALITY_SIGNATURE.as_slice())
    else {
        return Ok(None);
    };
    let (seq, offset) = (event.seq, event.offset);
    let bad = |reason| EventLogError::BadStartupLocality {
        event: seq,
        offset,
        reason,
    };
    if event.pcr != 0 {
        return Err(bad("it is not in PCR 0"));
    }
    if pcr0_measured {
        return Err(bad("it follows a measured PCR 0 event"));
    }
    if already_seen {
        return Err(bad("the log has more than one"));
    }
    match rest {
        // TPM localities are 0..=4 (4: H-CRTM).
        [locality @ 0..=4] => Ok(Some(*locality)),
        [_] => Err(bad("locality is above 4")),
        _ => Err(bad("data is not the signature and one locality byte")),
    }
}

/// Builds a valid crypto-agile log (header + events) for tests, demos and fuzz seeds. It only
/// writes bytes: callers extend the same digests into a real TPM themselves.
///
/// Banks and digests are written exactly as given, so an empty or duplicated bank list, or a
/// digest of the wrong length, yields a log that [`parse`] rejects — useful for negative tests.
#[derive(Debug, Clone)]
pub struct EventLogBuilder {
    banks: Vec<HashAlg>,
    startup_locality: Option<u8>,
    body: Vec<u8>,
}

impl EventLogBuilder {
    pub fn new(banks: &[HashAlg]) -> Self {
        EventLogBuilder {
            banks: banks.to_vec(),
            startup_locality: None,
            body: Vec::new(),
        }
    }

    /// Emit a StartupLocality EV_NO_ACTION event in PCR 0 right after the header.
    pub fn startup_locality(mut self, locality: u8) -> Self {
        self.startup_locality = Some(locality);
        self
    }

    /// Adds an event whose digest in every bank is H(data); returns the per-bank digests added.
    pub fn measure(&mut self, pcr: u32, event_type: u32, data: &[u8]) -> Vec<(HashAlg, Vec<u8>)> {
        let digests: Vec<(HashAlg, Vec<u8>)> = self
            .banks
            .iter()
            .map(|&alg| (alg, alg.digest(&[data])))
            .collect();
        self.raw_event(pcr, event_type, digests.clone(), data);
        digests
    }

    /// Adds an event with explicit digests (to forge/relabel in tests).
    pub fn raw_event(
        &mut self,
        pcr: u32,
        event_type: u32,
        digests: Vec<(HashAlg, Vec<u8>)>,
        data: &[u8],
    ) {
        write_event2(&mut self.body, pcr, event_type, &digests, data);
    }

    /// The log: header, the StartupLocality event if set, then the events in order.
    pub fn build(&self) -> Vec<u8> {
        let mut spec = Vec::new();
        spec.extend_from_slice(SPEC_ID_SIGNATURE);
        put_u32(&mut spec, 0); // platformClass: client
        spec.extend_from_slice(&[0, 2, 2, 2]); // version 2.0 errata 2, UINTN = 64 bits
        put_u32(&mut spec, len_u32(self.banks.len()));
        for alg in &self.banks {
            spec.extend_from_slice(&alg.tpm_id().to_le_bytes());
            let size = u16::try_from(alg.len()).unwrap_or(u16::MAX);
            spec.extend_from_slice(&size.to_le_bytes());
        }
        spec.push(0); // vendorInfoSize

        let mut out = Vec::new();
        put_u32(&mut out, 0);
        put_u32(&mut out, EV_NO_ACTION);
        out.extend_from_slice(&[0u8; 20]);
        put_u32(&mut out, len_u32(spec.len()));
        out.extend_from_slice(&spec);
        if let Some(locality) = self.startup_locality {
            let zeros: Vec<(HashAlg, Vec<u8>)> = self
                .banks
                .iter()
                .map(|&alg| (alg, vec![0u8; alg.len()]))
                .collect();
            let mut data = STARTUP_LOCALITY_SIGNATURE.to_vec();
            data.push(locality);
            write_event2(&mut out, 0, EV_NO_ACTION, &zeros, &data);
        }
        out.extend_from_slice(&self.body);
        out
    }
}

fn write_event2(
    out: &mut Vec<u8>,
    pcr: u32,
    event_type: u32,
    digests: &[(HashAlg, Vec<u8>)],
    data: &[u8],
) {
    put_u32(out, pcr);
    put_u32(out, event_type);
    put_u32(out, len_u32(digests.len()));
    for (alg, digest) in digests {
        out.extend_from_slice(&alg.tpm_id().to_le_bytes());
        out.extend_from_slice(digest);
    }
    put_u32(out, len_u32(data.len()));
    out.extend_from_slice(data);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Lengths beyond u32 cannot be encoded; saturating makes such a log unparseable, not wrong.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use DecodeError as D;
    use EventLogError as E;

    const SHA1: HashAlg = HashAlg::Sha1;
    const SHA256: HashAlg = HashAlg::Sha256;

    /// `value` matches `pat` (the `=>` keeps rustfmt from spreading patterns over lines).
    macro_rules! is {
        ($value:expr => $pat:pat) => {{
            let value = $value;
            assert!(matches!(value, $pat), "{value:?}");
        }};
    }
    macro_rules! refused {
        ($bytes:expr => $pat:pat) => {
            is!(parse(&$bytes) => Err($pat))
        };
    }

    fn sample() -> Vec<u8> {
        let mut b = EventLogBuilder::new(&[SHA1, SHA256]).startup_locality(0);
        b.measure(0, EV_POST_CODE, b"firmware volume");
        b.measure(0, EV_SEPARATOR, &[0; 4]);
        b.measure(7, EV_EFI_ACTION, b"Calling EFI Application");
        b.raw_event(
            1,
            EV_NO_ACTION,
            vec![(SHA256, vec![0; 32])],
            b"not measured",
        );
        b.measure(4, EV_IPL, b"grub");
        b.build()
    }

    /// A log with `banks` and the events `add` writes.
    fn log(banks: &[HashAlg], add: impl FnOnce(&mut EventLogBuilder)) -> Vec<u8> {
        let mut b = EventLogBuilder::new(banks);
        add(&mut b);
        b.build()
    }

    /// One EV_POST_CODE event with these digests and no data.
    fn one(pcr: u32, digests: Vec<(HashAlg, Vec<u8>)>) -> impl FnOnce(&mut EventLogBuilder) {
        move |b| b.raw_event(pcr, EV_POST_CODE, digests, b"")
    }

    #[test]
    fn parses_hand_encoded_log_and_builder_writes_the_same_bytes() {
        let digest = SHA256.digest(&[&[0; 4]]);
        let mut bytes = [&[0u8, 0, 0, 0, 3, 0, 0, 0][..], &[0; 20], &[33, 0, 0, 0]].concat();
        bytes.extend_from_slice(b"Spec ID Event03\0");
        bytes.extend_from_slice(&[0, 0, 0, 0, /* minor */ 0, /* major */ 2, 2, 2]);
        bytes.extend_from_slice(&[1, 0, 0, 0, 0x0B, 0, 32, 0, /* vendorInfoSize */ 0]);
        bytes.extend_from_slice(&[7, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0x0B, 0]);
        bytes.extend_from_slice(&digest);
        bytes.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0]);

        let parsed = parse(&bytes).unwrap();
        let spec = &parsed.spec;
        assert_eq!(
            (spec.platform_class, spec.spec_version, spec.uintn_size),
            (0, (2, 0, 2), 2)
        );
        assert_eq!(spec.algorithms, [(0x000B, 32)]);
        let [e] = &parsed.events[..] else {
            panic!("{parsed:?}")
        };
        assert_eq!(
            (e.seq, e.offset, e.pcr, e.event_type),
            (1, 65, 7, EV_SEPARATOR)
        );
        assert_eq!(
            (&e.digests, &e.data[..]),
            (&vec![(SHA256, digest)], &[0u8; 4][..])
        );
        assert_eq!(parsed.startup_locality, None);
        let mut b = EventLogBuilder::new(&[SHA256]);
        let added = b.measure(7, EV_SEPARATOR, &[0; 4]);
        assert_eq!((b.build(), added), (bytes, e.digests.clone()));
    }

    #[test]
    fn round_trip_replay_equals_manual_extend_chain_and_skips_no_action() {
        let parsed = parse(&sample()).unwrap();
        let seqs: Vec<usize> = parsed.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        assert_eq!(parsed.events[5].data, b"grub");
        for alg in [SHA1, SHA256] {
            let ext = |old: Vec<u8>, data: &[u8]| alg.extend(&old, &alg.digest(&[data]));
            let zero = vec![0u8; alg.len()];
            let pcr0 = ext(ext(zero.clone(), b"firmware volume"), &[0; 4]);
            let pcr4 = ext(zero.clone(), b"grub");
            let pcr7 = ext(zero, b"Calling EFI Application");
            // No PCR 1: its only event is EV_NO_ACTION.
            let expected = BTreeMap::from([(0, pcr0), (4, pcr4), (7, pcr7)]);
            assert_eq!(parsed.replay(alg).unwrap(), expected, "{alg}");
        }
    }

    #[test]
    fn startup_locality_3_changes_pcr0_start_value() {
        let measure = |b: &mut EventLogBuilder| drop(b.measure(0, EV_S_CRTM_VERSION, b"v1"));
        let mut b = EventLogBuilder::new(&[SHA256]).startup_locality(3);
        measure(&mut b);
        let with3 = parse(&b.build()).unwrap();
        assert_eq!(with3.startup_locality, Some(3));
        let mut start = vec![0u8; 32];
        start[31] = 3;
        let expected = SHA256.extend(&start, &SHA256.digest(&[b"v1"]));
        assert_eq!(with3.replay(SHA256).unwrap()[&0], expected);
        let plain = parse(&log(&[SHA256], measure)).unwrap();
        assert_eq!(plain.startup_locality, None);
        assert_ne!(plain.replay(SHA256).unwrap()[&0], expected);
        // A locality alone still reports PCR 0, at its start value.
        let only = parse(&EventLogBuilder::new(&[SHA256]).startup_locality(3).build()).unwrap();
        assert_eq!(only.replay(SHA256).unwrap(), BTreeMap::from([(0, start)]));
    }

    #[test]
    fn relabelled_event_changes_replay() {
        let bytes = sample();
        let parsed = parse(&bytes).unwrap();
        let at = parsed.events[1].offset + 4; // eventType of "firmware volume", PCR 0
        let mut forged = bytes.clone();
        forged[at..at + 4].copy_from_slice(&EV_NO_ACTION.to_le_bytes());
        let relabelled = parse(&forged).unwrap().replay(SHA256).unwrap();
        assert_ne!(relabelled[&0], parsed.replay(SHA256).unwrap()[&0]);
    }

    #[test]
    fn empty_and_too_large_logs_are_refused_before_parsing() {
        refused!([0u8; 0] => E::NotCryptoAgile { .. });
        let huge = vec![0u8; MAX_LOG_BYTES + 1];
        refused!(huge => E::TooLarge { len: 4_194_305, max: MAX_LOG_BYTES });
    }

    #[test]
    fn truncated_log_is_refused_except_at_record_boundaries() {
        let bytes = sample();
        let full = parse(&bytes).unwrap();
        let mut boundaries: Vec<usize> = full.events.iter().map(|e| e.offset).collect();
        boundaries.push(bytes.len());
        for cut in 0..bytes.len() {
            match parse(&bytes[..cut]) {
                Ok(short) => {
                    assert!(boundaries.contains(&cut), "cut {cut}");
                    assert_eq!(short.events[..], full.events[..short.events.len()]);
                }
                Err(_) => assert!(!boundaries.contains(&cut), "cut {cut}"),
            }
        }
        refused!(bytes[..bytes.len() - 1] => E::Decode { event: 6, source: D::Truncated { .. } });
    }

    #[test]
    fn trailing_bytes_that_are_not_an_event_are_refused() {
        for tail in [&[0u8][..], &[0; 11], &[0; 12], &[0xFF; 40]] {
            let bytes = [sample(), tail.to_vec()].concat();
            assert!(parse(&bytes).is_err(), "{tail:?}");
        }
        let bytes = [sample(), vec![0; 3]].concat();
        let msg = parse(&bytes).unwrap_err().to_string();
        let at = sample().len();
        let want = format!("event 7: TCG_PCR_EVENT2.pcrIndex: truncated at byte {at}");
        assert!(msg.starts_with(&want), "{msg}");
    }

    #[test]
    fn bad_header_is_refused() {
        let good = EventLogBuilder::new(&[SHA256]).build();
        let patch = |at: usize, with: &[u8]| {
            let mut b = good.clone();
            b[at..at + with.len()].copy_from_slice(with);
            b
        };
        // Wrong signature, PCR, event type, non-zero SHA-1 digest.
        let wrong: [(usize, &[u8]); 4] =
            [(32, b"Spec ID Event02\0"), (0, &[1]), (4, &[4]), (8, &[1])];
        for (at, with) in wrong {
            refused!(patch(at, with) => E::NotCryptoAgile { .. });
        }
        for (at, with, field) in [
            (55, 3, "TCG_EfiSpecIDEvent.uintnSize"),
            (56, 0, "TCG_EfiSpecIDEvent.numberOfAlgorithms"),
            (56, 9, "TCG_EfiSpecIDEvent.numberOfAlgorithms"),
            (62, 20, "TCG_EfiSpecIDEvent.digestSize"),
            (64, 1, "TCG_EfiSpecIDEvent.vendorInfo"),
        ] {
            let Err(E::Decode { event: 0, source }) = parse(&patch(at, &[with])) else {
                panic!("{field}")
            };
            assert!(source.to_string().starts_with(field), "{source}");
        }
        refused!(patch(60, &[0x12]) => E::UnknownAlgorithm { event: 0, alg: 0x12 }); // SM3_256
        let dup = EventLogBuilder::new(&[SHA256, SHA256]).build();
        refused!(dup => E::Decode { event: 0, source: D::Invalid { offset: 64, .. } });
        refused!(EventLogBuilder::new(&[]).build() => E::Decode { event: 0, .. });
        let mut long = patch(28, &[34]); // one byte more in the header event than the Spec ID
        long.push(0);
        refused!(long => E::Decode { event: 0, source: D::TrailingBytes { .. } });
    }

    #[test]
    fn unknown_duplicate_excess_and_missing_digests_are_refused() {
        let sha384 = one(0, vec![(HashAlg::Sha384, vec![0; 48])]);
        refused!(log(&[SHA256], sha384) => E::UnknownAlgorithm { event: 1, alg: 0x000C });
        let twice = vec![(SHA1, vec![0; 20]); 2];
        let dup = log(&[SHA1, SHA256], one(0, twice.clone()));
        refused!(dup => E::Decode { event: 1, source: D::Invalid { .. } });
        let excess = log(&[SHA1], one(0, twice));
        refused!(excess => E::Decode { event: 1, source: D::TooLong { len: 2, max: 1, .. } });
        refused!(log(&[SHA1], one(0, vec![])) => E::Decode { event: 1, source: D::Invalid { .. } });

        let parsed = parse(&sample()).unwrap();
        is!(parsed.replay(HashAlg::Sha384) => Err(E::BankNotInLog { alg: HashAlg::Sha384 }));
        let parsed = parse(&log(&[SHA1, SHA256], one(2, vec![(SHA256, vec![1; 32])]))).unwrap();
        assert!(parsed.replay(SHA256).is_ok());
        is!(parsed.replay(SHA1) => Err(E::MissingDigest { event: 1, alg: SHA1, .. }));
    }

    #[test]
    fn pcr_index_out_of_range_is_refused() {
        assert!(parse(&log(&[SHA1], one(23, vec![(SHA1, vec![0; 20])]))).is_ok());
        let pcr24 = log(&[SHA1], one(24, vec![(SHA1, vec![0; 20])]));
        refused!(pcr24 => E::PcrIndexOutOfRange { event: 1, pcr: 24 });
        let mut parsed = parse(&sample()).unwrap();
        parsed.events[1].pcr = u32::MAX; // a caller-built log is checked by replay too
        is!(parsed.replay(SHA1) => Err(E::PcrIndexOutOfRange { event: 2, .. }));
    }

    #[test]
    fn too_many_events_are_refused() {
        let mut b = EventLogBuilder::new(&[SHA1]);
        for _ in 0..MAX_EVENTS {
            b.raw_event(1, EV_POST_CODE, vec![(SHA1, vec![7; 20])], b"");
        }
        assert_eq!(parse(&b.build()).unwrap().events.len(), MAX_EVENTS);
        b.raw_event(1, EV_POST_CODE, vec![(SHA1, vec![7; 20])], b"");
        refused!(b.build() => E::TooManyEvents { max: MAX_EVENTS });
    }

    #[test]
    fn oversized_event_data_is_refused_before_reading_it() {
        let mut bytes = log(&[SHA1], one(0, vec![(SHA1, vec![0; 20])]));
        let at = bytes.len() - 4;
        bytes[at..].copy_from_slice(&len_u32(MAX_EVENT_DATA + 1).to_le_bytes());
        refused!(bytes => E::Decode { event: 1, source: D::TooLong { max: MAX_EVENT_DATA, .. } });
    }

    #[test]
    fn misplaced_or_malformed_startup_locality_is_refused() {
        let sl = |loc: &[u8]| [STARTUP_LOCALITY_SIGNATURE.as_slice(), loc].concat();
        let add = |b: &mut EventLogBuilder, pcr: u32, loc: &[u8]| {
            b.raw_event(pcr, EV_NO_ACTION, vec![(SHA1, vec![0; 20])], &sl(loc))
        };
        let measure0 = |b: &mut EventLogBuilder| drop(b.measure(0, EV_POST_CODE, b""));
        let cases: [&dyn Fn(&mut EventLogBuilder); 5] = [
            &|b| add(b, 1, &[3]),                      // not in PCR 0
            &|b| (measure0(b), add(b, 0, &[3])).1,     // after a measured PCR 0 event
            &|b| (0..2).for_each(|_| add(b, 0, &[3])), // twice
            &|b| add(b, 0, &[3, 0]),                   // two bytes
            &|b| add(b, 0, &[5]),                      // locality 5
        ];
        for case in cases {
            refused!(log(&[SHA1], case) => E::BadStartupLocality { .. });
        }
        // After measurements in other PCRs is fine; so is the signature in a measured event.
        let bytes = log(&[SHA1], |b| {
            b.measure(1, EV_POST_CODE, b"x");
            add(b, 0, &[4]);
            b.measure(0, EV_POST_CODE, &sl(&[9, 9]));
        });
        assert_eq!(parse(&bytes).unwrap().startup_locality, Some(4));
    }

    fn parse_and_replay(bytes: &[u8]) {
        let Ok(parsed) = parse(bytes) else { return };
        for e in &parsed.events {
            assert!(e.pcr < PCR_COUNT && e.digests.iter().all(|(a, d)| d.len() == a.len()));
        }
        for alg in [SHA1, SHA256, HashAlg::Sha384, HashAlg::Sha512] {
            let _ = parsed.replay(alg);
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..1024),
        ) {
            parse_and_replay(&bytes);
        }

        #[test]
        fn parse_never_panics_after_a_valid_header(
            body in prop::collection::vec(any::<u8>(), 0..1024),
        ) {
            parse_and_replay(&[EventLogBuilder::new(&[SHA1, SHA256]).build(), body].concat());
        }

        #[test]
        fn parse_never_panics_on_mutated_logs(
            edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in 0usize..8,
        ) {
            let mut bytes = sample();
            for (at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes.truncate(bytes.len() - cut);
            parse_and_replay(&bytes);
        }
    }
}
