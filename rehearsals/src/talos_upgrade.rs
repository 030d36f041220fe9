//! Issue 27's rehearsal, on a box installed with every stage at Talos v1.12.0 (each machine
//! runs the twin built against Talos v1.12.0's packages; `fresh_clone.rs` installs it and hands
//! it over), upgraded to v1.12.1.
//!
//! First by hand, as Talos behaves: an image the box cannot pull is refused before anything
//! changes; two control planes sent `talosctl upgrade` back to back are both accepted, since
//! Talos's etcd guard covers the call and not the drain after it (why talos-ha serialises
//! them); `talosctl rollback` boots one of them into its entry before.
//!
//! Then by `cargo xtask upgrade`, with etcd's healthy members and the API through the VIP
//! sampled every second from the first machine to the last: `plan` lists each machine with its
//! own schematic's installer; `apply` refuses without a recent backup (then one is taken) and
//! while a control plane is down (before any call); stops on a PodDisruptionBudget that holds a
//! pod (named, the machine not upgraded); killed mid-way, its re-run continues with the next
//! machine; a mount that will not come down stops it with `--stage` offered, and `--stage`
//! gets that machine through; a machine that fell back to its old boot entry (the lab's named
//! fault "fails to boot": `talosctl upgrade --wait` itself succeeds there) is reported and
//! stops it; the last run finishes. Etcd never has fewer than two healthy members, every
//! machine runs v1.12.1 with its schematic, and nothing is left to upgrade.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node as KubeNode;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use lab::twin::Fault;

use crate::watch::Watch;
use crate::{OwnBox, killed_at, output_of, printed};

pub const FROM: &str = "v1.12.0";
pub const TO: &str = "v1.12.1";

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

impl OwnBox {
    /// The release `node` answers `version` with.
    fn release(&self, node: &str) -> anyhow::Result<String> {
        let (ok, said) = self.talosctl_at(node, &["version"])?;
        anyhow::ensure!(ok, "talosctl version on {node}: {said}");
        let tags = server_tags(&said);
        anyhow::ensure!(tags.len() == 1, "one server version from {node}: {said}");
        Ok(tags[0].1.clone())
    }
}

/// Waits until `node` answers with `release` and its Node is Ready and schedulable again. The
/// Node (one cheap read) is watched until it reports that release; the machine is asked (a
/// talosctl process) only then.
async fn settled(own: &OwnBox, node: &str, release: &str) -> anyhow::Result<()> {
    let client = kit::client::client_from_kubeconfig(&own.lab.kubeconfig).await?;
    let nodes: kube::Api<KubeNode> = kube::Api::all(client);
    let os_image = format!("Talos ({release})");
    let state = || async {
        let object = nodes.get(node).await.ok()?;
        let reported = object.status.as_ref()?.node_info.as_ref()?.os_image == os_image;
        let schedulable = !object.spec.as_ref().and_then(|spec| spec.unschedulable).unwrap_or(false);
        let settled = reported && kit::client::is_ready(&object) && schedulable;
        (settled && own.release(node).ok().as_deref() == Some(release)).then_some(())
    };
    tests::eventually(std::time::Duration::from_secs(180), &format!("{node} back at {release}"), || async {
        anyhow::Ok(state().await)
    })
    .await
}

/// The per-machine times `apply` printed, shown in CI's log (the note's measurements).
fn show_times(said: &str) {
    for line in said.lines().filter(|line| line.starts_with("talos ") && line.contains(": done in ")) {
        tests::shown(line);
    }
}

/// The rehearsal, on `own` installed at [`FROM`] with every stage; leaves it at [`TO`].
pub async fn rehearse(own: &OwnBox) -> anyhow::Result<()> {
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
    by_hand(own, &target).await?;
    with_the_upgrade_command(own, &target).await
}

/// What Talos itself does with `talosctl upgrade` and `talosctl rollback`.
async fn by_hand(own: &OwnBox, target: &str) -> anyhow::Result<()> {
    let upgrade = |node: &str, image: &str| {
        own.talosctl_at(node, &["upgrade", "--image", image, "--wait=false", "--timeout", "5m"])
    };
    // An image the box's registry does not have is refused by the call itself, as Talos's pull
    // refuses it, and nothing happens to the machine.
    let (ok, said) = upgrade("wk01", "ghcr.io/siderolabs/installer:v1.11.99")?;
    assert!(!ok && said.contains("error validating installer image") && said.contains("not found"), "{said}");
    assert_eq!(own.release("wk01")?, FROM);

    // Two control planes sent their upgrades back to back: Talos's guard (the etcd mutex and
    // member health) is held for the call only, and the first one's drain keeps its etcd up, so
    // both are accepted; both machines then go down together.
    let (first, second) = (upgrade("cp02", target)?, upgrade("cp03", target)?);
    for (node, (ok, said)) in [("cp02", &first), ("cp03", &second)] {
        assert!(*ok && said.contains("Upgrade request received"), "{node}: {said}");
    }
    for node in ["cp02", "cp03"] {
        settled(own, node, TO).await?;
    }
    // Rollback boots the entry before the upgrade, even after a good one: cp02 is back at
    // FROM, for the upgrade command to take with the others.
    let (ok, said) = own.talosctl_at("cp02", &["rollback"])?;
    assert!(ok, "rollback of cp02: {said}");
    settled(own, "cp02", FROM).await
}

/// `cargo xtask upgrade` takes every machine, gate by gate.
async fn with_the_upgrade_command(own: &OwnBox, target: &str) -> anyhow::Result<()> {
    let plan = output_of(own.xtask(&["upgrade", "plan"])).await?;
    assert_eq!(plan.status.code(), Some(2), "machines to upgrade: {}", printed(&plan));
    let shown = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(shown.contains("talos          5 machine(s) to upgrade"), "cp03 is done: {shown}");
    for node in ["cp01", "cp02", "wk01", "wk02", "wk03"] {
        assert!(shown.contains(&format!("{node:<8} {FROM} → {TO}: with {target}")), "{shown}");
    }

    let refused = output_of(own.xtask(&["upgrade", "apply"])).await?;
    assert!(!refused.status.success() && printed(&refused).contains("no backup of"), "{}", printed(&refused));
    assert!(printed(&refused).contains("cargo xtask backup"), "{}", printed(&refused));
    let backup = output_of(own.xtask(&["backup"])).await?;
    assert!(backup.status.success(), "{}", printed(&backup));

    // A control plane off (one already upgraded: the plan does not need to ask it), and the
    // first machine's etcd gate refuses: nothing is sent to any machine.
    own.lab.power_cut("cp03")?;
    let cut = std::time::Instant::now();
    let gated = output_of(own.xtask(&["upgrade", "apply"])).await?;
    own.lab.power_on("cp03").await?;
    assert!(!gated.status.success(), "{}", printed(&gated));
    assert!(
        printed(&gated).contains("refused before any call") && printed(&gated).contains("etcd is not healthy"),
        "{}",
        printed(&gated)
    );
    assert_eq!(own.release("cp01")?, FROM, "nothing was upgraded");
    settled(own, "cp03", TO).await?;
    // The power cut left cp03's VIP candidacy from before it in etcd, its lease alive for the
    // election session's 60 s (lab/go/talos/twin/vip.go: concurrency.NewSession's default TTL):
    // until it runs out, a holder that resigns hands the VIP to that dead candidate and nobody
    // answers on it (seen: cp01 released at 03:43:43, cp02 took it at 03:44:55). The upgrade,
    // and its watch, start once that lease is gone.
    tokio::time::sleep(std::time::Duration::from_secs(60).saturating_sub(cut.elapsed())).await;

    // A pod on wk01 that its PodDisruptionBudget holds, a mount on wk02 that will not come
    // down, and wk03 failing to boot v1.12.1.
    let client = kit::client::client_from_kubeconfig(&own.lab.kubeconfig).await?;
    held_pod_on(&client, "wk01").await?;
    lab::twin::set_fault(&own.lab.dir, "wk02", Fault::BusyMounts, &["/var/lib/longhorn"])?;
    lab::twin::set_fault(&own.lab.dir, "wk03", Fault::FailsToBoot, &[TO])?;
    let watch = Watch::start(&own.config.clone().in_box());
    let outcome = faults_on_the_way(own, &client).await;
    let watched = watch.stop()?;
    outcome?;
    tests::shown(&format!(
        "talos upgrade: over {} one-second samples, etcd had at least {} voting member(s) and {} healthy ({}); \
         the API through the VIP (a quorum read) went at most {:.1}s unanswered ({:.0}s into the upgrade)",
        watched.samples,
        watched.fewest_voting,
        watched.fewest_healthy,
        watched.least_healthy_said,
        watched.longest_unanswered.as_secs_f64(),
        watched.longest_unanswered_from.as_secs_f64()
    ));
    // Quorum is the voters: a member that reports "no leader" while a rebooting leader hands
    // over still votes, and the quorum read through the API shows how long writes waited.
    assert!(watched.fewest_voting >= 2, "etcd kept its quorum: {watched:?}");
    assert!(watched.longest_unanswered.as_secs() <= 15, "the API was never away for long: {watched:?}");

    for node in &own.config.nodes {
        settled(own, &node.name, TO).await?;
        let (_, extensions) = own.talosctl_at(&node.name, &["get", "extensions"])?;
        let schematic = talos_bootstrap::schematic::id(&talos_bootstrap::schematic::document(
            talos_bootstrap::schematic::EXTENSIONS,
        ));
        assert!(extensions.contains(&schematic), "{} kept its schematic: {extensions}", node.name);
    }
    let done = output_of(own.xtask(&["upgrade", "plan"])).await?;
    assert_eq!(done.status.code(), Some(0), "{}", printed(&done));
    assert!(
        String::from_utf8_lossy(&done.stdout).contains(&format!("every machine runs {TO}: nothing to do")),
        "{}",
        printed(&done)
    );
    Ok(())
}

/// The upgrade through its stops, each re-run continuing where the last one stopped.
async fn faults_on_the_way(own: &OwnBox, client: &kube::Client) -> anyhow::Result<()> {
    let held = output_of(own.xtask(&["upgrade", "apply", "--drain-timeout", "10"])).await?;
    let said = printed(&held);
    show_times(&said);
    assert!(!held.status.success(), "{said}");
    for node in ["cp01", "cp02"] {
        assert!(said.contains(&format!("talos {node} {FROM} → {TO}: done in")), "{said}");
    }
    assert!(said.contains("default/held-") && said.contains("disruption budget"), "{said}");
    assert!(said.contains("upgrade apply"), "the command that resumes: {said}");
    assert_eq!(own.release("wk01")?, FROM, "wk01 was not upgraded");
    settled(own, "wk01", FROM).await?;

    // Killed (the whole process group) once wk01 is done and wk02 starts.
    let budgets: kube::Api<PodDisruptionBudget> = kube::Api::namespaced(client.clone(), "default");
    budgets.delete("held", &Default::default()).await?;
    let (before_kill, reached) = killed_at(own.xtask(&["upgrade", "apply"]), |line| {
        line.starts_with(&format!("talos wk02 {FROM} → {TO}: starting"))
    })?;
    assert!(reached, "the upgrade reached wk02: {before_kill:?}");
    show_times(&before_kill.join("\n"));

    // The re-run goes on with wk02, whose mount stops Talos's upgrade: --stage is offered.
    let busy = output_of(own.xtask(&["upgrade", "apply"])).await?;
    let said = printed(&busy);
    assert!(!busy.status.success(), "{said}");
    assert!(!said.contains("talos wk01"), "wk01 is done: {said}");
    assert!(said.contains("error unmounting /var/lib/longhorn"), "{said}");
    assert!(said.contains("cargo xtask upgrade apply --stage"), "{said}");
    assert_eq!(own.release("wk02")?, FROM, "wk02 still runs {FROM}");

    // Staged: the image waits on META, the forced reboot skips the mount, the boot installs it.
    // wk03 then boots v1.12.1, fails, and is back at v1.12.0: reported, and the run stops.
    let staged = output_of(own.xtask(&["upgrade", "apply", "--stage"])).await?;
    let said = printed(&staged);
    show_times(&said);
    assert!(!staged.status.success(), "{said}");
    assert!(said.contains("rebooting it with --mode force"), "{said}");
    assert!(said.contains(&format!("talos wk02 {FROM} → {TO}: done in")), "{said}");
    assert!(said.contains(&format!("wk03 rebooted into {FROM}, not {TO}")), "{said}");
    assert!(said.contains("dmesg"), "{said}");

    lab::twin::set_fault(&own.lab.dir, "wk02", Fault::BusyMounts, &[])?;
    lab::twin::set_fault(&own.lab.dir, "wk03", Fault::FailsToBoot, &[])?;
    let resumed = output_of(own.xtask(&["upgrade", "apply"])).await?;
    let said = printed(&resumed);
    show_times(&said);
    assert!(resumed.status.success(), "{said}");
    assert!(said.contains(&format!("talos wk03 {FROM} → {TO}: done in")), "{said}");
    assert!(said.contains("talos machine configs: done in"), "stage 01 applied the configs again: {said}");
    Ok(())
}

/// One pod of a Deployment on `node`, and a PodDisruptionBudget that lets none of it go.
async fn held_pod_on(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "held", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "held"}}, "template": {
            "metadata": {"labels": {"app": "held"}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "containers": [{"name": "held", "image": "registry.k8s.io/pause:3.10"}]}
        }}
    }))?;
    let budget: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "held", "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "held"}}}
    }))?;
    kube::Api::<Deployment>::namespaced(client.clone(), "default").create(&Default::default(), &deployment).await?;
    let budgets = kube::Api::<PodDisruptionBudget>::namespaced(client.clone(), "default");
    budgets.create(&Default::default(), &budget).await?;
    tests::eventually(std::time::Duration::from_secs(60), "the held pod's budget to count it healthy", || async {
        let status = budgets.get("held").await?.status;
        anyhow::Ok(status.filter(|status| status.current_healthy == 1).map(drop))
    })
    .await
}
