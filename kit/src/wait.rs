//! Waits with timeouts for what stages need, each failure naming the object, the condition
//! it is stuck on, its message, and where to look next.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::api::Api;

/// Polls until the Deployment's `Available` condition is True.
pub async fn deployment_available(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    poll(timeout, || async {
        let Some(deployment) = api.get_opt(name).await? else {
            return Ok(Err(format!("Deployment {namespace}/{name} does not exist")));
        };
        let conditions = deployment.status.and_then(|s| s.conditions).unwrap_or_default();
        match conditions.iter().find(|c| c.type_ == "Available") {
            Some(c) if c.status == "True" => Ok(Ok(())),
            Some(c) => Ok(Err(format!(
                "Deployment {namespace}/{name} is not Available ({}: {}); look at `kubectl -n {namespace} describe deployment {name}` and its pods' events",
                c.reason.as_deref().unwrap_or("no reason"),
                c.message.as_deref().unwrap_or("no message")
            ))),
            None => Ok(Err(format!("Deployment {namespace}/{name} reports no Available condition yet; is kube-controller-manager running?"))),
        }
    })
    .await
}

/// Polls until every desired DaemonSet pod is updated and ready.
pub async fn daemonset_ready(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<u32> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    poll(timeout, || async {
        let Some(daemonset) = api.get_opt(name).await? else {
            return Ok(Err(format!("DaemonSet {namespace}/{name} does not exist")));
        };
        let status = daemonset.status.unwrap_or_default();
        let desired = status.desired_number_scheduled;
        let ready = status.number_ready;
        let updated = status.updated_number_scheduled.unwrap_or_default();
        if desired > 0 && ready == desired && updated == desired {
            Ok(Ok(u32::try_from(ready).unwrap_or_default()))
        } else {
            Ok(Err(format!(
                "DaemonSet {namespace}/{name} has {ready}/{desired} pods ready ({updated} updated); look at \
                 `kubectl -n {namespace} get pods -o wide` for the nodes where it is missing"
            )))
        }
    })
    .await
}

/// Runs `probe` every 250 ms until it returns `Ok(Ok(value))`; on timeout fails with the last
/// reason it gave. An API error ends the wait at once.
async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Result<T, String>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await? {
            Ok(value) => return Ok(value),
            Err(reason) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("after {}s: {reason}", timeout.as_secs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
