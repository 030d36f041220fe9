//! Issue 24: a first install killed with SIGKILL (install-all and everything it started: cargo,
//! the stage binary, talosctl; the box's machines run on) at three points of stage 01, as a
//! closed laptop or a lost SSH session would kill it: before any machine got its config, after
//! some did, and after all did but before etcd was bootstrapped. Each time a plain re-run
//! converges, bootstrapping once, and the run after that changes nothing. Then, on one of those
//! clusters, every control plane's etcd data is wiped: the bootstrap stage 01 recorded tells a
//! lost cluster from a new one, and the run is refused with the way back (a restore).
//!
//! Each point gets a box of its own (another cluster name, state folder and port base), the
//! three side by side: most of a first install is waiting for machines.

use std::os::unix::process::CommandExt as _;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use lab::twin::twin_dir;
use rehearsals::OwnBox;

/// Where in stage 01 the install is killed.
#[derive(Clone, Copy, Debug)]
enum Point {
    /// Its check passed and its apply began: no machine has a config yet.
    BeforeConfigs,
    /// Some machines took their configs, others wait in maintenance mode.
    SomeConfigs,
    /// Every machine took its config; etcd is not bootstrapped yet (no record of it).
    AllConfigsBeforeBootstrap,
}

/// Stage 01 on a box of the test's own, killed and run again.
trait Interrupted {
    fn stage_01(&self) -> std::process::Command;
    fn configured(&self) -> usize;
    fn bootstrap_recorded(&self) -> bool;
    fn reached(&self, point: Point) -> bool;
    fn killed_at(&self, point: Point) -> anyhow::Result<usize>;
}

impl Interrupted for OwnBox {
    /// `cargo xtask install-all --lab --only talos-bootstrap` on this box, in a process group of
    /// its own so that a kill takes everything it started.
    fn stage_01(&self) -> std::process::Command {
        let port_base = self.lab.ports.base.to_string();
        let mut command =
            self.xtask(&["install-all", "--only", kit::names::TALOS_BOOTSTRAP_STAGE, "--port-base", &port_base]);
        command.process_group(0);
        command
    }

    /// How many machines hold a config (a twin keeps the config it was sent on its disk).
    fn configured(&self) -> usize {
        self.config.nodes.iter().filter(|node| twin_dir(&self.lab.dir, &node.name).join("config.yaml").exists()).count()
    }

    fn bootstrap_recorded(&self) -> bool {
        self.cluster_state.join("bootstrap.json").exists()
    }

    /// Whether the install has reached `point`, once its apply began.
    fn reached(&self, point: Point) -> bool {
        let (configured, all) = (self.configured(), self.config.nodes.len());
        match point {
            Point::BeforeConfigs => true,
            Point::SomeConfigs => (1..all).contains(&configured),
            Point::AllConfigsBeforeBootstrap => configured == all && !self.bootstrap_recorded(),
        }
    }

    /// Runs stage 01 and kills it (SIGKILL to its whole process group) at `point`; returns
    /// how many machines held a config then.
    fn killed_at(&self, point: Point) -> anyhow::Result<usize> {
        let mut run = self.stage_01().stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let group = nix::unistd::Pid::from_raw(i32::try_from(run.id())?);
        // install-all prints stage 01's check line as its apply starts.
        let (log, _) = tests::stderr_until(&mut run, |line| line.starts_with("talos-bootstrap  check"))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.reached(point) {
            let finished = run.try_wait()?.is_some();
            anyhow::ensure!(!finished && Instant::now() < deadline, "{point:?} never came: {log:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL)?;
        let configured = self.configured();
        run.wait()?;
        Ok(configured)
    }
}

fn log(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Kill at `point`, then the re-run converges (bootstrapping once) and a third run changes
/// nothing. Returns the box, for more.
fn killed_then_converged(name: &str, port_base: u16, point: Point) -> anyhow::Result<OwnBox> {
    let own = OwnBox::new(name, port_base)?;
    let configured = own.killed_at(point)?;
    let all = own.config.nodes.len();
    match point {
        Point::BeforeConfigs => anyhow::ensure!(configured == 0, "{point:?}: {configured} machines configured"),
        Point::SomeConfigs => anyhow::ensure!(configured < all, "{point:?}: all {configured} configured"),
        Point::AllConfigsBeforeBootstrap => anyhow::ensure!(configured == all, "{point:?}: {configured} configured"),
    }
    anyhow::ensure!(!own.bootstrap_recorded(), "{point:?}: killed before a bootstrap was recorded");

    let again = own.stage_01().output()?;
    anyhow::ensure!(again.status.success(), "{point:?}: the re-run converges: {}", log(&again));
    anyhow::ensure!(log(&again).contains("talos-bootstrap  verify"), "{point:?}: {}", log(&again));
    let record = std::fs::read_to_string(own.cluster_state.join("bootstrap.json"))?;
    anyhow::ensure!(record.contains("\"how\": \"bootstrapped\""), "{point:?}: the re-run bootstrapped: {record}");
    anyhow::ensure!(own.lab.installed(), "{point:?}: the box's cluster is installed");

    let third = own.stage_01().output()?;
    anyhow::ensure!(third.status.success(), "{point:?}: {}", log(&third));
    anyhow::ensure!(
        log(&third).contains("nothing changed: the cluster was already converged"),
        "{point:?}: a third run changes nothing: {}",
        log(&third)
    );
    Ok(own)
}

/// Every control plane's etcd data gone (machines cut off, their etcd folders deleted, machines on):
/// stage 01 finds no members, but it recorded a bootstrap of this cluster, so this is a lost
/// cluster, not a new one. It refuses, changes nothing, and names the way back, `cargo xtask
/// restore` (which the restore drill takes: `rehearsals::drill`, run by `addon_upgrade.rs`).
async fn wiped_members_are_refused_with_the_restore_hint(own: &OwnBox) -> anyhow::Result<()> {
    let control_planes: Vec<String> = own.config.control_planes().map(|node| node.name.clone()).collect();
    for node in &control_planes {
        own.lab.power_cut(node)?;
        let etcd = twin_dir(&own.lab.dir, node).join("etcd");
        if etcd.exists() {
            std::fs::remove_dir_all(&etcd)?;
        }
    }
    for node in &control_planes {
        own.lab.power_on(node).await?;
    }
    // The stage itself, as `install-all --lab` would first wait for a cluster whose nodes
    // are Ready, which this one no longer is.
    let mut command = xtask::cargo();
    command
        .current_dir(xtask::workspace_root())
        .args(["run", "-q", "-p", "talos-bootstrap", "--", "apply", "--lab", "--config"])
        .arg(&own.config.source)
        .arg("--mirror")
        .arg(tests::upstream_mirror());
    let refused = tokio::task::spawn_blocking(move || command.output()).await??;
    let log = log(&refused);
    assert!(!refused.status.success(), "{log}");
    assert!(log.contains("cargo xtask restore --from"), "the way back: {log}");
    assert!(log.contains("--bootstrap"), "and the way to a new cluster on purpose: {log}");
    assert!(!log.contains("bootstrapping etcd"), "nothing was bootstrapped: {log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_install_killed_at_any_point_of_stage_01_converges_on_the_next_run() -> anyhow::Result<()> {
    let points = [
        ("killed-early", 22443, Point::BeforeConfigs),
        ("killed-midway", 23443, Point::SomeConfigs),
        ("killed-late", 24443, Point::AllConfigsBeforeBootstrap),
    ];
    let runs: Vec<_> = points
        .into_iter()
        .map(|(name, port_base, point)| {
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                killed_then_converged(name, port_base, point).map(|own| (own, started.elapsed()))
            })
        })
        .collect();
    let mut boxes = Vec::new();
    for run in runs {
        boxes.push(run.await?);
    }
    let mut converged = Vec::new();
    for outcome in boxes {
        let (own, took) = outcome?;
        tests::shown(&format!("interrupted install: {} converged in {:.1}s", own.config.name, took.as_secs_f64()));
        converged.push(own);
    }
    let late = converged.pop().ok_or_else(|| anyhow::anyhow!("no box"))?;
    // The other two go down (with their data) while the last one is wiped.
    let down = tokio::task::spawn_blocking(move || drop(converged));
    let wiped = wiped_members_are_refused_with_the_restore_hint(&late).await;
    down.await?;
    wiped
}
