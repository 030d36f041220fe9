//! The Talos phase of `cargo xtask upgrade`, first in the order (Talos, then the add-ons): every
//! machine that runs another release than `versions.talos` is upgraded, one at a time, control
//! planes first. `kit::talos::upgrade` decides each step; this takes them.
//!
//! What a machine runs is read from the cluster: each Node's OS image ("Talos (v1.12.1)", from
//! the release's os-release), and every machine that does not report the wanted release is asked
//! itself (`get version`, and the schematic it booted). Per machine, `apply`:
//! 1. gates on etcd: every control plane's member healthy, or nothing is sent;
//! 2. cordons and drains the Node itself through the eviction API, so PodDisruptionBudgets hold,
//!    and stops naming the pod and its budget when one blocks (Talos's own drain would give up
//!    after five minutes and upgrade anyway; siderolabs/talos#9882);
//! 3. `talosctl -e <node> -n <node> upgrade --image <its schematic at the release> --wait`;
//! 4. asks the machine again: the wanted release (else it fell back to its old boot entry,
//!    which `upgrade --wait` does not notice), the same schematic, its etcd member healthy
//!    (control planes), its Node Ready; then uncordons it.
//!
//! A stop names the machine, the step and the command that resumes; a re-run skips machines
//! already at the release.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kit::config::{ClusterConfig, Node, Version};
use kit::talos::upgrade::{Install, Machine, Step, unmount_failed};
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams};

/// How long an upgraded machine's Node may take to be Ready again.
const READY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// A backup older than this does not count for `apply`.
pub const BACKUP_MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// The machines in upgrade order: control planes (the config's order), then workers.
fn in_order(config: &ClusterConfig) -> Vec<Node> {
    config.control_planes().chain(config.workers()).cloned().collect()
}

/// The OS image each Node reports.
async fn os_images(client: &kube::Client) -> anyhow::Result<BTreeMap<String, String>> {
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let listed = nodes.list(&ListParams::default()).await.context("listing the Nodes")?;
    Ok(listed
        .items
        .into_iter()
        .filter_map(|node| {
            let image = node.status.as_ref()?.node_info.as_ref()?.os_image.clone();
            Some((node.metadata.name?, image))
        })
        .collect())
}

/// The schematic `cluster.yaml`'s extensions make (what stage 01 installs).
fn configured_schematic() -> String {
    use talos_bootstrap::schematic::{EXTENSIONS, document, id};
    id(&document(EXTENSIONS))
}

/// Each machine's step: those whose Node reports the wanted release are done; the others are
/// asked what they run and booted.
pub fn plan(
    config: &ClusterConfig,
    client: &kube::Client,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Vec<Step>> {
    let wanted = config.versions.talos;
    let images = runtime.block_on(os_images(client))?;
    let at_release = format!("Talos ({wanted})");
    let machines = in_order(config);
    let to_ask: Vec<Node> =
        machines.iter().filter(|node| images.get(&node.name) != Some(&at_release)).cloned().collect();
    // A machine that does not answer is planned as refused, with what its Node last reported.
    let asked: BTreeMap<String, Result<Machine, String>> = if to_ask.is_empty() {
        BTreeMap::new()
    } else {
        crate::machines::with_talosctl(config, move |talosctl, _| async move {
            let mut asked = BTreeMap::new();
            for node in &to_ask {
                let machine = kit::talos::upgrade::machine(&talosctl, node).await.map_err(|error| {
                    format!(
                        "{} ({}) did not say which Talos it runs ({error:#}): bring it back, then plan again",
                        node.name, node.ip
                    )
                });
                asked.insert(node.name.clone(), machine);
            }
            anyhow::Ok(asked)
        })?
    };
    let configured = configured_schematic();
    Ok(machines
        .iter()
        .map(|node| match asked.get(&node.name) {
            Some(Ok(machine)) => kit::talos::upgrade::step(&node.name, machine, wanted, &configured),
            Some(Err(unanswered)) => Step {
                node: node.name.clone(),
                running: images
                    .get(&node.name)
                    .and_then(|image| image.strip_prefix("Talos (")?.strip_suffix(')'))
                    .unwrap_or("unknown")
                    .to_owned(),
                wanted: wanted.to_string(),
                image: None,
                refusal: Some(unanswered.clone()),
            },
            None => Step {
                node: node.name.clone(),
                running: wanted.to_string(),
                wanted: wanted.to_string(),
                image: None,
                refusal: None,
            },
        })
        .collect())
}

/// The Talos lines of `upgrade plan`.
pub fn write_plan(steps: &[Step], out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let to_do = steps.iter().filter(|step| step.to_do()).count();
    if to_do == 0 {
        let release = steps.first().map_or("", |step| step.wanted.as_str());
        writeln!(out, "{:<14} every machine runs {release}: nothing to do", "talos")?;
        return Ok(());
    }
    writeln!(out, "{:<14} {to_do} machine(s) to upgrade, one at a time, control planes first", "talos")?;
    for step in steps.iter().filter(|step| step.to_do()) {
        let how = match (&step.refusal, &step.image) {
            (Some(refusal), _) => format!("refused: {refusal}"),
            (None, Some(image)) => format!("with {image}"),
            (None, None) => "no installer image".to_owned(),
        };
        writeln!(out, "  {:<8} {} → {}: {how}", step.node, step.running, step.wanted)?;
    }
    Ok(())
}

/// What `apply` refuses before it touches any machine: a refused step, a Talos/Kubernetes pair
/// Talos does not run, no backup within the hour (unless `no_backup`).
pub fn preconditions(config: &ClusterConfig, steps: &[Step], no_backup: bool) -> anyhow::Result<()> {
    let refused: Vec<String> =
        steps.iter().filter_map(|step| step.refusal.as_ref().map(|why| format!("{}: {why}", step.node))).collect();
    anyhow::ensure!(refused.is_empty(), "nothing was changed: {}", refused.join("; "));
    let (talos, kubernetes) = (config.versions.talos, config.versions.kubernetes);
    if let Some(why) = kit::config::talos_kubernetes_mismatch(talos, kubernetes) {
        anyhow::bail!(
            "nothing was changed: versions.kubernetes {kubernetes} {why}; upgrade Talos and Kubernetes in steps Talos supports"
        );
    }
    backup_gate(
        config,
        no_backup,
        "an upgrade reboots every control plane; etcd keeps quorum only while the others stay healthy",
    )
}

/// A backup of the cluster from the last hour, or `no_backup` (warned about); `why` says what
/// the phase risks.
pub fn backup_gate(config: &ClusterConfig, no_backup: bool, why: &str) -> anyhow::Result<()> {
    let dir = kit::talos::snapshot::default_dir(config);
    let newest = kit::talos::snapshot::backups(&dir, &config.name)?.pop();
    let fresh = newest.as_ref().and_then(|(_, backup)| kit::talos::snapshot::age(&backup.taken_at).ok());
    match fresh {
        Some(age) if age <= BACKUP_MAX_AGE => {
            eprintln!("backup: the newest is {} minutes old", age.as_secs() / 60);
            Ok(())
        }
        _ if no_backup => {
            tracing::warn!(
                "--no-backup: upgrading with no backup from the last hour ({why}); `cargo xtask backup` takes one in \
                 seconds"
            );
            Ok(())
        }
        _ => anyhow::bail!(
            "nothing was changed: no backup of {} from the last hour in {} ({why}). Take one with `cargo xtask \
             backup`, then apply again; --no-backup goes ahead without",
            config.name,
            dir.display()
        ),
    }
}

/// The cluster's API as the Talos phase uses it: while a control plane reboots the VIP may move,
/// and a call that finds the API out of reach is made again once it answers
/// (`kit::client::ride_out`).
pub struct KubeApi<'a> {
    pub client: &'a kube::Client,
    pub kubeconfig: &'a std::path::Path,
    pub wait: Duration,
    pub runtime: &'a tokio::runtime::Runtime,
}

impl KubeApi<'_> {
    pub fn ride_out<T, F, Fut>(&self, attempt: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        self.runtime.block_on(kit::client::ride_out(self.kubeconfig, self.wait, attempt))
    }
}

/// How each machine is taken to the release.
pub struct How {
    /// How long the drain waits for PodDisruptionBudgets before it stops.
    pub drain_timeout: Duration,
    pub install: Install,
}

/// Upgrades every machine of `steps` that is not at its release, one at a time; returns the
/// machines done, or the first failure (the machine and the step named).
pub fn apply(
    config: &ClusterConfig,
    api: &KubeApi<'_>,
    steps: &[Step],
    how: &How,
    done: &mut Vec<String>,
) -> anyhow::Result<()> {
    let client = api.client;
    let wanted = config.versions.talos;
    // A machine an earlier run upgraded and then stopped on (its check after the reboot failed)
    // is checked again, and uncordoned once it passes.
    for name in api.ride_out(|| left_cordoned(client))? {
        if !steps.iter().any(|step| step.node == name && !step.to_do()) {
            continue;
        }
        let node = config.nodes.iter().find(|node| node.name == name).context("a step of no node")?;
        verify(config, api, node, wanted).with_context(|| format!("talos {name}: checking it again"))?;
        api.ride_out(|| cordon(client, &name, false)).with_context(|| format!("talos {name}: uncordoning"))?;
        eprintln!(
            "talos {name}: runs {wanted} and passed its checks; uncordoned (an earlier run stopped after its reboot)"
        );
    }
    for step in steps.iter().filter(|step| step.to_do()) {
        let node = config.nodes.iter().find(|node| node.name == step.node).context("a step of no node")?;
        let image = step.image.clone().context("a step with no installer image")?;
        let started = Instant::now();
        let name = format!("talos {} {} → {}", node.name, step.running, step.wanted);
        eprintln!("{name}: starting");
        etcd_gate(config, node).with_context(|| format!("{name}: refused before any call"))?;
        api.ride_out(|| cordon(client, &node.name, true)).with_context(|| format!("{name}: cordoning"))?;
        // Evictions get their 429 at once, for the drain to retry on its own clock; the client
        // is new for each machine, its connections made after the last one's reboot moved the VIP.
        let drained = api.runtime.block_on(async {
            let evictions = kit::client::client_without_retries(api.kubeconfig).await?;
            drain(&evictions, &node.name, how.drain_timeout).await
        });
        if let Err(error) = drained {
            api.ride_out(|| cordon(client, &node.name, false)).ok();
            return Err(error.context(format!("{name}: draining (the node is uncordoned again, not upgraded)")));
        }
        let drained_after = started.elapsed();
        eprintln!("{name}: drained; upgrading with {image}");
        install(config, node, &image, how.install).map_err(|error| match how.install {
            Install::Live if unmount_failed(&error) => error.context(format!(
                "{name}: a mount would not come down, so Talos stopped the upgrade there: {} still runs {}, its \
                 services stopped until it reboots, and it stays cordoned. Resume with `cargo xtask upgrade apply \
                 --stage`: the installer is recorded on META and runs at the next boot, before anything is mounted",
                node.name, step.running
            )),
            _ => error.context(format!("{name}: talosctl upgrade")),
        })?;
        let back_after = started.elapsed();
        verify(config, api, node, wanted).with_context(|| {
            format!(
                "{name}: after the reboot (the node stays cordoned until you have looked: `kubectl uncordon {}`)",
                node.name
            )
        })?;
        api.ride_out(|| cordon(client, &node.name, false)).with_context(|| format!("{name}: uncordoning"))?;
        let took = started.elapsed();
        eprintln!(
            "{name}: done in {:.1}s (gate and drain {:.1}s, upgrade and reboot {:.1}s, checks {:.1}s)",
            took.as_secs_f64(),
            drained_after.as_secs_f64(),
            (back_after - drained_after).as_secs_f64(),
            (took - back_after).as_secs_f64()
        );
        done.push(name);
    }
    Ok(())
}

/// Every control plane's etcd member healthy: an upgrade takes one member down for its reboot,
/// so one already down would cost quorum.
pub fn etcd_gate(config: &ClusterConfig, node: &Node) -> anyhow::Result<()> {
    let check = crate::machines::etcd_check(config)?;
    anyhow::ensure!(
        check.status == kit::report::Status::Pass,
        "etcd is not healthy ({}), so {} is not upgraded: {}",
        check.reason,
        node.name,
        check.fix.unwrap_or_default()
    );
    Ok(())
}

/// The annotation on a Node this upgrade cordoned: a re-run after a stop uncordons the machines
/// it left cordoned once they run the release (and only those: a person's cordon stays).
const CORDONED: &str = "talos-ha.dev/cordoned-for-upgrade";

/// Marks the Node unschedulable, as this upgrade's doing (or schedulable again).
pub(crate) async fn cordon(client: &kube::Client, node: &str, unschedulable: bool) -> anyhow::Result<()> {
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let mark = unschedulable.then_some("true");
    let patch = serde_json::json!({ "metadata": { "annotations": { CORDONED: mark } }, "spec": { "unschedulable": unschedulable } });
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The Nodes this upgrade cordoned and left so (a stop after their reboot).
async fn left_cordoned(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let listed = nodes.list(&ListParams::default()).await?;
    Ok(listed
        .items
        .into_iter()
        .filter(|node| node.metadata.annotations.as_ref().is_some_and(|notes| notes.contains_key(CORDONED)))
        .filter_map(|node| node.metadata.name)
        .collect())
}

/// Whether the drain leaves `pod` where it is: a mirror pod (the kubelet's static pod), a
/// DaemonSet's (it would come straight back), one that already ended.
fn stays(pod: &Pod) -> bool {
    let mirror =
        pod.metadata.annotations.as_ref().is_some_and(|notes| notes.contains_key("kubernetes.io/config.mirror"));
    let daemon = pod.metadata.owner_references.iter().flatten().any(|owner| owner.kind == "DaemonSet");
    let ended = pod
        .status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    mirror || daemon || ended
}

/// Evicts every pod of the node that must go, retrying the ones a PodDisruptionBudget holds
/// back every 5 s for up to `timeout`, then waits until they are gone. A pod still held back then
/// stops the drain, with the API server's reason (which names the budget).
pub(crate) async fn drain(client: &kube::Client, node: &str, timeout: Duration) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let deadline = Instant::now() + timeout;
    loop {
        let listed = match pods.list(&on_node).await.context("listing the node's pods") {
            // The API out of reach for a moment (the VIP moving) costs this pass, not the drain.
            Err(error) if kit::client::out_of_reach(&error) && Instant::now() < deadline => {
                eprintln!("  the API does not answer ({error:#}); asking again");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            listed => listed?,
        };
        let leaving: Vec<&Pod> = listed.items.iter().filter(|pod| !stays(pod)).collect();
        if leaving.is_empty() {
            return Ok(());
        }
        let mut held = Vec::new();
        for pod in leaving.iter().filter(|pod| pod.metadata.deletion_timestamp.is_none()) {
            let (namespace, name) =
                (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
            match Api::<Pod>::namespaced(client.clone(), &namespace).evict(&name, &EvictParams::default()).await {
                Ok(_) => eprintln!("  evicted {namespace}/{name}"),
                Err(kube::Error::Api(answer)) if answer.code == 404 => {}
                Err(kube::Error::Api(answer)) if answer.code == 429 => {
                    held.push(format!("{namespace}/{name}: {}", answer.message));
                }
                Err(error) => return Err(error).with_context(|| format!("evicting {namespace}/{name}")),
            }
        }
        // A budget's refusal is asked again every 5 s, as Talos's drain does; pods that are only
        // terminating are looked at again each second.
        let pause = if held.is_empty() { Duration::from_secs(1) } else { Duration::from_secs(5) };
        if held.is_empty() {
            held = leaving
                .iter()
                .map(|pod| format!("{} (still terminating)", pod.metadata.name.as_deref().unwrap_or("?")))
                .collect();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "after {}s these pods may still not leave {node}: {} (their PodDisruptionBudget allows no \
             disruption now: add a replica elsewhere, or wait until the budget allows one, then resume)",
            timeout.as_secs(),
            held.join("; ")
        );
        tokio::time::sleep(pause).await;
    }
}

/// Each machine gets the config stage 01 rendered for it, without a reboot: after an upgrade
/// only its installer image (Talos) or nothing but the layout (Kubernetes: the phase patched
/// the images in) differs, which Talos changes live; anything else pending in
/// cluster.yaml that needs a reboot makes Talos refuse, and nothing is changed on that machine.
pub fn apply_configs(config: &ClusterConfig) -> anyhow::Result<()> {
    let paths = talos_bootstrap::StatePaths::new(config);
    let files: Vec<(Node, String)> = in_order(config)
        .into_iter()
        .map(|node| {
            let file = paths.node_config(&node).display().to_string();
            (node, file)
        })
        .collect();
    crate::machines::with_talosctl(config, move |talosctl, _| async move {
        for (node, file) in &files {
            kit::talos::apply_config_live(&talosctl, node, file).await?;
            eprintln!("  {}: runs the config stage 01 rendered (applied without a reboot)", node.name);
        }
        anyhow::Ok(())
    })
}

/// `talosctl upgrade --wait` from where the machines are reached, its progress on stderr. A
/// staged upgrade whose own reboot stops on a mount that will not come down (the StageUpgrade
/// sequence unmounts as a reboot does) is finished by a forced reboot, which skips the
/// unmounts: the machine is drained and Talos has stopped its services by then, so nothing
/// runs there to lose; the boot then installs the staged image.
fn install(config: &ClusterConfig, node: &Node, image: &str, install: Install) -> anyhow::Result<()> {
    let (node, image) = (node.clone(), image.to_owned());
    crate::machines::with_talosctl(config, move |talosctl, _| async move {
        let mut progress = |line: &str| eprintln!("  {line}");
        let upgraded = kit::talos::upgrade::upgrade(&talosctl, &node, &image, install, &mut progress).await;
        match upgraded {
            Err(error) if install == Install::Staged && unmount_failed(&error) => {
                eprintln!(
                    "  {}: the staged upgrade's reboot stopped on a mount that would not come down; rebooting it \
                     with --mode force, which skips the unmounts (its pods are drained, its services stopped)",
                    node.name
                );
                kit::talos::upgrade::force_reboot(&talosctl, &node, &mut progress).await
            }
            other => other,
        }
    })
}

/// The machine runs the wanted release with its schematic, its member is healthy (control
/// planes) and its Node Ready.
fn verify(config: &ClusterConfig, api: &KubeApi<'_>, node: &Node, wanted: Version) -> anyhow::Result<()> {
    let asked = node.clone();
    let machine = crate::machines::with_talosctl(config, move |talosctl, _| async move {
        kit::talos::upgrade::machine(&talosctl, &asked).await
    })?;
    let talosconfig = kit::tool::talosconfig_path(config);
    let ip = node.ip;
    anyhow::ensure!(
        machine.release == wanted,
        "{} rebooted into {}, not {wanted}: the new release failed to boot and the machine fell back to its previous \
         boot entry (Talos does this silently; `talosctl upgrade --wait` still succeeds). See why with `talosctl \
         --talosconfig {} -n {ip} -e {ip} dmesg` and `… logs machined`; nothing else was upgraded",
        node.name,
        machine.release,
        talosconfig.display()
    );
    let configured = configured_schematic();
    anyhow::ensure!(
        machine.schematic.as_deref() == Some(configured.as_str()),
        "{} booted schematic {:?}, not {configured} (the one it was upgraded with)",
        node.name,
        machine.schematic
    );
    if node.role == kit::config::Role::ControlPlane {
        let asked = node.clone();
        crate::machines::with_talosctl(config, move |talosctl, _| async move {
            let started = Instant::now();
            while !kit::talos::etcd_status(&talosctl, &asked).await.is_ok_and(|status| status.healthy()) {
                anyhow::ensure!(
                    started.elapsed() < READY_TIMEOUT,
                    "{}'s etcd member is not a healthy voting member after {}s",
                    asked.name,
                    READY_TIMEOUT.as_secs()
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            anyhow::Ok(())
        })?;
    }
    api.runtime.block_on(node_ready(api.client, &node.name))
}

/// Waits for the Node's Ready condition; an API that does not answer meanwhile (the VIP
/// moving) is waited out the same way.
pub(crate) async fn node_ready(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        if nodes.get_opt(node).await.is_ok_and(|live| live.is_some_and(|live| kit::client::is_ready(&live))) {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < READY_TIMEOUT,
            "the Node {node} is not Ready after {}s",
            READY_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
