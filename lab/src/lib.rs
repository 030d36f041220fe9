//! `lab`: the cluster in a box, the engine behind `cargo xtask lab build | up | status | shell |
//! down` (`xtask/src/lab_cmd.rs` is its face). `README.md` beside this crate is its lesson.
//!
//! The box is the config's LAN, sealed inside this machine (`lan.rs`): Linux network
//! namespaces joined by a bridge, one per node at its `cluster.yaml` address, one for the
//! workstation, none with a way out. Nothing here talks to Kubernetes directly: the machines
//! do.
//!
//! - **A twin per node** (`twin.rs`, `lab/go/talos/twin`): the machine, booted from the Talos
//!   ISO, answering the Talos API on `<address>:50000` as Talos does. Stage 01 configures them
//!   with the real talosctl, exactly as it configures real machines; a configured control plane
//!   then runs what Talos runs from its config alone (etcd, kube-apiserver,
//!   kube-controller-manager, kube-scheduler, the VIP), and every machine's kubelet registers
//!   its Node. What cannot run here is replaced at its edge, and named: each Node's containers
//!   are kwok fakes.
//! - **The workstation services** (`lab/go/talos/workstation`), one process on the
//!   workstation: the API forward (`127.0.0.1:<port>` here leads to the VIP in the box, so tools
//!   and tests on this machine never dial a box address), and the stand-ins for what the
//!   cluster would fetch or run from the internet or as pods: the Image Factory,
//!   kubelet-serving-cert-approver's approvals, MetalLB's controller.
//!
//! `lab up` builds the box and starts the machines (in maintenance mode the first time);
//! `cargo xtask install-all --lab` then installs the cluster through stage 01 like on real
//! machines. Everything the lab keeps is in `state/lab/` beside the config, the cluster
//! installed in it included (`state/lab/cluster/`, see `ClusterConfig::in_box`).

mod build;
pub mod discovery;
pub mod lan;
pub mod process;
pub mod talos_suite;
pub mod twin;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use kit::config::ClusterConfig;
pub use kit::lab::Ports;
use serde::Serialize;

pub use build::{CONTROL_PLANE_COMPONENTS, KUBERNETES_RELEASES, KWOK_VERSION, ensure_binaries, ensure_talos_suite};
use process::Process;

/// A kwok stage of our own: a returning kubelet re-reports its running pods as Ready. When a
/// node goes NotReady the node lifecycle controller marks its pods not Ready; once the node is
/// back, a kubelet posts their real status again. kwok's own stages only make *pending* pods
/// Ready, so without this the pods of a node that came back would stay not Ready for good.
const POD_READY_AGAIN_STAGE: &str = r#"---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: talos-ha-pod-ready-again
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values:
      - 'True'
  next:
    statusTemplate: |
      conditions:
      - lastTransitionTime: {{ Now | Quote }}
        status: "True"
        type: Ready
"#;

/// The API forward's port on 127.0.0.1 unless `--port-base` says otherwise; the workstation's
/// other services take the ports just above it. Keep them below Linux's ephemeral range
/// (32768 and up): there, a client connection may already hold the port.
pub const DEFAULT_PORT_BASE: u16 = 16443;
/// How long a twin may take to shut down cleanly (its VIP released, its control plane and etcd
/// stopped) before it is killed.
const TWIN_SHUTDOWN: Duration = Duration::from_secs(30);

/// The free space `up` asks for in the lab's folder. The machines' disks (each control plane's
/// etcd data, its WAL preallocated in 64 MiB files) and the logs come to about 0.5 GB after the
/// whole test suite (`du -sh state/lab`: 477 MB); twice that leaves room to grow.
const SPACE_NEEDED: u64 = 1 << 30;

/// One lab: its folder (`state/lab` beside the config), its ports and its binaries.
pub struct Lab {
    pub dir: PathBuf,
    /// The admin kubeconfig aimed at the forward (written once stage 01 fetched the cluster's).
    pub kubeconfig: PathBuf,
    pub ports: Ports,
    binaries: build::Binaries,
    config: ClusterConfig,
}

/// What `lab status` reports for one component.
#[derive(Debug, Serialize)]
pub struct ComponentStatus {
    pub name: String,
    pub pid: Option<i32>,
    pub healthy: bool,
    pub detail: String,
    pub resident_bytes: Option<u64>,
}

impl Lab {
    /// The lab for `config`. Its ports are the ones it was started with (kept in `lab.json`),
    /// else `port_base`.
    pub fn new(config: &ClusterConfig, port_base: u16) -> Lab {
        // The box's cluster keeps its state in the box's folder, never in a real cluster's.
        let config = config.clone().in_box();
        let dir = config.lab_dir();
        let stored = Ports::stored(&dir);
        if let Some(stored) = stored.filter(|stored| stored.base != port_base && port_base != DEFAULT_PORT_BASE) {
            tracing::warn!(
                "this lab was created on port {}; it keeps that port (to move it: `cargo xtask lab down --purge`, then up with --port-base {port_base})",
                stored.base
            );
        }
        let ports = stored.unwrap_or(Ports { base: port_base });
        Lab {
            kubeconfig: kit::lab::kubeconfig_path(&dir),
            dir,
            ports,
            binaries: build::binaries(&config.versions),
            config,
        }
    }

    /// A lab binary from the cache (e.g. the lab's own `kubectl`).
    pub fn binary(&self, name: &str) -> PathBuf {
        self.binaries.path(name)
    }

    /// The lab's talosctl with the box's cluster's talosconfig, run on the box's workstation as a
    /// person at the site runs it (`args` name the nodes and the endpoint).
    pub fn talosctl(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut command = std::process::Command::new(self.binary("talosctl"));
        command.arg("--talosconfig").arg(kit::tool::talosconfig_path(&self.config)).args(args);
        lan::output_in(&kit::lab::workstation_namespace(&self.config.name), command)
    }

    /// The API through the forward, on this machine.
    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.api())
    }

    fn process(&self, name: &str, binary: PathBuf, args: Vec<String>) -> Process {
        Process { name: name.to_owned(), binary, args, run_dir: self.dir.join("run"), log_dir: self.dir.join("logs") }
    }

    /// The workstation services. Started on this machine's network: the process binds the
    /// forward's port here, then enters the box itself.
    fn workstation(&self) -> Process {
        let endpoint = self.config.api_endpoint();
        let endpoint = endpoint.trim_start_matches("https://");
        let args = vec![
            format!("--namespace={}", kit::lab::workstation_namespace(&self.config.name)),
            format!("--listen=127.0.0.1:{}", self.ports.api()),
            format!("--endpoint={endpoint}"),
            format!("--image-factory=127.0.0.1:{}", self.ports.image_factory()),
            format!("--image-factory-dir={}", self.image_factory_dir().display()),
            format!("--kubeconfig={}", self.cluster_kubeconfig().display()),
            format!("--host-kubeconfig={}", self.kubeconfig.display()),
            format!("--lab-binaries={}", kit::lab::binaries_dir().display()),
            format!("--metallb-metrics-port={}", self.ports.metallb_metrics()),
            format!("--run={}", self.dir.join("run").display()),
            format!("--logs={}", self.dir.join("logs").display()),
            format!("--ready-file={}", self.workstation_ready_file().display()),
        ];
        self.process("workstation", self.binaries.path(build::WORKSTATION), args)
    }

    /// Where the Image Factory stand-in keeps the schematics uploaded to it.
    fn image_factory_dir(&self) -> PathBuf {
        self.dir.join("image-factory")
    }

    /// Where the workstation services write their PID once every listener is up.
    fn workstation_ready_file(&self) -> PathBuf {
        self.dir.join("run").join("workstation.ready")
    }

    /// The add-on controllers the workstation services run for real (known here by their pid
    /// files, named after their component; the workstation picks the build of the release the
    /// cluster runs).
    fn host_controllers(&self) -> impl Iterator<Item = Process> + '_ {
        build::HOST_CONTROLLERS.iter().map(|(component, _)| {
            let version = component.version(&self.config.versions);
            let name = build::host_controller_name(*component);
            self.process(&name, kit::lab::controller_binary(*component, version), Vec::new())
        })
    }

    /// Every process, in start order.
    fn processes(&self) -> Vec<Process> {
        let mut all = vec![self.discovery_service()];
        all.extend(self.twins());
        all.push(self.workstation());
        all.extend(self.host_controllers());
        all
    }

    /// Talos's discovery service on the workstation, under its public name (`discovery.rs`).
    fn discovery_service(&self) -> Process {
        let binary = self.binaries.path(build::DISCOVERY_SERVICE);
        discovery::process(&self.dir, &binary, &self.config, lan::admin_address(&self.config))
    }

    /// One node twin per node of the config, each in its namespace of the box.
    fn twins(&self) -> Vec<Process> {
        let lan = self.lan();
        let twin = self.binaries.iso_twin();
        let iso = self.config.versions.talos.to_string();
        let images_dir = self.images_dir();
        let control_planes: Vec<_> = self.config.control_planes().map(|node| node.ip).collect();
        let (kwok, kwok_config) = (self.binaries.path("kwok"), self.dir.join("kwok.yaml"));
        let image_factory_dir = self.image_factory_dir();
        let etcd = self.binaries.path("etcd");
        let peers = twin::Peers {
            etcd: &etcd,
            kwok: &kwok,
            kwok_config: &kwok_config,
            image_factory_dir: &image_factory_dir,
            images_dir: &images_dir,
            iso: &iso,
            control_planes: &control_planes,
            box_ca: &discovery::ca_file(&self.dir),
        };
        self.config
            .nodes
            .iter()
            .filter_map(|node| {
                lan.member(&node.name).map(|member| twin::process(&self.dir, &twin, member, &lan.lease(member), &peers))
            })
            .collect()
    }

    fn twin(&self, node: &str) -> anyhow::Result<Process> {
        self.twins().into_iter().find(|process| process.name == format!("twin-{node}")).with_context(|| {
            let names: Vec<&str> = self.config.nodes.iter().map(|n| n.name.as_str()).collect();
            format!("no node {node} in {} (its nodes: {})", self.config.source.display(), names.join(", "))
        })
    }

    /// Shuts one node's twin down (everything it runs with it): the machine is off.
    pub fn stop_twin(&self, node: &str) -> anyhow::Result<()> {
        self.twin(node)?.stop(TWIN_SHUTDOWN).map(drop)
    }

    /// Cuts one node's power: its twin is killed with SIGKILL, and everything it runs dies with
    /// it (its services are started with the parent-death signal), and its switch port goes
    /// dark. Nothing is shut down in order: a VIP holder does not resign, its etcd member just
    /// stops answering, and a request in flight to it gets no answer at all.
    pub fn power_cut(&self, node: &str) -> anyhow::Result<()> {
        self.twin(node)?.kill()?;
        self.set_port(node, false)
    }

    /// Starts one node's twin again if it is off (after [`Lab::stop_twin`] or
    /// [`Lab::power_cut`]): its port comes up, the machine boots into its config, and answers
    /// on port 50000.
    pub async fn power_on(&self, node: &str) -> anyhow::Result<()> {
        self.set_port(node, true)?;
        let process = self.twin(node)?;
        self.start(&process)?;
        self.wait_for_twin(node, &process).await
    }

    /// Swaps one machine's disk for a blank one, as when a disk died or a new machine takes the
    /// old one's place at its address: the machine must be off (`power_cut`); its disk is
    /// blanked (`twin::blank_disk`: its config and data go, its hardware stays) and it boots
    /// from the ISO, into maintenance mode, at the same address.
    pub async fn swap_disk(&self, node: &str) -> anyhow::Result<()> {
        let process = self.twin(node)?;
        anyhow::ensure!(
            process.running_pid().is_none(),
            "{node} is running: a disk is swapped with the power off (`cargo xtask lab power-cut {node}` first)"
        );
        twin::blank_disk(&self.dir, node)?;
        self.power_on(node).await
    }

    /// The machines the box has that the config no longer names (removed from cluster.yaml):
    /// each still has its folder in `twins/` and may still be plugged in, powered off.
    fn retired(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("twins")) else { return Vec::new() };
        let mut retired: Vec<String> = entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
            .filter(|name| !self.config.nodes.iter().any(|node| &node.name == name))
            .collect();
        retired.sort();
        retired
    }

    /// A retired machine's twin, known by its pid file (one that took a reset and powered off
    /// is not running).
    fn retired_twin(&self, name: &str) -> Process {
        self.process(&format!("twin-{name}"), PathBuf::new(), Vec::new())
    }

    /// `node`'s switch port down (its power is cut) or up.
    fn set_port(&self, node: &str, up: bool) -> anyhow::Result<()> {
        let lan = self.lan();
        let member = lan.member(node).with_context(|| format!("no node {node} in the box"))?;
        lan.set_port(member, up)
    }

    /// Restarts one node's twin (after its hardware file was edited, say): the machine
    /// reboots, into its config if it has one, else into maintenance mode.
    pub async fn restart_twin(&self, node: &str) -> anyhow::Result<()> {
        self.stop_twin(node)?;
        self.power_on(node).await
    }

    /// Waits until a twin answers on its address, port 50000 (in maintenance mode or
    /// configured), asked from inside its own namespace of the box.
    async fn wait_for_twin(&self, node: &str, process: &Process) -> anyhow::Result<()> {
        let lan = self.lan();
        let member = lan.member(node).with_context(|| format!("no node {node} in the box"))?;
        let api = std::net::SocketAddr::from((member.address, 50000));
        wait_until(process, Duration::from_secs(60), "answer on port 50000", || async {
            lan::listens(&member.namespace, api)
        })
        .await
    }

    /// Starts the twins (in maintenance mode, or into their configs) and waits until each
    /// answers.
    async fn start_twins(&self) -> anyhow::Result<()> {
        for (index, node) in self.config.nodes.iter().enumerate() {
            twin::ensure_hardware(&self.dir, &node.name, index)?;
        }
        for (node, process) in self.config.nodes.iter().zip(self.twins()) {
            // A machine whose power was cut gets its cable back as it boots.
            if process.running_pid().is_none() {
                self.set_port(&node.name, true)?;
            }
            self.start(&process)?;
            self.wait_for_twin(&node.name, &process).await?;
        }
        Ok(())
    }

    /// The box's cluster's own admin kubeconfig (aimed at the VIP), which stage 01 writes into
    /// the box's folder (`state/lab/cluster/kubeconfig`).
    fn cluster_kubeconfig(&self) -> PathBuf {
        kit::context::cluster_kubeconfig_path(&self.config.state_dir())
    }

    /// True once stage 01 has installed the box's cluster (its admin kubeconfig exists; `down
    /// --purge` deletes it with the machines' disks).
    pub fn installed(&self) -> bool {
        self.cluster_kubeconfig().exists()
    }

    /// Builds the box and starts whatever is not running (a running lab is left as it is). On
    /// an installed cluster it waits until the API answers through the forward and every
    /// node is Ready; otherwise the machines wait in maintenance mode for stage 01.
    pub async fn up(&self) -> anyhow::Result<()> {
        self.ensure_disk_space(SPACE_NEEDED)?;
        ensure_binaries(&self.config.versions)?;
        self.claim_box()?;
        self.write_files()?;
        self.lan().up().context("building the box")?;
        tracing::info!("the box: the config's LAN in network namespaces ({})", self.lan().switch);
        discovery::write_files(&self.dir, &self.lan(), lan::admin_address(&self.config))?;
        self.start(&self.discovery_service())?;
        self.start_twins().await?;
        let workstation = self.workstation();
        if workstation.running_pid().is_none() {
            let _ = std::fs::remove_file(self.workstation_ready_file());
        }
        self.start(&workstation)?;
        wait_until(&workstation, Duration::from_secs(30), "listen for the API forward", || async {
            let ready = std::fs::read_to_string(self.workstation_ready_file()).ok();
            ready.is_some_and(|pid| workstation.running_pid().is_some_and(|running| pid == running.to_string()))
        })
        .await?;
        if !self.installed() {
            tracing::info!(
                "the machines wait in maintenance mode: install the cluster with `cargo xtask install-all --lab` (or \
                 `cargo run -p talos-bootstrap -- apply --lab`)"
            );
            return Ok(());
        }
        wait_until(&workstation, Duration::from_secs(180), "reach a cluster whose nodes are all Ready", || async {
            self.cluster_ready().await.is_ok()
        })
        .await
    }

    /// Refuses, before anything starts, when the lab's folder has less than `needed` bytes free:
    /// on a full disk a machine's etcd dies at its start with an empty log.
    fn ensure_disk_space(&self, needed: u64) -> anyhow::Result<()> {
        let free = process::free_bytes(&self.dir)
            .with_context(|| format!("reading the free space of {}", self.dir.display()))?;
        anyhow::ensure!(
            free >= needed,
            "the box needs {} MiB free for its machines' disks and logs in {}, and that disk has {} MiB: free some \
             space (`cargo clean` frees the build's, `cargo xtask lab down --purge` an old box's) and run this again",
            needed >> 20,
            self.dir.display(),
            free >> 20
        );
        Ok(())
    }

    /// The box is named after the cluster, so two configs with one cluster name would share
    /// its namespaces and addresses: the lab that builds it records its folder in
    /// `/run/talos-ha/<cluster>.owner` (`state/lab` beside its config), and another lab of that
    /// name refuses while that one exists.
    fn claim_box(&self) -> anyhow::Result<()> {
        let file = box_owner_file(&self.config.name);
        if let Ok(owner) = std::fs::read_to_string(&file) {
            let owner = PathBuf::from(owner.trim());
            anyhow::ensure!(
                owner == self.dir || !kit::lab::ports_file(&owner).exists() || self.lan().present()?.is_empty(),
                "the box of cluster `{}` belongs to the lab in {}: stop that one (`cargo xtask lab down` with its \
                 config) or give this config another cluster name (`name:` in cluster.yaml)",
                self.config.name,
                owner.display()
            );
        }
        std::fs::create_dir_all(file.parent().unwrap_or(Path::new("/run")))?;
        std::fs::write(&file, self.dir.display().to_string()).with_context(|| format!("writing {}", file.display()))
    }

    /// The cluster through the forward: every configured machine's Node Ready. A machine in
    /// maintenance mode (one added to the config, or given a blank disk) has no Node until
    /// stage 01 or `node replace` sends it its config.
    async fn cluster_ready(&self) -> anyhow::Result<String> {
        let client = kit::client::client_from_kubeconfig(&self.kubeconfig).await?;
        let mut configured = self.config.clone();
        configured.nodes.retain(|node| twin::twin_dir(&self.dir, &node.name).join("config.yaml").exists());
        let waiting = kit::client::nodes_not_ready(&client, &configured).await?;
        anyhow::ensure!(waiting.is_empty(), "not Ready: {}", waiting.join(", "));
        let maintenance = self.config.nodes.len() - configured.nodes.len();
        let waiting = if maintenance > 0 { format!(" ({maintenance} in maintenance mode)") } else { String::new() };
        Ok(format!("{} nodes Ready through {}{waiting}", configured.nodes.len(), self.api_url()))
    }

    /// Writes what the processes read: the ports, and the stages kwok plays.
    fn write_files(&self) -> anyhow::Result<()> {
        for dir in [&self.dir, &self.dir.join("run"), &self.dir.join("logs")] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(kit::lab::ports_file(&self.dir), serde_json::to_string(&self.ports)?)?;
        // kwok's config: its own stages (from its module, see build.rs) and nothing from ~/.kwok.
        // Its parallelism options are spelled out: a config file given with --config does not
        // get the defaults kwokctl would fill in, and a zero stops kwok at start.
        let mut kwok_config = String::from(
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions:\n  \
             nodeLeaseDurationSeconds: 40\n  nodeLeaseParallelism: 4\n  nodePlayStageParallelism: 4\n  \
             podPlayStageParallelism: 4\n  podsOnNodeSyncParallelism: 1\n",
        );
        for stage in self.binaries.kwok_stages() {
            kwok_config.push_str("---\n");
            kwok_config
                .push_str(&std::fs::read_to_string(&stage).with_context(|| format!("reading {}", stage.display()))?);
        }
        kwok_config.push_str(POD_READY_AGAIN_STAGE);
        std::fs::write(self.dir.join("kwok.yaml"), kwok_config)?;
        self.write_images()
    }

    /// The images the box can pull, each a link to the build that plays it:
    /// - `images/<release>/talos-twin`, for each Talos release built: an installer image whose
    ///   release is not here cannot be pulled (the twin says so as Talos does); a machine booting
    ///   a release execs that release's twin;
    /// - `images/kubernetes/<release>/<component>`, for each Kubernetes release built: a control
    ///   plane runs the build its component's image tag names, and without one the image cannot
    ///   be pulled (the twin leaves that static pod pending).
    fn write_images(&self) -> anyhow::Result<()> {
        let images = self.images_dir();
        if images.exists() {
            std::fs::remove_dir_all(&images).with_context(|| format!("clearing {}", images.display()))?;
        }
        let link = |target: PathBuf, dir: PathBuf, name: &str| -> anyhow::Result<()> {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::os::unix::fs::symlink(&target, dir.join(name))
                .with_context(|| format!("linking {} into {}", target.display(), dir.display()))
        };
        for release in self.binaries.built_releases() {
            link(self.binaries.twin(release), images.join(release.to_string()), build::TWIN)?;
        }
        for release in self.binaries.built_kubernetes_releases() {
            let (built, dir) =
                (self.binaries.kubernetes_release(release), images.join("kubernetes").join(release.to_string()));
            for component in build::CONTROL_PLANE_COMPONENTS {
                link(built.join(component), dir.clone(), component)?;
            }
        }
        Ok(())
    }

    fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    fn start(&self, process: &Process) -> anyhow::Result<()> {
        let (pid, started) = process.ensure_started()?;
        if started {
            tracing::info!("started {} (pid {pid}), log: {}", process.name, process.log_file().display());
        } else {
            tracing::debug!("{} already running (pid {pid})", process.name);
        }
        Ok(())
    }

    /// Each component's PID, health and memory, the cluster, and the box.
    pub async fn status(&self) -> Vec<ComponentStatus> {
        let mut report = Vec::new();
        let processes = self.processes();
        let listed: Vec<i32> = processes.iter().filter_map(Process::running_pid).collect();
        for process in &processes {
            let pid = process.running_pid();
            let (healthy, detail) = match (pid, process.name.as_str()) {
                (None, name) if build::host_controller_role(name).is_some() => (
                    true,
                    "starts once its stage is applied, if the box has a build of the release it runs \
                     (the workstation services start it)"
                        .to_owned(),
                ),
                (None, _) => (false, "not running".to_owned()),
                (Some(_), name) if name.starts_with("twin-") => {
                    let node = name.trim_start_matches("twin-");
                    let address = self.config.nodes.iter().find(|n| n.name == node).map(|n| n.ip.to_string());
                    let mode = if twin::twin_dir(&self.dir, node).join("config.yaml").exists() {
                        "configured"
                    } else {
                        "maintenance mode"
                    };
                    (true, format!("Talos API on {}:50000 (in the box), {mode}", address.unwrap_or_default()))
                }
                (Some(_), "workstation") => (
                    true,
                    format!("forwards {} to {}; the box's stand-ins", self.api_url(), self.config.api_endpoint()),
                ),
                (Some(_), "discovery-service") => (
                    true,
                    format!(
                        "Talos's discovery service {} as https://{}/ (in the box, {}:443)",
                        discovery::SERVICE_VERSION,
                        discovery::SERVICE_HOST,
                        lan::admin_address(&self.config)
                    ),
                ),
                (Some(_), name) => {
                    (true, format!("running: {}", build::host_controller_role(name).unwrap_or_default()))
                }
            };
            report.push(ComponentStatus {
                name: process.name.clone(),
                pid,
                healthy,
                detail,
                resident_bytes: pid.and_then(|pid| process::resident_bytes(pid, &listed)),
            });
        }
        let (healthy, detail) = match self.cluster_ready().await {
            Ok(ready) => (true, ready),
            Err(_) if !self.installed() => (true, "not installed yet (cargo xtask install-all --lab)".to_owned()),
            Err(error) => (false, format!("{error:#}")),
        };
        report.push(ComponentStatus { name: "cluster".to_owned(), pid: None, healthy, detail, resident_bytes: None });
        report.push(self.lan_status());
        report
    }

    /// The box: every namespace there, nothing of it on this machine's own network.
    fn lan_status(&self) -> ComponentStatus {
        let lan = self.lan();
        let (healthy, detail) = match (lan.present(), lan.leaks()) {
            (Ok(present), Ok(leaks)) if present.len() == lan.namespaces().len() && leaks.is_empty() => (
                true,
                format!(
                    "{} namespaces on {}/{} (workstation {}), sealed",
                    present.len(),
                    lan.gateway,
                    lan.prefix_len,
                    lan.admin().address
                ),
            ),
            (Ok(present), Ok(leaks)) => {
                (false, format!("{} of {} namespaces; {}", present.len(), lan.namespaces().len(), leaks.join("; ")))
            }
            (Err(error), _) | (_, Err(error)) => (false, format!("{error:#}")),
        };
        ComponentStatus { name: "box".to_owned(), pid: None, healthy, detail, resident_bytes: None }
    }

    /// Runs `command` on the box's workstation, as a person on the LAN would: the talosctl and
    /// kubectl the lab built come first on `PATH` (this machine need have neither), and
    /// `TALOSCONFIG` and `KUBECONFIG` are the box's cluster's own (the control planes, the VIP).
    pub fn shell(&self, command: &[String]) -> anyhow::Result<std::process::ExitStatus> {
        let lan = self.lan();
        lan.up()?;
        let tools = [self.binaries.talos_dir.clone(), self.binaries.kubernetes_dir.clone()];
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(tools.into_iter().chain(std::env::split_paths(&path)))
            .context("a lab binary folder's path holds a ':'")?;
        let env = [
            ("PATH", path),
            ("TALOSCONFIG", kit::tool::talosconfig_path(&self.config).into_os_string()),
            ("KUBECONFIG", self.cluster_kubeconfig().into_os_string()),
        ];
        lan::exec_in(&lan.admin().namespace, command, &env)
    }

    /// The box for this lab's config.
    pub fn lan(&self) -> lan::Lan {
        lan::Lan::new(&self.config)
    }

    /// Stops every process, newest first, and takes the box down; with `purge`, deletes the
    /// lab's folder too (the machines' disks: the next `up` boots them from the ISO again).
    pub fn down(&self, purge: bool) -> anyhow::Result<Vec<String>> {
        let mut stopped = Vec::new();
        // Every process is asked to stop even if one cannot be: the first failure is reported
        // after the others are down.
        let mut failed = None;
        for process in self.processes().iter().rev() {
            let grace = if process.name.starts_with("twin-") { TWIN_SHUTDOWN } else { Duration::from_secs(10) };
            match process.stop(grace) {
                Ok(true) => stopped.push(process.name.clone()),
                Ok(false) => {}
                Err(error) => failed = failed.or(Some(error)),
            }
        }
        // A machine removed from the config is still in the box until the box goes.
        let retired = self.retired();
        for name in &retired {
            let twin = self.retired_twin(name);
            match twin.stop(TWIN_SHUTDOWN) {
                Ok(true) => stopped.push(twin.name.clone()),
                Ok(false) => {}
                Err(error) => failed = failed.or(Some(error)),
            }
            if let Err(error) = self.lan().unplug_retired(name) {
                failed = failed.or(Some(error));
            }
        }
        if let Some(error) = failed {
            return Err(error);
        }
        if self.lan().down()? > 0 {
            stopped.push(format!("the box ({})", self.lan().switch));
        }
        discovery::remove_files(&self.lan(), &retired)?;
        let owner = box_owner_file(&self.config.name);
        if std::fs::read_to_string(&owner).is_ok_and(|dir| Path::new(dir.trim()) == self.dir) {
            std::fs::remove_file(&owner).with_context(|| format!("removing {}", owner.display()))?;
        }
        if purge && self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("deleting {}", self.dir.display()))?;
        }
        Ok(stopped)
    }

    /// The PIDs of every process still running (empty after a clean `down`).
    pub fn running_pids(&self) -> Vec<(String, i32)> {
        let retired = self.retired().into_iter().map(|name| self.retired_twin(&name));
        let all = self.processes().into_iter().chain(retired);
        all.filter_map(|p| p.running_pid().map(|pid| (p.name.clone(), pid))).collect()
    }
}

/// A lab beside the main one (bench, tests): the config copied into `dir` (its state folder,
/// so its lab, lives there) under the cluster name `name`, so that its box (the config's LAN,
/// named after the cluster) is a second, separate one: the same addresses on other network
/// stacks, where its node twins never meet the main lab's.
pub fn second_box_config(
    source: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<kit::config::ClusterConfig> {
    let original = kit::config::ClusterConfig::load(source)?;
    let text = std::fs::read_to_string(source)?;
    let renamed: Vec<String> = text
        .lines()
        .map(|line| {
            let key = line.trim_start();
            let is_name =
                key.strip_prefix("name:").is_some_and(|rest| rest.split_whitespace().next() == Some(&original.name));
            if is_name { line.replacen(&original.name, name, 1) } else { line.to_owned() }
        })
        .collect();
    std::fs::create_dir_all(dir)?;
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, renamed.join("\n") + "\n")?;
    let config = kit::config::ClusterConfig::load(&path)?;
    anyhow::ensure!(config.name == name, "could not rename the cluster in {}", source.display());
    Ok(config)
}

/// Where the lab that built a cluster's box says so.
fn box_owner_file(cluster: &str) -> PathBuf {
    PathBuf::from("/run/talos-ha").join(format!("{cluster}.owner"))
}

/// Polls `probe` until it holds; fails early, with the log tail, if the process dies.
async fn wait_until<F, Fut>(process: &Process, timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if probe().await {
            return Ok(());
        }
        if process.running_pid().is_none() {
            anyhow::bail!(
                "{} exited before it could {what} (a port already taken? see {}; {}):\n{}",
                process.name,
                process.log_file().display(),
                process.proc_state(),
                process.log_tail(20)
            );
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{} did not {what} within {}s (see {}):\n{}",
                process.name,
                timeout.as_secs(),
                process.log_file().display(),
                process.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
