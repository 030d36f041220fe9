//! The Kubernetes API as every command reaches it: a client from one kubeconfig file, where
//! that file points (for errors to name), and how Node and pod readiness is read.

use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::ClusterConfig;

/// The label and taint Talos puts on control planes (workloads stay off them by default).
pub const CONTROL_PLANE_ROLE: &str = "node-role.kubernetes.io/control-plane";

/// A client built from one kubeconfig file (never from `$KUBECONFIG`: a command must not reach
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

/// The API server a kubeconfig file points at (its current context's cluster), to name it in
/// an error: `None` when the file cannot be read.
pub fn api_server_of(path: &Path) -> Option<String> {
    let kubeconfig = Kubeconfig::read_from(path).ok()?;
    let context_name = kubeconfig.current_context.clone()?;
    let context = kubeconfig.contexts.iter().find(|named| named.name == context_name)?.context.clone()?;
    let cluster = kubeconfig.clusters.iter().find(|named| named.name == context.cluster)?.cluster.clone()?;
    cluster.server
}

/// Where a kubeconfig file sends requests, for an error to name: `<server> (kubeconfig <path>)`.
pub fn describe_api(path: &Path) -> String {
    let server = api_server_of(path).unwrap_or_else(|| "(no server: the file cannot be read)".to_owned());
    format!("{server} (kubeconfig {})", path.display())
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
