//! Fuzz the policy parser and validator (`warden_policy::parse`) with arbitrary text, and
//! compile whatever passes into a classifier, an nftables plan and the data path's limiter.
//! The input is tried twice: as a whole document, and as the body of a `[[limit]]` table
//! (and what follows it) after a fixed valid policy, so that the limit checks and the quantity
//! parser are reached without the fuzzer having to invent a whole policy first. Nothing may
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

const BASE: &str = r#"version = 1
[wire]
bits_per_second = "10G"
[[node]]
id = "a"
address = "192.0.2.1"
[[tenant]]
id = "acme"
[[tenant]]
id = "globex"
[[segment]]
name = "web"
tenant = "acme"
cidrs = ["198.51.100.0/28"]
node = "a"
[[segment]]
name = "db"
tenant = "acme"
cidrs = ["198.51.100.16/28"]
[[rule]]
from = "web"
to = "db"
proto = "any"
[[limit]]
"#;

fn exercise(text: &str) {
    if let Ok(policy) = warden_policy::parse(text, "fuzz.toml") {
        let classifier = policy.classifier();
        let _ = classifier.classify(
            "198.51.100.1".parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
            "203.0.113.1".parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
            6,
            443,
        );
        let _ = policy.nft_plan(None);
        for rule in &policy.rules {
            let _ = policy.describe(rule);
        }
        for limit in &policy.limits {
            let _ = policy.describe_limit(limit);
        }
        let limiter = warden_enforcer::tunnel::limits::Limiter::new(&policy);
        for t in 0..policy.tenants.len() {
            let _ = limiter.check(1_000_000, t, 0, 1, 1500, true);
            let _ = limiter.check(u64::MAX, t, 1, 0, u64::MAX, false);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        exercise(text);
        exercise(&format!("{BASE}{text}"));
    }
});
