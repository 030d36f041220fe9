//! `cargo xtask status --lab` as a user runs it: the Quick Access table from the config, and
//! the nodes, checked against the running lab.

#[test]
fn status_reports_the_quick_access_table_and_the_nodes() -> anyhow::Result<()> {
    let output = xtask::cargo()
        .current_dir(xtask::workspace_root())
        .args(["xtask", "status", "--lab", "--output", "json", "--config"])
        .arg(tests::config_path())
        .arg("--kubeconfig")
        .arg(tests::kubeconfig())
        .output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&output.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let section = |name: &str| rows.iter().filter(|row| row["section"] == name).collect::<Vec<_>>();
    let quick = section("quick access");
    assert_eq!(quick.len(), 6, "{quick:?}");
    let whoami = quick.iter().find(|row| row["name"] == "whoami").expect("a whoami row");
    assert!(whoami["value"].as_str().unwrap_or_default().starts_with("https://whoami.172.16.16.101.sslip.io"));
    let state = whoami["state"].as_str().unwrap_or_default();
    assert!(state.starts_with("not checkable in the lab"), "{whoami}");
    // The Certificate is there (stage 100 makes it) but no cert-manager controller runs here.
    assert!(
        state.ends_with("certificate: whoami/whoami exists; issuance not checkable in the lab")
            || state.ends_with("certificate: no Certificate (stage not installed)"),
        "{whoami}"
    );
    let nodes = section("nodes");
    assert_eq!(nodes.len(), 6);
    assert!(nodes.iter().all(|row| row["state"] == "Ready"), "{nodes:?}");
    Ok(())
}
