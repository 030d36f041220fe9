//! Issue 29, on fresh_clone's box once it is installed and upgraded (every stage there, so
//! every stage's verify runs after each replacement): machines replaced, added and removed.
//! - cp02 loses its power and its disk (`lab power-cut`, `lab swap-disk`: the lab's physical
//!   acts) and `node replace cp02` puts the new machine in its place: three healthy voting
//!   members (the dead one's ID gone, a new one there), six Ready Nodes, every stage verified,
//!   and the API through the VIP answering all along (sampled each second). Before that,
//!   `node replace cp03` while cp02 is down is refused with nothing changed, a machine that runs
//!   is refused without `--yes`, and a name cluster.yaml does not have is refused with the names
//!   it has.
//! - wk02 the same, its `node replace` killed once the new machine was sent its config and run
//!   again (it waits for the install, sends nothing twice), its pods gone from it and Longhorn's
//!   verify passing after.
//! - wk04 added to cluster.yaml at a free address joins through `install-all` (plan says "new
//!   node"); removed from the file, plan says "no longer in the config", and `node remove wk04`
//!   leaves the six Ready Nodes of before and no trace of it.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::{OwnBox, printed};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kit::talos::membership::{EtcdMember, parse_members};

/// The line cluster.yaml gets for the fourth worker, at an address nothing else uses.
const WK04: &str = "  - { name: wk04, role: worker, ip: 172.16.16.153, installDisk: /dev/sda }";

/// etcd's members as `via` lists them.
fn members(own: &OwnBox, via: &str) -> anyhow::Result<Vec<EtcdMember>> {
    let (ok, said) = own.talosctl_at(via, &["etcd", "members"])?;
    anyhow::ensure!(ok, "etcd members: {said}");
    Ok(parse_members(&said))
}

/// The Nodes and whether each is Ready.
async fn nodes(own: &OwnBox) -> anyhow::Result<Vec<(String, bool)>> {
    let client = kit::client::client_from_kubeconfig(&own.lab.kubeconfig).await?;
    let listed = kube::Api::<KubeNode>::all(client).list(&Default::default()).await?;
    Ok(listed
        .items
        .iter()
        .map(|node| (node.metadata.name.clone().unwrap_or_default(), kit::client::is_ready(node)))
        .collect())
}

/// The pods bound to `node`, as `namespace/name uid` (a StatefulSet's pod made again keeps its
/// name, not its UID).
async fn pods_on(own: &OwnBox, node: &str) -> anyhow::Result<BTreeSet<String>> {
    let client = kit::client::client_from_kubeconfig(&own.lab.kubeconfig).await?;
    let on_node = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    let listed = kube::Api::<Pod>::all(client).list(&on_node).await?;
    Ok(listed
        .items
        .iter()
        .map(|pod| {
            let meta = &pod.metadata;
            let (namespace, name) = (meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""));
            format!("{namespace}/{name} {}", meta.uid.as_deref().unwrap_or(""))
        })
        .collect())
}

/// `cargo xtask node <args> --lab` on the box: whether it succeeded, what it printed, how long.
async fn node_command(own: &OwnBox, args: &[&str]) -> anyhow::Result<(bool, String, f64)> {
    let started = Instant::now();
    let output = crate::output_of(own.xtask(&[&["node"], args].concat())).await?;
    Ok((output.status.success(), printed(&output), started.elapsed().as_secs_f64()))
}

/// `node replace`, watched: what it printed, how long it took, and what the watch saw meanwhile
/// (the API through the VIP, asked each second).
async fn replaced(own: &OwnBox, name: &str) -> anyhow::Result<(String, f64, crate::watch::Watched)> {
    let watch = crate::watch::Watch::start(&own.config.clone().in_box());
    let (ok, said, took) = node_command(own, &["replace", name]).await?;
    let watched = watch.stop()?;
    anyhow::ensure!(ok, "node replace {name}: {said}");
    anyhow::ensure!(said.contains(&format!("{name} replaced in")), "{said}");
    // Asked about once a second.
    anyhow::ensure!(watched.samples as f64 >= took / 3.0, "the watch sampled {} times in {took:.1}s", watched.samples);
    Ok((said, took, watched))
}

/// Replaces cp02 and wk02, adds and removes wk04, on `own`'s installed box; cluster.yaml is as
/// it was when it returns.
pub async fn rehearse(own: &OwnBox) -> anyhow::Result<()> {
    // A name cluster.yaml does not have: refused, with the names it has.
    let (ok, said, _) = node_command(own, &["replace", "cp09"]).await?;
    assert!(!ok && said.contains("no node cp09") && said.contains("cp01, cp02, cp03, wk01, wk02, wk03"), "{said}");

    // cp02 dead: replacing cp03 now would leave etcd without quorum, and is refused before
    // anything changes.
    let before = members(own, "cp01")?;
    let dead = before.iter().find(|member| member.hostname == "cp02").map(|member| member.id.clone());
    let dead = dead.ok_or_else(|| anyhow::anyhow!("no member cp02 in {before:?}"))?;
    own.lab.power_cut("cp02")?;
    let (ok, said, _) = node_command(own, &["replace", "cp03", "--yes"]).await?;
    assert!(!ok && said.contains("cp02 does not answer") && said.contains("nothing was changed"), "{said}");
    assert_eq!(members(own, "cp01")?, before, "the refusal changed no member");
    // A machine that still runs is not replaced without --yes.
    let (ok, said, _) = node_command(own, &["replace", "wk01"]).await?;
    assert!(!ok && said.contains("add --yes"), "{said}");

    // cp02 given a blank disk and replaced, once the API answers through the VIP again (had cp02
    // held it, the VIP moves when its lease runs out: the power cut's cost, not the replacement's).
    kit::wait::poll(std::time::Duration::from_secs(120), || async {
        Ok(nodes(own).await.map_err(|error| format!("the API after cp02's power cut: {error:#}")))
    })
    .await?;
    own.lab.swap_disk("cp02").await?;
    let (said, took, watched) = replaced(own, "cp02").await?;
    let unanswered = watched.longest_unanswered;
    assert!(said.contains(&format!("remove etcd member {dead}")), "the dead member is shown before it goes: {said}");
    let after = members(own, "cp01")?;
    let ids: BTreeSet<&str> = after.iter().map(|member| member.id.as_str()).collect();
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(!ids.contains(dead.as_str()), "the dead member is gone: {after:?}");
    assert!(after.iter().all(|member| !member.learner), "every member votes: {after:?}");
    let new = after.iter().find(|member| member.hostname == "cp02").map(|member| member.id.clone());
    assert!(new.is_some_and(|id| id != dead), "cp02 has a new member: {after:?}");
    let ready = nodes(own).await?;
    assert_eq!(ready.iter().filter(|(_, ready)| *ready).count(), 6, "{ready:?}");
    // A sample counts as unanswered when the quorum read takes over a second, which a loaded
    // 2-core machine does now and then (2.5 s seen during the whole suite); an API that went
    // away would be gone for its VIP lease, a minute.
    assert!(
        unanswered < std::time::Duration::from_secs(10),
        "the API through the VIP went away for {unanswered:?} while cp02 was replaced"
    );
    tests::shown(&format!(
        "node replace cp02: {took:.1}s; the API through the VIP unanswered at most {:.1}s ({} samples)",
        unanswered.as_secs_f64(),
        watched.samples
    ));

    // wk02: its pods go elsewhere and come back to a full cluster; Longhorn's checks pass (the
    // replacement's last step runs every stage's verify). The first run is killed (its process
    // group) as soon as the new machine was sent its config; the second waits for its install.
    let had = pods_on(own, "wk02").await?;
    own.lab.power_cut("wk02")?;
    own.lab.swap_disk("wk02").await?;
    let command = own.xtask(&["node", "replace", "wk02"]);
    let (lines, reached) =
        tokio::task::spawn_blocking(move || crate::killed_at(command, |line| line.contains("step 4/7: sent")))
            .await??;
    assert!(reached, "killed once the config was sent: {lines:?}");
    let (said, took, watched) = replaced(own, "wk02").await?;
    assert!(said.contains("the new machine, installing") || said.contains("the new machine, joining"), "{said}");
    assert!(!said.contains("send it wk02's machine config"), "a re-run does not send the config again: {said}");
    let longhorn = said.lines().find(|line| line.contains("longhorn") && line.contains(" verify "));
    assert!(longhorn.is_some_and(|line| line.contains(" 0 failed")), "Longhorn's verify after wk02: {said}");
    let still: BTreeSet<String> = pods_on(own, "wk02").await?.intersection(&had).cloned().collect();
    assert!(still.is_empty(), "the old machine's pods are gone from it: {still:?}");
    let ready = nodes(own).await?;
    assert_eq!(ready.iter().filter(|(_, ready)| *ready).count(), 6, "{ready:?}");
    tests::shown(&format!(
        "node replace wk02 (killed after the send, run again): {took:.1}s ({} pods were on it); the API unanswered at most {:.1}s ({} samples)",
        had.len(),
        watched.longest_unanswered.as_secs_f64(),
        watched.samples
    ));

    // wk04 added to cluster.yaml: plan calls it a new node, install-all joins it.
    let original = std::fs::read_to_string(&own.config.source)?;
    let with_wk04 = original.replace(
        "  - { name: wk03, role: worker, ip: 172.16.16.152, installDisk: /dev/sda }",
        &format!("  - {{ name: wk03, role: worker, ip: 172.16.16.152, installDisk: /dev/sda }}\n{WK04}"),
    );
    assert_ne!(with_wk04, original, "wk04 went into cluster.yaml");
    std::fs::write(&own.config.source, &with_wk04)?;
    let lab_up = crate::output_of(own.xtask(&["install-all", "--only", "talos-bootstrap", "--dry-run"])).await?;
    // The dry run brings the box up first: wk04 is plugged in, waiting in maintenance mode.
    let planned = printed(&lab_up);
    assert!(planned.contains("new node"), "{planned}");
    let joined = crate::output_of(own.xtask(&["install-all", "--only", "talos-bootstrap"])).await?;
    assert!(joined.status.success(), "{}", printed(&joined));
    let ready = nodes(own).await?;
    assert!(ready.contains(&("wk04".to_owned(), true)), "{ready:?}");

    // wk04 out of cluster.yaml: plan says so, and node remove takes it out.
    std::fs::write(&own.config.source, &original)?;
    let planned = crate::output_of(own.xtask(&["plan", "--only", "talos-bootstrap"])).await?;
    let planned = printed(&planned);
    assert!(planned.contains("no longer in the config") && planned.contains("node remove wk04"), "{planned}");
    let (ok, said, took) = node_command(own, &["remove", "wk04"]).await?;
    assert!(ok, "{said}");
    let ready = nodes(own).await?;
    assert_eq!(ready.len(), 6, "{ready:?}");
    assert!(ready.iter().all(|(_, ready)| *ready), "{ready:?}");
    assert!(pods_on(own, "wk04").await?.is_empty(), "no pod is bound to wk04");
    assert!(
        own.lab.running_pids().iter().all(|(name, _)| name != "twin-wk04"),
        "wk04 powered off after its reset: {:?}",
        own.lab.running_pids()
    );
    let (ok, said, _) = node_command(own, &["remove", "wk04"]).await?;
    assert!(ok && said.contains("nothing to remove"), "a second remove finds nothing: {said}");
    tests::shown(&format!("node remove wk04: {took:.1}s"));
    Ok(())
}
