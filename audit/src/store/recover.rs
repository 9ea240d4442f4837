//! Opening with tail repair, and full verification. The segments are the truth; `index` and
//! `tree/` are made to agree with them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use super::record::{decode_record, RecordError, HEADER_BYTES};
use super::segments::{
    file_len, io_err, open_rw, read_at, sync_dir, Index, Loc, ReadError, Segments,
    INDEX_RECORD_BYTES,
};
use super::tree::{Tree, LEVELS, NODE_BYTES};
use super::{Options, Recovery, Store, StoreError, Writer};
use crate::merkle::{self, NodeSource};
use crate::Hash;

/// Entries handled per step of a rebuild or verification (bounds memory).
const CHUNK_ENTRIES: u64 = 1 << 16;
/// Bytes read at a time when scanning a segment.
const SCAN_BYTES: usize = 1 << 20;
/// [`Store::verify_all`] reports progress this often.
const PROGRESS_EVERY: u64 = 100_000;

pub(super) fn open(dir: &Path, opts: Options) -> Result<(Store, Recovery), StoreError> {
    let seg_dir = dir.join("segments");
    let tree_dir = dir.join("tree");
    create_dirs(dir, &[&seg_dir, &tree_dir])?;
    let segments = Segments::new(seg_dir);
    let last = match segments.list()?.last() {
        Some(&n) => n,
        None => {
            segments.create(0)?;
            0
        }
    };
    let index_path = dir.join("index");
    let index_is_new = !index_path.exists();
    let index = Index::open(index_path)?;
    if index_is_new {
        sync_dir(dir)?;
    }
    let tree = Tree::new(tree_dir);
    let mut rec = Recovery::default();

    let (kept, resume) = last_good_index(&segments, &index, last, &mut rec)?;
    index.truncate(kept)?;
    let (len, end) = scan_tail(&segments, &index, kept, resume, last, &mut rec)?;
    index.sync()?;
    rec.entries = len;
    repair_tree(&segments, &index, &tree, len, &mut rec)?;

    let file = open_rw(&segments.path(last), false)?;
    if !rec.is_clean() {
        tracing::warn!(dir = ?dir, recovery = ?rec, "audit store repaired on open");
    }
    let store = Store {
        dir: dir.to_path_buf(),
        opts,
        segments,
        index,
        tree,
        len: AtomicU64::new(len),
        writer: Mutex::new(Writer {
            segment: last,
            file,
            end,
            len,
            failed: false,
        }),
    };
    Ok((store, rec))
}

fn create_dirs(dir: &Path, subdirs: &[&Path]) -> Result<(), StoreError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let mut created = false;
    for sub in subdirs {
        if !sub.exists() {
            std::fs::create_dir(sub).map_err(io_err("create directory", sub))?;
            created = true;
        }
    }
    if created {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Walks back from the last index record to one whose entry is in the segments, right after
/// its predecessor. Returns how many records to keep and where the scan resumes.
fn last_good_index(
    segments: &Segments,
    index: &Index,
    last: u32,
    rec: &mut Recovery,
) -> Result<(u64, Loc), StoreError> {
    let mut kept = index.records()?;
    while let Some(seq) = kept.checked_sub(1) {
        let loc = index.get(seq)?;
        if let Some(end) = indexed_end(segments, index, seq, loc, last)? {
            let resume = Loc {
                segment: loc.segment,
                offset: end,
            };
            return Ok((kept, resume));
        }
        tracing::warn!(
            seq,
            ?loc,
            "audit index record points past the segments; dropped"
        );
        rec.index_ahead = rec.index_ahead.saturating_add(1);
        kept = seq;
    }
    Ok((
        0,
        Loc {
            segment: 0,
            offset: 0,
        },
    ))
}

/// The end of entry `seq`'s record if `loc` holds a good record that follows entry `seq - 1`.
fn indexed_end(
    segments: &Segments,
    index: &Index,
    seq: u64,
    loc: Loc,
    last: u32,
) -> Result<Option<u64>, StoreError> {
    if loc.segment > last {
        return Ok(None);
    }
    let Some(len) = corrupt_as_none(segments.read_record(loc).map(|p| p.len()))? else {
        return Ok(None);
    };
    let end = loc.offset.saturating_add((HEADER_BYTES + len) as u64);
    let follows = match seq.checked_sub(1) {
        None => loc.segment == 0 && loc.offset == 0,
        Some(prev_seq) => {
            let prev = index.get(prev_seq)?;
            // The predecessor is trusted like all older data: its header only, not its CRC.
            match corrupt_as_none(record_len(segments, prev))? {
                Some(prev_len) => {
                    let prev_end = prev.offset.saturating_add((HEADER_BYTES + prev_len) as u64);
                    (loc.segment == prev.segment && loc.offset == prev_end)
                        || (prev.segment.checked_add(1) == Some(loc.segment) && loc.offset == 0)
                }
                None => false,
            }
        }
    };
    Ok(follows.then_some(end))
}

fn corrupt_as_none<T>(r: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::Corrupt { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The payload length in the header at `loc`.
fn record_len(segments: &Segments, loc: Loc) -> Result<usize, StoreError> {
    let path = segments.path(loc.segment);
    let file = segments.reader(loc.segment)?;
    let mut header = [0u8; HEADER_BYTES];
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.clone(),
        offset: loc.offset,
        reason,
    };
    read_at(&file, &mut header, loc.offset).map_err(|e| match e {
        ReadError::Eof => corrupt("record header past the end of the segment".into()),
        ReadError::Io(source) => io_err("read", &path)(source),
    })?;
    super::record::decode_header(header)
        .map(|h| h.len)
        .map_err(|e| corrupt(e.to_string()))
}

/// Scans from `resume` to the end of the last segment, indexing every record found and
/// cutting a bad tail off the last segment. Returns the log length and the last segment's end.
fn scan_tail(
    segments: &Segments,
    index: &Index,
    kept: u64,
    resume: Loc,
    last: u32,
    rec: &mut Recovery,
) -> Result<(u64, u64), StoreError> {
    let mut len = kept;
    let mut locs = Vec::new();
    let mut end = 0;
    for segment in resume.segment..=last {
        let path = segments.path(segment);
        let file = open_rw(&path, false)?;
        let size = file_len(&file, &path)?;
        let start = if segment == resume.segment {
            resume.offset
        } else {
            0
        };
        let mut scan = Scanner::new(&file, &path, start, size);
        loop {
            match scan.next()? {
                Step::Record { offset, .. } => {
                    locs.push(Loc { segment, offset });
                    len = len.saturating_add(1);
                    if locs.len() as u64 >= CHUNK_ENTRIES {
                        index.put(len - locs.len() as u64, &locs)?;
                        locs.clear();
                    }
                }
                Step::End => {
                    end = size;
                    break;
                }
                Step::Bad { offset, error } if segment == last => {
                    file.set_len(offset).map_err(io_err("truncate", &path))?;
                    file.sync_data().map_err(io_err("fsync", &path))?;
                    rec.cut_bytes = size - offset;
                    tracing::warn!(segment, offset, cut = size - offset, %error, "audit log: torn tail cut");
                    end = offset;
                    break;
                }
                Step::Bad { offset, error } => {
                    return Err(StoreError::Corrupt {
                        path,
                        offset,
                        reason: format!("{error} in a sealed segment"),
                    })
                }
            }
        }
    }
    index.put(len - locs.len() as u64, &locs)?;
    rec.rebuilt_index = len - kept;
    Ok((len, end))
}

/// Makes every tree level hold exactly the nodes of a log of `len` entries: keeps the
/// longest prefix that is complete on every level, recomputes the rest from the entries.
fn repair_tree(
    segments: &Segments,
    index: &Index,
    tree: &Tree,
    len: u64,
    rec: &mut Recovery,
) -> Result<(), StoreError> {
    let mut good = len;
    let mut exact = true;
    for level in 0..LEVELS {
        let bytes = tree.stored_bytes(level)?;
        exact &= bytes == (len >> level).saturating_mul(NODE_BYTES);
        // Level `level` is complete for size t iff it has t >> level nodes.
        let have = u128::from(bytes / NODE_BYTES);
        let limit = ((have + 1) << level) - 1;
        good = good.min(u64::try_from(limit).unwrap_or(u64::MAX));
    }
    if exact {
        return Ok(());
    }
    tree.truncate_to_size(good)?;
    let mut start = good;
    while start < len {
        let count = (len - start).min(CHUNK_ENTRIES);
        let leaves = index
            .get_range(start, count as usize)?
            .into_iter()
            .map(|loc| segments.read_record(loc).map(|p| merkle::leaf_hash(&p)))
            .collect::<Result<Vec<Hash>, StoreError>>()?;
        let (written, _) = tree.write(start, &leaves)?;
        rec.rebuilt_nodes = rec.rebuilt_nodes.saturating_add(written);
        start += count;
    }
    tree.sync_all_levels()
}

pub(super) fn verify_all(
    store: &Store,
    mut progress: impl FnMut(u64, u64),
) -> Result<Hash, StoreError> {
    let len = store.len();
    let mut frontier: Vec<(u8, Hash)> = Vec::new();
    let mut seq = 0u64;
    let mut indexed: Vec<Loc> = Vec::new();
    let mut indexed_from = 0u64;
    'segments: for segment in store.segments.list()? {
        let path = store.segments.path(segment);
        let file = store.segments.reader(segment)?;
        let mut scan = Scanner::new(&file, &path, 0, file_len(&file, &path)?);
        while seq < len {
            let (offset, payload) = match scan.next()? {
                Step::End => continue 'segments,
                Step::Bad { offset, error } => {
                    return Err(StoreError::Corrupt {
                        path,
                        offset,
                        reason: format!("entry {seq}: {error}"),
                    })
                }
                Step::Record { offset, payload } => (offset, payload),
            };
            if seq >= indexed_from.saturating_add(indexed.len() as u64) {
                indexed_from = seq;
                indexed = store
                    .index
                    .get_range(seq, (len - seq).min(CHUNK_ENTRIES) as usize)?;
            }
            let at = Loc { segment, offset };
            let slot = usize::try_from(seq - indexed_from).unwrap_or(usize::MAX);
            if indexed.get(slot) != Some(&at) {
                return Err(StoreError::Corrupt {
                    path: store.index.path().to_path_buf(),
                    offset: seq.saturating_mul(INDEX_RECORD_BYTES),
                    reason: format!("entry {seq} is at {at:?}, the index says otherwise"),
                });
            }
            push_checked(store, &mut frontier, seq, merkle::leaf_hash(payload))?;
            seq += 1;
            if seq % PROGRESS_EVERY == 0 {
                progress(seq, len);
            }
        }
        break;
    }
    if seq < len {
        return Err(StoreError::Corrupt {
            path: store.segments.dir().to_path_buf(),
            offset: 0,
            reason: format!("the segments hold {seq} entries, the log has {len}"),
        });
    }
    let root = frontier
        .iter()
        .rev()
        .map(|(_, h)| *h)
        .reduce(|right, left| merkle::node_hash(&left, &right))
        .unwrap_or_else(merkle::empty_root);
    if store.root(len)? != root {
        return Err(StoreError::Corrupt {
            path: store.tree.dir().to_path_buf(),
            offset: 0,
            reason: format!("the stored root of size {len} differs from the entries' root"),
        });
    }
    progress(len, len);
    Ok(root)
}

/// Adds leaf `seq` to the frontier of complete subtrees, checking each node it completes
/// (the leaf included) against the stored tree.
fn push_checked(
    store: &Store,
    frontier: &mut Vec<(u8, Hash)>,
    seq: u64,
    leaf: Hash,
) -> Result<(), StoreError> {
    let (mut level, mut node) = (0u8, leaf);
    loop {
        let index = seq >> level;
        if store.tree.node(level, index)? != node {
            return Err(StoreError::Corrupt {
                path: store.tree.path(level),
                offset: index.saturating_mul(NODE_BYTES),
                reason: format!("stored node {index} of level {level} differs from the entries"),
            });
        }
        match frontier.last() {
            Some(&(top_level, top)) if top_level == level => {
                frontier.pop();
                node = merkle::node_hash(&top, &node);
                level = level.saturating_add(1);
            }
            _ => break,
        }
    }
    frontier.push((level, node));
    Ok(())
}

/// Sequential record reader over one segment, in chunks of [`SCAN_BYTES`].
struct Scanner<'f> {
    file: &'f File,
    path: &'f Path,
    size: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
    pos: usize,
}

enum Step<'b> {
    Record { offset: u64, payload: &'b [u8] },
    End,
    Bad { offset: u64, error: RecordError },
}

impl<'f> Scanner<'f> {
    fn new(file: &'f File, path: &'f Path, start: u64, size: u64) -> Scanner<'f> {
        Scanner {
            file,
            path,
            size,
            buf: Vec::new(),
            buf_at: start,
            pos: 0,
        }
    }

    fn next(&mut self) -> Result<Step<'_>, StoreError> {
        let offset = self.buf_at.saturating_add(self.pos as u64);
        if offset >= self.size {
            return Ok(Step::End);
        }
        let mut refilled = false;
        loop {
            let avail = self.buf.get(self.pos..).unwrap_or_default();
            let buf_end = self.buf_at.saturating_add(self.buf.len() as u64);
            match decode_record(avail).map(|(_, used)| used) {
                Ok(used) => {
                    // decode_record checked these bounds; `payload` is the record's payload.
                    let from = self.pos.saturating_add(HEADER_BYTES);
                    self.pos = self.pos.saturating_add(used);
                    let payload = self.buf.get(from..self.pos).unwrap_or_default();
                    return Ok(Step::Record { offset, payload });
                }
                Err(RecordError::Truncated { need, .. }) if !refilled && buf_end < self.size => {
                    self.refill(offset, need)?;
                    refilled = true;
                }
                Err(error) => return Ok(Step::Bad { offset, error }),
            }
        }
    }

    /// Reloads the buffer from `offset`: at least `need` bytes, or up to the end of file.
    fn refill(&mut self, offset: u64, need: usize) -> Result<(), StoreError> {
        let left = usize::try_from(self.size - offset).unwrap_or(usize::MAX);
        let want = need.max(SCAN_BYTES).min(left);
        self.buf.clear();
        self.buf.resize(want, 0);
        self.file
            .read_exact_at(&mut self.buf, offset)
            .map_err(io_err("read", self.path))?;
        self.buf_at = offset;
        self.pos = 0;
        Ok(())
    }
}
