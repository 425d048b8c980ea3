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
async fn one(
    s: &Session,
    kind: &str,
    chosen: Option<&str>,
    flag: &str,
) -> Result<(String, Map<String, Json>), OpError> {
    let mut all = s.resolved_all(kind, Unapplied::Refuse).await?;
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
    let (db_address, db) = one(
        s,
        "postgres.migrations",
        o.database.as_deref(),
        "--database",
    )
    .await?;
    let (bucket_address, bucket) = one(s, "aws.s3_bucket", o.bucket.as_deref(), "--bucket").await?;
    let bucket_name = bucket
        .get("name")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string();
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
        Some(rds_snapshot(s, cx, now).await?)
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
) -> Result<Option<(String, chrono::DateTime<Utc>)>, OpError> {
    let (bucket_address, bucket) = one(s, "aws.s3_bucket", None, "--bucket").await?;
    let bucket_name = bucket
        .get("name")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let prefix = prefix(s);
    let s3 = &cx.aws().await.map_err(error(&bucket_address))?.s3;
    let mut newest: Option<(String, chrono::DateTime<Utc>)> = None;
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket_name)
            .prefix(&prefix)
            .set_continuation_token(token.clone())
            .send()
            .await
            .map_err(|e| {
                error(&bucket_address)(crate::drivers::aws::api_error("ListObjectsV2", e))
            })?;
        for key in page.contents().iter().filter_map(|o| o.key()) {
            if let Some(at) = backup::taken_at(&prefix, key) {
                if newest.as_ref().is_none_or(|(_, t)| at > *t) {
                    newest = Some((key.to_string(), at));
                }
            }
        }
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    Ok(newest)
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
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.clone())
            .send()
            .await
            .map_err(|e| crate::drivers::aws::api_error("ListObjectsV2", e))?;
        for obj in page.contents() {
            let Some(key) = obj.key() else { continue };
            let Some(at) = backup::taken_at(prefix, key) else {
                continue;
            };
            if at >= before {
                continue;
            }
            for k in [key.to_string(), format!("{key}.json")] {
                s3.delete_object()
                    .bucket(bucket)
                    .key(&k)
                    .send()
                    .await
                    .map_err(|e| crate::drivers::aws::api_error("DeleteObject", e))?;
            }
            removed.push(key.to_string());
        }
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    Ok(removed)
}

/// A manual snapshot of the stack's primary RDS instance.
async fn rds_snapshot(
    s: &Session,
    cx: &Context,
    now: chrono::DateTime<Utc>,
) -> Result<String, OpError> {
    let primaries: Vec<(String, Map<String, Json>)> = s
        .resolved_all("aws.rds_instance", Unapplied::Refuse)
        .await?
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
    let (db_address, db) = one(
        s,
        "postgres.migrations",
        o.database.as_deref(),
        "--database",
    )
    .await?;
    let (_, bucket) = one(s, "aws.s3_bucket", o.bucket.as_deref(), "--bucket").await?;
    let bucket_name = bucket
        .get("name")
        .and_then(Json::as_str)
        .unwrap_or_default();
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
            "--database {database:?}: lower-case letters, digits and `_`, at most 63"
        )));
    }
    let tables = backup::restore_from_s3(cx, &target, bucket_name, &key, &database)
        .await
        .map_err(error(&db_address))?;
    Ok(RestoreReport {
        key,
        database,
        tables,
    })
}
