//! The Talos phase of `cargo xtask upgrade`, as data: what each machine runs and booted (asked
//! of the machine, never read from `cluster.yaml`), the installer image it will be given, and
//! whether Talos's own tables allow the step. The xtask runs it; this decides it.
//!
//! Why the machine is asked for its schematic: `talosctl upgrade` never reads the node's image
//! and defaults to the vanilla installer, which drops every system extension (Longhorn's
//! iscsi-tools among them; siderolabs/talos#7962), and `machine.install.image` is not updated by
//! an upgrade. Talos 1.12 says which schematic a machine booted in one place only: the Image
//! Factory's virtual `schematic` extension, its version the schematic's ID.

use std::time::Duration;

use serde::Deserialize;

use super::{Access, PROBE_TIMEOUT, Resource, TalosApi, resources};
use crate::config::{Node, Version};

/// The Image Factory's registry path for bare-metal installers, which stage 01 installs from
/// (the v1.12 docs and the factory's UI use `metal-installer/`; plain `installer/` is the older
/// alias for the same image).
pub const FACTORY_INSTALLER: &str = "factory.talos.dev/metal-installer";

/// How long one machine's `talosctl upgrade --wait` may take (talosctl's own default; real
/// machines take minutes: the pull, a drain, the install and a reboot).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Which hosts a Talos minor accepts as an upgrade (or downgrade) in one step:
/// `pkg/machinery/compatibility/talos1NN/talos1NN.go` (MinimumHostUpgradeVersion, and
/// MaximumHostDowngradeVersion, exclusive), as `TalosVersion.UpgradeableFrom` reads them
/// (`compatibility/talos_version.go:74-137`). Minor → (oldest host, first host too new).
const TALOS_UPGRADE_PATHS: &[(u32, MajorMinor, MajorMinor)] = &[
    // talos111.go: 1.9.0 .. 1.13.0
    (11, (1, 9), (1, 13)),
    // talos112.go: 1.10.0 .. 1.14.0
    (12, (1, 10), (1, 14)),
    // talos113.go (v1.13.0): 1.11.0 .. 1.15.0
    (13, (1, 11), (1, 15)),
];

/// A Talos release's major and minor.
type MajorMinor = (u32, u32);

/// Why a machine at `host` cannot be upgraded to `target` in one step, in Talos's words, or
/// `None` when the target's tables accept it.
pub fn step_refusal(host: Version, target: Version) -> Option<String> {
    let Some(&(_, oldest, too_new)) =
        TALOS_UPGRADE_PATHS.iter().find(|(minor, _, _)| target.major == 1 && *minor == target.minor)
    else {
        return Some(format!("upgrades to version {target} are not supported (talos-ha knows Talos 1.11 to 1.13)"));
    };
    let host_minor = (host.major, host.minor);
    if host_minor < oldest {
        return Some(format!(
            "host version {host} is too old to upgrade to Talos {target}: go through Talos {}.{} first",
            oldest.0, oldest.1
        ));
    }
    if host_minor >= too_new {
        return Some(format!("host version {host} is too new to downgrade to Talos {target}"));
    }
    None
}

/// pkg/machinery/resources/runtime/version.go
#[derive(Debug, Clone, Deserialize)]
pub struct VersionSpec {
    pub version: String,
}

/// pkg/machinery/resources/runtime/extension_status.go (what names an extension).
#[derive(Debug, Clone, Deserialize)]
pub struct ExtensionStatus {
    pub metadata: ExtensionMetadata,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExtensionMetadata {
    pub name: String,
    #[serde(default)]
    pub version: String,
}

/// What one machine runs: its Talos release and the schematic it booted, if a factory image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub release: Version,
    pub schematic: Option<String>,
}

/// Asks `node` what it runs (`get version`, `get extensions`).
pub async fn machine(api: &impl TalosApi, node: &Node) -> anyhow::Result<Machine> {
    let versions = resources::<VersionSpec>(api, node, "version", Access::Secure).await?;
    let release = versions
        .first()
        .and_then(|version| version.spec.version.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{} reports no Talos version it runs", node.name))?;
    let extensions = resources::<ExtensionStatus>(api, node, "extensions", Access::Secure).await?;
    Ok(Machine { release, schematic: booted_schematic(&extensions) })
}

/// The factory's virtual `schematic` extension's version.
pub fn booted_schematic(extensions: &[Resource<ExtensionStatus>]) -> Option<String> {
    extensions
        .iter()
        .find(|extension| extension.spec.metadata.name == "schematic")
        .map(|extension| extension.spec.metadata.version.clone())
}

/// One machine's step of the Talos phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub node: String,
    pub running: String,
    pub wanted: String,
    /// The installer image it would be given: its own schematic at the wanted release.
    pub image: Option<String>,
    /// Why it cannot be upgraded (nothing is done to any machine while one is refused).
    pub refusal: Option<String>,
}

impl Step {
    pub fn to_do(&self) -> bool {
        self.running != self.wanted
    }
}

/// The step of the machine `name`, which runs `machine`, to `wanted`, where `cluster.yaml`'s
/// extensions make the schematic `configured`.
pub fn step(name: &str, machine: &Machine, wanted: Version, configured: &str) -> Step {
    let image = machine.schematic.as_ref().map(|id| format!("{FACTORY_INSTALLER}/{id}:{wanted}"));
    let refusal = if machine.release == wanted {
        None
    } else if let Some(refused) = step_refusal(machine.release, wanted) {
        Some(refused)
    } else {
        match &machine.schematic {
            None => Some(format!(
                "{name} booted no Image Factory image (no `schematic` among `talosctl get extensions`): talos-ha will \
                 not guess which extensions its installer needs"
            )),
            Some(id) if id != configured => Some(format!(
                "{name} booted schematic {id}, but cluster.yaml's extensions make {configured}: upgrading it to \
                 either changes its extensions; reinstall it with stage 01's image, or make the extensions match"
            )),
            Some(_) => None,
        }
    };
    Step { node: name.to_owned(), running: machine.release.to_string(), wanted: wanted.to_string(), image, refusal }
}

/// How an upgrade reaches the new release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// Talos's Upgrade sequence: the installer runs in the running system, after its mounts
    /// are taken down, then the machine reboots into the new entry.
    Live,
    /// `--stage`: the image is recorded on META and the machine reboots; the next boot installs
    /// it before anything is mounted and reboots again (v1alpha1_server.go, Upgrade; Install
    /// sequence, IsInstallStaged).
    Staged,
}

/// Whether an upgrade stopped because a mount under /var could not be taken down: Talos says
/// "error unmounting …" (UnmountPodMounts, v1alpha1_sequencer_tasks.go).
pub fn unmount_failed(error: &anyhow::Error) -> bool {
    format!("{error:#}").contains("error unmounting ")
}

/// `talosctl upgrade` of one machine, aimed at it alone (`-e`/`-n` = the node, never the VIP:
/// the VIP moves when its holder reboots, and the call would hang; siderolabs/talos#11830), with
/// talosctl's own wait: its events until it is running and ready, and a changed boot ID.
pub async fn upgrade(
    api: &impl TalosApi,
    node: &Node,
    image: &str,
    install: Install,
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<()> {
    let mut args = vec!["upgrade", "--image", image];
    if install == Install::Staged {
        args.push("--stage");
    }
    waited(api, node, &args, progress).await
}

/// `talosctl reboot --mode force`: the one reboot that does not stop services and take down
/// mounts first (v1alpha1_sequencer.go, Reboot), waiting until the machine is back.
pub async fn force_reboot(
    api: &impl TalosApi,
    node: &Node,
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<()> {
    waited(api, node, &["reboot", "--mode", "force"], progress).await
}

/// A talosctl action with talosctl's own wait (its events until the machine is running and
/// ready again, and a changed boot ID), for as long as Talos allows an upgrade.
async fn waited(
    api: &impl TalosApi,
    node: &Node,
    action: &[&str],
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<()> {
    let timeout = format!("{}s", UPGRADE_TIMEOUT.as_secs());
    let args = [action, &["--wait", "--timeout", &timeout]].concat();
    let output = api.talosctl(node, &args, UPGRADE_TIMEOUT + PROBE_TIMEOUT, progress).await?;
    output.ok(format!("talosctl {} on {} ({})", action.join(" "), node.name, node.ip)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap_or_else(|()| panic!("{text} is a version"))
    }

    #[test]
    fn talos_own_tables_decide_the_step() {
        assert_eq!(step_refusal(v("v1.12.0"), v("v1.12.1")), None);
        assert_eq!(step_refusal(v("v1.10.7"), v("v1.12.1")), None);
        assert_eq!(step_refusal(v("v1.12.1"), v("v1.12.0")), None, "a downgrade within 1.12");
        let old = step_refusal(v("v1.9.5"), v("v1.12.1")).unwrap_or_default();
        assert!(old.contains("too old") && old.contains("Talos 1.10 first"), "{old}");
        assert!(step_refusal(v("v1.14.0"), v("v1.12.1")).unwrap_or_default().contains("too new"));
        assert!(step_refusal(v("v1.12.1"), v("v1.20.0")).unwrap_or_default().contains("not supported"));
    }

    #[test]
    fn the_installer_is_the_machines_own_schematic_at_the_wanted_release() {
        let node = "wk01";
        let machine = Machine { release: v("v1.12.0"), schematic: Some("abc".into()) };
        let planned = step(node, &machine, v("v1.12.1"), "abc");
        assert_eq!(planned.image.as_deref(), Some("factory.talos.dev/metal-installer/abc:v1.12.1"));
        assert!(planned.to_do() && planned.refusal.is_none(), "{planned:?}");
        let other = step(node, &machine, v("v1.12.1"), "def").refusal.unwrap_or_default();
        assert!(other.contains("booted schematic abc") && other.contains("make def"), "{other}");
        let vanilla = Machine { release: v("v1.12.0"), schematic: None };
        assert!(step(node, &vanilla, v("v1.12.1"), "abc").refusal.unwrap_or_default().contains("no Image Factory"));
        let done = step(node, &Machine { release: v("v1.12.1"), schematic: None }, v("v1.12.1"), "abc");
        assert!(!done.to_do() && done.refusal.is_none(), "a machine at the release has nothing to do");
    }

    #[test]
    fn the_schematic_entry_is_read_from_talosctls_json() {
        let printed = r#"{"metadata": {"id": 0}, "spec": {"image": "iscsi-tools.sqsh", "metadata": {"name": "iscsi-tools", "version": "v0.2.0"}}}
{"metadata": {"id": 2}, "spec": {"metadata": {"name": "schematic", "version": "613e1592"}}}"#;
        let extensions = super::super::parse_resources::<ExtensionStatus>(printed).unwrap_or_default();
        assert_eq!(booted_schematic(&extensions).as_deref(), Some("613e1592"));
    }
}
