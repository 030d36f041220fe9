//! What every stage shares about the lab, the cluster in a box: where its kubeconfig is, how
//! a process joins the box's workstation (a `--lab` run does, so everything it dials, talosctl
//! included, stays inside the box), and how Node and pod readiness is read.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::ClusterConfig;

/// The label and taint Talos puts on control planes (workloads stay off them by default).
pub const CONTROL_PLANE_ROLE: &str = "node-role.kubernetes.io/control-plane";

/// The ports of one lab on 127.0.0.1 (and on the box's workstation), all derived from one base
/// so two labs can run side by side; `lab up` keeps them in `state/lab/lab.json`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Ports {
    pub base: u16,
}

impl Ports {
    /// The ports the lab beside this config was started with, if it was.
    pub fn stored(state_dir: &Path) -> Option<Ports> {
        let text = std::fs::read_to_string(ports_file(state_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The API forward: on this machine and on the workstation.
    pub fn api(self) -> u16 {
        self.base
    }

    /// The Image Factory stand-in, on the workstation.
    pub fn image_factory(self) -> u16 {
        self.base + 1
    }

    /// The metrics port of MetalLB's controller, on the workstation.
    pub fn metallb_metrics(self) -> u16 {
        self.base + 2
    }

    /// What stage 01 uploads its schematic to on the lab.
    pub fn image_factory_url(self) -> String {
        format!("http://127.0.0.1:{}", self.image_factory())
    }
}

/// Where `lab up` keeps the lab's ports.
pub fn ports_file(state_dir: &Path) -> PathBuf {
    state_dir.join("lab").join("lab.json")
}

/// The network namespace of a cluster's box's workstation: `<cluster name>-admin`.
pub fn workstation_namespace(cluster: &str) -> String {
    format!("{cluster}-admin")
}

/// Moves the calling thread into `namespace`'s network stack (setns affects this thread, the
/// threads it starts afterwards and the processes they start).
pub fn enter_namespace(namespace: &str) -> anyhow::Result<()> {
    let handle = std::fs::File::open(format!("/run/netns/{namespace}")).with_context(|| {
        format!("the box has no namespace {namespace}: start it with `cargo xtask lab up` (as root)")
    })?;
    nix::sched::setns(handle, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {namespace} (joining a network namespace needs root, or CAP_SYS_ADMIN)"))
}

/// Makes the calling thread the box's workstation.
pub fn enter_box(config: &ClusterConfig) -> anyhow::Result<()> {
    enter_namespace(&workstation_namespace(&config.name))
}

/// The lab's admin kubeconfig, aimed at the API forward on 127.0.0.1 (the workstation
/// services write it once stage 01 has fetched the cluster's own, which is aimed at the VIP).
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
