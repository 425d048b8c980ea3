//! The embedded backend: one directory per stack and environment.
//!
//! ```text
//! <root>/<stack>/<environment>/state.json      current snapshot
//!                              history/<serial>.json   previous snapshots (the newest few)
//!                              lock.json       present while a run holds the lock
//!                              journal.jsonl   intents: opened before each cloud call, closed after
//! ```
//! Writes go to a temporary file in the same directory, are fsynced, renamed
//! over the old file, and the directory is fsynced, so a crash at any moment
//! leaves either the old or the new snapshot.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{LockHeld, LockInfo, State, StateError, FORMAT_VERSION};

/// How many previous snapshots are kept.
const HISTORY: usize = 20;

pub struct LocalBackend {
    dir: PathBuf,
}

impl LocalBackend {
    pub fn new(root: &Path, stack: &str, environment: &str) -> LocalBackend {
        LocalBackend {
            dir: root.join(stack).join(environment),
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
            source,
        }
    }

    fn keep_history(&self, previous: &Path) -> Result<(), StateError> {
        let Ok(text) = fs::read(previous) else {
            return Ok(());
        };
        let serial = serde_json::from_slice::<State>(&text)
            .map(|s| s.serial)
            .unwrap_or(0);
        let hist = self.history_dir();
        fs::create_dir_all(&hist).map_err(|e| self.io(&hist, e))?;
        let target = hist.join(format!("{serial:010}.json"));
        atomic_write(&target, &text).map_err(|e| self.io(&target, e))?;
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

/// Temp file in the same directory, fsync, rename, fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
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
        let probe: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
                history: self.history_dir().display().to_string(),
            })?;
        let found = probe
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        if found > FORMAT_VERSION {
            return Err(StateError::TooNew {
                path: path.display().to_string(),
                found,
            });
        }
        serde_json::from_value(probe)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
                history: self.history_dir().display().to_string(),
            })
    }

    async fn write(&self, state: &State) -> Result<(), StateError> {
        let path = self.state_path();
        fs::create_dir_all(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        if path.exists() {
            self.keep_history(&path)?;
        }
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| self.io(&path, std::io::Error::other(e)))?;
        atomic_write(&path, &bytes).map_err(|e| self.io(&path, e))
    }

    fn describe(&self) -> String {
        self.state_path().display().to_string()
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
            let bytes = serde_json::to_vec_pretty(info).unwrap_or_default();
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
                            unsafe { libc::flock(guard.as_raw_fd(), libc::LOCK_EX) };
                            if self.holder().await?.is_some_and(|again| again.id == h.id) {
                                fs::remove_file(&path).map_err(|e| self.io(&path, e))?;
                            }
                            unsafe { libc::flock(guard.as_raw_fd(), libc::LOCK_UN) };
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
            source: std::io::Error::other("the lock kept changing hands; try again"),
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
    Close { id: String },
}

impl LocalBackend {
    fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.jsonl")
    }

    fn append(&self, record: &JournalRecord) -> Result<(), StateError> {
        let path = self.journal_path();
        fs::create_dir_all(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        let mut line =
            serde_json::to_vec(record).map_err(|e| self.io(&path, std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| self.io(&path, e))?;
        // One write of a whole line, then fsync: a crash leaves either the
        // record or nothing (a torn last line is ignored on reading).
        f.write_all(&line)
            .and_then(|_| f.sync_data())
            .map_err(|e| self.io(&path, e))
    }

    fn describe_dir(&self) -> String {
        self.dir.display().to_string()
    }
}

#[async_trait::async_trait]
impl super::Journal for LocalBackend {
    async fn open_intent(&self, intent: &super::Intent) -> Result<(), StateError> {
        self.append(&JournalRecord::Open(Box::new(intent.clone())))
    }

    async fn close_intent(&self, id: &str) -> Result<(), StateError> {
        self.append(&JournalRecord::Close { id: id.to_string() })
    }

    async fn open_intents(&self) -> Result<Vec<super::Intent>, StateError> {
        let path = self.journal_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(&path, e)),
        };
        let mut open: Vec<super::Intent> = Vec::new();
        for line in text.lines() {
            match serde_json::from_str::<JournalRecord>(line) {
                Ok(JournalRecord::Open(i)) => open.push(*i),
                Ok(JournalRecord::Close { id }) => open.retain(|i| i.id != id),
                Err(_) => {} // a line torn by a crash
            }
        }
        Ok(open)
    }

    async fn compact(&self) -> Result<(), StateError> {
        let open = self.open_intents().await?;
        let path = self.journal_path();
        if open.is_empty() {
            return match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.io(&path, e)),
            };
        }
        let mut text = Vec::new();
        for i in open {
            text.extend(serde_json::to_vec(&JournalRecord::Open(Box::new(i))).unwrap_or_default());
            text.push(b'\n');
        }
        atomic_write(&path, &text).map_err(|e| self.io(&path, e))
    }
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
