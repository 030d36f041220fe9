//! `cluster.yaml` exactly as written. Every leaf is optional text so that validation can
//! report every missing or malformed value at once instead of stopping at serde's first error.

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawConfig {
    pub cluster: RawCluster,
    pub versions: RawVersions,
    pub network: RawNetwork,
    pub nodes: Option<Vec<RawNode>>,
    pub metallb: RawMetallb,
    pub metrics_server: RawMetricsServer,
    pub traefik: RawFixedIp,
    pub envoy_gateway: RawFixedIp,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawCluster {
    pub name: Option<String>,
    pub domain: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawVersions {
    pub talos: Option<String>,
    pub kubernetes: Option<String>,
    pub metallb: Option<String>,
    pub metrics_server: Option<String>,
    pub kubelet_serving_cert_approver: Option<String>,
    pub traefik: Option<String>,
    pub cert_manager: Option<String>,
    pub longhorn: Option<String>,
    pub headlamp: Option<String>,
    pub envoy_gateway: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawNetwork {
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub nameservers: Option<Vec<String>>,
    pub vip: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawNode {
    pub name: Option<String>,
    pub role: Option<String>,
    pub ip: Option<String>,
    pub install_disk: Option<String>,
    pub link_selector: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawMetallb {
    pub pool: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawMetricsServer {
    pub kubelet_insecure_tls: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawFixedIp {
    pub ip: Option<String>,
}

/// The tree of every key `cluster.yaml` may hold, derived from the structs above so that the
/// unknown-key check can never drift from what is actually read. A list holds one element:
/// the shape each of its items must have.
pub(crate) fn key_tree() -> serde_json::Value {
    let mut tree = serde_json::to_value(RawConfig::default()).unwrap_or_default();
    if let Some(nodes) = tree.get_mut("nodes") {
        *nodes = serde_json::Value::Array(vec![serde_json::to_value(RawNode::default()).unwrap_or_default()]);
    }
    tree
}
