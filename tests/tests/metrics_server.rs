//! Stage 03 against the lab, through the same entry point as the `metrics-server` binary.

use std::process::ExitCode;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use metrics_server::{APPROVER, APPROVER_NAMESPACE, DEPLOYMENT, INSECURE_FLAG, MetricsServer, NAMESPACE};
use talos_bootstrap::TalosBootstrap;
use tests::{lab_client, run_stage, run_stage_async};

fn container_args(deployment: &Deployment) -> Vec<String> {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .map(|pod| pod.containers.iter().flat_map(|c| c.args.clone().unwrap_or_default()).collect())
        .unwrap_or_default()
}

/// Stage 01 brings the approver (the control planes' inline manifest, applied as Talos applies
/// it); stage 03 checks it runs and installs metrics-server alone.
#[tokio::test(flavor = "multi_thread")]
async fn stage_01_brings_the_approver_and_stage_03_installs_metrics_server_and_a_rerun_changes_nothing()
-> anyhow::Result<()> {
    let (code, out) = run_stage_async(TalosBootstrap, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let client = lab_client().await?;
    let approver = Api::<Deployment>::namespaced(client.clone(), APPROVER_NAMESPACE).get(APPROVER).await?;
    assert_eq!(approver.spec.as_ref().and_then(|spec| spec.replicas), Some(2), "the HA variant");

    let (code, check) = run_stage_async(MetricsServer, &["check"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{check}");
    assert!(
        check.contains(
            "ok    approver: Deployment kubelet-serving-cert-approver/kubelet-serving-cert-approver is Available"
        ),
        "{check}"
    );
    // The twins' kubelets filed serving-certificate requests; the approver stand-in approved them.
    assert!(
        check.contains(
            "ok    kubelet tls: kubelet certificates are verified, and no node's serving-certificate request waits"
        ),
        "{check}"
    );
    let (code, out) = run_stage_async(MetricsServer, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(!out.contains("kubelet-serving-cert-approver"), "stage 03 no longer applies the approver: {out}");

    let metrics = Api::<Deployment>::namespaced(client.clone(), NAMESPACE).get(DEPLOYMENT).await?;
    assert!(!container_args(&metrics).iter().any(|arg| arg == INSECURE_FLAG), "kubelet TLS is verified by default");
    // The lab transform leaves no APIService for the API server to probe without a backend.
    let api_services: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService"),
            "apiservices",
        ),
    );
    assert!(api_services.get_opt(metrics_server::API_SERVICE).await?.is_none());

    let (code, again) = run_stage_async(MetricsServer, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<&str> = again.lines().filter(|l| !l.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");

    let (code, verify) = run_stage_async(MetricsServer, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    assert!(verify.contains("ok    deployment metrics-server"), "{verify}");
    assert!(verify.contains("lab   apiservice: not checkable in the lab"), "{verify}");
    Ok(())
}

#[test]
fn the_insecure_kubelet_tls_opt_in_adds_the_flag() -> anyhow::Result<()> {
    let rendered = |config: &std::path::Path| -> anyhow::Result<String> {
        let out = tempfile::tempdir()?;
        let (code, listed) = run_stage(&MetricsServer, &["render", "--out", &out.path().display().to_string()], config);
        assert_eq!(code, ExitCode::SUCCESS, "{listed}");
        Ok(std::fs::read_to_string(out.path().join("03-metrics-server/metrics-server.yaml"))?)
    };
    let secure = rendered(&tests::config_path())?;
    assert!(!secure.contains(INSECURE_FLAG));

    let dir = tempfile::tempdir()?;
    let config = xtask::scratch_config(&tests::config_path(), dir.path())?.source;
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replace("# metricsServer:\n#   kubeletInsecureTls: true", "metricsServer:\n  kubeletInsecureTls: true"),
    )?;
    let insecure = rendered(&config)?;
    assert!(insecure.contains(&format!("- {INSECURE_FLAG}")), "the typed patch adds the flag");
    Ok(())
}
