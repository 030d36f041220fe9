//! Stage 07: Headlamp, a web dashboard for the cluster, at `https://headlamp.<traefik.ip>.
//! sslip.io`. The pinned release manifest with its image pinned, a read-only login identity
//! (`headlamp-admin`) and its long-lived token in `state/headlamp-token`. The lesson is in
//! README.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kit::apply::{Engine, patch_typed, to_dynamic};
use kit::artifacts::Component;
use kit::check::{Check, common, exposure};
use kit::config::ClusterConfig;
use kit::stage::{Action, Change, Context, Stage, Target, objects_yaml, write_folder};
use kube::api::{Api, DynamicObject, ListParams, ObjectMeta};

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "headlamp";
/// The identity a person logs in to Headlamp with (its token), read-only.
pub const LOGIN: &str = "headlamp-admin";
/// Read access to what the built-in `view` role leaves out: cluster-scoped objects.
pub const CLUSTER_READ_ROLE: &str = "talos-ha-dashboard-cluster-read";
const MANIFEST: &str = "kubernetes-headlamp.yaml";
const IMAGE: &str = "ghcr.io/headlamp-k8s/headlamp";
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Headlamp;

/// Where the login token is written (0600); only its path is ever printed.
pub fn token_file(config: &ClusterConfig) -> PathBuf {
    config.state_dir().join("headlamp-token")
}

/// The login identity and its rights: the built-in `view` role everywhere (every namespaced
/// object but Secrets, read-only) plus read access to nodes, volumes and the other
/// cluster-scoped objects a dashboard shows. No write, no Secrets.
pub fn login_objects() -> anyhow::Result<Vec<DynamicObject>> {
    let meta = |name: &str, namespace: Option<&str>| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..ObjectMeta::default()
    };
    let read = |group: &str, resources: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: ["get", "list", "watch"].iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    let subject = Subject {
        kind: "ServiceAccount".to_owned(),
        name: LOGIN.to_owned(),
        namespace: Some(NAMESPACE.to_owned()),
        ..Subject::default()
    };
    let binding = |name: &str, role: &str| ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: role.to_owned(),
        },
        subjects: Some(vec![subject.clone()]),
    };
    let cluster_read = ClusterRole {
        metadata: meta(CLUSTER_READ_ROLE, None),
        rules: Some(vec![
            read("", &["nodes", "persistentvolumes", "namespaces"]),
            read("storage.k8s.io", &["storageclasses", "csidrivers", "volumeattachments"]),
            read("networking.k8s.io", &["ingressclasses"]),
            read("apiextensions.k8s.io", &["customresourcedefinitions"]),
            read("metrics.k8s.io", &["nodes", "pods"]),
            read("gateway.networking.k8s.io", &["gatewayclasses"]),
        ]),
        ..ClusterRole::default()
    };
    Ok(vec![
        to_dynamic(&ServiceAccount { metadata: meta(LOGIN, Some(NAMESPACE)), ..ServiceAccount::default() })?,
        to_dynamic(&cluster_read)?,
        to_dynamic(&binding(&format!("{LOGIN}-view"), "view"))?,
        to_dynamic(&binding(&format!("{LOGIN}-cluster-read"), CLUSTER_READ_ROLE))?,
    ])
}

/// The release manifest with its `latest` image pinned to the release, and tracing off (it
/// would export to an `otel-collector` that does not exist here).
pub fn upstream(ctx: &Context) -> anyhow::Result<Vec<DynamicObject>> {
    let (mut objects, _) = ctx.upstream(Component::Headlamp, MANIFEST)?;
    let version = ctx.config.versions.headlamp;
    patch_typed::<Deployment>(&mut objects, NAME, |deployment| {
        let pod = deployment.spec.as_mut().and_then(|spec| spec.template.spec.as_mut());
        for container in pod.into_iter().flat_map(|pod| pod.containers.iter_mut()) {
            container.image = Some(format!("{IMAGE}:{version}"));
            for variable in container.env.iter_mut().flatten() {
                set_env(variable, "HEADLAMP_CONFIG_SERVICE_VERSION", &version.to_string());
                set_env(variable, "HEADLAMP_CONFIG_TRACING_ENABLED", "false");
            }
        }
    })?;
    Ok(objects)
}

fn set_env(variable: &mut EnvVar, name: &str, value: &str) {
    if variable.name == name {
        variable.value = Some(value.to_owned());
    }
}

fn ui_objects(config: &ClusterConfig) -> anyhow::Result<Vec<DynamicObject>> {
    let host = kit::certs::legacy_host(config, NAME);
    Ok(vec![
        to_dynamic(&kit::certs::service_certificate(NAMESPACE, NAME, vec![host.clone()]))?,
        to_dynamic(&kit::certs::traefik_ingress(NAMESPACE, NAME, &host, NAME, 80))?,
    ])
}

/// Waits for the token controller to fill the login's Secret, then writes it (0600).
async fn write_token(client: &kube::Client, config: &ClusterConfig) -> anyhow::Result<Change> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let token = loop {
        let secret = secrets.get(LOGIN).await.with_context(|| format!("reading Secret {NAMESPACE}/{LOGIN}"))?;
        if let Some(ByteString(token)) = secret.data.unwrap_or_default().remove("token") {
            break token;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "Secret {NAMESPACE}/{LOGIN} got no token within 60s: is kube-controller-manager running?"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let path = token_file(config);
    let action = match std::fs::read(&path) {
        Ok(old) if old == token => Action::Unchanged,
        Ok(_) => Action::Configured,
        Err(_) => Action::Created,
    };
    if action != Action::Unchanged {
        kit::fsutil::write_private(&path, &token)?;
    }
    tracing::info!(
        "Headlamp login token written to {} (0600): paste it at https://{}",
        path.display(),
        kit::certs::legacy_host(config, NAME)
    );
    Ok(Change { object: format!("File {}", path.display()), action, diff: None })
}

/// The Ingress sends traffic to the Service, and the Service selects a Ready pod (what its
/// endpoints are made of; the lab's loopback pod addresses are never published as endpoints,
/// so the pods are read directly).
async fn routed_check(client: &kube::Client) -> anyhow::Result<Check> {
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> = Api::namespaced(client.clone(), NAMESPACE);
    let backend = ingresses.get_opt(NAME).await?.and_then(|ingress| {
        let rules = ingress.spec?.rules?;
        let path = rules.first()?.http.as_ref()?.paths.first()?.clone();
        path.backend.service.map(|service| service.name)
    });
    let service = Api::<Service>::namespaced(client.clone(), NAMESPACE).get_opt(NAME).await?;
    let selector = service.and_then(|s| s.spec).and_then(|spec| spec.selector).unwrap_or_default();
    let labels: Vec<String> = selector.iter().map(|(key, value)| format!("{key}={value}")).collect();
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels(&labels.join(",")))
        .await?;
    let ready = pods.items.iter().filter(|pod| kit::lab::pod_is_ready(pod)).count();
    Ok(match backend.as_deref() {
        Some(NAME) if !labels.is_empty() && ready > 0 => {
            Check::pass("routed", format!("Ingress {NAME} → Service {NAME} → {ready} Ready pod(s)"))
        }
        Some(NAME) => Check::fail("routed", format!("Service {NAME} selects no Ready pod"), "look at the pod's events"),
        other => Check::fail("routed", format!("Ingress {NAME} routes to {other:?}"), "headlamp apply"),
    })
}

impl Stage for Headlamp {
    const NAME: &'static str = "headlamp";
    const FOLDER: &'static str = "07-dashboard-headlamp";
    const TITLE: &'static str = "Stage 07: the Headlamp dashboard over HTTPS, with a read-only login token";
    const LESSON: &'static str = include_str!("../README.md");

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let (api, client) = common::api(ctx).await;
        let mut checks = vec![api];
        let Some(client) = client else { return Ok(checks) };
        checks.extend(exposure::https_ingress(&client, ctx.target).await);
        Ok(checks)
    }

    async fn plan(&self, ctx: &Context) -> anyhow::Result<Vec<Change>> {
        let mut objects = login_objects()?;
        objects.extend(upstream(ctx)?);
        objects.extend(ui_objects(&ctx.config)?);
        Engine::new(ctx.client().await?, Self::NAME).await?.plan(&objects).await
    }

    async fn apply(&self, ctx: &Context) -> anyhow::Result<Vec<Change>> {
        let client = ctx.client().await?;
        let mut engine = Engine::new(client.clone(), Self::NAME).await?;
        // The ServiceAccount first: the release's token Secret names it, and the token
        // controller deletes a token Secret whose ServiceAccount does not exist.
        let mut changes = engine.apply(&login_objects()?).await?;
        let mut objects = upstream(ctx)?;
        objects.extend(ui_objects(&ctx.config)?);
        changes.extend(engine.apply(&objects).await?);
        tracing::info!("waiting for Headlamp to be Available");
        kit::wait::deployment_available(&client, NAMESPACE, NAME, ROLLOUT_TIMEOUT).await?;
        changes.push(write_token(&client, &ctx.config).await?);
        Ok(changes)
    }

    async fn verify(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let client = ctx.client().await?;
        let wait = Duration::from_secs(60);
        let mut checks = vec![common::deployment(&client, NAMESPACE, NAME, wait, Self::NAME).await];
        checks.push(routed_check(&client).await?);
        let token = token_file(&ctx.config);
        checks.push(if token.exists() {
            Check::pass("login token", format!("{} holds the read-only login token", token.display()))
        } else {
            Check::fail("login token", format!("{} is missing", token.display()), "headlamp apply")
        });
        checks.push(match ctx.target {
            Target::Talos => {
                let resource = kit::certs::certificate_resource();
                match kit::wait::condition_true(&client, &resource, Some(NAMESPACE), NAME, "Ready", wait).await {
                    Ok(()) => Check::pass("certificate", format!("Certificate {NAMESPACE}/{NAME} is Ready")),
                    Err(error) => Check::fail("certificate", format!("{error:#}"), "look at cert-manager's log"),
                }
            }
            Target::Lab => Check::not_checkable_in_lab("certificate", "no cert-manager controller runs in the lab"),
        });
        Ok(checks)
    }

    async fn render(&self, ctx: &Context, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let mut objects = login_objects()?;
        objects.extend(upstream(&ctx.as_talos_target())?);
        objects.extend(ui_objects(&ctx.config)?);
        let files = vec![
            ("headlamp.yaml".to_owned(), objects_yaml(&objects)?),
            ("README.md".to_owned(), Self::LESSON.as_bytes().to_vec()),
        ];
        write_folder(out, Self::FOLDER, files)
    }
}
