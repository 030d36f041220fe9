//! The Kubernetes a Talos cluster runs, and the path to another release, as `talosctl
//! upgrade-k8s` judges it (siderolabs/go-kubernetes v0.2.28, which Talos v1.12.1 pins):
//! - what runs is the lowest version among the control-plane components and kube-proxy, read
//!   from the tag of each pod's container named after its `k8s-app` (kubernetes/upgrade's
//!   DetectLowestVersion, `detect.go:20-74`); the kubelets are read from their Nodes;
//! - the path is one minor at a time, never down (`upgrade/path.go:57-98`: `1.34->1.35`,
//!   `1.35->1.35`, …);
//! - each path lists what the new release removes (`upgrade/checks.go:75-303`): kubelet and
//!   control-plane flags, feature gates, API resources. A flag or gate still set in a machine
//!   config stops the upgrade before it starts, as an object of a removed API still stored does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;

use super::{PROBE_TIMEOUT, TalosApi};
use crate::config::{Node, Version};

/// The components whose pods say which Kubernetes the control plane runs.
pub const COMPONENTS: [&str; 4] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"];

/// What one release path removes, for the releases Talos v1.12 runs up to (checks.go, the rows
/// `1.33->1.34` and `1.34->1.35`; older rows are left to an older talosctl).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub kubelet_flags: &'static [&'static str],
    pub api_server_flags: &'static [&'static str],
    pub feature_gates: &'static [&'static str],
    /// `<resource>.<version>.<group>`, as checks.go names them.
    pub api_resources: &'static [&'static str],
}

/// What moving from minor `from` to `from + 1` removes.
pub fn removed_on(from: (u32, u32)) -> Removed {
    match from {
        (1, 31) => Removed { api_resources: &["podschedulingcontexts.v1alpha3.resource.k8s.io"], ..Removed::default() },
        (1, 32) => Removed { api_server_flags: &["cloud-config"], ..Removed::default() },
        (1, 33) => Removed {
            kubelet_flags: &["cloud-config"],
            feature_gates: &["DevicePluginCDIDevices", "LegacySidecarContainers", "PodDisruptionConditions"],
            ..Removed::default()
        },
        (1, 34) => Removed {
            kubelet_flags: &["pod-infra-container-image"],
            feature_gates: &["SizeMemoryBackedVolumes", "UserNamespacesHostNetworkSupport"],
            ..Removed::default()
        },
        _ => Removed::default(),
    }
}

/// Why `from` → `to` is not a path upgrade-k8s takes, if it is not.
pub fn path_refusal(from: Version, to: Version) -> Option<String> {
    if from.major != 1 || to.major != 1 {
        return Some(format!("{from} → {to}: talosctl upgrade-k8s knows Kubernetes 1.x only"));
    }
    if to < from {
        return Some(format!("{from} → {to} is a downgrade, which upgrade-k8s does not take"));
    }
    if to.minor > from.minor + 1 {
        return Some(format!(
            "{from} → {to} skips a minor: Kubernetes moves one minor at a time (upgrade-k8s's path table); \
             set versions.kubernetes to the newest v1.{}.x first",
            from.minor + 1
        ));
    }
    None
}

/// The flags a component is given in a machine config (`extraArgs` keys), and the feature gates
/// its `feature-gates` flag sets.
#[derive(Debug, Default)]
pub struct Configured {
    pub kubelet_flags: BTreeSet<String>,
    pub api_server_flags: BTreeSet<String>,
    pub feature_gates: BTreeSet<String>,
}

impl Configured {
    /// Reads a Talos machine config (YAML, its v1alpha1 document among others).
    pub fn read(machine_config: &str) -> anyhow::Result<Configured> {
        let mut configured = Configured::default();
        let documents: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(machine_config)?;
        for document in documents {
            let args = |path: &[&str]| {
                let mut value = &document;
                for key in path {
                    value = &value[*key];
                }
                value.as_object().cloned().unwrap_or_default()
            };
            let kubelet = args(&["machine", "kubelet", "extraArgs"]);
            let api_server = args(&["cluster", "apiServer", "extraArgs"]);
            let others =
                [args(&["cluster", "controllerManager", "extraArgs"]), args(&["cluster", "scheduler", "extraArgs"])];
            configured.kubelet_flags.extend(kubelet.keys().cloned());
            configured.api_server_flags.extend(api_server.keys().cloned());
            for flags in [&kubelet, &api_server].into_iter().chain(&others) {
                let gates = flags.get("feature-gates").and_then(serde_json::Value::as_str).unwrap_or_default();
                let names = gates.split(',').filter_map(|gate| gate.split('=').next()).map(str::trim);
                configured.feature_gates.extend(names.filter(|name| !name.is_empty()).map(str::to_owned));
            }
        }
        Ok(configured)
    }

    /// What of `removed` this config still sets, each said with where.
    pub fn still_set(&self, removed: &Removed) -> Vec<String> {
        let found = |what: &str, names: &[&str], set: &BTreeSet<String>| -> Vec<String> {
            names.iter().filter(|name| set.contains(**name)).map(|name| format!("{what} {name}")).collect()
        };
        [
            found("kubelet flag", removed.kubelet_flags, &self.kubelet_flags),
            found("API server flag", removed.api_server_flags, &self.api_server_flags),
            found("feature gate", removed.feature_gates, &self.feature_gates),
        ]
        .concat()
    }
}

/// What moving on from minor `from` removes that the cluster still uses, each said with its
/// fix: a flag or gate a machine's config still sets (`configs`: by node name), and objects
/// still stored under a removed API resource (`stored`: by resource, as checks.go names it).
pub fn in_use(from: (u32, u32), configs: &[(String, Configured)], stored: &[(&str, Vec<String>)]) -> Vec<String> {
    let removed = removed_on(from);
    let next = format!("v{}.{}", from.0, from.1 + 1);
    let mut in_use = Vec::new();
    for (node, configured) in configs {
        for what in configured.still_set(&removed) {
            in_use.push(format!(
                "{node}: {what}, which Kubernetes {next} removes, is set in its machine config: remove it from \
                 cluster.yaml's patches first"
            ));
        }
    }
    for (resource, names) in stored.iter().filter(|(_, names)| !names.is_empty()) {
        in_use.push(format!(
            "{resource}, which Kubernetes {next} no longer serves, still holds {}: migrate or delete them first",
            names.join(", ")
        ));
    }
    in_use
}

/// The image Talos runs `component` (a control-plane component, `kube-proxy` or `kubelet`)
/// from at `version`: `talosctl gen config`'s defaults, which stage 01 renders.
pub fn image(component: &str, version: Version) -> String {
    match component {
        "kubelet" => format!("ghcr.io/siderolabs/kubelet:{version}"),
        _ => format!("registry.k8s.io/{component}:{version}"),
    }
}

/// The control-plane components, each with its key under the machine config's `cluster` and
/// the COSI config resource Talos renders it from (the resource's ID is the component).
pub const CONTROL_PLANE: [(&str, &str, &str); 3] = [
    ("kube-apiserver", "apiServer", "apiserverconfigs"),
    ("kube-controller-manager", "controllerManager", "controllermanagerconfigs"),
    ("kube-scheduler", "scheduler", "schedulerconfigs"),
];

/// The machine-config patch that moves a control plane's components and kube-proxy to
/// `version`: the fields `talosctl upgrade-k8s` patches (`cluster.<component>.image`,
/// `cluster.proxy.image`; talos_managed.go). Strategic merge, as talosctl takes no JSON patch of
/// a config of several documents; talosctl encodes the result without docs or examples.
pub fn control_plane_patch(version: Version) -> String {
    let mut cluster = serde_json::Map::new();
    for (component, key, _) in CONTROL_PLANE {
        cluster.insert(key.to_owned(), serde_json::json!({ "image": image(component, version) }));
    }
    cluster.insert("proxy".to_owned(), serde_json::json!({ "image": image("kube-proxy", version) }));
    serde_json::json!({ "cluster": cluster }).to_string()
}

/// The machine-config patch that moves a machine's kubelet to `version`.
pub fn kubelet_patch(version: Version) -> String {
    serde_json::json!({ "machine": { "kubelet": { "image": image("kubelet", version) } } }).to_string()
}

/// How long one config change or image pull may take to be answered.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// `talosctl patch machineconfig --mode no-reboot`: Talos applies the patched config at once
/// when every change can be made live (images and kubelet settings can), and refuses it
/// otherwise, changing nothing. With `dry_run`, nothing is applied and what would change is
/// returned (talosctl prints the diff on stderr).
pub async fn patch_live(api: &impl TalosApi, node: &Node, patch: &str, dry_run: bool) -> anyhow::Result<String> {
    let mut args = vec!["patch", "machineconfig", "--mode", "no-reboot", "--patch", patch];
    if dry_run {
        args.push("--dry-run");
    }
    let output = api.talosctl(node, &args, CALL_TIMEOUT, &mut |_| {}).await?;
    let said = output.stderr.clone();
    output.ok(format!("talosctl patch machineconfig --mode no-reboot on {} ({})", node.name, node.ip))?;
    Ok(said)
}

/// Whether `node` can pull `image` (`talosctl image pull`, what upgrade-k8s's pre-pull asks):
/// `Err` with what the node said when it cannot; a node that does not implement the call
/// counts as able (as upgrade-k8s skips it).
pub async fn pull(
    api: &impl TalosApi,
    node: &Node,
    namespace: &str,
    image: &str,
) -> anyhow::Result<Result<(), String>> {
    let output =
        api.talosctl(node, &["image", "pull", "--namespace", namespace, image], CALL_TIMEOUT, &mut |_| {}).await?;
    let said = format!("{}{}", output.stderr, output.stdout).trim().to_owned();
    Ok(if output.success || said.contains("Unimplemented") { Ok(()) } else { Err(said) })
}

/// The version of each control-plane component's config resource on `node`: a mirror pod whose
/// `talos.dev/config-version` says it runs the config's latest render.
pub async fn config_versions(api: &impl TalosApi, node: &Node) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut versions = BTreeMap::new();
    for (component, _, kind) in CONTROL_PLANE {
        let printed = api.ask(node, &["get", kind, component, "-o", "json"], PROBE_TIMEOUT).await?;
        let resource = super::parse_resources::<serde_json::Value>(&printed)?
            .pop()
            .with_context(|| format!("{} has no {kind} {component}", node.name))?;
        versions.insert(component.to_owned(), resource.metadata.version);
    }
    Ok(versions)
}

/// The Manifests a control plane renders (`controlplane` namespace, by ID in apply order: the
/// bootstrap RBAC, kube-proxy, CoreDNS, Flannel, the inline manifests as `99-<name>`), each
/// with its objects: what upgrade-k8s applies again after the control plane.
pub async fn manifests(api: &impl TalosApi, node: &Node) -> anyhow::Result<Vec<(String, Vec<serde_json::Value>)>> {
    let printed = api.ask(node, &["get", "manifests", "-o", "json"], PROBE_TIMEOUT).await?;
    let mut manifests: Vec<(String, Vec<serde_json::Value>)> =
        super::parse_resources::<Vec<serde_json::Value>>(&printed)?
            .into_iter()
            .map(|resource| (resource.metadata.id, resource.spec))
            .collect();
    manifests.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(manifests)
}

/// A machine config's inline manifests, by name (the `cluster.inlineManifests` of its v1alpha1
/// document).
pub fn inline_manifests(machine_config: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let documents: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(machine_config)?;
    Ok(documents
        .iter()
        .flat_map(|document| document["cluster"]["inlineManifests"].as_array().cloned().unwrap_or_default())
        .filter_map(|manifest| {
            Some((manifest["name"].as_str()?.to_owned(), manifest["contents"].as_str().unwrap_or_default().to_owned()))
        })
        .collect())
}

/// The kubelet image a machine config names (`machine.kubelet.image`).
pub fn kubelet_image(machine_config: &str) -> anyhow::Result<Option<String>> {
    let documents: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(machine_config)?;
    Ok(documents.iter().find_map(|document| document["machine"]["kubelet"]["image"].as_str().map(str::to_owned)))
}

/// The machine config `node` runs (its `MachineConfig` resource, whose spec is the YAML).
pub async fn live_config(api: &impl TalosApi, node: &Node) -> anyhow::Result<String> {
    let printed = api.ask(node, &["get", "machineconfig", "v1alpha1", "-o", "json"], PROBE_TIMEOUT).await?;
    super::parse_resources::<String>(&printed)?
        .pop()
        .map(|resource| resource.spec)
        .with_context(|| format!("{} printed no machine config", node.name))
}

/// The image tag of `image` as a version (`registry.k8s.io/kube-apiserver:v1.35.0` → v1.35.0).
pub fn tag_version(image: &str) -> Option<Version> {
    let (_, tag) = image.rsplit_once(':')?;
    tag.split(['@', '-']).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().expect("a version")
    }

    #[test]
    fn the_path_is_one_minor_at_a_time_and_never_down() {
        assert_eq!(path_refusal(v("v1.34.4"), v("v1.35.0")), None);
        assert_eq!(path_refusal(v("v1.35.0"), v("v1.35.2")), None, "a patch within the minor");
        assert!(path_refusal(v("v1.33.7"), v("v1.35.0")).is_some_and(|why| why.contains("v1.34.x first")));
        assert!(path_refusal(v("v1.35.0"), v("v1.34.4")).is_some_and(|why| why.contains("downgrade")));
    }

    #[test]
    fn a_removed_flag_or_gate_still_set_is_named() -> anyhow::Result<()> {
        let config = "version: v1alpha1\nmachine:\n  kubelet:\n    extraArgs:\n      pod-infra-container-image: pause:3.10\n      \
                      feature-gates: SizeMemoryBackedVolumes=true,Other=false\ncluster:\n  apiServer:\n    extraArgs: {}\n\
                      ---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: cp01\n";
        let configured = Configured::read(config)?;
        assert_eq!(
            configured.still_set(&removed_on((1, 34))),
            ["kubelet flag pod-infra-container-image", "feature gate SizeMemoryBackedVolumes"]
        );
        assert!(configured.still_set(&removed_on((1, 35))).is_empty(), "nothing known beyond 1.35");
        Ok(())
    }

    #[test]
    fn objects_of_a_removed_api_refuse_the_path_by_name() {
        let resource = "podschedulingcontexts.v1alpha3.resource.k8s.io";
        assert_eq!(removed_on((1, 31)).api_resources, [resource]);
        let refused = in_use((1, 31), &[], &[(resource, vec!["gpu-claim-ctx".to_owned()])]);
        assert_eq!(refused.len(), 1);
        assert!(refused[0].contains("v1.32 no longer serves") && refused[0].contains("gpu-claim-ctx"), "{refused:?}");
        assert!(in_use((1, 31), &[], &[(resource, Vec::new())]).is_empty(), "nothing stored: nothing refused");
    }

    #[test]
    fn the_patches_set_what_upgrade_k8s_sets() -> anyhow::Result<()> {
        let patch: serde_json::Value = serde_json::from_str(&control_plane_patch(v("v1.35.0")))?;
        assert_eq!(patch["cluster"]["apiServer"]["image"], "registry.k8s.io/kube-apiserver:v1.35.0");
        assert_eq!(patch["cluster"]["controllerManager"]["image"], "registry.k8s.io/kube-controller-manager:v1.35.0");
        assert_eq!(patch["cluster"]["scheduler"]["image"], "registry.k8s.io/kube-scheduler:v1.35.0");
        assert_eq!(patch["cluster"]["proxy"]["image"], "registry.k8s.io/kube-proxy:v1.35.0");
        assert_eq!(patch.as_object().map(serde_json::Map::len), Some(1), "nothing but the cluster's images");
        let kubelet: serde_json::Value = serde_json::from_str(&kubelet_patch(v("v1.35.0")))?;
        assert_eq!(
            kubelet,
            serde_json::json!({ "machine": { "kubelet": { "image": "ghcr.io/siderolabs/kubelet:v1.35.0" } } })
        );
        Ok(())
    }

    #[test]
    fn inline_manifests_are_read_by_name() -> anyhow::Result<()> {
        let config = "version: v1alpha1\ncluster:\n  inlineManifests:\n    - name: approver\n      contents: |\n        kind: Namespace\n\
                      ---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: cp01\n";
        assert_eq!(kubelet_image(config)?, None);
        let inline = inline_manifests(config)?;
        assert_eq!(inline.into_iter().collect::<Vec<_>>(), [("approver".to_owned(), "kind: Namespace\n".to_owned())]);
        assert!(inline_manifests("version: v1alpha1\ncluster: {}\n")?.is_empty());
        Ok(())
    }

    #[test]
    fn a_tag_reads_as_its_release() {
        assert_eq!(tag_version("registry.k8s.io/kube-apiserver:v1.35.0"), Some(v("v1.35.0")));
        assert_eq!(tag_version("ghcr.io/siderolabs/kubelet:v1.34.4-fat"), Some(v("v1.34.4")));
        assert_eq!(tag_version("kube-proxy"), None);
    }
}
