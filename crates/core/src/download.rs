//! Files a stack names by URL, pinned by their SHA-256
//! (`https://host/path/file.yaml#sha256=<64 hex digits>`): downloaded once
//! into the user's cache, checked against the pin before anything uses
//! them, and read from the cache from then on (so a plan of an unchanged
//! stack makes no download, and works offline).
//!
//! Plain `http://` is accepted only for this machine (a local mirror):
//! elsewhere the pin would still protect the content, but not what the
//! download reveals about the deployment.

use std::io::{Read, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// Downloads larger than this are refused (the largest add-on bundles are
/// a few MB).
const LIMIT: u64 = 64 << 20;

/// A URL with its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// Without the `#sha256=` fragment.
    pub url: String,
    /// Lower-case hex.
    pub sha256: String,
}

/// Whether `entry` names a download rather than a path.
pub fn is_url(entry: &str) -> bool {
    entry.starts_with("https://") || entry.starts_with("http://")
}

/// Parses `URL#sha256=HEX`, saying what is wrong and how to fix it.
pub fn parse(entry: &str) -> Result<Pinned, String> {
    let (url, fragment) = entry.split_once('#').unwrap_or((entry, ""));
    let Some(sha) = fragment.strip_prefix("sha256=") else {
        return Err(format!(
            "`{url}` is not pinned: end it with `#sha256=` and the file's SHA-256 (`sha256sum FILE` of the file you reviewed), so that a changed download is refused"
        ));
    };
    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "`{sha}` is not a SHA-256: 64 hexadecimal digits, as `sha256sum` prints them"
        ));
    }
    check_url(url)?;
    Ok(Pinned {
        url: url.to_string(),
        sha256: sha.to_ascii_lowercase(),
    })
}

/// Refuses what the tool will not download: not a URL, not https (plain
/// http only from this machine).
fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" => {
            let local = match parsed.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if !local {
                return Err(format!(
                    "`{url}` is plain http: use https (plain http is accepted only from this machine, for a local mirror)"
                ));
            }
        }
        other => {
            return Err(format!(
                "`{url}`: the scheme `{other}` is not supported; use https"
            ))
        }
    }
    if parsed.fragment().is_some() {
        return Err(format!(
            "`{url}` already has a `#` part: give the URL alone"
        ));
    }
    Ok(())
}

/// What `ralph-deploy addons pin URL` found: the entry to put in the stack
/// (`URL#sha256=...`), the size, and where the downloaded file is kept for
/// review (the cache a later plan reads it from).
pub struct PinnedFile {
    pub entry: String,
    pub bytes: usize,
    pub path: PathBuf,
}

/// Downloads `url` once, as `terraform providers lock` records hashes: the
/// pin is of exactly the bytes now in the cache, which the user reviews.
pub fn pin(url: &str) -> Result<PinnedFile, String> {
    check_url(url)?;
    let bytes = blocking(|| download(url))?;
    let sha = hex_sha256(&bytes);
    let path = store(&bytes, &sha)?;
    Ok(PinnedFile {
        entry: format!("{url}#sha256={sha}"),
        bytes: bytes.len(),
        path,
    })
}

/// Where downloads are kept: `$RALPH_DEPLOY_CACHE`, else
/// `$XDG_CACHE_HOME/ralph-deploy`, else `~/.cache/ralph-deploy`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RALPH_DEPLOY_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("ralph-deploy")
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The pinned file's path in the cache, downloading it first when it is
/// not there (or no longer matches its pin).
pub fn fetch(p: &Pinned) -> Result<PathBuf, String> {
    let dir = cache_dir().join("downloads");
    let path = dir.join(&p.sha256);
    if let Ok(bytes) = std::fs::read(&path) {
        if hex_sha256(&bytes) == p.sha256 {
            return Ok(path);
        }
    }
    let bytes = blocking(|| download(&p.url))?;
    let got = hex_sha256(&bytes);
    if got != p.sha256 {
        return Err(format!(
            "{} has SHA-256 {got}, but the stack pins {}: the file changed at its source, or the pin is wrong. Nothing was applied; review the file and pin what you reviewed",
            p.url, p.sha256
        ));
    }
    store(&bytes, &p.sha256)
}

/// Puts downloaded bytes into the cache under their SHA-256, complete or
/// not at all (written aside, then renamed into place).
fn store(bytes: &[u8], sha256: &str) -> Result<PathBuf, String> {
    let dir = cache_dir().join("downloads");
    let path = dir.join(sha256);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .map_err(|e| format!("writing into {}: {e}", dir.display()))?;
    tmp.write_all(bytes)
        .map_err(|e| format!("writing into {}: {e}", dir.display()))?;
    tmp.persist(&path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Runs a blocking download without stalling the async runtime's other work.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn download(url: &str) -> Result<Vec<u8>, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(120))
        .user_agent(concat!("ralph-deploy/", env!("CARGO_PKG_VERSION")))
        .build();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => {
            format!(
                "downloading {url}: the server answered {code} {}",
                r.status_text()
            )
        }
        ureq::Error::Transport(t) => format!(
            "downloading {url}: {}{}",
            t.kind(),
            t.message().map(|m| format!(": {m}")).unwrap_or_default()
        ),
    })?;
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("downloading {url}: {e}"))?;
    if bytes.len() as u64 > LIMIT {
        return Err(format!("{url} is larger than {} MiB", LIMIT >> 20));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "fa1f90396ba5d646ce3019c95c36c6457c80aa6bd8a97c3db0d15ed8e7c20a9b";

    #[test]
    fn pins_are_required_and_checked() {
        let p = parse(&format!("https://example.org/a/deploy.yaml#sha256={SHA}")).unwrap();
        assert_eq!(p.url, "https://example.org/a/deploy.yaml");
        assert_eq!(p.sha256, SHA);
        assert!(parse("https://example.org/a.yaml")
            .unwrap_err()
            .contains("not pinned"));
        assert!(parse("https://example.org/a.yaml#sha256=abc")
            .unwrap_err()
            .contains("64 hexadecimal"));
        assert!(parse(&format!("http://example.org/a.yaml#sha256={SHA}"))
            .unwrap_err()
            .contains("plain http"));
        for local in [
            "http://127.0.0.1:8080/a.yaml",
            "http://localhost/a.yaml",
            "http://[::1]/a.yaml",
        ] {
            assert!(parse(&format!("{local}#sha256={SHA}")).is_ok(), "{local}");
        }
        assert!(parse(&format!("ftp://example.org/a.yaml#sha256={SHA}")).is_err());
    }
}
