//! The Kubernetes phase of `cargo xtask upgrade`, after Talos and before the add-ons (issue 28).
//! What runs is read from the cluster as `talosctl upgrade-k8s` reads it (`kit::talos::kubernetes`):
//! the lowest release among the control-plane components' and kube-proxy's pods, and each
//! Node's kubelet. The plan shows the path to `versions.kubernetes`, the machines it takes (the
//! control planes one at a time, kube-proxy, then every kubelet one at a time), the images it
//! pulls, and what refuses it: a path upgrade-k8s does not take, a release the cluster's Talos
//! does not run, a flag or feature gate the new release removes that a machine config still
//! sets, objects of an API it removes.
//!
//! `apply` does not take this phase yet: it stops before anything is changed and says so.

use std::collections::BTreeMap;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kit::config::{ClusterConfig, Version};
use kit::talos::kubernetes::{COMPONENTS, Configured, in_use, path_refusal, removed_on, tag_version};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde::Serialize;

/// The Kubernetes phase: from what runs to `versions.kubernetes`.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// The lowest release the control plane's components and kube-proxy run (none found: None).
    pub running: Option<Version>,
    pub wanted: Version,
    /// The control planes whose components do not all run the wanted release.
    pub control_planes: Vec<String>,
    /// The Nodes whose kubelet does not report the wanted release.
    pub kubelets: Vec<String>,
    pub images: Vec<String>,
    /// Why `apply` would refuse it, each said with its fix.
    pub refusals: Vec<String>,
}

impl Plan {
    pub fn to_do(&self) -> bool {
        self.running != Some(self.wanted) || !self.control_planes.is_empty() || !self.kubelets.is_empty()
    }
}

/// Reads what the cluster runs and plans the way to `versions.kubernetes`.
pub async fn plan(client: &kube::Client, config: &ClusterConfig) -> anyhow::Result<Plan> {
    let wanted = config.versions.kubernetes;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let selector = format!("k8s-app in ({})", COMPONENTS.join(","));
    let listed = pods.list(&ListParams::default().labels(&selector)).await.context("listing kube-system's pods")?;
    let mut running: Option<Version> = None;
    let mut control_planes = BTreeMap::<String, bool>::new();
    for pod in &listed.items {
        let Some(app) = pod.metadata.labels.as_ref().and_then(|labels| labels.get("k8s-app")) else { continue };
        let spec = pod.spec.as_ref();
        let container = spec.and_then(|spec| spec.containers.iter().find(|container| &container.name == app));
        let Some(version) = container.and_then(|container| container.image.as_deref()).and_then(tag_version) else {
            continue;
        };
        running = Some(running.map_or(version, |lowest| lowest.min(version)));
        let node = spec.and_then(|spec| spec.node_name.clone()).unwrap_or_default();
        if app != "kube-proxy" {
            *control_planes.entry(node).or_insert(true) &= version == wanted;
        }
    }
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let kubelets = nodes
        .list(&ListParams::default())
        .await
        .context("listing the Nodes")?
        .items
        .into_iter()
        .filter(|node| {
            let reported = node.status.as_ref().and_then(|status| status.node_info.as_ref());
            reported.and_then(|info| info.kubelet_version.parse::<Version>().ok()) != Some(wanted)
        })
        .filter_map(|node| node.metadata.name)
        .collect();
    let mut refusals = Vec::new();
    if let Some(from) = running {
        refusals.extend(path_refusal(from, wanted));
        if from.minor < wanted.minor {
            refusals.extend(removed_in_use(client, config, from).await?);
        }
    }
    if let Some(why) = kit::config::talos_kubernetes_mismatch(config.versions.talos, wanted) {
        refusals.push(format!("Talos {} {why}", config.versions.talos));
    }
    let images = COMPONENTS
        .iter()
        .map(|component| format!("registry.k8s.io/{component}:{wanted}"))
        .chain([format!("ghcr.io/siderolabs/kubelet:{wanted}")])
        .collect();
    Ok(Plan {
        running,
        wanted,
        control_planes: control_planes.into_iter().filter(|(_, done)| !done).map(|(node, _)| node).collect(),
        kubelets,
        images,
        refusals,
    })
}

/// What moving on from `from`'s minor removes that the cluster still uses: flags and feature
/// gates set in the machine configs stage 01 renders, and stored objects of removed APIs.
async fn removed_in_use(client: &kube::Client, config: &ClusterConfig, from: Version) -> anyhow::Result<Vec<String>> {
    let paths = talos_bootstrap::StatePaths::new(config);
    let mut configs = Vec::new();
    for node in &config.nodes {
        let file = paths.node_config(node);
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        configs
            .push((node.name.clone(), Configured::read(&text).with_context(|| format!("reading {}", file.display()))?));
    }
    let mut stored = Vec::new();
    for resource in removed_on((from.major, from.minor)).api_resources {
        stored.push((*resource, stored_objects(client, resource).await?));
    }
    Ok(in_use((from.major, from.minor), &configs, &stored))
}

/// The objects stored under `<plural>.<version>.<group>` (none when it is not served).
async fn stored_objects(client: &kube::Client, resource: &str) -> anyhow::Result<Vec<String>> {
    let mut parts = resource.splitn(3, '.');
    let (Some(plural), Some(version), Some(group)) = (parts.next(), parts.next(), parts.next()) else {
        anyhow::bail!("{resource} is not <plural>.<version>.<group>");
    };
    let api = ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: format!("{group}/{version}"),
        kind: String::new(),
        plural: plural.to_owned(),
    };
    let objects: Api<DynamicObject> = Api::all_with(client.clone(), &api);
    match objects.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items.into_iter().filter_map(|object| object.metadata.name).collect()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Vec::new()),
        Err(error) => Err(error).with_context(|| format!("listing {resource}")),
    }
}

/// The phase's lines of `upgrade plan`.
pub fn write_plan(plan: &Plan, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let running = plan.running.map_or_else(|| "not found".to_owned(), |version| version.to_string());
    if !plan.to_do() {
        writeln!(out, "{:<14} {running}: nothing to do", "kubernetes")?;
        return Ok(());
    }
    let or_none = |nodes: &[String]| if nodes.is_empty() { "none".to_owned() } else { nodes.join(" ") };
    writeln!(
        out,
        "{:<14} {running} → {}: control planes {}, one at a time, then kube-proxy, then the kubelets of {}, one at a time",
        "kubernetes",
        plan.wanted,
        or_none(&plan.control_planes),
        or_none(&plan.kubelets)
    )?;
    writeln!(out, "  images: {}", plan.images.join(" "))?;
    for refusal in &plan.refusals {
        writeln!(out, "  refused: {refusal}")?;
    }
    Ok(())
}
