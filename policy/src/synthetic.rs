//! Synthetic policies of any size, for benchmarks (classifier lookups, compile and apply
//! times): 192 IPv4 segments of four addresses in the documentation ranges, one tenant, and
//! TCP/UDP rules spread over the segment pairs with disjoint port ranges.

use std::net::Ipv4Addr;

/// 192 segments of 4 addresses each in the three IPv4 documentation ranges.
pub fn segment_base(i: usize) -> Ipv4Addr {
    let (net, off) = (i / 64, (i % 64) * 4);
    let off = u8::try_from(off).unwrap_or(0);
    match net {
        0 => Ipv4Addr::new(192, 0, 2, off),
        1 => Ipv4Addr::new(198, 51, 100, off),
        _ => Ipv4Addr::new(203, 0, 113, off),
    }
}
pub const SEGMENTS: usize = 192;

/// A policy of `rules` TCP/UDP rules spread over the segment pairs, disjoint port ranges
/// within a pair.
pub fn policy_text(rules: usize) -> String {
    let mut t = String::from("version = 1\n[[tenant]]\nid = \"t\"\n");
    for i in 0..SEGMENTS {
        t += &format!(
            "[[segment]]\nname = \"s{i}\"\ntenant = \"t\"\ncidrs = [\"{}/30\"]\n",
            segment_base(i)
        );
    }
    let pairs = SEGMENTS * SEGMENTS;
    for r in 0..rules {
        let pair = (r * 7919) % pairs;
        let round = r / pairs;
        let (from, to) = (pair / SEGMENTS, pair % SEGMENTS);
        let proto = if round % 2 == 0 { "tcp" } else { "udp" };
        let lo = 1000 + (round / 2) * 10;
        t += &format!(
            "[[rule]]\nfrom = \"s{from}\"\nto = \"s{to}\"\nproto = \"{proto}\"\nports = [\"{lo}-{}\"]\n",
            lo + 5
        );
    }
    t
}
