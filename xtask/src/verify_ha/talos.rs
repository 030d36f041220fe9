//! The guide's steps: read-only checks of the cluster (etcd, the VIP, the API through it,
//! spread workloads, Longhorn replicas), and on request one real drill (`drill.rs`), refused
//! when it would cost etcd its majority or a volume its last replica. The same steps run on a
//! real cluster and on the cluster in a box (`drill::Watch` says what the box cannot show).

use std::collections::BTreeSet;

use std::io::Write as _;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kit::config::{ClusterConfig, Role};
use kit::report::Check;
use kube::api::{Api, ListParams};
use longhorn::volume::VolumeHealth;

use super::drill::Watch;
use super::{VerifyHaArgs, drill, report};
use kit::talos::{Talosctl, etcd_check, vip_holders};

/// Where the API is and how long to wait for it when it stops answering (`--api-wait`).
#[derive(Clone, Copy)]
pub(super) struct ApiWait<'a> {
    pub kubeconfig: &'a std::path::Path,
    pub wait: std::time::Duration,
}

/// How long one question to the API through the VIP may take.
const API_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a drill on `node` must not run, if it must not: losing it would lose etcd's majority
/// (a control plane while not all members are healthy), or a volume could lose its last
/// healthy replica (one already degraded, or one whose running replicas are all on `node`).
pub fn drill_refusal(
    node: &kit::config::Node,
    healthy_members: usize,
    control_planes: usize,
    volumes: &[VolumeHealth],
) -> Option<String> {
    let quorum = kit::talos::quorum(control_planes);
    if node.role == Role::ControlPlane && healthy_members.saturating_sub(1) < quorum {
        return Some(format!(
            "{} is an etcd member and only {healthy_members} of {control_planes} are healthy: losing it leaves fewer than {quorum}, and etcd stops",
            node.name
        ));
    }
    let at_risk: Vec<&str> = volumes
        .iter()
        .filter(|volume| volume.robustness != "healthy" || volume.nodes.iter().all(|holder| *holder == node.name))
        .map(|volume| volume.name.as_str())
        .collect();
    if !at_risk.is_empty() {
        return Some(format!(
            "volumes {} are degraded or have their only running replica on {}: losing it may take their last healthy replica",
            at_risk.join(", "),
            node.name
        ));
    }
    None
}

pub(super) async fn steps(
    client: &kube::Client,
    api: ApiWait<'_>,
    config: &ClusterConfig,
    args: &VerifyHaArgs,
    watch: Watch,
    out: &mut impl std::io::Write,
) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let talosctl = Talosctl::find(config).await?;
    let control_planes = config.control_planes().count();
    // Each control plane is asked about its own member: a member that is down or rebooting
    // is still listed by `etcd members`, so membership is never taken for health.
    let (check, healthy) = etcd_check(&talosctl, config).await;
    report("1. etcd is healthy on every control plane", "a majority survives losing one control plane", &check, out)?;
    checks.push(check);

    let holders = vip_holders(&talosctl, config).await;
    let vip = config.network.vip;
    let check = match holders.as_slice() {
        [holder] => Check::pass("vip", format!("{vip} is held by {holder}")),
        [] => Check::fail("vip", format!("no control plane holds {vip}"), "the VIP follows etcd: check step 1"),
        several => Check::fail(
            "vip",
            format!("{vip} is held by {} at once", several.join(", ")),
            "a split network: check the control planes' links",
        ),
    };
    report("2. one control plane holds the VIP", "the API address moves when its holder goes away", &check, out)?;
    checks.push(check);

    // A VIP nobody holds is a silent address (no ARP answer): each question gets a deadline, and
    // the steps that need the API are not asked when it does not answer.
    // An API that stops answering (the VIP moving after a control plane's crash) is waited
    // for up to `--api-wait`, as every command waits for it; a silence is a timeout to wait out.
    let version = kit::client::ride_out(api.kubeconfig, api.wait, || async {
        match tokio::time::timeout(API_DEADLINE, client.apiserver_version()).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer at {} within {}s", config.api_endpoint(), API_DEADLINE.as_secs()),
            )
            .into()),
        }
    })
    .await;
    let check = match version {
        Ok(version) => Check::pass(
            "api via VIP",
            format!("Kubernetes {} answers at {}", version.git_version, config.api_endpoint()),
        ),
        Err(error) if kit::client::out_of_reach(&error) => Check::fail(
            "api via VIP",
            format!("{error:#}"),
            "the VIP needs a healthy etcd (step 1) and a control plane to hold it (step 2)",
        ),
        Err(error) => Check::fail("api via VIP", format!("{error:#}"), "cargo xtask status shows who holds the VIP"),
    };
    let api_answers = check.status == kit::report::Status::Pass;
    report("3. the API answers through the VIP", "clients need one address that survives a node", &check, out)?;
    checks.push(check);
    if !api_answers {
        for (step, name) in
            [("4. workloads are spread over nodes", "spread"), ("5. volumes keep healthy replicas", "volumes")]
        {
            let check = Check::fail(name, "not asked: the API does not answer (step 3)", "fix step 3 first");
            report(step, "needs the API", &check, out)?;
            checks.push(check);
        }
        anyhow::ensure!(args.drill.is_none(), "refusing the drill: the API does not answer through the VIP");
        return Ok(checks);
    }

    let check = tokio::time::timeout(API_DEADLINE * 3, spread_check(client))
        .await
        .unwrap_or_else(|_| Ok(Check::fail("spread", "the API stopped answering", "run verify-ha again")))?;
    report("4. workloads are spread over nodes", "losing any one node keeps each app served", &check, out)?;
    checks.push(check);

    let volumes = match watch {
        Watch::Everything => longhorn::volume::volume_health(client).await,
        Watch::ControlPlaneAndNodes => Ok(Vec::new()),
    };
    let wanted = config.workers().count().min(3);
    let check = match (&volumes, watch) {
        (_, Watch::ControlPlaneAndNodes) => Check::not_checkable_in_lab(
            "volumes",
            "Longhorn's engine needs real disks and iSCSI on the workers; the box's machines have neither",
        ),
        (Ok(volumes), _) => replicas_check(volumes, wanted),
        (Err(error), _) => {
            Check::fail("volumes", format!("{error:#}"), "install stage 06: cargo run -p longhorn -- apply")
        }
    };
    report("5. volumes keep healthy replicas on distinct nodes", "losing a node loses no data", &check, out)?;
    checks.push(check);

    if let Some(drill) = &args.drill {
        let name = drill.strip_prefix("node=").unwrap_or(drill);
        let node = config
            .nodes
            .iter()
            .find(|node| node.name == name)
            .with_context(|| format!("--drill node={name}: no such node in the config"))?;
        let volumes = volumes.context("the drill needs Longhorn's volume health first")?;
        if let Some(why) = drill_refusal(node, healthy, control_planes, &volumes) {
            anyhow::bail!("refusing the drill: {why}");
        }
        if !args.yes {
            // A question to the person at the terminal: stderr, so stdout stays the report.
            let mut stderr = std::io::stderr();
            write!(stderr, "\nReboot {} ({}) now to measure the outage? [y/N] ", node.name, node.ip)?;
            stderr.flush()?;
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            anyhow::ensure!(answer.trim().eq_ignore_ascii_case("y"), "drill cancelled");
        }
        let check = drill::reboot(client, config, &talosctl, node, watch).await?;
        report(&format!("6. drill: reboot {}", node.name), "the cluster rides out a node going away", &check, out)?;
        checks.push(check);
    }
    Ok(checks)
}

/// Every volume healthy, with running replicas on `wanted` distinct nodes.
fn replicas_check(volumes: &[VolumeHealth], wanted: usize) -> Check {
    let short: Vec<String> = volumes
        .iter()
        .filter(|volume| volume.robustness != "healthy" || volume.nodes.len() < wanted)
        .map(|volume| format!("{} ({}, replicas on {:?})", volume.name, volume.robustness, volume.nodes))
        .collect();
    if short.is_empty() {
        let nodes: BTreeSet<&String> = volumes.iter().flat_map(|volume| &volume.nodes).collect();
        Check::pass(
            "volumes",
            format!("{} volume(s) healthy, each with replicas on {wanted} nodes (of {nodes:?})", volumes.len()),
        )
    } else {
        Check::fail(
            "volumes",
            format!("not healthy on {wanted} nodes: {}", short.join("; ")),
            "Longhorn rebuilds replicas on its own; look at `kubectl -n longhorn-system get volumes,replicas`",
        )
    }
}

/// Every multi-replica Deployment of the stages has Ready pods on more than one node.
async fn spread_check(client: &kube::Client) -> anyhow::Result<Check> {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let (mut single_node, mut checked) = (Vec::new(), 0);
    for deployment in deployments.list(&ListParams::default()).await? {
        let replicas = deployment.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(1);
        let selector = deployment.spec.as_ref().and_then(|spec| spec.selector.match_labels.clone()).unwrap_or_default();
        // The stages' own, applied under a `talos-ha-<stage>` field manager; Talos's CoreDNS
        // (preferred anti-affinity only) is Talos's to place, and a drill's probe is no app.
        let ours = deployment.metadata.managed_fields.iter().flatten().any(|fields| {
            fields
                .manager
                .as_deref()
                .is_some_and(|manager| manager.starts_with("talos-ha-") && manager != drill::MANAGER)
        });
        if replicas < 2 || selector.is_empty() || !ours {
            continue;
        }
        checked += 1;
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
        let listed = Api::<Pod>::namespaced(client.clone(), &namespace)
            .list(&ListParams::default().labels(&labels.join(",")))
            .await?;
        // Ready pods only: a Pending or Failed one on another node serves nothing.
        let nodes: std::collections::BTreeSet<String> = listed
            .items
            .iter()
            .filter(|pod| kit::client::pod_is_ready(pod))
            .filter_map(|pod| pod.spec.as_ref().and_then(|spec| spec.node_name.clone()))
            .collect();
        if nodes.len() < 2 {
            single_node.push(format!("{namespace}/{}", deployment.metadata.name.clone().unwrap_or_default()));
        }
    }
    Ok(if single_node.is_empty() {
        Check::pass("spread", format!("each of the stages' {checked} Deployment(s) with 2+ replicas runs on 2+ nodes"))
    } else {
        Check::fail(
            "spread",
            format!("on one node only: {}", single_node.join(", ")),
            "add a topology spread constraint",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(name: &str, robustness: &str, nodes: &[&str]) -> VolumeHealth {
        VolumeHealth {
            name: name.to_owned(),
            robustness: robustness.to_owned(),
            nodes: nodes.iter().map(|node| (*node).to_owned()).collect(),
        }
    }

    #[test]
    fn a_drill_that_would_lose_quorum_or_a_last_replica_is_refused() {
        let config = ClusterConfig::parse(include_str!("../../../cluster.yaml"), std::path::Path::new("cluster.yaml"))
            .unwrap_or_else(|error| panic!("{error}"));
        let (cp01, wk01) = (&config.nodes[0], &config.nodes[3]);
        assert_eq!(drill_refusal(cp01, 3, 3, &[]), None, "3 of 3 healthy: losing one keeps 2, a majority");
        let refused = drill_refusal(cp01, 2, 3, &[]).expect("2 of 3 healthy: losing one leaves 1");
        assert!(refused.contains("fewer than 2"), "{refused}");
        assert_eq!(drill_refusal(wk01, 2, 3, &[]), None, "a worker holds no etcd member");
        let spread = volume("pvc-1", "healthy", &["wk01", "wk02", "wk03"]);
        assert_eq!(drill_refusal(wk01, 3, 3, &[spread]), None, "two replicas remain elsewhere");
        let refused = drill_refusal(wk01, 3, 3, &[volume("pvc-2", "degraded", &["wk02"])]).expect("degraded");
        assert!(refused.contains("pvc-2"), "{refused}");
        let refused = drill_refusal(wk01, 3, 3, &[volume("pvc-3", "healthy", &["wk01"])]).expect("its only replica");
        assert!(refused.contains("pvc-3"), "{refused}");
    }

    #[test]
    fn volumes_pass_only_when_healthy_on_enough_distinct_nodes() {
        let whole = volume("pvc-1", "healthy", &["wk01", "wk02", "wk03"]);
        assert_eq!(replicas_check(&[whole], 3).status, kit::report::Status::Pass);
        let rebuilding = volume("pvc-1", "degraded", &["wk01", "wk02"]);
        let check = replicas_check(&[rebuilding], 3);
        assert_eq!(check.status, kit::report::Status::Fail);
        assert!(check.reason.contains("pvc-1 (degraded"), "{}", check.reason);
        assert_eq!(replicas_check(&[], 3).status, kit::report::Status::Pass, "no volume: nothing to lose");
    }
}
