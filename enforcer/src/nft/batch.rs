//! The netlink batches that put a [`Layout`] in force.
//!
//! ```text
//!            stage (batch 1)                          switch (batch 2)
//!   maps flows_*_<new> + elements,        flush every chain; delete every set but flows_*_<new>;
//!   chains r<i> (empty if new)     ──►    delete chains the plan does not need; create wire
//!   in force: unchanged                   sets, chains, all rules (lookups -> flows_*_<new>)
//!        │ fails: nothing changed            │ fails: nothing changed ──► unstage (batch 3)
//! ```
//!
//! Why two batches: a map of type interval + concatenation (the kernel's pipapo backend)
//! publishes the elements added in a transaction only after the commit has switched to the
//! new generation (`nft_set_commit_update` runs after the generation flip). A table deleted and
//! recreated in one batch therefore has, for a moment, new rules looking up maps that are still
//! empty, and new flows are dropped (measured with `nft -f` on this kernel, 6.18: 6 and 7 lost
//! connections in two runs of 200 such swaps under a connection flood; none with staging). The
//! stage batch fills maps nothing refers to yet; the switch batch, which contains no element
//! of a concatenated map, swaps the rules to them: rules change exactly at the generation
//! flip. The new maps alternate between the suffixes `_a` and `_b`.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::net::{Ipv4Addr, Ipv6Addr};

use nftnl::set::{Set, SetKey};
use nftnl::{Chain, Hook, MsgType, NlMsg, ProtoFamily, Rule, Table};

use super::ffi::{self, TableMsg};
use super::layout::{names, Element, Layout, MapKind, WireLayout};
use super::rules::{self, MapLookup, WireSetIds};
use warden_policy::plan::TABLE;

/// nftnl_udata type of a table comment (`NFTNL_UDATA_TABLE_COMMENT`).
const UDATA_TABLE_COMMENT: u8 = 0;
/// The table's comment. The table outlives policies (the kernel cannot change a table's
/// comment), so the policy version is in the comment of the last rule of chain `flows`.
const TABLE_COMMENT: &str = "Warden: microsegmentation and wire protection (managed; do not edit)";

/// A batch ready to send, and what each of its messages is about.
pub(crate) struct Prepared {
    /// The whole batch, BEGIN to END, as one buffer (sent with one `sendto`).
    pub bytes: Vec<u8>,
    /// One description per message between BEGIN and END, in order.
    pub objects: Vec<String>,
}

/// Which of the two map generations a batch stages or refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Generation {
    A,
    B,
}

impl Generation {
    pub(crate) fn other(self) -> Generation {
        match self {
            Generation::A => Generation::B,
            Generation::B => Generation::A,
        }
    }

    /// The name of map `kind` in this generation: `flows_ports_v4_a`.
    pub(crate) fn map_name(self, kind: MapKind) -> String {
        let suffix = match self {
            Generation::A => "a",
            Generation::B => "b",
        };
        format!("{}_{suffix}", kind.name())
    }

    /// The generation of a map name, if it is one of ours.
    pub(crate) fn of_map(name: &str) -> Option<Generation> {
        MapKind::ALL.iter().find_map(|kind| {
            [Generation::A, Generation::B]
                .into_iter()
                .find(|g| g.map_name(*kind) == name)
        })
    }
}

/// What Warden's table holds now (names only), read before staging.
#[derive(Clone, Debug, Default)]
pub(crate) struct Existing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// A map element's key type in nftnl's eyes; the real type and length are set by
/// `ffi::make_concat_verdict_map`. Also the container type of element messages.
pub(crate) struct RawKey;

impl SetKey for RawKey {
    const TYPE: u32 = 0;
    const LEN: u32 = 0;

    fn data(&self) -> Box<[u8]> {
        Box::new([])
    }
}

/// A TCP port as a set key (`inet_service`, network byte order).
struct Port(u16);

impl SetKey for Port {
    const TYPE: u32 = 13;
    const LEN: u32 = 2;

    fn data(&self) -> Box<[u8]> {
        Box::new(self.0.to_be_bytes())
    }
}

struct Builder {
    batch: nftnl::Batch,
    objects: Vec<String>,
    next_set_id: u32,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            batch: nftnl::Batch::new(),
            objects: Vec::new(),
            next_set_id: 1,
        }
    }

    fn add(&mut self, msg: &impl NlMsg, kind: MsgType, object: impl Into<String>) {
        self.batch.add(msg, kind);
        self.objects.push(object.into());
    }

    fn rules<'a>(&mut self, rules: impl IntoIterator<Item = Rule<'a>>, chain: &str) {
        for (i, r) in rules.into_iter().enumerate() {
            self.add(&r, MsgType::Add, format!("rule {i} of chain {chain:?}"));
        }
    }

    fn set_id(&mut self) -> u32 {
        let id = self.next_set_id;
        self.next_set_id = self.next_set_id.wrapping_add(1);
        id
    }

    fn finish(self) -> Prepared {
        let finalized = self.batch.finalize();
        let mut bytes = Vec::new();
        for page in &finalized {
            bytes.extend_from_slice(page);
        }
        Prepared {
            bytes,
            objects: self.objects,
        }
    }
}

/// Names as C strings. Validation admits only printable ASCII names, so the fallback (an
/// empty name, which the kernel would reject) is unreachable.
pub(crate) fn c(name: &str) -> CString {
    CString::new(name).unwrap_or_default()
}

fn table_name() -> CString {
    c(TABLE)
}

fn map_handle<'a>(table: &'a Table, name: &str, id: u32) -> Set<'a, RawKey> {
    Set::new_named(&c(name), id, table, ProtoFamily::Inet)
}

/// Batch 1: the table (created if missing), the chains of the plan's rules (no-ops if they
/// exist), and the maps of generation `generation` with their elements. Leftover maps of that
/// generation (from an attempt that failed half-way) are deleted first; they are unreferenced.
pub(crate) fn stage(layout: &Layout<'_>, generation: Generation, existing: &Existing) -> Prepared {
    let mut b = Builder::new();
    let name = table_name();
    b.add(
        &TableMsg::new(&name, Some(&comment_udata(TABLE_COMMENT))),
        MsgType::Add,
        "table inet warden",
    );
    let table = Table::new(&name, ProtoFamily::Inet);

    for kind in MapKind::ALL {
        let map_name = generation.map_name(kind);
        if existing.sets.contains(&map_name) {
            b.add(
                &map_handle(&table, &map_name, 0),
                MsgType::Del,
                format!("leftover map {map_name} (delete)"),
            );
        }
    }

    let plan = layout.plan();
    let names: Vec<&str> = plan
        .flows
        .iter()
        .map(|r| r.name.as_str())
        .chain(plan.limits.iter().map(|l| l.name.as_str()))
        .collect();
    let chains: Vec<Chain<'_>> = names.iter().map(|n| Chain::new(c(n), &table)).collect();
    for (chain, name) in chains.iter().zip(&names) {
        b.add(chain, MsgType::Add, format!("chain {name:?}"));
    }

    for kind in MapKind::ALL {
        let map_name = generation.map_name(kind);
        let id = b.set_id();
        let map = map_handle(&table, &map_name, id);
        ffi::make_concat_verdict_map(&map, kind.key_type(), kind.fields());
        b.add(&map, MsgType::Add, format!("map {map_name}"));

        // One message group per (map, rule), so that a rejected element names its rule.
        let elements = layout.elements(kind);
        let mut start = 0;
        while let Some(first) = elements.get(start) {
            let end = elements
                .iter()
                .skip(start)
                .position(|e| e.rule != first.rule)
                .map_or(elements.len(), |n| start + n);
            let group = elements.get(start..end).unwrap_or_default();
            let rule_name = if kind.is_limit() {
                plan.limits.get(first.rule).map_or("?", |l| l.name.as_str())
            } else {
                plan.flows.get(first.rule).map_or("?", |r| r.name.as_str())
            };
            add_map_elements(&mut b, &table, &map_name, id, rule_name, group);
            start = end;
        }
    }
    b.finish()
}

/// Batch 2: swaps everything in force to `layout`, whose maps batch 1 staged in generation
/// `generation`. `existing` is the table as it was before batch 1.
pub(crate) fn switch(layout: &Layout<'_>, generation: Generation, existing: &Existing) -> Prepared {
    let mut b = Builder::new();
    let name = table_name();
    let table = Table::new(&name, ProtoFamily::Inet);
    let plan = layout.plan();
    let wire = layout.wire.as_ref();

    // Chains this plan needs, and which of them hook into the stack.
    let mut needed: BTreeSet<&str> = plan
        .flows
        .iter()
        .map(|r| r.name.as_str())
        .chain(plan.limits.iter().map(|l| l.name.as_str()))
        .collect();
    needed.insert(names::FLOWS);
    let marks = plan.limits.iter().any(|l| l.mark);
    if marks {
        needed.insert(names::MARK_LE);
    }
    // Limit maps only when some limit uses them: an empty lookup costs every packet.
    let limit_kinds: Vec<MapKind> = MapKind::LIMITS
        .into_iter()
        .filter(|k| !layout.elements(*k).is_empty())
        .collect();
    if !limit_kinds.is_empty() {
        needed.insert(names::LIMITS);
    }
    if wire.is_some() {
        needed.extend([
            names::WIRE_IN,
            names::WIRE_OUT,
            names::WIRE_IN_CHECKS,
            names::WIRE_OUT_CHECKS,
        ]);
    }

    // 1. Flush every chain: drops the references from rules to sets and chains.
    for chain_name in &existing.chains {
        let chain = Chain::new(c(chain_name), &table);
        b.add(
            &Rule::new(&chain),
            MsgType::Del,
            format!("rules of chain {chain_name:?} (flush)"),
        );
    }
    // 2. Delete every set but the staged maps: the previous generation's maps, the wire sets
    //    (recreated below) and anything else. Drops map elements' jumps to chains.
    let staged: BTreeSet<String> = MapKind::ALL
        .iter()
        .map(|k| generation.map_name(*k))
        .collect();
    for set_name in existing.sets.iter().filter(|s| !staged.contains(*s)) {
        b.add(
            &map_handle(&table, set_name, 0),
            MsgType::Del,
            format!("set {set_name} (delete)"),
        );
    }
    // 3. Delete chains this plan does not need (now unreferenced).
    for chain_name in existing
        .chains
        .iter()
        .filter(|c| !needed.contains(c.as_str()))
    {
        b.add(
            &Chain::new(c(chain_name), &table),
            MsgType::Del,
            format!("chain {chain_name:?} (delete)"),
        );
    }

    // 4. The wire sets and chains.
    let wire_parts = wire.map(|w| (w, add_wire_sets(&mut b, &table, w)));
    let checks_in = Chain::new(c(names::WIRE_IN_CHECKS), &table);
    let checks_out = Chain::new(c(names::WIRE_OUT_CHECKS), &table);
    let wire_in = rules::base_chain(&table, names::WIRE_IN, Hook::In);
    let wire_out = rules::base_chain(&table, names::WIRE_OUT, Hook::Out);
    let flows = rules::base_chain(&table, names::FLOWS, Hook::Forward);
    if wire_parts.is_some() {
        b.add(
            &checks_in,
            MsgType::Add,
            format!("chain {}", names::WIRE_IN_CHECKS),
        );
        b.add(
            &checks_out,
            MsgType::Add,
            format!("chain {}", names::WIRE_OUT_CHECKS),
        );
        b.add(&wire_in, MsgType::Add, format!("chain {}", names::WIRE_IN));
        b.add(
            &wire_out,
            MsgType::Add,
            format!("chain {}", names::WIRE_OUT),
        );
    }
    b.add(&flows, MsgType::Add, format!("chain {}", names::FLOWS));
    let mark_le = Chain::new(c(names::MARK_LE), &table);
    if marks {
        b.add(&mark_le, MsgType::Add, format!("chain {}", names::MARK_LE));
        b.rules(rules::mark_le_rules(&mark_le), names::MARK_LE);
    }

    // 5. The rules: flow rules' counting chains, wire checks, base chains.
    let rule_chains: Vec<Chain<'_>> = plan
        .flows
        .iter()
        .map(|r| Chain::new(c(&r.name), &table))
        .collect();
    for (chain, rule) in rule_chains.iter().zip(&plan.flows) {
        b.rules([rules::counting_rule(chain, &rule.description)], &rule.name);
    }
    let limit_chains: Vec<Chain<'_>> = plan
        .limits
        .iter()
        .map(|l| Chain::new(c(&l.name), &table))
        .collect();
    for (chain, limit) in limit_chains.iter().zip(&plan.limits) {
        b.rules(rules::limit_rules(chain, limit), &limit.name);
    }
    if let Some((w, ids)) = &wire_parts {
        b.rules(
            rules::wire_checks(&table, &checks_in, false, w, ids),
            names::WIRE_IN_CHECKS,
        );
        b.rules(
            rules::wire_checks(&table, &checks_out, true, w, ids),
            names::WIRE_OUT_CHECKS,
        );
        b.rules(
            [rules::jump_to_wire_checks(&wire_in, false, w.interface)],
            names::WIRE_IN,
        );
        b.rules(
            [rules::jump_to_wire_checks(&wire_out, true, w.interface)],
            names::WIRE_OUT,
        );
    }
    let lookup = |kind: &MapKind| MapLookup {
        name: generation.map_name(*kind),
        set_id: 0,
        ipv6: kind.ipv6(),
        has_proto: kind.has_proto(),
        has_port: kind.has_port(),
    };
    let maps: Vec<MapLookup> = MapKind::FLOWS.iter().map(lookup).collect();
    b.rules(
        rules::flows(&flows, wire, &maps, layout.comment()),
        names::FLOWS,
    );
    let limits = rules::limits_chain(&table);
    if !limit_kinds.is_empty() {
        let limit_maps: Vec<MapLookup> = limit_kinds.iter().map(lookup).collect();
        b.add(&limits, MsgType::Add, format!("chain {}", names::LIMITS));
        b.rules(rules::limits(&limits, &limit_maps), names::LIMITS);
    }
    b.finish()
}

/// Batch 3, after batch 2 failed: deletes what batch 1 added and nothing in force uses: the
/// staged maps and the chains that did not exist before.
pub(crate) fn unstage(
    layout: &Layout<'_>,
    generation: Generation,
    existing: &Existing,
) -> Prepared {
    let mut b = Builder::new();
    let table = Table::new(table_name(), ProtoFamily::Inet);
    for kind in MapKind::ALL {
        let map_name = generation.map_name(kind);
        b.add(
            &map_handle(&table, &map_name, 0),
            MsgType::Del,
            format!("staged map {map_name} (delete)"),
        );
    }
    let plan = layout.plan();
    for name in plan
        .flows
        .iter()
        .map(|r| &r.name)
        .chain(plan.limits.iter().map(|l| &l.name))
    {
        if !existing.chains.contains(name) {
            b.add(
                &Chain::new(c(name), &table),
                MsgType::Del,
                format!("staged chain {name:?} (delete)"),
            );
        }
    }
    b.finish()
}

/// The batch that deletes `inet warden` if it exists: `add table` (no-op if present) and
/// `delete table`, so a missing table is not an error.
pub(crate) fn remove() -> Prepared {
    let mut b = Builder::new();
    let name = table_name();
    b.add(
        &TableMsg::new(&name, None),
        MsgType::Add,
        "table inet warden (add)",
    );
    b.add(
        &TableMsg::new(&name, None),
        MsgType::Del,
        "table inet warden (delete)",
    );
    b.finish()
}

/// nftnl's user-data TLV for a table comment: type, length (with the NUL), text, NUL.
fn comment_udata(comment: &str) -> Vec<u8> {
    let text = comment.as_bytes();
    let text = text.get(..text.len().min(254)).unwrap_or(text);
    let mut udata = Vec::with_capacity(text.len() + 3);
    udata.push(UDATA_TABLE_COMMENT);
    udata.push(u8::try_from(text.len() + 1).unwrap_or(u8::MAX));
    udata.extend_from_slice(text);
    udata.push(0);
    udata
}

fn add_map_elements(
    b: &mut Builder,
    table: &Table,
    map_name: &str,
    set_id: u32,
    rule_name: &str,
    group: &[Element],
) {
    let jump = c(rule_name);
    let mut container = map_handle(table, map_name, set_id);
    for e in group {
        ffi::add_element(&mut container, &e.key, Some(&e.key_end), Some(&jump));
    }
    let object = format!(
        "elements of rule {rule_name:?} in map {map_name} ({} elements)",
        group.len()
    );
    for msg in container.elems_iter() {
        b.add(&msg, MsgType::Add, object.clone());
    }
}

fn add_wire_sets(b: &mut Builder, table: &Table, wire: &WireLayout<'_>) -> WireSetIds {
    let ids = WireSetIds {
        v4: b.set_id(),
        v6: b.set_id(),
        ports: b.set_id(),
    };
    let mut v4 =
        Set::<Ipv4Addr>::new_named(&c(names::APPLIANCES_V4), ids.v4, table, ProtoFamily::Inet);
    let mut v6 =
        Set::<Ipv6Addr>::new_named(&c(names::APPLIANCES_V6), ids.v6, table, ProtoFamily::Inet);
    let mut ports = Set::<Port>::new_named(
        &c(names::WIRE_TCP_PORTS),
        ids.ports,
        table,
        ProtoFamily::Inet,
    );
    b.add(&v4, MsgType::Add, format!("set {}", names::APPLIANCES_V4));
    b.add(&v6, MsgType::Add, format!("set {}", names::APPLIANCES_V6));
    b.add(
        &ports,
        MsgType::Add,
        format!("set {}", names::WIRE_TCP_PORTS),
    );
    for a in &wire.appliances_v4 {
        v4.add(a);
    }
    for a in &wire.appliances_v6 {
        v6.add(a);
    }
    for p in &wire.tcp_ports {
        ports.add(&Port(*p));
    }
    for msg in v4.elems_iter() {
        b.add(
            &msg,
            MsgType::Add,
            format!("elements of set {}", names::APPLIANCES_V4),
        );
    }
    for msg in v6.elems_iter() {
        b.add(
            &msg,
            MsgType::Add,
            format!("elements of set {}", names::APPLIANCES_V6),
        );
    }
    for msg in ports.elems_iter() {
        b.add(
            &msg,
            MsgType::Add,
            format!("elements of set {}", names::WIRE_TCP_PORTS),
        );
    }
    ids
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

    #[test]
    fn map_generations_alternate_and_are_recognized() {
        assert_eq!(Generation::A.map_name(MapKind::PortsV4), "flows_ports_v4_a");
        assert_eq!(Generation::A.other(), Generation::B);
        assert_eq!(Generation::of_map("flows_any_v6_b"), Some(Generation::B));
        assert_eq!(Generation::of_map("flows_any_v6"), None);
        assert_eq!(Generation::of_map("appliances_v4"), None);
    }

    #[test]
    fn table_comment_is_a_nul_terminated_tlv() {
        assert_eq!(comment_udata("ab"), [0, 3, b'a', b'b', 0]);
        let long = comment_udata(&"x".repeat(400));
        assert_eq!(long.len(), 2 + 254 + 1);
        assert_eq!(long[1], 255);
    }
}
