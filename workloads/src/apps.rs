//! The four sample apps, typed, each in its own namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DeploymentStrategy;
use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    ServiceAccount, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kit::config::ClusterConfig;
use kit::manifest::to_dynamic;
use kube::api::{DynamicObject, ObjectMeta};

use crate::pods::{APP_PORT, App, metadata, namespace};
use crate::routes::{Backend, HeaderMatch, Match, Rule, http_route};

pub const WHOAMI: &str = "whoami";
pub const DEMO: &str = "demo";
pub const KUBEINVADERS: &str = "kubeinvaders";
/// The namespace whose pods KubeInvaders may shoot: nothing else.
pub const TARGETS: &str = "kubeinvaders-targets";
/// How many pods wait there to be shot.
pub const VICTIMS: usize = 4;
pub const NOTES: &str = "notes";
/// The header that picks the demo's version (the split Ingress cannot express).
pub const DEMO_HEADER: &str = "x-demo-version";
/// Of the demo's traffic without the header, this share goes to v2: a canary.
pub const CANARY_PERCENT: u32 = 10;
/// The file the stateful app writes once, on its first start, and serves ever after.
pub const FIRST_BOOT_FILE: &str = "first-boot";

fn scratch(name: &str, path: &str) -> (Volume, VolumeMount) {
    (
        Volume { name: name.to_owned(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
        VolumeMount { name: name.to_owned(), mount_path: path.to_owned(), ..VolumeMount::default() },
    )
}

/// whoami behind Traefik (the legacy path), over HTTPS with a CA certificate.
pub fn whoami(config: &ClusterConfig) -> anyhow::Result<Vec<DynamicObject>> {
    let app = App {
        namespace: WHOAMI,
        name: WHOAMI,
        image: "docker.io/traefik/whoami:v1.10.3",
        command: vec![],
        args: vec!["--port".into(), APP_PORT.to_string()],
        replicas: 3,
        // A 100m limit: lower ones throttle (CFS) and add latency under any load.
        requests: ("50m", "16Mi"),
        non_root: true,
        volumes: vec![],
        service_account: None,
        env: vec![],
    };
    let host = kit::certs::legacy_host(config, WHOAMI);
    Ok(vec![
        to_dynamic(&namespace(WHOAMI, "restricted"))?,
        to_dynamic(&app.deployment())?,
        to_dynamic(&app.service())?,
        to_dynamic(&kit::certs::service_certificate(WHOAMI, WHOAMI, vec![host.clone()]))?,
        to_dynamic(&kit::certs::traefik_ingress(WHOAMI, WHOAMI, &host, WHOAMI, 80))?,
    ])
}

fn echo(version: &str) -> App<'static> {
    let name: &'static str = if version == "v1" { "demo-v1" } else { "demo-v2" };
    App {
        namespace: DEMO,
        name,
        image: "docker.io/hashicorp/http-echo:1.0.0",
        command: vec![],
        args: vec![format!("-listen=:{APP_PORT}"), format!("-text=demo {version}")],
        replicas: 2,
        requests: ("10m", "16Mi"),
        non_root: true,
        volumes: vec![],
        service_account: None,
        env: vec![],
    }
}

/// Two versions of a demo behind the Envoy Gateway (the modern path): the header
/// `x-demo-version: v2` always reaches v2; other requests split 90/10 between v1 and v2.
pub fn demo(config: &ClusterConfig) -> anyhow::Result<Vec<DynamicObject>> {
    let (v1, v2) = (echo("v1"), echo("v2"));
    let host = config.service_host(DEMO, config.envoy_gateway_ip);
    let route = http_route(
        DEMO,
        DEMO,
        host,
        vec![
            Rule {
                matches: vec![Match { headers: vec![HeaderMatch { name: DEMO_HEADER.into(), value: "v2".into() }] }],
                backend_refs: vec![Backend::service(v2.name, 1)],
            },
            Rule {
                matches: vec![],
                backend_refs: vec![
                    Backend::service(v1.name, 100 - CANARY_PERCENT),
                    Backend::service(v2.name, CANARY_PERCENT),
                ],
            },
        ],
    );
    Ok(vec![
        to_dynamic(&namespace(DEMO, "restricted"))?,
        to_dynamic(&v1.deployment())?,
        to_dynamic(&v1.service())?,
        to_dynamic(&v2.deployment())?,
        to_dynamic(&v2.service())?,
        to_dynamic(&route)?,
    ])
}

/// KubeInvaders behind the Envoy Gateway. Its ServiceAccount may list and delete pods in
/// one namespace only, which holds a few victims (pause containers); it may also read its own
/// namespace's pods (its metrics and logs loops list them) and nodes (the page shows nodes as
/// aliens). It may not create Jobs, so the chaos-job and programming modes stay off.
pub fn kubeinvaders(config: &ClusterConfig) -> anyhow::Result<Vec<DynamicObject>> {
    let host = config.service_host(KUBEINVADERS, config.envoy_gateway_ip);
    // The image runs nginx as root and writes to its filesystem: baseline, not restricted.
    let game = App {
        namespace: KUBEINVADERS,
        name: KUBEINVADERS,
        image: "docker.io/luckysideburn/kubeinvaders:v1.9.6",
        command: vec![],
        args: vec![],
        replicas: 1,
        // redis, two Python loops and OpenResty in one container: 512Mi of limit.
        requests: ("100m", "256Mi"),
        non_root: false,
        volumes: vec![],
        service_account: Some(KUBEINVADERS),
        // The only variables the image reads (nginx/nginx.conf declares `env ENDPOINT; env
        // NAMESPACE;`): the page calls `https://<ENDPOINT>/kube/…`, so the host without scheme.
        env: vec![("ENDPOINT", host.clone()), ("NAMESPACE", TARGETS.to_owned())],
    };
    let victims = App {
        namespace: TARGETS,
        name: "victim",
        image: "registry.k8s.io/pause:3.10",
        command: vec![],
        args: vec![],
        replicas: i32::try_from(VICTIMS).unwrap_or(4),
        requests: ("5m", "8Mi"),
        non_root: true,
        volumes: vec![],
        service_account: None,
        env: vec![],
    };
    let pods = |verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["pods".into()]),
        verbs: verbs.iter().map(|verb| (*verb).to_owned()).collect(),
        ..PolicyRule::default()
    };
    let shoot = namespaced_role(TARGETS, KUBEINVADERS, pods(&["get", "list", "watch", "delete"]));
    let own = namespaced_role(KUBEINVADERS, KUBEINVADERS, pods(&["get", "list"]));
    let nodes = ClusterRole {
        metadata: ObjectMeta { name: Some(KUBEINVADERS_NODES.into()), ..ObjectMeta::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["nodes".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..PolicyRule::default()
        }]),
        ..ClusterRole::default()
    };
    let nodes_binding = ClusterRoleBinding {
        metadata: nodes.metadata.clone(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: KUBEINVADERS_NODES.into(),
        },
        subjects: Some(vec![kubeinvaders_account()]),
    };
    let route = http_route(
        KUBEINVADERS,
        KUBEINVADERS,
        host,
        vec![Rule { matches: vec![], backend_refs: vec![Backend::service(KUBEINVADERS, 1)] }],
    );
    let mut objects = vec![
        to_dynamic(&namespace(KUBEINVADERS, "baseline"))?,
        to_dynamic(&namespace(TARGETS, "restricted"))?,
        to_dynamic(&ServiceAccount { metadata: metadata(KUBEINVADERS, KUBEINVADERS), ..ServiceAccount::default() })?,
    ];
    for (role, binding) in [shoot, own] {
        objects.push(to_dynamic(&role)?);
        objects.push(to_dynamic(&binding)?);
    }
    objects.extend([
        to_dynamic(&nodes)?,
        to_dynamic(&nodes_binding)?,
        to_dynamic(&game.deployment())?,
        to_dynamic(&game.service())?,
        to_dynamic(&victims.deployment())?,
        to_dynamic(&route)?,
    ]);
    Ok(objects)
}

/// The ClusterRole that lets KubeInvaders read nodes, and nothing else cluster-wide.
pub const KUBEINVADERS_NODES: &str = "kubeinvaders-nodes-read";

fn kubeinvaders_account() -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: KUBEINVADERS.into(),
        namespace: Some(KUBEINVADERS.into()),
        ..Subject::default()
    }
}

/// A Role in `namespace` with one rule, bound to KubeInvaders' ServiceAccount.
fn namespaced_role(namespace: &str, name: &str, rule: PolicyRule) -> (Role, RoleBinding) {
    let metadata = ObjectMeta { name: Some(name.into()), namespace: Some(namespace.into()), ..ObjectMeta::default() };
    let role = Role { metadata: metadata.clone(), rules: Some(vec![rule]) };
    let binding = RoleBinding {
        metadata,
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: name.into() },
        subjects: Some(vec![kubeinvaders_account()]),
    };
    (role, binding)
}

/// A stateful app on a Longhorn volume (three replicas): on its first start it writes the
/// time to a file, and it serves that file ever after. A new pod on another node still
/// serves the first pod's file: the data outlived the pod.
pub fn notes() -> anyhow::Result<Vec<DynamicObject>> {
    let claim = PersistentVolumeClaim {
        metadata: metadata(NOTES, NOTES),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(kit::names::STORAGE_CLASS.into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), Quantity("256Mi".to_owned()))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    let data = (
        Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: NOTES.into(),
                read_only: None,
            }),
            ..Volume::default()
        },
        VolumeMount { name: "data".into(), mount_path: "/data".into(), ..VolumeMount::default() },
    );
    let app = App {
        namespace: NOTES,
        name: NOTES,
        image: "docker.io/library/busybox:1.37",
        command: vec!["sh".into(), "-c".into()],
        args: vec![format!(
            "[ -f /data/{FIRST_BOOT_FILE} ] || date -u > /data/{FIRST_BOOT_FILE}; exec httpd -f -p {APP_PORT} -h /data"
        )],
        // One writer: a ReadWriteOnce volume is attached to one node at a time.
        replicas: 1,
        requests: ("10m", "16Mi"),
        non_root: true,
        volumes: vec![data, scratch("tmp", "/tmp")],
        service_account: None,
        env: vec![],
    };
    let mut deployment = app.deployment();
    // The old pod must let go of the volume before the new one can attach it.
    if let Some(spec) = deployment.spec.as_mut() {
        spec.strategy = Some(DeploymentStrategy { type_: Some("Recreate".into()), ..DeploymentStrategy::default() });
    }
    Ok(vec![
        to_dynamic(&namespace(NOTES, "restricted"))?,
        to_dynamic(&claim)?,
        to_dynamic(&deployment)?,
        to_dynamic(&app.service())?,
    ])
}
