//! The inner packet's fields the data plane needs: addresses, protocol, destination port and
//! a flow hash. Bounds-checked; never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::esp::sa::{NEXT_IPV4, NEXT_IPV6};

pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const ACK: u8 = 0x10;

/// What the classifier needs from one inner IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// The TCP/UDP destination port; 0 for other protocols and non-first fragments.
    pub dst_port: u16,
    pub src_port: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// The ESP next-header value for this packet (4 or 41).
    pub next_header: u8,
}

impl Flow {
    /// Parse an IPv4 or IPv6 packet. `None` if it is not one (too short, wrong version, the
    /// header length or total length disagreeing with the bytes).
    pub fn parse(p: &[u8]) -> Option<Flow> {
        match p.first()? >> 4 {
            4 => {
                let ihl = usize::from(p.first()? & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
                if ihl < 20 || total < ihl || total > p.len() {
                    return None;
                }
                let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]) & 0x1fff;
                let proto = *p.get(9)?;
                let src = Ipv4Addr::from(<[u8; 4]>::try_from(p.get(12..16)?).ok()?);
                let dst = Ipv4Addr::from(<[u8; 4]>::try_from(p.get(16..20)?).ok()?);
                let (src_port, dst_port, tcp_flags) = if frag == 0 {
                    ports(proto, p.get(ihl..total)?)
                } else {
                    (0, 0, 0)
                };
                Some(Flow {
                    src: src.into(),
                    dst: dst.into(),
                    proto,
                    dst_port,
                    src_port,
                    tcp_flags,
                    next_header: NEXT_IPV4,
                })
            }
            6 => {
                let payload = usize::from(u16::from_be_bytes([*p.get(4)?, *p.get(5)?]));
                let end = 40usize.checked_add(payload)?;
                if end > p.len() {
                    return None;
                }
                let proto = *p.get(6)?;
                let src = Ipv6Addr::from(<[u8; 16]>::try_from(p.get(8..24)?).ok()?);
                let dst = Ipv6Addr::from(<[u8; 16]>::try_from(p.get(24..40)?).ok()?);
                let (src_port, dst_port, tcp_flags) = ports(proto, p.get(40..end)?);
                Some(Flow {
                    src: src.into(),
                    dst: dst.into(),
                    proto,
                    dst_port,
                    src_port,
                    tcp_flags,
                    next_header: NEXT_IPV6,
                })
            }
            _ => None,
        }
    }

    /// A hash of the 5-tuple (FNV-1a): picks the outer UDP source port, so one flow stays on
    /// one path and different flows spread over cores, queues and ECMP paths.
    pub fn hash(&self) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        let mut eat = |b: &[u8]| {
            for x in b {
                h ^= u32::from(*x);
                h = h.wrapping_mul(0x0100_0193);
            }
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                eat(&s.octets());
                eat(&d.octets());
            }
            (s, d) => {
                eat(&v6(s).octets());
                eat(&v6(d).octets());
            }
        }
        eat(&[self.proto]);
        eat(&self.src_port.to_be_bytes());
        eat(&self.dst_port.to_be_bytes());
        h
    }
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// (source port, destination port, TCP flags); zeros when absent.
fn ports(proto: u8, l4: &[u8]) -> (u16, u16, u8) {
    if proto != TCP && proto != UDP {
        return (0, 0, 0);
    }
    let flags = if proto == TCP {
        l4.get(13).copied().unwrap_or(0)
    } else {
        0
    };
    match l4 {
        [s0, s1, d0, d1, ..] => (
            u16::from_be_bytes([*s0, *s1]),
            u16::from_be_bytes([*d0, *d1]),
            flags,
        ),
        _ => (0, 0, 0),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    /// A minimal IPv4 packet (checksums are not checked by the data plane's classifier); TCP
    /// packets are SYNs.
    pub(crate) fn ipv4(
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        ipv4_flags(src, dst, proto, 40000, dport, SYN, payload)
    }

    pub(crate) fn ipv4_flags(
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        sport: u16,
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let l4 = match proto {
            TCP => 20,
            UDP => 8,
            _ => 0,
        };
        let total = 20 + l4 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        if l4 > 0 {
            p[20..22].copy_from_slice(&sport.to_be_bytes());
            p[22..24].copy_from_slice(&dport.to_be_bytes());
        }
        if proto == TCP {
            p[32] = 5 << 4;
            p[33] = flags;
        }
        p[20 + l4..].copy_from_slice(payload);
        p
    }

    #[test]
    fn parses_ipv4_and_ipv6() {
        let p = ipv4([192, 0, 2, 1], [192, 0, 2, 2], TCP, 443, b"hi");
        let f = Flow::parse(&p).unwrap();
        assert_eq!(f.src, IpAddr::from([192, 0, 2, 1]));
        assert_eq!(f.dst, IpAddr::from([192, 0, 2, 2]));
        assert_eq!(
            (f.proto, f.src_port, f.dst_port, f.next_header),
            (TCP, 40000, 443, 4)
        );

        let mut p6 = vec![0u8; 48];
        p6[0] = 0x60;
        p6[4..6].copy_from_slice(&8u16.to_be_bytes());
        p6[6] = UDP;
        p6[8..24].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        p6[24..40].copy_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        p6[42..44].copy_from_slice(&53u16.to_be_bytes());
        let f = Flow::parse(&p6).unwrap();
        assert_eq!((f.proto, f.dst_port, f.next_header), (UDP, 53, 41));
        assert_eq!(f.dst, "2001:db8::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn refuses_inconsistent_headers() {
        let p = ipv4([192, 0, 2, 1], [192, 0, 2, 2], UDP, 53, b"x");
        assert!(
            Flow::parse(&p[..p.len() - 1]).is_none(),
            "total length past the end"
        );
        let mut bad = p.clone();
        bad[0] = 0x44;
        assert!(Flow::parse(&bad).is_none(), "IHL below 5");
        bad[0] = 0x55;
        assert!(Flow::parse(&bad).is_none(), "version 5");
        assert!(Flow::parse(&[]).is_none());
        // A non-first fragment carries no ports.
        let mut frag = p.clone();
        frag[7] = 1;
        assert_eq!(Flow::parse(&frag).unwrap().dst_port, 0);
    }

    #[test]
    fn hash_depends_on_the_flow() {
        let a = Flow::parse(&ipv4([192, 0, 2, 1], [192, 0, 2, 2], TCP, 443, b"")).unwrap();
        let b = Flow::parse(&ipv4([192, 0, 2, 1], [192, 0, 2, 2], TCP, 444, b"")).unwrap();
        assert_eq!(a.hash(), a.hash());
        assert_ne!(a.hash(), b.hash());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Flow::parse(&bytes);
        }
    }
}
