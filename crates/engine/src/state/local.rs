//! The embedded backend: one directory per stack and environment.
//!
//! ```text
//! <root>/<stack>/<environment>/state.json      current snapshot
//!                              history/<serial>.json   previous snapshots (the newest few)
//!                              lock.json       present while a run holds the lock
//!                              journal.jsonl   intents: opened before each cloud call, closed
//!                                              by the result written after it
//! ```
//! Writes go to a temporary file in the same directory, are fsynced, renamed
//! over the old file, and the directory is fsynced, so a crash at any moment
//! leaves either the old or the new snapshot. The journal is appended one
//! whole line at a time and fsynced; `read` replays the results in it over
//! `state.json`. With a key set, journal lines are sealed like the state.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{LockHeld, LockInfo, Snapshot, State, StateError};

/// How many previous snapshots are kept.
const HISTORY: usize = 20;

pub struct LocalBackend {
    dir: PathBuf,
    /// Seals state files when a key is set (see `codec`).
    sealer: std::sync::Arc<super::codec::Sealer>,
}

impl LocalBackend {
    pub fn new(root: &Path, stack: &str, environment: &str) -> LocalBackend {
        LocalBackend {
            dir: root.join(stack).join(environment),
            sealer: std::sync::Arc::new(super::codec::Sealer::none()),
        }
    }

    /// The same backend, sealing its state files with `sealer`.
    pub fn with_sealer(mut self, sealer: std::sync::Arc<super::codec::Sealer>) -> LocalBackend {
        self.sealer = sealer;
        self
    }

    /// The serial of a stored body (0 when it cannot be read).
    async fn serial_of(&self, text: &[u8]) -> u64 {
        #[derive(serde::Deserialize)]
        struct Serial {
            serial: u64,
        }
        match self.sealer.open(text).await {
            Ok(plain) => serde_json::from_slice::<Serial>(&plain)
                .map(|s| s.serial)
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock.json")
    }

    fn history_dir(&self) -> PathBuf {
        self.dir.join("history")
    }

    fn io(&self, path: &Path, source: std::io::Error) -> StateError {
        StateError::Io {
            path: path.display().to_string(),
            error: source,
        }
    }

    /// Keeps the state about to be replaced under `history/`: a second
    /// name for the same file (nothing copied), as the new state is
    /// renamed over the old name, not written into it.
    async fn keep_history(&self, previous: &Path, serial: u64) -> Result<(), StateError> {
        let hist = self.history_dir();
        fs::create_dir_all(&hist).map_err(|e| self.io(&hist, e))?;
        let target = hist.join(format!("{serial:010}.json"));
        let _ = fs::remove_file(&target);
        if fs::hard_link(previous, &target).is_err() {
            let text = fs::read(previous).map_err(|e| self.io(previous, e))?;
            atomic_write(&target, &text).map_err(|e| self.io(&target, e))?;
        }
        fs::File::open(&hist)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(&hist, e))?;
        let mut old: Vec<PathBuf> = fs::read_dir(&hist)
            .map_err(|e| self.io(&hist, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        old.sort();
        while old.len() > HISTORY {
            let _ = fs::remove_file(old.remove(0));
        }
        Ok(())
    }
}

/// How many before-command snapshots are kept.
const SNAPSHOTS: usize = 30;

impl LocalBackend {
    fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// Keeps a copy of the current state (with its outputs) before
    /// `operation` changes it. The intermediate versions an apply writes
    /// rotate out of `history/`; these stay, one per command (the newest
    /// [`SNAPSHOTS`]). Returns the snapshot's name, or `None` when there is
    /// no state yet.
    async fn keep_snapshot(&self, operation: &str) -> Result<Option<String>, StateError> {
        let path = self.state_path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&path, e)),
        };
        let serial = self.serial_of(&text).await;
        let dir = self.snapshot_dir();
        let op: String = operation
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let name = format!(
            "{}-serial{serial}-before-{op}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        );
        let target = dir.join(&name);
        atomic_write(&target, &text).map_err(|e| self.io(&target, e))?;
        let mut all = self.snapshot_files()?;
        while all.len() > SNAPSHOTS {
            let _ = fs::remove_file(dir.join(all.remove(0)));
        }
        Ok(Some(name))
    }

    fn snapshot_files(&self) -> Result<Vec<String>, StateError> {
        let dir = self.snapshot_dir();
        let mut names: Vec<String> = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".json"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(self.io(&dir, e)),
        };
        names.sort();
        Ok(names)
    }

    /// The kept snapshots, oldest first.
    fn list_snapshots(&self) -> Result<Vec<Snapshot>, StateError> {
        Ok(self
            .snapshot_files()?
            .into_iter()
            .map(|name| {
                let stem = name.trim_end_matches(".json");
                let (taken_at, rest) = stem.split_once("-serial").unwrap_or((stem, ""));
                let (serial, operation) = rest.split_once("-before-").unwrap_or((rest, ""));
                Snapshot {
                    taken_at: taken_at.to_string(),
                    serial: serial.parse().unwrap_or(0),
                    operation: operation.to_string(),
                    name,
                }
            })
            .collect())
    }

    /// A snapshot's state, by name (or by serial, the newest with it).
    async fn load_snapshot(&self, which: &str) -> Result<State, StateError> {
        let list = self.list_snapshots()?;
        let found = list
            .iter()
            .rev()
            .find(|s| {
                s.name == which
                    || s.name.trim_end_matches(".json") == which
                    || s.serial.to_string() == which
            })
            .ok_or_else(|| StateError::Io {
                path: self.snapshot_dir().display().to_string(),
                error: std::io::Error::other(format!(
                    "no snapshot named or with serial `{which}`; `ralph-deploy state snapshots` lists them"
                )),
            })?;
        let path = self.snapshot_dir().join(&found.name);
        let text = fs::read(&path).map_err(|e| self.io(&path, e))?;
        let text = self
            .sealer
            .open(&text)
            .await
            .map_err(|m| self.io(&path, std::io::Error::other(m)))?;
        serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
            history: self.history_dir().display().to_string(),
        })
    }
}

/// Temp file in the same directory, fsync, rename, fsync the directory.
/// Where local state lives when no --state-dir is given: `.ralph-deploy/state`
/// at the root of the stack file's repository, else beside the stack file.
/// So the state follows the stack, not the directory a command runs in.
/// Shown relative to the current directory when it is below it.
pub fn default_dir(stack_file: &Path) -> PathBuf {
    const DIR: &str = ".ralph-deploy/state";
    let Ok(abs) = fs::canonicalize(stack_file) else {
        // Not there: the load says so; the state is never reached.
        return PathBuf::from(DIR);
    };
    let base = super::repository_root(&abs)
        .or_else(|| abs.parent())
        .unwrap_or(Path::new("/"));
    let dir = base.join(DIR);
    match std::env::current_dir()
        .ok()
        .and_then(|cwd| fs::canonicalize(cwd).ok())
        .and_then(|cwd| dir.strip_prefix(cwd).ok().map(Path::to_path_buf))
    {
        Some(rel) if !rel.as_os_str().is_empty() => rel,
        _ => dir,
    }
}

pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A bare file name has "" as its parent: that is the current directory.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[async_trait::async_trait]
impl super::StateStore for LocalBackend {
    async fn read(&self) -> Result<Option<State>, StateError> {
        let path = self.state_path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&path, e)),
        };
        let text = self
            .sealer
            .open(&text)
            .await
            .map_err(|m| self.io(&path, std::io::Error::other(m)))?;
        let mut state = super::parse_state(
            &text,
            &path.display().to_string(),
            &self.history_dir().display().to_string(),
        )?;
        let (_, results) = self.read_journal().await?;
        super::replay(&mut state, &results);
        Ok(Some(state))
    }

    async fn write(&self, state: &State) -> Result<(), StateError> {
        let path = self.state_path();
        fs::create_dir_all(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        if let Ok(previous) = fs::read(&path) {
            let serial = self.serial_of(&previous).await;
            self.keep_history(&path, serial).await?;
        }
        let bytes = self.sealer.seal_state(state).await;
        let bytes = bytes.map_err(|m| self.io(&path, std::io::Error::other(m)))?;
        // The fsyncs off the runtime's threads: the walks go on meanwhile.
        let target = path.clone();
        tokio::task::spawn_blocking(move || atomic_write(&target, &bytes))
            .await
            .map_err(|e| self.io(&path, std::io::Error::other(e)))?
            .map_err(|e| self.io(&path, e))
    }

    fn describe(&self) -> String {
        self.state_path().display().to_string()
    }

    async fn snapshot_before(&self, operation: &str) -> Result<Option<String>, StateError> {
        self.keep_snapshot(operation).await
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>, StateError> {
        self.list_snapshots()
    }

    async fn put_snapshot(
        &self,
        name: &str,
        _operation: &str,
        state: &State,
    ) -> Result<(), StateError> {
        let target = self.snapshot_dir().join(format!("{name}.json"));
        let bytes = self.sealer.seal_state(state).await;
        let bytes = bytes.map_err(|m| self.io(&target, std::io::Error::other(m)))?;
        atomic_write(&target, &bytes).map_err(|e| self.io(&target, e))
    }

    async fn read_snapshot(&self, which: &str) -> Result<State, StateError> {
        self.load_snapshot(which).await
    }
}

#[async_trait::async_trait]
impl super::Locker for LocalBackend {
    async fn lock(&self, info: &LockInfo) -> Result<Option<LockInfo>, StateError> {
        let path = self.lock_path();
        fs::create_dir_all(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        let mut taken_over = None;
        for _ in 0..3 {
            // Write the whole lock to a temporary file, then hard-link it into
            // place: link() refuses an existing target, so of two racing runs
            // exactly one wins, and nobody ever sees a half-written lock.
            let mut tmp =
                tempfile::NamedTempFile::new_in(&self.dir).map_err(|e| self.io(&self.dir, e))?;
            let bytes = serde_json::to_vec_pretty(info)
                .map_err(|e| self.io(&path, std::io::Error::other(e)))?;
            tmp.write_all(&bytes)
                .and_then(|_| tmp.as_file().sync_all())
                .map_err(|e| self.io(&path, e))?;
            match fs::hard_link(tmp.path(), &path) {
                Ok(()) => {
                    fs::File::open(&self.dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| self.io(&self.dir, e))?;
                    return Ok(taken_over);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = self.holder().await?;
                    match holder {
                        // A holder on this host whose process is gone: the lock
                        // is stale. Break it under a guard, so that two runs
                        // breaking it at once cannot remove each other's lock.
                        Some(h) if h.holder_is_dead() => {
                            let guard_path = self.dir.join("lock.guard");
                            let guard = fs::OpenOptions::new()
                                .create(true)
                                .truncate(false)
                                .write(true)
                                .open(&guard_path)
                                .map_err(|e| self.io(&guard_path, e))?;
                            use std::os::fd::AsRawFd;
                            // SAFETY: flock on a descriptor this function owns.
                            if unsafe { libc::flock(guard.as_raw_fd(), libc::LOCK_EX) } != 0 {
                                // Without the guard two runs could break each
                                // other's fresh lock: refuse instead.
                                return Err(self.io(&guard_path, std::io::Error::last_os_error()));
                            }
                            let still = self.holder().await;
                            let removed = match still {
                                Ok(Some(again)) if again.id == h.id => {
                                    fs::remove_file(&path).map_err(|e| self.io(&path, e))
                                }
                                Ok(_) => Ok(()),
                                Err(e) => Err(e),
                            };
                            // SAFETY: as above; closing the file releases it anyway.
                            unsafe { libc::flock(guard.as_raw_fd(), libc::LOCK_UN) };
                            removed?;
                            taken_over = Some(h);
                        }
                        holder => {
                            let holder = holder.unwrap_or_else(|| LockInfo {
                                id: "unknown".into(),
                                operation: "unknown (lock file unreadable)".into(),
                                pid: 0,
                                host: "unknown".into(),
                                user: "unknown".into(),
                                since: chrono::Utc::now(),
                                version: String::new(),
                            });
                            return Err(StateError::Locked(Box::new(LockHeld {
                                target: self.describe_dir(),
                                holder,
                            })));
                        }
                    }
                }
                Err(e) => return Err(self.io(&path, e)),
            }
        }
        Err(StateError::Io {
            path: path.display().to_string(),
            error: std::io::Error::other("the lock kept changing hands; try again"),
        })
    }

    async fn unlock(&self, info: &LockInfo) -> Result<(), StateError> {
        let path = self.lock_path();
        match self.holder().await? {
            Some(h) if h.id == info.id => fs::remove_file(&path).map_err(|e| self.io(&path, e)),
            Some(h) => Err(StateError::WrongLock {
                target: self.describe_dir(),
                holder: h.id,
                wanted: info.id.clone(),
            }),
            None => Ok(()),
        }
    }

    async fn holder(&self) -> Result<Option<LockInfo>, StateError> {
        let path = self.lock_path();
        match fs::read(&path) {
            Ok(text) => Ok(serde_json::from_slice(&text).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(&path, e)),
        }
    }

    async fn force_unlock(&self, id: &str) -> Result<LockInfo, StateError> {
        let path = self.lock_path();
        match self.holder().await? {
            Some(h) if h.id == id => {
                fs::remove_file(&path).map_err(|e| self.io(&path, e))?;
                Ok(h)
            }
            Some(h) => Err(StateError::WrongLock {
                target: self.describe_dir(),
                holder: h.id,
                wanted: id.to_string(),
            }),
            None if path.exists() => {
                fs::remove_file(&path).map_err(|e| self.io(&path, e))?;
                Err(StateError::NotLocked(self.describe_dir()))
            }
            None => Err(StateError::NotLocked(self.describe_dir())),
        }
    }
}

/// One line of journal.jsonl.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum JournalRecord {
    Open(Box<super::Intent>),
    Close {
        id: String,
    },
    /// A resource's result; closes the intent it names.
    Result(Box<super::Entry>),
    /// Another record, sealed (base64 of the sealed bytes).
    Sealed {
        body: String,
    },
}

/// Whether the file's last byte is not a newline (a torn record).
fn ends_torn(f: &mut fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// What a journal holds: the intents still open, the results in the order
/// written, and the (1-based) numbers of lines that are not records (torn
/// by a crash, or not UTF-8).
#[derive(Default)]
struct Parsed {
    open: Vec<super::Intent>,
    results: Vec<super::Entry>,
    unreadable: Vec<usize>,
}

impl Parsed {
    fn take(&mut self, record: JournalRecord, n: usize) {
        match record {
            JournalRecord::Open(i) => self.open.push(*i),
            JournalRecord::Close { id } => self.open.retain(|i| i.id != id),
            JournalRecord::Result(e) => {
                if let Some(id) = &e.closes {
                    self.open.retain(|i| &i.id != id);
                }
                self.results.push(*e);
            }
            // Sealed inside sealed is never written.
            JournalRecord::Sealed { .. } => self.unreadable.push(n),
        }
    }
}

/// Appends one line and fsyncs it: a crash leaves the record or nothing (a
/// torn last line is ignored on reading).
fn append_line(path: &Path, mut line: Vec<u8>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    // A crash mid-write leaves a torn last line with no newline: end it
    // first, so this record starts a line of its own and stays readable.
    if ends_torn(&mut f)? {
        line.insert(0, b'\n');
    }
    // One write of the whole line (O_APPEND: concurrent appends never
    // interleave), then fsync.
    f.write_all(&line)?;
    f.sync_data()
}

impl LocalBackend {
    fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.jsonl")
    }

    /// A record as the line stored: sealed when a key is set.
    async fn encode(&self, record: &JournalRecord) -> Result<Vec<u8>, StateError> {
        let path = self.journal_path();
        let mut line =
            serde_json::to_vec(record).map_err(|e| self.io(&path, std::io::Error::other(e)))?;
        if self.sealer.enabled() {
            use base64::Engine;
            let sealed = self
                .sealer
                .seal(&line)
                .await
                .map_err(|m| self.io(&path, std::io::Error::other(m)))?;
            let body = base64::engine::general_purpose::STANDARD.encode(sealed);
            line = serde_json::to_vec(&JournalRecord::Sealed { body })
                .map_err(|e| self.io(&path, std::io::Error::other(e)))?;
        }
        line.push(b'\n');
        Ok(line)
    }

    /// Appends a record off the runtime's threads (the fsync blocks).
    async fn append(&self, record: &JournalRecord) -> Result<(), StateError> {
        let line = self.encode(record).await?;
        let path = self.journal_path();
        let target = path.clone();
        tokio::task::spawn_blocking(move || append_line(&target, line))
            .await
            .map_err(|e| self.io(&path, std::io::Error::other(e)))?
            .map_err(|e| self.io(&path, e))
    }

    /// Rewrites the journal with `records` (nothing: removes it).
    async fn rewrite(&self, records: Vec<JournalRecord>) -> Result<(), StateError> {
        let path = self.journal_path();
        if records.is_empty() {
            return match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.io(&path, e)),
            };
        }
        let mut text = Vec::new();
        for r in &records {
            text.extend(self.encode(r).await?);
        }
        atomic_write(&path, &text).map_err(|e| self.io(&path, e))
    }

    /// The journal, parsed (sealed lines opened).
    async fn parse_journal(&self, bytes: &[u8]) -> Result<Parsed, StateError> {
        let mut parsed = Parsed::default();
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<JournalRecord>(line) {
                Ok(JournalRecord::Sealed { body }) => {
                    use base64::Engine;
                    let path = self.journal_path();
                    let sealed = base64::engine::general_purpose::STANDARD
                        .decode(body)
                        .map_err(|e| self.io(&path, std::io::Error::other(e)))?;
                    let plain = self
                        .sealer
                        .open(&sealed)
                        .await
                        .map_err(|m| self.io(&path, std::io::Error::other(m)))?;
                    match serde_json::from_slice::<JournalRecord>(&plain) {
                        Ok(r) => parsed.take(r, n + 1),
                        Err(_) => parsed.unreadable.push(n + 1),
                    }
                }
                Ok(r) => parsed.take(r, n + 1),
                Err(_) => parsed.unreadable.push(n + 1),
            }
        }
        Ok(parsed)
    }

    /// The open intents and the results in the journal.
    async fn read_journal(&self) -> Result<(Vec<super::Intent>, Vec<super::Entry>), StateError> {
        let path = self.journal_path();
        let bytes = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()))
            }
            Err(e) => return Err(self.io(&path, e)),
        };
        let parsed = self.parse_journal(&bytes).await?;
        if !parsed.unreadable.is_empty() {
            // A line torn by a crash never held a complete record: its
            // cloud call had not started (intents are fsynced first), or
            // its result had not been written (its intent is still open).
            tracing::warn!(
                "{}: skipped {} unreadable line(s) ({}); they are what a crash mid-write leaves and held no complete record",
                path.display(),
                parsed.unreadable.len(),
                parsed
                    .unreadable
                    .iter()
                    .map(|n| format!("line {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok((parsed.open, parsed.results))
    }

    fn describe_dir(&self) -> String {
        self.dir.display().to_string()
    }
}

#[async_trait::async_trait]
impl super::Journal for LocalBackend {
    async fn open_intent(&self, intent: &super::Intent) -> Result<(), StateError> {
        self.append(&JournalRecord::Open(Box::new(intent.clone())))
            .await
    }

    async fn close_intent(&self, id: &str) -> Result<(), StateError> {
        self.append(&JournalRecord::Close { id: id.to_string() })
            .await
    }

    async fn open_intents(&self) -> Result<Vec<super::Intent>, StateError> {
        Ok(self.read_journal().await?.0)
    }

    async fn compact(&self) -> Result<(), StateError> {
        let (open, results) = self.read_journal().await?;
        self.rewrite(journal_of(open, results)).await
    }

    async fn record_result(&self, entry: &super::Entry) -> Result<(), StateError> {
        self.append(&JournalRecord::Result(Box::new(entry.clone())))
            .await
    }

    async fn results(&self) -> Result<Vec<super::Entry>, StateError> {
        Ok(self.read_journal().await?.1)
    }

    async fn forget_results(&self, serial: u64) -> Result<(), StateError> {
        let (open, mut results) = self.read_journal().await?;
        let before = results.len();
        results.retain(|e| e.since >= serial);
        if results.len() == before {
            return Ok(());
        }
        self.rewrite(journal_of(open, results)).await
    }
}

/// A journal holding only `open` intents and `results` (nothing closed).
fn journal_of(open: Vec<super::Intent>, results: Vec<super::Entry>) -> Vec<JournalRecord> {
    open.into_iter()
        .map(|i| JournalRecord::Open(Box::new(i)))
        .chain(
            results
                .into_iter()
                .map(|e| JournalRecord::Result(Box::new(super::Entry { closes: None, ..e }))),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Locker, StateStore};

    #[tokio::test]
    async fn writes_atomically_and_keeps_history() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path(), "s", "prod");
        assert!(b.read().await.unwrap().is_none());
        let mut st = State::new("s", "prod");
        for serial in 1..=3 {
            st.serial = serial;
            b.write(&st).await.unwrap();
        }
        assert_eq!(b.read().await.unwrap().unwrap().serial, 3);
        let hist: Vec<_> = fs::read_dir(b.history_dir()).unwrap().collect();
        assert_eq!(hist.len(), 2);
    }

    #[tokio::test]
    async fn second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path(), "s", "prod");
        let first = LockInfo::for_operation("apply");
        assert!(b.lock(&first).await.unwrap().is_none());
        let err = b
            .lock(&LockInfo::for_operation("apply"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains(&first.id));
        b.unlock(&first).await.unwrap();
        b.lock(&LockInfo::for_operation("plan")).await.unwrap();
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;
    use crate::state::Journal;

    fn intent(id: &str) -> crate::state::Intent {
        crate::state::Intent {
            id: id.into(),
            address: "vpc".into(),
            kind: "aws.vpc".into(),
            action: "create".into(),
            lookup: None,
            props: Default::default(),
            depends_on: vec![],
            protect: false,
            started_at: chrono::Utc::now(),
            pid: 1,
        }
    }

    #[tokio::test]
    async fn a_torn_last_line_does_not_swallow_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path(), "s", "prod");
        b.open_intent(&intent("a")).await.unwrap();
        // A kill in the middle of writing the next record.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(b.journal_path())
            .unwrap();
        f.write_all(br#"{"op":"open","id":"torn","addr"#).unwrap();
        drop(f);
        b.close_intent("a").await.unwrap();
        assert!(b.open_intents().await.unwrap().is_empty());
    }

    fn result(
        st: &State,
        address: &str,
        id: Option<&str>,
        closes: Option<&str>,
    ) -> crate::state::Entry {
        crate::state::Entry {
            lineage: st.lineage.clone(),
            since: st.serial,
            address: address.into(),
            resource: id.map(|id| {
                crate::state::ResourceState::reported(
                    "aws.vpc",
                    id,
                    Default::default(),
                    Default::default(),
                    vec![],
                    false,
                )
            }),
            closes: closes.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn results_replay_over_the_last_written_state_until_a_newer_one_holds_them() {
        use crate::state::StateStore;
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path(), "s", "prod");
        let mut st = State::new("s", "prod");
        st.serial = 1;
        b.write(&st).await.unwrap();
        b.open_intent(&intent("i1")).await.unwrap();
        b.record_result(&result(&st, "vpc", Some("vpc-1"), Some("i1")))
            .await
            .unwrap();
        b.record_result(&result(&st, "old", None, None))
            .await
            .unwrap();
        // The result closed its intent and is part of what a read sees.
        assert!(b.open_intents().await.unwrap().is_empty());
        let read = b.read().await.unwrap().unwrap();
        assert_eq!(read.resources["vpc"].id, "vpc-1");
        assert_eq!(read.serial, 1);
        // A later result of the same address wins.
        b.record_result(&result(&st, "vpc", Some("vpc-2"), None))
            .await
            .unwrap();
        assert_eq!(
            b.read().await.unwrap().unwrap().resources["vpc"].id,
            "vpc-2"
        );
        // A state written with a greater serial holds them: not replayed
        // over it even before they are forgotten (a `state rm` after it).
        let mut newer = read.clone();
        newer.serial = 2;
        newer.resources.clear();
        b.write(&newer).await.unwrap();
        assert!(b.read().await.unwrap().unwrap().resources.is_empty());
        b.forget_results(2).await.unwrap();
        assert!(b.results().await.unwrap().is_empty());
        assert!(!b.journal_path().exists());
        // Results of another lineage (a state deleted and made again) never replay.
        b.record_result(&result(&State::new("s", "prod"), "x", Some("x-1"), None))
            .await
            .unwrap();
        assert!(b.read().await.unwrap().unwrap().resources.is_empty());
    }

    #[tokio::test]
    async fn a_torn_result_leaves_its_intent_open_for_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path(), "s", "prod");
        let st = State::new("s", "prod");
        b.open_intent(&intent("i1")).await.unwrap();
        let line = serde_json::to_string(&JournalRecord::Result(Box::new(result(
            &st,
            "vpc",
            Some("vpc-1"),
            Some("i1"),
        ))))
        .unwrap();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(b.journal_path())
            .unwrap();
        f.write_all(&line.as_bytes()[..line.len() / 2]).unwrap();
        drop(f);
        assert_eq!(b.open_intents().await.unwrap().len(), 1);
        assert!(b.results().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sealed_journal_lines_hold_no_plain_text_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let sealer = crate::state::codec::Sealer::with_key(key);
        let b = LocalBackend::new(dir.path(), "s", "prod").with_sealer(std::sync::Arc::new(sealer));
        let st = State::new("s", "prod");
        b.open_intent(&intent("i1")).await.unwrap();
        b.record_result(&result(&st, "vpc", Some("vpc-0secret"), Some("i1")))
            .await
            .unwrap();
        let text = fs::read_to_string(b.journal_path()).unwrap();
        assert!(!text.contains("vpc-0secret"), "{text}");
        assert!(b.open_intents().await.unwrap().is_empty());
        assert_eq!(
            b.results().await.unwrap()[0].resource.as_ref().unwrap().id,
            "vpc-0secret"
        );
    }

    #[tokio::test]
    async fn invalid_utf8_lines_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path(), "s", "prod");
        b.open_intent(&intent("a")).await.unwrap();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(b.journal_path())
            .unwrap();
        f.write_all(b"\xff\xfe garbage \xc3\n").unwrap();
        drop(f);
        b.open_intent(&intent("b")).await.unwrap();
        let open: Vec<String> = b
            .open_intents()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(open, vec!["a".to_string(), "b".to_string()]);
        b.compact().await.unwrap();
        assert_eq!(b.open_intents().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn the_state_before_each_command_is_kept_with_its_outputs() {
        use crate::state::StateStore;
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path(), "s", "prod");
        assert!(b.snapshot_before("apply").await.unwrap().is_none());
        let mut st = State::new("s", "prod");
        st.serial = 7;
        st.outputs
            .insert("vpc_id".into(), serde_json::json!("vpc-1"));
        b.write(&st).await.unwrap();
        let name = b.snapshot_before("apply").await.unwrap().unwrap();
        // An apply writes many intermediate versions afterwards.
        for serial in 8..60 {
            st.serial = serial;
            st.outputs.clear();
            b.write(&st).await.unwrap();
        }
        let kept = b.read_snapshot(&name).await.unwrap();
        assert_eq!(kept.serial, 7);
        assert_eq!(kept.outputs["vpc_id"], serde_json::json!("vpc-1"));
        assert_eq!(b.read_snapshot("7").await.unwrap().serial, 7);
        let list = b.snapshots().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].operation, "apply");
    }
}

#[cfg(test)]
mod stale_tests {
    use super::*;
    use crate::state::Locker;

    #[tokio::test]
    async fn a_dead_holder_on_this_host_is_taken_over_a_live_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path(), "s", "prod");
        // A holder whose process has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let mut dead = LockInfo::for_operation("apply");
        dead.pid = dead_pid;
        b.lock(&dead).await.unwrap();
        let msg = b.lock(&LockInfo::for_operation("plan")).await;
        let taken = msg.unwrap().expect("the stale lock is reported");
        assert_eq!(taken.id, dead.id);

        // A live holder (this process) is never taken over.
        let dir2 = tempfile::tempdir().unwrap();
        let b2 = LocalBackend::new(dir2.path(), "s", "prod");
        b2.lock(&LockInfo::for_operation("apply")).await.unwrap();
        assert!(matches!(
            b2.lock(&LockInfo::for_operation("apply")).await,
            Err(StateError::Locked(_))
        ));
    }
}
