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
