//! `cargo xtask verify-ha`: the seed's HA verification guide as a tool. Each step prints
//! what it proves. On the talos target it is read-only unless `--drill node=<name>` is given;
//! on the lab it runs a real drill: etcd members killed and restored, a node's heartbeat
//! stopped, each with measured times.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kit::check::{Check, Status};
use kit::config::{ClusterConfig, Role};
use kit::stage::{GlobalArgs, Target, default_kubeconfig, exit, load_config};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(clap::Args, Debug)]
pub struct VerifyHaArgs {
    /// Take one node down for real and measure the outage, e.g. `--drill node=wk02` (talos
    /// target; the lab always drills).
    #[arg(long, value_name = "node=NAME")]
    pub drill: Option<String>,
    /// Do not ask before a drill (for scripts).
    #[arg(long)]
    pub yes: bool,
}

/// One step of the guide: what it shows, and how it went.
fn report(step: &str, proves: &str, check: &Check, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    writeln!(out, "\n== {step}\n   proves: {proves}\n   {check}")?;
    Ok(())
}

pub fn run(global: &GlobalArgs, args: &VerifyHaArgs) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let Some(config) = load_config(&global.config, global.output, &mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    let target = global.target();
    let kubeconfig = global.kubeconfig.clone().unwrap_or_else(|| default_kubeconfig(&config.state_dir(), target));
    let checks = tokio::runtime::Runtime::new()?.block_on(async {
        let client = kit::lab::client_from_kubeconfig(&kubeconfig).await?;
        match target {
            Target::Lab => lab_drill(&client, &config, &mut stdout).await,
            Target::Talos => talos_steps(&client, &config, args, &mut stdout).await,
        }
    })?;
    let failed = checks.iter().filter(|check| check.status == Status::Fail).count();
    writeln!(stdout, "\n{} step(s), {failed} failed", checks.len())?;
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::FAILED) })
}

/// Polls `probe` every 250 ms until it returns true; the time it took, or `None` on timeout.
async fn time_until<F, Fut>(timeout: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < timeout {
        if probe().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// `/readyz/etcd`: the API server's own view of whether etcd answers.
async fn etcd_ready(client: &kube::Client) -> bool {
    let request = http::Request::get("/readyz/etcd").body(Vec::new());
    match request {
        Ok(request) => {
            tokio::time::timeout(Duration::from_secs(5), client.request_text(request)).await.is_ok_and(|r| r.is_ok())
        }
        Err(_) => false,
    }
}

/// A write that must be committed by etcd (a ConfigMap update), within `timeout`.
async fn write(client: &kube::Client, value: &str, timeout: Duration) -> bool {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "talos-ha-verify-ha" },
        "data": { "written": value },
    });
    let params = PatchParams::apply("talos-ha-verify-ha").force();
    tokio::time::timeout(timeout, maps.patch("talos-ha-verify-ha", &params, &Patch::Apply(&patch)))
        .await
        .is_ok_and(|result| result.is_ok())
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

async fn lab_drill(
    client: &kube::Client,
    config: &ClusterConfig,
    out: &mut impl std::io::Write,
) -> anyhow::Result<Vec<Check>> {
    let lab = xtask::lab::Lab::new(config, xtask::lab::DEFAULT_PORT_BASE);
    let root = xtask::workspace_root();
    let mut checks = Vec::new();
    let kill_member = |name: &str| -> anyhow::Result<()> {
        let (_, pid) = lab
            .running_pids()
            .into_iter()
            .find(|(process, _)| process == name)
            .with_context(|| format!("{name} is not running: start the lab with `cargo xtask lab up`"))?;
        kill(Pid::from_raw(pid), Signal::SIGKILL).with_context(|| format!("killing {name}"))
    };

    // Start from a whole cluster: every member healthy (a member restarted a moment ago may
    // still be catching up), and writes committing.
    let whole = time_until(Duration::from_secs(60), || async {
        let status = lab.status().await;
        status.iter().filter(|c| c.name.starts_with("etcd-")).all(|c| c.healthy)
            && write(client, "before", Duration::from_secs(5)).await
    })
    .await;
    anyhow::ensure!(whole.is_some(), "the lab's etcd is not whole: see `cargo xtask lab status`");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 1. One of three etcd members dies: a majority (2 of 3) remains.
    kill_member("etcd-2")?;
    let killed = Instant::now();
    let mut longest = Duration::ZERO;
    let mut all_committed = true;
    for round in 0..20 {
        let started = Instant::now();
        all_committed &= write(client, &format!("one-down-{round}"), Duration::from_secs(10)).await;
        longest = longest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let check = if all_committed {
        Check::pass(
            "one etcd member down",
            format!(
                "20 writes over {} all committed; the slowest took {}",
                seconds(killed.elapsed()),
                seconds(longest)
            ),
        )
    } else {
        Check::fail(
            "one etcd member down",
            "a write failed with one member of three down",
            "look at the etcd logs in state/lab/logs",
        )
    };
    report("1. kill one of three etcd members", "a majority keeps the API serving writes", &check, out)?;
    checks.push(check);

    // 2. A second member dies: no majority; the API server must say so.
    kill_member("etcd-1")?;
    let detected = time_until(Duration::from_secs(30), || async { !etcd_ready(client).await }).await;
    let check = match detected {
        Some(after) => {
            Check::pass("quorum lost", format!("/readyz/etcd failed {} after the second member died", seconds(after)))
        }
        None => Check::fail(
            "quorum lost",
            "the API server still reported etcd ready after 30s",
            "look at kube-apiserver's log",
        ),
    };
    report(
        "2. kill a second member",
        "without a majority etcd refuses writes, and the API server detects it",
        &check,
        out,
    )?;
    checks.push(check);

    // 3. Both come back: the cluster heals without help.
    let restarted = Instant::now();
    lab.up(&root).await.context("restarting the killed members (lab up)")?;
    let healed = time_until(Duration::from_secs(60), || async {
        etcd_ready(client).await && write(client, "healed", Duration::from_secs(5)).await
    })
    .await;
    let check = match healed {
        Some(_) => Check::pass(
            "recovered",
            format!("etcd ready and writes committed {} after the restart", seconds(restarted.elapsed())),
        ),
        None => Check::fail("recovered", "etcd did not recover within 60s", "cargo xtask lab status"),
    };
    report("3. restore both members", "restarted members rejoin and the quorum is back", &check, out)?;
    checks.push(check);

    // A node failure needs a node whose heartbeat can stop on its own; kwok keeps renewing
    // the lease of every node it has taken on, so the lab cannot show one faithfully.
    let check = Check::not_checkable_in_lab(
        "node failure",
        "kwok keeps renewing the Lease of a node it manages; stopping one fake node's heartbeat alone is not possible",
    );
    report("4. lose a node", "a lost node is detected and its pods are rescheduled on the others", &check, out)?;
    checks.push(check);
    let _ = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .delete("talos-ha-verify-ha", &DeleteParams::default())
        .await;
    Ok(checks)
}

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

async fn talos_steps(
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
        let config = ClusterConfig::parse(include_str!("../../cluster.yaml"), std::path::Path::new("cluster.yaml"))
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
