//! What stage 01 keeps as evidence that it bootstrapped etcd: `state/bootstrap.json`, naming
//! the cluster (its secrets bundle's identity), the member, and when.
//!
//! Talos refuses a second bootstrap only on a node whose etcd data directory is not empty
//! (`AlreadyExists`). When no control plane reports etcd members, the machines alone cannot
//! tell a cluster that was never bootstrapped (a first install interrupted before its
//! bootstrap) from one whose every member lost its data (a disaster): a bootstrap is right for
//! the first and starts a second, empty cluster in place of the second. The record tells them
//! apart.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
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

/// Where the record of one cluster lives, and which cluster that is.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub path: PathBuf,
    /// `sha256:` and 16 hex digits of the secrets bundle: the CAs every member trusts are in
    /// it, so another bundle means another cluster. Only a digest: the bundle stays secret.
    pub cluster: String,
}

impl Evidence {
    /// The record beside the secrets bundle at `secrets`, for the cluster that bundle makes.
    pub fn for_secrets(secrets: &Path, path: PathBuf) -> anyhow::Result<Evidence> {
        let bundle = std::fs::read(secrets).with_context(|| format!("reading {}", secrets.display()))?;
        let digest: String = sha2::Sha256::digest(&bundle).iter().take(8).map(|byte| format!("{byte:02x}")).collect();
        Ok(Evidence { path, cluster: format!("sha256:{digest}") })
    }

    /// This cluster's recorded bootstrap, if any (a record of another cluster is none of its).
    pub fn recorded(&self) -> anyhow::Result<Option<BootstrapRecord>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("reading {}", self.path.display())),
        };
        let record: BootstrapRecord = serde_json::from_str(&text).with_context(|| {
            format!("{} is not a bootstrap record; delete it only if you know why", self.path.display())
        })?;
        Ok((record.cluster == self.cluster).then_some(record))
    }

    /// Records that etcd of this cluster was bootstrapped on (or found running on) `member`.
    pub fn record(&self, member: &str, how: &str) -> anyhow::Result<BootstrapRecord> {
        let record = BootstrapRecord {
            cluster: self.cluster.clone(),
            member: member.to_owned(),
            at: k8s_openapi::jiff::Timestamp::now().to_string(),
            how: how.to_owned(),
        };
        kit::fsutil::write(&self.path, serde_json::to_string_pretty(&record)? + "\n")?;
        tracing::info!("recorded the bootstrap of {} in {}", self.cluster, self.path.display());
        Ok(record)
    }
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
        let path = dir.path().join("bootstrap.json");
        let evidence = Evidence::for_secrets(&ours, path.clone())?;
        assert_eq!(evidence.recorded()?, None, "nothing recorded yet");
        let record = evidence.record("cp01", "bootstrapped")?;
        assert_eq!(evidence.recorded()?, Some(record));
        assert!(evidence.cluster.starts_with("sha256:") && evidence.cluster.len() == 23, "{}", evidence.cluster);
        assert_eq!(Evidence::for_secrets(&theirs, path)?.recorded()?, None, "another bundle, another cluster");
        Ok(())
    }
}
