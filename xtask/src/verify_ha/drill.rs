//! The real drill on a Talos cluster: one node rebooted through talosctl (a shutdown it comes
//! back from by itself; talosctl cannot power a machine on), and what the users of the cluster
//! saw meanwhile. Every second it asks the API through the VIP and every Quick Access URL,
//! and keeps, for each, the longest time it did not answer. Once the node is back (a new boot,
//! Ready) and everything answers, it waits for etcd to have every member and for Longhorn to
//! rebuild the replicas the node held.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kit::check::Check;
use kit::config::ClusterConfig;
use kit::talos::{TalosApi, Talosctl, etcd_health, healthy_members};
use kube::api::Api;
use xtask::docs::Path;

use super::{seconds, time_until};

/// How long a node may take to reboot, and the cluster to heal after it.
const BACK_WITHIN: Duration = Duration::from_secs(15 * 60);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

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

/// Reboots `node` and measures the outage it causes, then waits for etcd and Longhorn to heal.
pub(super) async fn reboot(
    client: &kube::Client,
    config: &ClusterConfig,
    talosctl: &Talosctl,
    node: &kit::config::Node,
) -> anyhow::Result<Check> {
    let nodes: Api<Node> = Api::all(client.clone());
    let before = nodes.get(&node.name).await?;
    let booted = boot_id(&before);
    let ca = std::fs::read(config.state_dir().join("ca.crt")).ok();
    let mut apps: Vec<(&'static str, String, Outage)> = xtask::docs::endpoints(config)
        .into_iter()
        .filter(|endpoint| endpoint.path != Path::Cli)
        .map(|endpoint| (endpoint.name, format!("{}/", endpoint.url), Outage::default()))
        .collect();
    let mut api = Outage::default();

    talosctl.ask(node, &["reboot", "--wait=false"], Duration::from_secs(30)).await?;
    let started = Instant::now();
    tracing::info!("{} is rebooting; sampling the API and every URL each second until it is back", node.name);
    let (mut back, mut seen_not_ready) = (None, false);
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
        if back.is_none() {
            let now = nodes.get(&node.name).await.ok();
            seen_not_ready |= now.as_ref().is_some_and(|now| !kit::lab::is_ready(now));
            // A new boot ID proves the reboot; without one, Ready again after NotReady does.
            let rebooted = |now: &Node| booted.map_or(seen_not_ready, |before| boot_id(now) != Some(before));
            if now.as_ref().is_some_and(|now| rebooted(now) && kit::lab::is_ready(now)) {
                back = Some(at);
                tracing::info!("{} is back after {}", node.name, seconds(at));
            }
        }
        if back.is_some() && api.answering() && apps.iter().all(|(_, _, outage)| outage.answering()) {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let answered_again = started.elapsed();
    let outages = apps
        .iter()
        .map(|(name, _, outage)| format!("{name} {}", seconds(outage.longest())))
        .collect::<Vec<_>>()
        .join(", ");
    let Some(back) = back else {
        return Ok(Check::fail(
            "drill",
            format!(
                "{} was not back within {}; longest outages: API {}, {outages}",
                node.name,
                seconds(BACK_WITHIN),
                seconds(api.longest())
            ),
            format!("talosctl -n {} dmesg (or the machine's console)", node.ip),
        ));
    };
    let control_planes = config.control_planes().count();
    let etcd = time_until(BACK_WITHIN, || async {
        healthy_members(&etcd_health(talosctl, config).await).len() == control_planes
    })
    .await;
    let volumes = time_until(BACK_WITHIN, || async {
        longhorn::volume::volume_health(client)
            .await
            .is_ok_and(|volumes| volumes.iter().all(|volume| volume.robustness == "healthy"))
    })
    .await;
    let measured = format!(
        "{} back (a new boot, Ready) after {}; longest time without an answer: API through the VIP {}, {outages}; \
         everything answered again after {}",
        node.name,
        seconds(back),
        seconds(api.longest()),
        seconds(answered_again)
    );
    Ok(match (etcd, volumes) {
        (Some(etcd), Some(volumes)) => Check::pass(
            "drill",
            format!(
                "{measured}; etcd had all {control_planes} members healthy {} later, Longhorn volumes healthy {} later",
                seconds(etcd),
                seconds(volumes)
            ),
        ),
        (etcd, _) => Check::fail(
            "drill",
            format!(
                "{measured}; but {} within {}",
                if etcd.is_none() {
                    "etcd did not have every member healthy"
                } else {
                    "Longhorn volumes were not healthy"
                },
                seconds(BACK_WITHIN)
            ),
            "cargo xtask verify-ha (read-only) shows which step is still failing",
        ),
    })
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
