//! Trusted time for expiry checks.
//!
//! The appliance may boot without a clock it can trust (no RTC battery, no authenticated time
//! source yet). The rules, documented in docs/updates.md:
//!
//! - With a trusted clock (`Known`), metadata and certificates are checked against it.
//! - Without one (`Unknown`), the only thing known is that the time is *at least* the floor:
//!   the latest trusted time this appliance ever saw, kept with the trusted metadata. Something
//!   that expired before the floor is certainly expired and is refused; a `not_before` cannot be
//!   checked (the real time may be later), so it is not.
//! - Time never decides what *boots*: the installed slots boot whatever the clock says (never
//!   brick), and the security floor is the TPM counter, which no clock can lower.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::MetadataError;

/// What the appliance knows about the current time, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustedTime {
    /// A clock the appliance trusts.
    Known(i64),
    /// No trusted clock: the time is at least `floor`.
    Unknown { floor: i64 },
}

impl TrustedTime {
    /// Is something whose validity ends at `expires` (inclusive) certainly expired?
    pub fn is_expired(&self, expires: i64) -> bool {
        match *self {
            TrustedTime::Known(now) => now > expires,
            TrustedTime::Unknown { floor } => floor > expires,
        }
    }

    /// Is something whose validity starts at `not_before` certainly not yet valid?
    pub fn is_before(&self, not_before: i64) -> bool {
        match *self {
            TrustedTime::Known(now) => now < not_before,
            TrustedTime::Unknown { .. } => false,
        }
    }

    /// The latest time known to have passed (the new floor to keep).
    pub fn floor(&self) -> i64 {
        match *self {
            TrustedTime::Known(now) => now,
            TrustedTime::Unknown { floor } => floor,
        }
    }
}

/// Parse an RFC 3339 timestamp (e.g. `2027-01-01T00:00:00Z`) into Unix seconds.
pub fn parse_rfc3339(field: &'static str, s: &str) -> Result<i64, MetadataError> {
    if s.len() > 64 {
        return Err(MetadataError::BadField {
            field,
            reason: "timestamp too long".into(),
        });
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| MetadataError::BadField {
            field,
            reason: format!("not an RFC 3339 time: {e}"),
        })
}

/// Format Unix seconds as RFC 3339 UTC.
pub fn format_rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{t}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_time_refuses_only_what_is_certainly_expired() {
        let t = TrustedTime::Unknown { floor: 1000 };
        assert!(t.is_expired(999));
        assert!(!t.is_expired(1000));
        assert!(!t.is_expired(5000));
        assert!(
            !t.is_before(1_000_000),
            "not_before cannot be checked without a clock"
        );
        let k = TrustedTime::Known(1000);
        assert!(k.is_expired(999));
        assert!(!k.is_expired(1000));
        assert!(k.is_before(1001));
        assert!(!k.is_before(1000));
    }

    #[test]
    fn rfc3339_round_trip_and_errors() {
        let t = parse_rfc3339("expires", "2027-01-01T00:00:00Z").unwrap();
        assert_eq!(t, 1798761600);
        assert_eq!(format_rfc3339(t), "2027-01-01T00:00:00Z");
        assert!(parse_rfc3339("expires", "tomorrow").is_err());
        assert!(parse_rfc3339("expires", &"9".repeat(100)).is_err());
    }
}
