//! `cargo xtask status --lab` as a user runs it: the Quick Access table from the config, and
//! the nodes, checked against the running lab; with a control plane off it exits 1.

fn status() -> anyhow::Result<(std::process::ExitStatus, Vec<serde_json::Value>, String)> {
    let output = xtask::cargo()
        .current_dir(xtask::workspace_root())
        .args(["xtask", "status", "--lab", "--output", "json", "--config"])
        .arg(tests::config_path())
        .arg("--kubeconfig")
        .arg(tests::kubeconfig())
        .output()?;
    let rows = String::from_utf8_lossy(&output.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    Ok((output.status, rows, String::from_utf8_lossy(&output.stderr).into_owned()))
}

#[test]
fn status_reports_the_quick_access_table_and_the_nodes() -> anyhow::Result<()> {
    // Stage 100 and what it needs first (idempotent), so whoami's Certificate exists.
    for (code, out) in [
        tests::run_stage(&traefik::Traefik, &["apply"], &tests::config_path()),
        tests::run_stage(&cert_manager::CertManager, &["apply"], &tests::config_path()),
        tests::run_stage(&envoy_gateway::EnvoyGateway, &["apply"], &tests::config_path()),
        tests::run_stage(&workloads::Workloads, &["apply"], &tests::config_path()),
    ] {
        assert_eq!(code, std::process::ExitCode::SUCCESS, "{out}");
    }
    let (code, rows, log) = status()?;
    assert!(code.success(), "{log}");
    assert!(rows.iter().all(|row| row["ok"] == true), "{rows:?}");
    let section = |name: &str| rows.iter().filter(|row| row["section"] == name).collect::<Vec<_>>();
    let quick = section("quick access");
    assert_eq!(quick.len(), 6, "{quick:?}");
    let whoami = quick.iter().find(|row| row["name"] == "whoami").expect("a whoami row");
    assert!(whoami["value"].as_str().unwrap_or_default().starts_with("https://whoami.172.16.16.101.sslip.io"));
    let state = whoami["state"].as_str().unwrap_or_default();
    assert!(state.starts_with("not checkable in the lab"), "{whoami}");
    // Stage 100 made the Certificate, and the box's cert-manager controller issued it.
    assert!(state.contains("; certificate: valid until 20"), "{whoami}");
    let nodes = section("nodes");
    assert_eq!(nodes.len(), 6);
    assert!(nodes.iter().all(|row| row["state"] == "Ready"), "{nodes:?}");

    // A control plane off: its etcd member does not answer, and status says so with exit 1.
    let config = tests::config();
    let lab = lab::Lab::new(&config, lab::DEFAULT_PORT_BASE);
    lab.stop_twin("cp03")?;
    let off = status();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(lab.restart_twin("cp03"))?;
    let (code, rows, log) = off?;
    assert_eq!(code.code(), Some(1), "{log}");
    let etcd = rows.iter().find(|row| row["name"] == "etcd").cloned().unwrap_or_default();
    assert_eq!(etcd["ok"], false, "{etcd}");
    assert!(etcd["state"].as_str().unwrap_or_default().contains("cp03 does not answer"), "{etcd}");
    // Back on, its member rejoins and status is clean again (later tests rely on a whole cluster).
    runtime.block_on(tests::eventually(std::time::Duration::from_secs(120), "status clean again", || async {
        Ok(status()?.0.success().then_some(()))
    }))
}
