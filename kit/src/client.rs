//! The Kubernetes API as every command reaches it: a client from one kubeconfig file, where
//! that file points (for errors to name), and how Node and pod readiness is read.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::ClusterConfig;

/// The label and taint Talos puts on control planes (workloads stay off them by default).
pub const CONTROL_PLANE_ROLE: &str = "node-role.kubernetes.io/control-plane";

/// A client built from one kubeconfig file (never from `$KUBECONFIG`: a command must not reach
/// another cluster by accident).
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    kube::Client::try_from(config_from_kubeconfig(path).await?).context("building a Kubernetes client")
}

/// The same, for calls whose refusal is the answer the caller waits on: a 429 from the eviction
/// API means a PodDisruptionBudget holds the pod now. kube's client retries 429, 503 and 504
/// itself by default, up to 15 times with a backoff that grows towards 1000 s, which turns one
/// refused eviction into minutes inside a single call.
pub async fn client_without_retries(path: &Path) -> anyhow::Result<kube::Client> {
    let mut config = config_from_kubeconfig(path).await?;
    config.default_retry = false;
    kube::Client::try_from(config).context("building a Kubernetes client")
}

async fn config_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Config> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| {
        format!("reading kubeconfig {} (for the lab, run `cargo xtask lab up` first)", path.display())
    })?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    // kube waits for an answer for ever unless told otherwise. A request in flight to a control
    // plane that lost its power gets no answer and no reset (nothing is left to send one), and
    // would hang past any bound; with a deadline it fails as a timeout, which `ride_out` waits
    // out. talos-ha makes no long-lived requests (no watch, exec or log stream), and counting
    // from the request's write keeps a pooled connection's idle time out of it.
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.reset_reader_on_write = true;
    Ok(config)
}

/// The API server a kubeconfig file points at (its current context's cluster), to name it in
/// an error: `None` when the file cannot be read.
pub fn api_server_of(path: &Path) -> Option<String> {
    let kubeconfig = Kubeconfig::read_from(path).ok()?;
    let context_name = kubeconfig.current_context.clone()?;
    let context = kubeconfig.contexts.iter().find(|named| named.name == context_name)?.context.clone()?;
    let cluster = kubeconfig.clusters.iter().find(|named| named.name == context.cluster)?.cluster.clone()?;
    cluster.server
}

/// Where a kubeconfig file sends requests, for an error to name: `<server> (kubeconfig <path>)`.
pub fn describe_api(path: &Path) -> String {
    let server = api_server_of(path).unwrap_or_else(|| "(no server: the file cannot be read)".to_owned());
    format!("{server} (kubeconfig {})", path.display())
}

/// The config nodes that are not Ready yet (missing ones included), by name.
pub async fn nodes_not_ready(client: &kube::Client, cluster: &ClusterConfig) -> anyhow::Result<Vec<String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut waiting = Vec::new();
    for node in &cluster.nodes {
        let found = nodes.get_opt(&node.name).await.with_context(|| format!("reading node {}", node.name))?;
        if !found.as_ref().is_some_and(is_ready) {
            waiting.push(node.name.clone());
        }
    }
    Ok(waiting)
}

/// True when the node's `Ready` condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|status| status.conditions.as_ref());
    conditions.is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// True when the pod's `Ready` condition is `True` (what a Service and a Deployment count).
pub fn pod_is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|status| status.conditions.as_ref());
    conditions.is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How long one request may wait for its answer (see [`client_from_kubeconfig`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a command waits, unless told otherwise (`--api-wait`), for a Kubernetes API that
/// stopped answering to answer again. The VIP is held through an etcd election whose session
/// lease is etcd's default 60 s (Talos v1.12.1 network/operator/vip.go:221,
/// `concurrency.NewSession` without a TTL; etcd client/v3 concurrency/session.go:26): a holder
/// that crashes neither resigns nor revokes, so the next control plane takes the VIP only once
/// that lease runs out, then within the campaign's 1 s retry. Twice the lease leaves room for
/// etcd to elect a leader of its own (when the crashed machine led it) and for a busy machine.
pub const API_WAIT: Duration = Duration::from_secs(120);

/// True when `error` says the API was out of reach, not that it answered no: a refused, reset
/// or cut connection (a TLS handshake ended by EOF included), a timeout, or an API server that
/// answers 5xx (no etcd quorum behind it). Worth waiting out; a 4xx is an answer.
pub fn out_of_reach(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| match cause.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) => status.code >= 500,
        // The transport: connecting, the TLS handshake, a timeout, a stream cut off.
        Some(kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_)) => true,
        Some(_) => false,
        None => cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            use std::io::ErrorKind::*;
            matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | NotConnected | UnexpectedEof
            )
        }),
    })
}

/// Runs `attempt`; when it fails because the API behind `kubeconfig` is out of reach, waits
/// (up to `wait` in all) until the API answers again and runs it again. Only for attempts that
/// are safe to repeat: reads, and server-side applies (a write that may have landed is applied
/// again to the same result). Progress goes to the log as warnings, naming what is awaited:
/// the step is not going as it should, and install-all shows a stage's warnings as they come.
pub async fn ride_out<T, F, Fut>(kubeconfig: &Path, wait: Duration, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = tokio::time::Instant::now();
    let deadline = started + wait;
    loop {
        let error = match attempt().await {
            Err(error) if out_of_reach(&error) && tokio::time::Instant::now() < deadline => error,
            result => return result,
        };
        let api = describe_api(kubeconfig);
        tracing::warn!(
            "the Kubernetes API at {api} does not answer ({error:#}); waiting up to {}s in all for it to answer \
             again (after a control plane's crash the VIP moves once its etcd election lease runs out, within 60 s)",
            wait.as_secs()
        );
        let mut said = tokio::time::Instant::now();
        // Asked again after 1 s, then 2, 4, and every 5 s: soon after a blip, gently through
        // the minute a VIP takes to move.
        let mut pause = Duration::from_secs(1);
        loop {
            if answers(kubeconfig).await {
                tracing::warn!(
                    "the Kubernetes API answers again after {:.0}s; running the step again",
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(
                    error.context(format!("the Kubernetes API did not answer again within {}s", wait.as_secs()))
                );
            }
            if now.duration_since(said) >= Duration::from_secs(10) {
                tracing::warn!(
                    "… still waiting for the Kubernetes API at {api} ({:.0}s)",
                    started.elapsed().as_secs_f64()
                );
                said = now;
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(now))).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

/// The API behind `kubeconfig` answers its version within 5 s.
async fn answers(kubeconfig: &Path) -> bool {
    let probe = async { anyhow::Ok(client_from_kubeconfig(kubeconfig).await?.apiserver_version().await?) };
    matches!(tokio::time::timeout(Duration::from_secs(5), probe).await, Ok(Ok(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeconfig for an API server at `server` (plain HTTP on loopback, no credentials).
    fn kubeconfig(dir: &Path, server: &str) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{{name: c, cluster: {{server: \"{server}\"}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\nusers: [{{name: u, user: {{}}}}]\n"
        );
        std::fs::write(&path, text).expect("a kubeconfig");
        path
    }

    /// An API server that answers `/version` (on loopback), started on `port` after `delay`:
    /// until then the port refuses connections, as an API behind a VIP that is moving does.
    fn api_server_after(port: u16, delay: Duration) {
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let server = tiny_http::Server::http(("127.0.0.1", port)).expect("the port is free again");
            for request in server.incoming_requests() {
                let body = r#"{"major":"1","minor":"35","gitVersion":"v1.35.0","gitCommit":"","gitTreeState":"clean",
                    "buildDate":"","goVersion":"","compiler":"gc","platform":"linux/amd64"}"#;
                let _ = request.respond(tiny_http::Response::from_string(body));
            }
        });
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a port").port()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_step_the_api_dropped_out_of_runs_again_once_it_answers() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let kubeconfig = kubeconfig(dir.path(), &format!("http://127.0.0.1:{port}"));
        api_server_after(port, Duration::from_secs(3));
        let mut attempts = 0;
        let version = ride_out(&kubeconfig, Duration::from_secs(30), || {
            attempts += 1;
            let kubeconfig = kubeconfig.clone();
            async move { anyhow::Ok(client_from_kubeconfig(&kubeconfig).await?.apiserver_version().await?) }
        })
        .await?;
        assert_eq!(version.git_version, "v1.35.0");
        assert_eq!(attempts, 2, "refused once, run again once the API answered");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_api_that_stays_away_ends_the_wait_and_an_answer_is_never_waited_out() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let kubeconfig = kubeconfig(dir.path(), &format!("http://127.0.0.1:{}", free_port()));
        let started = std::time::Instant::now();
        let gone = ride_out(&kubeconfig, Duration::from_secs(2), || async {
            anyhow::Ok(client_from_kubeconfig(&kubeconfig).await?.apiserver_version().await?)
        })
        .await
        .expect_err("nothing listens");
        assert!(format!("{gone:#}").contains("did not answer again within 2s"), "{gone:#}");
        assert!(started.elapsed() < Duration::from_secs(10), "bounded: {:?}", started.elapsed());

        let mut attempts = 0;
        let refused: anyhow::Result<()> = ride_out(&kubeconfig, Duration::from_secs(30), || {
            attempts += 1;
            async { Err(anyhow::anyhow!("Deployment x is invalid")) }
        })
        .await;
        assert!(refused.is_err() && attempts == 1, "an error that is an answer is not retried");
        Ok(())
    }
}
