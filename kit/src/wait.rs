//! Waits with timeouts for what stages need, each failure naming the object, the condition
//! it is stuck on, its message, and where to look next.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;

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

/// Polls until a custom resource's `status.conditions[type == condition]` is True (a
/// cert-manager Certificate `Ready`, a Gateway `Programmed`, …).
pub async fn condition_true(
    client: &kube::Client,
    resource: &ApiResource,
    namespace: Option<&str>,
    name: &str,
    condition: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api: Api<DynamicObject> = match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, resource),
        None => Api::all_with(client.clone(), resource),
    };
    let described = format!("{} {}{name}", resource.kind, namespace.map_or(String::new(), |ns| format!("{ns}/")));
    poll(timeout, || async {
        let Some(object) = api.get_opt(name).await? else {
            return Ok(Err(format!("{described} does not exist")));
        };
        let conditions =
            object.data.pointer("/status/conditions").and_then(|c| c.as_array()).cloned().unwrap_or_default();
        let found = conditions.iter().find(|c| c["type"] == condition);
        let text = |c: &serde_json::Value, key: &str| c[key].as_str().unwrap_or("none").to_owned();
        match found {
            Some(c) if c["status"] == "True" => Ok(Ok(())),
            Some(c) => Ok(Err(format!(
                "{described} is not {condition} ({}: {}); look at `kubectl describe` of it and its controller's log",
                text(c, "reason"),
                text(c, "message")
            ))),
            None => Ok(Err(format!("{described} reports no {condition} condition yet; is its controller running?"))),
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
