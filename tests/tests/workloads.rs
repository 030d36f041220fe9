//! Stage 100 against the lab, through the same entry point as the `workloads` binary.

use std::process::ExitCode;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, DynamicObject};
use tests::{lab_client, run_stage_async};
use workloads::Workloads;
use workloads::apps::{DEMO, TARGETS, WHOAMI};

#[tokio::test(flavor = "multi_thread")]
async fn apply_deploys_both_paths_and_a_rerun_changes_nothing() -> anyhow::Result<()> {
    // The stages the apps rely on (idempotent): IngressClass, CA issuer, Gateway.
    for (code, out) in [
        run_stage_async(traefik::Traefik, &["apply"], tests::config_path()).await,
        run_stage_async(cert_manager::CertManager, &["apply"], tests::config_path()).await,
        run_stage_async(envoy_gateway::EnvoyGateway, &["apply"], tests::config_path()).await,
    ] {
        assert_eq!(code, ExitCode::SUCCESS, "{out}");
    }
    let (code, out) = run_stage_async(Workloads, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");

    let client = lab_client().await?;
    let whoami = Api::<Deployment>::namespaced(client.clone(), WHOAMI).get(WHOAMI).await?;
    let spec = whoami.spec.unwrap_or_default();
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.unwrap_or_default();
    assert_eq!(pod.security_context.and_then(|s| s.run_as_non_root), Some(true));
    let limits = pod.containers[0].resources.clone().unwrap_or_default().limits.unwrap_or_default();
    assert!(limits.contains_key("cpu") && limits.contains_key("memory"), "{limits:?}");

    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), DEMO, &workloads::routes::http_route_resource());
    let demo = routes.get(DEMO).await?;
    assert_eq!(demo.data["spec"]["hostnames"][0], "demo.172.16.16.102.sslip.io");
    assert_eq!(demo.data["spec"]["parentRefs"][0]["name"], kit::names::GATEWAY);
    let weights: Vec<&serde_json::Value> =
        demo.data["spec"]["rules"][1]["backendRefs"].as_array().into_iter().flatten().map(|b| &b["weight"]).collect();
    assert_eq!(weights, [&serde_json::json!(90), &serde_json::json!(10)]);

    // KubeInvaders may delete pods in its target namespace and nowhere else.
    let role = Api::<Role>::namespaced(client.clone(), TARGETS).get("kubeinvaders").await?;
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].resources.as_deref(), Some(&["pods".to_owned()][..]));
    assert!(Api::<Role>::namespaced(client.clone(), "default").get_opt("kubeinvaders").await?.is_none());

    let (code, again) = run_stage_async(Workloads, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<&str> = again.lines().filter(|l| !l.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");

    let (code, verify) = run_stage_async(Workloads, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    assert!(verify.contains("ok    objects: HTTPRoute demo: header x-demo-version and a 10% canary"), "{verify}");
    assert!(verify.contains("lab   persistence: not checkable in the lab"), "{verify}");
    Ok(())
}
