//! The validated policy: names resolved to indices, CIDRs disjoint across segments, port ranges
//! normalized, every cross-tenant rule granted by both tenants.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::limits::{Limit, LimitScope, OverLimit};
use crate::plan::{FlowRule, LimitRule, NftPlan, Proto, WirePlan};

/// An inclusive port range, `lo <= hi`, both nonzero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }

    pub fn overlaps(self, other: PortRange) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

/// An appliance.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: String,
    /// Its address on the wire (the ESP-in-UDP endpoint).
    pub address: IpAddr,
    /// Attestation reference values for this appliance (docs/attestation.md), as written; the
    /// appliance checks them with the attestation crate when the policy is applied.
    pub reference: Option<toml::Table>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    /// Tenants this one allows its segments to send to (indices into `Policy::tenants`).
    pub send_to: Vec<usize>,
    /// Tenants this one accepts traffic from.
    pub accept_from: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    pub tenant: usize,
    /// Disjoint from every other segment's CIDRs; host bits zero.
    pub cidrs: Vec<IpNet>,
    /// The node the segment lives behind, if pinned.
    pub node: Option<usize>,
}

/// `from` may reach `to` with `proto` on `ports` (ascending, disjoint; empty unless TCP/UDP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub from: usize,
    pub to: usize,
    pub proto: Proto,
    pub ports: Vec<PortRange>,
}

/// A valid policy document.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Chosen by the author; an appliance accepts only increasing versions.
    pub version: u64,
    /// SHA-256 of the exact document bytes.
    pub digest: [u8; 32],
    pub description: String,
    pub nodes: Vec<Node>,
    pub tenants: Vec<Tenant>,
    pub segments: Vec<Segment>,
    pub rules: Vec<Rule>,
    /// The wire's capacity (`[wire] bits_per_second`), which guarantees share.
    pub wire_bits_per_second: Option<u64>,
    /// Traffic limits, at most one per tenant and one per segment pair.
    pub limits: Vec<Limit>,
}

/// What the appliance adds to the plan: its wire interface and its own TCP ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireSettings {
    pub interface: String,
    pub esp_udp_port: u16,
    pub tcp_ports: Vec<u16>,
}

impl Policy {
    /// `sha256:<hex>` of the document.
    pub fn digest_hex(&self) -> String {
        format!("sha256:{}", hex::encode(self.digest))
    }

    /// The rule as written, for people: `acme-web -> acme-db tcp/5432,8000-8080`.
    pub fn describe(&self, rule: &Rule) -> String {
        let name = |i: usize| self.segments.get(i).map_or("?", |s| s.name.as_str());
        let ports = rule
            .ports
            .iter()
            .map(|p| {
                if p.lo == p.hi {
                    p.lo.to_string()
                } else {
                    format!("{}-{}", p.lo, p.hi)
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut s = format!(
            "{} -> {} {}",
            name(rule.from),
            name(rule.to),
            rule.proto.name()
        );
        if !ports.is_empty() {
            s.push('/');
            s.push_str(&ports);
        }
        s
    }

    /// A limit as people read it: `tenant globex: 100000000 bit/s (burst 65536 B), 1000
    /// new connections/s (burst 100); drop`.
    pub fn describe_limit(&self, l: &Limit) -> String {
        let scope = match l.scope {
            LimitScope::Tenant(t) => format!(
                "tenant {}",
                self.tenants.get(t).map_or("?", |t| t.id.as_str())
            ),
            LimitScope::Pair { from, to } => format!(
                "{} -> {}",
                self.segments.get(from).map_or("?", |s| s.name.as_str()),
                self.segments.get(to).map_or("?", |s| s.name.as_str())
            ),
        };
        let mut parts = Vec::new();
        if let Some(r) = l.bits {
            parts.push(format!("{} bit/s (burst {} B)", r.per_second, r.burst));
        }
        if let Some(r) = l.packets {
            parts.push(format!("{} packets/s (burst {})", r.per_second, r.burst));
        }
        if let Some(r) = l.connections {
            parts.push(format!(
                "{} new connections/s (burst {})",
                r.per_second, r.burst
            ));
        }
        if let Some(g) = l.guaranteed_bits {
            parts.push(format!("guaranteed {g} bit/s"));
        }
        format!("{scope}: {}; {}", parts.join(", "), l.action.name())
    }

    /// The nftables plan (pure). `wire`: the appliance's wire settings, if it has a wire.
    pub fn nft_plan(&self, wire: Option<&WireSettings>) -> NftPlan {
        let flows = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| FlowRule {
                name: format!("r{i}"),
                description: self.describe(r),
                src: self
                    .segments
                    .get(r.from)
                    .map(|s| s.cidrs.clone())
                    .unwrap_or_default(),
                dst: self
                    .segments
                    .get(r.to)
                    .map(|s| s.cidrs.clone())
                    .unwrap_or_default(),
                proto: r.proto,
                ports: r.ports.iter().map(|p| p.lo..=p.hi).collect(),
            })
            .collect();
        NftPlan {
            version: self.version,
            digest: self.digest_hex(),
            wire: wire.map(|w| WirePlan {
                interface: w.interface.clone(),
                appliances: self.nodes.iter().map(|n| n.address).collect(),
                esp_udp_port: w.esp_udp_port,
                tcp_ports: w.tcp_ports.clone(),
            }),
            flows,
            limits: self.limit_rules(),
        }
    }

    /// The nftables form of the limits that have a rate (a guarantee alone is the data
    /// path's).
    fn limit_rules(&self) -> Vec<LimitRule> {
        let everything: Vec<IpNet> = ["0.0.0.0/0", "::/0"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let burst = |b: u64| u32::try_from(b).unwrap_or(u32::MAX);
        self.limits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.packets.is_some() || l.bits.is_some() || l.connections.is_some())
            .map(|(i, l)| {
                let (description, src, dst, tenant) = match l.scope {
                    LimitScope::Tenant(t) => (
                        format!(
                            "tenant {}",
                            self.tenants.get(t).map_or("?", |t| t.id.as_str())
                        ),
                        self.segments
                            .iter()
                            .filter(|s| s.tenant == t)
                            .flat_map(|s| s.cidrs.iter().copied())
                            .collect(),
                        everything.clone(),
                        true,
                    ),
                    LimitScope::Pair { from, to } => {
                        let seg = |i: usize| self.segments.get(i);
                        (
                            format!(
                                "{} -> {}",
                                seg(from).map_or("?", |s| s.name.as_str()),
                                seg(to).map_or("?", |s| s.name.as_str())
                            ),
                            seg(from).map(|s| s.cidrs.clone()).unwrap_or_default(),
                            seg(to).map(|s| s.cidrs.clone()).unwrap_or_default(),
                            false,
                        )
                    }
                };
                LimitRule {
                    name: format!("l{i}"),
                    description,
                    src,
                    dst,
                    tenant,
                    packets: l.packets.map(|r| (r.per_second, burst(r.burst))),
                    bytes: l.bits.map(|r| ((r.per_second / 8).max(1), burst(r.burst))),
                    connections: l.connections.map(|r| (r.per_second, burst(r.burst))),
                    mark: l.action == OverLimit::Mark,
                }
            })
            .collect()
    }
}
