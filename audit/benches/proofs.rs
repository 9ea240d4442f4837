//! Merkle proof generation and verification on an in-memory tree of 10^3 .. 10^7 leaves:
//! inclusion of the middle leaf, consistency from half the size. Generation reads O(log n)
//! nodes through `NodeSource`; verification is O(log n) hashes and allocates nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use warden_audit::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency, verify_inclusion,
    MemoryTree,
};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("merkle");
    let mut tree = MemoryTree::new();
    for n in [1_000u64, 10_000, 100_000, 1_000_000, 10_000_000] {
        while tree.len() < n {
            tree.push(leaf_hash(&tree.len().to_le_bytes()));
        }
        let (mid, old) = (n / 2, n / 2);
        let leaf = leaf_hash(&mid.to_le_bytes());
        let (new_root, old_root) = (root(&tree, n).unwrap(), root(&tree, old).unwrap());
        let inclusion = inclusion_proof(&tree, mid, n).unwrap();
        let consistency = consistency_proof(&tree, old, n).unwrap();
        verify_inclusion(&leaf, mid, n, &inclusion, &new_root).unwrap();
        verify_consistency(old, n, &old_root, &new_root, &consistency).unwrap();

        g.bench_with_input(BenchmarkId::new("root", n), &n, |b, &n| {
            b.iter(|| root(&tree, black_box(n)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("inclusion_proof", n), &n, |b, &n| {
            b.iter(|| inclusion_proof(&tree, black_box(mid), n).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("verify_inclusion", n), &n, |b, &n| {
            b.iter(|| verify_inclusion(&leaf, black_box(mid), n, &inclusion, &new_root).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("consistency_proof", n), &n, |b, &n| {
            b.iter(|| consistency_proof(&tree, black_box(old), n).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("verify_consistency", n), &n, |b, &n| {
            b.iter(|| {
                verify_consistency(black_box(old), n, &old_root, &new_root, &consistency).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
