//! Rehearsals on boxes of their own. Each test here builds a cluster in a box beside the shared
//! lab (another cluster name, so other network namespaces; its own state folder and port base),
//! does to it what must never be done to the shared one (installs it from nothing, kills the
//! install, wipes etcd, resets machines), and takes it down with its data. Nothing here touches
//! the shared lab, so `cargo xtask test` runs this package beside the lab's own tests
//! (`tests/`), which keeps the whole suite inside its time budget on two cores.
//!
//! - `twins.rs`: stage 01 one step at a time against the node twins.
//! - `fresh_clone.rs`: README's first command from nothing, twice.
//! - `interrupted_install.rs`: a first install killed at three points, and a wiped cluster.
//! - `addon_upgrade.rs`: a box at the seed's add-ons upgraded hop by hop to the defaults.
//!   Its box, at every stage's default release, then runs the restore drill (`drill.rs`): it
//!   loses etcd's quorum and is restored from a backup.

pub mod drill;

use kit::config::ClusterConfig;
use lab::Lab;

/// A box of a test's own, taken down with its data whatever the test did.
pub struct OwnBox {
    _dir: tempfile::TempDir,
    pub config: ClusterConfig,
    pub lab: Lab,
    /// Where stage 01 keeps the box's cluster's files (`state/lab/cluster`).
    pub cluster_state: std::path::PathBuf,
}

impl OwnBox {
    /// The shared lab's config under another cluster name, in a folder of its own, on ports
    /// from `port_base`.
    pub fn new(name: &str, port_base: u16) -> anyhow::Result<OwnBox> {
        let dir = tempfile::tempdir()?;
        let config = lab::second_box_config(&tests::config_path(), dir.path(), name)?;
        let lab = Lab::new(&config, port_base);
        let cluster_state = config.clone().in_box().state_dir();
        Ok(OwnBox { _dir: dir, config, lab, cluster_state })
    }

    /// `cargo xtask <args> --lab` on this box (its ports, its config, the test mirror).
    pub fn xtask(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.cargo_xtask(args);
        command.arg("--lab");
        command
    }

    /// `cargo xtask <args>` on the talos target, as on a real cluster, aimed at this box's API
    /// through its forward on 127.0.0.1 (`--kubeconfig`), so nothing but loopback is dialled.
    pub fn xtask_as_real(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.cargo_xtask(args);
        command.arg("--kubeconfig").arg(&self.lab.kubeconfig);
        command
    }

    fn cargo_xtask(&self, args: &[&str]) -> std::process::Command {
        let mut command = xtask::cargo();
        command
            .current_dir(xtask::workspace_root())
            .arg("xtask")
            .args(args)
            .arg("--config")
            .arg(&self.config.source)
            .arg("--mirror")
            .arg(tests::upstream_mirror());
        command
    }
}

impl Drop for OwnBox {
    fn drop(&mut self) {
        if let Err(error) = self.lab.down(true) {
            eprintln!("taking {} down: {error:#}", self.config.name);
        }
    }
}
