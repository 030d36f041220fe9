//! Traefik's own objects, typed: the upstream release ships only CRDs and RBAC for v3, so the
//! Deployment, its Service on the fixed address, the IngressClass and the rest are ours.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, Namespace, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{IngressClass, IngressClassSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kit::certs::{DEFAULT_CLASS_ANNOTATION, INGRESS_CONTROLLER};
use kit::config::ClusterConfig;
use kube::api::{DynamicObject, ObjectMeta};

pub use kit::names::TRAEFIK_NAMESPACE as NAMESPACE;
pub const NAME: &str = "traefik";
/// The upstream RBAC binds its ClusterRole to a ServiceAccount of this name.
pub const SERVICE_ACCOUNT: &str = "traefik-ingress-controller";
/// The IngressClass Ingresses name (or get by default): `spec.ingressClassName: traefik`.
pub use kit::certs::INGRESS_CLASS;
/// Unprivileged ports inside the pod: the container runs as a non-root user, which may not
/// bind below 1024. The Service maps 80 and 443 onto them.
const WEB_PORT: i32 = 8000;
const WEBSECURE_PORT: i32 = 8443;
/// Traefik's own entry point: `/ping` for the probes, never exposed by the Service.
const INTERNAL_PORT: i32 = 8080;
/// An unprivileged user id, as in Traefik's own chart.
const USER: i64 = 65532;

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_owned(), NAME.to_owned())])
}

fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(NAMESPACE.to_owned()),
        labels: Some(labels()),
        ..ObjectMeta::default()
    }
}

/// The namespace enforces Pod Security `restricted`: Traefik needs no privilege at all.
pub fn namespace() -> Namespace {
    let labels = ["enforce", "audit", "warn"]
        .into_iter()
        .map(|mode| (format!("pod-security.kubernetes.io/{mode}"), "restricted".to_owned()))
        .collect();
    Namespace {
        metadata: ObjectMeta { name: Some(NAMESPACE.to_owned()), labels: Some(labels), ..ObjectMeta::default() },
        ..Namespace::default()
    }
}

pub fn service_account() -> ServiceAccount {
    ServiceAccount { metadata: metadata(SERVICE_ACCOUNT), ..ServiceAccount::default() }
}

/// Traefik's static configuration, as flags.
pub fn args() -> Vec<String> {
    [
        format!("--entryPoints.web.address=:{WEB_PORT}/tcp"),
        format!("--entryPoints.websecure.address=:{WEBSECURE_PORT}/tcp"),
        format!("--entryPoints.traefik.address=:{INTERNAL_PORT}/tcp"),
        // Plain HTTP only ever answers with a permanent redirect to HTTPS on 443 (the
        // Service's port, not the container's).
        "--entryPoints.web.http.redirections.entryPoint.to=:443".to_owned(),
        "--entryPoints.web.http.redirections.entryPoint.scheme=https".to_owned(),
        "--entryPoints.web.http.redirections.entryPoint.permanent=true".to_owned(),
        "--entryPoints.websecure.http.tls=true".to_owned(),
        "--ping=true".to_owned(),
        "--ping.entryPoint=traefik".to_owned(),
        // Ingress objects of class `traefik` (the legacy path), and Traefik's own CRDs.
        "--providers.kubernetesingress=true".to_owned(),
        format!("--providers.kubernetesingress.ingressClass={INGRESS_CLASS}"),
        // Ingress status shows the Service's address, so `kubectl get ingress` shows .101.
        format!("--providers.kubernetesingress.ingressendpoint.publishedservice={NAMESPACE}/{NAME}"),
        "--providers.kubernetescrd=true".to_owned(),
        "--log.level=INFO".to_owned(),
        // No calls home from the cluster.
        "--global.checkNewVersion=false".to_owned(),
        "--global.sendAnonymousUsage=false".to_owned(),
    ]
    .into()
}

fn ping_probe() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ping".to_owned()),
            port: IntOrString::Int(INTERNAL_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// Two replicas, on workers only, never both on one node.
pub fn deployment(config: &ClusterConfig) -> Deployment {
    let image = format!("docker.io/library/traefik:{}", config.versions.traefik);
    let selector = LabelSelector { match_labels: Some(labels()), ..LabelSelector::default() };
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    let scratch = |name: &str| Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    };
    let workers_only = Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: kit::client::CONTROL_PLANE_ROLE.to_owned(),
                        operator: "DoesNotExist".to_owned(),
                        values: None,
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    };
    let container = Container {
        name: NAME.to_owned(),
        image: Some(image),
        args: Some(args()),
        ports: Some(vec![port("web", WEB_PORT), port("websecure", WEBSECURE_PORT), port("traefik", INTERNAL_PORT)]),
        readiness_probe: Some(ping_probe()),
        liveness_probe: Some(ping_probe()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("100m".to_owned())),
                ("memory".to_owned(), Quantity("128Mi".to_owned())),
            ])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Capabilities::default() }),
            ..SecurityContext::default()
        }),
        // A read-only root needs somewhere to write: its plugin and certificate data, /tmp.
        volume_mounts: Some(vec![mount("data", "/data"), mount("tmp", "/tmp")]),
        ..Container::default()
    };
    Deployment {
        metadata: metadata(NAME),
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: selector.clone(),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels()), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(SERVICE_ACCOUNT.to_owned()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(USER),
                        run_as_group: Some(USER),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    affinity: Some(workers_only),
                    // One replica per node: losing a worker loses at most one of them.
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        when_unsatisfiable: "DoNotSchedule".to_owned(),
                        label_selector: Some(selector),
                        ..TopologySpreadConstraint::default()
                    }]),
                    containers: vec![container],
                    volumes: Some(vec![scratch("data"), scratch("tmp")]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The entry point: a LoadBalancer Service that asks MetalLB for `traefik.ip` by address
/// (that address sits in the entry-point pool, which never hands it out unasked).
pub fn service(config: &ClusterConfig) -> Service {
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    };
    let mut meta = metadata(NAME);
    meta.annotations =
        Some(BTreeMap::from([(kit::names::METALLB_IP_ANNOTATION.to_owned(), config.traefik_ip.to_string())]));
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".to_owned()),
            selector: Some(labels()),
            ports: Some(vec![port("web", 80), port("websecure", 443)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The default IngressClass: an Ingress that names no class is served by Traefik.
pub fn ingress_class() -> IngressClass {
    IngressClass {
        metadata: ObjectMeta {
            name: Some(INGRESS_CLASS.to_owned()),
            annotations: Some(BTreeMap::from([(DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(IngressClassSpec { controller: Some(INGRESS_CONTROLLER.to_owned()), ..IngressClassSpec::default() }),
    }
}

/// Node drains (upgrades) take one replica at a time.
pub fn disruption_budget() -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(NAME),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(labels()), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// Our objects, in the order a reader meets them.
pub fn all(config: &ClusterConfig) -> anyhow::Result<Vec<DynamicObject>> {
    use kit::manifest::to_dynamic;
    Ok(vec![
        to_dynamic(&namespace())?,
        to_dynamic(&service_account())?,
        to_dynamic(&deployment(config))?,
        to_dynamic(&service(config))?,
        to_dynamic(&ingress_class())?,
        to_dynamic(&disruption_budget())?,
    ])
}
