//! What the lab tests in `tests/tests/` share: the running lab's config and a client for it.
//! `cargo xtask test` starts the lab and points `TALOS_HA_LAB_KUBECONFIG` at it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use kit::config::ClusterConfig;

pub mod talosctl_double;

/// The documented `cluster.yaml` at the repository root, which the lab was started from.
pub fn config_path() -> PathBuf {
    xtask::workspace_root().join("cluster.yaml")
}

/// That config, loaded, for the cluster in the box (its state in `state/lab/cluster`).
pub fn config() -> ClusterConfig {
    ClusterConfig::load(&config_path()).unwrap_or_else(|error| panic!("{error}")).in_box()
}

/// The upstream release manifests the tests use as their mirror: `../shared/upstream` beside
/// the repository (laid out `<component>/<version>/<file>` with a SHA256SUMS).
pub fn upstream_mirror() -> PathBuf {
    xtask::workspace_root().join("../shared/upstream")
}

/// Runs one stage command as its binary would (`<stage> ARGS… --lab --config CONFIG
/// --mirror <shared upstream>`), returning the exit code and stdout. The kubeconfig is the
/// config's own lab one unless ARGS name another.
pub fn run_stage<S: kit::stage::Stage + Sync>(stage: &S, args: &[&str], config: &Path) -> (ExitCode, String) {
    let mut argv: Vec<OsString> = vec![S::NAME.into()];
    argv.extend(args.iter().map(OsString::from));
    argv.extend(["--lab".into(), "--config".into(), config.into(), "--mirror".into(), upstream_mirror().into()]);
    let mut out = Vec::new();
    let code = kit::stage::execute(stage, argv, &mut out);
    (code, String::from_utf8_lossy(&out).into_owned())
}

/// Runs one stage command on the **Talos target** (no `--lab`: the cluster's own kubeconfig at
/// the VIP, talosctl at the nodes' addresses) from the box's workstation, where the config's
/// addresses are: the path a user runs on real machines. Returns the exit code and stdout.
pub fn run_stage_in_box<S>(stage: S, args: &[&str], config: &Path) -> anyhow::Result<(ExitCode, String)>
where
    S: kit::stage::Stage + Send + Sync + 'static,
{
    let namespace = kit::lab::workstation_namespace(&ClusterConfig::load(config)?.name);
    let mut argv: Vec<OsString> = vec![S::NAME.into()];
    argv.extend(args.iter().map(OsString::from));
    argv.extend(["--config".into(), config.into(), "--mirror".into(), upstream_mirror().into()]);
    std::thread::spawn(move || {
        lab::lan::enter(&namespace)?;
        let mut out = Vec::new();
        let code = kit::stage::execute(&stage, argv, &mut out);
        anyhow::Ok((code, String::from_utf8_lossy(&out).into_owned()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the stage's thread panicked"))?
}

/// A stage command on the Talos target from the box's workstation, against the box's cluster
/// as if it were a real one: [`run_stage_in_box`] with the cluster's own kubeconfig (the VIP),
/// which a box run keeps in the box's folder.
pub fn run_stage_on_the_boxs_cluster<S>(stage: S, args: &[&str]) -> anyhow::Result<(ExitCode, String)>
where
    S: kit::stage::Stage + Send + Sync + 'static,
{
    let kubeconfig = kit::context::cluster_kubeconfig_path(&config().state_dir());
    let kubeconfig = kubeconfig.to_str().context("the state folder's path is not UTF-8")?;
    let args: Vec<&str> = args.iter().copied().chain(["--kubeconfig", kubeconfig]).collect();
    run_stage_in_box(stage, &args, &config_path())
}

/// The control plane holding the VIP, asked from the box as `status --lab` asks.
pub fn vip_holder(config: &kit::config::ClusterConfig) -> anyhow::Result<String> {
    let config = config.clone();
    std::thread::spawn(move || {
        kit::lab::enter_box(&config)?;
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
            let talosctl = kit::talos::Talosctl::find(&config).await?;
            let holders = kit::talos::vip_holders(&talosctl, &config).await;
            anyhow::ensure!(holders.len() == 1, "one holder of the VIP: {holders:?}");
            Ok(holders[0].clone())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in the box panicked"))?
}

/// Reads `child`'s stderr (which must be piped) line by line until one is `wanted`, or the
/// stream ends; returns the lines read, the wanted one last, and whether it came. For a test
/// that acts on a running command at a point its log shows (a kill, a power cut).
pub fn stderr_until(
    child: &mut std::process::Child,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<(Vec<String>, bool)> {
    use std::io::BufRead as _;
    let stderr = child.stderr.take().context("the command's stderr is not piped")?;
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line?;
        let found = wanted(&line);
        lines.push(line);
        if found {
            return Ok((lines, true));
        }
    }
    Ok((lines, false))
}

/// Writes a measurement to stderr past the test harness's capture (it captures the print
/// macros only), so CI's log shows it on a passing run too.
pub fn shown(measured: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{measured}");
}

/// [`run_stage`] off the async runtime (a stage starts a runtime of its own).
pub async fn run_stage_async<S>(stage: S, args: &'static [&'static str], config: PathBuf) -> (ExitCode, String)
where
    S: kit::stage::Stage + Send + Sync + 'static,
{
    tokio::task::spawn_blocking(move || run_stage(&stage, args, &config))
        .await
        .unwrap_or_else(|error| panic!("the stage thread failed: {error}"))
}

/// The running lab's admin kubeconfig.
pub fn kubeconfig() -> PathBuf {
    std::env::var_os("TALOS_HA_LAB_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| kit::lab::kubeconfig_path(&config().lab_dir()))
}

/// A client for the running lab; fails with how to start one.
pub async fn lab_client() -> anyhow::Result<kube::Client> {
    let path = kubeconfig();
    anyhow::ensure!(
        path.exists(),
        "no lab at {}: run the tests with `cargo xtask test`, or start one with `cargo xtask lab up`",
        path.display()
    );
    kit::client::client_from_kubeconfig(&path).await
}

/// Polls `probe` every 250 ms until it returns `Some`, or fails after `timeout` saying `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out after {}s waiting for {what}",
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// May ServiceAccount `namespace/account` do `verb` on `resource` in `target` (cluster-wide
/// when `None`)? Asked of the API server's real RBAC authorizer (a SubjectAccessReview).
pub async fn service_account_may(
    client: &kube::Client,
    (namespace, account): (&str, &str),
    verb: &str,
    resource: (&str, &str),
    target: Option<&str>,
) -> anyhow::Result<bool> {
    kit::rbac::may(client, &kit::rbac::service_account(namespace, account), verb, resource, target).await
}

/// The stages of an `install-all --output json` report (its stdout) that went all the way:
/// asserts it names every stage in order and did not stop.
pub fn completed_stages(stdout: &[u8]) -> anyhow::Result<Vec<serde_json::Value>> {
    let report: serde_json::Value = serde_json::from_slice(stdout)?;
    let stages = report["stages"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = stages.iter().filter_map(|stage| stage["stage"].as_str()).collect();
    anyhow::ensure!(names == xtask::stages::STAGES, "every stage in order: {report:#}");
    anyhow::ensure!(report.get("stopped").is_none(), "it did not stop: {report:#}");
    Ok(stages)
}
