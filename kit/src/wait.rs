//! Waits with timeouts for what stages need, each failure naming the object, the condition
//! it is stuck on, its message, and where to look next.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;

/// Polls until the Deployment is rolled out: the controller has seen its latest spec
/// (`observedGeneration`), every replica runs that spec (`updatedReplicas`) and is available,
/// no old pod is left, and the rollout has not stalled (`Progressing=False`). `Available`
/// alone is not enough: after a change the old ReplicaSet keeps the Deployment Available
/// before a single new pod exists (what `kubectl rollout status` checks, in the same order).
pub async fn deployment_available(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let look = format!("look at `kubectl -n {namespace} describe deployment {name}` and its pods' events");
    poll(timeout, || async {
        let Some(deployment) = api.get_opt(name).await? else {
            return Ok(Err(format!("Deployment {namespace}/{name} does not exist")));
        };
        Ok(rollout_state(&deployment).map_err(|why| format!("Deployment {namespace}/{name} {why}; {look}")))
    })
    .await
}

/// Why a Deployment is not rolled out yet, if it is not.
pub fn rollout_state(deployment: &Deployment) -> Result<(), String> {
    let generation = deployment.metadata.generation.unwrap_or_default();
    let wanted = deployment.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let condition = |kind: &str| conditions.iter().find(|c| c.type_ == kind);
    if status.observed_generation.unwrap_or_default() < generation {
        return Err(format!(
            "has a newer spec (generation {generation}) than its controller has seen; is kube-controller-manager running?"
        ));
    }
    if let Some(stalled) = condition("Progressing").filter(|c| c.status == "False") {
        return Err(format!(
            "stopped progressing ({}: {})",
            stalled.reason.as_deref().unwrap_or("no reason"),
            stalled.message.as_deref().unwrap_or("no message")
        ));
    }
    let updated = status.updated_replicas.unwrap_or_default();
    let available = status.available_replicas.unwrap_or_default();
    let total = status.replicas.unwrap_or_default();
    if updated < wanted {
        return Err(format!("has {updated} of {wanted} replicas on its latest spec"));
    }
    if total > updated {
        return Err(format!("still runs {} old replica(s)", total - updated));
    }
    if available < wanted {
        return Err(format!("has {available} of {wanted} replicas available"));
    }
    match condition("Available") {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(format!(
            "is not Available ({}: {})",
            c.reason.as_deref().unwrap_or("no reason"),
            c.message.as_deref().unwrap_or("no message")
        )),
        None => Err("reports no Available condition yet; is kube-controller-manager running?".to_owned()),
    }
}

/// Polls until every desired DaemonSet pod is updated and ready, on at least `least` nodes:
/// the controller wants no pod on a node tainted unreachable, so a machine just back from a
/// power cut gets its pod only once its node is Ready again, seconds later. Returns how many
/// are ready.
pub async fn daemonset_ready(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    least: usize,
    timeout: Duration,
) -> anyhow::Result<u32> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    poll(timeout, || async {
        let Some(daemonset) = api.get_opt(name).await? else {
            return Ok(Err(format!("DaemonSet {namespace}/{name} does not exist")));
        };
        let generation = daemonset.metadata.generation.unwrap_or_default();
        let status = daemonset.status.unwrap_or_default();
        if status.observed_generation.unwrap_or_default() < generation {
            // Right after a change the counts are still the old spec's.
            return Ok(Err(format!(
                "DaemonSet {namespace}/{name} has a newer spec (generation {generation}) than its controller has \
                 seen; is kube-controller-manager running?"
            )));
        }
        let desired = status.desired_number_scheduled;
        let ready = status.number_ready;
        let updated = status.updated_number_scheduled.unwrap_or_default();
        let rolled_out = desired > 0 && ready == desired && updated == desired;
        let enough = usize::try_from(ready).is_ok_and(|ready| ready >= least);
        if rolled_out && enough {
            Ok(Ok(u32::try_from(ready).unwrap_or_default()))
        } else if rolled_out {
            Ok(Err(format!(
                "DaemonSet {namespace}/{name} has {ready} pods ready, for {least} nodes it must run on; look at \
                 `kubectl get nodes` for one not Ready or tainted, and at what the pods tolerate"
            )))
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
pub async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> anyhow::Result<T>
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn deployment(
        generation: i64,
        observed: i64,
        replicas: i32,
        updated: i32,
        available: i32,
        total: i32,
    ) -> Deployment {
        let condition = |kind: &str, status: &str| DeploymentCondition {
            type_: kind.into(),
            status: status.into(),
            ..DeploymentCondition::default()
        };
        Deployment {
            metadata: ObjectMeta { generation: Some(generation), ..ObjectMeta::default() },
            spec: Some(DeploymentSpec { replicas: Some(replicas), ..DeploymentSpec::default() }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(total),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                conditions: Some(vec![condition("Available", "True"), condition("Progressing", "True")]),
                ..DeploymentStatus::default()
            }),
        }
    }

    #[test]
    fn available_is_not_rolled_out_until_the_new_pods_are() {
        assert_eq!(rollout_state(&deployment(2, 2, 2, 2, 2, 2)), Ok(()));
        // Just changed: the old ReplicaSet keeps it Available, but the controller has not
        // seen the change yet, then no new pod exists, then an old one is still there.
        assert!(rollout_state(&deployment(3, 2, 2, 2, 2, 2)).is_err_and(|why| why.contains("newer spec")));
        assert!(
            rollout_state(&deployment(3, 3, 2, 0, 2, 2))
                .is_err_and(|why| why.contains("0 of 2 replicas on its latest"))
        );
        assert!(rollout_state(&deployment(3, 3, 2, 2, 2, 3)).is_err_and(|why| why.contains("1 old replica")));
        assert!(
            rollout_state(&deployment(3, 3, 2, 2, 1, 2)).is_err_and(|why| why.contains("1 of 2 replicas available"))
        );
    }
}
