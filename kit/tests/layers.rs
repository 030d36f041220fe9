//! kit is built in floors (its crate doc lists them): a module may use modules on lower floors
//! only. This reads every source file of kit (tests aside) and fails on a `crate::` path that
//! points at the same floor or above: an import cycle could only start there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("kit/src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
    found
}

/// The modules a file names through `crate::a` or `crate::{a, b::c}`, outside its tests.
fn uses(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut named = Vec::new();
    for (index, _) in code.match_indices("crate::") {
        let rest = &code[index + "crate::".len()..];
        let list = match rest.strip_prefix('{') {
            Some(group) => group.split('}').next().unwrap_or_default(),
            None => rest,
        };
        for item in list.split(',') {
            let module: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !module.is_empty() {
                named.push(module);
            }
            if !rest.starts_with('{') {
                break;
            }
        }
    }
    named
}

#[test]
fn no_module_of_kit_uses_one_on_its_own_floor_or_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let crate_doc = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let floors: BTreeMap<String, usize> = crate_doc
        .lines()
        .filter_map(|line| line.strip_prefix("//! floor "))
        .filter_map(|line| line.split_once(':'))
        .flat_map(|(floor, modules)| {
            let floor: usize = floor.trim().parse().expect("a floor number");
            modules.split(',').map(move |module| (module.trim().to_owned(), floor))
        })
        .collect();
    let mut upward = Vec::new();
    for file in sources(&src) {
        let relative = file.strip_prefix(&src).expect("under src");
        let module =
            relative.iter().next().and_then(|first| first.to_str()).unwrap_or_default().trim_end_matches(".rs");
        if module == "lib" {
            continue;
        }
        let floor = *floors.get(module).unwrap_or_else(|| panic!("module {module} is on no floor of lib.rs"));
        let text = std::fs::read_to_string(&file).expect("a source file");
        for used in uses(&text).into_iter().filter(|used| *used != module) {
            let used_floor = *floors.get(&used).unwrap_or_else(|| panic!("{used} (used by {module}) is on no floor"));
            if used_floor >= floor {
                upward.push(format!("{} uses {used} (floor {used_floor}) from floor {floor}", relative.display()));
            }
        }
    }
    assert!(upward.is_empty(), "imports that do not go down a floor:\n{}", upward.join("\n"));
}
