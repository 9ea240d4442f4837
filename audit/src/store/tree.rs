//! The `tree/level-LL` files: every complete subtree hash, so roots and proofs for any size
//! are a handful of positional reads and nothing of the tree is held in memory.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::segments::{file_len, io_err, open_rw, read_at, sync_dir, sync_parallel, ReadError};
use super::StoreError;
use crate::merkle::{self, NodeSource};
use crate::Hash;

/// Levels a tree of up to 2^64 − 1 leaves can have complete subtrees at.
pub(super) const LEVELS: u8 = 64;
/// Bytes per node record.
pub(super) const NODE_BYTES: u64 = 32;

/// Complete-subtree hashes, one file per level; node `(level, index)` sits at byte
/// `index * 32` of `level-LL` and covers leaves `[index << level, (index + 1) << level)`.
pub(super) struct Tree {
    dir: PathBuf,
    files: Mutex<Vec<Option<Arc<File>>>>,
    /// A level file was created since the directory was last synced.
    dir_dirty: AtomicBool,
}

impl Tree {
    pub fn new(dir: PathBuf) -> Tree {
        Tree {
            dir,
            files: Mutex::new(vec![None; usize::from(LEVELS)]),
            dir_dirty: AtomicBool::new(false),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, level: u8) -> PathBuf {
        self.dir.join(format!("level-{level:02}"))
    }

    /// The handle for `level`, opened (and created if missing) on first use.
    fn file(&self, level: u8) -> Result<Arc<File>, StoreError> {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = files
            .get_mut(usize::from(level))
            .ok_or_else(|| self.bad_level(level))?;
        if let Some(file) = slot {
            return Ok(Arc::clone(file));
        }
        let path = self.path(level);
        if !path.exists() {
            self.dir_dirty.store(true, Ordering::Relaxed);
        }
        let file = Arc::new(open_rw(&path, true)?);
        *slot = Some(Arc::clone(&file));
        Ok(file)
    }

    /// Bytes in the file of `level` (0 when it does not exist).
    pub fn stored_bytes(&self, level: u8) -> Result<u64, StoreError> {
        if !self.path(level).exists() && self.cached(level).is_none() {
            return Ok(0);
        }
        let file = self.file(level)?;
        file_len(&file, &self.path(level))
    }

    fn cached(&self, level: u8) -> Option<Arc<File>> {
        let files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files.get(usize::from(level)).cloned().flatten()
    }

    /// Keeps the first `nodes` nodes of `level` (creating the file if missing).
    pub fn truncate(&self, level: u8, nodes: u64) -> Result<(), StoreError> {
        let path = self.path(level);
        if nodes == 0 && !path.exists() && self.cached(level).is_none() {
            return Ok(());
        }
        self.file(level)?
            .set_len(nodes.saturating_mul(NODE_BYTES))
            .map_err(io_err("truncate", &path))
    }

    /// Truncates every level to what a tree of `size` leaves has, and syncs.
    pub fn truncate_to_size(&self, size: u64) -> Result<(), StoreError> {
        for level in 0..LEVELS {
            self.truncate(level, size >> level)?;
        }
        self.sync_all_levels()
    }

    fn sync_dir_if_dirty(&self) -> Result<(), StoreError> {
        if self.dir_dirty.swap(false, Ordering::Relaxed) {
            if let Err(e) = sync_dir(&self.dir) {
                self.dir_dirty.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Adds the leaves `start .. start + leaves.len()` (the tree holds exactly `start` leaves)
    /// and every node they complete; returns the nodes written and the levels touched, which
    /// [`Tree::sync`] makes durable (possibly together with other files). Memory: the new
    /// nodes only (< 2 per leaf).
    pub fn write(&self, start: u64, leaves: &[Hash]) -> Result<(u64, Vec<u8>), StoreError> {
        let mut pending = Pending {
            tree: self,
            base: start,
            levels: Vec::new(),
        };
        let mut written = 0u64;
        for (index, leaf) in (start..).zip(leaves) {
            let nodes =
                merkle::completed_nodes(&pending, index, *leaf).map_err(StoreError::from_tree)?;
            for (level, at, hash) in nodes {
                pending.push(level, at, hash)?;
                written = written.saturating_add(1);
            }
        }
        let mut touched = Vec::new();
        for (level, hashes) in (0u8..).zip(&pending.levels) {
            if hashes.is_empty() {
                continue;
            }
            let bytes: Vec<u8> = hashes.iter().flatten().copied().collect();
            self.file(level)?
                .write_all_at(&bytes, (start >> level).saturating_mul(NODE_BYTES))
                .map_err(io_err("write", &self.path(level)))?;
            touched.push(level);
        }
        Ok((written, touched))
    }

    /// Makes `levels` (and `extra`, e.g. the index) durable, in parallel, then the directory
    /// if a level file was created.
    pub fn sync_with(&self, levels: &[u8], extra: &[(&Path, &File)]) -> Result<(), StoreError> {
        let mut files = Vec::with_capacity(levels.len());
        for &level in levels {
            files.push((self.path(level), self.file(level)?));
        }
        let mut all: Vec<(&Path, &File)> = extra.to_vec();
        all.extend(files.iter().map(|(p, f)| (p.as_path(), &**f)));
        sync_parallel(&all)?;
        self.sync_dir_if_dirty()
    }

    pub fn sync(&self, levels: &[u8]) -> Result<(), StoreError> {
        self.sync_with(levels, &[])
    }

    /// Makes every level file opened so far durable.
    pub fn sync_all_levels(&self) -> Result<(), StoreError> {
        let open: Vec<u8> = (0..LEVELS).filter(|&l| self.cached(l).is_some()).collect();
        self.sync(&open)
    }

    fn bad_level(&self, level: u8) -> StoreError {
        StoreError::Corrupt {
            path: self.dir.clone(),
            offset: 0,
            reason: format!("tree level {level} is beyond the last level {}", LEVELS - 1),
        }
    }
}

impl NodeSource for Tree {
    type Error = StoreError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        let file = self.file(level)?;
        let offset = index.saturating_mul(NODE_BYTES);
        let mut hash = [0u8; 32];
        read_at(&file, &mut hash, offset).map_err(|e| match e {
            ReadError::Eof => StoreError::Corrupt {
                path: self.path(level),
                offset,
                reason: format!("node {index} of level {level} is missing"),
            },
            ReadError::Io(source) => io_err("read", &self.path(level))(source),
        })?;
        Ok(hash)
    }
}

/// The stored tree seen at a committed size, so `merkle` refuses sizes beyond it.
pub(super) struct TreeAt<'a> {
    pub tree: &'a Tree,
    pub len: u64,
}

impl NodeSource for TreeAt<'_> {
    type Error = StoreError;

    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        self.tree.node(level, index)
    }

    fn leaf_count(&self) -> Option<u64> {
        Some(self.len)
    }
}

/// The stored tree of `base` leaves plus nodes computed in this batch and not yet written.
struct Pending<'a> {
    tree: &'a Tree,
    base: u64,
    /// `levels[l]` continues level `l` from node `base >> l`.
    levels: Vec<Vec<Hash>>,
}

impl Pending<'_> {
    fn push(&mut self, level: u8, index: u64, hash: Hash) -> Result<(), StoreError> {
        let slot = usize::from(level);
        if self.levels.len() <= slot {
            self.levels.resize_with(slot.saturating_add(1), Vec::new);
        }
        let nodes = self
            .levels
            .get_mut(slot)
            .ok_or_else(|| self.tree.bad_level(level))?;
        let next = (self.base >> level).saturating_add(nodes.len() as u64);
        if index != next {
            return Err(StoreError::Corrupt {
                path: self.tree.path(level),
                offset: next.saturating_mul(NODE_BYTES),
                reason: format!("completed node {index} of level {level} arrived out of order (expected {next})"),
            });
        }
        nodes.push(hash);
        Ok(())
    }
}

impl NodeSource for Pending<'_> {
    type Error = StoreError;

    fn leaf_count(&self) -> Option<u64> {
        let new = self.levels.first().map_or(0, Vec::len) as u64;
        Some(self.base.saturating_add(new))
    }

    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        let stored = self.base >> level;
        if index < stored {
            return self.tree.node(level, index);
        }
        usize::try_from(index - stored)
            .ok()
            .and_then(|i| self.levels.get(usize::from(level))?.get(i))
            .copied()
            .ok_or_else(|| StoreError::Corrupt {
                path: self.tree.path(level),
                offset: index.saturating_mul(NODE_BYTES),
                reason: format!("node {index} of level {level} is not complete yet"),
            })
    }
}
