//! `cargo xtask upgrade`: the cluster from what it runs to what `cluster.yaml` pins. First
//! Talos, machine by machine (`talos_upgrade.rs`), then the add-ons, hop by hop as each
//! upstream asks (`kit::upgrade` holds the walk and what each hop does).
//!
//! - `plan`: per add-on, what runs (read from the cluster), the pin, and every hop with its
//!   work. Exits 0 when nothing would change, 2 when something would, 1 on an error.
//! - `apply`: the hops in stage order, each: its pre-checks and migrations, the stage's `apply`
//!   at that release (`--pin`), its storage moves and prunes, the stage's `verify`. It stops at
//!   the first failed step with what failed, what was done and the command that resumes; a
//!   re-run reads what runs again, so it continues from where the cluster stands.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Subcommand;
use kit::config::ClusterConfig;
use kit::stage::{GlobalArgs, Output, exit};
use kit::talos::upgrade::{Install, Step};
use kit::upgrade::{Hop, Upgrade};

use crate::install_all::StageRunner;

#[derive(Subcommand, Debug)]
pub enum UpgradeAction {
    /// Per add-on: the release the cluster runs (read from it, never from cluster.yaml), the
    /// pin, and every hop between with what it does (a migration, a prune, a note). Changes
    /// nothing. Exits 0 when nothing would change, 2 when something would, 1 on an error.
    Plan,
    /// Take every hop of the plan, in stage order: pre-checks and migrations, the stage's apply
    /// at that release, storage moves and prunes, the stage's verify. Stops at the first failed
    /// step with the command that resumes; a re-run continues from where the cluster stands.
    /// On a real cluster it first asks for a passed rehearsal of this same upgrade.
    Apply {
        /// Upgrade a real cluster that no rehearsal of this upgrade passed on. Not advised.
        #[arg(long)]
        skip_rehearsal: bool,
        /// Upgrade Talos without a backup from the last hour (`cargo xtask backup` takes one).
        /// Not advised: every control plane reboots on the way.
        #[arg(long)]
        no_backup: bool,
        /// How long draining a machine may wait for PodDisruptionBudgets before the upgrade stops
        /// with the pods that will not leave (seconds; Talos's own drain gives up after 300 and
        /// upgrades anyway).
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        drain_timeout: u64,
        /// Talos's staged upgrade: each machine records the installer and reboots, and its next
        /// boot installs it before anything is mounted. For a machine whose upgrade stopped on a
        /// mount that would not come down (apply says so); slower, one more reboot per machine.
        #[arg(long)]
        stage: bool,
        /// Change nothing: show the plan, and what Talos says each Kubernetes patch would change
        /// on each machine (Talos's own dry run of the config, asked machine by machine).
        #[arg(long)]
        dry_run: bool,
    },
    /// Before a real cluster is touched: a box at the releases it runs (read from it) is
    /// installed, takes this same upgrade, and is taken down with its data; each hop's result
    /// and time are reported, and a pass is recorded in the state folder, where `apply` looks
    /// for it. Needs root, as `lab up` does.
    Rehearse {
        /// The rehearsal box's API forward port on 127.0.0.1 (it uses the 2 above it too),
        /// away from a lab of your own on the default.
        #[arg(long, default_value_t = REHEARSAL_PORT_BASE)]
        port_base: u16,
    },
}

/// Where a rehearsal box listens unless told otherwise.
const REHEARSAL_PORT_BASE: u16 = 30443;

/// A rehearsal of one upgrade, as recorded: which releases it went from and to, and how it went.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Rehearsal {
    from: BTreeMap<String, String>,
    to: BTreeMap<String, String>,
    passed: bool,
    at: String,
    seconds: f64,
    /// Each hop taken, with its time.
    hops: Vec<String>,
}

/// What runs and what is pinned, for every installed add-on, for Talos (the oldest release a
/// machine runs) and for Kubernetes (when it is to be upgraded): what a rehearsal is of.
fn from_to(phases: &Phases<'_>) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let Phases { talos, kubernetes, addons: plan } = phases;
    let installed = plan.iter().filter_map(|upgrade| Some((upgrade, upgrade.running?)));
    let mut from: BTreeMap<String, String> =
        installed.clone().map(|(upgrade, running)| (upgrade.component.to_owned(), running.to_string())).collect();
    let mut to: BTreeMap<String, String> =
        installed.map(|(upgrade, _)| (upgrade.component.to_owned(), upgrade.pin.to_string())).collect();
    let oldest = talos
        .iter()
        .filter_map(|step| Some((step.running.parse::<kit::config::Version>().ok()?, step)))
        .min_by_key(|(running, _)| *running);
    if let Some((running, step)) = oldest {
        from.insert(TALOS.to_owned(), running.to_string());
        to.insert(TALOS.to_owned(), step.wanted.clone());
    }
    if let (Some(running), true) = (kubernetes.running, kubernetes.to_upgrade()) {
        from.insert(KUBERNETES.to_owned(), running.to_string());
        to.insert(KUBERNETES.to_owned(), kubernetes.wanted.to_string());
    }
    (from, to)
}

/// Talos's key in a rehearsal's record (`versions.talos`).
const TALOS: &str = "talos";
/// Kubernetes's key in a rehearsal's record, and its pin (`versions.kubernetes`).
const KUBERNETES: &str = "kubernetes";

fn rehearsal_path(config: &ClusterConfig) -> PathBuf {
    config.state_dir().join("upgrade-rehearsal.json")
}

/// The recorded rehearsal, when it passed and is of this very upgrade.
fn rehearsed(config: &ClusterConfig, phases: &Phases<'_>) -> anyhow::Result<Option<Rehearsal>> {
    let path = rehearsal_path(config);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let record: Rehearsal = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let (from, to) = from_to(phases);
    Ok((record.passed && record.from == from && record.to == to).then_some(record))
}

pub fn run(global: &GlobalArgs, action: &UpgradeAction) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let Some(config) = global.load_config(&mut stdout)? else {
        return Ok(ExitCode::from(exit::FAILED));
    };
    let kubeconfig = global.kubeconfig(&config);
    let runtime = tokio::runtime::Runtime::new()?;
    let api_wait = Duration::from_secs(global.api_wait);
    let (client, plan) = runtime.block_on(kit::client::ride_out(&kubeconfig, api_wait, || async {
        let client = kit::client::client_from_kubeconfig(&kubeconfig).await?;
        let plan = kit::upgrade::plan(&client, &config.versions).await?;
        anyhow::Ok((client, plan))
    }))?;
    let talos = crate::talos_upgrade::plan(&config, &client, &runtime)?;
    let kubernetes = runtime.block_on(crate::kubernetes_upgrade::plan(&client, &config))?;
    let machines = talos.iter().filter(|step| step.to_do()).count();
    let hops: usize =
        plan.iter().map(|upgrade| upgrade.hops.len()).sum::<usize>() + machines + usize::from(kubernetes.to_do());
    let phases = Phases { talos: &talos, kubernetes: &kubernetes, addons: &plan };
    match action {
        UpgradeAction::Plan => {
            write_plan(&phases, global.output, &mut stdout)?;
            if hops > 0 && !global.lab && global.output == Output::Text {
                let line = match rehearsed(&config, &phases)? {
                    Some(record) => format!("rehearsal: passed at {} in {:.0}s", record.at, record.seconds),
                    None => "rehearsal: none of this upgrade yet: `cargo xtask upgrade rehearse` (apply asks for one)"
                        .to_owned(),
                };
                writeln!(stdout, "{line}")?;
            }
            Ok(if hops == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::WOULD_CHANGE) })
        }
        UpgradeAction::Rehearse { port_base } => {
            write_plan(&phases, Output::Text, &mut std::io::stderr())?;
            if hops == 0 {
                return Ok(ExitCode::SUCCESS);
            }
            rehearse(global, &config, &phases, *port_base)
        }
        UpgradeAction::Apply { skip_rehearsal, no_backup, drain_timeout, stage, dry_run } => {
            write_plan(&phases, Output::Text, &mut std::io::stderr())?;
            if hops == 0 {
                return Ok(ExitCode::SUCCESS);
            }
            let kube_api = crate::talos_upgrade::KubeApi {
                client: &client,
                kubeconfig: &kubeconfig,
                wait: api_wait,
                runtime: &runtime,
            };
            if *dry_run {
                // Talos and the add-ons are shown by the plan; the Kubernetes patches by Talos.
                crate::kubernetes_upgrade::show_diffs(&config, &kubernetes)?;
                eprintln!("dry run: nothing was changed");
                return Ok(ExitCode::SUCCESS);
            }
            if machines > 0 {
                crate::talos_upgrade::preconditions(&config, &talos, *no_backup)?;
            }
            if kubernetes.to_do() {
                crate::kubernetes_upgrade::preconditions(&config, &kubernetes, *no_backup)?;
            }
            if !global.lab {
                match (rehearsed(&config, &phases)?, skip_rehearsal) {
                    (Some(record), _) => eprintln!("rehearsed: this upgrade passed in a box at {}", record.at),
                    (None, true) => tracing::warn!(
                        "--skip-rehearsal: upgrading a real cluster that no rehearsal of this upgrade passed on; \
                         a hop that fails here fails on the cluster that matters"
                    ),
                    (None, false) => anyhow::bail!(
                        "nothing was changed: no rehearsal of this upgrade passed. Run `cargo xtask upgrade rehearse` \
                         (a box at the releases this cluster runs takes the same hops first), then apply again; \
                         --skip-rehearsal goes ahead without one"
                    ),
                }
            }
            if global.lab {
                // The box runs each add-on controller it has a build of, at the release the
                // cluster runs: the pins' builds must exist before the hops reach them. So must
                // the wanted Kubernetes release's; one the box cannot build stays unbuilt, and
                // the pre-pull stops on it as on a machine whose registry lacks the image.
                let mut versions = config.versions.clone();
                let buildable = lab::KUBERNETES_RELEASES.contains(&versions.kubernetes.to_string().as_str());
                if let (false, Some(running)) = (buildable, kubernetes.running) {
                    versions.kubernetes = running;
                }
                lab::ensure_binaries(&versions)?;
            }
            let root = xtask::workspace_root();
            let mut stages: Vec<&str> = plan.iter().filter(|upgrade| !upgrade.hops.is_empty()).map(stage_of).collect();
            let machine_configs = machines > 0 || kubernetes.to_do();
            if machine_configs {
                stages.push(kit::names::TALOS_BOOTSTRAP_STAGE);
            }
            let bin_dir = crate::stages::build(&root, &stages)?;
            let mut walker = Walker { global, bin_dir: &bin_dir, client: &client, runtime: &runtime, done: Vec::new() };
            if let Err(error) = crate::talos_upgrade::apply(
                &config,
                &kube_api,
                &talos,
                &crate::talos_upgrade::How {
                    drain_timeout: Duration::from_secs(*drain_timeout),
                    install: if *stage { Install::Staged } else { Install::Live },
                },
                &mut walker.done,
            )
            .and_then(|()| crate::kubernetes_upgrade::apply(&config, &kube_api, &kubernetes, &mut walker.done))
            .and_then(|()| if machine_configs { walker.machine_configs(&config) } else { Ok(()) })
            .and_then(|()| if kubernetes.to_record { record_kubernetes(&config, kubernetes.wanted) } else { Ok(()) })
            {
                walker.stopped(&error)?;
                return Ok(ExitCode::from(exit::FAILED));
            }
            for upgrade in &plan {
                for hop in &upgrade.hops {
                    if let Err(error) = walker.take(upgrade, hop) {
                        walker.stopped(&error)?;
                        return Ok(ExitCode::from(exit::FAILED));
                    }
                }
            }
            eprintln!("upgraded: {}", walker.done.join("; "));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A box at the releases the cluster runs: installed, upgraded as `apply` would upgrade the
/// cluster, reported and taken down; a pass is recorded.
fn rehearse(
    global: &GlobalArgs,
    config: &ClusterConfig,
    phases: &Phases<'_>,
    port_base: u16,
) -> anyhow::Result<ExitCode> {
    let (from, to) = from_to(phases);
    let dir = config.state_dir().join("rehearsal");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let name = format!("{}-rehearsal", config.name);
    let box_config = lab::second_box_config(&global.config, &dir, &name)?;
    // The box's machines boot the Talos release the cluster's oldest machine runs.
    if let (Some(running), Some(wanted)) = (from.get(TALOS), to.get(TALOS)) {
        let text = std::fs::read_to_string(&box_config.source)?;
        std::fs::write(&box_config.source, text.replace(&format!("talos: {wanted}"), &format!("talos: {running}")))?;
    }
    let lab = lab::Lab::new(&box_config, port_base);
    eprintln!("rehearsal: a box ({name}) at what runs: {}", shown(&from));
    let started = Instant::now();
    // The box's flags: the rehearsal box's config on the lab target, this run's mirror, API
    // wait and pins (a Kubernetes release named with --pin among them), never the real
    // cluster's kubeconfig.
    let in_box = GlobalArgs { lab: true, config: box_config.source.clone(), kubeconfig: None, ..global.clone() };
    let xtask = |args: &[&str], global: &GlobalArgs| -> anyhow::Result<std::process::Command> {
        let mut command = std::process::Command::new(std::env::current_exe().context("locating this xtask")?);
        command.args(args).args(global.to_args());
        Ok(command)
    };
    // Installed at what the cluster runs, one pin each.
    let pins = from.iter().filter(|(key, _)| key.as_str() != TALOS).map(|(key, version)| format!("{key}={version}"));
    let at_what_runs = GlobalArgs { pins: pins.collect(), ..in_box.clone() };
    let mut install = xtask(&["install-all", "--port-base", &port_base.to_string()], &at_what_runs)?;
    let outcome = (|| -> anyhow::Result<Vec<String>> {
        let installed = install.output().context("installing the rehearsal box")?;
        anyhow::ensure!(
            installed.status.success(),
            "the rehearsal box did not install at what runs:\n{}",
            String::from_utf8_lossy(&installed.stderr)
        );
        eprintln!("rehearsal: installed in {:.0}s; upgrading it", started.elapsed().as_secs_f64());
        // A rehearsal box has no backup of its own to keep: its data is thrown away after.
        let mut upgrade = xtask(&["upgrade", "apply", "--no-backup"], &in_box)?
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut hops = Vec::new();
        let mut log = Vec::new();
        for line in BufReader::new(upgrade.stderr.take().context("the upgrade's stderr")?).lines() {
            let line = line?;
            if line.contains(": done in ") || line.contains(" failed") {
                eprintln!("rehearsal: {line}");
            }
            if line.contains(": done in ") {
                hops.push(line.clone());
            }
            log.push(line);
        }
        let status = upgrade.wait()?;
        anyhow::ensure!(status.success(), "the upgrade failed in the rehearsal box:\n{}", log.join("\n"));
        Ok(hops)
    })();
    let down = lab.down(true);
    let seconds = started.elapsed().as_secs_f64();
    let passed = outcome.is_ok();
    let record = Rehearsal {
        from,
        to,
        passed,
        at: k8s_openapi::jiff::Timestamp::now().to_string(),
        seconds,
        hops: outcome.as_ref().cloned().unwrap_or_default(),
    };
    let path = rehearsal_path(config);
    kit::fsutil::write(&path, serde_json::to_string_pretty(&record)? + "\n")?;
    down.with_context(|| format!("taking the rehearsal box {name} down"))?;
    match outcome {
        Ok(hops) => {
            eprintln!(
                "rehearsal: passed, {} hop(s) in {seconds:.0}s; the box is gone. `cargo xtask upgrade apply` next",
                hops.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!(
                "{error:#}\nrehearsal: failed, recorded in {}; the box is gone. Fix the cause before the real cluster",
                path.display()
            );
            Ok(ExitCode::from(exit::FAILED))
        }
    }
}

/// Writes `versions.kubernetes` into cluster.yaml, its comments and layout kept, once the
/// cluster runs the release a `--pin` asked for: stage 01 then renders what runs, and a later
/// apply does not take the cluster back.
fn record_kubernetes(config: &ClusterConfig, version: kit::config::Version) -> anyhow::Result<()> {
    let path = &config.source;
    let source = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let written = kit::config::with_version(&source, KUBERNETES, version).with_context(|| {
        format!("{} has no versions.kubernetes line to write {version} into: add it by hand", path.display())
    })?;
    kit::fsutil::write(path, written)?;
    eprintln!("kubernetes: {} now says versions.kubernetes: {version}", path.display());
    Ok(())
}

fn shown(versions: &BTreeMap<String, String>) -> String {
    versions.iter().map(|(key, version)| format!("{key} {version}")).collect::<Vec<_>>().join(", ")
}

/// The stage that installs an add-on: its crate is named as the add-on's folder.
fn stage_of(upgrade: &Upgrade) -> &'static str {
    upgrade.of.dir()
}

/// Takes hops one after another, keeping what was done for the report of a stop.
struct Walker<'a> {
    global: &'a GlobalArgs,
    bin_dir: &'a std::path::Path,
    client: &'a kube::Client,
    runtime: &'a tokio::runtime::Runtime,
    done: Vec<String>,
}

impl Walker<'_> {
    /// One hop: before, the stage's apply at `hop.to`, after, the stage's verify.
    fn take(&mut self, upgrade: &Upgrade, hop: &Hop) -> anyhow::Result<()> {
        let started = Instant::now();
        let name = format!("{} {} → {}", upgrade.component, hop.from, hop.to);
        eprintln!("{name}: starting");
        for line in self.runtime.block_on(kit::upgrade::before(self.client, hop)).with_context(|| name.clone())? {
            eprintln!("{name}: {line}");
        }
        let mut global = self.global.clone();
        global.pins = vec![format!("{}={}", upgrade.component, hop.to)];
        let runner = StageRunner { bin_dir: self.bin_dir, stage: stage_of(upgrade), global: &global };
        self.apply_then_verify(&name, &runner, || {
            for line in self.runtime.block_on(kit::upgrade::after(self.client, hop)).with_context(|| name.clone())? {
                eprintln!("{name}: {line}");
            }
            Ok(())
        })?;
        eprintln!("{name}: done in {:.1}s", started.elapsed().as_secs_f64());
        self.done.push(name);
        Ok(())
    }

    /// After machines were upgraded (Talos or Kubernetes): stage 01 renders the machine configs
    /// again, now naming the installer of the release they boot (`talosctl upgrade` leaves a
    /// machine's config as it was) and the Kubernetes images they run (the live configs carry
    /// them since the Kubernetes phase patched them), each machine gets its own (stage 01 leaves
    /// configured machines alone), and stage 01 verifies: a reinstall or reset boots those
    /// releases, a later apply does not take them back, and stage 01 finds no drift.
    fn machine_configs(&mut self, config: &ClusterConfig) -> anyhow::Result<()> {
        let started = Instant::now();
        let name = "talos machine configs".to_owned();
        eprintln!("{name}: rendered again by stage 01, at the releases the machines run");
        let runner =
            StageRunner { bin_dir: self.bin_dir, stage: kit::names::TALOS_BOOTSTRAP_STAGE, global: self.global };
        self.apply_then_verify(&name, &runner, || crate::talos_upgrade::apply_configs(config))?;
        eprintln!("{name}: done in {:.1}s", started.elapsed().as_secs_f64());
        self.done.push(name);
        Ok(())
    }

    /// The stage's apply, `after_apply`, then its verify; each step's outcome shown under `name`.
    fn apply_then_verify(
        &self,
        name: &str,
        runner: &StageRunner<'_>,
        mut after_apply: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for step in ["apply", "verify"] {
            let outcome = runner.run(step)?;
            eprintln!("{name}: {} {step}: {}", runner.stage, outcome.summary());
            if let Some(failure) = outcome.failure() {
                anyhow::bail!("{name}: {} {step} failed:\n{failure}", runner.stage);
            }
            if step == "apply" {
                after_apply()?;
            }
        }
        Ok(())
    }

    /// What failed, what was done, and the command that resumes.
    fn stopped(&self, error: &anyhow::Error) -> anyhow::Result<()> {
        let mut stderr = std::io::stderr();
        writeln!(stderr, "{error:#}")?;
        let done = if self.done.is_empty() { "nothing".to_owned() } else { self.done.join("; ") };
        writeln!(stderr, "done before the stop: {done}")?;
        writeln!(
            stderr,
            "fix the above, then resume with (it reads what runs and continues):\n  {}",
            self.global.xtask_command("upgrade apply")
        )?;
        Ok(())
    }
}

/// What `upgrade` plans, phase by phase in the order it takes them.
struct Phases<'a> {
    talos: &'a [Step],
    kubernetes: &'a crate::kubernetes_upgrade::Plan,
    addons: &'a [Upgrade],
}

/// The plan for people (Talos's machines, Kubernetes's line, then a block per add-on) or for
/// scripts (one JSON object per machine to upgrade, `{"talos": …}`, then `{"kubernetes": …}`
/// when that phase has work, then one per add-on).
fn write_plan(phases: &Phases<'_>, output: Output, out: &mut impl Write) -> anyhow::Result<()> {
    let Phases { talos, kubernetes, addons: plan } = phases;
    if output == Output::Json {
        for step in talos.iter().filter(|step| step.to_do()) {
            writeln!(out, "{}", serde_json::json!({ TALOS: step }))?;
        }
        if kubernetes.to_do() {
            writeln!(out, "{}", serde_json::json!({ KUBERNETES: kubernetes }))?;
        }
        for upgrade in *plan {
            writeln!(out, "{}", serde_json::to_string(upgrade)?)?;
        }
        return Ok(());
    }
    crate::talos_upgrade::write_plan(talos, out)?;
    crate::kubernetes_upgrade::write_plan(kubernetes, out)?;
    for upgrade in *plan {
        let running = upgrade.running.map_or_else(|| "not installed".to_owned(), |version| version.to_string());
        let state = if upgrade.hops.is_empty() { "nothing to do" } else { "to upgrade" };
        writeln!(
            out,
            "{:<14} {running} → {}: {state} (what runs: {})",
            upgrade.component, upgrade.pin, upgrade.read_from
        )?;
        for hop in &upgrade.hops {
            writeln!(out, "  {} → {}", hop.from, hop.to)?;
            for work in &hop.work {
                writeln!(out, "      {work}")?;
            }
        }
    }
    let hops: usize = plan.iter().map(|upgrade| upgrade.hops.len()).sum();
    writeln!(out, "{hops} add-on hop(s) to take")?;
    Ok(())
}
