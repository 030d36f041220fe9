//! `cargo xtask install-all`: every stage, in the seed's order, `check → apply → verify`,
//! running the very binaries a learner runs by hand. It stops at the first failure with the
//! failing check, its fix, and the command that resumes from there.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Instant;

use anyhow::Context as _;
use kit::report::{Action, Change};
use kit::report::{Check, Status};
use kit::stage::{GlobalArgs, Output, exit};
use serde::Serialize;

use crate::lab_cmd::LabPorts;
pub use crate::stages::STAGES;

/// Which stages to run.
#[derive(clap::Args, Debug)]
pub struct Selection {
    /// Start at this stage (the resume point a failure prints).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(STAGES))]
    pub from: Option<String>,
    /// Run only this stage.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(STAGES), conflicts_with = "from")]
    pub only: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    pub selection: Selection,
    // With --lab: where the box's API forward listens if this run creates the box.
    #[command(flatten)]
    pub ports: LabPorts,
    /// Show what each stage would change (`plan`) instead of applying it; the same as
    /// `cargo xtask plan`.
    #[arg(long)]
    pub dry_run: bool,
}

/// `cargo xtask plan`: install-all's arguments without --dry-run, which plan always is.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub ports: LabPorts,
}

impl From<PlanArgs> for InstallArgs {
    fn from(plan: PlanArgs) -> InstallArgs {
        InstallArgs { selection: plan.selection, ports: plan.ports, dry_run: true }
    }
}

/// The stages to run: those that exist in this workspace, narrowed by --from / --only.
fn selected<'a>(root: &Path, args: &Selection) -> anyhow::Result<Vec<&'a str>> {
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
    // An invalid config is reported as the problems it has, before anything is built or
    // started (each stage would report them too, in a shape the report reader does not take).
    if global.load_config(&mut std::io::stdout())?.is_none() {
        return Ok(ExitCode::from(if args.dry_run { exit::FAILED } else { exit::INVALID }));
    }
    let root = xtask::workspace_root();
    let stages = selected(&root, &args.selection)?;
    let bin_dir = crate::stages::build(&root, &stages)?;
    // From a fresh clone `install-all --lab` is the whole job: the box comes up first (or is
    // left as it is when it runs), its machines waiting for stage 01.
    if global.lab && global.kubeconfig.is_none() {
        lab_up(global, args.ports)?;
    }

    let mut stderr = std::io::stderr();
    let started = Instant::now();
    let mut report = Report::default();
    for stage in &stages {
        let runner = StageRunner { bin_dir: &bin_dir, stage, global };
        let steps: &[&str] = if args.dry_run { &["check", "plan"] } else { &["check", "apply", "verify"] };
        let mut stage_report = StageReport { stage: (*stage).to_owned(), steps: Vec::new() };
        for step in steps {
            let step_started = Instant::now();
            let outcome = runner.run(step)?;
            let seconds = step_started.elapsed().as_secs_f64();
            writeln!(stderr, "{stage:<16} {step:<7} {seconds:>6.1}s  {}", outcome.summary())?;
            // A plan shows what it would change (and what it found left over), not only how much.
            if let Outcome::Changes(changes) = &outcome
                && *step == "plan"
            {
                for change in changes.iter().filter(|change| change.action != Action::Unchanged) {
                    writeln!(stderr, "  {change}")?;
                }
            }
            // In the lab, stage 01's apply installs the cluster: `lab up` then waits until its
            // every node is Ready through the forward, before the next stage's check.
            let installed = *stage == kit::names::TALOS_BOOTSTRAP_STAGE && *step == "apply";
            if global.lab && installed && !matches!(outcome, Outcome::Failed(_)) {
                lab_up(global, args.ports)?;
            }
            let failed = outcome.failure();
            stage_report.steps.push(StepReport { step: (*step).to_owned(), seconds, outcome });
            if let Some(failure) = failed {
                writeln!(stderr, "{failure}")?;
                let resume = resume_command(stage, global);
                writeln!(stderr, "stopped at {stage} {step}; fix the above, then resume with:\n  {resume}")?;
                report.stages.push(stage_report);
                report.stopped = Some(Stopped { stage: (*stage).to_owned(), step: (*step).to_owned(), resume });
                report.finish(started, global.output)?;
                return Ok(ExitCode::from(exit::FAILED));
            }
        }
        report.stages.push(stage_report);
    }
    let changed = report.changed();
    let verdict = match (args.dry_run, changed) {
        (true, 0) => "nothing would change".to_owned(),
        (true, n) => format!("{n} objects would change"),
        (false, 0) => "nothing changed: the cluster was already converged".to_owned(),
        (false, n) => format!("{n} objects created or configured"),
    };
    writeln!(stderr, "{} stage(s) in {:.1}s: {verdict}", stages.len(), started.elapsed().as_secs_f64())?;
    report.finish(started, global.output)?;
    Ok(if args.dry_run && changed > 0 { ExitCode::from(exit::WOULD_CHANGE) } else { ExitCode::SUCCESS })
}

/// What `--output json` prints on stdout: every step of every stage that ran, with each check
/// and each change as the stage binary reported it, and where the run stopped if it did.
#[derive(Serialize, Default)]
struct Report {
    stages: Vec<StageReport>,
    /// Objects created or configured (or, with `--dry-run`, that would be).
    changed: usize,
    seconds: f64,
    /// The step that failed and the command that resumes from its stage; absent on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<Stopped>,
}

#[derive(Serialize)]
struct StageReport {
    stage: String,
    steps: Vec<StepReport>,
}

#[derive(Serialize)]
struct StepReport {
    step: String,
    seconds: f64,
    /// `"checks": [...]`, `"changes": [...]` or `"failed": "<the step's error output>"`.
    #[serde(flatten)]
    outcome: Outcome,
}

#[derive(Serialize)]
struct Stopped {
    stage: String,
    step: String,
    resume: String,
}

impl Report {
    fn changed(&self) -> usize {
        self.stages
            .iter()
            .flat_map(|stage| &stage.steps)
            .map(|step| match &step.outcome {
                Outcome::Changes(changes) => changes.iter().filter(|c| c.action.changes_something()).count(),
                _ => 0,
            })
            .sum()
    }

    /// Prints the report on stdout when JSON was asked for (the progress went to stderr).
    fn finish(&mut self, started: Instant, output: Output) -> anyhow::Result<()> {
        self.changed = self.changed();
        self.seconds = started.elapsed().as_secs_f64();
        if output == Output::Json {
            let mut stdout = std::io::stdout();
            serde_json::to_writer_pretty(&mut stdout, self)?;
            writeln!(stdout)?;
        }
        Ok(())
    }
}

/// The command that picks up at `stage` with the flags this run was given, ready to paste.
fn resume_command(stage: &str, global: &GlobalArgs) -> String {
    global.xtask_command(&format!("install-all --from {stage}"))
}

/// `lab up`: builds the box and starts its machines; on an installed cluster, waits until
/// every node is Ready. A no-op on a running lab.
fn lab_up(global: &GlobalArgs, ports: LabPorts) -> anyhow::Result<()> {
    let config = kit::config::ClusterConfig::load(&global.config)?;
    let lab = lab::Lab::new(&config, ports.port_base);
    tokio::runtime::Runtime::new()?.block_on(lab.up())
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Checks(Vec<Check>),
    Changes(Vec<Change>),
    /// The step exited without a report (an error): its stderr tail.
    Failed(String),
}

impl Outcome {
    /// The one-line summary of the progress line.
    pub(crate) fn summary(&self) -> String {
        match self {
            Outcome::Checks(checks) => {
                let count = |status| checks.iter().filter(|c| c.status == status).count();
                format!(
                    "{} ok, {} not checkable in the lab, {} failed",
                    count(Status::Pass),
                    count(Status::NotCheckableInLab),
                    count(Status::Fail)
                )
            }
            Outcome::Changes(changes) => {
                let unchanged = changes.iter().filter(|c| c.action == Action::Unchanged).count();
                format!("{} changed, {unchanged} unchanged", changes.len() - unchanged)
            }
            Outcome::Failed(_) => "failed".to_owned(),
        }
    }

    /// What stops the run: the failed checks with their fixes, or the step's error output.
    pub(crate) fn failure(&self) -> Option<String> {
        match self {
            Outcome::Checks(checks) => {
                let failed: Vec<String> =
                    checks.iter().filter(|c| c.status == Status::Fail).map(|c| format!("  {c}")).collect();
                (!failed.is_empty()).then(|| failed.join("\n"))
            }
            Outcome::Changes(_) => None,
            Outcome::Failed(message) => Some(format!("  {message}")),
        }
    }
}

pub(crate) struct StageRunner<'a> {
    pub(crate) bin_dir: &'a Path,
    pub(crate) stage: &'a str,
    pub(crate) global: &'a GlobalArgs,
}

impl StageRunner<'_> {
    /// Runs one step with `--output json` and reads its report from stdout. The step's
    /// warnings (an API it waits for, say) are shown as they come, under the stage's name:
    /// a step that waits a minute for a control plane says so while it waits.
    pub(crate) fn run(&self, step: &str) -> anyhow::Result<Outcome> {
        let mut child = crate::stages::command(self.bin_dir, self.stage, step, self.global)
            .args(["--output", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} {step}", self.stage))?;
        let mut stdout_pipe = child.stdout.take().context("the step's stdout")?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            stdout_pipe.read_to_string(&mut text).map(|_| text)
        });
        let mut log = Vec::new();
        for line in BufReader::new(child.stderr.take().context("the step's stderr")?).lines() {
            let line = line.with_context(|| format!("reading the log of {} {step}", self.stage))?;
            if is_warning(&line) {
                eprintln!("{:<16} {step:<7}  {}", self.stage, line.trim_start());
            }
            log.push(line);
        }
        let stdout = reader.join().map_err(|_| anyhow::anyhow!("the stdout reader panicked"))??;
        let status = child.wait().with_context(|| format!("waiting for {} {step}", self.stage))?;
        let lines: Vec<serde_json::Value> = stdout.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
        // plan's 2 is "would change", a report like its 0.
        let reported = status.success() || (step == "plan" && status.code() == Some(exit::WOULD_CHANGE.into()));
        if !reported && lines.is_empty() {
            let tail = &log[log.len().saturating_sub(10)..];
            return Ok(Outcome::Failed(tail.join("\n  ")));
        }
        let context = || format!("reading the report of {} {step} (one JSON object per line)", self.stage);
        Ok(match step {
            "apply" | "plan" => Outcome::Changes(parse_all(lines).with_context(context)?),
            _ => Outcome::Checks(parse_all(lines).with_context(context)?),
        })
    }
}

/// A line of a stage's log at WARN or ERROR (kit's log format, without colours off a terminal).
fn is_warning(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("WARN ") || line.starts_with("ERROR ")
}

fn parse_all<T: serde::de::DeserializeOwned>(lines: Vec<serde_json::Value>) -> serde_json::Result<Vec<T>> {
    lines.into_iter().map(serde_json::from_value).collect()
}

/// Every stage the cluster has (`stage_installed`) verified, in order, each outcome shown after
/// `who`; returns the stages whose verify failed. A verify that could not run at all stops it.
pub(crate) fn verify_installed(
    global: &GlobalArgs,
    config: &kit::config::ClusterConfig,
    who: &str,
) -> anyhow::Result<Vec<String>> {
    let root = xtask::workspace_root();
    let kubeconfig = global.kubeconfig(config);
    let present = crate::stages::present(&root);
    let stages = tokio::runtime::Runtime::new()?.block_on(async {
        let client = kit::client::client_from_kubeconfig(&kubeconfig).await?;
        let api_wait = std::time::Duration::from_secs(global.api_wait);
        let mut stages = Vec::new();
        for stage in present {
            // This machine's way to the API (a forward, on the box) may lag the VIP's.
            if kit::client::ride_out(&kubeconfig, api_wait, || stage_installed(&client, stage)).await? {
                stages.push(stage);
            } else {
                eprintln!("{who}: {stage:<16} not installed: nothing to verify");
            }
        }
        anyhow::Ok(stages)
    })?;
    let bin_dir = crate::stages::build(&root, &stages)?;
    let mut failed = Vec::new();
    for stage in stages {
        let outcome = StageRunner { bin_dir: &bin_dir, stage, global }.run("verify")?;
        eprintln!("{who}: {stage:<16} verify  {}", outcome.summary());
        if let Some(failure) = outcome.failure() {
            eprintln!("{failure}");
            failed.push(format!("{stage} verify"));
        }
        if matches!(outcome, Outcome::Failed(_)) {
            break;
        }
    }
    Ok(failed)
}

/// Whether the cluster has `stage`: its main Deployment is there (stage 01 always is). A
/// cluster installed part-way, or a box with only stage 01, is verified for what it has.
async fn stage_installed(client: &kube::Client, stage: &str) -> anyhow::Result<bool> {
    let (namespace, name) = match stage {
        "metallb" => ("metallb-system", "controller"),
        "metrics-server" => ("kube-system", "metrics-server"),
        "traefik" => ("traefik", "traefik"),
        "cert-manager" => ("cert-manager", "cert-manager"),
        "longhorn" => ("longhorn-system", "longhorn-ui"),
        "headlamp" => ("kube-system", "headlamp"),
        "envoy-gateway" => ("envoy-gateway-system", "envoy-gateway"),
        "workloads" => ("whoami", "whoami"),
        _ => return Ok(true),
    };
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), namespace);
    let found = deployments.get_opt(name).await.with_context(|| format!("reading Deployment {namespace}/{name}"))?;
    Ok(found.is_some())
}
