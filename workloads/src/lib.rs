//! Stage 100: the sample workloads, our own typed manifests, each in its own namespace:
//! whoami on the legacy path (Traefik, HTTPS), a demo app and KubeInvaders on the modern
//! path (Envoy Gateway, HTTPRoutes), and a stateful app on a Longhorn volume. The lesson is
//! in README.md.

pub mod apps;
pub mod pods;
pub mod routes;

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kit::bundle::{Bundle, BundleStage, Part, Ready};
use kit::check::{common, exposure};
use kit::context::{Context, Target};
use kit::report::Check;
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
fn deployments(target: Target) -> impl Iterator<Item = Ready> {
    let can_run = move |(namespace, _): &(&str, &str)| target == Target::Talos || *namespace != NOTES;
    DEPLOYMENTS.into_iter().filter(can_run).map(|(namespace, name)| Ready::deployment(namespace, name))
}

/// Stage 08's Gateway has the listeners the routes attach to (`routes::LISTENERS`).
async fn gateway_check(client: &kube::Client) -> Check {
    let resource = kit::names::gateway_api_resource("Gateway", "gateways");
    let gateways: Api<DynamicObject> = Api::namespaced_with(client.clone(), kit::names::GATEWAY_NAMESPACE, &resource);
    let fix = "run stage 08 first: `envoy-gateway apply` (or `cargo xtask install-all --from envoy-gateway`)";
    let gateway = kit::names::GATEWAY;
    match gateways.get_opt(gateway).await {
        Ok(Some(stored)) => {
            let listeners: Vec<&str> = stored.data["spec"]["listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|listener| listener["name"].as_str())
                .collect();
            let missing: Vec<&str> =
                routes::LISTENERS.into_iter().filter(|wanted| !listeners.contains(wanted)).collect();
            if missing.is_empty() {
                Check::pass("gateway", format!("Gateway {gateway} (stage 08) has listeners {}", listeners.join(", ")))
            } else {
                Check::fail("gateway", format!("Gateway {gateway} has no listener {}", missing.join(", ")), fix)
            }
        }
        Ok(None) => Check::fail("gateway", format!("Gateway {gateway} does not exist"), fix),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Check::fail("gateway", "the Gateway API is not installed", fix)
        }
        Err(error) => Check::fail("gateway", format!("{error:#}"), "make the Kubernetes API reachable first"),
    }
}

/// Each entry point's path to Ready pods: whoami's Ingress, the demo's and KubeInvaders'
/// HTTPRoutes (through the Gateway's listeners).
async fn route_checks(client: &kube::Client) -> anyhow::Result<Vec<Check>> {
    Ok(vec![
        kit::check::graph::ingress(client, WHOAMI, WHOAMI).await?,
        kit::check::graph::http_route(client, DEMO, DEMO).await?,
        kit::check::graph::http_route(client, KUBEINVADERS, KUBEINVADERS).await?,
    ])
}

/// KubeInvaders may shoot (delete) pods in its targets' namespace and nowhere else, and
/// reads no Secrets: asked of the API server's authorizer, as its token would be.
async fn kubeinvaders_rights_check(client: &kube::Client) -> anyhow::Result<Check> {
    use kit::rbac::Expect;
    let pods = ("", "pods");
    let expected = [
        Expect { allowed: true, verb: "delete", resource: pods, namespace: Some(TARGETS) },
        Expect { allowed: false, verb: "delete", resource: pods, namespace: Some(KUBEINVADERS) },
        Expect { allowed: false, verb: "delete", resource: pods, namespace: Some("kube-system") },
        Expect { allowed: false, verb: "delete", resource: pods, namespace: None },
        Expect { allowed: false, verb: "get", resource: ("", "secrets"), namespace: Some(TARGETS) },
    ];
    let account = kit::rbac::service_account(KUBEINVADERS, KUBEINVADERS);
    let wrong = kit::rbac::unexpected(client, &account, &expected).await?;
    Ok(if wrong.is_empty() {
        Check::pass(
            "kubeinvaders rights",
            format!("its ServiceAccount may delete pods in {TARGETS} only, and read no Secrets"),
        )
    } else {
        Check::fail(
            "kubeinvaders rights",
            format!("its ServiceAccount {}", wrong.join(", ")),
            "workloads apply; look for other RoleBindings naming ServiceAccount kubeinvaders/kubeinvaders",
        )
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

/// How many requests the canary check sends: with a 10% canary, the chance that none of
/// them reaches v2 is 0.9^60, under 0.2%.
const SPLIT_REQUESTS: usize = 60;

/// The demo's weighted split: requests without the header reach both versions, v1 the large
/// majority (`CANARY_PERCENT` to v2). A split broken to 100/0 or 0/100, or turned around, fails.
fn split_check(url: &str, ca: Option<&[u8]>) -> Check {
    let mut answers = (0, 0, Vec::new());
    for _ in 0..SPLIT_REQUESTS {
        match kit::http::get(url, ca, &[]) {
            Ok(answer) if answer.status == 200 && answer.body.contains("demo v1") => answers.0 += 1,
            Ok(answer) if answer.status == 200 && answer.body.contains("demo v2") => answers.1 += 1,
            Ok(answer) => answers.2.push(format!("{} {}", answer.status, answer.body.trim())),
            Err(error) => answers.2.push(format!("{error:#}")),
        }
    }
    let (v1, v2, other) = answers;
    let shown = format!("{SPLIT_REQUESTS} requests to {url}: {v1} reached v1, {v2} reached v2");
    if other.is_empty() && v2 > 0 && v1 >= 3 * v2 {
        Check::pass("demo", format!("{shown} (a {CANARY_PERCENT}% canary)"))
    } else {
        let odd = other.first().map(|first| format!(", {} other answers, first: {first}", other.len()));
        Check::fail(
            "demo",
            format!("{shown}{}; a {CANARY_PERCENT}% canary sends most to v1 and some to v2", odd.unwrap_or_default()),
            "kubectl -n demo get httproute demo -o yaml: the backendRefs' weights",
        )
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
        anyhow::Ok(listed.items.into_iter().filter(kit::client::pod_is_ready).collect::<Vec<_>>())
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

impl BundleStage for Workloads {
    const NAME: &'static str = "workloads";
    const FOLDER: &'static str = "100-workloads";
    const TITLE: &'static str = "Stage 100: sample apps on both paths, and a stateful app on Longhorn";
    const LESSON: &'static str = include_str!("../README.md");

    /// Every app in one apply, a file each; then each Deployment the target can bring up.
    fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle> {
        let config = &ctx.config;
        let apps = [
            Part::ours("whoami.yaml", apps::whoami(config)?),
            Part::ours("demo.yaml", apps::demo(config)?),
            Part::ours("kubeinvaders.yaml", apps::kubeinvaders(config)?),
            Part::ours("notes.yaml", apps::notes()?),
        ];
        Ok(deployments(ctx.target).fold(Bundle::new().apply(apps), Bundle::wait))
    }

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let (api, client) = common::api(ctx).await;
        let mut checks = vec![api];
        let Some(client) = client else { return Ok(checks) };
        checks.extend(exposure::https_ingress(ctx, &client).await);
        checks.push(gateway_check(&client).await);
        Ok(checks)
    }

    async fn verify(&self, ctx: &Context, client: &kube::Client) -> anyhow::Result<Vec<Check>> {
        let apps = self.bundle(ctx)?.objects();
        let mut checks = vec![common::stored_as_configured(client, Self::NAME, &apps, "the apps' objects").await];
        checks.extend(route_checks(client).await?);
        checks.push(kubeinvaders_rights_check(client).await?);
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
                        split_check(&demo, ca.as_deref()),
                        url_check("demo v2 by header", &demo, ca.as_deref(), Some((DEMO_HEADER, "v2")), "demo v2"),
                        kubeinvaders_check(&invaders, ca.as_deref()),
                    ]
                })
                .await?;
                checks.extend(probes);
                checks.push(persistence_check(client).await);
            }
            Target::Lab => {
                let why = "kwok runs no containers: nothing answers on the routes (their paths to Ready pods are checked above)";
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
}
