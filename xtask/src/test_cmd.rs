//! `cargo xtask test`: the one test command (README, CI). The lab tests need the cluster in a
//! box, so this brings the box up, installs the cluster on its machines with stage 01 (as a
//! user's first `install-all --lab` does) unless it is installed, runs `cargo test
//! --workspace`, and stops the lab it started.
//!
//! The rehearsals (`rehearsals/`: tests that build boxes of their own) run as a second `cargo
//! test` beside the rest: most of their time is machines booting and leases running out, and
//! one after the other the two halves would not fit the suite's budget. Their output is kept
//! in a file and printed whole when they end, so that the two never interleave.

use std::process::ExitCode;

use anyhow::Context as _;
use kit::stage::{GlobalArgs, exit, load_config};
use lab::{DEFAULT_PORT_BASE, Lab};

/// The package whose tests build boxes of their own (`rehearsals/`).
const REHEARSALS: &str = "rehearsals";

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
        // Every test binary runs, so one failure does not hide the next.
        let cargo_test = |selection: &[&str]| {
            let mut command = xtask::cargo();
            command
                .current_dir(&root)
                .args(["test", "--no-fail-fast"])
                .args(selection)
                .arg("--")
                .args(cargo_args)
                .env("TALOS_HA_LAB_KUBECONFIG", &lab.kubeconfig);
            command
        };
        let log_path = lab.dir.join("logs").join("rehearsals.log");
        std::fs::create_dir_all(lab.dir.join("logs"))?;
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut rehearsals = cargo_test(&["-p", REHEARSALS])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("running cargo test -p rehearsals")?;
        tracing::info!(
            "the rehearsals run beside the other tests; their output comes when they end ({})",
            log_path.display()
        );
        let others = cargo_test(&["--workspace", "--exclude", REHEARSALS]).status().context("running cargo test");
        let rehearsed = rehearsals.wait().context("waiting for the rehearsals");
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        eprintln!("\n==== the rehearsals (cargo test -p {REHEARSALS}), run beside the above ====\n{output}");
        let (others, rehearsed) = (others?, rehearsed?);
        anyhow::ensure!(others.success(), "cargo test failed (its output is above)");
        anyhow::ensure!(rehearsed.success(), "the rehearsals failed (their output is above)");
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
