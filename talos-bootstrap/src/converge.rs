//! The order of operations on real nodes, the part people most often get wrong:
//!
//! 1. Ask every node first. One that does not answer stops the stage before anything changes,
//!    unless it took this cluster's config (4.): then it is waited for.
//! 2. Pre-flight every node in maintenance mode (its link selector matches one port, its
//!    install disk is not the boot stick): a refusal also stops the stage before anything
//!    changes, because a wrong config can take a node off the network.
//! 3. Upload the Image Factory schematic, so the installer image the configs name exists.
//! 4. Send configs only to nodes in maintenance mode, recording each (`evidence.rs`); a
//!    configured node is left alone (its drift shows in `plan`). A node that took its config
//!    is installing and rebooting: a run interrupted then and run again waits for it (1.).
//! 5. Wait for every control plane to come back installed, then bootstrap etcd on the first
//!    one — only when every control plane answers, none has etcd data, and no bootstrap of
//!    this cluster was ever recorded (`evidence.rs`); anything less certain needs
//!    `apply --bootstrap` (a second bootstrap starts a second cluster).
//! 6. Fetch the kubeconfig at once (it points at the VIP), so a failed wait still leaves one.
//! 7. Wait for every node to answer, then for `talosctl health` with the node lists spelled
//!    out, asked again until its budget is spent.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use kit::config::{ClusterConfig, Node};
use kit::report::{Action, Change};
use kit::talos::{BootstrapAnswer, NodeState, TalosApi};

use crate::evidence::Evidence;
use crate::machine_configs::NodeConfig;
use crate::nodes;

/// How long a freshly configured node may take to install and come back.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long Talos may answer "not yet" to a bootstrap.
pub const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How long the whole cluster may take to become healthy after bootstrap.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// What a run of stage 01 on real nodes is given besides the nodes.
#[derive(Debug)]
pub struct Run<'a> {
    pub configs: &'a [NodeConfig],
    pub kubeconfig: &'a Path,
    /// `apply --bootstrap`: bootstrap even where the guard cannot prove the cluster is new.
    pub force_bootstrap: bool,
    /// The Image Factory the schematic is uploaded to (its installer image is in the configs).
    pub image_factory: &'a str,
    /// Where this cluster's bootstrap is recorded, and read back.
    pub evidence: &'a Evidence,
}

/// Every node's state, or an error naming each node that did not answer, with the fix. With
/// `evidence`, a node that was sent this cluster's config and is not configured yet (a run
/// interrupted just after sending it) is installing and rebooting: it is waited for, as the
/// run that sent the config would have; one that answers configured is installed, and its
/// record goes.
pub async fn survey(
    api: &impl TalosApi,
    config: &ClusterConfig,
    evidence: Option<&Evidence>,
) -> anyhow::Result<Vec<(Node, NodeState)>> {
    let mut states = Vec::new();
    for node in &config.nodes {
        let mut state = kit::talos::probe(api, node).await;
        if let Some(evidence) = evidence
            && let Some(at) = evidence.installing_since(&node.name, &state)?
        {
            // Still in maintenance mode: about to reboot, or it never took the config (the run
            // was killed between the record and the send); the first leaves it within seconds.
            let installing =
                state != NodeState::Maintenance || nodes::left_maintenance(api, node, nodes::LEAVE_MAINTENANCE).await;
            if installing {
                tracing::info!("{} was sent its config at {at}: waiting for it to install and reboot", node.name);
                nodes::wait_configured(api, node, INSTALL_TIMEOUT).await?;
            }
            state = kit::talos::probe(api, node).await;
        }
        if let Some(evidence) = evidence
            && state == NodeState::Configured
        {
            evidence.installed(&node.name)?;
        }
        states.push((node.clone(), state));
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
         Talos {} ISO (maintenance mode) and make it reachable at its address in cluster.yaml. In maintenance mode a \
         node takes its address from DHCP, so either reserve that address for its MAC on the DHCP server, or boot \
         the ISO with `ip=<address>::<gateway>:<netmask>::<interface>:off` kernel arguments (the console's \
         dashboard shows the address it has now); then re-run",
        unreachable.len(),
        unreachable.join("\n"),
        config.versions.talos
    );
    Ok(states)
}

/// Every node in maintenance mode pre-flighted; an error lists every refusal.
pub async fn preflight(
    api: &impl TalosApi,
    config: &ClusterConfig,
    states: &[(Node, NodeState)],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let mut refused = Vec::new();
    for (node, state) in states {
        if *state == NodeState::Maintenance {
            match kit::talos::preflight(api, config, node).await {
                Ok(what) => found.push((node.name.clone(), what)),
                Err(error) => refused.push(format!("{error:#}")),
            }
        }
    }
    anyhow::ensure!(refused.is_empty(), "{}", refused.join("\n\n"));
    Ok(found)
}

/// Why etcd counts as bootstrapped: some control plane lists members.
pub async fn bootstrapped(api: &impl TalosApi, config: &ClusterConfig) -> Option<String> {
    for node in config.control_planes() {
        if let Ok(members) = kit::talos::etcd_members(api, node).await
            && !members.is_empty()
        {
            return Some(format!("{} reports etcd members {}", node.name, members.join(", ")));
        }
    }
    None
}

/// Runs the stage on real nodes; returns what changed.
pub async fn converge(api: &impl TalosApi, config: &ClusterConfig, run: &Run<'_>) -> anyhow::Result<Vec<Change>> {
    let states = survey(api, config, Some(run.evidence)).await?;
    preflight(api, config, &states).await?;
    let first = config.control_planes().next().context("the config has no control plane")?;
    let mut changes = Vec::new();
    if states.iter().any(|(_, state)| *state == NodeState::Maintenance) {
        changes.push(crate::schematic::upload(run.image_factory).await?);
    }
    for (node, state) in &states {
        let object = format!("TalosNode {}", node.name);
        if *state == NodeState::Maintenance {
            let file = &run.configs.iter().find(|c| c.node.name == node.name).context("no config generated")?.path;
            tracing::info!(
                "applying the machine config to {} ({}); it installs to {} and reboots",
                node.name,
                node.ip,
                node.install_disk
            );
            // Recorded before it is sent: a run killed between Talos taking the config and
            // talosctl's answer must not leave a machine installing that no record names.
            run.evidence.config_sent(&node.name)?;
            nodes::apply_config_insecure(api, node, file)
                .await
                .with_context(|| format!("applying the machine config to {} ({})", node.name, node.ip))?;
            let diff = format!("config applied in maintenance mode; installing to {}", node.install_disk);
            changes.push(Change { object, action: Action::Created, diff: Some(diff) });
        } else {
            changes.push(Change { object, action: Action::Unchanged, diff: None });
        }
    }

    for node in config.control_planes() {
        await_installed(api, node, run.evidence).await?;
    }
    changes.push(bootstrap_once(api, config, first, run.evidence, run.force_bootstrap).await?);

    if let Some(parent) = run.kubeconfig.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let existed = run.kubeconfig.exists();
    nodes::kubeconfig(api, first, run.kubeconfig).await.context("fetching the admin kubeconfig")?;
    crate::machine_configs::restrict(run.kubeconfig)?;
    let action = if existed { Action::Unchanged } else { Action::Created };
    changes.push(Change { object: format!("Kubeconfig {}", run.kubeconfig.display()), action, diff: None });

    for node in config.workers() {
        await_installed(api, node, run.evidence).await?;
    }
    let control_planes: Vec<&Node> = config.control_planes().collect();
    let workers: Vec<&Node> = config.workers().collect();
    tracing::info!("waiting for the cluster to be healthy (up to {} min)", HEALTH_TIMEOUT.as_secs() / 60);
    nodes::health(api, &control_planes, &workers, HEALTH_TIMEOUT).await.map_err(|error| {
        anyhow::anyhow!(
            "the cluster did not become healthy: {}; fix what the check names (`talosctl -n <node> dmesg`, \
             `talosctl -n <node> services` show why; {} is there to look with kubectl), then re-run: configured \
             nodes are skipped and etcd is not bootstrapped again",
            name_nodes(&format!("{error:#}"), config),
            run.kubeconfig.display()
        )
    })?;
    Ok(changes)
}

/// Waits for `node` to answer with its config, then forgets that it was sent one: from now on
/// a run that finds it silent reports it down instead of waiting for an install.
async fn await_installed(api: &impl TalosApi, node: &Node, evidence: &Evidence) -> anyhow::Result<()> {
    tracing::info!("waiting for {} to answer with its config", node.name);
    nodes::wait_configured(api, node, INSTALL_TIMEOUT).await?;
    evidence.installed(&node.name)
}

/// Bootstraps etcd on `first` only when that is certainly right: every control plane answers,
/// configured, none has etcd data, and no bootstrap of this cluster was ever recorded: a first
/// install, perhaps interrupted before its bootstrap. Anything less needs `--bootstrap`. A
/// control plane that does not answer may hold the data (Talos refuses a second bootstrap only
/// on a node whose etcd data directory is not empty, AlreadyExists); a recorded bootstrap with
/// no member left means the cluster's data is gone, and a bootstrap would start a new, empty one
/// in its place.
async fn bootstrap_once(
    api: &impl TalosApi,
    config: &ClusterConfig,
    first: &Node,
    evidence: &Evidence,
    forced: bool,
) -> anyhow::Result<Change> {
    let object = format!("EtcdBootstrap {}", first.name);
    let recorded = evidence.recorded()?;
    if let Some(why) = bootstrapped(api, config).await {
        tracing::info!("etcd is already bootstrapped ({why}); not bootstrapping again");
        if recorded.is_none() {
            evidence.record(&first.name, "found running")?;
        }
        return Ok(Change { object, action: Action::Unchanged, diff: Some(why) });
    }
    if !forced {
        let mut silent = Vec::new();
        for node in config.control_planes() {
            if kit::talos::probe(api, node).await != NodeState::Configured {
                silent.push(node.name.clone());
            }
        }
        anyhow::ensure!(
            silent.is_empty(),
            "etcd was not bootstrapped: no control plane reports etcd members, but {} do(es) not answer the Talos \
             API and may hold the cluster's data. Bootstrapping now could start a second, empty cluster beside it: \
             bring the control planes back, then re-run. For a new cluster on purpose, run \
             `talos-bootstrap apply --bootstrap`",
            silent.join(", ")
        );
        if let Some(record) = &recorded {
            anyhow::bail!(
                "etcd of this cluster was bootstrapped on {} at {} ({}, recorded in {}), and now no control plane \
                 reports etcd members: every member's data is gone. Bootstrapping again would start a new, empty \
                 cluster in its place. To get this one back, restore etcd from a backup: `cargo xtask restore --from \
                 <backup folder>` (Talos's disaster recovery, `talosctl bootstrap --recover-from <snapshot>`, as a \
                 tool); for a new, empty cluster on purpose, run `talos-bootstrap apply --bootstrap`",
                record.member,
                record.at,
                record.how,
                evidence.bootstrap_path().display()
            );
        }
    }
    tracing::info!("bootstrapping etcd on {} ({}), once", first.name, first.ip);
    let answer = nodes::bootstrap_with_retry(api, first, BOOTSTRAP_TIMEOUT)
        .await
        .with_context(|| format!("bootstrapping etcd on {}", first.name))?;
    Ok(match answer {
        BootstrapAnswer::AlreadyBootstrapped => {
            if recorded.is_none() {
                evidence.record(&first.name, "found running")?;
            }
            Change {
                object,
                action: Action::Unchanged,
                diff: Some(format!("{} says its etcd data directory is not empty: bootstrapped before", first.name)),
            }
        }
        _ => {
            evidence.record(&first.name, "bootstrapped")?;
            Change { object, action: Action::Created, diff: None }
        }
    })
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
