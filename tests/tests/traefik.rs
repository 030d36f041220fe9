//! Stage 04 against the lab, through the same entry point as the `traefik` binary.

use std::process::ExitCode;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, DynamicObject};
use tests::{lab_client, run_stage_async};
use traefik::{INGRESS_CLASS, NAME, NAMESPACE, Traefik};

/// One test, in order: the missing-pool failure needs the pool gone, the rest needs it back.
#[tokio::test(flavor = "multi_thread")]
async fn traefik_needs_metallbs_pool_then_holds_its_fixed_address() -> anyhow::Result<()> {
    let client = lab_client().await?;
    // Stage 02 first (idempotent), and `lab up` to run MetalLB's controller, as install-all does.
    let (code, out) = run_stage_async(metallb::Metallb, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let config = kit::config::ClusterConfig::load(&tests::config_path())?;
    lab::Lab::new(&config, lab::DEFAULT_PORT_BASE).up().await?;

    // Without stage 02's entry-point pool, check names it and the stage to run.
    let pools: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), kit::names::METALLB_NAMESPACE, &kit::names::ip_address_pool());
    pools.delete(kit::names::ENTRYPOINT_POOL, &DeleteParams::default()).await?;
    let (code, check) = run_stage_async(Traefik, &["check"], tests::config_path()).await;
    assert_eq!(code, ExitCode::from(1), "{check}");
    assert!(check.contains("FAIL  pool talos-ha-entrypoints: MetalLB's IPAddressPool metallb-system/talos-ha-entrypoints does not exist"), "{check}");
    assert!(check.contains("fix: run stage 02 first: `metallb apply`"), "{check}");
    let (code, out) = run_stage_async(metallb::Metallb, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let (code, check) = run_stage_async(Traefik, &["check"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{check}");

    let (code, out) = run_stage_async(Traefik, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let service = Api::<Service>::namespaced(client.clone(), NAMESPACE).get(NAME).await?;
    let annotations = service.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("metallb.io/loadBalancerIPs").map(String::as_str), Some("172.16.16.101"));
    let binding = Api::<ClusterRoleBinding>::all(client.clone()).get("traefik-ingress-controller").await?;
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE), "upstream RBAC patched to our namespace");
    let deployment = Api::<Deployment>::namespaced(client.clone(), NAMESPACE).get(NAME).await?;
    let pod = deployment.spec.as_ref().and_then(|spec| spec.template.spec.clone()).unwrap_or_default();
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(args.iter().any(|arg| arg == "--entryPoints.web.http.redirections.entryPoint.to=:443"), "{args:?}");
    assert_eq!(deployment.spec.as_ref().and_then(|spec| spec.replicas), Some(2));
    let class = Api::<IngressClass>::all(client.clone()).get(INGRESS_CLASS).await?;
    let class_annotations = class.metadata.annotations.unwrap_or_default();
    assert_eq!(class_annotations.get("ingressclass.kubernetes.io/is-default-class").map(String::as_str), Some("true"));

    let (code, again) = run_stage_async(Traefik, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<&str> = again.lines().filter(|l| !l.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");

    let (code, verify) = run_stage_async(Traefik, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    assert!(verify.contains("ok    address: Service traefik/traefik has 172.16.16.101 (traefik.ip)"), "{verify}");
    assert!(verify.contains("lab   redirect: not checkable in the lab"), "{verify}");
    // Traefik's controller runs in the box, and publishes traefik.ip on the Ingresses it serves.
    assert!(verify.contains("ok    published: "), "{verify}");
    assert!(
        verify.contains(
            "ok    ingress class: IngressClass traefik is Traefik's (traefik.io/ingress-controller) and the default"
        ),
        "{verify}"
    );

    another_service_asking_for_the_entry_point_fails_check(&client).await
}

/// Audit U9: a Service of someone else's asking MetalLB for traefik.ip is an address
/// conflict check names, before Traefik's Service could lose it.
async fn another_service_asking_for_the_entry_point_fails_check(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    let squatter = Service {
        metadata: kube::api::ObjectMeta {
            name: Some("talos-ha-test-squatter".into()),
            annotations: Some([(kit::names::METALLB_IP_ANNOTATION.to_owned(), "172.16.16.101".to_owned())].into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![ServicePort { port: 8080, ..Default::default() }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let services = Api::<Service>::namespaced(client.clone(), "default");
    services.create(&Default::default(), &squatter).await?;
    let (code, check) = run_stage_async(Traefik, &["check"], tests::config_path()).await;
    services.delete("talos-ha-test-squatter", &DeleteParams::default()).await?;
    assert_eq!(code, ExitCode::from(1), "{check}");
    assert!(
        check.contains(
            "FAIL  address free: 172.16.16.101 is held or requested by Service default/talos-ha-test-squatter"
        ),
        "{check}"
    );
    Ok(())
}

#[test]
fn render_writes_upstream_and_our_objects_apart() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let args = ["render", "--out", out.path().to_str().unwrap_or_default()];
    let (code, listed) = tests::run_stage(&Traefik, &args, &tests::config_path());
    assert_eq!(code, ExitCode::SUCCESS, "{listed}");
    let folder = out.path().join("04-traefik-ingress");
    let ours = std::fs::read_to_string(folder.join("traefik.yaml"))?;
    assert!(ours.contains("metallb.io/loadBalancerIPs: \"172.16.16.101\""), "{ours}");
    assert!(ours.contains("kind: IngressClass") && !ours.contains("kind: CustomResourceDefinition"));
    let upstream = std::fs::read_to_string(folder.join("crds-and-rbac.yaml"))?;
    assert!(upstream.contains("kind: CustomResourceDefinition") && upstream.contains("namespace: traefik"));
    Ok(())
}
