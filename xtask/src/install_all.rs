//! `cargo xtask install-all`: every stage, in the seed's order, `check → apply → verify`,
//! running the very binaries a learner runs by hand. It stops at the first failure with the
//! failing check, its fix, and the command that resumes from there.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use kit::check::{Check, Status};
use kit::stage::{GlobalArgs, exit};

pub use crate::stages::STAGES;

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Start at this stage (the resume point a failure prints).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(STAGES))]
    pub from: Option<String>,
    /// Run only this stage.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(STAGES), conflicts_with = "from")]
    pub only: Option<String>,
    /// Show what each stage would change (`plan`) instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
}

/// The stages to run: those that exist in this workspace, narrowed by --from / --only.
fn selected<'a>(root: &Path, args: &InstallArgs) -> anyhow::Result<Vec<&'a str>> {
    let present = crate::stages::present(root);
    let chosen: Vec<&str> = match (&args.only, &args.from) {
        (Some(only), _) => present.into_iter().filter(|s| s == only).collect(),
        (None, Some(from)) => present.into_iter().skip_while(|s| s != from).collect(),
        (None, None) => present,
    };
    anyhow::ensure!(!chosen.is_empty(), "no stage to run: the stage asked for is not built yet in this workspace");
    Ok(chosen)
}

pub fn run(global: &GlobalArgs, args: &InstallArgs) -> anyhow::Result<ExitCode> {
    let root = xtask::workspace_root();
    let stages = selected(&root, args)?;
    let bin_dir = crate::stages::build(&root, &stages)?;
    // From a fresh clone `install-all --lab` is the whole job: with no lab yet, start one
    // (a lab that exists, even one that is down, is left to `lab up`: it may use other ports).
    if global.lab && global.kubeconfig.is_none() {
        let config = kit::config::ClusterConfig::load(&global.config)?;
        if !kit::lab::kubeconfig_path(&config.state_dir()).exists() {
            tracing::info!("no lab yet: starting one (cargo xtask lab up)");
            lab_up(global)?;
        }
    }

    let mut stderr = std::io::stderr();
    let mut changed_total = 0;
    let started = Instant::now();
    for stage in &stages {
        let runner = StageRunner { bin_dir: &bin_dir, stage, global };
        let steps: &[&str] = if args.dry_run { &["check", "plan"] } else { &["check", "apply", "verify"] };
        for step in steps {
            let step_started = Instant::now();
            let outcome = runner.run(step)?;
            let elapsed = step_started.elapsed().as_secs_f64();
            let summary = match &outcome {
                Outcome::Checks(checks) => {
                    let count = |status| checks.iter().filter(|c| c.status == status).count();
                    format!(
                        "{} ok, {} not checkable in the lab, {} failed",
                        count(Status::Pass),
                        count(Status::NotCheckableInLab),
                        count(Status::Fail)
                    )
                }
                Outcome::Changes { changed, unchanged } => {
                    changed_total += changed;
                    format!("{changed} changed, {unchanged} unchanged")
                }
                Outcome::Failed(_) => "failed".to_owned(),
            };
            writeln!(stderr, "{stage:<16} {step:<7} {elapsed:>6.1}s  {summary}")?;
            // In the lab, a stage may enable a host process (MetalLB's controller after 02).
            if global.lab && *step == "apply" && !matches!(outcome, Outcome::Failed(_)) {
                lab_up(global)?;
            }
            let failed: Vec<&Check> = match &outcome {
                Outcome::Checks(checks) => checks.iter().filter(|c| c.status == Status::Fail).collect(),
                _ => Vec::new(),
            };
            if !failed.is_empty() || matches!(outcome, Outcome::Failed(_)) {
                for check in failed {
                    writeln!(stderr, "  {check}")?;
                }
                if let Outcome::Failed(message) = &outcome {
                    writeln!(stderr, "  {message}")?;
                }
                let lab = if global.lab { " --lab" } else { "" };
                writeln!(
                    stderr,
                    "stopped at {stage} {step}; fix the above, then resume with:\n  cargo xtask install-all --from {stage}{lab}"
                )?;
                return Ok(ExitCode::from(exit::FAILED));
            }
        }
    }
    let verdict = match (args.dry_run, changed_total) {
        (true, 0) => "nothing would change".to_owned(),
        (true, n) => format!("{n} objects would change"),
        (false, 0) => "nothing changed: the cluster was already converged".to_owned(),
        (false, n) => format!("{n} objects created or configured"),
    };
    writeln!(stderr, "{} stage(s) in {:.1}s: {verdict}", stages.len(), started.elapsed().as_secs_f64())?;
    Ok(ExitCode::SUCCESS)
}

/// `lab up`: starts the lab, or what the stages so far have made startable in it (MetalLB's
/// controller after stage 02); a no-op otherwise.
fn lab_up(global: &GlobalArgs) -> anyhow::Result<()> {
    let config = kit::config::ClusterConfig::load(&global.config)?;
    let lab = xtask::lab::Lab::new(&config, xtask::lab::DEFAULT_PORT_BASE);
    tokio::runtime::Runtime::new()?.block_on(lab.up(&xtask::workspace_root()))
}

enum Outcome {
    Checks(Vec<Check>),
    Changes {
        changed: usize,
        unchanged: usize,
    },
    /// The step exited without a report (an error): its stderr tail.
    Failed(String),
}

struct StageRunner<'a> {
    bin_dir: &'a Path,
    stage: &'a str,
    global: &'a GlobalArgs,
}

impl StageRunner<'_> {
    /// Runs one step with `--output json` and reads its report from stdout.
    fn run(&self, step: &str) -> anyhow::Result<Outcome> {
        let output = crate::stages::command(self.bin_dir, self.stage, step, self.global)
            .args(["--output", "json"])
            .output()
            .with_context(|| format!("running {} {step}", self.stage))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<serde_json::Value> = stdout.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
        if !output.status.success() && lines.is_empty() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
            return Ok(Outcome::Failed(tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")));
        }
        Ok(match step {
            "apply" | "plan" => {
                let unchanged = lines.iter().filter(|change| change["action"] == "unchanged").count();
                Outcome::Changes { changed: lines.len() - unchanged, unchanged }
            }
            _ => Outcome::Checks(
                lines
                    .into_iter()
                    .map(serde_json::from_value)
                    .collect::<Result<_, _>>()
                    .context("reading a check report")?,
            ),
        })
    }
}
