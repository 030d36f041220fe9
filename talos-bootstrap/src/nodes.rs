//! The edge to real Talos nodes: the few things stage 01 asks of them, each one `talosctl`
//! call. [`Talosctl`] is the real and only production implementation; the trait exists so the
//! sequencing in `converge` can be tested against a test double of this edge (no Talos node
//! can run here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use kit::config::Node;
use kit::tool::Tool;

/// How long a single probe of one node may take before the node counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// A call that changes a node (apply-config, bootstrap) or reads from it.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a node's Talos API (port 50000) says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// Booted from the Talos ISO/PXE without a config: waits for `apply-config --insecure`.
    Maintenance,
    /// Running with a config, answering our talosconfig's client certificate.
    Configured,
    /// No answer on the Talos API port: the reason talosctl gave.
    Unreachable(String),
}

/// What stage 01 needs from Talos nodes.
#[allow(async_fn_in_trait)]
pub trait TalosNodes {
    async fn state(&self, node: &Node) -> NodeState;
    /// Sends a config to a node in maintenance mode; it installs to disk and reboots.
    async fn apply_config_insecure(&self, node: &Node, config: &Path) -> anyhow::Result<()>;
    /// What applying `config` to a configured node would change (`apply-config --dry-run`).
    async fn config_diff(&self, node: &Node, config: &Path) -> anyhow::Result<String>;
    /// Waits until a node answers with its new config (after install and reboot).
    async fn wait_configured(&self, node: &Node, timeout: Duration) -> anyhow::Result<()>;
    /// The etcd members a control plane knows; an error when etcd is not running there.
    async fn etcd_members(&self, node: &Node) -> anyhow::Result<Vec<String>>;
    /// Initialises etcd on one control plane: done once in a cluster's life.
    async fn bootstrap(&self, node: &Node) -> anyhow::Result<()>;
    /// `talosctl health` with the node lists given explicitly; the error names the failed check.
    async fn health(&self, control_planes: &[&Node], workers: &[&Node], timeout: Duration) -> anyhow::Result<()>;
    /// Writes an admin kubeconfig (pointing at the cluster endpoint, the VIP) to `out`.
    async fn kubeconfig(&self, node: &Node, out: &Path) -> anyhow::Result<()>;
}

/// The real edge: `talosctl` with the cluster's talosconfig, one node per call, that node
/// also its own endpoint (never the VIP: it only exists once etcd runs).
pub struct Talosctl {
    pub tool: Tool,
    pub talosconfig: PathBuf,
}

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

impl Talosctl {
    fn with_node(&self, node: &Node, args: &[&str]) -> Vec<String> {
        kit::tool::talos_node_args(&self.talosconfig, node, args)
    }

    async fn call(&self, node: &Node, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let what = format!("talosctl {} on {} ({})", args.first().copied().unwrap_or_default(), node.name, node.ip);
        self.tool.run(self.with_node(node, args), timeout).await?.ok(what)
    }
}

impl TalosNodes for Talosctl {
    async fn state(&self, node: &Node) -> NodeState {
        // With our client certificate only a node configured by us answers; in maintenance
        // mode only the insecure (unauthenticated, still encrypted) API does.
        if self.call(node, &["version", "--short"], PROBE_TIMEOUT).await.is_ok() {
            return NodeState::Configured;
        }
        match self.call(node, &["version", "--short", "--insecure"], PROBE_TIMEOUT).await {
            Ok(_) => NodeState::Maintenance,
            Err(error) => NodeState::Unreachable(format!("{error:#}")),
        }
    }

    async fn apply_config_insecure(&self, node: &Node, config: &Path) -> anyhow::Result<()> {
        let file = config.display().to_string();
        self.call(node, &["apply-config", "--insecure", "--file", &file], CALL_TIMEOUT).await.map(drop)
    }

    async fn config_diff(&self, node: &Node, config: &Path) -> anyhow::Result<String> {
        let file = config.display().to_string();
        self.call(node, &["apply-config", "--dry-run", "--file", &file], CALL_TIMEOUT).await
    }

    async fn wait_configured(&self, node: &Node, timeout: Duration) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        loop {
            let Err(error) = self.call(node, &["version", "--short"], PROBE_TIMEOUT).await else {
                return Ok(());
            };
            if started.elapsed() > timeout {
                return Err(error).with_context(|| {
                    format!(
                        "{} ({}) did not come back with its config within {}s",
                        node.name,
                        node.ip,
                        timeout.as_secs()
                    )
                });
            }
            tracing::info!("  waiting for {} to install and reboot ({}s)", node.name, started.elapsed().as_secs());
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }

    async fn etcd_members(&self, node: &Node) -> anyhow::Result<Vec<String>> {
        let table = self.call(node, &["etcd", "members"], PROBE_TIMEOUT).await?;
        // A header line, then one line per member: NODE ID HOSTNAME PEER-URLS CLIENT-URLS LEARNER.
        Ok(table.lines().skip(1).filter_map(|line| line.split_whitespace().nth(2)).map(str::to_owned).collect())
    }

    async fn bootstrap(&self, node: &Node) -> anyhow::Result<()> {
        self.call(node, &["bootstrap"], CALL_TIMEOUT).await.map(drop)
    }

    async fn health(&self, control_planes: &[&Node], workers: &[&Node], timeout: Duration) -> anyhow::Result<()> {
        let first = control_planes.first().context("no control plane to ask")?;
        let args = health_args(control_planes, workers, timeout);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // talosctl prints each check as it waits on it; pass them on as progress. Its own
        // timeout ends the wait, so the process gets a minute more than that.
        let output = self
            .tool
            .run_with_progress(self.with_node(first, &args), timeout + Duration::from_secs(60), |line| {
                tracing::info!("  {line}");
            })
            .await?;
        if output.success {
            return Ok(());
        }
        let last_check = output.stderr.lines().rev().find(|line| line.contains("waiting for")).unwrap_or_default();
        anyhow::bail!("{}", last_check_or(last_check, &output.stderr))
    }

    async fn kubeconfig(&self, node: &Node, out: &Path) -> anyhow::Result<()> {
        let file = out.display().to_string();
        self.call(node, &[&["kubeconfig", file.as_str()], KUBECONFIG_FLAGS].concat(), CALL_TIMEOUT).await.map(drop)
    }
}

fn last_check_or<'a>(last_check: &'a str, everything: &'a str) -> &'a str {
    if last_check.is_empty() { everything.trim() } else { last_check.trim() }
}
