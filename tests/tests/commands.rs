//! The xtask's small commands as a user runs them (audit U16): `validate`, `mirror`,
//! `lab status` and `lab shell`, each through `cargo xtask`, each asserted on what it writes;
//! and the exit code of a mistyped command line.

use std::process::Output;

fn xtask(args: &[&str]) -> anyhow::Result<Output> {
    Ok(xtask::cargo().current_dir(xtask::workspace_root()).arg("xtask").args(args).output()?)
}

#[test]
fn validate_summarizes_a_valid_config_and_lists_a_broken_ones_problems() -> anyhow::Result<()> {
    let config = tests::config_path().display().to_string();
    let valid = xtask(&["validate", "--config", &config])?;
    let summary = String::from_utf8_lossy(&valid.stdout);
    assert!(valid.status.success(), "{}", String::from_utf8_lossy(&valid.stderr));
    assert!(summary.contains("172.16.16.100"), "the summary names the VIP: {summary}");

    let dir = tempfile::tempdir()?;
    let broken = xtask::scratch_config(&tests::config_path(), dir.path())?.source;
    let text = std::fs::read_to_string(&broken)?.replace("ip: 172.16.16.101", "ip: 172.16.16.99");
    std::fs::write(&broken, text)?;
    let invalid = xtask(&["validate", "--output", "json", "--config", &broken.display().to_string()])?;
    assert_eq!(invalid.status.code(), Some(2));
    let problems: Vec<serde_json::Value> =
        String::from_utf8_lossy(&invalid.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert!(
        problems.iter().any(|problem| problem["path"] == "traefik.ip" && problem["value"] == "172.16.16.99"),
        "{problems:?}"
    );
    Ok(())
}

#[test]
fn mirror_copies_every_pinned_file_with_its_sum() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("mirror");
    let upstream = tests::upstream_mirror().display().to_string();
    let config = xtask::scratch_config(&tests::config_path(), dir.path())?.source.display().to_string();
    let copied = xtask(&["mirror", "--out", &out.display().to_string(), "--mirror", &upstream, "--config", &config])?;
    assert!(copied.status.success(), "{}", String::from_utf8_lossy(&copied.stderr));
    let listed: Vec<String> = String::from_utf8_lossy(&copied.stdout).lines().map(str::to_owned).collect();
    assert_eq!(listed.len(), kit::artifacts::ARTIFACTS.len(), "{listed:?}");
    let sums = kit::artifacts::read_sums(&out.join("SHA256SUMS"))?;
    for relative in &listed {
        let bytes = std::fs::read(out.join(relative))?;
        assert_eq!(std::fs::read(tests::upstream_mirror().join(relative))?, bytes, "{relative} is the upstream file");
        assert_eq!(sums.get(relative), Some(&kit::artifacts::sha256_hex(&bytes)), "{relative}'s sum");
    }
    Ok(())
}

#[test]
fn lab_status_lists_the_boxs_components_and_their_memory() -> anyhow::Result<()> {
    let config = tests::config_path().display().to_string();
    let status = xtask(&["lab", "status", "--output", "json", "--config", &config])?;
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let components: Vec<serde_json::Value> =
        String::from_utf8_lossy(&status.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let names: Vec<&str> = components.iter().filter_map(|component| component["name"].as_str()).collect();
    for node in tests::config().nodes {
        assert!(names.iter().any(|name| name.contains(&node.name)), "{} is listed: {names:?}", node.name);
    }
    assert!(components.iter().all(|component| component["healthy"] == true), "{components:?}");
    assert!(components.iter().any(|component| component["resident_bytes"].as_u64().is_some_and(|bytes| bytes > 0)));
    Ok(())
}

/// README's tour of the box: `cargo xtask lab shell -- talosctl -n <wk01> services` and
/// `-- kubectl get nodes`, on a machine with neither tool of its own: the `cargo xtask` runs
/// with every folder holding a talosctl or kubectl left off its PATH, and the shell's own
/// PATH starts with the ones the lab built.
#[test]
fn lab_shell_brings_the_talosctl_and_kubectl_the_lab_built() -> anyhow::Result<()> {
    let config = tests::config_path().display().to_string();
    let host_path = std::env::var_os("PATH").unwrap_or_default();
    let has_a_tool = |dir: &std::path::Path| ["talosctl", "kubectl"].iter().any(|tool| dir.join(tool).exists());
    let bare_path = std::env::join_paths(std::env::split_paths(&host_path).filter(|dir| !has_a_tool(dir)))?;
    let shell = |command: &[&str]| -> anyhow::Result<String> {
        let output = xtask::cargo()
            .current_dir(xtask::workspace_root())
            .env("PATH", &bare_path)
            .args(["xtask", "lab", "shell", "--config", &config, "--"])
            .args(command)
            .output()?;
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        anyhow::ensure!(output.status.success(), "lab shell -- {command:?}: {said}");
        Ok(said)
    };
    let wk01 = tests::config().nodes.iter().find(|node| node.name == "wk01").map(|node| node.ip.to_string());
    let services = shell(&["talosctl", "-n", &wk01.unwrap_or_default(), "services"])?;
    assert!(services.contains("kubelet") && services.contains("Running"), "{services}");
    let nodes = shell(&["kubectl", "get", "nodes", "-o", "name"])?;
    for node in tests::config().nodes {
        assert!(nodes.contains(&format!("node/{}", node.name)), "{nodes}");
    }
    Ok(())
}

#[test]
fn a_mistyped_flag_exits_2_but_under_plan_1() -> anyhow::Result<()> {
    let validate = xtask(&["validate", "--no-such-flag"])?;
    assert_eq!(validate.status.code(), Some(2), "a usage error: {}", String::from_utf8_lossy(&validate.stderr));
    let plan = xtask(&["plan", "--no-such-flag"])?;
    let said = String::from_utf8_lossy(&plan.stderr);
    assert_eq!(plan.status.code(), Some(1), "under plan, 2 would read as drift to a CI job: {said}");
    assert!(said.contains("--no-such-flag"), "clap's message names the flag: {said}");
    Ok(())
}
