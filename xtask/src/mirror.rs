//! `cargo xtask mirror --out DIR`: fill a folder with every pinned upstream file, laid out
//! `<component>/<version>/<file>` with a SHA256SUMS, for sites without internet access
//! (then run anything with `--mirror DIR`). Files go through the artifact store, so each is
//! held to `talos-ha.lock` like any other use.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use kit::artifacts::{ARTIFACTS, ArtifactStore, read_sums, sha256_hex, write_sums};
use kit::stage::{GlobalArgs, exit};

pub fn run(global: &GlobalArgs, out: &Path) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let Some(config) = global.load_config(&mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    // The source is what the user chose: the official URLs, or another mirror to copy from.
    let store = ArtifactStore::new(&config, global.mirror.as_deref(), &kit::fsutil::cache_root());
    let sums_path = out.join("SHA256SUMS");
    let mut sums = read_sums(&sums_path)?;
    for artifact in ARTIFACTS {
        let relative = artifact.relative_path(artifact.component.version(&config.versions));
        let bytes = store.fetch(artifact)?;
        let path = out.join(&relative);
        std::fs::create_dir_all(path.parent().context("artifact path has a parent")?)?;
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        sums.insert(relative.clone(), sha256_hex(&bytes));
        writeln!(stdout, "{relative}")?;
    }
    write_sums(&sums_path, &sums)?;
    tracing::info!(
        "mirror ready: {} files in {}; use it with --mirror {}",
        ARTIFACTS.len(),
        out.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
