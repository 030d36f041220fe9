//! Files the tool writes: the cache's place, files that must stay private (keys, tokens,
//! kubeconfigs), and the folders `render` fills.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where talos-ha caches what it builds or downloads (lab binaries, upstream artifacts):
/// `$TALOS_HA_CACHE`, else `$XDG_CACHE_HOME/talos-ha`, else `~/.cache/talos-ha`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TALOS_HA_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("talos-ha")
}

/// Writes `contents` to `path` readable by the owner only (0600), creating parent folders.
/// The mode is set at creation and again afterwards, so an older, looser file is tightened.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = create_private(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to 0600", path.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", path.display()))
}

/// Creates the folder `path` (and its parents) readable by the owner only (0700).
pub fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to 0700", path.display()))
}

/// Creates (or truncates) `path` for writing, readable by the owner only (0600).
pub fn create_private(path: &Path) -> anyhow::Result<fs::File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))
}

/// The permission bits of `path` (`0o600` for a private file).
pub fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(fs::metadata(path).with_context(|| format!("reading {}'s mode", path.display()))?.permissions().mode() & 0o777)
}

/// The password kept in `path` (0600), made the first time from 24 random bytes: the same on
/// every later run, so re-applying changes nothing.
pub fn password(path: &Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    if let Ok(existing) = fs::read_to_string(path)
        && !existing.trim().is_empty()
    {
        return Ok(existing.trim().to_owned());
    }
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom").context("opening /dev/urandom")?, &mut bytes)
        .context("reading /dev/urandom")?;
    let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    write_private(path, format!("{password}\n").as_bytes())?;
    Ok(password)
}

/// Writes a seed folder `<out>/<folder>/` (what `render` produces); returns the paths written,
/// in order.
pub fn write_folder(out: &Path, folder: &str, files: Vec<(String, Vec<u8>)>) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, contents) in files {
        let path = out.join(folder).join(name);
        write(&path, contents)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `contents` to `path` (not private: see [`write_private`]), creating parent folders.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Writes `contents` to `path` whole or not at all: into a temporary file beside it, synced,
/// then renamed over it (0600). A record that a process killed at any instant must leave
/// readable (stage 01's evidence) is the old one or the new one, never a truncated file.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut file =
        tempfile::NamedTempFile::new_in(parent).with_context(|| format!("creating a file in {}", parent.display()))?;
    file.write_all(contents.as_ref()).with_context(|| format!("writing {}", file.path().display()))?;
    file.as_file().sync_all().with_context(|| format!("syncing {}", file.path().display()))?;
    file.persist(path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_even_when_they_existed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested/secret.key");
        fs::create_dir_all(dir.path().join("nested"))?;
        fs::write(&path, "old")?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        write_private(&path, b"new")?;
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path)?, "new");
        Ok(())
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_nothing_beside_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state/record.json");
        write_atomic(&path, "old")?;
        write_atomic(&path, "new")?;
        assert_eq!(fs::read_to_string(&path)?, "new");
        assert_eq!(fs::read_dir(dir.path().join("state"))?.count(), 1, "no temporary file is left");
        Ok(())
    }

    #[test]
    fn a_password_is_made_once_private_and_kept() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state/ui-password");
        let first = password(&path)?;
        assert_eq!(first.len(), 32, "24 random bytes, base64");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(password(&path)?, first, "kept");
        assert_ne!(password(&dir.path().join("other"))?, first, "random");
        Ok(())
    }
}
