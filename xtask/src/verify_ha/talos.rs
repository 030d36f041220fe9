//! The talos target: read-only checks of a real cluster, and on request one real drill
//! (`--drill node=NAME`), refused when it would cost etcd its majority or a volume its last
//! replica.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kit::check::Check;
use kit::config::{ClusterConfig, Role};
use kube::api::{Api, ListParams};

use super::{VerifyHaArgs, report, seconds, time_until};

/// Why a drill on `node` must not run, if it must not: losing it would lose etcd's majority
/// (a control plane while not all members are healthy), or a volume already missing a
/// replica could lose its last healthy one.
pub fn drill_refusal(
    node: &kit::config::Node,
    healthy_members: usize,
    control_planes: usize,
    degraded_volumes: &[String],
) -> Option<String> {
    let quorum = control_planes / 2 + 1;
    if node.role == Role::ControlPlane && healthy_members.saturating_sub(1) < quorum {
        return Some(format!(
            "{} is an etcd member and only {healthy_members} of {control_planes} are healthy: losing it leaves fewer than {quorum}, and etcd stops",
            node.name
        ));
    }
    if !degraded_volumes.is_empty() {
        return Some(format!(
            "volumes {} are already degraded: losing {} may take their last healthy replica",
            degraded_volumes.join(", "),
            node.name
        ));
    }
    None
}

pub(super) async fn steps(
    client: &kube::Client,
    config: &ClusterConfig,
    args: &VerifyHaArgs,
    out: &mut impl std::io::Write,
) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let talosctl = kit::tool::Tool::talosctl(config.versions.talos).await?;
    let talosconfig = kit::tool::talosconfig_path(config);
    let first = config.control_planes().next().context("the config has no control plane")?;
    let timeout = Duration::from_secs(15);
    let members = talosctl
        .run(kit::tool::talos_node_args(&talosconfig, first, &["etcd", "members"]), timeout)
        .await?
        .ok("talosctl etcd members");
    let healthy =
        members.as_ref().map(|table| table.lines().skip(1).filter(|line| !line.trim().is_empty()).count()).unwrap_or(0);
    let control_planes = config.control_planes().count();
    let check = if healthy == control_planes {
        Check::pass("etcd", format!("{healthy} of {control_planes} members"))
    } else {
        Check::fail(
            "etcd",
            format!("{healthy} of {control_planes} members ({members:?})"),
            "talosctl -n <cp> service etcd",
        )
    };
    report("1. etcd has every member", "a majority survives losing one control plane", &check, out)?;
    checks.push(check);

    let api = client.apiserver_version().await;
    let check = match api {
        Ok(version) => Check::pass(
            "api via VIP",
            format!("Kubernetes {} answers at {}", version.git_version, config.api_endpoint()),
        ),
        Err(error) => Check::fail("api via VIP", format!("{error}"), "cargo xtask status shows who holds the VIP"),
    };
    report("2. the API answers through the VIP", "clients need one address that survives a node", &check, out)?;
    checks.push(check);

    let check = spread_check(client).await?;
    report("3. workloads are spread over nodes", "losing any one node keeps each app served", &check, out)?;
    checks.push(check);

    if let Some(drill) = &args.drill {
        let name = drill.strip_prefix("node=").unwrap_or(drill);
        let node = config
            .nodes
            .iter()
            .find(|node| node.name == name)
            .with_context(|| format!("--drill node={name}: no such node in the config"))?;
        if let Some(why) = drill_refusal(node, healthy, control_planes, &degraded_volumes(client).await?) {
            anyhow::bail!("refusing the drill: {why}");
        }
        if !args.yes {
            write!(out, "\nReboot {} ({}) now to measure the outage? [y/N] ", node.name, node.ip)?;
            out.flush()?;
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            anyhow::ensure!(answer.trim().eq_ignore_ascii_case("y"), "drill cancelled");
        }
        talosctl
            .run(kit::tool::talos_node_args(&talosconfig, node, &["reboot", "--wait=false"]), timeout)
            .await?
            .ok("talosctl reboot")?;
        let started = Instant::now();
        let outage = time_until(Duration::from_secs(120), || async {
            tokio::time::timeout(Duration::from_secs(3), client.apiserver_version()).await.map_or(true, |r| r.is_err())
        })
        .await;
        let back = time_until(Duration::from_secs(900), || async {
            Api::<Node>::all(client.clone()).get(&node.name).await.is_ok_and(|n| kit::lab::is_ready(&n))
        })
        .await;
        let check = match back {
            Some(_) => Check::pass(
                "drill",
                format!(
                    "{} rebooted; the API through the VIP {}; the node was Ready again after {}",
                    node.name,
                    outage.map_or("never stopped answering".to_owned(), |_| "had an outage".to_owned()),
                    seconds(started.elapsed())
                ),
            ),
            None => {
                Check::fail("drill", format!("{} did not come back within 15 min", node.name), "talosctl -n <ip> dmesg")
            }
        };
        report(&format!("4. drill: reboot {}", node.name), "the cluster rides out a node going away", &check, out)?;
        checks.push(check);
    }
    Ok(checks)
}

/// Longhorn volumes that are not healthy (a replica missing or rebuilding).
async fn degraded_volumes(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let resource = kube::discovery::ApiResource {
        group: "longhorn.io".into(),
        version: "v1beta2".into(),
        api_version: "longhorn.io/v1beta2".into(),
        kind: "Volume".into(),
        plural: "volumes".into(),
    };
    let volumes: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), "longhorn-system", &resource);
    let listed = match volumes.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(), // Longhorn not installed
        Err(error) => return Err(error).context("listing Longhorn volumes"),
    };
    Ok(listed
        .into_iter()
        .filter(|volume| volume.data["status"]["robustness"] != "healthy")
        .filter_map(|volume| volume.metadata.name)
        .collect())
}

/// Every multi-replica Deployment of the stages runs on more than one node.
async fn spread_check(client: &kube::Client) -> anyhow::Result<Check> {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let mut single_node = Vec::new();
    for deployment in deployments.list(&ListParams::default()).await? {
        let replicas = deployment.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(1);
        let selector = deployment.spec.as_ref().and_then(|spec| spec.selector.match_labels.clone()).unwrap_or_default();
        if replicas < 2 || selector.is_empty() {
            continue;
        }
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
        let listed = Api::<Pod>::namespaced(client.clone(), &namespace)
            .list(&ListParams::default().labels(&labels.join(",")))
            .await?;
        let nodes: std::collections::BTreeSet<String> =
            listed.items.iter().filter_map(|pod| pod.spec.as_ref().and_then(|spec| spec.node_name.clone())).collect();
        if nodes.len() < 2 {
            single_node.push(format!("{namespace}/{}", deployment.metadata.name.clone().unwrap_or_default()));
        }
    }
    Ok(if single_node.is_empty() {
        Check::pass("spread", "every Deployment with 2+ replicas runs on 2+ nodes")
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

    #[test]
    fn a_drill_that_would_lose_quorum_or_a_last_replica_is_refused() {
        let config = ClusterConfig::parse(include_str!("../../../cluster.yaml"), std::path::Path::new("cluster.yaml"))
            .unwrap_or_else(|error| panic!("{error}"));
        let (cp01, wk01) = (&config.nodes[0], &config.nodes[3]);
        assert_eq!(drill_refusal(cp01, 3, 3, &[]), None, "3 of 3 healthy: losing one keeps 2, a majority");
        let refused = drill_refusal(cp01, 2, 3, &[]).expect("2 of 3 healthy: losing one leaves 1");
        assert!(refused.contains("fewer than 2"), "{refused}");
        assert_eq!(drill_refusal(wk01, 2, 3, &[]), None, "a worker holds no etcd member");
        let refused = drill_refusal(wk01, 3, 3, &["pvc-1".to_owned()]).expect("a last replica");
        assert!(refused.contains("pvc-1"), "{refused}");
    }
}
