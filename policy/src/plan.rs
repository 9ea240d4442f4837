//! The nftables plan: what the enforcer installs, as plain data. Compiled from a policy by
//! [`crate::compile`]; applied by warden-enforcer as one atomic netlink batch into Warden's own
//! table (`inet warden`), which it replaces as a whole.
//!
//! ```text
//! table inet warden
//!   wire:   on the wire interface only ESP-in-UDP between known appliances, plus the
//!           appliance's own TCP ports (API, control); everything else dropped and counted
//!   flows:  forwarded tenant traffic: (saddr . daddr . l4proto . dport) looked up in
//!           interval + concatenation verdict maps, one counting chain per policy rule;
//!           established and related packets accepted; the rest dropped and counted
//! ```

use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;

/// The name of Warden's table (family `inet`).
pub const TABLE: &str = "warden";

/// Transport protocols a rule can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp,
    /// Every protocol; no ports.
    Any,
}

impl Proto {
    /// The IP protocol number for `ipv6` or IPv4 (`None` for [`Proto::Any`]).
    pub fn number(self, ipv6: bool) -> Option<u8> {
        match self {
            Proto::Tcp => Some(6),
            Proto::Udp => Some(17),
            Proto::Icmp => Some(if ipv6 { 58 } else { 1 }),
            Proto::Any => None,
        }
    }

    /// Whether rules of this protocol carry destination ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Any => "any",
        }
    }
}

/// The whole ruleset of Warden's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftPlan {
    /// Policy version and digest, for the table's comment and for `show`.
    pub version: u64,
    pub digest: String,
    /// Wire protection; `None` when the appliance has no wire interface configured.
    pub wire: Option<WirePlan>,
    /// Allowed forwarded flows, one per policy rule, in rule order.
    pub flows: Vec<FlowRule>,
    /// Rate limits on forwarded tenant traffic, one per policy `[[limit]]` with a rate.
    pub limits: Vec<LimitRule>,
}

/// One limit on forwarded traffic: packets from any of `src` to any of `dst` share these
/// rates (nftables `limit` statements in the limit's own chain, reached through a verdict map
/// keyed on the addresses). Guarantees are the data path's alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitRule {
    /// Stable name: `l<index>` in policy order; the chain is named after it.
    pub name: String,
    /// `tenant acme` or `acme-web -> acme-db`, for comments.
    pub description: String,
    /// A tenant limit: every CIDR of the tenant's segments, and `dst` is every address of
    /// each family; a pair limit: the two segments' CIDRs.
    pub src: Vec<IpNet>,
    pub dst: Vec<IpNet>,
    /// Whether this is a tenant's limit (looked up after any pair's limit).
    pub tenant: bool,
    /// (per second, burst) in packets.
    pub packets: Option<(u64, u32)>,
    /// (per second, burst) in bytes.
    pub bytes: Option<(u64, u32)>,
    /// (per second, burst) in new connections (conntrack state new).
    pub connections: Option<(u64, u32)>,
    /// Over the limit: mark (DSCP Lower Effort) instead of drop.
    pub mark: bool,
}

/// What may cross the wire interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WirePlan {
    /// The interface name (at most 15 bytes, IFNAMSIZ - 1).
    pub interface: String,
    /// Wire addresses of every appliance in the policy (peers and this one).
    pub appliances: Vec<IpAddr>,
    /// UDP port of ESP-in-UDP (RFC 3948 uses 4500).
    pub esp_udp_port: u16,
    /// TCP ports of this appliance's own services (API, control channel), open to anyone on
    /// the wire: these services authenticate their callers themselves.
    pub tcp_ports: Vec<u16>,
}

/// One policy rule: packets from any of `src` to any of `dst` with `proto` and (for TCP and UDP)
/// a destination port in `ports` are accepted and counted under `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRule {
    /// Stable name: `r<index>` in policy order; chains and counters are named after it.
    pub name: String,
    /// The rule as the policy wrote it, for comments and `show` ("acme-web -> acme-db tcp/5432").
    pub description: String,
    pub src: Vec<IpNet>,
    pub dst: Vec<IpNet>,
    pub proto: Proto,
    /// Disjoint, ascending; empty when `proto` has no ports. `0..=65535` for every port.
    pub ports: Vec<RangeInclusive<u16>>,
}
