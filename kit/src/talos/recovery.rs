//! Talos's disaster-recovery calls (its "Disaster Recovery" runbook; v1alpha1_server.go Reset,
//! EtcdRecover and Bootstrap; system/services/etcd.go): wiping a control plane's EPHEMERAL
//! volume so it comes back configured with an empty etcd, asking what its etcd service is
//! doing, and bootstrapping one control plane from a snapshot.

use std::path::Path;
use std::time::Duration;

use super::{BootstrapAnswer, PROBE_TIMEOUT, TalosApi, bootstrap_with};
use crate::config::Node;

/// How long a wipe may take: the reset, the reboot and the machine answering again.
pub const WIPE_TIMEOUT: Duration = Duration::from_secs(600);

/// `talosctl reset --graceful=false --reboot --system-labels-to-wipe=EPHEMERAL`, waiting as
/// talosctl does by default (until the machine's boot ID changed): etcd's data and the
/// kubelet's go, the config (STATE) stays, so the machine is back in its config with an empty
/// etcd that waits to join a cluster or to be bootstrapped. Not graceful: a member of a cluster
/// without quorum cannot leave it, and there is nothing to drain to.
pub async fn wipe_ephemeral(api: &impl TalosApi, node: &Node) -> anyhow::Result<()> {
    let args = ["reset", "--graceful=false", "--reboot", "--system-labels-to-wipe=EPHEMERAL"];
    api.ask(node, &args, WIPE_TIMEOUT).await.map(drop)
}

/// The etcd service's state as `talosctl service etcd` prints it (`STATE  Preparing`): an empty
/// member waiting to join or be bootstrapped is `Preparing`.
pub async fn etcd_service_state(api: &impl TalosApi, node: &Node) -> anyhow::Result<String> {
    let printed = api.ask(node, &["service", "etcd"], PROBE_TIMEOUT).await?;
    parse_service_state(&printed)
        .ok_or_else(|| anyhow::anyhow!("no STATE in `talosctl service etcd` from {}: {printed:?}", node.name))
}

pub fn parse_service_state(printed: &str) -> Option<String> {
    printed.lines().find_map(|line| line.strip_prefix("STATE").map(|rest| rest.trim().to_owned()))
}

/// `talosctl bootstrap --recover-from SNAPSHOT`: the snapshot uploaded (EtcdRecover), then
/// etcd bootstrapped from it as a cluster of one. Talos checks the hash etcd wrote into it.
pub async fn bootstrap_from(api: &impl TalosApi, node: &Node, snapshot: &Path) -> BootstrapAnswer {
    let from = format!("--recover-from={}", snapshot.display());
    bootstrap_with(api, node, &["bootstrap", &from], Duration::from_secs(600)).await
}

/// The IDs of etcd's members as `node` lists them.
pub async fn etcd_member_ids(api: &impl TalosApi, node: &Node) -> anyhow::Result<Vec<String>> {
    Ok(super::membership::members(api, node).await?.into_iter().map(|member| member.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_state_is_read_from_talosctls_table() {
        let printed = "NODE                  172.16.16.149\nID                    etcd\nSTATE                 Preparing\nHEALTH                Fail\n";
        assert_eq!(parse_service_state(printed).as_deref(), Some("Preparing"));
        assert_eq!(parse_service_state("NODE 172.16.16.149\n"), None);
    }
}
