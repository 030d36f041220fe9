//! The waits against the lab: a custom resource's condition, set through its status subresource.

use std::time::Duration;

use kit::apply::Engine;
use kit::manifest::parse_manifest;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use tests::lab_client;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: probes.wait.talos-ha.dev}
spec:
  group: wait.talos-ha.dev
  scope: Namespaced
  names: {kind: Probe, plural: probes, singular: probe}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
---
apiVersion: wait.talos-ha.dev/v1
kind: Probe
metadata: {name: p, namespace: default}
"#;

#[tokio::test]
async fn a_condition_wait_names_the_reason_then_passes_when_true() -> anyhow::Result<()> {
    let client = lab_client().await?;
    Engine::new(client.clone(), "wait-test").await?.apply(&parse_manifest("probe.yaml", CRD)?).await?;
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("wait.talos-ha.dev", "v1", "Probe"), "probes");
    let probes: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let set = |status: &str, reason: &str| serde_json::json!({ "status": { "conditions": [{ "type": "Ready", "status": status, "reason": reason, "message": "from the test" }] } });
    probes.patch_status("p", &PatchParams::default(), &Patch::Merge(&set("False", "Issuing"))).await?;
    let wait = |timeout| kit::wait::condition_true(&client, &resource, Some("default"), "p", "Ready", timeout);
    let error = wait(Duration::from_millis(500)).await.expect_err("not Ready yet").to_string();
    assert!(error.contains("Probe default/p is not Ready (Issuing: from the test)"), "{error}");
    probes.patch_status("p", &PatchParams::default(), &Patch::Merge(&set("True", "Issued"))).await?;
    wait(Duration::from_secs(5)).await?;
    Ok(())
}

/// Add-ons review item 11: after a change, a Deployment counts as rolled out only once every
/// replica runs the new spec: the old ReplicaSet's `Available=True` is not enough.
#[tokio::test]
async fn a_changed_deployment_is_waited_for_until_its_new_pods_run() -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    let client = lab_client().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: rollout-probe, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: rollout-probe}}
  template:
    metadata: {labels: {app: rollout-probe}}
    spec:
      containers: [{name: pause, image: registry.k8s.io/pause:3.9}]
"#;
    Engine::new(client.clone(), "wait-test").await?.apply(&parse_manifest("rollout.yaml", manifest)?).await?;
    kit::wait::deployment_available(&client, "default", "rollout-probe", Duration::from_secs(60)).await?;

    let new_image = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]}}}});
    let changed = deployments.patch("rollout-probe", &PatchParams::default(), &Patch::Strategic(&new_image)).await?;
    // The answer to the patch: Available still True from the old pods, but a newer spec.
    let available = changed.status.as_ref().and_then(|status| status.conditions.as_ref()).is_some_and(|conditions| {
        conditions.iter().any(|condition| condition.type_ == "Available" && condition.status == "True")
    });
    assert!(available, "the old ReplicaSet keeps it Available");
    let why = kit::wait::rollout_state(&changed).expect_err("not rolled out");
    assert!(why.contains("newer spec"), "{why}");

    kit::wait::deployment_available(&client, "default", "rollout-probe", Duration::from_secs(60)).await?;
    let pods = Api::<Pod>::namespaced(client.clone(), "default")
        .list(&kube::api::ListParams::default().labels("app=rollout-probe"))
        .await?;
    let images: Vec<String> = pods
        .items
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| pod.spec.as_ref().and_then(|spec| spec.containers[0].image.clone()))
        .collect();
    assert!(!images.is_empty() && images.iter().all(|image| image.ends_with(":3.10")), "{images:?}");
    deployments.delete("rollout-probe", &Default::default()).await?;
    Ok(())
}
