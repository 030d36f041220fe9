//! The machine configs, made and validated by the real talosctl (`cargo xtask lab build`
//! builds it; CI runs that first). No cluster is needed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kit::config::ClusterConfig;
use talos_bootstrap::TalosBootstrap;
use talos_bootstrap::machine_configs::{self, Secrets};

/// The upstream release manifests beside the repository, the tests' mirror.
fn upstream_mirror() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream").display().to_string()
}

fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.yaml")
}

/// The repository's config copied into `dir`, with `from` replaced by `to`.
fn edited_config(dir: &Path, from: &str, to: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(repo_config())?;
    assert_eq!(text.matches(from).count(), 1, "`{from}` must occur once in cluster.yaml");
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, text.replace(from, to))?;
    Ok(path)
}

fn run(args: &[&str], config: &Path) -> (ExitCode, String) {
    let mut argv: Vec<OsString> = vec!["talos-bootstrap".into()];
    argv.extend(args.iter().map(OsString::from));
    argv.extend(["--config".into(), config.into()]);
    let mut out = Vec::new();
    let code = kit::stage::execute(&TalosBootstrap, argv, &mut out);
    (code, String::from_utf8_lossy(&out).into_owned())
}

/// Every file under `dir`, by path relative to it.
fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(
                files(&path)?.into_iter().map(|file| Path::new(path.file_name().unwrap_or_default()).join(file)),
            );
        } else {
            found.push(PathBuf::from(path.file_name().unwrap_or_default()));
        }
    }
    found.sort();
    Ok(found)
}

/// `text` with every inline manifest's contents (an upstream release manifest, which the
/// repository never keeps a copy of) replaced by one line that counts them.
fn without_inline_contents(text: &str) -> String {
    let mut out = Vec::new();
    let mut block: Option<(usize, usize)> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some((key_indent, lines)) = block {
            if line.trim().is_empty() || indent > key_indent {
                block = Some((key_indent, lines + 1));
                continue;
            }
            out.push(format!("{}# {lines} lines of the upstream manifest", " ".repeat(key_indent + 4)));
            block = None;
        }
        if line.trim_start().starts_with("contents: |") {
            block = Some((indent, 0));
        }
        out.push(line.to_owned());
    }
    if let Some((key_indent, lines)) = block {
        out.push(format!("{}# {lines} lines of the upstream manifest", " ".repeat(key_indent + 4)));
    }
    out.join("\n") + "\n"
}

/// Rendered output against the reviewed golden copy (`UPDATE_GOLDEN=1` rewrites it).
#[test]
fn render_matches_the_golden_folder_and_shows_no_secret() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().to_str().unwrap_or_default().to_owned();
    let (code, listed) = run(&["render", "--out", &out, "--mirror", &upstream_mirror()], &repo_config());
    assert_eq!(code, ExitCode::SUCCESS, "{listed}");
    let rendered = dir.path().join("01-talos-bootstrap");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/01-talos-bootstrap");
    let rendered_files = files(&rendered)?;
    assert!(rendered_files.contains(&PathBuf::from("configs/cp01.yaml")), "{rendered_files:?}");
    for file in &rendered_files {
        let text = without_inline_contents(&std::fs::read_to_string(rendered.join(file))?);
        // Certificates and keys are base64 PEM ("LS0t" is "---"): none may be left.
        assert!(!text.contains("LS0tLS1CRUdJTi"), "{} shows key material", file.display());
        if file == Path::new("README.md") {
            continue; // the lesson, checked by `explain`
        }
        kit::golden::assert_matches(&golden.join(file), &text);
    }
    let cp01 = std::fs::read_to_string(rendered.join("configs/cp01.yaml"))?;
    assert!(cp01.contains("kind: Layer2VIPConfig\nname: 172.16.16.100\nlink: lan"), "the VIP on control planes");
    assert!(cp01.contains(
        "image: factory.talos.dev/metal-installer/613e1592b2da41ae5e265e8789429f22e121aab91cb4deb6bc3c0b6262961245:v1.12.1"
    ));
    assert!(cp01.contains("rotate-server-certificates: \"true\""));
    // The approver runs from bootstrap on: the control planes carry it, whole, as Talos applies it.
    let approver = std::fs::read_to_string(
        Path::new(&upstream_mirror()).join("kubelet-serving-cert-approver/v0.11.0/ha-install.yaml"),
    )?;
    assert!(cp01.contains("inlineManifests:\n        - name: kubelet-serving-cert-approver"), "{cp01}");
    let first_kind = approver.lines().find(|line| line.starts_with("kind:")).unwrap_or_default();
    assert!(cp01.contains(&format!("            {first_kind}")), "the manifest's own lines, indented");
    let wk01 = std::fs::read_to_string(rendered.join("configs/wk01.yaml"))?;
    assert!(!wk01.contains("Layer2VIPConfig"), "workers never hold the VIP");
    assert!(!wk01.contains("inlineManifests: ["), "workers carry no manifests");
    assert!(wk01.contains("rotate-server-certificates: \"true\""));
    Ok(())
}

/// Review item 2, the related bug: with kubeletInsecureTls nobody approves serving
/// certificates, so kubelets are not told to request them (and no approver is shipped).
#[test]
fn kubelet_insecure_tls_requests_no_serving_certificates() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = edited_config(
        dir.path(),
        "# metricsServer:\n#   kubeletInsecureTls: true",
        "metricsServer:\n  kubeletInsecureTls: true",
    )?;
    let out = dir.path().join("out");
    let (code, listed) =
        run(&["render", "--out", out.to_str().unwrap_or_default(), "--mirror", &upstream_mirror()], &config);
    assert_eq!(code, ExitCode::SUCCESS, "{listed}");
    let cp01 = std::fs::read_to_string(out.join("01-talos-bootstrap/configs/cp01.yaml"))?;
    assert!(!cp01.contains("rotate-server-certificates"), "{cp01}");
    assert!(!cp01.contains("name: kubelet-serving-cert-approver"), "{cp01}");
    assert!(!out.join("01-talos-bootstrap/patches/control-planes.yaml").exists());
    Ok(())
}

#[tokio::test]
async fn configs_for_talos_before_1_12_use_the_v1alpha1_network_fields_and_validate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = edited_config(dir.path(), "talos: v1.12.1 ", "talos: v1.11.5 ")?;
    let text = std::fs::read_to_string(&path)?.replace("kubernetes: v1.35.0", "kubernetes: v1.34.1");
    std::fs::write(&path, text)?;
    let config = ClusterConfig::load(&path)?;
    let mut talosctl = talos_bootstrap::talosctl(&config).await?;
    let (secrets, created) = Secrets::ensure(&talosctl, &dir.path().join("secrets.yaml")).await?;
    assert!(created);
    talosctl.redact_secrets(secrets.values.iter().cloned());
    // generate() validates every config with `talosctl validate --mode metal --strict`.
    let configs = machine_configs::generate(&talosctl, &config, &[], &secrets, &dir.path().join("talos")).await?;
    let cp01 = &configs[0].text;
    assert!(!cp01.contains("Layer2VIPConfig") && !cp01.contains("HostnameConfig"), "no 1.12 documents");
    assert!(cp01.contains("vip:\n                ip: 172.16.16.100"), "{cp01}");
    assert!(cp01.contains("hostname: cp01"));
    Ok(())
}

#[tokio::test]
async fn a_link_selector_talos_rejects_is_reported_at_its_field_before_anything_is_sent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = edited_config(
        dir.path(),
        "{ name: wk03, role: worker, ip: 172.16.16.152, installDisk: /dev/sda }",
        "{ name: wk03, role: worker, ip: 172.16.16.152, installDisk: /dev/sda, linkSelector: 'link.drivr == \"e1000\"' }",
    )?;
    let config = ClusterConfig::load(&path)?;
    let talosctl = talos_bootstrap::talosctl(&config).await?;
    let (secrets, _) = Secrets::ensure(&talosctl, &dir.path().join("secrets.yaml")).await?;
    let error = machine_configs::generate(&talosctl, &config, &[], &secrets, &dir.path().join("talos"))
        .await
        .expect_err("talosctl validate must reject the selector");
    let message = format!("{error:#}");
    assert!(message.contains("machine config for wk03"), "{message}");
    assert!(message.contains("undefined field 'drivr'"), "talosctl's reason: {message}");
    assert!(message.contains("check nodes[5].linkSelector"), "names the field: {message}");
    Ok(())
}

#[tokio::test]
async fn secrets_are_made_once_0600_and_never_overwritten() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let config = ClusterConfig::load(&repo_config())?;
    let talosctl = talos_bootstrap::talosctl(&config).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state/secrets.yaml");
    let (first, created) = Secrets::ensure(&talosctl, &path).await?;
    assert!(created);
    assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
    let bytes = std::fs::read(&path)?;
    let (second, created) = Secrets::ensure(&talosctl, &path).await?;
    assert!(!created);
    assert_eq!(std::fs::read(&path)?, bytes, "the bundle is kept as it was");
    assert_eq!(first.values, second.values);
    assert!(first.values.iter().any(|value| value.starts_with("LS0t")), "certificates are among the redacted values");
    Ok(())
}

#[test]
fn a_missing_talosctl_fails_the_check_with_how_to_get_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_talos-bootstrap"))
        .args(["check", "--lab", "--config"])
        .arg(repo_config())
        .env("PATH", "")
        .env("TALOS_HA_CACHE", dir.path())
        .env_remove("TALOS_HA_TALOSCTL")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  talosctl: talosctl v1.12.1 or newer is needed"), "{stdout}");
    assert!(stdout.contains("cargo xtask lab build"), "{stdout}");
    Ok(())
}
