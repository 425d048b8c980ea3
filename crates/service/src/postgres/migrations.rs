//! `postgres.migrations`: the versioned SQL files of a directory, applied in
//! order with sqlx's migrator. Applied migrations are tracked in the
//! database with their SHA-384 checksums (`_sqlx_migrations`); a file that
//! was edited after it was applied is refused; every migration runs in its
//! own transaction unless its first line is `-- no-transaction` (for
//! CREATE INDEX CONCURRENTLY). The plan lists pending migrations as a change
//! of the `migrations` attribute.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};
use sqlx::migrate::Migrator;

use super::{connect, describe_target};
use ralph_core::driver::capability::{Dumps, Manifest, ObjectStore, TableSum};
use ralph_core::driver::{Context, Delete, Desired, Driver, DriverError, Known, Observed, Update};
use ralph_core::model::kinds::{Attr, Field, KindSchema, Ty};

fn computed(_: &Json) -> Result<(), String> {
    Err("`migrations` is computed from the files in `directory`; do not set it".into())
}

static SCHEMA: KindSchema = KindSchema::new(
    "postgres.migrations",
    "postgres",
    "The database schema: versioned SQL migrations applied in order.",
)
.fields(&super::with_connection_fields![
    Field::new(
        "directory",
        Ty::String,
        "the migrations directory, relative to the stack file"
    )
    .default("\"../migrations\""),
    Field::new(
        "migrations",
        Ty::List(&Ty::String),
        "computed: every migration file, as `version description checksum`"
    )
    .check(computed),
])
.attrs(&[
    Attr::string("id", "host:port/database"),
    Attr::string("failed", "the migration that failed last, if any"),
]);

pub struct Migrations;

fn resolve_dir(base: &Path, props: &Map<String, Json>) -> PathBuf {
    let dir = props
        .get("directory")
        .and_then(Json::as_str)
        .unwrap_or("../migrations");
    let p = Path::new(dir);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn label(version: i64, description: &str, checksum: &[u8]) -> String {
    format!("{version} {description} {}", &hex::encode(checksum)[..12])
}

async fn migrator(dir: &Path) -> Result<Migrator, DriverError> {
    Migrator::new(dir.to_path_buf())
        .await
        .map_err(|e| DriverError::new(format!("reading migrations from {}: {e}", dir.display())))
}

/// The files, as labels, in order.
fn file_labels(dir: &Path) -> Result<Vec<String>, String> {
    let mut files: Vec<(i64, String, Vec<u8>)> = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("reading migrations from {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        let Some((version, description)) = stem.split_once('_') else {
            continue;
        };
        let Ok(version) = version.parse::<i64>() else {
            continue;
        };
        let sql = std::fs::read_to_string(entry.path())
            .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
        use sha2::Digest;
        let checksum = sha2::Sha384::digest(sql.as_bytes()).to_vec();
        files.push((version, description.replace('_', " "), checksum));
    }
    files.sort();
    Ok(files.iter().map(|(v, d, c)| label(*v, d, c)).collect())
}

/// What the database says: applied migrations (labels) and a failed one.
async fn applied(pool: &sqlx::PgPool) -> Result<(Vec<String>, Option<String>), DriverError> {
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
        .await
        .map_err(|e| DriverError::new(format!("reading applied migrations: {e}")))?;
    if exists.is_none() {
        return Ok((Vec::new(), None));
    }
    let rows: Vec<(i64, String, bool, Vec<u8>)> = sqlx::query_as(
        "SELECT version, description, success, checksum FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| DriverError::new(format!("reading applied migrations: {e}")))?;
    let ok = rows
        .iter()
        .filter(|r| r.2)
        .map(|r| label(r.0, &r.1, &r.3))
        .collect();
    let failed = rows
        .iter()
        .find(|r| !r.2)
        .map(|r| format!("{} {}", r.0, r.1));
    Ok((ok, failed))
}

/// Edited or missing applied files are refused before anything runs.
fn check_divergence(files: &[String], applied: &[String]) -> Result<(), DriverError> {
    for a in applied {
        let (version, _) = a.split_once(' ').unwrap_or((a, ""));
        match files.iter().find(|f| f.split_once(' ').map(|x| x.0) == Some(version)) {
            Some(f) if f == a => {}
            Some(f) => {
                return Err(DriverError::new(format!(
                    "migration {version} was edited after it was applied: the database has `{a}`, the file is now `{f}`. \
                     Restore the file as it was applied and put the change in a new migration"
                )))
            }
            None => {
                return Err(DriverError::new(format!(
                    "migration `{a}` is applied in the database but its file is gone from the migrations directory; restore it"
                )))
            }
        }
    }
    Ok(())
}

async fn observe(cx: &Context, props: &Map<String, Json>) -> Result<Observed, DriverError> {
    let pool = connect(cx, props).await?;
    let (done, failed) = applied(&pool).await?;
    pool.close().await;
    let mut attrs = Map::new();
    let id = describe_target(props);
    attrs.insert("id".into(), Json::String(id.clone()));
    attrs.insert(
        "migrations".into(),
        Json::Array(done.into_iter().map(Json::String).collect()),
    );
    attrs.insert(
        "failed".into(),
        failed.map(Json::String).unwrap_or(Json::Null),
    );
    Ok(Observed {
        address: None,
        owner: None,
        id,
        attrs,
    })
}

/// Applies every pending migration, in order. On failure the migrations
/// before it stay applied, the failing one is rolled back, and the error
/// names it.
async fn run(cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
    let dir = resolve_dir(&cx.base_dir, want.props);
    let files = file_labels(&dir).map_err(DriverError::new)?;
    let pool = connect(cx, want.props).await?;
    let (done, _) = applied(&pool).await?;
    check_divergence(&files, &done)?;
    let m = migrator(&dir).await?;
    let result = m.run(&pool).await;
    let outcome = match result {
        Ok(()) => None,
        Err(e) => {
            // Which one: the first file not applied after the attempt.
            let (now, _) = applied(&pool).await?;
            let failing = files
                .iter()
                .find(|f| !now.contains(f))
                .cloned()
                .unwrap_or_default();
            Some(format!(
                "migration `{failing}` failed and was rolled back: {e}"
            ))
        }
    };
    pool.close().await;
    let mut observed = observe(cx, want.props).await?;
    match outcome {
        None => Ok(observed),
        Some(msg) => {
            let which = msg.split('`').nth(1).unwrap_or_default().to_string();
            observed.attrs.insert("failed".into(), Json::String(which));
            Err(DriverError::new(msg).with_partial(observed))
        }
    }
}

#[async_trait::async_trait]
impl Driver for Migrations {
    fn dumps(&self) -> Option<&dyn Dumps> {
        Some(self)
    }

    fn roles(&self) -> &'static [ralph_core::driver::capability::Role] {
        &[ralph_core::driver::capability::Role::Schema]
    }

    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    fn normalize(&self, base_dir: &Path, props: &mut Map<String, Json>) -> Result<(), String> {
        let dir = resolve_dir(base_dir, props);
        let labels = file_labels(&dir)?;
        props.insert(
            "migrations".into(),
            Json::Array(labels.into_iter().map(Json::String).collect()),
        );
        Ok(())
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let mut out = Vec::new();
        for k in known.iter().filter(|k| !k.inputs.is_empty()) {
            let mut o = observe(cx, &k.inputs).await?;
            // Refuse edited files at plan time already.
            let files =
                file_labels(&resolve_dir(&cx.base_dir, &k.inputs)).map_err(DriverError::new)?;
            let done: Vec<String> = o
                .attrs
                .get("migrations")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            check_divergence(&files, &done)?;
            o.id = k.id.clone();
            out.push(o);
        }
        Ok(out)
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        run(cx, want).await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, .. } = u;
        run(cx, want).await
    }

    async fn delete(&self, _cx: &Context, _d: Delete<'_>) -> Result<(), DriverError> {
        // The schema lives and dies with its database; forgetting the
        // resource never drops tables.
        Ok(())
    }
}

/// One migration file and where it stands in the database.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationStatus {
    pub migration: String,
    /// `applied`, `pending`, `edited` (applied, but the file changed since),
    /// or `missing` (applied, but the file is gone).
    pub status: &'static str,
}

/// Every migration of `props`' directory against the database.
pub async fn status(
    cx: &Context,
    props: &Map<String, Json>,
) -> Result<Vec<MigrationStatus>, DriverError> {
    let files = file_labels(&resolve_dir(&cx.base_dir, props)).map_err(DriverError::new)?;
    let pool = connect(cx, props).await?;
    let (done, _) = applied(&pool).await?;
    pool.close().await;
    let version = |l: &str| {
        l.split_once(' ')
            .map(|x| x.0.to_string())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for f in &files {
        let status = if done.contains(f) {
            "applied"
        } else if done.iter().any(|d| version(d) == version(f)) {
            "edited"
        } else {
            "pending"
        };
        out.push(MigrationStatus {
            migration: f.clone(),
            status,
        });
    }
    for d in done
        .iter()
        .filter(|d| !files.iter().any(|f| version(f) == version(d)))
    {
        out.push(MigrationStatus {
            migration: d.clone(),
            status: "missing",
        });
    }
    Ok(out)
}

/// The schema's database dumped with pg_dump and restored with pg_restore
/// (`super::backup`), each table checked against the manifest.
#[async_trait::async_trait]
impl Dumps for Migrations {
    async fn database(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
    ) -> Result<String, DriverError> {
        Ok(super::resolve(cx, props).await?.database())
    }

    async fn exists(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
        database: &str,
    ) -> Result<bool, DriverError> {
        let target = super::resolve(cx, props).await?;
        super::backup::exists(&target, database).await
    }

    async fn dump(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
        store: &dyn ObjectStore,
        bucket: &str,
        key: &str,
    ) -> Result<Manifest, DriverError> {
        let target = super::resolve(cx, props).await?;
        super::backup::dump(cx, store, &target, bucket, key).await
    }

    async fn restore(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
        store: &dyn ObjectStore,
        bucket: &str,
        key: &str,
        database: &str,
    ) -> Result<Vec<TableSum>, DriverError> {
        let target = super::resolve(cx, props).await?;
        super::backup::restore(cx, store, &target, bucket, key, database).await
    }

    async fn discard(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
        database: &str,
    ) -> Result<(), DriverError> {
        let target = super::resolve(cx, props).await?;
        super::backup::discard(&target, database).await
    }
}
