//! Talos's own API integration suite judges the twins: `internal/integration` of the
//! `github.com/siderolabs/talos` module at `versions.talos`, the tests Sidero Labs runs against
//! every release on real machines, run against the box from its workstation (the talosconfig
//! of the box's cluster; the suites that need Kubernetes take the kubeconfig the nodes hand out,
//! aimed at the VIP). A suite the twins cannot answer, or that would change the shared box, is
//! skipped, with the reason beside it in [`SUITES`]; where a judged test fails because a twin
//! answers differently from Talos, the twin changes, never the test.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;
use kit::config::ClusterConfig;

/// What is done with one suite of the integration binary.
#[derive(Debug, Clone, Copy)]
pub enum Judged {
    /// These tests run (every one of the suite's when empty).
    Runs(&'static [&'static str]),
    /// Not run, and why.
    Skipped(&'static str),
}

/// Every API and Kubernetes suite the integration binary holds (its `SuiteName()`s at v1.12.1),
/// each judged.
pub const SUITES: &[(&str, Judged)] = &[
    ("api.VersionSuite", Judged::Runs(&[])),
    ("api.MachineStatusSuite", Judged::Runs(&[])),
    ("api.EventsSuite", Judged::Runs(&[])),
    ("api.ResourcesSuite", Judged::Runs(&[])),
    ("api.MonitoringSuite", Judged::Runs(&[])),
    ("api.HardwareSuite", Judged::Runs(&[])),
    ("api.PlatformSuite", Judged::Runs(&[])),
    // The KubeSpan tests skip themselves: the seed does not enable KubeSpan.
    ("api.DiscoverySuite", Judged::Runs(&[])),
    ("api.SecuritySuite", Judged::Runs(&[])),
    // The other etcd tests make a member leave, forfeit leadership, be removed or downgrade.
    ("api.EtcdSuite", Judged::Runs(&["TestMembers"])),
    // The others create user volumes, LVM groups, swap and raw volumes on the machines' disks.
    ("api.VolumesSuite", Judged::Runs(&["TestDiscoveredVolumes", "TestSystemDisk", "TestDisks"])),
    // The others apply configs for real (and reboot, or rotate the disk encryption secrets);
    // TestApplyNoReboot needs Talos's judgement of what applies without a reboot, which the twin
    // does not model yet.
    (
        "api.ApplyConfigSuite",
        Judged::Runs(&["TestApplyDryRun", "TestApplyDryRunDocuments", "TestApplyRemovingV1Alpha1"]),
    ),
    (
        "api.ApidSuite",
        Judged::Skipped(
            "TestBigPayload applies an 11 MB config with --mode=no-reboot (not modelled yet); the routing tests \
             skip themselves without a provisioner's cluster state",
        ),
    ),
    (
        "api.CGroupsSuite",
        Judged::Skipped("reads the machine's cgroup tree: a twin runs its services as host processes"),
    ),
    ("api.CommonSuite", Judged::Skipped("needs the virtio modules, ulimits and DNS of pods in real containers")),
    ("api.ContainersSuite", Judged::Skipped("lists containerd's containers: kwok stands in for the container runtime")),
    ("api.DiskUsageSuite", Judged::Skipped("walks the machine's filesystem: the twin serves no DiskUsage")),
    ("api.DmesgSuite", Judged::Skipped("the kernel log: a twin has no kernel of its own")),
    ("api.EtcdRecoverSuite", Judged::Skipped("wipes and recovers etcd: the restore drill does this (rehearsals)")),
    ("api.EthernetSuite", Judged::Skipped("ethtool features of real network cards")),
    ("api.ExtensionsSuiteNVIDIA", Judged::Skipped("NVIDIA extensions and GPUs")),
    ("api.ExtensionsSuiteQEMU", Judged::Skipped("QEMU guest-agent extensions in a QEMU VM")),
    ("api.FirewallSuite", Judged::Skipped("changes the machines' firewall rules")),
    (
        "api.GenerateConfigSuite",
        Judged::Skipped("the GenerateConfiguration call: the twin serves no config generation"),
    ),
    ("api.KernelSuite", Judged::Skipped("kernel modules and parameters: a twin has no kernel of its own")),
    ("api.LogsSuite", Judged::Skipped("service logs through the API: the twin serves no Logs")),
    ("api.NetworkConfigSuite", Judged::Skipped("changes the machines' network config")),
    ("api.NodeAnnotationsSuite", Judged::Skipped("changes the machines' configs (node annotations)")),
    ("api.NodeLabelsSuite", Judged::Skipped("changes the machines' configs (node labels)")),
    ("api.NodeTaintsSuite", Judged::Skipped("changes the machines' configs (node taints)")),
    ("api.PCIDriverRebindSuite", Judged::Skipped("rebinds PCI drivers of real devices")),
    ("api.ProcessSuite", Judged::Skipped("the machine's process list: the twin serves no Processes")),
    (
        "api.RebootSuite",
        Judged::Skipped("reboots machines: rehearsals/tests/twins.rs runs `talosctl reboot` on its own box"),
    ),
    ("api.ResetSuite", Judged::Skipped("resets machines: the restore drill and twins.rs do this on their own boxes")),
    ("api.RotateCASuite", Judged::Skipped("rotates the cluster's CAs")),
    ("api.SBOMSuite", Judged::Skipped("the SBOM of a real Talos image")),
    ("api.SELinuxSuite", Judged::Skipped("SELinux labels: a twin has no kernel of its own")),
    ("api.ServiceAccountSuite", Judged::Skipped("Talos API access from pods: needs real containers")),
    ("api.SideroLinkSuite", Judged::Skipped("SideroLink (Omni's tunnel): not configured in the seed")),
    ("api.TrustedBootSuite", Judged::Skipped("Secure Boot and TPM measurements")),
    ("api.TrustedRootsSuite", Judged::Skipped("changes the machines' trusted roots")),
    ("api.UKISuite", Judged::Skipped("a machine booted from a UKI")),
    ("api.UpdateHostnameSuite", Judged::Skipped("changes the machines' hostnames")),
    ("api.WatchdogSuite", Judged::Skipped("a hardware watchdog device")),
    ("api.WipeSuite", Judged::Skipped("wipes block devices")),
    ("k8s.ApparmorSuite", Judged::Skipped("runs pods: kwok stands in for the container runtime")),
    ("k8s.LongHornSuite", Judged::Skipped("runs Longhorn's pods and volumes: no containers in the box")),
    ("k8s.OomSuite", Judged::Skipped("runs pods until the kernel's OOM killer acts")),
    ("k8s.OpenEBSSuite", Judged::Skipped("runs OpenEBS: no containers in the box")),
    ("k8s.RookSuite", Judged::Skipped("runs Rook Ceph: no containers in the box")),
    ("k8s.TinkSuite", Judged::Skipped("runs Talos in Kubernetes pods")),
    ("k8s.UserNamespaceSuite", Judged::Skipped("runs pods in user namespaces")),
    (
        "k8s.VersionSuite",
        Judged::Skipped(
            "the Nodes' nodeInfo is kwok's (kubelet and runtime \"kwok-0.8.0\", no OS image), not a Talos kubelet's",
        ),
    ),
];

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Skipped,
}

/// One judged test's outcome, with what it printed when it failed.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub suite: &'static str,
    pub test: String,
    pub outcome: Outcome,
    pub output: String,
}

/// `go test`'s `-test.run` for one suite: its level under `TestIntegration`, then its tests.
pub fn run_pattern(suite: &str, tests: &[&str]) -> String {
    let suite = suite.replace('.', r"\.");
    let tests = if tests.is_empty() { ".*".to_owned() } else { tests.join("|") };
    format!("^TestIntegration$/^{suite}$/^({tests})$")
}

/// Reads `go test -v` output: the outcome of each `TestIntegration/<suite>/<test>` (sub-tests
/// below a test, one per node, are part of it), with the lines that test printed.
pub fn parse_results(suite: &'static str, output: &str) -> Vec<TestResult> {
    let prefix = format!("TestIntegration/{suite}/");
    let mut results = Vec::new();
    for line in output.lines() {
        let trimmed = line.trim_start();
        let outcome =
            [("--- PASS: ", Outcome::Passed), ("--- FAIL: ", Outcome::Failed), ("--- SKIP: ", Outcome::Skipped)]
                .into_iter()
                .find_map(|(marker, outcome)| trimmed.strip_prefix(marker).map(|rest| (rest, outcome)));
        let Some((rest, outcome)) = outcome else { continue };
        let Some(test) = rest.split_whitespace().next().and_then(|name| name.strip_prefix(&prefix)) else { continue };
        if test.contains('/') {
            continue;
        }
        let output =
            if outcome == Outcome::Failed { printed_by(output, &format!("{prefix}{test}")) } else { String::new() };
        results.push(TestResult { suite, test: test.to_owned(), outcome, output });
    }
    results
}

/// The lines a test (and its sub-tests) printed: from its `=== RUN` to the next test's.
fn printed_by(output: &str, test: &str) -> String {
    let mut inside = false;
    let mut printed = Vec::new();
    for line in output.lines() {
        if let Some(running) = line.strip_prefix("=== RUN   ") {
            inside = running == test || running.starts_with(&format!("{test}/"));
        } else if inside && !line.trim_start().starts_with("--- ") {
            printed.push(line);
        }
    }
    printed.join("\n")
}

/// Runs every judged suite against the running box of `config` with the integration binary at
/// `binary`; returns each judged test's result.
pub fn run(config: &ClusterConfig, binary: &Path) -> anyhow::Result<Vec<TestResult>> {
    let config = config.clone().in_box();
    let talosconfig = kit::tool::talosconfig_path(&config);
    anyhow::ensure!(
        talosconfig.exists(),
        "{} is missing: install the box's cluster first (cargo xtask install-all --lab)",
        talosconfig.display()
    );
    let talos_version = config.versions.talos.to_string();
    let go_version = twin_go_version(&config)?;
    let mut results = Vec::new();
    for (suite, judged) in SUITES {
        let Judged::Runs(tests) = judged else { continue };
        tracing::info!("Talos's {suite}");
        let mut command = Command::new(binary);
        command.args([
            "-test.v",
            "-test.timeout=10m",
            &format!("-test.run={}", run_pattern(suite, tests)),
            &format!("-talos.config={}", talosconfig.display()),
            &format!("-talos.version={talos_version}"),
            &format!("-talos.go.version={go_version}"),
        ]);
        let output = crate::lan::output_in(&kit::lab::workstation_namespace(&config.name), command)?;
        let output = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        let found = parse_results(suite, &output);
        anyhow::ensure!(!found.is_empty(), "Talos's {suite} reported no test:\n{output}");
        results.extend(found);
    }
    Ok(results)
}

/// The Go release the twin was built with, which it reports in `version` as Talos reports its
/// own build's (the suite's VersionSuite checks the two agree).
fn twin_go_version(config: &ClusterConfig) -> anyhow::Result<String> {
    let twin = crate::build::binaries(&config.versions).path(crate::build::TWIN);
    let output = Command::new("go").arg("version").arg(&twin).output().context("running `go version` on the twin")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "<path>: go1.26.8"
    text.rsplit(": ")
        .next()
        .map(|version| version.trim().to_owned())
        .filter(|version| version.starts_with("go"))
        .with_context(|| format!("`go version {}` said {text:?}", twin.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suites_pattern_names_its_level_and_its_tests() {
        assert_eq!(
            run_pattern("api.EtcdSuite", &["TestMembers"]),
            r"^TestIntegration$/^api\.EtcdSuite$/^(TestMembers)$"
        );
        assert_eq!(run_pattern("api.VersionSuite", &[]), r"^TestIntegration$/^api\.VersionSuite$/^(.*)$");
    }

    #[test]
    fn results_are_read_per_test_with_the_failures_output() {
        let output = "=== RUN   TestIntegration\n\
            === RUN   TestIntegration/api.VolumesSuite/TestDisks/172.16.16.10\n\
            \x20       volumes.go:160: \n\
            \x20       \tError: disk sda has no symlinks\n\
            --- FAIL: TestIntegration (1.00s)\n\
            \x20   --- FAIL: TestIntegration/api.VolumesSuite (1.00s)\n\
            \x20       --- FAIL: TestIntegration/api.VolumesSuite/TestDisks (0.50s)\n\
            \x20           --- FAIL: TestIntegration/api.VolumesSuite/TestDisks/172.16.16.10 (0.50s)\n\
            \x20       --- PASS: TestIntegration/api.VolumesSuite/TestSystemDisk (0.10s)\n\
            \x20       --- SKIP: TestIntegration/api.VolumesSuite/TestLVMActivation (0.00s)\n";
        let results = parse_results("api.VolumesSuite", output);
        let outcomes: Vec<(&str, Outcome)> = results.iter().map(|r| (r.test.as_str(), r.outcome)).collect();
        assert_eq!(
            outcomes,
            [
                ("TestDisks", Outcome::Failed),
                ("TestSystemDisk", Outcome::Passed),
                ("TestLVMActivation", Outcome::Skipped)
            ]
        );
        assert!(results[0].output.contains("disk sda has no symlinks"), "{}", results[0].output);
    }
}
