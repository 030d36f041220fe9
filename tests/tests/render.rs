//! `cargo xtask render` as a user runs it, for a config on another subnet and pool: the
//! whole seed tree is written, and every address in it follows the config.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { found.extend(files(&path)) } else { found.push(path) }
    }
    found
}

#[test]
fn render_writes_the_seed_tree_and_every_address_follows_the_config() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("cluster.yaml");
    let moved = std::fs::read_to_string(tests::config_path())?
        .replace("172.16.16.", "10.40.0.")
        .replace("10.40.0.101-10.40.0.120", "10.40.0.201-10.40.0.220")
        .replace("ip: 10.40.0.101", "ip: 10.40.0.201")
        .replace("ip: 10.40.0.102", "ip: 10.40.0.202");
    std::fs::write(&config, moved)?;
    let out = dir.path().join("rendered");
    let output = xtask::cargo()
        .current_dir(xtask::workspace_root())
        .args(["xtask", "render", "--out"])
        .arg(&out)
        .arg("--config")
        .arg(&config)
        .arg("--mirror")
        .arg(tests::upstream_mirror())
        .output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    for folder in [
        "01-talos-bootstrap",
        "02-metallb",
        "03-metrics-server",
        "04-traefik-ingress",
        "05-cert-manager",
        "06-storage-longhorn",
        "07-dashboard-headlamp",
        "08-gateway-envoy",
        "100-workloads",
    ] {
        assert!(out.join(folder).join("README.md").exists(), "{folder} has its lesson");
    }
    assert!(out.join("README.md").exists() && out.join("HA-VERIFICATION.md").exists());
    let stale: Vec<PathBuf> = files(&out)
        .into_iter()
        .filter(|file| std::fs::read_to_string(file).is_ok_and(|text| text.contains("172.16.16.")))
        .collect();
    assert!(stale.is_empty(), "addresses that did not follow the config: {stale:?}");
    let pools = std::fs::read_to_string(out.join("02-metallb/ip-pools.yaml"))?;
    assert!(pools.contains("10.40.0.201/32") && pools.contains("10.40.0.203-10.40.0.220"), "{pools}");
    let cp01 = std::fs::read_to_string(out.join("01-talos-bootstrap/configs/cp01.yaml"))?;
    assert!(cp01.contains("address: 10.40.0.147/24") && cp01.contains("name: 10.40.0.100"), "the VIP follows");
    Ok(())
}

/// Each stage folder's files (README aside) as the objects they hold, by `Kind namespace/name`.
fn rendered_objects(folder: &Path) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut objects = std::collections::BTreeSet::new();
    for file in files(folder) {
        if file.extension().is_some_and(|extension| extension == "yaml") {
            let text = std::fs::read_to_string(&file)?;
            for object in kit::manifest::parse_manifest(&file.display().to_string(), &text)? {
                objects.insert(kit::manifest::describe(&object));
            }
        }
    }
    Ok(objects)
}

/// The files that hold only talos-ha's own objects: kept whole as golden copies. The others
/// are upstream releases (patched); committing copies of those is not ours to do, so their
/// golden copy is the list of objects they hold.
const OURS: [&str; 11] = [
    "02-metallb/ip-pools.yaml",
    "04-traefik-ingress/traefik.yaml",
    "05-cert-manager/cluster-ca.yaml",
    "05-cert-manager/entrypoint-certificate.yaml",
    "06-storage-longhorn/longhorn-ui.yaml",
    "07-dashboard-headlamp/login-and-ui.yaml",
    "08-gateway-envoy/gateway.yaml",
    "100-workloads/whoami.yaml",
    "100-workloads/demo.yaml",
    "100-workloads/kubeinvaders.yaml",
    "100-workloads/notes.yaml",
];

/// Audit U11: what `render` writes for stages 02-100 against reviewed copies
/// (`tests/golden/render/`, `UPDATE_GOLDEN=1` rewrites them). Stage 01 has its own golden
/// folder in talos-bootstrap's tests.
#[test]
fn render_matches_the_golden_copies_of_stages_02_to_100() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = xtask::cargo()
        .current_dir(xtask::workspace_root())
        .args(["xtask", "render", "--out"])
        .arg(dir.path())
        .arg("--mirror")
        .arg(tests::upstream_mirror())
        .output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let golden = xtask::workspace_root().join("tests/golden/render");
    let mut checked = 0;
    for file in files(dir.path()) {
        let relative = file.strip_prefix(dir.path())?.to_path_buf();
        let shown = relative.display().to_string();
        let stage_file = relative.components().count() == 2 && !shown.starts_with("01-");
        if !stage_file || relative.file_name().is_some_and(|name| name == "README.md") {
            continue;
        }
        if OURS.contains(&shown.as_str()) {
            kit::golden::assert_matches(&golden.join(&relative), &std::fs::read_to_string(&file)?);
        } else {
            let text = std::fs::read_to_string(&file)?;
            let objects: Vec<String> =
                kit::manifest::parse_manifest(&shown, &text)?.iter().map(kit::manifest::describe).collect();
            kit::golden::assert_matches(&golden.join(format!("{shown}.objects")), &(objects.join("\n") + "\n"));
        }
        checked += 1;
    }
    assert_eq!(checked, 18, "every stage file of 02-100 is compared");
    Ok(())
}

/// Audit U11's parity: what `render` writes for a stage is what its apply sends to a real
/// cluster. The Talos target's `plan` (the same objects apply sends, as a server-side dry
/// run) runs from inside the box, against the cluster the twins run, and lists the same
/// objects as the rendered folder.
#[test]
fn render_writes_the_objects_apply_sends_on_the_talos_target() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().display().to_string();
    let mut compared = Vec::new();
    macro_rules! parity {
        ($($stage:expr),+) => {$(
            let (code, listed) = tests::run_stage(&$stage, &["render", "--out", &out], &tests::config_path());
            assert_eq!(code, std::process::ExitCode::SUCCESS, "{listed}");
            let folder = dir.path().join(stage_folder(&$stage));
            let planned = talos_plan($stage)?;
            let rendered = rendered_objects(&folder)?;
            assert_eq!(rendered, planned, "{}: rendered (left) and sent on the talos target (right)", folder.display());
            compared.push(folder);
        )+};
    }
    parity!(
        metallb::Metallb,
        metrics_server::MetricsServer,
        traefik::Traefik,
        cert_manager::CertManager,
        longhorn::Longhorn,
        headlamp::Headlamp,
        envoy_gateway::EnvoyGateway,
        workloads::Workloads
    );
    assert_eq!(compared.len(), 8);
    Ok(())
}

fn stage_folder<S: kit::stage::Stage>(_: &S) -> &'static str {
    S::FOLDER
}

/// `<stage> plan --output json` on the Talos target, from inside the box: the objects it
/// would send.
fn talos_plan<S: kit::stage::Stage + Sync + Send + 'static>(
    stage: S,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let (code, out) = tests::run_stage_on_the_boxs_cluster(stage, &["plan", "--output", "json"])?;
    assert!(
        code == std::process::ExitCode::SUCCESS || code == std::process::ExitCode::from(2),
        "{} plan on the talos target: {out}",
        S::NAME
    );
    let mut objects = std::collections::BTreeSet::new();
    for line in out.lines() {
        let change: serde_json::Value = serde_json::from_str(line)?;
        objects.insert(change["object"].as_str().unwrap_or_default().to_owned());
    }
    Ok(objects)
}
