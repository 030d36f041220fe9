//! Add-on upgrades as data: the releases a component passes through on its way from the version
//! a cluster runs to its pin (the hops), and what each hop must do besides applying the new
//! release. The facts, each with its upstream source, are in shared/design/addon-upgrades.md;
//! the walk follows each upstream's policy:
//!
//! - Longhorn: one minor at a time, enforced (its manager refuses to start after a skipped
//!   minor, and a downgrade is prevented): longhorn/website docs/1.12.1/deploy/upgrade/_index.md.
//! - cert-manager: one minor at a time, the latest patch of each (recommended):
//!   cert-manager/website docs/installation/upgrade.md.
//! - Envoy Gateway: each minor documents only "upgrading from the previous version":
//!   envoyproxy/gateway@v1.9.0 site/content/en/v1.9/install/install-yaml.md.
//! - MetalLB, Traefik and metrics-server: straight to the target (release notes read, then the
//!   new manifest re-applied).
//!
//! The intermediate releases are the newest patch of each minor (`compatibility.rs`), so
//! `talos-ha.lock` and `--mirror` cover every hop as they cover the pins.

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt as _;
use kube::api::DynamicObject;

use crate::artifacts::Component;
use crate::config::{Version, Versions, compatibility};

/// How a component may move between minors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Straight to the target.
    Direct,
    /// Through the newest patch of every minor in between.
    OneMinorAtATime,
}

/// The walk each component's upstream asks for.
pub fn walk(component: Component) -> Walk {
    match component {
        Component::CertManager | Component::Longhorn | Component::EnvoyGateway => Walk::OneMinorAtATime,
        Component::Metallb
        | Component::MetricsServer
        | Component::Traefik
        | Component::KubeletServingCertApprover
        | Component::Headlamp => Walk::Direct,
    }
}

/// The releases `component` passes through from `running` to `pin`, the pin last; empty when it
/// runs the pin. A pin older than what runs is refused: talos-ha upgrades, and Longhorn and
/// Envoy Gateway (from v1.8) cannot go back at all.
pub fn path(component: Component, running: Version, pin: Version) -> anyhow::Result<Vec<Version>> {
    let name = component.key();
    if running == pin {
        return Ok(Vec::new());
    }
    anyhow::ensure!(
        pin > running,
        "versions.{name} is {pin}, older than the {running} the cluster runs: talos-ha does not downgrade \
         ({name} keeps data or CRDs only a newer release knows); set versions.{name}: {running} or newer"
    );
    let mut hops = Vec::new();
    if walk(component) == Walk::OneMinorAtATime && (pin.major, pin.minor) != (running.major, running.minor) {
        let releases = compatibility::releases(name);
        let newest = |minor: u32| releases.iter().find(|(series, _)| *series == (pin.major, minor)).map(|(_, v)| *v);
        let missing: Vec<String> = (running.minor + 1..pin.minor)
            .filter(|minor| newest(*minor).is_none())
            .map(|minor| format!("v{}.{minor}", pin.major))
            .collect();
        anyhow::ensure!(
            running.major == pin.major && missing.is_empty(),
            "{name} upgrades one minor at a time, and talos-ha knows no release of {} between {running} and {pin}; \
             add them to kit/src/config/compatibility.rs",
            if missing.is_empty() { format!("v{}.x", pin.major) } else { missing.join(", ") }
        );
        hops.extend((running.minor + 1..pin.minor).filter_map(newest));
    }
    hops.push(pin);
    Ok(hops)
}

/// One thing a hop does besides applying the new release, in the order it is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Before the release: every CRD of `group` must store only `version`
    /// (`status.storedVersions`), or the API server refuses the new CRDs (or the release
    /// drops data). With `migrate`, objects stored at another version are rewritten at the
    /// storage version and `storedVersions` trimmed (upstream's recipe); without, the hop is
    /// refused with the fix.
    StoredOnly { group: &'static str, version: &'static str, migrate: bool },
    /// After the release: the CRD `crd` stores `version` now; every object is rewritten at it
    /// and `storedVersions` trimmed, so a later release that drops the old version can apply.
    MoveStorage { crd: &'static str, version: &'static str },
    /// After the release: an object the new release no longer ships, deleted (upstream lists
    /// it; never guessed from the cluster). A CRD is deleted only while no object of it exists.
    Prune { kind: Pruned, namespace: Option<&'static str>, name: &'static str },
    /// Before the release: every Certificate talos-ha applied states
    /// `privateKey.rotationPolicy` (the CA `Never`, a service `Always`), set where an older
    /// talos-ha left it out, before cert-manager's default flips from `Never` to `Always`.
    StateRotationPolicy,
    /// What changes for the cluster's users, said in the plan.
    Note(&'static str),
}

/// The kinds a release has dropped objects of, on the path talos-ha walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pruned {
    Service,
    Role,
    RoleBinding,
    CustomResourceDefinition,
}

impl serde::Serialize for Work {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::fmt::Display for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::StoredOnly { group, version, migrate: true } => {
                write!(f, "before: migrate every {group} object still stored at another version to {version}")
            }
            Work::StoredOnly { group, version, migrate: false } => {
                write!(f, "before: check every {group} CRD stores only {version}")
            }
            Work::MoveStorage { crd, version } => {
                write!(f, "after: rewrite every {crd} object, now stored at {version}")
            }
            Work::Prune { kind, namespace: Some(namespace), name } => {
                write!(f, "after: prune {kind:?} {namespace}/{name}, which the release dropped")
            }
            Work::Prune { kind, namespace: None, name } => {
                write!(f, "after: prune {kind:?} {name}, which the release dropped")
            }
            Work::StateRotationPolicy => {
                write!(f, "before: state privateKey.rotationPolicy on every Certificate talos-ha applied")
            }
            Work::Note(note) => write!(f, "note: {note}"),
        }
    }
}

/// What the hop of `component` from `from` to `to` does besides applying the release: what
/// every hop of it checks, then what each minor it enters needs (a direct walk may enter
/// several). Sources:
/// shared/design/addon-upgrades.md, one table per add-on, each row citing upstream.
pub fn work(component: Component, from: Version, to: Version) -> Vec<Work> {
    let minor = |version: Version| (version.major, version.minor);
    let mut work = every_hop(component);
    for (series, _) in compatibility::releases(component.key()) {
        if series > minor(from) && series <= minor(to) {
            work.extend(this_hop(component, series));
        }
    }
    work
}

/// cert-manager's CRDs are v1 only at every release on the path: a CRD storing anything else
/// dates from before v1.7 and needs upstream's `cmctl upgrade migrate-api-version` first.
fn every_hop(component: Component) -> Vec<Work> {
    match component {
        Component::CertManager => vec![
            Work::StoredOnly { group: "cert-manager.io", version: "v1", migrate: false },
            Work::StoredOnly { group: "acme.cert-manager.io", version: "v1", migrate: false },
        ],
        _ => Vec::new(),
    }
}

fn this_hop(component: Component, series: (u32, u32)) -> Vec<Work> {
    use Work::{MoveStorage, Note, Prune, StoredOnly};
    match (component, series) {
        (Component::CertManager, (1, 17)) => {
            vec![Note("RSA 3072/4096 keys are signed with SHA-384/512; logs are structured")]
        }
        (Component::CertManager, (1, 18)) => vec![
            Work::StateRotationPolicy,
            Note(
                "a Certificate that states no privateKey.rotationPolicy gets a new key at every renewal from now \
             on; talos-ha states it on its own (the CA keeps its key)",
            ),
        ],
        (Component::CertManager, (1, 19)) => vec![Prune {
            kind: Pruned::RoleBinding,
            namespace: Some("cert-manager"),
            name: "cert-manager-cert-manager-tokenrequest",
        }],
        (Component::CertManager, (1, 20)) => {
            vec![Note("the rotationPolicy default is Always for good; containers run as UID/GID 65532")]
        }
        (Component::CertManager, (1, 21)) => vec![
            Prune { kind: Pruned::RoleBinding, namespace: Some("cert-manager"), name: "cert-manager-tokenrequest" },
            Prune { kind: Pruned::Role, namespace: Some("cert-manager"), name: "cert-manager-tokenrequest" },
        ],
        (Component::Longhorn, (1, 8)) => {
            vec![Note("backups are configured through a BackupTarget named default (talos-ha sets none)")]
        }
        (Component::Longhorn, (1, 9)) => vec![Note("longhorn.io/v1beta1 is no longer served")],
        (Component::Longhorn, (1, 10)) => vec![
            StoredOnly { group: "longhorn.io", version: "v1beta2", migrate: true },
            Prune { kind: Pruned::Service, namespace: Some("longhorn-system"), name: "longhorn-conversion-webhook" },
            Note("longhorn.io/v1beta1 is removed; settings are plain strings or data-engine JSON"),
        ],
        (Component::Longhorn, (1, 12)) => {
            vec![Note("six Ingress NetworkPolicies arrive (inert under Flannel, which enforces none)")]
        }
        (Component::EnvoyGateway, (1, 8)) => vec![
            MoveStorage { crd: "tlsroutes.gateway.networking.k8s.io", version: "v1" },
            Prune {
                kind: Pruned::CustomResourceDefinition,
                namespace: None,
                name: "xlistenersets.gateway.networking.x-k8s.io",
            },
            Note(
                "one-way: the safe-upgrades ValidatingAdmissionPolicy refuses Gateway API CRDs older than v1.5, so \
                 this release cannot be rolled back",
            ),
        ],
        (Component::EnvoyGateway, (1, 9)) => vec![
            MoveStorage { crd: "tcproutes.gateway.networking.k8s.io", version: "v1" },
            MoveStorage { crd: "udproutes.gateway.networking.k8s.io", version: "v1" },
            Note("the Gateway API v1.6 CRDs are applied before the controller; Envoy moves to 1.39"),
        ],
        (Component::Metallb, (0, 16)) => {
            vec![Note("metrics are HTTPS only (port 9120); the probes move to port 17472")]
        }
        (Component::Traefik, (3, 7)) => vec![Note(
            "the CRDs and RBAC are applied before the new image; a BasicAuth with no user now fails to build \
             (the Longhorn UI's always has one)",
        )],
        (Component::MetricsServer, (0, 9)) => {
            vec![Note("metrics.k8s.io is briefly unavailable while the new pod starts")]
        }
        _ => Vec::new(),
    }
}

/// The Deployment whose image says which release of `component` runs: what the cluster runs,
/// read from it (a cluster built by hand from the seed has no record of talos-ha's), never
/// assumed from `cluster.yaml`. `None` for a component with no hop to walk.
pub fn witness(component: Component) -> Option<(&'static str, &'static str)> {
    match component {
        Component::Metallb => Some(("metallb-system", "controller")),
        Component::MetricsServer => Some(("kube-system", "metrics-server")),
        Component::Traefik => Some(("traefik", "traefik")),
        Component::CertManager => Some(("cert-manager", "cert-manager")),
        // The manager is a DaemonSet; the driver deployer runs the same longhorn-manager image.
        Component::Longhorn => Some(("longhorn-system", "longhorn-driver-deployer")),
        Component::EnvoyGateway => Some(("envoy-gateway-system", "envoy-gateway")),
        Component::KubeletServingCertApprover | Component::Headlamp => None,
    }
}

/// The release of `component` the cluster runs, and where that was read; `None` when it is not
/// installed (or has no witness).
pub async fn running(client: &kube::Client, component: Component) -> anyhow::Result<Option<(Version, String)>> {
    let Some((namespace, name)) = witness(component) else { return Ok(None) };
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), namespace);
    let Some(deployment) =
        deployments.get_opt(name).await.with_context(|| format!("reading Deployment {namespace}/{name}"))?
    else {
        return Ok(None);
    };
    let pod = deployment.spec.and_then(|spec| spec.template.spec).unwrap_or_default();
    let image = pod.containers.first().and_then(|container| container.image.clone()).unwrap_or_default();
    let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or_default();
    let version = tag.parse::<Version>().ok().with_context(|| {
        format!(
            "Deployment {namespace}/{name} runs image {image:?}, whose tag is no release (vX.Y.Z): talos-ha cannot \
             tell which {} runs; set the image to the release that runs",
            component.key()
        )
    })?;
    Ok(Some((version, format!("image of Deployment {namespace}/{name}"))))
}

/// One component's way from what runs to its pin.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Upgrade {
    #[serde(skip)]
    pub of: Component,
    /// Its `versions.` key.
    pub component: &'static str,
    /// What the cluster runs (`None`: not installed, so its stage installs the pin).
    pub running: Option<Version>,
    /// Where `running` was read.
    pub read_from: String,
    pub pin: Version,
    pub hops: Vec<Hop>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Hop {
    pub from: Version,
    pub to: Version,
    /// What it does besides applying the release, in order.
    pub work: Vec<Work>,
}

/// Refuses a pin more than one hop from the release of `component` the cluster runs (or older
/// than it): applying it would skip a release its upstream says not to skip (Longhorn's
/// manager refuses to start and strands the upgrade half-way). A component not installed yet,
/// or one hop away, passes.
pub async fn guard(client: &kube::Client, component: Component, pin: Version) -> anyhow::Result<()> {
    let Some((running, read_from)) = running(client, component).await? else { return Ok(()) };
    let key = component.key();
    let hops = path(component, running, pin).context("nothing was changed")?;
    if hops.len() > 1 {
        let hops: Vec<String> = hops.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "nothing was changed: versions.{key} is {pin}, but the cluster runs {running} ({read_from}), and {key} \
             upgrades one minor at a time, through {}. `cargo xtask upgrade plan` shows each hop and what it does; \
             `cargo xtask upgrade apply` takes them",
            hops.join(" → ")
        );
    }
    Ok(())
}

impl Hop {
    /// `v1.9.2 → v1.10.2`.
    pub fn describe(&self) -> String {
        format!("the hop {} → {}", self.from, self.to)
    }
}

/// For every component with a witness, in stage order: what runs, the pin, and the hops between.
pub async fn plan(client: &kube::Client, versions: &Versions) -> anyhow::Result<Vec<Upgrade>> {
    let mut plan = Vec::new();
    for component in Component::ALL.iter().copied().filter(|component| witness(*component).is_some()) {
        let pin = component.version(versions);
        let found = running(client, component).await?;
        let (running, read_from) = match found {
            Some((version, from)) => (Some(version), from),
            None => (None, "not installed: its stage installs the pin".to_owned()),
        };
        let mut hops = Vec::new();
        if let Some(mut from) = running {
            for to in path(component, from, pin)? {
                hops.push(Hop { from, to, work: work(component, from, to) });
                from = to;
            }
        }
        plan.push(Upgrade { of: component, component: component.key(), running, read_from, pin, hops });
    }
    Ok(plan)
}

/// Every CRD of `group` whose `status.storedVersions` lists something other than `version`, by
/// name, with what it lists.
async fn stored_elsewhere(client: &kube::Client, group: &str, version: &str) -> anyhow::Result<Vec<(String, String)>> {
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let mut found = Vec::new();
    for crd in crds.list(&Default::default()).await.context("listing CustomResourceDefinitions")? {
        let stored = crd.status.as_ref().and_then(|status| status.stored_versions.clone()).unwrap_or_default();
        if crd.spec.group == group && stored.iter().any(|stored| stored != version) {
            found.push((crd.name_any(), stored.join(", ")));
        }
    }
    Ok(found)
}

/// The hop's work before its release is applied (the pre-checks and migrations); what each
/// did, or the refusal with its fix.
pub async fn before(client: &kube::Client, hop: &Hop) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    for work in &hop.work {
        if *work == Work::StateRotationPolicy {
            done.extend(state_rotation_policy(client).await?);
            continue;
        }
        let Work::StoredOnly { group, version, migrate } = *work else { continue };
        let elsewhere = stored_elsewhere(client, group, version).await?;
        if elsewhere.is_empty() {
            done.push(format!("every {group} CRD stores only {version}"));
            continue;
        }
        let listed: Vec<String> = elsewhere.iter().map(|(crd, stored)| format!("{crd} stores {stored}")).collect();
        anyhow::ensure!(
            migrate,
            "{} refused before anything was applied: {}; {hop_to} keeps only {version}, so these objects would be \
             lost or the CRDs refused. fix: migrate them as upstream says (for cert-manager: `cmctl upgrade \
             migrate-api-version`), then re-run",
            hop.describe(),
            listed.join("; "),
            hop_to = hop.to,
        );
        for (crd, _) in &elsewhere {
            let rewritten = migrate_storage(client, crd).await?;
            done.push(format!("{crd}: {rewritten} object(s) rewritten at {version}, storedVersions trimmed"));
        }
    }
    Ok(done)
}

/// Every Certificate a talos-ha stage applied (its field manager is `talos-ha-<stage>`) that
/// states no `privateKey.rotationPolicy` gets talos-ha's (the CA keeps its key, a service gets
/// a new one); a Certificate of someone else's is named, not changed.
async fn state_rotation_policy(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let all: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), &crate::certs::certificate_resource());
    let mut done = Vec::new();
    for certificate in all.list(&Default::default()).await.context("listing Certificates")? {
        if !certificate.data["spec"]["privateKey"]["rotationPolicy"].is_null() {
            continue;
        }
        let (namespace, name) = (certificate.namespace().unwrap_or_default(), certificate.name_any());
        let ours = certificate
            .managed_fields()
            .iter()
            .any(|entry| entry.manager.as_deref().is_some_and(|manager| manager.starts_with("talos-ha-")));
        if !ours {
            done.push(format!(
                "Certificate {namespace}/{name} is not talos-ha's and states no rotationPolicy: its key changes at \
                 every renewal from this release on"
            ));
            continue;
        }
        let policy = if certificate.data["spec"]["isCA"] == true { "Never" } else { "Always" };
        let patch = serde_json::json!({ "spec": { "privateKey": { "rotationPolicy": policy } } });
        let api: kube::Api<DynamicObject> =
            kube::Api::namespaced_with(client.clone(), &namespace, &crate::certs::certificate_resource());
        api.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
            .await
            .with_context(|| format!("stating the rotationPolicy of Certificate {namespace}/{name}"))?;
        done.push(format!("Certificate {namespace}/{name}: rotationPolicy {policy} stated"));
    }
    if done.is_empty() {
        done.push("every Certificate states its rotationPolicy".to_owned());
    }
    Ok(done)
}

/// The hop's work after its release is applied (storage moves, prunes); what each did.
pub async fn after(client: &kube::Client, hop: &Hop) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    for work in &hop.work {
        match *work {
            Work::MoveStorage { crd, version } => {
                let rewritten = migrate_storage(client, crd).await?;
                done.push(format!("{crd}: {rewritten} object(s) rewritten at {version}, storedVersions trimmed"));
            }
            Work::Prune { kind, namespace, name } => done.push(prune(client, kind, namespace, name).await?),
            Work::StoredOnly { .. } | Work::StateRotationPolicy | Work::Note(_) => {}
        }
    }
    Ok(done)
}

/// Deletes one object a release dropped; a CRD only while no object of it is left (deleting
/// it would delete them: a user's XListenerSets, say).
async fn prune(client: &kube::Client, kind: Pruned, namespace: Option<&str>, name: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let namespace = namespace.unwrap_or_default();
    let gone = match kind {
        Pruned::Service => delete(kube::Api::<Service>::namespaced(client.clone(), namespace), name).await?,
        Pruned::Role => delete(kube::Api::<Role>::namespaced(client.clone(), namespace), name).await?,
        Pruned::RoleBinding => delete(kube::Api::<RoleBinding>::namespaced(client.clone(), namespace), name).await?,
        Pruned::CustomResourceDefinition => {
            let left = stored_objects(client, name).await?.map_or(0, |(_, objects)| objects.len());
            anyhow::ensure!(
                left == 0,
                "CRD {name} was dropped by this release, but {left} object(s) of it are left, and deleting the CRD \
                 would delete them; move them to the kind that replaces it (upstream's release notes say which), \
                 then re-run"
            );
            delete(kube::Api::<CustomResourceDefinition>::all(client.clone()), name).await?
        }
    };
    let shown = if namespace.is_empty() { name.to_owned() } else { format!("{namespace}/{name}") };
    Ok(if gone { format!("pruned {kind:?} {shown}") } else { format!("{kind:?} {shown} was already gone") })
}

/// Deletes `name`; false when it did not exist.
async fn delete<K>(api: kube::Api<K>, name: &str) -> anyhow::Result<bool>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(error).with_context(|| format!("deleting {name}")),
    }
}

/// The CRD `name`'s objects, read at its storage version, with that version's API; `None`
/// when the CRD does not exist.
async fn stored_objects(
    client: &kube::Client,
    name: &str,
) -> anyhow::Result<Option<(kube::discovery::ApiResource, Vec<DynamicObject>)>> {
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let Some(crd) = crds.get_opt(name).await.with_context(|| format!("reading CRD {name}"))? else { return Ok(None) };
    let resource = storage_resource(&crd)?;
    let all: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), &resource);
    let objects = all.list(&Default::default()).await.with_context(|| format!("listing {name}"))?;
    Ok(Some((resource, objects.items)))
}

/// The API of a CRD's objects at its storage version.
fn storage_resource(crd: &CustomResourceDefinition) -> anyhow::Result<kube::discovery::ApiResource> {
    let storage = crd.spec.versions.iter().find(|version| version.storage).map(|version| version.name.clone());
    let storage = storage.with_context(|| format!("CRD {} names no storage version", crd.name_any()))?;
    Ok(kube::discovery::ApiResource {
        group: crd.spec.group.clone(),
        version: storage.clone(),
        api_version: format!("{}/{storage}", crd.spec.group),
        kind: crd.spec.names.kind.clone(),
        plural: crd.spec.names.plural.clone(),
    })
}

/// Rewrites every object of the CRD `name` (an update stores it at the storage version), then
/// trims `status.storedVersions` to that version: upstream's recipe when a version is dropped
/// (longhorn/website docs/archives/1.10.2/important-notes, "Migration Requirement Before
/// Longhorn v1.10 Upgrade"; envoyproxy/gateway notes v1.9.0, TCPRoute and UDPRoute). Returns
/// how many objects were rewritten.
pub async fn migrate_storage(client: &kube::Client, name: &str) -> anyhow::Result<usize> {
    let Some((resource, objects)) = stored_objects(client, name).await? else { return Ok(0) };
    for object in &objects {
        let api: kube::Api<DynamicObject> = match object.namespace() {
            Some(namespace) => kube::Api::namespaced_with(client.clone(), &namespace, &resource),
            None => kube::Api::all_with(client.clone(), &resource),
        };
        api.replace(&object.name_any(), &Default::default(), object)
            .await
            .with_context(|| format!("rewriting {} {} at {}", resource.kind, object.name_any(), resource.version))?;
    }
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let trimmed = serde_json::json!({ "status": { "storedVersions": [resource.version] } });
    crds.patch_status(name, &Default::default(), &kube::api::Patch::Merge(&trimmed))
        .await
        .with_context(|| format!("trimming the storedVersions of CRD {name} to {}", resource.version))?;
    Ok(objects.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap_or_else(|()| panic!("{text} should parse"))
    }

    fn texts(hops: &[Version]) -> Vec<String> {
        hops.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_seeds_set_walks_to_the_defaults_as_each_upstream_asks() -> anyhow::Result<()> {
        let longhorn = path(Component::Longhorn, v("v1.7.3"), v("v1.12.1"))?;
        assert_eq!(texts(&longhorn), ["v1.8.2", "v1.9.2", "v1.10.2", "v1.11.3", "v1.12.1"]);
        let cert_manager = path(Component::CertManager, v("v1.16.5"), v("v1.20.3"))?;
        assert_eq!(texts(&cert_manager), ["v1.17.4", "v1.18.6", "v1.19.6", "v1.20.3"]);
        let envoy = path(Component::EnvoyGateway, v("v1.6.1"), v("v1.9.0"))?;
        assert_eq!(texts(&envoy), ["v1.7.5", "v1.8.3", "v1.9.0"]);
        assert_eq!(texts(&path(Component::Metallb, v("v0.15.3"), v("v0.16.1"))?), ["v0.16.1"]);
        assert_eq!(texts(&path(Component::Traefik, v("v3.3.7"), v("v3.7.9"))?), ["v3.7.9"], "no minor to stop at");
        assert!(path(Component::Headlamp, v("v0.45.0"), v("v0.45.0"))?.is_empty(), "already there");
        Ok(())
    }

    #[test]
    fn a_hop_does_what_every_minor_it_enters_needs_and_a_patch_enters_none() {
        let cert_manager = work(Component::CertManager, v("v1.17.4"), v("v1.18.6"));
        assert!(matches!(cert_manager[..2], [Work::StoredOnly { .. }, Work::StoredOnly { .. }]), "{cert_manager:?}");
        assert!(cert_manager.contains(&Work::StateRotationPolicy), "before the default flips: {cert_manager:?}");
        let longhorn = work(Component::Longhorn, v("v1.9.2"), v("v1.10.2"));
        assert!(
            longhorn.iter().any(|work| matches!(work, Work::StoredOnly { group: "longhorn.io", migrate: true, .. }))
        );
        assert!(work(Component::Longhorn, v("v1.12.0"), v("v1.12.1")).is_empty(), "a patch enters no minor");
        // metrics-server goes straight from 0.7 to 0.9: what 0.9 needs comes with that one hop.
        let metrics = work(Component::MetricsServer, v("v0.7.2"), v("v0.9.0"));
        assert!(metrics.iter().any(|work| work.to_string().contains("metrics.k8s.io is briefly unavailable")));
    }

    #[test]
    fn a_patch_is_one_hop_and_a_downgrade_or_an_unknown_minor_is_refused() {
        let patch = path(Component::Longhorn, v("v1.12.0"), v("v1.12.1")).expect("a patch");
        assert_eq!(texts(&patch), ["v1.12.1"]);
        let down = path(Component::Longhorn, v("v1.12.1"), v("v1.11.3")).expect_err("a downgrade");
        assert!(down.to_string().contains("versions.longhorn is v1.11.3, older than the v1.12.1"), "{down}");
        let unknown = path(Component::CertManager, v("v1.14.0"), v("v1.17.4")).expect_err("1.15 is not known");
        assert!(unknown.to_string().contains("no release of v1.15"), "{unknown}");
    }
}
