//! The operations (crates/engine/src/ops) name no cloud and no kind. The
//! crates keep the import layers (an import against them does not build);
//! this is the one rule the compiler cannot see, since the engine links the
//! driver crates for its registry.

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

/// The operations (backup, failover, release, status, db) find resources by
/// what their kinds offer (`drivers::capability`), never by a cloud's
/// module or a kind's name: a kind of another cloud that offers the same
/// capability is found the same way.
#[test]
fn operations_name_no_cloud_and_no_kind() {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let kinds: Vec<String> = std::fs::read_to_string(root.join("docs/stack-reference.md"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("## `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    assert!(
        kinds.len() > 20,
        "the kinds were not read from docs/stack-reference.md: {kinds:?}"
    );
    let clouds = [
        "aws",
        "gcp",
        "rds",
        "s3",
        "ec2",
        "eks",
        "gke",
        "sql",
        "cloudwatch",
    ];
    let mut found = Vec::new();
    for f in sources(&root.join("crates/engine/src/ops")) {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            // Identifiers and path segments (`drivers::aws`, `AwsClients`).
            let cloud = words(code)
                .into_iter()
                .find(|w| clouds.contains(&w.as_str()));
            let kind = kinds.iter().find(|k| code.contains(&format!("\"{k}\"")));
            if cloud.is_some() || kind.is_some() {
                found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The words of a line's identifiers, lower case: `drivers::aws::rds` gives
/// drivers, aws, rds; `AwsClients` gives aws, clients; `s3_url` gives s3, url.
fn words(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for token in code.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut word = String::new();
        for c in token.chars() {
            if c.is_ascii_uppercase() && !word.is_empty() {
                out.push(std::mem::take(&mut word).to_ascii_lowercase());
            }
            word.push(c);
        }
        if !word.is_empty() {
            out.push(word.to_ascii_lowercase());
        }
    }
    out
}
