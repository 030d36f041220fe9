//! Starting, finding and stopping the lab's processes. Each component runs detached (its own
//! process group, so a Ctrl-C in the terminal that ran `lab up` does not take it down), logs to
//! `logs/<name>.log`, and is remembered in `run/<name>.pid` by its identity: the PID and the
//! time the kernel started it (`/proc/<pid>/stat`, field 22). The start time is fixed at fork
//! and no later process can have both, so a recycled PID is never signalled, and a process
//! still inside `exec` (state D, its cmdline empty for a moment) is never taken for a dead one:
//! liveness never reads a cmdline.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// GOGC for the box's Go processes (see [`Process::ensure_started`]).
const BOX_GOGC: &str = "200";

/// One supervised process of the lab.
pub struct Process {
    pub name: String,
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
}

impl Process {
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join(format!("{}.pid", self.name))
    }

    pub fn log_file(&self) -> PathBuf {
        self.log_dir.join(format!("{}.log", self.name))
    }

    /// The PID of the running process, if it is ours and alive.
    pub fn running_pid(&self) -> Option<i32> {
        self.recorded().filter(Identity::is_alive).map(|identity| identity.pid)
    }

    fn recorded(&self) -> Option<Identity> {
        Identity::parse(&fs::read_to_string(self.pid_file()).ok()?)
    }

    /// Starts the process unless it is already running; returns its PID and whether it started.
    pub fn ensure_started(&self) -> anyhow::Result<(i32, bool)> {
        if let Some(pid) = self.running_pid() {
            return Ok((pid, false));
        }
        fs::create_dir_all(&self.run_dir)?;
        fs::create_dir_all(&self.log_dir)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .with_context(|| format!("opening {}", self.log_file().display()))?;
        let mut command = Command::new(&self.binary);
        // Go's collector runs twice as rarely in the box's Go processes (the twins, and through
        // them etcd and the Kubernetes control plane; the workstation and the controllers) as
        // by default, unless GOGC is set already: measured with `perf` during `cargo xtask
        // test`, the API servers took half the machine's CPU and half of that was their garbage
        // collector. It costs memory (heaps grow to 3x what is live instead of 2x) and changes
        // nothing the processes answer. Talos leaves Go's default on a real machine.
        if std::env::var_os("GOGC").is_none() {
            command.env("GOGC", BOX_GOGC);
        }
        let child = command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.binary.display()))?;
        let pid = i32::try_from(child.id()).context("PID out of range")?;
        // The child exists from fork on, so its start time is there even while it execs.
        let identity = Identity::of(pid).with_context(|| format!("reading /proc/{pid}/stat of {}", self.name))?;
        fs::write(self.pid_file(), identity.to_string())?;
        Ok((pid, true))
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`. Returns whether one was running.
    pub fn stop(&self, grace: Duration) -> anyhow::Result<bool> {
        self.end(Some(grace))
    }

    /// Kills the process with SIGKILL at once: it gets no chance to say goodbye (a node twin
    /// does not resign the VIP or leave etcd), as when a machine loses power.
    pub fn kill(&self) -> anyhow::Result<bool> {
        self.end(None)
    }

    /// SIGTERM and `grace` to exit first when given; then SIGKILL.
    fn end(&self, grace: Option<Duration>) -> anyhow::Result<bool> {
        let Some(identity) = self.recorded().filter(Identity::is_alive) else {
            // It died on its own (or never ran): collect it if it was ours, forget its PID.
            if let Some(identity) = self.recorded() {
                reap_if_child(identity.pid);
            }
            let _ = fs::remove_file(self.pid_file());
            return Ok(false);
        };
        let pid = identity.pid;
        if let Some(grace) = grace {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while identity.is_alive() && Instant::now() < deadline {
                reap_if_exited(pid);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if identity.is_alive() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while identity.is_alive() && Instant::now() < deadline {
                reap_if_exited(pid);
                std::thread::sleep(Duration::from_millis(50));
            }
            anyhow::ensure!(!identity.is_alive(), "{} (pid {pid}) survived SIGKILL", self.name);
        }
        reap_if_child(pid);
        fs::remove_file(self.pid_file()).with_context(|| format!("removing {}", self.pid_file().display()))?;
        Ok(true)
    }

    /// The last `lines` lines of the log: what an error shows when a component will not start.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_file()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What /proc says of the recorded process, for an error that claims it is gone. A zombie
    /// child of ours is collected here, so the error can say how it ended: an exit code is the
    /// program's own verdict, a signal (SIGKILL from the OOM killer, say) is someone else's.
    pub fn proc_state(&self) -> String {
        let Some(recorded) = self.recorded() else { return format!("no PID in {}", self.pid_file().display()) };
        match Identity::of(recorded.pid) {
            Ok(now) if now.started == recorded.started && now.state == "Z" => {
                let ended = match waitpid(Pid::from_raw(recorded.pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => format!("exited with code {code}"),
                    Ok(WaitStatus::Signaled(_, signal, _)) => format!("was killed by {signal}"),
                    _ => "has exited (not our child, so its status is its parent's)".to_owned(),
                };
                format!("pid {} {ended}; {}", recorded.pid, free_space(&self.log_dir))
            }
            Ok(now) if now.started == recorded.started => {
                format!("pid {} (started at tick {}) is in state {:?}", recorded.pid, recorded.started, now.state)
            }
            Ok(now) => format!(
                "pid {} now belongs to another process (started at tick {}, ours at {})",
                recorded.pid, now.started, recorded.started
            ),
            Err(error) => format!("pid {}: gone ({error})", recorded.pid),
        }
    }
}

/// Which process a PID file means: the PID and the kernel's start time of that process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    /// Clock ticks after boot at which the process was forked (`/proc/<pid>/stat`, field 22).
    pub started: u64,
    /// Its state when last read (field 3): R, S, D, Z, …
    pub state: String,
}

impl Identity {
    /// The process that has `pid` now.
    pub fn of(pid: i32) -> std::io::Result<Identity> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        parse_stat(pid, &stat).ok_or_else(|| std::io::Error::other(format!("unexpected /proc/{pid}/stat: {stat:?}")))
    }

    /// True while the process this identity names runs: the PID still has the same start time
    /// and is not a zombie (dead, not yet reaped by its parent).
    pub fn is_alive(&self) -> bool {
        Identity::of(self.pid).is_ok_and(|now| now.started == self.started && !matches!(now.state.as_str(), "Z" | "X"))
    }

    fn parse(text: &str) -> Option<Identity> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let started = words.next()?.parse().ok()?;
        Some(Identity { pid, started, state: String::new() })
    }
}

impl std::fmt::Display for Identity {
    /// The PID file's form: `<pid> <start time>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.pid, self.started)
    }
}

/// `pid (comm) state ppid … starttime …`: comm may hold spaces and parentheses, so the fields
/// are counted from the last `)`; state is field 3, starttime field 22.
fn parse_stat(pid: i32, stat: &str) -> Option<Identity> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = (*fields.first()?).to_owned();
    let started = fields.get(22 - 3)?.parse().ok()?;
    Some(Identity { pid, started, state })
}

/// Collects the exit status of `pid` if this process started it (`lab up` and `lab down` in one
/// process, as `cargo xtask test` does), so it leaves no zombie. It polls for up to 5 s and
/// never waits longer (a blocking wait on a child still running hung `cargo xtask test` for good
/// once, in a `down` after a failed `up`). For anyone else's child it returns ECHILD at once.
fn reap_if_child(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(WaitStatus::StillAlive) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        if Instant::now() >= deadline {
            tracing::warn!("pid {pid} is still running; left alone");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One look, as a parent: a child of ours that has exited is collected now (it would otherwise
/// stay a zombie, which [`Identity::is_alive`] already counts as dead).
fn reap_if_exited(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// The free space on the filesystem that holds `dir`: a process that cannot write its data or
/// even its log (ENOSPC) exits with an empty log, and this line is then the only clue.
fn free_space(dir: &Path) -> String {
    match free_bytes(dir) {
        Ok(free) => format!("{} MiB free on the disk of {}", free >> 20, dir.display()),
        Err(error) => format!("free space of {} unknown ({error})", dir.display()),
    }
}

/// Bytes an unprivileged writer may still use on the filesystem of `path`, or of its nearest
/// existing ancestor (a lab's folder before its first `up`).
pub fn free_bytes(path: &Path) -> nix::Result<u64> {
    let existing = path.ancestors().find(|dir| dir.exists()).unwrap_or(Path::new("/"));
    let stats = nix::sys::statvfs::statvfs(existing)?;
    Ok(stats.blocks_available() * stats.fragment_size())
}

/// Resident memory of a process in bytes (from /proc).
fn own_resident_bytes(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 =
        status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident memory of a process and every process below it, in bytes, for `lab status`: a
/// twin's machine is the twin and what it runs (etcd, the API server, kwok, ...). A process in
/// `listed` (one with a line of its own, as the host controllers the workstation starts) is
/// left out with what runs below it, so no memory is counted twice.
pub fn resident_bytes(pid: i32, listed: &[i32]) -> Option<u64> {
    let parents: Vec<(i32, i32)> = fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|child| {
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            Some((child, rest.split_whitespace().nth(1)?.parse().ok()?))
        })
        .collect();
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        let children = parents.iter().filter(|(child, of)| *of == parent && !listed.contains(child));
        tree.extend(children.map(|(child, _)| *child));
        next += 1;
    }
    let total: u64 = tree.iter().filter_map(|member| own_resident_bytes(*member)).sum();
    own_resident_bytes(pid).map(|_| total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "4826 (etcd (x) y) D 1 4826 4826 0 -1 4194560 2 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let identity = parse_stat(4826, stat).expect("parsed");
        assert_eq!(identity, Identity { pid: 4826, started: 987_654, state: "D".into() });
        assert_eq!(Identity::parse(&identity.to_string()).map(|i| i.started), Some(987_654));
    }

    #[test]
    fn this_process_is_alive_and_a_recycled_pid_is_not_ours() -> anyhow::Result<()> {
        let me = Identity::of(i32::try_from(std::process::id())?)?;
        assert!(me.is_alive());
        let recycled = Identity { started: me.started + 1, ..me };
        assert!(!recycled.is_alive(), "same PID, another start time: another process");
        Ok(())
    }
}
