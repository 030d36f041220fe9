//! Typed patches on Longhorn's release manifest: the namespace's Pod Security level, the
//! default settings, and the StorageClass longhorn-manager creates from its ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::storage::v1::StorageClass;
use kit::config::ClusterConfig;
use kit::manifest::patch_typed;
use kube::api::DynamicObject;

pub const NAMESPACE: &str = "longhorn-system";
/// Where replicas live on each node: the path stage 01 mounts into the kubelet.
pub const DATA_PATH: &str = "/var/lib/longhorn/";
pub use kit::names::STORAGE_CLASS;
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const SETTINGS_CONFIG_MAP: &str = "longhorn-default-setting";
const SETTINGS_KEY: &str = "default-setting.yaml";
const STORAGE_CLASS_CONFIG_MAP: &str = "longhorn-storageclass";
const STORAGE_CLASS_KEY: &str = "storageclass.yaml";

/// Copies of each volume: three, on three different workers, or one per worker when there
/// are fewer (a replica never shares a node with another of the same volume).
pub fn replica_count(config: &ClusterConfig) -> usize {
    config.workers().count().clamp(1, 3)
}

/// Longhorn's default settings as the manager reads them from its ConfigMap.
pub fn default_settings(objects: &[DynamicObject]) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    embedded(objects, SETTINGS_CONFIG_MAP, SETTINGS_KEY)
}

/// The StorageClass longhorn-manager creates (and keeps) from its ConfigMap.
pub fn storage_class(objects: &[DynamicObject]) -> anyhow::Result<StorageClass> {
    embedded(objects, STORAGE_CLASS_CONFIG_MAP, STORAGE_CLASS_KEY)
}

fn embedded<T: serde::de::DeserializeOwned>(objects: &[DynamicObject], name: &str, key: &str) -> anyhow::Result<T> {
    let text = objects
        .iter()
        .find(|object| object.metadata.name.as_deref() == Some(name))
        .and_then(|object| object.data["data"][key].as_str())
        .ok_or_else(|| anyhow::anyhow!("the Longhorn manifest has no ConfigMap {name} with {key}"))?;
    serde_saphyr::from_str(text).map_err(|error| anyhow::anyhow!("ConfigMap {name}, {key}: {error}"))
}

/// Edits the YAML document kept under `key` of ConfigMap `name`, as the type `T`.
fn edit_embedded<T>(
    objects: &mut [DynamicObject],
    name: &str,
    key: &str,
    edit: impl FnOnce(&mut T),
) -> anyhow::Result<()>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let mut value: T = embedded(objects, name, key)?;
    edit(&mut value);
    let text = serde_saphyr::to_string(&value)?;
    patch_typed::<ConfigMap>(objects, name, |config_map| {
        config_map.data.get_or_insert_default().insert(key.to_owned(), text);
    })
}

/// Applies the three patches to the upstream objects.
pub fn patch(objects: &mut [DynamicObject], config: &ClusterConfig) -> anyhow::Result<()> {
    let replicas = replica_count(config);
    // Longhorn's engine and instance managers run privileged (they attach block devices);
    // Talos enforces `baseline` everywhere, so the namespace must say `privileged`.
    patch_typed::<Namespace>(objects, NAMESPACE, |namespace| {
        let labels = namespace.metadata.labels.get_or_insert_default();
        for mode in ["enforce", "audit", "warn"] {
            labels.insert(format!("pod-security.kubernetes.io/{mode}"), "privileged".to_owned());
        }
    })?;
    edit_embedded::<BTreeMap<String, serde_json::Value>>(objects, SETTINGS_CONFIG_MAP, SETTINGS_KEY, |settings| {
        settings.insert("default-data-path".to_owned(), DATA_PATH.into());
        // A string: from v1.10 a setting's value is a plain string or data-engine JSON, never a
        // YAML number (longhorn/website docs/archives/1.10.2 important-notes, "Consolidation of
        // Longhorn Settings"); a string is what every release reads.
        settings.insert("default-replica-count".to_owned(), replicas.to_string().into());
    })?;
    edit_embedded::<StorageClass>(objects, STORAGE_CLASS_CONFIG_MAP, STORAGE_CLASS_KEY, |class| {
        class
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned());
        class.parameters.get_or_insert_default().insert("numberOfReplicas".to_owned(), replicas.to_string());
    })
}
