//! `cargo xtask test`: the one test command (README, CI). The lab tests need the cluster in a
//! box, so this brings the box up, installs the cluster on its machines with stage 01 (as a
//! user's first `install-all --lab` does) unless it is installed, runs `cargo test
//! --workspace`, and stops the lab it started.

use std::process::ExitCode;

use anyhow::Context as _;
use kit::stage::{GlobalArgs, exit, load_config};
use lab::{DEFAULT_PORT_BASE, Lab};

pub fn run(global: &GlobalArgs, cargo_args: &[String]) -> anyhow::Result<ExitCode> {
    let root = xtask::workspace_root();
    let Some(config) = load_config(&root.join("cluster.yaml"), global.output, &mut std::io::stdout())? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    let lab = Lab::new(&config, DEFAULT_PORT_BASE);
    let was_running = !lab.running_pids().is_empty();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let up = runtime.block_on(lab.up()).and_then(|()| {
        if lab.installed() {
            return Ok(());
        }
        let stage_01 = GlobalArgs {
            lab: true,
            mirror: global.mirror.clone().or_else(|| Some(root.join("../shared/upstream"))),
            ..global.clone()
        };
        let selection =
            crate::install_all::Selection { from: None, only: Some(kit::names::TALOS_BOOTSTRAP_STAGE.to_owned()) };
        // The box is up (on its own port base) by now: install-all only uses it.
        let ports = crate::lab_cmd::LabPorts { port_base: lab.ports.base };
        let install = crate::install_all::InstallArgs { selection, ports, dry_run: false };
        let code = crate::install_all::run(&stage_01, &install)?;
        anyhow::ensure!(code == ExitCode::SUCCESS, "stage 01 did not install the cluster in the box (see above)");
        Ok(())
    });
    let tests = up.and_then(|()| {
        let status = xtask::cargo()
            .current_dir(&root)
            // Every test binary runs, so one failure does not hide the next.
            .args(["test", "--workspace", "--no-fail-fast", "--"])
            .args(cargo_args)
            .env("TALOS_HA_LAB_KUBECONFIG", &lab.kubeconfig)
            .status()
            .context("running cargo test")?;
        anyhow::ensure!(status.success(), "cargo test failed (its output is above)");
        Ok(())
    });
    if !was_running {
        let stopped = lab.down(false)?;
        tracing::info!("stopped the lab ({} processes)", stopped.len());
        let left = lab.running_pids();
        anyhow::ensure!(left.is_empty(), "lab processes left after down: {left:?}");
    }
    tests.map(|()| ExitCode::SUCCESS)
}
