//! Fuzz the policy parser and validator (`warden_policy::parse`) with arbitrary text, and
//! compile whatever passes into a classifier and an nftables plan. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
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
        }
    }
});
