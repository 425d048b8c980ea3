//! State: what the tool last applied, per stack and environment.
//!
//! The model is plain data (serial, lineage, resources with ids, inputs and
//! cloud-reported attributes). Storage sits behind three small traits, so the
//! local file backend here and remote ones (S3, PostgreSQL) are interchangeable:
//! [`StateStore`] reads and writes whole snapshots atomically, [`Locker`]
//! gives one writer at a time and names the holder to everyone else, and
//! [`Journal`] holds what a run does between two snapshots: intents before
//! each cloud call and each resource's result after it ([`Entry`]).
//!
//! An apply does not rewrite the whole state per resource: it appends one
//! small [`Entry`] per result and writes the whole state every few seconds
//! (a checkpoint) and at its end. Every backend's `read` returns the last
//! snapshot with the entries written after it replayed over it ([`replay`]),
//! so a run killed at any moment loses nothing that reached the journal.

pub mod codec;
pub mod local;
pub mod postgres;
pub mod s3;

/// Where a session keeps its state.
#[derive(Debug, Clone)]
pub enum StateLocation {
    /// The embedded backend's directory.
    Dir(std::path::PathBuf),
    /// A shared store (postgres://... or s3://...).
    Url(String),
}

/// The store `location` names for the stack `name`'s `environment`, with
/// the sealer the environment and the state settings ask for (`kms_key`,
/// `encrypt`; `region` is where the key and an S3 store are).
pub fn open(
    location: &StateLocation,
    name: &str,
    environment: &str,
    kms_key: Option<&str>,
    encrypt: bool,
    region: Option<String>,
) -> Result<Box<dyn Backend>, String> {
    let sealer = std::sync::Arc::new(codec::Sealer::from_env(kms_key, region.clone(), encrypt)?);
    Ok(match location {
        StateLocation::Dir(dir) => {
            Box::new(local::LocalBackend::new(dir, name, environment).with_sealer(sealer))
        }
        StateLocation::Url(url) if postgres::is_postgres_url(url) => Box::new(
            postgres::PostgresBackend::new(url, name, environment, sealer)
                .map_err(|e| e.to_string())?,
        ),
        StateLocation::Url(url) if s3::is_s3_url(url) => Box::new(
            s3::S3Backend::new(url, name, environment, region, sealer)
                .map_err(|e| e.to_string())?,
        ),
        StateLocation::Url(url) => {
            return Err(format!(
                "state store `{}` is not one this build knows; use s3://bucket/prefix or postgres://user@host/database (or leave it out for local files)",
                url.split('@').next_back().unwrap_or(url)
            ))
        }
    })
}

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub format_version: u32,
    /// Fixed when the state is first created; a plan or a copy from another
    /// lineage is never applied onto this one.
    pub lineage: String,
    /// Incremented on every write.
    pub serial: u64,
    pub stack: String,
    pub environment: String,
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceState>,
    #[serde(default)]
    pub outputs: BTreeMap<String, Json>,
    /// The stack file the last apply ran from, relative to its repository
    /// (see [`stack_file_identity`]): a copy of the stack under another
    /// path with the same `name:` is told that it manages these resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_file: Option<String>,
    /// The last plan an apply carried out (when it was made), so that the
    /// same saved plan applied again is told so, not called stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_plan: Option<chrono::DateTime<chrono::Utc>>,
}

/// How a stack file is named in the state: its path relative to the root
/// of the repository it is in (the same on every CI runner's checkout),
/// or its absolute path outside a repository.
pub fn stack_file_identity(path: &std::path::Path) -> String {
    let Ok(abs) = std::fs::canonicalize(path) else {
        return path.display().to_string();
    };
    match repository_root(&abs).and_then(|root| abs.strip_prefix(root).ok()) {
        Some(rel) => rel.display().to_string(),
        None => abs.display().to_string(),
    }
}

/// The nearest directory above `file` (an absolute path) that holds `.git`.
pub fn repository_root(file: &std::path::Path) -> Option<&std::path::Path> {
    file.ancestors().skip(1).find(|d| d.join(".git").exists())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceState {
    pub kind: String,
    /// The cloud's identifier (vpc-..., subnet-..., an ARN).
    pub id: String,
    /// The properties as last applied, references resolved. Never secrets.
    #[serde(default)]
    pub inputs: Map<String, Json>,
    /// What the cloud reported after the last change (ids, ARNs, endpoints).
    #[serde(default)]
    pub attrs: Map<String, Json>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub protect: bool,
    pub updated_at: DateTime<Utc>,
}

impl ResourceState {
    /// The record of a resource as the cloud reported it (`attrs`), applied
    /// with `inputs`: the one way the engine builds a record.
    pub fn reported(
        kind: &str,
        id: &str,
        inputs: Map<String, Json>,
        attrs: Map<String, Json>,
        depends_on: Vec<String>,
        protect: bool,
    ) -> ResourceState {
        ResourceState {
            kind: kind.to_string(),
            id: id.to_string(),
            inputs,
            attrs,
            depends_on,
            protect,
            updated_at: Utc::now(),
        }
    }
}

impl State {
    /// Renames entries as the stack's `moved` list says: an entry at `from`
    /// (or under it, for a component or a `for_each`) goes to the same place
    /// under `to`, unless something is recorded there already. Returns the
    /// renames made, in order; references in `depends_on` follow.
    pub fn apply_moves(&mut self, moved: &[(String, String)]) -> Vec<(String, String)> {
        use ralph_core::model::address::is_under;
        let mut done = Vec::new();
        for (from, to) in moved {
            let hits: Vec<String> = self
                .resources
                .keys()
                .filter(|a| is_under(a, from))
                .cloned()
                .collect();
            for old in hits {
                let new = format!("{to}{}", &old[from.len()..]);
                if self.resources.contains_key(&new) {
                    continue;
                }
                if let Some(r) = self.resources.remove(&old) {
                    self.resources.insert(new.clone(), r);
                    done.push((old, new));
                }
            }
        }
        if !done.is_empty() {
            let renamed: BTreeMap<&str, &str> =
                done.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            for r in self.resources.values_mut() {
                for d in r.depends_on.iter_mut() {
                    if let Some(n) = renamed.get(d.as_str()) {
                        *d = n.to_string();
                    }
                }
            }
        }
        done
    }

    pub fn new(stack: &str, environment: &str) -> State {
        State {
            format_version: FORMAT_VERSION,
            lineage: uuid::Uuid::new_v4().to_string(),
            serial: 0,
            stack: stack.to_string(),
            environment: environment.to_string(),
            resources: BTreeMap::new(),
            outputs: BTreeMap::new(),
            stack_file: None,
            applied_plan: None,
        }
    }

    /// An attribute of a recorded resource: an assigned attribute first, then
    /// the applied input of the same name.
    pub fn attribute(&self, address: &str, name: &str) -> Option<Json> {
        let r = self.resources.get(address)?;
        if name == "id" {
            return Some(Json::String(r.id.clone()));
        }
        r.attrs.get(name).or_else(|| r.inputs.get(name)).cloned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// (The cause is in the message, not a source: printed as a chain it
    /// would be said twice.)
    #[error("state {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("state {path} is not valid: {message}; restore an earlier version from {history}")]
    Corrupt {
        path: String,
        message: String,
        history: String,
    },
    #[error("state {path} was written by a newer ralph-deploy (format {found}, this one reads {FORMAT_VERSION})")]
    TooNew { path: String, found: u32 },
    #[error("{0}")]
    Locked(Box<LockHeld>),
    #[error("no lock is held on {0}")]
    NotLocked(String),
    #[error("the lock on {target} is held by {holder}, not by lock id {wanted}; run force-unlock with the holder's id")]
    WrongLock {
        target: String,
        holder: String,
        wanted: String,
    },
}

/// Who holds a lock, for the message another run sees.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    pub id: String,
    pub operation: String,
    pub pid: u32,
    pub host: String,
    pub user: String,
    pub since: DateTime<Utc>,
    pub version: String,
}

impl LockInfo {
    pub fn for_operation(operation: &str) -> LockInfo {
        LockInfo {
            id: uuid::Uuid::new_v4().to_string(),
            operation: operation.to_string(),
            pid: std::process::id(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            user: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "unknown".into()),
            since: Utc::now(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// On this host, a holder whose process is gone left the lock behind.
    pub fn holder_is_dead(&self) -> bool {
        let this_host = gethostname::gethostname().to_string_lossy().into_owned();
        if self.host != this_host || self.pid == 0 {
            return false;
        }
        // Signal 0 checks for existence without touching the process.
        let alive = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        !alive
    }
}

#[derive(Debug)]
pub struct LockHeld {
    pub target: String,
    pub holder: LockInfo,
}

impl std::fmt::Display for LockHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.holder;
        write!(
            f,
            "the state {} is locked by `{}` (pid {} on {}, user {}, since {}, lock id {})",
            self.target,
            h.operation,
            h.pid,
            h.host,
            h.user,
            h.since.format("%Y-%m-%d %H:%M:%S UTC"),
            h.id
        )?;
        if h.holder_is_dead() {
            write!(
                f,
                "; that process no longer exists, so the lock is stale: check nothing else is running, then `ralph-deploy force-unlock STACK --env ENV {}`",
                h.id
            )
        } else {
            write!(f, "; wait for it to finish, or if it is gone run `ralph-deploy force-unlock STACK --env ENV {}`", h.id)
        }
    }
}

/// A state from its stored JSON (already opened): refused when it is not
/// valid (`history` says where earlier versions are) or was written by a
/// newer ralph-deploy. `path` names where it was read, for messages.
pub fn parse_state(plain: &[u8], path: &str, history: &str) -> Result<State, StateError> {
    let corrupt = |e: serde_json::Error| StateError::Corrupt {
        path: path.to_string(),
        message: e.to_string(),
        history: history.to_string(),
    };
    let probe: serde_json::Value = serde_json::from_slice(plain).map_err(corrupt)?;
    let found = probe["format_version"].as_u64().unwrap_or(0) as u32;
    if found > FORMAT_VERSION {
        return Err(StateError::TooNew {
            path: path.to_string(),
            found,
        });
    }
    serde_json::from_value(probe).map_err(corrupt)
}

/// The AWS SDK settings the state stores and KMS use: the standard chain,
/// with the stack's region when the environment names none.
pub async fn aws_sdk_config(region: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = ralph_core::remote::aws_defaults();
    if std::env::var("AWS_REGION").is_err() {
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_string()));
        }
    }
    loader.load().await
}

/// Reads and writes whole state snapshots.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    async fn read(&self) -> Result<Option<State>, StateError>;
    /// Writes atomically: a reader sees the old snapshot or the new one, never a mix.
    async fn write(&self, state: &State) -> Result<(), StateError>;
    /// Where the state lives, for messages.
    fn describe(&self) -> String;
    /// Keeps a copy of the current state (outputs included) before
    /// `operation` changes it; returns the copy's name (`None`: no state yet).
    async fn snapshot_before(&self, operation: &str) -> Result<Option<String>, StateError>;
    /// The kept copies, oldest first.
    async fn snapshots(&self) -> Result<Vec<Snapshot>, StateError>;
    /// A kept copy, by name or by serial (the newest with it).
    async fn read_snapshot(&self, which: &str) -> Result<State, StateError>;
    /// Stores a snapshot copied from another store (`state migrate`), under
    /// its name there (without any file extension).
    async fn put_snapshot(
        &self,
        name: &str,
        operation: &str,
        state: &State,
    ) -> Result<(), StateError>;
}

/// One saved copy of the state as it was before a command changed it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The name `state restore` takes.
    pub name: String,
    pub operation: String,
    pub serial: u64,
    pub taken_at: String,
}

/// One writer at a time.
#[async_trait::async_trait]
pub trait Locker: Send + Sync {
    /// Takes the lock or fails at once, naming the holder. A lock left by a
    /// process that no longer exists on this host is taken over; the stale
    /// holder is returned so the caller can report it.
    async fn lock(&self, info: &LockInfo) -> Result<Option<LockInfo>, StateError>;
    async fn unlock(&self, info: &LockInfo) -> Result<(), StateError>;
    async fn holder(&self) -> Result<Option<LockInfo>, StateError>;
    /// Removes the lock whatever holds it, if its id is `id`.
    async fn force_unlock(&self, id: &str) -> Result<LockInfo, StateError>;
}

/// What a run is about to do to the cloud, written (and fsynced) before the
/// call, closed once the result is in the state. An intent still open at
/// the next run marks a call whose outcome the state may not know.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Intent {
    pub id: String,
    pub address: String,
    pub kind: String,
    /// create, update or delete.
    pub action: String,
    /// How to find the result again: the cloud id (update, delete) or the
    /// name the resource is created with (kinds named by the stack).
    #[serde(default)]
    pub lookup: Option<String>,
    /// The properties sent (never secrets: those are not properties).
    #[serde(default)]
    pub props: Map<String, Json>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub protect: bool,
    pub started_at: DateTime<Utc>,
    pub pid: u32,
}

impl Intent {
    /// An intent of a day-2 operation on `address` (a backup's object, a
    /// restore's database), opened now by this process.
    pub fn operation(
        address: &str,
        kind: &str,
        action: &str,
        lookup: &str,
        props: Map<String, Json>,
    ) -> Intent {
        Intent {
            id: uuid::Uuid::new_v4().to_string(),
            address: address.to_string(),
            kind: kind.to_string(),
            action: action.to_string(),
            lookup: Some(lookup.to_string()),
            props,
            depends_on: Vec::new(),
            protect: false,
            started_at: Utc::now(),
            pid: std::process::id(),
        }
    }
}

/// One resource's result, journaled when its cloud call returns: what the
/// address now holds. Entries replay over a snapshot in the order they were
/// written; each sets or removes one address, so replaying an entry a
/// snapshot already holds changes nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// The state's lineage: entries of another lineage (a state deleted
    /// and made again) never replay.
    pub lineage: String,
    /// The serial of the newest snapshot taken before this entry: every
    /// snapshot with a greater serial holds it.
    pub since: u64,
    pub address: String,
    /// What the address holds now; `None`: it was removed.
    #[serde(default)]
    pub resource: Option<ResourceState>,
    /// The intent this result settles, closed in the same write: the
    /// result is durable before its intent is closed.
    #[serde(default)]
    pub closes: Option<String>,
}

/// Replays `entries` (in the order written) over `state`: the ones its
/// snapshot does not hold yet. Returns how many changed it.
pub fn replay(state: &mut State, entries: &[Entry]) -> usize {
    let mut applied = 0;
    for e in entries
        .iter()
        .filter(|e| e.lineage == state.lineage && e.since >= state.serial)
    {
        match &e.resource {
            Some(r) => {
                state.resources.insert(e.address.clone(), r.clone());
            }
            None => {
                state.resources.remove(&e.address);
            }
        }
        applied += 1;
    }
    applied
}

/// The intent journal and the results of a run between two snapshots.
#[async_trait::async_trait]
pub trait Journal: Send + Sync {
    /// Durably records an intent before the call it describes.
    async fn open_intent(&self, intent: &Intent) -> Result<(), StateError>;
    async fn close_intent(&self, id: &str) -> Result<(), StateError>;
    /// Intents opened and never closed, oldest first.
    async fn open_intents(&self) -> Result<Vec<Intent>, StateError>;
    /// Drops closed records (call when no intent is open). Results stay
    /// until [`Journal::forget_results`].
    async fn compact(&self) -> Result<(), StateError>;
    /// Durably appends a resource's result and closes the intent it names.
    async fn record_result(&self, entry: &Entry) -> Result<(), StateError>;
    /// The results journaled and not yet forgotten, in the order written.
    async fn results(&self) -> Result<Vec<Entry>, StateError>;
    /// Drops the results a written snapshot with `serial` holds (those
    /// with `since` below it). Call with no run appending.
    async fn forget_results(&self, serial: u64) -> Result<(), StateError>;
}

/// A backend is all three.
pub trait Backend: StateStore + Locker + Journal {}
impl<T: StateStore + Locker + Journal> Backend for T {}
