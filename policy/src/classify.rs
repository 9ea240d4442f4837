//! The data-path classifier: (source, destination, protocol, destination port) → allow (with
//! the tenant, the segment pair, the peer node and the rule) or deny (with the reason).
//!
//! Segment CIDRs are disjoint (validation guarantees it), so "which segment holds this
//! address" is a binary search over sorted, disjoint intervals: O(log n), the same answer a
//! longest-prefix-match trie gives when no prefix nests in another. The rules of a segment pair
//! are one hash lookup, then a binary search over that pair's disjoint port ranges.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::model::Policy;
use crate::parse::bounds;
use crate::plan::Proto;

/// IP protocol numbers the classifier distinguishes.
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// What a packet may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow(Allow),
    Deny(DenyReason),
}

/// An allowed packet's context (indices into the policy's tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allow {
    /// The sending tenant.
    pub tenant: usize,
    /// The receiving tenant (different only under a two-sided grant).
    pub peer_tenant: usize,
    pub src_segment: usize,
    pub dst_segment: usize,
    /// The node the destination segment is pinned to, if any: where the tunnel goes.
    pub peer_node: Option<usize>,
    /// The rule that allows it (index into `Policy::rules`).
    pub rule: usize,
}

/// Why a packet is denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The source address is in no segment.
    UnknownSource,
    /// The destination address is in no segment.
    UnknownDestination,
    /// Both are known, but no rule allows this protocol and port between them.
    NoRule {
        src_segment: usize,
        dst_segment: usize,
    },
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::UnknownSource => "unknown-source",
            DenyReason::UnknownDestination => "unknown-destination",
            DenyReason::NoRule { .. } => "no-rule",
        }
    }
}

/// Rules between one ordered segment pair.
#[derive(Clone, Debug, Default)]
struct PairRules {
    /// (lo, hi, rule), ascending and disjoint.
    tcp: Vec<(u16, u16, usize)>,
    udp: Vec<(u16, u16, usize)>,
    icmp: Option<usize>,
    any: Option<usize>,
}

fn port_lookup(ranges: &[(u16, u16, usize)], port: u16) -> Option<usize> {
    let i = ranges.partition_point(|r| r.0 <= port);
    let (lo, hi, rule) = *ranges.get(i.checked_sub(1)?)?;
    (lo <= port && port <= hi).then_some(rule)
}

/// Compiled lookup tables; built once per policy, then read-only (share it behind an `Arc`).
#[derive(Clone, Debug)]
pub struct Classifier {
    /// (first, last, segment), ascending and disjoint.
    v4: Vec<(u32, u32, usize)>,
    v6: Vec<(u128, u128, usize)>,
    segment_tenant: Vec<usize>,
    segment_node: Vec<Option<usize>>,
    pairs: HashMap<(usize, usize), PairRules>,
}

impl Classifier {
    /// Build the tables for `policy` (pure; O(n log n)).
    pub fn new(policy: &Policy) -> Classifier {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, s) in policy.segments.iter().enumerate() {
            for net in &s.cidrs {
                match bounds(*net) {
                    (false, a, b) => v4.push((
                        u32::try_from(a).unwrap_or(u32::MAX),
                        u32::try_from(b).unwrap_or(u32::MAX),
                        i,
                    )),
                    (true, a, b) => v6.push((a, b, i)),
                }
            }
        }
        v4.sort_unstable();
        v6.sort_unstable();
        let mut pairs: HashMap<(usize, usize), PairRules> = HashMap::new();
        for (i, r) in policy.rules.iter().enumerate() {
            let pair = pairs.entry((r.from, r.to)).or_default();
            let ranges = r.ports.iter().map(|p| (p.lo, p.hi, i));
            match r.proto {
                Proto::Tcp => pair.tcp.extend(ranges),
                Proto::Udp => pair.udp.extend(ranges),
                Proto::Icmp => pair.icmp = Some(i),
                Proto::Any => pair.any = Some(i),
            }
        }
        for p in pairs.values_mut() {
            p.tcp.sort_unstable();
            p.udp.sort_unstable();
        }
        Classifier {
            v4,
            v6,
            segment_tenant: policy.segments.iter().map(|s| s.tenant).collect(),
            segment_node: policy.segments.iter().map(|s| s.node).collect(),
            pairs,
        }
    }

    /// The segment holding `addr`, if any.
    pub fn segment_of(&self, addr: IpAddr) -> Option<usize> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                let i = self.v4.partition_point(|r| r.0 <= a);
                let (lo, hi, seg) = *self.v4.get(i.checked_sub(1)?)?;
                (lo <= a && a <= hi).then_some(seg)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                let i = self.v6.partition_point(|r| r.0 <= a);
                let (lo, hi, seg) = *self.v6.get(i.checked_sub(1)?)?;
                (lo <= a && a <= hi).then_some(seg)
            }
        }
    }

    /// The rule that allows `proto`/`dst_port` from segment `s` to segment `d`, if any, for
    /// callers that have looked the segments up already ([`Classifier::segment_of`]).
    /// `ipv6`: the packet's family (ICMP is protocol 1 for IPv4, 58 for IPv6).
    pub fn rule_between(
        &self,
        s: usize,
        d: usize,
        proto: u8,
        dst_port: u16,
        ipv6: bool,
    ) -> Option<usize> {
        self.pairs.get(&(s, d)).and_then(|p| {
            let specific = match proto {
                IPPROTO_TCP => port_lookup(&p.tcp, dst_port),
                IPPROTO_UDP => port_lookup(&p.udp, dst_port),
                IPPROTO_ICMP if !ipv6 => p.icmp,
                IPPROTO_ICMPV6 if ipv6 => p.icmp,
                _ => None,
            };
            specific.or(p.any)
        })
    }

    /// Classify one packet. `proto` is the IP protocol number; `dst_port` is ignored unless
    /// it is TCP or UDP.
    pub fn classify(&self, src: IpAddr, dst: IpAddr, proto: u8, dst_port: u16) -> Verdict {
        let Some(s) = self.segment_of(src) else {
            return Verdict::Deny(DenyReason::UnknownSource);
        };
        let Some(d) = self.segment_of(dst) else {
            return Verdict::Deny(DenyReason::UnknownDestination);
        };
        let rule = self.rule_between(s, d, proto, dst_port, src.is_ipv6());
        match rule {
            Some(rule) => Verdict::Allow(Allow {
                tenant: self.segment_tenant.get(s).copied().unwrap_or(usize::MAX),
                peer_tenant: self.segment_tenant.get(d).copied().unwrap_or(usize::MAX),
                src_segment: s,
                dst_segment: d,
                peer_node: self.segment_node.get(d).copied().flatten(),
                rule,
            }),
            None => Verdict::Deny(DenyReason::NoRule {
                src_segment: s,
                dst_segment: d,
            }),
        }
    }
}

impl Policy {
    /// The data-path classifier for this policy.
    pub fn classifier(&self) -> Classifier {
        Classifier::new(self)
    }
}
