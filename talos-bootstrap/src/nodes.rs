//! What only stage 01 asks of Talos nodes: send a config, wait for the installed node, bootstrap
//! etcd, wait for health, fetch the kubeconfig. Each is a `talosctl` call through
//! [`kit::talos::TalosApi`], the seam the sequencing tests replace with a test double; the
//! questions other commands share (node state, pre-flight, etcd health) are in `kit::talos`.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::Context as _;
use kit::config::Node;
use kit::talos::{BootstrapAnswer, PROBE_TIMEOUT, TalosApi};

/// A call that changes a node (apply-config) or streams from it.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a node that is not there yet is asked again.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// `kubeconfig PATH` replaces the file instead of merging into it (merging would keep
/// stale contexts of an earlier cluster with the same name).
pub const KUBECONFIG_FLAGS: &[&str] = &["--force", "--merge=false"];

/// `health`'s own arguments: every node listed, so a node that never joined fails the wait.
pub fn health_args(control_planes: &[&Node], workers: &[&Node], timeout: Duration) -> Vec<String> {
    let ips = |nodes: &[&Node]| nodes.iter().map(|node| node.ip.to_string()).collect::<Vec<_>>().join(",");
    vec![
        "health".to_owned(),
        "--control-plane-nodes".to_owned(),
        ips(control_planes),
        "--worker-nodes".to_owned(),
        ips(workers),
        "--wait-timeout".to_owned(),
        format!("{}s", timeout.as_secs()),
    ]
}

/// Sends a config to a node in maintenance mode; it installs to disk and reboots.
pub async fn apply_config_insecure(api: &impl TalosApi, node: &Node, config: &Path) -> anyhow::Result<()> {
    let file = config.display().to_string();
    api.ask(node, &["apply-config", "--insecure", "--file", &file], CALL_TIMEOUT).await.map(drop)
}

/// How long a machine that took its config may still answer in maintenance mode before it
/// reboots to install (Talos leaves maintenance mode within seconds of taking a config).
pub const LEAVE_MAINTENANCE: Duration = Duration::from_secs(60);

/// Waits up to `timeout` for a node to stop answering in maintenance mode (it took its config
/// and reboots); false when it still does, so it never took one.
pub async fn left_maintenance(api: &impl TalosApi, node: &Node, timeout: Duration) -> bool {
    let started = Instant::now();
    while kit::talos::probe(api, node).await == kit::talos::NodeState::Maintenance {
        if started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(RETRY_EVERY / 5).await;
    }
    true
}

/// Waits until a node answers our client certificate (installed, rebooted, running its config).
pub async fn wait_configured(api: &impl TalosApi, node: &Node, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let Err(error) = api.ask(node, &["version", "--short"], PROBE_TIMEOUT).await else {
            return Ok(());
        };
        if started.elapsed() > timeout {
            return Err(error).with_context(|| {
                format!(
                    "{} ({}) did not come back with its config within {}s. If its console says \"Talos is already \
                     installed to disk but booted from another media\", eject the ISO/USB stick or put the disk \
                     first in the boot order (Talos ISOs halt when they find an installed disk); otherwise \
                     `talosctl -n {} dmesg --insecure` or the console shows where the install stopped",
                    node.name,
                    node.ip,
                    timeout.as_secs(),
                    node.ip
                )
            });
        }
        tracing::info!("  waiting for {} to install and reboot ({}s)", node.name, started.elapsed().as_secs());
        tokio::time::sleep(RETRY_EVERY * 2).await;
    }
}

/// `talosctl bootstrap`, asked again while Talos says "not yet" (CRI not up, time not in sync,
/// still booting), as upstream's own bootstrapper does (pkg/cluster/bootstrap.go). Never on
/// another node: one bootstrap node, once.
pub async fn bootstrap_with_retry(
    api: &impl TalosApi,
    node: &Node,
    timeout: Duration,
) -> anyhow::Result<BootstrapAnswer> {
    let started = Instant::now();
    loop {
        match kit::talos::bootstrap(api, node).await {
            BootstrapAnswer::NotYet(why) if started.elapsed() < timeout => {
                tracing::info!(
                    "  {} is not ready to bootstrap yet ({}s): {why}",
                    node.name,
                    started.elapsed().as_secs()
                );
                tokio::time::sleep(RETRY_EVERY).await;
            }
            BootstrapAnswer::NotYet(why) => {
                anyhow::bail!("{} still refused to bootstrap after {}s: {why}", node.name, timeout.as_secs())
            }
            BootstrapAnswer::Refused(why) => anyhow::bail!("{} refused to bootstrap: {why}", node.name),
            answer => return Ok(answer),
        }
    }
}

/// `talosctl health` run by the first control plane (server side) with the node lists
/// given; asked again until `timeout`, because each of its checks has its own 1–5 minute
/// budget (pkg/cluster/check/default.go) and the first failure ends one run. The error names
/// the check that failed last.
pub async fn health(
    api: &impl TalosApi,
    control_planes: &[&Node],
    workers: &[&Node],
    timeout: Duration,
) -> anyhow::Result<()> {
    let first = control_planes.first().context("no control plane to ask")?;
    let started = Instant::now();
    loop {
        let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(60));
        let args = health_args(control_planes, workers, left);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // talosctl prints each check as it waits on it; pass them on as progress. Its own
        // timeout ends the wait, so the process gets a minute more than that.
        let output =
            api.talosctl(first, &args, left + Duration::from_secs(60), &mut |line| tracing::info!("  {line}")).await?;
        if output.success {
            return Ok(());
        }
        let last_check = output.stderr.lines().rev().find(|line| line.contains("waiting for")).unwrap_or_default();
        let failure =
            if last_check.is_empty() { output.stderr.trim().to_owned() } else { last_check.trim().to_owned() };
        if started.elapsed() >= timeout {
            anyhow::bail!("{failure}");
        }
        tracing::info!("  health is not there yet ({failure}); asking again");
        tokio::time::sleep(RETRY_EVERY * 2).await;
    }
}

/// Writes an admin kubeconfig (pointing at the cluster endpoint, the VIP) to `out`.
pub async fn kubeconfig(api: &impl TalosApi, node: &Node, out: &Path) -> anyhow::Result<()> {
    let file = out.display().to_string();
    api.ask(node, &[&["kubeconfig", file.as_str()], KUBECONFIG_FLAGS].concat(), CALL_TIMEOUT).await.map(drop)
}
