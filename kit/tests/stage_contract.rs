//! The stage CLI contract, exercised through `FixtureStage`: a test double of a stage whose
//! steps return fixed results, so what is asserted is the shared CLI (dispatch, output
//! formats, exit codes, config errors), not any cluster.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kit::context::Context;
use kit::report::Check;
use kit::report::{Action, Change};
use kit::stage::{self, Stage};

struct FixtureStage;

impl Stage for FixtureStage {
    const NAME: &'static str = "fixture";
    const FOLDER: &'static str = "00-fixture";
    const TITLE: &'static str = "A fixture stage for testing the shared CLI";
    const LESSON: &'static str = "# The fixture lesson\n";

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        Ok(vec![
            Check::pass("config loaded", format!("{} nodes", ctx.config.nodes.len())),
            Check::not_checkable_in_lab("arp", "the lab has no L2 network"),
        ])
    }

    /// On the lab its Namespace already exists; on Talos it would be created.
    async fn plan(&self, ctx: &Context) -> anyhow::Result<Vec<Change>> {
        let action = if ctx.target == kit::context::Target::Lab { Action::Unchanged } else { Action::Created };
        Ok(vec![Change { object: "Namespace fixture".into(), action, diff: None }])
    }

    async fn apply(&self, ctx: &Context) -> anyhow::Result<Vec<Change>> {
        anyhow::ensure!(ctx.target == kit::context::Target::Lab, "fixture applies only with --lab");
        Ok(vec![Change {
            object: "ConfigMap fixture/settings".into(),
            action: Action::Configured,
            diff: Some("data.replicas: 2 → 3".into()),
        }])
    }

    async fn verify(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        Ok(vec![Check::fail(
            "kubeconfig",
            format!("would read {}", ctx.kubeconfig.display()),
            "run the previous stage",
        )])
    }

    async fn render(&self, ctx: &Context, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let path = out.join(Self::FOLDER).join("README.md");
        std::fs::create_dir_all(path.parent().unwrap_or(out))?;
        std::fs::write(&path, format!("VIP {}\n", ctx.config.network.vip))?;
        Ok(vec![path])
    }
}

fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.yaml")
}

/// Runs `fixture ARGS…` and returns its exit code and stdout.
fn run(args: &[&str]) -> (ExitCode, String) {
    let argv: Vec<OsString> = std::iter::once("fixture".into()).chain(args.iter().map(OsString::from)).collect();
    let mut out = Vec::new();
    let code = stage::execute(&FixtureStage, argv, &mut out);
    (code, String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn check_reports_named_checks_and_passes() {
    let config = config_path();
    let (code, out) = run(&["check", "--config", config.to_str().unwrap_or_default()]);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("ok    config loaded: 6 nodes"), "{out}");
    assert!(out.contains("not checkable in the lab: the lab has no L2 network"), "{out}");
}

#[test]
fn json_output_is_one_object_per_check() -> anyhow::Result<()> {
    let config = config_path();
    let (code, out) = run(&["check", "--output", "json", "--config", config.to_str().unwrap_or_default()]);
    assert_eq!(code, ExitCode::SUCCESS);
    let objects: Vec<serde_json::Value> = out.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0]["name"], "config loaded");
    assert_eq!(objects[0]["status"], "pass");
    assert_eq!(objects[1]["status"], "not-checkable-in-lab");
    Ok(())
}

#[test]
fn a_failed_check_exits_1_with_its_fix_and_the_lab_kubeconfig() {
    let config = config_path();
    let (code, out) = run(&["verify", "--lab", "--config", config.to_str().unwrap_or_default()]);
    assert_eq!(code, ExitCode::from(1));
    assert!(out.contains("FAIL  kubeconfig") && out.contains("fix: run the previous stage"), "{out}");
    assert!(out.contains("state/lab/kubeconfig"), "--lab picks the lab kubeconfig: {out}");
}

#[test]
fn apply_reports_changes_and_errors_exit_1() {
    let config = config_path();
    let config = config.to_str().unwrap_or_default();
    let (code, out) = run(&["apply", "--lab", "--config", config]);
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(out.contains("configured  ConfigMap fixture/settings") && out.contains("data.replicas: 2 → 3"), "{out}");
    let (code, _) = run(&["apply", "--config", config]);
    assert_eq!(code, ExitCode::from(1), "a stage error is exit 1");
}

#[test]
fn an_invalid_config_exits_2_listing_every_problem() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broken = dir.path().join("cluster.yaml");
    let text = std::fs::read_to_string(config_path())?
        .replace("vip: 172.16.16.100", "vip: 172.16.16.110")
        .replace("name: talos-ha", "name: Talos");
    std::fs::write(&broken, text)?;
    let (code, out) = run(&["check", "--config", broken.to_str().unwrap_or_default()]);
    assert_eq!(code, ExitCode::from(2));
    assert!(out.contains("cluster.name: Talos is not a valid DNS label"), "{out}");
    assert!(out.contains("metallb.pool") && out.contains("control-plane VIP"), "{out}");
    let (code, json) = run(&["plan", "--output", "json", "--config", broken.to_str().unwrap_or_default()]);
    assert_eq!(code, ExitCode::from(1), "for plan, 2 means 'would change': a broken config is an error");
    assert_eq!(json.lines().count(), 2, "one JSON object per problem: {json}");
    Ok(())
}

#[test]
fn a_mistyped_flag_exits_2_but_under_plan_1() {
    let (code, _) = run(&["check", "--no-such-flag"]);
    assert_eq!(code, ExitCode::from(2), "a usage error is exit 2, as for an invalid config");
    let (code, _) = run(&["plan", "--no-such-flag"]);
    assert_eq!(code, ExitCode::from(1), "under plan, 2 means 'would change': a usage error is an error");
    let (code, _) = run(&["--no-such-flag", "plan"]);
    assert_eq!(code, ExitCode::from(1), "a wrong global flag before plan too");
    let (code, out) = run(&["plan", "--help"]);
    assert_eq!(code, ExitCode::SUCCESS, "help is no error: {out}");
}

#[test]
fn plan_exits_2_when_something_would_change_and_0_when_nothing_would() -> anyhow::Result<()> {
    let config = config_path();
    let config = config.to_str().unwrap_or_default();
    let (code, out) = run(&["plan", "--output", "json", "--config", config]);
    assert_eq!(code, ExitCode::from(2), "{out}");
    let change: serde_json::Value = serde_json::from_str(out.trim())?;
    assert_eq!(change["action"], "created", "the JSON says the same: {out}");
    let (code, out) = run(&["plan", "--lab", "--config", config]);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("unchanged   Namespace fixture"), "{out}");
    Ok(())
}

#[test]
fn render_and_explain_need_no_cluster() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config_path();
    let (code, out) = run(&[
        "render",
        "--out",
        dir.path().to_str().unwrap_or_default(),
        "--config",
        config.to_str().unwrap_or_default(),
    ]);
    assert_eq!(code, ExitCode::SUCCESS);
    let written = dir.path().join("00-fixture/README.md");
    assert_eq!(out.trim(), written.display().to_string());
    assert_eq!(std::fs::read_to_string(written)?, "VIP 172.16.16.100\n");
    let (code, lesson) = run(&["explain", "--config", "/nonexistent/cluster.yaml"]);
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(lesson, "# The fixture lesson\n");
    Ok(())
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["destroy"]).0, ExitCode::from(2));
    assert_eq!(run(&["render"]).0, ExitCode::from(2), "render needs --out");
}
