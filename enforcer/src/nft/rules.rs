//! The rules of Warden's table, as nftnl expressions: the wire checks, the `flows` chain with
//! its verdict-map lookups, and the per-rule counting chains.

use std::ffi::CString;

use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Counter, Icmpv6HeaderField, Lookup, Meta, Payload, States,
    TransportHeaderField, Verdict,
};
use nftnl::set::Set;
use nftnl::{Chain, ChainType, Hook, Policy, ProtoFamily, Rule, Table};

use super::batch::{c, RawKey};
use super::ffi::RegExpr;
use super::layout::{names, WireLayout};
use warden_policy::plan::LimitRule;

/// `NFT_REG32_00`: the first 32-bit register; a concatenated key starts here.
const REG32_00: u32 = libc::NFT_REG32_00 as u32;
const REG_1: u32 = libc::NFT_REG_1 as u32;

/// A base chain: `type filter hook <hook> priority 0; policy accept;`.
pub(crate) fn base_chain<'a>(table: &'a Table, name: &str, hook: Hook) -> Chain<'a> {
    let mut chain = Chain::new(c(name), table);
    chain.set_hook(hook, 0);
    chain.set_type(ChainType::Filter);
    chain.set_policy(Policy::Accept);
    chain
}

/// A set handle for [`Lookup`], which reads only the set's name and id.
fn set_ref<'a>(table: &'a Table, name: &str, id: u32) -> Set<'a, RawKey> {
    Set::new_named(&c(name), id, table, ProtoFamily::Inet)
}

/// `ct state established,related`
fn match_established(r: &mut Rule<'_>) {
    let mask = (States::ESTABLISHED | States::RELATED).bits();
    r.add_expr(&Conntrack::State);
    r.add_expr(&Bitwise::new(mask, 0u32));
    r.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
}

/// `meta nfproto ipv4|ipv6`, the dependency of every network-header match in an inet table.
fn match_family(r: &mut Rule<'_>, ipv6: bool) {
    let family = if ipv6 {
        libc::NFPROTO_IPV6
    } else {
        libc::NFPROTO_IPV4
    };
    r.add_expr(&Meta::NfProto);
    r.add_expr(&Cmp::new(CmpOp::Eq, family as u8));
}

fn match_l4proto(r: &mut Rule<'_>, proto: u8) {
    r.add_expr(&Meta::L4Proto);
    r.add_expr(&Cmp::new(CmpOp::Eq, proto));
}

/// `iifname`/`oifname` equal to `interface` (IFNAMSIZ bytes, NUL-padded, as nft compares).
fn match_interface(r: &mut Rule<'_>, outgoing: bool, interface: &str) {
    let mut name = [0u8; 16];
    for (dst, src) in name.iter_mut().zip(interface.bytes().take(15)) {
        *dst = src;
    }
    r.add_expr(if outgoing {
        &Meta::OifName
    } else {
        &Meta::IifName
    });
    r.add_expr(&Cmp::new(CmpOp::Eq, &name[..]));
}

/// A transport-header port (offset 0: source, 2: destination) into `dreg`.
fn load_port(r: &mut Rule<'_>, offset: u32, dreg: u32) {
    r.add_expr(&RegExpr::Payload {
        transport: true,
        offset,
        len: 2,
        dreg,
    });
}

/// The network-header source (`daddr == false`) or destination address into `dreg`.
fn load_addr(r: &mut Rule<'_>, ipv6: bool, daddr: bool, dreg: u32) {
    let (offset, len) = match (ipv6, daddr) {
        (false, false) => (12, 4),
        (false, true) => (16, 4),
        (true, false) => (8, 16),
        (true, true) => (24, 16),
    };
    r.add_expr(&RegExpr::Payload {
        transport: false,
        offset,
        len,
        dreg,
    });
}

/// Comments are informational: one that does not fit is left out.
fn comment(r: &mut Rule<'_>, text: &str) {
    let _ = r.set_comment(c(&super::layout::printable(text)));
}

/// The rule of a flow rule's chain: `counter accept comment "<description>"`.
pub(crate) fn counting_rule<'a>(chain: &'a Chain<'a>, description: &str) -> Rule<'a> {
    let mut r = Rule::new(chain);
    comment(&mut r, description);
    r.add_expr(&Counter);
    r.add_expr(&Verdict::Accept);
    r
}

/// `ct state new`
fn match_new(r: &mut Rule<'_>) {
    r.add_expr(&Conntrack::State);
    r.add_expr(&Bitwise::new(States::NEW.bits(), 0u32));
    r.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
}

/// The rules of a limit's chain, one per rate: `[ct state new] limit rate over R/second burst
/// B packets|bytes counter drop` (or `jump mark_le` to mark instead). A chain's rules are
/// reached from the limit maps and return at the end.
pub(crate) fn limit_rules<'a>(chain: &'a Chain<'a>, limit: &LimitRule) -> Vec<Rule<'a>> {
    let mut rules = Vec::new();
    let rates = [
        (limit.connections, true, false, "new connections"),
        (limit.packets, false, false, "packets"),
        (limit.bytes, false, true, "bytes"),
    ];
    for (rate, new_only, bytes, what) in rates {
        let Some((rate, burst)) = rate else { continue };
        let mut r = Rule::new(chain);
        comment(
            &mut r,
            &format!("{}: {what}/s over {rate}", limit.description),
        );
        if new_only {
            match_new(&mut r);
        }
        r.add_expr(&RegExpr::LimitOver { rate, burst, bytes });
        r.add_expr(&Counter);
        if limit.mark {
            r.add_expr(&Verdict::Jump {
                chain: c(names::MARK_LE),
            });
        } else {
            r.add_expr(&Verdict::Drop);
        }
        rules.push(r);
    }
    rules
}

/// The rules of `mark_le`: set the DSCP to Lower Effort (RFC 8622, DSCP 1), keeping ECN; for
/// IPv4 the header checksum is updated with it. Returns to the limit chain.
pub(crate) fn mark_le_rules<'a>(chain: &'a Chain<'a>) -> Vec<Rule<'a>> {
    let mut rules = Vec::new();
    // The first 16 bits of the header: IPv4 version/IHL and TOS (DSCP = TOS >> 2); IPv6
    // version, traffic class (DSCP = its top 6 bits) and 4 bits of flow label.
    for (ipv6, mask, xor) in [
        (
            false,
            [0xffu8, 0x03],
            [0x00u8, crate::tunnel::limits::DSCP_LE << 2],
        ),
        (
            true,
            [0xf0u8, 0x3f],
            [0x00u8, crate::tunnel::limits::DSCP_LE << 6],
        ),
    ] {
        let mut r = Rule::new(chain);
        match_family(&mut r, ipv6);
        r.add_expr(&RegExpr::Payload {
            transport: false,
            offset: 0,
            len: 2,
            dreg: REG_1,
        });
        r.add_expr(&Bitwise::new(&mask[..], &xor[..]));
        r.add_expr(&RegExpr::PayloadWrite {
            offset: 0,
            len: 2,
            sreg: REG_1,
            csum_offset: (!ipv6).then_some(10),
        });
        rules.push(r);
    }
    rules
}

/// Ids of the wire sets, for the lookups that use them.
pub(crate) struct WireSetIds {
    pub v4: u32,
    pub v6: u32,
    pub ports: u32,
}

/// The rules of `wire_in_checks` (`outgoing == false`) or `wire_out_checks`.
pub(crate) fn wire_checks<'a>(
    table: &'a Table,
    chain: &'a Chain<'a>,
    outgoing: bool,
    wire: &WireLayout<'_>,
    ids: &WireSetIds,
) -> Vec<Rule<'a>> {
    let mut rules = Vec::new();

    let mut r = Rule::new(chain);
    match_established(&mut r);
    r.add_expr(&Verdict::Accept);
    rules.push(r);

    // ESP-in-UDP (RFC 3948) with appliances: `ip saddr @appliances_v4 udp dport 4500` in,
    // `ip daddr @appliances_v4 udp dport 4500` out.
    for ipv6 in [false, true] {
        let (set, id) = if ipv6 {
            (names::APPLIANCES_V6, ids.v6)
        } else {
            (names::APPLIANCES_V4, ids.v4)
        };
        let mut r = Rule::new(chain);
        comment(&mut r, &format!("wire: ESP-in-UDP with {set}"));
        match_family(&mut r, ipv6);
        load_addr(&mut r, ipv6, outgoing, REG_1);
        r.add_expr(&Lookup::new(&set_ref(table, set, id)));
        match_l4proto(&mut r, libc::IPPROTO_UDP as u8);
        load_port(&mut r, 2, REG_1);
        r.add_expr(&Cmp::new(CmpOp::Eq, &wire.esp_udp_port.to_be_bytes()[..]));
        r.add_expr(&Counter);
        r.add_expr(&Verdict::Accept);
        rules.push(r);
    }

    // The appliance's own TCP services: `tcp dport @wire_tcp_ports` in, `tcp sport` out.
    if !wire.tcp_ports.is_empty() {
        let mut r = Rule::new(chain);
        comment(&mut r, "wire: the appliance's TCP services");
        match_l4proto(&mut r, libc::IPPROTO_TCP as u8);
        load_port(&mut r, if outgoing { 0 } else { 2 }, REG_1);
        r.add_expr(&Lookup::new(&set_ref(
            table,
            names::WIRE_TCP_PORTS,
            ids.ports,
        )));
        r.add_expr(&Counter);
        r.add_expr(&Verdict::Accept);
        rules.push(r);
    }

    // Connections this appliance opens to the other appliances' services (the peers' control
    // channel): `ip daddr @appliances_v4 tcp dport @wire_tcp_ports` out. Their replies pass as
    // established.
    if outgoing && !wire.tcp_ports.is_empty() {
        for ipv6 in [false, true] {
            let (set, id) = if ipv6 {
                (names::APPLIANCES_V6, ids.v6)
            } else {
                (names::APPLIANCES_V4, ids.v4)
            };
            let mut r = Rule::new(chain);
            comment(&mut r, &format!("wire: TCP services of {set}"));
            match_family(&mut r, ipv6);
            load_addr(&mut r, ipv6, true, REG_1);
            r.add_expr(&Lookup::new(&set_ref(table, set, id)));
            match_l4proto(&mut r, libc::IPPROTO_TCP as u8);
            load_port(&mut r, 2, REG_1);
            r.add_expr(&Lookup::new(&set_ref(
                table,
                names::WIRE_TCP_PORTS,
                ids.ports,
            )));
            r.add_expr(&Counter);
            r.add_expr(&Verdict::Accept);
            rules.push(r);
        }
    }

    // IPv6 neighbour discovery (solicitation 135, advertisement 136): without it the wire has
    // no IPv6 at all. Not counted.
    let mut r = Rule::new(chain);
    match_family(&mut r, true);
    match_l4proto(&mut r, libc::IPPROTO_ICMPV6 as u8);
    r.add_expr(&Payload::Transport(TransportHeaderField::Icmpv6(
        Icmpv6HeaderField::Type,
    )));
    r.add_expr(&Cmp::new(CmpOp::Gte, 135u8));
    r.add_expr(&Cmp::new(CmpOp::Lte, 136u8));
    r.add_expr(&Verdict::Accept);
    rules.push(r);

    let mut r = Rule::new(chain);
    comment(&mut r, "wire: everything else");
    r.add_expr(&Counter);
    r.add_expr(&Verdict::Drop);
    rules.push(r);
    rules
}

/// `iifname <wire> jump wire_in_checks` (or `oifname ... wire_out_checks`).
pub(crate) fn jump_to_wire_checks<'a>(
    chain: &'a Chain<'a>,
    outgoing: bool,
    interface: &str,
) -> Rule<'a> {
    let target = if outgoing {
        names::WIRE_OUT_CHECKS
    } else {
        names::WIRE_IN_CHECKS
    };
    let mut r = Rule::new(chain);
    match_interface(&mut r, outgoing, interface);
    r.add_expr(&Verdict::Jump { chain: c(target) });
    r
}

/// One verdict-map lookup of the `flows` chain.
pub(crate) struct MapLookup {
    pub name: String,
    pub set_id: u32,
    pub ipv6: bool,
    pub has_proto: bool,
    pub has_port: bool,
}

/// Conntrack's priority is -200 and routing comes after prerouting: the `limits` chain runs
/// between them, so `ct state new` works and an excess is dropped before it is routed.
pub(crate) const LIMITS_PRIORITY: i32 = -180;

/// The `limits` chain: `type filter hook prerouting priority -180; policy accept;`.
pub(crate) fn limits_chain(table: &Table) -> Chain<'_> {
    let mut chain = Chain::new(c(names::LIMITS), table);
    chain.set_hook(Hook::PreRouting, LIMITS_PRIORITY);
    chain.set_type(ChainType::Filter);
    chain.set_policy(Policy::Accept);
    chain
}

/// The rules of the `limits` chain: one verdict-map lookup per limit map in use (pairs, then
/// tenants). Their elements jump to the limit chains, which return.
pub(crate) fn limits<'a>(chain: &'a Chain<'a>, limit_maps: &[MapLookup]) -> Vec<Rule<'a>> {
    limit_maps.iter().map(|m| map_lookup(chain, m)).collect()
}

/// The rules of the `flows` chain. `policy` goes into the comment of the final drop.
pub(crate) fn flows<'a>(
    chain: &'a Chain<'a>,
    wire: Option<&WireLayout<'_>>,
    maps: &[MapLookup],
    policy: &str,
) -> Vec<Rule<'a>> {
    let mut rules = Vec::new();
    // Forwarded packets entering or leaving the wire get the wire's checks; those end in
    // accept or drop, so everything after this concerns tenant traffic only.
    if let Some(wire) = wire {
        rules.push(jump_to_wire_checks(chain, false, wire.interface));
        rules.push(jump_to_wire_checks(chain, true, wire.interface));
    }

    let mut r = Rule::new(chain);
    match_established(&mut r);
    r.add_expr(&Verdict::Accept);
    rules.push(r);
    rules.extend(maps.iter().map(|m| map_lookup(chain, m)));

    let mut r = Rule::new(chain);
    comment(&mut r, &format!("{policy}: no rule allows this"));
    r.add_expr(&Counter);
    r.add_expr(&Verdict::Drop);
    rules.push(r);
    rules
}

/// `ip saddr . ip daddr . meta l4proto . th dport vmap @flows_ports_v4_a` and the others:
/// each field into its own 32-bit register(s), starting at NFT_REG32_00.
fn map_lookup<'a>(chain: &'a Chain<'a>, map: &MapLookup) -> Rule<'a> {
    let addr_regs = if map.ipv6 { 4 } else { 1 };
    let mut r = Rule::new(chain);
    match_family(&mut r, map.ipv6);
    load_addr(&mut r, map.ipv6, false, REG32_00);
    load_addr(&mut r, map.ipv6, true, REG32_00 + addr_regs);
    if map.has_proto {
        r.add_expr(&RegExpr::Meta {
            key: libc::NFT_META_L4PROTO as u32,
            dreg: REG32_00 + 2 * addr_regs,
        });
    }
    if map.has_port {
        load_port(&mut r, 2, REG32_00 + 2 * addr_regs + 1);
    }
    r.add_expr(&RegExpr::VerdictMap {
        set: CString::new(map.name.as_str()).unwrap_or_default(),
        set_id: map.set_id,
        sreg: REG32_00,
    });
    r
}
