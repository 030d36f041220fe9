//! External tools (`talosctl`) go through here and nowhere else: found with `which` (or
//! where `cargo xtask lab build` put them), version-checked against the config, run with
//! `xshell`-built commands under a timeout, output captured, and every known secret redacted
//! before a byte of it reaches a log or an error message.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::config::Version;

/// What replaces a secret in anything shown to a person.
pub const REDACTED: &str = "<redacted>";

/// A run stopped at its timeout: the command got no answer in time (a machine that is off,
/// a port nothing answers on), which callers tell apart from a command that answered "no".
#[derive(Debug, thiserror::Error)]
#[error("{command} did not finish within {timeout:?} and was stopped")]
pub struct TimedOut {
    pub command: String,
    pub timeout: Duration,
}

/// Where `cargo xtask lab build` puts a talosctl it built from Go modules.
pub fn talosctl_cache_dir(version: Version) -> PathBuf {
    crate::fsutil::cache_root().join("lab").join(format!("talos-{version}"))
}

/// The talosctl client config stage 01 writes into the state folder.
pub fn talosconfig_path(config: &crate::config::ClusterConfig) -> PathBuf {
    config.state_dir().join("talosconfig")
}

/// `talosctl` arguments for one call to one node, which is also the endpoint dialled (never
/// the VIP: it exists only while etcd is healthy).
pub fn talos_node_args(talosconfig: &Path, node: &crate::config::Node, args: &[&str]) -> Vec<String> {
    let ip = node.ip.to_string();
    let mut all = vec!["--talosconfig".to_owned(), talosconfig.display().to_string()];
    all.extend(["--nodes".to_owned(), ip.clone(), "--endpoints".to_owned(), ip]);
    all.extend(args.iter().map(|arg| (*arg).to_owned()));
    all
}

/// A located, version-checked command-line tool.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: &'static str,
    pub path: PathBuf,
    pub version: Version,
    /// Strings never shown as they are (tokens, keys): replaced by [`REDACTED`].
    secrets: Vec<String>,
}

/// What a finished command printed (already redacted) and whether it succeeded.
#[derive(Debug, Clone)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The output as a `Result`: an error carrying stderr (or stdout) when the command failed.
    pub fn ok(self, what: impl fmt::Display) -> anyhow::Result<String> {
        if self.success {
            Ok(self.stdout)
        } else {
            let said = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
            anyhow::bail!("{what} failed: {}", said.trim())
        }
    }
}

impl Tool {
    /// Finds `talosctl` no older than `wanted` (a client older than the nodes cannot manage
    /// them). Looks at `$TALOS_HA_TALOSCTL`, then `PATH`, then the lab's build cache; the
    /// first candidate whose version fits wins, and the error lists every candidate seen.
    pub async fn talosctl(wanted: Version) -> anyhow::Result<Tool> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(explicit) = std::env::var_os("TALOS_HA_TALOSCTL") {
            candidates.push(PathBuf::from(explicit));
        }
        if let Ok(found) = which::which("talosctl") {
            candidates.push(found);
        }
        // Any talosctl the lab built: the pinned one first, then others (a newer client
        // manages older nodes).
        candidates.push(talosctl_cache_dir(wanted).join("talosctl"));
        let lab_cache = talosctl_cache_dir(wanted).parent().map(Path::to_owned).unwrap_or_default();
        let mut others: Vec<PathBuf> = std::fs::read_dir(lab_cache)
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|dir| dir.file_name().is_some_and(|name| name.to_string_lossy().starts_with("talos-")))
            .map(|dir| dir.join("talosctl"))
            .collect();
        others.sort();
        candidates.extend(others.into_iter().rev());
        let mut seen = Vec::new();
        for path in candidates.into_iter().filter(|path| path.is_file()) {
            match talosctl_version(&path).await {
                Ok(version) if version >= wanted => {
                    tracing::debug!("using talosctl {version} at {}", path.display());
                    return Ok(Tool { name: "talosctl", path, version, secrets: Vec::new() });
                }
                Ok(version) => seen.push(format!("{} is {version}", path.display())),
                Err(error) => seen.push(format!("{} did not report a version ({error:#})", path.display())),
            }
        }
        let found = if seen.is_empty() { "none was found".to_owned() } else { seen.join("; ") };
        anyhow::bail!(
            "talosctl {wanted} or newer is needed (versions.talos is {wanted}; a client older than the nodes cannot \
             manage them), but {found}. Install it from https://github.com/siderolabs/talos/releases/tag/{wanted} \
             (or `curl -sL https://talos.dev/install | sh`), build it with `cargo xtask lab build` (into {}), or \
             point TALOS_HA_TALOSCTL at one",
            talosctl_cache_dir(wanted).display()
        )
    }

    /// A tool at a known path, trusted to be `version` (test doubles and callers that checked).
    pub fn at(name: &'static str, path: PathBuf, version: Version) -> Tool {
        Tool { name, path, version, secrets: Vec::new() }
    }

    /// From now on, these strings are replaced by [`REDACTED`] in everything this tool returns.
    /// Strings under 8 characters are not: every secret registered (Talos's bootstrap token,
    /// `abcdef.0123456789abcdef`, its keys and certificates) is far longer, and replacing a
    /// short string would blank ordinary words of the output that happen to match it.
    pub fn redact_secrets(&mut self, secrets: impl IntoIterator<Item = String>) {
        self.secrets.extend(secrets.into_iter().filter(|secret| secret.len() >= 8));
        // Longest first, so a secret that contains another is replaced whole.
        self.secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        self.secrets.dedup();
    }

    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    /// Runs the tool with `args` and waits at most `timeout`; the process is killed on timeout
    /// (the error is then a [`TimedOut`]).
    pub async fn run<I, S>(&self, args: I, timeout: Duration) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with_progress(args, timeout, |_| {}).await
    }

    /// Like [`Tool::run`], and hands every stderr line (redacted) to `progress` as it arrives:
    /// long waits such as `talosctl health` report each check while they run.
    pub async fn run_with_progress<I, S>(
        &self,
        args: I,
        timeout: Duration,
        mut progress: impl FnMut(&str),
    ) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let shell = xshell::Shell::new().context("starting a shell for external tools")?;
        let args: Vec<_> = args.into_iter().map(|arg| arg.as_ref().to_owned()).collect();
        let path = &self.path;
        let shown = self.redact(&format!("{} {}", self.name, display_args(&args)));
        let command: std::process::Command = xshell::cmd!(shell, "{path} {args...}").into();
        tracing::debug!("running {shown}");
        let mut child = tokio::process::Command::from(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let stdout = child.stdout.take().context("capturing stdout")?;
        let stderr = child.stderr.take().context("capturing stderr")?;
        let collect = async {
            let read_stdout = async {
                let mut text = String::new();
                let mut lines = BufReader::new(stdout).lines();
                while let Some(line) = lines.next_line().await? {
                    text.push_str(&line);
                    text.push('\n');
                }
                anyhow::Ok(text)
            };
            let read_stderr = async {
                let mut text = String::new();
                let mut lines = BufReader::new(stderr).lines();
                while let Some(line) = lines.next_line().await? {
                    let line = self.redact(&line);
                    progress(&line);
                    text.push_str(&line);
                    text.push('\n');
                }
                anyhow::Ok(text)
            };
            let (stdout, stderr) = tokio::try_join!(read_stdout, read_stderr)?;
            let status = child.wait().await?;
            anyhow::Ok(Output { success: status.success(), stdout: self.redact(&stdout), stderr })
        };
        match tokio::time::timeout(timeout, collect).await {
            Ok(output) => output.with_context(|| format!("running {shown}")),
            Err(_) => Err(TimedOut { command: shown, timeout }.into()),
        }
    }
}

fn display_args(args: &[std::ffi::OsString]) -> String {
    args.iter().map(|arg| arg.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// `text` with every secret replaced by [`REDACTED`]; `secrets` longest first.
pub fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), REDACTED))
}

/// The version `talosctl version --client --short` reports (`Client:\nTalos v1.12.1`).
async fn talosctl_version(path: &Path) -> anyhow::Result<Version> {
    let probe = Tool::at("talosctl", path.to_owned(), Version { major: 0, minor: 0, patch: 0 });
    let printed = probe.run(["version", "--client", "--short"], Duration::from_secs(30)).await?.ok("version")?;
    parse_talosctl_version(&printed).with_context(|| format!("unexpected `talosctl version` output: {printed:?}"))
}

fn parse_talosctl_version(printed: &str) -> Option<Version> {
    printed.split_whitespace().skip_while(|word| *word != "Talos").nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_client_version() {
        assert_eq!(parse_talosctl_version("Client:\nTalos v1.12.1\n"), Some(Version { major: 1, minor: 12, patch: 1 }));
        assert_eq!(parse_talosctl_version("Client:\nTalos v1.12.0-alpha.1\n"), None);
        assert_eq!(parse_talosctl_version("something else"), None);
    }

    #[test]
    fn redaction_replaces_whole_secrets_longest_first() {
        let mut tool = Tool::at("t", PathBuf::from("/bin/true"), Version { major: 0, minor: 0, patch: 0 });
        tool.redact_secrets(["abcdef.0123456789".to_owned(), "abcdef.0123456789abcdef".to_owned(), "short".to_owned()]);
        assert_eq!(tool.redact("token abcdef.0123456789abcdef, short"), "token <redacted>, short");
    }

    #[tokio::test]
    async fn a_hung_command_is_stopped_at_its_timeout() -> anyhow::Result<()> {
        let sleep = which::which("sleep")?;
        let tool = Tool::at("sleep", sleep, Version { major: 0, minor: 0, patch: 0 });
        let error = tool.run(["30"], Duration::from_millis(300)).await.expect_err("must time out");
        assert!(error.to_string().contains("did not finish within 300ms"), "{error}");
        assert!(error.is::<TimedOut>(), "callers can tell a timeout by its type");
        Ok(())
    }

    #[tokio::test]
    async fn output_is_captured_and_redacted() -> anyhow::Result<()> {
        let sh = which::which("sh")?;
        let mut tool = Tool::at("sh", sh, Version { major: 0, minor: 0, patch: 0 });
        tool.redact_secrets(["s3cr3t-token".to_owned()]);
        let output = tool
            .run(["-c", "echo out s3cr3t-token; echo err s3cr3t-token >&2; exit 3"], Duration::from_secs(10))
            .await?;
        assert!(!output.success);
        assert_eq!(output.stdout, "out <redacted>\n");
        assert_eq!(output.stderr, "err <redacted>\n");
        let error = output.ok("sh").expect_err("exit 3 is a failure");
        assert_eq!(error.to_string(), "sh failed: err <redacted>");
        Ok(())
    }
}
