//! README's first command from nothing (audit U13): `cargo xtask install-all --lab` where no box
//! exists yet builds the box, installs the cluster on its twins with stage 01 and converges
//! every stage; it writes nothing where a real cluster's files live; and after `lab down
//! --purge` the same command installs a new cluster again, as a new user would run it. It runs
//! on a second box (another cluster name, state folder and port base) beside the test lab, in a
//! test binary of its own so that nothing else runs meanwhile.

use lab::Lab;

/// The second box, taken down with its data whatever the test did.
struct FreshBox(Lab);

impl Drop for FreshBox {
    fn drop(&mut self) {
        if let Err(error) = self.0.down(true) {
            eprintln!("taking the fresh box down: {error:#}");
        }
    }
}

#[test]
fn install_all_lab_builds_the_box_and_the_whole_cluster_from_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = lab::second_box_config(&tests::config_path(), dir.path(), "fresh-clone")?;
    let port_base = 31443;
    let fresh = FreshBox(Lab::new(&config, port_base));
    anyhow::ensure!(!fresh.0.installed() && fresh.0.running_pids().is_empty(), "a new state folder has no box");

    let install_all = |only: &[&str]| {
        xtask::cargo()
            .current_dir(xtask::workspace_root())
            .args(["xtask", "install-all", "--lab", "--output", "json", "--port-base", &port_base.to_string()])
            .args(only)
            .arg("--config")
            .arg(dir.path().join("cluster.yaml"))
            .arg("--mirror")
            .arg(tests::upstream_mirror())
            .output()
    };
    let run = install_all(&[])?;
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{log}");
    assert!(log.contains("the machines wait in maintenance mode"), "the box was built first: {log}");

    for stage in tests::completed_stages(&run.stdout)? {
        let verify = &stage["steps"][2];
        assert_eq!(verify["step"], "verify", "{stage:#}");
        let checks = verify["checks"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(checks.iter().any(|check| check["status"] == "pass"), "{stage:#}");
        assert!(checks.iter().all(|check| check["status"] != "fail"), "{stage:#}");
    }

    // The box it built is the one asked for: its forward on the port base, every node Ready.
    let kubeconfig = std::fs::read_to_string(&fresh.0.kubeconfig)?;
    assert!(kubeconfig.contains(&format!("https://127.0.0.1:{port_base}")), "{kubeconfig}");
    let not_ready = tokio::runtime::Runtime::new()?.block_on(async {
        let client = kit::client::client_from_kubeconfig(&fresh.0.kubeconfig).await?;
        kit::client::nodes_not_ready(&client, &config).await
    })?;
    assert!(not_ready.is_empty(), "not Ready: {not_ready:?}");

    // Everything the box's run wrote is in the box's folder; a real cluster's state folder
    // holds nothing but that folder (no secrets, talosconfig or kubeconfig of the box's).
    let state = dir.path().join("state");
    let written: Vec<String> =
        std::fs::read_dir(&state)?.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(written, ["lab"], "{}", state.display());
    assert!(config.clone().in_box().state_dir().join("secrets.yaml").exists());

    // A new user's second try: purge the box, then install again. Nothing left behind may pass
    // for an installed cluster, so the machines boot into maintenance mode and stage 01 installs.
    let purged = xtask::cargo()
        .current_dir(xtask::workspace_root())
        .args(["xtask", "lab", "down", "--purge", "--config"])
        .arg(dir.path().join("cluster.yaml"))
        .output()?;
    assert!(purged.status.success(), "{}", String::from_utf8_lossy(&purged.stderr));
    assert!(!fresh.0.installed() && !state.join("lab").exists(), "purge leaves nothing of the box");
    let again = install_all(&["--only", kit::names::TALOS_BOOTSTRAP_STAGE])?;
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{log}");
    assert!(log.contains("the machines wait in maintenance mode"), "a new box, not an installed one: {log}");
    assert!(fresh.0.installed(), "stage 01 installed the new box's cluster");
    Ok(())
}
