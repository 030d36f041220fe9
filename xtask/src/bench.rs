//! `cargo xtask bench apply`: our apply engine against `kubectl apply --server-side`, on the
//! same objects (every pinned upstream bundle, lab-transformed), each on a fresh lab of its own
//! so that "cold" means an empty cluster for both. Then a no-op re-apply with each.
//! Targets: cold at least 3× faster than kubectl, no-op at least 5× faster. Cold is one run
//! per fresh lab; no-op is the median of three, after the lab settles.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kit::apply::Engine;
use kit::artifacts::{ARTIFACTS, ArtifactStore, Component};
use kit::config::ClusterConfig;
use kit::manifest::{lab_transform, parse_manifest};
use kit::report::Action;
use kit::stage::{GlobalArgs, exit};
use lab::Lab;

/// Port bases of the two throw-away labs: clear of the default lab's 16443, and below Linux's
/// ephemeral range (32768+), where an outgoing connection may already hold a port.
const ENGINE_LAB_PORT: u16 = 20443;
const KUBECTL_LAB_PORT: u16 = 21443;

/// How long a lab is left to settle after the cold apply (the API server publishes OpenAPI
/// for new CRDs in the background), so the no-op runs measure the apply, not that work.
const SETTLE: Duration = Duration::from_secs(5);
/// No-op applies per tool; the median is reported.
const NOOP_RUNS: usize = 3;

pub fn run(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    // `cargo xtask` is a debug build; measure optimised code, as users run it.
    if cfg!(debug_assertions) {
        tracing::info!("re-running the benchmark from a release build");
        let args: Vec<String> = std::env::args().skip(1).collect();
        let status = xtask::cargo()
            .current_dir(xtask::workspace_root())
            .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
            .args(&args)
            .status()
            .context("running the release build of the benchmark")?;
        return Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::from(exit::FAILED) });
    }
    let mut stdout = std::io::stdout();
    let Some(config) = global.load_config(&mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    let store = ArtifactStore::new(&config, global.mirror.as_deref(), &kit::fsutil::cache_root());
    let mut objects = Vec::new();
    let mut bytes = 0;
    // kubelet-serving-cert-approver is not the engine's to apply: the control planes deploy it
    // at bootstrap (an inline manifest), so a fresh cluster already has it.
    let engine_applies: Vec<_> =
        ARTIFACTS.iter().filter(|artifact| artifact.component != Component::KubeletServingCertApprover).collect();
    for artifact in &engine_applies {
        let text = String::from_utf8(store.fetch(artifact)?).context("manifest is not UTF-8")?;
        bytes += text.len();
        objects.extend(parse_manifest(artifact.file, &text)?);
    }
    lab_transform(&mut objects);
    let runtime = tokio::runtime::Runtime::new()?;

    let scratch = tempfile::tempdir()?;
    let (engine_cold, engine_noop) =
        with_fresh_lab(global, &config, scratch.path(), "engine", ENGINE_LAB_PORT, |lab| {
            runtime.block_on(async {
                let client = kit::client::client_from_kubeconfig(&lab.kubeconfig).await?;
                let started = Instant::now();
                let mut engine = Engine::new(client.clone(), "bench").await?;
                let changes = engine.apply(&objects).await?;
                let cold = started.elapsed();
                anyhow::ensure!(
                    changes.iter().all(|c| c.action == Action::Created),
                    "a fresh lab should need every object"
                );
                tokio::time::sleep(SETTLE).await;
                let mut runs = Vec::new();
                for _ in 0..NOOP_RUNS {
                    let started = Instant::now();
                    let mut engine = Engine::new(client.clone(), "bench").await?;
                    let changes = engine.apply(&objects).await?;
                    runs.push(started.elapsed());
                    // Not always zero: e.g. Headlamp's service-account-token Secret names a ServiceAccount
                    // the bundle lacks, so the token controller deletes it and the re-apply recreates it.
                    let changed: Vec<String> =
                        changes.iter().filter(|c| c.action != Action::Unchanged).map(ToString::to_string).collect();
                    if !changed.is_empty() {
                        tracing::info!(
                            "changed by the cluster since the last apply, so applied again:\n  {}",
                            changed.join("\n  ")
                        );
                    }
                }
                let noop = median(runs);
                Ok((cold, noop))
            })
        })?;

    let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": objects });
    let list_file = scratch.path().join("all-objects.json");
    std::fs::write(&list_file, serde_json::to_vec(&list)?)?;
    let (kubectl_cold, kubectl_noop) =
        with_fresh_lab(global, &config, scratch.path(), "kubectl", KUBECTL_LAB_PORT, |lab| {
            let kubectl = lab.binary("kubectl");
            let apply = || -> anyhow::Result<Duration> {
                let started = Instant::now();
                let output = Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&lab.kubeconfig)
                    .args(["apply", "--server-side", "--force-conflicts", "--field-manager=bench", "-f"])
                    .arg(&list_file)
                    .output()?;
                let elapsed = started.elapsed();
                anyhow::ensure!(
                    output.status.success(),
                    "kubectl apply failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                Ok(elapsed)
            };
            let cold = apply()?;
            std::thread::sleep(SETTLE);
            let runs = (0..NOOP_RUNS).map(|_| apply()).collect::<anyhow::Result<Vec<_>>>()?;
            Ok((cold, median(runs)))
        })?;

    let ratio = |ours: Duration, theirs: Duration| theirs.as_secs_f64() / ours.as_secs_f64().max(1e-9);
    let (cold_ratio, noop_ratio) = (ratio(engine_cold, kubectl_cold), ratio(engine_noop, kubectl_noop));
    writeln!(stdout, "objects: {} from {} files ({:.1} MB)", objects.len(), engine_applies.len(), bytes as f64 / 1e6)?;
    writeln!(
        stdout,
        "             talos-ha   kubectl --server-side   ratio   target   (no-op: median of {NOOP_RUNS})"
    )?;
    let verdict = |ratio: f64, target: f64| if ratio >= target { "met" } else { "MISSED" };
    writeln!(
        stdout,
        "cold apply   {:>7.2}s   {:>7.2}s                {:>5.1}×   ≥3× {}",
        engine_cold.as_secs_f64(),
        kubectl_cold.as_secs_f64(),
        cold_ratio,
        verdict(cold_ratio, 3.0)
    )?;
    writeln!(
        stdout,
        "no-op apply  {:>7.2}s   {:>7.2}s                {:>5.1}×   ≥5× {}",
        engine_noop.as_secs_f64(),
        kubectl_noop.as_secs_f64(),
        noop_ratio,
        verdict(noop_ratio, 5.0)
    )?;
    Ok(ExitCode::SUCCESS)
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

/// Runs `measure` against a lab started for it alone (its own box, state folder and ports),
/// its cluster installed by stage 01 as `install-all --lab` installs it, and always takes that
/// lab down again.
fn with_fresh_lab<T>(
    global: &GlobalArgs,
    config: &ClusterConfig,
    scratch: &Path,
    name: &str,
    port_base: u16,
    measure: impl FnOnce(&Lab) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let lab_config = lab::second_box_config(&config.source, &scratch.join(name), &format!("bench-{name}"))?;
    let lab = Lab::new(&lab_config, port_base);
    tracing::info!("starting a fresh lab for the {name} run on port {port_base}, and installing its cluster");
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime
        .block_on(lab.up())
        .and_then(|()| install_cluster(global, &lab_config.source))
        .and_then(|()| runtime.block_on(lab.up()))
        .and_then(|()| measure(&lab));
    lab.down(true)?;
    result
}

/// Stage 01's apply on a fresh box: the twins get their configs and become the cluster.
fn install_cluster(global: &GlobalArgs, config: &Path) -> anyhow::Result<()> {
    let root = xtask::workspace_root();
    let stage = kit::names::TALOS_BOOTSTRAP_STAGE;
    let bin_dir = xtask::stages::build(&root, &[stage])?;
    let on_lab = GlobalArgs { config: config.to_owned(), lab: true, kubeconfig: None, ..global.clone() };
    let status = xtask::stages::command(&bin_dir, stage, "apply", &on_lab)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running stage 01")?;
    anyhow::ensure!(status.success(), "stage 01 did not install the fresh lab's cluster (its log is above)");
    Ok(())
}
