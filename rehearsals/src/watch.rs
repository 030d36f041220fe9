//! What a rolling operation costs the cluster while it runs, sampled every second from inside
//! the box: how many etcd members vote and how many are healthy (each control plane asked about
//! its own member, as stage 01's check asks), and how long the Kubernetes API goes unanswered
//! through the VIP (the cluster's own kubeconfig, as a user's kubectl reaches it). The API is
//! asked for an object it reads from etcd with a quorum read, so an answer also says etcd had a
//! leader and a majority behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kit::config::ClusterConfig;

/// How often each question is asked.
const PERIOD: Duration = Duration::from_secs(1);

/// A watch running on a thread of its own in the box's workstation namespace.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Watched>>,
}

/// What the watch saw.
#[derive(Debug)]
pub struct Watched {
    /// How many times the API was asked (about once a second).
    pub samples: usize,
    /// The fewest etcd members voting at one sample: quorum is a majority of them.
    pub fewest_voting: usize,
    /// The fewest etcd members healthy at one sample (a member between leaders is not), and
    /// what each member said then.
    pub fewest_healthy: usize,
    pub least_healthy_said: String,
    /// The longest time between two answers of the API through the VIP, and how long after the
    /// watch started that time began.
    pub longest_unanswered: Duration,
    pub longest_unanswered_from: Duration,
}

impl Watch {
    /// Starts watching the box of `config` (its in-box config: the box's talosconfig and the
    /// cluster's kubeconfig).
    pub fn start(config: &ClusterConfig) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let (config, stopped) = (config.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            kit::lab::enter_box(&config)?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(watch(&config, &stopped))
        });
        Watch { stop, thread }
    }

    /// Stops the watch and says what it saw.
    pub fn stop(self) -> anyhow::Result<Watched> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the watch panicked"))?
    }
}

async fn watch(config: &ClusterConfig, stop: &AtomicBool) -> anyhow::Result<Watched> {
    let talosctl = kit::talos::Talosctl::find(config).await?;
    let kubeconfig = kit::context::cluster_kubeconfig_path(&config.state_dir());
    let client = kit::client::client_from_kubeconfig(&kubeconfig).await?;
    // A get without a resourceVersion is not served from the API server's cache but read from
    // etcd (k8s.io/apiserver pkg/storage/cacher/delegator.go, Get), linearizably.
    let namespaces: kube::Api<Namespace> = kube::Api::all(client);
    let started = Instant::now();
    // Two clocks: etcd's questions wait for every control plane (one that is rebooting costs its
    // question the whole timeout), and the API must still be asked each second meanwhile, or
    // that wait would count as the API's silence.
    let (fewest, api) = tokio::join!(
        async {
            let mut fewest = (usize::MAX, usize::MAX, String::new());
            while !stop.load(Ordering::Relaxed) {
                let tick = Instant::now();
                let health = kit::talos::etcd_health(&talosctl, config).await;
                fewest.0 = fewest.0.min(kit::talos::voting_members(&health).len());
                let healthy = kit::talos::healthy_members(&health).len();
                if healthy < fewest.1 {
                    fewest.1 = healthy;
                    fewest.2 = kit::talos::describe_health(&health);
                }
                tokio::time::sleep(PERIOD.saturating_sub(tick.elapsed())).await;
            }
            fewest
        },
        async {
            let (mut samples, mut last_answer) = (0, started);
            let (mut longest, mut longest_from) = (Duration::ZERO, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let tick = Instant::now();
                let answer = tokio::time::timeout(PERIOD, namespaces.get("default")).await;
                samples += 1;
                if answer.is_ok_and(|answered| answered.is_ok()) {
                    last_answer = Instant::now();
                }
                if last_answer.elapsed() > longest {
                    longest = last_answer.elapsed();
                    longest_from = last_answer - started;
                }
                tokio::time::sleep(PERIOD.saturating_sub(tick.elapsed())).await;
            }
            (samples, longest, longest_from)
        }
    );
    let ((fewest_voting, fewest_healthy, least_healthy_said), (samples, longest_unanswered, longest_unanswered_from)) =
        (fewest, api);
    Ok(Watched {
        samples,
        fewest_voting,
        fewest_healthy,
        least_healthy_said,
        longest_unanswered,
        longest_unanswered_from,
    })
}
