//! Stage 08: Envoy Gateway, the seed's "modern" path: the Gateway API, served by Envoy on
//! `envoyGateway.ip` (.102). The pinned release manifest (its CRDs far beyond what
//! client-side apply can carry), then our EnvoyProxy, GatewayClass and Gateway
//! (`gateway.rs`). The lesson is in README.md.

pub mod gateway;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kit::artifacts::Component;
use kit::bundle::{Bundle, BundleStage, Part, Ready};
use kit::check::{addresses, common, exposure};
use kit::context::{Context, Target};
use kit::report::Check;
use kube::api::{Api, DynamicObject};

pub use gateway::{NAME, NAMESPACE};

const MANIFEST: &str = "install.yaml";
/// The controller's Deployment.
pub const CONTROLLER: &str = "envoy-gateway";
/// The release's one-off Job that makes the controller's TLS Secrets.
const CERTGEN_JOB: &str = "eg-gateway-helm-certgen";

pub struct EnvoyGateway;

/// The release manifest, its certgen Job kept after it finishes: upstream lets the cluster
/// delete it 30 s after completion, and every later apply would then run it again. When the
/// Job changes (a new `versions.envoyGateway`, a new image), the engine replaces it, since a
/// Job's pod template is immutable: certgen then runs for the new version, as upstream's
/// pre-upgrade hook would.
pub fn release(ctx: &Context) -> anyhow::Result<Part> {
    Part::upstream(ctx, Component::EnvoyGateway, MANIFEST)?.patch::<Job>(CERTGEN_JOB, |job| {
        if let Some(spec) = job.spec.as_mut() {
            spec.ttl_seconds_after_finished = None;
        }
    })
}

/// Waits for a Gateway API object's condition (`Accepted`, `Programmed`) to be True.
async fn condition_check(
    client: &kube::Client,
    kind: &str,
    plural: &str,
    namespace: Option<&str>,
    condition: &str,
) -> Check {
    let resource = kit::names::gateway_api_resource(kind, plural);
    let name = format!("{} {condition}", kind.to_lowercase());
    match kit::wait::condition_true(client, &resource, namespace, NAME, condition, Duration::from_secs(120)).await {
        Ok(()) => Check::pass(name, format!("{kind} {NAME} is {condition}")),
        Err(error) => {
            Check::fail(name, format!("{error:#}"), "`kubectl -n envoy-gateway-system logs deploy/envoy-gateway`")
        }
    }
}

/// The Gateway's status address is `envoyGateway.ip`.
async fn address_check(client: &kube::Client, ctx: &Context) -> anyhow::Result<Check> {
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &kit::names::gateway_api_resource("Gateway", "gateways"));
    let ip = ctx.config.envoy_gateway_ip.to_string();
    let stored = gateways.get(NAME).await?;
    let addresses: Vec<String> = stored.data["status"]["addresses"]
        .as_array()
        .map(|list| list.iter().filter_map(|a| a["value"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    Ok(if addresses.contains(&ip) {
        Check::pass("address", format!("Gateway {NAME} is served on {ip} (envoyGateway.ip)"))
    } else {
        Check::fail(
            "address",
            format!("Gateway {NAME} reports addresses {addresses:?}, not {ip}"),
            "look at the Envoy Service in envoy-gateway-system and MetalLB's controller log",
        )
    })
}

/// Every listener of the Gateway reports its conditions True: `Programmed` alone is the
/// Gateway's, and stays True while the HTTPS listener's certificate is unresolved
/// (`ResolvedRefs` False).
async fn listeners_check(client: &kube::Client) -> anyhow::Result<Check> {
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &kit::names::gateway_api_resource("Gateway", "gateways"));
    let stored = gateways.get(NAME).await?;
    let listeners = stored.data["status"]["listeners"].as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for listener in &listeners {
        for condition in listener["conditions"].as_array().into_iter().flatten() {
            // Conflicted is the one condition whose healthy value is False.
            let healthy = if condition["type"] == "Conflicted" { "False" } else { "True" };
            if condition["status"] != healthy {
                let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
                problems.push(format!(
                    "listener {} {} is {}: {}",
                    text(&listener["name"]),
                    text(&condition["type"]),
                    text(&condition["status"]),
                    text(&condition["message"])
                ));
            }
        }
    }
    let names: Vec<&str> = listeners.iter().filter_map(|listener| listener["name"].as_str()).collect();
    Ok(if listeners.is_empty() {
        Check::fail(
            "listeners",
            format!("Gateway {NAME} reports no listener status yet"),
            "look at the controller's log",
        )
    } else if problems.is_empty() {
        Check::pass("listeners", format!("every condition of listeners {} is healthy", names.join(", ")))
    } else {
        Check::fail(
            "listeners",
            problems.join("; "),
            "`kubectl -n envoy-gateway-system describe gateway talos-ha`; an unresolved certificate ref: `cert-manager verify`",
        )
    })
}

impl BundleStage for EnvoyGateway {
    const NAME: &'static str = "envoy-gateway";
    const FOLDER: &'static str = "08-gateway-envoy";
    const TITLE: &'static str = "Stage 08: Envoy Gateway, the Gateway API on its fixed MetalLB address";
    const LESSON: &'static str = include_str!("../README.md");

    /// The release; once its controller runs, our EnvoyProxy, GatewayClass, Certificate and
    /// Gateway.
    fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle> {
        Ok(Bundle::new()
            .apply([release(ctx)?])
            .wait(Ready::deployment(NAMESPACE, CONTROLLER))
            .apply([Part::ours("gateway.yaml", gateway::all(&ctx.config)?)]))
    }

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let (mut checks, client) = common::cluster(ctx).await;
        let Some(client) = client else { return Ok(checks) };
        let ip = ctx.config.envoy_gateway_ip;
        checks.push(addresses::entrypoint_pool(&client, ip, "envoyGateway.ip").await?);
        let ours = |service: &Service| {
            let labels = service.metadata.labels.as_ref();
            labels.and_then(|labels| labels.get(gateway::OWNING_GATEWAY_NAME)).map(String::as_str) == Some(NAME)
        };
        checks.push(addresses::address_free(&client, ip, ours).await?);
        checks.push(exposure::ca_issuer(ctx, &client).await);
        Ok(checks)
    }

    async fn verify(&self, ctx: &Context, client: &kube::Client) -> anyhow::Result<Vec<Check>> {
        // What the lab can show too: the EnvoyProxy (its address annotation), the GatewayClass
        // (its parametersRef), the wildcard Certificate and the Gateway (listeners, hostname,
        // certificate ref) are stored as the config gives them.
        let ours = gateway::all(&ctx.config)?;
        let what = "EnvoyProxy, GatewayClass, Certificate and Gateway";
        let mut checks = vec![common::stored_as_configured(client, Self::NAME, &ours, what).await];
        if let Err(why) = common::controller_runs(ctx, client, Component::EnvoyGateway).await {
            // Nothing acts on the objects: nothing fake is made in its place.
            let why = format!("{why}: no Envoy Service or address is made");
            for name in ["gatewayclass Accepted", "gateway Programmed", "listeners", "address"] {
                checks.push(Check::not_checkable_in_lab(name, &why));
            }
            return Ok(checks);
        }
        checks.push(condition_check(client, "GatewayClass", "gatewayclasses", None, "Accepted").await);
        checks.push(condition_check(client, "Gateway", "gateways", Some(NAMESPACE), "Programmed").await);
        checks.push(listeners_check(client).await?);
        checks.push(common::certificate_ready(ctx, client, NAMESPACE, &gateway::certificate_name()).await);
        checks.push(address_check(client, ctx).await?);
        if ctx.target == Target::Lab {
            checks.push(Check::not_checkable_in_lab(
                "data path",
                format!("Envoy's pods are kwok's, so nothing in the box answers on {}", ctx.config.envoy_gateway_ip),
            ));
        }
        Ok(checks)
    }
}
