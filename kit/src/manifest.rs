//! Manifests as data: a multi-document YAML file parsed into objects, our typed objects
//! turned into the same form, typed patches on upstream objects, the lab transform, and
//! objects written back as YAML. Nothing here talks to a cluster.

use anyhow::Context as _;
use kube::api::DynamicObject;
use serde_json::Value;

/// Parses a multi-document YAML manifest. Empty documents are skipped; a document that does
/// not parse, or is not a Kubernetes object, is an error naming `source` and its index.
pub fn parse_manifest(source: &str, text: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let mut objects = Vec::new();
    // A document marker always starts at column 0, so splitting on it is exact for manifests.
    let mut documents = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") || line.starts_with("---\t") {
            documents.push(String::new());
        } else if let Some(current) = documents.last_mut() {
            current.push_str(line);
            current.push('\n');
        }
    }
    for (index, document) in documents.iter().enumerate() {
        let value: Value = serde_saphyr::from_str(document)
            .map_err(|error| anyhow::anyhow!("{source}, document {index}: not valid YAML: {error}"))?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value)
            .with_context(|| format!("{source}, document {index}: not a Kubernetes object"))?;
        anyhow::ensure!(
            object.types.is_some() && object.metadata.name.is_some(),
            "{source}, document {index}: an object needs apiVersion, kind and metadata.name"
        );
        objects.push(object);
    }
    Ok(objects)
}

/// Turns a typed object (k8s-openapi or our own CRD structs) into a bundle entry.
pub fn to_dynamic(object: &impl serde::Serialize) -> anyhow::Result<DynamicObject> {
    serde_json::from_value(serde_json::to_value(object)?).context("converting a typed object")
}

/// A typed patch on an upstream object: finds the `K` named `name` in `objects`, hands it to
/// `edit` as its k8s-openapi type, and puts the result back. Customisations are code, never a
/// hand-edited copy of the upstream file; a missing object is an error (upstream changed).
pub fn patch_typed<K>(objects: &mut [DynamicObject], name: &str, edit: impl FnOnce(&mut K)) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    let kind = K::kind(&());
    let object = objects
        .iter_mut()
        .find(|object| kind_of(object) == kind && object.metadata.name.as_deref() == Some(name))
        .with_context(|| format!("the upstream manifest has no {kind} {name} to patch"))?;
    let mut typed: K = serde_json::from_value(serde_json::to_value(&*object)?)
        .with_context(|| format!("reading {kind} {name} as a typed object"))?;
    edit(&mut typed);
    *object = to_dynamic(&typed)?;
    Ok(())
}

/// Objects as one multi-document YAML file, as `render` shows what a stage applies.
pub fn objects_yaml(objects: &[DynamicObject]) -> anyhow::Result<Vec<u8>> {
    let mut text = String::new();
    for object in objects {
        text.push_str("---\n");
        text.push_str(&serde_saphyr::to_string(object).context("writing an object as YAML")?);
    }
    Ok(text.into_bytes())
}

/// `Kind namespace/name`, or `Kind name` for cluster-scoped objects: how results name objects.
pub fn describe(object: &DynamicObject) -> String {
    let kind = object.types.as_ref().map_or("?", |t| t.kind.as_str());
    let name = object.metadata.name.as_deref().unwrap_or("?");
    match &object.metadata.namespace {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

pub(crate) fn kind_of(object: &DynamicObject) -> &str {
    object.types.as_ref().map_or("", |t| t.kind.as_str())
}

/// What the lab transform changed, for `verify` to report as not checked.
pub type LabNotes = Vec<String>;

/// **The lab transform** (used only with `--lab`, never on a real cluster). kwok runs no
/// containers, so nothing answers upstream admission webhooks, CRD conversion webhooks or
/// aggregated APIs, and a `failurePolicy: Fail` webhook would refuse every matching write.
/// This removes webhook configurations and aggregated APIServices, and turns CRD conversion
/// webhooks into `None` (the versions share one schema in the lab). Each change is logged and
/// returned, so `verify` can say what the lab leaves unchecked.
pub fn lab_transform(objects: &mut Vec<DynamicObject>) -> LabNotes {
    let mut notes = Vec::new();
    objects.retain(|object| {
        let kind = kind_of(object);
        let served_by_pods = matches!(kind, "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration")
            || (kind == "APIService" && object.data.pointer("/spec/service").is_some_and(|s| !s.is_null()));
        if served_by_pods {
            notes.push(format!("{} not installed: no pod can serve it in the lab", describe(object)));
        }
        !served_by_pods
    });
    for object in objects.iter_mut().filter(|o| kind_of(o) == "CustomResourceDefinition") {
        if object.data.pointer("/spec/conversion/strategy").and_then(Value::as_str) == Some("Webhook") {
            object.data["spec"]["conversion"] = serde_json::json!({ "strategy": "None" });
            notes.push(format!("{}: conversion webhook replaced by None", describe(object)));
        }
    }
    for note in &notes {
        tracing::info!("lab transform: {note}");
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documents_and_names_a_broken_one() {
        let text = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# only a comment\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: a}\n";
        let objects = parse_manifest("two.yaml", text).expect("parses");
        assert_eq!(objects.iter().map(describe).collect::<Vec<_>>(), ["Namespace a", "ConfigMap a/b"]);
        let broken = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n";
        let error = parse_manifest("broken.yaml", broken).expect_err("must fail").to_string();
        assert!(error.starts_with("broken.yaml, document 1: not valid YAML"), "{error}");
        let nameless = parse_manifest("nameless.yaml", "apiVersion: v1\nkind: Namespace\n").expect_err("no name");
        assert!(nameless.to_string().contains("document 0"), "{nameless}");
    }

    #[test]
    fn typed_patches_edit_the_named_object_and_name_a_missing_one() {
        use k8s_openapi::api::apps::v1::Deployment;
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: a}\nspec:\n  \
                    selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    \
                    spec: {containers: [{name: web, image: web:1, args: [--a]}]}\n";
        let mut objects = parse_manifest("web.yaml", text).expect("parses");
        patch_typed::<Deployment>(&mut objects, "web", |deployment| {
            let pod = deployment.spec.as_mut().and_then(|spec| spec.template.spec.as_mut()).expect("pod");
            pod.containers[0].args.get_or_insert_default().push("--b".into());
        })
        .expect("patched");
        assert_eq!(
            objects[0].data["spec"]["template"]["spec"]["containers"][0]["args"],
            serde_json::json!(["--a", "--b"])
        );
        assert_eq!(describe(&objects[0]), "Deployment a/web", "kind and name survive the round trip");
        let missing = patch_typed::<Deployment>(&mut objects, "api", |_| {}).expect_err("no such object");
        assert_eq!(missing.to_string(), "the upstream manifest has no Deployment api to patch");
    }

    #[test]
    fn every_upstream_manifest_parses() {
        let upstream = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream");
        for artifact in crate::artifacts::ARTIFACTS {
            let dir = upstream.join(artifact.component.dir());
            let Some(version_dir) = std::fs::read_dir(&dir).ok().and_then(|mut d| d.next()).and_then(Result::ok) else {
                panic!("{} missing from the test mirror", dir.display());
            };
            let path = version_dir.path().join(artifact.file);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let objects = parse_manifest(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e:#}"));
            assert!(!objects.is_empty(), "{}", path.display());
        }
    }

    #[test]
    fn the_lab_transform_removes_webhooks_and_conversion() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/upstream/metallb/v0.15.3/metallb-native.yaml"),
        )
        .expect("metallb manifest");
        let mut objects = parse_manifest("metallb-native.yaml", &text).expect("parses");
        let before = objects.len();
        let notes = lab_transform(&mut objects);
        assert_eq!(objects.len(), before - 1, "the one ValidatingWebhookConfiguration goes");
        assert!(notes.iter().any(|n| n.contains("ValidatingWebhookConfiguration metallb-webhook-configuration")));
        assert!(notes.iter().any(|n| n.contains("bgppeers.metallb.io: conversion webhook replaced by None")));
        assert!(!objects.iter().any(|o| o.data.pointer("/spec/conversion/strategy") == Some(&"Webhook".into())));
    }
}
