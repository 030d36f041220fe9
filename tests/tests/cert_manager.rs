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
    // Stage 04 first (idempotent): the entry point's TLSStore is Traefik's kind.
    let (code, out) = run_stage_async(traefik::Traefik, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
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
    // The CA keeps its key at renewal, said explicitly (cert-manager 1.18 flipped the default).
    let key = serde_json::json!({ "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Never" });
    assert_eq!(ca.data["spec"]["privateKey"], key);
    assert_eq!(ca.data["spec"]["duration"], "87600h0m0s");
    // The bare entry point's default certificate: for traefik.ip, from the CA, Traefik's default.
    let entry = Api::<DynamicObject>::namespaced_with(client.clone(), "traefik", &kit::certs::certificate_resource())
        .get(cert_manager::entrypoint::CERTIFICATE)
        .await?;
    assert_eq!(entry.data["spec"]["ipAddresses"], serde_json::json!(["172.16.16.101"]));
    assert_eq!(entry.data["spec"]["issuerRef"]["name"], CA_ISSUER);
    assert_eq!(entry.data["spec"]["privateKey"]["rotationPolicy"], "Always", "a service's key is renewed");
    let stores: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "traefik",
        &kube::discovery::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("traefik.io", "v1alpha1", "TLSStore"),
            "tlsstores",
        ),
    );
    let store = stores.get("default").await?;
    assert_eq!(store.data["spec"]["defaultCertificate"]["secretName"], "traefik-default-tls");
    // The lab transform left out the webhook nothing could answer.
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    assert!(webhooks.get_opt("cert-manager-webhook").await?.is_none());

    let (code, again) = run_stage_async(CertManager, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<&str> = again.lines().filter(|l| !l.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");

    let (code, verify) = run_stage_async(CertManager, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    for line in [
        "ok    ca issuer: ClusterIssuer talos-ha-ca is Ready, signing with Secret talos-ha-ca",
        "ok    stored: the CA chain and the entry point's certificate (5 objects)",
        "ok    certificate: Certificate traefik/traefik-default is Ready",
        "ok    ca certificate: Certificate talos-ha-ca is Ready",
        "ok    issuance: talos-ha-ca issued a certificate for the host it was asked, chaining to the exported CA",
        "lab   https entry point: not checkable in the lab: nothing in the box answers on 172.16.16.101:443",
    ] {
        assert!(verify.contains(line), "{line}\n{verify}");
    }
    // verify waited for the entry point's certificate: its Secret is there now.
    the_box_issues_the_ca_and_the_leaves_for_real(&client).await
}

/// cert-manager's controller runs in the box (lab/go/cert-manager, at the pinned release), so
/// what it stores is real: the CA's key pair in its Secret, exported by apply without the key,
/// and the entry point's certificate for traefik.ip, signed by that CA's key.
async fn the_box_issues_the_ca_and_the_leaves_for_real(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;

    let exported = std::fs::read(cert_manager::ca_file(&tests::config()))?;
    let secret = |namespace: &str, name: &str| {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let name = name.to_owned();
        async move {
            let data = secrets.get(&name).await?.data.unwrap_or_default();
            anyhow::Ok(
                data.into_iter().map(|(key, value)| (key, value.0)).collect::<std::collections::BTreeMap<_, _>>(),
            )
        }
    };
    let ca = secret(CERT_MANAGER_NAMESPACE, CA_CERTIFICATE).await?;
    assert_eq!(ca.get("tls.crt"), Some(&exported), "apply exported the CA's certificate");
    assert!(ca.contains_key("tls.key"), "the CA's key stays in its Secret");
    assert!(!String::from_utf8_lossy(&exported).contains("PRIVATE KEY"), "and never leaves it");
    let entry = secret("traefik", "traefik-default-tls").await?;
    let leaf = entry.get("tls.crt").expect("the entry point's certificate");
    cert_manager::chain::verify(leaf, &exported, "172.16.16.101")?;
    assert_eq!(entry.get("ca.crt"), Some(&exported), "cert-manager stores the signing CA beside the leaf");
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
