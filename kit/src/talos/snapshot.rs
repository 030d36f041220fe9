//! etcd's snapshot through Talos, and the backups `cargo xtask backup` keeps.
//!
//! `talosctl -n CP etcd snapshot PATH` (cmd/talosctl/cmd/talos/etcd.go, etcdSnapshotCmd) asks one
//! control plane for its member's snapshot: machined reads its *local* member
//! (v1alpha1_server.go, EtcdSnapshot), so no quorum is needed, and so the member is chosen
//! here: healthy (a voting member without errors, never a learner) and the most up to date
//! (the highest applied Raft index). talosctl checks etcd's trailing SHA-256 (a snapshot's size
//! is 32 bytes past a multiple of 512) before it renames the file into place, then prints what
//! etcd's own `snapshot status` says of it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{EtcdMemberStatus, PROBE_TIMEOUT, TalosApi, describe_health};
use crate::config::{ClusterConfig, Node};

/// The snapshot's name in a backup folder.
pub const SNAPSHOT_FILE: &str = "etcd.snapshot";
/// The backup's description in its folder: never encrypted, it holds no secret.
pub const MANIFEST_FILE: &str = "backup.json";

/// How long a snapshot may take to stream: etcd's default quota is 2 GiB.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// What etcd says of a snapshot (`snapshot info: …`), and its size on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    pub bytes: u64,
    /// etcd's own hash of the key space (hex), what `bootstrap --recover-from` prints again.
    pub etcd_hash: String,
    pub revision: u64,
    pub keys: u64,
}

/// One file of a backup: its name in the folder (before any `.age`) and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    pub name: String,
    pub sha256: String,
}

impl BackupFile {
    /// A file named `name` in the backup (`talos/cp01.yaml`) holding `contents`.
    pub fn new(name: &str, contents: &[u8]) -> BackupFile {
        BackupFile { name: name.to_owned(), sha256: crate::artifacts::sha256_hex(contents) }
    }
}

/// `backup.json`: what a backup holds and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    pub cluster: String,
    /// RFC 3339, UTC: the recovery point.
    pub taken_at: String,
    /// The control plane whose member was snapshotted.
    pub member: String,
    pub snapshot: SnapshotInfo,
    /// The age public key every file but this one is encrypted to, if any.
    pub encrypted_to: Option<String>,
    pub files: Vec<BackupFile>,
}

/// Takes the snapshot into `path` from the member [`choose_member`] picks; returns its node
/// and what etcd says of it.
pub async fn take(api: &impl TalosApi, config: &ClusterConfig, path: &Path) -> anyhow::Result<(String, SnapshotInfo)> {
    let health = super::etcd_health(api, config).await;
    let node = choose_member(&health)?;
    let target = path.display().to_string();
    let printed = api.ask(node, &["etcd", "snapshot", &target], SNAPSHOT_TIMEOUT).await?;
    let info = parse_snapshot(&printed)
        .with_context(|| format!("unexpected `talosctl etcd snapshot` output from {}: {printed:?}", node.name))?;
    Ok((node.name.clone(), info))
}

/// The member to snapshot: healthy, and of those the one that applied the most. None healthy:
/// an error that names every control plane asked and what it answered.
pub fn choose_member<'c>(health: &[(&'c Node, anyhow::Result<EtcdMemberStatus>)]) -> anyhow::Result<&'c Node> {
    health
        .iter()
        .filter_map(|(node, status)| {
            status.as_ref().ok().filter(|status| status.healthy()).map(|status| (*node, status))
        })
        .max_by_key(|(_, status)| status.applied_index)
        .map(|(node, _)| node)
        .ok_or_else(|| {
            let asked: Vec<String> = health.iter().map(|(node, _)| format!("{} ({})", node.name, node.ip)).collect();
            anyhow::anyhow!(
                "no control plane's etcd member is healthy, so none can give a consistent snapshot (asked {}, each \
                 about its own member, within {}s): {}. Bring a member back first; if quorum is lost for good, \
                 `cargo xtask restore --from` your last backup",
                asked.join(", "),
                PROBE_TIMEOUT.as_secs(),
                describe_health(health)
            )
        })
}

/// Reads talosctl's two lines: `etcd snapshot saved to "PATH" (N bytes)` and `snapshot info:
/// hash H, revision R, total keys K, total size S`.
pub fn parse_snapshot(printed: &str) -> Option<SnapshotInfo> {
    let saved = printed.lines().find_map(|line| line.strip_prefix("etcd snapshot saved to "))?;
    let bytes = saved.rsplit_once(" (")?.1.strip_suffix(" bytes)")?.parse().ok()?;
    let info = printed.lines().find_map(|line| line.strip_prefix("snapshot info: "))?;
    let field = |name: &str| info.split(", ").find_map(|part| part.strip_prefix(name));
    Some(SnapshotInfo {
        bytes,
        etcd_hash: field("hash ")?.to_owned(),
        revision: field("revision ")?.parse().ok()?,
        keys: field("total keys ")?.parse().ok()?,
    })
}

/// Where `backup` keeps backups unless told otherwise (`--out`), and where `status` looks.
pub fn default_dir(config: &ClusterConfig) -> PathBuf {
    config.state_dir().join("backups")
}

/// How old a backup taken at `taken_at` (RFC 3339) is now.
pub fn age(taken_at: &str) -> anyhow::Result<Duration> {
    let taken: k8s_openapi::jiff::Timestamp =
        taken_at.parse().with_context(|| format!("reading the time {taken_at}"))?;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(taken);
    Ok(Duration::from_secs(u64::try_from(age.as_secs()).unwrap_or_default()))
}

/// The whole backups of `cluster` in `out` (folders with a `backup.json` that reads), oldest
/// first.
pub fn backups(out: &Path, cluster: &str) -> anyhow::Result<Vec<(PathBuf, Backup)>> {
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", out.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Ok(text) = std::fs::read_to_string(path.join(MANIFEST_FILE)) else { continue };
        // A folder whose description cannot be read is left alone (never pruned), and said.
        match serde_json::from_str::<Backup>(&text) {
            Ok(backup) if backup.cluster == cluster => found.push((path, backup)),
            Ok(_) => {}
            Err(error) => tracing::warn!("{} is not a backup.json talos-ha wrote, left alone: {error}", path.display()),
        }
    }
    found.sort_by(|(_, a), (_, b)| a.taken_at.cmp(&b.taken_at));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn talosctls_snapshot_lines_are_read() {
        let printed = "etcd snapshot saved to \"/b/etcd.snapshot\" (3305504 bytes)\n\
                       snapshot info: hash 5d4f1c2a, revision 2811, total keys 1467, total size 3305472\n";
        assert_eq!(
            parse_snapshot(printed),
            Some(SnapshotInfo { bytes: 3_305_504, etcd_hash: "5d4f1c2a".into(), revision: 2811, keys: 1467 })
        );
        assert_eq!(parse_snapshot("etcd snapshot saved to \"x\" (12 bytes)\n"), None, "no info line");
    }

    fn member(applied_index: u64, learner: bool) -> anyhow::Result<EtcdMemberStatus> {
        Ok(EtcdMemberStatus { member: "m".into(), learner, errors: String::new(), applied_index })
    }

    #[test]
    fn the_snapshot_comes_from_the_most_up_to_date_healthy_member() -> anyhow::Result<()> {
        let config = ClusterConfig::parse(include_str!("../../../cluster.yaml"), Path::new("cluster.yaml"))?;
        let cps: Vec<&Node> = config.control_planes().collect();
        let health = vec![
            (cps[0], Err(anyhow::anyhow!("connection refused"))),
            (cps[1], member(1200, false)),
            (cps[2], member(1205, true)),
        ];
        assert_eq!(choose_member(&health)?.name, cps[1].name, "a learner is never chosen, however far it got");
        let health = vec![(cps[0], member(1200, false)), (cps[1], member(1203, false)), (cps[2], member(900, false))];
        assert_eq!(choose_member(&health)?.name, cps[1].name, "the one that applied the most");

        let none = vec![
            (cps[0], Err(anyhow::anyhow!("connection refused"))),
            (cps[1], member(10, true)),
            (cps[2], Err(anyhow::anyhow!("deadline exceeded"))),
        ];
        let refused = format!("{:#}", choose_member(&none).expect_err("no healthy member"));
        for node in &cps {
            assert!(refused.contains(&format!("{} ({})", node.name, node.ip)), "names whom it asked: {refused}");
        }
        assert!(refused.contains("a learner"), "and what each said: {refused}");
        Ok(())
    }
}
