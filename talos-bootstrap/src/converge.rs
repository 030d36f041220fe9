//! The order of operations on real nodes, the part people most often get wrong:
//!
//! 1. Ask every node first. One that does not answer stops the stage before anything changes.
//! 2. Send configs only to nodes in maintenance mode; a configured node is left alone (its
//!    drift shows in `plan`).
//! 3. Bootstrap etcd on the first control plane only if no control plane knows an etcd
//!    member: a second bootstrap would start a second, empty cluster.
//! 4. Wait for `talosctl health` with the node lists spelled out, so a missing node fails it.
//! 5. Fetch the kubeconfig (it points at the VIP, which exists now that etcd runs).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use kit::config::{ClusterConfig, Node};
use kit::stage::{Action, Change};

use crate::machine_configs::NodeConfig;
use crate::nodes::{NodeState, TalosNodes};

/// How long a freshly configured control plane may take to install and come back.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long the whole cluster may take to become healthy after bootstrap.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Every node's state, or an error naming each node that did not answer, with the fix.
pub async fn survey(edge: &impl TalosNodes, config: &ClusterConfig) -> anyhow::Result<Vec<(Node, NodeState)>> {
    let mut states = Vec::new();
    for node in &config.nodes {
        states.push((node.clone(), edge.state(node).await));
    }
    let unreachable: Vec<String> = states
        .iter()
        .filter_map(|(node, state)| match state {
            NodeState::Unreachable(why) => Some(format!("  - {} ({}): {why}", node.name, node.ip)),
            _ => None,
        })
        .collect();
    anyhow::ensure!(
        unreachable.is_empty(),
        "nothing was changed: {} node(s) do not answer on the Talos API (port 50000):\n{}\nfix: boot each from the \
         Talos {} ISO (maintenance mode) and check that this machine reaches its address, then re-run",
        unreachable.len(),
        unreachable.join("\n"),
        config.versions.talos
    );
    Ok(states)
}

/// True when some control plane already knows an etcd member: the cluster was bootstrapped.
pub async fn bootstrapped(edge: &impl TalosNodes, config: &ClusterConfig) -> Option<String> {
    for node in config.control_planes() {
        if let Ok(members) = edge.etcd_members(node).await
            && !members.is_empty()
        {
            return Some(format!("{} reports etcd members {}", node.name, members.join(", ")));
        }
    }
    None
}

/// Runs the stage on real nodes; returns what changed.
pub async fn converge(
    edge: &impl TalosNodes,
    config: &ClusterConfig,
    configs: &[NodeConfig],
    kubeconfig: &Path,
) -> anyhow::Result<Vec<Change>> {
    let states = survey(edge, config).await?;
    let mut changes = Vec::new();
    for (node, state) in &states {
        let object = format!("TalosNode {}", node.name);
        if *state == NodeState::Maintenance {
            let file = &configs.iter().find(|c| c.node.name == node.name).context("no config generated")?.path;
            tracing::info!(
                "applying the machine config to {} ({}); it installs to {} and reboots",
                node.name,
                node.ip,
                node.install_disk
            );
            edge.apply_config_insecure(node, file)
                .await
                .with_context(|| format!("applying the machine config to {} ({})", node.name, node.ip))?;
            let diff = format!("config applied in maintenance mode; installing to {}", node.install_disk);
            changes.push(Change { object, action: Action::Created, diff: Some(diff) });
        } else {
            changes.push(Change { object, action: Action::Unchanged, diff: None });
        }
    }

    let first = config.control_planes().next().context("the config has no control plane")?;
    tracing::info!("waiting for {} to answer with its config", first.name);
    edge.wait_configured(first, INSTALL_TIMEOUT).await?;
    let object = format!("EtcdBootstrap {}", first.name);
    match bootstrapped(edge, config).await {
        Some(why) => {
            tracing::info!("etcd is already bootstrapped ({why}); not bootstrapping again");
            changes.push(Change { object, action: Action::Unchanged, diff: Some(why) });
        }
        None => {
            tracing::info!("bootstrapping etcd on {} ({}), once", first.name, first.ip);
            edge.bootstrap(first).await.with_context(|| format!("bootstrapping etcd on {}", first.name))?;
            changes.push(Change { object, action: Action::Created, diff: None });
        }
    }

    let control_planes: Vec<&Node> = config.control_planes().collect();
    let workers: Vec<&Node> = config.workers().collect();
    tracing::info!("waiting for the cluster to be healthy (up to {} min)", HEALTH_TIMEOUT.as_secs() / 60);
    edge.health(&control_planes, &workers, HEALTH_TIMEOUT).await.map_err(|error| {
        anyhow::anyhow!(
            "the cluster did not become healthy: {}; fix what the check names (`talosctl -n <node> dmesg`, \
             `talosctl -n <node> services` show why), then re-run: configured nodes are skipped and etcd is not \
             bootstrapped again",
            name_nodes(&format!("{error:#}"), config)
        )
    })?;

    if let Some(parent) = kubeconfig.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let existed = kubeconfig.exists();
    edge.kubeconfig(first, kubeconfig).await.context("fetching the admin kubeconfig")?;
    crate::machine_configs::restrict(kubeconfig)?;
    let action = if existed { Action::Unchanged } else { Action::Created };
    changes.push(Change { object: format!("Kubeconfig {}", kubeconfig.display()), action, diff: None });
    Ok(changes)
}

/// `text` with every node address written as `name (address)`, so messages from talosctl
/// (which knows only addresses) say which node they mean.
pub fn name_nodes(text: &str, config: &ClusterConfig) -> String {
    let mut named = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        named.push_str(&rest[..start]);
        let candidate = &rest[start..];
        let end = candidate.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(candidate.len());
        let token = candidate[..end].trim_end_matches('.');
        let node = token.parse::<Ipv4Addr>().ok().and_then(|ip| config.nodes.iter().find(|node| node.ip == ip));
        match node {
            Some(node) => named.push_str(&format!("{} ({token})", node.name)),
            None => named.push_str(token),
        }
        rest = &candidate[token.len()..];
    }
    named.push_str(rest);
    named
}
