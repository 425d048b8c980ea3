//! `backup` and `restore`: the stack's database (its schema resource,
//! `Role::Schema`, says where and how to connect, and its kind's [`Dumps`]
//! how to dump and restore it) dumped into its backup bucket (a kind
//! offering `Role::Bucket`), old backups removed by the bucket's retention,
//! and the cloud's own snapshot of the primary on request
//! (`Role::Snapshots`); a restore into a new database, checked table by
//! table. Both run under the lock with an intent of their own (no copy of
//! the state is kept: neither changes a resource), so a run killed half-way
//! is settled by the next command: an unfinished dump is removed from the
//! bucket, an unfinished restore's database dropped (`apply::recover`).

use chrono::Utc;
use serde_json::{Map, Value as Json};

use crate::apply::recover::{BACKUP, RESTORE};
use crate::state::{Intent, State};
use ralph_core::driver::capability::{Dumps, Manifest, ObjectStore, TableSum};
use ralph_core::driver::Context;
use ralph_service::postgres::backup;

use super::{locked_without_copy, OpError, Role, Session, Unapplied};

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

/// The schema resource and its kind's dumps.
fn database<'s>(
    s: &'s Session,
    state: &State,
    chosen: Option<&str>,
) -> Result<(String, Map<String, Json>, &'s dyn Dumps), OpError> {
    let (address, props) = one(s, state, Role::Schema, chosen, "--database")?;
    let dumps = s
        .driver_at(&address)?
        .dumps()
        .ok_or_else(|| OpError::Other(format!("{address}: its kind cannot dump its database")))?;
    Ok((address, props, dumps))
}

/// The backup bucket: its address, name, retention and objects.
struct Bucket<'a> {
    address: String,
    kind: String,
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
        kind: s.driver_at(&address)?.schema().kind.to_string(),
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
    locked_without_copy(s, cx, BACKUP, |l| async move {
        let state = l.state;
        let (db_address, db, dumps) = database(s, &state, o.database.as_deref())?;
        let b = bucket(s, &state, o.bucket.as_deref())?;
        let retention = o.retention_days.or(b.expire_after_days).filter(|d| *d > 0);
        let now = Utc::now();
        let key = backup::object_key(&prefix(s), now);
        // A kill before the manifest is written leaves a dump that can be
        // neither checked nor restored: the next command removes it.
        let mut bucket_props = Map::new();
        bucket_props.insert("bucket".into(), Json::String(b.name.clone()));
        let intent = Intent::operation(&b.address, &b.kind, BACKUP, &key, bucket_props);
        s.backend.open_intent(&intent).await?;
        let manifest = dumps
            .dump(cx, &db, b.store, &b.name, &key)
            .await
            .map_err(error(&db_address))?;
        s.backend.close_intent(&intent.id).await?;
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
        s.backend.compact().await?;
        Ok(BackupReport {
            url: b.store.url(&b.name, &key),
            bucket: b.name,
            key,
            manifest,
            removed,
            snapshot,
        })
    })
    .await
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
    database_name: Option<&str>,
) -> Result<RestoreReport, OpError> {
    locked_without_copy(s, cx, RESTORE, |l| async move {
        let state = l.state;
        let (db_address, db, dumps) = database(s, &state, o.database.as_deref())?;
        let b = bucket(s, &state, o.bucket.as_deref())?;
        let key = if key.contains('/') {
            key.to_string()
        } else {
            format!("{}{key}", prefix(s))
        };
        let failed = error(&db_address);
        let into = match database_name {
            Some(d) => d.to_string(),
            None => format!(
                "{}_restored_{}",
                dumps.database(cx, &db).await.map_err(&failed)?,
                Utc::now().format("%Y%m%d%H%M%S")
            ),
        };
        if into.is_empty()
            || into.len() > 63
            || !into
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(OpError::refused(format!(
                "--database `{into}`: lower-case letters, digits and `_`, at most 63"
            )));
        }
        // Only a database this restore creates is ever dropped: one that
        // exists is refused before the intent names it.
        if dumps.exists(cx, &db, &into).await.map_err(&failed)? {
            return Err(OpError::refused(format!(
                "database {into} exists already: restore into a new one (--database NAME), then switch the application over"
            )));
        }
        let kind = s.driver_at(&db_address)?.schema().kind;
        let intent = Intent::operation(&db_address, kind, RESTORE, &into, db.clone());
        s.backend.open_intent(&intent).await?;
        let restored = dumps.restore(cx, &db, b.store, &b.name, &key, &into).await;
        let tables = match restored {
            Ok(tables) => tables,
            Err(e) => {
                // What pg_restore left is no copy of the backup: dropped, so
                // a second try can use the same name.
                let dropped = dumps.discard(cx, &db, &into).await;
                if dropped.is_ok() {
                    s.backend.close_intent(&intent.id).await?;
                }
                return Err(failed(e));
            }
        };
        s.backend.close_intent(&intent.id).await?;
        s.backend.compact().await?;
        Ok(RestoreReport {
            key,
            database: into,
            tables,
        })
    })
    .await
}
