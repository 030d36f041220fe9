//! `cargo xtask validate`: read cluster.yaml and say what it describes, or everything wrong with it.

use std::io::Write as _;
use std::process::ExitCode;

use kit::stage::{GlobalArgs, Output, exit};

pub fn run(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let Some(config) = global.load_config(&mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    match global.output {
        Output::Text => write!(stdout, "{} is valid\n{}", global.config.display(), config.summary()),
        Output::Json => writeln!(stdout, "{}", serde_json::to_string(&config)?),
    }?;
    Ok(ExitCode::SUCCESS)
}
