//! What Longhorn needs from each Talos worker, read with talosctl: the system extensions
//! from stage 01's Image Factory schematic, and the kubelet mount of the data path.

use std::time::Duration;

use kit::check::Check;
use kit::config::{ClusterConfig, Node};
use kit::tool::{Tool, talos_node_args, talosconfig_path};

/// The extensions Longhorn needs (names as `talosctl get extensions` shows them).
pub const EXTENSIONS: &[&str] = &["iscsi-tools", "util-linux-tools"];
const TIMEOUT: Duration = Duration::from_secs(30);
const FIX: &str = "stage 01 installs it: re-run `talos-bootstrap apply` for new nodes, or `talosctl upgrade \
                   --image <the installer image in state/talos/<node>.yaml>` for installed ones";

/// talosctl prints one JSON object per resource, one after another.
fn json_stream(text: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>().filter_map(Result::ok).collect()
}

/// The extension names in `talosctl get extensions -o json`.
pub fn extension_names(output: &str) -> Vec<String> {
    json_stream(output)
        .iter()
        .filter_map(|resource| resource.pointer("/spec/metadata/name").and_then(|name| name.as_str()))
        .map(str::to_owned)
        .collect()
}

/// True when the machine config in `talosctl get machineconfig -o json` mounts `path` into
/// the kubelet (`machine.kubelet.extraMounts[].destination`).
pub fn kubelet_mounts(output: &str, path: &str) -> bool {
    json_stream(output).iter().filter_map(|resource| resource["spec"].as_str()).any(|config| {
        // The first document is the v1alpha1 config; the rest are other kinds.
        let first = config.split("\n---").next().unwrap_or_default();
        let Ok(parsed) = serde_saphyr::from_str::<serde_json::Value>(first) else { return false };
        let mounts =
            parsed.pointer("/machine/kubelet/extraMounts").and_then(|m| m.as_array()).cloned().unwrap_or_default();
        mounts.iter().any(|mount| {
            mount["destination"].as_str().map(|d| d.trim_end_matches('/')) == Some(path.trim_end_matches('/'))
        })
    })
}

async fn talosctl_json(tool: &Tool, config: &ClusterConfig, node: &Node, resource: &str) -> anyhow::Result<String> {
    let args = talos_node_args(&talosconfig_path(config), node, &["get", resource, "-o", "json"]);
    tool.run(args, TIMEOUT).await?.ok(format_args!("talosctl get {resource} on {}", node.name))
}

/// One check per worker and need: the extensions, then the data-path mount.
pub async fn worker_checks(config: &ClusterConfig, data_path: &str) -> Vec<Check> {
    let tool = match Tool::talosctl(config.versions.talos).await {
        Ok(tool) => tool,
        Err(error) => {
            return vec![Check::fail("talosctl", format!("{error:#}"), "install talosctl as the message says")];
        }
    };
    let mut checks = Vec::new();
    for node in config.workers() {
        let name = format!("extensions {}", node.name);
        checks.push(match talosctl_json(&tool, config, node, "extensions").await {
            Ok(output) => {
                let found = extension_names(&output);
                let missing: Vec<&str> = EXTENSIONS.iter().copied().filter(|e| !found.iter().any(|f| f == e)).collect();
                if missing.is_empty() {
                    Check::pass(name, format!("{} runs {}", node.name, EXTENSIONS.join(" and ")))
                } else {
                    Check::fail(name, format!("{} lacks {}", node.name, missing.join(" and ")), FIX)
                }
            }
            Err(error) => Check::fail(name, format!("{error:#}"), "check the node answers: talos-bootstrap check"),
        });
        let name = format!("data path {}", node.name);
        checks.push(match talosctl_json(&tool, config, node, "machineconfig").await {
            Ok(output) if kubelet_mounts(&output, data_path) => {
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
    fn reads_extensions_and_the_kubelet_mount_from_talosctl_output() {
        let extensions = r#"{"node":"172.16.16.150","metadata":{"id":"0"},"spec":{"metadata":{"name":"iscsi-tools","version":"v0.2.0"}}}
{"node":"172.16.16.150","metadata":{"id":"1"},"spec":{"metadata":{"name":"util-linux-tools","version":"2.41"}}}"#;
        assert_eq!(extension_names(extensions), ["iscsi-tools", "util-linux-tools"]);
        let config = |mount: &str| {
            let yaml = format!(
                "version: v1alpha1\nmachine:\n  kubelet:\n    extraMounts:\n      - destination: {mount}\n        type: bind\n---\napiVersion: v1alpha1\nkind: HostnameConfig\n"
            );
            serde_json::json!({ "node": "172.16.16.150", "spec": yaml }).to_string()
        };
        assert!(kubelet_mounts(&config("/var/lib/longhorn"), "/var/lib/longhorn/"));
        assert!(!kubelet_mounts(&config("/var/mnt/other"), "/var/lib/longhorn/"));
    }
}
