//! Every validation check rejects what it should, at the right line and column, with a hint;
//! the example policy passes and classifies as written.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::IpAddr;

use warden_policy::{parse, DenyReason, Proto, Verdict, MAX_POLICY_BYTES};

const EXAMPLE: &str = include_str!("data/example.toml");
const FILE: &str = "policy.toml";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The 1-based line and column of the first occurrence of `needle` in `text`.
fn at(text: &str, needle: &str) -> (usize, usize) {
    let off = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// `text` must fail with a diagnostic at `needle` whose message contains `message`.
fn rejects(text: &str, needle: &str, message: &str) {
    let err = parse(text, FILE).expect_err("the policy must be rejected");
    let (line, column) = at(text, needle);
    let found = err
        .diagnostics
        .iter()
        .find(|d| d.message.contains(message))
        .unwrap_or_else(|| panic!("no diagnostic with {message:?} in:\n{err}"));
    assert_eq!(
        (found.line, found.column),
        (line, column),
        "wrong position for {message:?}:\n{err}"
    );
    assert_eq!(found.file, FILE);
    assert!(found.hint.is_some(), "no hint for {message:?}");
    let shown = err.to_string();
    assert!(
        shown.contains(&format!("{FILE}:{line}:{column}: ")),
        "{shown}"
    );
    assert!(shown.contains("hint: "), "{shown}");
}

#[test]
fn the_example_is_valid() {
    let p = parse(EXAMPLE, FILE).unwrap();
    assert_eq!(p.version, 3);
    assert_eq!(
        (
            p.nodes.len(),
            p.tenants.len(),
            p.segments.len(),
            p.rules.len()
        ),
        (2, 2, 3, 3)
    );
    assert_eq!(p.rules[0].ports.len(), 2);
    assert_eq!(
        p.describe(&p.rules[0]),
        "acme-web -> acme-db tcp/5432,8000-8080"
    );
    assert!(p.digest_hex().starts_with("sha256:"));
    // The digest is over the exact bytes.
    let q = parse(&format!("{EXAMPLE}\n"), FILE).unwrap();
    assert_ne!(p.digest, q.digest);
}

#[test]
fn the_classifier_follows_the_example() {
    let p = parse(EXAMPLE, FILE).unwrap();
    let c = p.classifier();
    let web = ip("198.51.100.10");
    let db = ip("198.51.100.70");
    let batch = ip("203.0.113.5");
    let Verdict::Allow(a) = c.classify(web, db, 6, 5432) else {
        panic!("web -> db:5432 must pass")
    };
    assert_eq!((a.src_segment, a.dst_segment, a.rule), (0, 1, 0));
    assert_eq!(a.peer_node, Some(1));
    assert_eq!(a.tenant, 0);
    assert!(matches!(c.classify(web, db, 6, 8080), Verdict::Allow(_)));
    assert!(matches!(
        c.classify(web, db, 6, 8081),
        Verdict::Deny(DenyReason::NoRule { .. })
    ));
    assert!(matches!(
        c.classify(web, db, 17, 5432),
        Verdict::Deny(DenyReason::NoRule { .. })
    ));
    assert!(matches!(c.classify(web, db, 1, 0), Verdict::Allow(_)));
    // Rules are directed.
    assert!(matches!(c.classify(db, web, 6, 5432), Verdict::Deny(_)));
    // The granted cross-tenant rule, and nothing more.
    let Verdict::Allow(x) = c.classify(batch, web, 6, 443) else {
        panic!("globex -> acme:443 must pass")
    };
    assert_eq!((x.tenant, x.peer_tenant, x.peer_node), (1, 0, Some(0)));
    assert!(matches!(c.classify(batch, db, 6, 5432), Verdict::Deny(_)));
    assert!(matches!(c.classify(web, batch, 6, 443), Verdict::Deny(_)));
    // Addresses outside every segment, and IPv6.
    assert_eq!(
        c.classify(ip("192.0.2.99"), db, 6, 5432),
        Verdict::Deny(DenyReason::UnknownSource)
    );
    assert_eq!(
        c.classify(web, ip("198.51.100.200"), 6, 5432),
        Verdict::Deny(DenyReason::UnknownDestination)
    );
    assert_eq!(c.segment_of(ip("2001:db8:a::1")), Some(0));
    assert_eq!(c.segment_of(ip("2001:db8:b::1")), None);
}

#[test]
fn the_nft_plan_lists_every_rule() {
    let p = parse(EXAMPLE, FILE).unwrap();
    let wire = warden_policy::WireSettings {
        interface: "wire0".into(),
        esp_udp_port: 4500,
        tcp_ports: vec![8443],
    };
    let plan = p.nft_plan(Some(&wire));
    assert_eq!(plan.version, 3);
    assert_eq!(plan.flows.len(), 3);
    assert_eq!(plan.flows[0].name, "r0");
    assert_eq!(plan.flows[0].ports, vec![5432..=5432, 8000..=8080]);
    assert_eq!(plan.flows[1].proto, Proto::Icmp);
    assert!(plan.flows[1].ports.is_empty());
    let w = plan.wire.unwrap();
    assert_eq!(w.appliances, vec![ip("192.0.2.1"), ip("192.0.2.2")]);
}

#[test]
fn unknown_names_are_caught() {
    rejects(
        &EXAMPLE.replace(
            "to = \"acme-db\"\nproto = \"icmp\"",
            "to = \"acme-dbx\"\nproto = \"icmp\"",
        ),
        "\"acme-dbx\"",
        "unknown segment \"acme-dbx\"",
    );
    rejects(
        &EXAMPLE.replace("tenant = \"globex\"", "tenant = \"globx\""),
        "\"globx\"",
        "unknown tenant",
    );
    rejects(
        &EXAMPLE.replace("node = \"node-b\"", "node = \"node-c\""),
        "\"node-c\"",
        "unknown node",
    );
    rejects(
        &EXAMPLE.replace("send_to = [\"acme\"]", "send_to = [\"acne\"]"),
        "\"acne\"",
        "unknown tenant",
    );
}

#[test]
fn overlapping_cidrs_are_caught() {
    // Between tenants.
    rejects(
        &EXAMPLE.replace("\"203.0.113.0/25\"", "\"198.51.100.32/27\""),
        "\"198.51.100.32/27\"",
        "CIDRs overlap between tenants \"globex\" and \"acme\"",
    );
    // Within a tenant, too: an address names one segment.
    rejects(
        &EXAMPLE.replace("\"198.51.100.64/26\"", "\"198.51.100.0/24\""),
        "\"198.51.100.0/24\"",
        "of the same tenant",
    );
}

#[test]
fn bad_ports_are_caught() {
    rejects(
        &EXAMPLE.replace("ports = [443]", "ports = []"),
        "[]",
        "the port list is empty",
    );
    rejects(
        &EXAMPLE.replace("\"8000-8080\"", "\"8080-8000\""),
        "\"8080-8000\"",
        "the range 8080-8000 is inverted",
    );
    rejects(
        &EXAMPLE.replace("ports = [443]", "ports = [0]"),
        "0]",
        "0 is not a port",
    );
    rejects(
        &EXAMPLE.replace("ports = [443]", "ports = [70000]"),
        "70000",
        "70000 is not a port",
    );
    rejects(
        &EXAMPLE.replace("ports = [443]", "ports = [\"https\"]"),
        "\"https\"",
        "is not a port",
    );
    rejects(
        &EXAMPLE.replace("proto = \"icmp\"", "proto = \"icmp\"\nports = [1]"),
        "[1]",
        "icmp has no ports",
    );
    rejects(
        &EXAMPLE.replace("proto = \"tcp\"\nports = [443]", "proto = \"udp\""),
        "\"udp\"",
        "a udp rule needs ports",
    );
    rejects(
        &EXAMPLE.replace("proto = \"icmp\"", "proto = \"sctp\""),
        "\"sctp\"",
        "unknown protocol",
    );
}

#[test]
fn duplicates_are_caught() {
    rejects(
        &EXAMPLE.replace("name = \"globex-batch\"", "name = \"acme-web\""),
        "\"acme-web\"\ntenant = \"globex\"",
        "segment \"acme-web\" is defined twice",
    );
    rejects(
        &EXAMPLE.replace("id = \"globex\"", "id = \"acme\""),
        "\"acme\"\nsend_to",
        "tenant \"acme\" is defined twice",
    );
    rejects(
        &EXAMPLE.replace("id = \"node-b\"", "id = \"node-a\""),
        "\"node-a\"\naddress = \"192.0.2.2\"",
        "node \"node-a\" is defined twice",
    );
    rejects(
        &EXAMPLE.replace("address = \"192.0.2.2\"", "address = \"192.0.2.1\""),
        "\"192.0.2.1\"\n\n[[tenant]]",
        "already node[0]'s",
    );
    let twice = format!("{EXAMPLE}\n[[rule]]\nfrom = \"acme-web\"\nto = \"acme-db\"\nproto = \"tcp\"\nports = [\"8080-9000\"]\n");
    rejects(
        &twice,
        "\"acme-web\"\nto = \"acme-db\"\nproto = \"tcp\"\nports = [\"8080",
        "repeats flows rule[0]",
    );
}

#[test]
fn crossing_tenants_needs_both_grants() {
    rejects(
        &EXAMPLE.replace("accept_from = [\"globex\"]", ""),
        "\"globex-batch\"\nto",
        "tenant \"acme\" does not list \"globex\" in accept_from",
    );
    rejects(
        &EXAMPLE.replace("send_to = [\"acme\"]", ""),
        "\"globex-batch\"\nto",
        "tenant \"globex\" does not list \"acme\" in send_to",
    );
}

#[test]
fn values_and_fields_are_checked() {
    rejects(
        &EXAMPLE.replace("version = 3", "version = 0"),
        "0\n",
        "is not a policy version",
    );
    rejects(
        &EXAMPLE.replace("\"198.51.100.64/26\"", "\"198.51.100.65/26\""),
        "\"198.51.100.65/26\"",
        "has host bits set",
    );
    rejects(
        &EXAMPLE.replace("\"198.51.100.64/26\"", "\"198.51.100/26\""),
        "\"198.51.100/26\"",
        "is not a CIDR",
    );
    rejects(
        &EXAMPLE.replace("address = \"192.0.2.2\"", "address = \"node-b.example\""),
        "\"node-b.example\"",
        "is not an IP address",
    );
    rejects(
        &EXAMPLE.replace("id = \"acme\"", "id = \"Acme\""),
        "\"Acme\"",
        "is not a valid name",
    );
    rejects(
        &EXAMPLE.replace("cidrs = [\"203.0.113.0/25\"]", "cidrs = []"),
        "[]",
        "at least one CIDR",
    );
    rejects(
        &EXAMPLE.replace("proto = \"icmp\"", "proto = \"icmp\"\ncolour = \"red\""),
        "colour",
        "unknown field `colour`",
    );
}

#[test]
fn wire_addresses_stay_out_of_segments() {
    let err = parse(&EXAMPLE.replace("192.0.2.2", "203.0.113.9"), FILE).unwrap_err();
    assert!(
        err.to_string()
            .contains("lies inside segment \"globex-batch\""),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = EXAMPLE
        .replace("ports = [443]", "ports = [0]")
        .replace("node = \"node-b\"", "node = \"node-c\"");
    let err = parse(&text, FILE).unwrap_err();
    assert_eq!(err.diagnostics.len(), 2, "{err}");
    assert!(err.to_string().ends_with("2 problems"));
}

#[test]
fn oversized_documents_are_refused_before_parsing() {
    let big = format!("{EXAMPLE}#{}", "x".repeat(MAX_POLICY_BYTES));
    let err = parse(&big, FILE).unwrap_err();
    assert!(err.to_string().contains("the limit is"), "{err}");
}

#[test]
fn a_syntax_error_has_a_position() {
    let err = parse("version = 3\n[[rule]\n", FILE).unwrap_err();
    let d = &err.diagnostics[0];
    assert_eq!(d.line, 2, "{err}");
}
