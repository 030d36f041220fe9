//! Stage 06 against the lab, through the same entry point as the `longhorn` binary.

use std::collections::BTreeMap;
use std::process::ExitCode;

use std::os::unix::fs::PermissionsExt as _;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use longhorn::{DEFAULT_CLASS_ANNOTATION, Longhorn, NAMESPACE};
use tests::{lab_client, run_stage_async};

#[tokio::test(flavor = "multi_thread")]
async fn apply_patches_the_release_takes_the_default_class_and_a_rerun_changes_nothing() -> anyhow::Result<()> {
    let client = lab_client().await?;
    // Stages 04 and 05 first (idempotent): the UI needs the IngressClass and the CA issuer.
    for (code, out) in [
        run_stage_async(traefik::Traefik, &["apply"], tests::config_path()).await,
        run_stage_async(cert_manager::CertManager, &["apply"], tests::config_path()).await,
    ] {
        assert_eq!(code, ExitCode::SUCCESS, "{out}");
    }
    // Another default StorageClass, as a cluster may already have: it must lose the mark.
    let classes: Api<StorageClass> = Api::all(client.clone());
    let _ = classes.delete("local-default", &DeleteParams::default()).await;
    let other = StorageClass {
        metadata: ObjectMeta {
            name: Some("local-default".into()),
            annotations: Some(BTreeMap::from([(DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned())])),
            ..ObjectMeta::default()
        },
        provisioner: "example.com/local".into(),
        ..StorageClass::default()
    };
    classes.create(&PostParams::default(), &other).await?;

    let (code, out) = run_stage_async(Longhorn, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("configured  StorageClass local-default"), "{out}");
    let demoted = classes.get("local-default").await?.metadata.annotations.unwrap_or_default();
    assert_eq!(demoted.get(DEFAULT_CLASS_ANNOTATION).map(String::as_str), Some("false"));
    classes.delete("local-default", &DeleteParams::default()).await?;

    let namespace = Api::<Namespace>::all(client.clone()).get(NAMESPACE).await?;
    let labels = namespace.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("privileged"));
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let settings = config_maps.get("longhorn-default-setting").await?.data.unwrap_or_default();
    let settings = &settings["default-setting.yaml"];
    assert!(settings.contains("default-data-path: /var/lib/longhorn/"), "{settings}");
    assert!(settings.contains("default-replica-count: \"3\""), "{settings}");
    assert!(settings.contains("priority-class: longhorn-critical"), "upstream settings are kept: {settings}");
    let class = config_maps.get("longhorn-storageclass").await?.data.unwrap_or_default();
    assert!(class["storageclass.yaml"].contains("storageclass.kubernetes.io/is-default-class: \"true\""));
    let ingress = Api::<Ingress>::namespaced(client.clone(), NAMESPACE).get(longhorn::UI).await?;
    let spec = ingress.spec.unwrap_or_default();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("traefik"));
    let rules = spec.rules.unwrap_or_default();
    assert_eq!(rules[0].host.as_deref(), Some("longhorn.172.16.16.101.sslip.io"));
    assert_eq!(spec.tls.unwrap_or_default()[0].secret_name.as_deref(), Some("longhorn-ui-tls"));
    // The UI asks for a login (add-ons review item 9): a BasicAuth middleware in front, its
    // Secret holding the password kept 0600 in the state folder, which apply names by path only.
    let annotations = ingress.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get(kit::certs::MIDDLEWARES_ANNOTATION).map(String::as_str),
        Some("longhorn-system-longhorn-ui-auth@kubernetescrd")
    );
    let password_file = tests::config().state_dir().join("longhorn-ui-password");
    assert_eq!(std::fs::metadata(&password_file)?.permissions().mode() & 0o777, 0o600);
    let password = std::fs::read_to_string(&password_file)?.trim().to_owned();
    assert!(!out.contains(&password), "the password is never printed");
    let secret = Api::<Secret>::namespaced(client.clone(), NAMESPACE).get(longhorn::UI_AUTH).await?;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    assert_eq!(secret.data.unwrap_or_default()["password"].0, password.as_bytes());
    let middlewares: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        NAMESPACE,
        &kube::discovery::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("traefik.io", "v1alpha1", "Middleware"),
            "middlewares",
        ),
    );
    let middleware = middlewares.get(longhorn::UI_AUTH).await?;
    assert_eq!(middleware.data["spec"]["basicAuth"]["secret"], longhorn::UI_AUTH);

    let (code, again) = run_stage_async(Longhorn, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<&str> = again.lines().filter(|l| !l.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");

    let (code, verify) = run_stage_async(Longhorn, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    assert!(
        verify.contains("ok    daemonset longhorn-manager: DaemonSet longhorn-system/longhorn-manager is ready on 3 nodes (every worker)"),
        "{verify}"
    );
    assert!(verify.contains("ok    settings: data path /var/lib/longhorn/, 3 replicas"), "{verify}");
    assert!(verify.contains("lab   volume: not checkable in the lab"), "{verify}");
    assert!(verify.contains("ok    ui login: the UI's Ingress passes through BasicAuth"), "{verify}");
    assert!(verify.contains("ok    default storage class: no other StorageClass is marked default"), "{verify}");
    assert!(
        verify.contains("ok    routed longhorn-ui: Ingress longhorn-ui → longhorn.172.16.16.101.sslip.io → Service longhorn-frontend:80 → 2 Ready pod(s)"),
        "{verify}"
    );

    // A default class made after the apply (another installer) is what verify now catches.
    classes.create(&PostParams::default(), &other).await?;
    let (code, verify) = run_stage_async(Longhorn, &["verify"], tests::config_path()).await;
    // plan shows the demotion apply would make, and makes none (U16).
    let (plan_code, planned) = run_stage_async(Longhorn, &["plan"], tests::config_path()).await;
    let still = classes.get("local-default").await?.metadata.annotations.unwrap_or_default();
    classes.delete("local-default", &DeleteParams::default()).await?;
    assert_eq!(plan_code, ExitCode::from(2), "{planned}");
    assert!(planned.contains("configured  StorageClass local-default"), "{planned}");
    assert_eq!(still.get(DEFAULT_CLASS_ANNOTATION).map(String::as_str), Some("true"), "plan demoted nothing");
    assert_eq!(code, ExitCode::from(1), "{verify}");
    assert!(
        verify
            .contains("FAIL  default storage class: other StorageClasses are marked default too: [\"local-default\"]"),
        "{verify}"
    );
    Ok(())
}
