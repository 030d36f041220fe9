//! `cargo xtask install-all --lab` as a user runs it: the real command, against the lab.

use std::path::Path;
use std::process::Output;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};

fn install_all(config: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    xtask_on_lab("install-all", config, extra)
}

/// `cargo xtask <command> --lab` with the test config and the upstream mirror.
fn xtask_on_lab(command: &str, config: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    let output = xtask::cargo()
        .current_dir(xtask::workspace_root())
        .args(["xtask", command, "--lab", "--config"])
        .arg(config)
        .arg("--mirror")
        .arg(tests::upstream_mirror())
        .args(extra)
        .output()?;
    Ok(output)
}

// Async for the drift step's API calls; the xtask runs block one worker of the multi-threaded
// runtime, which is what they are.
#[tokio::test(flavor = "multi_thread")]
async fn install_all_converges_and_a_second_run_changes_nothing() -> anyhow::Result<()> {
    let config = tests::config_path();
    let first = install_all(&config, &[])?;
    let log = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{log}");
    assert!(log.contains("metallb          verify"), "one line per step: {log}");
    let second = install_all(&config, &["--output", "json"])?;
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{log}");
    assert!(log.contains("nothing changed: the cluster was already converged"), "{log}");

    // The machine-readable report: every stage, every step, every check, nothing changed.
    let report: serde_json::Value = serde_json::from_slice(&second.stdout)?;
    let stages = report["stages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let names: Vec<&str> = stages.iter().filter_map(|stage| stage["stage"].as_str()).collect();
    assert_eq!(names, xtask::stages::STAGES, "{report:#}");
    for stage in stages {
        let steps: Vec<&str> =
            stage["steps"].as_array().into_iter().flatten().filter_map(|s| s["step"].as_str()).collect();
        assert_eq!(steps, ["check", "apply", "verify"], "{stage:#}");
        let checks = stage["steps"][0]["checks"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(!checks.is_empty(), "every stage checks something first: {stage:#}");
        assert!(checks.iter().all(|c| c["status"] != "fail" && c["name"].is_string()), "{stage:#}");
        let changes = stage["steps"][1]["changes"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(changes.iter().all(|c| c["action"] == "unchanged"), "{stage:#}");
    }
    assert_eq!(report["changed"], 0, "{report:#}");
    assert!(report.get("stopped").is_none(), "{report:#}");

    // Drift by hand: `plan` sees it and changes nothing; install-all puts it back.
    let deployments: Api<Deployment> = Api::namespaced(tests::lab_client().await?, "traefik");
    let scale = serde_json::json!({ "spec": { "replicas": 1 } });
    deployments.patch("traefik", &PatchParams::default(), &Patch::Merge(&scale)).await?;
    let plan = xtask_on_lab("plan", &config, &["--only", "traefik"])?;
    let log = String::from_utf8_lossy(&plan.stderr);
    assert!(plan.status.success(), "{log}");
    assert!(log.contains("traefik          plan") && log.contains("1 changed"), "{log}");
    assert!(log.contains("1 objects would change"), "{log}");
    let replicas = |deployment: Deployment| deployment.spec.and_then(|spec| spec.replicas);
    assert_eq!(replicas(deployments.get("traefik").await?), Some(1), "plan changed nothing");
    let restored = install_all(&config, &["--only", "traefik"])?;
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    assert_eq!(replicas(deployments.get("traefik").await?), Some(2), "install-all restored it");
    Ok(())
}

#[test]
fn a_failed_check_stops_with_the_fix_and_the_resume_command() -> anyhow::Result<()> {
    // A config whose lab kubeconfig points at a port where no API server listens.
    let dir = tempfile::tempdir()?;
    let config = xtask::scratch_config(&tests::config_path(), dir.path())?.source;
    let kubeconfig = kit::lab::kubeconfig_path(&kit::config::state_dir_for(&config));
    std::fs::create_dir_all(kubeconfig.parent().unwrap_or(dir.path()))?;
    let lab_kubeconfig = std::fs::read_to_string(tests::kubeconfig())?;
    std::fs::write(&kubeconfig, lab_kubeconfig.replace("https://127.0.0.1:16443", "https://127.0.0.1:9"))?;

    // (Given explicitly, so install-all leaves the box alone: this config's cluster name is the
    // shared lab's, whose box it must not take.)
    let kubeconfig_arg = kubeconfig.display().to_string();
    let output = install_all(&config, &["--only", "metallb", "--output", "json", "--kubeconfig", &kubeconfig_arg])?;
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(log.contains("FAIL  api: the API does not answer"), "the failing check: {log}");
    assert!(log.contains("fix: start the lab: cargo xtask lab up"), "its fix: {log}");
    // The resume command carries the flags this run was given, so it can be pasted as it is.
    let resume = format!(
        "cargo xtask install-all --from metallb --lab --config {} --kubeconfig {} --mirror {}",
        config.display(),
        kubeconfig.display(),
        tests::upstream_mirror().display()
    );
    assert!(log.contains(&format!("resume with:\n  {resume}\n")), "the resume command: {log}");

    // The same, for a machine: the failed check with its fix, and where to resume.
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(report["stopped"]["stage"], "metallb", "{report:#}");
    assert_eq!(report["stopped"]["step"], "check", "{report:#}");
    assert_eq!(report["stopped"]["resume"], resume.as_str(), "{report:#}");
    let checks = report["stages"][0]["steps"][0]["checks"].as_array().map(Vec::as_slice).unwrap_or_default();
    let api = checks.iter().find(|c| c["name"] == "api").ok_or_else(|| anyhow::anyhow!("no api check: {report:#}"))?;
    assert_eq!(api["status"], "fail", "{report:#}");
    assert_eq!(api["fix"], "start the lab: cargo xtask lab up", "{report:#}");
    Ok(())
}
