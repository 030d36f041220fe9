//! Talos's own API integration suite judges the twins (`cargo xtask lab talos-suite` runs the
//! same): every test of every judged suite passes against the box's cluster, or is skipped by
//! the test itself for a reason Talos wrote (a QEMU-only check). The suite's binary is built
//! from Talos's Go module on first use.

use lab::talos_suite::{Judged, Outcome, SUITES};

#[test]
fn talos_own_read_only_api_suites_pass_against_the_twins() -> anyhow::Result<()> {
    let config = tests::config();
    let binary = lab::ensure_talos_suite(&config.versions)?;
    let results = lab::talos_suite::run(&config, &binary)?;
    for result in &results {
        eprintln!("{:?} {}/{}", result.outcome, result.suite, result.test);
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|result| result.outcome == Outcome::Failed)
        .map(|result| format!("{}/{}:\n{}", result.suite, result.test, result.output))
        .collect();
    assert!(failed.is_empty(), "Talos's tests failed against the twins:\n{}", failed.join("\n\n"));
    // Each test a suite's verdict names ran and passed (a renamed test would otherwise match
    // nothing and pass unseen), and a suite judged whole passed at least one.
    for (suite, judged) in SUITES {
        let Judged::Runs(tests) = judged else { continue };
        let passed = |test: &str| {
            results
                .iter()
                .any(|r| r.suite == *suite && (test.is_empty() || r.test == test) && r.outcome == Outcome::Passed)
        };
        let named: &[&str] = if tests.is_empty() { &[""] } else { tests };
        for test in named {
            assert!(passed(test), "{suite}/{test} did not pass: {results:?}");
        }
    }
    Ok(())
}

/// The first command people type: `talosctl health` with no node lists. The node it asks finds
/// the cluster through discovery (every machine registered with the discovery service in the
/// box, under the config's cluster ID and secret) and checks all six.
#[test]
fn talosctl_health_with_no_node_lists_finds_the_cluster_through_discovery() -> anyhow::Result<()> {
    let config = tests::config();
    let lab = lab::Lab::new(&config, lab::DEFAULT_PORT_BASE);
    let node = config.control_planes().next().map(|node| node.ip.to_string()).expect("a control plane");
    let talosctl = |args: &[&str]| -> anyhow::Result<String> {
        let output = lab.talosctl(&[&["-n", &node, "-e", &node], args].concat())?;
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        anyhow::ensure!(output.status.success(), "talosctl {args:?} failed:\n{said}");
        Ok(said)
    };
    // The members come from the discovery service, not from Kubernetes (Talos's fallback).
    let members = talosctl(&["get", "members"])?;
    for node in &config.nodes {
        assert!(
            members.lines().any(|line| line.split_whitespace().nth(3) == Some(&node.name)),
            "{}: {members}",
            node.name
        );
    }
    let said = talosctl(&["health", "--wait-timeout", "2m"])?;
    let addresses: Vec<String> = config.nodes.iter().map(|node| format!("{:?}", node.ip.to_string())).collect();
    let discovered = said.lines().find(|line| line.starts_with("discovered nodes:")).unwrap_or_default();
    for address in &addresses {
        assert!(discovered.contains(address), "{address} was not discovered: {discovered}");
    }
    assert!(said.contains("waiting for all k8s nodes to report schedulable: OK"), "{said}");
    Ok(())
}

/// Every machine says which Image Factory schematic it booted, as Talos 1.12 says it: the
/// factory's virtual `schematic` extension, its version the schematic's ID. It is the one that
/// stage 01 computes from its extensions (what a Talos upgrade must keep).
#[test]
fn each_machine_reports_the_schematic_it_booted_as_a_virtual_extension() -> anyhow::Result<()> {
    let config = tests::config();
    let lab = lab::Lab::new(&config, lab::DEFAULT_PORT_BASE);
    let wanted =
        talos_bootstrap::schematic::id(&talos_bootstrap::schematic::document(talos_bootstrap::schematic::EXTENSIONS));
    for node in &config.nodes {
        let address = node.ip.to_string();
        let output = lab.talosctl(&["-n", &address, "-e", &address, "get", "extensions", "-o", "json"])?;
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}: {}", node.name, String::from_utf8_lossy(&output.stderr));
        let extensions: Vec<kit::talos::Resource<serde_json::Value>> = kit::talos::parse_resources(&printed)?;
        let versions: Vec<&str> = extensions
            .iter()
            .filter(|extension| extension.spec["metadata"]["name"] == "schematic")
            .filter_map(|extension| extension.spec["metadata"]["version"].as_str())
            .collect();
        assert_eq!(versions, [wanted.as_str()], "{}'s schematic entry", node.name);
    }
    Ok(())
}
