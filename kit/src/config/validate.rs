//! Turns `cluster.yaml` text into a `ClusterConfig`, or into the full list of what is wrong.
//! Each rule adds a `Problem` and validation goes on, so a user fixes everything in one pass.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::Ipv4Net;
use serde_json::Value;

use super::compatibility::{self, Fit};
use super::raw::{self, RawConfig, RawNode, RawVersions};
use super::versions::{default_pin, talos_kubernetes_mismatch};
use super::{
    ClusterConfig, ConfigError, DEFAULT_LINK_SELECTOR, IpRange, Network, Node, Problem, Role, Version, Versions,
};

pub(super) fn parse(text: &str, source: &Path) -> Result<ClusterConfig, ConfigError> {
    let document: Value = serde_saphyr::from_str(text)
        .map_err(|error| ConfigError::Syntax { file: source.to_owned(), message: error.to_string() })?;
    let mut check = Validator::default();
    if !document.is_null() && !document.is_object() {
        check.problem("", "", "the file must be a mapping of sections", "start from the documented cluster.yaml");
        return Err(check.into_error(source));
    }
    check.unknown_keys(&document, &raw::key_tree(), "");
    let raw: RawConfig = match serde_path_to_error::deserialize(document) {
        Ok(raw) => raw,
        Err(error) => {
            let path = error.path().to_string();
            check.problem(&path, "", &error.into_inner().to_string(), "write the value in the documented form");
            return Err(check.into_error(source));
        }
    };
    let built = check.config(raw, source);
    match built {
        Some(config) if check.problems.is_empty() => Ok(config),
        _ => Err(check.into_error(source)),
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

/// The fields every later check needs, once each has parsed.
struct Parsed {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    vip: Ipv4Addr,
    pool: IpRange,
    pool_text: String,
}

impl Validator {
    fn problem(&mut self, path: &str, value: &str, message: &str, fix: &str) {
        self.problems.push(Problem {
            path: path.to_owned(),
            value: value.to_owned(),
            message: message.to_owned(),
            fix: fix.to_owned(),
        });
    }

    fn into_error(self, source: &Path) -> ConfigError {
        ConfigError::Invalid { file: source.to_owned(), problems: self.problems }
    }

    /// Keys the model does not read, each with the closest known key as a suggestion.
    fn unknown_keys(&mut self, value: &Value, known: &Value, path: &str) {
        match (value, known) {
            (Value::Object(fields), Value::Object(known_fields)) => {
                for (key, child) in fields {
                    let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    match known_fields.get(key) {
                        Some(known_child) => self.unknown_keys(child, known_child, &child_path),
                        None => {
                            let fix = match closest(key, known_fields.keys()) {
                                Some(suggestion) => format!("did you mean `{suggestion}`?"),
                                None => format!(
                                    "remove it; known keys here: {}",
                                    known_fields.keys().cloned().collect::<Vec<_>>().join(", ")
                                ),
                            };
                            self.problem(&child_path, "", "is not a known key", &fix);
                        }
                    }
                }
            }
            (Value::Array(items), Value::Array(shape)) => {
                if let Some(item_shape) = shape.first() {
                    for (index, item) in items.iter().enumerate() {
                        self.unknown_keys(item, item_shape, &format!("{path}[{index}]"));
                    }
                }
            }
            _ => {}
        }
    }

    fn required<'a>(&mut self, path: &str, value: &'a Option<String>, example: &str) -> Option<&'a str> {
        match value.as_deref().map(str::trim) {
            Some(text) if !text.is_empty() => Some(text),
            _ => {
                self.problem(path, "", "is missing", &format!("add it, e.g. `{path}: {example}`"));
                None
            }
        }
    }

    fn ipv4(&mut self, path: &str, value: &Option<String>, example: &str) -> Option<Ipv4Addr> {
        let text = self.required(path, value, example)?;
        let parsed = text.parse::<Ipv4Addr>().ok();
        if parsed.is_none() {
            self.problem(path, text, "is not an IPv4 address", &format!("write it like {example}"));
        }
        parsed
    }

    fn dns_label(&mut self, path: &str, value: &Option<String>, example: &str) -> Option<String> {
        let text = self.required(path, value, example)?;
        let valid = is_dns_label(text);
        if !valid {
            self.problem(
                path,
                text,
                "is not a valid DNS label",
                "use 1–63 lowercase letters, digits and '-', starting and ending with a letter or digit",
            );
        }
        valid.then(|| text.to_owned())
    }

    fn version(&mut self, path: &str, value: &Option<String>, default: &str) -> Option<Version> {
        let text = value.as_deref().map(str::trim).unwrap_or(default);
        let parsed = text.parse::<Version>().ok();
        if parsed.is_none() {
            self.problem(path, text, "is not a version like vX.Y.Z", &format!("write the release tag, e.g. {default}"));
        }
        parsed
    }

    /// The add-on pin `versions.<key>`, or its default.
    fn pin(&mut self, key: &str, value: &Option<String>) -> Option<Version> {
        self.version(&format!("versions.{key}"), value, default_pin(key))
    }

    fn config(&mut self, raw: RawConfig, source: &Path) -> Option<ClusterConfig> {
        let name = self.dns_label("cluster.name", &raw.cluster.name, "talos-ha");
        let domain = self.domain(&raw.cluster.domain);
        let versions = self.versions(&raw.versions);
        let subnet = self.subnet(&raw.network.subnet);
        let gateway = self.ipv4("network.gateway", &raw.network.gateway, "172.16.16.1");
        let nameservers = self.nameservers(&raw.network.nameservers);
        let vip = self.ipv4("network.vip", &raw.network.vip, "172.16.16.100");
        let nodes = self.nodes(raw.nodes.as_deref());
        let pool_text = self.required("metallb.pool", &raw.metallb.pool, "172.16.16.101-172.16.16.120");
        let pool = pool_text.and_then(|text| match text.parse::<IpRange>() {
            Ok(pool) => Some(pool),
            Err(why) => {
                self.problem("metallb.pool", text, &why, "write it like 172.16.16.101-172.16.16.120");
                None
            }
        });
        let traefik_ip = self.ipv4("traefik.ip", &raw.traefik.ip, "172.16.16.101");
        let envoy_gateway_ip = self.ipv4("envoyGateway.ip", &raw.envoy_gateway.ip, "172.16.16.102");

        self.roles(&nodes);
        if let (Some(subnet), Some(gateway), Some(vip), Some(pool), Some(pool_text)) =
            (subnet, gateway, vip, pool, pool_text)
        {
            let parsed = Parsed { subnet, gateway, vip, pool, pool_text: pool_text.to_owned() };
            self.addresses(&parsed, &nodes);
            for (path, ip) in [("traefik.ip", traefik_ip), ("envoyGateway.ip", envoy_gateway_ip)] {
                if let Some(ip) = ip.filter(|ip| !pool.contains(*ip)) {
                    self.problem(
                        path,
                        &ip.to_string(),
                        &format!("is outside metallb.pool ({pool})"),
                        "pick an address inside the pool so MetalLB can assign it",
                    );
                }
            }
        }
        if let (Some(traefik), Some(envoy)) = (traefik_ip, envoy_gateway_ip)
            && traefik == envoy
        {
            self.problem(
                "envoyGateway.ip",
                &envoy.to_string(),
                "is also traefik.ip",
                "give the two entry points different addresses (the seed uses .101 and .102)",
            );
        }

        Some(ClusterConfig {
            name: name?,
            domain: domain?,
            versions: versions?,
            network: Network { subnet: subnet?, gateway: gateway?, nameservers: nameservers?, vip: vip? },
            nodes: nodes.into_iter().collect::<Option<Vec<_>>>()?,
            metallb_pool: pool?,
            metrics_server_kubelet_insecure_tls: raw.metrics_server.kubelet_insecure_tls.unwrap_or(false),
            traefik_ip: traefik_ip?,
            envoy_gateway_ip: envoy_gateway_ip?,
            warnings: std::mem::take(&mut self.warnings),
            source: source.to_owned(),
            in_box: false,
        })
    }

    fn domain(&mut self, value: &Option<String>) -> Option<String> {
        let text = self.required("cluster.domain", value, "sslip.io")?;
        let valid = text.split('.').all(is_dns_label) && text.contains('.');
        if !valid {
            self.problem(
                "cluster.domain",
                text,
                "is not a DNS domain",
                "use a wildcard-DNS domain such as sslip.io or nip.io, or your own domain",
            );
        }
        valid.then(|| text.to_owned())
    }

    fn versions(&mut self, raw: &RawVersions) -> Option<Versions> {
        // Talos and Kubernetes default to what the box builds; the add-ons to `versions::PINS`.
        let talos = self.version("versions.talos", &raw.talos, "v1.12.1");
        let kubernetes = self.version("versions.kubernetes", &raw.kubernetes, "v1.35.0");
        if let (Some(talos), Some(kubernetes)) = (talos, kubernetes)
            && let Some(why) = talos_kubernetes_mismatch(talos, kubernetes)
        {
            self.problem(
                "versions.kubernetes",
                &kubernetes.to_string(),
                &why,
                "pick a Kubernetes version in that range, or a Talos release that supports this one",
            );
        }
        let versions = Versions {
            talos: talos?,
            kubernetes: kubernetes?,
            metallb: self.pin("metallb", &raw.metallb)?,
            metrics_server: self.pin("metricsServer", &raw.metrics_server)?,
            kubelet_serving_cert_approver: self
                .pin("kubeletServingCertApprover", &raw.kubelet_serving_cert_approver)?,
            traefik: self.pin("traefik", &raw.traefik)?,
            cert_manager: self.pin("certManager", &raw.cert_manager)?,
            longhorn: self.pin("longhorn", &raw.longhorn)?,
            headlamp: self.pin("headlamp", &raw.headlamp)?,
            envoy_gateway: self.pin("envoyGateway", &raw.envoy_gateway)?,
        };
        self.compatibility(&versions);
        Some(versions)
    }

    /// A warning for each pin its upstream does not cover on this Kubernetes (never a refusal).
    fn compatibility(&mut self, versions: &Versions) {
        let kubernetes = versions.kubernetes;
        for (key, version, fit) in compatibility::pins(versions) {
            let (message, fix) = match fit {
                Fit::Covered => continue,
                Fit::Outside { range, newest_covering } => (
                    format!("is tested upstream with Kubernetes {range}, not {kubernetes}"),
                    match newest_covering {
                        Some(newest) => format!(
                            "{newest} is the newest release that covers {kubernetes}; move the pin, then `cargo xtask upgrade plan` shows the hops from what runs"
                        ),
                        None => format!(
                            "no release talos-ha knows covers {kubernetes} yet; expect to be the first to try it"
                        ),
                    },
                ),
                Fit::NotInTable => (
                    "is not in talos-ha's compatibility table".to_owned(),
                    format!("check its upstream's support for Kubernetes {kubernetes}"),
                ),
            };
            self.warnings.push(Problem { path: format!("versions.{key}"), value: version.to_string(), message, fix });
        }
    }

    fn subnet(&mut self, value: &Option<String>) -> Option<Ipv4Net> {
        let text = self.required("network.subnet", value, "172.16.16.0/24")?;
        match text.parse::<Ipv4Net>() {
            Ok(net) if net.trunc() == net => Some(net),
            Ok(net) => {
                self.problem(
                    "network.subnet",
                    text,
                    "has host bits set",
                    &format!("write the network address: {}", net.trunc()),
                );
                None
            }
            Err(_) => {
                self.problem("network.subnet", text, "is not an IPv4 CIDR", "write it like 172.16.16.0/24");
                None
            }
        }
    }

    fn nameservers(&mut self, value: &Option<Vec<String>>) -> Option<Vec<IpAddr>> {
        let path = "network.nameservers";
        let Some(list) = value.as_ref().filter(|list| !list.is_empty()) else {
            self.problem(path, "", "is missing", "list at least one resolver, e.g. `[1.1.1.1, 8.8.8.8]`");
            return None;
        };
        let parsed: Vec<Option<IpAddr>> = list
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let ip = text.trim().parse::<IpAddr>().ok();
                if ip.is_none() {
                    self.problem(&format!("{path}[{index}]"), text, "is not an IP address", "write it like 1.1.1.1");
                }
                ip
            })
            .collect();
        parsed.into_iter().collect()
    }

    fn nodes(&mut self, nodes: Option<&[RawNode]>) -> Vec<Option<Node>> {
        let Some(nodes) = nodes.filter(|nodes| !nodes.is_empty()) else {
            self.problem(
                "nodes",
                "",
                "is missing",
                "list the machines, e.g. `- { name: cp01, role: controlplane, ip: 172.16.16.147, installDisk: /dev/sda }`",
            );
            return Vec::new();
        };
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut parsed = Vec::new();
        for (index, node) in nodes.iter().enumerate() {
            let at = |field: &str| format!("nodes[{index}].{field}");
            let name = self.dns_label(&at("name"), &node.name, "cp01");
            let role = self.required(&at("role"), &node.role, "controlplane").and_then(|text| match text {
                "controlplane" => Some(Role::ControlPlane),
                "worker" => Some(Role::Worker),
                other => {
                    self.problem(&at("role"), other, "is not a role", "use `controlplane` or `worker`");
                    None
                }
            });
            let ip = self.ipv4(&at("ip"), &node.ip, "172.16.16.147");
            let install_disk = self.required(&at("installDisk"), &node.install_disk, "/dev/sda").and_then(|disk| {
                if disk.starts_with("/dev/") {
                    Some(disk.to_owned())
                } else {
                    self.problem(
                        &at("installDisk"),
                        disk,
                        "is not a device path",
                        "name the disk Talos installs to, e.g. /dev/sda or /dev/nvme0n1",
                    );
                    None
                }
            });
            let link_selector = match node.link_selector.as_deref().map(str::trim) {
                None => Some(DEFAULT_LINK_SELECTOR.to_owned()),
                Some("") => {
                    self.problem(
                        &at("linkSelector"),
                        "",
                        "is empty",
                        r#"leave it out for any physical Ethernet port, or name the port: mac(link.permanent_addr) == "00:1a:2b:3c:4d:5e""#,
                    );
                    None
                }
                Some(expression) => Some(expression.to_owned()),
            };
            if let Some(name) = &name
                && let Some(first) = names.insert(name.clone(), index)
            {
                self.problem(
                    &at("name"),
                    name,
                    &format!("is also nodes[{first}].name"),
                    "give every node its own name",
                );
            }
            if let Some(ip) = ip
                && let Some(first) = ips.insert(ip, index)
            {
                self.problem(
                    &at("ip"),
                    &ip.to_string(),
                    &format!("is also nodes[{first}].ip"),
                    "give every node its own address",
                );
            }
            parsed.push(match (name, role, ip, install_disk, link_selector) {
                (Some(name), Some(role), Some(ip), Some(install_disk), Some(link_selector)) => {
                    Some(Node { name, role, ip, install_disk, link_selector })
                }
                _ => None,
            });
        }
        parsed
    }

    /// Control-plane and worker counts: etcd needs a majority, so only odd counts add tolerance.
    fn roles(&mut self, nodes: &[Option<Node>]) {
        if nodes.is_empty() || nodes.iter().any(Option::is_none) {
            return; // counted only once every node parsed, or the counts would mislead
        }
        let count = |role| nodes.iter().flatten().filter(|node| node.role == role).count();
        let (control_planes, workers) = (count(Role::ControlPlane), count(Role::Worker));
        let value = format!("{control_planes} control planes");
        match control_planes {
            0 => self.problem("nodes", &value, "cannot form a cluster", "mark 3 nodes `role: controlplane`"),
            1 => self.warnings.push(Problem {
                path: "nodes".into(),
                value: "1 control plane".into(),
                message: "has no fault tolerance: losing it stops the API and etcd".into(),
                fix: "use 3 control planes for HA".into(),
            }),
            n if n % 2 == 0 => self.problem(
                "nodes",
                &value,
                &format!("add no fault tolerance over {}: etcd needs a majority ({} of {n})", n - 1, n / 2 + 1),
                "use an odd number of control planes (3 or 5)",
            ),
            _ => {}
        }
        if workers == 0 {
            self.problem(
                "nodes",
                "0 workers",
                "leave no node for workloads",
                "add at least one node with `role: worker`",
            );
        }
    }

    /// Where every address sits relative to the subnet, the gateway, the VIP, the nodes and the pool.
    fn addresses(&mut self, parsed: &Parsed, nodes: &[Option<Node>]) {
        let Parsed { subnet, gateway, vip, pool, pool_text } = parsed;
        let usable = |ip: &Ipv4Addr| {
            subnet.contains(ip) && (subnet.prefix_len() >= 31 || (*ip != subnet.network() && *ip != subnet.broadcast()))
        };
        let outside = format!("is not a usable host address in network.subnet ({subnet})");
        let move_inside = "use an address inside the subnet, neither its network nor broadcast address";
        for (path, ip) in [("network.gateway", gateway), ("network.vip", vip)] {
            if !usable(ip) {
                self.problem(path, &ip.to_string(), &outside, move_inside);
            }
        }
        if vip == gateway {
            self.problem("network.vip", &vip.to_string(), "is network.gateway", "pick a free address for the VIP");
        }
        if !pool.within(subnet) {
            self.problem(
                "metallb.pool",
                pool_text,
                &format!("is not inside network.subnet ({subnet})"),
                "pick a range of free addresses inside the subnet",
            );
        }
        let mut taken_by = |ip: &Ipv4Addr, what: &str| {
            if pool.contains(*ip) {
                self.problem(
                    "metallb.pool",
                    pool_text,
                    &format!("contains {ip}, {what}"),
                    "shrink or move the pool so it holds only addresses nothing else uses",
                );
            }
        };
        taken_by(vip, "the control-plane VIP (network.vip)");
        taken_by(gateway, "the gateway (network.gateway)");
        for (index, node) in nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            taken_by(&node.ip, &format!("the address of nodes[{index}] ({})", node.name));
        }
        for (index, node) in nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let path = format!("nodes[{index}].ip");
            let ip = node.ip.to_string();
            if !usable(&node.ip) {
                self.problem(&path, &ip, &outside, move_inside);
            }
            if node.ip == *vip {
                self.problem(
                    &path,
                    &ip,
                    "is the control-plane VIP (network.vip)",
                    "the VIP floats between control planes: give it an address of its own",
                );
            }
            if node.ip == *gateway {
                self.problem(&path, &ip, "is network.gateway", "give the node its own address");
            }
        }
    }
}

fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// The known key most like `key`, when one is close enough to be a likely typo.
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let key = key.to_lowercase();
    known
        .map(|candidate| (strsim::jaro_winkler(&key, &candidate.to_lowercase()), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}
