//! Issue 26's drill, on a box installed with every stage (`addon_upgrade.rs` runs it on its box
//! once the upgrade is done, instead of installing a box of its own): the box loses etcd's
//! quorum for real (two control planes' power cut, the third's etcd data deleted: the API is
//! gone) and `cargo xtask restore` brings it back from a backup, as Talos's runbook does by hand.
//! Exactly what the backup held is back, each object at the resourceVersion it had; what was
//! written after it is not; the three control planes are healthy voting members again and a
//! full install changes nothing.
//!
//! On the way, what must be refused is: `backup` with no healthy member (naming whom it asked),
//! `restore` of a tampered snapshot (before any machine is touched), `restore` of a cluster
//! that has quorum.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::{OwnBox, output_of, printed};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use lab::twin::twin_dir;

/// The label on every object the drill writes.
const DRILL: &str = "talos-ha.dev/drill";

fn meta(name: String, phase: &str) -> kube::api::ObjectMeta {
    kube::api::ObjectMeta {
        name: Some(name),
        labels: Some([(DRILL.to_owned(), phase.to_owned())].into()),
        ..Default::default()
    }
}

/// Writes `count` objects of three kinds labelled `phase`; returns name → resourceVersion.
async fn write_objects(client: &kube::Client, phase: &str, count: usize) -> anyhow::Result<BTreeMap<String, String>> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let mut written = BTreeMap::new();
    for index in 0..count {
        let name = format!("{phase}-{index}");
        let data = Some([("index".to_owned(), index.to_string())].into());
        let version = match index % 3 {
            0 => {
                let map = ConfigMap { metadata: meta(name.clone(), phase), data, ..Default::default() };
                maps.create(&PostParams::default(), &map).await?.metadata.resource_version
            }
            1 => {
                let secret = Secret { metadata: meta(name.clone(), phase), string_data: data, ..Default::default() };
                secrets.create(&PostParams::default(), &secret).await?.metadata.resource_version
            }
            _ => {
                let account = ServiceAccount { metadata: meta(name.clone(), phase), ..Default::default() };
                accounts.create(&PostParams::default(), &account).await?.metadata.resource_version
            }
        };
        written.insert(
            format!("{}/{name}", ["ConfigMap", "Secret", "ServiceAccount"][index % 3]),
            version.unwrap_or_default(),
        );
    }
    Ok(written)
}

/// Every object the drill wrote that the API has now: kind/name → resourceVersion.
async fn drill_objects(client: &kube::Client) -> anyhow::Result<BTreeMap<String, String>> {
    let labelled = ListParams::default().labels(DRILL);
    let mut found = BTreeMap::new();
    let versions = |kind: &str, items: Vec<kube::api::ObjectMeta>| {
        items
            .into_iter()
            .map(|meta| {
                (format!("{kind}/{}", meta.name.unwrap_or_default()), meta.resource_version.unwrap_or_default())
            })
            .collect::<Vec<_>>()
    };
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    found.extend(versions("ConfigMap", maps.list(&labelled).await?.items.into_iter().map(|o| o.metadata).collect()));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    found.extend(versions("Secret", secrets.list(&labelled).await?.items.into_iter().map(|o| o.metadata).collect()));
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    found.extend(versions(
        "ServiceAccount",
        accounts.list(&labelled).await?.items.into_iter().map(|o| o.metadata).collect(),
    ));
    Ok(found)
}

/// The drill on `own`, a box installed with every stage; returns how long the first restore
/// (one control plane, two still off) and the whole recovery took, in seconds.
pub async fn restore_after_losing_quorum(own: &OwnBox) -> anyhow::Result<(f64, f64)> {
    let port_base = own.lab.ports.base.to_string();
    let client = kit::client::client_from_kubeconfig(&own.lab.kubeconfig).await?;
    let before = write_objects(&client, "before", 12).await?;
    let backed_up = output_of(own.xtask(&["backup"])).await?;
    anyhow::ensure!(backed_up.status.success(), "backup: {}", printed(&backed_up));
    let folder = String::from_utf8(backed_up.stdout)?.trim().to_owned();
    let after = write_objects(&client, "after", 6).await?;

    // Quorum lost for real: cp02 and cp03 off, cp01's etcd data gone (the API with it).
    own.lab.power_cut("cp02")?;
    own.lab.power_cut("cp03")?;
    own.lab.power_cut("cp01")?;
    std::fs::remove_dir_all(twin_dir(&own.lab.dir, "cp01").join("etcd"))?;
    own.lab.power_on("cp01").await?;

    let refused = output_of(own.xtask(&["backup"])).await?;
    anyhow::ensure!(!refused.status.success(), "no healthy member to back up from: {}", printed(&refused));
    for node in ["cp01", "cp02", "cp03"] {
        anyhow::ensure!(
            printed(&refused).contains(node),
            "backup names every control plane it asked: {}",
            printed(&refused)
        );
    }

    // A snapshot changed after the backup is refused before anything is wiped (the kubelet's
    // folder on EPHEMERAL is still there).
    let scratch = tempfile::tempdir()?;
    let tampered = scratch.path().join("backup");
    let copied = std::process::Command::new("cp").arg("-a").arg(&folder).arg(&tampered).status()?;
    anyhow::ensure!(copied.success(), "copying the backup");
    let snapshot = tampered.join(kit::talos::snapshot::SNAPSHOT_FILE);
    let mut bytes = std::fs::read(&snapshot)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&snapshot, bytes)?;
    let tampered_run = output_of(own.xtask(&["restore", "--from", &tampered.display().to_string()])).await?;
    anyhow::ensure!(!tampered_run.status.success(), "{}", printed(&tampered_run));
    anyhow::ensure!(
        printed(&tampered_run).contains("refusing before any machine is touched"),
        "the damaged file is named before anything is done: {}",
        printed(&tampered_run)
    );
    anyhow::ensure!(twin_dir(&own.lab.dir, "cp01").join("kubelet").exists(), "cp01 was not wiped");

    // The restore, with two control planes still off: cp01 is restored alone and the run
    // names the two it could not reach.
    let started = Instant::now();
    let first = output_of(own.xtask(&["restore", "--from", &folder])).await?;
    let first_took = started.elapsed();
    anyhow::ensure!(!first.status.success(), "two control planes are still off: {}", printed(&first));
    anyhow::ensure!(
        printed(&first).contains("cp02, cp03 did not answer"),
        "the run names who is missing and what to run: {}",
        printed(&first)
    );

    // Power comes back: cp02 and cp03 boot with the old cluster's data; the second run wipes
    // them (they are no members of the restored cluster) and they join it.
    own.lab.power_on("cp02").await?;
    own.lab.power_on("cp03").await?;
    let second = output_of(own.xtask(&["restore", "--from", &folder])).await?;
    let recovered = started.elapsed();
    anyhow::ensure!(second.status.success(), "the second run completes it: {}", printed(&second));
    anyhow::ensure!(
        printed(&second).contains("members kept: cp01"),
        "the restored member is never wiped: {}",
        printed(&second)
    );

    let client = kit::client::client_from_kubeconfig(&own.lab.kubeconfig).await?;
    let now = drill_objects(&client).await?;
    let expected: BTreeMap<String, String> = before.clone();
    anyhow::ensure!(now == expected, "exactly the backup's objects, at their versions: {now:?} vs {expected:?}");
    anyhow::ensure!(after.keys().all(|name| !now.contains_key(name)), "nothing written after the backup");

    let health = kit::lab::at_the_machines(&own.config.clone().in_box(), |config| async move {
        let talosctl = kit::talos::Talosctl::find(&config).await?;
        Ok(kit::talos::etcd_check(&talosctl, &config).await)
    })?;
    anyhow::ensure!(health.1 == 3, "three healthy voting members: {}", health.0);

    let again = output_of(own.xtask(&["install-all", "--port-base", &port_base])).await?;
    anyhow::ensure!(again.status.success(), "{}", printed(&again));
    anyhow::ensure!(
        printed(&again).contains("nothing changed: the cluster was already converged"),
        "every stage's objects came back with the snapshot: {}",
        printed(&again)
    );

    let healthy = output_of(own.xtask(&["restore", "--from", &folder])).await?;
    anyhow::ensure!(!healthy.status.success(), "{}", printed(&healthy));
    anyhow::ensure!(printed(&healthy).contains("the cluster has quorum and needs no restore"), "{}", printed(&healthy));

    Ok((first_took.as_secs_f64(), recovered.as_secs_f64()))
}
