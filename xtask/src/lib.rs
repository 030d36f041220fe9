//! The xtask's library half: what the integration tests in `tests/` drive directly.

pub mod lab;

use std::path::PathBuf;

/// The repository root (the xtask crate sits one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
