//! Policy documents: TOML (docs/policy.md), read into spanned raw types, then validated into a
//! [`Policy`] with every problem reported at its position.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::Range;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::diag::{position, Diagnostic, PolicyError};
use crate::model::{Node, Policy, PortRange, Rule, Segment, Tenant};
use crate::plan::Proto;

/// Largest policy document accepted (checked before parsing).
pub const MAX_POLICY_BYTES: usize = 16 * 1024 * 1024;
pub const MAX_NODES: usize = 1024;
pub const MAX_TENANTS: usize = 4096;
pub const MAX_SEGMENTS: usize = 65_536;
pub const MAX_RULES: usize = 200_000;
pub const MAX_CIDRS_PER_SEGMENT: usize = 1024;
pub const MAX_PORTS_PER_RULE: usize = 1024;
/// Most nftables elements the rules may expand to (sources × destinations × port ranges).
pub const MAX_ELEMENTS: usize = 2_000_000;
const MAX_NAME: usize = 63;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<i64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, rename = "node")]
    nodes: Vec<RawNode>,
    #[serde(default, rename = "tenant")]
    tenants: Vec<RawTenant>,
    #[serde(default, rename = "segment")]
    segments: Vec<RawSegment>,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
    #[serde(default)]
    wire: Option<crate::limits::RawWire>,
    #[serde(default, rename = "limit")]
    limits: Vec<crate::limits::RawLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Spanned<String>,
    address: Spanned<String>,
    #[serde(default)]
    reference: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: Spanned<String>,
    #[serde(default)]
    send_to: Vec<Spanned<String>>,
    #[serde(default)]
    accept_from: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegment {
    name: Spanned<String>,
    tenant: Spanned<String>,
    cidrs: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    node: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    from: Spanned<String>,
    to: Spanned<String>,
    proto: Spanned<String>,
    #[serde(default)]
    ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

pub(crate) struct Checker<'a> {
    text: &'a str,
    file: &'a str,
    found: Vec<Diagnostic>,
}

impl Checker<'_> {
    pub(crate) fn report(
        &mut self,
        span: Range<usize>,
        path: String,
        message: String,
        hint: Option<String>,
    ) {
        let (line, column) = position(self.text, span.start);
        self.found.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            path,
            message,
            hint,
        });
    }

    /// A name: 1-63 of a-z, 0-9 and '-', not starting with '-'.
    fn name(&mut self, name: &Spanned<String>, path: String) -> bool {
        let s = name.get_ref();
        let ok = !s.is_empty()
            && s.len() <= MAX_NAME
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            self.report(
                name.span(),
                path,
                format!("{s:?} is not a valid name"),
                Some("use 1 to 63 of a-z, 0-9 and '-', not starting with '-'".to_owned()),
            );
        }
        ok
    }
}

/// Parse and validate a policy document. `file` names it in diagnostics.
pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
    let one = |line, column, message: String, hint: Option<String>| PolicyError {
        diagnostics: vec![Diagnostic {
            file: file.to_owned(),
            line,
            column,
            path: String::new(),
            message,
            hint,
        }],
    };
    if text.len() > MAX_POLICY_BYTES {
        return Err(one(
            0,
            0,
            format!(
                "the document is {} bytes; the limit is {MAX_POLICY_BYTES}",
                text.len()
            ),
            Some("split the tenants' segments into fewer, larger CIDRs".to_owned()),
        ));
    }
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((0, 0), |s| position(text, s.start));
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let hint = if message.contains("unknown field") {
            Some("docs/policy.md lists the keys of each table".to_owned())
        } else {
            None
        };
        one(line, column, message, hint)
    })?;
    let mut c = Checker {
        text,
        file,
        found: Vec::new(),
    };
    let policy = validate(&mut c, raw, text);
    match policy {
        Some(p) if c.found.is_empty() => Ok(p),
        _ => Err(PolicyError {
            diagnostics: c.found,
        }),
    }
}

fn too_many(c: &mut Checker<'_>, what: &str, n: usize, max: usize) -> bool {
    if n > max {
        c.found.push(Diagnostic {
            file: c.file.to_owned(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("{n} {what}; the limit is {max}"),
            hint: None,
        });
        true
    } else {
        false
    }
}

fn validate(c: &mut Checker<'_>, raw: RawPolicy, text: &str) -> Option<Policy> {
    if too_many(c, "nodes", raw.nodes.len(), MAX_NODES)
        | too_many(c, "tenants", raw.tenants.len(), MAX_TENANTS)
        | too_many(c, "segments", raw.segments.len(), MAX_SEGMENTS)
        | too_many(c, "rules", raw.rules.len(), MAX_RULES)
        | too_many(c, "limits", raw.limits.len(), crate::limits::MAX_LIMITS)
    {
        return None;
    }
    let version = match u64::try_from(*raw.version.get_ref()) {
        Ok(v) if v >= 1 => v,
        _ => {
            c.report(
                raw.version.span(),
                "version".into(),
                format!("{} is not a policy version", raw.version.get_ref()),
                Some("versions are whole numbers from 1; raise it with every change".into()),
            );
            0
        }
    };

    // Nodes.
    let mut node_ids: HashMap<String, usize> = HashMap::new();
    let mut node_addrs: HashMap<IpAddr, usize> = HashMap::new();
    let mut nodes = Vec::with_capacity(raw.nodes.len());
    for (i, n) in raw.nodes.into_iter().enumerate() {
        let path = format!("node[{i}]");
        if c.name(&n.id, format!("{path}.id")) {
            if let Some(first) = node_ids.insert(n.id.get_ref().clone(), i) {
                c.report(
                    n.id.span(),
                    format!("{path}.id"),
                    format!(
                        "node {:?} is defined twice (first as node[{first}])",
                        n.id.get_ref()
                    ),
                    Some("node ids must be unique".into()),
                );
            }
        }
        let address = match n.address.get_ref().parse::<IpAddr>() {
            Ok(a) => {
                if let Some(first) = node_addrs.insert(a, i) {
                    c.report(
                        n.address.span(),
                        format!("{path}.address"),
                        format!("address {a} is already node[{first}]'s"),
                        Some("every appliance has its own wire address".into()),
                    );
                }
                a
            }
            Err(_) => {
                c.report(
                    n.address.span(),
                    format!("{path}.address"),
                    format!("{:?} is not an IP address", n.address.get_ref()),
                    Some(
                        "write the node's wire address, e.g. \"192.0.2.10\" or \"2001:db8::10\""
                            .into(),
                    ),
                );
                IpAddr::from([0, 0, 0, 0])
            }
        };
        nodes.push(Node {
            id: n.id.into_inner(),
            address,
            reference: n.reference,
        });
    }

    // Tenants (grants resolved after all ids are known).
    let mut tenant_ids: HashMap<String, usize> = HashMap::new();
    for (i, t) in raw.tenants.iter().enumerate() {
        if c.name(&t.id, format!("tenant[{i}].id")) {
            if let Some(first) = tenant_ids.insert(t.id.get_ref().clone(), i) {
                c.report(
                    t.id.span(),
                    format!("tenant[{i}].id"),
                    format!(
                        "tenant {:?} is defined twice (first as tenant[{first}])",
                        t.id.get_ref()
                    ),
                    Some("tenant ids must be unique".into()),
                );
            }
        }
    }
    let mut tenants = Vec::with_capacity(raw.tenants.len());
    for (i, t) in raw.tenants.into_iter().enumerate() {
        let mut resolve = |list: &[Spanned<String>], key: &str| -> Vec<usize> {
            let mut out = Vec::new();
            for (j, name) in list.iter().enumerate() {
                match tenant_ids.get(name.get_ref()) {
                    Some(&k) => out.push(k),
                    None => c.report(
                        name.span(),
                        format!("tenant[{i}].{key}[{j}]"),
                        format!("unknown tenant {:?}", name.get_ref()),
                        Some(known_hint("tenants", tenant_ids.keys())),
                    ),
                }
            }
            out
        };
        let send_to = resolve(&t.send_to, "send_to");
        let accept_from = resolve(&t.accept_from, "accept_from");
        tenants.push(Tenant {
            id: t.id.into_inner(),
            send_to,
            accept_from,
        });
    }

    // Segments.
    let mut segment_ids: HashMap<String, usize> = HashMap::new();
    let mut segments = Vec::with_capacity(raw.segments.len());
    // (is_v6, start, end, segment, span) of every CIDR, for the overlap sweep.
    let mut ranges: Vec<(bool, u128, u128, usize, Range<usize>)> = Vec::new();
    for (i, s) in raw.segments.into_iter().enumerate() {
        let path = format!("segment[{i}]");
        if c.name(&s.name, format!("{path}.name")) {
            if let Some(first) = segment_ids.insert(s.name.get_ref().clone(), i) {
                c.report(
                    s.name.span(),
                    format!("{path}.name"),
                    format!(
                        "segment {:?} is defined twice (first as segment[{first}])",
                        s.name.get_ref()
                    ),
                    Some("segment names must be unique across tenants".into()),
                );
            }
        }
        let tenant = match tenant_ids.get(s.tenant.get_ref()) {
            Some(&t) => t,
            None => {
                c.report(
                    s.tenant.span(),
                    format!("{path}.tenant"),
                    format!("unknown tenant {:?}", s.tenant.get_ref()),
                    Some(known_hint("tenants", tenant_ids.keys())),
                );
                usize::MAX
            }
        };
        let node = s
            .node
            .as_ref()
            .and_then(|n| match node_ids.get(n.get_ref()) {
                Some(&k) => Some(k),
                None => {
                    c.report(
                        n.span(),
                        format!("{path}.node"),
                        format!("unknown node {:?}", n.get_ref()),
                        Some(known_hint("nodes", node_ids.keys())),
                    );
                    None
                }
            });
        let cidr_span = s.cidrs.span();
        let list = s.cidrs.into_inner();
        if list.is_empty() {
            c.report(
                cidr_span.clone(),
                format!("{path}.cidrs"),
                "a segment needs at least one CIDR".into(),
                Some("e.g. cidrs = [\"198.51.100.0/26\"]".into()),
            );
        }
        if list.len() > MAX_CIDRS_PER_SEGMENT {
            c.report(
                cidr_span,
                format!("{path}.cidrs"),
                format!("{} CIDRs; the limit is {MAX_CIDRS_PER_SEGMENT}", list.len()),
                Some("merge adjacent CIDRs".into()),
            );
        }
        let mut cidrs = Vec::with_capacity(list.len());
        for (j, text_cidr) in list.iter().enumerate() {
            let cpath = format!("{path}.cidrs[{j}]");
            match parse_cidr(text_cidr.get_ref()) {
                Ok(net) => {
                    let (v6, start, end) = bounds(net);
                    ranges.push((v6, start, end, i, text_cidr.span()));
                    cidrs.push(net);
                }
                Err((message, hint)) => c.report(text_cidr.span(), cpath, message, hint),
            }
        }
        segments.push(Segment {
            name: s.name.into_inner(),
            tenant,
            cidrs,
            node,
        });
    }

    // CIDRs are disjoint across segments (so an address names at most one segment).
    ranges.sort_by_key(|r| (r.0, r.1, r.2));
    let mut widest: Option<(bool, u128, usize)> = None; // family, end, segment
    let mut reported = std::collections::HashSet::new();
    for (v6, start, end, seg, span) in &ranges {
        if let Some((wv6, wend, wseg)) = widest {
            if wv6 == *v6 && *start <= wend {
                let pair = ((*seg).min(wseg), (*seg).max(wseg));
                if reported.insert(pair) {
                    let (Some(a), Some(b)) = (segments.get(*seg), segments.get(wseg)) else {
                        continue;
                    };
                    let tenant_name = |t: usize| tenants.get(t).map_or("?", |t| t.id.as_str());
                    let message = if *seg == wseg {
                        format!("CIDRs of segment {:?} overlap each other", a.name)
                    } else if a.tenant != b.tenant {
                        format!(
                            "overlaps segment {:?}: CIDRs overlap between tenants {:?} and {:?}",
                            b.name,
                            tenant_name(a.tenant),
                            tenant_name(b.tenant)
                        )
                    } else {
                        format!("overlaps segment {:?} of the same tenant", b.name)
                    };
                    c.report(
                        span.clone(),
                        format!("segment[{seg}].cidrs"),
                        message,
                        Some(
                            "an address belongs to exactly one segment: make the CIDRs disjoint"
                                .into(),
                        ),
                    );
                }
            }
        }
        match widest {
            Some((wv6, wend, _)) if wv6 == *v6 && wend >= *end => {}
            _ => widest = Some((*v6, *end, *seg)),
        }
    }
    // Wire addresses are not tenant addresses.
    for (k, n) in nodes.iter().enumerate() {
        let (v6, a, _) = bounds(IpNet::from(n.address));
        if let Some(r) = ranges.iter().find(|r| r.0 == v6 && r.1 <= a && a <= r.2) {
            let name = segments.get(r.3).map_or("?", |s| s.name.as_str());
            c.found.push(Diagnostic {
                file: c.file.to_owned(),
                line: 0,
                column: 0,
                path: format!("node[{k}].address"),
                message: format!(
                    "node {:?}'s wire address {} lies inside segment {name:?}",
                    n.id, n.address
                ),
                hint: Some("keep the wire network apart from tenant segments".into()),
            });
        }
    }

    // Rules.
    let mut rules = Vec::with_capacity(raw.rules.len());
    let mut seen: BTreeMap<(usize, usize, Proto), Vec<(usize, PortRange)>> = BTreeMap::new();
    let mut elements: usize = 0;
    for (i, r) in raw.rules.into_iter().enumerate() {
        let path = format!("rule[{i}]");
        let mut seg = |name: &Spanned<String>, key: &str| -> Option<usize> {
            match segment_ids.get(name.get_ref()) {
                Some(&s) => Some(s),
                None => {
                    c.report(
                        name.span(),
                        format!("{path}.{key}"),
                        format!("unknown segment {:?}", name.get_ref()),
                        Some(known_hint("segments", segment_ids.keys())),
                    );
                    None
                }
            }
        };
        let from = seg(&r.from, "from");
        let to = seg(&r.to, "to");
        let proto = match r.proto.get_ref().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "icmp" => Some(Proto::Icmp),
            "any" => Some(Proto::Any),
            other => {
                c.report(
                    r.proto.span(),
                    format!("{path}.proto"),
                    format!("unknown protocol {other:?}"),
                    Some("use \"tcp\", \"udp\", \"icmp\" or \"any\"".into()),
                );
                None
            }
        };
        let ports = match (proto, &r.ports) {
            (Some(p), None) if p.has_ports() => {
                c.report(
                    r.proto.span(),
                    format!("{path}.ports"),
                    format!("a {} rule needs ports", p.name()),
                    Some(
                        "list them, e.g. ports = [443, \"8000-8080\"]; every port is \"1-65535\""
                            .into(),
                    ),
                );
                Vec::new()
            }
            (Some(p), Some(list)) if !p.has_ports() => {
                c.report(
                    list.span(),
                    format!("{path}.ports"),
                    format!("{} has no ports", p.name()),
                    Some("remove ports, or use proto = \"tcp\" or \"udp\"".into()),
                );
                Vec::new()
            }
            (_, Some(list)) => ports(c, list, &path),
            (_, None) => Vec::new(),
        };
        let (Some(from), Some(to), Some(proto)) = (from, to, proto) else {
            continue;
        };
        // Crossing tenants needs a grant on both sides.
        let (ft, tt) = (
            segments.get(from).map(|s| s.tenant),
            segments.get(to).map(|s| s.tenant),
        );
        if let (Some(ft), Some(tt)) = (ft, tt) {
            if ft != tt && ft != usize::MAX && tt != usize::MAX {
                let (Some(a), Some(b)) = (tenants.get(ft), tenants.get(tt)) else {
                    continue;
                };
                let mut missing = Vec::new();
                if !a.send_to.contains(&tt) {
                    missing.push(format!(
                        "tenant {:?} does not list {:?} in send_to",
                        a.id, b.id
                    ));
                }
                if !b.accept_from.contains(&ft) {
                    missing.push(format!(
                        "tenant {:?} does not list {:?} in accept_from",
                        b.id, a.id
                    ));
                }
                if !missing.is_empty() {
                    c.report(
                        r.from.span().start..r.to.span().end,
                        path.clone(),
                        format!(
                            "rule crosses from tenant {:?} to tenant {:?} without a grant: {}",
                            a.id,
                            b.id,
                            missing.join(" and ")
                        ),
                        Some(format!(
                            "both tenants must agree: send_to = [\"{}\"] in tenant {:?} and \
                             accept_from = [\"{}\"] in tenant {:?}",
                            b.id, a.id, a.id, b.id
                        )),
                    );
                    continue;
                }
            }
        }
        // No two rules cover the same flow.
        let key = (from, to, proto);
        let prior = seen.entry(key).or_default();
        let mine: Vec<PortRange> = if proto.has_ports() {
            ports.clone()
        } else {
            vec![PortRange { lo: 0, hi: 0 }]
        };
        if let Some((other, _)) = prior
            .iter()
            .find(|(_, p)| mine.iter().any(|m| m.overlaps(*p)))
        {
            c.report(
                r.from.span(),
                path.clone(),
                format!("rule[{i}] repeats flows rule[{other}] already allows"),
                Some("merge the two rules, or make their ports disjoint".into()),
            );
            continue;
        }
        prior.extend(mine.iter().map(|p| (i, *p)));
        let src = segments.get(from).map_or(0, |s| s.cidrs.len());
        let dst = segments.get(to).map_or(0, |s| s.cidrs.len());
        elements =
            elements.saturating_add(src.saturating_mul(dst).saturating_mul(ports.len().max(1)));
        rules.push(Rule {
            from,
            to,
            proto,
            ports,
        });
    }
    if elements > MAX_ELEMENTS {
        c.found.push(Diagnostic {
            file: c.file.to_owned(),
            line: 0,
            column: 0,
            path: "rule".into(),
            message: format!(
                "the rules expand to {elements} (source, destination, port) elements; the \
                 limit is {MAX_ELEMENTS}"
            ),
            hint: Some("use fewer, larger CIDRs per segment or wider port ranges".into()),
        });
    }
    let wire = crate::limits::wire(c, raw.wire);
    let wire_bits_per_second = wire.as_ref().map(|w| w.0);
    let limits = crate::limits::limits(
        c,
        raw.limits,
        wire,
        &crate::limits::Known {
            tenant_ids: &tenant_ids,
            segment_ids: &segment_ids,
            tenants: &tenants,
            segments: &segments,
            rules: &rules,
        },
    );
    if !c.found.is_empty() {
        return None;
    }
    Some(Policy {
        version,
        digest: ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]),
        description: raw.description.unwrap_or_default(),
        nodes,
        tenants,
        segments,
        rules,
        wire_bits_per_second,
        limits,
    })
}

/// Ports of one rule: numbers or "lo-hi" strings, normalized to ascending disjoint ranges.
fn ports(c: &mut Checker<'_>, list: &Spanned<Vec<Spanned<RawPort>>>, path: &str) -> Vec<PortRange> {
    if list.get_ref().is_empty() {
        c.report(
            list.span(),
            format!("{path}.ports"),
            "the port list is empty".into(),
            Some("list at least one port or range; every port is \"1-65535\"".into()),
        );
        return Vec::new();
    }
    if list.get_ref().len() > MAX_PORTS_PER_RULE {
        c.report(
            list.span(),
            format!("{path}.ports"),
            format!(
                "{} port entries; the limit is {MAX_PORTS_PER_RULE}",
                list.get_ref().len()
            ),
            Some("use ranges".into()),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for (j, p) in list.get_ref().iter().enumerate() {
        let ppath = format!("{path}.ports[{j}]");
        let parsed = match p.get_ref() {
            RawPort::Number(n) => port(*n).map(|n| PortRange { lo: n, hi: n }),
            RawPort::Text(s) => match s.split_once('-') {
                Some((a, b)) => match (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
                    (Ok(a), Ok(b)) => match (port(a), port(b)) {
                        (Ok(lo), Ok(hi)) if lo <= hi => Ok(PortRange { lo, hi }),
                        (Ok(lo), Ok(hi)) => Err((
                            format!("the range {lo}-{hi} is inverted"),
                            Some(format!("write \"{hi}-{lo}\"")),
                        )),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                    },
                    _ => Err((
                        format!("{s:?} is not a port range"),
                        Some("write \"low-high\", e.g. \"8000-8080\"".into()),
                    )),
                },
                None => match s.trim().parse::<i64>() {
                    Ok(n) => port(n).map(|n| PortRange { lo: n, hi: n }),
                    Err(_) if s.trim().is_empty() => Err((
                        "the port is empty".into(),
                        Some("write a port (443) or a range (\"8000-8080\")".into()),
                    )),
                    Err(_) => Err((
                        format!("{s:?} is not a port"),
                        Some("write a port (443) or a range (\"8000-8080\")".into()),
                    )),
                },
            },
        };
        match parsed {
            Ok(r) => out.push(r),
            Err((message, hint)) => c.report(p.span(), ppath, message, hint),
        }
    }
    // Normalize: sort, merge overlapping and adjacent ranges.
    out.sort();
    let mut merged: Vec<PortRange> = Vec::with_capacity(out.len());
    for r in out {
        match merged.last_mut() {
            Some(last) if u32::from(r.lo) <= u32::from(last.hi) + 1 => last.hi = last.hi.max(r.hi),
            _ => merged.push(r),
        }
    }
    merged
}

fn port(n: i64) -> Result<u16, (String, Option<String>)> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err((
            format!("{n} is not a port"),
            Some("ports are 1 to 65535".into()),
        )),
    }
}

/// A CIDR with zero host bits; a bare address is a /32 or /128.
fn parse_cidr(s: &str) -> Result<IpNet, (String, Option<String>)> {
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            return Err((
                format!("{s:?} has host bits set"),
                Some(format!("did you mean \"{}\"?", net.trunc())),
            ));
        }
        return Ok(net);
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    Err((
        format!("{s:?} is not a CIDR"),
        Some(
            "write an address with a prefix length, e.g. \"198.51.100.0/26\" or \"2001:db8::/64\""
                .into(),
        ),
    ))
}

/// (is IPv6, first address, last address) of `net`, as integers.
pub(crate) fn bounds(net: IpNet) -> (bool, u128, u128) {
    match net {
        IpNet::V4(n) => (
            false,
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (true, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

pub(crate) fn known_hint<'a>(what: &str, names: impl Iterator<Item = &'a String>) -> String {
    let mut names: Vec<&str> = names.map(String::as_str).collect();
    names.sort_unstable();
    if names.is_empty() {
        return format!("the policy defines no {what}");
    }
    let more = names.len().saturating_sub(8);
    names.truncate(8);
    let mut s = format!("known {what}: {}", names.join(", "));
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}
