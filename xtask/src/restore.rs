//! `cargo xtask restore --from DIR`: Talos's disaster-recovery runbook as a tool, for a cluster
//! whose etcd lost its quorum (two of three control planes gone, or every member's data).
//!
//! Before any machine is touched: every file of the backup matches `backup.json` (a tampered or
//! truncated snapshot is refused), the backup's secrets bundle is this workstation's and its
//! machine configs were made from it, and a majority of control planes is *not* healthy (the
//! runbook throws away everything written since the backup; on a cluster with quorum that is a
//! loss, not a recovery: `--force` does it anyway).
//!
//! Then, as Talos's runbook:
//! 1. every control plane that answers has its EPHEMERAL volume wiped (`reset --graceful=false
//!    --reboot --system-labels-to-wipe=EPHEMERAL`): it comes back configured, its etcd empty and
//!    waiting to join or be bootstrapped (`service etcd`: Preparing);
//! 2. one of them is bootstrapped from the snapshot (`bootstrap --recover-from`): Talos checks
//!    the snapshot's hash and restores it as a cluster of one, recorded as stage 01 records a
//!    bootstrap;
//! 3. the others join it as learners and are promoted.
//!
//! A member of the restored cluster is never wiped. A control plane that was off during the
//! restore comes back holding the old cluster's data; a run after the restore wipes only the
//! machines that are not members of the restored cluster, so they join it. Then it verifies:
//! every member healthy, the API through the VIP, every node Ready, each stage's `verify`; and
//! prints the recovery point (the snapshot's age) and how long the recovery took.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node as KubeNode;
use kit::config::{ClusterConfig, Node};
use kit::stage::{GlobalArgs, exit};
use kit::talos::recovery::{bootstrap_from, etcd_member_ids, etcd_service_state, wipe_ephemeral};
use kit::talos::snapshot::{Backup, MANIFEST_FILE, SNAPSHOT_FILE};
use kit::talos::{BootstrapAnswer, EtcdMemberStatus, NodeState, Talosctl, etcd_health, etcd_status, probe};
use serde::Deserialize;
use talos_bootstrap::evidence::Evidence;

/// How a bootstrap record says a cluster was restored (stage 01's `bootstrap.json`).
const RESTORED: &str = "restored from ";

#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The backup folder, as `cargo xtask backup` printed it.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The age identity file (from `age-keygen`) that opens an encrypted backup.
    #[arg(long, value_name = "FILE")]
    pub age_identity: Option<PathBuf>,
    /// Restore although a majority of control planes is healthy: everything written to the
    /// cluster since the backup is lost. For a cluster whose data is wrong, not lost.
    #[arg(long)]
    pub force: bool,
    /// Check the backup and show what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(global: &GlobalArgs, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let Some(config) = global.load_config(&mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    let started = Instant::now();
    let opened = tempfile::tempdir().context("a private folder for the opened backup")?;
    let backup = open_backup(&config, &args.from, args.age_identity.as_deref(), opened.path())?;
    let point = kit::talos::snapshot::age(&backup.taken_at)?;
    eprintln!(
        "restore: backup of {} taken {} ({} ago) from {}: revision {}, {} keys; every file matches backup.json",
        backup.cluster,
        backup.taken_at,
        humanize(point),
        backup.member,
        backup.snapshot.revision,
        backup.snapshot.keys
    );

    let snapshot = opened.path().join(SNAPSHOT_FILE);
    let paths = talos_bootstrap::StatePaths::new(&config);
    let evidence = Evidence::for_secrets(&paths.secrets, paths.evidence.clone())?;
    let (force, dry_run, from) = (args.force, args.dry_run, args.from.display().to_string());
    let unreachable = crate::machines::with_talosctl(&config, move |talosctl, config| async move {
        let plan = plan(&talosctl, &config, &evidence, force).await?;
        eprintln!("restore: {}", plan.describe());
        if dry_run {
            return Ok(plan.unreachable);
        }
        recover(&talosctl, &config, &plan, &snapshot, &evidence, &from).await?;
        Ok(plan.unreachable)
    })?;
    if dry_run {
        eprintln!("restore: --dry-run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }

    let again = global.xtask_command(&format!("restore --from {}", args.from.display()));
    // The stages' checks count nodes and replicas: they run once every control plane is back.
    let failed = if unreachable.is_empty() { verify(global, &config)? } else { Vec::new() };
    if !unreachable.is_empty() {
        eprintln!(
            "restore: {} did not answer and are not members yet: when they are back, run `{again}` again; it wipes \
             only the machines that are not members of the restored cluster, so they join it",
            unreachable.join(", ")
        );
    }
    eprintln!(
        "restore: recovery point {} ago (the backup of {}); recovered in {:.1}s",
        humanize(point),
        backup.taken_at,
        started.elapsed().as_secs_f64()
    );
    Ok(if failed.is_empty() && unreachable.is_empty() {
        ExitCode::SUCCESS
    } else {
        if !failed.is_empty() {
            eprintln!("restore: not verified: {}; run `{again}` again once fixed", failed.join("; "));
        }
        ExitCode::from(exit::FAILED)
    })
}

/// The parts of a machine config that say which cluster it belongs to.
#[derive(Deserialize)]
struct MachineConfigIdentity {
    machine: MachineCa,
    cluster: ClusterId,
}

#[derive(Deserialize)]
struct MachineCa {
    ca: Certificate,
}

#[derive(Deserialize)]
struct Certificate {
    crt: String,
}

#[derive(Deserialize)]
struct ClusterId {
    id: String,
}

/// The parts of a secrets bundle that machine configs are made from.
#[derive(Deserialize)]
struct SecretsIdentity {
    cluster: ClusterId,
    certs: SecretsCerts,
}

#[derive(Deserialize)]
struct SecretsCerts {
    os: Certificate,
}

/// Checks the backup in `dir` and writes its files, decrypted, into `into`: each one's SHA-256
/// as `backup.json` records it, its cluster this config's, its secrets bundle the one this
/// workstation talks to the machines with, its machine configs made from that bundle.
fn open_backup(config: &ClusterConfig, dir: &Path, identity: Option<&Path>, into: &Path) -> anyhow::Result<Backup> {
    let manifest = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!("reading {}: --from names the folder `cargo xtask backup` printed", manifest.display())
    })?;
    let backup: Backup = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a backup talos-ha wrote", manifest.display()))?;
    anyhow::ensure!(
        backup.cluster == config.name,
        "{} is a backup of cluster {:?}, and cluster.yaml names {:?}",
        dir.display(),
        backup.cluster,
        config.name
    );
    let identities = match (&backup.encrypted_to, identity) {
        (Some(recipient), None) => {
            anyhow::bail!("the backup is encrypted to {recipient}: pass the matching identity file with --age-identity")
        }
        (_, Some(file)) => age::IdentityFile::from_file(file.display().to_string())
            .map_err(anyhow::Error::from)
            .and_then(|identities| identities.into_identities().map_err(anyhow::Error::from))
            .with_context(|| format!("--age-identity {}", file.display()))?,
        (None, None) => Vec::new(),
    };
    for file in &backup.files {
        let contents = read_backup_file(dir, &file.name, backup.encrypted_to.is_some(), &identities)?;
        let sha256 = kit::artifacts::sha256_hex(&contents);
        anyhow::ensure!(
            sha256 == file.sha256,
            "{} in {} has SHA-256 {sha256}, and backup.json recorded {}: the backup was changed or damaged since it \
             was taken; refusing before any machine is touched",
            file.name,
            dir.display(),
            file.sha256
        );
        let target = into.join(&file.name);
        if let Some(parent) = target.parent() {
            kit::fsutil::create_private_dir(parent)?;
        }
        kit::fsutil::write_private(&target, &contents)?;
    }
    anyhow::ensure!(into.join(SNAPSHOT_FILE).exists(), "{} holds no {SNAPSHOT_FILE}", dir.display());

    let ours = talos_bootstrap::StatePaths::new(config).secrets;
    let theirs = std::fs::read(into.join("secrets.yaml")).context("the backup holds no secrets.yaml")?;
    match std::fs::read(&ours) {
        Ok(bundle) => anyhow::ensure!(
            bundle == theirs,
            "the backup's secrets bundle is not {}: it is another cluster's backup (or this workstation's state is \
             another cluster's)",
            ours.display()
        ),
        Err(_) => anyhow::bail!(
            "no secrets bundle at {}: this workstation cannot talk to the machines; put the backup's back first \
             (`cp {dir}/secrets.yaml {dir}/talosconfig {state}/`, and its talos/ folder into {state}/talos/), then \
             run restore again",
            ours.display(),
            dir = dir.display(),
            state = config.state_dir().display()
        ),
    }
    let secrets: SecretsIdentity = serde_saphyr::from_slice(&theirs).context("reading the backup's secrets.yaml")?;
    for file in backup.files.iter().filter(|file| file.name.starts_with("talos/") && !file.name.contains("/patches/")) {
        let text = std::fs::read_to_string(into.join(&file.name))?;
        // A machine config is several documents; the v1alpha1 one holds the identity.
        let documents: Vec<serde_json::Value> =
            serde_saphyr::from_str_multiple(&text).with_context(|| format!("reading the backup's {}", file.name))?;
        let v1alpha1 = documents
            .into_iter()
            .find(|document| document.get("machine").is_some())
            .with_context(|| format!("the backup's {} has no v1alpha1 document", file.name))?;
        let machine: MachineConfigIdentity = serde_json::from_value(v1alpha1)
            .with_context(|| format!("the backup's {} names no cluster id or Talos CA", file.name))?;
        anyhow::ensure!(
            machine.cluster.id == secrets.cluster.id && machine.machine.ca.crt == secrets.certs.os.crt,
            "the backup's {} was not made from its secrets bundle (another cluster id or Talos CA)",
            file.name
        );
    }
    Ok(backup)
}

/// A backup's file `name`, decrypted when the backup is encrypted (`name.age`).
fn read_backup_file(
    dir: &Path,
    name: &str,
    encrypted: bool,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> anyhow::Result<Vec<u8>> {
    if !encrypted {
        let path = dir.join(name);
        return std::fs::read(&path).with_context(|| format!("reading {}", path.display()));
    }
    let path = dir.join(format!("{name}.age"));
    let sealed = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let decryptor = age::Decryptor::new(std::io::BufReader::new(sealed))
        .with_context(|| format!("{} is not an age file", path.display()))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|identity| identity.as_ref() as &dyn age::Identity))
        .with_context(|| format!("decrypting {} (is --age-identity the backup's key?)", path.display()))?;
    let mut contents = Vec::new();
    reader.read_to_end(&mut contents).with_context(|| format!("decrypting {}", path.display()))?;
    Ok(contents)
}

/// What a run will do.
struct Plan {
    /// The control plane a previous run restored: set when this run only brings back
    /// machines that were away.
    restored: Option<String>,
    /// The control planes to wipe: every one that answers and is not a healthy member of the
    /// restored cluster.
    wipe: Vec<Node>,
    /// Healthy members of the restored cluster, left alone.
    keep: Vec<String>,
    /// Control planes that do not answer.
    unreachable: Vec<String>,
}

impl Plan {
    fn describe(&self) -> String {
        let names = |nodes: &[Node]| nodes.iter().map(|node| node.name.clone()).collect::<Vec<_>>().join(", ");
        let mut said = match (&self.restored, self.wipe.first()) {
            (Some(node), _) => format!(
                "the cluster was restored on {node}; wipe EPHEMERAL on {} so they join it",
                if self.wipe.is_empty() { "nothing".to_owned() } else { names(&self.wipe) }
            ),
            (None, Some(first)) => format!(
                "wipe EPHEMERAL on {} (reset --graceful=false --reboot), wait for etcd to wait for a bootstrap, \
                 bootstrap {} from the snapshot (bootstrap --recover-from), let the others join",
                names(&self.wipe),
                first.name
            ),
            (None, None) => "nothing to do".to_owned(),
        };
        if !self.keep.is_empty() {
            said.push_str(&format!("; members kept: {}", self.keep.join(", ")));
        }
        if !self.unreachable.is_empty() {
            said.push_str(&format!("; not answering, left for a later run: {}", self.unreachable.join(", ")));
        }
        said
    }
}

/// Reads what the control planes say and decides, refusing a restore that would throw away a
/// cluster with quorum.
async fn plan(talosctl: &Talosctl, config: &ClusterConfig, evidence: &Evidence, force: bool) -> anyhow::Result<Plan> {
    let health = etcd_health(talosctl, config).await;
    eprintln!("restore: etcd now: {}", kit::talos::describe_health(&health));
    // The control plane a previous run restored, while its member is healthy: the members it
    // lists are the restored cluster's.
    let restored = match evidence.recorded()? {
        Some(record) if record.how.starts_with(RESTORED) => health
            .iter()
            .find(|(node, status)| node.name == record.member && status.as_ref().is_ok_and(EtcdMemberStatus::healthy))
            .map(|(node, _)| *node),
        _ => None,
    };
    let members = match restored {
        Some(node) => Some(etcd_member_ids(talosctl, node).await?.into_iter().collect::<BTreeSet<_>>()),
        None => None,
    };
    let keep = judge(&health, members.as_ref(), force)?;
    let restored = restored.filter(|_| !keep.is_empty()).map(|node| node.name.clone());
    let mut wipe = Vec::new();
    let mut unreachable = Vec::new();
    // Asked all at once: a machine that is off costs each probe its whole timeout.
    let others: Vec<&Node> = health.iter().map(|(node, _)| *node).filter(|node| !keep.contains(&node.name)).collect();
    let states = futures::future::join_all(others.iter().map(|node| probe(talosctl, node))).await;
    for (node, state) in others.into_iter().zip(states) {
        match state {
            NodeState::Configured => wipe.push(node.clone()),
            NodeState::Maintenance => {
                tracing::warn!(
                    "{} is in maintenance mode (no config): install-all installs it, then it joins",
                    node.name
                );
                unreachable.push(node.name.clone());
            }
            NodeState::Unreachable(_) => unreachable.push(node.name.clone()),
        }
    }
    anyhow::ensure!(
        restored.is_some() || !wipe.is_empty(),
        "no control plane answers its Talos API ({}): start at least one, then run restore again",
        unreachable.join(", ")
    );
    Ok(Plan { restored, wipe, keep, unreachable })
}

/// The control planes to keep: the healthy members of the cluster a previous run restored
/// (`restored`: its members' IDs), unless every control plane is one, when that restore is
/// complete and this run is judged as a new one. A new one is refused while a majority of
/// members is healthy (the cluster has quorum), unless `force`.
fn judge(
    health: &[(&Node, anyhow::Result<EtcdMemberStatus>)],
    restored: Option<&BTreeSet<String>>,
    force: bool,
) -> anyhow::Result<Vec<String>> {
    let member_of_restored =
        |status: &EtcdMemberStatus| status.healthy() && restored.is_some_and(|ids| ids.contains(&status.member));
    let keep: Vec<String> = health
        .iter()
        .filter(|(_, status)| status.as_ref().is_ok_and(member_of_restored))
        .map(|(node, _)| node.name.clone())
        .collect();
    if !keep.is_empty() && keep.len() < health.len() {
        return Ok(keep);
    }
    let healthy = kit::talos::healthy_members(health);
    if healthy.len() >= kit::talos::quorum(health.len()) {
        anyhow::ensure!(
            force,
            "{} of {} control planes' etcd members are healthy ({}): the cluster has quorum and needs no restore, \
             which would throw away everything written since the backup. A member that is down rejoins when its \
             machine is back; `--force` restores anyway",
            healthy.len(),
            health.len(),
            healthy.join(", ")
        );
        tracing::warn!(
            "--force: restoring a cluster whose etcd has quorum; everything written since the backup is lost"
        );
    }
    Ok(Vec::new())
}

/// The runbook's steps on the machines.
async fn recover(
    talosctl: &Talosctl,
    config: &ClusterConfig,
    plan: &Plan,
    snapshot: &Path,
    evidence: &Evidence,
    from: &str,
) -> anyhow::Result<()> {
    eprintln!("restore: wiping EPHEMERAL on {} (each reboots; talosctl waits for it)", plan.wipe.len());
    let wipes = plan.wipe.iter().map(|node| async move {
        wipe_ephemeral(talosctl, node).await.with_context(|| {
            format!(
                "wiping EPHEMERAL on {} ({}): `talosctl -n {} logs machined` says why; run restore again",
                node.name, node.ip, node.ip
            )
        })
    });
    for wiped in futures::future::join_all(wipes).await {
        wiped?;
    }
    if plan.restored.is_none() {
        for node in &plan.wipe {
            wait_for(Duration::from_secs(300), &format!("etcd on {} to wait for a bootstrap", node.name), || async {
                Ok(etcd_service_state(talosctl, node).await.ok().filter(|state| state == "Preparing"))
            })
            .await?;
        }
        let first = &plan.wipe[0];
        eprintln!("restore: bootstrapping {} from the snapshot", first.name);
        wait_for(Duration::from_secs(180), &format!("{} to accept the recovering bootstrap", first.name), || async {
            match bootstrap_from(talosctl, first, snapshot).await {
                BootstrapAnswer::Bootstrapped => Ok(Some(())),
                BootstrapAnswer::NotYet(_) => Ok(None),
                BootstrapAnswer::AlreadyBootstrapped => anyhow::bail!(
                    "{} has etcd data again (AlreadyExists): another restore or bootstrap ran meanwhile; run restore again",
                    first.name
                ),
                BootstrapAnswer::Refused(said) => anyhow::bail!("bootstrap --recover-from on {}: {said}", first.name),
            }
        })
        .await?;
        evidence.record(&first.name, &format!("{RESTORED}{from}"))?;
    }
    eprintln!("restore: waiting for every control plane that answers to be a healthy member");
    for node in &plan.wipe {
        wait_for(Duration::from_secs(600), &format!("{} to be a healthy etcd member", node.name), || async {
            Ok(etcd_status(talosctl, node).await.ok().filter(EtcdMemberStatus::healthy))
        })
        .await?;
    }
    wait_for_api_and_nodes(config, &plan.unreachable).await
}

/// The API answering through the VIP (the cluster's own kubeconfig), then every Node Ready but
/// those of the control planes that are away: the kubelets reconnect to the restored API and
/// report again.
async fn wait_for_api_and_nodes(config: &ClusterConfig, away: &[String]) -> anyhow::Result<()> {
    let kubeconfig = kit::context::cluster_kubeconfig_path(&config.state_dir());
    let client = kit::client::client_from_kubeconfig(&kubeconfig).await?;
    let version = wait_for(Duration::from_secs(300), "the API to answer through the VIP", || async {
        Ok(client.apiserver_version().await.ok())
    })
    .await?;
    eprintln!("restore: Kubernetes {} answers at {}", version.git_version, config.api_endpoint());
    let nodes: kube::Api<KubeNode> = kube::Api::all(client);
    let wanted: BTreeSet<&str> = config
        .nodes
        .iter()
        .map(|node| node.name.as_str())
        .filter(|name| !away.iter().any(|away| away == name))
        .collect();
    wait_for(Duration::from_secs(300), "every node Ready", || async {
        let ready: BTreeSet<String> = nodes
            .list(&Default::default())
            .await
            .map(|list| {
                list.items
                    .iter()
                    .filter(|node| node_ready(node))
                    .filter_map(|node| node.metadata.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        Ok(wanted.iter().all(|name| ready.contains(*name)).then_some(()))
    })
    .await
}

fn node_ready(node: &KubeNode) -> bool {
    node.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Asks `check` every two seconds until it has an answer, saying what it waits for.
async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    let mut said = Instant::now();
    loop {
        if let Some(answer) = check().await? {
            return Ok(answer);
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {}s", limit.as_secs());
        if said.elapsed() > Duration::from_secs(20) {
            eprintln!("restore: still waiting for {what}");
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The checks after the restore: etcd on every control plane, then each installed stage's
/// `verify`; returns what failed.
fn verify(global: &GlobalArgs, config: &ClusterConfig) -> anyhow::Result<Vec<String>> {
    let check = crate::machines::etcd_check(config)?;
    eprintln!("restore: {check}");
    let mut failed = Vec::new();
    if check.status == kit::report::Status::Fail {
        failed.push("etcd".to_owned());
    }
    failed.extend(crate::install_all::verify_installed(global, config, "restore")?);
    Ok(failed)
}

/// `3h12m`, `4m05s`, `12s`.
fn humanize(age: Duration) -> String {
    let seconds = age.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node {
            name: name.to_owned(),
            role: kit::config::Role::ControlPlane,
            ip: std::net::Ipv4Addr::LOCALHOST,
            install_disk: "/dev/sda".to_owned(),
            link_selector: kit::config::DEFAULT_LINK_SELECTOR.to_owned(),
        }
    }

    fn member(id: &str) -> anyhow::Result<EtcdMemberStatus> {
        Ok(EtcdMemberStatus { member: id.to_owned(), learner: false, errors: String::new(), applied_index: 7 })
    }

    #[test]
    fn a_restore_is_refused_on_quorum_and_continued_for_machines_that_were_away() {
        let (cp01, cp02, cp03) = (node("cp01"), node("cp02"), node("cp03"));
        let down = || Err(anyhow::anyhow!("no answer"));
        // Two healthy members of three: quorum; refused unless forced.
        let quorum = [(&cp01, member("a")), (&cp02, member("b")), (&cp03, down())];
        let refused = judge(&quorum, None, false).expect_err("refused");
        assert!(refused.to_string().contains("the cluster has quorum"), "{refused}");
        assert_eq!(judge(&quorum, None, true).expect("forced"), Vec::<String>::new(), "forced: nothing kept");
        // One member left: no quorum; a first restore keeps nothing.
        let lost = [(&cp01, member("a")), (&cp02, down()), (&cp03, down())];
        assert_eq!(judge(&lost, None, false).expect("a restore"), Vec::<String>::new());
        // After a restore on cp01 (member "r"), cp02 and cp03 came back with the old cluster's
        // data, healthy there (members "b", "c"): only cp01 is kept, the others are wiped.
        let restored: BTreeSet<String> = ["r".to_owned()].into();
        let split = [(&cp01, member("r")), (&cp02, member("b")), (&cp03, member("c"))];
        assert_eq!(judge(&split, Some(&restored), false).expect("continued"), ["cp01"]);
        // Every control plane a member of the restored cluster: complete, so a new restore is refused.
        let all: BTreeSet<String> = ["r", "s", "t"].map(str::to_owned).into();
        let whole = [(&cp01, member("r")), (&cp02, member("s")), (&cp03, member("t"))];
        assert!(judge(&whole, Some(&all), false).is_err(), "a complete restore is a cluster with quorum");
    }

    #[test]
    fn ages_read_as_people_write_them() {
        assert_eq!(humanize(Duration::from_secs(12)), "12s");
        assert_eq!(humanize(Duration::from_secs(245)), "4m05s");
        assert_eq!(humanize(Duration::from_secs(3 * 3600 + 12 * 60)), "3h12m");
    }
}
