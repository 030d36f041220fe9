//! `cargo xtask lab up | status | down`: a real Kubernetes control plane on 127.0.0.1.
//!
//! What a control plane is made of, in start order:
//! 1. **etcd ×3**: the only stateful part. Three members form a quorum: any two agree on every
//!    write, so losing one loses nothing (this is Talos's "stacked etcd" on three control planes).
//! 2. **kube-apiserver**: the front door. It authenticates (client certificates), authorises
//!    (RBAC), admits (Pod Security, as Talos enforces it) and stores objects in etcd.
//! 3. **kube-controller-manager**: the loops that turn Deployments into ReplicaSets into Pods,
//!    evict pods from dead nodes, sign certificates, mint ServiceAccount tokens.
//! 4. **kube-scheduler**: picks a node for every new pod.
//! 5. **kwok**: stands in for the kubelets. It keeps the config's six nodes Ready and moves
//!    scheduled pods to Running, without running containers.
//! 6. **MetalLB's controller** (not part of a control plane; the one add-on the lab runs for
//!    real): it assigns LoadBalancer addresses once stage 02 has written the pools.
//!
//! Nothing leaves this machine: every process listens on 127.0.0.1, and the Service and pod
//! ranges are inside 127.0.0.0/8.

mod build;
pub mod lan;
mod pki;
pub mod process;
pub mod twin;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kit::config::ClusterConfig;
use kube::api::Api;
use serde::{Deserialize, Serialize};

pub use build::{KWOK_VERSION, ensure_binaries};
use pki::Pki;
use process::Process;

/// The Service range: the API server hands ClusterIPs from it (inside 127.0.0.0/8, so any
/// connection to a ClusterIP stays on this machine).
pub const SERVICE_CIDR: &str = "127.96.0.0/16";
/// The `kubernetes` Service's ClusterIP: the first address of the range.
const API_SERVICE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 96, 0, 1);
/// A kwok stage of our own: a returning kubelet re-reports its running pods as Ready. When a
/// node goes NotReady the node lifecycle controller marks its pods not Ready; once the node is
/// back, a kubelet posts their real status again. kwok's own stages only make *pending* pods
/// Ready, so without this the pods of a node that came back (the verify-ha drill) would stay
/// not Ready for good.
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

/// kwok gives pods addresses from here.
pub const POD_CIDR: &str = "127.128.0.1/16";
/// The API server's port unless `--port-base` says otherwise; the other ports follow it (up
/// to base + 23). Keep them below Linux's ephemeral range (32768 and up): there, a client
/// connection may already hold the port.
pub const DEFAULT_PORT_BASE: u16 = 16443;
const ETCD_MEMBERS: u16 = 3;

/// The ports of one lab, all derived from one base so two labs can run side by side.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Ports {
    pub base: u16,
}

impl Ports {
    pub fn api(self) -> u16 {
        self.base
    }
    pub fn etcd_client(self, member: u16) -> u16 {
        self.base + 10 + 2 * member
    }
    fn etcd_peer(self, member: u16) -> u16 {
        self.base + 11 + 2 * member
    }
    fn controller_manager(self) -> u16 {
        self.base + 20
    }
    fn scheduler(self) -> u16 {
        self.base + 21
    }
    fn kwok(self) -> u16 {
        self.base + 22
    }
    fn metallb_metrics(self) -> u16 {
        self.base + 23
    }
}

/// One lab: its folder (`state/lab` beside the config), its ports and its binaries.
pub struct Lab {
    pub dir: PathBuf,
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
        let dir = config.state_dir().join("lab");
        let stored = std::fs::read_to_string(dir.join("lab.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<Ports>(&text).ok());
        if let Some(stored) = stored.filter(|stored| stored.base != port_base && port_base != DEFAULT_PORT_BASE) {
            tracing::warn!(
                "this lab was created on port {}; it keeps that port (to move it: `cargo xtask lab down --purge`, then up with --port-base {port_base})",
                stored.base
            );
        }
        let ports = stored.unwrap_or(Ports { base: port_base });
        Lab {
            kubeconfig: kit::lab::kubeconfig_path(&config.state_dir()),
            dir,
            ports,
            binaries: build::binaries(&config.versions),
            config: config.clone(),
        }
    }

    /// A lab binary from the cache (e.g. the lab's own `kubectl`).
    pub fn binary(&self, name: &str) -> PathBuf {
        self.binaries.path(name)
    }

    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.api())
    }

    fn pki(&self) -> Pki {
        Pki { dir: self.dir.join("pki") }
    }

    fn process(&self, name: &str, binary: &str, args: Vec<String>) -> Process {
        Process {
            name: name.to_owned(),
            binary: self.binaries.path(binary),
            args,
            run_dir: self.dir.join("run"),
            log_dir: self.dir.join("logs"),
        }
    }

    fn etcd_members(&self) -> Vec<Process> {
        let ports = self.ports;
        let initial_cluster = (0..ETCD_MEMBERS)
            .map(|m| format!("etcd-{m}=http://127.0.0.1:{}", ports.etcd_peer(m)))
            .collect::<Vec<_>>()
            .join(",");
        (0..ETCD_MEMBERS)
            .map(|m| {
                let name = format!("etcd-{m}");
                let client = format!("http://127.0.0.1:{}", ports.etcd_client(m));
                let peer = format!("http://127.0.0.1:{}", ports.etcd_peer(m));
                let args = vec![
                    format!("--name={name}"),
                    format!("--data-dir={}", self.dir.join("data").join(&name).display()),
                    format!("--listen-client-urls={client}"),
                    format!("--advertise-client-urls={client}"),
                    format!("--listen-peer-urls={peer}"),
                    format!("--initial-advertise-peer-urls={peer}"),
                    format!("--initial-cluster={initial_cluster}"),
                    "--initial-cluster-state=new".into(),
                    "--initial-cluster-token=talos-ha-lab".into(),
                    "--log-level=warn".into(),
                ];
                self.process(&name, "etcd", args)
            })
            .collect()
    }

    fn apiserver(&self) -> Process {
        let pki = self.pki();
        let p = |path: PathBuf| path.display().to_string();
        let etcd_servers = (0..ETCD_MEMBERS)
            .map(|m| format!("http://127.0.0.1:{}", self.ports.etcd_client(m)))
            .collect::<Vec<_>>()
            .join(",");
        let args = vec![
            format!("--etcd-servers={etcd_servers}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The `kubernetes` Service cannot have a loopback endpoint (validation refuses
            // 127.0.0.0/8), and nothing in the lab dials it: kwok runs no pods.
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={}", self.ports.api()),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--tls-cert-file={}", p(pki.cert("apiserver"))),
            format!("--tls-private-key-file={}", p(pki.key("apiserver"))),
            format!("--client-ca-file={}", p(pki.ca_cert())),
            format!("--service-account-issuer={}", self.api_url()),
            format!("--service-account-key-file={}", p(pki.service_account_pub())),
            format!("--service-account-signing-key-file={}", p(pki.service_account_key())),
            "--authorization-mode=Node,RBAC".into(),
            // As on Talos: privileged pods are allowed, and Pod Security decides per namespace.
            "--allow-privileged=true".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            format!("--admission-control-config-file={}", p(self.dir.join("admission.json"))),
            // Webhooks and aggregated APIs are dialled at their endpoints' IPs (pod IPs in
            // 127.128.0.0/16) instead of a `<svc>.<ns>.svc` name looked up in this machine's DNS.
            "--enable-aggregator-routing=true".into(),
            format!("--requestheader-client-ca-file={}", p(pki.front_proxy_ca_cert())),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!("--proxy-client-cert-file={}", p(pki.cert("front-proxy-client"))),
            format!("--proxy-client-key-file={}", p(pki.key("front-proxy-client"))),
            format!("--kubelet-client-certificate={}", p(pki.cert("apiserver-kubelet-client"))),
            format!("--kubelet-client-key={}", p(pki.key("apiserver-kubelet-client"))),
            // Nodes carry the config's LAN addresses as data; never dial them from here.
            "--kubelet-preferred-address-types=Hostname".into(),
            "--profiling=false".into(),
        ];
        self.process("kube-apiserver", "kube-apiserver", args)
    }

    /// What the controller-manager and the scheduler share: who they are (their kubeconfig,
    /// also used to check callers of their own HTTPS port), that port on loopback, and leader
    /// election (so a second copy would wait rather than act twice).
    fn control_loop_flags(&self, client: &str, port: u16) -> Vec<String> {
        let kubeconfig = self.component_kubeconfig(client);
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            "--leader-elect=true".into(),
            "--profiling=false".into(),
        ]
    }

    fn controller_manager(&self) -> Process {
        let pki = self.pki();
        let mut args = self.control_loop_flags("controller-manager", self.ports.controller_manager());
        args.extend([
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--root-ca-file={}", pki.ca_cert().display()),
            format!("--service-account-private-key-file={}", pki.service_account_key().display()),
            format!("--cluster-signing-cert-file={}", pki.ca_cert().display()),
            format!("--cluster-signing-key-file={}", pki.ca_key().display()),
            "--use-service-account-credentials=true".into(),
        ]);
        self.process("kube-controller-manager", "kube-controller-manager", args)
    }

    fn scheduler(&self) -> Process {
        let args = self.control_loop_flags("scheduler", self.ports.scheduler());
        self.process("kube-scheduler", "kube-scheduler", args)
    }

    fn kwok(&self) -> Process {
        let (key, value) = kit::lab::KWOK_ANNOTATION;
        let args = vec![
            format!("--kubeconfig={}", self.component_kubeconfig("kwok")),
            // An explicit config, so a ~/.kwok/kwok.yaml on this machine changes nothing.
            format!("--config={}", self.dir.join("kwok.yaml").display()),
            "--manage-all-nodes=false".into(),
            format!("--manage-nodes-with-annotation-selector={key}={value}"),
            format!("--cidr={POD_CIDR}"),
            "--node-ip=127.0.0.1".into(),
            format!("--server-address=127.0.0.1:{}", self.ports.kwok()),
        ];
        self.process("kwok", "kwok", args)
    }

    /// MetalLB's controller as a host process, so LoadBalancer Services really get addresses
    /// from the pools stage 02 writes (it waits quietly until they exist). Its webhook stays off
    /// (the lab transform leaves MetalLB's webhook out). The speaker never runs here: it would
    /// announce the addresses on this machine's network.
    fn metallb_controller(&self) -> Process {
        let args = vec![
            format!("-kubeconfig={}", self.component_kubeconfig("admin")),
            "-namespace=metallb-system".into(),
            "-webhook-mode=disabled".into(),
            "-disable-cert-rotation=true".into(),
            "-ml-secret-name=metallb-memberlist".into(),
            "-deployment=controller".into(),
            // Metrics only; MetalLB has no flag to bind it to 127.0.0.1 alone.
            format!("-port={}", self.ports.metallb_metrics()),
        ];
        self.process("metallb-controller", "metallb-controller", args)
    }

    fn component_kubeconfig(&self, client: &str) -> String {
        self.dir.join("kubeconfigs").join(format!("{client}.kubeconfig")).display().to_string()
    }

    /// Every process, in start order.
    fn processes(&self) -> Vec<Process> {
        let mut all = self.twins();
        all.extend(self.etcd_members());
        all.extend([
            self.apiserver(),
            self.controller_manager(),
            self.scheduler(),
            self.kwok(),
            self.metallb_controller(),
        ]);
        all
    }

    /// One node twin per node of the config, each in its namespace of the box.
    fn twins(&self) -> Vec<Process> {
        let lan = self.lan();
        let twin = self.binaries.path(build::TWIN);
        let etcd = self.binaries.path("etcd");
        let kubernetes_bin = etcd.parent().unwrap_or(Path::new("."));
        let control_planes: Vec<_> = self.config.control_planes().map(|node| node.ip).collect();
        let (kwok, kwok_config) = (self.binaries.path("kwok"), self.dir.join("kwok.yaml"));
        let peers =
            twin::Peers { kubernetes_bin, kwok: &kwok, kwok_config: &kwok_config, control_planes: &control_planes };
        self.config
            .nodes
            .iter()
            .filter_map(|node| {
                lan.member(&node.name).map(|member| twin::process(&self.dir, &twin, member, node.ip, &peers))
            })
            .collect()
    }

    fn twin(&self, node: &str) -> anyhow::Result<Process> {
        self.twins()
            .into_iter()
            .find(|process| process.name == format!("twin-{node}"))
            .with_context(|| format!("no twin for node {node}"))
    }

    /// Shuts one node's twin down (its etcd member with it): the machine is off.
    pub fn stop_twin(&self, node: &str) -> anyhow::Result<()> {
        self.twin(node)?.stop(Duration::from_secs(15)).map(drop)
    }

    /// Restarts one node's twin (after its hardware file was edited, say): the machine
    /// reboots, into its config if it has one, else into maintenance mode.
    pub async fn restart_twin(&self, node: &str) -> anyhow::Result<()> {
        let process = self.twin(node)?;
        process.stop(Duration::from_secs(15))?;
        self.start(&process)?;
        wait_for_twin(&process).await
    }

    /// Wipes one node's twin back to a machine booted from the ISO: everything it kept (its
    /// config, etcd data, certificates) is gone but its hardware; it waits in maintenance mode
    /// (what re-imaging a real machine does).
    pub async fn reset_twin(&self, node: &str) -> anyhow::Result<()> {
        self.stop_twin(node)?;
        let dir = twin::twin_dir(&self.dir, node);
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.file_name().is_some_and(|name| name == twin::HARDWARE_FILE) {
                continue;
            }
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.with_context(|| format!("wiping {}", path.display()))?;
        }
        self.restart_twin(node).await
    }

    /// Starts the twins (in maintenance mode, waiting for their configs) and waits until each
    /// says it listens.
    async fn start_twins(&self) -> anyhow::Result<()> {
        for (index, node) in self.config.nodes.iter().enumerate() {
            twin::ensure_hardware(&self.dir, &node.name, index)?;
        }
        for process in self.twins() {
            self.start(&process)?;
            wait_for_twin(&process).await?;
        }
        Ok(())
    }

    /// Starts whatever is not running (a running lab is left as it is), registers the config's
    /// nodes, and waits until the nodes are Ready and the controllers hold their leases.
    pub async fn up(&self, workspace: &Path) -> anyhow::Result<()> {
        ensure_binaries(&self.config.versions, workspace)?;
        self.write_files()?;
        // The config's LAN (issue 15): built now, so `lab shell` reaches the config's
        // addresses; the control plane itself still listens on 127.0.0.1 until its machines
        // move into the box. Without root the lab runs without it, as before.
        match self.lan().up() {
            Ok(()) => {
                tracing::info!("the box: the config's LAN in network namespaces ({})", self.lan().switch);
                self.start_twins().await?;
            }
            Err(error) => tracing::warn!("no box this time: {error:#}"),
        }

        let etcd = self.etcd_members();
        for member in &etcd {
            self.start(member)?;
        }
        for (index, member) in (0..ETCD_MEMBERS).zip(&etcd) {
            let port = self.ports.etcd_client(index);
            wait_until(member, Duration::from_secs(60), "report healthy", || async move { etcd_healthy(port) }).await?;
        }

        let apiserver = self.apiserver();
        self.start(&apiserver)?;
        wait_until(&apiserver, Duration::from_secs(120), "report ready (/readyz)", || async {
            self.apiserver_ready().await
        })
        .await?;
        let client = kit::lab::client_from_kubeconfig(&self.kubeconfig).await?;

        let controller_manager = self.controller_manager();
        let scheduler = self.scheduler();
        let kwok = self.kwok();
        for process in [&controller_manager, &scheduler, &kwok] {
            self.start(process)?;
        }
        // MetalLB's controller exits at start when its CRDs are missing: it runs once stage 02
        // has installed them (install-all --lab runs `up` again after each stage).
        if metallb_installed(&client).await {
            self.start(&self.metallb_controller())?;
        } else {
            tracing::info!(
                "MetalLB's controller starts once stage 02 is applied (`metallb apply --lab`, then `lab up`)"
            );
        }
        kit::lab::register_nodes(&client, &self.config).await?;
        tracing::info!("registered {} nodes as kwok nodes", self.config.nodes.len());
        for (process, lease) in [(&controller_manager, "kube-controller-manager"), (&scheduler, "kube-scheduler")] {
            let client = client.clone();
            wait_until(process, Duration::from_secs(90), "take its leader lease", || {
                let client = client.clone();
                async move { lease_holder(&client, lease).await.is_some() }
            })
            .await?;
        }
        wait_until(&kwok, Duration::from_secs(90), "mark every node Ready", || {
            let client = client.clone();
            async move { kit::lab::nodes_not_ready(&client, &self.config).await.is_ok_and(|waiting| waiting.is_empty()) }
        })
        .await
    }

    /// Writes what the processes read: certificates, kubeconfigs, the admission and kwok configs.
    fn write_files(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::write(self.dir.join("lab.json"), serde_json::to_string(&self.ports)?)?;
        let pki = self.pki();
        if pki.ensure(API_SERVICE_IP)? {
            tracing::info!("generated the lab's CA, certificates and service-account key in {}", pki.dir.display());
        }
        pki::write_kubeconfigs(&pki, &self.api_url(), &self.dir.join("kubeconfigs"), &self.kubeconfig)?;
        // Pod Security as Talos configures it: enforce `baseline` everywhere but kube-system,
        // audit and warn at `restricted`. A namespace that needs more must say so in a label.
        let admission = serde_json::json!({
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "AdmissionConfiguration",
            "plugins": [{
                "name": "PodSecurity",
                "configuration": {
                    "apiVersion": "pod-security.admission.config.k8s.io/v1",
                    "kind": "PodSecurityConfiguration",
                    "defaults": {
                        "enforce": "baseline", "enforce-version": "latest",
                        "audit": "restricted", "audit-version": "latest",
                        "warn": "restricted", "warn-version": "latest"
                    },
                    "exemptions": { "usernames": [], "runtimeClasses": [], "namespaces": ["kube-system"] }
                }
            }]
        });
        std::fs::write(self.dir.join("admission.json"), serde_json::to_string_pretty(&admission)?)?;
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
        Ok(())
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

    async fn apiserver_ready(&self) -> bool {
        let Ok(client) = kit::lab::client_from_kubeconfig(&self.kubeconfig).await else { return false };
        let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else { return false };
        matches!(client.request_text(request).await.as_deref(), Ok("ok"))
    }

    /// Each component's PID, health and memory.
    pub async fn status(&self) -> Vec<ComponentStatus> {
        let client = kit::lab::client_from_kubeconfig(&self.kubeconfig).await.ok();
        let mut report = Vec::new();
        for process in &self.processes() {
            let pid = process.running_pid();
            let (healthy, detail) = match (pid, process.name.as_str(), &client) {
                (None, "metallb-controller", Some(client)) if !metallb_installed(client).await => {
                    (true, "waits for stage 02 (metallb apply --lab, then lab up)".to_owned())
                }
                (None, name, _) if name.starts_with("twin-") && self.lan().present().is_ok_and(|p| p.is_empty()) => {
                    (true, "no box (needs root): no twin".to_owned())
                }
                (None, _, _) => (false, "not running".to_owned()),
                (Some(_), name, _) if name.starts_with("twin-") => {
                    let node = name.trim_start_matches("twin-");
                    let address = self.config.nodes.iter().find(|n| n.name == node).map(|n| n.ip.to_string());
                    let mode = if twin::twin_dir(&self.dir, node).join("config.yaml").exists() {
                        "configured"
                    } else {
                        "maintenance mode"
                    };
                    (true, format!("Talos API on {}:50000 (in the box), {mode}", address.unwrap_or_default()))
                }
                (Some(_), "kube-apiserver", _) if self.apiserver_ready().await => {
                    (true, format!("ready on {}", self.api_url()))
                }
                (Some(_), "kube-apiserver", _) => (false, "running but not ready".to_owned()),
                (Some(_), name, _) if name.starts_with("etcd-") => {
                    let member = name.trim_start_matches("etcd-").parse().unwrap_or_default();
                    let port = self.ports.etcd_client(member);
                    if etcd_healthy(port) {
                        (true, format!("healthy on 127.0.0.1:{port}"))
                    } else {
                        (false, "running but not healthy".into())
                    }
                }
                (Some(_), _, None) => (false, "running; API unreachable, health unknown".to_owned()),
                (Some(_), "kwok", Some(client)) => self.kwok_health(client).await,
                (Some(_), "metallb-controller", _) => {
                    (true, "running: assigns LoadBalancer addresses from stage 02's pools".to_owned())
                }
                (Some(_), name, Some(client)) => match lease_holder(client, name).await {
                    Some(holder) => (true, format!("leader ({holder})")),
                    None => (false, "running but holds no leader lease".to_owned()),
                },
            };
            report.push(ComponentStatus {
                name: process.name.clone(),
                pid,
                healthy,
                detail,
                resident_bytes: pid.and_then(process::resident_bytes),
            });
        }
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
            (Ok(present), _) if present.is_empty() => {
                (true, "not built (needs root; the lab runs without it)".to_owned())
            }
            (Ok(present), Ok(leaks)) => {
                (false, format!("{} of {} namespaces; {}", present.len(), lan.namespaces().len(), leaks.join("; ")))
            }
            (Err(error), _) | (_, Err(error)) => (false, format!("{error:#}")),
        };
        ComponentStatus { name: "box".to_owned(), pid: None, healthy, detail, resident_bytes: None }
    }

    async fn kwok_health(&self, client: &kube::Client) -> (bool, String) {
        match kit::lab::nodes_not_ready(client, &self.config).await {
            Ok(waiting) if waiting.is_empty() => (true, format!("{} nodes Ready", self.config.nodes.len())),
            Ok(waiting) => (false, format!("not Ready: {}", waiting.join(", "))),
            Err(error) => (false, format!("cannot list nodes: {error}")),
        }
    }

    /// The box for this lab's config.
    pub fn lan(&self) -> lan::Lan {
        lan::Lan::new(&self.config)
    }

    /// Stops every process, newest first, and takes the box down; with `purge`, deletes the
    /// lab's folder too.
    pub fn down(&self, purge: bool) -> anyhow::Result<Vec<String>> {
        let mut stopped = Vec::new();
        for process in self.processes().iter().rev() {
            if process.stop(Duration::from_secs(10))? {
                stopped.push(process.name.clone());
            }
        }
        if self.lan().down()? > 0 {
            stopped.push(format!("the box ({})", self.lan().switch));
        }
        if purge && self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("deleting {}", self.dir.display()))?;
        }
        Ok(stopped)
    }

    /// The PIDs of every process still running (empty after a clean `down`).
    pub fn running_pids(&self) -> Vec<(String, i32)> {
        self.processes().iter().filter_map(|p| p.running_pid().map(|pid| (p.name.clone(), pid))).collect()
    }
}

/// Waits until a twin says it answers on port 50000, in maintenance mode or configured (the
/// last line the twin logs when it listens).
async fn wait_for_twin(process: &Process) -> anyhow::Result<()> {
    wait_until(process, Duration::from_secs(30), "answer on port 50000", || async {
        let last = process.log_tail(1);
        last.contains("maintenance mode: waiting for a config") || last.contains("configured: serving")
    })
    .await
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

/// etcd's own health endpoint: true once the member is part of a quorum with a leader.
fn etcd_healthy(port: u16) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().into();
    agent
        .get(&format!("http://127.0.0.1:{port}/health"))
        .call()
        .ok()
        .and_then(|mut response| response.body_mut().read_to_string().ok())
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
        .is_some_and(|health| health["health"] == "true")
}

/// True once stage 02 has installed MetalLB's CRDs (its controller cannot start before).
async fn metallb_installed(client: &kube::Client) -> bool {
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.get_opt("ipaddresspools.metallb.io").await.ok().flatten().is_some()
}

/// Who holds a control-plane component's leader-election lease in kube-system, if anyone.
async fn lease_holder(client: &kube::Client, name: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = leases.get_opt(name).await.ok()??;
    lease.spec?.holder_identity.filter(|holder| !holder.is_empty())
}
