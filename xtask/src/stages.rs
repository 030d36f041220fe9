//! The stage binaries, as `install-all` and `render` run them: built once, then each called
//! with the same global flags the xtask was given.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use kit::stage::GlobalArgs;

/// The seed's stages, 01–08 and 100, by crate (and binary) name.
pub const STAGES: &[&str] = &[
    "talos-bootstrap",
    "metallb",
    "metrics-server",
    "traefik",
    "cert-manager",
    "longhorn",
    "headlamp",
    "envoy-gateway",
    "workloads",
];

/// The stages that exist in this workspace, in order.
pub fn present(root: &Path) -> Vec<&'static str> {
    STAGES.iter().copied().filter(|stage| root.join(stage).join("Cargo.toml").exists()).collect()
}

/// Builds `stages`; returns the folder their binaries are in.
pub fn build(root: &Path, stages: &[&str]) -> anyhow::Result<PathBuf> {
    let packages: Vec<String> = stages.iter().flat_map(|stage| ["-p".to_owned(), (*stage).to_owned()]).collect();
    tracing::debug!("cargo build --quiet {}", packages.join(" "));
    let status = crate::cargo()
        .current_dir(root)
        .args(["build", "--quiet"])
        .args(&packages)
        .status()
        .context("running cargo build for the stage binaries")?;
    anyhow::ensure!(status.success(), "building the stage binaries failed (cargo's output is above)");
    Ok(root.join("target").join("debug"))
}

/// `<stage> <step>` with the xtask's global flags (config, target, kubeconfig, mirror).
pub fn command(bin_dir: &Path, stage: &str, step: &str, global: &GlobalArgs) -> Command {
    let mut command = Command::new(bin_dir.join(stage));
    command.arg(step).args(global.to_args());
    command
}
