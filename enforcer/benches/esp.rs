//! ESP seal and open rates per engine at 64, 1420 and 9000 bytes, next to the raw AES-256-GCM
//! seal of the same library in the same run. `cargo bench -p warden-enforcer --bench esp`;
//! figures in docs/performance.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use warden_enforcer::esp::{Engine, Inbound, Limits, Outbound, SaKeys};

const SIZES: [usize; 3] = [64, 1420, 9000];

fn keys() -> SaKeys {
    SaKeys {
        key: zeroize::Zeroizing::new([0x11; 32]),
        salt: [1, 2, 3, 4],
    }
}

fn rates(c: &mut Criterion) {
    for engine in Engine::ALL {
        let mut g = c.benchmark_group(format!("{engine}"));
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            let raw = engine.key(&[0x11; 32]);
            let mut buf = vec![0u8; size];
            let mut n: u64 = 0;
            g.bench_with_input(BenchmarkId::new("raw-seal", size), &size, |b, _| {
                b.iter(|| {
                    n += 1;
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&n.to_be_bytes());
                    black_box(raw.seal(nonce, b"aad-twelve-b", &mut buf).unwrap())
                })
            });
            let mut out = Outbound::with_engine(
                engine,
                7,
                &keys(),
                Limits {
                    hard_packets: u64::MAX,
                    soft_packets: u64::MAX,
                    ..Limits::default()
                },
            );
            let inner = vec![0x45u8; size];
            let mut packet = vec![0u8; Outbound::sealed_len(size)];
            g.bench_with_input(BenchmarkId::new("esp-seal", size), &size, |b, _| {
                b.iter(|| black_box(out.seal(&inner, 4, &mut packet).unwrap()))
            });
            // Open: a fresh inbound SA per batch of pre-sealed packets (each opens once).
            let mut o = Outbound::with_engine(engine, 7, &keys(), Limits::default());
            let sealed: Vec<Vec<u8>> = (0..2048)
                .map(|_| {
                    let mut p = vec![0u8; Outbound::sealed_len(size)];
                    o.seal(&inner, 4, &mut p).unwrap();
                    p
                })
                .collect();
            g.throughput(Throughput::Bytes((size * sealed.len()) as u64));
            g.bench_with_input(BenchmarkId::new("esp-open-2048", size), &size, |b, _| {
                b.iter_batched(
                    || (Inbound::with_engine(engine, 7, &keys()), sealed.clone()),
                    |(mut inb, mut ps)| {
                        for p in &mut ps {
                            black_box(inb.open(p).unwrap());
                        }
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
        }
        g.finish();
    }
}

criterion_group!(benches, rates);
criterion_main!(benches);
