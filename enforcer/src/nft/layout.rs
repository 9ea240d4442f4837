//! Plan validation and the table's contents, computed purely (no netlink): which sets, maps,
//! elements and chains `inet warden` gets. [`Layout`] is the proof that a plan was validated;
//! the batch builder only takes a `Layout`.
//!
//! A map element is one box `src range . dst range . proto . port range` (fields as in the
//! map's type). Keys are the concatenation nft uses: each field in network byte order,
//! zero-padded to 4 bytes (the kernel loads each field into its own 32-bit register). Interval
//! maps take the first key (`key`) and the last, inclusive (`key_end`).
//!
//! Off-spec (none of nft's syntax is involved): the element layout is what `nft --debug=netlink`
//! shows for `ip saddr . ip daddr . meta l4proto . th dport vmap @m` on kernel 6.x.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use warden_policy::plan::{FlowRule, LimitRule, NftPlan, Proto};

use super::NftError;

/// Most elements (all maps together) a plan may expand to. The policy compiler has its own,
/// lower limit; this one bounds the work and the batch (about 150 bytes per element).
pub const MAX_ELEMENTS: usize = 1_000_000;
/// Most flow rules (one chain each).
pub const MAX_RULES: usize = 100_000;
/// Most limit rules (one chain each).
pub const MAX_LIMITS: usize = 65_536;
/// Longest chain name the kernel accepts (`NFT_CHAIN_MAXNAMELEN` - 1).
const MAX_NAME: usize = 255;
/// Longest comment nft lists (`NFTNL_UDATA_COMMENT_MAXLEN` - 1, for the NUL).
const MAX_COMMENT: usize = 127;

/// Chain and set names of the fixed part of the table. Flow rules may not use them.
pub(crate) mod names {
    pub const WIRE_IN: &str = "wire_in";
    pub const WIRE_OUT: &str = "wire_out";
    pub const WIRE_IN_CHECKS: &str = "wire_in_checks";
    pub const WIRE_OUT_CHECKS: &str = "wire_out_checks";
    pub const FLOWS: &str = "flows";
    /// Rewrites the DSCP of packets over a `mark` limit.
    pub const MARK_LE: &str = "mark_le";
    /// Hook prerouting: the limit maps' lookups.
    pub const LIMITS: &str = "limits";
    pub const APPLIANCES_V4: &str = "appliances_v4";
    pub const APPLIANCES_V6: &str = "appliances_v6";
    pub const WIRE_TCP_PORTS: &str = "wire_tcp_ports";
    pub const CHAINS: [&str; 7] = [
        WIRE_IN,
        WIRE_OUT,
        WIRE_IN_CHECKS,
        WIRE_OUT_CHECKS,
        FLOWS,
        MARK_LE,
        LIMITS,
    ];
}

/// nft's data type ids, for listing (`type ipv4_addr . ipv4_addr . inet_proto . inet_service`).
const TYPE_IPV4: u32 = 7;
const TYPE_IPV6: u32 = 8;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

/// The six flow maps: per family, with ports (TCP, UDP), with protocol only (ICMP), address
/// pair only (any protocol). The `flows` chain looks them up in this order. Then the four limit
/// maps, address pair to the limit's chain: segment pairs' and tenants' (whose destination is
/// every address), per family; `flows` looks them up first, pairs before tenants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum MapKind {
    PortsV4,
    ProtoV4,
    AnyV4,
    PortsV6,
    ProtoV6,
    AnyV6,
    PairLimitsV4,
    TenantLimitsV4,
    PairLimitsV6,
    TenantLimitsV6,
}

impl MapKind {
    pub(crate) const ALL: [MapKind; 10] = [
        MapKind::PortsV4,
        MapKind::ProtoV4,
        MapKind::AnyV4,
        MapKind::PortsV6,
        MapKind::ProtoV6,
        MapKind::AnyV6,
        MapKind::PairLimitsV4,
        MapKind::TenantLimitsV4,
        MapKind::PairLimitsV6,
        MapKind::TenantLimitsV6,
    ];
    /// The flow maps, in lookup order.
    pub(crate) const FLOWS: [MapKind; 6] = [
        MapKind::PortsV4,
        MapKind::ProtoV4,
        MapKind::AnyV4,
        MapKind::PortsV6,
        MapKind::ProtoV6,
        MapKind::AnyV6,
    ];
    /// The limit maps, in lookup order.
    pub(crate) const LIMITS: [MapKind; 4] = [
        MapKind::PairLimitsV4,
        MapKind::TenantLimitsV4,
        MapKind::PairLimitsV6,
        MapKind::TenantLimitsV6,
    ];

    /// Whether the map's elements jump to limit chains (else to flow rules' chains).
    pub(crate) fn is_limit(self) -> bool {
        self.index() >= 6
    }

    fn of_limit(tenant: bool, ipv6: bool) -> MapKind {
        match (tenant, ipv6) {
            (false, false) => MapKind::PairLimitsV4,
            (true, false) => MapKind::TenantLimitsV4,
            (false, true) => MapKind::PairLimitsV6,
            (true, true) => MapKind::TenantLimitsV6,
        }
    }

    fn of(proto: Proto, ipv6: bool) -> MapKind {
        match (proto, ipv6) {
            (Proto::Tcp | Proto::Udp, false) => MapKind::PortsV4,
            (Proto::Icmp, false) => MapKind::ProtoV4,
            (Proto::Any, false) => MapKind::AnyV4,
            (Proto::Tcp | Proto::Udp, true) => MapKind::PortsV6,
            (Proto::Icmp, true) => MapKind::ProtoV6,
            (Proto::Any, true) => MapKind::AnyV6,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            MapKind::PortsV4 => "flows_ports_v4",
            MapKind::ProtoV4 => "flows_proto_v4",
            MapKind::AnyV4 => "flows_any_v4",
            MapKind::PortsV6 => "flows_ports_v6",
            MapKind::ProtoV6 => "flows_proto_v6",
            MapKind::AnyV6 => "flows_any_v6",
            MapKind::PairLimitsV4 => "limit_pairs_v4",
            MapKind::TenantLimitsV4 => "limit_tenants_v4",
            MapKind::PairLimitsV6 => "limit_pairs_v6",
            MapKind::TenantLimitsV6 => "limit_tenants_v6",
        }
    }

    pub(crate) fn ipv6(self) -> bool {
        matches!(
            self,
            MapKind::PortsV6
                | MapKind::ProtoV6
                | MapKind::AnyV6
                | MapKind::PairLimitsV6
                | MapKind::TenantLimitsV6
        )
    }

    /// Whether the key has the protocol field, and the port field.
    pub(crate) fn has_proto(self) -> bool {
        matches!(
            self,
            MapKind::PortsV4 | MapKind::ProtoV4 | MapKind::PortsV6 | MapKind::ProtoV6
        )
    }

    pub(crate) fn has_port(self) -> bool {
        matches!(self, MapKind::PortsV4 | MapKind::PortsV6)
    }

    /// Length in bytes of each field of the key (before padding).
    pub(crate) fn fields(self) -> &'static [u8] {
        match self {
            MapKind::PortsV4 => &[4, 4, 1, 2],
            MapKind::ProtoV4 => &[4, 4, 1],
            MapKind::AnyV4 | MapKind::PairLimitsV4 | MapKind::TenantLimitsV4 => &[4, 4],
            MapKind::PortsV6 => &[16, 16, 1, 2],
            MapKind::ProtoV6 => &[16, 16, 1],
            MapKind::AnyV6 | MapKind::PairLimitsV6 | MapKind::TenantLimitsV6 => &[16, 16],
        }
    }

    /// nft's id of the concatenated type: each field's type shifted in 6 bits at a time.
    pub(crate) fn key_type(self) -> u32 {
        let addr = if self.ipv6() { TYPE_IPV6 } else { TYPE_IPV4 };
        let mut ty = (addr << 6) | addr;
        if self.has_proto() {
            ty = (ty << 6) | TYPE_INET_PROTO;
        }
        if self.has_port() {
            ty = (ty << 6) | TYPE_INET_SERVICE;
        }
        ty
    }

    fn index(self) -> usize {
        match self {
            MapKind::PortsV4 => 0,
            MapKind::ProtoV4 => 1,
            MapKind::AnyV4 => 2,
            MapKind::PortsV6 => 3,
            MapKind::ProtoV6 => 4,
            MapKind::AnyV6 => 5,
            MapKind::PairLimitsV4 => 6,
            MapKind::TenantLimitsV4 => 7,
            MapKind::PairLimitsV6 => 8,
            MapKind::TenantLimitsV6 => 9,
        }
    }
}

/// One map element: the box from `key` to `key_end` (inclusive), jumping to the chain of
/// `plan.flows[rule]` (in a limit map: of `plan.limits[rule]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Element {
    pub rule: usize,
    pub key: Vec<u8>,
    pub key_end: Vec<u8>,
}

/// The wire part, normalized: appliance addresses split by family, sorted and deduplicated
/// (the sets reject duplicates), TCP ports likewise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WireLayout<'p> {
    pub interface: &'p str,
    pub appliances_v4: Vec<Ipv4Addr>,
    pub appliances_v6: Vec<Ipv6Addr>,
    pub esp_udp_port: u16,
    pub tcp_ports: Vec<u16>,
}

/// A validated plan and the contents of the table it becomes. Made by [`super::validate`].
#[derive(Clone, Debug)]
pub struct Layout<'p> {
    pub(crate) plan: &'p NftPlan,
    /// The policy's label, `policy v<version> <digest>`.
    pub(crate) comment: String,
    pub(crate) wire: Option<WireLayout<'p>>,
    /// Elements per map, indexed like [`MapKind::ALL`], each in rule order.
    maps: [Vec<Element>; 10],
}

impl<'p> Layout<'p> {
    /// Validates `plan` and computes the table's contents.
    pub(crate) fn new(plan: &'p NftPlan) -> Result<Layout<'p>, NftError> {
        let wire = match &plan.wire {
            Some(w) => {
                check_interface(&w.interface)?;
                if w.esp_udp_port == 0 {
                    return Err(NftError::ZeroPort {
                        field: "wire.esp_udp_port".into(),
                    });
                }
                if let Some(i) = w.tcp_ports.iter().position(|p| *p == 0) {
                    return Err(NftError::ZeroPort {
                        field: format!("wire.tcp_ports[{i}]"),
                    });
                }
                let mut v4: Vec<Ipv4Addr> = Vec::new();
                let mut v6: Vec<Ipv6Addr> = Vec::new();
                for a in &w.appliances {
                    match a {
                        IpAddr::V4(a) => v4.push(*a),
                        IpAddr::V6(a) => v6.push(*a),
                    }
                }
                v4.sort_unstable();
                v4.dedup();
                v6.sort_unstable();
                v6.dedup();
                let mut tcp_ports = w.tcp_ports.clone();
                tcp_ports.sort_unstable();
                tcp_ports.dedup();
                Some(WireLayout {
                    interface: &w.interface,
                    appliances_v4: v4,
                    appliances_v6: v6,
                    esp_udp_port: w.esp_udp_port,
                    tcp_ports,
                })
            }
            None => None,
        };

        if plan.flows.len() > MAX_RULES {
            return Err(NftError::TooLarge {
                what: "flow rules",
                count: plan.flows.len(),
                limit: MAX_RULES,
            });
        }
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(plan.flows.len());
        let mut total: usize = 0;
        for (index, rule) in plan.flows.iter().enumerate() {
            check_rule(index, rule)?;
            if let Some(first) = seen.insert(&rule.name, index) {
                return Err(NftError::DuplicateRuleName {
                    name: rule.name.clone(),
                    first,
                    second: index,
                });
            }
            total = total.saturating_add(element_count(rule));
        }
        // Bound the work before doing it.
        if total > MAX_ELEMENTS {
            return Err(NftError::TooLarge {
                what: "map elements",
                count: total,
                limit: MAX_ELEMENTS,
            });
        }

        if plan.limits.len() > MAX_LIMITS {
            return Err(NftError::TooLarge {
                what: "limit rules",
                count: plan.limits.len(),
                limit: MAX_LIMITS,
            });
        }
        for (index, limit) in plan.limits.iter().enumerate() {
            check_limit(index, limit)?;
            if let Some(first) = seen.insert(&limit.name, index) {
                return Err(NftError::LimitRule {
                    index,
                    name: limit.name.clone(),
                    reason: format!("the name is taken (by flows[{first}] or limits[{first}])"),
                });
            }
            total = total.saturating_add(limit_element_count(limit));
        }
        if total > MAX_ELEMENTS {
            return Err(NftError::TooLarge {
                what: "map elements",
                count: total,
                limit: MAX_ELEMENTS,
            });
        }

        let mut maps: [Vec<Element>; 10] = Default::default();
        for (index, limit) in plan.limits.iter().enumerate() {
            for src in &limit.src {
                for dst in limit
                    .dst
                    .iter()
                    .filter(|d| d.addr().is_ipv6() == src.addr().is_ipv6())
                {
                    let kind = MapKind::of_limit(limit.tenant, src.addr().is_ipv6());
                    if let Some(list) = maps.get_mut(kind.index()) {
                        list.push(element(index, src, dst, None, None));
                    }
                }
            }
        }
        for (index, rule) in plan.flows.iter().enumerate() {
            for src in &rule.src {
                for dst in rule
                    .dst
                    .iter()
                    .filter(|d| d.addr().is_ipv6() == src.addr().is_ipv6())
                {
                    let kind = MapKind::of(rule.proto, src.addr().is_ipv6());
                    let proto = rule.proto.number(kind.ipv6());
                    let Some(list) = maps.get_mut(kind.index()) else {
                        continue;
                    };
                    if kind.has_port() {
                        for ports in &rule.ports {
                            list.push(element(index, src, dst, proto, Some(ports)));
                        }
                    } else {
                        list.push(element(index, src, dst, proto, None));
                    }
                }
            }
        }

        Ok(Layout {
            plan,
            comment: printable(&format!("policy v{} {}", plan.version, plan.digest)),
            wire,
            maps,
        })
    }

    /// The plan this layout was made from.
    pub fn plan(&self) -> &'p NftPlan {
        self.plan
    }

    /// Elements of all flow maps together.
    pub fn element_count(&self) -> usize {
        self.maps.iter().map(Vec::len).sum()
    }

    /// The policy's label, `policy v<version> <digest>` (non-printable characters replaced):
    /// the comment of the last rule of chain `flows`, so `nft list table inet warden` shows
    /// which policy is in force.
    pub fn comment(&self) -> &str {
        &self.comment
    }

    pub(crate) fn elements(&self, kind: MapKind) -> &[Element] {
        self.maps.get(kind.index()).map_or(&[], Vec::as_slice)
    }
}

/// Elements `limit` expands to: one per same-family (src, dst) pair.
fn limit_element_count(limit: &LimitRule) -> usize {
    let count = |v6: bool, nets: &[IpNet]| nets.iter().filter(|n| n.addr().is_ipv6() == v6).count();
    count(false, &limit.src).saturating_mul(count(false, &limit.dst))
        + count(true, &limit.src).saturating_mul(count(true, &limit.dst))
}

/// A limit rule the kernel can take: a chain name, both sides, at least one rate, no zero.
fn check_limit(index: usize, limit: &LimitRule) -> Result<(), NftError> {
    let err = |reason: &str| NftError::LimitRule {
        index,
        name: limit.name.clone(),
        reason: reason.to_owned(),
    };
    let mut bytes = limit.name.bytes();
    if !bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        || limit.name.len() > MAX_NAME
        || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(err(
            "the name must be 1-255 of ASCII letters, digits, '_', '-' and '.', starting with a letter",
        ));
    }
    if names::CHAINS.contains(&limit.name.as_str()) {
        return Err(err("the name is one of Warden's own chains"));
    }
    if limit.src.is_empty() || limit.dst.is_empty() {
        return Err(err("src and dst must not be empty"));
    }
    let rates = [limit.packets, limit.bytes, limit.connections];
    if rates.iter().all(Option::is_none) {
        return Err(err("no rate"));
    }
    if rates
        .iter()
        .flatten()
        .any(|(rate, burst)| *rate == 0 || *burst == 0)
    {
        return Err(err("a rate or burst of 0"));
    }
    Ok(())
}

/// Elements `rule` expands to: one per same-family (src, dst) pair and port range.
fn element_count(rule: &FlowRule) -> usize {
    let count = |v6: bool, nets: &[IpNet]| nets.iter().filter(|n| n.addr().is_ipv6() == v6).count();
    let pairs = count(false, &rule.src).saturating_mul(count(false, &rule.dst))
        + count(true, &rule.src).saturating_mul(count(true, &rule.dst));
    pairs.saturating_mul(if rule.proto.has_ports() {
        rule.ports.len()
    } else {
        1
    })
}

fn element(
    rule: usize,
    src: &IpNet,
    dst: &IpNet,
    proto: Option<u8>,
    ports: Option<&std::ops::RangeInclusive<u16>>,
) -> Element {
    let mut key = Vec::with_capacity(40);
    let mut key_end = Vec::with_capacity(40);
    push_addr(&mut key, src.network());
    push_addr(&mut key_end, src.broadcast());
    push_addr(&mut key, dst.network());
    push_addr(&mut key_end, dst.broadcast());
    if let Some(p) = proto {
        push_field(&mut key, &[p]);
        push_field(&mut key_end, &[p]);
    }
    if let Some(ports) = ports {
        push_field(&mut key, &ports.start().to_be_bytes());
        push_field(&mut key_end, &ports.end().to_be_bytes());
    }
    Element { rule, key, key_end }
}

fn push_addr(buf: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => push_field(buf, &a.octets()),
        IpAddr::V6(a) => push_field(buf, &a.octets()),
    }
}

/// Appends one key field, zero-padded to a multiple of 4 bytes (one 32-bit register each).
fn push_field(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(bytes);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

/// Linux's rules for interface names (`dev_valid_name`): 1-15 bytes, not `.` or `..`, no `/`,
/// `:`, whitespace or NUL.
fn check_interface(name: &str) -> Result<(), NftError> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes (IFNAMSIZ - 1)")
    } else if name == "." || name == ".." {
        Some("is not a valid interface name")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        Some("contains '/', ':', whitespace or NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NftError::InterfaceName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_rule(index: usize, rule: &FlowRule) -> Result<(), NftError> {
    let name_err = |reason| NftError::RuleName {
        index,
        name: rule.name.clone(),
        reason,
    };
    let mut bytes = rule.name.bytes();
    match bytes.next() {
        None => return Err(name_err("is empty")),
        Some(first) if !first.is_ascii_alphabetic() => {
            return Err(name_err("must start with an ASCII letter"))
        }
        Some(_) => {}
    }
    if rule.name.len() > MAX_NAME {
        return Err(name_err("is longer than 255 bytes"));
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
        return Err(name_err(
            "may only contain ASCII letters, digits, '_', '-' and '.'",
        ));
    }
    if names::CHAINS.contains(&rule.name.as_str()) {
        return Err(name_err("is the name of one of Warden's own chains"));
    }

    let who = || rule.name.clone();
    if rule.src.is_empty() {
        return Err(NftError::EmptySide {
            index,
            rule: who(),
            side: "src",
        });
    }
    if rule.dst.is_empty() {
        return Err(NftError::EmptySide {
            index,
            rule: who(),
            side: "dst",
        });
    }
    let families = |nets: &[IpNet]| {
        let v4 = nets.iter().any(|n| !n.addr().is_ipv6());
        let v6 = nets.iter().any(|n| n.addr().is_ipv6());
        (v4, v6)
    };
    let (s4, s6) = families(&rule.src);
    let (d4, d6) = families(&rule.dst);
    if !(s4 && d4 || s6 && d6) {
        let label = |v4: bool| if v4 { "IPv4 only" } else { "IPv6 only" };
        return Err(NftError::FamilyMismatch {
            index,
            rule: who(),
            src: label(s4),
            dst: label(d4),
        });
    }

    if rule.proto.has_ports() {
        if rule.ports.is_empty() {
            return Err(NftError::MissingPorts {
                index,
                rule: who(),
                proto: rule.proto.name(),
            });
        }
        if let Some((port_index, r)) = rule.ports.iter().enumerate().find(|(_, r)| r.is_empty()) {
            return Err(NftError::EmptyPortRange {
                index,
                rule: who(),
                port_index,
                start: *r.start(),
                end: *r.end(),
            });
        }
    } else if !rule.ports.is_empty() {
        return Err(NftError::UnexpectedPorts {
            index,
            rule: who(),
            proto: rule.proto.name(),
            port_index: 0,
        });
    }
    Ok(())
}

/// `text` as a comment nft can list: printable ASCII, `"` and `\` replaced by `?`, at most
/// 127 bytes.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_COMMENT)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;
    use warden_policy::plan::WirePlan;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn rule(
        name: &str,
        src: &[&str],
        dst: &[&str],
        proto: Proto,
        ports: &[(u16, u16)],
    ) -> FlowRule {
        FlowRule {
            name: name.into(),
            description: format!("{name} test"),
            src: src.iter().map(|s| net(s)).collect(),
            dst: dst.iter().map(|s| net(s)).collect(),
            proto,
            ports: ports.iter().map(|(a, b)| *a..=*b).collect(),
        }
    }

    fn plan(flows: Vec<FlowRule>) -> NftPlan {
        NftPlan {
            version: 7,
            digest: "ab12".into(),
            wire: Some(WirePlan {
                interface: "wire0".into(),
                appliances: vec!["192.0.2.1".parse().unwrap(), "192.0.2.1".parse().unwrap()],
                esp_udp_port: 4500,
                tcp_ports: vec![8443, 443, 443],
            }),
            flows,
            limits: Vec::new(),
        }
    }

    fn web() -> FlowRule {
        rule(
            "r0",
            &["198.51.100.0/24"],
            &["203.0.113.0/24"],
            Proto::Tcp,
            &[(80, 90)],
        )
    }

    #[test]
    fn v4_port_element_matches_nft_encoding() {
        // `198.51.100.0/24 . 203.0.113.0/24 . tcp . 80-90` as nft --debug=mnl sends it.
        let p = plan(vec![web()]);
        let l = Layout::new(&p).unwrap();
        let e = &l.elements(MapKind::PortsV4)[0];
        assert_eq!(
            e.key,
            [198, 51, 100, 0, 203, 0, 113, 0, 6, 0, 0, 0, 0, 80, 0, 0]
        );
        assert_eq!(
            e.key_end,
            [198, 51, 100, 255, 203, 0, 113, 255, 6, 0, 0, 0, 0, 90, 0, 0]
        );
        assert_eq!(MapKind::PortsV4.key_type(), 0x001c_730d);
        assert_eq!(l.comment(), "policy v7 ab12");
    }

    #[test]
    fn dual_stack_rule_expands_per_family_only() {
        let r = rule(
            "r0",
            &["198.51.100.0/24", "2001:db8:1::/48"],
            &["203.0.113.0/24", "2001:db8:2::/48", "2001:db8:3::/48"],
            Proto::Udp,
            &[(53, 53), (123, 123)],
        );
        let p = plan(vec![r]);
        let l = Layout::new(&p).unwrap();
        assert_eq!(l.elements(MapKind::PortsV4).len(), 2);
        assert_eq!(l.elements(MapKind::PortsV6).len(), 4);
        assert_eq!(l.element_count(), 6);
        let v6 = &l.elements(MapKind::PortsV6)[0];
        assert_eq!(v6.key.len(), 40);
        assert_eq!(v6.key[32], 17);
        assert_eq!(&v6.key[36..38], &53u16.to_be_bytes());
    }

    #[test]
    fn icmp_uses_protocol_58_for_ipv6_and_any_has_no_protocol() {
        let p = plan(vec![
            rule(
                "r0",
                &["2001:db8:1::/48"],
                &["2001:db8:2::/48"],
                Proto::Icmp,
                &[],
            ),
            rule(
                "r1",
                &["198.51.100.7/32"],
                &["203.0.113.0/25"],
                Proto::Any,
                &[],
            ),
        ]);
        let l = Layout::new(&p).unwrap();
        assert_eq!(l.elements(MapKind::ProtoV6)[0].key[32], 58);
        let any = &l.elements(MapKind::AnyV4)[0];
        assert_eq!(any.key, [198, 51, 100, 7, 203, 0, 113, 0]);
        assert_eq!(any.key_end, [198, 51, 100, 7, 203, 0, 113, 127]);
    }

    #[test]
    fn wire_addresses_and_ports_are_deduplicated() {
        let p = plan(vec![]);
        let l = Layout::new(&p).unwrap();
        let w = l.wire.as_ref().unwrap();
        assert_eq!(w.appliances_v4.len(), 1);
        assert_eq!(w.tcp_ports, [443, 8443]);
    }

    fn err(p: &NftPlan) -> NftError {
        Layout::new(p).unwrap_err()
    }

    #[test]
    fn rejects_bad_interface_names() {
        for (name, needle) in [
            ("", "is empty"),
            ("wire-interface-16", "longer than 15"),
            ("wire/0", "contains"),
            ("wire 0", "contains"),
            ("..", "not a valid"),
        ] {
            let mut p = plan(vec![]);
            p.wire.as_mut().unwrap().interface = name.into();
            let e = err(&p);
            assert!(matches!(e, NftError::InterfaceName { .. }), "{name}: {e}");
            assert!(e.to_string().contains(needle), "{name}: {e}");
        }
        let mut p = plan(vec![]);
        p.wire.as_mut().unwrap().interface = "a23456789012345".into();
        Layout::new(&p).unwrap();
    }

    #[test]
    fn rejects_zero_wire_ports() {
        let mut p = plan(vec![]);
        p.wire.as_mut().unwrap().esp_udp_port = 0;
        assert!(err(&p).to_string().contains("wire.esp_udp_port is 0"));
        let mut p = plan(vec![]);
        p.wire.as_mut().unwrap().tcp_ports = vec![443, 0];
        assert!(err(&p).to_string().contains("wire.tcp_ports[1] is 0"));
    }

    #[test]
    fn rejects_empty_sides() {
        let mut r = web();
        r.src.clear();
        let e = err(&plan(vec![web2(), r]));
        assert!(
            matches!(
                e,
                NftError::EmptySide {
                    index: 1,
                    side: "src",
                    ..
                }
            ),
            "{e}"
        );
        let mut r = web();
        r.dst.clear();
        assert!(matches!(
            err(&plan(vec![r])),
            NftError::EmptySide { side: "dst", .. }
        ));
    }

    fn web2() -> FlowRule {
        let mut r = web();
        r.name = "r9".into();
        r
    }

    #[test]
    fn rejects_rules_without_a_same_family_pair() {
        let r = rule(
            "r0",
            &["198.51.100.0/24"],
            &["2001:db8::/32"],
            Proto::Any,
            &[],
        );
        let e = err(&plan(vec![r]));
        assert!(matches!(e, NftError::FamilyMismatch { .. }), "{e}");
        assert!(e
            .to_string()
            .contains("src is IPv4 only and dst is IPv6 only"));
    }

    #[test]
    fn rejects_port_mistakes() {
        let r = rule(
            "r0",
            &["198.51.100.0/24"],
            &["203.0.113.0/24"],
            Proto::Tcp,
            &[],
        );
        assert!(matches!(err(&plan(vec![r])), NftError::MissingPorts { .. }));
        let r = rule(
            "r0",
            &["198.51.100.0/24"],
            &["203.0.113.0/24"],
            Proto::Icmp,
            &[(1, 2)],
        );
        assert!(matches!(
            err(&plan(vec![r])),
            NftError::UnexpectedPorts { .. }
        ));
        let r = rule(
            "r0",
            &["198.51.100.0/24"],
            &["203.0.113.0/24"],
            Proto::Udp,
            &[(53, 53), (90, 80)],
        );
        let e = err(&plan(vec![r]));
        assert!(
            matches!(
                e,
                NftError::EmptyPortRange {
                    port_index: 1,
                    start: 90,
                    end: 80,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_and_duplicate_rule_names() {
        for (name, needle) in [
            ("", "is empty"),
            ("1r", "start with"),
            ("r 1", "may only contain"),
            ("flows", "Warden's own chains"),
            ("wire_in_checks", "Warden's own chains"),
        ] {
            let mut r = web();
            r.name = name.into();
            let e = err(&plan(vec![r]));
            assert!(e.to_string().contains(needle), "{name}: {e}");
        }
        let mut long = web();
        long.name = format!("r{}", "x".repeat(255));
        assert!(err(&plan(vec![long]))
            .to_string()
            .contains("longer than 255"));
        let e = err(&plan(vec![web(), web2(), web()]));
        assert!(
            matches!(
                e,
                NftError::DuplicateRuleName {
                    first: 0,
                    second: 2,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn rejects_plans_over_the_element_limit_before_expanding_them() {
        // 1001 x 1000 pairs: over the limit, refused from the counts alone.
        let src: Vec<IpNet> = (0..1001u32)
            .map(|i| {
                IpNet::from(IpAddr::V6(Ipv6Addr::from(
                    0x2001_0db8_u128 << 96 | u128::from(i),
                )))
            })
            .collect();
        let dst: Vec<IpNet> = src.iter().take(1000).copied().collect();
        let mut r = rule("r0", &[], &[], Proto::Any, &[]);
        r.src = src;
        r.dst = dst;
        let e = err(&plan(vec![r]));
        assert!(
            matches!(
                e,
                NftError::TooLarge {
                    count: 1_001_000,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn comments_are_printable() {
        assert_eq!(printable("a\"b\\c\nd é"), "a?b?c?d ?");
        assert_eq!(printable(&"x".repeat(300)).len(), 127);
    }
}
