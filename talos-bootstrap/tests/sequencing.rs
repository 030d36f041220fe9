//! Stage 01's order of operations on real nodes, against `FakeTalosNodes`: a TEST DOUBLE of
#![allow(clippy::unwrap_used)] // a poisoned lock in the test double is a failed test
//! the talosctl edge (no Talos node can run here). It keeps the state real Talos keeps —
//! maintenance mode until a config arrives, etcd started by exactly one bootstrap, a second
//! bootstrap refused — so the tests assert where the nodes end up, not which calls were made.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use kit::config::{ClusterConfig, Node, Role};
use kit::stage::Action;
use talos_bootstrap::converge::{converge, name_nodes};
use talos_bootstrap::machine_configs::NodeConfig;
use talos_bootstrap::nodes::{NodeState, TalosNodes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Machine {
    Maintenance,
    Configured,
    PoweredOff,
}

#[derive(Debug)]
struct FakeNode {
    machine: Machine,
    /// The config file it was sent, if any.
    applied: Option<PathBuf>,
    control_plane: bool,
    etcd_member: bool,
}

/// Test double of the talosctl edge (see the module comment).
struct FakeTalosNodes {
    nodes: Mutex<BTreeMap<String, FakeNode>>,
    bootstraps: Mutex<usize>,
    /// What `talosctl health` prints as its last line when it fails, if it should fail.
    health_failure: Option<String>,
}

impl FakeTalosNodes {
    fn new(config: &ClusterConfig, machine: impl Fn(&Node) -> Machine) -> FakeTalosNodes {
        let nodes = config
            .nodes
            .iter()
            .map(|node| {
                let control_plane = node.role == Role::ControlPlane;
                (
                    node.name.clone(),
                    FakeNode { machine: machine(node), applied: None, control_plane, etcd_member: false },
                )
            })
            .collect();
        FakeTalosNodes { nodes: Mutex::new(nodes), bootstraps: Mutex::new(0), health_failure: None }
    }

    fn machine(&self, name: &str) -> Machine {
        self.nodes.lock().unwrap()[name].machine
    }

    fn applied(&self, name: &str) -> Option<PathBuf> {
        self.nodes.lock().unwrap()[name].applied.clone()
    }

    fn bootstraps(&self) -> usize {
        *self.bootstraps.lock().unwrap()
    }
}

impl TalosNodes for FakeTalosNodes {
    async fn state(&self, node: &Node) -> NodeState {
        match self.machine(&node.name) {
            Machine::Maintenance => NodeState::Maintenance,
            Machine::Configured => NodeState::Configured,
            Machine::PoweredOff => NodeState::Unreachable(format!(
                "rpc error: code = Unavailable desc = connection error: dial tcp {}:50000: i/o timeout",
                node.ip
            )),
        }
    }

    async fn apply_config_insecure(&self, node: &Node, config: &Path) -> anyhow::Result<()> {
        let mut nodes = self.nodes.lock().unwrap();
        let fake = nodes.get_mut(&node.name).unwrap();
        anyhow::ensure!(fake.machine == Machine::Maintenance, "maintenance API is not running on {}", node.ip);
        fake.machine = Machine::Configured;
        fake.applied = Some(config.to_owned());
        Ok(())
    }

    async fn config_diff(&self, _node: &Node, _config: &Path) -> anyhow::Result<String> {
        Ok("No changes.".to_owned())
    }

    async fn wait_configured(&self, node: &Node, _timeout: Duration) -> anyhow::Result<()> {
        anyhow::ensure!(self.machine(&node.name) == Machine::Configured, "{} never came back", node.name);
        Ok(())
    }

    async fn etcd_members(&self, node: &Node) -> anyhow::Result<Vec<String>> {
        let nodes = self.nodes.lock().unwrap();
        anyhow::ensure!(nodes[&node.name].etcd_member, "etcd is not running on {}", node.ip);
        Ok(nodes.iter().filter(|(_, fake)| fake.etcd_member).map(|(name, _)| name.clone()).collect())
    }

    async fn bootstrap(&self, node: &Node) -> anyhow::Result<()> {
        let mut nodes = self.nodes.lock().unwrap();
        // Real Talos refuses a bootstrap on a node whose etcd already has data.
        anyhow::ensure!(
            !nodes[&node.name].etcd_member,
            "rpc error: code = AlreadyExists desc = etcd data directory is not empty"
        );
        *self.bootstraps.lock().unwrap() += 1;
        // The configured control planes join the new etcd cluster.
        for fake in nodes.values_mut().filter(|fake| fake.control_plane && fake.machine == Machine::Configured) {
            fake.etcd_member = true;
        }
        Ok(())
    }

    async fn health(&self, control_planes: &[&Node], workers: &[&Node], _timeout: Duration) -> anyhow::Result<()> {
        if let Some(failure) = &self.health_failure {
            anyhow::bail!("{failure}");
        }
        for node in control_planes.iter().chain(workers) {
            anyhow::ensure!(self.machine(&node.name) == Machine::Configured, "waiting for {}: not configured", node.ip);
        }
        Ok(())
    }

    async fn kubeconfig(&self, _node: &Node, out: &Path) -> anyhow::Result<()> {
        std::fs::write(out, "apiVersion: v1\nkind: Config\n")?;
        Ok(())
    }
}

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

fn actions(changes: &[kit::stage::Change]) -> BTreeMap<String, Action> {
    changes.iter().map(|change| (change.object.clone(), change.action)).collect()
}

#[tokio::test]
async fn a_fresh_cluster_is_configured_bootstrapped_once_and_a_rerun_changes_nothing() -> anyhow::Result<()> {
    let config = config();
    let edge = FakeTalosNodes::new(&config, |_| Machine::Maintenance);
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("state/kubeconfig");

    let changes = converge(&edge, &config, &configs(&config), &kubeconfig).await?;
    for node in &config.nodes {
        assert_eq!(edge.machine(&node.name), Machine::Configured);
        assert_eq!(edge.applied(&node.name), Some(PathBuf::from(format!("state/talos/{}.yaml", node.name))));
    }
    assert_eq!(edge.bootstraps(), 1);
    let members = edge.etcd_members(&config.nodes[0]).await?;
    assert_eq!(members, ["cp01", "cp02", "cp03"]);
    assert_eq!(std::fs::metadata(&kubeconfig)?.permissions().mode() & 0o777, 0o600, "kubeconfig is private");
    let actions = actions(&changes);
    assert_eq!(actions["TalosNode wk03"], Action::Created);
    assert_eq!(actions["EtcdBootstrap cp01"], Action::Created);

    // Second run: every node configured, etcd has members: nothing is sent, no bootstrap.
    let again = converge(&edge, &config, &configs(&config), &kubeconfig).await?;
    assert_eq!(edge.bootstraps(), 1, "never bootstrapped twice");
    assert!(again.iter().all(|change| change.action == Action::Unchanged), "{again:?}");
    Ok(())
}

#[tokio::test]
async fn configured_nodes_are_skipped_and_an_existing_etcd_is_not_bootstrapped_again() -> anyhow::Result<()> {
    let config = config();
    // The control planes were installed and bootstrapped by an earlier run; two workers were
    // added later and wait in maintenance mode.
    let edge = FakeTalosNodes::new(&config, |node| match node.role {
        Role::ControlPlane => Machine::Configured,
        Role::Worker if node.name == "wk01" => Machine::Configured,
        Role::Worker => Machine::Maintenance,
    });
    edge.bootstrap(&config.nodes[0]).await?;
    let dir = tempfile::tempdir()?;

    let changes = converge(&edge, &config, &configs(&config), &dir.path().join("kubeconfig")).await?;
    assert_eq!(edge.bootstraps(), 1, "the earlier bootstrap is the only one");
    for name in ["cp01", "cp02", "cp03", "wk01"] {
        assert_eq!(edge.applied(name), None, "{name} was configured already and is left alone");
    }
    for name in ["wk02", "wk03"] {
        assert_eq!(edge.machine(name), Machine::Configured, "{name} got its config");
    }
    let actions = actions(&changes);
    assert_eq!(actions["TalosNode cp02"], Action::Unchanged);
    assert_eq!(actions["TalosNode wk02"], Action::Created);
    assert_eq!(actions["EtcdBootstrap cp01"], Action::Unchanged);
    Ok(())
}

#[tokio::test]
async fn a_node_that_does_not_answer_stops_the_stage_before_anything_changes() -> anyhow::Result<()> {
    let config = config();
    let edge =
        FakeTalosNodes::new(
            &config,
            |node| if node.name == "cp02" { Machine::PoweredOff } else { Machine::Maintenance },
        );
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");

    let error = converge(&edge, &config, &configs(&config), &kubeconfig).await.expect_err("cp02 is down");
    let message = format!("{error:#}");
    assert!(message.starts_with("nothing was changed"), "{message}");
    assert!(message.contains("cp02 (172.16.16.148)"), "names the node: {message}");
    assert!(message.contains("Talos v1.12.1 ISO"), "says the fix: {message}");
    for node in &config.nodes {
        assert_eq!(edge.applied(&node.name), None, "no node was sent a config");
    }
    assert_eq!(edge.bootstraps(), 0);
    assert!(!kubeconfig.exists());
    Ok(())
}

#[tokio::test]
async fn a_failed_health_wait_names_the_node_and_the_check() -> anyhow::Result<()> {
    let config = config();
    let mut edge = FakeTalosNodes::new(&config, |_| Machine::Maintenance);
    edge.health_failure =
        Some("waiting for all k8s nodes to report ready: some nodes are not ready: [172.16.16.151]".to_owned());
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");

    let error = converge(&edge, &config, &configs(&config), &kubeconfig).await.expect_err("health fails");
    let message = format!("{error:#}");
    assert!(message.contains("all k8s nodes to report ready"), "names the check: {message}");
    assert!(message.contains("wk02 (172.16.16.151)"), "names the node: {message}");
    assert!(message.contains("etcd is not bootstrapped again"), "says a re-run is safe: {message}");
    assert_eq!(edge.bootstraps(), 1);
    assert!(!kubeconfig.exists(), "no kubeconfig claims success");
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
