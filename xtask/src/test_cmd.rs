//! `cargo xtask test`: the one test command (README, CI). The lab tests need the cluster in a
//! box, so this brings the box up, installs the cluster on its machines with stage 01 (as a
//! user's first `install-all --lab` does) unless it is installed, runs `cargo test
//! --workspace`, and stops the lab it started.
//!
//! The rehearsals (`rehearsals/`: tests that build boxes of their own) run beside the rest,
//! started first (they need nothing of the shared box), two at a time, each runner taking the
//! next test file, longest first, as soon as its last one ended: most of their time is machines
//! booting and leases running out, and one after the other they would not fit the suite's
//! budget. When the other tests are done the shared box goes down and a third runner joins.
//! Each runner's output is kept in a file and printed whole when it ends, so that the runs never
//! interleave.

use std::process::ExitCode;

use anyhow::Context as _;
use kit::stage::{GlobalArgs, exit, load_config};
use lab::{DEFAULT_PORT_BASE, Lab};

/// The package whose tests build boxes of their own (`rehearsals/`).
const REHEARSALS: &str = "rehearsals";
/// How many rehearsals run at once beside the other tests: one after another they take longer
/// than the other tests. Once the other tests are done, one more. (Measured on 2 cores: three
/// from the start took 15m44s but overloaded the machine: an add-on upgrade's large CRD timed out
/// against its API server; two, then a third, 15m46s.)
const REHEARSAL_RUNNERS: usize = 2;

/// The rehearsals, longest first (each one's time in a full run on 2 cores: addon_upgrade 800 s,
/// fresh_clone 640 s, twins 227 s, interrupted_install 207 s), so that no runner starts a long
/// one when the others are nearly done. One not listed runs after these.
const LONGEST_FIRST: [&str; 4] = ["addon_upgrade", "fresh_clone", "twins", "interrupted_install"];

/// The rehearsals' test files, by name as `cargo test --test` takes them, longest first.
fn rehearsal_files(root: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let dir = root.join(REHEARSALS).join("tests");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok()?.path().file_stem()?.to_str().map(str::to_owned))
        .collect();
    let rank = |file: &String| LONGEST_FIRST.iter().position(|listed| listed == file).unwrap_or(LONGEST_FIRST.len());
    files.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    Ok(files)
}

/// The rehearsals not yet started.
type Queue = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;

/// A thread that runs rehearsals from `queue` until it is empty, its output in `log_path`;
/// whether all it ran passed.
fn runner(
    queue: Queue,
    cargo_test: impl Fn(&[&str]) -> std::process::Command + Send + 'static,
    log_path: &std::path::Path,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<bool>>> {
    let log = std::fs::File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    Ok(std::thread::spawn(move || {
        let mut passed = true;
        loop {
            let next = queue.lock().map_err(|_| anyhow::anyhow!("the rehearsal queue is poisoned"))?.pop_front();
            let Some(file) = next else { return Ok(passed) };
            let status = cargo_test(&["-p", REHEARSALS, "--test", &file])
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?)
                .status()
                .with_context(|| format!("running the rehearsal {file}"))?;
            passed &= status.success();
        }
    }))
}

pub fn run(global: &GlobalArgs, cargo_args: &[String]) -> anyhow::Result<ExitCode> {
    let root = xtask::workspace_root();
    let Some(config) = load_config(&root.join("cluster.yaml"), global.output, &mut std::io::stdout())? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    let lab = Lab::new(&config, DEFAULT_PORT_BASE);
    let was_running = !lab.running_pids().is_empty();
    // Every test binary runs, so one failure does not hide the next.
    let cargo_test = {
        let (root, cargo_args, kubeconfig) = (root.clone(), cargo_args.to_vec(), lab.kubeconfig.clone());
        move |selection: &[&str]| {
            let mut command = xtask::cargo();
            command
                .current_dir(&root)
                .args(["test", "--no-fail-fast"])
                .args(selection)
                .arg("--")
                .args(&cargo_args)
                .env("TALOS_HA_LAB_KUBECONFIG", &kubeconfig);
            command
        }
    };
    // The binaries the shared box and every rehearsal box run (the shared config's releases)
    // are built once, here, before any runner starts: two rehearsals that found them missing
    // at the same moment would each build them into the same staging folder.
    lab::ensure_binaries(&config.versions).context("building the lab's binaries")?;
    let logs = lab.dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let queue: Queue = std::sync::Arc::new(std::sync::Mutex::new(rehearsal_files(&root)?.into()));
    let mut runners = Vec::new();
    let mut start_runner = |index: usize| -> anyhow::Result<()> {
        let log_path = logs.join(format!("rehearsals-{index}.log"));
        tracing::info!(
            "rehearsal runner {index} runs beside the other tests; its output comes when it ends ({})",
            log_path.display()
        );
        runners.push((runner(queue.clone(), cargo_test.clone(), &log_path)?, log_path));
        Ok(())
    };
    for index in 1..=REHEARSAL_RUNNERS {
        start_runner(index)?;
    }
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
    let others = up.and_then(|()| {
        let status = cargo_test(&["--workspace", "--exclude", REHEARSALS]).status().context("running cargo test")?;
        anyhow::ensure!(status.success(), "cargo test failed (its output is above)");
        Ok(())
    });
    // The shared box has done its work: its CPU goes to the rehearsals, a third of them at once.
    let down = if was_running {
        Ok(())
    } else {
        lab.down(false).and_then(|stopped| {
            tracing::info!("stopped the lab ({} processes)", stopped.len());
            let left = lab.running_pids();
            anyhow::ensure!(left.is_empty(), "lab processes left after down: {left:?}");
            Ok(())
        })
    };
    let third = start_runner(REHEARSAL_RUNNERS + 1);
    let mut rehearsed = true;
    for (runner, log_path) in runners {
        let passed = runner.join().map_err(|_| anyhow::anyhow!("a rehearsal runner panicked"))??;
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        eprintln!("\n==== rehearsals ({}), run beside the above ====\n{output}", log_path.display());
        rehearsed &= passed;
    }
    others.and(down).and(third)?;
    anyhow::ensure!(rehearsed, "the rehearsals failed (their output is above)");
    Ok(ExitCode::SUCCESS)
}
