//! Machine configs, made by the real `talosctl` exactly as a person would: secrets once, a
//! base config per role from `gen config` with the all-nodes patch, one node patch on top of
//! it per node (`machineconfig patch`), and `validate --mode metal` on every result.
//! The argument lists are built in one place and serve both running and `render`'s
//! `commands.sh`, so the commands shown are the commands run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use kit::config::{ClusterConfig, Node, Role};
use kit::tool::Tool;

use crate::patches::{self, InlineManifest};
use crate::schematic;

/// Everything `talosctl` is given must finish well within this (it works offline).
const TALOSCTL_TIMEOUT: Duration = Duration::from_secs(120);

/// File names inside a machine-config folder.
pub const PATCHES_DIR: &str = "patches";
pub const ALL_NODES_PATCH: &str = "all-nodes.yaml";
pub const CONTROL_PLANES_PATCH: &str = "control-planes.yaml";

/// One node's finished, validated config.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node: Node,
    pub path: PathBuf,
    pub text: String,
}

/// The secrets bundle: generated once, kept, never printed.
#[derive(Debug)]
pub struct Secrets {
    pub path: PathBuf,
    /// Every value in it, so that output can be redacted.
    pub values: Vec<String>,
}

impl Secrets {
    /// Reads the secrets bundle at `path`, creating it with `talosctl gen secrets` (0600) if it
    /// does not exist. An existing bundle is never overwritten: the cluster's CAs live in it.
    pub async fn ensure(talosctl: &Tool, path: &Path) -> anyhow::Result<(Secrets, bool)> {
        let created = !path.exists();
        if created {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            talosctl.run(gen_secrets_args(path), TALOSCTL_TIMEOUT).await?.ok("talosctl gen secrets")?;
        }
        restrict(path)?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let tree: serde_json::Value = serde_saphyr::from_str(&text)
            .with_context(|| format!("{} is not a Talos secrets bundle (YAML)", path.display()))?;
        let mut values = Vec::new();
        string_leaves(&tree, &mut values);
        anyhow::ensure!(
            !values.is_empty(),
            "{} holds no secrets; delete it to have a new bundle generated (only before the cluster exists)",
            path.display()
        );
        Ok((Secrets { path: path.to_owned(), values }, created))
    }
}

fn string_leaves(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(text) => out.push(text.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|item| string_leaves(item, out)),
        serde_json::Value::Object(map) => map.values().for_each(|item| string_leaves(item, out)),
        _ => {}
    }
}

/// Sets a file to owner-only access (talosctl writes some files more openly).
pub fn restrict(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to 0600", path.display()))
}

pub fn gen_secrets_args(out: &Path) -> Vec<String> {
    vec!["gen".into(), "secrets".into(), "--output-file".into(), out.display().to_string()]
}

/// What one `gen config` run writes.
pub enum GenOutput<'a> {
    /// The base controlplane.yaml and worker.yaml, with the all-nodes patch (and the
    /// control-plane patch, when there is one), into a folder.
    Configs { all_nodes_patch: &'a Path, control_planes_patch: Option<&'a Path>, dir: &'a Path },
    /// Only talosctl's client config (a client certificate signed by the secrets' OS CA).
    Talosconfig { file: &'a Path },
}

pub fn gen_config_args(config: &ClusterConfig, secrets: &Path, output: GenOutput<'_>) -> Vec<String> {
    let talos = config.versions.talos;
    let kubernetes = config.versions.kubernetes;
    // The API server certificate must name every address clients use: the VIP and each
    // control plane (talosctl and kubectl may reach a single node while the VIP moves).
    let sans: Vec<String> = std::iter::once(config.network.vip)
        .chain(config.control_planes().map(|node| node.ip))
        .map(|ip| ip.to_string())
        .collect();
    let mut args: Vec<String> = vec![
        "gen".into(),
        "config".into(),
        config.name.clone(),
        config.api_endpoint(),
        "--with-secrets".into(),
        secrets.display().to_string(),
        // The config contract of the release the nodes run, whatever talosctl's own version.
        "--talos-version".into(),
        format!("v{}.{}", talos.major, talos.minor),
        "--kubernetes-version".into(),
        format!("{}.{}.{}", kubernetes.major, kubernetes.minor, kubernetes.patch),
        "--install-image".into(),
        schematic::installer_image(talos),
        "--additional-sans".into(),
        sans.join(","),
    ];
    let (types, out) = match output {
        GenOutput::Configs { all_nodes_patch, control_planes_patch, dir } => {
            args.extend(["--config-patch".into(), format!("@{}", all_nodes_patch.display())]);
            if let Some(patch) = control_planes_patch {
                args.extend(["--config-patch-control-plane".into(), format!("@{}", patch.display())]);
            }
            args.extend(["--with-docs=false".into(), "--with-examples=false".into(), "--force".into()]);
            ("controlplane,worker", dir)
        }
        GenOutput::Talosconfig { file } => ("talosconfig", file),
    };
    args.extend(["--output-types".into(), types.into(), "--output".into(), out.display().to_string()]);
    args
}

pub fn patch_args(base: &Path, node_patch: &Path, out: &Path) -> Vec<String> {
    vec![
        "machineconfig".into(),
        "patch".into(),
        base.display().to_string(),
        "--patch".into(),
        format!("@{}", node_patch.display()),
        "--output".into(),
        out.display().to_string(),
    ]
}

pub fn validate_args(config_file: &Path) -> Vec<String> {
    vec![
        "validate".into(),
        "--config".into(),
        config_file.display().to_string(),
        "--mode".into(),
        "metal".into(),
        "--strict".into(),
    ]
}

/// Where each file of a generated set lives, relative to its folder.
pub fn base_file(role: Role) -> &'static str {
    match role {
        Role::ControlPlane => "controlplane.yaml",
        Role::Worker => "worker.yaml",
    }
}

pub fn node_patch_file(node: &Node) -> String {
    format!("{}/{}.yaml", PATCHES_DIR, node.name)
}

pub fn node_config_file(node: &Node) -> String {
    format!("{}.yaml", node.name)
}

/// Writes the patches, runs gen config, patches and validates every node's config, all into
/// `dir`. Returns each node's config. Every file holding secrets is made 0600.
pub async fn generate(
    talosctl: &Tool,
    config: &ClusterConfig,
    inline: &[InlineManifest],
    secrets: &Secrets,
    dir: &Path,
) -> anyhow::Result<Vec<NodeConfig>> {
    std::fs::create_dir_all(dir.join(PATCHES_DIR)).with_context(|| format!("creating {}", dir.display()))?;
    for (file, patch) in patch_files(config, inline)? {
        let path = dir.join(&file);
        std::fs::write(&path, patch).with_context(|| format!("writing {}", path.display()))?;
    }
    let all_nodes = dir.join(PATCHES_DIR).join(ALL_NODES_PATCH);
    let control_planes = dir.join(PATCHES_DIR).join(CONTROL_PLANES_PATCH);
    let control_planes_patch = (!inline.is_empty()).then_some(control_planes.as_path());
    talosctl
        .run(
            gen_config_args(
                config,
                &secrets.path,
                GenOutput::Configs { all_nodes_patch: &all_nodes, control_planes_patch, dir },
            ),
            TALOSCTL_TIMEOUT,
        )
        .await?
        .ok("talosctl gen config")?;
    let mut configs = Vec::new();
    for node in &config.nodes {
        let base = dir.join(base_file(node.role));
        let path = dir.join(node_config_file(node));
        let node_patch = dir.join(node_patch_file(node));
        talosctl
            .run(patch_args(&base, &node_patch, &path), TALOSCTL_TIMEOUT)
            .await?
            .ok(format_args!("talosctl machineconfig patch for {}", node.name))?;
        restrict(&path)?;
        validate(talosctl, config, node, &path).await?;
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        configs.push(NodeConfig { node: node.clone(), path, text });
    }
    for role in [Role::ControlPlane, Role::Worker] {
        restrict(&dir.join(base_file(role)))?;
    }
    Ok(configs)
}

/// Every patch file, by path relative to the folder: the all-nodes patch, the control-plane
/// patch (when there are inline manifests) and one per node.
pub fn patch_files(config: &ClusterConfig, inline: &[InlineManifest]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    files.insert(format!("{PATCHES_DIR}/{ALL_NODES_PATCH}"), patches::all_nodes(config)?.to_yaml());
    if !inline.is_empty() {
        files.insert(format!("{PATCHES_DIR}/{CONTROL_PLANES_PATCH}"), patches::control_planes(inline)?.to_yaml());
    }
    for node in &config.nodes {
        files.insert(node_patch_file(node), patches::node(config, node)?.to_yaml());
    }
    Ok(files)
}

/// `talosctl validate --mode metal --strict`; a failure names the node and, where the
/// message points at a field that comes from `cluster.yaml`, that field.
pub async fn validate(talosctl: &Tool, config: &ClusterConfig, node: &Node, path: &Path) -> anyhow::Result<()> {
    let output = talosctl.run(validate_args(path), TALOSCTL_TIMEOUT).await?;
    if output.success {
        return Ok(());
    }
    let index = config.nodes.iter().position(|other| other.name == node.name).unwrap_or_default();
    let said = format!("{}{}", output.stdout, output.stderr);
    let hint = if said.contains("LinkAliasConfig") {
        format!("check nodes[{index}].linkSelector in {}", config.source.display())
    } else {
        format!("check nodes[{index}] and network in {}", config.source.display())
    };
    anyhow::bail!(
        "talosctl validate rejected the machine config for {} ({}): {}; {hint}",
        node.name,
        path.display(),
        said.trim()
    )
}
