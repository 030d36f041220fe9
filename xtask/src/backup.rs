//! `cargo xtask backup`: what rebuilding the cluster after a disaster needs, in a dated folder.
//!
//! - **etcd's snapshot**, streamed by a control plane whose member is healthy (a voting member,
//!   no errors), the most up to date of them (the highest applied Raft index): every
//!   Kubernetes object. It needs no quorum (Talos reads its local member), but a member that
//!   is a learner or lags would give an older or partial cluster.
//! - **What only this workstation has**: the secrets bundle (every CA and token: machines
//!   accept only configs made from it), the talosconfig, the machine configs and their patches,
//!   `cluster.yaml` and `talos-ha.lock`.
//! - **`backup.json`**: when, from which member, etcd's revision, key count and own hash, and
//!   every file's SHA-256, which `restore` checks before it touches a machine.
//!
//! The folder is 0700 and its files 0600. With `--age-recipient` every file but `backup.json`
//! is encrypted to that public key (age, the format `age` and `sops` read); the key that opens
//! them never sits beside them. `--keep N` removes all but the newest N backups of this
//! cluster. A backup that stops half-way leaves a `.partial` folder, never a folder that looks
//! whole.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use kit::config::ClusterConfig;
use kit::stage::{GlobalArgs, exit};
use kit::talos::snapshot::{Backup, BackupFile};

#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    /// The folder that holds the backups, one dated folder each (default: `backups/` in the
    /// state folder). Copy it off this machine: a backup on the only laptop that runs
    /// talosctl is lost with it.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Encrypt every file to this age public key (`age1…`, from `age-keygen`); `restore`
    /// then needs the matching identity file (`--age-identity`).
    #[arg(long, value_name = "AGE1…")]
    pub age_recipient: Option<String>,
    /// Keep only the newest N backups of this cluster in the folder; older ones are deleted.
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
}

pub fn run(global: &GlobalArgs, args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let Some(config) = global.load_config(&mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    let recipient = args
        .age_recipient
        .as_deref()
        .map(|key| {
            key.parse::<age::x25519::Recipient>().map_err(|error| {
                anyhow::anyhow!("--age-recipient {key}: not an age public key ({error}); make one with `age-keygen`")
            })
        })
        .transpose()?;
    let out = args.out.clone().unwrap_or_else(|| kit::talos::snapshot::default_dir(&config));
    let started = Instant::now();
    let now = k8s_openapi::jiff::Timestamp::now();
    let folder = out.join(format!("{}-{}", config.name, now.strftime("%Y%m%dT%H%M%SZ")));
    anyhow::ensure!(!folder.exists(), "{} exists: a backup was taken this very second; run again", folder.display());
    let partial = folder.with_extension("partial");
    kit::fsutil::create_private_dir(&partial)?;

    eprintln!("backup: asking every control plane's etcd member for its status");
    let snapshot_path = partial.join(kit::talos::snapshot::SNAPSHOT_FILE);
    let into = snapshot_path.clone();
    let (member, snapshot) = crate::machines::with_talosctl(&config, move |talosctl, config| async move {
        kit::talos::snapshot::take(&talosctl, &config, &into).await
    })?;
    eprintln!(
        "backup: etcd snapshot from {member}: revision {}, {} keys, {} bytes",
        snapshot.revision, snapshot.keys, snapshot.bytes
    );

    let taken = std::fs::read(&snapshot_path).with_context(|| format!("reading {}", snapshot_path.display()))?;
    let mut files = vec![BackupFile::new(kit::talos::snapshot::SNAPSHOT_FILE, &taken)];
    for (source, name) in rebuild_files(&config)? {
        let copy = partial.join(&name);
        if let Some(parent) = copy.parent() {
            kit::fsutil::create_private_dir(parent)?;
        }
        let contents = std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
        kit::fsutil::write_private(&copy, &contents)?;
        files.push(BackupFile::new(&name, &contents));
    }
    if let Some(recipient) = &recipient {
        for file in &files {
            encrypt_in_place(&partial.join(&file.name), recipient)?;
        }
    }
    let backup = Backup {
        cluster: config.name.clone(),
        taken_at: now.to_string(),
        member,
        snapshot,
        encrypted_to: args.age_recipient.clone(),
        files,
    };
    kit::fsutil::write_private(
        &partial.join(kit::talos::snapshot::MANIFEST_FILE),
        &serde_json::to_vec_pretty(&backup)?,
    )?;
    std::fs::rename(&partial, &folder)
        .with_context(|| format!("renaming {} to {}", partial.display(), folder.display()))?;
    let pruned = match args.keep {
        Some(keep) => prune(&out, &config.name, keep)?,
        None => Vec::new(),
    };
    for old in &pruned {
        eprintln!("backup: removed {} (--keep {})", old.display(), args.keep.unwrap_or_default());
    }
    writeln!(stdout, "{}", folder.display())?;
    eprintln!(
        "backup: {} in {:.1}s{}; copy it off this machine",
        folder.display(),
        started.elapsed().as_secs_f64(),
        if recipient.is_some() { ", encrypted" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// The files a rebuild needs besides the snapshot, with their names in the backup.
fn rebuild_files(config: &ClusterConfig) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let paths = talos_bootstrap::StatePaths::new(config);
    anyhow::ensure!(
        paths.secrets.exists(),
        "no secrets bundle at {}: this workstation did not install the cluster (stage 01 makes it), so it cannot back it up",
        paths.secrets.display()
    );
    let mut files = vec![
        (paths.secrets.clone(), "secrets.yaml".to_owned()),
        (paths.talosconfig.clone(), "talosconfig".to_owned()),
        (config.source.clone(), "cluster.yaml".to_owned()),
    ];
    let lock = config.source.with_file_name(kit::artifacts::LOCK_FILE);
    if lock.exists() {
        files.push((lock, kit::artifacts::LOCK_FILE.to_owned()));
    }
    for entry in walk(&paths.machine_configs)? {
        let relative = entry.strip_prefix(&paths.machine_configs)?.display().to_string();
        files.push((entry, format!("talos/{relative}")));
    }
    Ok(files)
}

/// Every file under `dir`, in name order.
fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::path);
    for entry in entries {
        if entry.file_type()?.is_dir() {
            files.extend(walk(&entry.path())?);
        } else {
            files.push(entry.path());
        }
    }
    Ok(files)
}

/// Replaces `path` by `path.age`, encrypted to `recipient`.
fn encrypt_in_place(path: &Path, recipient: &age::x25519::Recipient) -> anyhow::Result<()> {
    let sealed = path.with_file_name(format!("{}.age", path.file_name().unwrap_or_default().to_string_lossy()));
    let plain = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let target = kit::fsutil::create_private(&sealed)?;
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
        .context("preparing the age encryption")?;
    let mut writer = encryptor.wrap_output(target).with_context(|| format!("writing {}", sealed.display()))?;
    std::io::copy(&mut std::io::BufReader::new(plain), &mut writer)
        .with_context(|| format!("encrypting {}", path.display()))?;
    writer.finish().and_then(|file| file.sync_all()).with_context(|| format!("finishing {}", sealed.display()))?;
    std::fs::remove_file(path).with_context(|| format!("removing the plaintext {}", path.display()))
}

/// Removes all but the newest `keep` whole backups of `cluster` in `out`; returns them.
fn prune(out: &Path, cluster: &str, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut backups = kit::talos::snapshot::backups(out, cluster)?;
    let old = backups.len().saturating_sub(keep);
    let removed: Vec<PathBuf> = backups.drain(..old).map(|(path, _)| path).collect();
    for path in &removed {
        std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(removed)
}
