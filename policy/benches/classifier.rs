//! Classifier lookups per second at 100, 10k and 100k rules; parse + validate + compile time
//! of a 10k-rule policy. `cargo bench -p warden-policy --bench classifier`; figures in
//! docs/performance.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use warden_policy::synthetic::{policy_text, segment_base, SEGMENTS};

/// Packets hitting random segment pairs: a mix of allowed and denied.
fn packets(n: usize) -> Vec<(IpAddr, IpAddr, u8, u16)> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let s = segment_base((next() % SEGMENTS as u64) as usize);
            let d = segment_base((next() % SEGMENTS as u64) as usize);
            let proto = if next() % 2 == 0 { 6 } else { 17 };
            let port = 1000 + (next() % 40) as u16;
            (IpAddr::V4(s), IpAddr::V4(d), proto, port)
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let pkts = packets(4096);
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(pkts.len() as u64));
    for rules in [100usize, 10_000, 100_000] {
        let policy = warden_policy::parse(&policy_text(rules), "bench.toml").unwrap();
        assert_eq!(policy.rules.len(), rules);
        let classifier = policy.classifier();
        g.bench_with_input(BenchmarkId::from_parameter(rules), &classifier, |b, cl| {
            b.iter(|| {
                let mut allowed = 0usize;
                for (s, d, p, port) in &pkts {
                    if matches!(
                        cl.classify(*s, *d, *p, *port),
                        warden_policy::Verdict::Allow(_)
                    ) {
                        allowed += 1;
                    }
                }
                black_box(allowed)
            })
        });
    }
    g.finish();
    // The reference: a linear scan over the segments and rules as written (what a naive
    // first-match firewall does), same packets.
    let mut g = c.benchmark_group("linear-scan");
    g.throughput(Throughput::Elements(pkts.len() as u64));
    g.sample_size(10);
    for rules in [100usize, 10_000] {
        let policy = warden_policy::parse(&policy_text(rules), "bench.toml").unwrap();
        g.bench_with_input(BenchmarkId::from_parameter(rules), &policy, |b, p| {
            b.iter(|| {
                let mut allowed = 0usize;
                for (s, d, proto, port) in &pkts {
                    let seg = |a: &IpAddr| {
                        p.segments
                            .iter()
                            .position(|x| x.cidrs.iter().any(|n| n.contains(a)))
                    };
                    let (Some(from), Some(to)) = (seg(s), seg(d)) else {
                        continue;
                    };
                    let hit = p.rules.iter().any(|r| {
                        r.from == from
                            && r.to == to
                            && r.proto.number(false) == Some(*proto)
                            && r.ports.iter().any(|x| x.contains(*port))
                    });
                    allowed += usize::from(hit);
                }
                black_box(allowed)
            })
        });
    }
    g.finish();
}

fn compile(c: &mut Criterion) {
    let text = policy_text(10_000);
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("parse+validate 10k rules", |b| {
        b.iter(|| warden_policy::parse(black_box(&text), "bench.toml").unwrap())
    });
    // The reference: the same document through the TOML parser alone, untyped (no schema,
    // no checks); what any TOML-configured tool pays to read it.
    g.bench_function("toml only 10k rules", |b| {
        b.iter(|| black_box(&text).parse::<toml::Table>().unwrap())
    });
    let policy = warden_policy::parse(&text, "bench.toml").unwrap();
    g.bench_function("classifier 10k rules", |b| {
        b.iter(|| black_box(policy.classifier()))
    });
    g.bench_function("nft plan 10k rules", |b| {
        b.iter(|| black_box(policy.nft_plan(None)))
    });
    g.finish();
}

criterion_group!(benches, lookups, compile);
criterion_main!(benches);
