//! The lab is the cluster in a box: these tests talk, through the forward on 127.0.0.1, to the
//! cluster stage 01 installed on the twins `cargo xtask test` started, and start their own
//! second boxes (another cluster name, other ports, a temporary state folder) for lifecycle
//! tests.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, Namespace, Node, Pod, PodSecurityContext, PodSpec, PodTemplateSpec,
    SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use lab::Lab;
use tests::{config, eventually, lab_client};

#[tokio::test]
async fn the_configs_nodes_are_ready_with_their_roles_and_addresses() -> anyhow::Result<()> {
    let client = lab_client().await?;
    let config = config();
    let nodes: Api<Node> = Api::all(client);
    for expected in &config.nodes {
        let node = nodes.get(&expected.name).await?;
        assert!(kit::client::is_ready(&node), "{} should be Ready", expected.name);
        let status = node.status.clone().unwrap_or_default();
        let internal_ip = status.addresses.unwrap_or_default().into_iter().find(|a| a.type_ == "InternalIP");
        assert_eq!(internal_ip.map(|a| a.address), Some(expected.ip.to_string()), "{} InternalIP", expected.name);
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let taints = node.spec.clone().unwrap_or_default().taints.unwrap_or_default();
        let is_control_plane = expected.role == kit::config::Role::ControlPlane;
        assert_eq!(
            labels.contains_key(kit::client::CONTROL_PLANE_ROLE),
            is_control_plane,
            "{} role label",
            expected.name
        );
        assert_eq!(
            taints.iter().any(|t| t.key == kit::client::CONTROL_PLANE_ROLE && t.effect == "NoSchedule"),
            is_control_plane,
            "{} control-plane taint",
            expected.name
        );
    }
    Ok(())
}

/// A pod that Pod Security's `restricted` level accepts (the lab enforces `baseline`).
fn restricted_pod(labels: &BTreeMap<String, String>) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels.clone()), ..ObjectMeta::default() }),
        spec: Some(PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: "whoami".into(),
                image: Some("traefik/whoami:v1.10".into()),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    }
}

#[tokio::test]
async fn a_deployment_is_scheduled_onto_workers_and_becomes_available() -> anyhow::Result<()> {
    let client = lab_client().await?;
    let namespace = "lab-test-deployment";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(namespace, &DeleteParams::default()).await;
    eventually(Duration::from_secs(60), "the old test namespace to go", || {
        let namespaces = namespaces.clone();
        async move { Ok(namespaces.get_opt(namespace).await?.is_none().then_some(())) }
    })
    .await?;
    let ns = Namespace {
        metadata: ObjectMeta { name: Some(namespace.into()), ..ObjectMeta::default() },
        ..Namespace::default()
    };
    namespaces.create(&PostParams::default(), &ns).await?;

    let labels = BTreeMap::from([("app".to_owned(), "whoami".to_owned())]);
    let deployment = Deployment {
        metadata: ObjectMeta { name: Some("whoami".into()), ..ObjectMeta::default() },
        spec: Some(DeploymentSpec {
            replicas: Some(3),
            selector: LabelSelector { match_labels: Some(labels.clone()), ..LabelSelector::default() },
            template: restricted_pod(&labels),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    deployments.create(&PostParams::default(), &deployment).await?;
    eventually(Duration::from_secs(60), "Deployment whoami to be Available with 3 replicas", || {
        let deployments = deployments.clone();
        async move {
            let status = deployments.get("whoami").await?.status.unwrap_or_default();
            let available =
                status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Available" && c.status == "True");
            Ok((available && status.available_replicas == Some(3)).then_some(()))
        }
    })
    .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let nodes: Api<Node> = Api::all(client.clone());
    let workers: Vec<String> = config().workers().map(|n| n.name.clone()).collect();
    for pod in pods.list(&ListParams::default().labels("app=whoami")).await? {
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        assert!(workers.contains(&node), "pod scheduled on {node}, which is not a worker");
        // Its address comes from the pod range the controller manager gave its node.
        let ip: std::net::IpAddr = pod.status.and_then(|s| s.pod_ip).unwrap_or_default().parse()?;
        let range: ipnet::IpNet = nodes.get(&node).await?.spec.and_then(|s| s.pod_cidr).unwrap_or_default().parse()?;
        assert!(range.contains(&ip), "pod IP {ip} is in {node}'s pod range {range}");
    }
    namespaces.delete(namespace, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn pod_security_enforces_baseline_outside_kube_system() -> anyhow::Result<()> {
    let client = lab_client().await?;
    let privileged = Pod {
        metadata: ObjectMeta { name: Some("privileged-probe".into()), ..ObjectMeta::default() },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "probe".into(),
                image: Some("busybox".into()),
                security_context: Some(SecurityContext { privileged: Some(true), ..SecurityContext::default() }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    let refused = Api::<Pod>::namespaced(client.clone(), "default").create(&dry_run, &privileged).await;
    let message = refused.expect_err("a privileged pod must be refused in `default`").to_string();
    assert!(message.contains("violates PodSecurity \"baseline"), "{message}");
    Api::<Pod>::namespaced(client, "kube-system").create(&dry_run, &privileged).await?;
    Ok(())
}

#[tokio::test]
async fn the_api_keeps_serving_writes_with_a_control_plane_off() -> anyhow::Result<()> {
    let client = lab_client().await?;
    let config = config();
    let lab = Lab::new(&config, lab::DEFAULT_PORT_BASE);
    // cp03 shuts down cleanly: its etcd member goes, and the VIP moves if it held it.
    lab.stop_twin("cp03")?;

    // A write needs a quorum: two of three members still make one.
    let config_maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let _ = config_maps.delete("quorum-probe", &DeleteParams::default()).await;
    let probe = ConfigMap {
        metadata: ObjectMeta { name: Some("quorum-probe".into()), ..ObjectMeta::default() },
        data: Some(BTreeMap::from([("members".to_owned(), "2 of 3".to_owned())])),
        ..ConfigMap::default()
    };
    // While the VIP moves or an API server's etcd client fails over, a request can fail (no
    // answer, or 500 Unavailable), as an HA client sees it; writes must succeed again within
    // seconds, and a refusal of any other kind fails the test at once.
    eventually(Duration::from_secs(30), "a write to succeed on the two remaining members", || {
        let (config_maps, probe) = (config_maps.clone(), probe.clone());
        async move {
            match config_maps.create(&PostParams::default(), &probe).await {
                // 409: an attempt reported as failed had committed; the read below checks it.
                Ok(_) => Ok(Some(())),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Some(())),
                Err(kube::Error::Api(status)) if status.code == 500 && status.message.contains("Unavailable") => {
                    Ok(None)
                }
                Err(kube::Error::Api(status)) => Err(anyhow::anyhow!("refused: {status:?}")),
                Err(_) => Ok(None),
            }
        }
    })
    .await?;
    let read = config_maps.get("quorum-probe").await?;
    assert_eq!(read.data.unwrap_or_default().get("members").map(String::as_str), Some("2 of 3"));
    config_maps.delete("quorum-probe", &DeleteParams::default()).await?;

    // `up` on a half-running lab starts only what is missing, and waits until cp03's node is
    // Ready again.
    lab.up().await?;
    let status = lab.status().await;
    let machine = status.iter().find(|c| c.name == "twin-cp03").expect("twin-cp03 in status");
    assert!(machine.healthy, "cp03 is back: {}", machine.detail);
    let cluster = status.iter().find(|c| c.name == "cluster").expect("the cluster in status");
    assert!(cluster.healthy, "every node Ready: {}", cluster.detail);
    Ok(())
}

#[test]
fn the_lab_kubeconfig_is_the_clusters_aimed_at_the_forward() -> anyhow::Result<()> {
    let config = config();
    let lab = Lab::new(&config, lab::DEFAULT_PORT_BASE);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&lab.kubeconfig)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "it holds the admin's client key: owner only");
    let servers = |path: &std::path::Path| -> anyhow::Result<Vec<Option<String>>> {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
        Ok(kubeconfig.clusters.into_iter().map(|named| named.cluster.and_then(|c| c.server)).collect())
    };
    assert_eq!(servers(&lab.kubeconfig)?, vec![Some(lab.api_url())]);
    assert_eq!(
        servers(&kit::context::cluster_kubeconfig_path(&config.state_dir()))?,
        vec![Some(config.api_endpoint())]
    );
    Ok(())
}

/// A second lab beside the main one: a copy of the config in a temporary folder, other ports,
/// and a box of its own (another cluster name).
fn second_lab(port_base: u16) -> anyhow::Result<(tempfile::TempDir, Lab)> {
    let dir = tempfile::tempdir()?;
    let config = lab::second_box_config(&tests::config_path(), dir.path(), &format!("second-{port_base}"))?;
    Ok((dir, Lab::new(&config, port_base)))
}

#[tokio::test]
async fn up_is_idempotent_and_down_leaves_no_process_behind() -> anyhow::Result<()> {
    let (_dir, lab) = second_lab(26443)?;
    // Errors, not panics, inside: the lab below must be taken down whatever happens.
    let result = async {
        lab.up().await?;
        let first = lab.running_pids();
        // No cluster yet (its machines wait for stage 01), so no MetalLB controller either.
        anyhow::ensure!(
            first.len() == 8,
            "the discovery service, 6 node twins in its own box and the workstation services: {first:?}"
        );
        lab.up().await?;
        anyhow::ensure!(lab.running_pids() == first, "a second up restarts nothing");
        anyhow::Ok(first)
    }
    .await;
    let stopped = lab.down(true)?;
    let first = result?;
    assert_eq!(stopped.len(), 9, "8 processes and the box: {stopped:?}");
    assert!(lab.running_pids().is_empty());
    for (name, pid) in first {
        // Stopped and reaped: not even a zombie is left.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "{name} (pid {pid}) is still there");
    }
    assert!(!lab.dir.exists(), "--purge deletes the lab's folder");
    for namespace in lab.lan().namespaces() {
        let etc = std::path::Path::new("/etc/netns").join(namespace);
        assert!(!etc.exists(), "{} (the namespace's hosts and resolv.conf) outlives the box", etc.display());
    }
    Ok(())
}

#[tokio::test]
async fn a_taken_port_fails_with_the_components_log_tail() -> anyhow::Result<()> {
    let (_dir, lab) = second_lab(28443)?;
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", lab.ports.api()))?;
    let error = lab.up().await.expect_err("the forward cannot bind its port");
    lab.down(true)?;
    let message = format!("{error:#}");
    assert!(message.contains("workstation exited before it could listen for the API forward"), "{message}");
    assert!(message.contains("address already in use"), "the log tail says why: {message}");
    assert!(
        message.contains("exited with code 1;") && message.contains("MiB free on the disk of"),
        "how it ended: {message}"
    );
    Ok(())
}

/// A 16 MiB tmpfs, unmounted when dropped: a disk too small for a box.
struct SmallDisk(tempfile::TempDir);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_disk_too_full_for_the_box_is_refused_before_anything_starts() -> anyhow::Result<()> {
    let disk = SmallDisk(tempfile::tempdir()?);
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(disk.0.path())
        .status()?;
    anyhow::ensure!(mounted.success(), "mounting a tmpfs (the tests run as root, as the box needs)");
    let config = lab::second_box_config(&tests::config_path(), disk.0.path(), "second-small-disk")?;
    let lab = Lab::new(&config, 30443);
    let error = lab.up().await.expect_err("16 MiB is too little");
    let message = format!("{error:#}");
    assert!(message.contains("the box needs 1024 MiB free") && message.contains("`cargo clean`"), "{message}");
    assert!(message.contains(&lab.dir.display().to_string()), "it names the folder: {message}");
    assert!(lab.running_pids().is_empty(), "nothing was started: {:?}", lab.running_pids());
    assert!(lab.lan().present()?.is_empty(), "no box was built");
    Ok(())
}

#[tokio::test]
async fn a_second_config_with_the_same_cluster_name_cannot_take_the_box() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let same_name = xtask::scratch_config(&tests::config_path(), dir.path())?;
    let lab = Lab::new(&same_name, 29443);
    let error = lab.up().await.expect_err("the shared lab's box is taken");
    let message = format!("{error:#}");
    assert!(message.contains("the box of cluster `talos-ha` belongs to the lab in"), "{message}");
    assert!(lab.running_pids().is_empty(), "nothing was started: {:?}", lab.running_pids());
    Ok(())
}
