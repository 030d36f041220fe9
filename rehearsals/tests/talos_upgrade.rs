//! Issue 27: Talos upgrades on twins of two real releases. A box installed at Talos v1.12.0
//! (each machine runs the twin built against Talos v1.12.0's packages) is upgraded to v1.12.1.
//!
//! First by hand, as Talos behaves: an image the box cannot pull is refused before anything
//! changes; two control planes sent `talosctl upgrade` back to back are both accepted, since
//! Talos's etcd guard covers the call and not the drain after it (why talos-ha serialises them).
//!
//! Then by `cargo xtask upgrade`: `plan` lists each machine still at v1.12.0 with its own
//! schematic's installer; `apply` refuses without a recent backup, refuses while a control plane
//! is down (before any call), stops on a PodDisruptionBudget that holds a pod (named, the
//! machine not upgraded), reports a machine that fell back to its old boot entry (the lab's
//! named fault "fails to boot": `talosctl upgrade --wait` itself succeeds there) and stops; each
//! re-run continues with the machines not yet at v1.12.1, and the last one changes nothing.
//! `talosctl rollback` boots the entry before, and `plan` sees it.

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
    let installed =
        run(own.xtask(&["install-all", "--only", kit::names::TALOS_BOOTSTRAP_STAGE, "--port-base", &port_base]))
            .await?;
    assert!(installed.status.success(), "stage 01 at {FROM}: {}", log(&installed));
    for node in &own.config.nodes {
        assert_eq!(own.release(&node.name)?, FROM, "{} runs the release it was installed with", node.name);
    }
    // cluster.yaml now asks for the new release: the upgrade's input.
    std::fs::write(
        &own.config.source,
        std::fs::read_to_string(&own.config.source)?.replace(&format!("talos: {FROM}"), &format!("talos: {TO}")),
    )?;
    let target =
        talos_bootstrap::schematic::installer_image(TO.parse().map_err(|()| anyhow::anyhow!("{TO} is not a release"))?);
    let schematic =
        talos_bootstrap::schematic::id(&talos_bootstrap::schematic::document(talos_bootstrap::schematic::EXTENSIONS));

    by_hand(&own, &target).await?;
    with_the_upgrade_command(&own, &target, &schematic).await
}

/// What Talos itself does with `talosctl upgrade`.
async fn by_hand(own: &OwnBox, target: &str) -> anyhow::Result<()> {
    // An image the box's registry does not have is refused by the call itself, as Talos's pull
    // refuses it, and nothing happens to the machine.
    let (ok, said) = own.upgrade("wk01", "ghcr.io/siderolabs/installer:v1.11.99", &["--wait=false"])?;
    assert!(!ok && said.contains("error validating installer image") && said.contains("not found"), "{said}");
    assert_eq!(own.release("wk01")?, FROM);

    // Two control planes sent their upgrades back to back: Talos's guard (the etcd mutex and
    // member health) is held for the call only, and the first one's drain keeps its etcd up, so
    // both are accepted; both machines then go down together.
    let (first, second) =
        (own.upgrade("cp02", target, &["--wait=false"])?, own.upgrade("cp03", target, &["--wait=false"])?);
    for (node, (ok, said)) in [("cp02", &first), ("cp03", &second)] {
        assert!(*ok && said.contains("Upgrade request received"), "{node}: {said}");
    }
    for node in ["cp02", "cp03"] {
        settled(own, node, TO).await?;
    }
    Ok(())
}

/// `cargo xtask upgrade` takes the rest, gate by gate.
async fn with_the_upgrade_command(own: &OwnBox, target: &str, schematic: &str) -> anyhow::Result<()> {
    let plan = run(own.xtask(&["upgrade", "plan"])).await?;
    assert_eq!(plan.status.code(), Some(2), "machines to upgrade: {}", log(&plan));
    let shown = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(shown.contains("talos          4 machine(s) to upgrade"), "cp02 and cp03 are done: {shown}");
    for node in ["cp01", "wk01", "wk02", "wk03"] {
        assert!(shown.contains(&format!("{node:<8} {FROM} → {TO}: with {target}")), "{node}: {shown}");
    }

    let refused = run(own.xtask(&["upgrade", "apply"])).await?;
    assert!(!refused.status.success() && log(&refused).contains("no backup of"), "{}", log(&refused));
    assert!(log(&refused).contains("cargo xtask backup"), "{}", log(&refused));

    // A control plane off: nothing is sent to any machine.
    own.lab.power_cut("cp03")?;
    let gated = run(own.xtask(&["upgrade", "apply", "--no-backup"])).await?;
    own.lab.power_on("cp03").await?;
    assert!(!gated.status.success(), "{}", log(&gated));
    assert!(
        log(&gated).contains("refused before any call") && log(&gated).contains("etcd is not healthy"),
        "{}",
        log(&gated)
    );
    assert_eq!(own.release("cp01")?, FROM, "nothing was upgraded");
    settled(own, "cp03", TO).await?;

    // A pod on wk01 that its PodDisruptionBudget holds, and wk03 failing to boot v1.12.1.
    let client = kit::client::client_from_kubeconfig(&own.lab.kubeconfig).await?;
    held_pod_on(&client, "wk01").await?;
    lab::twin::set_fails_to_boot(&own.lab.dir, "wk03", &[TO])?;
    let held = run(own.xtask(&["upgrade", "apply", "--no-backup", "--drain-timeout", "10"])).await?;
    show_times(&held);
    assert!(!held.status.success(), "{}", log(&held));
    assert!(log(&held).contains(&format!("talos cp01 {FROM} → {TO}: done in")), "{}", log(&held));
    assert!(log(&held).contains("default/held-") && log(&held).contains("disruption budget"), "{}", log(&held));
    assert!(log(&held).contains("upgrade apply"), "the command that resumes: {}", log(&held));
    assert_eq!(own.release("wk01")?, FROM, "wk01 was not upgraded");
    settled(own, "wk01", FROM).await?;

    let budgets: kube::Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        kube::Api::namespaced(client.clone(), "default");
    budgets.delete("held", &Default::default()).await?;
    let fell_back = run(own.xtask(&["upgrade", "apply", "--no-backup"])).await?;
    show_times(&fell_back);
    assert!(!fell_back.status.success(), "{}", log(&fell_back));
    let said = log(&fell_back);
    assert!(!said.contains("talos cp01"), "cp01 is at {TO} already: {said}");
    assert!(said.contains(&format!("wk03 rebooted into {FROM}, not {TO}")), "{said}");
    assert!(said.contains("dmesg"), "{said}");

    lab::twin::set_fails_to_boot(&own.lab.dir, "wk03", &[])?;
    let resumed = run(own.xtask(&["upgrade", "apply", "--no-backup"])).await?;
    show_times(&resumed);
    assert!(resumed.status.success(), "{}", log(&resumed));
    assert!(log(&resumed).contains(&format!("talos wk03 {FROM} → {TO}: done in")), "{}", log(&resumed));
    assert!(!log(&resumed).contains("talos wk01"), "{}", log(&resumed));
    for node in &own.config.nodes {
        settled(own, &node.name, TO).await?;
        let ip = own.ip(&node.name);
        let (_, extensions) = own.talosctl(&["-n", &ip, "-e", &ip, "get", "extensions"])?;
        assert!(extensions.contains(schematic), "{} kept its schematic: {extensions}", node.name);
    }
    let done = run(own.xtask(&["upgrade", "plan"])).await?;
    assert_eq!(done.status.code(), Some(0), "{}", log(&done));
    assert!(
        String::from_utf8_lossy(&done.stdout).contains(&format!("every machine runs {TO}: nothing to do")),
        "{}",
        log(&done)
    );

    // Rollback boots the entry before the upgrade, even after a good one; plan sees it.
    let ip = own.ip("wk01");
    let (ok, said) = own.talosctl(&["-n", &ip, "-e", &ip, "rollback"])?;
    assert!(ok, "rollback: {said}");
    settled(own, "wk01", FROM).await?;
    let again = run(own.xtask(&["upgrade", "plan"])).await?;
    assert!(String::from_utf8_lossy(&again.stdout).contains(&format!("wk01     {FROM} → {TO}")), "{}", log(&again));
    Ok(())
}

/// One pod of a Deployment on `node`, and a PodDisruptionBudget that lets none of it go.
async fn held_pod_on(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "held", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "held"}}, "template": {
            "metadata": {"labels": {"app": "held"}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "containers": [{"name": "held", "image": "registry.k8s.io/pause:3.10"}]}
        }}
    }))?;
    let budget: k8s_openapi::api::policy::v1::PodDisruptionBudget = serde_json::from_value(serde_json::json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "held", "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "held"}}}
    }))?;
    kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "default")
        .create(&Default::default(), &deployment)
        .await?;
    let budgets = kube::Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(client.clone(), "default");
    budgets.create(&Default::default(), &budget).await?;
    tests::eventually(std::time::Duration::from_secs(60), "the held pod's budget to count it healthy", || async {
        let status = budgets.get("held").await?.status;
        anyhow::Ok(status.filter(|status| status.current_healthy == 1).map(drop))
    })
    .await
}

/// Runs a command off the async runtime.
async fn run(mut command: std::process::Command) -> anyhow::Result<std::process::Output> {
    Ok(tokio::task::spawn_blocking(move || command.output()).await??)
}

/// The per-machine times `apply` printed, shown in CI's log (the note's measurements).
fn show_times(output: &std::process::Output) {
    for line in String::from_utf8_lossy(&output.stderr).lines().filter(|line| line.contains(": done in ")) {
        tests::shown(line);
    }
}

fn log(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}
