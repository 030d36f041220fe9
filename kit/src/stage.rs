//! The stage contract. Every stage binary (`metallb`, `traefik`, …) is a [`Stage`] handed to
//! [`main`], so all of them share one CLI: a learner who knows one stage knows them all.
//!
//! ```text
//! <stage> check     preconditions, each named, with a fix hint
//! <stage> plan      what apply would change; changes nothing
//! <stage> apply     converge: idempotent, safe to interrupt and re-run
//! <stage> verify    postconditions: what now holds
//! <stage> render --out DIR   every manifest/config it would apply; no cluster needed
//! <stage> explain   the lesson: what this step does and why
//! ```
//! The shape follows k0sctl's phases and kubeadm's `init phase`: each step runs alone, and the
//! full install is the steps in order. A Kubernetes stage does not write these verbs: it
//! declares its bundle (`kit::bundle::BundleStage`) and kit derives them; stage 01, which
//! drives machines rather than objects, implements [`Stage`] by hand.

use std::ffi::OsString;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::client::{API_WAIT, ride_out};
use crate::config::ClusterConfig;
use crate::context::{Context, Target, Verb, cluster_kubeconfig_path};
use crate::report::{Change, Check, none_failed, write_json_lines};

/// One step of the build (the seed's 01–08 and 100 folders).
pub trait Stage {
    /// The binary's name and the stage's id, e.g. `metallb`.
    const NAME: &'static str;
    /// The seed's folder for this stage, e.g. `02-metallb`.
    const FOLDER: &'static str;
    /// One line: what the stage does (shown in `--help`).
    const TITLE: &'static str;
    /// The lesson `explain` prints: the crate's README.md.
    const LESSON: &'static str;

    fn check(&self, ctx: &Context) -> impl Future<Output = anyhow::Result<Vec<Check>>>;
    fn plan(&self, ctx: &Context) -> impl Future<Output = anyhow::Result<Vec<Change>>>;
    fn apply(&self, ctx: &Context) -> impl Future<Output = anyhow::Result<Vec<Change>>>;
    fn verify(&self, ctx: &Context) -> impl Future<Output = anyhow::Result<Vec<Check>>>;
    /// Writes every file the stage would apply under `out`; returns the paths written.
    /// Needs no cluster: only the model, the artifacts (`ctx.artifacts()`) and local tools.
    fn render(&self, ctx: &Context, out: &Path) -> impl Future<Output = anyhow::Result<Vec<PathBuf>>>;
}

/// The config every command reads unless told otherwise.
pub const DEFAULT_CONFIG: &str = "cluster.yaml";

/// Flags every talos-ha command shares.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// The cluster definition (nodes, VIP, MetalLB pool, versions).
    #[arg(long, global = true, default_value = DEFAULT_CONFIG, env = "TALOS_HA_CONFIG")]
    pub config: PathBuf,
    /// Target the cluster in a box (`cargo xtask lab up`): Talos twins at the config's
    /// addresses, reached from the box's workstation, instead of the real Talos nodes.
    #[arg(long, global = true)]
    pub lab: bool,
    /// Kubeconfig to use [default: state/kubeconfig, or state/lab/kubeconfig with --lab].
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Read upstream release manifests from this folder (<component>/<version>/<file> with a
    /// SHA256SUMS) instead of downloading them: for air-gapped sites.
    #[arg(long, global = true, env = "TALOS_HA_MIRROR")]
    pub mirror: Option<PathBuf>,
    /// `text` for people; `json` for scripts (one JSON object per line, on stdout).
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// More log detail on stderr (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// How long a step waits for a Kubernetes API that stopped answering (a control plane's
    /// crash moves the VIP within about a minute) before it gives up; 0 does not wait.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = API_WAIT.as_secs(), env = "TALOS_HA_API_WAIT")]
    pub api_wait: u64,
    /// Apply another release of an add-on than cluster.yaml pins, for this run only
    /// (`--pin certManager=v1.17.4`; repeatable): what `cargo xtask upgrade apply` passes each
    /// hop. An apply refuses a pin that skips a release its upstream says not to skip.
    /// `--pin kubernetes=v1.35.0` on `upgrade apply` upgrades Kubernetes, then writes the
    /// release into cluster.yaml.
    #[arg(long = "pin", global = true, value_name = "KEY=VERSION")]
    pub pins: Vec<String>,
    /// How long `apply` waits for each workload it rolled out to become ready before it stops
    /// with what failed [default: each stage's own: 300 s, Longhorn's 600 s].
    #[arg(long, global = true, value_name = "SECONDS", env = "TALOS_HA_ROLLOUT_TIMEOUT")]
    pub rollout_timeout: Option<u64>,
}

impl GlobalArgs {
    pub fn target(&self) -> Target {
        if self.lab { Target::Lab } else { Target::Talos }
    }

    /// `--kubeconfig`, or the target's own: the cluster's (`state/kubeconfig`, aimed at the
    /// VIP), or the box's forward (`state/lab/kubeconfig`).
    pub fn kubeconfig(&self, config: &ClusterConfig) -> PathBuf {
        self.kubeconfig.clone().unwrap_or_else(|| match self.target() {
            Target::Talos => cluster_kubeconfig_path(&config.state_dir()),
            Target::Lab => crate::lab::kubeconfig_path(&config.lab_dir()),
        })
    }

    /// The config, or every problem in it reported (text or JSON) and `None`. With `--lab` it
    /// is the box's cluster: its state lives in `state/lab/cluster/`, never in a real one's.
    pub fn load_config(&self, out: &mut impl Write) -> anyhow::Result<Option<ClusterConfig>> {
        let Some(mut config) = load_config(&self.config, self.output, out)? else { return Ok(None) };
        for pin in &self.pins {
            let (key, version) = pin.split_once('=').unwrap_or((pin, ""));
            let version = version.parse().map_err(|()| {
                anyhow::anyhow!("--pin {pin}: write KEY=VERSION with a release tag, e.g. --pin certManager=v1.17.4")
            })?;
            config.versions.set(key, version).with_context(|| format!("--pin {pin}"))?;
        }
        Ok(Some(if self.lab { config.in_box() } else { config }))
    }

    /// `cargo xtask <words>` with these flags, as a user pastes it to resume a run.
    pub fn xtask_command(&self, words: &str) -> String {
        let flags: Vec<String> = self.to_args().iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
        format!("cargo xtask {words} {}", flags.join(" ")).trim_end().to_owned()
    }

    /// These flags as a command line gives them again (to a stage binary, or in the command
    /// that resumes): `--lab`, `--config` unless it is the default, `--kubeconfig`, `--mirror`,
    /// `--api-wait` unless it is the default, `--pin`, `--rollout-timeout`.
    /// Output and verbosity are left to the caller.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if self.lab {
            args.push("--lab".into());
        }
        if self.config != Path::new(DEFAULT_CONFIG) {
            args.extend(["--config".into(), self.config.clone().into_os_string()]);
        }
        for (flag, value) in [("--kubeconfig", &self.kubeconfig), ("--mirror", &self.mirror)] {
            if let Some(value) = value {
                args.extend([flag.into(), value.clone().into_os_string()]);
            }
        }
        if self.api_wait != API_WAIT.as_secs() {
            args.extend(["--api-wait".into(), self.api_wait.to_string().into()]);
        }
        for pin in &self.pins {
            args.extend(["--pin".into(), pin.into()]);
        }
        if let Some(seconds) = self.rollout_timeout {
            args.extend(["--rollout-timeout".into(), seconds.to_string().into()]);
        }
        args
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Parser, Debug)]
struct StageCli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: StageCommand,
}

#[derive(Subcommand, Debug)]
enum StageCommand {
    /// Check preconditions: each check is named, and a failure says how to fix it.
    Check,
    /// Show what `apply` would change (a server-side dry run); changes nothing. Exits 0 when
    /// nothing would change, 2 when something would, 1 on an error (as
    /// `terraform plan -detailed-exitcode` does, for CI drift checks).
    Plan,
    /// Converge the cluster to this stage's objects. Idempotent: safe to interrupt and re-run.
    Apply {
        /// talos-bootstrap only: bootstrap etcd even though this run cannot prove the cluster
        /// is new (a control plane does not answer, or a bootstrap of this cluster was recorded
        /// and no member has data left). A second bootstrap starts a second, empty cluster: be
        /// sure.
        #[arg(long)]
        bootstrap: bool,
    },
    /// Check postconditions: what now holds, and so what the next stage may rely on.
    Verify,
    /// Write every manifest and config this stage would apply into a folder; needs no cluster.
    Render {
        /// The folder to write into (the stage's seed folder is created inside it).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the lesson: what this step builds and why.
    Explain,
}

/// Exit codes every talos-ha command uses.
pub mod exit {
    /// A check failed, or an operation failed at run time.
    pub const FAILED: u8 = 1;
    /// The config is invalid or the command line is wrong: nothing was changed.
    pub const INVALID: u8 = 2;
    /// `plan` only: something would change. `plan` follows the convention CI drift checks
    /// expect (`terraform plan -detailed-exitcode`): 0 nothing would change, 1 an error
    /// (an invalid config included), 2 changes.
    pub const WOULD_CHANGE: u8 = 2;
}

/// The `main` of every stage binary.
pub fn main<S: Stage + Sync>(stage: S) -> ExitCode {
    execute(&stage, std::env::args_os(), &mut std::io::stdout())
}

/// Runs one stage command with `args` (argv, program name first), writing data to `out`.
pub fn execute<S: Stage + Sync, W: Write + Send>(
    stage: &S,
    args: impl IntoIterator<Item = OsString>,
    out: &mut W,
) -> ExitCode {
    let command = StageCli::command()
        .name(S::NAME)
        .about(S::TITLE)
        .long_about(S::TITLE)
        .after_help(format!("`{} explain` teaches what this step builds and why.", S::NAME));
    let cli: StageCli = match parse_command_line(command, args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    crate::logging::init(cli.global.verbose);
    match run(stage, &cli, out) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{}: {error:#}", S::NAME);
            ExitCode::from(exit::FAILED)
        }
    }
}

/// Parses a command line for `command` (a stage's or `cargo xtask`'s). On a usage error it
/// prints clap's message and returns the exit code: 2 (`exit::INVALID`), except under `plan`,
/// where 2 means "would change" and a mistyped flag must not read as drift to a CI job: there
/// it is an error like any other (1), as `terraform plan` has it. `--help` and `--version` land
/// here too; clap knows which stream they print on, and they exit 0.
pub fn parse_command_line<T: clap::FromArgMatches>(
    command: clap::Command,
    args: impl IntoIterator<Item = OsString>,
) -> Result<T, ExitCode> {
    let args: Vec<OsString> = args.into_iter().collect();
    let error = match command.clone().try_get_matches_from(&args).and_then(|matches| T::from_arg_matches(&matches)) {
        Ok(parsed) => return Ok(parsed),
        Err(error) => error,
    };
    let _ = error.print();
    if !error.use_stderr() {
        return Err(ExitCode::SUCCESS);
    }
    // The subcommand meant: the first argument that names one (clap's own parse stopped at
    // the error, perhaps before it).
    let meant = args.iter().skip(1).find_map(|arg| command.find_subcommand(arg)).map(clap::Command::get_name);
    let under_plan = meant == Some("plan");
    Err(ExitCode::from(if under_plan { exit::FAILED } else { exit::INVALID }))
}

fn run<S: Stage + Sync, W: Write + Send>(stage: &S, cli: &StageCli, out: &mut W) -> anyhow::Result<ExitCode> {
    if let StageCommand::Explain = cli.command {
        out.write_all(S::LESSON.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = match cli.global.load_config(out)? {
        Some(config) => config,
        // For `plan`, 2 means "would change": an invalid config is one of its errors.
        None if matches!(cli.command, StageCommand::Plan) => return Ok(ExitCode::from(exit::FAILED)),
        None => return Ok(ExitCode::from(exit::INVALID)),
    };
    let target = cli.global.target();
    let bootstrap = matches!(cli.command, StageCommand::Apply { bootstrap: true });
    anyhow::ensure!(
        !bootstrap || S::NAME == crate::names::TALOS_BOOTSTRAP_STAGE,
        "--bootstrap belongs to `{} apply`: only stage 01 bootstraps etcd",
        crate::names::TALOS_BOOTSTRAP_STAGE
    );
    let verb = match cli.command {
        StageCommand::Check => Verb::Check,
        StageCommand::Plan => Verb::Plan,
        StageCommand::Apply { .. } => Verb::Apply,
        StageCommand::Verify => Verb::Verify,
        StageCommand::Render { .. } | StageCommand::Explain => Verb::Render,
    };
    let ctx = Context {
        kubeconfig: cli.global.kubeconfig(&config),
        config,
        target,
        verb,
        mirror: cli.global.mirror.clone(),
        bootstrap,
        api_wait: Duration::from_secs(cli.global.api_wait),
        rollout_timeout: cli.global.rollout_timeout.map(Duration::from_secs),
    };
    let output = cli.global.output;
    let work = |out: &mut W| -> anyhow::Result<ExitCode> {
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        // Every verb is safe to run again (reads, probes that clean up first, server-side
        // applies), so one the API dropped out of is run again once the API answers.
        let (kubeconfig, wait) = (&ctx.kubeconfig, ctx.api_wait);
        runtime.block_on(async {
            match cli.command {
                StageCommand::Check => {
                    report_checks(ride_out(kubeconfig, wait, || stage.check(&ctx)).await?, output, out)
                }
                StageCommand::Verify => {
                    report_checks(ride_out(kubeconfig, wait, || stage.verify(&ctx)).await?, output, out)
                }
                StageCommand::Plan => {
                    let changes = ride_out(kubeconfig, wait, || stage.plan(&ctx)).await?;
                    let would_change = changes.iter().any(|change| change.action.changes_something());
                    report_changes(&changes, output, out)?;
                    Ok(if would_change { ExitCode::from(exit::WOULD_CHANGE) } else { ExitCode::SUCCESS })
                }
                StageCommand::Apply { .. } => {
                    report_changes(&ride_out(kubeconfig, wait, || stage.apply(&ctx)).await?, output, out)?;
                    Ok(ExitCode::SUCCESS)
                }
                StageCommand::Render { out: ref folder } => {
                    for path in stage.render(&ctx, folder).await? {
                        writeln!(out, "{}", path.display())?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                StageCommand::Explain => Ok(ExitCode::SUCCESS),
            }
        })
    };
    let work = |out: &mut W| work(out).map_err(|error| where_to_look(error, &ctx, S::NAME, &cli.command));
    if target == Target::Talos || matches!(cli.command, StageCommand::Render { .. }) {
        return work(out);
    }
    // The lab's machines are at the config's addresses inside the box: a `--lab` run works from
    // the box's workstation, on a thread that joined it (with every thread and process it
    // starts, talosctl included), and refuses to start anywhere else.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                crate::lab::enter_box(&ctx.config).context("a --lab run works inside the box")?;
                work(out)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the stage's thread panicked"))?
    })
}

/// An error on the way to the Kubernetes API (no connection, TLS, a timeout, a 5xx, a refused
/// credential) gains where to look: the API server, the kubeconfig that named it, and the
/// next command. A lost API server otherwise reads `API discovery: … Connection reset by peer`
/// and nothing else. Errors the API answered on purpose (404, 409, 422) are left as they are.
fn where_to_look(error: anyhow::Error, ctx: &Context, stage: &str, command: &StageCommand) -> anyhow::Error {
    let refused_credential = error.chain().any(|cause| {
        matches!(cause.downcast_ref::<kube::Error>(), Some(kube::Error::Api(status)) if matches!(status.code, 401 | 403))
    });
    if !crate::client::out_of_reach(&error) && !refused_credential {
        return error;
    }
    let step = match command {
        StageCommand::Check => "check",
        StageCommand::Plan => "plan",
        StageCommand::Apply { .. } => "apply",
        StageCommand::Verify => "verify",
        StageCommand::Render { .. } | StageCommand::Explain => "render",
    };
    let next = match ctx.target {
        Target::Lab => format!(
            "`cargo xtask lab status` (is the box up? `cargo xtask lab up` starts it), then `{stage} {step} --lab` again"
        ),
        Target::Talos => format!(
            "`cargo xtask status` (nodes, etcd, who holds the VIP) or `talos-bootstrap verify`, then `{stage} {step}` again"
        ),
    };
    error.context(format!(
        "the Kubernetes API at {} did not answer; next: {next}",
        crate::client::describe_api(&ctx.kubeconfig)
    ))
}

/// Loads the config, or reports every problem in it (text or JSON) and returns `None`.
pub fn load_config(path: &Path, output: Output, out: &mut impl Write) -> anyhow::Result<Option<ClusterConfig>> {
    match ClusterConfig::load(path) {
        Ok(config) => Ok(Some(config)),
        Err(error) => {
            match output {
                Output::Text => writeln!(out, "{error}")?,
                Output::Json => write_json_lines(&error.problems(), out)?,
            }
            Ok(None)
        }
    }
}

fn report_checks(checks: Vec<Check>, output: Output, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match output {
        Output::Text => checks.iter().try_for_each(|check| writeln!(out, "{check}"))?,
        Output::Json => write_json_lines(&checks, out)?,
    }
    Ok(if none_failed(&checks) { ExitCode::SUCCESS } else { ExitCode::from(exit::FAILED) })
}

fn report_changes(changes: &[Change], output: Output, out: &mut impl Write) -> anyhow::Result<()> {
    match output {
        Output::Text => changes.iter().try_for_each(|change| writeln!(out, "{change}"))?,
        Output::Json => write_json_lines(changes, out)?,
    }
    Ok(())
}
