//! Stage 01's steps one at a time, from the workstation inside a box of this test's own (its
//! machines are reset and rebooted here, so never the shared cluster's), through the real
//! talosctl, against the node twins at the config's addresses (issue 15). The twins start in
//! maintenance mode, as machines booted from the ISO: the check must tell so the way Talos
//! allows (a maintenance node refuses `version` to clients off SideroLink), and pre-flight
//! each node's links and disks. Two of the review's stage-01 defects are reproduced on the
//! twins' hardware: a second port (the default selector matches two links) and the USB stick
//! at /dev/sda.

use std::path::Path;

use anyhow::Context as _;
use std::process::ExitCode;

use lab::twin::{Disk, Hardware, Link, twin_dir};
use talos_bootstrap::TalosBootstrap;

/// `talos-bootstrap <command> --output json --config <config> EXTRA…` run on a thread inside
/// the workstation's namespace: it and the talosctl it starts see the box's network only.
fn stage_from_the_workstation(
    command: &str,
    config: &Path,
    extra: &[&str],
) -> anyhow::Result<(ExitCode, Vec<serde_json::Value>)> {
    let mut args = vec![command, "--output", "json"];
    args.extend(extra);
    let (code, out) = tests::run_stage_in_box(TalosBootstrap, &args, config)?;
    Ok((code, out.lines().map(serde_json::from_str).collect::<Result<_, _>>()?))
}

fn check_from_the_workstation(config: &Path) -> anyhow::Result<(ExitCode, Vec<serde_json::Value>)> {
    stage_from_the_workstation("check", config, &[])
}

fn check<'a>(checks: &'a [serde_json::Value], node: &str) -> &'a serde_json::Value {
    let name = format!("talos-api {node}");
    checks.iter().find(|check| check["name"] == name.as_str()).unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

/// This test's box: the config under another cluster name (its own namespaces), on its own ports.
const OWN_BOX: (&str, u16) = ("twins", 27443);

#[tokio::test(flavor = "multi_thread")]
async fn stage_01_checks_the_twins_in_maintenance_mode_through_talosctl() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = lab::second_box_config(&tests::config_path(), dir.path(), OWN_BOX.0)?;
    let lab = lab::Lab::new(&config, OWN_BOX.1);
    lab.up().await?;
    let outcome = stage_01_step_by_step(&lab, &config).await;
    lab.down(true)?;
    outcome
}

async fn stage_01_step_by_step(lab: &lab::Lab, config: &kit::config::ClusterConfig) -> anyhow::Result<()> {
    let source = config.source.clone();
    let (code, checks) = tokio::task::spawn_blocking(move || check_from_the_workstation(&source)).await??;
    assert_eq!(code, ExitCode::SUCCESS, "{checks:?}");
    for (index, node) in config.nodes.iter().enumerate() {
        let reason = check(&checks, &node.name)["reason"].as_str().unwrap_or_default().to_owned();
        assert!(reason.contains(&format!("{} is in maintenance mode", node.ip)), "{reason}");
        assert!(reason.contains(&format!("link enp1s0 (MAC 02:74:61:6c:00:{index:02x}, cable in")), "{reason}");
        assert!(reason.contains("install disk /dev/sda (512 GB, Samsung SSD 870, sata)"), "{reason}");
    }
    // Asking with a client certificate before there is one writes no empty talosconfig (talosctl
    // would, and apply would then take it for its own: "no context is set").
    let talosconfig = kit::tool::talosconfig_path(config);
    assert!(!talosconfig.exists(), "check wrote {}", talosconfig.display());

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
    let source = config.source.clone();
    let outcome = tokio::task::spawn_blocking(move || check_from_the_workstation(&source)).await?;
    generate_configs(config).await?;
    let off_the_lan = a_selector_matching_two_ports_leaves_the_machine_off_the_lan(lab, config).await;

    // Whatever the outcome, the twins get their usual hardware back, and wk02 a wiped disk
    // (booted from the ISO again, as the console would be needed for on a real site).
    std::fs::remove_file(twin_dir(&lab.dir, "wk02").join("config.yaml")).ok();
    for (node, index) in [("wk02", 4), ("cp03", 2)] {
        std::fs::write(
            twin_dir(&lab.dir, node).join("hardware.json"),
            serde_json::to_vec_pretty(&Hardware::usual(index))?,
        )?;
        lab.restart_twin(node).await?;
    }
    off_the_lan?;
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

    a_configured_twin_shows_drift_through_talos_own_diff(lab, config).await?;
    three_control_planes_bootstrap_etcd_once_and_a_member_down_is_not_healthy(lab, config).await?;
    without_an_approver_a_serving_certificate_request_keeps_health_waiting(config).await?;
    a_reset_control_plane_leaves_etcd_and_boots_into_maintenance_mode(config).await
}

/// Review item 5 on the twin's network: wk02, with its second port, is sent its config anyway
/// (as stage 01 did before its pre-flight). The `lan` alias's selector matches both ports, so
/// Talos skips the alias, the LinkConfig's address lands on no link, and the default DHCP is
/// off: once installed, the machine is on no address at all and nothing reaches it again.
async fn a_selector_matching_two_ports_leaves_the_machine_off_the_lan(
    lab: &lab::Lab,
    config: &kit::config::ClusterConfig,
) -> anyhow::Result<()> {
    let edge = talosctl(config).await?;
    let file = talos_bootstrap::StatePaths::new(config).machine_configs.join("wk02.yaml");
    let wk02 = config.nodes.iter().find(|node| node.name == "wk02").cloned().expect("wk02 in the config");
    let log = lab.dir.join("logs").join("twin-wk02.log");
    in_the_box(move || async move {
        talos_bootstrap::nodes::apply_config_insecure(&edge, &wk02, &file).await?;
        tests::eventually(std::time::Duration::from_secs(60), "wk02 to boot into its config", || async {
            Ok(std::fs::read_to_string(&log)?.contains("with no address on the LAN").then_some(()))
        })
        .await?;
        let answer = kit::talos::probe(&edge, &wk02).await;
        anyhow::ensure!(matches!(answer, kit::talos::NodeState::Unreachable(_)), "wk02 answers: {answer:?}");
        anyhow::Ok(())
    })
    .await?;
    let log = std::fs::read_to_string(lab.dir.join("logs").join("twin-wk02.log"))?;
    anyhow::ensure!(
        log.contains(r#"link alias "lan": selector link.type == 1 && link.kind == "" && link.bus_path != "" matched 2 links, skipping"#),
        "Talos's reason, in the machine's log: {log}"
    );
    let namespace = lab.lan().member("wk02").expect("wk02 in the box").namespace.clone();
    let shown = std::process::Command::new("ip")
        .args(["-n", &namespace, "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()?;
    let addresses = String::from_utf8_lossy(&shown.stdout);
    anyhow::ensure!(shown.status.success() && addresses.trim().is_empty(), "wk02's port has no address: {addresses}");
    Ok(())
}

/// Runs `work` on a thread inside the workstation's namespace, with a runtime of its own.
async fn in_the_box<T, F, Fut>(work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let namespace = kit::lab::workstation_namespace(OWN_BOX.0);
    tokio::task::spawn_blocking(move || {
        lab::lan::enter(&namespace)?;
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(work())
    })
    .await?
}

/// Generates the secrets, machine configs and talosconfig into the box's config's state
/// folder, and uploads the schematic to the box's Image Factory stand-in (the machines install
/// their installer image from there), as stage 01's apply does before it sends them (this test
/// sends them itself).
async fn generate_configs(config: &kit::config::ClusterConfig) -> anyhow::Result<()> {
    // The stand-in listens on the workstation's loopback, inside the box.
    let factory = kit::lab::Ports::stored(&config.lab_dir()).context("the box is up")?.image_factory_url();
    in_the_box(move || async move { talos_bootstrap::schematic::upload(&factory).await }).await?;
    let ctx = kit::context::Context {
        kubeconfig: kit::context::cluster_kubeconfig_path(&config.state_dir()),
        config: config.clone(),
        target: kit::context::Target::Talos,
        verb: kit::context::Verb::Apply,
        mirror: Some(tests::upstream_mirror()),
        bootstrap: false,
        api_wait: kit::client::API_WAIT,
        rollout_timeout: None,
    };
    talos_bootstrap::generate_configs(&ctx).await.map(drop)
}

/// The edge stage 01 uses, with the scratch config's talosconfig.
async fn talosctl(config: &kit::config::ClusterConfig) -> anyhow::Result<kit::talos::Talosctl> {
    Ok(kit::talos::Talosctl {
        tool: talos_bootstrap::talosctl(config).await?,
        talosconfig: kit::tool::talosconfig_path(config),
    })
}

/// Sends each named node its generated config in maintenance mode and waits until it answers
/// with it, as stage 01 does.
async fn install(config: &kit::config::ClusterConfig, names: &[&str]) -> anyhow::Result<()> {
    let edge = talosctl(config).await?;
    let machine_configs = talos_bootstrap::StatePaths::new(config).machine_configs;
    let nodes: Vec<kit::config::Node> =
        config.nodes.iter().filter(|node| names.contains(&node.name.as_str())).cloned().collect();
    in_the_box(move || async move {
        for node in &nodes {
            let file = machine_configs.join(format!("{}.yaml", node.name));
            talos_bootstrap::nodes::apply_config_insecure(&edge, node, &file).await?;
        }
        for node in &nodes {
            talos_bootstrap::nodes::wait_configured(&edge, node, std::time::Duration::from_secs(60)).await?;
        }
        anyhow::Ok(())
    })
    .await
}

/// Review items 3 and 6 and the HA review's member-down case, on three control-plane twins
/// running real etcd members from their configs: bootstrap is refused with FailedPrecondition
/// at first (stage 01 asks again), runs once, and is AlreadyExists after; the other two join;
/// all three are healthy by their own `etcd status`. With cp02 off, `etcd members` still lists
/// it but it is not healthy; back on, it is again. A rebooted cp03 is the same, through
/// `talosctl reboot`.
async fn three_control_planes_bootstrap_etcd_once_and_a_member_down_is_not_healthy(
    lab: &lab::Lab,
    config: &kit::config::ClusterConfig,
) -> anyhow::Result<()> {
    install(config, &["cp02", "cp03"]).await?;
    let edge = talosctl(config).await?;
    let cluster = config.clone();
    let (answer, again) = in_the_box(move || async move {
        let cp01 = &cluster.nodes[0];
        let answer =
            talos_bootstrap::nodes::bootstrap_with_retry(&edge, cp01, std::time::Duration::from_secs(60)).await?;
        let again = kit::talos::bootstrap(&edge, cp01).await;
        anyhow::Ok((answer, again))
    })
    .await?;
    anyhow::ensure!(answer == kit::talos::BootstrapAnswer::Bootstrapped, "{answer:?}");
    anyhow::ensure!(again == kit::talos::BootstrapAnswer::AlreadyBootstrapped, "a second bootstrap: {again:?}");

    let healthy = |wanted: usize| {
        let cluster = config.clone();
        async move {
            let edge = talosctl(&cluster).await?;
            in_the_box(move || async move {
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
                loop {
                    let health = kit::talos::etcd_health(&edge, &cluster).await;
                    let names = kit::talos::healthy_members(&health);
                    if names.len() == wanted || tokio::time::Instant::now() >= deadline {
                        let members = kit::talos::etcd_members(&edge, &cluster.nodes[0]).await?;
                        return anyhow::Ok((names, members, kit::talos::describe_health(&health)));
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            })
            .await
        }
    };
    let (names, members, described) = healthy(3).await?;
    anyhow::ensure!(names == ["cp01", "cp02", "cp03"], "all three healthy: {described}");
    anyhow::ensure!(members.len() == 3, "{members:?}");

    // The admin kubeconfig stage 01 fetches right after bootstrap: made by Talos's generator
    // from the config's Kubernetes CA, aimed at the VIP.
    let edge = talosctl(config).await?;
    let (cp01, dir) = (config.nodes[0].clone(), tempfile::tempdir()?);
    let file = dir.path().join("kubeconfig");
    let fetched = file.clone();
    in_the_box(move || async move { talos_bootstrap::nodes::kubeconfig(&edge, &cp01, &fetched).await }).await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&file)?;
    let server = kubeconfig.clusters.first().and_then(|named| named.cluster.as_ref()?.server.clone());
    anyhow::ensure!(server.as_deref() == Some(config.api_endpoint().as_str()), "{server:?}");
    let client_cert =
        kubeconfig.auth_infos.first().and_then(|named| named.auth_info.as_ref()?.client_certificate_data.clone());
    anyhow::ensure!(client_cert.is_some(), "an admin client certificate");

    lab.stop_twin("cp02")?;
    let (names, members, described) = healthy(2).await?;
    anyhow::ensure!(names == ["cp01", "cp03"], "cp02 is off: {described}");
    anyhow::ensure!(members.iter().any(|member| member == "cp02"), "but still a member: {members:?}");
    anyhow::ensure!(described.contains("cp02 does not answer"), "{described}");

    lab.restart_twin("cp02").await?;
    let (names, _, described) = healthy(3).await?;
    anyhow::ensure!(names == ["cp01", "cp02", "cp03"], "cp02 rejoined: {described}");

    // `talosctl reboot --wait=false`, as verify-ha's drill sends it: cp03 goes away with its
    // member, which stays listed, and comes back into its config and its etcd data. Watched
    // with one quick question at a time, so the few seconds it is away are never missed.
    let edge = talosctl(config).await?;
    let (cp01, cp03) = (config.nodes[0].clone(), config.nodes[2].clone());
    let members_while_away = in_the_box(move || async move {
        kit::talos::TalosApi::ask(&edge, &cp03, &["reboot", "--wait=false"], std::time::Duration::from_secs(30))
            .await?;
        // etcd stops after the pods: the kubelet's graceful shutdown may take its whole grace
        // period (30 s, constants.KubeletShutdownGracePeriod) waiting for the not-ready taint,
        // which a loaded API server is slow to add.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while kit::talos::etcd_status(&edge, &cp03).await.is_ok() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "cp03's member never went away");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        kit::talos::etcd_members(&edge, &cp01).await
    })
    .await?;
    anyhow::ensure!(
        members_while_away.iter().any(|member| member == "cp03"),
        "still a member while it reboots: {members_while_away:?}"
    );
    let (names, _, described) = healthy(3).await?;
    anyhow::ensure!(names == ["cp01", "cp02", "cp03"], "cp03 is back: {described}");

    // `talosctl reboot` as people type it, waiting (its default): the twin answers Talos's
    // Events stream and the boot ID, so talosctl sees the reboot through and returns once the
    // machine is back, running and ready, which on a control plane includes a healthy etcd.
    let edge = talosctl(config).await?;
    let cp01 = config.nodes[0].clone();
    let status = in_the_box(move || async move {
        let rebooted =
            kit::talos::TalosApi::talosctl(&edge, &cp01, &["reboot"], std::time::Duration::from_secs(180), &mut |_| {})
                .await?;
        anyhow::ensure!(rebooted.success, "talosctl reboot --wait: {}", rebooted.stderr);
        kit::talos::etcd_status(&edge, &cp01).await
    })
    .await?;
    anyhow::ensure!(status.healthy(), "ready means etcd is healthy: {status:?}");
    Ok(())
}

/// The review's CSR deadlock, on the running control planes: with `rotate-server-certificates`
/// a kubelet's serving certificate waits for kubelet-serving-cert-approver. Before the fix the
/// approver came with stage 03, after stage 01's `talosctl health`, which Talos's own checks
/// keep failing while a request is pending. Here the approver goes, cp02 files a new request
/// on its next boot, and health reports the kubelet-csr diagnostic for it.
async fn without_an_approver_a_serving_certificate_request_keeps_health_waiting(
    config: &kit::config::ClusterConfig,
) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    use kube::api::{Api, DeleteParams, ListParams};

    let edge = talosctl(config).await?;
    let cluster = config.clone();
    let failure = in_the_box(move || async move {
        let control_planes: Vec<&kit::config::Node> = cluster.control_planes().collect();
        let (cp01, cp02) = (control_planes[0], control_planes[1]);
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("kubeconfig");
        talos_bootstrap::nodes::kubeconfig(&edge, cp01, &file).await?;
        let client = kit::client::client_from_kubeconfig(&file).await?;
        // The control planes deploy it (their inline manifest) once the API answers.
        let approver = "kubelet-serving-cert-approver";
        let deployments = Api::<Deployment>::namespaced(client.clone(), approver);
        tests::eventually(std::time::Duration::from_secs(90), "the control planes to deploy the approver", || async {
            Ok(deployments.get_opt(approver).await?.map(drop))
        })
        .await?;
        deployments.delete(approver, &DeleteParams::default()).await?;
        let requests: Api<CertificateSigningRequest> = Api::all(client);
        for request in requests.list(&ListParams::default()).await? {
            let from_cp02 = request.spec.username.as_deref() == Some("system:node:cp02");
            if let (true, Some(name)) = (from_cp02, request.metadata.name) {
                requests.delete(&name, &DeleteParams::default()).await?;
            }
        }
        kit::talos::TalosApi::ask(&edge, cp02, &["reboot", "--wait=false"], std::time::Duration::from_secs(30)).await?;
        // Back up, its kubelet files the request and Talos raises the diagnostic.
        tests::eventually(std::time::Duration::from_secs(90), "the kubelet-csr diagnostic on cp02", || async {
            let diagnostics: anyhow::Result<Vec<kit::talos::Resource<serde_json::Value>>> =
                kit::talos::resources(&edge, cp02, "diagnostics", kit::talos::Access::Secure).await;
            let raised = diagnostics.is_ok_and(|found| found.iter().any(|found| found.metadata.id == "kubelet-csr"));
            Ok(raised.then_some(()))
        })
        .await?;
        let outcome =
            talos_bootstrap::nodes::health(&edge, &control_planes, &[], std::time::Duration::from_secs(60)).await;
        anyhow::Ok(outcome.err().map(|error| format!("{error:#}")))
    })
    .await?;
    let failure = failure.unwrap_or_default();
    anyhow::ensure!(
        failure.contains("172.16.16.148: kubelet server certificate rotation is enabled, but CSR is not approved"),
        "health must wait on cp02's pending request: {failure:?}"
    );
    Ok(())
}

/// Taking a control plane out for good, as the HA guide says: `talosctl reset` (graceful: its
/// member leaves etcd first; `--reboot`: it comes back wiped, in maintenance mode, ready to be
/// installed again), waiting as talosctl does by default: until the machine answers in
/// maintenance mode. The other two keep etcd, with two members.
async fn a_reset_control_plane_leaves_etcd_and_boots_into_maintenance_mode(
    config: &kit::config::ClusterConfig,
) -> anyhow::Result<()> {
    let edge = talosctl(config).await?;
    let cluster = config.clone();
    let members = in_the_box(move || async move {
        let (cp01, cp03) = (&cluster.nodes[0], &cluster.nodes[2]);
        let reset = ["reset", "--graceful=true", "--reboot"];
        kit::talos::TalosApi::ask(&edge, cp03, &reset, std::time::Duration::from_secs(120)).await?;
        let state = kit::talos::probe(&edge, cp03).await;
        anyhow::ensure!(state == kit::talos::NodeState::Maintenance, "back in maintenance mode: {state:?}");
        kit::talos::etcd_members(&edge, cp01).await
    })
    .await?;
    let mut members = members;
    members.sort();
    anyhow::ensure!(members == ["cp01", "cp02"], "cp03 left etcd: {members:?}");
    Ok(())
}

/// Review item 7 on a twin: cp01 gets its generated config (`apply-config --insecure`, as
/// stage 01 sends it), installs and comes back answering the talosconfig's client
/// certificate. `plan` then reads Talos's own dry-run diff (on talosctl's stderr): no changes
/// for the same config; the edited field for an edited cluster.yaml.
async fn a_configured_twin_shows_drift_through_talos_own_diff(
    lab: &lab::Lab,
    config: &kit::config::ClusterConfig,
) -> anyhow::Result<()> {
    install(config, &["cp01"]).await?;
    anyhow::ensure!(
        lab::twin::twin_dir(&lab.dir, "cp01").join("config.yaml").exists(),
        "cp01 keeps its config, as on disk"
    );
    // The cluster.yaml is edited below: a copy, so the other steps keep the original.
    let dir = tempfile::tempdir()?;
    let edited = dir.path().join("cluster.yaml");
    std::fs::copy(&config.source, &edited)?;
    std::fs::create_dir_all(dir.path().join("state"))?;
    for file in ["secrets.yaml", "talosconfig"] {
        std::fs::copy(config.state_dir().join(file), dir.path().join("state").join(file))?;
    }

    let plan = |config: &Path| {
        let config = config.to_owned();
        async move { tokio::task::spawn_blocking(move || stage_from_the_workstation("plan", &config, &[])).await? }
    };
    let node_change = |changes: &[serde_json::Value], node: &str| {
        let object = format!("TalosNode {node}");
        changes.iter().find(|change| change["object"] == object.as_str()).cloned().unwrap_or_default()
    };
    let (code, changes) = plan(&edited).await?;
    anyhow::ensure!(code == ExitCode::from(2), "cp02 would be installed: {changes:?}");
    anyhow::ensure!(node_change(&changes, "cp01")["action"] == "unchanged", "the same config: {changes:?}");
    anyhow::ensure!(node_change(&changes, "cp02")["action"] == "created", "cp02 waits in maintenance mode");

    let text =
        std::fs::read_to_string(&config.source)?.replace("nameservers: [1.1.1.1, 8.8.8.8]", "nameservers: [9.9.9.9]");
    std::fs::write(&config.source, text)?;
    let (code, changes) = plan(&config.source).await?;
    anyhow::ensure!(code == ExitCode::from(2), "{changes:?}");
    let cp01 = node_change(&changes, "cp01");
    let diff = cp01["diff"].as_str().unwrap_or_default();
    anyhow::ensure!(cp01["action"] == "configured", "{cp01}");
    anyhow::ensure!(
        diff.contains("+  - address: 9.9.9.9") || diff.contains("+    - address: 9.9.9.9"),
        "Talos's diff: {diff}"
    );
    anyhow::ensure!(!diff.contains("LS0t"), "no key material in the diff");
    Ok(())
}
