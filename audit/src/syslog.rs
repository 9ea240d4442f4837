//! Audit entries as syslog messages for collectors: RFC 5424 messages framed for TLS transport
//! by octet counting (RFC 5425 §4.3). Pure formatting; the exporter that ships them with a
//! bounded on-disk queue is built on top of this.
//!
//! ```text
//! <109>1 2026-11-22T01:02:03.456Z node-a wardend - attestation.served
//!   [warden@32473 seq="7" leaf="…" actor="tenant:acme" tenant="acme" outcome="success"] BOM{json}
//! ```
//! The structured data carries what ties the message to the verifiable log (sequence number =
//! leaf index, and the leaf hash); MSG is the stored event JSON, byte for byte, so a collector
//! can recompute the leaf hash. 32473 is the private enterprise number RFC 5612 reserves for
//! documentation; a deployment may substitute its own.

use crate::event::{Event, Kind, Outcome};
use crate::Hash;

/// RFC 5424 §6.2.1 facility 13: "log audit".
const FACILITY_LOG_AUDIT: u8 = 13;
/// The SD-ID of Warden's structured-data element.
pub const SD_ID: &str = "warden@32473";

/// RFC 5424 §6.2.1 severity: 2 critical for loss or tamper signals, 4 warning for failures and
/// denials, 6 informational otherwise.
fn severity(e: &Event) -> u8 {
    match (e.kind, e.outcome) {
        (
            Kind::AuditTailCut
            | Kind::AuditClockJump
            | Kind::AuditExportGap
            | Kind::AuditQueueOverflow
            | Kind::AuditAppendFailed
            | Kind::AuditVerifyFailed,
            _,
        ) => 2,
        (_, Outcome::Failure | Outcome::Denied) => 4,
        _ => 6,
    }
}

/// RFC 5424 §6.3.3: inside PARAM-VALUE, '"', '\' and ']' are escaped with '\'.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field (HOSTNAME, APP-NAME, MSGID): printable US-ASCII without spaces, at most
/// `max` characters, or "-" (NILVALUE) when nothing remains.
fn header_field(value: &str, max: usize) -> String {
    let s: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if s.is_empty() {
        "-".to_owned()
    } else {
        s
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (the "civil from days"
/// algorithm of H. Hinnant's date library).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// RFC 3339 UTC timestamp with milliseconds (RFC 5424 §6.2.3), or "-" outside years 0..=9999.
pub fn timestamp(time_ms: i64) -> String {
    let secs = time_ms.div_euclid(1000);
    let ms = time_ms.rem_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    if !(0..=9999).contains(&y) {
        return "-".to_owned();
    }
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// One RFC 5424 message for the stored entry `leaf` (the event's exact bytes) at `seq`.
pub fn format_message(
    event: &Event,
    leaf: &[u8],
    seq: u64,
    leaf_hash: &Hash,
    hostname: &str,
) -> String {
    let pri = u16::from(FACILITY_LOG_AUDIT) * 8 + u16::from(severity(event));
    let mut sd = format!(
        "[{SD_ID} seq=\"{seq}\" leaf=\"{}\" actor=\"{}\"",
        hex::encode(leaf_hash),
        escape(&event.actor)
    );
    if let Some(t) = &event.tenant {
        sd.push_str(&format!(" tenant=\"{}\"", escape(t)));
    }
    let outcome = match event.outcome {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Denied => "denied",
    };
    sd.push_str(&format!(" outcome=\"{outcome}\"]"));
    format!(
        "<{pri}>1 {} {} wardend - {} {sd} \u{feff}{}",
        timestamp(event.time_ms),
        header_field(hostname, 255),
        header_field(event.kind.name(), 32),
        String::from_utf8_lossy(leaf)
    )
}

/// RFC 5425 §4.3 octet-counting frame: `MSG-LEN SP SYSLOG-MSG`.
pub fn frame(message: &str) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    #[test]
    fn timestamps_known_answers() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a century leap year).
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        // 2026-11-22T01:02:03.456Z
        assert_eq!(timestamp(1_795_309_323_456), "2026-11-22T01:02:03.456Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(timestamp(i64::MAX), "-");
        assert_eq!(timestamp(i64::MIN), "-");
    }

    #[test]
    fn message_has_priority_header_structured_data_and_the_exact_entry() {
        let e = Event::new(
            1_795_309_323_456,
            Kind::AttestationServed,
            "tenant:a\"c]m\\e",
            "node-a",
            Outcome::Success,
        )
        .tenant("acme");
        let leaf = e.to_leaf().unwrap();
        let h = leaf_hash(&leaf);
        let m = format_message(&e, &leaf, 7, &h, "node-a");
        let want_prefix = format!(
            "<110>1 2026-11-22T01:02:03.456Z node-a wardend - attestation.served [warden@32473 seq=\"7\" leaf=\"{}\" actor=\"tenant:a\\\"c\\]m\\\\e\" tenant=\"acme\" outcome=\"success\"] \u{feff}",
            hex::encode(h)
        );
        assert!(m.starts_with(&want_prefix), "{m}");
        assert!(m.ends_with(std::str::from_utf8(&leaf).unwrap()));
        // Tamper signals are critical, failures warnings.
        let cut = Event::new(
            0,
            Kind::AuditTailCut,
            "wardend",
            "audit-log",
            Outcome::Failure,
        );
        assert!(format_message(&cut, b"{}", 0, &h, "n").starts_with("<106>1 "));
        let denied = Event::new(0, Kind::AppraisalRefused, "peer:x", "e", Outcome::Denied);
        assert!(format_message(&denied, b"{}", 0, &h, "n").starts_with("<108>1 "));
        // A hostname with spaces or control characters cannot break the header.
        assert!(format_message(&e, &leaf, 7, &h, " \n").contains(" - wardend - "));
    }

    #[test]
    fn frames_count_octets() {
        assert_eq!(frame("abc"), b"3 abc");
        let m = "\u{feff}é";
        let f = frame(m);
        assert_eq!(f, [b"5 ".as_slice(), m.as_bytes()].concat());
    }
}
