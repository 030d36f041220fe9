//! Stage 100: the sample workloads, our own typed manifests, each in its own namespace:
//! whoami on the legacy path (Traefik, HTTPS), a demo app and KubeInvaders on the modern
//! path (Envoy Gateway, HTTPRoutes), and a stateful app on a Longhorn volume. The lesson is
//! in README.md.

pub mod apps;
pub mod pods;
pub mod routes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kit::apply::Engine;
use kit::check::{Check, common, exposure};
use kit::stage::{Change, Context, Stage, Target, objects_yaml, write_folder};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};

use crate::apps::{CANARY_PERCENT, DEMO, DEMO_HEADER, FIRST_BOOT_FILE, KUBEINVADERS, NOTES, TARGETS, WHOAMI};

const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Workloads;

/// Every Deployment, by namespace and name, that must be Available.
pub const DEPLOYMENTS: [(&str, &str); 6] = [
    (WHOAMI, WHOAMI),
    (DEMO, "demo-v1"),
    (DEMO, "demo-v2"),
    (KUBEINVADERS, KUBEINVADERS),
    (TARGETS, "victim"),
    (NOTES, NOTES),
];

/// The Deployments a target can bring up: in the lab the stateful app's claim never binds
/// (no Longhorn manager provisions volumes there), so its pod stays Pending.
fn deployments(target: Target) -> impl Iterator<Item = (&'static str, &'static str)> {
    DEPLOYMENTS.into_iter().filter(move |(namespace, _)| target == Target::Talos || *namespace != NOTES)
}

/// Stage 08's Gateway exists (the routes attach to it).
async fn gateway_check(client: &kube::Client) -> Check {
    let resource = kit::names::gateway_api_resource("Gateway", "gateways");
    let gateways: Api<DynamicObject> = Api::namespaced_with(client.clone(), kit::names::GATEWAY_NAMESPACE, &resource);
    let fix = "run stage 08 first: `envoy-gateway apply` (or `cargo xtask install-all --from envoy-gateway`)";
    match gateways.get_opt(kit::names::GATEWAY).await {
        Ok(Some(_)) => Check::pass("gateway", format!("Gateway {} exists (stage 08)", kit::names::GATEWAY)),
        Ok(None) => Check::fail("gateway", format!("Gateway {} does not exist", kit::names::GATEWAY), fix),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Check::fail("gateway", "the Gateway API is not installed", fix)
        }
        Err(error) => Check::fail("gateway", format!("{error:#}"), "make the Kubernetes API reachable first"),
    }
}

/// The routes and the claim as stored: what the lab can show of the traffic.
async fn stored_check(client: &kube::Client) -> anyhow::Result<Check> {
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), DEMO, &routes::http_route_resource());
    let demo = routes.get(DEMO).await.context("reading HTTPRoute demo")?;
    let rules = &demo.data["spec"]["rules"];
    let header_rule = rules[0]["matches"][0]["headers"][0]["name"] == DEMO_HEADER;
    let canary = rules[1]["backendRefs"][1]["weight"] == CANARY_PERCENT;
    let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), NOTES).get(NOTES).await?;
    let class = claim.spec.and_then(|spec| spec.storage_class_name);
    Ok(if header_rule && canary && class.as_deref() == Some(kit::names::STORAGE_CLASS) {
        Check::pass(
            "objects",
            format!(
                "HTTPRoute demo: header {DEMO_HEADER} and a {CANARY_PERCENT}% canary; PVC notes on StorageClass {}",
                kit::names::STORAGE_CLASS
            ),
        )
    } else {
        Check::fail("objects", "the stored routes or claim differ from what apply sends", "workloads apply")
    })
}

/// One URL answers as expected (HTTPS trusting only the cluster CA).
fn url_check(name: &str, url: &str, ca: Option<&[u8]>, header: Option<(&str, &str)>, expect: &str) -> Check {
    let headers: Vec<(&str, &str)> = header.into_iter().collect();
    match kit::http::get(url, ca, &headers) {
        Ok(answer) if answer.status == 200 && answer.body.contains(expect) => {
            Check::pass(name, format!("{url} answers 200 with `{expect}`"))
        }
        Ok(answer) => Check::fail(name, format!("{url} answers {}", answer.status), "look at the route and the pods"),
        Err(error) => Check::fail(name, format!("{error:#}"), "is this machine on the LAN? `cargo xtask status`"),
    }
}

/// KubeInvaders works as its page uses it: over HTTPS (the page calls `https://<ENDPOINT>`),
/// `/kube/namespaces` names the target namespace (its NAMESPACE variable), and listing pods
/// there returns the victims (its RBAC). Together: env, route, TLS and RBAC.
fn kubeinvaders_check(base: &str, ca: Option<&[u8]>) -> Check {
    let namespaces = format!("{base}/kube/namespaces");
    let pods = format!("{base}/kube/pods?action=list&namespace={TARGETS}");
    let fix = "kubectl -n kubeinvaders logs deploy/kubeinvaders; the page needs the cluster CA trusted (state/ca.crt)";
    let answer = || {
        let listed = kit::http::get(&namespaces, ca, &[])?;
        anyhow::ensure!(
            listed.status == 200 && listed.body.contains(TARGETS),
            "{namespaces} answers {} without {TARGETS}: {}",
            listed.status,
            listed.body.trim()
        );
        let victims = kit::http::get(&pods, ca, &[])?;
        let json: serde_json::Value = serde_json::from_str(&victims.body)
            .with_context(|| format!("{pods} answers {} with no JSON: {}", victims.status, victims.body.trim()))?;
        let count = json["items"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(count == apps::VICTIMS, "{pods} lists {count} pods, expected {}", apps::VICTIMS);
        anyhow::Ok(count)
    };
    match answer() {
        Ok(count) => {
            Check::pass("kubeinvaders", format!("{namespaces} names {TARGETS}; {count} targets listed over HTTPS"))
        }
        Err(error) => Check::fail("kubeinvaders", format!("{error:#}"), fix),
    }
}

/// The stateful app serves its first-boot file; a NEW pod (another UID), on ANOTHER node (the
/// old one is cordoned meanwhile, then uncordoned), serves the same file: the data followed
/// the volume, not the pod. Each pod is read through the API server's pod proxy, so the
/// answer is that pod's and no other's.
async fn persistence_check(client: &kube::Client) -> Check {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NOTES);
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let selector = ListParams::default().labels(&format!("app.kubernetes.io/name={NOTES}"));
    let read = |pod: String| async move {
        let path = format!("/api/v1/namespaces/{NOTES}/pods/{pod}:{}/proxy/{FIRST_BOOT_FILE}", pods::APP_PORT);
        anyhow::Ok(client.request_text(http::Request::get(path).body(Vec::new())?).await?)
    };
    let cordon = |node: String, unschedulable: bool| {
        let nodes = nodes.clone();
        async move {
            let patch = serde_json::json!({"spec": {"unschedulable": unschedulable}});
            nodes.patch(&node, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
            anyhow::Ok(())
        }
    };
    let ready_pod = || async {
        let listed = pods.list(&selector).await?;
        anyhow::Ok(listed.items.into_iter().filter(kit::lab::pod_is_ready).collect::<Vec<_>>())
    };
    let proof = async {
        let old = ready_pod().await?.into_iter().next().context("no Ready notes pod")?;
        let (old_uid, old_name) =
            (old.metadata.uid.clone().unwrap_or_default(), old.metadata.name.clone().unwrap_or_default());
        let old_node = old.spec.as_ref().and_then(|spec| spec.node_name.clone()).context("the pod has no node")?;
        let before = read(old_name.clone()).await.context("reading the first-boot file")?;
        cordon(old_node.clone(), true).await?;
        let moved = async {
            pods.delete(&old_name, &DeleteParams::default()).await?;
            let deadline = tokio::time::Instant::now() + ROLLOUT_TIMEOUT;
            let new = loop {
                let fresh = ready_pod().await?.into_iter().find(|pod| pod.metadata.uid.as_deref() != Some(&old_uid));
                match fresh {
                    Some(pod) => break pod,
                    None if tokio::time::Instant::now() >= deadline => {
                        anyhow::bail!("no new notes pod was Ready within {}s", ROLLOUT_TIMEOUT.as_secs())
                    }
                    None => tokio::time::sleep(Duration::from_secs(2)).await,
                }
            };
            let new_node = new.spec.as_ref().and_then(|spec| spec.node_name.clone()).unwrap_or_default();
            let after = read(new.metadata.name.clone().unwrap_or_default()).await?;
            anyhow::Ok((new_node, after))
        }
        .await;
        // The node is given back whatever happened.
        let uncordoned = cordon(old_node.clone(), false).await;
        let (new_node, after) = moved?;
        uncordoned?;
        anyhow::ensure!(
            after == before,
            "the new pod on {new_node} read {after:?}, the old one had written {before:?}"
        );
        anyhow::Ok((before, old_node, new_node))
    };
    match proof.await {
        Ok((written, from, to)) => Check::pass(
            "persistence",
            format!("a new pod on {to} (the old one ran on {from}) reads the same `{}`", written.trim()),
        ),
        Err(error) => Check::fail("persistence", format!("{error:#}"), "kubectl -n notes describe pod,pvc"),
    }
}

impl Stage for Workloads {
    const NAME: &'static str = "workloads";
    const FOLDER: &'static str = "100-workloads";
    const TITLE: &'static str = "Stage 100: sample apps on both paths, and a stateful app on Longhorn";
    const LESSON: &'static str = include_str!("../README.md");

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let (api, client) = common::api(ctx).await;
        let mut checks = vec![api];
        let Some(client) = client else { return Ok(checks) };
        checks.extend(exposure::https_ingress(&client).await);
        checks.push(gateway_check(&client).await);
        Ok(checks)
    }

    async fn plan(&self, ctx: &Context) -> anyhow::Result<Vec<Change>> {
        Engine::new(ctx.client().await?, Self::NAME).await?.plan(&apps::all(&ctx.config)?).await
    }

    async fn apply(&self, ctx: &Context) -> anyhow::Result<Vec<Change>> {
        let client = ctx.client().await?;
        let changes = Engine::new(client.clone(), Self::NAME).await?.apply(&apps::all(&ctx.config)?).await?;
        for (namespace, name) in deployments(ctx.target) {
            tracing::info!("waiting for {namespace}/{name} to be Available");
            kit::wait::deployment_available(&client, namespace, name, ROLLOUT_TIMEOUT).await?;
        }
        Ok(changes)
    }

    async fn verify(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let client = ctx.client().await?;
        let wait = Duration::from_secs(60);
        let mut checks = Vec::new();
        for (namespace, name) in deployments(ctx.target) {
            checks.push(common::deployment(&client, namespace, name, wait, Self::NAME).await);
        }
        checks.push(stored_check(&client).await?);
        let config = &ctx.config;
        match ctx.target {
            Target::Talos => {
                let ca = std::fs::read(config.state_dir().join("ca.crt")).ok();
                let whoami = format!("https://{}/", kit::certs::legacy_host(config, WHOAMI));
                let demo = format!("https://{}/", config.service_host(DEMO, config.envoy_gateway_ip));
                let invaders = format!("https://{}", config.service_host(KUBEINVADERS, config.envoy_gateway_ip));
                let probes = tokio::task::spawn_blocking(move || {
                    vec![
                        url_check("whoami", &whoami, ca.as_deref(), None, "Hostname"),
                        url_check("demo", &demo, ca.as_deref(), None, "demo v"),
                        url_check("demo v2 by header", &demo, ca.as_deref(), Some((DEMO_HEADER, "v2")), "demo v2"),
                        kubeinvaders_check(&invaders, ca.as_deref()),
                    ]
                })
                .await?;
                checks.extend(probes);
                checks.push(persistence_check(&client).await);
            }
            Target::Lab => {
                let why = "kwok runs no containers: nothing answers on the routes";
                for name in ["whoami", "demo", "kubeinvaders"] {
                    checks.push(Check::not_checkable_in_lab(name, why));
                }
                checks.push(Check::not_checkable_in_lab(
                    "persistence",
                    "no Longhorn manager provisions volumes in the lab: the notes claim stays Pending, and its pod with it",
                ));
            }
        }
        Ok(checks)
    }

    async fn render(&self, ctx: &Context, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let config = &ctx.config;
        let files = vec![
            ("whoami.yaml".to_owned(), objects_yaml(&apps::whoami(config)?)?),
            ("demo.yaml".to_owned(), objects_yaml(&apps::demo(config)?)?),
            ("kubeinvaders.yaml".to_owned(), objects_yaml(&apps::kubeinvaders(config)?)?),
            ("notes.yaml".to_owned(), objects_yaml(&apps::notes()?)?),
            ("README.md".to_owned(), Self::LESSON.as_bytes().to_vec()),
        ];
        write_folder(out, Self::FOLDER, files)
    }
}
