//! The waits against the lab: a custom resource's condition, set through its status subresource.

use std::time::Duration;

use kit::apply::{Engine, parse_manifest};
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
