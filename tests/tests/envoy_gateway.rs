//! Stage 08 against the lab, through the same entry point as the `envoy-gateway` binary.

use std::process::ExitCode;

use envoy_gateway::{EnvoyGateway, NAME, NAMESPACE};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use tests::{lab_client, run_stage, run_stage_async};

/// verify's lines when Envoy Gateway's controller has reported on our objects (and cert-manager's
/// has issued the wildcard Certificate): what the box's real controllers make checkable.
const CONTROLLER_REPORTS: [&str; 5] = [
    "ok    gatewayclass Accepted: GatewayClass talos-ha is Accepted",
    "ok    gateway Programmed: Gateway talos-ha is Programmed",
    "ok    listeners: every condition of listeners http, https is healthy",
    "ok    certificate: Certificate envoy-gateway-system/talos-ha-gateway is Ready",
    "ok    address: Gateway talos-ha is served on 172.16.16.102 (envoyGateway.ip)",
];

#[tokio::test(flavor = "multi_thread")]
async fn apply_installs_the_gateway_api_and_our_gateway_and_a_rerun_changes_nothing() -> anyhow::Result<()> {
    for (code, out) in [
        run_stage_async(traefik::Traefik, &["apply"], tests::config_path()).await,
        run_stage_async(cert_manager::CertManager, &["apply"], tests::config_path()).await,
    ] {
        assert_eq!(code, ExitCode::SUCCESS, "{out}");
    }
    let (code, out) = run_stage_async(EnvoyGateway, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");

    let client = lab_client().await?;
    // CRDs larger than client-side apply's 256 KiB annotation limit went in, server-side.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let largest = crds
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|crd| crd.spec.group.ends_with("envoyproxy.io") || crd.spec.group == "gateway.networking.k8s.io")
        .map(|crd| serde_json::to_vec(&crd.spec).map(|bytes| bytes.len()).unwrap_or_default())
        .max()
        .unwrap_or_default();
    assert!(largest > 256 * 1024, "the largest stored CRD is {largest} bytes");

    let proxy: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NAMESPACE,
        &ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("gateway.envoyproxy.io", "v1alpha1", "EnvoyProxy"),
            "envoyproxies",
        ),
    );
    let kubernetes = proxy.get(NAME).await?.data["spec"]["provider"]["kubernetes"].clone();
    assert_eq!(kubernetes["envoyService"]["annotations"]["metallb.io/loadBalancerIPs"], "172.16.16.102");
    // Two Envoys, never on one node, and one kept through a drain.
    let spread = &kubernetes["envoyDeployment"]["pod"]["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["whenUnsatisfiable"], "DoNotSchedule");
    assert_eq!(spread["labelSelector"]["matchLabels"]["gateway.envoyproxy.io/owning-gateway-name"], NAME);
    assert_eq!(kubernetes["envoyPDB"]["minAvailable"], 1);
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &kit::names::gateway_api_resource("Gateway", "gateways"));
    let listeners = gateways.get(NAME).await?.data["spec"]["listeners"].clone();
    assert_eq!(listeners[0]["port"], 80);
    assert_eq!(listeners[1]["hostname"], "*.172.16.16.102.sslip.io");
    assert_eq!(listeners[1]["tls"]["certificateRefs"][0]["name"], "talos-ha-gateway-tls");
    let certgen = Api::<Job>::namespaced(client.clone(), NAMESPACE).get("eg-gateway-helm-certgen").await?;
    assert_eq!(certgen.spec.and_then(|spec| spec.ttl_seconds_after_finished), None, "kept after it finishes");

    let (code, again) = run_stage_async(EnvoyGateway, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<&str> = again.lines().filter(|l| !l.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");

    let (code, verify) = run_stage_async(EnvoyGateway, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    assert!(verify.contains(
        "ok    stored: EnvoyProxy, GatewayClass, Certificate and Gateway (4 objects) are stored as the config"
    ));
    // Envoy Gateway's controller runs in the box: it made the Gateway's Envoy Service, MetalLB's
    // controller gave that its address, and the Gateway reports it.
    let data_path = "lab   data path: not checkable in the lab: Envoy's pods are kwok's";
    for line in CONTROLLER_REPORTS.iter().chain([&data_path]) {
        assert!(verify.contains(line), "{line}\n{verify}");
    }

    certgen_is_replaced_when_it_changes(&client).await?;
    the_talos_verify_reads_what_the_controller_reports(&client).await
}

/// Audit U4 and U17: verify's checks of what the controller reports (GatewayClass Accepted,
/// Gateway Programmed, every listener's conditions, the wildcard Certificate, the address) as a
/// user runs them: on the Talos target from inside the box, against the box's real Envoy
/// Gateway and cert-manager controllers. An HTTPS listener whose certificate ref does not
/// resolve fails verify though the Gateway stays Programmed; apply puts the ref back.
async fn the_talos_verify_reads_what_the_controller_reports(client: &kube::Client) -> anyhow::Result<()> {
    use kube::api::Patch;
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &kit::names::gateway_api_resource("Gateway", "gateways"));
    let verify = || tokio::task::spawn_blocking(|| tests::run_stage_on_the_boxs_cluster(EnvoyGateway, &["verify"]));
    let (code, report) = verify().await??;
    assert_eq!(code, ExitCode::SUCCESS, "{report}");
    for line in CONTROLLER_REPORTS {
        assert!(report.contains(line), "{line}\n{report}");
    }

    // The HTTPS listener's certificate ref names a Secret that does not exist.
    let listeners = gateways.get(NAME).await?.data["spec"]["listeners"].clone();
    let https = listeners.as_array().and_then(|all| all.iter().position(|listener| listener["name"] == "https"));
    let https = https.ok_or_else(|| anyhow::anyhow!("no https listener: {listeners}"))?;
    let broken = serde_json::json!([{
        "op": "replace", "path": format!("/spec/listeners/{https}/tls/certificateRefs/0/name"), "value": "missing-tls",
    }]);
    gateways.patch(NAME, &Default::default(), &Patch::<()>::Json(serde_json::from_value(broken)?)).await?;
    let resolved = |wanted: &'static str| {
        let gateways = gateways.clone();
        move || {
            let gateways = gateways.clone();
            async move {
                let status = gateways.get(NAME).await?.data["status"]["listeners"].clone();
                let https =
                    status.as_array().and_then(|all| all.iter().find(|listener| listener["name"] == "https").cloned());
                let conditions = https.map(|listener| listener["conditions"].clone()).unwrap_or_default();
                let found = conditions
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|condition| condition["type"] == "ResolvedRefs" && condition["status"] == wanted);
                anyhow::Ok(found.then_some(()))
            }
        }
    };
    let wait = std::time::Duration::from_secs(60);
    tests::eventually(wait, "the controller reports the https listener's ref unresolved", resolved("False")).await?;
    let (code, report) = verify().await??;
    assert_eq!(code, ExitCode::from(1), "{report}");
    assert!(report.contains("ok    gateway Programmed"), "the Gateway alone looks fine: {report}");
    assert!(report.contains("FAIL  listeners: listener https ResolvedRefs is False"), "{report}");

    let (code, out) = run_stage_async(EnvoyGateway, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    tests::eventually(wait, "the controller reports the https listener's ref resolved", resolved("True")).await?;
    let (code, report) = verify().await??;
    assert_eq!(code, ExitCode::SUCCESS, "{report}");
    Ok(())
}

/// Add-ons review item 6: a new release changes the certgen Job's image; its pod template is
/// immutable, so the apply replaces the Job (and certgen runs for the new version), then the
/// stage's own apply puts the pinned one back, and a third run changes nothing.
async fn certgen_is_replaced_when_it_changes(client: &kube::Client) -> anyhow::Result<()> {
    const CERTGEN: &str = "eg-gateway-helm-certgen";
    const NEWER: &str = "docker.io/envoyproxy/gateway:v1.9.1";
    let jobs = Api::<Job>::namespaced(client.clone(), NAMESPACE);
    let image = |job: &Job| {
        job.spec.as_ref().and_then(|spec| spec.template.spec.as_ref()).and_then(|pod| pod.containers[0].image.clone())
    };
    let before = jobs.get(CERTGEN).await?;
    let ctx = kit::context::Context {
        config: tests::config(),
        target: kit::context::Target::Lab,
        verb: kit::context::Verb::Apply,
        kubeconfig: tests::kubeconfig(),
        mirror: Some(tests::upstream_mirror()),
        bootstrap: false,
        api_wait: kit::client::API_WAIT,
        rollout_timeout: None,
    };
    let newer = envoy_gateway::release(&ctx)?.patch::<Job>(CERTGEN, |job| {
        let pod = job.spec.as_mut().and_then(|spec| spec.template.spec.as_mut());
        pod.into_iter().flat_map(|pod| pod.containers.iter_mut()).for_each(|c| c.image = Some(NEWER.into()));
    })?;
    let changes = kit::apply::Engine::new(client.clone(), "envoy-gateway").await?.apply(newer.objects()).await?;
    let job = format!("Job {NAMESPACE}/{CERTGEN}");
    let replaced = changes.iter().find(|change| change.object == job).expect("the Job is among the changes");
    assert!(replaced.diff.as_deref().is_some_and(|diff| diff.contains("replaced")), "{replaced}");
    let after = jobs.get(CERTGEN).await?;
    assert_ne!(after.metadata.uid, before.metadata.uid, "a new Job");
    assert_eq!(image(&after).as_deref(), Some(NEWER));

    let (code, out) = run_stage_async(EnvoyGateway, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "the pinned Job replaces the changed one: {out}");
    assert_eq!(image(&jobs.get(CERTGEN).await?), image(&before));
    let (code, again) = run_stage_async(EnvoyGateway, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(again.lines().all(|line| line.starts_with("unchanged")), "{again}");
    Ok(())
}

#[test]
fn a_config_whose_address_is_outside_the_pool_fails_the_check_naming_it() -> anyhow::Result<()> {
    // Stage 02's pool is built from the repository's config; a config that moves
    // envoyGateway.ip to .103 does not match it.
    let (code, out) = run_stage(&metallb::Metallb, &["apply"], &tests::config_path());
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let dir = tempfile::tempdir()?;
    let config = xtask::scratch_config(&tests::config_path(), dir.path())?.source;
    let text = std::fs::read_to_string(&config)?.replace("ip: 172.16.16.102", "ip: 172.16.16.103");
    std::fs::write(&config, text)?;
    let kubeconfig = tests::kubeconfig().display().to_string();
    let (code, check) = run_stage(&EnvoyGateway, &["check", "--kubeconfig", &kubeconfig], &config);
    assert_eq!(code, ExitCode::from(1), "{check}");
    assert!(check.contains("but not envoyGateway.ip 172.16.16.103"), "{check}");
    assert!(check.contains("it builds the pool from cluster.yaml's envoyGateway.ip"), "{check}");
    Ok(())
}
