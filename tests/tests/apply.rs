//! The apply engine against the lab: a real upstream bundle, idempotence, plan and diffs.

use k8s_openapi::api::core::v1::ConfigMap;
use kit::apply::Engine;
use kit::manifest::{lab_transform, parse_manifest, to_dynamic};
use kit::report::Action;
use kube::api::{Api, DeleteParams, ObjectMeta};
use tests::lab_client;

fn upstream_manifest(relative: &str) -> String {
    let path = tests::upstream_mirror().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn an_upstream_bundle_applies_in_order_and_a_second_apply_changes_nothing() -> anyhow::Result<()> {
    let client = lab_client().await?;
    // Envoy Gateway's CRDs are far larger than client-side apply's annotation allows.
    let mut objects = parse_manifest(
        "install.yaml",
        &upstream_manifest(&format!("envoy-gateway/{}/install.yaml", tests::config().versions.envoy_gateway)),
    )?;
    // Its certgen Job has ttlSecondsAfterFinished: the cluster deletes it 30 s after it
    // completes, so a later apply rightly creates it again. It is no part of this check.
    objects.retain(|object| object.data.pointer("/spec/ttlSecondsAfterFinished").is_none());
    let notes = lab_transform(&mut objects);
    assert!(notes.iter().any(|n| n.contains("MutatingWebhookConfiguration")), "{notes:?}");
    let mut engine = Engine::new(client.clone(), "apply-test").await?;
    let first = engine.apply(&objects).await?;
    assert_eq!(first.len(), objects.len());
    assert!(first.iter().all(|c| c.action != Action::Configured || c.diff.is_some()));
    let second = engine.apply(&objects).await?;
    let changed: Vec<_> = second.iter().filter(|c| c.action != Action::Unchanged).map(ToString::to_string).collect();
    assert!(changed.is_empty(), "a second apply must change nothing: {changed:?}");
    Ok(())
}

#[tokio::test]
async fn plan_shows_a_field_diff_and_changes_nothing() -> anyhow::Result<()> {
    let client = lab_client().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let _ = config_maps.delete("plan-probe", &DeleteParams::default()).await;
    let object = |replicas: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some("plan-probe".into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        data: Some([("replicas".to_owned(), replicas.to_owned())].into()),
        ..ConfigMap::default()
    };
    let mut engine = Engine::new(client.clone(), "plan-test").await?;
    let planned = engine.plan(&[to_dynamic(&object("2"))?]).await?;
    assert_eq!(planned[0].action, Action::Created);
    assert!(config_maps.get_opt("plan-probe").await?.is_none(), "a plan creates nothing");

    engine.apply(&[to_dynamic(&object("2"))?]).await?;
    let planned = engine.plan(&[to_dynamic(&object("3"))?]).await?;
    assert_eq!(planned[0].action, Action::Configured);
    assert_eq!(planned[0].diff.as_deref(), Some("~ data.replicas: \"2\" → \"3\""));
    let stored = config_maps.get("plan-probe").await?;
    assert_eq!(stored.data.unwrap_or_default().get("replicas").map(String::as_str), Some("2"), "plan changed nothing");
    config_maps.delete("plan-probe", &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn an_unknown_kind_names_the_object_and_the_likely_cause() -> anyhow::Result<()> {
    let client = lab_client().await?;
    let objects = parse_manifest(
        "unknown.yaml",
        "apiVersion: example.talos-ha.dev/v1\nkind: Widget\nmetadata: {name: w, namespace: default}\n",
    )?;
    let mut engine = Engine::new(client, "unknown-test").await?;
    let error = engine.apply(&objects).await.expect_err("no such kind").to_string();
    assert!(error.contains("Widget default/w") && error.contains("CRD"), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_custom_resource_applied_right_after_its_crd_waits_for_it_to_be_established() -> anyhow::Result<()> {
    let client = lab_client().await?;
    // A fresh group each run: the CRD is new, so it cannot be Established yet when the custom
    // resource follows straight after (a stage's own objects after its upstream bundle).
    let group = format!("t{}.talos-ha.dev", std::process::id());
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: gadgets.{group}}}\n\
         spec:\n  group: {group}\n  scope: Cluster\n  names: {{plural: gadgets, singular: gadget, kind: Gadget}}\n  \
         versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        \
         type: object\n        x-kubernetes-preserve-unknown-fields: true\n"
    );
    let gadget = format!("apiVersion: {group}/v1\nkind: Gadget\nmetadata: {{name: g}}\nspec: {{size: 3}}\n");
    let mut engine = Engine::new(client.clone(), "crd-then-cr-test").await?;
    engine.apply(&parse_manifest("crd.yaml", &crd)?).await?;
    let changes = engine.apply(&parse_manifest("gadget.yaml", &gadget)?).await?;
    assert_eq!(changes[0].action, Action::Created, "{changes:?}");
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client);
    crds.delete(&format!("gadgets.{group}"), &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn a_dropped_field_is_pruned_and_drift_is_repaired_before_applies_go_quiet() -> anyhow::Result<()> {
    let client = lab_client().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let _ = config_maps.delete("prune-probe", &DeleteParams::default()).await;
    let wanted = |pairs: &[(&str, &str)]| ConfigMap {
        metadata: ObjectMeta {
            name: Some("prune-probe".into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        data: Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
        ..ConfigMap::default()
    };
    let data = |map: ConfigMap| map.data.unwrap_or_default();
    let mut engine = Engine::new(client.clone(), "prune-test").await?;

    engine.apply(&[to_dynamic(&wanted(&[("a", "1"), ("b", "2")]))?]).await?;
    let changes = engine.apply(&[to_dynamic(&wanted(&[("a", "1")]))?]).await?;
    assert_eq!(changes[0].action, Action::Configured, "dropping b is a change");
    assert!(!data(config_maps.get("prune-probe").await?).contains_key("b"), "b is pruned from the server");

    // Someone else edits a field the stage owns: the next apply puts it back.
    let edit = serde_json::json!({ "data": { "a": "9" } });
    config_maps.patch("prune-probe", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&edit)).await?;
    let changes = engine.apply(&[to_dynamic(&wanted(&[("a", "1")]))?]).await?;
    assert_eq!(changes[0].action, Action::Configured, "drift is repaired");
    assert_eq!(data(config_maps.get("prune-probe").await?).get("a").map(String::as_str), Some("1"));

    let quiet = engine.apply(&[to_dynamic(&wanted(&[("a", "1")]))?]).await?;
    assert_eq!(quiet[0].action, Action::Unchanged);
    config_maps.delete("prune-probe", &DeleteParams::default()).await?;
    Ok(())
}

/// Audit U8: on a real cluster, a component's admission webhook refuses calls for a few seconds
/// after its install (`failed calling webhook`), and the objects it validates must wait it
/// out. Here a webhook whose endpoint is a closed port refuses for real, in the real API
/// server; a plain apply fails on it, `apply_through_webhook` retries until it is gone.
#[tokio::test]
async fn apply_through_webhook_waits_out_a_webhook_that_refuses_then_goes() -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
    };
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    const NAME: &str = "talos-ha-test-refusing";
    const NAMESPACE: &str = "webhook-warmup";
    let client = lab_client().await?;
    let label = ("talos-ha-test".to_owned(), "webhook".to_owned());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            labels: Some([label.clone()].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Engine::new(client.clone(), "apply-test").await?.apply(&[to_dynamic(&namespace)?]).await?;
    let webhook = ValidatingWebhookConfiguration {
        metadata: ObjectMeta { name: Some(NAME.into()), ..Default::default() },
        webhooks: Some(vec![ValidatingWebhook {
            name: "refuse.talos-ha.test".into(),
            client_config: WebhookClientConfig {
                url: Some("https://127.0.0.1:9/validate".into()),
                ..Default::default()
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                resources: Some(vec!["configmaps".into()]),
                ..Default::default()
            }]),
            namespace_selector: Some(LabelSelector { match_labels: Some([label].into()), ..Default::default() }),
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            admission_review_versions: vec!["v1".into()],
            ..Default::default()
        }]),
    };
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let _ = webhooks.delete(NAME, &DeleteParams::default()).await;
    webhooks.create(&Default::default(), &webhook).await?;

    let config_map = |name: &str| {
        let object = ConfigMap {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(NAMESPACE.into()), ..Default::default() },
            data: Some([("checked".to_owned(), "by the webhook".to_owned())].into()),
            ..Default::default()
        };
        to_dynamic(&object)
    };
    // Each API server picks the new webhook up from its informer: within moments a write fails.
    let mut engine = Engine::new(client.clone(), "apply-test").await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut attempt = 0;
    let refused = loop {
        attempt += 1;
        if let Err(error) = engine.apply(&[config_map(&format!("before-{attempt}"))?]).await {
            break format!("{error:#}");
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the webhook never refused a write");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert!(refused.contains("failed calling webhook"), "{refused}");

    let gone = tokio::spawn({
        let webhooks = webhooks.clone();
        async move {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            webhooks.delete(NAME, &DeleteParams::default()).await
        }
    });
    let started = std::time::Instant::now();
    let changes = engine.apply_through_webhook(&[config_map("after")?], "the test's").await?;
    gone.await??;
    assert_eq!(changes[0].action, Action::Created, "{changes:?}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(4), "it waited for the webhook to go");
    Api::<Namespace>::all(client).delete(NAMESPACE, &DeleteParams::default()).await?;
    Ok(())
}

/// Audit U3: an upgrade, as a changed `versions:` pin brings one. The second version of a
/// bundle changes an image and drops an object: apply rolls the Deployment out to the new
/// image (the wait follows the new ReplicaSet) and leaves the dropped object, which plan then
/// reports as left over, with the command that deletes it.
#[tokio::test]
async fn an_upgrade_rolls_out_and_plan_reports_what_the_new_bundle_dropped() -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Namespace;

    const NAMESPACE: &str = "upgrade-test";
    let client = lab_client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace =
        Namespace { metadata: ObjectMeta { name: Some(NAMESPACE.into()), ..Default::default() }, ..Default::default() };
    let config_map = |name: &str| -> anyhow::Result<kube::api::DynamicObject> {
        let object = ConfigMap {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(NAMESPACE.into()), ..Default::default() },
            data: Some([("release".to_owned(), "any".to_owned())].into()),
            ..Default::default()
        };
        to_dynamic(&object)
    };
    let deployment = |image: &str| -> anyhow::Result<kube::api::DynamicObject> {
        let object: Deployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "app", "namespace": NAMESPACE },
            "spec": {
                "replicas": 2,
                "selector": { "matchLabels": { "app": "app" } },
                "template": {
                    "metadata": { "labels": { "app": "app" } },
                    "spec": { "containers": [{ "name": "app", "image": image }] },
                },
            },
        }))?;
        to_dynamic(&object)
    };
    let first = vec![
        to_dynamic(&namespace)?,
        config_map("kept")?,
        config_map("dropped")?,
        deployment("registry.k8s.io/pause:3.9")?,
    ];
    let second = vec![to_dynamic(&namespace)?, config_map("kept")?, deployment("registry.k8s.io/pause:3.10")?];
    let mut engine = Engine::new(client.clone(), "upgrade-test").await?;
    engine.apply(&first).await?;
    kit::wait::deployment_available(&client, NAMESPACE, "app", std::time::Duration::from_secs(60)).await?;

    let upgraded = engine.apply(&second).await?;
    let app =
        upgraded.iter().find(|change| change.object == format!("Deployment {NAMESPACE}/app")).expect("the Deployment");
    assert_eq!(app.action, Action::Configured, "{app}");
    assert!(app.diff.as_deref().is_some_and(|diff| diff.contains("pause:3.10")), "{app}");
    kit::wait::deployment_available(&client, NAMESPACE, "app", std::time::Duration::from_secs(60)).await?;
    let rolled = Api::<Deployment>::namespaced(client.clone(), NAMESPACE).get("app").await?;
    let status = rolled.status.clone().unwrap_or_default();
    assert_eq!(status.observed_generation, rolled.metadata.generation, "the controller saw the new version");
    assert_eq!((status.updated_replicas, status.available_replicas), (Some(2), Some(2)), "{status:?}");

    let planned = engine.plan(&second).await?;
    let leftovers: Vec<String> =
        planned.iter().filter(|change| change.action == Action::Leftover).map(ToString::to_string).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert!(leftovers[0].starts_with("leftover    ConfigMap upgrade-test/dropped"), "{leftovers:?}");
    assert!(leftovers[0].contains("kubectl delete -n upgrade-test configmaps dropped"), "{leftovers:?}");
    assert!(planned.iter().all(|change| change.action == Action::Unchanged || change.action == Action::Leftover));
    namespaces.delete(NAMESPACE, &DeleteParams::default()).await?;
    Ok(())
}
