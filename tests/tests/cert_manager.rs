//! Stage 05 against the lab, through the same entry point as the `cert-manager` binary.

use std::process::ExitCode;

use cert_manager::CertManager;
use cert_manager::issuers::{CA_CERTIFICATE, SELF_SIGNED_ISSUER};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kit::names::{CA_ISSUER, CERT_MANAGER_NAMESPACE};
use kube::api::{Api, DynamicObject};
use tests::{lab_client, run_stage, run_stage_async};

#[tokio::test(flavor = "multi_thread")]
async fn apply_installs_cert_manager_and_the_ca_chain_and_a_rerun_changes_nothing() -> anyhow::Result<()> {
    let (code, out) = run_stage_async(CertManager, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");

    let client = lab_client().await?;
    let cluster_issuers: Api<DynamicObject> = Api::all_with(client.clone(), &kit::certs::cluster_issuer_resource());
    let self_signed = cluster_issuers.get(SELF_SIGNED_ISSUER).await?;
    assert_eq!(self_signed.data["spec"], serde_json::json!({ "selfSigned": {} }));
    let ca_issuer = cluster_issuers.get(CA_ISSUER).await?;
    assert_eq!(ca_issuer.data["spec"]["ca"]["secretName"], CA_CERTIFICATE);
    let certificates: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), CERT_MANAGER_NAMESPACE, &kit::certs::certificate_resource());
    let ca = certificates.get(CA_CERTIFICATE).await?;
    assert_eq!(ca.data["spec"]["isCA"], true);
    assert_eq!(ca.data["spec"]["privateKey"], serde_json::json!({ "algorithm": "ECDSA", "size": 256 }));
    assert_eq!(ca.data["spec"]["duration"], "87600h0m0s");
    // The lab transform left out the webhook nothing could answer.
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    assert!(webhooks.get_opt("cert-manager-webhook").await?.is_none());
    assert!(!cert_manager::ca_file(&tests::config()).exists(), "no CA is issued in the lab, so none is exported");

    let (code, again) = run_stage_async(CertManager, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<&str> = again.lines().filter(|l| !l.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");

    let (code, verify) = run_stage_async(CertManager, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    assert!(verify.contains("ok    ca issuer: ClusterIssuer talos-ha-ca exists (stage 05)"), "{verify}");
    assert!(verify.contains("lab   issuance: not checkable in the lab"), "{verify}");
    Ok(())
}

#[test]
fn render_writes_the_release_and_the_ca_chain() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let (code, listed) =
        run_stage(&CertManager, &["render", "--out", &out.path().display().to_string()], &tests::config_path());
    assert_eq!(code, ExitCode::SUCCESS, "{listed}");
    let folder = out.path().join("05-cert-manager");
    let chain = std::fs::read_to_string(folder.join("cluster-ca.yaml"))?;
    assert!(chain.contains("name: talos-ha-selfsigned") && chain.contains("isCA: true"), "{chain}");
    let release = std::fs::read_to_string(folder.join("cert-manager.yaml"))?;
    assert!(release.contains("kind: ValidatingWebhookConfiguration"), "render shows the real cluster's bundle");
    assert!(folder.join("README.md").exists());
    Ok(())
}
