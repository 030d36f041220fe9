//! Stage 02 against the lab, through the same entry point as the `metallb` binary.

use std::path::Path;
use std::process::ExitCode;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use tests::lab_client;

/// Runs `metallb ARGS… --lab --mirror <shared upstream>` with `config`.
fn metallb(args: &[&str], config: &Path) -> (ExitCode, String) {
    tests::run_stage(&metallb::Metallb, args, config)
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_installs_metallb_and_our_pools_and_a_rerun_changes_nothing() -> anyhow::Result<()> {
    let config = tests::config_path();
    let (code, out) = tokio::task::spawn_blocking(move || metallb(&["apply"], &config)).await?;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");

    let client = lab_client().await?;
    let pools: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        metallb::NAMESPACE,
        &ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("metallb.io", "v1beta1", "IPAddressPool"),
            "ipaddresspools",
        ),
    );
    let entrypoints = pools.get(metallb::ENTRYPOINT_POOL).await?;
    assert_eq!(entrypoints.data["spec"]["addresses"], serde_json::json!(["172.16.16.101/32", "172.16.16.102/32"]));
    assert_eq!(entrypoints.data["spec"]["autoAssign"], false);
    let general = pools.get(metallb::GENERAL_POOL).await?;
    assert_eq!(general.data["spec"]["addresses"], serde_json::json!(["172.16.16.103-172.16.16.120"]));

    // The speakers need hostNetwork: upstream's privileged Pod Security labels are kept.
    let namespace = Api::<Namespace>::all(client.clone()).get(metallb::NAMESPACE).await?;
    let labels = namespace.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("privileged"));

    let config = tests::config_path();
    let (code, again) = tokio::task::spawn_blocking(move || metallb(&["apply"], &config)).await?;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<&str> = again.lines().filter(|l| !l.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");

    // With MetalLB's CRDs in place, `lab up` starts its controller (as install-all does).
    let lab_config = kit::config::ClusterConfig::load(&tests::config_path())?;
    lab::Lab::new(&lab_config, lab::DEFAULT_PORT_BASE).up().await?;
    let config = tests::config_path();
    let (code, verify) = tokio::task::spawn_blocking(move || metallb(&["verify"], &config)).await?;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    assert!(verify.contains("ok    speakers: a speaker is ready on each of the 6 nodes"), "{verify}");
    assert!(verify.contains("lab   arp: not checkable in the lab"), "{verify}");
    assert!(verify.contains("ok    load balancer: a probe LoadBalancer Service got 172.16.16.1"), "{verify}");
    assert!(verify.contains("ok    pool talos-ha-entrypoints: 172.16.16.101/32, 172.16.16.102/32, autoAssign false"));
    assert!(verify.contains("ok    pool talos-ha-pool: 172.16.16.103-172.16.16.120, autoAssign true"), "{verify}");
    assert!(verify.contains("ok    l2 advertisement: talos-ha-l2 announces talos-ha-entrypoints, talos-ha-pool"));
    // Every pool address a Service holds now came from MetalLB.
    let config = tests::config_path();
    let (code, check) = tokio::task::spawn_blocking(move || metallb(&["check"], &config)).await?;
    assert_eq!(code, ExitCode::SUCCESS, "{check}");
    assert!(
        check.contains(
            "ok    pool: no Service holds an address of 172.16.16.101-172.16.16.120 that MetalLB did not give it"
        ),
        "{check}"
    );
    assert!(check.contains("ok    kube-proxy: iptables/nftables mode: L2 announcements work"), "{check}");
    kube_proxy_in_ipvs_mode_needs_strict_arp(&client).await?;
    assert!(verify.contains("metallb-webhook-configuration not installed"), "verify lists the lab transform: {verify}");

    entry_points_only_is_a_pool_verify_passes_on(&pools).await?;
    // Back to the documented pool: the general one is stored again.
    let config = tests::config_path();
    let (code, out) = tokio::task::spawn_blocking(move || metallb(&["apply"], &config)).await?;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(pools.get_opt(metallb::GENERAL_POOL).await?.is_some(), "{out}");
    Ok(())
}

/// Audit U4: Talos's kube-proxy (the box's control planes deploy it) switched to IPVS mode
/// fails check until strictARP is on; the DaemonSet is put back as Talos made it.
async fn kube_proxy_in_ipvs_mode_needs_strict_arp(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use kube::api::{Patch, PatchParams};

    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let original = daemonsets.get("kube-proxy").await?;
    let command = original
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .map(|pod| pod.containers[0].command.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(command.iter().any(|arg| arg == "--proxy-mode=iptables"), "Talos's kube-proxy: {command:?}");
    let with = |extra: &[&str]| {
        let mut edited: Vec<String> =
            command.iter().map(|arg| arg.replace("--proxy-mode=iptables", "--proxy-mode=ipvs")).collect();
        edited.extend(extra.iter().map(|arg| (*arg).to_owned()));
        serde_json::json!({ "spec": { "template": { "spec": { "containers": [{ "name": "kube-proxy", "command": edited }] } } } })
    };
    let run_check = || async {
        let config = tests::config_path();
        tokio::task::spawn_blocking(move || metallb(&["check"], &config)).await
    };
    daemonsets.patch("kube-proxy", &PatchParams::default(), &Patch::Strategic(&with(&[]))).await?;
    let (ipvs_code, ipvs) = run_check().await?;
    daemonsets
        .patch("kube-proxy", &PatchParams::default(), &Patch::Strategic(&with(&["--ipvs-strict-arp=true"])))
        .await?;
    let (strict_code, strict) = run_check().await?;
    let restore = serde_json::json!({ "spec": { "template": { "spec": { "containers": [{ "name": "kube-proxy", "command": command }] } } } });
    daemonsets.patch("kube-proxy", &PatchParams::default(), &Patch::Strategic(&restore)).await?;
    assert_eq!(ipvs_code, ExitCode::from(1), "{ipvs}");
    assert!(ipvs.contains("FAIL  kube-proxy: kube-proxy runs in IPVS mode without strictARP"), "{ipvs}");
    assert_eq!(strict_code, ExitCode::SUCCESS, "{strict}");
    assert!(strict.contains("ok    kube-proxy: IPVS mode with strictARP"), "{strict}");
    Ok(())
}

/// A config whose pool holds nothing but the two entry points is valid: its stage has no
/// general pool, and verify proves instead that MetalLB hands the entry points to no Service
/// that did not ask for them (a probe is refused with MetalLB's AllocationFailed event).
async fn entry_points_only_is_a_pool_verify_passes_on(pools: &Api<DynamicObject>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = xtask::scratch_config(&tests::config_path(), dir.path())?.source;
    let documented = "pool: 172.16.16.101-172.16.16.120";
    let text = std::fs::read_to_string(&config)?;
    assert!(text.contains(documented), "cluster.yaml's pool moved: update this test");
    std::fs::write(&config, text.replace(documented, "pool: 172.16.16.101-172.16.16.102"))?;
    // apply never deletes what a bundle no longer holds: take the general pool away by hand.
    pools.delete(metallb::GENERAL_POOL, &Default::default()).await?;
    let kubeconfig = tests::kubeconfig();
    let run = |args: &'static [&'static str]| {
        let (config, kubeconfig) = (config.clone(), kubeconfig.clone());
        tokio::task::spawn_blocking(move || {
            let mut argv = args.to_vec();
            argv.extend(["--kubeconfig", kubeconfig.to_str().unwrap_or_default()]);
            metallb(&argv, &config)
        })
    };
    let (code, applied) = run(&["apply"]).await?;
    assert_eq!(code, ExitCode::SUCCESS, "{applied}");
    let (code, verify) = run(&["verify"]).await?;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    assert!(verify.contains("ok    l2 advertisement: talos-ha-l2 announces talos-ha-entrypoints\n"), "{verify}");
    assert!(
        verify.contains(
            "ok    load balancer: metallb.pool holds only the entry points, and MetalLB gives them to no other Service"
        ) && verify.contains("no available IPs"),
        "{verify}"
    );
    Ok(())
}

#[test]
fn check_without_a_lab_fails_saying_how_to_start_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = xtask::scratch_config(&tests::config_path(), dir.path())?.source;
    let (code, out) = metallb(&["check"], &config);
    assert_eq!(code, ExitCode::from(1), "no kubeconfig in this config's state folder: the stage must fail");
    assert!(out.contains("FAIL  api: the API does not answer") && out.contains("cargo xtask lab up"), "{out}");
    Ok(())
}

#[test]
fn render_writes_the_seed_folder() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().to_str().unwrap_or_default().to_owned();
    let (code, listed) = metallb(&["render", "--out", &out], &tests::config_path());
    assert_eq!(code, ExitCode::SUCCESS, "{listed}");
    let folder = dir.path().join("02-metallb");
    let pools = std::fs::read_to_string(folder.join("ip-pools.yaml"))?;
    assert!(pools.contains("172.16.16.103-172.16.16.120") && pools.contains("autoAssign: false"), "{pools}");
    assert!(std::fs::read_to_string(folder.join("README.md"))?.starts_with("# 02 — MetalLB"));
    assert!(folder.join("metallb-native.yaml").exists());
    Ok(())
}

/// Errors that say where to look: a plan whose API server does not answer waits for it
/// (`--api-wait`, shortened here), then names the server, the kubeconfig that named it and the
/// next command, on stderr, with exit 1.
#[test]
fn an_unreachable_api_names_the_server_the_kubeconfig_and_the_next_command() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    let server = kit::client::api_server_of(&tests::kubeconfig()).unwrap_or_default();
    let text = std::fs::read_to_string(tests::kubeconfig())?.replace(&server, "https://127.0.0.1:9");
    std::fs::write(&kubeconfig, text)?;
    let bin_dir = xtask::stages::build(&xtask::workspace_root(), &["metallb"])?;
    let output = std::process::Command::new(bin_dir.join("metallb"))
        .args(["plan", "--lab", "--config"])
        .arg(tests::config_path())
        .arg("--mirror")
        .arg(tests::upstream_mirror())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--api-wait", "3"])
        .output()?;
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(log.contains("waiting up to 3s in all for it to answer again"), "the wait shows: {log}");
    assert!(log.contains("did not answer again within 3s"), "{log}");
    let named =
        format!("the Kubernetes API at https://127.0.0.1:9 (kubeconfig {}) did not answer", kubeconfig.display());
    assert!(log.contains(&named), "{log}");
    assert!(log.contains("next: `cargo xtask lab status`") && log.contains("`metallb plan --lab` again"), "{log}");
    Ok(())
}
