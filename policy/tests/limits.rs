//! Traffic limits: the example's limits validate into what they say; every check on a limit
//! rejects what it should, at the right place, with a hint; limits that cannot be met (a
//! guarantee above its own cap, guarantees that add up to more than the wire) are refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use warden_policy::limits::parse_quantity;
use warden_policy::{parse, LimitScope, OverLimit, Rate};

const EXAMPLE: &str = include_str!("data/example.toml");
const FILE: &str = "policy.toml";

fn with(extra: &str) -> String {
    format!("{EXAMPLE}\n{extra}")
}

/// The 1-based line and column of the last occurrence of `needle` in `text`.
fn at(text: &str, needle: &str) -> (usize, usize) {
    let off = text
        .rfind(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// `extra` appended to the example must fail with a diagnostic at the last `needle` whose
/// message contains `message`, with a hint.
fn rejects(extra: &str, needle: &str, message: &str) {
    let text = with(extra);
    let err = parse(&text, FILE).expect_err("the policy must be rejected");
    let found = err
        .diagnostics
        .iter()
        .find(|d| d.message.contains(message))
        .unwrap_or_else(|| panic!("no diagnostic with {message:?} in:\n{err}"));
    assert_eq!(
        (found.line, found.column),
        at(&text, needle),
        "wrong position for {message:?}:\n{err}"
    );
    assert!(found.hint.is_some(), "no hint for {message:?}:\n{err}");
}

#[test]
fn limits_validate_into_what_they_say() {
    let p = parse(
        &with(
            r#"
[wire]
bits_per_second = "10G"

[[limit]]
tenant = "globex"
bits_per_second = "2.5G"
burst_bytes = "4Mi"
packets_per_second = 300_000
new_connections_per_second = 500
burst_connections = 100
guaranteed_bits_per_second = "1G"
action = "mark"

[[limit]]
from = "acme-web"
to = "acme-db"
packets_per_second = 1000
"#,
        ),
        FILE,
    )
    .unwrap();
    assert_eq!(p.wire_bits_per_second, Some(10_000_000_000));
    assert_eq!(p.limits.len(), 2);
    let g = &p.limits[0];
    assert_eq!(g.scope, LimitScope::Tenant(1));
    assert_eq!(
        g.bits,
        Some(Rate {
            per_second: 2_500_000_000,
            burst: 4 << 20
        })
    );
    // Default bursts: 1/100 s of packets (at least 64); the connection burst as written.
    assert_eq!(
        g.packets,
        Some(Rate {
            per_second: 300_000,
            burst: 3000
        })
    );
    assert_eq!(
        g.connections,
        Some(Rate {
            per_second: 500,
            burst: 100
        })
    );
    assert_eq!(g.guaranteed_bits, Some(1_000_000_000));
    assert_eq!(g.action, OverLimit::Mark);
    let pair = &p.limits[1];
    assert_eq!(pair.scope, LimitScope::Pair { from: 0, to: 1 });
    assert_eq!(
        pair.packets,
        Some(Rate {
            per_second: 1000,
            burst: 64
        })
    );
    assert_eq!((pair.bits, pair.connections), (None, None));
    assert_eq!(pair.action, OverLimit::Drop);
}

#[test]
fn the_default_byte_burst_is_10_ms_and_at_least_64_kib() {
    let p = parse(
        &with("[[limit]]\ntenant = \"acme\"\nbits_per_second = \"8G\"\n"),
        FILE,
    )
    .unwrap();
    assert_eq!(p.limits[0].bits.unwrap().burst, 10_000_000);
    let p = parse(
        &with("[[limit]]\ntenant = \"acme\"\nbits_per_second = \"8M\"\n"),
        FILE,
    )
    .unwrap();
    assert_eq!(p.limits[0].bits.unwrap().burst, 64 << 10);
}

#[test]
fn quantities_take_units_and_refuse_the_rest() {
    assert_eq!(parse_quantity("2.5G"), Ok(2_500_000_000));
    assert_eq!(parse_quantity("64Ki"), Ok(65_536));
    assert_eq!(parse_quantity("1_000"), Ok(1000));
    assert_eq!(parse_quantity(" 3 M "), Ok(3_000_000));
    for bad in [
        "",
        "G",
        "1.5",
        "2Q",
        "1.2.3",
        "99999999999999999999",
        "20000000T",
        "x1",
    ] {
        assert!(parse_quantity(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn scope_mistakes_are_reported_where_they_are() {
    rejects(
        "[[limit]]\ntenant = \"initech\"\npackets_per_second = 1\n",
        "\"initech\"",
        "unknown tenant \"initech\"",
    );
    rejects(
        "[[limit]]\nfrom = \"acme-web\"\nto = \"nowhere\"\npackets_per_second = 1\n",
        "\"nowhere\"",
        "unknown segment \"nowhere\"",
    );
    rejects(
        "[[limit]]\ntenant = \"acme\"\nfrom = \"acme-web\"\nto = \"acme-db\"\npackets_per_second = 1\n",
        "\"acme\"\nfrom",
        "not both",
    );
    rejects(
        "[[limit]]\nfrom = \"acme-web\"\npackets_per_second = 1\n",
        "\"acme-web\"\npackets",
        "needs both from and to",
    );
    // acme-db -> globex-batch: no rule either way.
    rejects(
        "[[limit]]\nfrom = \"acme-db\"\nto = \"globex-batch\"\npackets_per_second = 1\n",
        "\"acme-db\"\nto",
        "the limit would never apply",
    );
    rejects(
        "[[limit]]\ntenant = \"acme\"\npackets_per_second = 1\n\n[[limit]]\ntenant = \"acme\"\nbits_per_second = \"1G\"\n",
        "\"acme\"\nbits",
        "already limits tenant \"acme\"",
    );
    rejects(
        "[[limit]]\ntenant = \"acme\"\n",
        "\"acme\"\n",
        "the limit sets no rate",
    );
}

#[test]
fn rate_mistakes_are_reported_where_they_are() {
    rejects(
        "[[limit]]\ntenant = \"acme\"\npackets_per_second = 0\n",
        "0\n",
        "0 is too small",
    );
    rejects(
        "[[limit]]\ntenant = \"acme\"\nbits_per_second = \"fast\"\n",
        "\"fast\"",
        "is not a unit",
    );
    rejects(
        "[[limit]]\ntenant = \"acme\"\nbits_per_second = \"20T\"\n",
        "\"20T\"",
        "above the largest value",
    );
    rejects(
        "[[limit]]\ntenant = \"acme\"\nbits_per_second = -5\n",
        "-5",
        "is negative",
    );
    rejects(
        "[[limit]]\ntenant = \"acme\"\nburst_packets = 10\npackets_per_second = 5\nburst_bytes = 9000\n",
        "9000",
        "burst_bytes without bits_per_second",
    );
    rejects(
        "[[limit]]\ntenant = \"acme\"\nbits_per_second = \"1G\"\nburst_bytes = 1000\n",
        "1000\n",
        "a burst of 1000 cannot be met",
    );
    rejects(
        "[[limit]]\ntenant = \"acme\"\npackets_per_second = 5\naction = \"shape\"\n",
        "\"shape\"",
        "unknown action \"shape\"",
    );
}

#[test]
fn guarantees_that_cannot_be_met_are_refused() {
    rejects(
        "[[limit]]\ntenant = \"acme\"\nguaranteed_bits_per_second = \"1G\"\n",
        "\"1G\"",
        "a guarantee needs the wire's capacity",
    );
    rejects(
        "[wire]\nbits_per_second = \"10G\"\n[[limit]]\ntenant = \"acme\"\nbits_per_second = \"1G\"\nguaranteed_bits_per_second = \"2G\"\n",
        "\"2G\"",
        "the same limit caps the traffic at 1000000000 bit/s",
    );
    rejects(
        "[wire]\nbits_per_second = \"10G\"\n\
         [[limit]]\ntenant = \"acme\"\nguaranteed_bits_per_second = \"6G\"\n\
         [[limit]]\ntenant = \"globex\"\nguaranteed_bits_per_second = \"5G\"\n",
        "\"5G\"",
        "the guarantees add up to 11000000000 bit/s, more than the wire's 10000000000 bit/s",
    );
    rejects(
        "[wire]\nbits_per_second = \"10G\"\n\
         [[limit]]\ntenant = \"acme\"\nbits_per_second = \"1G\"\n\
         [[limit]]\nfrom = \"acme-web\"\nto = \"acme-db\"\nguaranteed_bits_per_second = \"2G\"\n",
        "\"2G\"",
        "more than the tenant's cap of 1000000000 bit/s",
    );
    // Exactly the wire is fine.
    parse(
        &with(
            "[wire]\nbits_per_second = \"10G\"\n\
             [[limit]]\ntenant = \"acme\"\nguaranteed_bits_per_second = \"6G\"\n\
             [[limit]]\ntenant = \"globex\"\nguaranteed_bits_per_second = \"4G\"\n",
        ),
        FILE,
    )
    .unwrap();
}

#[test]
fn a_policy_without_limits_has_none() {
    let p = parse(EXAMPLE, FILE).unwrap();
    assert!(p.limits.is_empty());
    assert_eq!(p.wire_bits_per_second, None);
}
