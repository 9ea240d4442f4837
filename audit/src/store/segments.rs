//! Segment files and the fixed-width `index`: where each entry's bytes live.
//!
//! All reads are positional (`read_exact_at`), so one handle serves many threads and the
//! writer never moves a shared cursor.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::record::{self, HEADER_BYTES};
use super::StoreError;

/// Bytes per `index` record: `u32 BE segment ‖ u64 BE offset`.
pub(super) const INDEX_RECORD_BYTES: u64 = 12;
/// Read handles kept open for older segments (bounded; the least recently used is closed).
const CACHED_SEGMENT_HANDLES: usize = 16;
/// Digits in a segment file name.
const SEGMENT_DIGITS: usize = 20;

/// Where an entry's record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loc {
    pub segment: u32,
    pub offset: u64,
}

/// Builds the error constructor for a failed I/O call on `path`.
pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// Opens `path` for positional reads and writes, creating it when `create`.
pub(super) fn open_rw(path: &Path, create: bool) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .open(path)
        .map_err(io_err("open", path))
}

/// Makes a directory's entries (created, removed files) durable.
pub(super) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", path))
}

/// `fdatasync`s `files` concurrently, so the round costs about one sync, not one per file.
/// Falls back to syncing in line if a thread cannot be started.
pub(super) fn sync_parallel(files: &[(&Path, &File)]) -> Result<(), StoreError> {
    let sync = |(path, file): &(&Path, &File)| file.sync_data().map_err(io_err("fsync", path));
    let Some((first, rest)) = files.split_first() else {
        return Ok(());
    };
    std::thread::scope(|scope| {
        let mut results = Vec::with_capacity(files.len());
        let mut threads = Vec::with_capacity(rest.len());
        for item in rest {
            match std::thread::Builder::new().spawn_scoped(scope, move || sync(item)) {
                Ok(handle) => threads.push(handle),
                Err(_) => results.push(sync(item)),
            }
        }
        results.push(sync(first));
        for handle in threads {
            results.push(handle.join().unwrap_or(Err(StoreError::Failed)));
        }
        results.into_iter().collect::<Result<(), StoreError>>()
    })
}

/// Current length of an open file.
pub(super) fn file_len(file: &File, path: &Path) -> Result<u64, StoreError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(io_err("stat", path))
}

/// `NNNNNNNNNNNNNNNNNNNN.seg`, zero-padded so names sort in segment order.
pub(super) fn segment_name(segment: u32) -> String {
    format!("{segment:0width$}.seg", width = SEGMENT_DIGITS)
}

/// The segment number of a well-formed segment file name.
pub(super) fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

/// The segments directory: names, creation, and cached read handles.
pub(super) struct Segments {
    dir: PathBuf,
    cache: Mutex<VecDeque<(u32, Arc<File>)>>,
}

impl Segments {
    pub fn new(dir: PathBuf) -> Segments {
        Segments {
            dir,
            cache: Mutex::new(VecDeque::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, segment: u32) -> PathBuf {
        self.dir.join(segment_name(segment))
    }

    /// Segment numbers present, ascending; they must run 0, 1, 2, … without a gap.
    /// Files that are not segments are ignored (and logged).
    pub fn list(&self) -> Result<Vec<u32>, StoreError> {
        let mut found = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            match entry.file_name().to_str().and_then(parse_segment_name) {
                Some(n) => found.push(n),
                None => tracing::warn!(file = ?entry.path(), "ignoring a non-segment file"),
            }
        }
        found.sort_unstable();
        for (expected, &n) in (0u32..).zip(found.iter()) {
            if n != expected {
                return Err(StoreError::Corrupt {
                    path: self.path(expected),
                    offset: 0,
                    reason: format!("segment {expected} is missing (next present is {n})"),
                });
            }
        }
        Ok(found)
    }

    /// Creates segment `segment` (which must not exist) and makes its name durable.
    pub fn create(&self, segment: u32) -> Result<File, StoreError> {
        let path = self.path(segment);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        sync_dir(&self.dir)?;
        Ok(file)
    }

    /// A shared read handle for `segment`.
    pub fn reader(&self, segment: u32) -> Result<Arc<File>, StoreError> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pos) = cache.iter().position(|(n, _)| *n == segment) {
            if let Some(hit) = cache.remove(pos) {
                let file = Arc::clone(&hit.1);
                cache.push_front(hit);
                return Ok(file);
            }
        }
        let path = self.path(segment);
        let file = Arc::new(File::open(&path).map_err(io_err("open", &path))?);
        cache.push_front((segment, Arc::clone(&file)));
        cache.truncate(CACHED_SEGMENT_HANDLES);
        Ok(file)
    }

    /// Drops cached handles of segments `>= first` (they are being removed or cut).
    pub fn forget_from(&self, first: u32) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|(n, _)| *n < first);
    }

    /// Reads and checks the record at `loc`; the stored length is bounded before allocating.
    pub fn read_record(&self, loc: Loc) -> Result<Vec<u8>, StoreError> {
        let file = self.reader(loc.segment)?;
        let path = || self.path(loc.segment);
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path(),
            offset: loc.offset,
            reason,
        };
        let mut header = [0u8; HEADER_BYTES];
        read_at(&file, &mut header, loc.offset).map_err(|e| match e {
            ReadError::Eof => corrupt("record header extends past the end of the segment".into()),
            ReadError::Io(source) => StoreError::Io {
                op: "read",
                path: path(),
                source,
            },
        })?;
        let header = record::decode_header(header).map_err(|e| corrupt(e.to_string()))?;
        let mut payload = vec![0u8; header.len];
        let payload_at = loc.offset.saturating_add(HEADER_BYTES as u64);
        read_at(&file, &mut payload, payload_at).map_err(|e| match e {
            ReadError::Eof => corrupt("record payload extends past the end of the segment".into()),
            ReadError::Io(source) => StoreError::Io {
                op: "read",
                path: path(),
                source,
            },
        })?;
        record::check_payload(&header, &payload).map_err(|e| corrupt(e.to_string()))?;
        Ok(payload)
    }
}

/// A positional read that tells a short file apart from an I/O failure.
pub(super) enum ReadError {
    Eof,
    Io(std::io::Error),
}

pub(super) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), ReadError> {
    file.read_exact_at(buf, offset).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => ReadError::Eof,
        _ => ReadError::Io(e),
    })
}

/// The `index` file: record `i` locates entry `i`.
pub(super) struct Index {
    path: PathBuf,
    file: File,
}

impl Index {
    pub fn open(path: PathBuf) -> Result<Index, StoreError> {
        let file = open_rw(&path, true)?;
        Ok(Index { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whole records present (a partial trailing record does not count).
    pub fn records(&self) -> Result<u64, StoreError> {
        Ok(file_len(&self.file, &self.path)? / INDEX_RECORD_BYTES)
    }

    pub fn get(&self, seq: u64) -> Result<Loc, StoreError> {
        let mut out = self.get_range(seq, 1)?;
        out.pop()
            .ok_or_else(|| self.corrupt(seq, "missing index record"))
    }

    /// Records `start .. start + count`, in one read.
    pub fn get_range(&self, start: u64, count: usize) -> Result<Vec<Loc>, StoreError> {
        let offset = start.saturating_mul(INDEX_RECORD_BYTES);
        let mut buf = vec![0u8; count.saturating_mul(INDEX_RECORD_BYTES as usize)];
        read_at(&self.file, &mut buf, offset).map_err(|e| match e {
            ReadError::Eof => self.corrupt(start, "index is shorter than the log"),
            ReadError::Io(source) => StoreError::Io {
                op: "read",
                path: self.path.clone(),
                source,
            },
        })?;
        Ok(buf
            .chunks_exact(INDEX_RECORD_BYTES as usize)
            .filter_map(decode_loc)
            .collect())
    }

    /// Writes records for entries `start ..` (not yet durable; see [`Index::sync`]).
    pub fn put(&self, start: u64, locs: &[Loc]) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(locs.len().saturating_mul(INDEX_RECORD_BYTES as usize));
        for loc in locs {
            buf.extend_from_slice(&loc.segment.to_be_bytes());
            buf.extend_from_slice(&loc.offset.to_be_bytes());
        }
        self.file
            .write_all_at(&buf, start.saturating_mul(INDEX_RECORD_BYTES))
            .map_err(io_err("write", &self.path))
    }

    /// Keeps the first `records` records and drops the rest, including any partial record.
    pub fn truncate(&self, records: u64) -> Result<(), StoreError> {
        self.file
            .set_len(records.saturating_mul(INDEX_RECORD_BYTES))
            .map_err(io_err("truncate", &self.path))
    }

    pub fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io_err("fsync", &self.path))
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn corrupt(&self, seq: u64, reason: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            offset: seq.saturating_mul(INDEX_RECORD_BYTES),
            reason: format!("entry {seq}: {reason}"),
        }
    }
}

fn decode_loc(chunk: &[u8]) -> Option<Loc> {
    let segment: [u8; 4] = chunk.get(..4)?.try_into().ok()?;
    let offset: [u8; 8] = chunk.get(4..12)?.try_into().ok()?;
    Some(Loc {
        segment: u32::from_be_bytes(segment),
        offset: u64::from_be_bytes(offset),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_lookalikes() {
        assert_eq!(segment_name(7), "00000000000000000007.seg");
        assert_eq!(parse_segment_name(&segment_name(u32::MAX)), Some(u32::MAX));
        for bad in [
            "7.seg",
            "0000000000000000000a.seg",
            "00000000000000000007.seg.tmp",
            "99999999999999999999.seg",
            "+0000000000000000007.seg",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
