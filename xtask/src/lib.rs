//! The xtask's library half: what the integration tests in `tests/` drive directly.

pub mod docs;
pub mod lab;
pub mod stages;

use std::path::PathBuf;

/// The repository root (the xtask crate sits one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Copies the config at `source` into `dir` and loads it there, so that its state folder (and
/// so its lab, kubeconfig and lock) lives in `dir`: for labs beside the main one (bench, tests).
pub fn scratch_config(source: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<kit::config::ClusterConfig> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("cluster.yaml");
    std::fs::copy(source, &path)?;
    Ok(kit::config::ClusterConfig::load(&path)?)
}
