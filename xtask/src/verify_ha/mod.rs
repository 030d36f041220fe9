//! `cargo xtask verify-ha`: the seed's HA verification guide as a tool. Each step prints
//! what it proves. On the talos target it is read-only unless `--drill node=<name>` is given
//! (`talos.rs`); on the lab it runs a real drill (`lab.rs`): etcd members killed and
//! restored, then a node's heartbeat stopped (`node_failure.rs`), each with measured times.

mod drill;
mod lab;
mod node_failure;
mod talos;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kit::check::{Check, Status};
use kit::stage::{GlobalArgs, Output, Target, exit, load_config, write_json_lines};

#[derive(clap::Args, Debug)]
pub struct VerifyHaArgs {
    /// Reboot one node for real (talosctl) and measure the outage, e.g. `--drill node=wk02`
    /// (talos target; refused if it would cost etcd its majority or a volume its last replica;
    /// the lab always drills, on etcd and on a node's heartbeat).
    #[arg(long, value_name = "node=NAME")]
    pub drill: Option<String>,
    /// Do not ask before a drill (for scripts).
    #[arg(long)]
    pub yes: bool,
}

/// One step of the guide: what it shows, and how it went.
fn report(step: &str, proves: &str, check: &Check, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    writeln!(out, "\n== {step}\n   proves: {proves}\n   {check}")?;
    Ok(())
}

pub fn run(global: &GlobalArgs, args: &VerifyHaArgs) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let Some(config) = load_config(&global.config, global.output, &mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    let kubeconfig = global.kubeconfig(&config);
    // The guide's text for people; with `--output json`, only the checks, one per line.
    let mut guide: Box<dyn std::io::Write> = match global.output {
        Output::Text => Box::new(std::io::stdout()),
        Output::Json => Box::new(std::io::sink()),
    };
    let checks = tokio::runtime::Runtime::new()?.block_on(async {
        let client = kit::lab::client_from_kubeconfig(&kubeconfig).await?;
        match global.target() {
            Target::Lab => lab::drill(&client, &config, &mut guide).await,
            Target::Talos => talos::steps(&client, &config, args, &mut guide).await,
        }
    })?;
    let failed = checks.iter().filter(|check| check.status == Status::Fail).count();
    match global.output {
        Output::Text => writeln!(stdout, "\n{} step(s), {failed} failed", checks.len())?,
        Output::Json => write_json_lines(&checks, &mut stdout)?,
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::FAILED) })
}

/// Polls `probe` every 250 ms until it returns true; the time it took, or `None` on timeout.
async fn time_until<F, Fut>(timeout: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < timeout {
        if probe().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}
