//! The building blocks every sample app shares: a namespace, a Deployment of one container
//! with requests, limits and a locked-down security context, and a Service in front of it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, Namespace, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec, TopologySpreadConstraint,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

/// The port every sample listens on inside its pod (unprivileged: the containers run as
/// non-root); Services expose it as 80.
pub const APP_PORT: i32 = 8080;
/// An unprivileged user for images that allow one.
const USER: i64 = 65532;

pub fn metadata(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels(name)),
        ..ObjectMeta::default()
    }
}

pub fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_owned(), app.to_owned())])
}

/// A namespace enforcing Pod Security `level` (`restricted` where the app allows it).
pub fn namespace(name: &str, level: &str) -> Namespace {
    let labels = ["enforce", "audit", "warn"]
        .into_iter()
        .map(|mode| (format!("pod-security.kubernetes.io/{mode}"), level.to_owned()))
        .collect();
    Namespace {
        metadata: ObjectMeta { name: Some(name.to_owned()), labels: Some(labels), ..ObjectMeta::default() },
        ..Namespace::default()
    }
}

/// One container: image, arguments, requests and limits.
pub struct App<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub image: &'a str,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub replicas: i32,
    /// (cpu, memory) requested; the limits are twice that.
    pub requests: (&'a str, &'a str),
    /// Runs as an unprivileged user with a read-only root, no capabilities; `false` only for
    /// images that need root (said where used).
    pub non_root: bool,
    pub volumes: Vec<(Volume, VolumeMount)>,
    pub service_account: Option<&'a str>,
    pub env: Vec<(&'a str, String)>,
}

impl App<'_> {
    pub fn deployment(&self) -> Deployment {
        let selector = LabelSelector { match_labels: Some(labels(self.name)), ..LabelSelector::default() };
        let double = |quantity: &str| {
            let (number, unit) =
                quantity.split_at(quantity.find(|c: char| !c.is_ascii_digit()).unwrap_or(quantity.len()));
            format!("{}{unit}", number.parse::<u32>().unwrap_or(1) * 2)
        };
        let (cpu, memory) = self.requests;
        let resources = ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity(cpu.to_owned())),
                ("memory".to_owned(), Quantity(memory.to_owned())),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity(double(cpu))),
                ("memory".to_owned(), Quantity(double(memory))),
            ])),
            ..ResourceRequirements::default()
        };
        let locked_down = SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Capabilities::default() }),
            ..SecurityContext::default()
        };
        let container = Container {
            name: self.name.to_owned(),
            image: Some(self.image.to_owned()),
            command: (!self.command.is_empty()).then(|| self.command.clone()),
            args: (!self.args.is_empty()).then(|| self.args.clone()),
            env: (!self.env.is_empty()).then(|| {
                self.env
                    .iter()
                    .map(|(name, value)| k8s_openapi::api::core::v1::EnvVar {
                        name: (*name).to_owned(),
                        value: Some(value.clone()),
                        ..Default::default()
                    })
                    .collect()
            }),
            ports: Some(vec![ContainerPort {
                name: Some("http".to_owned()),
                container_port: APP_PORT,
                ..ContainerPort::default()
            }]),
            resources: Some(resources),
            security_context: self.non_root.then_some(locked_down),
            volume_mounts: (!self.volumes.is_empty()).then(|| self.volumes.iter().map(|(_, m)| m.clone()).collect()),
            ..Container::default()
        };
        let pod_security = PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(USER),
            run_as_group: Some(USER),
            fs_group: Some(USER),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..SeccompProfile::default() }),
            ..PodSecurityContext::default()
        };
        Deployment {
            metadata: metadata(self.namespace, self.name),
            spec: Some(DeploymentSpec {
                replicas: Some(self.replicas),
                selector: selector.clone(),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some(labels(self.name)), ..ObjectMeta::default() }),
                    spec: Some(PodSpec {
                        service_account_name: self.service_account.map(str::to_owned),
                        security_context: self.non_root.then_some(pod_security),
                        // Replicas spread over nodes: losing one node keeps the app served.
                        topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                            max_skew: 1,
                            topology_key: "kubernetes.io/hostname".to_owned(),
                            when_unsatisfiable: "ScheduleAnyway".to_owned(),
                            label_selector: Some(selector),
                            ..TopologySpreadConstraint::default()
                        }]),
                        containers: vec![container],
                        volumes: (!self.volumes.is_empty())
                            .then(|| self.volumes.iter().map(|(v, _)| v.clone()).collect()),
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        }
    }

    /// A ClusterIP Service on port 80 in front of the app.
    pub fn service(&self) -> Service {
        Service {
            metadata: metadata(self.namespace, self.name),
            spec: Some(ServiceSpec {
                selector: Some(labels(self.name)),
                ports: Some(vec![ServicePort {
                    name: Some("http".to_owned()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".to_owned())),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }
}
