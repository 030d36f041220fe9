//! The real-cluster proof that storage works: a throw-away PVC that binds, a pod that writes
//! and reads it, and its Longhorn volume healthy with a replica on each of three nodes.
//! Everything is deleted afterwards, whatever happened.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kit::report::Check;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, LogParams, ObjectMeta, PostParams};
use kube::discovery::ApiResource;

use crate::settings::{NAMESPACE, STORAGE_CLASS};

const PROBE: &str = "talos-ha-volume-probe";
const PROBE_NAMESPACE: &str = "default";
const WRITTEN: &str = "written by talos-ha";
const TIMEOUT: Duration = Duration::from_secs(300);

fn claim() -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some(PROBE.to_owned()), ..ObjectMeta::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: Some(STORAGE_CLASS.to_owned()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), Quantity("64Mi".to_owned()))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// Writes, reads back, then stays up so the volume stays attached while its replicas are read.
fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta { name: Some(PROBE.to_owned()), ..ObjectMeta::default() },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            containers: vec![Container {
                name: "probe".to_owned(),
                image: Some("docker.io/library/busybox:1.37".to_owned()),
                command: Some(vec![
                    "sh".to_owned(),
                    "-c".to_owned(),
                    format!("echo '{WRITTEN}' > /data/probe && sync && cat /data/probe && sleep 600"),
                ]),
                volume_mounts: Some(vec![VolumeMount {
                    name: "data".to_owned(),
                    mount_path: "/data".to_owned(),
                    ..VolumeMount::default()
                }]),
                ..Container::default()
            }],
            volumes: Some(vec![Volume {
                name: "data".to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: PROBE.to_owned(),
                    read_only: None,
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// A Longhorn custom resource kind (`longhorn.io/v1beta2`), e.g. `("Volume", "volumes")`.
pub fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "longhorn.io".into(),
        version: "v1beta2".into(),
        api_version: "longhorn.io/v1beta2".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

async fn poll<T, F, Fut>(what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{what} within {}s", TIMEOUT.as_secs());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn exercise(client: &kube::Client, replicas: usize) -> anyhow::Result<String> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), PROBE_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), PROBE_NAMESPACE);
    claims.create(&PostParams::default(), &claim()).await.context("creating the probe PVC")?;
    pods.create(&PostParams::default(), &pod()).await.context("creating the probe pod")?;
    let volume = poll("the probe PVC did not bind", || async {
        let claim = claims.get(PROBE).await?;
        Ok(claim
            .spec
            .and_then(|spec| spec.volume_name)
            .filter(|_| claim.status.as_ref().and_then(|status| status.phase.as_deref()) == Some("Bound")))
    })
    .await?;
    poll("the probe pod did not read back what it wrote", || async {
        let logs = pods.logs(PROBE, &LogParams::default()).await.unwrap_or_default();
        Ok(logs.contains(WRITTEN).then_some(()))
    })
    .await?;
    let nodes = poll("the volume did not report healthy replicas on distinct nodes", || async {
        let health = volume_health(client).await?;
        Ok(health
            .into_iter()
            .find(|health| health.name == volume && health.robustness == "healthy" && health.nodes.len() >= replicas)
            .map(|health| health.nodes))
    })
    .await?;
    Ok(format!(
        "a {STORAGE_CLASS} PVC bound, a pod wrote and read it, and volume {volume} is healthy with replicas on {}",
        nodes.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// One Longhorn volume as Longhorn reports it: `healthy`, `degraded` (a replica missing or
/// rebuilding) or `faulted`, and the nodes its running replicas are on.
#[derive(Debug)]
pub struct VolumeHealth {
    pub name: String,
    pub robustness: String,
    pub nodes: BTreeSet<String>,
}

/// Every Longhorn volume's health; an error names Longhorn's absence (stage 06 not installed).
pub async fn volume_health(client: &kube::Client) -> anyhow::Result<Vec<VolumeHealth>> {
    let volumes: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource("Volume", "volumes"));
    let replicas: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &resource("Replica", "replicas"));
    let listed =
        volumes.list(&ListParams::default()).await.context("listing Longhorn volumes (is stage 06 installed?)")?;
    let running = replicas.list(&ListParams::default()).await.context("listing Longhorn replicas")?;
    Ok(listed
        .items
        .into_iter()
        .map(|volume| {
            let name = volume.metadata.name.clone().unwrap_or_default();
            let nodes = running
                .items
                .iter()
                .filter(|replica| replica.data["spec"]["volumeName"] == name.as_str())
                .filter(|replica| replica.data["status"]["currentState"] == "running")
                .filter_map(|replica| replica.data["spec"]["nodeID"].as_str().map(str::to_owned))
                .collect();
            let robustness = volume.data["status"]["robustness"].as_str().unwrap_or("unknown").to_owned();
            VolumeHealth { name, robustness, nodes }
        })
        .collect())
}

/// The whole proof as one check; the probe objects are removed afterwards.
pub async fn check(client: &kube::Client, replicas: usize) -> Check {
    let outcome = exercise(client, replicas).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), PROBE_NAMESPACE);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), PROBE_NAMESPACE);
    let _ = pods.delete(PROBE, &DeleteParams::default().grace_period(0)).await;
    let _ = claims.delete(PROBE, &DeleteParams::default()).await;
    match outcome {
        Ok(proof) => Check::pass("volume", proof),
        Err(error) => Check::fail(
            "volume",
            format!("{error:#}"),
            "look at `kubectl -n longhorn-system get volumes,replicas` and the longhorn-manager logs",
        ),
    }
}
