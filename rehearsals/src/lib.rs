//! Rehearsals on boxes of their own. Each test here builds a cluster in a box beside the shared
//! lab (another cluster name, so other network namespaces; its own state folder and port base),
//! does to it what must never be done to the shared one (installs it from nothing, kills the
//! install, wipes etcd, resets machines), and takes it down with its data. Nothing here touches
//! the shared lab, so `cargo xtask test` runs this package beside the lab's own tests
//! (`tests/`), which keeps the whole suite inside its time budget on two cores.
//!
//! - `twins.rs`: stage 01 one step at a time against the node twins.
//! - `fresh_clone.rs`: README's first command from nothing, on a box pinned at Talos v1.12.0;
//!   the box then takes the Talos upgrade to v1.12.1 (`talos_upgrade.rs`: by talosctl, then by
//!   `cargo xtask upgrade` through its faults, watched by `watch.rs`), then the Kubernetes
//!   changes (`kubernetes_upgrade.rs`), then machines replaced, added and removed
//!   (`machines.rs`), and a second install-all changes nothing.
//! - `interrupted_install.rs`: a first install killed at three points, and a wiped cluster.
//! - `addon_upgrade.rs`: a box at the seed's add-ons upgraded hop by hop to the defaults.
//!   Its box, at every stage's default release, then runs the restore drill (`drill.rs`): it
//!   loses etcd's quorum and is restored from a backup.

pub mod drill;
pub mod kubernetes_upgrade;
pub mod machines;
pub mod talos_upgrade;
pub mod watch;

use std::collections::BTreeMap;

use kit::config::ClusterConfig;
use lab::Lab;

/// A box of a test's own, taken down with its data whatever the test did.
pub struct OwnBox {
    _dir: tempfile::TempDir,
    pub config: ClusterConfig,
    pub lab: Lab,
    /// Where stage 01 keeps the box's cluster's files (`state/lab/cluster`).
    pub cluster_state: std::path::PathBuf,
}

impl OwnBox {
    /// The shared lab's config under another cluster name, in a folder of its own, on ports
    /// from `port_base`.
    pub fn new(name: &str, port_base: u16) -> anyhow::Result<OwnBox> {
        OwnBox::edited(name, port_base, str::to_owned)
    }

    /// The same, its `cluster.yaml` rewritten by `edit` first (another release pinned).
    pub fn edited(name: &str, port_base: u16, edit: impl Fn(&str) -> String) -> anyhow::Result<OwnBox> {
        let dir = tempfile::tempdir()?;
        let renamed = lab::second_box_config(&tests::config_path(), dir.path(), name)?;
        std::fs::write(&renamed.source, edit(&std::fs::read_to_string(&renamed.source)?))?;
        let config = ClusterConfig::load(&renamed.source)?;
        let lab = Lab::new(&config, port_base);
        let cluster_state = config.clone().in_box().state_dir();
        Ok(OwnBox { _dir: dir, config, lab, cluster_state })
    }

    /// talosctl (the lab's) with this box's talosconfig, run on its workstation: what it printed,
    /// stdout then stderr, and whether it succeeded.
    pub fn talosctl(&self, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let output = self.lab.talosctl(args)?;
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        Ok((output.status.success(), said))
    }

    /// `cargo xtask <args> --lab` on this box (its ports, its config, the test mirror).
    pub fn xtask(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.cargo_xtask(args);
        command.arg("--lab");
        command
    }

    /// `cargo xtask <args>` on the talos target, as on a real cluster, aimed at this box's API
    /// through its forward on 127.0.0.1 (`--kubeconfig`), so nothing but loopback is dialled.
    pub fn xtask_as_real(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.cargo_xtask(args);
        command.arg("--kubeconfig").arg(&self.lab.kubeconfig);
        command
    }

    fn cargo_xtask(&self, args: &[&str]) -> std::process::Command {
        let mut command = xtask::cargo();
        command
            .current_dir(xtask::workspace_root())
            .arg("xtask")
            .args(args)
            .arg("--config")
            .arg(&self.config.source)
            .arg("--mirror")
            .arg(tests::upstream_mirror());
        command
    }

    fn ip(&self, node: &str) -> String {
        self.config.nodes.iter().find(|n| n.name == node).map(|n| n.ip.to_string()).unwrap_or_default()
    }

    /// talosctl aimed at `node` alone.
    pub fn talosctl_at(&self, node: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let ip = self.ip(node);
        let aimed: Vec<&str> = ["-n", &ip, "-e", &ip].into_iter().chain(args.iter().copied()).collect();
        self.talosctl(&aimed)
    }

    /// The Kubernetes build each control-plane component of `node` runs, asked of its process
    /// (not of a pod's label): the folder of the file its `/proc/<pid>/exe` names, e.g.
    /// `kube-apiserver` → `kubernetes-v1.34.4`. A component's process is the one whose flags
    /// name the node's own files (`<twin>/kubernetes/`).
    pub fn control_plane_builds(&self, node: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let files = format!("{}/kubernetes/", lab::twin::twin_dir(&self.lab.dir, node).display());
        let mut builds = BTreeMap::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            if !String::from_utf8_lossy(&cmdline).split('\0').any(|arg| arg.contains(&files)) {
                continue;
            }
            let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else { continue };
            let name = |path: Option<&std::path::Path>| {
                path.and_then(std::path::Path::file_name).map(|name| name.to_string_lossy().into_owned())
            };
            if let (Some(component), Some(build)) = (name(Some(&exe)), name(exe.parent())) {
                builds.insert(component, build);
            }
        }
        Ok(builds)
    }
}

/// Runs `command` off the async runtime (a rehearsal's `cargo xtask` runs for minutes).
pub async fn output_of(mut command: std::process::Command) -> anyhow::Result<std::process::Output> {
    Ok(tokio::task::spawn_blocking(move || command.output()).await??)
}

/// Runs `command` in a process group of its own and, once a line it writes on stderr satisfies
/// `at`, kills the whole group (cargo, the xtask and what that started), as a person's Ctrl-C
/// or a lost session would: the lines read, and whether such a line came.
pub fn killed_at(mut command: std::process::Command, at: impl Fn(&str) -> bool) -> anyhow::Result<(Vec<String>, bool)> {
    use std::os::unix::process::CommandExt as _;
    let mut child =
        command.process_group(0).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn()?;
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let (lines, reached) = tests::stderr_until(&mut child, at)?;
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL)?;
    child.wait()?;
    Ok((lines, reached))
}

/// What a command printed: stdout, then stderr.
pub fn printed(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The kubelet version each Node reports (`status.nodeInfo.kubeletVersion`), by node name.
pub async fn kubelet_versions(kubeconfig: &std::path::Path) -> anyhow::Result<BTreeMap<String, String>> {
    let client = kit::client::client_from_kubeconfig(kubeconfig).await?;
    let nodes = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client).list(&Default::default()).await?;
    Ok(nodes
        .into_iter()
        .map(|node| {
            let version = node.status.and_then(|status| status.node_info).map(|info| info.kubelet_version);
            (node.metadata.name.unwrap_or_default(), version.unwrap_or_default())
        })
        .collect())
}

impl Drop for OwnBox {
    fn drop(&mut self) {
        // A failed rehearsal's box goes too, but its logs stay for the person reading the failure.
        if std::thread::panicking() {
            let kept = std::env::temp_dir().join(format!("talos-ha-failed-{}", self.config.name));
            let copied = std::process::Command::new("cp").arg("-a").arg(self.lab.dir.join("logs")).arg(&kept).status();
            eprintln!("the box's logs: {} ({copied:?})", kept.display());
        }
        if let Err(error) = self.lab.down(true) {
            eprintln!("taking {} down: {error:#}", self.config.name);
        }
    }
}
