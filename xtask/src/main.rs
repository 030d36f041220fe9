//! `cargo xtask …`: talos-ha's task runner (the cargo-xtask convention: plain Rust, no scripts).

mod backup;
mod bench;
mod install_all;
mod kubernetes_upgrade;
mod lab_cmd;
mod machines;
mod mirror;
mod node;
mod render;
mod restore;
use xtask::stages;
mod status;
mod talos_upgrade;
mod test_cmd;
mod upgrade;
mod validate;
mod verify_ha;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use kit::stage::GlobalArgs;

/// Build and test a highly available Kubernetes cluster on Talos Linux, stage by stage.
///
/// Start with `cargo xtask validate` to check cluster.yaml, then `cargo xtask install-all --lab`
/// to build the whole cluster in a box (six Talos node twins at the config's addresses, in
/// network namespaces on this machine, built for you) before doing it on real machines, and
/// `cargo xtask test` to run every test against the box.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build the cluster: every stage in order (check, apply, verify), stopping at the first
    /// failure with the fix and the command that resumes. Add --lab for the local lab (started
    /// if there is none); --output json for a report of every check and change on stdout.
    InstallAll(install_all::InstallArgs),
    /// What install-all would change, stage by stage (each stage's check, then its plan: a
    /// server-side dry run with a field diff); changes nothing. Exits 0 when nothing would
    /// change, 2 when something would, 1 on an error (terraform's -detailed-exitcode).
    Plan(install_all::PlanArgs),
    /// Check cluster.yaml: prints a summary of a valid config, or every problem with its fix.
    Validate,
    /// The lab: the cluster in a box. The config's LAN in network namespaces, a Talos node
    /// twin at each node's address (stage 01 installs the cluster on them with talosctl), and
    /// the API forwarded to 127.0.0.1.
    Lab {
        #[command(subcommand)]
        action: lab_cmd::LabAction,
    },
    /// Fill a folder with every pinned upstream manifest (and a SHA256SUMS) for air-gapped
    /// sites; then pass `--mirror DIR` to any command.
    Mirror {
        /// The folder to fill (laid out <component>/<version>/<file>).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Write the seed's folder tree from cluster.yaml: 01-talos-bootstrap/ … 100-workloads/,
    /// README.md (IP plan, diagram, Quick Access) and HA-VERIFICATION.md. No cluster needed.
    Render {
        /// The folder to write into.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// The Quick Access table from cluster.yaml, checked live (reachable, certificate expiry),
    /// plus the nodes, the etcd members and who holds the VIP.
    Status,
    /// The HA verification guide as a tool: etcd quorum, the VIP, spread workloads, volumes.
    /// Read-only on Talos unless --drill; with --lab, a real drill with measured times.
    VerifyHa(verify_ha::VerifyHaArgs),
    /// Upgrade the add-ons from the releases the cluster runs to cluster.yaml's pins, hop by hop
    /// as each upstream asks (Longhorn, cert-manager and Envoy Gateway one minor at a time).
    Upgrade {
        #[command(subcommand)]
        action: upgrade::UpgradeAction,
    },
    /// Machines in and out: `node replace NAME` puts a new machine (booted from the ISO at the
    /// same address) in a dead one's place; `node remove NAME` takes out one removed from
    /// cluster.yaml. Each shows its steps, keeps etcd's quorum, checks every step, and resumes.
    Node {
        #[command(subcommand)]
        action: node::NodeAction,
    },
    /// Back the cluster up: an etcd snapshot from the most up-to-date healthy control plane,
    /// with what a rebuild needs (secrets bundle, talosconfig, machine configs, cluster.yaml,
    /// talos-ha.lock), in a dated folder (0700, files 0600); prints its path. Optionally
    /// encrypted (--age-recipient) and pruned (--keep N). `restore --from` reads it.
    Backup(backup::BackupArgs),
    /// Disaster recovery: Talos's runbook for a cluster whose etcd lost quorum, from a backup.
    /// Checks the backup (hashes, this cluster's secrets) and refuses while a majority of
    /// control planes is healthy; wipes EPHEMERAL on the control planes, bootstraps one from
    /// the snapshot, lets the others join, verifies, and prints the recovery point and time.
    /// Run it again when a control plane that was off is back: it wipes only non-members.
    Restore(restore::RestoreArgs),
    /// Benchmarks (speed targets live here, not in timed tests).
    Bench {
        #[command(subcommand)]
        what: BenchTarget,
    },
    /// Run the whole test suite: bring the lab up, `cargo test --workspace`, take it down.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. `-- --nocapture`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum BenchTarget {
    /// The apply engine vs `kubectl apply --server-side` on every upstream bundle, cold and
    /// no-op, each on a fresh lab of its own.
    Apply,
}

fn main() -> ExitCode {
    let cli: Cli = match kit::stage::parse_command_line(Cli::command(), std::env::args_os()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    kit::logging::init(cli.global.verbose);
    let result = match cli.command {
        Command::InstallAll(args) => install_all::run(&cli.global, &args),
        Command::Plan(args) => install_all::run(&cli.global, &args.into()),
        Command::Validate => validate::run(&cli.global),
        Command::Lab { action } => lab_cmd::run(&cli.global, action),
        Command::Backup(args) => backup::run(&cli.global, &args),
        Command::Restore(args) => restore::run(&cli.global, &args),
        Command::Bench { what: BenchTarget::Apply } => bench::run(&cli.global),
        Command::Mirror { out } => mirror::run(&cli.global, &out),
        Command::Render { out } => render::run(&cli.global, &out),
        Command::Status => status::run(&cli.global),
        Command::VerifyHa(args) => verify_ha::run(&cli.global, &args),
        Command::Test { cargo_args } => test_cmd::run(&cli.global, &cargo_args),
        Command::Upgrade { action } => upgrade::run(&cli.global, &action),
        Command::Node { action } => node::run(&cli.global, &action),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::from(kit::stage::exit::FAILED)
        }
    }
}
