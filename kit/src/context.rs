//! What a stage is given: the validated model, which cluster it talks to, and which verb it
//! runs. Every layer above reads a [`Context`]; nothing in it knows the CLI that built it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::artifacts::{Artifact, ArtifactStore, Component};
use crate::config::ClusterConfig;

/// Which cluster a stage talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The real Talos cluster described by `cluster.yaml`.
    Talos,
    /// The cluster in a box: Talos twins at the config's addresses (`cargo xtask lab up`).
    Lab,
}

/// The stage verb a context serves. Most of a stage reads the same for all of them; a secret
/// a stage keeps in the state folder differs: `apply` makes it, `plan` and `verify` read the
/// one kept, `render` shows a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Check,
    Plan,
    Apply,
    Verify,
    Render,
}

/// What a stage is given: the validated model and where the cluster is.
#[derive(Debug)]
pub struct Context {
    pub config: ClusterConfig,
    pub target: Target,
    pub verb: Verb,
    pub kubeconfig: PathBuf,
    /// Where upstream artifacts are read from instead of their official URLs.
    pub mirror: Option<PathBuf>,
    /// `apply --bootstrap`: stage 01 may bootstrap etcd where it cannot prove the cluster is new.
    pub bootstrap: bool,
    /// How long a step waits for a Kubernetes API that stopped answering (`--api-wait`).
    pub api_wait: Duration,
    /// How long `apply` waits for each workload it rolled out (`--rollout-timeout`; `None`:
    /// the stage's own).
    pub rollout_timeout: Option<Duration>,
}

impl Context {
    /// A client for the target's API server, from the kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        crate::client::client_from_kubeconfig(&self.kubeconfig).await
    }

    /// The pinned upstream artifacts, from the mirror if one was given.
    pub fn artifacts(&self) -> ArtifactStore {
        ArtifactStore::new(&self.config, self.mirror.as_deref(), &crate::fsutil::cache_root())
    }

    /// One pinned upstream manifest as it was published (from the cache, the mirror, or its
    /// official URL, checked against the lock).
    pub fn upstream_text(&self, component: Component, file: &str) -> anyhow::Result<String> {
        let artifact = Artifact::find(component, file)?;
        // The fetch may download (blocking I/O): keep it off the async worker's back.
        let bytes = tokio::task::block_in_place(|| self.artifacts().fetch(&artifact))?;
        String::from_utf8(bytes).with_context(|| format!("{file} is not UTF-8"))
    }

    /// The same context aimed at the talos target: what `render` shows is what a real cluster
    /// gets, never the lab's transformed bundle.
    pub fn as_talos_target(&self) -> Context {
        Context {
            config: self.config.clone(),
            target: Target::Talos,
            verb: self.verb,
            kubeconfig: self.kubeconfig.clone(),
            mirror: self.mirror.clone(),
            bootstrap: self.bootstrap,
            api_wait: self.api_wait,
            rollout_timeout: self.rollout_timeout,
        }
    }
}

/// The cluster's own admin kubeconfig, aimed at the VIP: stage 01 fetches it from a control
/// plane, on real nodes and in the lab's box alike.
pub fn cluster_kubeconfig_path(state_dir: &Path) -> PathBuf {
    state_dir.join("kubeconfig")
}
