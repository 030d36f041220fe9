//! Stage 01's order of operations on real nodes, against the talosctl test double
//! (`tests::talosctl_double`, which answers as Talos v1.12.1 does). Each test pins one finding
//! of the stage-01 review (`shared/reviews/talos-stage01.md`, item numbers below): the tests
//! assert where the nodes end up and what the user is told, not which calls were made.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kit::config::{ClusterConfig, Role};
use kit::report::{Action, Change};
use kit::talos::{NodeState, TalosApi};
use talos_bootstrap::converge::{Run, converge, name_nodes};
use talos_bootstrap::evidence::Evidence;
use talos_bootstrap::machine_configs::NodeConfig;
use tests::talosctl_double::{DiskDevice, Machine, Port, TalosctlDouble};

fn config() -> ClusterConfig {
    ClusterConfig::parse(include_str!("../../cluster.yaml"), Path::new("/nonexistent/cluster.yaml"))
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Generated configs as `converge` receives them; the double only records the path.
fn configs(config: &ClusterConfig) -> Vec<NodeConfig> {
    config
        .nodes
        .iter()
        .map(|node| NodeConfig {
            node: node.clone(),
            path: PathBuf::from(format!("state/talos/{}.yaml", node.name)),
            text: String::new(),
        })
        .collect()
}

fn actions(changes: &[Change]) -> BTreeMap<String, Action> {
    changes.iter().map(|change| (change.object.clone(), change.action)).collect()
}

/// A loopback stand-in for the Image Factory: answers `POST /schematics` with the sha256 of
/// what it was sent, as the factory does for a document already in canonical form (or with
/// `forced_id`). Returns its URL and the bodies it received.
fn image_factory(forced_id: Option<&'static str>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use sha2::Digest as _;
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = received.clone();
    std::thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let mut body = String::new();
            request.as_reader().read_to_string(&mut body).unwrap();
            let id = forced_id.map_or_else(
                || sha2::Sha256::digest(body.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect(),
                str::to_owned,
            );
            let ok = request.method() == &tiny_http::Method::Post && request.url() == "/schematics";
            seen.lock().unwrap().push(body);
            let response = tiny_http::Response::from_string(format!("{{\"id\":\"{id}\"}}")).with_status_code(if ok {
                201
            } else {
                404
            });
            let _ = request.respond(response);
        }
    });
    (url, received)
}

struct Setup {
    config: ClusterConfig,
    configs: Vec<NodeConfig>,
    dir: tempfile::TempDir,
    factory: String,
    evidence: Evidence,
}

impl Setup {
    fn new() -> Setup {
        let config = config();
        let configs = configs(&config);
        let dir = tempfile::tempdir().unwrap();
        let evidence = Evidence { dir: dir.path().join("state"), cluster: "sha256:0011223344556677".into() };
        Setup { config, configs, dir, factory: image_factory(None).0, evidence }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("state/kubeconfig")
    }

    async fn converge(&self, double: &TalosctlDouble, force_bootstrap: bool) -> anyhow::Result<Vec<Change>> {
        let kubeconfig = self.kubeconfig();
        let run = Run {
            configs: &self.configs,
            kubeconfig: &kubeconfig,
            force_bootstrap,
            image_factory: &self.factory,
            evidence: &self.evidence,
        };
        converge(double, &self.config, &run).await
    }
}

/// Review items 1 (maintenance detection), 3 (bootstrap retried on FailedPrecondition) and 8
/// (every node awaited before health): a fresh cluster whose nodes refuse `version
/// --insecure`, as maintenance nodes do, is installed and bootstrapped once; a re-run changes
/// nothing.
#[tokio::test(start_paused = true)]
async fn a_fresh_cluster_is_configured_bootstrapped_once_and_a_rerun_changes_nothing() -> anyhow::Result<()> {
    let setup = Setup::new();
    let double = TalosctlDouble::new(&setup.config, |_| Machine::Maintenance);

    let changes = setup.converge(&double, false).await?;
    for node in &setup.config.nodes {
        assert!(double.answers_our_certificate(&node.name), "{} runs its config", node.name);
        assert_eq!(double.applied(&node.name), Some(PathBuf::from(format!("state/talos/{}.yaml", node.name))));
    }
    assert_eq!(double.bootstraps(), 1, "bootstrapped once, after FailedPrecondition answers");
    let members = kit::talos::etcd_members(&double, &setup.config.nodes[0]).await?;
    assert_eq!(members, ["cp01", "cp02", "cp03"]);
    let healthy = kit::talos::healthy_members(&kit::talos::etcd_health(&double, &setup.config).await);
    assert_eq!(healthy, ["cp01", "cp02", "cp03"]);
    assert_eq!(std::fs::metadata(setup.kubeconfig())?.permissions().mode() & 0o777, 0o600, "kubeconfig is private");
    let actions = actions(&changes);
    assert_eq!(actions["TalosNode wk03"], Action::Created);
    assert_eq!(actions["EtcdBootstrap cp01"], Action::Created);
    let calls = double.calls.lock().unwrap().clone();
    let bootstraps = calls.iter().filter(|call| call.as_str() == "cp01 bootstrap").count();
    assert!(bootstraps > 1, "the first bootstrap was answered FailedPrecondition and asked again");
    let first_health = calls.iter().position(|call| call.contains(" health ")).expect("health ran");
    let last_wait = calls.iter().rposition(|call| call.starts_with("wk03 version --short")).expect("wk03 was awaited");
    assert!(last_wait < first_health, "health runs only once every node answers");

    // Second run: every node configured, etcd has members: nothing is sent, no bootstrap.
    let again = setup.converge(&double, false).await?;
    assert_eq!(double.bootstraps(), 1, "never bootstrapped twice");
    assert!(again.iter().all(|change| change.action == Action::Unchanged), "{again:?}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn configured_nodes_are_skipped_and_an_existing_etcd_is_not_bootstrapped_again() -> anyhow::Result<()> {
    let setup = Setup::new();
    // The control planes were installed and bootstrapped by an earlier run; two workers were
    // added later and wait in maintenance mode.
    let double = TalosctlDouble::new(&setup.config, |node| match node.role {
        Role::ControlPlane => TalosctlDouble::configured(),
        Role::Worker if node.name == "wk01" => TalosctlDouble::configured(),
        Role::Worker => Machine::Maintenance,
    });
    double.bootstrapped_before();

    let changes = setup.converge(&double, false).await?;
    assert_eq!(double.bootstraps(), 0, "the earlier bootstrap is the only one");
    for name in ["cp01", "cp02", "cp03", "wk01"] {
        assert_eq!(double.applied(name), None, "{name} was configured already and is left alone");
    }
    for name in ["wk02", "wk03"] {
        assert!(double.answers_our_certificate(name), "{name} got its config");
    }
    let actions = actions(&changes);
    assert_eq!(actions["TalosNode cp02"], Action::Unchanged);
    assert_eq!(actions["TalosNode wk02"], Action::Created);
    assert_eq!(actions["EtcdBootstrap cp01"], Action::Unchanged);
    let record = setup.evidence.recorded()?.expect("a running etcd is recorded as found");
    assert_eq!(record.how, "found running", "an install made before records were kept gains one");
    Ok(())
}

/// Review item 4: a node not at its configured address is explained (DHCP in maintenance mode).
#[tokio::test(start_paused = true)]
async fn a_node_that_does_not_answer_stops_the_stage_before_anything_changes() -> anyhow::Result<()> {
    let setup = Setup::new();
    let double = TalosctlDouble::new(&setup.config, |node| {
        if node.name == "cp02" { Machine::PoweredOff } else { Machine::Maintenance }
    });

    let error = setup.converge(&double, false).await.expect_err("cp02 is down");
    let message = format!("{error:#}");
    assert!(message.starts_with("nothing was changed"), "{message}");
    assert!(message.contains("cp02 (172.16.16.148)"), "names the node: {message}");
    assert!(message.contains("Talos v1.12.1 ISO"), "says the fix: {message}");
    assert!(message.contains("DHCP") && message.contains("ip="), "explains the address in maintenance: {message}");
    for node in &setup.config.nodes {
        assert_eq!(double.applied(&node.name), None, "no node was sent a config");
    }
    assert_eq!(double.bootstraps(), 0);
    assert!(!setup.kubeconfig().exists());
    Ok(())
}

/// Review item 8: health is asked again within its budget; and a health that never comes
/// leaves a kubeconfig to look with.
#[tokio::test(start_paused = true)]
async fn health_is_asked_again_and_a_failed_wait_names_the_node_and_the_check() -> anyhow::Result<()> {
    let setup = Setup::new();
    let mut double = TalosctlDouble::new(&setup.config, |_| Machine::Maintenance);
    double.health_failure =
        "waiting for all k8s nodes to report ready: some nodes are not ready: [172.16.16.151]".to_owned();
    *double.health_failures.lock().unwrap() = 3;
    setup.converge(&double, false).await?;
    assert_eq!(*double.health_failures.lock().unwrap(), 0, "three failed runs, then a pass: the stage succeeded");

    let setup = Setup::new();
    let mut double = TalosctlDouble::new(&setup.config, |_| Machine::Maintenance);
    double.health_failure =
        "waiting for all k8s nodes to report ready: some nodes are not ready: [172.16.16.151]".to_owned();
    *double.health_failures.lock().unwrap() = usize::MAX;
    let error = setup.converge(&double, false).await.expect_err("health never passes");
    let message = format!("{error:#}");
    assert!(message.contains("all k8s nodes to report ready"), "names the check: {message}");
    assert!(message.contains("wk02 (172.16.16.151)"), "names the node: {message}");
    assert!(message.contains("etcd is not bootstrapped again"), "says a re-run is safe: {message}");
    assert_eq!(double.bootstraps(), 1);
    assert!(setup.kubeconfig().exists(), "the kubeconfig was fetched right after bootstrap, to look with");
    Ok(())
}

/// Review item 5: the default selector on a two-port machine matches two links; Talos would
/// then give the node no address at all. Refused before any config is sent, with the MACs.
#[tokio::test(start_paused = true)]
async fn a_link_selector_matching_two_ports_is_refused_with_the_macs() -> anyhow::Result<()> {
    let setup = Setup::new();
    let double = TalosctlDouble::new(&setup.config, |_| Machine::Maintenance);
    double.with("wk02", |node| {
        node.ports.push(Port { name: "enp2s0".into(), mac: "00:1a:2b:3c:4d:99".into(), carrier: false });
    });

    let error = setup.converge(&double, false).await.expect_err("wk02 has two ports");
    let message = format!("{error:#}");
    assert!(message.contains("wk02") && message.contains("matches 2 links"), "{message}");
    assert!(message.contains("enp2s0 (MAC 00:1a:2b:3c:4d:99, no carrier"), "lists the ports: {message}");
    assert!(message.contains("nodes[4].linkSelector"), "names the field: {message}");
    assert!(message.contains(r#"mac(link.permanent_addr) == "00:1a:2b:3c:4d:04""#), "the port with a cable: {message}");
    for node in &setup.config.nodes {
        assert_eq!(double.applied(&node.name), None, "no node was sent a config");
    }
    Ok(())
}

/// Review item 13: on an NVMe machine the USB stick is /dev/sda; installing there is refused.
#[tokio::test(start_paused = true)]
async fn an_install_disk_on_usb_is_refused_with_the_disks() -> anyhow::Result<()> {
    let setup = Setup::new();
    let double = TalosctlDouble::new(&setup.config, |_| Machine::Maintenance);
    double.with("cp03", |node| {
        node.disks = vec![
            DiskDevice {
                path: "/dev/sda".into(),
                size: 31_037_849_600,
                model: "Ultra USB 3.0".into(),
                transport: "usb".into(),
            },
            DiskDevice {
                path: "/dev/nvme0n1".into(),
                size: 1_000_204_886_016,
                model: "WD Blue SN580".into(),
                transport: "nvme".into(),
            },
        ];
    });

    let error = setup.converge(&double, false).await.expect_err("cp03's /dev/sda is the USB stick");
    let message = format!("{error:#}");
    assert!(message.contains("nodes[2].installDisk /dev/sda (31 GB, Ultra USB 3.0, usb) is on USB"), "{message}");
    assert!(message.contains("/dev/nvme0n1 (1000 GB, WD Blue SN580, nvme)"), "lists the disks: {message}");
    assert_eq!(double.applied("cp01"), None, "nothing was sent, not even to the fit nodes");
    Ok(())
}

/// Review item 15, on evidence (issue 24): configured control planes with no etcd data and no
/// recorded bootstrap are a first install interrupted before its bootstrap, which bootstraps
/// once; the same machines after a recorded bootstrap have lost their data, and are refused
/// with the way back; `--bootstrap` overrides; Talos's AlreadyExists counts as bootstrapped.
#[tokio::test(start_paused = true)]
async fn bootstrap_goes_by_the_record_and_already_exists_counts_as_done() -> anyhow::Result<()> {
    let setup = Setup::new();
    // Every config was sent by a run that was killed before its bootstrap.
    let double = TalosctlDouble::new(&setup.config, |_| TalosctlDouble::configured());
    let changes = setup.converge(&double, false).await?;
    assert_eq!(double.bootstraps(), 1, "no record, nothing running: the first install's bootstrap");
    assert_eq!(actions(&changes)["EtcdBootstrap cp01"], Action::Created);
    let record = setup.evidence.recorded()?.expect("the bootstrap is recorded");
    assert_eq!((record.member.as_str(), record.how.as_str()), ("cp01", "bootstrapped"));

    // Every member's data is gone (a disaster): the record says there was a cluster.
    for name in ["cp01", "cp02", "cp03"] {
        double.with(name, |node| node.etcd_member = false);
    }
    let error = setup.converge(&double, false).await.expect_err("a lost cluster is not replaced by an empty one");
    let message = format!("{error:#}");
    assert!(message.contains("every member's data is gone"), "{message}");
    assert!(message.contains(&format!("recorded in {}", setup.evidence.bootstrap_path().display())), "{message}");
    assert!(message.contains("bootstrap --recover-from"), "names the restore: {message}");
    assert!(message.contains("talos-bootstrap apply --bootstrap"), "{message}");
    assert_eq!(double.bootstraps(), 1);

    let changes = setup.converge(&double, true).await?;
    assert_eq!(double.bootstraps(), 2, "--bootstrap bootstraps a new cluster on purpose");
    assert_eq!(actions(&changes)["EtcdBootstrap cp01"], Action::Created);

    // etcd has data but is down everywhere (nobody lists members): Talos answers AlreadyExists.
    for name in ["cp01", "cp02", "cp03"] {
        double.with(name, |node| node.etcd_stopped = true);
    }
    let forced = setup.converge(&double, true).await;
    let error = forced.expect_err("health cannot pass with etcd down, but the bootstrap was not repeated");
    assert!(format!("{error:#}").contains("did not become healthy"), "{error:#}");
    assert_eq!(double.bootstraps(), 2, "AlreadyExists: not bootstrapped again");
    Ok(())
}

/// Review item 7: `plan` reads the dry-run's diff where talosctl prints it (stderr).
#[tokio::test(start_paused = true)]
async fn the_dry_run_diff_comes_from_stderr() -> anyhow::Result<()> {
    let config = config();
    let double = TalosctlDouble::new(&config, |_| TalosctlDouble::configured());
    let cp01 = &config.nodes[0];
    double.with("cp01", |node| node.applied = Some(PathBuf::from("state/talos/cp01.yaml")));
    assert_eq!(kit::talos::config_diff(&double, cp01, "state/talos/cp01.yaml").await?, None, "No changes.");
    let diff = kit::talos::config_diff(&double, cp01, "elsewhere/cp01.yaml").await?.expect("a diff");
    assert!(diff.contains("+    file: elsewhere/cp01.yaml"), "{diff}");
    Ok(())
}

/// Review item 6: a member that is down is still listed by `etcd members`, but its own
/// `etcd status` fails, so it is not counted healthy (verify-ha's drill refusal counts these).
#[tokio::test(start_paused = true)]
async fn a_down_member_is_listed_but_not_healthy() -> anyhow::Result<()> {
    let config = config();
    let double = TalosctlDouble::new(&config, |_| TalosctlDouble::configured());
    double.bootstrapped_before();
    double.with("cp02", |node| node.etcd_stopped = true);
    let members = kit::talos::etcd_members(&double, &config.nodes[0]).await?;
    assert_eq!(members, ["cp01", "cp02", "cp03"], "membership still lists cp02");
    let health = kit::talos::etcd_health(&double, &config).await;
    assert_eq!(kit::talos::healthy_members(&health), ["cp01", "cp03"]);
    assert!(kit::talos::describe_health(&health).contains("cp02 does not answer"));
    Ok(())
}

/// Review item 1, at the probe: a maintenance node refuses `version --insecure`; the COSI
/// read is what tells it apart from a node that does not answer at all.
#[tokio::test(start_paused = true)]
async fn a_maintenance_node_is_recognised_by_its_machine_status() -> anyhow::Result<()> {
    let config = config();
    let double = TalosctlDouble::new(&config, |node| match node.name.as_str() {
        "cp01" => Machine::Maintenance,
        "cp02" => TalosctlDouble::configured(),
        _ => Machine::PoweredOff,
    });
    let refused = double.ask(&config.nodes[0], &["version", "--short", "--insecure"], Duration::from_secs(1)).await;
    assert!(format!("{:#}", refused.expect_err("refused")).contains("Unimplemented"));
    assert_eq!(kit::talos::probe(&double, &config.nodes[0]).await, NodeState::Maintenance);
    assert_eq!(kit::talos::probe(&double, &config.nodes[1]).await, NodeState::Configured);
    assert!(matches!(kit::talos::probe(&double, &config.nodes[2]).await, NodeState::Unreachable(_)));
    Ok(())
}

/// Review item 11: the schematic is uploaded before any config is sent, and an ID other than
/// the one the configs name stops the stage.
#[tokio::test(start_paused = true)]
async fn the_schematic_is_uploaded_and_its_id_checked() -> anyhow::Result<()> {
    let mut setup = Setup::new();
    let (factory, received) = image_factory(None);
    setup.factory = factory;
    let double = TalosctlDouble::new(&setup.config, |_| Machine::Maintenance);
    let changes = setup.converge(&double, false).await?;
    let document = talos_bootstrap::schematic::document(talos_bootstrap::schematic::EXTENSIONS);
    assert_eq!(received.lock().unwrap().as_slice(), std::slice::from_ref(&document), "the schematic, once");
    let id = talos_bootstrap::schematic::id(&document);
    assert!(changes.iter().any(|change| change.object == format!("Schematic {id}")), "{changes:?}");

    let mut setup = Setup::new();
    setup.factory = image_factory(Some("0000")).0;
    let double = TalosctlDouble::new(&setup.config, |_| Machine::Maintenance);
    let error = setup.converge(&double, false).await.expect_err("the factory stored another ID");
    assert!(format!("{error:#}").contains("stored the schematic as 0000"), "{error:#}");
    assert_eq!(double.applied("cp01"), None, "nothing was sent");
    Ok(())
}

#[test]
fn node_names_replace_only_whole_addresses() {
    let config = config();
    assert_eq!(
        name_nodes("172.16.16.147, 172.16.16.14 and 172.16.16.1470; 172.16.16.152.", &config),
        "cp01 (172.16.16.147), 172.16.16.14 and 172.16.16.1470; wk03 (172.16.16.152)."
    );
}
