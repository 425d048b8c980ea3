//! Logical backups of a database into a bucket and restores from them.
//!
//! A backup is one consistent `pg_dump --format=custom` (compressed)
//! streamed into the bucket's upload (`capability::ObjectStore`; S3's
//! multipart upload) in fixed-size parts, so memory stays
//! flat however large the database is and nothing touches the local disk.
//! Beside it goes a small JSON manifest: per table, the row count and an
//! order-independent checksum of its rows, taken in the very snapshot the
//! dump reads (exported with `pg_export_snapshot` and handed to pg_dump).
//! A restore streams the object into `pg_restore` and then recomputes the
//! same sums on the restored database; it only reports success when every
//! table matches.

use std::process::Stdio;

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::StreamExt;
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Target;
use ralph_core::driver::capability::{Manifest, ObjectStore, TableSum};
use ralph_core::driver::{Context, DriverError};

/// `backups/<stack>/<environment>/<UTC time>.dump`: the name carries the
/// time, which is what retention reads.
pub fn object_key(prefix: &str, at: DateTime<Utc>) -> String {
    format!("{prefix}{}.dump", at.format("%Y%m%dT%H%M%SZ"))
}

/// When a backup under `prefix` was taken, from its name; None for any
/// object that is not one of ours.
pub fn taken_at(prefix: &str, key: &str) -> Option<DateTime<Utc>> {
    let stamp = key.strip_prefix(prefix)?.strip_suffix(".dump")?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// One of our dumps under a prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub key: String,
    pub taken_at: DateTime<Utc>,
    /// Its manifest is there: the manifest is written last, so a dump
    /// without one is a backup that never finished (the run was killed
    /// between the two) and cannot be restored or checked.
    pub complete: bool,
}

/// Every dump under `prefix` (our keys only), with when it was taken and
/// whether it is complete.
pub async fn list(
    cx: &Context,
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<Listed>, DriverError> {
    let keys: std::collections::BTreeSet<String> =
        store.list(cx, bucket, prefix).await?.into_iter().collect();
    Ok(keys
        .iter()
        .filter_map(|key| {
            taken_at(prefix, key).map(|at| Listed {
                key: key.clone(),
                taken_at: at,
                complete: keys.contains(&format!("{key}.json")),
            })
        })
        .collect())
}

/// The sums of every ordinary table (partitions count as themselves, their
/// partitioned parents hold no rows), in one transaction's snapshot.
async fn table_sums(conn: &mut sqlx::PgConnection) -> Result<Vec<TableSum>, DriverError> {
    let fail = |e: sqlx::Error| DriverError::new(format!("summing the tables: {e}"));
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
          ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(fail)?;
    let mut out = Vec::new();
    for (schema, table) in tables {
        let q = format!(
            "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM \"{}\".\"{}\" t",
            schema.replace('"', "\"\""),
            table.replace('"', "\"\"")
        );
        let (rows, checksum): (i64, String) = sqlx::query_as(&q)
            .fetch_one(&mut *conn)
            .await
            .map_err(fail)?;
        out.push(TableSum {
            table: format!("{schema}.{table}"),
            rows,
            checksum,
        });
    }
    Ok(out)
}

fn tool(name: &str) -> String {
    let var = format!("RALPH_DEPLOY_{}", name.to_ascii_uppercase());
    std::env::var(var).unwrap_or_else(|_| name.to_string())
}

/// Dumps `target` into `bucket`/`key` and writes the manifest beside it.
pub async fn dump(
    cx: &Context,
    store: &dyn ObjectStore,
    target: &Target,
    bucket: &str,
    key: &str,
) -> Result<Manifest, DriverError> {
    let mut conn = sqlx::PgConnection::connect_with(&target.options())
        .await
        .map_err(|e| DriverError::new(format!("cannot connect to the database: {e}")))?;
    let fail = |e: sqlx::Error| DriverError::new(format!("preparing the backup: {e}"));
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut conn)
        .await
        .map_err(fail)?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut conn)
        .await
        .map_err(fail)?;
    let server_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut conn)
        .await
        .map_err(fail)?;
    let tables = table_sums(&mut conn).await?;

    let mut child = tokio::process::Command::new(tool("pg_dump"))
        .args(["--format=custom", "--compress=6", "--no-owner", "--no-privileges"])
        .arg(format!("--snapshot={snapshot}"))
        .envs(target.libpq_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DriverError::new(format!("cannot run pg_dump ({e}): install the PostgreSQL client tools, or set RALPH_DEPLOY_PG_DUMP")))?;
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(DriverError::new(
            "pg_dump started without its output pipes; run the backup again",
        ));
    };
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let mut upload = store
        .upload(cx, bucket, key, "application/vnd.postgresql.custom-dump")
        .await?;
    let part_size = upload.part_size();
    let streamed = async {
        let mut parts = 0usize;
        let mut bytes = 0u64;
        let mut buf = vec![0u8; part_size];
        loop {
            // Fill a whole part (the last one may be short).
            let mut filled = 0;
            while filled < part_size {
                let n = stdout
                    .read(&mut buf[filled..])
                    .await
                    .map_err(|e| DriverError::new(format!("reading pg_dump's output: {e}")))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 && parts > 0 {
                break;
            }
            upload.part(cx, buf[..filled].to_vec()).await?;
            parts += 1;
            bytes += filled as u64;
            if filled < part_size {
                break;
            }
        }
        let status = child
            .wait()
            .await
            .map_err(|e| DriverError::new(format!("waiting for pg_dump: {e}")))?;
        if !status.success() {
            let why = errors.await.unwrap_or_default();
            return Err(DriverError::new(format!(
                "pg_dump failed ({status}): {}",
                why.trim()
            )));
        }
        Ok::<_, DriverError>(bytes)
    }
    .await;
    let bytes = match streamed {
        Ok(x) => x,
        Err(e) => {
            // No half backup is left behind.
            upload.abort(cx).await;
            return Err(e);
        }
    };
    upload.finish(cx).await?;
    let _ = sqlx::query("COMMIT").execute(&mut conn).await;
    let _ = conn.close().await;
    let manifest = Manifest {
        format: "ralph-deploy-backup/1".into(),
        database: target.database(),
        server_version,
        created: Utc::now(),
        bytes,
        tables,
    };
    manifest.put(cx, store, bucket, key).await?;
    Ok(manifest)
}

/// Creates `database` (which must not exist) next to `target`'s, streams
/// the backup into pg_restore, and checks every table against the
/// manifest. Returns the sums found.
pub async fn restore(
    cx: &Context,
    store: &dyn ObjectStore,
    target: &Target,
    bucket: &str,
    key: &str,
    database: &str,
) -> Result<Vec<TableSum>, DriverError> {
    let expected = Manifest::get(cx, store, bucket, key).await?;
    {
        let mut admin = sqlx::PgConnection::connect_with(&target.options())
            .await
            .map_err(|e| DriverError::new(format!("cannot connect to the database: {e}")))?;
        if exists_on(&mut admin, database).await? {
            return Err(DriverError::new(format!(
                "database {database} exists already: restore into a new one (--database NAME), then switch the application over"
            )));
        }
        sqlx::query(&format!(
            "CREATE DATABASE \"{}\"",
            database.replace('"', "\"\"")
        ))
        .execute(&mut admin)
        .await
        .map_err(|e| DriverError::new(format!("creating database {database}: {e}")))?;
    }
    let into = target.with_database(database);
    let mut child = tokio::process::Command::new(tool("pg_restore"))
        .args(["--no-owner", "--no-privileges", "--exit-on-error"])
        .arg(format!("--dbname={database}"))
        .envs(into.libpq_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DriverError::new(format!("cannot run pg_restore ({e}): install the PostgreSQL client tools, or set RALPH_DEPLOY_PG_RESTORE")))?;
    let (Some(mut stdin), Some(mut stderr)) = (child.stdin.take(), child.stderr.take()) else {
        return Err(DriverError::new(
            "pg_restore started without its pipes; run the restore again",
        ));
    };
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut body = store.get(cx, bucket, key).await?;
    while let Some(chunk) = body.next().await {
        if stdin.write_all(&chunk?).await.is_err() {
            break; // pg_restore stopped: its exit status says why
        }
    }
    drop(stdin);
    let status = child
        .wait()
        .await
        .map_err(|e| DriverError::new(format!("waiting for pg_restore: {e}")))?;
    if !status.success() {
        let why = errors.await.unwrap_or_default();
        return Err(DriverError::new(format!(
            "pg_restore into {database} failed ({status}): {}",
            why.trim()
        )));
    }
    let mut conn = sqlx::PgConnection::connect_with(&into.options())
        .await
        .map_err(|e| DriverError::new(format!("cannot connect to {database}: {e}")))?;
    let found = table_sums(&mut conn).await?;
    let _ = conn.close().await;
    if found != expected.tables {
        let differ: Vec<String> = expected
            .tables
            .iter()
            .filter(|t| !found.contains(t))
            .map(|t| {
                let got = found.iter().find(|f| f.table == t.table);
                match got {
                    Some(g) => format!(
                        "{}: {} rows in the backup, {} restored",
                        t.table, t.rows, g.rows
                    ),
                    None => format!("{}: missing", t.table),
                }
            })
            .collect();
        return Err(DriverError::new(format!(
            "the restored database {database} does not match the backup: {}",
            differ.join("; ")
        )));
    }
    Ok(found)
}

async fn exists_on(admin: &mut sqlx::PgConnection, database: &str) -> Result<bool, DriverError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(database)
        .fetch_one(admin)
        .await
        .map_err(|e| DriverError::new(format!("checking for database {database}: {e}")))
}

/// Whether `database` exists on `target`'s server.
pub async fn exists(target: &Target, database: &str) -> Result<bool, DriverError> {
    let mut admin = sqlx::PgConnection::connect_with(&target.options())
        .await
        .map_err(|e| DriverError::new(format!("cannot connect to the database: {e}")))?;
    let found = exists_on(&mut admin, database).await;
    let _ = admin.close().await;
    found
}

/// Drops `database`, which a killed restore left unfinished (nothing when
/// it is not there). Sessions still in it are ended first.
pub async fn discard(target: &Target, database: &str) -> Result<(), DriverError> {
    let mut admin = sqlx::PgConnection::connect_with(&target.options())
        .await
        .map_err(|e| DriverError::new(format!("cannot connect to the database: {e}")))?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        database.replace('"', "\"\"")
    ))
    .execute(&mut admin)
    .await
    .map_err(|e| DriverError::new(format!("dropping the unfinished restore {database}: {e}")))?;
    let _ = admin.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_time_and_only_ours_parse() {
        let at = DateTime::parse_from_rfc3339("2026-11-27T16:05:09Z")
            .unwrap()
            .to_utc();
        let key = object_key("backups/ralph/production/", at);
        assert_eq!(key, "backups/ralph/production/20261127T160509Z.dump");
        assert_eq!(taken_at("backups/ralph/production/", &key), Some(at));
        assert_eq!(
            taken_at(
                "backups/ralph/production/",
                "backups/ralph/production/notes.txt"
            ),
            None
        );
        assert_eq!(taken_at("backups/ralph/staging/", &key), None);
        assert_eq!(
            taken_at("backups/ralph/production/", &format!("{key}.json")),
            None
        );
    }
}
