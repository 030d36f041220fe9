//! Issue 26: `cargo xtask backup --lab` on the installed box, as a user runs it: a real etcd
//! snapshot streamed by a node twin's member through talosctl, beside what a rebuild needs.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use kit::talos::snapshot::{Backup, MANIFEST_FILE, SNAPSHOT_FILE};

fn backup(out: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    Ok(xtask::cargo()
        .current_dir(xtask::workspace_root())
        .args(["xtask", "backup", "--lab", "--config"])
        .arg(tests::config_path())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()?)
}

/// The folder a successful backup printed on stdout.
fn folder_of(output: &Output) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    Ok(PathBuf::from(String::from_utf8(output.stdout.clone())?.trim()))
}

/// Every file under `dir`, and every folder with it.
fn tree(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(tree(&path)?);
        }
        found.push(path);
    }
    Ok(found)
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

fn manifest(folder: &Path) -> anyhow::Result<Backup> {
    Ok(serde_json::from_str(&std::fs::read_to_string(folder.join(MANIFEST_FILE))?)?)
}

#[test]
fn a_backup_holds_a_consistent_snapshot_and_the_rebuild_files_private_and_pruned() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let folder = folder_of(&backup(out.path(), &["--keep", "2"])?)?;
    assert_eq!(mode(&folder)?, 0o700, "{}", folder.display());
    for path in tree(&folder)? {
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path)?, expected, "{}", path.display());
    }

    let backup_json = manifest(&folder)?;
    assert_eq!(backup_json.cluster, tests::config().name);
    assert!(backup_json.member.starts_with("cp"), "a control plane's member: {}", backup_json.member);
    let snapshot = std::fs::read(folder.join(SNAPSHOT_FILE))?;
    assert_eq!(backup_json.snapshot.bytes, u64::try_from(snapshot.len())?);
    assert_eq!(snapshot.len() % 512, 32, "etcd's own SHA-256 ends the snapshot");
    assert!(backup_json.snapshot.revision > 0 && backup_json.snapshot.keys > 100, "{:?}", backup_json.snapshot);
    let names: Vec<&str> = backup_json.files.iter().map(|file| file.name.as_str()).collect();
    for needed in [SNAPSHOT_FILE, "secrets.yaml", "talosconfig", "cluster.yaml", "talos/controlplane.yaml"] {
        assert!(names.contains(&needed), "{needed} in {names:?}");
    }
    for file in &backup_json.files {
        assert_eq!(kit::artifacts::sha256_hex(&std::fs::read(folder.join(&file.name))?), file.sha256, "{}", file.name);
    }

    // Two more (a second apart: folders are named to the second): --keep 2 leaves the newest two.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let second = folder_of(&backup(out.path(), &["--keep", "2"])?)?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    let third = folder_of(&backup(out.path(), &["--keep", "2"])?)?;
    let mut kept: Vec<PathBuf> =
        std::fs::read_dir(out.path())?.map(|entry| Ok(entry?.path())).collect::<anyhow::Result<_>>()?;
    kept.sort();
    let mut newest = vec![second, third];
    newest.sort();
    assert_eq!(kept, newest, "the oldest was pruned");
    Ok(())
}

#[test]
fn an_encrypted_backup_opens_with_its_identity_and_holds_no_plaintext_secret() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let refused = backup(out.path(), &["--age-recipient", "age1notakey"])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not an age public key"), "{refused:?}");
    assert_eq!(std::fs::read_dir(out.path())?.count(), 0, "refused before anything was written");

    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let folder = folder_of(&backup(out.path(), &["--age-recipient", &recipient])?)?;
    let backup_json = manifest(&folder)?;
    assert_eq!(backup_json.encrypted_to.as_deref(), Some(recipient.as_str()));
    for file in &backup_json.files {
        let sealed = folder.join(format!("{}.age", file.name));
        assert!(!folder.join(&file.name).exists(), "no plaintext {}", file.name);
        let opened = age::decrypt(&identity, &std::fs::read(&sealed)?)?;
        assert_eq!(kit::artifacts::sha256_hex(&opened), file.sha256, "{} opens to what was backed up", file.name);
    }

    // The secrets bundle's keys (base64 in secrets.yaml) appear nowhere in the folder.
    let secrets = std::fs::read_to_string(tests::config().in_box().state_dir().join("secrets.yaml"))?;
    let keys: Vec<&str> = secrets
        .lines()
        .filter_map(|line| line.trim().strip_prefix("key: "))
        .chain(secrets.lines().filter_map(|line| line.trim().strip_prefix("secret: ")))
        .collect();
    assert!(keys.len() >= 3, "the bundle has keys to look for: {keys:?}");
    for path in tree(&folder)?.iter().filter(|path| path.is_file()) {
        let contents = std::fs::read(path)?;
        for key in &keys {
            let found = contents.windows(key.len()).any(|window| window == key.as_bytes());
            assert!(!found, "{} holds a key of the secrets bundle in plaintext", path.display());
        }
    }
    Ok(())
}
