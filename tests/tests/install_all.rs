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
    xtask_with_mirror(command, config, &tests::upstream_mirror(), extra)
}

fn xtask_with_mirror(command: &str, config: &Path, mirror: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    let output = xtask::cargo()
        .current_dir(xtask::workspace_root())
        .args(["xtask", command, "--lab", "--config"])
        .arg(config)
        .arg("--mirror")
        .arg(mirror)
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
    for stage in tests::completed_stages(&second.stdout)? {
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
    a_worker_back_from_a_power_cut_runs_its_pods_again_within_a_minute().await?;

    // Drift by hand: `plan` sees it and changes nothing; install-all puts it back.
    let deployments: Api<Deployment> = Api::namespaced(tests::lab_client().await?, "traefik");
    let scale = serde_json::json!({ "spec": { "replicas": 1 } });
    deployments.patch("traefik", &PatchParams::default(), &Patch::Merge(&scale)).await?;
    let plan = xtask_on_lab("plan", &config, &["--only", "traefik"])?;
    let log = String::from_utf8_lossy(&plan.stderr);
    assert_eq!(plan.status.code(), Some(2), "plan exits 2 when something would change: {log}");
    assert!(log.contains("traefik          plan") && log.contains("1 changed"), "{log}");
    assert!(log.contains("1 objects would change"), "{log}");
    let replicas = |deployment: Deployment| deployment.spec.and_then(|spec| spec.replicas);
    assert_eq!(replicas(deployments.get("traefik").await?), Some(1), "plan changed nothing");
    let restored = install_all(&config, &["--only", "traefik"])?;
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    assert_eq!(replicas(deployments.get("traefik").await?), Some(2), "install-all restored it");

    // In this test, not beside it: they run install-all on the same cluster.
    an_apply_that_fails_after_its_check_resumes_with_the_printed_command()?;
    a_stage_killed_mid_apply_converges_on_the_next_run().await
}

/// A worker's power cut: Kubernetes marks it NotReady once the node monitor's grace period
/// passes, and its pods not Ready with it. Powered on again, its kubelet makes its pods Ready
/// again within a minute.
async fn a_worker_back_from_a_power_cut_runs_its_pods_again_within_a_minute() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::api::ListParams;
    use std::time::{Duration, Instant};

    let lab = lab::Lab::new(&tests::config(), lab::DEFAULT_PORT_BASE);
    let client = tests::lab_client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client);
    let on_wk02 = ListParams::default().fields("spec.nodeName=wk02");
    anyhow::ensure!(!pods.list(&on_wk02).await?.items.is_empty(), "wk02 runs pods before the cut");
    // As a user would pull the plug: `cargo xtask lab power-cut wk02`.
    let switch = |action: &str| -> anyhow::Result<()> {
        let output = xtask::cargo()
            .current_dir(xtask::workspace_root())
            .args(["xtask", "lab", action, "wk02", "--config"])
            .arg(tests::config_path())
            .output()?;
        anyhow::ensure!(output.status.success(), "lab {action}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(())
    };
    tokio::task::block_in_place(|| switch("power-cut"))?;
    let outcome = async {
        // The node controller marks the node NotReady, then its pods not Ready, so that
        // Services stop sending them traffic: what "Ready again" below undoes.
        tests::eventually(Duration::from_secs(120), "Kubernetes to see wk02 and its pods not Ready", || async {
            let node_down = !kit::client::is_ready(&nodes.get("wk02").await?);
            let pods_down = pods.list(&on_wk02).await?.items.iter().any(|pod| !kit::client::pod_is_ready(pod));
            Ok((node_down && pods_down).then_some(()))
        })
        .await?;
        tokio::task::block_in_place(|| switch("power-on"))?;
        let on = Instant::now();
        tests::eventually(Duration::from_secs(60), "wk02 and its pods Ready again", || async {
            let running = pods.list(&on_wk02).await?.items;
            let ready = running.iter().all(|pod| kit::client::pod_is_ready(pod) || finished(pod));
            Ok((kit::client::is_ready(&nodes.get("wk02").await?) && ready).then_some(running.len()))
        })
        .await
        .map(|count| (count, on.elapsed()))
    }
    .await;
    lab.power_on("wk02").await?;
    let (count, after) = outcome?;
    tests::shown(&format!(
        "install-all --lab: wk02 back from a power cut: Ready with its {count} pods Ready {:.1}s after power-on",
        after.as_secs_f64()
    ));
    Ok(())
}

/// A pod that ran to its end (a Job's): it is not made Ready again, nor should it be.
fn finished(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|status| status.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// Audit U1: `apply` fails after `check` passed (metrics-server's check needs no upstream
/// file, its apply does, and the mirror is empty). The report says where it stopped, with
/// the step's error; the printed resume command, given the real mirror, converges.
fn an_apply_that_fails_after_its_check_resumes_with_the_printed_command() -> anyhow::Result<()> {
    let config = tests::config_path();
    let empty = tempfile::tempdir()?;
    let failed =
        xtask_with_mirror("install-all", &config, empty.path(), &["--only", "metrics-server", "--output", "json"])?;
    let log = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{log}");
    let report: serde_json::Value = serde_json::from_slice(&failed.stdout)?;
    assert_eq!(report["stopped"]["stage"], "metrics-server", "{report:#}");
    assert_eq!(report["stopped"]["step"], "apply", "{report:#}");
    let steps = &report["stages"][0]["steps"];
    assert!(steps[0]["checks"].as_array().is_some_and(|checks| checks.iter().all(|c| c["status"] != "fail")));
    let error = steps[1]["failed"].as_str().unwrap_or_default();
    assert!(error.contains(&empty.path().display().to_string()), "the error names the mirror it read: {report:#}");

    let resume = report["stopped"]["resume"].as_str().unwrap_or_default().to_owned();
    let mirror = format!("--mirror {}", empty.path().display());
    assert!(resume.starts_with("cargo xtask install-all --from metrics-server --lab") && resume.contains(&mirror));
    let fixed = resume.replace(&mirror, &format!("--mirror {}", tests::upstream_mirror().display()));
    let words: Vec<&str> = fixed.split_whitespace().collect();
    let resumed = xtask::cargo().current_dir(xtask::workspace_root()).args(&words[1..]).output()?;
    let log = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "the printed command, with the real mirror, converges: {log}");
    assert!(log.contains("metrics-server   verify") && log.contains("workloads        verify"), "{log}");
    Ok(())
}

/// Audit U2, the stage contract's "apply is safe to interrupt and re-run": a stage binary
/// killed (SIGKILL, no clean-up) after its first wave of objects and before the rest; the
/// next run converges and the one after changes nothing.
async fn a_stage_killed_mid_apply_converges_on_the_next_run() -> anyhow::Result<()> {
    use std::process::Stdio;

    let root = xtask::workspace_root();
    let bin_dir = xtask::stages::build(&root, &["longhorn"])?;
    // Objects the interrupted apply has to create again, in its second wave.
    let client = tests::lab_client().await?;
    let ui: Api<Deployment> = Api::namespaced(client.clone(), "longhorn-system");
    ui.delete("longhorn-ui", &Default::default()).await?;
    let apply = |verbose: bool| {
        let mut command = std::process::Command::new(bin_dir.join("longhorn"));
        command.args(["apply", "--lab", "--config"]).arg(tests::config_path());
        command.arg("--mirror").arg(tests::upstream_mirror());
        if verbose {
            command.arg("-v");
        }
        command
    };
    let mut interrupted = apply(true).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let (seen, first_wave_done) = tests::stderr_until(&mut interrupted, |line| {
        line.contains("CRDs, Namespaces and cluster-scoped objects applied")
    })?;
    if first_wave_done {
        interrupted.kill()?;
    }
    let status = interrupted.wait()?;
    assert!(!status.success(), "killed before it finished: {seen:?}");
    // The kill lands within milliseconds of that line, before the second wave's writes; on a
    // machine slow enough to let one through, the rest of the test still holds.
    let interrupted_before_it = ui.get_opt("longhorn-ui").await?.is_none();

    let converged = apply(false).output()?;
    let out = String::from_utf8_lossy(&converged.stdout);
    assert!(converged.status.success(), "{}", String::from_utf8_lossy(&converged.stderr));
    if interrupted_before_it {
        assert!(out.contains("created     Deployment longhorn-system/longhorn-ui"), "{out}");
    }
    let again = apply(false).output()?;
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let changed: Vec<&str> = out.lines().filter(|line| !line.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a third run changes nothing: {changed:?}");
    Ok(())
}

/// Audit U14: an invalid config inside install-all prints its problems (field, value, fix),
/// not a report-parsing error, before anything is built or changed; plan calls it an error.
#[test]
fn an_invalid_config_stops_install_all_with_its_problems() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = xtask::scratch_config(&tests::config_path(), dir.path())?.source;
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, text.replace("vip: 172.16.16.100", "vip: 172.16.16.110"))?;
    let output = xtask::cargo()
        .current_dir(xtask::workspace_root())
        .args(["xtask", "install-all", "--config"])
        .arg(&config)
        .output()?;
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{out}{}", String::from_utf8_lossy(&output.stderr));
    assert!(out.contains("metallb.pool") && out.contains("control-plane VIP (network.vip)"), "{out}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("reading the report"));
    let plan = xtask::cargo()
        .current_dir(xtask::workspace_root())
        .args(["xtask", "plan", "--output", "json", "--config"])
        .arg(&config)
        .output()?;
    assert_eq!(plan.status.code(), Some(1), "for plan, 2 means 'would change'");
    let problem: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&plan.stdout).lines().next().unwrap_or_default())?;
    assert!(problem["path"].is_string() && problem["fix"].is_string(), "{problem}");
    Ok(())
}

#[test]
fn a_failed_check_stops_with_the_fix_and_the_resume_command() -> anyhow::Result<()> {
    // A config whose lab kubeconfig points at a port where no API server listens.
    let dir = tempfile::tempdir()?;
    let config = xtask::scratch_config(&tests::config_path(), dir.path())?.source;
    let kubeconfig = kit::lab::kubeconfig_path(&kit::config::state_dir_for(&config).join("lab"));
    std::fs::create_dir_all(kubeconfig.parent().unwrap_or(dir.path()))?;
    let lab_kubeconfig = std::fs::read_to_string(tests::kubeconfig())?;
    std::fs::write(&kubeconfig, lab_kubeconfig.replace("https://127.0.0.1:16443", "https://127.0.0.1:9"))?;

    // (Given explicitly, so install-all leaves the box alone: this config's cluster name is the
    // shared lab's, whose box it must not take.) The api check waits for an API that stopped
    // answering, up to --api-wait: 2 s here, where none will.
    let kubeconfig_arg = kubeconfig.display().to_string();
    let args = ["--only", "metallb", "--output", "json", "--kubeconfig", &kubeconfig_arg, "--api-wait", "2"];
    let output = install_all(&config, &args)?;
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(log.contains("FAIL  api: the API does not answer"), "the failing check: {log}");
    assert!(log.contains("did not answer again within 2s"), "it waited as long as it was told: {log}");
    assert!(log.contains("fix: start the lab: cargo xtask lab up"), "its fix: {log}");
    // The resume command carries the flags this run was given, so it can be pasted as it is.
    let resume = format!(
        "cargo xtask install-all --from metallb --lab --config {} --kubeconfig {} --mirror {} --api-wait 2",
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
