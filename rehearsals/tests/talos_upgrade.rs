//! Issue 27, the box's half: Talos upgrades on twins of two real releases. A box installed at
//! Talos v1.12.0 (each machine runs the twin built against Talos v1.12.0's packages) takes
//! `talosctl upgrade` to v1.12.1 machine by machine, as a person would type it, and does what
//! Talos does: an image the box cannot pull is refused before anything changes; an upgraded
//! machine reboots into the other boot entry, reports the new release and keeps its schematic;
//! a release that fails to boot on a machine (the lab's named fault) falls back to the entry it
//! came from, and `talosctl upgrade` still reports success (only `version` tells); two control
//! planes sent upgrades back to back are both accepted, since Talos's etcd guard covers the call
//! and not the drain after it (why talos-ha serialises them); `talosctl rollback` boots the entry
//! before.

use rehearsals::OwnBox;

/// This test's box: another cluster name, its own ports.
const OWN_BOX: (&str, u16) = ("talos-upgrade", 18443);
const FROM: &str = "v1.12.0";
const TO: &str = "v1.12.1";

/// The Talos release each node's `version` reports (talosctl's "Server:" part).
fn server_tags(said: &str) -> Vec<(String, String)> {
    let mut tags = Vec::new();
    let mut node = String::new();
    for line in said.lines().map(str::trim) {
        if let Some(address) = line.strip_prefix("NODE:") {
            node = address.trim().to_owned();
        } else if let Some(tag) = line.strip_prefix("Tag:").filter(|_| !node.is_empty()) {
            tags.push((node.clone(), tag.trim().to_owned()));
        }
    }
    tags
}

impl Upgrades for OwnBox {
    fn release(&self, node: &str) -> anyhow::Result<String> {
        let ip = self.ip(node);
        let (ok, said) = self.talosctl(&["-n", &ip, "-e", &ip, "version"])?;
        anyhow::ensure!(ok, "talosctl version on {node}: {said}");
        let tags = server_tags(&said);
        anyhow::ensure!(tags.len() == 1, "one server version from {node}: {said}");
        Ok(tags[0].1.clone())
    }

    fn upgrade(&self, node: &str, image: &str, extra: &[&str]) -> anyhow::Result<(bool, String)> {
        let ip = self.ip(node);
        let mut args = vec!["-n", &ip, "-e", &ip, "upgrade", "--image", image, "--timeout", "5m"];
        args.extend(extra);
        self.talosctl(&args)
    }

    fn ip(&self, node: &str) -> String {
        self.config.nodes.iter().find(|n| n.name == node).map(|n| n.ip.to_string()).unwrap_or_default()
    }
}

trait Upgrades {
    fn release(&self, node: &str) -> anyhow::Result<String>;
    fn upgrade(&self, node: &str, image: &str, extra: &[&str]) -> anyhow::Result<(bool, String)>;
    fn ip(&self, node: &str) -> String;
}

/// Waits until `node` answers with `release` and its Node is Ready and schedulable again.
async fn settled(own: &OwnBox, node: &str, release: &str) -> anyhow::Result<()> {
    let client = kit::client::client_from_kubeconfig(&own.lab.kubeconfig).await?;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let state = || async {
        let answers = own.release(node).ok();
        let object = nodes.get(node).await.ok()?;
        let ready =
            object.status.as_ref()?.conditions.as_ref()?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        let schedulable = !object.spec.as_ref().and_then(|spec| spec.unschedulable).unwrap_or(false);
        (answers.as_deref() == Some(release) && ready && schedulable).then_some(())
    };
    tests::eventually(std::time::Duration::from_secs(180), &format!("{node} back at {release}"), || async {
        anyhow::Ok(state().await)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_box_at_talos_1_12_0_is_upgraded_to_1_12_1_machine_by_machine() -> anyhow::Result<()> {
    let own =
        OwnBox::edited(OWN_BOX.0, OWN_BOX.1, |text| text.replace(&format!("talos: {TO}"), &format!("talos: {FROM}")))?;
    assert_eq!(own.config.versions.talos.to_string(), FROM, "the box is pinned at {FROM}");
    own.lab.up().await?;
    let port_base = own.lab.ports.base.to_string();
    let install = own.xtask(&["install-all", "--only", kit::names::TALOS_BOOTSTRAP_STAGE, "--port-base", &port_base]);
    let installed = tokio::task::spawn_blocking(move || {
        let mut install = install;
        install.output()
    })
    .await??;
    assert!(installed.status.success(), "stage 01 at {FROM}: {}", String::from_utf8_lossy(&installed.stderr));
    for node in &own.config.nodes {
        assert_eq!(own.release(&node.name)?, FROM, "{} runs the release it was installed with", node.name);
    }

    let target =
        talos_bootstrap::schematic::installer_image(TO.parse().map_err(|()| anyhow::anyhow!("{TO} is not a release"))?);
    let schematic =
        talos_bootstrap::schematic::id(&talos_bootstrap::schematic::document(talos_bootstrap::schematic::EXTENSIONS));

    // An image the box's registry does not have is refused by the call itself, as Talos's pull
    // refuses it, and nothing happens to the machine.
    let (ok, said) = own.upgrade("wk01", "ghcr.io/siderolabs/installer:v1.11.99", &["--wait=false"])?;
    assert!(!ok && said.contains("error validating installer image") && said.contains("not found"), "{said}");
    assert_eq!(own.release("wk01")?, FROM);

    // wk03 cannot boot v1.12.1 (the lab's fault): the upgrade "succeeds" as Talos's does (the
    // machine rebooted, its boot ID changed, it is running and ready), on the old release.
    lab::twin::set_fails_to_boot(&own.lab.dir, "wk03", &[TO])?;
    let (ok, said) = own.upgrade("wk03", &target, &[])?;
    assert!(ok, "talosctl upgrade reports success although the boot fell back: {said}");
    settled(&own, "wk03", FROM).await?;
    lab::twin::set_fails_to_boot(&own.lab.dir, "wk03", &[])?;

    // A worker and a control plane, one at a time: each reboots into v1.12.1 with its schematic.
    for node in ["wk01", "cp01"] {
        let started = std::time::Instant::now();
        let (ok, said) = own.upgrade(node, &target, &[])?;
        assert!(ok, "upgrade of {node}: {said}");
        let upgraded = started.elapsed().as_secs_f64();
        settled(&own, node, TO).await?;
        tests::shown(&format!(
            "{node}: talosctl upgrade --wait returned after {upgraded:.1}s, running {TO}, Ready and uncordoned after {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        let ip = own.ip(node);
        let (_, extensions) = own.talosctl(&["-n", &ip, "-e", &ip, "get", "extensions"])?;
        assert!(extensions.contains(&schematic), "{node} booted the schematic it was installed with: {extensions}");
    }

    // Two control planes sent their upgrades back to back: Talos's guard (the etcd mutex and
    // member health) is held for the call only, and the first one's drain keeps its etcd up, so
    // both are accepted; both machines then go down together.
    let (first, second) =
        (own.upgrade("cp02", &target, &["--wait=false"])?, own.upgrade("cp03", &target, &["--wait=false"])?);
    for (node, (ok, said)) in [("cp02", &first), ("cp03", &second)] {
        assert!(*ok && said.contains("Upgrade request received"), "{node}: {said}");
    }
    for node in ["cp02", "cp03", "wk02"] {
        if node == "wk02" {
            let (ok, said) = own.upgrade(node, &target, &[])?;
            assert!(ok, "upgrade of {node}: {said}");
        }
        settled(&own, node, TO).await?;
    }

    // Rollback boots the entry before the upgrade, even after a good one.
    let ip = own.ip("wk01");
    let (ok, said) = own.talosctl(&["-n", &ip, "-e", &ip, "rollback"])?;
    assert!(ok, "rollback: {said}");
    settled(&own, "wk01", FROM).await?;
    let (ok, said) = own.talosctl(&["-n", &ip, "-e", &ip, "rollback"])?;
    assert!(ok, "rollback to the upgraded entry: {said}");
    settled(&own, "wk01", TO).await?;
    Ok(())
}
