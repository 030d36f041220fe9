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
//! Then `cargo xtask upgrade` with cluster.yaml asking for v1.35.0: `plan` lists the phase
//! (every control plane, kube-proxy, every kubelet, the images), and `apply`, which does not
//! take the phase yet, stops before anything changes.

use k8s_openapi::api::core::v1::Pod;

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

/// `cargo xtask upgrade` plans the Kubernetes phase; `apply` does not take it yet and changes
/// nothing. cluster.yaml is put back as it was.
pub async fn planned(own: &OwnBox) -> anyhow::Result<()> {
    let source = std::fs::read_to_string(&own.config.source)?;
    std::fs::write(&own.config.source, source.replace(&format!("kubernetes: {FROM}"), &format!("kubernetes: {TO}")))?;
    let plan = output_of(own.xtask(&["upgrade", "plan"])).await?;
    let shown = printed(&plan);
    assert_eq!(plan.status.code(), Some(2), "a phase to take: {shown}");
    let phase = format!(
        "kubernetes     {FROM} → {TO}: control planes cp01 cp02 cp03, one at a time, then kube-proxy, then the kubelets \
         of cp01 cp02 cp03 wk01 wk02 wk03, one at a time"
    );
    assert!(shown.contains(&phase), "{shown}");
    assert!(shown.contains(&format!("registry.k8s.io/kube-apiserver:{TO}")) && !shown.contains("refused:"), "{shown}");
    let refused = output_of(own.xtask(&["upgrade", "apply", "--no-backup"])).await?;
    assert!(!refused.status.success() && printed(&refused).contains("does not take it yet"), "{}", printed(&refused));
    std::fs::write(&own.config.source, source)?;
    Ok(())
}
