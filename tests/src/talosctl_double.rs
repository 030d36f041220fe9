//! A TEST DOUBLE of talosctl against six Talos nodes (no Talos node can run here). It answers
//! each `talosctl` call the way talosctl prints what Talos v1.12.1 returns, so the real parsing
//! in `kit::talos` and the real sequencing in `talos_bootstrap::converge` are what the tests
//! exercise. Each answer names the Talos source it follows:
//!
//! - maintenance mode: `version --insecure` is refused with Unimplemented (Version needs the
//!   admin role, which only SideroLink peers get: internal/app/maintenance/server.go), while
//!   `get machinestatus|links|disks --insecure -o json` answer (non-sensitive resources);
//!   our client certificate is refused (the maintenance server's certificate is self-signed);
//! - after `apply-config --insecure` the node installs for a while (no answer), then answers
//!   only our client certificate;
//! - `bootstrap`: FailedPrecondition until the node is ready for it, AlreadyExists once etcd
//!   has data (internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go);
//! - `etcd members` lists every member, a stopped one too; `etcd status` of a stopped member
//!   fails (cmd/talosctl/cmd/talos/etcd.go);
//! - `apply-config --dry-run` prints its diff on stderr (cmd/talosctl/pkg/talos/helpers/mode.go).
//!
//! Time is tokio's, so a test run with paused time waits minutes in milliseconds.
#![allow(clippy::unwrap_used)] // a poisoned lock in the test double is a failed test

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use kit::config::{ClusterConfig, Node, Role};
use kit::talos::TalosApi;
use kit::tool::Output;
use serde_json::json;
use tokio::time::Instant;

/// Where a machine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// Booted from the ISO, waiting for a config.
    Maintenance,
    /// Installing its config to disk and rebooting: no answer until then.
    Installing {
        until: Instant,
    },
    /// Running its config since then.
    Configured {
        since: Instant,
    },
    PoweredOff,
}

/// A network port as `talosctl get links` shows it.
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    pub mac: String,
    pub carrier: bool,
}

/// A disk as `talosctl get disks` shows it.
#[derive(Debug, Clone)]
pub struct DiskDevice {
    pub path: String,
    pub size: u64,
    pub model: String,
    pub transport: String,
}

#[derive(Debug)]
pub struct DoubleNode {
    pub name: String,
    pub machine: Machine,
    /// The config file it was sent, if any.
    pub applied: Option<PathBuf>,
    pub control_plane: bool,
    /// A member of etcd (bootstrapped, or joined once configured).
    pub etcd_member: bool,
    /// Its etcd is stopped (a reboot in progress): still listed, not answering.
    pub etcd_stopped: bool,
    pub ports: Vec<Port>,
    pub disks: Vec<DiskDevice>,
}

/// The double of talosctl (see the module comment).
pub struct TalosctlDouble {
    pub nodes: Mutex<BTreeMap<String, DoubleNode>>,
    pub bootstraps: Mutex<usize>,
    /// How long an install takes.
    pub install_takes: Duration,
    /// How long after coming back a control plane still answers FailedPrecondition to bootstrap.
    pub bootstrap_ready_after: Duration,
    /// Failed `health` runs before it passes (each fails on the check below).
    pub health_failures: Mutex<usize>,
    pub health_failure: String,
    /// Every call, as `<node name> <args>`.
    pub calls: Mutex<Vec<String>>,
}

/// One physical port and an internal SSD at `/dev/sda` (the config's install disk), plus the
/// USB stick the ISO was written to.
fn usual_hardware(index: usize) -> (Vec<Port>, Vec<DiskDevice>) {
    let ports = vec![Port { name: "enp1s0".into(), mac: format!("00:1a:2b:3c:4d:{index:02x}"), carrier: true }];
    let disks = vec![
        DiskDevice {
            path: "/dev/sda".into(),
            size: 512_110_190_592,
            model: "Samsung SSD 870".into(),
            transport: "sata".into(),
        },
        DiskDevice {
            path: "/dev/sdb".into(),
            size: 31_037_849_600,
            model: "Ultra USB 3.0".into(),
            transport: "usb".into(),
        },
    ];
    (ports, disks)
}

impl TalosctlDouble {
    /// Every node of `config`, in the state `machine` gives it, with the usual hardware.
    pub fn new(config: &ClusterConfig, machine: impl Fn(&Node) -> Machine) -> TalosctlDouble {
        let nodes = config
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let (ports, disks) = usual_hardware(index);
                let double = DoubleNode {
                    name: node.name.clone(),
                    machine: machine(node),
                    applied: None,
                    control_plane: node.role == Role::ControlPlane,
                    etcd_member: false,
                    etcd_stopped: false,
                    ports,
                    disks,
                };
                (node.name.clone(), double)
            })
            .collect();
        TalosctlDouble {
            nodes: Mutex::new(nodes),
            bootstraps: Mutex::new(0),
            install_takes: Duration::from_secs(90),
            bootstrap_ready_after: Duration::from_secs(40),
            health_failures: Mutex::new(0),
            health_failure: String::new(),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// A node configured long ago.
    pub fn configured() -> Machine {
        let now = Instant::now();
        Machine::Configured { since: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now) }
    }

    pub fn with<T>(&self, name: &str, change: impl FnOnce(&mut DoubleNode) -> T) -> T {
        change(self.nodes.lock().unwrap().get_mut(name).unwrap())
    }

    pub fn applied(&self, name: &str) -> Option<PathBuf> {
        self.with(name, |node| node.applied.clone())
    }

    pub fn answers_our_certificate(&self, name: &str) -> bool {
        self.with(name, |node| configured(node).is_some())
    }

    pub fn bootstraps(&self) -> usize {
        *self.bootstraps.lock().unwrap()
    }

    /// Etcd started by a bootstrap before the test (an existing cluster).
    pub fn bootstrapped_before(&self) {
        for node in self.nodes.lock().unwrap().values_mut().filter(|node| node.control_plane) {
            node.etcd_member = true;
        }
    }

    fn answer(&self, node_name: &str, args: &[&str]) -> Result<String, String> {
        let mut nodes = self.nodes.lock().unwrap();
        let etcd_has_data = nodes.values().any(|node| node.etcd_member);
        nodes.values_mut().for_each(|node| settle(node, etcd_has_data));
        let members: Vec<String> =
            nodes.values().filter(|node| node.etcd_member).map(|node| node.name.clone()).collect();
        // What `health` waits for: every node running its config, every control plane's etcd up.
        let unhealthy: Vec<String> = nodes
            .values()
            .filter(|node| {
                configured(node).is_none() || (node.control_plane && (!node.etcd_member || node.etcd_stopped))
            })
            .map(|node| node.name.clone())
            .collect();
        let node = nodes.get_mut(node_name).unwrap();
        let insecure = args.contains(&"--insecure");
        match (node.machine, insecure) {
            (Machine::PoweredOff, _) => {
                return Err(format!(
                    "rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp {node_name}:50000: i/o timeout\""
                ));
            }
            (Machine::Installing { .. }, _) => {
                return Err("rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp: connect: connection refused\"".into());
            }
            // A configured node's apid wants a client certificate.
            (Machine::Configured { .. }, true) => {
                return Err("rpc error: code = Unavailable desc = connection error: desc = \"transport: authentication handshake failed: remote error: tls: certificate required\"".into());
            }
            // The maintenance server's certificate is self-signed: our CA does not trust it.
            (Machine::Maintenance, false) => {
                return Err("rpc error: code = Unavailable desc = connection error: desc = \"transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority\"".into());
            }
            _ => {}
        }
        let words: Vec<&str> = args.iter().copied().filter(|arg| *arg != "--insecure").collect();
        match words.as_slice() {
            ["version", "--short"] if insecure => {
                Err("error getting version: rpc error: code = Unimplemented desc = API is not implemented in maintenance mode".into())
            }
            ["version", "--short"] => Ok("Client:\n\tTag:         v1.12.1\nServer:\n\tTag:         v1.12.1\n".into()),
            ["get", kind, "-o", "json"] => Ok(resources(node, kind)),
            ["apply-config", "--file", file] if insecure => {
                node.applied = Some(PathBuf::from(file));
                node.machine = Machine::Installing { until: Instant::now() + self.install_takes };
                Ok(String::new())
            }
            ["etcd", "members"] if node.control_plane && node.etcd_member && !node.etcd_stopped => {
                let rows: Vec<String> = members
                    .iter()
                    .enumerate()
                    .map(|(index, name)| format!("{node_name}   {index:016x}   {name}   https://{name}:2380   https://{name}:2379   false"))
                    .collect();
                Ok(format!("NODE   ID   HOSTNAME   PEER URLS   CLIENT URLS   LEARNER\n{}\n", rows.join("\n")))
            }
            ["etcd", "status"] if node.control_plane && node.etcd_member && !node.etcd_stopped => Ok(format!(
                "NODE   MEMBER   DB SIZE   IN USE   LEADER   RAFT INDEX   RAFT TERM   RAFT APPLIED INDEX   LEARNER   PROTOCOL   STORAGE   ERRORS\n\
                 {node_name}   8a6c7e1e0b2d4f11   21 MB     7.1 MB (33.81%)   8a6c7e1e0b2d4f11   1203   2   1203   false   3.6.0   3.6.0\n"
            )),
            ["etcd", _] => Err("error getting members: rpc error: code = Unavailable desc = etcd is not running".into()),
            ["bootstrap"] => {
                let Machine::Configured { since } = node.machine else { unreachable!("answered above") };
                if since.elapsed() < self.bootstrap_ready_after {
                    return Err("error executing bootstrap: rpc error: code = FailedPrecondition desc = bootstrap is not available yet".into());
                }
                if node.etcd_member {
                    return Err("error executing bootstrap: rpc error: code = AlreadyExists desc = etcd data directory is not empty".into());
                }
                node.etcd_member = true;
                *self.bootstraps.lock().unwrap() += 1;
                Ok(String::new())
            }
            ["apply-config", "--dry-run", "--file", file] => match &node.applied {
                Some(applied) if applied != std::path::Path::new(file) => Ok(format!(
                    "Dry run summary:\nNode would be rebooted.\n\nConfig diff:\n\n--- a\n+++ b\n-    file: {}\n+    file: {file}\n",
                    applied.display()
                )),
                _ => Ok("Dry run summary:\nApplied configuration without a reboot (skipped in dry-run).\n\nConfig diff:\n\nNo changes.\n".into()),
            },
            ["health", ..] => {
                let mut failures = self.health_failures.lock().unwrap();
                if *failures > 0 {
                    *failures -= 1;
                    return Err(format!("waiting for etcd to be healthy: OK\n{}\nhealthcheck error: rpc error", self.health_failure));
                }
                if unhealthy.is_empty() {
                    Ok(String::new())
                } else {
                    Err(format!("waiting for etcd to be healthy: not healthy on {unhealthy:?}"))
                }
            }
            ["kubeconfig", path, "--force", "--merge=false"] => {
                std::fs::write(path, "apiVersion: v1\nkind: Config\n").map_err(|error| error.to_string())?;
                Ok(String::new())
            }
            other => Err(format!("the talosctl double does not model {other:?}")),
        }
    }
}

fn configured(node: &DoubleNode) -> Option<Instant> {
    match node.machine {
        Machine::Configured { since } => Some(since),
        _ => None,
    }
}

/// Time passes: an install that is done has rebooted the node into its config, and a control
/// plane that comes back beside a running etcd joins it.
fn settle(node: &mut DoubleNode, etcd_has_data: bool) {
    if let Machine::Installing { until } = node.machine
        && Instant::now() >= until
    {
        node.machine = Machine::Configured { since: until };
    }
    if node.control_plane && etcd_has_data && configured(node).is_some() {
        node.etcd_member = true;
    }
}

/// `talosctl get <kind> -o json` for a node in maintenance mode or configured.
fn resources(node: &DoubleNode, kind: &str) -> String {
    let items: Vec<serde_json::Value> = match kind {
        "machinestatus" => {
            let stage = if node.machine == Machine::Maintenance { "maintenance" } else { "running" };
            vec![json!({"metadata": {"id": "machine"}, "spec": {"stage": stage, "status": {"ready": true}}})]
        }
        "links" => {
            let mut links: Vec<serde_json::Value> = node
                .ports
                .iter()
                .enumerate()
                .map(|(index, port)| {
                    json!({"metadata": {"id": port.name}, "spec": {"type": "ether", "kind": "", "busPath": format!("0000:0{}:00.0", index + 1), "hardwareAddr": port.mac, "permanentAddr": port.mac, "driver": "igc", "linkState": port.carrier, "operationalState": if port.carrier { "up" } else { "down" }}})
                })
                .collect();
            links.push(json!({"metadata": {"id": "lo"}, "spec": {"type": "loopback", "kind": "", "hardwareAddr": "00:00:00:00:00:00", "linkState": true}}));
            links
        }
        "disks" => node
            .disks
            .iter()
            .map(|disk| {
                let id = disk.path.trim_start_matches("/dev/");
                json!({"metadata": {"id": id}, "spec": {"dev_path": disk.path, "size": disk.size, "pretty_size": format!("{} GB", disk.size / 1_000_000_000), "model": disk.model, "transport": disk.transport, "readonly": false, "cdrom": false}})
            })
            .collect(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .map(|mut item| {
            item["node"] = json!(node.name);
            format!("{}\n", serde_json::to_string_pretty(&item).unwrap())
        })
        .collect()
}

impl TalosApi for TalosctlDouble {
    async fn talosctl(
        &self,
        node: &Node,
        args: &[&str],
        _timeout: Duration,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> anyhow::Result<Output> {
        self.calls.lock().unwrap().push(format!("{} {}", node.name, args.join(" ")));
        Ok(match self.answer(&node.name, args) {
            // talosctl prints its progress and errors on stderr; `apply-config` its diff too.
            Ok(printed) if args.first() == Some(&"apply-config") => {
                Output { success: true, stdout: String::new(), stderr: printed }
            }
            Ok(printed) => Output { success: true, stdout: printed, stderr: String::new() },
            Err(error) => {
                error.lines().for_each(&mut *progress);
                Output { success: false, stdout: String::new(), stderr: format!("{error}\n") }
            }
        })
    }
}
