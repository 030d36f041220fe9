//! Starting, finding and stopping the lab's processes. Each component runs detached (its own
//! process group, so a Ctrl-C in the terminal that ran `lab up` does not take it down), logs to
//! `logs/<name>.log`, and is remembered by PID in `run/<name>.pid`. A PID is only trusted while
//! `/proc/<pid>/cmdline` still names our binary, so a recycled PID is never signalled.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

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
        self.recorded_pid().filter(|pid| is_our_live_process(*pid, &self.binary))
    }

    fn recorded_pid(&self) -> Option<i32> {
        fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()
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
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.binary.display()))?;
        let pid = i32::try_from(child.id()).context("PID out of range")?;
        fs::write(self.pid_file(), pid.to_string())?;
        Ok((pid, true))
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`. Returns whether one was running.
    pub fn stop(&self, grace: Duration) -> anyhow::Result<bool> {
        let Some(pid) = self.running_pid() else {
            // It died on its own (or never ran): collect it if it was ours, forget its PID.
            if let Some(pid) = self.recorded_pid() {
                reap_if_child(pid);
            }
            let _ = fs::remove_file(self.pid_file());
            return Ok(false);
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while is_our_live_process(pid, &self.binary) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if is_our_live_process(pid, &self.binary) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_our_live_process(pid, &self.binary) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            anyhow::ensure!(!is_our_live_process(pid, &self.binary), "{} (pid {pid}) survived SIGKILL", self.name);
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

    /// What /proc says of the recorded PID, for an error that claims the process is gone.
    pub fn proc_state(&self) -> String {
        let Some(pid) = self.recorded_pid() else { return format!("no PID in {}", self.pid_file().display()) };
        match proc_view(pid) {
            Ok((argv0, state)) => format!(
                "pid {pid} runs {:?} (expected {}), state {state:?}",
                String::from_utf8_lossy(&argv0),
                self.binary.display()
            ),
            Err(error) => format!("pid {pid}: /proc unreadable ({error})"),
        }
    }
}

/// Collects the exit status of `pid` if this process started it (`lab up` and `lab down` in one
/// process, as `cargo xtask test` does), so it leaves no zombie. A process that is exiting has
/// already lost its cmdline but is not a zombie yet, so this polls for up to 5 s; it never waits
/// longer (a blocking wait on a child still running hung `cargo xtask test` for good once, in a
/// `down` after a failed `up`). For anyone else's child it returns ECHILD at once.
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

/// What /proc shows of `pid`: its argv[0], and its state (field 3 of `stat`, after `(comm)`;
/// empty if unparsable).
fn proc_view(pid: i32) -> std::io::Result<(Vec<u8>, String)> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let cmdline = fs::read(proc_dir.join("cmdline"))?;
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default().to_vec();
    let stat = fs::read_to_string(proc_dir.join("stat"))?;
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or_default();
    Ok((argv0, state.to_owned()))
}

/// True when `pid` runs `binary` and is not a zombie (a dead child not yet reaped by its parent).
pub fn is_our_live_process(pid: i32, binary: &Path) -> bool {
    proc_view(pid).is_ok_and(|(argv0, state)| {
        argv0 == binary.as_os_str().as_encoded_bytes() && !matches!(state.as_str(), "Z" | "X" | "")
    })
}

/// Resident memory of a process in bytes (from /proc), for `lab status`.
pub fn resident_bytes(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 =
        status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}
