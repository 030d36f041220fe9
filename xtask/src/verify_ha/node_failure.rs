//! A node failure in the lab, the way the control plane sees one.
//!
//! A node fails, as far as Kubernetes can tell, by going silent: its kubelet stops renewing
//! the node's Lease in `kube-node-lease`. The node lifecycle controller notices when no
//! renewal came for `--node-monitor-grace-period` (50 s by default), marks the node `Unknown`
//! and taints it `node.kubernetes.io/unreachable:NoExecute`. Pods tolerate that taint for a
//! while (300 s unless they say otherwise), then they are evicted and their ReplicaSet
//! creates replacements on the nodes that remain.
//!
//! kwok stands in for the kubelets and renews every fake node's Lease, but it leaves alone a
//! Lease that another holder has taken and that has not expired. So the drill takes the
//! node's Lease (holder `talos-ha-verify-ha`, a long duration, the renew time left as kwok last
//! wrote it): no renewal comes any more, exactly as when a kubelet dies. Deleting the Lease
//! afterwards is the kubelet coming back: kwok creates a fresh one and the node turns Ready.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Toleration};
use kit::check::Check;
use kit::config::ClusterConfig;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use super::{seconds, time_until};

/// The drill's own namespace and probe app, deleted when it ends.
const NAMESPACE: &str = "talos-ha-drill";
const PROBE: &str = "drill-probe";
const PROBE_REPLICAS: usize = 3;
/// Who holds the failed node's Lease during the drill.
const HOLDER: &str = "talos-ha-verify-ha";
/// How long the probe pods stay on an unreachable node before they are evicted. Pods that do
/// not say get 300 s (the DefaultTolerationSeconds admission plugin), as the stage 100 apps
/// do; the probe says 10 s so the drill takes about a minute, not six.
const TOLERATION_SECONDS: i64 = 10;

/// Stops one worker's heartbeat, measures detection and rescheduling, then brings it back.
pub(super) async fn drill(client: &kube::Client, config: &ClusterConfig) -> anyhow::Result<Check> {
    // A drill interrupted earlier (Ctrl-C) left its node silent: give that heartbeat back first.
    for lease in leases(client).list(&ListParams::default()).await.context("listing kube-node-lease")? {
        let held = lease.spec.as_ref().and_then(|spec| spec.holder_identity.as_deref()) == Some(HOLDER);
        if let (true, Some(node)) = (held, lease.metadata.name.as_deref()) {
            tracing::info!("{node}'s Lease is still held by an interrupted drill; giving it back");
            restore_heartbeat(client, node).await?;
        }
    }
    let victim = deploy_probe(client, config).await?;
    tracing::info!(
        "stopping {victim}'s heartbeat; the node lifecycle controller waits out its grace period (about a minute)"
    );
    stop_heartbeat(client, &victim).await?;
    let measured = measure(client, &victim).await;
    let restored = restore_heartbeat(client, &victim).await;
    // The namespace goes with its pods; the ones left on the failed node are removed by kwok
    // now that it manages the node again.
    let _ = Api::<Namespace>::all(client.clone()).delete(NAMESPACE, &DeleteParams::default()).await;
    let back = restored?;
    Ok(match measured {
        Ok((not_ready, rescheduled)) => Check::pass(
            "node failure",
            format!(
                "{victim} went NotReady {} after its heartbeat stopped; its probe pods were evicted after the \
                 {TOLERATION_SECONDS}s toleration and all {PROBE_REPLICAS} ran on the other nodes after {}; \
                 it and its pods were Ready again {} after its heartbeat resumed",
                seconds(not_ready),
                seconds(rescheduled),
                seconds(back)
            ),
        ),
        Err(why) => Check::fail(
            "node failure",
            format!("{victim}: {why}"),
            "look at the control planes' kube-controller-manager logs in state/lab/twins/<node>/kubernetes/ (node lifecycle and taint eviction)",
        ),
    })
}

/// Runs the probe on the workers and returns the node one of its pods landed on.
async fn deploy_probe(client: &kube::Client, config: &ClusterConfig) -> anyhow::Result<String> {
    let workers = config.workers().count();
    anyhow::ensure!(workers >= 2, "a node failure drill needs two workers or more; the config has {workers}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // A namespace left Terminating by a drill a moment ago refuses new objects: let it go.
    let gone = time_until(Duration::from_secs(60), || async {
        namespaces
            .get_opt(NAMESPACE)
            .await
            .is_ok_and(|namespace| namespace.is_none_or(|namespace| namespace.metadata.deletion_timestamp.is_none()))
    })
    .await;
    anyhow::ensure!(gone.is_some(), "namespace {NAMESPACE} from an earlier drill is still terminating after 60s");
    let params = PatchParams::apply(HOLDER).force();
    namespaces
        .patch(NAMESPACE, &params, &Patch::Apply(workloads::pods::namespace(NAMESPACE, "restricted")))
        .await
        .with_context(|| format!("creating namespace {NAMESPACE}"))?;
    let deployment = probe_deployment();
    Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .patch(PROBE, &params, &Patch::Apply(&deployment))
        .await
        .context("creating the probe Deployment")?;
    let started = Instant::now();
    loop {
        let placed = ready_probe_nodes(client).await;
        if let (true, Some(first)) = (placed.len() >= PROBE_REPLICAS, placed.first()) {
            return Ok(first.clone());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the probe pods did not all turn Ready within 60s (Ready on {placed:?}); look at `kubectl -n {NAMESPACE} get pods`"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn probe_deployment() -> Deployment {
    let app = workloads::pods::App {
        namespace: NAMESPACE,
        name: PROBE,
        image: "registry.k8s.io/pause:3.10",
        command: Vec::new(),
        args: Vec::new(),
        replicas: PROBE_REPLICAS as i32,
        requests: ("5m", "8Mi"),
        non_root: true,
        volumes: Vec::new(),
        service_account: None,
        env: Vec::new(),
    };
    let mut deployment = app.deployment();
    let tolerations = ["node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"]
        .into_iter()
        .map(|key| Toleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoExecute".to_owned()),
            toleration_seconds: Some(TOLERATION_SECONDS),
            ..Toleration::default()
        })
        .collect();
    if let Some(pod) = deployment.spec.as_mut().and_then(|spec| spec.template.spec.as_mut()) {
        pod.tolerations = Some(tolerations);
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
        .filter(|pod| pod.metadata.deletion_timestamp.is_none() && kit::lab::pod_is_ready(pod))
        .filter_map(|pod| pod.spec.and_then(|spec| spec.node_name))
        .collect()
}

fn leases(client: &kube::Client) -> Api<Lease> {
    Api::namespaced(client.clone(), "kube-node-lease")
}

/// Takes the node's Lease from kwok: a holder of our own with an hour to run. The renew time
/// stays as kwok last wrote it, so the grace period counts from the last real heartbeat.
async fn stop_heartbeat(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    let taken = Lease {
        spec: Some(LeaseSpec {
            holder_identity: Some(HOLDER.to_owned()),
            lease_duration_seconds: Some(3600),
            ..LeaseSpec::default()
        }),
        ..Lease::default()
    };
    leases(client)
        .patch(node, &PatchParams::default(), &Patch::Merge(&taken))
        .await
        .with_context(|| format!("taking kube-node-lease/{node}"))?;
    Ok(())
}

/// How long until the node was NotReady, and until every probe pod ran Ready elsewhere.
async fn measure(client: &kube::Client, victim: &str) -> Result<(Duration, Duration), String> {
    let started = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let not_ready = time_until(Duration::from_secs(150), || async {
        nodes.get(victim).await.is_ok_and(|node| !kit::lab::is_ready(&node))
    })
    .await
    .ok_or("still Ready 150s after its heartbeat stopped")?;
    time_until(Duration::from_secs(120), || async {
        let placed = ready_probe_nodes(client).await;
        placed.len() >= PROBE_REPLICAS && placed.iter().all(|node| node != victim)
    })
    .await
    .ok_or_else(|| {
        format!("NotReady after {}, but its probe pods were not replaced within 120s", seconds(not_ready))
    })?;
    Ok((not_ready, started.elapsed()))
}

/// Gives the Lease back (kwok creates a fresh one) and waits for the node to be Ready, its
/// `unreachable` taints lifted and its running pods Ready again (the node lifecycle controller
/// marked them not Ready), so the cluster is whole when the drill ends.
async fn restore_heartbeat(client: &kube::Client, node: &str) -> anyhow::Result<Duration> {
    leases(client)
        .delete(node, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting kube-node-lease/{node} so kwok renews it again"))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let healed = |n: &Node| {
        let tainted =
            n.spec.as_ref().and_then(|spec| spec.taints.as_ref()).is_some_and(|taints| {
                taints.iter().any(|taint| taint.key.starts_with("node.kubernetes.io/unreachable"))
            });
        kit::lab::is_ready(n) && !tainted
    };
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node},status.phase=Running"));
    time_until(Duration::from_secs(90), || async {
        nodes.get(node).await.is_ok_and(|n| healed(&n))
            && pods.list(&on_node).await.is_ok_and(|listed| {
                listed.items.iter().filter(|pod| pod.metadata.deletion_timestamp.is_none()).all(kit::lab::pod_is_ready)
            })
    })
    .await
    .with_context(|| {
        format!(
            "{node} and its pods were not Ready (and the node untainted) within 90s of its Lease going back to kwok"
        )
    })
}
