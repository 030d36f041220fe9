//! What the local lab takes from the cluster model: the config's nodes, registered as kwok
//! nodes (kwok keeps their heartbeats and runs their pods as fakes), and the client that
//! reaches the lab's API server. `cargo xtask lab up` uses this, and so does stage 01 on the
//! lab target, so both register nodes the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus, NodeSystemInfo, Pod, Taint};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::{self, ClusterConfig, Role};

/// The field manager for objects the lab itself owns.
pub const FIELD_MANAGER: &str = "talos-ha-lab";
/// kwok manages only nodes carrying this annotation (`--manage-nodes-with-annotation-selector`),
/// so a real node could never be taken over by mistake.
pub const KWOK_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
/// The label and taint Talos puts on control planes (workloads stay off them by default).
pub const CONTROL_PLANE_ROLE: &str = "node-role.kubernetes.io/control-plane";

/// Where `lab up` writes the admin kubeconfig.
pub fn kubeconfig_path(state_dir: &Path) -> PathBuf {
    state_dir.join("lab").join("kubeconfig")
}

/// A client built from one kubeconfig file (never from `$KUBECONFIG`: the lab must not reach
/// another cluster by accident).
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| {
        format!("reading kubeconfig {} (for the lab, run `cargo xtask lab up` first)", path.display())
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    kube::Client::try_from(config).context("building a Kubernetes client")
}

/// The Node object for one config node, as its kubelet would register it on Talos.
pub fn kwok_node(node: &config::Node, cluster: &ClusterConfig) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), node.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        ("type".to_owned(), "kwok".to_owned()),
    ]);
    let mut taints = Vec::new();
    if node.role == Role::ControlPlane {
        labels.insert(CONTROL_PLANE_ROLE.to_owned(), String::new());
        taints.push(Taint { key: CONTROL_PLANE_ROLE.to_owned(), effect: "NoSchedule".to_owned(), ..Taint::default() });
    }
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(KWOK_ANNOTATION.0.to_owned(), KWOK_ANNOTATION.1.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec { taints: Some(taints), ..NodeSpec::default() }),
        status: Some(NodeStatus {
            // The config's address, as data only: nothing in the lab dials it (the API server
            // reaches kwok's kubelet stand-in by the node's Hostname, see the lab's flags).
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".to_owned(), address: node.ip.to_string() },
                NodeAddress { type_: "Hostname".to_owned(), address: node.name.clone() },
            ]),
            node_info: Some(NodeSystemInfo {
                kubelet_version: cluster.versions.kubernetes.to_string(),
                os_image: format!("Talos ({}) [kwok node in the talos-ha lab]", cluster.versions.talos),
                operating_system: "linux".to_owned(),
                architecture: "amd64".to_owned(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
    }
}

/// Registers every config node in the lab (server-side apply: re-running changes nothing).
pub async fn register_nodes(client: &kube::Client, cluster: &ClusterConfig) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for node in &cluster.nodes {
        let object = kwok_node(node, cluster);
        nodes
            .patch(&node.name, &params, &Patch::Apply(&object))
            .await
            .with_context(|| format!("registering node {} in the lab", node.name))?;
        // Status is a subresource: on update the main endpoint ignores it, so the addresses
        // and node info are applied there too (kwok keeps what it finds when it initialises).
        nodes
            .patch_status(&node.name, &params, &Patch::Apply(&object))
            .await
            .with_context(|| format!("setting the status of node {} in the lab", node.name))?;
    }
    Ok(())
}

/// The config nodes that are not Ready yet (missing ones included), by name.
pub async fn nodes_not_ready(client: &kube::Client, cluster: &ClusterConfig) -> anyhow::Result<Vec<String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut waiting = Vec::new();
    for node in &cluster.nodes {
        let found = nodes.get_opt(&node.name).await.with_context(|| format!("reading node {}", node.name))?;
        if !found.as_ref().is_some_and(is_ready) {
            waiting.push(node.name.clone());
        }
    }
    Ok(waiting)
}

/// True when the node's `Ready` condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|status| status.conditions.as_ref());
    conditions.is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// True when the pod's `Ready` condition is `True` (what a Service and a Deployment count).
pub fn pod_is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|status| status.conditions.as_ref());
    conditions.is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
