//! IPFIX (RFC 7011) messages for flow records: two templates (IPv4 and IPv6 flows) with IANA
//! information elements, and four enterprise-specific ones for what IANA has no element for
//! (tenant, segments, drop reason), under PEN 32473, the number RFC 5612 reserves for
//! documentation, until Warden has its own. Pure: records in, datagrams out.
//!
//! ```text
//! message  = header (16) · [template set (id 2)] · data set (id 256 | 257) ...
//! header   = version 10 · length · export time (s) · sequence (data records sent before) · domain
//! ```

use std::net::IpAddr;

use super::ExportRecord;

/// RFC 7011 §3.1.
const VERSION: u16 = 10;
const TEMPLATE_SET: u16 = 2;
pub const TEMPLATE_V4: u16 = 256;
pub const TEMPLATE_V6: u16 = 257;
/// RFC 5612: the enterprise number for documentation and examples.
pub const PEN: u32 = 32473;
/// Variable-length field (RFC 7011 §7).
const VARLEN: u16 = 65535;
/// A datagram stays below a 1500-byte path MTU with room for IP and UDP headers.
pub const MAX_MESSAGE: usize = 1400;

/// IANA IPFIX information elements used (RFC 7012 registry): (id, length).
mod ie {
    pub const OCTET_DELTA_COUNT: (u16, u16) = (1, 8);
    pub const PACKET_DELTA_COUNT: (u16, u16) = (2, 8);
    pub const PROTOCOL_IDENTIFIER: (u16, u16) = (4, 1);
    pub const SOURCE_TRANSPORT_PORT: (u16, u16) = (7, 2);
    pub const SOURCE_IPV4_ADDRESS: (u16, u16) = (8, 4);
    pub const DESTINATION_TRANSPORT_PORT: (u16, u16) = (11, 2);
    pub const DESTINATION_IPV4_ADDRESS: (u16, u16) = (12, 4);
    pub const SOURCE_IPV6_ADDRESS: (u16, u16) = (27, 16);
    pub const DESTINATION_IPV6_ADDRESS: (u16, u16) = (28, 16);
    pub const FLOW_DIRECTION: (u16, u16) = (61, 1);
    pub const FORWARDING_STATUS: (u16, u16) = (89, 1);
    pub const FLOW_START_MILLISECONDS: (u16, u16) = (152, 8);
    pub const FLOW_END_MILLISECONDS: (u16, u16) = (153, 8);
    pub const SAMPLING_PACKET_INTERVAL: (u16, u16) = (305, 4);
}

/// Enterprise elements under [`PEN`], all variable-length UTF-8 strings.
pub mod enterprise {
    pub const TENANT: u16 = 1;
    pub const SOURCE_SEGMENT: u16 = 2;
    pub const DESTINATION_SEGMENT: u16 = 3;
    pub const DROP_REASON: u16 = 4;
}

fn fields(v6: bool) -> Vec<(u16, u16)> {
    let (src, dst) = if v6 {
        (ie::SOURCE_IPV6_ADDRESS, ie::DESTINATION_IPV6_ADDRESS)
    } else {
        (ie::SOURCE_IPV4_ADDRESS, ie::DESTINATION_IPV4_ADDRESS)
    };
    vec![
        src,
        dst,
        ie::PROTOCOL_IDENTIFIER,
        ie::SOURCE_TRANSPORT_PORT,
        ie::DESTINATION_TRANSPORT_PORT,
        ie::PACKET_DELTA_COUNT,
        ie::OCTET_DELTA_COUNT,
        ie::FLOW_START_MILLISECONDS,
        ie::FLOW_END_MILLISECONDS,
        ie::FLOW_DIRECTION,
        ie::FORWARDING_STATUS,
        ie::SAMPLING_PACKET_INTERVAL,
    ]
}

const ENTERPRISE_FIELDS: [u16; 4] = [
    enterprise::TENANT,
    enterprise::SOURCE_SEGMENT,
    enterprise::DESTINATION_SEGMENT,
    enterprise::DROP_REASON,
];

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

/// The template set announcing both templates.
fn template_set() -> Vec<u8> {
    let mut b = Vec::new();
    put16(&mut b, TEMPLATE_SET);
    put16(&mut b, 0); // length, below
    for (id, v6) in [(TEMPLATE_V4, false), (TEMPLATE_V6, true)] {
        let f = fields(v6);
        put16(&mut b, id);
        put16(
            &mut b,
            u16::try_from(f.len() + ENTERPRISE_FIELDS.len()).unwrap_or(0),
        );
        for (ie, len) in f {
            put16(&mut b, ie);
            put16(&mut b, len);
        }
        for e in ENTERPRISE_FIELDS {
            put16(&mut b, 0x8000 | e);
            put16(&mut b, VARLEN);
            put32(&mut b, PEN);
        }
    }
    set_length(&mut b);
    b
}

fn set_length(set: &mut [u8]) {
    let len = u16::try_from(set.len()).unwrap_or(u16::MAX).to_be_bytes();
    if let Some(l) = set.get_mut(2..4) {
        l.copy_from_slice(&len);
    }
}

/// A variable-length string: one length byte (under 255), at most 254 bytes of UTF-8.
fn put_str(b: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(254);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = s.as_bytes().get(..end).unwrap_or_default();
    b.push(u8::try_from(bytes.len()).unwrap_or(0));
    b.extend_from_slice(bytes);
}

fn put_addr(b: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => b.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => b.extend_from_slice(&a.octets()),
    }
}

/// forwardingStatus (IANA registry, RFC 7270 §4.12): 64 forwarded; 128 + reason dropped.
pub fn forwarding_status(r: &ExportRecord) -> u8 {
    match r.reason {
        None => 64,
        Some("policy") => 129, // ACL deny
        Some("rate-limit" | "connection-limit" | "congestion") => 138, // policer
        Some("no-route") => 131, // unroutable
        Some("source") => 140, // RPF
        Some("malformed") => 135, // bad total length
        Some(_) => 128,        // unknown
    }
}

/// One data record (for the template of its family).
fn data_record(r: &ExportRecord) -> Vec<u8> {
    let mut b = Vec::with_capacity(96);
    put_addr(&mut b, r.src);
    put_addr(&mut b, r.dst);
    b.push(r.proto);
    put16(&mut b, r.src_port);
    put16(&mut b, r.dst_port);
    b.extend_from_slice(&r.packets.to_be_bytes());
    b.extend_from_slice(&r.bytes.to_be_bytes());
    b.extend_from_slice(&r.first_ms.to_be_bytes());
    b.extend_from_slice(&r.last_ms.to_be_bytes());
    // flowDirection: 0 ingress, 1 egress (as seen by this node).
    b.push(u8::from(r.outbound));
    b.push(forwarding_status(r));
    put32(&mut b, r.sampling);
    put_str(&mut b, r.tenant.as_deref().unwrap_or(""));
    put_str(&mut b, r.src_segment.as_deref().unwrap_or(""));
    put_str(&mut b, r.dst_segment.as_deref().unwrap_or(""));
    put_str(&mut b, r.reason.unwrap_or(""));
    b
}

/// Builds IPFIX messages, keeping the sequence number across them.
pub struct Encoder {
    domain: u32,
    sequence: u32,
}

impl Encoder {
    pub fn new(domain: u32) -> Encoder {
        Encoder {
            domain,
            sequence: 0,
        }
    }

    /// Messages carrying `records`, each at most [`MAX_MESSAGE`] bytes; with `templates`, every
    /// message starts with the template set (UDP may lose any one of them). `export_secs` is
    /// the export time (Unix seconds).
    pub fn messages(
        &mut self,
        records: &[ExportRecord],
        templates: bool,
        export_secs: u32,
    ) -> Vec<Vec<u8>> {
        let tset = if templates {
            template_set()
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        let mut rest = records.iter().peekable();
        while rest.peek().is_some() || (templates && out.is_empty()) {
            let mut msg = Vec::with_capacity(MAX_MESSAGE);
            put16(&mut msg, VERSION);
            put16(&mut msg, 0);
            put32(&mut msg, export_secs);
            put32(&mut msg, self.sequence);
            put32(&mut msg, self.domain);
            msg.extend_from_slice(&tset);
            let mut count = 0u32;
            // One data set per run of records of one family.
            while let Some(r) = rest.peek() {
                let v6 = r.src.is_ipv6();
                let mut set = Vec::new();
                put16(&mut set, if v6 { TEMPLATE_V6 } else { TEMPLATE_V4 });
                put16(&mut set, 0);
                while let Some(r) = rest.peek() {
                    if r.src.is_ipv6() != v6 {
                        break;
                    }
                    let rec = data_record(r);
                    if msg.len() + set.len() + rec.len() > MAX_MESSAGE
                        && (count > 0 || set.len() > 4)
                    {
                        break;
                    }
                    set.extend_from_slice(&rec);
                    count += 1;
                    rest.next();
                }
                if set.len() > 4 {
                    set_length(&mut set);
                    msg.extend_from_slice(&set);
                }
                if msg.len() + 100 > MAX_MESSAGE
                    || rest.peek().is_some_and(|n| n.src.is_ipv6() == v6)
                {
                    break;
                }
            }
            let len = u16::try_from(msg.len()).unwrap_or(u16::MAX).to_be_bytes();
            if let Some(l) = msg.get_mut(2..4) {
                l.copy_from_slice(&len);
            }
            self.sequence = self.sequence.wrapping_add(count);
            out.push(msg);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn record(i: u16, v6: bool) -> ExportRecord {
        ExportRecord {
            tenant: Some("acme".into()),
            src_segment: Some("acme-a".into()),
            dst_segment: None,
            outbound: true,
            src: if v6 {
                "2001:db8::1".parse().unwrap()
            } else {
                "198.51.100.1".parse().unwrap()
            },
            dst: if v6 {
                "2001:db8::2".parse().unwrap()
            } else {
                "198.51.100.2".parse().unwrap()
            },
            proto: 6,
            src_port: i,
            dst_port: 443,
            packets: 3,
            bytes: 180,
            first_ms: 1_000,
            last_ms: 2_000,
            reason: None,
            sampling: 1,
        }
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// (set id, set length) of each set in a message, checking that they tile it exactly.
    fn sets(m: &[u8]) -> Vec<(u16, usize)> {
        assert_eq!(u16_at(m, 0), 10);
        assert_eq!(usize::from(u16_at(m, 2)), m.len());
        let mut at = 16;
        let mut out = Vec::new();
        while at < m.len() {
            let (id, len) = (u16_at(m, at), usize::from(u16_at(m, at + 2)));
            assert!(len >= 4 && at + len <= m.len(), "set at {at} overruns");
            out.push((id, len));
            at += len;
        }
        assert_eq!(at, m.len());
        out
    }

    #[test]
    fn messages_tile_into_sets_fit_the_mtu_and_count_records_in_the_sequence() {
        let mut e = Encoder::new(7);
        let mut records: Vec<_> = (0..40).map(|i| record(i, false)).collect();
        records.extend((0..20).map(|i| record(i, true)));
        let msgs = e.messages(&records, true, 1_700_000_000);
        assert!(msgs.len() > 1, "60 records need several messages");
        let mut seq = 0;
        for m in &msgs {
            assert!(m.len() <= MAX_MESSAGE);
            assert_eq!(u32_at(m, 4), 1_700_000_000);
            assert_eq!(u32_at(m, 8), seq, "sequence = data records sent before");
            assert_eq!(u32_at(m, 12), 7);
            let s = sets(m);
            assert_eq!(s[0].0, TEMPLATE_SET, "templates first in every message");
            seq += s[1..]
                .iter()
                .map(|(id, len)| {
                    let per = data_record(&record(0, *id == TEMPLATE_V6)).len();
                    u32::try_from((len - 4) / per).unwrap()
                })
                .sum::<u32>();
        }
        assert_eq!(seq, 60);
        // The next batch continues the sequence; without templates no template set.
        let more = e.messages(&records[..1], false, 1);
        assert_eq!(u32_at(&more[0], 8), 60);
        assert_eq!(
            sets(&more[0]),
            [(TEMPLATE_V4, 4 + data_record(&records[0]).len())]
        );
    }

    #[test]
    fn templates_alone_still_make_a_message() {
        let mut e = Encoder::new(1);
        let msgs = e.messages(&[], true, 0);
        assert_eq!(msgs.len(), 1);
        assert_eq!(sets(&msgs[0]).len(), 1);
        assert!(e.messages(&[], false, 0).is_empty());
    }

    #[test]
    fn forwarding_status_follows_the_iana_registry() {
        let mut r = record(1, false);
        assert_eq!(forwarding_status(&r), 64);
        for (reason, code) in [
            ("policy", 129),
            ("rate-limit", 138),
            ("congestion", 138),
            ("no-route", 131),
            ("source", 140),
            ("auth", 128),
        ] {
            r.reason = Some(reason);
            assert_eq!(forwarding_status(&r), code, "{reason}");
        }
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let mut b = Vec::new();
        put_str(&mut b, &"é".repeat(200));
        assert_eq!(usize::from(b[0]), 254);
        assert!(std::str::from_utf8(&b[1..]).is_ok());
    }
}
