//! The typed patches talos-ha lays over `talosctl gen config`'s output: one for every node,
//! and one per node. Each field comes from `ClusterConfig`; nothing here is hand-edited YAML.
//!
//! Talos 1.12 moved network settings out of the v1alpha1 document into documents of their
//! own (`HostnameConfig`, `LinkAliasConfig`, `LinkConfig`, `Layer2VIPConfig`,
//! `ResolverConfig`) and deprecated `machine.network.interfaces[].vip`. The node patch
//! follows `versions.talos`: the new documents from 1.12 on, the v1alpha1 fields before.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use kit::config::{ClusterConfig, DEFAULT_LINK_SELECTOR, Node, Role};
use serde::Serialize;

/// Where Longhorn keeps replica data on each node (stage 06); the kubelet must see it.
pub const LONGHORN_DATA_PATH: &str = "/var/lib/longhorn";
/// The name talos-ha gives the node's LAN port (a Talos link alias), whatever the kernel calls it.
pub const LINK_ALIAS: &str = "lan";

/// A manifest Talos applies to the cluster itself once etcd runs (`cluster.inlineManifests`
/// of the control planes): what must run from the first minute, before any stage can.
#[derive(Debug, Clone)]
pub struct InlineManifest {
    pub name: String,
    pub contents: String,
}

/// A patch file: documents separated by `---`.
pub struct Patch {
    documents: Vec<String>,
}

impl Patch {
    fn new() -> Patch {
        Patch { documents: Vec::new() }
    }

    fn push(&mut self, document: &impl Serialize) -> anyhow::Result<()> {
        self.documents.push(serde_saphyr::to_string(document)?);
        Ok(())
    }

    pub fn to_yaml(&self) -> String {
        let documents: Vec<String> = self.documents.iter().map(|doc| format!("{}\n", doc.trim_end())).collect();
        documents.join("---\n")
    }
}

/// The first document of a machine config (`version: v1alpha1`), only the parts we set.
#[derive(Serialize, Default)]
struct V1Alpha1 {
    machine: Machine,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Machine {
    #[serde(skip_serializing_if = "Option::is_none")]
    install: Option<Install>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubelet: Option<Kubelet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<LegacyNetwork>,
}

#[derive(Serialize)]
struct Install {
    disk: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Kubelet {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extra_args: BTreeMap<&'static str, &'static str>,
    extra_mounts: Vec<ExtraMount>,
}

#[derive(Serialize)]
struct ExtraMount {
    destination: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    source: &'static str,
    options: Vec<&'static str>,
}

/// `machine.network` as Talos before 1.12 reads it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LegacyNetwork {
    hostname: String,
    nameservers: Vec<IpAddr>,
    interfaces: Vec<LegacyInterface>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LegacyInterface {
    device_selector: LegacyDeviceSelector,
    addresses: Vec<String>,
    routes: Vec<LegacyRoute>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vip: Option<LegacyVip>,
}

#[derive(Serialize)]
struct LegacyDeviceSelector {
    physical: bool,
}

#[derive(Serialize)]
struct LegacyRoute {
    network: &'static str,
    gateway: Ipv4Addr,
}

#[derive(Serialize)]
struct LegacyVip {
    ip: Ipv4Addr,
}

/// The header every Talos config document after the first carries.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document<T: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    body: T,
}

fn document<T: Serialize>(kind: &'static str, body: T) -> Document<T> {
    Document { api_version: "v1alpha1", kind, body }
}

#[derive(Serialize)]
struct Hostname {
    /// `off`: the name below, never one Talos makes up (gen config sets `stable`).
    auto: &'static str,
    hostname: String,
}

#[derive(Serialize)]
struct Resolver {
    nameservers: Vec<Nameserver>,
}

#[derive(Serialize)]
struct Nameserver {
    address: IpAddr,
}

#[derive(Serialize)]
struct LinkAlias {
    name: &'static str,
    selector: LinkSelector,
}

#[derive(Serialize)]
struct LinkSelector {
    #[serde(rename = "match")]
    expression: String,
}

#[derive(Serialize)]
struct Link {
    name: &'static str,
    addresses: Vec<Address>,
    routes: Vec<Route>,
}

#[derive(Serialize)]
struct Address {
    address: String,
}

/// A route without a destination is the default route.
#[derive(Serialize)]
struct Route {
    gateway: Ipv4Addr,
}

#[derive(Serialize)]
struct Layer2Vip {
    /// The VIP itself names the document.
    name: Ipv4Addr,
    link: &'static str,
}

/// True when `versions.talos` reads network settings from their own documents (1.12 on).
pub fn multi_document_network(config: &ClusterConfig) -> bool {
    let talos = config.versions.talos;
    (talos.major, talos.minor) >= (1, 12)
}

/// `cluster.inlineManifests` of the control planes.
#[derive(Serialize)]
struct ControlPlanes<'a> {
    cluster: InlineManifests<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InlineManifests<'a> {
    inline_manifests: Vec<Inline<'a>>,
}

#[derive(Serialize)]
struct Inline<'a> {
    name: &'a str,
    /// A block literal (`|`), so the manifest reads as the YAML it is.
    contents: serde_saphyr::LitStr<'a>,
}

/// The patch for the control planes: the manifests Talos applies once etcd runs.
pub fn control_planes(inline: &[InlineManifest]) -> anyhow::Result<Patch> {
    let inline_manifests = inline
        .iter()
        .map(|manifest| Inline { name: &manifest.name, contents: serde_saphyr::LitStr(&manifest.contents) })
        .collect();
    let mut patch = Patch::new();
    patch.push(&ControlPlanes { cluster: InlineManifests { inline_manifests } })?;
    Ok(patch)
}

/// The patch for every node: what the kubelet needs for metrics-server and Longhorn.
pub fn all_nodes(config: &ClusterConfig) -> anyhow::Result<Patch> {
    let mut patch = Patch::new();
    // The kubelet asks the cluster for a serving certificate signed by the cluster CA, so
    // metrics-server can verify kubelets over TLS. kubelet-serving-cert-approver approves the
    // requests; it runs from bootstrap on (an inline manifest of the control planes), because
    // until a kubelet's request is approved its TLS port fails and `talosctl health` with it.
    // With metricsServer.kubeletInsecureTls nobody approves them, so none are requested.
    // (kubelet 1.35 still takes the flag: cmd/kubelet/app/options/options.go, deprecated in
    // favour of the config file like every KubeletConfiguration flag.)
    let extra_args = if config.kubelet_serving_certificates() {
        BTreeMap::from([("rotate-server-certificates", "true")])
    } else {
        BTreeMap::new()
    };
    patch.push(&V1Alpha1 {
        machine: Machine {
            kubelet: Some(Kubelet {
                extra_args,
                // Longhorn's engine runs in a container and mounts volumes under this path;
                // rshared lets those mounts propagate back to the kubelet and the pods.
                extra_mounts: vec![ExtraMount {
                    destination: LONGHORN_DATA_PATH,
                    kind: "bind",
                    source: LONGHORN_DATA_PATH,
                    options: vec!["bind", "rshared", "rw"],
                }],
            }),
            ..Machine::default()
        },
    })?;
    if multi_document_network(config) {
        let nameservers = config.network.nameservers.iter().map(|&address| Nameserver { address }).collect();
        patch.push(&document("ResolverConfig", Resolver { nameservers }))?;
    }
    Ok(patch)
}

/// One node's patch: its disk, name and address, and the VIP on control planes.
pub fn node(config: &ClusterConfig, node: &Node) -> anyhow::Result<Patch> {
    let mut patch = Patch::new();
    let install = Some(Install { disk: node.install_disk.clone() });
    let address = format!("{}/{}", node.ip, config.network.subnet.prefix_len());
    let gateway = config.network.gateway;
    let vip = (node.role == Role::ControlPlane).then_some(config.network.vip);
    if multi_document_network(config) {
        patch.push(&V1Alpha1 { machine: Machine { install, ..Machine::default() } })?;
        patch.push(&document("HostnameConfig", Hostname { auto: "off", hostname: node.name.clone() }))?;
        let selector = LinkSelector { expression: node.link_selector.clone() };
        patch.push(&document("LinkAliasConfig", LinkAlias { name: LINK_ALIAS, selector }))?;
        let link = Link { name: LINK_ALIAS, addresses: vec![Address { address }], routes: vec![Route { gateway }] };
        patch.push(&document("LinkConfig", link))?;
        if let Some(vip) = vip {
            // Talos announces the VIP with gratuitous ARP from one healthy control plane at a
            // time, and moves it when that node goes away: etcd elects the holder.
            patch.push(&document("Layer2VIPConfig", Layer2Vip { name: vip, link: LINK_ALIAS }))?;
        }
    } else {
        anyhow::ensure!(
            node.link_selector == DEFAULT_LINK_SELECTOR,
            "nodes[{}].linkSelector needs Talos 1.12 or newer (versions.talos is {}): older releases select \
             the port with machine.network.interfaces[].deviceSelector; remove linkSelector or raise versions.talos",
            config.nodes.iter().position(|other| other.name == node.name).unwrap_or_default(),
            config.versions.talos
        );
        let interface = LegacyInterface {
            device_selector: LegacyDeviceSelector { physical: true },
            addresses: vec![address],
            routes: vec![LegacyRoute { network: "0.0.0.0/0", gateway }],
            vip: vip.map(|ip| LegacyVip { ip }),
        };
        let network = Some(LegacyNetwork {
            hostname: node.name.clone(),
            nameservers: config.network.nameservers.clone(),
            interfaces: vec![interface],
        });
        patch.push(&V1Alpha1 { machine: Machine { install, network, ..Machine::default() } })?;
    }
    Ok(patch)
}
