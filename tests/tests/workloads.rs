//! Stage 100 against the lab, through the same entry point as the `workloads` binary.

use std::process::ExitCode;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject};
use tests::{lab_client, run_stage_async};
use workloads::Workloads;
use workloads::apps::{DEMO, KUBEINVADERS, TARGETS, WHOAMI};

fn routes_in(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &workloads::routes::http_route_resource())
}

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

    let demo = routes_in(&client, DEMO).get(DEMO).await?;
    assert_eq!(demo.data["spec"]["hostnames"][0], "demo.172.16.16.102.sslip.io");
    assert_eq!(demo.data["spec"]["parentRefs"][0]["name"], kit::names::GATEWAY);
    let weights: Vec<&serde_json::Value> =
        demo.data["spec"]["rules"][1]["backendRefs"].as_array().into_iter().flatten().map(|b| &b["weight"]).collect();
    assert_eq!(weights, [&serde_json::json!(90), &serde_json::json!(10)]);

    // Both of the Gateway's listeners: KubeInvaders' page calls its API over https only.
    let listeners: Vec<&serde_json::Value> =
        demo.data["spec"]["parentRefs"].as_array().into_iter().flatten().map(|p| &p["sectionName"]).collect();
    assert_eq!(listeners, [&serde_json::json!("http"), &serde_json::json!("https")]);

    // KubeInvaders reads ENDPOINT (the host, no scheme) and NAMESPACE, nothing else.
    let game = Api::<Deployment>::namespaced(client.clone(), KUBEINVADERS).get(KUBEINVADERS).await?;
    let container = game.spec.unwrap_or_default().template.spec.unwrap_or_default().containers.remove(0);
    let env: Vec<(String, String)> =
        container.env.unwrap_or_default().into_iter().map(|var| (var.name, var.value.unwrap_or_default())).collect();
    assert_eq!(
        env,
        [
            ("ENDPOINT".to_owned(), "kubeinvaders.172.16.16.102.sslip.io".to_owned()),
            ("NAMESPACE".to_owned(), TARGETS.to_owned())
        ]
    );
    let memory = container.resources.unwrap_or_default().limits.unwrap_or_default()["memory"].0.clone();
    assert_eq!(memory, "512Mi");
    let invaders = routes_in(&client, KUBEINVADERS).get(KUBEINVADERS).await?;
    assert_eq!(invaders.data["spec"]["parentRefs"][1]["sectionName"], "https");

    // What KubeInvaders may do, asked of the API server's RBAC: shoot in its target
    // namespace only, read its own pods (its loops) and nodes, create nothing.
    let account = (KUBEINVADERS, KUBEINVADERS);
    let may = |verb: &'static str, resource: (&'static str, &'static str), namespace: Option<&'static str>| {
        let client = client.clone();
        async move { tests::service_account_may(&client, account, verb, resource, namespace).await }
    };
    assert!(may("delete", ("", "pods"), Some(TARGETS)).await?, "shoots its targets");
    assert!(may("list", ("", "pods"), Some(KUBEINVADERS)).await?, "its loops list its own pods");
    assert!(may("list", ("", "nodes"), None).await?, "node aliens");
    assert!(!may("delete", ("", "pods"), Some(KUBEINVADERS)).await?, "never shoots itself");
    assert!(!may("delete", ("", "pods"), Some("default")).await?, "nor anything else");
    assert!(!may("delete", ("", "nodes"), None).await?, "nodes are read-only");
    assert!(!may("create", ("batch", "jobs"), Some(KUBEINVADERS)).await?, "no chaos jobs");

    let (code, again) = run_stage_async(Workloads, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<&str> = again.lines().filter(|l| !l.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");

    let (code, verify) = run_stage_async(Workloads, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    assert!(verify.contains("ok    stored: the apps' objects ("), "{verify}");
    assert!(
        verify.contains(
            "ok    routed whoami: Ingress whoami → whoami.172.16.16.101.sslip.io → Service whoami:80 → 3 Ready pod(s)"
        ),
        "{verify}"
    );
    assert!(
        verify.contains(
            "ok    routed demo: HTTPRoute demo (demo.172.16.16.102.sslip.io) → Gateway talos-ha listener http; \
             Gateway talos-ha listener https; Service demo-v2:80 → 2 Ready pod(s); Service demo-v1:80 → 2 Ready pod(s)\n"
        ),
        "{verify}"
    );
    assert!(verify.contains("ok    routed kubeinvaders: HTTPRoute kubeinvaders"), "{verify}");
    assert!(
        verify.contains("ok    kubeinvaders rights: its ServiceAccount may delete pods in kubeinvaders-targets only")
    );
    assert!(verify.contains("lab   persistence: not checkable in the lab"), "{verify}");

    a_broken_link_and_wider_rights_fail_verify(&client).await
}

/// The same verify fails when a link of the graph breaks (the canary's Service selects
/// nothing) and when KubeInvaders is given rights beyond its targets; apply repairs the
/// first, deleting the extra binding the second.
async fn a_broken_link_and_wider_rights_fail_verify(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
    use kube::api::{Patch, PatchParams, PostParams};

    let services = Api::<Service>::namespaced(client.clone(), DEMO);
    let nothing = serde_json::json!({ "spec": { "selector": { "app.kubernetes.io/name": "nothing" } } });
    services.patch("demo-v2", &PatchParams::default(), &Patch::Merge(&nothing)).await?;
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), "kube-system");
    let wider = RoleBinding {
        metadata: kube::api::ObjectMeta { name: Some("talos-ha-test-wider".into()), ..Default::default() },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "edit".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: KUBEINVADERS.into(),
            namespace: Some(KUBEINVADERS.into()),
            ..Subject::default()
        }]),
    };
    bindings.create(&PostParams::default(), &wider).await?;
    let (code, verify) = run_stage_async(Workloads, &["verify"], tests::config_path()).await;
    bindings.delete("talos-ha-test-wider", &Default::default()).await?;
    assert_eq!(code, ExitCode::from(1), "{verify}");
    assert!(
        verify.contains("FAIL  routed demo: ")
            && verify.contains("Service demo/demo-v2 (app.kubernetes.io/name=nothing) selects no Ready pod"),
        "{verify}"
    );
    assert!(
        verify.contains("FAIL  stored: the apps' objects differ from the config: configured Service demo/demo-v2"),
        "{verify}"
    );
    assert!(
        verify.contains("FAIL  kubeinvaders rights: its ServiceAccount may delete pods in kube-system"),
        "{verify}"
    );

    let (code, repaired) = run_stage_async(Workloads, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{repaired}");
    let (code, verify) = run_stage_async(Workloads, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    Ok(())
}
