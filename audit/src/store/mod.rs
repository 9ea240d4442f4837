//! Durable, bounded-memory storage of the audit log: checksummed segment files, a fixed-width
//! index and the Merkle tree's complete subtrees on disk, with group commit.
//!
//! DESIGN: "append then fsync then acknowledge, with group commit so a burst costs few fsyncs.
//! Crash safety: a kill -9 at any moment leaves a log that verifies up to the last acknowledged
//! entry; a torn tail is detected and cut, and the cut is itself reported."
//!
//! # On-disk format
//!
//! ```text
//! <dir>/
//!   segments/00000000000000000000.seg   entries, in order; the name is the segment number,
//!   segments/00000000000000000001.seg   20 decimal digits, numbered 0, 1, 2, … without gaps
//!   index                               12 bytes per entry
//!   tree/level-00 … tree/level-63       32 bytes per complete subtree
//! ```
//!
//! - **Segment** (`segments/N.seg`): a plain concatenation of records, no file header. A record
//!   is `u32 BE length ‖ u32 BE CRC-32C(payload) ‖ payload`, length ≤ [`MAX_ENTRY_BYTES`]
//!   (CRC-32C = Castagnoli, RFC 3720 §B.4; it covers the payload only). Entry `i` is the
//!   `i`-th record counting through the segments in order. A record is never split across
//!   segments: a batch moves on to segment `N + 1` (created empty, directory fsynced) when the
//!   next record would take segment `N` past [`Options::segment_bytes`] (64 MiB), unless `N`
//!   is empty. Only the last segment may end in a torn or partial record; all earlier ones are
//!   sealed (fsynced before their successor is created).
//! - **Index** (`index`): record `i`, at byte `12 i`, is `u32 BE segment ‖ u64 BE offset` of
//!   entry `i`'s record. Entry lookup is two positional reads and holds nothing in memory.
//! - **Tree** (`tree/level-LL`, `LL` = `00`…`63`): record `j` of level `l`, at byte `32 j`,
//!   is the RFC 9162 hash of the complete subtree over leaves `[j·2^l, (j+1)·2^l)`; level 0
//!   holds the leaf hashes `SHA-256(0x00 ‖ entry)`. A log of `n` entries has exactly
//!   `⌊n / 2^l⌋` records at level `l`. Any root or proof is O(log n) such reads.
//!
//! The segments are the truth; `index` and `tree/` are derived from them and rebuilt when
//! behind. One append batch (group commit) runs:
//!
//! 1. write the records at the end of the last segment (rolling over as needed) and
//!    `fdatasync` each segment written;
//! 2. write the index records and the tree nodes the new leaves complete (level 0 plus each
//!    parent a leaf finishes, via `merkle::completed_nodes`), and `fdatasync` the index and
//!    the touched level files concurrently (plus the `tree/` directory when a level file was
//!    created);
//! 3. publish the new length and acknowledge the batch.
//!
//! Two sync rounds per batch whatever its size: that is the group commit.
//!
//! So an index or tree record only ever describes data that was already durable, and an
//! acknowledged entry is durable in its segment, its index record and its tree nodes.
//!
//! **Recovery** ([`Store::open`]): the last index record is checked against the segments
//! (its record must decode with a good checksum, right after the record before it); records
//! that point past the segments are dropped ([`Recovery::index_ahead`] — a plain crash never
//! causes this). The last segment is scanned from the end of the last good indexed record;
//! missing index records are rebuilt ([`Recovery::rebuilt_index`]) and the first record that
//! is partial, oversized or fails its checksum marks a torn tail, which is cut (truncate +
//! fsync; [`Recovery::cut_bytes`]). A bad record in a sealed segment is
//! [`StoreError::Corrupt`] (no cut). Each tree level is truncated to what the log has and
//! missing nodes are recomputed from the entries ([`Recovery::rebuilt_nodes`]). Older
//! segments are trusted on open; [`Store::verify_all`] re-reads everything.
//!
//! # Concurrency
//!
//! ```text
//!  callers ──append()──▶ [bounded queue, 65 536] ──▶ writer thread ──▶ Store::append_batch
//!     ▲                      full ⇒ StoreError::Full      (≤ 4 096 per batch)     │
//!     └──────────── seq (after fsync) ◀── one reply per entry ◀──────────────────┘
//!
//!  Store (shared as Arc<Store>)
//!    append_batch ─▶ Mutex<Writer> ─ segment end, length ─ one writer at a time
//!    readers ──────▶ len: AtomicU64 (Release after fsync / Acquire) + positional reads
//! ```
//!
//! Writes only ever go past the published length and readers only read below it, so readers
//! take no lock but a brief one on a handle cache. A failed batch is rolled back (files
//! truncated to the last acknowledged state); if that fails, or an fsync failed, the store
//! refuses further appends ([`StoreError::Failed`]) until reopened. One process owns a
//! directory at a time: the caller (the daemon) guarantees that; two writers would corrupt it.

mod appender;
pub mod record;
mod recover;
mod segments;
mod tree;

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use appender::{Appender, AppenderConfig, AppenderHandle, AppenderStats, Ticket};
pub use record::{decode_record, RecordError};

use crate::merkle::{self, TreeError};
use crate::Hash;
use segments::{io_err, Index, Loc, Segments};
use tree::{Tree, TreeAt};

/// The largest entry the log stores.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// The most entries [`Store::entries`] returns at once.
pub const MAX_RANGE: u64 = 10_000;
/// Encoded records are written out once this many bytes have been buffered.
const WRITE_CHUNK: usize = 1 << 20;

/// Why the store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An entry exceeds [`MAX_ENTRY_BYTES`].
    #[error("entry of {len} bytes exceeds the maximum of {MAX_ENTRY_BYTES}")]
    TooLarge { len: usize },
    /// Stored bytes are not what the store wrote.
    #[error("{path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A sequence number or tree size beyond the log.
    #[error("{what} {index} is out of range (limit {limit})")]
    OutOfRange {
        what: &'static str,
        index: u64,
        limit: u64,
    },
    /// [`Store::entries`] was asked for more than [`MAX_RANGE`] entries.
    #[error("range of {requested} entries exceeds the maximum of {MAX_RANGE}")]
    RangeTooLarge { requested: u64 },
    /// The Merkle computation refused its arguments (e.g. consistency with old > new).
    #[error("tree: {reason}")]
    Tree { reason: String },
    /// The append queue is full; the entry was not queued.
    #[error("the audit append queue is full")]
    Full,
    /// The appender has shut down.
    #[error("the audit appender is closed")]
    Closed,
    /// An earlier append failed and could not be undone cleanly; reopen the store.
    #[error("an earlier append failed; the store must be reopened")]
    Failed,
    /// The batch holding this entry was not stored (the shared cause is the source).
    #[error("the batch holding this entry was not stored")]
    Batch {
        #[source]
        source: Arc<StoreError>,
    },
    /// A counter would overflow (segment numbers, sequence numbers).
    #[error("{what} exhausted")]
    Exhausted { what: &'static str },
}

impl StoreError {
    fn from_tree(e: TreeError<StoreError>) -> StoreError {
        match e {
            TreeError::Source(inner) => inner,
            TreeError::OutOfRange { what, index, size } => StoreError::OutOfRange {
                what,
                index,
                limit: size,
            },
            other => StoreError::Tree {
                reason: other.to_string(),
            },
        }
    }

    fn is_fsync(&self) -> bool {
        matches!(self, StoreError::Io { op, .. } if op.starts_with("fsync"))
    }
}

/// Tunables; [`Options::default`] is what production uses.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// A segment rolls over when the next record would take it past this size.
    pub segment_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes: 64 << 20,
        }
    }
}

/// What [`Store::open`] found and repaired. Anything but [`Recovery::is_clean`] deserves an
/// audit event of its own (`audit.tail-cut`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Entries in the log after recovery.
    pub entries: u64,
    /// Torn-tail bytes cut from the end of the last segment.
    pub cut_bytes: u64,
    /// Index records rewritten from the segments.
    pub rebuilt_index: u64,
    /// Tree nodes recomputed from the entries.
    pub rebuilt_nodes: u64,
    /// Index records dropped because their entry is no longer in the segments: acknowledged
    /// entries were lost (a storage fault or tampering; a crash alone never causes it).
    pub index_ahead: u64,
}

impl Recovery {
    /// Nothing was cut, dropped or rebuilt.
    pub fn is_clean(&self) -> bool {
        self.cut_bytes == 0
            && self.rebuilt_index == 0
            && self.rebuilt_nodes == 0
            && self.index_ahead == 0
    }
}

/// The append side: the open last segment and the committed length.
struct Writer {
    segment: u32,
    file: File,
    /// End of the last record in `segment`.
    end: u64,
    /// Entries committed.
    len: u64,
    failed: bool,
}

/// The audit log on disk. Single writer, concurrent readers; share it with `Arc`.
pub struct Store {
    dir: PathBuf,
    opts: Options,
    segments: Segments,
    index: Index,
    tree: Tree,
    len: AtomicU64,
    writer: Mutex<Writer>,
}

impl Store {
    /// Opens or creates the log in `dir` and repairs its tail (see the module docs).
    pub fn open(dir: &Path) -> Result<(Store, Recovery), StoreError> {
        Store::open_with(dir, Options::default())
    }

    /// [`Store::open`] with explicit [`Options`].
    pub fn open_with(dir: &Path, opts: Options) -> Result<(Store, Recovery), StoreError> {
        recover::open(dir, opts)
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Entries committed (durable and acknowledged).
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `entries` durably and returns their sequence numbers. One fsync round for the
    /// whole batch (group commit); on error nothing of the batch is acknowledged.
    pub fn append_batch<E: AsRef<[u8]>>(&self, entries: &[E]) -> Result<Range<u64>, StoreError> {
        if let Some(big) = entries.iter().find(|e| e.as_ref().len() > MAX_ENTRY_BYTES) {
            return Err(StoreError::TooLarge {
                len: big.as_ref().len(),
            });
        }
        let mut w = self.writer.lock().map_err(|_| StoreError::Failed)?;
        if w.failed {
            return Err(StoreError::Failed);
        }
        let start = w.len;
        let end = start
            .checked_add(entries.len() as u64)
            .ok_or(StoreError::Exhausted {
                what: "sequence numbers",
            })?;
        if entries.is_empty() {
            return Ok(start..start);
        }
        let (segment, seg_end) = (w.segment, w.end);
        match self.write_batch(&mut w, entries) {
            Ok(()) => {
                w.len = end;
                self.len.store(end, Ordering::Release);
                Ok(start..end)
            }
            Err(e) => {
                let undone = self.rollback(&mut w, segment, seg_end);
                if let Err(r) = &undone {
                    tracing::error!(error = %r, "audit store: rollback after a failed append failed");
                }
                if undone.is_err() || e.is_fsync() {
                    w.failed = true;
                }
                Err(e)
            }
        }
    }

    fn write_batch<E: AsRef<[u8]>>(&self, w: &mut Writer, entries: &[E]) -> Result<(), StoreError> {
        let mut locs = Vec::with_capacity(entries.len());
        let mut leaves = Vec::with_capacity(entries.len());
        let mut buf = Vec::new();
        let mut buf_at = w.end;
        for entry in entries {
            let entry = entry.as_ref();
            let size = (record::HEADER_BYTES + entry.len()) as u64;
            let pending_end = buf_at.saturating_add(buf.len() as u64);
            if pending_end > 0 && pending_end.saturating_add(size) > self.opts.segment_bytes {
                self.flush(w, &mut buf, &mut buf_at)?;
                self.sync_segment(w)?;
                let next = w.segment.checked_add(1).ok_or(StoreError::Exhausted {
                    what: "segment numbers",
                })?;
                w.file = self.segments.create(next)?;
                w.segment = next;
                w.end = 0;
                buf_at = 0;
            }
            locs.push(Loc {
                segment: w.segment,
                offset: buf_at.saturating_add(buf.len() as u64),
            });
            record::encode_record(entry, &mut buf)
                .map_err(|_| StoreError::TooLarge { len: entry.len() })?;
            leaves.push(merkle::leaf_hash(entry));
            if buf.len() >= WRITE_CHUNK {
                self.flush(w, &mut buf, &mut buf_at)?;
            }
        }
        self.flush(w, &mut buf, &mut buf_at)?;
        self.sync_segment(w)?;
        // The segment is durable; now the derived files, synced together.
        self.index.put(w.len, &locs)?;
        let (_, levels) = self.tree.write(w.len, &leaves)?;
        self.tree
            .sync_with(&levels, &[(self.index.path(), self.index.file())])
    }

    /// Writes the buffered records at `buf_at` in the current segment.
    fn flush(&self, w: &mut Writer, buf: &mut Vec<u8>, buf_at: &mut u64) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        w.file
            .write_all_at(buf, *buf_at)
            .map_err(io_err("write", &self.segments.path(w.segment)))?;
        *buf_at = buf_at.saturating_add(buf.len() as u64);
        w.end = *buf_at;
        buf.clear();
        Ok(())
    }

    fn sync_segment(&self, w: &Writer) -> Result<(), StoreError> {
        w.file
            .sync_data()
            .map_err(io_err("fsync", &self.segments.path(w.segment)))
    }

    /// Puts the files back to the last committed state: `segment` ending at `end`.
    fn rollback(&self, w: &mut Writer, segment: u32, end: u64) -> Result<(), StoreError> {
        // A segment created but not yet adopted (its directory sync failed) goes too.
        let last_created = w.segment.max(segment).saturating_add(1);
        let mut removed = false;
        for extra in (segment.saturating_add(1)..=last_created).rev() {
            let path = self.segments.path(extra);
            match std::fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        if removed {
            self.segments.forget_from(segment.saturating_add(1));
            segments::sync_dir(self.segments.dir())?;
        }
        if w.segment != segment {
            w.file = segments::open_rw(&self.segments.path(segment), false)?;
            w.segment = segment;
        }
        let path = self.segments.path(segment);
        w.file.set_len(end).map_err(io_err("truncate", &path))?;
        w.file.sync_data().map_err(io_err("fsync", &path))?;
        w.end = end;
        self.index.truncate(w.len)?;
        self.index.sync()?;
        self.tree.truncate_to_size(w.len)
    }

    fn check_seq(&self, seq: u64) -> Result<(), StoreError> {
        let len = self.len();
        if seq < len {
            Ok(())
        } else {
            Err(StoreError::OutOfRange {
                what: "sequence number",
                index: seq,
                limit: len,
            })
        }
    }

    /// Entry `seq`, checksum verified.
    pub fn entry(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        self.check_seq(seq)?;
        self.segments.read_record(self.index.get(seq)?)
    }

    /// Entries in `range` (at most [`MAX_RANGE`]), checksums verified.
    pub fn entries(&self, range: Range<u64>) -> Result<Vec<Vec<u8>>, StoreError> {
        let len = self.len();
        if range.start > range.end || range.end > len {
            return Err(StoreError::OutOfRange {
                what: "range end",
                index: range.end,
                limit: len,
            });
        }
        let count = range.end - range.start;
        if count > MAX_RANGE {
            return Err(StoreError::RangeTooLarge { requested: count });
        }
        let locs = self.index.get_range(range.start, count as usize)?;
        locs.into_iter()
            .map(|loc| self.segments.read_record(loc))
            .collect()
    }

    /// The stored leaf hash of entry `seq`.
    pub fn leaf_hash(&self, seq: u64) -> Result<Hash, StoreError> {
        self.check_seq(seq)?;
        merkle::NodeSource::node(&self.tree, 0, seq)
    }

    fn tree_at(&self) -> TreeAt<'_> {
        TreeAt {
            tree: &self.tree,
            len: self.len(),
        }
    }

    /// Root of the first `size` entries (RFC 9162 MTH).
    pub fn root(&self, size: u64) -> Result<Hash, StoreError> {
        merkle::root(&self.tree_at(), size).map_err(StoreError::from_tree)
    }

    /// Inclusion proof of entry `seq` in the tree of `size` entries.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        merkle::inclusion_proof(&self.tree_at(), seq, size).map_err(StoreError::from_tree)
    }

    /// Consistency proof from the tree of `old` entries to the tree of `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        merkle::consistency_proof(&self.tree_at(), old, new).map_err(StoreError::from_tree)
    }

    /// Re-reads every segment up to the current length, checks every checksum, that the index
    /// and stored leaf hashes match, and that the stored tree's root equals the root
    /// recomputed from the entries; returns that root. `progress(done, total)` is called every
    /// 100 000 entries and at the end.
    pub fn verify_all(&self, progress: impl FnMut(u64, u64)) -> Result<Hash, StoreError> {
        recover::verify_all(self, progress)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_recovery;
