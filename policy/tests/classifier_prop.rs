//! The classifier agrees with a brute-force reference (linear scans over the policy as
//! written) on random policies and random packets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use warden_policy::{parse, DenyReason, Policy, Proto, Verdict};

/// 32 disjoint IPv4 /28 blocks and 8 IPv6 /64s a policy can hand out to segments.
fn block(i: usize) -> String {
    match i {
        0..=15 => format!("198.51.100.{}/28", i * 16),
        16..=31 => format!("203.0.113.{}/28", (i - 16) * 16),
        _ => format!("2001:db8:{:x}::/64", i - 31),
    }
}
const BLOCKS: usize = 40;

/// (from, to, protocol 0..4, port ranges)
type RuleSpec = (usize, usize, u8, Vec<(u16, u16)>);

#[derive(Clone, Debug)]
struct Spec {
    tenants: usize,
    /// For each block: the segment that owns it, if any.
    owner: Vec<Option<usize>>,
    segments: usize,
    rules: Vec<RuleSpec>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (1usize..4, 1usize..10).prop_flat_map(|(tenants, segments)| {
        (
            Just(tenants),
            Just(segments),
            proptest::collection::vec(proptest::option::of(0..segments), BLOCKS),
            proptest::collection::vec(
                (
                    0..segments,
                    0..segments,
                    0u8..4,
                    proptest::collection::vec((1u16..200, 0u16..20), 1..4),
                ),
                0..30,
            ),
        )
            .prop_map(|(tenants, segments, owner, rules)| Spec {
                tenants,
                owner,
                segments,
                rules: rules
                    .into_iter()
                    .map(|(f, t, p, ports)| {
                        (
                            f,
                            t,
                            p,
                            ports.into_iter().map(|(lo, w)| (lo, lo + w)).collect(),
                        )
                    })
                    .collect(),
            })
    })
}

fn proto_name(p: u8) -> &'static str {
    ["tcp", "udp", "icmp", "any"][p as usize]
}

/// The policy text; rules that would repeat a flow of an earlier rule are left out, and every
/// segment gets at least one block.
fn render(s: &Spec) -> (String, Vec<RuleSpec>) {
    let mut t = String::from("version = 1\n");
    for i in 0..s.tenants {
        let all: Vec<String> = (0..s.tenants).map(|k| format!("\"t{k}\"")).collect();
        t += &format!(
            "[[tenant]]\nid = \"t{i}\"\nsend_to = [{0}]\naccept_from = [{0}]\n",
            all.join(",")
        );
    }
    let mut owner = s.owner.clone();
    for seg in 0..s.segments {
        if !owner.contains(&Some(seg)) {
            // Take a free block, or steal one.
            let i = owner.iter().position(Option::is_none).unwrap_or(seg);
            owner[i] = Some(seg);
        }
    }
    for seg in 0..s.segments {
        let cidrs: Vec<String> = (0..BLOCKS)
            .filter(|b| owner[*b] == Some(seg))
            .map(|b| format!("\"{}\"", block(b)))
            .collect();
        if cidrs.is_empty() {
            continue;
        }
        t += &format!(
            "[[segment]]\nname = \"s{seg}\"\ntenant = \"t{}\"\ncidrs = [{}]\n",
            seg % s.tenants,
            cidrs.join(",")
        );
    }
    let present: Vec<bool> = (0..s.segments)
        .map(|seg| owner.contains(&Some(seg)))
        .collect();
    let mut kept: Vec<RuleSpec> = Vec::new();
    for (f, to, p, ports) in &s.rules {
        if !present[*f] || !present[*to] {
            continue;
        }
        let clash = kept.iter().any(|(kf, kt, kp, kports)| {
            kf == f
                && kt == to
                && kp == p
                && (*p >= 2
                    || kports
                        .iter()
                        .any(|a| ports.iter().any(|b| a.0 <= b.1 && b.0 <= a.1)))
        });
        if clash {
            continue;
        }
        t += &format!(
            "[[rule]]\nfrom = \"s{f}\"\nto = \"s{to}\"\nproto = \"{}\"\n",
            proto_name(*p)
        );
        if *p < 2 {
            let list: Vec<String> = ports.iter().map(|(a, b)| format!("\"{a}-{b}\"")).collect();
            t += &format!("ports = [{}]\n", list.join(","));
        }
        kept.push((*f, *to, *p, ports.clone()));
    }
    (t, kept)
}

/// Linear scans: the segment holding an address, then the first rule naming the pair with a
/// specific protocol match, else an `any` rule.
fn reference(p: &Policy, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> Verdict {
    let seg = |a: IpAddr| {
        p.segments
            .iter()
            .position(|s| s.cidrs.iter().any(|n: &IpNet| n.contains(&a)))
    };
    let Some(s) = seg(src) else {
        return Verdict::Deny(DenyReason::UnknownSource);
    };
    let Some(d) = seg(dst) else {
        return Verdict::Deny(DenyReason::UnknownDestination);
    };
    let specific = p.rules.iter().position(|r| {
        r.from == s
            && r.to == d
            && match r.proto {
                Proto::Tcp => proto == 6 && r.ports.iter().any(|x| x.contains(port)),
                Proto::Udp => proto == 17 && r.ports.iter().any(|x| x.contains(port)),
                Proto::Icmp => (proto == 1 && src.is_ipv4()) || (proto == 58 && src.is_ipv6()),
                Proto::Any => false,
            }
    });
    let any = p
        .rules
        .iter()
        .position(|r| r.from == s && r.to == d && r.proto == Proto::Any);
    match specific.or(any) {
        Some(rule) => Verdict::Allow(warden_policy::Allow {
            tenant: p.segments[s].tenant,
            peer_tenant: p.segments[d].tenant,
            src_segment: s,
            dst_segment: d,
            peer_node: p.segments[d].node,
            rule,
        }),
        None => Verdict::Deny(DenyReason::NoRule {
            src_segment: s,
            dst_segment: d,
        }),
    }
}

fn addr(pick: (u8, u8, u16)) -> IpAddr {
    match pick.0 % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, pick.1)),
        1 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, pick.1)),
        _ => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            pick.2 % 10,
            0,
            0,
            0,
            0,
            u16::from(pick.1),
        )),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn classifier_matches_brute_force(
        s in spec(),
        packets in proptest::collection::vec(
            ((any::<u8>(), any::<u8>(), any::<u16>()), (any::<u8>(), any::<u8>(), any::<u16>()),
             prop_oneof![Just(6u8), Just(17), Just(1), Just(58), Just(47)], 0u16..260),
            64,
        ),
    ) {
        let (text, kept) = render(&s);
        let policy = parse(&text, "prop.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        prop_assert_eq!(policy.rules.len(), kept.len());
        let c = policy.classifier();
        for (a, b, proto, port) in packets {
            let (src, dst) = (addr(a), addr(b));
            prop_assert_eq!(
                c.classify(src, dst, proto, port),
                reference(&policy, src, dst, proto, port),
                "{} -> {} proto {} port {}", src, dst, proto, port
            );
        }
    }
}
