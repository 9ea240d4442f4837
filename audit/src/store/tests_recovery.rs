//! Recovery and tampering: torn tails are cut and reported, derived files are rebuilt,
//! damage to older data is caught on read and by `verify_all`, never silently repaired.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::segments::segment_name;
use super::tests::{fill, memory_root, open, payload, small};
use super::*;

const N: u64 = 60;

/// A log of [`N`] entries, closed; returns the directory.
fn log() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    fill(&store, N);
    tmp
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut names: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names.pop().unwrap()
}

/// Where entry `seq`'s record sits, and its length.
fn locate(dir: &Path, seq: u64) -> (PathBuf, u64, u64) {
    let (store, _) = open(dir);
    let loc = store.index.get(seq).unwrap();
    let size = (record::HEADER_BYTES + payload(seq).len()) as u64;
    (store.segments.path(loc.segment), loc.offset, size)
}

fn flip(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], offset).unwrap();
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn truncate_by(path: &Path, bytes: u64) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(file_len(path) - bytes).unwrap();
}

/// After recovery to `n` entries: every entry reads back, the root is the memory tree's,
/// `verify_all` agrees, appends continue at `n`, and the next open is clean.
fn assert_intact(dir: &Path, store: Store, n: u64) {
    assert_eq!(store.len(), n);
    for seq in 0..n {
        assert_eq!(store.entry(seq).unwrap(), payload(seq), "entry {seq}");
    }
    assert_eq!(store.root(n).unwrap(), memory_root(n));
    assert_eq!(store.verify_all(|_, _| {}).unwrap(), memory_root(n));
    assert_eq!(store.append_batch(&[payload(n)]).unwrap(), n..n + 1);
    drop(store);
    let (store, rec) = open(dir);
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!(store.verify_all(|_, _| {}).unwrap(), memory_root(n + 1));
}

#[test]
fn store_torn_tail_garbage_is_cut_and_reported() {
    for garbage in [&b"\x00\x00\x00\x05abc"[..], &[0xFF; 37][..], &[0u8; 3][..]] {
        let tmp = log();
        let seg = last_segment(tmp.path());
        let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
        file.write_all(garbage).unwrap();
        let (store, rec) = open(tmp.path());
        assert_eq!(
            rec,
            Recovery {
                entries: N,
                cut_bytes: garbage.len() as u64,
                ..Recovery::default()
            }
        );
        assert_intact(tmp.path(), store, N);
    }
}

#[test]
fn store_record_truncated_mid_way_is_cut() {
    for keep in [0u64, 3, 8, 11] {
        let tmp = log();
        let (seg, offset, size) = locate(tmp.path(), N - 1);
        assert_eq!(
            offset + size,
            file_len(&seg),
            "last record ends the last segment"
        );
        truncate_by(&seg, size - keep);
        let (store, rec) = open(tmp.path());
        assert_eq!(rec.cut_bytes, keep, "kept {keep} bytes of the record");
        assert_eq!(rec.entries, N - 1);
        // The index had the entry (it was acknowledged): its loss is reported.
        assert_eq!(rec.index_ahead, 1);
        assert_intact(tmp.path(), store, N - 1);
    }
}

#[test]
fn store_flipped_byte_in_last_record_is_cut() {
    // A payload byte, the CRC, and the length field.
    for at in [12u64, 5, 3] {
        let tmp = log();
        let (seg, offset, size) = locate(tmp.path(), N - 1);
        flip(&seg, offset + at);
        let (store, rec) = open(tmp.path());
        assert_eq!(rec.cut_bytes, size, "flip at {at}");
        assert_eq!((rec.entries, rec.index_ahead), (N - 1, 1));
        assert_intact(tmp.path(), store, N - 1);
    }
}

#[test]
fn store_index_truncated_or_deleted_is_rebuilt() {
    let tmp = log();
    truncate_by(&tmp.path().join("index"), 12 * 20 + 5);
    let (store, rec) = open(tmp.path());
    assert_eq!(
        rec,
        Recovery {
            entries: N,
            rebuilt_index: 21,
            ..Recovery::default()
        }
    );
    assert_intact(tmp.path(), store, N);

    let tmp = log();
    std::fs::remove_file(tmp.path().join("index")).unwrap();
    let (store, rec) = open(tmp.path());
    assert_eq!((rec.rebuilt_index, rec.cut_bytes), (N, 0));
    assert_intact(tmp.path(), store, N);
}

#[test]
fn store_index_pointing_past_the_segments_is_dropped() {
    let tmp = log();
    let mut index = OpenOptions::new()
        .append(true)
        .open(tmp.path().join("index"))
        .unwrap();
    index.write_all(&[0, 0, 0, 0]).unwrap();
    index.write_all(&999_999u64.to_be_bytes()).unwrap();
    drop(index);
    let (store, rec) = open(tmp.path());
    assert_eq!((rec.entries, rec.index_ahead, rec.cut_bytes), (N, 1, 0));
    assert_intact(tmp.path(), store, N);
}

#[test]
fn store_tree_files_truncated_deleted_or_ahead_are_rebuilt() {
    // Every node of a 60-leaf tree: 2n - popcount(n).
    let all_nodes = 2 * N - u64::from(N.count_ones());
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 4] = [
        ("level-02 deleted", |d| {
            std::fs::remove_file(d.join("tree/level-02")).unwrap()
        }),
        ("level-00 truncated", |d| {
            truncate_by(&d.join("tree/level-00"), 40)
        }),
        ("tree deleted", |d| {
            std::fs::remove_dir_all(d.join("tree")).unwrap()
        }),
        ("level-01 ahead", |d| {
            let mut f = OpenOptions::new()
                .append(true)
                .open(d.join("tree/level-01"))
                .unwrap();
            f.write_all(&[7u8; 64]).unwrap();
        }),
    ];
    for (name, damage) in cases {
        let tmp = log();
        damage(tmp.path());
        let (store, rec) = open(tmp.path());
        eprintln!("{name}: {rec:?}");
        assert_eq!((rec.entries, rec.cut_bytes, rec.rebuilt_index), (N, 0, 0));
        match name {
            "tree deleted" => assert_eq!(rec.rebuilt_nodes, all_nodes),
            "level-01 ahead" => assert_eq!(rec.rebuilt_nodes, 0),
            _ => assert!(rec.rebuilt_nodes > 0, "{name}"),
        }
        assert_intact(tmp.path(), store, N);
    }
}

#[test]
fn store_flipped_byte_in_older_entry_is_detected_not_repaired() {
    // Entry 2 sits in a sealed segment, entry N - 3 in the last one: both are trusted on
    // open, and caught when read and by verify_all.
    for seq in [2, N - 3] {
        let tmp = log();
        let (seg, offset, _) = locate(tmp.path(), seq);
        flip(&seg, offset + 10);
        let (store, rec) = open(tmp.path());
        assert!(rec.is_clean(), "{rec:?}");
        assert_eq!(store.len(), N);
        match store.entry(seq) {
            Err(StoreError::Corrupt {
                path,
                offset: at,
                reason,
            }) => {
                assert_eq!((path, at), (seg.clone(), offset));
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(store.entry(seq + 1).unwrap(), payload(seq + 1));
        assert!(matches!(
            store.entries(0..N),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.verify_all(|_, _| {}),
            Err(StoreError::Corrupt { offset: at, .. }) if at == offset
        ));
    }
}

#[test]
fn store_tampered_tree_node_is_caught_by_verify_all() {
    let tmp = log();
    flip(&tmp.path().join("tree/level-01"), 32 * 3 + 4);
    let (store, rec) = open(tmp.path());
    assert!(rec.is_clean());
    match store.verify_all(|_, _| {}) {
        Err(StoreError::Corrupt { path, offset, .. }) => {
            assert!(path.ends_with("tree/level-01"));
            assert_eq!(offset, 32 * 3);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn store_bad_record_in_sealed_segment_fails_open() {
    let tmp = log();
    let (seg, offset, _) = locate(tmp.path(), 1);
    assert_eq!(seg.file_name().unwrap(), segment_name(0).as_str());
    flip(&seg, offset + 9);
    // With the index gone the scan must cross segment 0, which is sealed: no cut.
    std::fs::remove_file(tmp.path().join("index")).unwrap();
    assert!(matches!(
        Store::open_with(tmp.path(), small()),
        Err(StoreError::Corrupt { offset: at, .. }) if at == offset
    ));
    assert!(file_len(&seg) > offset, "nothing was cut");
}

#[test]
fn store_missing_segment_fails_open_and_strays_are_ignored() {
    let tmp = log();
    std::fs::write(tmp.path().join("segments/notes.txt"), b"hi").unwrap();
    let (store, rec) = open(tmp.path());
    assert!(rec.is_clean());
    drop(store);
    std::fs::remove_file(tmp.path().join("segments").join(segment_name(0))).unwrap();
    assert!(matches!(
        Store::open_with(tmp.path(), small()),
        Err(StoreError::Corrupt { reason, .. }) if reason.contains("segment 0 is missing")
    ));
}

#[test]
fn store_failed_append_is_rolled_back_and_the_store_stays_usable() {
    let tmp = log();
    let segments = std::fs::read_dir(tmp.path().join("segments"))
        .unwrap()
        .count() as u32;
    // Fault: the next segment's name is taken, so rolling over fails mid-batch.
    let blocker = tmp.path().join("segments").join(segment_name(segments));
    let (store, _) = open(tmp.path());
    std::fs::write(&blocker, b"in the way").unwrap();
    let batch: Vec<Vec<u8>> = (N..N + 80).map(payload).collect();
    assert!(matches!(
        store.append_batch(&batch),
        Err(StoreError::Io { op: "create", .. })
    ));
    assert_eq!(store.len(), N);
    assert!(
        !blocker.exists(),
        "the rollback removed the half-made segment"
    );
    assert_eq!(store.root(N).unwrap(), memory_root(N));
    assert_eq!(store.append_batch(&batch).unwrap(), N..N + 80);
    assert_intact(tmp.path(), store, N + 80);
}

#[test]
fn store_failed_rollback_fails_closed_until_reopened() {
    let tmp = log();
    // Fault: leaf 63 completes node 0 of level 6, whose file cannot be opened (nor truncated
    // during the rollback).
    let (store, _) = open(tmp.path());
    std::fs::create_dir(tmp.path().join("tree/level-06")).unwrap();
    let batch: Vec<Vec<u8>> = (N..N + 10).map(payload).collect();
    assert!(matches!(
        store.append_batch(&batch),
        Err(StoreError::Io { op: "open", .. })
    ));
    assert!(matches!(
        store.append_batch(&[b"next"]),
        Err(StoreError::Failed)
    ));
    assert_eq!(store.len(), N);
    assert_eq!(store.entries(0..N).unwrap().len() as u64, N);
    assert_eq!(store.root(N).unwrap(), memory_root(N));
    drop(store);
    std::fs::remove_dir(tmp.path().join("tree/level-06")).unwrap();
    let (store, rec) = open(tmp.path());
    assert_eq!(rec.entries, N);
    assert_eq!((rec.cut_bytes, rec.index_ahead), (0, 0));
    assert_intact(tmp.path(), store, N);
}
