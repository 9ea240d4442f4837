//! Compile and apply time of a 10,000-rule policy, next to `nft -f` loading the identical
//! ruleset (the reference, same run). Run inside a network namespace as root:
//! `bash bench/policy.sh` does it. Prints one line per figure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let rules: usize = std::env::args()
        .nth(1)
        .map_or(10_000, |a| a.parse().expect("rule count"));
    let runs = 5;
    let text = warden_policy::synthetic::policy_text(rules);

    let mut compile = Vec::new();
    let mut plan = None;
    for _ in 0..runs {
        let t = Instant::now();
        let policy = warden_policy::parse(&text, "bench.toml").unwrap();
        let p = policy.nft_plan(None);
        compile.push(t.elapsed());
        plan = Some(p);
    }
    let plan = plan.unwrap();

    let mut apply = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        warden_enforcer::nft::apply(&plan).unwrap();
        apply.push(t.elapsed());
    }
    // The reference: the nft CLI loading the same table from its own listing.
    let listing = Command::new("nft")
        .args(["list", "table", "inet", "warden"])
        .output()
        .unwrap();
    assert!(listing.status.success());
    let dir = std::env::temp_dir().join(format!("warden-apply-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ruleset.nft");
    let mut script = b"add table inet warden\ndelete table inet warden\n".to_vec();
    script.extend_from_slice(&listing.stdout);
    std::fs::write(&file, script).unwrap();
    let mut nft = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let st = Command::new("nft").arg("-f").arg(&file).status().unwrap();
        nft.push(t.elapsed());
        assert!(st.success());
    }
    warden_enforcer::nft::remove().unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let elements = warden_enforcer::nft::validate(&plan)
        .unwrap()
        .element_count();
    println!("rules {rules}, map elements {elements}, median of {runs} runs");
    println!(
        "compile (parse + validate + plan): {:.1} ms",
        ms(median(compile))
    );
    let (a, n) = (median(apply), median(nft));
    println!("apply (warden-enforcer, staged swap): {:.1} ms", ms(a));
    println!("reference: nft -f of the same table: {:.1} ms", ms(n));
    println!(
        "ratio (nft time / warden time): {:.2}x",
        n.as_secs_f64() / a.as_secs_f64()
    );
}
