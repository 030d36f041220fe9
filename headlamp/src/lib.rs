//! Stage 07: Headlamp, a web dashboard for the cluster, at `https://headlamp.<traefik.ip>.
//! sslip.io`. The pinned release manifest with its image pinned, a read-only login identity
//! (`headlamp-admin`) and its long-lived token in `state/headlamp-token`. The lesson is in
//! README.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kit::artifacts::Component;
use kit::bundle::{Bundle, BundleStage, Part, Ready};
use kit::check::{common, exposure};
use kit::config::ClusterConfig;
use kit::context::Context;
use kit::manifest::to_dynamic;
use kit::report::{Action, Change, Check};
use kube::api::{Api, DynamicObject, ObjectMeta};

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "headlamp";
/// The identity a person logs in to Headlamp with (its token), read-only.
pub const LOGIN: &str = "headlamp-admin";
/// Read access to what the built-in `view` role leaves out: cluster-scoped objects.
pub const CLUSTER_READ_ROLE: &str = "talos-ha-dashboard-cluster-read";
const MANIFEST: &str = "kubernetes-headlamp.yaml";
const IMAGE: &str = "ghcr.io/headlamp-k8s/headlamp";

pub struct Headlamp;

/// Where the login token is written (0600); only its path is ever printed.
pub fn token_file(config: &ClusterConfig) -> PathBuf {
    config.state_dir().join("headlamp-token")
}

/// The login identity and its rights: the built-in `view` role everywhere (every namespaced
/// object but Secrets, read-only) plus read access to nodes, volumes and the other
/// cluster-scoped objects a dashboard shows. No write, no Secrets.
fn login_objects() -> anyhow::Result<Vec<DynamicObject>> {
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
fn release(ctx: &Context) -> anyhow::Result<Part> {
    let version = ctx.config.versions.headlamp;
    Part::upstream(ctx, Component::Headlamp, MANIFEST)?.rendered_as("headlamp.yaml").patch::<Deployment>(
        NAME,
        |deployment| {
            let pod = deployment.spec.as_mut().and_then(|spec| spec.template.spec.as_mut());
            for container in pod.into_iter().flat_map(|pod| pod.containers.iter_mut()) {
                container.image = Some(format!("{IMAGE}:{version}"));
                for variable in container.env.iter_mut().flatten() {
                    set_env(variable, "HEADLAMP_CONFIG_SERVICE_VERSION", &version.to_string());
                    set_env(variable, "HEADLAMP_CONFIG_TRACING_ENABLED", "false");
                }
            }
        },
    )
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

/// The token in `state/headlamp-token` is one a person can log in with, and only read with:
/// the file is private (0600), it is the login Secret's current token (a recreated
/// ServiceAccount gets a new one), the API server authenticates it as the login identity,
/// and its authorizer lets that identity list pods but not read Secrets or delete.
async fn token_check(client: &kube::Client, config: &ClusterConfig) -> anyhow::Result<Check> {
    use kit::rbac::Expect;
    let path = token_file(config);
    let shown = path.display();
    let fail = |reason: String| Check::fail("login token", reason, "headlamp apply (it writes the current token)");
    let Ok(token) = std::fs::read(&path) else {
        return Ok(fail(format!("{shown} is missing")));
    };
    let mode = kit::fsutil::mode(&path)?;
    if mode & 0o077 != 0 {
        return Ok(fail(format!("{shown} is {mode:o}: others may read the token (it must be 600)")));
    }
    let secret = Api::<Secret>::namespaced(client.clone(), NAMESPACE).get_opt(LOGIN).await?;
    let current = secret.and_then(|secret| secret.data?.remove("token")).map(|ByteString(token)| token);
    if current.as_deref() != Some(token.as_slice()) {
        return Ok(fail(format!("{shown} is not the current token of Secret {NAMESPACE}/{LOGIN}")));
    }
    let text = String::from_utf8(token).context("the token is not text")?;
    let Some(identity) = kit::rbac::token_identity(client, text.trim()).await? else {
        return Ok(fail(format!("the API server does not accept the token in {shown}")));
    };
    let user = identity.username.clone().unwrap_or_default();
    let expected_user = format!("system:serviceaccount:{NAMESPACE}:{LOGIN}");
    if user != expected_user {
        return Ok(fail(format!("the token authenticates as {user}, not {expected_user}")));
    }
    let expected = [
        Expect { allowed: true, verb: "list", resource: ("", "pods"), namespace: None },
        Expect { allowed: true, verb: "list", resource: ("", "nodes"), namespace: None },
        Expect { allowed: false, verb: "get", resource: ("", "secrets"), namespace: Some(NAMESPACE) },
        Expect { allowed: false, verb: "delete", resource: ("", "pods"), namespace: Some("default") },
        Expect { allowed: false, verb: "update", resource: ("apps", "deployments"), namespace: Some(NAMESPACE) },
    ];
    let wrong = kit::rbac::unexpected(client, &identity, &expected).await?;
    Ok(if wrong.is_empty() {
        Check::pass(
            "login token",
            format!(
                "{shown} (600) authenticates as {user}, who may list pods and nodes, and not read Secrets or change anything"
            ),
        )
    } else {
        Check::fail(
            "login token",
            format!("{user} {}", wrong.join(", ")),
            format!("headlamp apply; look for other bindings naming ServiceAccount {NAMESPACE}/{LOGIN}"),
        )
    })
}

impl BundleStage for Headlamp {
    const NAME: &'static str = "headlamp";
    const FOLDER: &'static str = "07-dashboard-headlamp";
    const TITLE: &'static str = "Stage 07: the Headlamp dashboard over HTTPS, with a read-only login token";
    const LESSON: &'static str = include_str!("../README.md");

    /// The login identity first: the release's token Secret names its ServiceAccount, and the
    /// token controller deletes a token Secret whose ServiceAccount does not exist. Then the
    /// release and the UI's exposure; then Headlamp must run.
    fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle> {
        const OURS: &str = "login-and-ui.yaml";
        Ok(Bundle::new()
            .apply([Part::ours(OURS, login_objects()?)])
            .apply([release(ctx)?, Part::ours(OURS, ui_objects(&ctx.config)?)])
            .wait(Ready::deployment(NAMESPACE, NAME)))
    }

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let (api, client) = common::api(ctx).await;
        let mut checks = vec![api];
        let Some(client) = client else { return Ok(checks) };
        checks.extend(exposure::https_ingress(ctx, &client).await);
        Ok(checks)
    }

    /// The login token, written where a person finds it (0600).
    async fn after_apply(&self, ctx: &Context, client: &kube::Client, dry_run: bool) -> anyhow::Result<Vec<Change>> {
        if dry_run {
            return Ok(Vec::new());
        }
        Ok(vec![write_token(client, &ctx.config).await?])
    }

    async fn verify(&self, ctx: &Context, client: &kube::Client) -> anyhow::Result<Vec<Check>> {
        let objects = self.bundle(ctx)?.objects();
        Ok(vec![
            common::stored_as_configured(client, Self::NAME, &objects, "Headlamp's objects").await,
            kit::check::graph::ingress(client, NAMESPACE, NAME).await?,
            token_check(client, &ctx.config).await?,
            common::certificate_ready(ctx, client, NAMESPACE, NAME).await,
        ])
    }
}
