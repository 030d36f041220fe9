//! Stage 01 on the lab target, through the same entry point as the `talos-bootstrap` binary,
//! on the cluster in a box `cargo xtask test` installed with it: a re-run changes nothing, the
//! state it keeps is private, `verify` reads etcd and the VIP through Talos, and an edited
//! cluster.yaml shows in `plan` both as a field diff of the machine config and as Talos's own
//! diff of the running node, and fails `verify` for every node still running the old config.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::ExitCode;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use talos_bootstrap::{StatePaths, TalosBootstrap};
use tests::lab_client;

/// Runs `talos-bootstrap ARGS… --lab --output json --mirror <shared upstream>` with `config`:
/// inside the box, as the binary does with `--lab`.
fn stage(args: &[&str], config: &Path) -> (ExitCode, Vec<serde_json::Value>) {
    let mut argv: Vec<OsString> = vec!["talos-bootstrap".into()];
    argv.extend(args.iter().map(OsString::from));
    argv.extend(["--lab".into(), "--output".into(), "json".into(), "--config".into(), config.into()]);
    argv.extend(["--mirror".into(), tests::upstream_mirror().into()]);
    let mut out = Vec::new();
    let code = kit::stage::execute(&TalosBootstrap, argv, &mut out);
    let lines = String::from_utf8_lossy(&out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    (code, lines)
}

async fn stage_async(args: &'static [&'static str], config: std::path::PathBuf) -> (ExitCode, Vec<serde_json::Value>) {
    tokio::task::spawn_blocking(move || stage(args, &config)).await.expect("the stage's thread")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).map(|meta| meta.permissions().mode() & 0o777).unwrap_or_default()
}

fn changed(lines: &[serde_json::Value]) -> Vec<String> {
    lines.iter().filter(|line| line["action"] != "unchanged").map(|line| line["object"].to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_again_changes_nothing_and_verify_reads_etcd_and_the_vip_through_talos() -> anyhow::Result<()> {
    let config = tests::config();
    let paths = StatePaths::new(&config);
    let secrets_before = std::fs::read(&paths.secrets)?;

    let (code, again) = stage_async(&["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{again:?}");
    assert!(changed(&again).is_empty(), "a re-run changes nothing: {:?}", changed(&again));
    assert_eq!(std::fs::read(&paths.secrets)?, secrets_before, "secrets are never regenerated");

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
        assert!(kit::client::is_ready(&found), "{} is Ready", node.name);
    }

    let (code, verified) = stage_async(&["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verified:?}");
    let status = |name: &str| {
        verified
            .iter()
            .find(|check| check["name"] == name)
            .map(|check| check["status"].as_str().unwrap_or_default().to_owned())
    };
    for node in &config.nodes {
        let name = format!("machine-config {}", node.name);
        assert_eq!(status(&name).as_deref(), Some("pass"), "runs what cluster.yaml gives it: {verified:?}");
    }
    assert_eq!(status("nodes").as_deref(), Some("pass"));
    assert_eq!(status("etcd").as_deref(), Some("pass"), "each control plane's own etcd status: {verified:?}");
    assert_eq!(status("vip").as_deref(), Some("pass"), "the API answers at the VIP: {verified:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_config_shows_in_plan_as_a_field_diff_and_as_talos_own_diff() -> anyhow::Result<()> {
    // A copy of the config and of the state stage 01 keeps (same cluster, same machines).
    let dir = tempfile::tempdir()?;
    let config = xtask::scratch_config(&tests::config_path(), dir.path())?.in_box();
    let state = tests::config().state_dir();
    std::fs::create_dir_all(config.state_dir())?;
    for file in ["secrets.yaml", "talosconfig"] {
        std::fs::copy(state.join(file), config.state_dir().join(file))?;
    }
    let talos = StatePaths::new(&config).machine_configs;
    std::fs::create_dir_all(&talos)?;
    for entry in std::fs::read_dir(StatePaths::new(&tests::config()).machine_configs)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::copy(&path, talos.join(path.file_name().unwrap_or_default()))?;
        }
    }
    let text =
        std::fs::read_to_string(&config.source)?.replace("nameservers: [1.1.1.1, 8.8.8.8]", "nameservers: [9.9.9.9]");
    std::fs::write(&config.source, text)?;

    let (code, planned) = stage_async(&["plan"], config.source.clone()).await;
    assert_eq!(code, ExitCode::from(2), "something would change: {planned:?}");
    let change = |object: &str| planned.iter().find(|line| line["object"] == object).cloned().unwrap_or_default();
    let file = change("MachineConfig cp01");
    assert_eq!(file["action"], "configured", "{planned:?}");
    let diff = file["diff"].as_str().unwrap_or_default();
    assert!(diff.contains("+ - address: 9.9.9.9") && diff.contains("- - address: 1.1.1.1"), "{diff}");
    let node = change("TalosNode cp01");
    assert_eq!(node["action"], "configured", "{planned:?}");
    let talos_diff = node["diff"].as_str().unwrap_or_default();
    assert!(talos_diff.contains("9.9.9.9"), "Talos's dry-run diff of the running node: {talos_diff}");
    for line in &planned {
        assert!(!line.to_string().contains("LS0t"), "no key material in a diff: {line}");
    }

    // verify says the same of every node: they run what the old cluster.yaml gave them.
    let (code, verified) = stage_async(&["verify"], config.source.clone()).await;
    assert_eq!(code, ExitCode::from(1), "{verified:?}");
    for node in tests::config().nodes {
        let name = format!("machine-config {}", node.name);
        let check = verified.iter().find(|check| check["name"] == name.as_str()).cloned().unwrap_or_default();
        assert_eq!(check["status"], "fail", "{verified:?}");
        let reason = check["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("runs another config than cluster.yaml gives it") && reason.contains("9.9.9.9"),
            "{check}"
        );
        assert!(!reason.contains("LS0t"), "no key material: {reason}");
    }
    Ok(())
}
