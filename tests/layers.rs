//! The layers stay where ARCHITECTURE.md puts them: the model imports
//! nothing above it, the stack loader never imports drivers, drivers never
//! import the stack loader, and the command line reaches drivers only
//! through the operations layer.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// (file, line) of every use of `needle` under `dir`.
fn uses(dir: &str, needles: &[&str]) -> Vec<String> {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let dir = root.join(dir);
    let files = if dir.is_file() {
        vec![dir]
    } else {
        sources(&dir)
    };
    assert!(!files.is_empty(), "no sources under {}", root.display());
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if needles.iter().any(|needle| code.contains(needle)) {
                found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_model_imports_nothing_above_it() {
    let found = uses(
        "src/model",
        &[
            "crate::drivers",
            "crate::stack",
            "crate::plan",
            "crate::apply",
            "crate::ops",
            "crate::cli",
        ],
    );
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_stack_loader_never_imports_drivers() {
    let found = uses(
        "src/stack",
        &[
            "crate::drivers",
            "crate::plan",
            "crate::apply",
            "crate::ops",
        ],
    );
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn drivers_never_import_the_stack_loader_or_the_engine() {
    let found = uses(
        "src/drivers",
        &["crate::stack", "crate::apply", "crate::ops", "crate::cli"],
    );
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_command_line_imports_no_driver() {
    let found = uses("src/cli", &["crate::drivers"]);
    // The JSON Schema command names the registry of built-in kinds; nothing
    // else in the command line touches drivers.
    let found: Vec<_> = found
        .into_iter()
        .filter(|l| !l.contains("crate::drivers::Registry::builtin()"))
        .collect();
    assert!(found.is_empty(), "{found:#?}");
}
