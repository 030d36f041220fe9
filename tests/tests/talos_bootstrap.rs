//! Stage 01 on the lab target, through the same entry point as the `talos-bootstrap` binary:
//! real machine configs from the real talosctl, and the config's nodes in the lab.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::ExitCode;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use talos_bootstrap::{StatePaths, TalosBootstrap};
use tests::lab_client;

/// Runs `talos-bootstrap ARGS… --lab --output json --mirror <shared upstream>` with `config`,
/// against the running lab.
fn stage(args: &[&str], config: &Path) -> (ExitCode, Vec<serde_json::Value>) {
    let mut argv: Vec<OsString> = vec!["talos-bootstrap".into()];
    argv.extend(args.iter().map(OsString::from));
    argv.extend(["--lab".into(), "--output".into(), "json".into(), "--config".into(), config.into()]);
    argv.extend(["--kubeconfig".into(), tests::kubeconfig().into()]);
    argv.extend(["--mirror".into(), tests::upstream_mirror().into()]);
    let mut out = Vec::new();
    let code = kit::stage::execute(&TalosBootstrap, argv, &mut out);
    let lines = String::from_utf8_lossy(&out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    (code, lines)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).map(|meta| meta.permissions().mode() & 0o777).unwrap_or_default()
}

fn actions(lines: &[serde_json::Value]) -> Vec<(String, String)> {
    let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
    lines.iter().map(|line| (text(&line["object"]), text(&line["action"]))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_generates_validated_configs_registers_the_nodes_and_a_rerun_changes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = xtask::scratch_config(&tests::config_path(), dir.path())?;
    let source = config.source.clone();
    let paths = StatePaths::new(&config);

    let (code, planned) = tokio::task::spawn_blocking({
        let source = source.clone();
        move || stage(&["plan"], &source)
    })
    .await?;
    assert_eq!(code, ExitCode::SUCCESS, "{planned:?}");
    assert!(actions(&planned).contains(&(format!("File {}", paths.secrets.display()), "created".to_owned())));
    assert!(!paths.secrets.exists(), "plan changes nothing, not even the state folder");

    let (code, applied) = tokio::task::spawn_blocking({
        let source = source.clone();
        move || stage(&["apply"], &source)
    })
    .await?;
    assert_eq!(code, ExitCode::SUCCESS, "{applied:?}");
    assert_eq!(mode(&paths.secrets), 0o600, "secrets are private");
    assert_eq!(mode(&paths.talosconfig), 0o600, "the talosconfig holds a client key");
    assert_eq!(mode(&paths.machine_configs), 0o700);
    for node in &config.nodes {
        let file = paths.machine_configs.join(format!("{}.yaml", node.name));
        assert_eq!(mode(&file), 0o600, "{} holds the cluster's keys", file.display());
        let text = std::fs::read_to_string(&file)?;
        assert!(text.contains(&format!("hostname: {}", node.name)), "{}", file.display());
        assert!(text.contains(&format!("address: {}/24", node.ip)), "{}", file.display());
    }
    // talosctl's endpoints are the control planes' own addresses, never the VIP.
    let talosconfig: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(&paths.talosconfig)?)?;
    let context = &talosconfig["contexts"][&config.name];
    assert_eq!(context["endpoints"], serde_json::json!(["172.16.16.147", "172.16.16.148", "172.16.16.149"]));
    assert_eq!(context["nodes"], serde_json::json!(["172.16.16.147"]));
    let nodes: Api<Node> = Api::all(lab_client().await?);
    for node in &config.nodes {
        let found = nodes.get(&node.name).await?;
        assert!(kit::lab::is_ready(&found), "{} is Ready in the lab", node.name);
    }

    let secrets_before = std::fs::read(&paths.secrets)?;
    let (code, again) = tokio::task::spawn_blocking({
        let source = source.clone();
        move || stage(&["apply"], &source)
    })
    .await?;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<_> = actions(&again).into_iter().filter(|(_, action)| action != "unchanged").collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");
    assert_eq!(std::fs::read(&paths.secrets)?, secrets_before, "secrets are never regenerated");

    // An edited config shows in plan as a field diff, and never with a secret in it.
    let text = std::fs::read_to_string(&source)?.replace("nameservers: [1.1.1.1, 8.8.8.8]", "nameservers: [9.9.9.9]");
    std::fs::write(&source, text)?;
    let (code, planned) = tokio::task::spawn_blocking({
        let source = source.clone();
        move || stage(&["plan"], &source)
    })
    .await?;
    assert_eq!(code, ExitCode::SUCCESS);
    let cp01 = planned.iter().find(|line| line["object"] == "MachineConfig cp01").expect("cp01 planned");
    assert_eq!(cp01["action"], "configured");
    let diff = cp01["diff"].as_str().unwrap_or_default();
    assert!(diff.contains("+ - address: 9.9.9.9") && diff.contains("- - address: 1.1.1.1"), "{diff}");
    assert!(!diff.contains("LS0t"), "no key material in a diff: {diff}");
    std::fs::write(&source, std::fs::read_to_string(tests::config_path())?)?;

    let (code, verified) = tokio::task::spawn_blocking(move || stage(&["verify"], &source)).await?;
    assert_eq!(code, ExitCode::SUCCESS, "{verified:?}");
    let status = |name: &str| {
        verified
            .iter()
            .find(|check| check["name"] == name)
            .map(|check| check["status"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(status("machine-config cp01").as_deref(), Some("pass"));
    assert_eq!(status("nodes").as_deref(), Some("pass"));
    assert_eq!(status("etcd").as_deref(), Some("not-checkable-in-lab"));
    assert_eq!(status("vip").as_deref(), Some("not-checkable-in-lab"));
    Ok(())
}
