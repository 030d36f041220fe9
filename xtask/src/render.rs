//! `cargo xtask render --out DIR`: the seed's whole folder tree from `cluster.yaml`: every
//! stage's folder (each stage binary's own `render`), the README with the IP plan, the
//! diagram and the Quick Access table, and HA-VERIFICATION.md. No cluster is needed.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use kit::fsutil::write_folder;
use kit::stage::{GlobalArgs, exit};

pub fn run(global: &GlobalArgs, out: &Path) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let Some(config) = global.load_config(&mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    let root = xtask::workspace_root();
    let stages = crate::stages::present(&root);
    let bin_dir = crate::stages::build(&root, &stages)?;
    for stage in &stages {
        tracing::info!("rendering {stage}");
        let output = crate::stages::command(&bin_dir, stage, "render", global)
            .arg("--out")
            .arg(out)
            .output()
            .with_context(|| format!("running {stage} render"))?;
        stdout.write_all(&output.stdout)?;
        if !output.status.success() {
            std::io::stderr().write_all(&output.stderr)?;
            anyhow::bail!("{stage} render failed (its output is above)");
        }
    }
    let documents = vec![
        ("README.md".to_owned(), xtask::docs::readme(&config).into_bytes()),
        ("HA-VERIFICATION.md".to_owned(), xtask::docs::ha_verification(&config).into_bytes()),
    ];
    for path in write_folder(out, "", documents)? {
        writeln!(stdout, "{}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
