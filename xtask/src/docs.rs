//! The seed's top-level documents, derived from `cluster.yaml`: the README with the IP plan,
//! the diagram and the Quick Access table, and the HA verification guide. `cargo xtask
//! render` writes them beside the stages' folders; `status` checks the same endpoints live.

use std::fmt::Write as _;

use kit::config::{ClusterConfig, Role};

/// The two ways in: Ingress through Traefik, and the Gateway API through Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Legacy,
    Modern,
    Cli,
}

impl Path {
    pub fn describe(self, config: &ClusterConfig) -> String {
        match self {
            Path::Legacy => format!("legacy (Traefik, {})", config.traefik_ip),
            Path::Modern => format!("modern (Envoy Gateway, {})", config.envoy_gateway_ip),
            Path::Cli => "CLI".to_owned(),
        }
    }
}

/// One row of the Quick Access table.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: &'static str,
    /// A URL, or the command for CLI-only endpoints.
    pub url: String,
    pub path: Path,
    /// The stage that serves it.
    pub stage: &'static str,
    /// The cert-manager Certificate (namespace, name) behind an HTTPS URL.
    pub certificate: Option<(&'static str, &'static str)>,
}

/// The seed's Quick Access table, from the config.
pub fn endpoints(config: &ClusterConfig) -> Vec<Endpoint> {
    let legacy = |service| format!("https://{}", config.service_host(service, config.traefik_ip));
    // The Gateway serves both listeners; https is what KubeInvaders' page needs, and its
    // wildcard certificate is the cluster CA's.
    let modern = |service| format!("https://{}", config.service_host(service, config.envoy_gateway_ip));
    let gateway_certificate = Some((kit::names::GATEWAY_NAMESPACE, "talos-ha-gateway"));
    let row = |name, url, path, stage, certificate| Endpoint { name, url, path, stage, certificate };
    vec![
        row("Envoy demo", modern("demo"), Path::Modern, "workloads", gateway_certificate),
        row("KubeInvaders", modern("kubeinvaders"), Path::Modern, "workloads", gateway_certificate),
        row("whoami", legacy("whoami"), Path::Legacy, "workloads", Some(("whoami", "whoami"))),
        row("Headlamp dashboard", legacy("headlamp"), Path::Legacy, "headlamp", Some(("kube-system", "headlamp"))),
        row("Longhorn UI", legacy("longhorn"), Path::Legacy, "longhorn", Some(("longhorn-system", "longhorn-ui"))),
        row("Metrics", "kubectl top nodes".to_owned(), Path::Cli, "metrics-server", None),
    ]
}

/// The seed's folders, by stage, with what each builds.
const FOLDERS: &[(&str, &str)] = &[
    ("01-talos-bootstrap", "OS install and etcd init"),
    ("02-metallb", "MetalLB L2 address pools"),
    ("03-metrics-server", "metrics-server, kubelet serving certificates approved"),
    ("04-traefik-ingress", "Traefik Ingress on the legacy path"),
    ("05-cert-manager", "cert-manager and the cluster CA"),
    ("06-storage-longhorn", "Longhorn replicated storage"),
    ("07-dashboard-headlamp", "the Headlamp dashboard"),
    ("08-gateway-envoy", "Envoy Gateway on the modern path"),
    ("100-workloads", "sample workloads"),
];

/// The top-level README of a rendered tree.
pub fn readme(config: &ClusterConfig) -> String {
    let mut text = String::new();
    let v = &config.versions;
    let _ = writeln!(text, "# {}: Kubernetes HA on Talos Linux\n", config.name);
    let _ = writeln!(
        text,
        "Rendered by `cargo xtask render` from `{}`. Every address below comes from that file.\n",
        config.source.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
    );
    text.push_str("## Network & IP plan\n\n| IP address | Hostname | Role |\n| :--- | :--- | :--- |\n");
    for node in &config.nodes {
        let role = match node.role {
            Role::ControlPlane => "Control plane (etcd member)",
            Role::Worker => "Worker",
        };
        let _ = writeln!(text, "| `{}` | `{}` | {role} |", node.ip, node.name);
    }
    let _ = writeln!(
        text,
        "| **`{}`** | **VIP** | **Control-plane VIP** (`{}`) |",
        config.network.vip,
        config.api_endpoint()
    );
    let _ = writeln!(text, "| **`{}`** | **Traefik** | **Ingress (legacy path)** |", config.traefik_ip);
    let _ = writeln!(text, "| **`{}`** | **Envoy** | **Gateway API (modern path)** |", config.envoy_gateway_ip);
    let _ = writeln!(text, "| `{}` | MetalLB | Service address pool |\n", config.metallb_pool);
    text.push_str(&diagram(config));
    text.push_str("\n## Versions\n\n| Component | Version |\n| :--- | :--- |\n");
    for (name, version) in [
        ("Talos Linux", v.talos),
        ("Kubernetes", v.kubernetes),
        ("MetalLB", v.metallb),
        ("metrics-server", v.metrics_server),
        ("Traefik", v.traefik),
        ("cert-manager", v.cert_manager),
        ("Longhorn", v.longhorn),
        ("Headlamp", v.headlamp),
        ("Envoy Gateway", v.envoy_gateway),
    ] {
        let _ = writeln!(text, "| {name} | `{version}` |");
    }
    text.push_str("\n## Project structure\n\n| Folder | What it builds |\n| :--- | :--- |\n");
    for (folder, what) in FOLDERS {
        let _ = writeln!(text, "| [{folder}/](./{folder}/) | {what} |");
    }
    text.push_str(
        "\n## Quick access\n\n```bash\nexport KUBECONFIG=$(pwd)/state/kubeconfig\nkubectl get nodes -o wide\n```\n\n",
    );
    text.push_str("| Service | URL | Path |\n| :--- | :--- | :--- |\n");
    for endpoint in endpoints(config) {
        let _ = writeln!(text, "| {} | `{}` | {} |", endpoint.name, endpoint.url, endpoint.path.describe(config));
    }
    text.push_str(
        "\nHTTPS names carry certificates from the cluster CA: trust `state/ca.crt` (stage 05 prints how).\n\
         `cargo xtask status` checks every row live.\n\n## HA verification\n\n\
         [HA-VERIFICATION.md](./HA-VERIFICATION.md) walks through what survives a failure, and \
         `cargo xtask verify-ha` runs it.\n",
    );
    text
}

/// The cluster as a Mermaid diagram: the LAN entry points, the control planes behind the
/// VIP, the workers.
fn diagram(config: &ClusterConfig) -> String {
    let mut text = String::from("```mermaid\nflowchart TB\n");
    let _ = writeln!(text, "    users[\"Users on {}\"]", config.network.subnet);
    let _ = writeln!(text, "    vip[\"VIP {} :6443\"]", config.network.vip);
    let _ = writeln!(text, "    traefik[\"Traefik {} (Ingress)\"]", config.traefik_ip);
    let _ = writeln!(text, "    envoy[\"Envoy Gateway {} (Gateway API)\"]", config.envoy_gateway_ip);
    let _ = writeln!(text, "    users --> traefik\n    users --> envoy\n    users -- kubectl --> vip");
    text.push_str("    subgraph control[\"Control plane (stacked etcd)\"]\n");
    for node in config.control_planes() {
        let _ = writeln!(text, "        {}[\"{}<br/>{}\"]", node.name, node.name, node.ip);
    }
    text.push_str("    end\n    subgraph workers[\"Workers (Longhorn replicas)\"]\n");
    for node in config.workers() {
        let _ = writeln!(text, "        {}[\"{}<br/>{}\"]", node.name, node.name, node.ip);
    }
    text.push_str("    end\n    vip --> control\n    traefik --> workers\n    envoy --> workers\n");
    let _ = writeln!(
        text,
        "    pool[\"MetalLB pool {}–{}\"] -.-> traefik",
        config.metallb_pool.first, config.metallb_pool.last
    );
    text.push_str("    pool -.-> envoy\n```\n");
    text
}

/// The HA verification guide: each step, the command, and what it proves.
pub fn ha_verification(config: &ClusterConfig) -> String {
    let control_planes: Vec<String> = config.control_planes().map(|n| format!("{} ({})", n.name, n.ip)).collect();
    let first = config.control_planes().next().map(|n| n.ip.to_string()).unwrap_or_default();
    let workers: Vec<String> = config.workers().map(|n| n.name.clone()).collect();
    let quorum = kit::talos::quorum(config.control_planes().count());
    let mut text = format!(
        "# HA verification\n\n\
         What this cluster survives, and how to see it. `cargo xtask verify-ha` runs the read-only \
         steps (add `--drill node=<name>` for a real failure); `cargo xtask verify-ha --lab` runs the \
         same drill on the local lab.\n\n\
         ## 1. etcd has a healthy majority\n\n\
         The control planes {} each run an etcd member. A write needs {quorum} of {} members, so the \
         cluster keeps working with one control plane down, and stops accepting writes (but keeps \
         running pods) with two down. Health is each member's own `etcd status` (answering, no \
         errors, not a learner), asked of every control plane: a member that is down or rebooting \
         is still *listed* by `etcd members`.\n\n\
         ```bash\ntalosctl -n {cps_comma} etcd status\ntalosctl -n {first} etcd members\n```\n\n\
         ## 2. One control plane holds the VIP\n\n\
         `{vip}` is announced by exactly one healthy control plane. When it shuts down cleanly, \
         another takes the address over as soon as it lets go (on a reboot, after its kubelet's \
         graceful shutdown); after a crash or power loss it can take up to a \
         minute (the holder's etcd lease must expire first). `kubectl` keeps using `{endpoint}`.\n\n\
         ```bash\nfor n in {cps}; do talosctl -n $n get addresses -o json | grep '\"{vip}/32\"'; done\nkubectl --server {endpoint} get --raw /readyz\n```\n\n\
         ## 3. Workloads are spread so that losing a node keeps each app served\n\n\
         whoami runs 3 replicas spread over the workers ({workers}); Traefik and Envoy run 2 each, \
         never two on one node. Losing any one node leaves every app with a serving replica.\n\n\
         ```bash\nkubectl get pods -A -o wide | grep -E 'whoami|traefik|envoy'\n```\n\n\
         ## 4. Volumes keep three replicas on three nodes\n\n\
         Longhorn keeps each volume's replicas on different workers; with one worker down, volumes run \
         degraded on two replicas and rebuild the third when a node is back.\n\n\
         ```bash\nkubectl -n longhorn-system get volumes.longhorn.io,replicas.longhorn.io -o wide\n```\n\n\
         ## 5. The drill: lose a node for real\n\n\
         `cargo xtask verify-ha --drill node=<name>` asks for confirmation (`--yes` for scripts), \
         then reboots the node with `talosctl reboot`: the node goes away and comes back by itself \
         (talosctl cannot power a machine back on). Talos first lets the kubelet shut down gracefully \
         (the node reports NotReady, its pods are terminated within 30 s and their controllers \
         replace them on the other nodes), then stops its services: on a control plane its etcd \
         member, its API server, and the VIP if it held it. Every second meanwhile the drill asks the \
         API through the VIP and every Quick Access URL, who holds the VIP and how many etcd members \
         are healthy. It reports the longest time each went unanswered, when the VIP had a new \
         holder, the fewest healthy etcd members seen (never below {quorum}, or the drill fails), and, \
         for a worker, when its pods ran Ready on the other workers (it runs a small probe \
         Deployment, one pod per worker, for that). Once the node is back (rebooted, Ready) it waits \
         for every etcd member to be healthy again and for Longhorn to rebuild the replicas the node \
         held, and times both. It refuses, before touching anything, a drill that would lose etcd \
         quorum (a control plane while another is down) or a volume's last healthy replica.\n\n\
         ## 6. When quorum is lost: restore from a backup\n\n\
         Losing {quorum_loss} of the {cp_count} control planes at once (a power cut, disks, a bad upgrade) stops \
         etcd, and with it the API: nothing above survives that, only a backup does. Take one daily and \
         before every upgrade with `cargo xtask backup`, keep it off this machine, and restore with \
         `cargo xtask restore --from <backup>`: it refuses while etcd has quorum, wipes etcd on the \
         control planes, bootstraps one from the snapshot, lets the others join and verifies. \
         README.md, \"Backups and disaster recovery\", says what it stores, how often, and what restore \
         will and will not do.\n\n\
         ## 7. When a machine dies: replace it\n\n\
         A machine that does not come back (a dead disk, a dead board) is replaced, not waited for: boot \
         the new one from the Talos ISO at the dead one's address and run `cargo xtask node replace \
         <name>`. For a control plane it first checks that the other {other_cps} members are healthy (with \
         one down already, removing another could cost quorum), removes the dead member by the ID they report for that \
         name and address, deletes the Node, sends the new machine its config and waits until it is a \
         healthy voter, its Node Ready, the VIP held and every stage verified. Adding or retiring a \
         machine is an edit of `cluster.yaml` (`cargo xtask plan` says what changes; `cargo xtask node \
         remove <name>` takes a retired one out). README.md, \"Replacing and adding machines\", says \
         what to do with the new machine and what `node replace` will and will not do.\n",
        control_planes.join(", "),
        config.control_planes().count(),
        vip = config.network.vip,
        endpoint = config.api_endpoint(),
        cps = config.control_planes().map(|n| n.ip.to_string()).collect::<Vec<_>>().join(" "),
        cps_comma = config.control_planes().map(|n| n.ip.to_string()).collect::<Vec<_>>().join(","),
        workers = workers.join(", "),
        cp_count = config.control_planes().count(),
        quorum_loss = config.control_planes().count() + 1 - quorum,
        other_cps = config.control_planes().count().saturating_sub(1),
    );
    text.push_str(
        "\n## In the lab\n\n\
         `cargo xtask verify-ha --lab --drill node=<name> --yes` runs the same steps from the box's \
         workstation: talosctl against the Talos twins at the config's addresses, the API through the \
         VIP. A twin reboots as Talos does (the kubelet's graceful shutdown, then its services, the VIP \
         released), so the timings are the cluster's own, minus a real machine's firmware and boot. \
         What the box cannot show is said, not passed: the Quick Access URLs (their pods are fakes) \
         and Longhorn's volumes (no disks, no iSCSI).\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ClusterConfig {
        ClusterConfig::parse(text, std::path::Path::new("cluster.yaml")).unwrap_or_else(|error| panic!("{error}"))
    }

    /// The repository's config with another subnet and pool: every address must follow.
    fn moved() -> String {
        include_str!("../../cluster.yaml")
            .replace("172.16.16.", "10.40.0.")
            .replace("10.40.0.101-10.40.0.120", "10.40.0.201-10.40.0.220")
            .replace("ip: 10.40.0.101", "ip: 10.40.0.201")
            .replace("ip: 10.40.0.102", "ip: 10.40.0.202")
    }

    fn golden(name: &str, text: &str) {
        kit::golden::assert_matches(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name),
            text,
        );
    }

    #[test]
    fn documents_match_their_golden_copies_for_both_configs() {
        let default = config(include_str!("../../cluster.yaml"));
        golden("default/README.md", &readme(&default));
        golden("default/HA-VERIFICATION.md", &ha_verification(&default));
        let moved = config(&moved());
        let (moved_readme, moved_guide) = (readme(&moved), ha_verification(&moved));
        golden("moved/README.md", &moved_readme);
        golden("moved/HA-VERIFICATION.md", &moved_guide);
        for text in [&moved_readme, &moved_guide] {
            assert!(!text.contains("172.16.16."), "an address did not follow the config");
        }
        assert!(moved_readme.contains("https://demo.10.40.0.202.sslip.io"));
        assert!(moved_readme.contains("| `10.40.0.201-10.40.0.220` | MetalLB |"));
    }
}
