//! Store behaviour: round trips, proofs against the in-memory tree, limits, group commit and
//! a kill -9 crash test. Tampering and torn tails are in `tests_recovery.rs`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::*;
use crate::merkle::{self, MemoryTree};

/// 4 KiB segments, so a few hundred small entries span several.
pub(super) fn small() -> Options {
    Options {
        segment_bytes: 4096,
    }
}

/// Deterministic entries of varied length (18 to ~130 bytes).
pub(super) fn payload(i: u64) -> Vec<u8> {
    format!("entry-{i:08}|")
        .repeat(1 + (i % 9) as usize)
        .into_bytes()
}

pub(super) fn open(dir: &Path) -> (Store, Recovery) {
    Store::open_with(dir, small()).unwrap()
}

/// Appends entries `store.len() .. n` in batches of varying size.
pub(super) fn fill(store: &Store, n: u64) {
    let mut next = store.len();
    let mut batch = 1;
    while next < n {
        let end = (next + batch).min(n);
        let entries: Vec<Vec<u8>> = (next..end).map(payload).collect();
        assert_eq!(store.append_batch(&entries).unwrap(), next..end);
        next = end;
        batch = batch % 13 + 1;
    }
}

pub(super) fn memory_tree(n: u64) -> MemoryTree {
    let mut tree = MemoryTree::new();
    for i in 0..n {
        tree.push(merkle::leaf_hash(&payload(i)));
    }
    tree
}

pub(super) fn memory_root(n: u64) -> Hash {
    merkle::root(&memory_tree(n), n).unwrap()
}

fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("segments")).unwrap().count()
}

#[test]
fn store_round_trips_across_segment_rolls_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, rec) = open(tmp.path());
    assert!(rec.is_clean() && store.is_empty());
    fill(&store, 300);
    assert!(segment_count(tmp.path()) >= 5, "4 KiB segments must roll");
    for seq in 0..300 {
        assert_eq!(store.entry(seq).unwrap(), payload(seq));
    }
    let expected: Vec<Vec<u8>> = (40..260).map(payload).collect();
    assert_eq!(store.entries(40..260).unwrap(), expected);
    assert!(store.entries(5..5).unwrap().is_empty());
    let root = store.root(300).unwrap();
    drop(store);

    let (store, rec) = open(tmp.path());
    assert_eq!(
        rec,
        Recovery {
            entries: 300,
            ..Recovery::default()
        }
    );
    assert_eq!(store.root(300).unwrap(), root);
    assert_eq!(store.append_batch(&[b"after reopen"]).unwrap(), 300..301);
    assert_eq!(store.entry(300).unwrap(), b"after reopen");
    assert_eq!(store.entry(299).unwrap(), payload(299));
}

#[test]
fn store_no_segment_exceeds_the_roll_size() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    fill(&store, 500);
    for entry in std::fs::read_dir(tmp.path().join("segments")).unwrap() {
        assert!(entry.unwrap().metadata().unwrap().len() <= 4096);
    }
    // A record bigger than a segment still goes in, alone in a fresh segment.
    let big = vec![9u8; 10_000];
    let seq = store
        .append_batch(std::slice::from_ref(&big))
        .unwrap()
        .start;
    assert_eq!(store.entry(seq).unwrap(), big);
}

#[test]
fn store_limits_and_ranges_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    assert_eq!(store.append_batch::<Vec<u8>>(&[]).unwrap(), 0..0);
    let too_big = vec![0u8; MAX_ENTRY_BYTES + 1];
    assert!(matches!(
        store.append_batch(&[b"ok".to_vec(), too_big]),
        Err(StoreError::TooLarge { len }) if len == MAX_ENTRY_BYTES + 1
    ));
    assert_eq!(
        store.len(),
        0,
        "a batch with an oversized entry stores nothing"
    );
    let max = vec![1u8; MAX_ENTRY_BYTES];
    assert_eq!(
        store.append_batch(&[max.clone(), Vec::new()]).unwrap(),
        0..2
    );
    assert_eq!(store.entry(0).unwrap(), max);
    assert_eq!(store.entry(1).unwrap(), b"");
    assert!(matches!(
        store.entry(2),
        Err(StoreError::OutOfRange {
            index: 2,
            limit: 2,
            ..
        })
    ));
    assert!(matches!(
        store.entries(1..3),
        Err(StoreError::OutOfRange { .. })
    ));
    let many: Vec<Vec<u8>> = (0..10_001u32).map(|i| i.to_be_bytes().to_vec()).collect();
    store.append_batch(&many).unwrap();
    assert!(matches!(
        store.entries(2..10_003),
        Err(StoreError::RangeTooLarge { requested: 10_001 })
    ));
    assert_eq!(store.entries(3..10_003).unwrap().len(), 10_000);
    assert!(matches!(
        store.root(10_004),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        store.consistency_proof(5, 3),
        Err(StoreError::Tree { .. })
    ));
}

#[test]
fn store_roots_and_proofs_match_the_memory_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    assert_eq!(store.root(0).unwrap(), merkle::empty_root());
    let n = 70;
    fill(&store, n);
    let mem = memory_tree(n);
    for size in 1..=n {
        let root = store.root(size).unwrap();
        assert_eq!(root, merkle::root(&mem, size).unwrap(), "size {size}");
        for seq in (0..size).step_by(7).chain([size - 1]) {
            let proof = store.inclusion_proof(seq, size).unwrap();
            assert_eq!(proof, merkle::inclusion_proof(&mem, seq, size).unwrap());
            let leaf = store.leaf_hash(seq).unwrap();
            assert_eq!(leaf, merkle::leaf_hash(&payload(seq)));
            merkle::verify_inclusion(&leaf, seq, size, &proof, &root).unwrap();
        }
        for old in (1..=size).step_by(5) {
            let proof = store.consistency_proof(old, size).unwrap();
            let old_root = store.root(old).unwrap();
            merkle::verify_consistency(old, size, &old_root, &root, &proof).unwrap();
        }
    }
    assert!(matches!(
        store.inclusion_proof(n, n),
        Err(StoreError::OutOfRange { .. })
    ));
    assert_eq!(store.verify_all(|_, _| {}).unwrap(), memory_root(n));
}

#[test]
fn store_verify_all_reports_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open_with(tmp.path(), Options::default()).unwrap();
    let n = 200_005u64;
    let mut next = 0u64;
    while next < n {
        let end = (next + 4096).min(n);
        let batch: Vec<[u8; 8]> = (next..end).map(u64::to_be_bytes).collect();
        store.append_batch(&batch).unwrap();
        next = end;
    }
    let mut seen = Vec::new();
    let root = store
        .verify_all(|done, total| seen.push((done, total)))
        .unwrap();
    assert_eq!(seen, [(100_000, n), (200_000, n), (n, n)]);
    let mut mem = MemoryTree::new();
    (0..n).for_each(|i| mem.push(merkle::leaf_hash(&i.to_be_bytes())));
    assert_eq!(root, merkle::root(&mem, n).unwrap());
}

#[test]
fn store_group_commit_8_threads_get_contiguous_distinct_seqs() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let store = Arc::new(store);
    let (appender, handle) =
        Appender::spawn(Arc::clone(&store), AppenderConfig::default()).unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let appender = appender.clone();
            std::thread::spawn(move || {
                (0..500u64)
                    .map(|i| {
                        let seq = appender.append(payload(t * 1000 + i)).unwrap();
                        (seq, t * 1000 + i)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acked: Vec<(u64, u64)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let seqs: BTreeSet<u64> = acked.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs.len(), 4000);
    assert_eq!(
        seqs.iter().copied().collect::<Vec<_>>(),
        (0..4000).collect::<Vec<_>>()
    );
    for (seq, id) in acked.iter().step_by(37) {
        assert_eq!(store.entry(*seq).unwrap(), payload(*id));
    }
    let stats = handle.shutdown();
    eprintln!("group commit, 8 blocking threads x 500: {stats:?}");
    assert_eq!(stats.entries, 4000);
    // Each thread waits for its own fsync, so a batch holds at most 8 entries; a sync round
    // takes far longer than the other callers need to queue up for the next one, so batches
    // average several entries (measured: ~690 batches for 4000 entries on ext4).
    assert!(stats.batches <= 2000, "{stats:?}");
    assert_eq!(store.len(), 4000);
    assert!(matches!(
        appender.append(b"late".to_vec()),
        Err(StoreError::Closed)
    ));
}

#[test]
fn store_group_commit_pipelined_submits_share_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let store = Arc::new(store);
    let (appender, handle) =
        Appender::spawn(Arc::clone(&store), AppenderConfig::default()).unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let appender = appender.clone();
            std::thread::spawn(move || {
                let tickets: Vec<Ticket> = (0..500)
                    .map(|i| appender.submit(payload(t * 1000 + i)).unwrap())
                    .collect();
                tickets
                    .into_iter()
                    .map(|t| t.wait().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..4000).collect::<Vec<_>>());
    let stats = handle.shutdown();
    eprintln!("group commit, 8 pipelined threads x 500: {stats:?}");
    assert_eq!(stats.entries, 4000);
    assert!(stats.batches <= 400, "{stats:?}");
}

#[test]
fn store_appender_full_queue_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let store = Arc::new(store);
    let config = AppenderConfig {
        queue: 4,
        max_batch: 2,
    };
    let (appender, handle) = Appender::spawn(Arc::clone(&store), config).unwrap();
    let mut tickets = Vec::new();
    {
        // Stall the writer thread inside `append_batch`.
        let _stall = store.writer.lock().unwrap();
        let full = (0..10_000u64).find_map(|i| match appender.submit(payload(i)) {
            Ok(ticket) => {
                tickets.push(ticket);
                None
            }
            Err(e) => Some(e),
        });
        assert!(matches!(full, Some(StoreError::Full)), "{full:?}");
        assert!(tickets.len() <= 4 + 2, "queue plus one batch in hand");
    }
    let seqs: Vec<u64> = tickets.into_iter().map(|t| t.wait().unwrap()).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(matches!(
        appender.submit(vec![0; MAX_ENTRY_BYTES + 1]),
        Err(StoreError::TooLarge { .. })
    ));
    handle.shutdown();
    assert!(matches!(
        appender.submit(b"x".to_vec()),
        Err(StoreError::Closed)
    ));
    // The store itself stays usable after the appender is gone.
    assert_eq!(
        store.append_batch(&[b"direct"]).unwrap().start,
        seqs.len() as u64
    );
}

const CRASH_ENV: &str = "WARDEN_AUDIT_CRASH_DIR";
const CRASH_CHILD: &str = "store::tests::store_crash_child_appends_until_killed";

/// Runs only when re-executed by [`store_kill9_keeps_every_acknowledged_entry`].
#[test]
fn store_crash_child_appends_until_killed() {
    let Some(dir) = std::env::var_os(CRASH_ENV) else {
        return;
    };
    let (store, _) = open(Path::new(&dir));
    let (appender, _handle) = Appender::spawn(Arc::new(store), AppenderConfig::default()).unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (appender, next) = (appender.clone(), Arc::clone(&next));
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let seq = appender.append(payload(id)).unwrap();
                    println!("ACK {seq} {id} END");
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
}

/// Runs the crash child on `dir`, SIGKILLs it `after` its first acknowledgement, and returns
/// the `(seq, payload id)` pairs it acknowledged.
fn run_and_kill_child(dir: &Path, after: Duration) -> Vec<(u64, u64)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([CRASH_CHILD, "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(30);
    while Instant::now() < give_up {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let ack = line.starts_with("ACK ");
            lines.push(line);
            if ack {
                break;
            }
        }
    }
    std::thread::sleep(after);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let acked: Vec<(u64, u64)> = lines
        .iter()
        .filter_map(|l| match l.split(' ').collect::<Vec<_>>()[..] {
            ["ACK", seq, id, "END"] => Some((seq.parse().ok()?, id.parse().ok()?)),
            _ => None,
        })
        .collect();
    assert!(
        !acked.is_empty(),
        "the child acknowledged nothing: {lines:?}"
    );
    acked
}

#[test]
fn store_kill9_keeps_every_acknowledged_entry() {
    if std::env::var_os(CRASH_ENV).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut acked = Vec::new();
    // Several kills on the same log: each recovery is itself recovered from.
    for after_ms in [200, 70, 330] {
        acked.extend(run_and_kill_child(
            tmp.path(),
            Duration::from_millis(after_ms),
        ));
        let (store, rec) = open(tmp.path());
        eprintln!(
            "kill -9 {after_ms} ms after the first ack, {} acks so far: {rec:?}",
            acked.len()
        );
        assert_eq!(
            rec.index_ahead, 0,
            "a crash must not lose acknowledged entries"
        );
        for (seq, id) in &acked {
            assert_eq!(store.entry(*seq).unwrap(), payload(*id), "entry {seq}");
        }
        let len = store.len();
        let mut mem = MemoryTree::new();
        let mut start = 0;
        while start < len {
            let end = (start + MAX_RANGE).min(len);
            for entry in store.entries(start..end).unwrap() {
                mem.push(merkle::leaf_hash(&entry));
            }
            start = end;
        }
        let root = merkle::root(&mem, len).unwrap();
        assert_eq!(store.verify_all(|_, _| {}).unwrap(), root);
        assert_eq!(store.root(len).unwrap(), root);
    }
}
