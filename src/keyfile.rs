//! Private keys the appliance keeps on disk (result signing, audit signing): PKCS#8 DER, mode
//! 0600, created atomically (temporary file, fsync, rename) on first start. Small state files
//! are replaced the same way ([`write_atomically`]).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context as _;
use zeroize::Zeroizing;

/// The key at `path`, parsed by `parse`; or, if there is none, one made by `generate`
/// (returning the key and its PKCS#8 bytes), written with mode 0600.
pub fn load_or_create<K>(
    path: &Path,
    what: &str,
    parse: impl FnOnce(&[u8]) -> anyhow::Result<K>,
    generate: impl FnOnce() -> anyhow::Result<(K, Zeroizing<Vec<u8>>)>,
) -> anyhow::Result<K> {
    match std::fs::read(path) {
        Ok(der) => {
            let der = Zeroizing::new(der);
            parse(&der).with_context(|| format!("{}: not a usable {what}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (key, der) = generate()?;
            write_atomically(path, &der).with_context(|| format!("creating {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the {what}");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replace `path` with `bytes` (mode 0600) so that a crash leaves the old or the new content,
/// never a mix: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or_else(|| Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_once_with_mode_0600_then_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.p8");
        let made = load_or_create(
            &path,
            "test key",
            |b| Ok(b.to_vec()),
            || Ok((vec![1, 2, 3], Zeroizing::new(vec![1, 2, 3]))),
        )
        .unwrap();
        assert_eq!(made, vec![1, 2, 3]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = load_or_create(
            &path,
            "test key",
            |b| Ok(b.to_vec()),
            || panic!("must load"),
        )
        .unwrap();
        assert_eq!(loaded, vec![1, 2, 3]);
        let err = load_or_create::<()>(&path, "test key", |_| anyhow::bail!("bad"), || panic!())
            .unwrap_err();
        assert!(format!("{err:#}").contains("not a usable test key"));
    }
}
