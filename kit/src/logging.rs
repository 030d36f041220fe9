//! Logs go to stderr through `tracing`, so stdout carries only data (`--output json`).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// `-v` shows debug, `-vv` trace; `RUST_LOG` overrides both.
pub fn init(verbosity: u8) {
    // kube-client logs every failed request at ERROR, even the ones a readiness poll expects;
    // the callers report what matters, with context. -v shows them.
    let default = match verbosity {
        0 => "info,kube_client=off",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A second init (tests run many commands in one process) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: a log file, or install-all reading a
        // stage's stderr, gets plain `WARN` / `INFO` at the start of each line.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .try_init();
}
