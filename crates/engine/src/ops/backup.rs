//! `backup` and `restore`: the stack's database (its schema resource,
//! `Role::Schema`, says where and how to connect) dumped into its backup
//! bucket (a kind offering `Role::Bucket`), old backups removed by the
//! bucket's retention, and the cloud's own snapshot of the primary on
//! request (`Role::Snapshots`); a restore into a new database, checked table
//! by table. Neither changes a resource of the stack, so neither takes the
//! lock.

use chrono::Utc;
use serde_json::{Map, Value as Json};

use crate::state::State;
use ralph_core::driver::capability::ObjectStore;
use ralph_core::driver::Context;
use ralph_service::postgres::backup::{self, Manifest, TableSum};

use super::{OpError, Role, Session, Unapplied};

#[derive(Debug, Default)]
pub struct BackupOptions {
    /// The bucket resource when the stack has several.
    pub bucket: Option<String>,
    /// The schema (migrations) resource when the stack has several.
    pub database: Option<String>,
    /// Overrides the bucket's retention (`expire_after_days`).
    pub retention_days: Option<i64>,
    /// Also take the cloud's snapshot of the primary instance.
    pub snapshot: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct BackupReport {
    pub bucket: String,
    pub key: String,
    /// The backup's URL (`s3://…`, `gs://…`).
    pub url: String,
    pub manifest: Manifest,
    /// Backups older than the retention, removed.
    pub removed: Vec<String>,
    pub snapshot: Option<String>,
}

/// The one resource offering `role`, or the one `chosen` names.
fn one(
    s: &Session,
    state: &State,
    role: Role,
    chosen: Option<&str>,
    flag: &str,
) -> Result<(String, Map<String, Json>), OpError> {
    let mut all = s.resolved_in(state, role, Unapplied::Refuse)?;
    let noun = s.registry.role_text(role);
    if let Some(c) = chosen {
        return all
            .into_iter()
            .find(|(a, _)| a == c)
            .ok_or_else(|| OpError::refused(format!("the stack has no {noun} `{c}` ({flag})")));
    }
    match all.len() {
        1 => Ok(all.remove(0)),
        0 => Err(OpError::refused(format!(
            "the stack has no {noun}, so there is nothing to back up to or from"
        ))),
        _ => Err(OpError::refused(format!(
            "the stack has several of them ({}): choose one with {flag}",
            all.iter()
                .map(|(a, _)| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The backup bucket: its address, name, retention and objects.
struct Bucket<'a> {
    address: String,
    name: String,
    expire_after_days: Option<i64>,
    store: &'a dyn ObjectStore,
}

fn bucket<'s>(s: &'s Session, state: &State, chosen: Option<&str>) -> Result<Bucket<'s>, OpError> {
    let (address, props) = one(s, state, Role::Bucket, chosen, "--bucket")?;
    let store = s
        .driver_at(&address)?
        .object_store()
        .ok_or_else(|| OpError::Other(format!("{address} keeps no objects")))?;
    Ok(Bucket {
        name: store.bucket_name(&props).unwrap_or_default(),
        expire_after_days: store.expire_after_days(&props),
        store,
        address,
    })
}

fn prefix(s: &Session) -> String {
    format!("backups/{}/{}/", s.stack.name, s.stack.environment)
}

fn error(address: &str) -> impl Fn(ralph_core::driver::DriverError) -> OpError + '_ {
    move |e| OpError::Resource {
        address: address.to_string(),
        message: e.message,
    }
}

pub async fn backup(s: &Session, cx: &Context, o: &BackupOptions) -> Result<BackupReport, OpError> {
    let (state, _) = s.read_state().await?;
    let (db_address, db) = one(s, &state, Role::Schema, o.database.as_deref(), "--database")?;
    let b = bucket(s, &state, o.bucket.as_deref())?;
    let retention = o.retention_days.or(b.expire_after_days).filter(|d| *d > 0);
    let target = ralph_service::postgres::resolve(cx, &db)
        .await
        .map_err(error(&db_address))?;
    let now = Utc::now();
    let key = backup::object_key(&prefix(s), now);
    let manifest = backup::dump(cx, b.store, &target, &b.name, &key)
        .await
        .map_err(error(&db_address))?;
    let removed = match retention {
        Some(days) => expire(cx, &b, &prefix(s), now - chrono::Duration::days(days))
            .await
            .map_err(error(&b.address))?,
        None => Vec::new(),
    };
    let snapshot = if o.snapshot {
        Some(snapshot(s, cx, &state, now).await?)
    } else {
        None
    };
    Ok(BackupReport {
        url: b.store.url(&b.name, &key),
        bucket: b.name,
        key,
        manifest,
        removed,
        snapshot,
    })
}

/// The newest complete backup of the environment in the stack's bucket
/// (its manifest written: a dump without one never finished): its key and
/// when it was taken; None when there is none.
pub async fn latest(
    s: &Session,
    cx: &Context,
    state: &State,
) -> Result<Option<(String, chrono::DateTime<Utc>)>, OpError> {
    let b = bucket(s, state, None)?;
    let all = backup::list(cx, b.store, &b.name, &prefix(s))
        .await
        .map_err(error(&b.address))?;
    Ok(all
        .into_iter()
        .filter(|l| l.complete)
        .max_by_key(|l| l.taken_at)
        .map(|l| (l.key, l.taken_at)))
}

/// Removes our backups (and their manifests) taken before `before`,
/// unfinished ones too; any other object under the prefix is left alone.
async fn expire(
    cx: &Context,
    b: &Bucket<'_>,
    prefix: &str,
    before: chrono::DateTime<Utc>,
) -> Result<Vec<String>, ralph_core::driver::DriverError> {
    let mut removed = Vec::new();
    for backup::Listed { key, taken_at, .. } in backup::list(cx, b.store, &b.name, prefix).await? {
        if taken_at >= before {
            continue;
        }
        for k in [key.clone(), format!("{key}.json")] {
            b.store.delete(cx, &b.name, &k).await?;
        }
        removed.push(key);
    }
    Ok(removed)
}

/// The cloud's snapshot of the stack's primary database.
async fn snapshot(
    s: &Session,
    cx: &Context,
    state: &State,
    now: chrono::DateTime<Utc>,
) -> Result<String, OpError> {
    for (address, props) in s.resolved_in(state, Role::Snapshots, Unapplied::Refuse)? {
        let Some(snapshots) = s.driver_at(&address)?.snapshots() else {
            continue;
        };
        if snapshots.is_primary(&props) {
            return snapshots
                .snapshot(cx, &props, now)
                .await
                .map_err(error(&address));
        }
    }
    Err(OpError::refused(
        "--snapshot: the stack has no primary database the cloud can snapshot",
    ))
}

#[derive(Debug, serde::Serialize)]
pub struct RestoreReport {
    pub key: String,
    pub database: String,
    pub tables: Vec<TableSum>,
}

/// Restores `key` (a key from `backup`, or just its file name) into a new
/// database on the same server.
pub async fn restore(
    s: &Session,
    cx: &Context,
    o: &BackupOptions,
    key: &str,
    database: Option<&str>,
) -> Result<RestoreReport, OpError> {
    let (state, _) = s.read_state().await?;
    let (db_address, db) = one(s, &state, Role::Schema, o.database.as_deref(), "--database")?;
    let b = bucket(s, &state, o.bucket.as_deref())?;
    let key = if key.contains('/') {
        key.to_string()
    } else {
        format!("{}{key}", prefix(s))
    };
    let target = ralph_service::postgres::resolve(cx, &db)
        .await
        .map_err(error(&db_address))?;
    let database = match database {
        Some(d) => d.to_string(),
        None => format!(
            "{}_restored_{}",
            target.database(),
            Utc::now().format("%Y%m%d%H%M%S")
        ),
    };
    if database.is_empty()
        || database.len() > 63
        || !database
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(OpError::refused(format!(
            "--database `{database}`: lower-case letters, digits and `_`, at most 63"
        )));
    }
    let tables = backup::restore(cx, b.store, &target, &b.name, &key, &database)
        .await
        .map_err(error(&db_address))?;
    Ok(RestoreReport {
        key,
        database,
        tables,
    })
}
