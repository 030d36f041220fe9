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
    assert!(!cert_manager::ca_file(&tests::config()).exists(), "no CA is issued in the lab, so none is exported");

    let (code, again) = run_stage_async(CertManager, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<&str> = again.lines().filter(|l| !l.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");

    let (code, verify) = run_stage_async(CertManager, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    assert!(
        verify.contains(
            "lab   ca issuer: not checkable in the lab: ClusterIssuer talos-ha-ca signs with Secret talos-ha-ca"
        ),
        "{verify}"
    );
    assert!(verify.contains("lab   issuance: not checkable in the lab"), "{verify}");
    assert!(verify.contains("ok    stored: the CA chain and the entry point's certificate (5 objects)"), "{verify}");

    the_ca_export_and_issuance_checks_read_what_cert_manager_stores(&client).await
}

/// Audit item 3. No cert-manager controller runs in the lab, so this test stands in for it
/// at the API edge, storing what the controller would: the CA's key pair in Secret
/// cert-manager/talos-ha-ca and Ready on its Certificate, then, when `issuance_check` asks
/// for a probe certificate, a leaf signed by that CA and Ready. The stage's own
/// `export_ca` and `issuance_check` run against those, and fail on a leaf another CA signed
/// or one for another host.
async fn the_ca_export_and_issuance_checks_read_what_cert_manager_stores(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kit::report::Action;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        anyhow::Ok((pem, key_pem, Issuer::new(params, key)))
    };
    let (ca_pem, ca_key_pem, issuer) = ca("talos-ha CA")?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), CERT_MANAGER_NAMESPACE);
    let certificates: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), CERT_MANAGER_NAMESPACE, &kit::certs::certificate_resource());
    let ca_secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some(CA_CERTIFICATE.into()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [("tls.crt", &ca_pem), ("tls.key", &ca_key_pem), ("ca.crt", &ca_pem)]
                .into_iter()
                .map(|(key, value)| (key.to_owned(), ByteString(value.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    let _ = secrets.delete(CA_CERTIFICATE, &Default::default()).await;
    secrets.create(&Default::default(), &ca_secret).await?;
    set_ready(&certificates, CA_CERTIFICATE, true).await?;

    let dir = tempfile::tempdir()?;
    let config = xtask::scratch_config(&tests::config_path(), dir.path())?;
    let exported = cert_manager::export_ca(client, &config).await?;
    assert_eq!(exported.action, Action::Created, "{exported}");
    let file = std::fs::read_to_string(cert_manager::ca_file(&config))?;
    assert_eq!(file, ca_pem, "the CA's certificate");
    assert!(!file.contains("PRIVATE KEY"), "never its key");
    assert_eq!(cert_manager::export_ca(client, &config).await?.action, Action::Unchanged);

    let host = config.service_host("verify", config.traefik_ip);
    let signed = tokio::spawn(sign_the_probe(client.clone(), issuer, host.clone()));
    let check = cert_manager::issuance_check(client, &config).await;
    signed.await??;
    assert_eq!(check.status, kit::report::Status::Pass, "{check}");

    let (_, _, impostor) = ca("talos-ha CA")?;
    let signed = tokio::spawn(sign_the_probe(client.clone(), impostor, host));
    let check = cert_manager::issuance_check(client, &config).await;
    signed.await??;
    assert_eq!(check.status, kit::report::Status::Fail, "{check}");
    assert!(check.reason.contains("the CA's key did not sign the certificate"), "{check}");

    let (_, _, issuer) = ca("talos-ha CA")?;
    let signed = tokio::spawn(sign_the_probe(client.clone(), issuer, "elsewhere.example".into()));
    let check = cert_manager::issuance_check(client, &config).await;
    signed.await??;
    assert_eq!(check.status, kit::report::Status::Fail, "{check}");

    // The lab as it was: no CA issued.
    set_ready(&certificates, CA_CERTIFICATE, false).await?;
    secrets.delete(CA_CERTIFICATE, &Default::default()).await?;
    Ok(())
}

/// Writes (or clears) a Certificate's Ready condition, as cert-manager's controller does.
async fn set_ready(certificates: &Api<DynamicObject>, name: &str, ready: bool) -> anyhow::Result<()> {
    let conditions: Vec<serde_json::Value> =
        ready.then(|| tests::written_condition("Ready", "True", "Ready")).into_iter().collect();
    let patch = serde_json::json!({ "status": { "conditions": conditions } });
    certificates.patch_status(name, &Default::default(), &kube::api::Patch::Merge(&patch)).await?;
    Ok(())
}

/// The stand-in's issuance: waits for the probe Certificate, stores a leaf for `host` signed
/// by `issuer` in its Secret, and marks it Ready.
async fn sign_the_probe(
    client: kube::Client,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    host: String,
) -> anyhow::Result<()> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;

    let certificates: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), CERT_MANAGER_NAMESPACE, &kit::certs::certificate_resource());
    let probe = tests::eventually(std::time::Duration::from_secs(30), "the probe Certificate", || async {
        Ok(certificates.get_opt("talos-ha-verify").await?)
    })
    .await?;
    let secret_name = probe.data["spec"]["secretName"].as_str().unwrap_or_default().to_owned();
    let leaf = rcgen::CertificateParams::new(vec![host])?.signed_by(&rcgen::KeyPair::generate()?, &issuer)?.pem();
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some(secret_name), ..Default::default() },
        data: Some([("tls.crt".to_owned(), ByteString(leaf.into_bytes()))].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client, CERT_MANAGER_NAMESPACE).create(&Default::default(), &secret).await?;
    set_ready(&certificates, "talos-ha-verify", true).await
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
