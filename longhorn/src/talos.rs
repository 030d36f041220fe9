//! What Longhorn needs from each Talos worker, read with talosctl: the system extensions
//! from stage 01's Image Factory schematic, and the kubelet mount of the data path.

use kit::config::ClusterConfig;
use kit::report::Check;
use kit::talos::{Access, Resource, Talosctl, resources};

/// The extensions Longhorn needs (names as `talosctl get extensions` shows them).
pub const EXTENSIONS: &[&str] = &["iscsi-tools", "util-linux-tools"];
const FIX: &str = "stage 01 installs it: re-run `talos-bootstrap apply` for new nodes, or `talosctl upgrade \
                   --image <the installer image in state/talos/<node>.yaml>` for installed ones";

/// An ExtensionStatus's spec: the extension's layer and its metadata.
#[derive(Debug, serde::Deserialize)]
pub struct Extension {
    pub metadata: ExtensionMetadata,
}

#[derive(Debug, serde::Deserialize)]
pub struct ExtensionMetadata {
    pub name: String,
}

/// True when one of the machine configs (`talosctl get machineconfig -o json`: the spec is the
/// config's YAML text) mounts `path` into the kubelet (`machine.kubelet.extraMounts[].destination`).
pub fn kubelet_mounts(configs: &[Resource<String>], path: &str) -> bool {
    configs.iter().any(|config| {
        // The first document is the v1alpha1 config; the rest are other kinds.
        let first = config.spec.split("\n---").next().unwrap_or_default();
        let Ok(parsed) = serde_saphyr::from_str::<serde_json::Value>(first) else { return false };
        let mounts =
            parsed.pointer("/machine/kubelet/extraMounts").and_then(|m| m.as_array()).cloned().unwrap_or_default();
        mounts.iter().any(|mount| {
            mount["destination"].as_str().map(|d| d.trim_end_matches('/')) == Some(path.trim_end_matches('/'))
        })
    })
}

/// One check per worker and need: the extensions, then the data-path mount.
pub async fn worker_checks(config: &ClusterConfig, data_path: &str) -> Vec<Check> {
    let talosctl = match Talosctl::find(config).await {
        Ok(talosctl) => talosctl,
        Err(error) => {
            return vec![Check::fail("talosctl", format!("{error:#}"), "install talosctl as the message says")];
        }
    };
    let mut checks = Vec::new();
    for node in config.workers() {
        let name = format!("extensions {}", node.name);
        checks.push(match resources::<Extension>(&talosctl, node, "extensions", Access::Secure).await {
            Ok(found) => {
                let missing: Vec<&str> = EXTENSIONS
                    .iter()
                    .copied()
                    .filter(|wanted| !found.iter().any(|extension| extension.spec.metadata.name == *wanted))
                    .collect();
                if missing.is_empty() {
                    Check::pass(name, format!("{} runs {}", node.name, EXTENSIONS.join(" and ")))
                } else {
                    Check::fail(name, format!("{} lacks {}", node.name, missing.join(" and ")), FIX)
                }
            }
            Err(error) => Check::fail(name, format!("{error:#}"), "check the node answers: talos-bootstrap check"),
        });
        let name = format!("data path {}", node.name);
        checks.push(match resources::<String>(&talosctl, node, "machineconfig", Access::Secure).await {
            Ok(configs) if kubelet_mounts(&configs, data_path) => {
                Check::pass(name, format!("the kubelet on {} mounts {data_path}", node.name))
            }
            Ok(_) => Check::fail(
                name,
                format!("the kubelet on {} does not mount {data_path}", node.name),
                "stage 01's all-nodes patch adds it: `talos-bootstrap apply`, then apply state/talos/<node>.yaml",
            ),
            Err(error) => Check::fail(name, format!("{error:#}"), "check the node answers: talos-bootstrap check"),
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_extensions_and_the_kubelet_mount_from_talosctl_output() -> anyhow::Result<()> {
        // The IDs are numbers as talosctl prints them (its JSON goes through YAML).
        let extensions = r#"{"node":"172.16.16.150","metadata":{"id":0},"spec":{"metadata":{"name":"iscsi-tools","version":"v0.2.0"}}}
{"node":"172.16.16.150","metadata":{"id":"1"},"spec":{"metadata":{"name":"util-linux-tools","version":"2.41"}}}"#;
        let found: Vec<Resource<Extension>> = kit::talos::parse_resources(extensions)?;
        let names: Vec<&str> = found.iter().map(|extension| extension.spec.metadata.name.as_str()).collect();
        assert_eq!(names, ["iscsi-tools", "util-linux-tools"]);
        let config = |mount: &str| -> anyhow::Result<Vec<Resource<String>>> {
            let yaml = format!(
                "version: v1alpha1\nmachine:\n  kubelet:\n    extraMounts:\n      - destination: {mount}\n        type: bind\n---\napiVersion: v1alpha1\nkind: HostnameConfig\n"
            );
            let printed = serde_json::json!({ "node": "172.16.16.150", "metadata": {"id": "v1alpha1"}, "spec": yaml });
            kit::talos::parse_resources(&printed.to_string())
        };
        assert!(kubelet_mounts(&config("/var/lib/longhorn")?, "/var/lib/longhorn/"));
        assert!(!kubelet_mounts(&config("/var/mnt/other")?, "/var/lib/longhorn/"));
        Ok(())
    }
}
