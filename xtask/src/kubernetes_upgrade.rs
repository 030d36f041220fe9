//! The Kubernetes phase of `cargo xtask upgrade`, after Talos and before the add-ons (issue 28).
//! What runs is read from the cluster as `talosctl upgrade-k8s` reads it (`kit::talos::kubernetes`):
//! the lowest release among the control-plane components' and kube-proxy's pods, and each
//! Node's kubelet. The plan shows the path to `versions.kubernetes`, the machines it takes (the
//! control planes one at a time, kube-proxy, then every kubelet one at a time), the images it
//! pulls, and what refuses it: a path upgrade-k8s does not take, a release the cluster's Talos
//! does not run, a flag or feature gate the new release removes that a machine config still
//! sets, objects of an API it removes.
//!
//! `apply` makes upgrade-k8s's calls itself rather than running it, for what upgrade-k8s does
//! not do (it does take the twins' box from v1.34.4 to v1.35.0 unmodified, in 67 s):
//! 1. before anything changes: the plan's refusals, a backup from the last hour, every control
//!    plane's inline manifests the ones stage 01 renders (Talos renders them into Manifests,
//!    which step 4 applies again), and a pre-pull of every image on every machine that runs it;
//! 2. per control plane, one at a time, gated on etcd: one patch of its components' and
//!    kube-proxy's images, then each component's mirror pod runs the release, carries the
//!    version of the config Talos rendered from the patch (`talos.dev/config-version`) and is
//!    Ready (upgrade-k8s patches one component at a time across all control planes, with no
//!    etcd gate);
//! 3. the Manifests Talos rendered from the patched config applied with server-side apply, then
//!    kube-proxy's DaemonSet rolled out;
//! 4. per machine, one at a time, gated on etcd: the kubelet's image patched, then its Node
//!    reports the release and is Ready (upgrade-k8s's own kubelet step restarts them close
//!    together: siderolabs/talos#14227).
//!
//! Every patch goes through `talosctl patch --mode no-reboot`, which encodes the config without
//! docs or examples and is refused, changing nothing, if Talos cannot make it live. Each step is
//! skipped when the cluster already runs its result, so a re-run continues; `--dry-run` asks
//! Talos what each patch would change (the diffs) and changes nothing. upgrade-k8s's own dry
//! run is not used: it re-applies every control plane's config (talos_managed.go, patchKubeProxy).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kit::config::{ClusterConfig, Node, Version};
use kit::talos::kubernetes::{
    COMPONENTS, CONTROL_PLANE, Configured, control_plane_patch, image, in_use, kubelet_patch, path_refusal, removed_on,
    tag_version,
};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde::Serialize;

use crate::talos_upgrade::KubeApi;

/// How long a control plane's new static pods may take to run and be Ready (upgrade-k8s's
/// checkPodStatus waits 5 minutes).
const CONTROL_PLANE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long a restarted kubelet's Node may take to report the release and be Ready (upgrade-k8s:
/// 3 minutes, kubelet.go).
const KUBELET_TIMEOUT: Duration = Duration::from_secs(3 * 60);
/// How long kube-proxy's DaemonSet may take to roll out (upgrade-k8s: 5 minutes, rollout.go).
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The field manager of the Manifests applied again (`talos-ha-<this>`).
const MANIFESTS_MANAGER: &str = "kubernetes-upgrade";

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
    /// cluster.yaml says another release (the wanted one was given with `--pin`): written
    /// there once the cluster runs it.
    pub to_record: bool,
    /// The machines whose config, as stage 01 last rendered it, names another kubelet: rendered
    /// again (and applied) once the cluster runs the release.
    pub to_render: Vec<String>,
}

impl Plan {
    /// Something runs another release than the wanted one.
    pub fn to_upgrade(&self) -> bool {
        self.running != Some(self.wanted) || !self.control_planes.is_empty() || !self.kubelets.is_empty()
    }

    pub fn to_do(&self) -> bool {
        self.to_upgrade() || self.to_record || !self.to_render.is_empty()
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
    let rendered = rendered_configs(config);
    let mut refusals = Vec::new();
    match running {
        Some(from) => {
            refusals.extend(path_refusal(from, wanted));
            if from.minor < wanted.minor {
                refusals.extend(removed_in_use(client, &rendered, from).await?);
            }
        }
        // Nothing says what runs, so no path can be judged (upgrade-k8s stops the same way).
        None => refusals.push(format!(
            "no pod of {} in kube-system says which release runs (`kubectl -n kube-system get pods -l k8s-app` \
             shows them): is this a Talos cluster whose control plane is up?",
            COMPONENTS.join(", ")
        )),
    }
    if let Some(why) = kit::config::talos_kubernetes_mismatch(config.versions.talos, wanted) {
        refusals.push(format!("Talos {} {why}", config.versions.talos));
    }
    let images = COMPONENTS.iter().chain(&["kubelet"]).map(|component| image(component, wanted)).collect();
    let source =
        std::fs::read_to_string(&config.source).with_context(|| format!("reading {}", config.source.display()))?;
    let to_record = kit::config::with_version(&source, "kubernetes", wanted).is_none_or(|written| written != source);
    let to_render = rendered_behind(&rendered, wanted)?;
    Ok(Plan {
        running,
        wanted,
        control_planes: control_planes.into_iter().filter(|(_, done)| !done).map(|(node, _)| node).collect(),
        kubelets,
        images,
        refusals,
        to_record,
        to_render,
    })
}

/// Each machine's config as stage 01 last rendered it (state/talos): its node's name, the file
/// and the text. A machine with none yet is left out.
fn rendered_configs(config: &ClusterConfig) -> Vec<(String, std::path::PathBuf, String)> {
    let paths = talos_bootstrap::StatePaths::new(config);
    config
        .nodes
        .iter()
        .filter_map(|node| {
            let file = paths.node_config(node);
            let text = std::fs::read_to_string(&file).ok()?;
            Some((node.name.clone(), file, text))
        })
        .collect()
}

/// The machines whose rendered config names another kubelet release than `wanted`.
fn rendered_behind(rendered: &[(String, std::path::PathBuf, String)], wanted: Version) -> anyhow::Result<Vec<String>> {
    let mut behind = Vec::new();
    for (node, file, text) in rendered {
        let image =
            kit::talos::kubernetes::kubelet_image(text).with_context(|| format!("reading {}", file.display()))?;
        if image.as_deref().and_then(tag_version) != Some(wanted) {
            behind.push(node.clone());
        }
    }
    Ok(behind)
}

/// What moving on from `from`'s minor removes that the cluster still uses: flags and feature
/// gates set in the machine configs stage 01 renders, and stored objects of removed APIs.
async fn removed_in_use(
    client: &kube::Client,
    rendered: &[(String, std::path::PathBuf, String)],
    from: Version,
) -> anyhow::Result<Vec<String>> {
    let mut configs = Vec::new();
    for (node, file, text) in rendered {
        configs.push((node.clone(), Configured::read(text).with_context(|| format!("reading {}", file.display()))?));
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
    let mut after = Vec::new();
    if !plan.to_render.is_empty() {
        after.push(format!("stage 01 renders the machine configs at {} again", plan.wanted));
    }
    if plan.to_record {
        after.push(format!("cluster.yaml's versions.kubernetes becomes {}", plan.wanted));
    }
    if !plan.to_upgrade() {
        let state =
            if after.is_empty() { "nothing to do".to_owned() } else { format!("runs it; {}", after.join("; ")) };
        writeln!(out, "{:<14} {running}: {state}", "kubernetes")?;
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
    if !after.is_empty() {
        writeln!(out, "  then: {}", after.join("; "))?;
    }
    for refusal in &plan.refusals {
        writeln!(out, "  refused: {refusal}")?;
    }
    Ok(())
}

/// What `apply` refuses before it changes anything: a refusal of the plan, no backup from the
/// last hour (unless `no_backup`).
pub fn preconditions(config: &ClusterConfig, plan: &Plan, no_backup: bool) -> anyhow::Result<()> {
    anyhow::ensure!(plan.refusals.is_empty(), "nothing was changed: Kubernetes {}", plan.refusals.join("; "));
    if !plan.to_upgrade() {
        return Ok(());
    }
    crate::talos_upgrade::backup_gate(
        config,
        no_backup,
        "an upgrade restarts every API server and kubelet; if etcd is lost on the way there is nothing to restore from",
    )
}

/// The machines in the order the phase takes them: control planes, then workers.
fn named<'a>(config: &'a ClusterConfig, names: &[String]) -> Vec<&'a Node> {
    config.control_planes().chain(config.workers()).filter(|node| names.contains(&node.name)).collect()
}

/// Takes the phase (see the module's doc); the steps done go to `done`.
pub fn apply(config: &ClusterConfig, api: &KubeApi<'_>, plan: &Plan, done: &mut Vec<String>) -> anyhow::Result<()> {
    if !plan.to_upgrade() {
        return Ok(());
    }
    let wanted = plan.wanted;
    let control_planes = named(config, &plan.control_planes);
    let kubelets = named(config, &plan.kubelets);
    let started = Instant::now();
    inline_manifests_are_rendered(config)?;
    pre_pull(config, &control_planes, &kubelets, wanted)?;
    eprintln!("kubernetes: pre-pulled {} in {:.1}s", plan.images.join(" "), started.elapsed().as_secs_f64());
    for node in control_planes {
        patch_step(config, node, &format!("control plane → {wanted}"), control_plane_patch(wanted), done, || {
            control_plane_runs(config, api, node, wanted)?;
            crate::talos_upgrade::etcd_gate(config, node)
        })?;
    }
    let started = Instant::now();
    let name = format!("kubernetes manifests and kube-proxy → {wanted}");
    let changed = sync_manifests(config, api).with_context(|| name.clone())?;
    let nodes = config.nodes.len();
    api.runtime
        .block_on(kit::wait::daemonset_ready(api.client, "kube-system", "kube-proxy", nodes, ROLLOUT_TIMEOUT))
        .with_context(|| format!("{name}: kube-proxy's rollout"))?;
    eprintln!("{name}: done in {:.1}s ({changed} object(s) applied again)", started.elapsed().as_secs_f64());
    done.push(name);
    for node in kubelets {
        patch_step(config, node, &format!("kubelet → {wanted}"), kubelet_patch(wanted), done, || {
            kubelet_runs(api, &node.name, wanted)
        })?;
    }
    Ok(())
}

/// One machine's step: the etcd gate (every member healthy, or nothing is sent), the patch
/// applied live, then `settled` (what the patch must bring about); its time is shown.
fn patch_step(
    config: &ClusterConfig,
    node: &Node,
    what: &str,
    patch: String,
    done: &mut Vec<String>,
    settled: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let name = format!("kubernetes {} {what}", node.name);
    eprintln!("{name}: starting");
    crate::talos_upgrade::etcd_gate(config, node).with_context(|| format!("{name}: refused before any call"))?;
    talos(config, node, move |talosctl, node| async move {
        kit::talos::kubernetes::patch_live(&talosctl, &node, &patch, false).await
    })
    .with_context(|| format!("{name}: patching its images"))?;
    settled().with_context(|| format!("{name}: after the patch"))?;
    eprintln!("{name}: done in {:.1}s", started.elapsed().as_secs_f64());
    done.push(name);
    Ok(())
}

/// A talosctl call about one machine, made from where the machines are reached.
fn talos<T, F, Fut>(config: &ClusterConfig, node: &Node, call: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(kit::talos::Talosctl, Node) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let node = node.clone();
    crate::machines::with_talosctl(config, move |talosctl, _| call(talosctl, node))
}

/// `--dry-run`: what Talos says each of the phase's patches would change, machine by machine;
/// nothing is changed.
pub fn show_diffs(config: &ClusterConfig, plan: &Plan) -> anyhow::Result<()> {
    if !plan.to_upgrade() {
        return Ok(());
    }
    let wanted = plan.wanted;
    let patches = named(config, &plan.control_planes)
        .into_iter()
        .map(|node| (node.clone(), control_plane_patch(wanted)))
        .chain(named(config, &plan.kubelets).into_iter().map(|node| (node.clone(), kubelet_patch(wanted))));
    let patches: Vec<(Node, String)> = patches.collect();
    crate::machines::with_talosctl(config, move |talosctl, _| async move {
        for (node, patch) in &patches {
            let diff = kit::talos::kubernetes::patch_live(&talosctl, node, patch, true).await?;
            // talosctl's summary first, then the diff: the diff is what matters.
            let diff = diff.split_once("Config diff:").map_or(diff.as_str(), |(_, diff)| diff);
            eprintln!("kubernetes {} (dry run): Talos would change, without a reboot:{}", node.name, diff.trim_end());
        }
        eprintln!("kubernetes: dry run, nothing was changed");
        anyhow::Ok(())
    })
}

/// Every control plane's inline manifests are the ones stage 01 renders: Talos renders the
/// live ones into the Manifests this phase applies again, so anything else would put back
/// into the cluster what talos-ha no longer ships.
fn inline_manifests_are_rendered(config: &ClusterConfig) -> anyhow::Result<()> {
    let paths = talos_bootstrap::StatePaths::new(config);
    let mut rendered = Vec::new();
    for node in config.control_planes() {
        let file = paths.node_config(node);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!("reading {} (stage 01's render; run stage 01's apply to write it)", file.display())
        })?;
        rendered.push((node.clone(), kit::talos::kubernetes::inline_manifests(&text)?));
    }
    crate::machines::with_talosctl(config, move |talosctl, _| async move {
        for (node, rendered) in &rendered {
            let live =
                kit::talos::kubernetes::inline_manifests(&kit::talos::kubernetes::live_config(&talosctl, node).await?)?;
            let differ: Vec<&String> = live
                .keys()
                .chain(rendered.keys())
                .filter(|name| live.get(*name) != rendered.get(*name))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            anyhow::ensure!(
                differ.is_empty(),
                "nothing was changed: {}'s inline manifests {differ:?} are not the ones stage 01 renders, and the \
                 upgrade would apply them again into the cluster; bring the machine to its rendered config first \
                 (`talosctl apply-config --mode no-reboot` of its file in state/talos), then apply again",
                node.name
            );
        }
        anyhow::Ok(())
    })
}

/// Every image of the phase, on each machine that will run it (`talosctl image pull`, what
/// upgrade-k8s's pre-pull asks): a machine that cannot pull one stops the phase before any
/// change, rather than leave a static pod or kubelet down halfway.
fn pre_pull(
    config: &ClusterConfig,
    control_planes: &[&Node],
    kubelets: &[&Node],
    wanted: Version,
) -> anyhow::Result<()> {
    let mut pulls: Vec<(Node, &'static str, String)> = Vec::new();
    for node in control_planes {
        for (component, _, _) in CONTROL_PLANE {
            pulls.push(((*node).clone(), "cri", image(component, wanted)));
        }
    }
    for node in kubelets {
        pulls.push(((*node).clone(), "system", image("kubelet", wanted)));
    }
    crate::machines::with_talosctl(config, move |talosctl, _| async move {
        for (node, namespace, image) in &pulls {
            if let Err(said) = kit::talos::kubernetes::pull(&talosctl, node, namespace, image).await? {
                anyhow::bail!(
                    "nothing was changed: {} ({}) cannot pull {image}: {said}. Check that the release exists and \
                     that the machine reaches its registry (or the mirror its config names), then apply again",
                    node.name,
                    node.ip
                );
            }
        }
        anyhow::Ok(())
    })
}

/// Waits until each control-plane component's mirror pod on `node` runs `wanted`, carries the
/// version of the config resource Talos rendered last, and is Ready (upgrade-k8s's
/// checkPodStatus). The API may be away for moments meanwhile: its own server is restarting.
fn control_plane_runs(config: &ClusterConfig, api: &KubeApi<'_>, node: &Node, wanted: Version) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(api.client.clone(), "kube-system");
    let on_node = ListParams::default().fields(&format!("spec.nodeName={}", node.name));
    let started = Instant::now();
    loop {
        let versions = talos(config, node, |talosctl, node| async move {
            kit::talos::kubernetes::config_versions(&talosctl, &node).await
        })?;
        let listed = api.runtime.block_on(pods.list(&on_node));
        let waiting: Vec<String> = match listed {
            Ok(listed) => CONTROL_PLANE
                .iter()
                .filter_map(|(component, _, _)| pod_behind(&listed.items, component, wanted, &versions))
                .collect(),
            Err(error) => vec![format!("the API does not answer ({error})")],
        };
        if waiting.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < CONTROL_PLANE_TIMEOUT,
            "after {}s: {}. See `talosctl -n {} get staticpodstatus` and the pods' events",
            CONTROL_PLANE_TIMEOUT.as_secs(),
            waiting.join("; "),
            node.ip
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Why `component`'s mirror pod among `pods` does not yet run `wanted` from the latest config.
fn pod_behind(pods: &[Pod], component: &str, wanted: Version, versions: &BTreeMap<String, u64>) -> Option<String> {
    let of_component = |pod: &&Pod| {
        pod.metadata.labels.as_ref().and_then(|labels| labels.get("k8s-app")).is_some_and(|app| app == component)
    };
    let Some(pod) = pods.iter().find(of_component) else {
        return Some(format!("{component} has no mirror pod"));
    };
    let running = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.iter().find(|container| container.name == component))
        .and_then(|container| container.image.as_deref())
        .and_then(tag_version);
    let annotated = pod.metadata.annotations.as_ref().and_then(|notes| notes.get("talos.dev/config-version"));
    let latest = versions.get(component).map(u64::to_string);
    if running != Some(wanted) {
        Some(format!(
            "{component} runs {}",
            running.map_or_else(|| "no release".to_owned(), |version| version.to_string())
        ))
    } else if annotated != latest.as_ref() {
        Some(format!("{component}'s pod is of config version {annotated:?}, Talos rendered {latest:?}"))
    } else if !kit::client::pod_is_ready(pod) {
        Some(format!("{component} is not Ready"))
    } else {
        None
    }
}

/// The Manifests Talos rendered from the patched config (the first control plane's), applied
/// with server-side apply: kube-proxy's DaemonSet gets the new image, the rest is as it was.
/// Returns how many objects changed.
fn sync_manifests(config: &ClusterConfig, api: &KubeApi<'_>) -> anyhow::Result<usize> {
    let first = config.control_planes().next().context("the config has no control plane")?;
    let manifests =
        talos(
            config,
            first,
            |talosctl, node| async move { kit::talos::kubernetes::manifests(&talosctl, &node).await },
        )?;
    let objects = manifests
        .into_iter()
        .flat_map(|(id, objects)| objects.into_iter().map(move |object| (id.clone(), object)))
        .map(|(id, object)| {
            serde_json::from_value::<DynamicObject>(object).with_context(|| format!("Manifest {id}: an object"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let changes = api.ride_out(|| async {
        let mut engine = kit::apply::Engine::new(api.client.clone(), MANIFESTS_MANAGER).await?;
        engine.apply(&objects).await
    })?;
    Ok(changes.iter().filter(|change| change.action.changes_something()).count())
}

/// Waits until `node`'s Node reports the kubelet `wanted` and is Ready (the kubelet restarted
/// on the new image).
fn kubelet_runs(api: &KubeApi<'_>, node: &str, wanted: Version) -> anyhow::Result<()> {
    let nodes: Api<KubeNode> = Api::all(api.client.clone());
    let wait = kit::wait::poll(KUBELET_TIMEOUT, || async {
        let live = match nodes.get(node).await {
            Ok(live) => live,
            Err(error) => return Ok(Err(format!("the API does not answer ({error})"))),
        };
        let reported = live.status.as_ref().and_then(|status| status.node_info.as_ref());
        let version = reported.map(|info| info.kubelet_version.clone()).unwrap_or_default();
        Ok(if version != wanted.to_string() {
            Err(format!("the Node {node} reports kubelet {version}"))
        } else if !kit::client::is_ready(&live) {
            Err(format!("the Node {node} is not Ready"))
        } else {
            Ok(())
        })
    });
    api.runtime.block_on(wait)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn mirror(component: &str, tag: &str, config_version: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                labels: Some([("k8s-app".to_owned(), component.to_owned())].into()),
                annotations: Some([("talos.dev/config-version".to_owned(), config_version.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: component.to_owned(),
                    image: Some(format!("registry.k8s.io/{component}:{tag}")),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".to_owned(),
                    status: if ready { "True" } else { "False" }.to_owned(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn a_control_plane_is_done_once_its_pod_runs_the_release_from_the_latest_config_and_is_ready() {
        let wanted: Version = "v1.35.0".parse().expect("a version");
        let versions: BTreeMap<String, u64> = [("kube-apiserver".to_owned(), 2)].into();
        let behind = |pods: &[Pod]| pod_behind(pods, "kube-apiserver", wanted, &versions);
        assert_eq!(behind(&[]).as_deref(), Some("kube-apiserver has no mirror pod"));
        assert_eq!(
            behind(&[mirror("kube-apiserver", "v1.34.4", "1", true)]).as_deref(),
            Some("kube-apiserver runs v1.34.4")
        );
        assert!(
            behind(&[mirror("kube-apiserver", "v1.35.0", "1", true)]).is_some_and(|why| why.contains("config version")),
            "the pod of the config before the patch"
        );
        assert_eq!(
            behind(&[mirror("kube-apiserver", "v1.35.0", "2", false)]).as_deref(),
            Some("kube-apiserver is not Ready")
        );
        assert_eq!(
            behind(&[mirror("kube-scheduler", "v1.34.4", "1", true), mirror("kube-apiserver", "v1.35.0", "2", true)]),
            None
        );
    }
}
