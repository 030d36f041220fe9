//! Stage 01's `check` on the talos target, from the workstation inside the box, through the
//! real talosctl, against the node twins at the config's addresses (issue 15). The twins are
//! in maintenance mode, as machines booted from the ISO: the check must tell so the way Talos
//! allows (a maintenance node refuses `version` to clients off SideroLink), and pre-flight
//! each node's links and disks. Two of the review's stage-01 defects are reproduced on the
//! twins' hardware: a second port (the default selector matches two links) and the USB stick
//! at /dev/sda.

use std::ffi::OsString;
use std::process::ExitCode;

use talos_bootstrap::TalosBootstrap;
use xtask::lab::twin::{Disk, Hardware, Link, twin_dir};

/// `talos-bootstrap check --output json` (talos target) run on a thread inside the
/// workstation's namespace: it and the talosctl it starts see the box's network only.
fn check_from_the_workstation() -> anyhow::Result<(ExitCode, Vec<serde_json::Value>)> {
    let config = tests::config();
    let namespace = xtask::lab::lan::Lan::new(&config).admin().namespace.clone();
    let path = tests::config_path();
    let mirror = tests::upstream_mirror();
    std::thread::spawn(move || {
        let handle = std::fs::File::open(format!("/run/netns/{namespace}"))?;
        nix::sched::setns(handle, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let argv: Vec<OsString> = vec![
            "talos-bootstrap".into(),
            "check".into(),
            "--output".into(),
            "json".into(),
            "--config".into(),
            path.into(),
            "--mirror".into(),
            mirror.into(),
        ];
        let mut out = Vec::new();
        let code = kit::stage::execute(&TalosBootstrap, argv, &mut out);
        let checks = String::from_utf8_lossy(&out).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        anyhow::Ok((code, checks))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the check's thread panicked"))?
}

fn check<'a>(checks: &'a [serde_json::Value], node: &str) -> &'a serde_json::Value {
    let name = format!("talos-api {node}");
    checks.iter().find(|check| check["name"] == name.as_str()).unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn stage_01_checks_the_twins_in_maintenance_mode_through_talosctl() -> anyhow::Result<()> {
    let config = tests::config();
    let lab = xtask::lab::Lab::new(&config, xtask::lab::DEFAULT_PORT_BASE);

    let (code, checks) = tokio::task::spawn_blocking(check_from_the_workstation).await??;
    assert_eq!(code, ExitCode::SUCCESS, "{checks:?}");
    for (index, node) in config.nodes.iter().enumerate() {
        let reason = check(&checks, &node.name)["reason"].as_str().unwrap_or_default().to_owned();
        assert!(reason.contains(&format!("{} is in maintenance mode", node.ip)), "{reason}");
        assert!(reason.contains(&format!("link enp1s0 (MAC 02:74:61:6c:00:{index:02x}, cable in")), "{reason}");
        assert!(reason.contains("install disk /dev/sda (512 GB, Samsung SSD 870, sata)"), "{reason}");
    }

    // wk02 gets a second port, cp03 an NVMe disk with the USB stick at /dev/sda.
    let edit = |node: &str, edit: &dyn Fn(&mut Hardware)| -> anyhow::Result<()> {
        let file = twin_dir(&lab.dir, node).join("hardware.json");
        let mut hardware: Hardware = serde_json::from_slice(&std::fs::read(&file)?)?;
        edit(&mut hardware);
        std::fs::write(&file, serde_json::to_vec_pretty(&hardware)?)?;
        anyhow::Ok(())
    };
    edit("wk02", &|hardware| {
        hardware.links.push(Link {
            name: "enp2s0".into(),
            mac: "02:74:61:6c:01:04".into(),
            bus_path: "0000:02:00.0".into(),
            driver: "igc".into(),
            carrier: false,
        });
    })?;
    edit("cp03", &|hardware| {
        hardware.disks = vec![
            Disk {
                dev_path: "/dev/sda".into(),
                size: 31_037_849_600,
                model: "Ultra USB 3.0".into(),
                transport: "usb".into(),
            },
            Disk {
                dev_path: "/dev/nvme0n1".into(),
                size: 1_000_204_886_016,
                model: "WD Blue SN580".into(),
                transport: "nvme".into(),
            },
        ];
    })?;
    lab.restart_twin("wk02").await?;
    lab.restart_twin("cp03").await?;
    let outcome = tokio::task::spawn_blocking(check_from_the_workstation).await?;

    // Whatever the outcome, the twins get their usual hardware back.
    for (node, index) in [("wk02", 4), ("cp03", 2)] {
        std::fs::write(
            twin_dir(&lab.dir, node).join("hardware.json"),
            serde_json::to_vec_pretty(&Hardware::usual(index))?,
        )?;
        lab.restart_twin(node).await?;
    }
    let (code, checks) = outcome?;
    assert_eq!(code, ExitCode::from(1), "{checks:?}");
    let wk02 = check(&checks, "wk02");
    assert_eq!(wk02["status"], "fail");
    let reason = wk02["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("matches 2 links"), "{reason}");
    assert!(reason.contains("enp2s0 (MAC 02:74:61:6c:01:04, no carrier"), "{reason}");
    assert!(
        wk02["fix"].as_str().unwrap_or_default().contains("mac(link.permanent_addr) == \"02:74:61:6c:00:04\""),
        "{wk02}"
    );
    let cp03 = check(&checks, "cp03");
    assert_eq!(cp03["status"], "fail");
    assert!(
        cp03["reason"].as_str().unwrap_or_default().contains("/dev/sda (31 GB, Ultra USB 3.0, usb) is on USB"),
        "{cp03}"
    );
    assert_eq!(check(&checks, "cp01")["status"], "pass", "the other nodes are fine");
    Ok(())
}
