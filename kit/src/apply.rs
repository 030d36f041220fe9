//! The apply engine: converge a bundle of objects with server-side apply, in dependency
//! order, concurrently, and say per object what changed. It only applies: the objects come
//! from `manifest` (parsed, typed, lab-transformed) and the order of steps from `bundle`.
//!
//! Order matters on an empty cluster: a custom resource can only be created once its CRD is
//! Established, and a namespaced object once its Namespace exists. So two waves: first CRDs,
//! Namespaces and cluster-scoped objects of served kinds; then (after waiting for the CRDs the
//! bundle's own custom resources need) namespaced objects and custom resources. Within a wave
//! objects are independent and go concurrently, a bounded number at a time, largest first.
//! Discovery runs once (aggregated), and again only when a kind is not known yet.
//! Objects already as wanted are not sent at all (see [`APPLIED_HASH`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::Value;

use crate::manifest::{describe, kind_of};
use crate::report::{Action, Change};

/// Set on every object the engine applies: a hash of the object as the stage wants it. A live
/// object that carries the same hash and still holds every wanted field is up to date, and is
/// not sent again (a no-op apply costs the API server a GET, not a server-side apply). When the
/// wanted object changes, so does the hash, so a field dropped from a manifest is still pruned.
pub const APPLIED_HASH: &str = "talos-ha.dev/applied-hash";

/// How many objects are applied at once.
const CONCURRENCY: usize = 16;
/// How long a CRD may take to become Established.
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a freshly installed admission webhook may refuse calls.
const WEBHOOK_WARMUP: Duration = Duration::from_secs(60);

/// Applies bundles for one stage (one field manager, `talos-ha-<stage>`).
pub struct Engine {
    client: kube::Client,
    discovery: Discovery,
    field_manager: String,
}

impl Engine {
    /// Runs discovery once; every apply and plan reuses it.
    pub async fn new(client: kube::Client, stage: &str) -> anyhow::Result<Engine> {
        let discovery = Discovery::new(client.clone()).run_aggregated().await.context("API discovery")?;
        Ok(Engine { client, discovery, field_manager: format!("talos-ha-{stage}") })
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Server-side applies every object, in dependency order; returns what happened to each.
    pub async fn apply(&mut self, objects: &[DynamicObject]) -> anyhow::Result<Vec<Change>> {
        self.converge(objects, false).await
    }

    /// What `apply` would change (server-side dry run); changes nothing.
    /// Applies objects that a component's admission webhook checks, right after that component
    /// was installed: for a few seconds its webhook may still refuse calls (`failed calling
    /// webhook … connection refused / no endpoints`: the Service's endpoints have not reached
    /// the API server yet, metallb/metallb#1540, #2486), so those errors are retried for up to
    /// a minute; any other error ends the apply at once.
    pub async fn apply_through_webhook(
        &mut self,
        objects: &[DynamicObject],
        component: &str,
    ) -> anyhow::Result<Vec<Change>> {
        let deadline = tokio::time::Instant::now() + WEBHOOK_WARMUP;
        loop {
            match self.apply(objects).await {
                Err(error) if format!("{error:#}").contains("failed calling webhook") => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(error).with_context(|| format!("{component}'s webhook kept refusing calls"));
                    }
                    tracing::info!("  {component}'s webhook is not answering yet; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                result => return result,
            }
        }
    }

    /// What `apply` would change (a server-side dry run), then what this stage applied once
    /// and the bundle no longer holds ([`Action::Leftover`]); changes nothing. `objects` must be
    /// the stage's whole bundle, or the rest of it shows as left over.
    pub async fn plan(&mut self, objects: &[DynamicObject]) -> anyhow::Result<Vec<Change>> {
        let mut changes = self.converge(objects, true).await?;
        changes.extend(self.leftovers(objects).await?);
        Ok(changes)
    }

    /// Objects of the bundle's kinds, anywhere in the cluster, that this stage's field manager
    /// applied and the bundle does not hold. Only kinds the bundle still has are looked at: a
    /// kind dropped whole would need a list of every kind the cluster serves.
    async fn leftovers(&self, objects: &[DynamicObject]) -> anyhow::Result<Vec<Change>> {
        let mut wanted = std::collections::HashSet::new();
        let mut kinds = BTreeMap::new();
        for object in objects {
            if let Some((resource, caps)) = self.resolve(object) {
                wanted.insert(live_key(&resource, &caps, object));
                kinds.insert(format!("{}/{}", resource.api_version, resource.plural), resource);
            }
        }
        let mut leftovers = Vec::new();
        for resource in kinds.into_values() {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            // Metadata only: managedFields is all it reads, and a whole list of Secrets or CRDs
            // across a big cluster would carry every body.
            let listed = api
                .list_metadata(&ListParams::default())
                .await
                .with_context(|| format!("listing {}", resource.plural))?;
            for item in listed.items {
                let ours = item.metadata.managed_fields.iter().flatten().any(|fields| {
                    fields.manager.as_deref() == Some(self.field_manager.as_str())
                        && fields.operation.as_deref() == Some("Apply")
                });
                let namespace = item.metadata.namespace.as_deref();
                let name = item.metadata.name.as_deref().unwrap_or_default();
                if !ours || wanted.contains(&object_key(&resource, namespace, name)) {
                    continue;
                }
                let (object, scope) = match namespace {
                    Some(namespace) => (format!("{} {namespace}/{name}", resource.kind), format!(" -n {namespace}")),
                    None => (format!("{} {name}", resource.kind), String::new()),
                };
                let kind = match resource.group.as_str() {
                    "" => resource.plural.clone(),
                    group => format!("{}.{group}", resource.plural),
                };
                let diff = format!(
                    "applied by {} and no longer in its bundle; apply leaves it. Delete it if nothing needs it: \
                     kubectl delete{scope} {kind} {name}",
                    self.field_manager
                );
                leftovers.push(Change { object, action: Action::Leftover, diff: Some(diff) });
            }
        }
        Ok(leftovers)
    }

    async fn converge(&mut self, objects: &[DynamicObject], dry_run: bool) -> anyhow::Result<Vec<Change>> {
        let mut phase = std::time::Instant::now();
        let mut lap = |what: &str, count: usize| {
            tracing::debug!("{what}: {count} objects in {:.0} ms", phase.elapsed().as_secs_f64() * 1000.0);
            phase = std::time::Instant::now();
        };
        // Wave 1: what nothing else in a bundle can need first — CRDs, Namespaces and
        // cluster-scoped objects of kinds already served — all at once, so the API server's
        // cores stay busy. Wave 2: namespaced objects and custom resources of new kinds.
        let first_wave = |object: &&DynamicObject| {
            matches!(kind_of(object), "CustomResourceDefinition" | "Namespace")
                || self.resolve(object).is_some_and(|(_, caps)| caps.scope == Scope::Cluster)
        };
        let (first, second): (Vec<&DynamicObject>, Vec<&DynamicObject>) = objects.iter().partition(first_wave);
        let mut changes = self.apply_all(&first, dry_run).await?;
        lap("CRDs, Namespaces and cluster-scoped objects applied", first.len());
        if !dry_run {
            // Custom resources of a CRD this apply created or changed need it Established (and
            // in discovery) first. CRDs nothing in this bundle uses are not waited for: like
            // kubectl, the engine does not hold up the rest of the bundle for them.
            let used: Vec<&str> = first
                .iter()
                .zip(&changes)
                .filter(|(object, change)| {
                    kind_of(object) == "CustomResourceDefinition"
                        && change.action != Action::Unchanged
                        && defines_a_kind_in(object, &second)
                })
                .filter_map(|(crd, _)| crd.metadata.name.as_deref())
                .collect();
            futures::future::try_join_all(used.iter().map(|name| self.wait_crd_established(name))).await?;
            lap("CRDs used by this bundle Established", used.len());
        }
        if second.iter().any(|object| self.resolve(object).is_none()) {
            if !dry_run {
                // Kinds whose CRD an earlier apply created (a stage's own resources after the
                // upstream bundle) may not be Established yet: wait for those CRDs too.
                let unresolved: Vec<&DynamicObject> =
                    second.iter().copied().filter(|object| self.resolve(object).is_none()).collect();
                let crds: Api<DynamicObject> = Api::all_with(self.client.clone(), &crd_resource());
                let defining: Vec<String> = crds
                    .list(&ListParams::default())
                    .await
                    .context("listing CRDs")?
                    .items
                    .into_iter()
                    .filter(|crd| defines_a_kind_in(crd, &unresolved))
                    .filter_map(|crd| crd.metadata.name)
                    .collect();
                futures::future::try_join_all(defining.iter().map(|name| self.wait_crd_established(name))).await?;
                // An Established CRD reaches the API server's discovery document a moment
                // later: refresh until the kinds those CRDs define are listed (or time runs out
                // and the object's own error says what is missing).
                let deadline = tokio::time::Instant::now() + CRD_ESTABLISHED_TIMEOUT;
                loop {
                    self.discovery =
                        Discovery::new(self.client.clone()).run_aggregated().await.context("API discovery")?;
                    let waiting = unresolved
                        .iter()
                        .any(|object| self.resolve(object).is_none() && defining_crd_exists(&defining, object));
                    if !waiting || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            } else {
                self.discovery = Discovery::new(self.client.clone()).run_aggregated().await.context("API discovery")?;
            }
            lap("discovery refreshed for new kinds", 0);
        }
        changes.extend(self.apply_all(&second, dry_run).await?);
        lap("namespaced objects and new kinds applied", second.len());
        Ok(changes)
    }

    fn resolve(&self, object: &DynamicObject) -> Option<(ApiResource, ApiCapabilities)> {
        let types = object.types.as_ref()?;
        let gvk = GroupVersionKind::try_from(types).ok()?;
        self.discovery.resolve_gvk(&gvk)
    }

    async fn apply_all(&self, objects: &[&DynamicObject], dry_run: bool) -> anyhow::Result<Vec<Change>> {
        let live = self.live_objects(objects).await?;
        // Largest first: a few CRDs are a hundred times the size of the rest, and starting them
        // early keeps them from being the tail the whole step waits on. Results keep the
        // manifest's order.
        let mut order: Vec<(usize, usize)> = objects
            .iter()
            .enumerate()
            .map(|(index, object)| (serde_json::to_vec(&object.data).map_or(0, |bytes| bytes.len()), index))
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        let mut changes: Vec<(usize, Change)> = stream::iter(order.into_iter().map(|(_, index)| {
            let object = objects[index];
            let before =
                self.resolve(object).and_then(|(resource, caps)| live.get(&live_key(&resource, &caps, object)));
            async move { self.apply_one(object, before, dry_run).await.map(|change| (index, change)) }
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
        changes.sort_unstable_by_key(|(index, _)| *index);
        Ok(changes.into_iter().map(|(_, change)| change).collect())
    }

    /// The objects as they are on the server now: one LIST per kind and namespace, instead
    /// of a GET per object (a no-op apply is mostly this read).
    async fn live_objects(&self, objects: &[&DynamicObject]) -> anyhow::Result<HashMap<String, DynamicObject>> {
        let mut lists = BTreeMap::new();
        for object in objects {
            if let Some((resource, caps)) = self.resolve(object) {
                let namespace = namespace_of(&caps, object).map(str::to_owned);
                lists.insert(
                    format!("{}/{}/{namespace:?}", resource.api_version, resource.plural),
                    (resource, namespace),
                );
            }
        }
        let listed: Vec<Vec<(String, DynamicObject)>> =
            stream::iter(lists.into_values().map(|(resource, namespace)| async move {
                let api: Api<DynamicObject> = match &namespace {
                    Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, &resource),
                    None => Api::all_with(self.client.clone(), &resource),
                };
                let list = api.list(&ListParams::default()).await.with_context(|| {
                    format!(
                        "listing {} {}",
                        resource.plural,
                        namespace.as_deref().map_or(String::new(), |ns| format!("in {ns}"))
                    )
                })?;
                anyhow::Ok(
                    list.items
                        .into_iter()
                        .map(|item| {
                            let name = item.metadata.name.as_deref().unwrap_or_default();
                            (object_key(&resource, namespace.as_deref(), name), item)
                        })
                        .collect(),
                )
            }))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(listed.into_iter().flatten().collect())
    }

    async fn apply_one(
        &self,
        object: &DynamicObject,
        before: Option<&DynamicObject>,
        dry_run: bool,
    ) -> anyhow::Result<Change> {
        let name = object.metadata.name.clone().unwrap_or_default();
        let described = describe(object);
        let Some((resource, caps)) = self.resolve(object) else {
            // In a plan, a custom resource whose CRD the same plan creates is not served yet.
            anyhow::ensure!(dry_run, "{described}: the API server does not serve this kind; is its CRD installed?");
            return Ok(Change {
                object: described,
                action: Action::Created,
                diff: Some("(its CRD is created first)".into()),
            });
        };
        let api: Api<DynamicObject> = match namespace_of(&caps, object) {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let desired = with_applied_hash(object)?;
        if let Some(live) = before {
            match drift(&desired, live) {
                None => return Ok(Change { object: described, action: Action::Unchanged, diff: None }),
                Some(why) => tracing::debug!("{described} is applied again: {why}"),
            }
            if must_replace(&desired, live) {
                let diff = Some("replaced: a Job's pod template cannot change, so the old Job goes first".to_owned());
                if !dry_run {
                    tracing::info!("{described} changed: deleting the old Job so the new one can run");
                    replace_job(&api, &name).await.with_context(|| format!("replacing {described}"))?;
                    api.patch(&name, &PatchParams::apply(&self.field_manager).force(), &Patch::Apply(&desired))
                        .await
                        .with_context(|| format!("applying {described}"))?;
                }
                return Ok(Change { object: described, action: Action::Configured, diff });
            }
        }
        let mut params = PatchParams::apply(&self.field_manager).force();
        if dry_run {
            params = params.dry_run();
        }
        let after = match api.patch(&name, &params, &Patch::Apply(&desired)).await {
            Ok(after) => after,
            // A dry run of an object in a namespace the same plan creates cannot be checked yet.
            Err(kube::Error::Api(status)) if dry_run && before.is_none() && status.code == 404 => {
                return Ok(Change { object: described, action: Action::Created, diff: None });
            }
            Err(error) => return Err(error).with_context(|| format!("applying {described}")),
        };
        let action = match before {
            None => Action::Created,
            Some(before) if comparable(before) == comparable(&after) => Action::Unchanged,
            Some(_) => Action::Configured,
        };
        let diff = match (before, action) {
            (Some(before), Action::Configured) => Some(field_diff(&comparable(before), &comparable(&after))),
            _ => None,
        };
        Ok(Change { object: described, action, diff })
    }

    async fn wait_crd_established(&self, name: &str) -> anyhow::Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let established = await_condition(crds, name, conditions::is_crd_established());
        match tokio::time::timeout(CRD_ESTABLISHED_TIMEOUT, established).await {
            Ok(result) => result.map(|_| ()).with_context(|| format!("watching CRD {name}")),
            Err(_) => anyhow::bail!(
                "CRD {name} was not Established within {}s; look at its status.conditions \
                 (kubectl get crd {name} -o yaml): a NamesAccepted=False condition names the clash",
                CRD_ESTABLISHED_TIMEOUT.as_secs()
            ),
        }
    }
}

/// True when one of the CRDs named in `crds` (`<plural>.<group>`) is in `object`'s group.
fn defining_crd_exists(crds: &[String], object: &DynamicObject) -> bool {
    let group = object.types.as_ref().and_then(|t| t.api_version.split_once('/')).map(|(group, _)| group);
    group.is_some_and(|group| crds.iter().any(|crd| crd.ends_with(&format!(".{group}"))))
}

fn crd_resource() -> ApiResource {
    ApiResource::erase::<CustomResourceDefinition>(&())
}

/// True when `crd` defines the kind of one of `objects`.
fn defines_a_kind_in(crd: &DynamicObject, objects: &[&DynamicObject]) -> bool {
    let group = crd.data.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default();
    let kind = crd.data.pointer("/spec/names/kind").and_then(Value::as_str).unwrap_or_default();
    objects.iter().any(|object| {
        object.types.as_ref().is_some_and(|t| t.kind == kind && t.api_version.split('/').next() == Some(group))
    })
}

/// Where a namespaced object lives (`default` when its manifest names no namespace).
fn namespace_of<'a>(caps: &ApiCapabilities, object: &'a DynamicObject) -> Option<&'a str> {
    (caps.scope == Scope::Namespaced).then(|| object.metadata.namespace.as_deref().unwrap_or("default"))
}

/// The key [`Engine::live_objects`] files a listed object under.
fn live_key(resource: &ApiResource, caps: &ApiCapabilities, object: &DynamicObject) -> String {
    object_key(resource, namespace_of(caps, object), object.metadata.name.as_deref().unwrap_or_default())
}

/// `apiVersion/plural/namespace/name`: one key for a listed object and for the wanted one.
fn object_key(resource: &ApiResource, namespace: Option<&str>, name: &str) -> String {
    format!("{}/{}/{}/{name}", resource.api_version, resource.plural, namespace.unwrap_or_default())
}

/// A Job applied from another version of it: its `spec.template` is immutable, so a server-side
/// apply would fail with `field is immutable`. Upstream charts make such Jobs Helm hooks (run
/// anew on every install and upgrade); here the old Job is replaced, as `kubectl replace --force`
/// does (the review's fix: delete it, background propagation, then apply). An unchanged Job is
/// kept, so a no-op re-run does not run it again.
fn must_replace(desired: &DynamicObject, live: &DynamicObject) -> bool {
    let is_job = desired.types.as_ref().is_some_and(|types| types.kind == "Job" && types.api_version == "batch/v1");
    let hash = |object: &DynamicObject| object.metadata.annotations.as_ref().and_then(|a| a.get(APPLIED_HASH)).cloned();
    is_job && hash(desired) != hash(live)
}

/// Deletes a Job and waits until the Job object is gone. Its pods go in the background (the
/// garbage collector follows their owner reference): waiting for them in the foreground can take
/// minutes while the job controller releases its tracking finalizers, and the new Job, with its
/// own UID, never selects the old pods.
async fn replace_job(api: &Api<DynamicObject>, name: &str) -> anyhow::Result<()> {
    api.delete(name, &kube::api::DeleteParams::background()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while api.get_opt(name).await?.is_some() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the old Job {name} was not gone after 60s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The object with [`APPLIED_HASH`] set to the hash of the object as given.
fn with_applied_hash(object: &DynamicObject) -> anyhow::Result<DynamicObject> {
    let hash = crate::artifacts::sha256_hex(&serde_json::to_vec(object)?);
    let mut desired = object.clone();
    desired
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH.to_owned(), hash[..32].to_owned());
    Ok(desired)
}

/// Why `live` may differ from `desired`, or `None` when it was applied from this very object
/// (same hash) and still holds every field `desired` sets, with the same value: then applying
/// would change nothing.
fn drift(desired: &DynamicObject, live: &DynamicObject) -> Option<String> {
    let hash = |object: &DynamicObject| object.metadata.annotations.as_ref().and_then(|a| a.get(APPLIED_HASH)).cloned();
    if hash(desired).is_none() || hash(desired) != hash(live) {
        return Some("applied from another version of the object".to_owned());
    }
    let (Ok(mut wanted), Ok(actual)) = (serde_json::to_value(desired), serde_json::to_value(live)) else {
        return Some("not comparable".to_owned());
    };
    // A server-side apply to the main resource ignores status, so it is no part of the
    // comparison; nor are apiVersion and kind, which listed items leave out (the lookup that
    // found `live` already matched them).
    if let Some(fields) = wanted.as_object_mut() {
        for ignored in ["status", "apiVersion", "kind"] {
            fields.remove(ignored);
        }
    }
    missing("", &wanted, &actual)
}

/// The first path where `actual` does not hold what `wanted` sets. A null in `wanted` sets
/// nothing (apply drops it), and a zero value or empty map or list may be left out by the
/// server. Values the server canonicalises (quantities: 1024Mi is stored as 1Gi) count as
/// different: the object is applied again, which is correct, only slower.
fn missing(path: &str, wanted: &Value, actual: &Value) -> Option<String> {
    match (wanted, actual) {
        (Value::Null, _) => None,
        (Value::Object(fields), Value::Object(present)) => fields.iter().find_map(|(key, value)| {
            let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            match present.get(key) {
                Some(found) => missing(&child, value, found),
                None if is_empty(value) => None,
                None => Some(format!("{child} is missing")),
            }
        }),
        (Value::Array(items), Value::Array(present)) if items.len() == present.len() => items
            .iter()
            .zip(present)
            .enumerate()
            .find_map(|(index, (item, found))| missing(&format!("{path}[{index}]"), item, found)),
        (wanted, actual) if wanted == actual => None,
        (wanted, actual) => Some(format!("{path}: wanted {wanted}, found {actual}")),
    }
}

/// What Kubernetes leaves out when it serialises (Go's `omitempty`): zero values and empties.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Number(number) => number.as_f64() == Some(0.0),
        Value::String(text) => text.is_empty(),
        Value::Object(fields) => fields.values().all(is_empty),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// An object as it is compared: its content without what the server changes on every write.
fn comparable(object: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for volatile in ["managedFields", "resourceVersion", "generation", "creationTimestamp", "uid"] {
            metadata.remove(volatile);
        }
        // The engine's own bookkeeping is no change a user needs to read about.
        if let Some(annotations) = metadata.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove(APPLIED_HASH);
            if annotations.is_empty() {
                metadata.remove("annotations");
            }
        }
    }
    // Listed objects carry no apiVersion and kind; status is not ours to apply.
    if let Some(object) = value.as_object_mut() {
        for ignored in ["status", "apiVersion", "kind"] {
            object.remove(ignored);
        }
    }
    value
}

/// A readable diff: one line per changed field path, `path: old → new`.
pub fn field_diff(before: &Value, after: &Value) -> String {
    let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
    flatten("", before, &mut old);
    flatten("", after, &mut new);
    let mut lines = Vec::new();
    for (path, value) in &new {
        match old.get(path) {
            None => lines.push(format!("+ {path}: {value}")),
            Some(previous) if previous != value => lines.push(format!("~ {path}: {previous} → {value}")),
            Some(_) => {}
        }
    }
    lines.extend(old.keys().filter(|path| !new.contains_key(*path)).map(|path| format!("- {path}")));
    lines.join("\n")
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (key, child) in fields {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&path, child, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (index, child) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{index}]"), child, out);
            }
        }
        leaf => {
            out.insert(prefix.to_owned(), leaf.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).expect("object")
    }

    fn is_up_to_date(desired: &DynamicObject, live: &DynamicObject) -> bool {
        drift(desired, live).is_none()
    }

    #[test]
    fn an_object_is_up_to_date_only_with_the_same_hash_and_every_field_held() {
        let wanted = object(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "n", "creationTimestamp": null},
            "data": {"a": "1"}, "binaryData": {}
        }));
        let desired = with_applied_hash(&wanted).expect("hash");
        let mut live = serde_json::to_value(&desired).expect("json");
        live["metadata"]["creationTimestamp"] = "2026-11-24T00:00:00Z".into();
        live["metadata"]["resourceVersion"] = "7".into();
        live.as_object_mut().map(|o| o.remove("binaryData"));
        assert!(is_up_to_date(&desired, &object(live.clone())), "server additions and pruned empties are fine");

        let mut drifted = live.clone();
        drifted["data"]["a"] = "2".into();
        assert!(!is_up_to_date(&desired, &object(drifted)), "a changed field must be applied again");

        let mut changed = wanted.clone();
        changed.data["data"] = serde_json::json!({});
        let changed = with_applied_hash(&changed).expect("hash");
        assert!(!is_up_to_date(&changed, &object(live)), "a new wanted object (a field dropped) has a new hash");
    }

    #[test]
    fn field_diff_lists_changed_added_and_removed_paths() {
        let before = serde_json::json!({"spec": {"replicas": 2, "old": true, "ports": [80]}});
        let after = serde_json::json!({"spec": {"replicas": 3, "ports": [80, 443]}});
        assert_eq!(field_diff(&before, &after), "+ spec.ports[1]: 443\n~ spec.replicas: 2 → 3\n- spec.old");
    }
}
