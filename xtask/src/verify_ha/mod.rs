//! `cargo xtask verify-ha`: the seed's HA verification guide as a tool. Each step prints
//! what it proves (`talos.rs`). It is read-only unless `--drill node=<name>` is given: then one
//! node is rebooted through talosctl and the outage measured (`drill.rs`). With `--lab` the very
//! same steps run from the box's workstation against the Talos twins, through the VIP.

mod drill;
mod talos;

use std::io::Write as _;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kit::context::Target;
use kit::report::write_json_lines;
use kit::report::{Check, Status};
use kit::stage::{GlobalArgs, Output, exit};

#[derive(clap::Args, Debug, Clone)]
pub struct VerifyHaArgs {
    /// Reboot one node for real (`talosctl reboot`) and measure the outage, e.g.
    /// `--drill node=cp01`: the API through the VIP, the VIP's move, etcd's quorum, a worker's
    /// pods replaced elsewhere, the node and its etcd member back. Refused, before anything is
    /// touched, if it would cost etcd its majority or a volume its last replica.
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
    let Some(config) = global.load_config(&mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    // The guide's text for people; with `--output json`, only the checks, one per line.
    let text = global.output == Output::Text;
    let api_wait = Duration::from_secs(global.api_wait);
    let checks = match global.target() {
        Target::Talos => {
            let kubeconfig = global.kubeconfig(&config);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(steps(&config, &kubeconfig, args, api_wait, drill::Watch::Everything, text))?
        }
        // From the box's workstation, as a user at the site: the cluster's own kubeconfig,
        // aimed at the VIP, and talosctl at the twins' addresses.
        Target::Lab => {
            let args = args.clone();
            kit::lab::at_the_machines(&config, move |config| async move {
                let kubeconfig = kit::context::cluster_kubeconfig_path(&config.state_dir());
                steps(&config, &kubeconfig, &args, api_wait, drill::Watch::ControlPlaneAndNodes, text).await
            })?
        }
    };
    let failed = checks.iter().filter(|check| check.status == Status::Fail).count();
    match global.output {
        Output::Text => writeln!(stdout, "\n{} step(s), {failed} failed", checks.len())?,
        Output::Json => write_json_lines(&checks, &mut stdout)?,
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::FAILED) })
}

async fn steps(
    config: &kit::config::ClusterConfig,
    kubeconfig: &std::path::Path,
    args: &VerifyHaArgs,
    api_wait: Duration,
    watch: drill::Watch,
    text: bool,
) -> anyhow::Result<Vec<Check>> {
    let mut guide: Box<dyn std::io::Write> = if text { Box::new(std::io::stdout()) } else { Box::new(std::io::sink()) };
    let client = kit::client::client_from_kubeconfig(kubeconfig).await?;
    let api = talos::ApiWait { kubeconfig, wait: api_wait };
    talos::steps(&client, api, config, args, watch, &mut guide).await
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
