//! `backup` and `restore`: the stack's database (its `postgres.migrations`
//! resource says where and how to connect) dumped into its backup bucket
//! (its `aws.s3_bucket`), old backups removed by the bucket's
//! `expire_after_days`, and an RDS snapshot on request; a restore into a
//! new database, checked table by table. Neither changes a resource of the
//! stack, so neither takes the lock.

use chrono::Utc;
use serde_json::{Map, Value as Json};

use crate::drivers::postgres::backup::{self, Manifest, TableSum};
use crate::drivers::Context;
use crate::state::State;

use super::{OpError, Session, Unapplied};

#[derive(Debug, Default)]
pub struct BackupOptions {
    /// The `aws.s3_bucket` resource when the stack has several.
    pub bucket: Option<String>,
    /// The `postgres.migrations` resource when the stack has several.
    pub database: Option<String>,
    /// Overrides the bucket's `expire_after_days`.
    pub retention_days: Option<i64>,
    /// Also take an RDS snapshot of the primary instance.
    pub snapshot: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct BackupReport {
    pub bucket: String,
    pub key: String,
    pub manifest: Manifest,
    /// Backups older than the retention, removed.
    pub removed: Vec<String>,
    pub snapshot: Option<String>,
}

/// One resource of `kind`, or the one `chosen` names.
fn one(
    s: &Session,
    state: &State,
    kind: &str,
    chosen: Option<&str>,
    flag: &str,
) -> Result<(String, Map<String, Json>), OpError> {
    let mut all = s.resolved_in(state, kind, Unapplied::Refuse)?;
    if let Some(c) = chosen {
        return all.into_iter().find(|(a, _)| a == c).ok_or_else(|| {
            OpError::refused(format!("the stack has no {kind} resource `{c}` ({flag})"))
        });
    }
    match all.len() {
        1 => Ok(all.remove(0)),
        0 => Err(OpError::refused(format!(
            "the stack has no {kind} resource, so there is nothing to back up to or from"
        ))),
        _ => Err(OpError::refused(format!(
            "the stack has several {kind} resources ({}): choose one with {flag}",
            all.iter()
                .map(|(a, _)| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The backup bucket: its address, name and properties.
struct Bucket {
    address: String,
    name: String,
    props: Map<String, Json>,
}

fn bucket(s: &Session, state: &State, chosen: Option<&str>) -> Result<Bucket, OpError> {
    let (address, props) = one(s, state, "aws.s3_bucket", chosen, "--bucket")?;
    let name = props
        .get("name")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(Bucket {
        address,
        name,
        props,
    })
}

fn prefix(s: &Session) -> String {
    format!("backups/{}/{}/", s.stack.name, s.stack.environment)
}

fn error(address: &str) -> impl Fn(crate::drivers::DriverError) -> OpError + '_ {
    move |e| OpError::Resource {
        address: address.to_string(),
        message: e.message,
    }
}

pub async fn backup(s: &Session, cx: &Context, o: &BackupOptions) -> Result<BackupReport, OpError> {
    let (state, _) = s.read_state().await?;
    let (db_address, db) = one(
        s,
        &state,
        "postgres.migrations",
        o.database.as_deref(),
        "--database",
    )?;
    let Bucket {
        address: bucket_address,
        name: bucket_name,
        props: bucket,
    } = bucket(s, &state, o.bucket.as_deref())?;
    let retention = o
        .retention_days
        .or_else(|| bucket.get("expire_after_days").and_then(Json::as_i64))
        .filter(|d| *d > 0);
    let target = crate::drivers::postgres::resolve(cx, &db)
        .await
        .map_err(error(&db_address))?;
    let now = Utc::now();
    let key = backup::object_key(&prefix(s), now);
    let manifest = backup::dump_to_s3(cx, &target, &bucket_name, &key)
        .await
        .map_err(error(&db_address))?;
    let removed = match retention {
        Some(days) => expire(
            cx,
            &bucket_name,
            &prefix(s),
            now - chrono::Duration::days(days),
        )
        .await
        .map_err(error(&bucket_address))?,
        None => Vec::new(),
    };
    let snapshot = if o.snapshot {
        Some(rds_snapshot(s, cx, &state, now).await?)
    } else {
        None
    };
    Ok(BackupReport {
        bucket: bucket_name,
        key,
        manifest,
        removed,
        snapshot,
    })
}

/// The newest backup of the environment in the stack's bucket: its key
/// and when it was taken; None when there is none.
pub async fn latest(
    s: &Session,
    cx: &Context,
    state: &State,
) -> Result<Option<(String, chrono::DateTime<Utc>)>, OpError> {
    let b = bucket(s, state, None)?;
    let all = backup::list(cx, &b.name, &prefix(s))
        .await
        .map_err(error(&b.address))?;
    Ok(all.into_iter().max_by_key(|(_, at)| *at))
}

/// Removes our backups (and their manifests) taken before `before`; any
/// other object under the prefix is left alone.
async fn expire(
    cx: &Context,
    bucket: &str,
    prefix: &str,
    before: chrono::DateTime<Utc>,
) -> Result<Vec<String>, crate::drivers::DriverError> {
    let s3 = &cx.aws().await?.s3;
    let mut removed = Vec::new();
    for (key, at) in backup::list(cx, bucket, prefix).await? {
        if at >= before {
            continue;
        }
        for k in [key.clone(), format!("{key}.json")] {
            s3.delete_object()
                .bucket(bucket)
                .key(&k)
                .send()
                .await
                .map_err(|e| crate::drivers::aws::api_error("DeleteObject", e))?;
        }
        removed.push(key);
    }
    Ok(removed)
}

/// A manual snapshot of the stack's primary RDS instance.
async fn rds_snapshot(
    s: &Session,
    cx: &Context,
    state: &State,
    now: chrono::DateTime<Utc>,
) -> Result<String, OpError> {
    let primaries: Vec<(String, Map<String, Json>)> = s
        .resolved_in(state, "aws.rds_instance", Unapplied::Refuse)?
        .into_iter()
        .filter(|(_, p)| {
            p.get("replicate_source_db")
                .and_then(Json::as_str)
                .unwrap_or("")
                .is_empty()
        })
        .collect();
    let Some((address, props)) = primaries.first() else {
        return Err(OpError::refused(
            "--snapshot: the stack has no RDS primary instance",
        ));
    };
    let instance = props
        .get("identifier")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let id = format!("{instance}-{}", now.format("%Y%m%d%H%M%S"));
    cx.aws()
        .await
        .map_err(error(address))?
        .rds
        .create_db_snapshot()
        .db_instance_identifier(instance)
        .db_snapshot_identifier(&id)
        .send()
        .await
        .map_err(|e| OpError::Resource {
            address: address.clone(),
            message: crate::drivers::aws::api_error("CreateDBSnapshot", e).message,
        })?;
    Ok(id)
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
    let (db_address, db) = one(
        s,
        &state,
        "postgres.migrations",
        o.database.as_deref(),
        "--database",
    )?;
    let bucket_name = bucket(s, &state, o.bucket.as_deref())?.name;
    let key = if key.contains('/') {
        key.to_string()
    } else {
        format!("{}{key}", prefix(s))
    };
    let target = crate::drivers::postgres::resolve(cx, &db)
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
    let tables = backup::restore_from_s3(cx, &target, &bucket_name, &key, &database)
        .await
        .map_err(error(&db_address))?;
    Ok(RestoreReport {
        key,
        database,
        tables,
    })
}
