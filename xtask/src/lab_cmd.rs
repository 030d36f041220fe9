//! `cargo xtask lab build | up | status | shell | power-cut | power-on | swap-disk | talos-suite | down`: the
//! command-line face of `lab`. `power-cut`, `power-on` and `swap-disk` are physical acts on the
//! box's machines, for rehearsing what happens to real ones; on a real site a person does them.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use kit::stage::{GlobalArgs, Output, exit};
use lab::talos_suite::{Judged, Outcome};
use lab::{DEFAULT_PORT_BASE, Lab};

/// Where a new lab listens on this machine: `lab up` and `install-all --lab` take it.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct LabPorts {
    /// The API forward's port on 127.0.0.1 for a lab created now (a lab keeps the port it was
    /// created with); the workstation's stand-ins use the 2 ports just above it. Keep it below
    /// 32765, out of the range Linux gives outgoing connections.
    #[arg(long, default_value_t = DEFAULT_PORT_BASE, env = "TALOS_HA_LAB_PORT_BASE")]
    pub port_base: u16,
}

#[derive(Subcommand, Debug)]
pub enum LabAction {
    /// Build the lab's binaries from Go modules into the cache (`up` does this on first use),
    /// and Talos's API integration suite (`talos-suite` builds it on first use).
    Build,
    /// Build the box and start its machines (building the binaries on first use): in
    /// maintenance mode the first time, waiting for `install-all --lab`; into their configs
    /// after. Re-running it on a running lab changes nothing; on a half-running one it starts
    /// what is missing.
    Up {
        #[command(flatten)]
        ports: LabPorts,
    },
    /// Each component's PID, health and memory, and the box.
    Status,
    /// A shell on the workstation inside the box (the config's LAN): talosctl, kubectl and
    /// curl reach the config's addresses there. `lab shell -- CMD…` runs one command instead.
    Shell {
        /// The command to run (default: $SHELL, else bash).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// A physical act, the lab's only: cut one machine's power, as a failing power supply would:
    /// its twin and everything it runs are killed (SIGKILL, no orderly shutdown: a VIP holder
    /// does not resign, its etcd member does not leave) and its switch port goes dark. Try it while `install-all --lab` runs, or watch `cargo xtask
    /// status --lab` as the VIP moves (within about a minute, when its etcd lease runs out).
    PowerCut {
        /// The machine, by its name in cluster.yaml (e.g. cp01).
        node: String,
    },
    /// A physical act, the lab's only: power one machine on again (after `power-cut`): its port
    /// comes up and it boots into its config. `up` does the same for every machine that is off.
    PowerOn {
        /// The machine, by its name in cluster.yaml.
        node: String,
    },
    /// A physical act, the lab's only: swap the disk of a machine that is off (`power-cut` it
    /// first) for a blank one, as when its disk died or a new machine takes its place at its
    /// address, and power it on: it boots from the Talos ISO into maintenance mode, at the same
    /// address, waiting for its config. Then rehearse `cargo xtask node replace NODE --lab`.
    SwapDisk {
        /// The machine, by its name in cluster.yaml.
        node: String,
    },
    /// Judge the twins with Talos's own API integration suite, the tests Sidero Labs runs on
    /// real machines (built from Talos's Go module on first use, about 6 minutes): the suites
    /// the twins answer run against the installed box from its workstation, and every other
    /// suite is listed with why it is skipped. Exits 1 if a judged test fails.
    TalosSuite,
    /// Stop every process the lab started.
    Down {
        /// Also delete the box's data: its machines' disks and the cluster installed on them, its
        /// secrets, talosconfig and kubeconfigs (everything in state/lab).
        #[arg(long)]
        purge: bool,
    },
}

pub fn run(global: &GlobalArgs, action: LabAction) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let Some(config) = global.load_config(&mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    let port_base = match action {
        LabAction::Up { ports } => ports.port_base,
        _ => DEFAULT_PORT_BASE,
    };
    let lab = Lab::new(&config, port_base);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match action {
        LabAction::Build => {
            let binaries = lab::ensure_binaries(&config.versions)?;
            lab::ensure_talos_suite(&config.versions)?;
            writeln!(
                stdout,
                "lab binaries ready in {}",
                binaries.kubernetes_dir.parent().unwrap_or(&binaries.kubernetes_dir).display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Up { .. } => {
            let started = std::time::Instant::now();
            runtime.block_on(lab.up())?;
            tracing::info!("lab up in {:.1}s", started.elapsed().as_secs_f64());
            writeln!(stdout, "The box is up: {} Talos machines at the config's addresses.", config.nodes.len())?;
            if lab.installed() {
                writeln!(stdout, "The cluster answers on {} (forwarded to {}):", lab.api_url(), config.api_endpoint())?;
                writeln!(stdout, "  export KUBECONFIG={}", lab.kubeconfig.display())?;
                writeln!(stdout, "  kubectl get nodes -o wide")?;
            } else {
                writeln!(stdout, "Install the cluster on them: cargo xtask install-all --lab")?;
            }
            writeln!(stdout, "Inside the box: cargo xtask lab shell (talosctl, kubectl at the real addresses).")?;
            writeln!(stdout, "Stop it with `cargo xtask lab down` (add --purge to delete its data).")?;
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Status => {
            let report = runtime.block_on(lab.status());
            match global.output {
                Output::Json => kit::report::write_json_lines(&report, &mut stdout)?,
                Output::Text => {
                    let mut total = 0;
                    for component in &report {
                        let pid = component.pid.map_or_else(|| "-".to_owned(), |pid| pid.to_string());
                        let mib = component.resident_bytes.unwrap_or_default() / (1024 * 1024);
                        total += mib;
                        let state = if component.healthy { "ok" } else { "DOWN" };
                        writeln!(
                            stdout,
                            "{state:<5} {:<24} pid {pid:<8} {mib:>5} MiB  {}",
                            component.name, component.detail
                        )?;
                    }
                    writeln!(stdout, "total resident memory: {total} MiB")?;
                }
            }
            let healthy = report.iter().all(|c| c.healthy);
            Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(exit::FAILED) })
        }
        LabAction::Shell { command } => {
            let command = if command.is_empty() {
                vec![std::env::var("SHELL").unwrap_or_else(|_| "bash".to_owned())]
            } else {
                command
            };
            let status = lab.shell(&command)?;
            Ok(ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)))
        }
        LabAction::PowerCut { node } => {
            lab.power_cut(&node)?;
            writeln!(stdout, "{node} is off: its twin was killed and its switch port is down.")?;
            writeln!(stdout, "Power it on again: cargo xtask lab power-on {node}")?;
            Ok(ExitCode::SUCCESS)
        }
        LabAction::PowerOn { node } => {
            runtime.block_on(lab.power_on(&node))?;
            writeln!(stdout, "{node} is on and answers on its Talos API.")?;
            Ok(ExitCode::SUCCESS)
        }
        LabAction::SwapDisk { node } => {
            runtime.block_on(lab.swap_disk(&node))?;
            writeln!(stdout, "{node} has a blank disk and waits in maintenance mode at its address.")?;
            writeln!(stdout, "Put it back in the cluster: cargo xtask node replace {node} --lab")?;
            Ok(ExitCode::SUCCESS)
        }
        LabAction::TalosSuite => {
            let binary = lab::ensure_talos_suite(&config.versions)?;
            let results = lab::talos_suite::run(&config, &binary)?;
            for result in &results {
                let outcome = match result.outcome {
                    Outcome::Passed => "pass",
                    Outcome::Failed => "FAIL",
                    Outcome::Skipped => "skip (by the test)",
                };
                writeln!(stdout, "{outcome:<5} {}/{}", result.suite, result.test)?;
                if !result.output.is_empty() {
                    writeln!(stdout, "{}", result.output)?;
                }
            }
            for (suite, judged) in lab::talos_suite::SUITES {
                if let Judged::Skipped(reason) = judged {
                    writeln!(stdout, "not run {suite}: {reason}")?;
                }
            }
            let count = |outcome: Outcome| results.iter().filter(|result| result.outcome == outcome).count();
            let failed = count(Outcome::Failed);
            writeln!(
                stdout,
                "Talos's judged tests: {} passed, {failed} failed, {} skipped by the tests themselves",
                count(Outcome::Passed),
                count(Outcome::Skipped)
            )?;
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::FAILED) })
        }
        LabAction::Down { purge } => {
            let stopped = lab.down(purge)?;
            writeln!(
                stdout,
                "stopped: {}",
                if stopped.is_empty() { "nothing was running".to_owned() } else { stopped.join(", ") }
            )?;
            if purge {
                writeln!(stdout, "deleted {}", lab.dir.display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
