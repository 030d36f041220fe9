//! Stage 06: Longhorn, replicated block storage made of the workers' own disks. The pinned
//! release manifest with typed patches (Pod Security, data path, replica count, the default
//! StorageClass), and the Longhorn UI behind Traefik with a CA certificate. The lesson is in
//! README.md.

pub mod settings;
pub mod talos;
pub mod volume;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::StorageClass;
use kit::artifacts::Component;
use kit::bundle::{Bundle, BundleStage, Part, Ready};
use kit::check::{common, exposure};
use kit::context::{Context, Target, Verb};
use kit::manifest::to_dynamic;
use kit::report::{Action, Change, Check};
use kube::api::{Api, DynamicObject, Patch, PatchParams};

pub use settings::{DATA_PATH, DEFAULT_CLASS_ANNOTATION, NAMESPACE, STORAGE_CLASS, replica_count};

const MANIFEST: &str = "longhorn.yaml";
pub const MANAGER: &str = "longhorn-manager";
/// Deploys the CSI driver's pods once the managers run.
const DRIVER_DEPLOYER: &str = "longhorn-driver-deployer";
pub const UI: &str = "longhorn-ui";
/// The UI's Service.
const FRONTEND: &str = "longhorn-frontend";
/// What the driver deployer starts: the CSI sidecars and the per-node plugin.
const CSI_DEPLOYMENTS: [&str; 4] = ["csi-attacher", "csi-provisioner", "csi-resizer", "csi-snapshotter"];
const CSI_PLUGIN: &str = "longhorn-csi-plugin";
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Longhorn;

/// The user the Longhorn UI asks for; its password is in [`password_file`].
pub const UI_USER: &str = "admin";
/// The Traefik middleware (and its Secret) that asks for it.
pub const UI_AUTH: &str = "longhorn-ui-auth";

/// Where the UI's password is kept: beside the config, 0600, made on the first apply.
pub fn password_file(ctx: &Context) -> PathBuf {
    ctx.config.state_dir().join("longhorn-ui-password")
}

/// The UI's password as each verb may see it.
pub enum UiPassword {
    /// `apply`: the one in the state folder, made there if missing.
    Kept(String),
    /// `plan` and `render` change nothing and show no secret: a placeholder.
    Placeholder,
}

impl UiPassword {
    /// `apply` reads it, or makes and keeps it (0600) the first time; `plan` and `verify` read
    /// the kept one when there is one (so an unchanged login plans as unchanged); `render`
    /// shows the placeholder.
    pub fn for_verb(ctx: &Context) -> anyhow::Result<UiPassword> {
        let path = password_file(ctx);
        Ok(match ctx.verb {
            Verb::Apply => {
                let password = kit::fsutil::password(&path)?;
                tracing::info!("the Longhorn UI asks for user {UI_USER} and the password in {} (0600)", path.display());
                UiPassword::Kept(password)
            }
            Verb::Render => UiPassword::Placeholder,
            Verb::Check | Verb::Plan | Verb::Verify => match std::fs::read_to_string(&path) {
                Ok(kept) if !kept.trim().is_empty() => UiPassword::Kept(kept.trim().to_owned()),
                _ => UiPassword::Placeholder,
            },
        })
    }

    fn text(&self) -> &str {
        match self {
            UiPassword::Kept(password) => password,
            UiPassword::Placeholder => "<generated into state/longhorn-ui-password on apply>",
        }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Middleware {
    api_version: &'static str,
    kind: &'static str,
    metadata: kube::api::ObjectMeta,
    spec: MiddlewareSpec,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct MiddlewareSpec {
    basic_auth: BasicAuth,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct BasicAuth {
    secret: &'static str,
    realm: &'static str,
    /// The UI never sees the credentials.
    remove_header: bool,
}

/// The UI behind Traefik: a CA certificate, and a BasicAuth login in front, since the UI
/// itself has none and can delete every volume. Traefik reads a `kubernetes.io/basic-auth`
/// Secret's username and password (traefik v3.3.7 pkg/provider/kubernetes/crd/kubernetes.go,
/// loadBasicAuthCredentials).
fn ui_objects(ctx: &Context, password: &UiPassword) -> anyhow::Result<Vec<DynamicObject>> {
    use k8s_openapi::ByteString;
    let host = kit::certs::legacy_host(&ctx.config, "longhorn");
    let metadata = kube::api::ObjectMeta {
        name: Some(UI_AUTH.into()),
        namespace: Some(NAMESPACE.into()),
        ..kube::api::ObjectMeta::default()
    };
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: metadata.clone(),
        type_: Some("kubernetes.io/basic-auth".into()),
        data: Some(std::collections::BTreeMap::from([
            ("username".to_owned(), ByteString(UI_USER.as_bytes().to_vec())),
            ("password".to_owned(), ByteString(password.text().as_bytes().to_vec())),
        ])),
        ..k8s_openapi::api::core::v1::Secret::default()
    };
    let middleware = Middleware {
        api_version: "traefik.io/v1alpha1",
        kind: "Middleware",
        metadata,
        spec: MiddlewareSpec { basic_auth: BasicAuth { secret: UI_AUTH, realm: "Longhorn", remove_header: true } },
    };
    let mut ingress = kit::certs::traefik_ingress(NAMESPACE, UI, &host, FRONTEND, 80);
    ingress
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(kit::certs::MIDDLEWARES_ANNOTATION.to_owned(), format!("{NAMESPACE}-{UI_AUTH}@kubernetescrd"));
    Ok(vec![
        to_dynamic(&kit::certs::service_certificate(NAMESPACE, UI, vec![host.clone()]))?,
        to_dynamic(&secret)?,
        to_dynamic(&middleware)?,
        to_dynamic(&ingress)?,
    ])
}

/// The UI asks for a login: its Ingress passes through the BasicAuth middleware, whose Secret
/// holds the kept password; on Talos, an HTTPS request without it gets 401 from Traefik.
async fn ui_login_check(client: &kube::Client, ctx: &Context) -> Check {
    let fix = "longhorn apply (it makes the login and puts it in front of the UI)";
    let stored = async {
        let ingress =
            Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(client.clone(), NAMESPACE).get(UI).await?;
        let annotations = ingress.metadata.annotations.unwrap_or_default();
        let wanted = format!("{NAMESPACE}-{UI_AUTH}@kubernetescrd");
        anyhow::ensure!(
            annotations.get(kit::certs::MIDDLEWARES_ANNOTATION) == Some(&wanted),
            "Ingress {UI} does not pass through {wanted}"
        );
        let secret =
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NAMESPACE).get(UI_AUTH).await?;
        let kept = std::fs::read_to_string(password_file(ctx)).unwrap_or_default();
        let stored = secret.data.unwrap_or_default().get("password").map(|bytes| bytes.0.clone()).unwrap_or_default();
        anyhow::ensure!(
            !kept.trim().is_empty() && stored == kept.trim().as_bytes(),
            "Secret {UI_AUTH} does not hold the password in {}",
            password_file(ctx).display()
        );
        anyhow::Ok(())
    };
    if let Err(error) = stored.await {
        return Check::fail("ui login", format!("{error:#}"), fix);
    }
    if ctx.target == Target::Lab {
        return Check::pass(
            "ui login",
            format!(
                "the UI's Ingress passes through BasicAuth ({UI_USER}, password in {})",
                password_file(ctx).display()
            ),
        );
    }
    let url = format!("https://{}/", kit::certs::legacy_host(&ctx.config, "longhorn"));
    let ca = std::fs::read(ctx.config.state_dir().join("ca.crt")).ok();
    let probe = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || kit::http::get(&url, ca.as_deref(), &[])).await
    };
    match probe {
        Ok(Ok(answer)) if answer.status == 401 => {
            Check::pass("ui login", format!("{url} asks for a login (401 without one)"))
        }
        Ok(Ok(answer)) => Check::fail("ui login", format!("{url} answers {} without a login", answer.status), fix),
        Ok(Err(error)) => Check::fail("ui login", format!("{error:#}"), "cargo xtask status"),
        Err(error) => Check::fail("ui login", format!("{error:#}"), "cargo xtask status"),
    }
}

/// Other StorageClasses marked default lose the mark: with two defaults, a PVC without a
/// class gets whichever the API server picks.
async fn demote_other_defaults(client: &kube::Client, dry_run: bool) -> anyhow::Result<Vec<Change>> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    let mut changes = Vec::new();
    for class in classes.list(&Default::default()).await.context("listing StorageClasses")? {
        let name = class.metadata.name.clone().unwrap_or_default();
        let annotations = class.metadata.annotations.unwrap_or_default();
        if name != STORAGE_CLASS && annotations.get(DEFAULT_CLASS_ANNOTATION).map(String::as_str) == Some("true") {
            if !dry_run {
                let patch = serde_json::json!({ "metadata": { "annotations": { DEFAULT_CLASS_ANNOTATION: "false" } } });
                classes.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
            let diff = Some(format!("~ metadata.annotations.{DEFAULT_CLASS_ANNOTATION}: \"true\" → \"false\""));
            changes.push(Change { object: format!("StorageClass {name}"), action: Action::Configured, diff });
        }
    }
    Ok(changes)
}

/// Workers that can take replicas: Ready and not cordoned.
async fn schedulable_workers(client: &kube::Client, ctx: &Context) -> anyhow::Result<Vec<String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut schedulable = Vec::new();
    for worker in ctx.config.workers() {
        if let Some(node) = nodes.get_opt(&worker.name).await?
            && kit::client::is_ready(&node)
            && !node.spec.as_ref().and_then(|spec| spec.unschedulable).unwrap_or(false)
        {
            schedulable.push(worker.name.clone());
        }
    }
    Ok(schedulable)
}

/// The settings and StorageClass as stored, compared with what the patches set.
async fn settings_check(client: &kube::Client, ctx: &Context) -> anyhow::Result<Check> {
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let mut stored = Vec::new();
    for config_map in config_maps.list(&Default::default()).await? {
        stored.push(to_dynamic(&config_map)?);
    }
    let replicas = replica_count(&ctx.config);
    let defaults = settings::default_settings(&stored)?;
    let class = settings::storage_class(&stored)?;
    let class_default = class.metadata.annotations.unwrap_or_default().get(DEFAULT_CLASS_ANNOTATION).cloned();
    let class_replicas = class.parameters.unwrap_or_default().get("numberOfReplicas").cloned();
    let want_replicas = replicas.to_string();
    Ok(
        if defaults.get("default-data-path").and_then(|v| v.as_str()) == Some(DATA_PATH)
            && defaults.get("default-replica-count").map(setting_text).as_deref() == Some(want_replicas.as_str())
            && class_default.as_deref() == Some("true")
            && class_replicas.as_deref() == Some(want_replicas.as_str())
        {
            Check::pass(
                "settings",
                format!("data path {DATA_PATH}, {replicas} replicas, StorageClass {STORAGE_CLASS} marked default"),
            )
        } else {
            Check::fail(
                "settings",
                format!(
                    "stored: settings {defaults:?}, StorageClass default {class_default:?}, replicas {class_replicas:?}"
                ),
                "longhorn apply",
            )
        },
    )
}

/// No StorageClass but longhorn is marked default (apply demotes the others: with two
/// defaults a claim without a class gets whichever the API server picks), and on Talos
/// longhorn's own class, which longhorn-manager makes at run time, is the default.
async fn default_class_check(client: &kube::Client, target: Target) -> anyhow::Result<Check> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    let defaults: Vec<String> = classes
        .list(&Default::default())
        .await?
        .into_iter()
        .filter(|class| {
            class.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).map(String::as_str)
                == Some("true")
        })
        .filter_map(|class| class.metadata.name)
        .collect();
    let name = "default storage class";
    let others: Vec<&String> = defaults.iter().filter(|class| *class != STORAGE_CLASS).collect();
    Ok(match (others.is_empty(), defaults.iter().any(|class| class == STORAGE_CLASS), target) {
        (false, _, _) => Check::fail(
            name,
            format!("other StorageClasses are marked default too: {others:?}"),
            "longhorn apply (it demotes them)",
        ),
        (true, true, _) => Check::pass(name, format!("{STORAGE_CLASS} is the only default StorageClass")),
        (true, false, Target::Lab) => Check::pass(
            name,
            format!(
                "no other StorageClass is marked default ({STORAGE_CLASS} itself is made by longhorn-manager, \
                 which kwok does not run)"
            ),
        ),
        (true, false, Target::Talos) => Check::fail(
            name,
            format!("no StorageClass is default (the default ones are {defaults:?})"),
            "longhorn apply (longhorn-manager creates its class from ConfigMap longhorn-storageclass)",
        ),
    })
}

impl BundleStage for Longhorn {
    const NAME: &'static str = "longhorn";
    const FOLDER: &'static str = "06-storage-longhorn";
    const TITLE: &'static str = "Stage 06: Longhorn replicated volumes, the default StorageClass, and the Longhorn UI";
    const LESSON: &'static str = include_str!("../README.md");

    /// The patched release and the UI's certificate, login and Ingress in one apply; then the
    /// manager on every worker, the driver deployer and the UI must run.
    fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle> {
        let release = Part::upstream(ctx, Component::Longhorn, MANIFEST)?
            .edit(|objects| settings::patch(objects, &ctx.config))?;
        let ui = Part::ours("longhorn-ui.yaml", ui_objects(ctx, &UiPassword::for_verb(ctx)?)?);
        let workers = ctx.config.workers().count();
        Ok(Bundle::new()
            .apply([release, ui])
            .wait(Ready::daemon_set(NAMESPACE, MANAGER).on_each(workers, "worker").within(ROLLOUT_TIMEOUT))
            .wait(Ready::deployment(NAMESPACE, DRIVER_DEPLOYER).within(ROLLOUT_TIMEOUT))
            .wait(Ready::deployment(NAMESPACE, UI).within(ROLLOUT_TIMEOUT)))
    }

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let (mut checks, client) = common::cluster(ctx).await;
        let Some(client) = client else { return Ok(checks) };
        let replicas = replica_count(&ctx.config);
        let schedulable = schedulable_workers(&client, ctx).await?;
        checks.push(if schedulable.len() >= replicas {
            Check::pass("workers", format!("{} schedulable workers for {replicas} replicas", schedulable.len()))
        } else {
            Check::fail(
                "workers",
                format!(
                    "{} schedulable workers ({}) for {replicas} replicas",
                    schedulable.len(),
                    schedulable.join(", ")
                ),
                "uncordon or repair workers (kubectl get nodes): each replica needs a node of its own",
            )
        });
        checks.extend(exposure::https_ingress(ctx, &client).await);
        // On the lab too: the box's twins report their extensions and configs as Talos does.
        checks.extend(talos::worker_checks(&ctx.config, DATA_PATH).await);
        Ok(checks)
    }

    /// Other StorageClasses marked default lose the mark (plan shows which).
    async fn after_apply(&self, _ctx: &Context, client: &kube::Client, dry_run: bool) -> anyhow::Result<Vec<Change>> {
        demote_other_defaults(client, dry_run).await
    }

    async fn verify(&self, ctx: &Context, client: &kube::Client) -> anyhow::Result<Vec<Check>> {
        let wait = Duration::from_secs(60);
        let mut checks = vec![
            ui_login_check(client, ctx).await,
            settings_check(client, ctx).await?,
            default_class_check(client, ctx.target).await?,
            kit::check::graph::ingress(client, NAMESPACE, UI).await?,
            common::certificate_ready(ctx, client, NAMESPACE, UI).await,
        ];
        match ctx.target {
            Target::Talos => {
                for deployment in CSI_DEPLOYMENTS {
                    checks.push(common::deployment(client, NAMESPACE, deployment, wait, Self::NAME).await);
                }
                checks.push(match kit::wait::daemonset_ready(client, NAMESPACE, CSI_PLUGIN, 0, wait).await {
                    Ok(ready) => Check::pass("csi plugin", format!("{CSI_PLUGIN} is ready on {ready} nodes")),
                    Err(error) => Check::fail("csi plugin", format!("{error:#}"), "look at the driver deployer's log"),
                });
                checks.push(volume::check(client, replica_count(&ctx.config)).await);
            }
            Target::Lab => {
                let why = "longhorn-manager creates the CSI driver, the StorageClass and the volumes at run time; \
                           kwok runs no manager";
                checks.push(Check::not_checkable_in_lab("csi", why));
                checks.push(Check::not_checkable_in_lab("volume", why));
            }
        }
        Ok(checks)
    }
}

/// A default setting's value as Longhorn reads it: a string as it is, a number (as releases
/// before v1.10 took it, and talos-ha wrote it) as its digits.
fn setting_text(value: &serde_json::Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}
