//! Our Gateway API objects, typed: the EnvoyProxy that pins the data plane's Service to
//! `envoyGateway.ip`, the GatewayClass that points at it, the wildcard certificate, and the
//! Gateway with its HTTP and HTTPS listeners.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kit::config::ClusterConfig;
use kit::names::METALLB_IP_ANNOTATION;
use kube::api::{DynamicObject, ObjectMeta};
use serde::Serialize;

/// Where the controller runs, and where our Gateway lives; the GatewayClass, the EnvoyProxy
/// and the Gateway share one name.
pub use kit::names::{GATEWAY as NAME, GATEWAY_NAMESPACE as NAMESPACE};
const CONTROLLER: &str = "gateway.envoyproxy.io/gatewayclass-controller";
const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
/// Envoy runs twice, on two nodes, so a node going down keeps the path served.
pub const ENVOY_REPLICAS: u32 = 2;
/// The labels Envoy Gateway puts on the Envoy pods and Service of a Gateway.
pub const OWNING_GATEWAY_NAME: &str = "gateway.envoyproxy.io/owning-gateway-name";
pub const OWNING_GATEWAY_NAMESPACE: &str = "gateway.envoyproxy.io/owning-gateway-namespace";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Object<S: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    metadata: ObjectMeta,
    spec: S,
}

fn object<S: Serialize>(api_version: &'static str, kind: &'static str, namespace: Option<&str>, spec: S) -> Object<S> {
    let metadata =
        ObjectMeta { name: Some(NAME.to_owned()), namespace: namespace.map(str::to_owned), ..ObjectMeta::default() };
    Object { api_version, kind, metadata, spec }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvoyProxySpec {
    provider: Provider,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Provider {
    #[serde(rename = "type")]
    kind: &'static str,
    kubernetes: KubernetesProvider,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct KubernetesProvider {
    envoy_service: EnvoyService,
    envoy_deployment: EnvoyDeployment,
    #[serde(rename = "envoyPDB")]
    envoy_pdb: EnvoyPdb,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvoyService {
    #[serde(rename = "type")]
    kind: &'static str,
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
struct EnvoyDeployment {
    replicas: u32,
    pod: EnvoyPod,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvoyPod {
    topology_spread_constraints: Vec<TopologySpreadConstraint>,
}

/// At least one Envoy stays up through a drain or an upgrade.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvoyPdb {
    min_available: u32,
}

/// The Envoy pods of our Gateway (Envoy Gateway labels them with the Gateway they serve).
fn envoy_pod_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (OWNING_GATEWAY_NAME.to_owned(), NAME.to_owned()),
        (OWNING_GATEWAY_NAMESPACE.to_owned(), NAMESPACE.to_owned()),
    ])
}

/// One Envoy per node, never two on one: Envoy Gateway sets no spreading of its own
/// (api/v1alpha1/kubernetes_helpers.go, DefaultKubernetesPod), and its Service keeps
/// `externalTrafficPolicy: Local`, so only nodes with a ready Envoy announce the address.
/// Two Envoys on one worker would lose .102 with that worker.
fn one_envoy_per_node() -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".to_owned(),
        when_unsatisfiable: "DoNotSchedule".to_owned(),
        label_selector: Some(LabelSelector { match_labels: Some(envoy_pod_labels()), ..LabelSelector::default() }),
        ..TopologySpreadConstraint::default()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewayClassSpec {
    controller_name: &'static str,
    parameters_ref: ParametersRef,
}

#[derive(Debug, Clone, Serialize)]
struct ParametersRef {
    group: &'static str,
    kind: &'static str,
    name: &'static str,
    namespace: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewaySpec {
    gateway_class_name: &'static str,
    listeners: Vec<Listener>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listener {
    name: &'static str,
    port: u16,
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<ListenerTls>,
    allowed_routes: AllowedRoutes,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListenerTls {
    mode: &'static str,
    certificate_refs: Vec<SecretRef>,
}

#[derive(Debug, Clone, Serialize)]
struct SecretRef {
    kind: &'static str,
    name: String,
}

#[derive(Debug, Clone, Serialize)]
struct AllowedRoutes {
    namespaces: RouteNamespaces,
}

#[derive(Debug, Clone, Serialize)]
struct RouteNamespaces {
    from: &'static str,
}

/// `*.<envoyGateway.ip>.<domain>`: every name on the modern path.
pub fn wildcard_host(config: &ClusterConfig) -> String {
    config.service_host("*", config.envoy_gateway_ip)
}

/// The wildcard Certificate of the HTTPS listener.
pub fn certificate_name() -> String {
    format!("{NAME}-gateway")
}

/// The Secret the HTTPS listener serves: cert-manager makes it from the Certificate
/// `talos-ha-gateway` (see `kit::certs::service_certificate`).
fn tls_secret() -> String {
    format!("{}-tls", certificate_name())
}

/// Our objects, in the order they depend on each other.
pub fn all(config: &ClusterConfig) -> anyhow::Result<Vec<DynamicObject>> {
    use kit::manifest::to_dynamic;
    let annotations = BTreeMap::from([(METALLB_IP_ANNOTATION.to_owned(), config.envoy_gateway_ip.to_string())]);
    let proxy = object(
        "gateway.envoyproxy.io/v1alpha1",
        "EnvoyProxy",
        Some(NAMESPACE),
        EnvoyProxySpec {
            provider: Provider {
                kind: "Kubernetes",
                kubernetes: KubernetesProvider {
                    envoy_service: EnvoyService { kind: "LoadBalancer", annotations },
                    envoy_deployment: EnvoyDeployment {
                        replicas: ENVOY_REPLICAS,
                        pod: EnvoyPod { topology_spread_constraints: vec![one_envoy_per_node()] },
                    },
                    envoy_pdb: EnvoyPdb { min_available: 1 },
                },
            },
        },
    );
    let class = object(
        GATEWAY_API,
        "GatewayClass",
        None,
        GatewayClassSpec {
            controller_name: CONTROLLER,
            parameters_ref: ParametersRef {
                group: "gateway.envoyproxy.io",
                kind: "EnvoyProxy",
                name: NAME,
                namespace: NAMESPACE,
            },
        },
    );
    let everywhere = || AllowedRoutes { namespaces: RouteNamespaces { from: "All" } };
    let gateway = object(
        GATEWAY_API,
        "Gateway",
        Some(NAMESPACE),
        GatewaySpec {
            gateway_class_name: NAME,
            listeners: vec![
                Listener {
                    name: "http",
                    port: 80,
                    protocol: "HTTP",
                    hostname: None,
                    tls: None,
                    allowed_routes: everywhere(),
                },
                Listener {
                    name: "https",
                    port: 443,
                    protocol: "HTTPS",
                    hostname: Some(wildcard_host(config)),
                    tls: Some(ListenerTls {
                        mode: "Terminate",
                        certificate_refs: vec![SecretRef { kind: "Secret", name: tls_secret() }],
                    }),
                    allowed_routes: everywhere(),
                },
            ],
        },
    );
    // Its Secret is `<name>-tls`: the listener's certificate.
    let certificate = kit::certs::service_certificate(NAMESPACE, &certificate_name(), vec![wildcard_host(config)]);
    Ok(vec![to_dynamic(&proxy)?, to_dynamic(&class)?, to_dynamic(&certificate)?, to_dynamic(&gateway)?])
}
