//! Golden files: text compared with a reviewed copy kept in the repository, so a change to
//! what the tool writes shows up as a diff in review. `UPDATE_GOLDEN=1` rewrites the copies
//! (then read the diff before committing it). Used by the tests of every crate.

use std::path::Path;

/// Panics, naming the file, when `text` differs from the golden copy at `path`.
pub fn assert_matches(path: &Path, text: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {} ({e}); run with UPDATE_GOLDEN=1 and review", path.display()));
    assert!(
        text == expected,
        "{} differs from what was written; review, then rerun with UPDATE_GOLDEN=1",
        path.display()
    );
}
