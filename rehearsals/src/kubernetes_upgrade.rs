//! Issue 28's rehearsal, on the box `fresh_clone.rs` installed at Kubernetes v1.34.4 (and
//! upgraded to Talos v1.12.1 by `talos_upgrade.rs`). So far by hand, as Talos behaves when a
//! machine config changes the control plane's images live (`talosctl patch --mode no-reboot`,
//! what `talosctl upgrade-k8s` sends per component):
//! - a change Talos cannot make live is refused, and nothing changes;
//! - a new API server image replaces that one static pod: the process runs the new release's
//!   build, the component's config resource moves to a new version, and the mirror pod is
//!   replaced, carrying that version (what upgrade-k8s waits for) and Ready;
//! - an image the box cannot pull leaves that static pod pending, with no mirror pod; putting
//!   the image back brings it back;
//! - `talosctl image pull` (upgrade-k8s's pre-pull) finds a release the box has a build of, and
//!   not one it has none of;
//! - a new kubelet image restarts the kubelet, whose Node then reports that release.
//!
//! Then `cargo xtask upgrade --pin kubernetes=v1.35.0` (`upgraded`): the plan, a dry run and an
//! unpullable release that change no machine's config, and the upgrade itself, killed on the
//! way and resumed, under a watch of etcd and of the API through the VIP; then every control
//! plane's processes run v1.35.0's build, every Node reports it, the objects are all there,
//! cluster.yaml says it, and a second apply has nothing to do.

use k8s_openapi::api::core::v1::Pod;

use crate::watch::Watch;
use crate::{OwnBox, output_of, printed};

pub const FROM: &str = "v1.34.4";
pub const TO: &str = "v1.35.0";
/// A release the box has no build of: its images cannot be pulled.
const UNPULLABLE: &str = "v1.35.2";

/// A patch that sets the image of a control-plane component (`apiServer`, `scheduler`):
/// strategic merge, since talosctl takes no JSON patch of a config of several documents.
fn image_patch(key: &str, image: &str) -> String {
    serde_json::json!({ "cluster": { key: { "image": image } } }).to_string()
}

impl OwnBox {
    /// `talosctl patch machineconfig --mode no-reboot` of `node`.
    fn patch_live(&self, node: &str, patch: &str) -> anyhow::Result<(bool, String)> {
        self.talosctl_at(node, &["patch", "machineconfig", "--mode", "no-reboot", "--patch", patch])
    }

    /// The version of `node`'s config resource of `component` (`talosctl get`), and its image.
    fn config_resource(&self, node: &str, component: &str) -> anyhow::Result<(u64, String)> {
        let kind = match component {
            "kube-apiserver" => "apiserverconfigs",
            "kube-controller-manager" => "controllermanagerconfigs",
            _ => "schedulerconfigs",
        };
        let (ok, said) = self.talosctl_at(node, &["get", kind, component, "--output", "json"])?;
        anyhow::ensure!(ok, "talosctl get {kind} on {node}: {said}");
        let resource: serde_json::Value = serde_json::from_str(&said)?;
        let version = resource["metadata"]["version"].as_u64().unwrap_or_default();
        Ok((version, resource["spec"]["image"].as_str().unwrap_or_default().to_owned()))
    }
}

/// `node`'s config resource of `component` once its version is past `version`.
async fn config_version_past(own: &OwnBox, node: &str, component: &str, version: u64) -> anyhow::Result<(u64, String)> {
    tests::eventually(
        std::time::Duration::from_secs(30),
        &format!("{component} config on {node} past {version}"),
        || async { Ok(own.config_resource(node, component).ok().filter(|(now, _)| *now > version)) },
    )
    .await
}

/// The mirror pod of `component` on `node` once it carries `config_version` and is Ready.
async fn mirror_ready(pods: &kube::Api<Pod>, node: &str, component: &str, config_version: u64) -> anyhow::Result<Pod> {
    let name = format!("{component}-{node}");
    tests::eventually(
        std::time::Duration::from_secs(120),
        &format!("{name} at config version {config_version}"),
        || async {
            let pod = pods.get_opt(&name).await?;
            Ok(pod.filter(|pod| {
                let annotated =
                    pod.metadata.annotations.as_ref().and_then(|notes| notes.get("talos.dev/config-version"));
                annotated == Some(&config_version.to_string()) && kit::client::pod_is_ready(pod)
            }))
        },
    )
    .await
}

/// By hand: what a live config change does to a control plane's static pods.
pub async fn by_hand(own: &OwnBox) -> anyhow::Result<()> {
    let client = kit::client::client_from_kubeconfig(&own.lab.kubeconfig).await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, "kube-system");
    let image = |component: &str, release: &str| format!("registry.k8s.io/{component}:{release}");

    // Talos makes no change to the machine's environment live.
    let (ok, said) =
        own.patch_live("cp01", &serde_json::json!({ "machine": { "env": { "TALOS_HA": "rehearsal" } } }).to_string())?;
    assert!(!ok && said.contains("can't be applied in immediate mode"), "{said}");
    let (before, from_image) = own.config_resource("cp01", "kube-apiserver")?;
    assert_eq!(from_image, image("kube-apiserver", FROM));

    // A new API server image: that pod alone is replaced, from the other release's build.
    let (ok, said) = own.patch_live("cp01", &image_patch("apiServer", &image("kube-apiserver", TO)))?;
    assert!(ok, "{said}");
    // The config resource moves once the machine's controllers render the change (upgrade-k8s
    // watches for that update), by one version.
    let after = config_version_past(own, "cp01", "kube-apiserver", before).await?;
    assert_eq!(after, (before + 1, image("kube-apiserver", TO)), "one new version");
    let after = after.0;
    let mirror = mirror_ready(&pods, "cp01", "kube-apiserver", after).await?;
    let images: Vec<_> = mirror.spec.iter().flat_map(|spec| &spec.containers).filter_map(|c| c.image.clone()).collect();
    assert_eq!(images, [image("kube-apiserver", TO)]);
    let build = |node: &str, component: &str| -> anyhow::Result<Option<String>> {
        Ok(own.control_plane_builds(node)?.get(component).cloned())
    };
    assert_eq!(build("cp01", "kube-apiserver")?, Some(format!("kubernetes-{TO}")));
    assert_eq!(build("cp01", "kube-scheduler")?, Some(format!("kubernetes-{FROM}")), "the others run on");
    // And back, for the upgrade to take the whole cluster from FROM.
    let (ok, said) = own.patch_live("cp01", &image_patch("apiServer", &image("kube-apiserver", FROM)))?;
    assert!(ok, "{said}");
    let (back, _) = config_version_past(own, "cp01", "kube-apiserver", after).await?;
    mirror_ready(&pods, "cp01", "kube-apiserver", back).await?;
    assert_eq!(build("cp01", "kube-apiserver")?, Some(format!("kubernetes-{FROM}")));

    // An image the box cannot pull: the scheduler's static pod waits, no mirror pod stands for
    // it; the image put back brings it back.
    let scheduler = |release: &str| image_patch("scheduler", &image("kube-scheduler", release));
    let (ok, said) = own.patch_live("cp02", &scheduler(UNPULLABLE))?;
    assert!(ok, "Talos takes the config; the pull fails on the node: {said}");
    tests::eventually(std::time::Duration::from_secs(60), "cp02's scheduler mirror gone", || async {
        Ok(pods.get_opt("kube-scheduler-cp02").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(build("cp02", "kube-scheduler")?, None, "no scheduler process on cp02");
    let (ok, said) =
        own.talosctl_at("cp02", &["get", "staticpodstatus", "kube-system/kube-scheduler-cp02", "-o", "yaml"])?;
    assert!(ok && said.contains("ErrImagePull"), "{said}");
    let (unpulled, _) = own.config_resource("cp02", "kube-scheduler")?;
    let (ok, said) = own.patch_live("cp02", &scheduler(FROM))?;
    assert!(ok, "{said}");
    let (version, _) = config_version_past(own, "cp02", "kube-scheduler", unpulled).await?;
    mirror_ready(&pods, "cp02", "kube-scheduler", version).await?;
    assert_eq!(build("cp02", "kube-scheduler")?, Some(format!("kubernetes-{FROM}")));

    // A pull (what upgrade-k8s's pre-pull asks): a release the box has a build of is there.
    let (ok, said) = own.talosctl_at("cp03", &["image", "pull", &image("kube-apiserver", TO)])?;
    assert!(ok, "{said}");
    let (ok, said) = own.talosctl_at("cp03", &["image", "pull", &image("kube-apiserver", UNPULLABLE)])?;
    assert!(!ok && said.contains("NotFound"), "{said}");

    // The kubelet restarts on a new image, and its Node says the new release; and back.
    for release in [TO, FROM] {
        let kubelet = serde_json::json!({ "machine": { "kubelet": { "image": format!("ghcr.io/siderolabs/kubelet:{release}") } } });
        let (ok, said) = own.patch_live("wk01", &kubelet.to_string())?;
        assert!(ok, "{said}");
        tests::eventually(std::time::Duration::from_secs(60), &format!("wk01's kubelet at {release}"), || async {
            let versions = crate::kubelet_versions(&own.lab.kubeconfig).await?;
            Ok((versions.get("wk01").map(String::as_str) == Some(release)).then_some(()))
        })
        .await?;
    }
    let (ok, said) = own.talosctl_at("wk01", &["get", "kubeletspecs", "kubelet", "--output", "json"])?;
    assert!(ok && said.contains(&format!("ghcr.io/siderolabs/kubelet:{FROM}")), "{said}");
    Ok(())
}

/// `cargo xtask upgrade` from v1.34.4 to v1.35.0, asked for with `--pin kubernetes=v1.35.0`
/// (cluster.yaml is left at v1.34.4 for the run to write): the plan; a dry run and a release
/// the machines cannot pull, each leaving every machine's config where it was; the upgrade
/// killed after its first control plane and run again, watched each second; then what runs.
pub async fn upgraded(own: &OwnBox) -> anyhow::Result<()> {
    let pin = format!("kubernetes={TO}");
    let pinned = |args: &[&str]| {
        let mut command = own.xtask(args);
        command.args(["--pin", &pin]);
        command
    };
    let plan = output_of(pinned(&["upgrade", "plan"])).await?;
    let shown = printed(&plan);
    assert_eq!(plan.status.code(), Some(2), "a phase to take: {shown}");
    let phase = format!(
        "kubernetes     {FROM} → {TO}: control planes cp01 cp02 cp03, one at a time, then kube-proxy, then the kubelets \
         of cp01 cp02 cp03 wk01 wk02 wk03, one at a time"
    );
    assert!(shown.contains(&phase), "{shown}");
    assert!(shown.contains(&format!("registry.k8s.io/kube-apiserver:{TO}")) && !shown.contains("refused:"), "{shown}");
    assert!(shown.contains(&format!("cluster.yaml's versions.kubernetes becomes {TO}")), "{shown}");

    // A dry run shows Talos's diff of each patch and changes no machine's config.
    let configs = machine_config_versions(own)?;
    let dry = output_of(pinned(&["upgrade", "apply", "--dry-run"])).await?;
    let said = printed(&dry);
    assert!(dry.status.success() && said.contains("dry run: nothing was changed"), "{said}");
    assert!(said.contains(&format!("+        image: ghcr.io/siderolabs/kubelet:{TO}")), "{said}");
    assert_eq!(machine_config_versions(own)?, configs, "the dry run changed a machine's config");

    // A release the machines cannot pull stops at the pre-pull, before any change.
    let unpullable =
        output_of(own.xtask(&["upgrade", "apply", "--no-backup", "--pin", &format!("kubernetes={UNPULLABLE}")]))
            .await?;
    let said = printed(&unpullable);
    assert!(!unpullable.status.success(), "{said}");
    assert!(
        said.contains("nothing was changed: cp01 (")
            && said.contains(&format!("cannot pull registry.k8s.io/kube-apiserver:{UNPULLABLE}")),
        "{said}"
    );
    assert_eq!(machine_config_versions(own)?, configs, "a refused upgrade changed a machine's config");

    let client = kit::client::client_from_kubeconfig(&own.lab.kubeconfig).await?;
    let objects = object_names(&client).await?;
    let source = std::fs::read_to_string(&own.config.source)?;
    // Killed while its second control plane is upgraded, then run again: the watch sees both.
    let watch = Watch::start(&own.config.clone().in_box());
    let started = std::time::Instant::now();
    let second = format!("kubernetes cp02 control plane → {TO}: starting");
    let (before_kill, reached) =
        crate::killed_at(pinned(&["upgrade", "apply", "--no-backup"]), |line| line.starts_with(&second))?;
    assert!(reached, "the upgrade reached cp02: {before_kill:?}");
    let resumed = output_of(pinned(&["upgrade", "apply", "--no-backup"])).await?;
    let took = started.elapsed();
    let watched = watch.stop()?;
    let said = printed(&resumed);
    assert!(resumed.status.success(), "{said}");
    assert!(!said.contains("kubernetes cp01 control plane"), "cp01 was done: {said}");
    assert!(said.contains(&format!("kubernetes cp03 control plane → {TO}: done")), "{said}");
    for line in before_kill
        .iter()
        .map(String::as_str)
        .chain(said.lines())
        .filter(|line| line.contains(": done in ") || line.starts_with("kubernetes: pre-pulled"))
    {
        tests::shown(&format!("kubernetes upgrade: {line}"));
    }
    tests::shown(&format!(
        "kubernetes upgrade: {:.1}s in all (killed once, resumed); over {} one-second samples etcd had at least {} voting \
         member(s); the API through the VIP (a quorum read) went at most {:.1}s unanswered ({:.0}s in)",
        took.as_secs_f64(),
        watched.samples,
        watched.fewest_voting,
        watched.longest_unanswered.as_secs_f64(),
        watched.longest_unanswered_from.as_secs_f64()
    ));
    assert!(watched.fewest_voting >= 3, "etcd is not restarted by a Kubernetes upgrade: {watched:?}");
    assert!(watched.longest_unanswered.as_secs() <= API_AWAY, "the API was never away for long: {watched:?}");

    // What runs: the release's own build in every control plane's processes, every kubelet,
    // the same objects, and cluster.yaml saying it with everything else as it was.
    for node in own.config.control_planes() {
        let builds = own.control_plane_builds(&node.name)?;
        let expected =
            lab::CONTROL_PLANE_COMPONENTS.map(|component| (component.to_owned(), format!("kubernetes-{TO}")));
        assert_eq!(builds, expected.into_iter().collect(), "{}", node.name);
    }
    let kubelets = crate::kubelet_versions(&own.lab.kubeconfig).await?;
    assert!(kubelets.values().all(|version| version == TO), "{kubelets:?}");
    assert_eq!(object_names(&client).await?, objects, "the cluster's objects are all there");
    let written = std::fs::read_to_string(&own.config.source)?;
    assert_eq!(
        Some(written),
        kit::config::with_version(&source, "kubernetes", TO.parse().map_err(|()| anyhow::anyhow!("a version"))?)
    );

    // Nothing left to do: a second apply (cluster.yaml now says the release) changes nothing.
    let again = output_of(own.xtask(&["upgrade", "apply"])).await?;
    let said = printed(&again);
    assert!(again.status.success() && said.contains(&format!("kubernetes     {TO}: nothing to do")), "{said}");
    assert!(!said.contains("patch"), "{said}");
    Ok(())
}

/// How long the API through the VIP may go unanswered while the control planes' API servers
/// are replaced one at a time. Talos keeps the VIP where it is while its holder's API server
/// restarts: the holder gives the VIP up when that pod's StaticPodStatus is destroyed
/// (network/operator/vip.go:344-350), and a replaced static pod keeps its status, which is
/// keyed by the pod's name and refreshed from the kubelet's pod list every 15 s
/// (k8s/kubelet_static_pod.go:80, 207-228). So the API through the VIP is away for as long as
/// the holder's API server takes to stop and to answer again. The old one does not exit within
/// the 10 s the twin gives it before it kills it (a kubelet gives a pod 30 s, and starts a
/// static pod's successor only once it has stopped): 10–17 s measured in the box (the most while the whole suite loads the machine).
const API_AWAY: u64 = 30;

/// Every machine's `MachineConfig` version, which moves on every config Talos applies.
fn machine_config_versions(own: &OwnBox) -> anyhow::Result<Vec<(String, u64)>> {
    own.config
        .nodes
        .iter()
        .map(|node| {
            let (ok, said) = own.talosctl_at(&node.name, &["get", "machineconfig", "v1alpha1", "--output", "json"])?;
            anyhow::ensure!(ok, "talosctl get machineconfig on {}: {said}", node.name);
            let resource: serde_json::Value = serde_json::from_str(&said)?;
            Ok((node.name.clone(), resource["metadata"]["version"].as_u64().unwrap_or_default()))
        })
        .collect()
}

/// The names of the cluster's workloads, Services, claims and namespaces, by kind.
async fn object_names(client: &kube::Client) -> anyhow::Result<std::collections::BTreeSet<String>> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Service};
    async fn names<K>(client: &kube::Client) -> anyhow::Result<Vec<String>>
    where
        K: kube::Resource<DynamicType = ()> + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let listed = kube::Api::<K>::all(client.clone()).list_metadata(&Default::default()).await?;
        Ok(listed
            .items
            .into_iter()
            .map(|item| {
                format!(
                    "{} {}/{}",
                    K::kind(&()),
                    item.metadata.namespace.unwrap_or_default(),
                    item.metadata.name.unwrap_or_default()
                )
            })
            .collect())
    }
    let mut all = std::collections::BTreeSet::new();
    all.extend(names::<Deployment>(client).await?);
    all.extend(names::<DaemonSet>(client).await?);
    all.extend(names::<StatefulSet>(client).await?);
    all.extend(names::<Service>(client).await?);
    all.extend(names::<PersistentVolumeClaim>(client).await?);
    all.extend(names::<Namespace>(client).await?);
    Ok(all)
}
