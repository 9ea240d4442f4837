//! A repository in a local directory (what `wardctl update publish` uploads into), read with a
//! hard length limit per file.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::client::{FetchError, Repository};
use crate::metadata::check_target_name;

#[derive(Debug, Clone)]
pub struct DirRepository {
    dir: PathBuf,
}

impl DirRepository {
    pub fn new(dir: &Path) -> Self {
        DirRepository {
            dir: dir.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of an image; `None` for an unsafe name.
    pub fn target_path(&self, name: &str) -> Option<PathBuf> {
        check_target_name(name).ok()?;
        Some(self.dir.join("targets").join(name))
    }
}

impl Repository for DirRepository {
    fn fetch(&mut self, file: &str, max_len: u64) -> Result<Option<Vec<u8>>, FetchError> {
        check_target_name(file).map_err(|e| FetchError::Io(e.to_string()))?;
        let path = self.dir.join(file);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FetchError::Io(format!("{}: {e}", path.display()))),
        };
        let mut buf = Vec::new();
        f.take(max_len.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| FetchError::Io(format!("{}: {e}", path.display())))?;
        if buf.len() as u64 > max_len {
            return Err(FetchError::TooLarge { limit: max_len });
        }
        Ok(Some(buf))
    }
}
