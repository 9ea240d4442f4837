//! Audit store figures, each next to a reference measured in the same run
//! (run by bench/audit.sh; prints `key value` lines):
//! - durable appends/s with group commit (64 writers) vs. raw fsyncs/s of the same disk
//!   (256-byte append + fdatasync in a loop), and vs. one entry per batch;
//! - inclusion and consistency proof generation + verification from the on-disk tree as the
//!   log grows from 10^3 to 10^7 entries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_audit::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use warden_audit::store::{Appender, AppenderConfig, Store};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let max: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(10_000_000);
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).unwrap();
    let entry = vec![b'x'; 200];

    // Reference: raw durable appends of the disk.
    let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed() < Duration::from_secs(3) && n < 2000 {
        f.write_all(&[0u8; 256]).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    println!(
        "raw_fsyncs_per_s {:.0}",
        f64::from(n) / t.elapsed().as_secs_f64()
    );

    // One entry per batch.
    let (store, _) = Store::open(&dir.path().join("single")).unwrap();
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed() < Duration::from_secs(3) && n < 2000 {
        store.append_batch(&[&entry]).unwrap();
        n += 1;
    }
    println!(
        "single_appends_per_s {:.0}",
        f64::from(n) / t.elapsed().as_secs_f64()
    );
    drop(store);

    // Group commit: 64 writers, blocking appends.
    let (store, _) = Store::open(&dir.path().join("group")).unwrap();
    let store = Arc::new(store);
    let (appender, handle) =
        Appender::spawn(Arc::clone(&store), AppenderConfig::default()).unwrap();
    let t = Instant::now();
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let a = appender.clone();
            let e = entry.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < Duration::from_secs(3) {
                    a.append(e.clone()).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let secs = t.elapsed().as_secs_f64();
    let stats = handle.shutdown();
    println!("group_appends_per_s {:.0}", total as f64 / secs);
    println!(
        "group_entries_per_batch {:.1}",
        stats.entries as f64 / stats.batches.max(1) as f64
    );
    drop(appender);
    drop(store);

    // Proofs from disk as the log grows.
    let (store, _) = Store::open(&dir.path().join("grow")).unwrap();
    let batch: Vec<Vec<u8>> = (0..4096).map(|_| entry.clone()).collect();
    let mut size = 1_000u64;
    while size <= max {
        while store.len() < size {
            let want = (size - store.len()).min(4096) as usize;
            store.append_batch(&batch[..want]).unwrap();
        }
        let root = store.root(size).unwrap();
        let old = size / 2;
        let old_root = store.root(old).unwrap();
        let leaf = leaf_hash(&entry);
        let (mut gi, mut vi, mut gc, mut vc) = (vec![], vec![], vec![], vec![]);
        for i in 0..200u64 {
            let seq = (i * 7919) % size;
            let t = Instant::now();
            let p = store.inclusion_proof(seq, size).unwrap();
            gi.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            verify_inclusion(&leaf, seq, size, &p, &root).unwrap();
            vi.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let c = store.consistency_proof(old, size).unwrap();
            gc.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            verify_consistency(old, size, &old_root, &root, &c).unwrap();
            vc.push(t.elapsed().as_secs_f64() * 1e6);
        }
        println!(
            "proofs_us {size} {:.1} {:.1} {:.1} {:.1}",
            median(gi),
            median(vi),
            median(gc),
            median(vc)
        );
        size *= 10;
    }
}
