//! What stage 01 keeps as evidence of what it did to the machines, beside the secrets bundle,
//! each record naming the cluster (the bundle's identity):
//!
//! - `state/bootstrap.json`: that it bootstrapped etcd, on which member, when. Talos refuses a
//!   second bootstrap only on a node whose etcd data directory is not empty (`AlreadyExists`).
//!   When no control plane reports etcd members, the machines alone cannot tell a cluster that
//!   was never bootstrapped (a first install interrupted before its bootstrap) from one whose
//!   every member lost its data (a disaster): a bootstrap is right for the first and starts a
//!   second, empty cluster in place of the second. The record tells them apart.
//! - `state/configs-sent.json`: which machines took their config in maintenance mode, when, and
//!   have not answered configured since. A machine that took it installs to disk and reboots,
//!   and does not answer meanwhile (minutes on real hardware): a run interrupted just after
//!   sending it, then run again, waits for that machine instead of taking it for one that was
//!   never booted. Once it answers configured its entry goes: from then on its silence is a
//!   machine down, which a run reports instead of waiting out the install timeout for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kit::talos::NodeState;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// One cluster's bootstrap, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRecord {
    /// The secrets bundle's identity (see [`Evidence::cluster`]).
    pub cluster: String,
    /// The control plane etcd was bootstrapped on (or first found running on).
    pub member: String,
    /// When, in RFC 3339.
    pub at: String,
    /// `bootstrapped` (this tool asked Talos to) or `found running` (etcd already had members
    /// when stage 01 first looked, as after an install made before records were kept).
    pub how: String,
}

/// The machines one cluster's configs were sent to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ConfigsSent {
    cluster: String,
    /// Node name → when its config was sent, in RFC 3339.
    nodes: BTreeMap<String, String>,
}

/// Where the records of one cluster live, and which cluster that is.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The state folder: the records sit beside the secrets bundle.
    pub dir: PathBuf,
    /// `sha256:` and 16 hex digits of the secrets bundle: the CAs every member trusts are in
    /// it, so another bundle means another cluster. Only a digest: the bundle stays secret.
    pub cluster: String,
}

impl Evidence {
    /// The records in `dir`, for the cluster the secrets bundle at `secrets` makes.
    pub fn for_secrets(secrets: &Path, dir: PathBuf) -> anyhow::Result<Evidence> {
        let bundle = std::fs::read(secrets).with_context(|| format!("reading {}", secrets.display()))?;
        let digest: String = sha2::Sha256::digest(&bundle).iter().take(8).map(|byte| format!("{byte:02x}")).collect();
        Ok(Evidence { dir, cluster: format!("sha256:{digest}") })
    }

    pub fn bootstrap_path(&self) -> PathBuf {
        self.dir.join("bootstrap.json")
    }

    fn configs_sent_path(&self) -> PathBuf {
        self.dir.join("configs-sent.json")
    }

    /// This cluster's recorded bootstrap, if any (a record of another cluster is none of its).
    pub fn recorded(&self) -> anyhow::Result<Option<BootstrapRecord>> {
        let record: Option<BootstrapRecord> = read_record(&self.bootstrap_path())?;
        Ok(record.filter(|record| record.cluster == self.cluster))
    }

    /// Records that etcd of this cluster was bootstrapped on (or found running on) `member`.
    pub fn record(&self, member: &str, how: &str) -> anyhow::Result<BootstrapRecord> {
        let record = BootstrapRecord {
            cluster: self.cluster.clone(),
            member: member.to_owned(),
            at: now(),
            how: how.to_owned(),
        };
        let path = self.bootstrap_path();
        kit::fsutil::write_atomic(&path, serde_json::to_string_pretty(&record)? + "\n")?;
        tracing::info!("recorded the bootstrap of {} in {}", self.cluster, path.display());
        Ok(record)
    }

    /// Records that `node` is sent this cluster's config (before it is: see `converge`).
    pub fn config_sent(&self, node: &str) -> anyhow::Result<()> {
        let mut sent = self.sent()?;
        sent.nodes.insert(node.to_owned(), now());
        self.save(&sent)
    }

    /// Forgets that `node` was sent its config: it answered configured, so it is installed.
    pub fn installed(&self, node: &str) -> anyhow::Result<()> {
        let mut sent = self.sent()?;
        if sent.nodes.remove(node).is_some() {
            self.save(&sent)?;
        }
        Ok(())
    }

    fn save(&self, sent: &ConfigsSent) -> anyhow::Result<()> {
        kit::fsutil::write_atomic(&self.configs_sent_path(), serde_json::to_string_pretty(sent)? + "\n")
    }

    /// When `node` took this cluster's config, if it did and has not answered configured since.
    fn config_sent_at(&self, node: &str) -> anyhow::Result<Option<String>> {
        Ok(self.sent()?.nodes.remove(node))
    }

    /// When `node` was sent this cluster's config, if it was and is not configured yet
    /// (`state`, as it answers now): it is installing and rebooting, or about to.
    pub fn installing_since(&self, node: &str, state: &NodeState) -> anyhow::Result<Option<String>> {
        if *state == NodeState::Configured {
            return Ok(None);
        }
        self.config_sent_at(node)
    }

    /// This cluster's record of configs sent (an empty one when there is none, or only
    /// another cluster's).
    fn sent(&self) -> anyhow::Result<ConfigsSent> {
        let record: Option<ConfigsSent> = read_record(&self.configs_sent_path())?;
        Ok(record
            .filter(|sent| sent.cluster == self.cluster)
            .unwrap_or_else(|| ConfigsSent { cluster: self.cluster.clone(), nodes: BTreeMap::new() }))
    }
}

/// A record, or none where the file does not exist.
fn read_record<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is not a record stage 01 wrote; delete it only if you know why", path.display()))
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_belongs_to_the_bundle_it_was_made_with() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (ours, theirs) = (dir.path().join("secrets.yaml"), dir.path().join("other.yaml"));
        std::fs::write(&ours, "cluster: {id: a, secret: b}\n")?;
        std::fs::write(&theirs, "cluster: {id: c, secret: d}\n")?;
        let state = dir.path().to_owned();
        let evidence = Evidence::for_secrets(&ours, state.clone())?;
        assert_eq!(evidence.recorded()?, None, "nothing recorded yet");
        assert_eq!(evidence.config_sent_at("cp01")?, None);
        let record = evidence.record("cp01", "bootstrapped")?;
        evidence.config_sent("cp01")?;
        evidence.config_sent("wk01")?;
        assert_eq!(evidence.recorded()?, Some(record));
        assert!(evidence.config_sent_at("cp01")?.is_some() && evidence.config_sent_at("wk01")?.is_some());
        assert_eq!(evidence.config_sent_at("cp02")?, None);
        assert!(evidence.installing_since("cp01", &NodeState::Maintenance)?.is_some(), "sent, not configured yet");
        assert_eq!(evidence.installing_since("cp01", &NodeState::Configured)?, None, "configured: installed");
        evidence.installed("cp01")?;
        let down = NodeState::Unreachable("connection refused".into());
        assert_eq!(evidence.installing_since("cp01", &down)?, None, "installed once: its silence is a machine down");
        assert!(evidence.installing_since("wk01", &down)?.is_some(), "still installing as far as the record knows");
        assert!(evidence.cluster.starts_with("sha256:") && evidence.cluster.len() == 23, "{}", evidence.cluster);
        let theirs = Evidence::for_secrets(&theirs, state)?;
        assert_eq!(theirs.recorded()?, None, "another bundle, another cluster");
        assert_eq!(theirs.config_sent_at("cp01")?, None, "another cluster's machines");
        Ok(())
    }
}
