//! The data path's cost of traffic limits and flow telemetry, per packet: `Snapshot::egress`
//! (classify, limits, flow record, seal with aws-lc-rs) of 1420-byte TCP packets over 1024
//! flows, with both off (the reference, same run), limits on (checked, never binding),
//! telemetry on at 1/1 and 1/100, and both. bench/governance.sh prints the overheads.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use warden_enforcer::esp::{Engine, Limits, SaKeys};
use warden_enforcer::tunnel::flows::FlowSettings;
use warden_enforcer::tunnel::{Tunnel, TunnelConfig};

const POLICY: &str = r#"
version = 1
[[node]]
id = "node-a"
address = "192.0.2.1"
[[node]]
id = "node-b"
address = "192.0.2.2"
[[tenant]]
id = "acme"
[[segment]]
name = "web"
tenant = "acme"
cidrs = ["198.51.100.0/26"]
node = "node-a"
[[segment]]
name = "db"
tenant = "acme"
cidrs = ["198.51.100.64/26"]
node = "node-b"
[[rule]]
from = "web"
to = "db"
proto = "tcp"
ports = [5432]
"#;

const LIMITS: &str = r#"
[wire]
bits_per_second = "400G"
[[limit]]
tenant = "acme"
bits_per_second = "200G"
packets_per_second = 1_000_000_000
new_connections_per_second = 1_000_000
guaranteed_bits_per_second = "100G"
[[limit]]
from = "web"
to = "db"
packets_per_second = 1_000_000_000
"#;

/// A 1420-byte TCP ACK from web to db, source port `sport`.
fn packet(sport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 1420];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&1420u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[198, 51, 100, 10]);
    p[16..20].copy_from_slice(&[198, 51, 100, 70]);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&5432u16.to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x10; // ACK
    p
}

fn tunnel(limits: bool, sampling: Option<u32>) -> Tunnel {
    let t = Tunnel::new(
        TunnelConfig {
            node: "node-a".into(),
            engine: Engine::AwsLc,
            workers: 1,
            limits: Limits {
                hard_packets: u64::MAX,
                soft_packets: u64::MAX,
                hard_bytes: u64::MAX,
                soft_bytes: u64::MAX,
                ..Limits::default()
            },
            esp_port: 4500,
        },
        None,
    );
    let text = if limits {
        format!("{POLICY}{LIMITS}")
    } else {
        POLICY.to_owned()
    };
    t.set_policy(&warden_policy::parse(&text, "bench.toml").unwrap());
    let keys = vec![SaKeys {
        key: zeroize::Zeroizing::new([0x11; 32]),
        salt: [1, 2, 3, 4],
    }];
    t.set_outbound("node-b", "acme", 1, 1 << 8, keys, Instant::now())
        .unwrap();
    if let Some(n) = sampling {
        t.enable_flows(FlowSettings {
            sampling: n,
            max_flows: 65_536,
        });
    }
    t
}

fn bench(c: &mut Criterion) {
    let packets: Vec<Vec<u8>> = (0..1024u16).map(|i| packet(40_000 + i)).collect();
    let mut g = c.benchmark_group("egress");
    g.throughput(Throughput::Elements(1));
    for (name, limits, sampling) in [
        ("off", false, None),
        ("limits", true, None),
        ("telemetry-1", false, Some(1)),
        ("telemetry-100", false, Some(100)),
        ("limits+telemetry-1", true, Some(1)),
    ] {
        let t = tunnel(limits, sampling);
        let mut out = vec![0u8; 2048];
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let snap = t.snapshot();
                black_box(
                    snap.egress(0, Instant::now(), &packets[i], &mut out)
                        .unwrap(),
                )
            })
        });
        if let Some(f) = t.flows() {
            assert_eq!(f.lost(), 0);
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
