//! The lab drill: control-plane machines of the box switched off and back on (each takes its
//! etcd member with it), then a node failure (`node_failure.rs`). Every step measures how long
//! the cluster took.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kit::check::Check;
use kit::config::ClusterConfig;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use super::{node_failure, report, seconds, time_until};

/// The ConfigMap the drill writes to (and deletes at the end).
const DRILL_CONFIGMAP: &str = "talos-ha-verify-ha";

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

/// How one write went. A request in flight when an etcd member dies under the API server's
/// connection, or while the members elect a new leader, fails at once; clients (kubectl,
/// controllers) retry, so the write counts as committed if a retry lands before the deadline.
struct Write {
    committed: bool,
    failed_attempts: u32,
    last_error: Option<String>,
}

/// Writes `value` into a ConfigMap (a write etcd must commit), retrying until `deadline`.
async fn write(client: &kube::Client, value: &str, deadline: Duration) -> Write {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": DRILL_CONFIGMAP },
        "data": { "written": value },
    });
    let params = PatchParams::apply(DRILL_CONFIGMAP).force();
    let started = Instant::now();
    let mut outcome = Write { committed: false, failed_attempts: 0, last_error: None };
    while let Some(left) = deadline.checked_sub(started.elapsed()) {
        match tokio::time::timeout(left, maps.patch(DRILL_CONFIGMAP, &params, &Patch::Apply(&patch))).await {
            Ok(Ok(_)) => {
                outcome.committed = true;
                break;
            }
            Ok(Err(kube::Error::Api(status))) => {
                outcome.last_error = Some(format!("{} {}", status.code, status.message))
            }
            Ok(Err(error)) => outcome.last_error = Some(error.to_string()),
            Err(_) => outcome.last_error = Some(format!("no answer within {}", seconds(deadline))),
        }
        outcome.failed_attempts += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outcome
}

pub(super) async fn drill(
    client: &kube::Client,
    config: &ClusterConfig,
    out: &mut impl std::io::Write,
) -> anyhow::Result<Vec<Check>> {
    let lab = xtask::lab::Lab::new(config, xtask::lab::DEFAULT_PORT_BASE);
    let root = xtask::workspace_root();
    let mut checks = Vec::new();
    // The last two control planes are switched off in turn (a clean shutdown: a VIP they hold
    // is handed over at once).
    let control_planes: Vec<&str> = config.control_planes().map(|node| node.name.as_str()).collect();
    let (first_off, second_off) = match control_planes.as_slice() {
        [.., second, first] => (*first, *second),
        _ => anyhow::bail!("the drill needs at least two control planes"),
    };

    // Start from a whole cluster: every member healthy (a member restarted a moment ago may
    // still be catching up), and writes committing.
    let whole = time_until(Duration::from_secs(60), || async {
        let status = lab.status().await;
        status.iter().filter(|c| c.name.starts_with("twin-")).all(|c| c.healthy)
            && etcd_ready(client).await
            && write(client, "before", Duration::from_secs(5)).await.committed
    })
    .await;
    anyhow::ensure!(whole.is_some(), "the lab's cluster is not whole: see `cargo xtask lab status`");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 1. One of three control planes goes off: a majority of etcd (2 of 3) remains.
    lab.stop_twin(first_off)?;
    let killed = Instant::now();
    let (mut longest, mut retried, mut first_error, mut lost) = (Duration::ZERO, 0, None, None);
    for round in 0..20 {
        let started = Instant::now();
        let outcome = write(client, &format!("one-down-{round}"), Duration::from_secs(10)).await;
        longest = longest.max(started.elapsed());
        retried += outcome.failed_attempts;
        if first_error.is_none() {
            first_error = outcome.last_error.clone();
        }
        if !outcome.committed {
            lost = outcome.last_error;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let check = match lost {
        None => Check::pass(
            "one etcd member down",
            format!(
                "20 writes over {} all committed; the slowest took {}; {retried} attempt(s) failed and were retried{}",
                seconds(killed.elapsed()),
                seconds(longest),
                first_error.map(|error| format!(" (the first: {error})")).unwrap_or_default()
            ),
        ),
        Some(error) => Check::fail(
            "one etcd member down",
            format!("a write was not committed within 10s with one member of three down: {error}"),
            "look at the machines' etcd logs in state/lab/twins/<node>/etcd/",
        ),
    };
    report("1. switch off one of three control planes", "a majority keeps the API serving writes", &check, out)?;
    checks.push(check);

    // 2. A second control plane goes off: no majority; the API server must say so (or no
    // longer answer at all: the VIP needs etcd too).
    lab.stop_twin(second_off)?;
    let detected = time_until(Duration::from_secs(30), || async { !etcd_ready(client).await }).await;
    let check = match detected {
        Some(after) => {
            Check::pass("quorum lost", format!("/readyz/etcd failed {} after the second member went", seconds(after)))
        }
        None => Check::fail(
            "quorum lost",
            "the API server still reported etcd ready after 30s",
            "look at the control planes' kube-apiserver logs in state/lab/twins/<node>/kubernetes/",
        ),
    };
    report(
        "2. switch off a second control plane",
        "without a majority etcd refuses writes, and the API server detects it",
        &check,
        out,
    )?;
    checks.push(check);

    // 3. Both come back: the cluster heals without help.
    let restarted = Instant::now();
    lab.up(&root).await.context("switching the machines back on (lab up)")?;
    let healed = time_until(Duration::from_secs(60), || async {
        etcd_ready(client).await && write(client, "healed", Duration::from_secs(5)).await.committed
    })
    .await;
    let check = match healed {
        Some(_) => Check::pass(
            "recovered",
            format!("etcd ready and writes committed {} after the restart", seconds(restarted.elapsed())),
        ),
        None => Check::fail("recovered", "etcd did not recover within 60s", "cargo xtask lab status"),
    };
    report("3. switch both back on", "their members rejoin and the quorum is back", &check, out)?;
    checks.push(check);

    // 4. A worker's kubelet goes silent: the control plane notices and moves its pods.
    let check = node_failure::drill(client, config).await?;
    report("4. lose a node", "a lost node is detected and its pods are rescheduled on the others", &check, out)?;
    checks.push(check);
    let _ =
        Api::<ConfigMap>::namespaced(client.clone(), "default").delete(DRILL_CONFIGMAP, &DeleteParams::default()).await;
    Ok(checks)
}
