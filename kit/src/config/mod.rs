//! The cluster model: `cluster.yaml` loaded, validated and turned into `ClusterConfig`, the
//! one input every stage reads. Values derived from it (hostnames, the API endpoint, the
//! state folder) are methods here, so no stage recomputes them.

pub mod compatibility;
mod range;
mod raw;
mod summary;
mod validate;
mod versions;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;

pub use range::IpRange;
pub use versions::{
    PINS, Pin, Version, Versions, default_pin, seed_pin_lines, seed_versions_block, talos_kubernetes_mismatch,
    with_version,
};

/// A validated cluster. Construct it with [`ClusterConfig::load`] or [`ClusterConfig::parse`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    pub name: String,
    pub domain: String,
    pub versions: Versions,
    pub network: Network,
    pub nodes: Vec<Node>,
    /// The MetalLB L2 pool that LoadBalancer Services draw from.
    pub metallb_pool: IpRange,
    /// `metricsServer.kubeletInsecureTls`: the documented opt-out of verifying kubelets' TLS.
    /// Off by default: stage 01 makes kubelets request CA-signed serving certificates and
    /// ships the approver in the control planes' configs, so metrics-server can verify every
    /// kubelet.
    pub metrics_server_kubelet_insecure_tls: bool,
    /// The pool address pinned to Traefik (the seed's "legacy" Ingress path, .101).
    pub traefik_ip: Ipv4Addr,
    /// The pool address pinned to the Envoy Gateway (the seed's "modern" path, .102).
    pub envoy_gateway_ip: Ipv4Addr,
    /// Things that are allowed but worth knowing (a single control plane, say).
    pub warnings: Vec<Problem>,
    /// Where the config was read from; the state folder sits beside it.
    #[serde(skip)]
    pub source: PathBuf,
    /// Whose files this config's commands read and write: the real cluster's (`state/`), or
    /// the box's (`state/lab/cluster/`, after [`ClusterConfig::in_box`]).
    #[serde(skip)]
    pub(crate) in_box: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub nameservers: Vec<IpAddr>,
    /// The floating control-plane address that Talos moves between healthy control planes.
    pub vip: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    pub role: Role,
    pub ip: Ipv4Addr,
    pub install_disk: String,
    /// Which network link carries the node's address: a Talos CEL expression over the link's
    /// status (`link.driver`, `mac(link.permanent_addr)`, ...). It must match exactly one link.
    pub link_selector: String,
}

/// Any physical Ethernet port (type 1 = ether, no virtual kind, on a bus): right for the usual
/// one-NIC machine; a node with several ports names its port by MAC in `linkSelector`.
pub const DEFAULT_LINK_SELECTOR: &str = r#"link.type == 1 && link.kind == "" && link.bus_path != """#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[serde(rename = "controlplane")]
    ControlPlane,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "controlplane",
            Role::Worker => "worker",
        }
    }
}

/// The port the Kubernetes API listens on, on every control plane and on the VIP.
pub const KUBERNETES_API_PORT: u16 = 6443;

impl ClusterConfig {
    /// Reads and validates a config file. The path is made absolute first, so the state
    /// folder (and every path written into kubeconfigs) holds wherever a process runs from.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let read_error = |source| ConfigError::Read { file: path.to_owned(), source };
        let absolute = std::path::absolute(path).map_err(read_error)?;
        let text = std::fs::read_to_string(&absolute).map_err(read_error)?;
        Self::parse(&text, &absolute)
    }

    /// Validates config text; `source` names the file in errors and anchors the state folder.
    pub fn parse(text: &str, source: &Path) -> Result<ClusterConfig, ConfigError> {
        validate::parse(text, source)
    }

    pub fn control_planes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.role == Role::ControlPlane)
    }

    pub fn workers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.role == Role::Worker)
    }

    /// Kubelets request serving certificates signed by the cluster CA (and the control planes
    /// run kubelet-serving-cert-approver to approve them), so metrics-server verifies them:
    /// always, unless `metricsServer.kubeletInsecureTls` opts out.
    pub fn kubelet_serving_certificates(&self) -> bool {
        !self.metrics_server_kubelet_insecure_tls
    }

    /// The Kubernetes API through the VIP: what kubeconfigs and `talosctl gen config` use.
    pub fn api_endpoint(&self) -> String {
        format!("https://{}:{KUBERNETES_API_PORT}", self.network.vip)
    }

    /// A service's public name: `<service>.<ip>.<domain>`, e.g. `whoami.172.16.16.101.sslip.io`.
    /// With sslip.io the name resolves to the IP embedded in it, so no DNS server is needed.
    pub fn service_host(&self, service: &str, ip: Ipv4Addr) -> String {
        format!("{service}.{ip}.{}", self.domain)
    }

    /// The folder that holds the cluster's secrets, machine configs, talosconfig and
    /// kubeconfig: `state/` beside the config for the real cluster, `state/lab/cluster/` for the
    /// box's. The two never mix: a box run cannot overwrite a real cluster's secrets or
    /// kubeconfig, and `lab down --purge` takes everything the box's cluster left.
    pub fn state_dir(&self) -> PathBuf {
        match self.in_box {
            false => state_dir_for(&self.source),
            true => self.lab_dir().join("cluster"),
        }
    }

    /// The box's own folder (`state/lab/` beside the config): its machines' disks, logs, ports,
    /// the kubeconfig through its forward, and the state of the cluster installed in it.
    pub fn lab_dir(&self) -> PathBuf {
        state_dir_for(&self.source).join("lab")
    }

    /// The same config, for the cluster in the box: its state is the box's (see `state_dir`).
    pub fn in_box(mut self) -> ClusterConfig {
        self.in_box = true;
        self
    }
}

/// The state folder for a config file at `config_path` (it need not exist or be valid).
pub fn state_dir_for(config_path: &Path) -> PathBuf {
    let parent = config_path.parent().filter(|p| !p.as_os_str().is_empty());
    parent.unwrap_or(Path::new(".")).join("state")
}

/// One thing wrong (or worth a warning) in a config: where, what was there, why, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The field path, e.g. `nodes[2].ip` or `metallb.pool`.
    pub path: String,
    /// The value found, as written (empty when the field is missing).
    pub value: String,
    /// What is wrong with it, phrased to follow the value.
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}; {}", self.path, self.message, self.fix)
        } else {
            write!(f, "{}: {} {}; {}", self.path, self.value, self.message, self.fix)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}; pass --config FILE or create cluster.yaml", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{} is not valid YAML for a cluster config: {message}", file.display())]
    Syntax { file: PathBuf, message: String },
    #[error("{} has {} problem{}:\n{}", file.display(), problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { file: PathBuf, problems: Vec<Problem> },
}

impl ConfigError {
    /// Every problem found, for callers that report them one by one (JSON output).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Invalid { problems, .. } => problems.clone(),
            other => vec![Problem {
                path: String::new(),
                value: String::new(),
                message: other.to_string(),
                fix: String::new(),
            }],
        }
    }
}

#[cfg(test)]
mod tests;
