//! `longhorn::volume::volume_health`, which `verify-ha` reads before and after a drill, against
//! Longhorn's real CRDs in the lab. No Longhorn manager runs there, so the test writes the
//! Volume and Replica objects (and their status) the way the manager would.

use std::process::ExitCode;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use longhorn::{Longhorn, NAMESPACE};
use tests::{lab_client, run_stage_async};

/// Creates `name` with `spec`, then sets its `status` (a subresource: a separate write).
async fn create_with_status(
    api: &Api<DynamicObject>,
    resource: &ApiResource,
    name: &str,
    spec: serde_json::Value,
    status: serde_json::Value,
) -> anyhow::Result<()> {
    let _ = api.delete(name, &DeleteParams::default()).await;
    let object = DynamicObject::new(name, resource).within(NAMESPACE).data(serde_json::json!({ "spec": spec }));
    api.create(&PostParams::default(), &object).await?;
    let status = serde_json::json!({ "apiVersion": resource.api_version, "kind": resource.kind, "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn volume_health_reads_robustness_and_the_nodes_of_running_replicas() -> anyhow::Result<()> {
    let (code, out) = run_stage_async(Longhorn, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let client = lab_client().await?;
    let (volume_resource, replica_resource) =
        (longhorn::volume::resource("Volume", "volumes"), longhorn::volume::resource("Replica", "replicas"));
    let volumes: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &volume_resource);
    let replicas: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &replica_resource);

    let volume = "talos-ha-test-volume";
    create_with_status(
        &volumes,
        &volume_resource,
        volume,
        serde_json::json!({ "numberOfReplicas": 3 }),
        serde_json::json!({ "robustness": "degraded" }),
    )
    .await?;
    // Two replicas running on two workers, a third still rebuilding on the last one.
    for (replica, node, state) in [("r-1", "wk01", "running"), ("r-2", "wk02", "running"), ("r-3", "wk03", "starting")]
    {
        let name = format!("{volume}-{replica}");
        let spec = serde_json::json!({ "volumeName": volume, "nodeID": node });
        create_with_status(&replicas, &replica_resource, &name, spec, serde_json::json!({ "currentState": state }))
            .await?;
    }

    let health = longhorn::volume::volume_health(&client).await?;
    let found = health.iter().find(|health| health.name == volume);
    let found = found.ok_or_else(|| anyhow::anyhow!("{volume} not listed: {health:?}"))?;
    assert_eq!(found.robustness, "degraded");
    assert_eq!(found.nodes.iter().map(String::as_str).collect::<Vec<_>>(), ["wk01", "wk02"], "running replicas only");

    for replica in ["r-1", "r-2", "r-3"] {
        replicas.delete(&format!("{volume}-{replica}"), &DeleteParams::default()).await?;
    }
    volumes.delete(volume, &DeleteParams::default()).await?;
    Ok(())
}
