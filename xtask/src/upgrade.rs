//! `cargo xtask upgrade`: the add-ons from the releases the cluster runs to the ones
//! `cluster.yaml` pins, hop by hop as each upstream asks. `kit::upgrade` holds the walk and
//! what each hop does; this runs it.
//!
//! - `plan`: per add-on, what runs (read from the cluster), the pin, and every hop with its
//!   work. Exits 0 when nothing would change, 2 when something would, 1 on an error.
//! - `apply`: the hops in stage order, each: its pre-checks and migrations, the stage's `apply`
//!   at that release (`--pin`), its storage moves and prunes, the stage's `verify`. It stops at
//!   the first failed step with what failed, what was done and the command that resumes; a
//!   re-run reads what runs again, so it continues from where the cluster stands.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Subcommand;
use kit::stage::{GlobalArgs, Output, exit};
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
    Apply,
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
    let hops: usize = plan.iter().map(|upgrade| upgrade.hops.len()).sum();
    match action {
        UpgradeAction::Plan => {
            write_plan(&plan, global.output, &mut stdout)?;
            Ok(if hops == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::WOULD_CHANGE) })
        }
        UpgradeAction::Apply => {
            write_plan(&plan, Output::Text, &mut std::io::stderr())?;
            if hops == 0 {
                return Ok(ExitCode::SUCCESS);
            }
            let root = xtask::workspace_root();
            let stages: Vec<&str> = plan.iter().filter(|upgrade| !upgrade.hops.is_empty()).map(stage_of).collect();
            let bin_dir = crate::stages::build(&root, &stages)?;
            let mut walker = Walker { global, bin_dir: &bin_dir, client: &client, runtime: &runtime, done: Vec::new() };
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
        for step in ["apply", "verify"] {
            let outcome = runner.run(step)?;
            eprintln!("{name}: {} {step}: {}", runner.stage, outcome.summary());
            if let Some(failure) = outcome.failure() {
                anyhow::bail!("{name}: {} {step} failed:\n{failure}", runner.stage);
            }
            if step == "apply" {
                for line in
                    self.runtime.block_on(kit::upgrade::after(self.client, hop)).with_context(|| name.clone())?
                {
                    eprintln!("{name}: {line}");
                }
            }
        }
        eprintln!("{name}: done in {:.1}s", started.elapsed().as_secs_f64());
        self.done.push(name);
        Ok(())
    }

    /// What failed, what was done, and the command that resumes.
    fn stopped(&self, error: &anyhow::Error) -> anyhow::Result<()> {
        let mut stderr = std::io::stderr();
        writeln!(stderr, "{error:#}")?;
        let done = if self.done.is_empty() { "nothing".to_owned() } else { self.done.join("; ") };
        writeln!(stderr, "done before the stop: {done}")?;
        let flags: Vec<String> = self.global.to_args().iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
        let resume = format!("cargo xtask upgrade apply {}", flags.join(" "));
        writeln!(
            stderr,
            "fix the above, then resume with (it reads what runs and continues):\n  {}",
            resume.trim_end()
        )?;
        Ok(())
    }
}

/// The plan for people (a block per add-on) or for scripts (one JSON object per add-on).
fn write_plan(plan: &[Upgrade], output: Output, out: &mut impl Write) -> anyhow::Result<()> {
    if output == Output::Json {
        for upgrade in plan {
            writeln!(out, "{}", serde_json::to_string(upgrade)?)?;
        }
        return Ok(());
    }
    for upgrade in plan {
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
    writeln!(out, "{hops} hop(s) to take")?;
    Ok(())
}
