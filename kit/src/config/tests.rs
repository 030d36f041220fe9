//! One broken config per validation rule, each asserting the field path it is reported at.

use std::path::Path;

use super::*;

/// The documented `cluster.yaml` at the repository root.
const DEFAULT: &str = include_str!("../../../cluster.yaml");

fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
    ClusterConfig::parse(text, Path::new("test/cluster.yaml"))
}

/// The default config with `from` replaced by `to` (which must occur exactly once).
fn edited(from: &str, to: &str) -> String {
    assert_eq!(DEFAULT.matches(from).count(), 1, "`{from}` must occur once in cluster.yaml");
    DEFAULT.replace(from, to)
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(_) => panic!("config should be rejected:\n{text}"),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("expected validation problems, got: {other}"),
    }
}

/// Asserts a problem is reported at `path` whose text contains `needle`.
#[track_caller]
fn assert_problem(text: &str, path: &str, needle: &str) {
    let found = problems(text);
    assert!(
        found.iter().any(|p| p.path == path && p.to_string().contains(needle)),
        "no problem at `{path}` mentioning `{needle}`; got:\n{}",
        found.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
    );
}

fn valid(text: &str) -> ClusterConfig {
    parse(text).unwrap_or_else(|error| panic!("config should be valid: {error}"))
}

#[test]
fn the_documented_config_is_valid() {
    let config = valid(DEFAULT);
    assert_eq!(config.nodes.len(), 6);
    assert_eq!(config.control_planes().count(), 3);
    assert_eq!(config.workers().count(), 3);
    // Every default pin is inside its upstream's support for Kubernetes v1.35.
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.versions.talos.to_string(), "v1.12.1");
    assert_eq!(config.versions.metallb.to_string(), "v0.16.1", "component pins default");
}

/// The default config with README's seed `versions:` block in place of its own pins.
fn seed_config() -> String {
    let pins = seed_pin_lines();
    edited("  kubernetes: v1.35.0\n", &format!("  kubernetes: v1.35.0\n{pins}"))
}

#[test]
fn the_seeds_set_stays_installable_and_warns_where_its_upstreams_stopped() {
    let readme = include_str!("../../../README.md");
    assert!(readme.contains(&seed_versions_block()), "README shows the seed's block:\n{}", seed_versions_block());
    let config = valid(&seed_config());
    for pin in PINS {
        let pinned = serde_json::to_value(&config.versions).expect("serialises")[pin.key].clone();
        assert_eq!(pinned, pin.seed, "{}", pin.key);
    }
    let warned: Vec<&str> = config.warnings.iter().map(|warning| warning.path.as_str()).collect();
    assert_eq!(warned, ["versions.certManager", "versions.longhorn", "versions.envoyGateway"]);
}

#[test]
fn derived_values_live_on_the_model() {
    let config = valid(DEFAULT);
    assert_eq!(config.api_endpoint(), "https://172.16.16.100:6443");
    assert_eq!(config.service_host("whoami", config.traefik_ip), "whoami.172.16.16.101.sslip.io");
    assert_eq!(config.service_host("demo", config.envoy_gateway_ip), "demo.172.16.16.102.sslip.io");
    assert_eq!(config.state_dir(), Path::new("test/state"));
    assert_eq!(state_dir_for(Path::new("cluster.yaml")), Path::new("./state"));
}

#[test]
fn summary_matches_golden_file() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/summary.txt");
    crate::golden::assert_matches(&golden, &valid(DEFAULT).summary());
}

#[test]
fn unknown_keys_get_a_did_you_mean() {
    assert_problem(&edited("envoyGateway:\n", "envoygateway:\n"), "envoygateway", "did you mean `envoyGateway`?");
    assert_problem(
        &edited("ip: 172.16.16.147, installDisk", "ip: 172.16.16.147, instalDisk"),
        "nodes[0].instalDisk",
        "did you mean `installDisk`?",
    );
    assert_problem(
        &edited("  vip: 172.16.16.100", "  vip: 172.16.16.100\n  mtu: 1500"),
        "network.mtu",
        "known keys here",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = edited("  vip: 172.16.16.100", "  vip: 172.16.16.300").replace("talos-ha  ", "Talos_HA  ");
    let found = problems(&text);
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"network.vip") && paths.contains(&"cluster.name"), "{paths:?}");
}

#[test]
fn malformed_values_name_their_field() {
    assert_problem(&edited("vip: 172.16.16.100 ", "vip: 172.16.16.300 "), "network.vip", "not an IPv4 address");
    assert_problem(&edited("subnet: 172.16.16.0/24", "subnet: 172.16.16.0/33"), "network.subnet", "not an IPv4 CIDR");
    assert_problem(&edited("subnet: 172.16.16.0/24", "subnet: 172.16.16.5/24"), "network.subnet", "172.16.16.0/24");
    assert_problem(&edited("[1.1.1.1, 8.8.8.8]", "[1.1.1.1, dns.google]"), "network.nameservers[1]", "dns.google");
    assert_problem(
        &edited("pool: 172.16.16.101-172.16.16.120", "pool: 172.16.16.120-172.16.16.101"),
        "metallb.pool",
        "starts after",
    );
    assert_problem(&edited("pool: 172.16.16.101-172.16.16.120", "pool: lots"), "metallb.pool", "FIRST-LAST");
    assert_problem(
        &edited("role: worker, ip: 172.16.16.150", "role: master, ip: 172.16.16.150"),
        "nodes[3].role",
        "controlplane",
    );
    assert_problem(
        &edited("ip: 172.16.16.152, installDisk: /dev/sda", "ip: 172.16.16.152, installDisk: sda"),
        "nodes[5].installDisk",
        "device path",
    );
}

#[test]
fn missing_fields_name_their_path() {
    assert_problem(&edited("  gateway: 172.16.16.1\n", ""), "network.gateway", "is missing");
    assert_problem(&edited("traefik:\n  ip: 172.16.16.101", "traefik: {}\n"), "traefik.ip", "is missing");
    let nodes_start = DEFAULT.find("nodes:\n").unwrap_or_default();
    let nodes_end = DEFAULT.find("\nmetallb:").unwrap_or_default();
    let without_nodes = format!("{}{}", &DEFAULT[..nodes_start], &DEFAULT[nodes_end..]);
    assert_problem(&without_nodes, "nodes", "is missing");
}

#[test]
fn wrong_types_name_their_path() {
    assert_problem(&edited("nameservers: [1.1.1.1, 8.8.8.8]", "nameservers: 1.1.1.1"), "network.nameservers", "");
    let insecure = "traefik:\n  ip: 172.16.16.101";
    assert_problem(
        &edited(insecure, &format!("metricsServer:\n  kubeletInsecureTls: maybe\n{insecure}")),
        "metricsServer.kubeletInsecureTls",
        "",
    );
}

#[test]
fn kubelet_tls_is_verified_unless_the_config_opts_out() {
    assert!(!valid(DEFAULT).metrics_server_kubelet_insecure_tls);
    let insecure = "traefik:\n  ip: 172.16.16.101";
    let opted_out = edited(insecure, &format!("metricsServer:\n  kubeletInsecureTls: true\n{insecure}"));
    assert!(valid(&opted_out).metrics_server_kubelet_insecure_tls);
}

#[test]
fn names_must_be_dns_labels_and_unique() {
    assert_problem(&edited("name: talos-ha ", "name: Talos_HA "), "cluster.name", "DNS label");
    assert_problem(&edited("name: wk02", "name: -wk02"), "nodes[4].name", "DNS label");
    assert_problem(&edited("name: wk03", "name: wk01"), "nodes[5].name", "is also nodes[3].name");
    assert_problem(&edited("domain: sslip.io ", "domain: sslip_io "), "cluster.domain", "not a DNS domain");
}

#[test]
fn node_addresses_are_unique_and_inside_the_subnet() {
    assert_problem(&edited("ip: 172.16.16.152", "ip: 172.16.16.151"), "nodes[5].ip", "is also nodes[4].ip");
    assert_problem(&edited("ip: 172.16.16.152", "ip: 10.0.0.152"), "nodes[5].ip", "network.subnet");
    assert_problem(&edited("ip: 172.16.16.152", "ip: 172.16.16.255"), "nodes[5].ip", "usable host address");
    assert_problem(&edited("ip: 172.16.16.152", "ip: 172.16.16.1"), "nodes[5].ip", "is network.gateway");
    assert_problem(&edited("gateway: 172.16.16.1", "gateway: 172.16.17.1"), "network.gateway", "network.subnet");
}

#[test]
fn vip_is_not_a_node_not_the_gateway_and_not_in_the_pool() {
    assert_problem(&edited("ip: 172.16.16.149", "ip: 172.16.16.100"), "nodes[2].ip", "control-plane VIP");
    assert_problem(&edited("vip: 172.16.16.100 ", "vip: 172.16.16.1 "), "network.vip", "is network.gateway");
    assert_problem(&edited("vip: 172.16.16.100 ", "vip: 172.16.16.110 "), "metallb.pool", "control-plane VIP");
    assert_problem(&edited("vip: 172.16.16.100 ", "vip: 172.16.17.100 "), "network.vip", "network.subnet");
}

#[test]
fn pool_is_inside_the_subnet_and_clear_of_nodes_and_gateway() {
    let pool = "pool: 172.16.16.101-172.16.16.120";
    assert_problem(&edited(pool, "pool: 172.16.16.101-172.16.17.20"), "metallb.pool", "not inside network.subnet");
    assert_problem(&edited(pool, "pool: 172.16.16.101-172.16.16.150"), "metallb.pool", "nodes[3] (wk01)");
    assert_problem(&edited(pool, "pool: 172.16.16.1-172.16.16.20"), "metallb.pool", "gateway");
}

#[test]
fn entry_point_addresses_are_in_the_pool_and_distinct() {
    assert_problem(&edited("ip: 172.16.16.101 ", "ip: 172.16.16.130 "), "traefik.ip", "outside metallb.pool");
    assert_problem(&edited("ip: 172.16.16.102 ", "ip: 172.16.16.99 "), "envoyGateway.ip", "outside metallb.pool");
    assert_problem(&edited("ip: 172.16.16.102 ", "ip: 172.16.16.101 "), "envoyGateway.ip", "is also traefik.ip");
}

#[test]
fn control_planes_are_odd_and_workers_exist() {
    let two_cps = edited("  - { name: cp03, role: controlplane, ip: 172.16.16.149, installDisk: /dev/sda }\n", "");
    assert_problem(&two_cps, "nodes", "no fault tolerance over 1");
    let four_cps = edited("name: wk01, role: worker", "name: wk01, role: controlplane");
    assert_problem(&four_cps, "nodes", "etcd needs a majority (3 of 4)");
    let no_workers = DEFAULT
        .replace("role: worker", "role: controlplane")
        .replace("  - { name: wk03, role: controlplane, ip: 172.16.16.152, installDisk: /dev/sda }\n", "");
    assert_problem(&no_workers, "nodes", "0 workers");
}

#[test]
fn a_pin_outside_its_upstream_range_warns_and_an_unknown_one_is_not_in_the_table() {
    let config = valid(&edited("  kubernetes: v1.35.0\n", "  kubernetes: v1.33.7\n  envoyGateway: v1.5.0\n"));
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(|w| w.contains("versions.envoyGateway: v1.5.0 is not in talos-ha's compatibility table")),
        "{warnings:?}"
    );
    let metrics = "versions.metricsServer: v0.9.0 is tested upstream with Kubernetes 1.34 and newer, not v1.33.7; \
                   v0.8.1 is the newest release that covers v1.33.7";
    assert!(warnings.iter().any(|w| w.contains(metrics)), "{warnings:?}");
    assert_eq!(warnings.len(), 2, "every other default pin is tested with 1.33: {warnings:?}");
}

#[test]
fn a_single_control_plane_is_allowed_with_a_warning() {
    let one_cp = edited("  - { name: cp02, role: controlplane, ip: 172.16.16.148, installDisk: /dev/sda }\n", "")
        .replace("  - { name: cp03, role: controlplane, ip: 172.16.16.149, installDisk: /dev/sda }\n", "");
    let config = valid(&one_cp);
    let nodes: Vec<String> =
        config.warnings.iter().filter(|warning| warning.path == "nodes").map(ToString::to_string).collect();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].contains("no fault tolerance"), "{}", nodes[0]);
}

#[test]
fn versions_are_tags_and_the_talos_pair_is_supported() {
    assert_problem(&edited("talos: v1.12.1", "talos: 1.12.1"), "versions.talos", "vX.Y.Z");
    assert_problem(
        &edited("talos: v1.12.1", "talos: v1.9.1"),
        "versions.kubernetes",
        "Talos 1.9 runs Kubernetes 1.27–1.32",
    );
    assert_problem(
        &edited("  kubernetes: v1.35.0\n", "  kubernetes: v1.35.0\n  traefik: latest\n"),
        "versions.traefik",
        "vX.Y.Z",
    );
    let overridden = valid(&edited("  kubernetes: v1.35.0\n", "  kubernetes: v1.35.0\n  traefik: v3.3.6\n"));
    assert_eq!(overridden.versions.traefik.to_string(), "v3.3.6");
}

#[test]
fn syntax_errors_and_non_mappings_are_reported() {
    assert!(matches!(parse("cluster: [unclosed"), Err(ConfigError::Syntax { .. })));
    assert_problem("- just\n- a list\n", "", "mapping");
}

#[test]
fn link_selector_defaults_to_any_physical_port_and_may_name_one() {
    let config = valid(DEFAULT);
    assert!(config.nodes.iter().all(|node| node.link_selector == DEFAULT_LINK_SELECTOR));
    let by_mac = r#"mac(link.permanent_addr) == "00:1a:2b:3c:4d:5e""#;
    let named = valid(&edited(
        "{ name: wk03, role: worker, ip: 172.16.16.152, installDisk: /dev/sda }",
        &format!("{{ name: wk03, role: worker, ip: 172.16.16.152, installDisk: /dev/sda, linkSelector: '{by_mac}' }}"),
    ));
    assert_eq!(named.nodes[5].link_selector, by_mac);
    assert_problem(
        &edited(
            "{ name: wk03, role: worker, ip: 172.16.16.152, installDisk: /dev/sda }",
            "{ name: wk03, role: worker, ip: 172.16.16.152, installDisk: /dev/sda, linkSelector: ' ' }",
        ),
        "nodes[5].linkSelector",
        "mac(link.permanent_addr)",
    );
}
