//! Issue 15, part 4: the lab's supervision must never take a process that is still starting
//! (inside `exec`, its cmdline empty for a moment) for one that has exited. A large binary
//! (etcd, about 30 MB) is started and checked at once, many times in a row. A failure says how
//! the process ended (exit code or signal) and how much disk was free.

use std::time::Duration;

use lab::process::Process;

#[test]
fn a_starting_large_binary_is_never_taken_for_a_dead_one() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = kit::config::ClusterConfig::load(&root.join("cluster.yaml"))?;
    let binaries = lab::ensure_binaries(&config.versions)?;
    let dir = tempfile::tempdir()?;
    for round in 0..25 {
        let data = dir.path().join(format!("data-{round}"));
        let process = Process {
            name: format!("etcd-{round}"),
            binary: binaries.path("etcd"),
            // Ephemeral loopback ports: nothing of a running lab is disturbed.
            args: vec![
                format!("--data-dir={}", data.display()),
                "--listen-client-urls=http://127.0.0.1:0".into(),
                "--advertise-client-urls=http://127.0.0.1:0".into(),
                "--listen-peer-urls=http://127.0.0.1:0".into(),
                "--listen-metrics-urls=http://127.0.0.1:0".into(),
            ],
            run_dir: dir.path().join("run"),
            log_dir: dir.path().join("logs"),
        };
        let (pid, started) = process.ensure_started()?;
        assert!(started);
        // At once (the child may still be inside exec), and a moment later.
        for look in [Duration::ZERO, Duration::from_millis(150)] {
            std::thread::sleep(look);
            assert_eq!(
                process.running_pid(),
                Some(pid),
                "round {round}, after {look:?}: {} ({})",
                process.proc_state(),
                process.log_tail(5)
            );
        }
        assert!(process.stop(Duration::from_secs(10))?, "round {round}: it was running");
        assert_eq!(process.running_pid(), None, "round {round}: stopped");
        // etcd preallocates 64 MiB of WAL and more: 25 data dirs kept to the end took 3 GB of
        // the disk, and on a full disk etcd exits at once with an empty log. On a loaded machine
        // it may be stopped before it made its folder at all.
        match std::fs::remove_dir_all(&data) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            removed => removed?,
        }
    }
    Ok(())
}
