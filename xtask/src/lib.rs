//! The xtask's library half: what the integration tests in `tests/` drive directly.

pub mod docs;
pub mod stages;

use std::path::PathBuf;

/// The repository root (the xtask crate sits one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `cargo` as a terminal would run it, for the xtask and the tests to call from inside
/// `cargo run` / `cargo test`. Those give the program the variables of its own package
/// (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, ...); a nested cargo hands them on to build scripts
/// that watch them (ring's does), so every nested build recompiled ring and all above it, and
/// the next plain build did it again. The `CARGO` cargo set is kept: the same toolchain.
pub fn cargo() -> std::process::Command {
    let mut command = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let per_package = ["CARGO_PKG_", "CARGO_MANIFEST_"].iter().any(|prefix| name.starts_with(prefix))
            || ["CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"]
                .contains(&name.as_ref());
        if per_package {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// Copies the config at `source` into `dir` and loads it there, so that its state folder (and
/// so its kubeconfig and lock) lives in `dir`.
pub fn scratch_config(source: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<kit::config::ClusterConfig> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("cluster.yaml");
    std::fs::copy(source, &path)?;
    Ok(kit::config::ClusterConfig::load(&path)?)
}
