//! Traffic limits: per tenant and per segment pair, rates in packets, bits and new connections
//! per second, each with a burst; a guaranteed share of the wire when it is congested; and what
//! happens to packets over a limit. Validated here, with the rest of the policy, so that a
//! limit that cannot be met is reported where it is written.
//!
//! ```toml
//! [wire]
//! bits_per_second = "10G"           # the wire's capacity; needed by guarantees
//!
//! [[limit]]
//! tenant = "globex"                 # all of a tenant's traffic, or
//! # from = "acme-web"               # one segment pair, in this direction
//! # to = "acme-db"
//! bits_per_second = "2G"
//! burst_bytes = "4M"
//! packets_per_second = 300000
//! burst_packets = 3000
//! new_connections_per_second = 500
//! burst_connections = 100
//! guaranteed_bits_per_second = "1G"
//! action = "drop"                   # or "mark" (DSCP LE, RFC 8622)
//! ```

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::model::{Rule, Segment, Tenant};
use crate::parse::Checker;

/// Most `[[limit]]` tables.
pub const MAX_LIMITS: usize = 65_536;
/// Highest rate in bits per second (10 Tbit/s).
pub const MAX_BITS_PER_SECOND: u64 = 10_000_000_000_000;
/// Highest packet or connection rate per second.
pub const MAX_EVENTS_PER_SECOND: u64 = 10_000_000_000;
/// Smallest byte burst: a full-size packet must fit, or every such packet is over the limit.
pub const MIN_BURST_BYTES: u64 = 1500;
/// Largest burst of any kind (so that a bucket's depth in time stays representable).
pub const MAX_BURST: u64 = 1 << 40;

/// Where a limit applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// Everything a tenant sends (index into `Policy::tenants`).
    Tenant(usize),
    /// Traffic from one segment to another (indices into `Policy::segments`).
    Pair { from: usize, to: usize },
}

/// What happens to a packet over a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverLimit {
    /// Dropped and counted.
    Drop,
    /// Passed with its DSCP set to Lower Effort (RFC 8622), and counted.
    Mark,
}

impl OverLimit {
    pub fn name(self) -> &'static str {
        match self {
            OverLimit::Drop => "drop",
            OverLimit::Mark => "mark",
        }
    }
}

/// A rate with its burst: `per_second` units flow in; at most `burst` units at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u64,
    pub burst: u64,
}

/// One validated `[[limit]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub scope: LimitScope,
    /// Bits per second; the burst is in bytes.
    pub bits: Option<Rate>,
    pub packets: Option<Rate>,
    /// New connections (TCP SYN without ACK) per second.
    pub connections: Option<Rate>,
    /// Bits per second this scope may always send, however busy the wire is.
    pub guaranteed_bits: Option<u64>,
    pub action: OverLimit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWire {
    bits_per_second: Spanned<Quantity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    #[serde(default)]
    tenant: Option<Spanned<String>>,
    #[serde(default)]
    from: Option<Spanned<String>>,
    #[serde(default)]
    to: Option<Spanned<String>>,
    #[serde(default)]
    bits_per_second: Option<Spanned<Quantity>>,
    #[serde(default)]
    burst_bytes: Option<Spanned<Quantity>>,
    #[serde(default)]
    packets_per_second: Option<Spanned<Quantity>>,
    #[serde(default)]
    burst_packets: Option<Spanned<Quantity>>,
    #[serde(default)]
    new_connections_per_second: Option<Spanned<Quantity>>,
    #[serde(default)]
    burst_connections: Option<Spanned<Quantity>>,
    #[serde(default)]
    guaranteed_bits_per_second: Option<Spanned<Quantity>>,
    #[serde(default)]
    action: Option<Spanned<String>>,
}

/// A number as written: an integer, or a string with an SI (k, M, G, T: powers of 1000) or
/// binary (Ki, Mi, Gi, Ti: powers of 1024) suffix, e.g. `"2.5G"`, `"64Ki"`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Quantity {
    Integer(i64),
    Text(String),
}

impl Quantity {
    fn value(&self) -> Result<u64, String> {
        match self {
            Quantity::Integer(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
            Quantity::Text(s) => parse_quantity(s),
        }
    }
}

/// `"2.5G"` → 2_500_000_000; whole results only.
pub fn parse_quantity(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.' || ch == '_'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let scale: u64 = match suffix.trim() {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => return Err(format!("{other:?} is not a unit in {s:?}")),
    };
    let number = number.replace('_', "");
    let (whole, frac) = number.split_once('.').unwrap_or((&number, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(format!("{s:?} is not a number"));
    }
    if frac.len() > 9 {
        return Err(format!("{s:?} has more than 9 decimals"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| format!("{s:?} is not a number"))?
    };
    let digits: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| format!("{s:?} is not a number"))?
    };
    let denominator = 10u64.pow(u32::try_from(frac.len()).unwrap_or(0));
    let w = whole
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    let f = u128::from(digits) * u128::from(scale);
    if f % u128::from(denominator) != 0 {
        return Err(format!("{s:?} is not a whole number"));
    }
    let f =
        u64::try_from(f / u128::from(denominator)).map_err(|_| format!("{s:?} is too large"))?;
    w.checked_add(f)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The context limits are checked against.
pub(crate) struct Known<'a> {
    pub tenant_ids: &'a HashMap<String, usize>,
    pub segment_ids: &'a HashMap<String, usize>,
    pub tenants: &'a [Tenant],
    pub segments: &'a [Segment],
    pub rules: &'a [Rule],
}

const HINT_QUANTITY: &str =
    "write a whole number, or a string with a unit: \"500M\", \"2.5G\" (powers of 1000), \"64Ki\" (of 1024)";

/// A positive quantity at most `max`, or a report.
fn quantity(
    c: &mut Checker<'_>,
    q: &Spanned<Quantity>,
    path: String,
    min: u64,
    max: u64,
) -> Option<u64> {
    match q.get_ref().value() {
        Ok(v) if v >= min && v <= max => Some(v),
        Ok(v) if v < min => {
            let hint = if min == 1 {
                "a limit of 0 would stop all traffic: remove the key for no limit".to_owned()
            } else {
                format!("the smallest value is {min}")
            };
            c.report(q.span(), path, format!("{v} is too small"), Some(hint));
            None
        }
        Ok(v) => {
            c.report(
                q.span(),
                path,
                format!("{v} is above the largest value, {max}"),
                Some(format!("use at most {max}, or remove the key for no limit")),
            );
            None
        }
        Err(why) => {
            c.report(q.span(), path, why, Some(HINT_QUANTITY.to_owned()));
            None
        }
    }
}

pub(crate) fn wire(c: &mut Checker<'_>, raw: Option<RawWire>) -> Option<(u64, Range<usize>)> {
    let raw = raw?;
    let span = raw.bits_per_second.span();
    quantity(
        c,
        &raw.bits_per_second,
        "wire.bits_per_second".into(),
        1,
        MAX_BITS_PER_SECOND,
    )
    .map(|v| (v, span))
}

/// A rate and its burst (`default_burst` of the rate when the burst is not written).
#[allow(clippy::too_many_arguments)]
fn rate(
    c: &mut Checker<'_>,
    path: &str,
    rate: Option<&Spanned<Quantity>>,
    rate_key: &str,
    max: u64,
    burst: Option<&Spanned<Quantity>>,
    burst_key: &str,
    min_burst: u64,
    default_burst: impl Fn(u64) -> u64,
) -> Option<Rate> {
    let Some(r) = rate else {
        if let Some(b) = burst {
            c.report(
                b.span(),
                format!("{path}.{burst_key}"),
                format!("{burst_key} without {rate_key}"),
                Some(format!(
                    "a burst belongs to a rate: add {rate_key}, or remove {burst_key}"
                )),
            );
        }
        return None;
    };
    let per_second = quantity(c, r, format!("{path}.{rate_key}"), 1, max)?;
    let burst = match burst {
        Some(b) => {
            let v = quantity(c, b, format!("{path}.{burst_key}"), 1, MAX_BURST)?;
            if v < min_burst {
                c.report(
                    b.span(),
                    format!("{path}.{burst_key}"),
                    format!(
                        "a burst of {v} cannot be met: a full-size packet is {min_burst} bytes, \
                         so every such packet would be over the limit"
                    ),
                    Some(format!("use at least {min_burst}")),
                );
                return None;
            }
            v
        }
        None => default_burst(per_second).clamp(min_burst.max(1), MAX_BURST),
    };
    Some(Rate { per_second, burst })
}

/// Validate the `[[limit]]` tables against the rest of the policy.
pub(crate) fn limits(
    c: &mut Checker<'_>,
    raw: Vec<RawLimit>,
    wire: Option<(u64, Range<usize>)>,
    k: &Known<'_>,
) -> Vec<Limit> {
    let mut out = Vec::with_capacity(raw.len());
    let mut seen: HashMap<LimitScope, usize> = HashMap::new();
    // (limit index, guarantee, span) for the sums below.
    let mut guarantees: Vec<(usize, u64, Range<usize>)> = Vec::new();
    for (i, l) in raw.into_iter().enumerate() {
        let path = format!("limit[{i}]");
        let Some((scope, scope_span)) = scope(c, &l, &path, k) else {
            continue;
        };
        if let Some(first) = seen.insert(scope, i) {
            c.report(
                scope_span.clone(),
                path.clone(),
                format!("limit[{first}] already limits {}", describe(scope, k)),
                Some("merge the two into one [[limit]]".into()),
            );
            continue;
        }
        let bits = rate(
            c,
            &path,
            l.bits_per_second.as_ref(),
            "bits_per_second",
            MAX_BITS_PER_SECOND,
            l.burst_bytes.as_ref(),
            "burst_bytes",
            MIN_BURST_BYTES,
            // 10 ms at the rate, at least 64 KiB.
            |bps| (bps / 800).max(64 << 10),
        );
        let packets = rate(
            c,
            &path,
            l.packets_per_second.as_ref(),
            "packets_per_second",
            MAX_EVENTS_PER_SECOND,
            l.burst_packets.as_ref(),
            "burst_packets",
            1,
            |pps| (pps / 100).max(64),
        );
        let connections = rate(
            c,
            &path,
            l.new_connections_per_second.as_ref(),
            "new_connections_per_second",
            MAX_EVENTS_PER_SECOND,
            l.burst_connections.as_ref(),
            "burst_connections",
            1,
            |cps| (cps / 10).max(10),
        );
        let guaranteed_bits = l.guaranteed_bits_per_second.as_ref().and_then(|g| {
            let v = quantity(
                c,
                g,
                format!("{path}.guaranteed_bits_per_second"),
                1,
                MAX_BITS_PER_SECOND,
            )?;
            if wire.is_none() {
                c.report(
                    g.span(),
                    format!("{path}.guaranteed_bits_per_second"),
                    "a guarantee needs the wire's capacity".into(),
                    Some("add [wire] bits_per_second = \"10G\" (the wire's rate)".into()),
                );
                return None;
            }
            if let Some(cap) = bits.map(|b| b.per_second).filter(|cap| v > *cap) {
                c.report(
                    g.span(),
                    format!("{path}.guaranteed_bits_per_second"),
                    format!(
                        "the guarantee of {v} bit/s cannot be met: the same limit caps the \
                         traffic at {cap} bit/s"
                    ),
                    Some("lower the guarantee or raise bits_per_second".into()),
                );
                return None;
            }
            guarantees.push((i, v, g.span()));
            Some(v)
        });
        let action = match l.action.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("drop") => OverLimit::Drop,
            Some("mark") => OverLimit::Mark,
            Some(other) => {
                if let Some(a) = &l.action {
                    c.report(
                        a.span(),
                        format!("{path}.action"),
                        format!("unknown action {other:?}"),
                        Some("use \"drop\" or \"mark\"".into()),
                    );
                }
                OverLimit::Drop
            }
        };
        // A rate that was written but refused has been reported already.
        if l.bits_per_second.is_none()
            && l.packets_per_second.is_none()
            && l.new_connections_per_second.is_none()
            && l.guaranteed_bits_per_second.is_none()
        {
            c.report(
                scope_span,
                path.clone(),
                "the limit sets no rate".into(),
                Some(
                    "set bits_per_second, packets_per_second, new_connections_per_second or \
                     guaranteed_bits_per_second"
                        .into(),
                ),
            );
            continue;
        }
        out.push(Limit {
            scope,
            bits,
            packets,
            connections,
            guaranteed_bits,
            action,
        });
    }
    check_guarantees(c, &out, &guarantees, wire, k);
    out
}

fn describe(scope: LimitScope, k: &Known<'_>) -> String {
    match scope {
        LimitScope::Tenant(t) => format!(
            "tenant {:?}",
            k.tenants.get(t).map_or("?", |t| t.id.as_str())
        ),
        LimitScope::Pair { from, to } => format!(
            "{} -> {}",
            k.segments.get(from).map_or("?", |s| s.name.as_str()),
            k.segments.get(to).map_or("?", |s| s.name.as_str())
        ),
    }
}

fn scope(
    c: &mut Checker<'_>,
    l: &RawLimit,
    path: &str,
    k: &Known<'_>,
) -> Option<(LimitScope, Range<usize>)> {
    match (&l.tenant, &l.from, &l.to) {
        (Some(t), None, None) => match k.tenant_ids.get(t.get_ref()) {
            Some(&i) => Some((LimitScope::Tenant(i), t.span())),
            None => {
                c.report(
                    t.span(),
                    format!("{path}.tenant"),
                    format!("unknown tenant {:?}", t.get_ref()),
                    Some(crate::parse::known_hint("tenants", k.tenant_ids.keys())),
                );
                None
            }
        },
        (None, Some(f), Some(t)) => {
            let mut seg =
                |name: &Spanned<String>, key: &str| match k.segment_ids.get(name.get_ref()) {
                    Some(&s) => Some(s),
                    None => {
                        c.report(
                            name.span(),
                            format!("{path}.{key}"),
                            format!("unknown segment {:?}", name.get_ref()),
                            Some(crate::parse::known_hint("segments", k.segment_ids.keys())),
                        );
                        None
                    }
                };
            let (from, to) = (seg(f, "from"), seg(t, "to"));
            let (from, to) = (from?, to?);
            let span = f.span().start..t.span().end;
            if !k
                .rules
                .iter()
                .any(|r| (r.from, r.to) == (from, to) || (r.from, r.to) == (to, from))
            {
                c.report(
                    span,
                    path.to_owned(),
                    format!(
                        "no rule allows traffic between {:?} and {:?}: the limit would never apply",
                        f.get_ref(),
                        t.get_ref()
                    ),
                    Some("limit a pair that a [[rule]] connects, or remove the limit".into()),
                );
                return None;
            }
            Some((LimitScope::Pair { from, to }, span))
        }
        (Some(t), _, _) => {
            c.report(
                t.span(),
                path.to_owned(),
                "a limit is for a tenant or for a segment pair, not both".into(),
                Some("write tenant = \"…\", or from = \"…\" and to = \"…\"".into()),
            );
            None
        }
        (None, Some(s), None) | (None, None, Some(s)) => {
            c.report(
                s.span(),
                path.to_owned(),
                "a segment-pair limit needs both from and to".into(),
                Some("write from = \"<segment>\" and to = \"<segment>\"".into()),
            );
            None
        }
        (None, None, None) => {
            c.report(
                0..0,
                path.to_owned(),
                "the limit names no tenant and no segment pair".into(),
                Some("write tenant = \"…\", or from = \"…\" and to = \"…\"".into()),
            );
            None
        }
    }
}

/// Guarantees must fit: all of them together in the wire, and a pair's within its tenant's
/// cap and guarantee.
fn check_guarantees(
    c: &mut Checker<'_>,
    limits: &[Limit],
    spans: &[(usize, u64, Range<usize>)],
    wire: Option<(u64, Range<usize>)>,
    k: &Known<'_>,
) {
    let tenant_limit = |t: usize| limits.iter().find(|l| l.scope == LimitScope::Tenant(t));
    let mut per_tenant: HashMap<usize, u64> = HashMap::new();
    for l in limits {
        let (LimitScope::Pair { from, .. }, Some(g)) = (l.scope, l.guaranteed_bits) else {
            continue;
        };
        let Some(t) = k.segments.get(from).map(|s| s.tenant) else {
            continue;
        };
        let sum = per_tenant.entry(t).or_default();
        *sum = sum.saturating_add(g);
    }
    for (t, sum) in per_tenant {
        let Some(tl) = tenant_limit(t) else { continue };
        let name = k.tenants.get(t).map_or("?", |t| t.id.as_str());
        let span = spans
            .iter()
            .rev()
            .find(|(i, _, _)| {
                limits.get(*i).is_some_and(|l| {
                    matches!(l.scope, LimitScope::Pair { from, .. }
                        if k.segments.get(from).map(|s| s.tenant) == Some(t))
                })
            })
            .map_or(0..0, |s| s.2.clone());
        if let Some(cap) = tl.bits.map(|b| b.per_second).filter(|cap| sum > *cap) {
            c.report(
                span,
                "limit".into(),
                format!(
                    "the segment-pair guarantees of tenant {name:?} add up to {sum} bit/s, more \
                     than the tenant's cap of {cap} bit/s: they cannot be met"
                ),
                Some("lower the pairs' guarantees or raise the tenant's bits_per_second".into()),
            );
        }
    }
    let Some((capacity, wire_span)) = wire else {
        return;
    };
    let total = spans.iter().fold(0u64, |a, s| a.saturating_add(s.1));
    if total > capacity {
        let listed: Vec<String> = spans
            .iter()
            .filter_map(|(i, g, _)| {
                limits
                    .get(*i)
                    .map(|l| format!("{} {g}", describe(l.scope, k)))
            })
            .take(8)
            .collect();
        c.report(
            spans.last().map_or(wire_span, |s| s.2.clone()),
            "limit".into(),
            format!(
                "the guarantees add up to {total} bit/s, more than the wire's {capacity} bit/s: \
                 they cannot all be met when the wire is congested ({})",
                listed.join(", ")
            ),
            Some(
                "lower the guarantees, or raise [wire] bits_per_second if the wire is faster"
                    .into(),
            ),
        );
    }
}
