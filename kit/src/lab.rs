//! What every stage shares about the lab, the cluster in a box: where its kubeconfig is, how
//! a process joins the box's workstation (a `--lab` run does, so everything it dials, talosctl
//! included, stays inside the box), and which ports it forwards to this machine.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::artifacts::Component;
use crate::config::{ClusterConfig, Version};

/// The ports of one lab on 127.0.0.1 (and on the box's workstation), all derived from one base
/// so two labs can run side by side; `lab up` keeps them in `state/lab/lab.json`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Ports {
    pub base: u16,
}

impl Ports {
    /// The ports the lab in `lab_dir` (a config's `lab_dir()`) was started with, if it was.
    pub fn stored(lab_dir: &Path) -> Option<Ports> {
        let text = std::fs::read_to_string(ports_file(lab_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The API forward: on this machine and on the workstation.
    pub fn api(self) -> u16 {
        self.base
    }

    /// The Image Factory stand-in, on the workstation.
    pub fn image_factory(self) -> u16 {
        self.base + 1
    }

    /// The metrics port of MetalLB's controller, on the workstation.
    pub fn metallb_metrics(self) -> u16 {
        self.base + 2
    }

    /// What stage 01 uploads its schematic to on the lab.
    pub fn image_factory_url(self) -> String {
        format!("http://127.0.0.1:{}", self.image_factory())
    }
}

/// Where `lab up` keeps the lab's ports, in its folder.
pub fn ports_file(lab_dir: &Path) -> PathBuf {
    lab_dir.join("lab.json")
}

/// The network namespace of a cluster's box's workstation: `<cluster name>-admin`.
pub fn workstation_namespace(cluster: &str) -> String {
    format!("{cluster}-admin")
}

/// Moves the calling thread into `namespace`'s network stack (setns affects this thread, the
/// threads it starts afterwards and the processes they start).
pub fn enter_namespace(namespace: &str) -> anyhow::Result<()> {
    let handle = std::fs::File::open(format!("/run/netns/{namespace}")).with_context(|| {
        format!("the box has no namespace {namespace}: start it with `cargo xtask lab up` (as root)")
    })?;
    nix::sched::setns(handle, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {namespace} (joining a network namespace needs root, or CAP_SYS_ADMIN)"))
}

/// Makes the calling thread the box's workstation.
pub fn enter_box(config: &ClusterConfig) -> anyhow::Result<()> {
    enter_namespace(&workstation_namespace(&config.name))
}

/// Runs `work` on a thread of its own that can reach the machines, with an async runtime of
/// its own: for the box (a config loaded with `--lab`), a thread that joined the box's
/// workstation, since the machines' addresses exist only in there; for a real cluster, any.
pub fn at_the_machines<T, F, Fut>(config: &ClusterConfig, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(ClusterConfig) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let config = config.clone();
    std::thread::spawn(move || {
        if config.in_box {
            enter_box(&config).context("the box's machines are reached from inside the box")?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(work(config))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread that talks to the machines panicked"))?
}

/// The lab's admin kubeconfig, aimed at the API forward on 127.0.0.1 (the workstation
/// services write it once stage 01 has fetched the cluster's own, which is aimed at the VIP).
pub fn kubeconfig_path(lab_dir: &Path) -> PathBuf {
    lab_dir.join("kubeconfig")
}

/// The lab's binary cache: what `cargo xtask lab build` builds, folders keyed by version.
pub fn binaries_dir() -> PathBuf {
    crate::fsutil::cache_root().join("lab")
}

/// Where the box keeps its host-process build of `component`'s controller at `version`
/// (`<component>-<version>/controller` in the lab's cache). `lab build` writes it, and the
/// workstation services (lab/go/talos/workstation/controllers.go) run it while the cluster runs
/// that release; without it, the add-on's controller in the box is kwok's stand-in.
pub fn controller_binary(component: Component, version: Version) -> PathBuf {
    binaries_dir().join(format!("{}-{version}", component.dir())).join("controller")
}
