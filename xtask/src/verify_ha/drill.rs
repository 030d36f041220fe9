//! The drill: one node rebooted through talosctl (a shutdown it comes back from by itself;
//! talosctl cannot power a machine on), and what the users of the cluster saw meanwhile. Every
//! second it asks the API through the VIP (and, on a real cluster, every Quick Access URL),
//! who holds the VIP and how many etcd members vote (quorum's count), and keeps for each the longest time
//! it did not answer. A worker's pods are replaced on the other nodes: the drill runs a probe
//! Deployment on the workers and times the replacement of the probe pod the node ran. Once the
//! node is back (a new boot, Ready) and everything answers, it waits for etcd to have every
//! member healthy and for Longhorn to rebuild the replicas the node held.
//!
//! The same code runs on the cluster in a box, where the node is a Talos twin: its reboot is
//! Talos's (the kubelet's graceful shutdown, its services stopped, back into its config). What
//! the box cannot show is said: the URLs' backends and Longhorn's volumes are not there.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kit::config::{ClusterConfig, Role};
use kit::report::Check;
use kit::talos::{TalosApi, Talosctl, etcd_health, healthy_members, vip_holders, voting_members};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use xtask::docs::Path;

use super::{seconds, time_until};

/// How long a node may take to reboot, and the cluster to heal after it.
const BACK_WITHIN: Duration = Duration::from_secs(15 * 60);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The drill's own namespace and probe app on the workers, deleted when it ends.
const NAMESPACE: &str = "talos-ha-drill";
const PROBE: &str = "drill-probe";
/// The field manager of what the drill creates.
pub const MANAGER: &str = "talos-ha-verify-ha";

/// The outages one probe saw, from samples taken over the drill.
#[derive(Debug, Default)]
pub struct Outage {
    failing_since: Option<Duration>,
    longest: Duration,
    last_sample: Duration,
}

impl Outage {
    /// One sample, `at` this long into the drill.
    pub fn record(&mut self, at: Duration, answered: bool) {
        self.last_sample = at;
        match (answered, self.failing_since) {
            (false, None) => self.failing_since = Some(at),
            (true, Some(since)) => {
                self.longest = self.longest.max(at - since);
                self.failing_since = None;
            }
            _ => {}
        }
    }

    /// The longest unbroken time without an answer, one still running counted to the last sample.
    pub fn longest(&self) -> Duration {
        self.failing_since.map_or(self.longest, |since| self.longest.max(self.last_sample - since))
    }

    pub fn answering(&self) -> bool {
        self.failing_since.is_none()
    }
}

/// The node's boot ID: it changes when the node has rebooted.
fn boot_id(node: &Node) -> Option<&str> {
    let info = node.status.as_ref().and_then(|status| status.node_info.as_ref());
    info.map(|info| info.boot_id.as_str()).filter(|id| !id.is_empty())
}

/// What the drill can watch on this target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// A real cluster: the Quick Access URLs and Longhorn's volumes too.
    Everything,
    /// The cluster in a box: the apps' pods are kwok's fakes (no URL answers) and there is no
    /// Longhorn engine, so neither is watched.
    ControlPlaneAndNodes,
}

/// What was seen of the VIP and etcd while a control plane was away.
#[derive(Debug, Default)]
struct ControlPlaneWatch {
    /// Who held the VIP before the drill.
    holder_before: Option<String>,
    /// When another control plane first held it.
    moved_after: Option<(Duration, String)>,
    /// The fewest voting etcd members in any sample (quorum counts them; a member between
    /// leaders votes though it is not healthy for that moment).
    fewest_voting: Option<usize>,
}

/// Reboots `node` and measures the outage it causes, then waits for etcd (and Longhorn) to heal.
pub(super) async fn reboot(
    client: &kube::Client,
    config: &ClusterConfig,
    talosctl: &Talosctl,
    node: &kit::config::Node,
    watch: Watch,
) -> anyhow::Result<Check> {
    let nodes: Api<Node> = Api::all(client.clone());
    let before = nodes.get(&node.name).await?;
    let booted = boot_id(&before);
    let ca = std::fs::read(config.state_dir().join("ca.crt")).ok();
    let mut apps: Vec<(&'static str, String, Outage)> = match watch {
        Watch::Everything => xtask::docs::endpoints(config)
            .into_iter()
            .filter(|endpoint| endpoint.path != Path::Cli)
            .map(|endpoint| (endpoint.name, format!("{}/", endpoint.url), Outage::default()))
            .collect(),
        Watch::ControlPlaneAndNodes => Vec::new(),
    };
    let mut api = Outage::default();
    let control_plane = node.role == Role::ControlPlane;
    let mut etcd_watch = ControlPlaneWatch::default();
    if control_plane {
        etcd_watch.holder_before = vip_holders(talosctl, config).await.into_iter().next();
    }
    let probe = if control_plane { None } else { Some(deploy_probe(client, config, &node.name).await?) };

    // Not talosctl's own wait: the drill samples the cluster every second while the node is
    // away, and judges the node back by its own measures (rebooted, Ready, etcd healthy).
    talosctl.ask(node, &["reboot", "--wait=false"], Duration::from_secs(30)).await?;
    let started = Instant::now();
    tracing::info!("{} is rebooting; sampling the API, the VIP and etcd each second until it is back", node.name);
    let (mut back, mut seen_not_ready, mut replaced) = (None, false, None);
    while started.elapsed() < BACK_WITHIN {
        let at = started.elapsed();
        let answered = tokio::time::timeout(Duration::from_secs(3), client.apiserver_version()).await;
        api.record(at, answered.is_ok_and(|version| version.is_ok()));
        let probes = apps.iter().map(|(_, url, _)| {
            let (url, ca) = (url.clone(), ca.clone());
            // An answer below 500 means a pod served it; 502/503 mean the proxy had no backend.
            tokio::task::spawn_blocking(move || kit::http::get(&url, ca.as_deref(), &[]).is_ok_and(|a| a.status < 500))
        });
        let answers = futures::future::join_all(probes).await;
        for ((_, _, outage), answered) in apps.iter_mut().zip(answers) {
            outage.record(at, answered.unwrap_or(false));
        }
        if control_plane {
            // A member still starting can keep `etcd status` waiting for seconds: such a sample
            // is dropped, so the API and the node are still asked every second or so.
            let sampled = sample_control_planes(talosctl, config, node, at, &mut etcd_watch);
            let _ = tokio::time::timeout(Duration::from_secs(3), sampled).await;
        }
        if let (Some(probe), None) = (&probe, replaced) {
            let placed = ready_probe_nodes(client).await;
            if placed.len() >= probe.replicas && placed.iter().all(|placed| *placed != node.name) {
                replaced = Some(at);
            }
        }
        if back.is_none() {
            let now = nodes.get(&node.name).await.ok();
            seen_not_ready |= now.as_ref().is_some_and(|now| !kit::client::is_ready(now));
            // A new boot ID proves the reboot; without one, Ready again after NotReady does.
            let rebooted = |now: &Node| booted.map_or(seen_not_ready, |before| boot_id(now) != Some(before));
            if now.as_ref().is_some_and(|now| rebooted(now) && kit::client::is_ready(now)) {
                back = Some(at);
                tracing::info!("{} is back after {}", node.name, seconds(at));
            }
        }
        // Done waiting for the VIP unless the drilled node held it and nobody took it over yet.
        let held_by_node = etcd_watch.holder_before.as_deref() == Some(node.name.as_str());
        let settled = !held_by_node || etcd_watch.moved_after.is_some();
        let waiting_for_probe = probe.is_some() && replaced.is_none();
        if back.is_some()
            && settled
            && !waiting_for_probe
            && api.answering()
            && apps.iter().all(|(_, _, outage)| outage.answering())
        {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    if probe.is_some() {
        // The namespace goes with its pods, the terminated ones on the rebooted node too.
        let _ = Api::<Namespace>::all(client.clone()).delete(NAMESPACE, &DeleteParams::default()).await;
    }
    let answered_again = started.elapsed();
    let outages: String =
        apps.iter().map(|(name, _, outage)| format!(", {name} {}", seconds(outage.longest()))).collect();
    let Some(back) = back else {
        return Ok(Check::fail(
            "drill",
            format!(
                "{} was not back within {}; longest outages: API {}{outages}",
                node.name,
                seconds(BACK_WITHIN),
                seconds(api.longest())
            ),
            format!("talosctl -n {} dmesg (or the machine's console)", node.ip),
        ));
    };
    let mut measured = vec![format!(
        "{} back (rebooted, Ready) after {}; longest time without an answer: API through the VIP {}{outages}; \
         everything answered again after {}",
        node.name,
        seconds(back),
        seconds(api.longest()),
        seconds(answered_again)
    )];
    let mut failures = Vec::new();
    let control_planes = config.control_planes().count();
    if control_plane {
        let quorum = kit::talos::quorum(control_planes);
        match etcd_watch.fewest_voting {
            Some(fewest) if fewest >= quorum => measured.push(format!(
                "etcd kept its quorum throughout (never fewer than {fewest} of {control_planes} voting{})",
                if fewest == control_planes {
                    // A sample takes a second or two, and one that outlasts its 3 s is dropped.
                    format!("; no sample caught {}'s member away: its reboot fell between them", node.name)
                } else {
                    String::new()
                }
            )),
            Some(fewest) => {
                failures.push(format!("etcd lost its quorum ({fewest} of {control_planes} voting at worst)"))
            }
            None => failures.push("etcd's health was never read during the drill".to_owned()),
        }
        match (&etcd_watch.holder_before, &etcd_watch.moved_after) {
            (Some(holder), Some((after, to))) if holder == &node.name => {
                measured.push(format!("the VIP moved from {holder} to {to} after {}", seconds(*after)))
            }
            (Some(holder), _) if holder != &node.name => measured.push(format!("the VIP stayed on {holder}")),
            (Some(holder), _) => failures.push(format!("the VIP held by {holder} found no new holder")),
            (None, _) => failures.push("nobody held the VIP before the drill".to_owned()),
        }
    }
    if let Some(probe) = &probe {
        match replaced {
            Some(after) => measured.push(format!(
                "its probe pod was replaced: all {} Ready on the other workers after {}",
                probe.replicas,
                seconds(after)
            )),
            None => failures.push("its probe pod was not replaced on another worker".to_owned()),
        }
    }
    let etcd = time_until(BACK_WITHIN, || async {
        healthy_members(&etcd_health(talosctl, config).await).len() == control_planes
    })
    .await;
    match etcd {
        Some(after) => measured.push(format!("etcd had all {control_planes} members healthy {} later", seconds(after))),
        None => failures.push(format!("etcd did not have every member healthy within {}", seconds(BACK_WITHIN))),
    }
    if watch == Watch::Everything {
        let volumes = time_until(BACK_WITHIN, || async {
            longhorn::volume::volume_health(client)
                .await
                .is_ok_and(|volumes| volumes.iter().all(|volume| volume.robustness == "healthy"))
        })
        .await;
        match volumes {
            Some(after) => measured.push(format!("Longhorn volumes healthy {} later", seconds(after))),
            None => failures.push(format!("Longhorn volumes were not healthy within {}", seconds(BACK_WITHIN))),
        }
    }
    Ok(if failures.is_empty() {
        Check::pass("drill", measured.join("; "))
    } else {
        Check::fail(
            "drill",
            format!("{}; but {}", measured.join("; "), failures.join("; ")),
            "cargo xtask verify-ha (read-only) shows which step is still failing",
        )
    })
}

/// One sample of the control planes while one is away: the VIP's holder, and how many etcd
/// members answer as voters (each asked about its own).
async fn sample_control_planes(
    talosctl: &Talosctl,
    config: &ClusterConfig,
    node: &kit::config::Node,
    at: Duration,
    watch: &mut ControlPlaneWatch,
) {
    let (holders, health) = futures::join!(vip_holders(talosctl, config), etcd_health(talosctl, config));
    let voting = voting_members(&health).len();
    watch.fewest_voting = Some(watch.fewest_voting.map_or(voting, |fewest| fewest.min(voting)));
    if watch.moved_after.is_none()
        && watch.holder_before.as_deref() == Some(node.name.as_str())
        && let [holder] = holders.as_slice()
        && *holder != node.name
    {
        tracing::info!("the VIP moved to {holder} after {}", seconds(at));
        watch.moved_after = Some((at, holder.clone()));
    }
}

/// The probe on the workers: one pod per worker where it can (a preferred anti-affinity), so
/// the drilled worker runs one.
struct Probe {
    replicas: usize,
}

/// Runs the probe and waits until every pod is Ready, one of them on `victim`.
async fn deploy_probe(client: &kube::Client, config: &ClusterConfig, victim: &str) -> anyhow::Result<Probe> {
    let replicas = config.workers().count();
    anyhow::ensure!(replicas >= 2, "a worker drill needs two workers or more; the config has {replicas}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // A namespace left Terminating by a drill a moment ago refuses new objects: let it go.
    let gone = time_until(Duration::from_secs(60), || async {
        namespaces.get_opt(NAMESPACE).await.is_ok_and(|namespace| namespace.is_none())
    })
    .await;
    anyhow::ensure!(gone.is_some(), "namespace {NAMESPACE} from an earlier drill is still terminating after 60s");
    let params = PatchParams::apply(MANAGER).force();
    namespaces
        .patch(NAMESPACE, &params, &Patch::Apply(workloads::pods::namespace(NAMESPACE, "restricted")))
        .await
        .with_context(|| format!("creating namespace {NAMESPACE}"))?;
    Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .patch(PROBE, &params, &Patch::Apply(&probe_deployment(replicas)))
        .await
        .context("creating the probe Deployment")?;
    let placed = time_until(Duration::from_secs(90), || async {
        let placed = ready_probe_nodes(client).await;
        placed.len() >= replicas && placed.iter().any(|node| node == victim)
    })
    .await;
    anyhow::ensure!(
        placed.is_some(),
        "the probe pods did not all turn Ready, one on {victim}, within 90s (Ready on {:?}); look at `kubectl -n {NAMESPACE} get pods -o wide`",
        ready_probe_nodes(client).await
    );
    Ok(Probe { replicas })
}

fn probe_deployment(replicas: usize) -> Deployment {
    let app = workloads::pods::App {
        namespace: NAMESPACE,
        name: PROBE,
        image: "registry.k8s.io/pause:3.10",
        command: Vec::new(),
        args: Vec::new(),
        replicas: i32::try_from(replicas).unwrap_or(i32::MAX),
        requests: ("5m", "8Mi"),
        non_root: true,
        volumes: Vec::new(),
        service_account: None,
        env: Vec::new(),
    };
    let mut deployment = app.deployment();
    let spread = serde_json::json!({
        "podAntiAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {
                "labelSelector": { "matchLabels": { "app.kubernetes.io/name": PROBE } },
                "topologyKey": "kubernetes.io/hostname",
            },
        }]},
    });
    if let Some(pod) = deployment.spec.as_mut().and_then(|spec| spec.template.spec.as_mut()) {
        pod.affinity = serde_json::from_value(spread).ok();
    }
    deployment
}

/// The nodes of the probe pods that are Ready and not being deleted, one entry per pod.
async fn ready_probe_nodes(client: &kube::Client) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let Ok(listed) = pods.list(&ListParams::default()).await else { return Vec::new() };
    listed
        .items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none() && kit::client::pod_is_ready(pod))
        .filter_map(|pod| pod.spec.and_then(|spec| spec.node_name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_the_longest_unbroken_run_without_an_answer() {
        let mut outage = Outage::default();
        let samples = [(0, true), (1, false), (2, false), (3, true), (4, false), (5, true), (6, false), (9, false)];
        for (at, answered) in samples {
            outage.record(Duration::from_secs(at), answered);
        }
        // 1 → 3 (2 s), 4 → 5 (1 s), and 6 → 9 still running (3 s so far).
        assert_eq!(outage.longest(), Duration::from_secs(3));
        assert!(!outage.answering());
        outage.record(Duration::from_secs(10), true);
        assert_eq!(outage.longest(), Duration::from_secs(4));
        assert!(outage.answering());
        assert_eq!(Outage::default().longest(), Duration::ZERO, "never down");
    }
}
