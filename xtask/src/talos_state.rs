//! What Talos itself reports about the control plane: etcd's members and which control plane
//! holds the VIP. `status` prints both; `verify-ha` checks them.

use std::time::Duration;

use kit::config::ClusterConfig;
use kit::tool::{Tool, talos_node_args, talosconfig_path};

const TIMEOUT: Duration = Duration::from_secs(15);

/// The hostnames of etcd's members, as the first control plane that answers lists them.
pub async fn etcd_members(talosctl: &Tool, config: &ClusterConfig) -> anyhow::Result<Vec<String>> {
    let talosconfig = talosconfig_path(config);
    let mut last_error = anyhow::anyhow!("the config has no control plane");
    for node in config.control_planes() {
        let answer = talosctl.run(talos_node_args(&talosconfig, node, &["etcd", "members"]), TIMEOUT).await;
        match answer.and_then(|output| output.ok("talosctl etcd members")) {
            // A header line, then one line per member; its third column is the hostname.
            Ok(table) => {
                return Ok(table
                    .lines()
                    .skip(1)
                    .filter_map(|line| line.split_whitespace().nth(2))
                    .map(str::to_owned)
                    .collect());
            }
            Err(error) => last_error = error.context(format!("asking {} ({})", node.name, node.ip)),
        }
    }
    Err(last_error)
}

/// The control planes that have the VIP among their addresses: exactly one when healthy.
pub async fn vip_holders(talosctl: &Tool, config: &ClusterConfig) -> Vec<String> {
    let talosconfig = talosconfig_path(config);
    let vip = format!("{}/", config.network.vip);
    let mut holders = Vec::new();
    for node in config.control_planes() {
        let args = talos_node_args(&talosconfig, node, &["get", "addresses"]);
        if let Ok(Ok(addresses)) = talosctl.run(args, TIMEOUT).await.map(|output| output.ok("talosctl get addresses"))
            && addresses.contains(&vip)
        {
            holders.push(node.name.clone());
        }
    }
    holders
}
