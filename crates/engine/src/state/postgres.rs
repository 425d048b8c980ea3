//! State in PostgreSQL, for CI runners that share a store: one row per
//! serial (history is every serial written), a head row per stack and
//! environment that writes compare-and-swap (a writer that lost its lock
//! can never overwrite a newer state), a lock row with a lease that the
//! holder renews while it runs (an expired lease is taken over with a
//! warning naming the old holder, a live one never), and the intent
//! journal as rows. Tables are created on first use in schema
//! `ralph_deploy`.
//!
//! Select it with `--state postgres://user@host/db` or
//! `RALPH_DEPLOY_STATE`; the password comes from `PGPASSWORD` (or the URL),
//! never from the stack file.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;

use super::{Intent, LockHeld, LockInfo, Snapshot, State, StateError};

/// How long a lock lives without renewal: a runner that vanished (a lost
/// CI machine) blocks others at most this long.
pub const LEASE: Duration = Duration::from_secs(60);
/// History rows kept per stack and environment (the newest).
const HISTORY: i64 = 100;
/// Before-command snapshots kept.
const SNAPSHOTS: i64 = 30;

pub struct PostgresBackend {
    sealer: std::sync::Arc<super::codec::Sealer>,
    pool: PgPool,
    stack: String,
    environment: String,
    url_shown: String,
    ready: tokio::sync::OnceCell<()>,
    /// The serial this process last read or wrote: a write from any other
    /// starting point is refused.
    seen: Mutex<Option<u64>>,
    /// Renews the lease of the lock this process holds.
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    lease: Duration,
}

impl PostgresBackend {
    /// A backend over `url` (no connection is made until first use).
    pub fn new(
        url: &str,
        stack: &str,
        environment: &str,
        sealer: Arc<super::codec::Sealer>,
    ) -> Result<PostgresBackend, StateError> {
        let options: PgConnectOptions = url.parse().map_err(|e| StateError::Io {
            path: shown(url),
            error: std::io::Error::other(format!("not a PostgreSQL URL: {e}")),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ralph_core::remote::api_timeout())
            .connect_lazy_with(options);
        Ok(PostgresBackend {
            pool,
            stack: stack.to_string(),
            environment: environment.to_string(),
            url_shown: shown(url),
            sealer,
            ready: tokio::sync::OnceCell::new(),
            seen: Mutex::new(None),
            renewer: Mutex::new(None),
            lease: std::env::var("RALPH_DEPLOY_LOCK_LEASE_SECONDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(LEASE),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StateError {
        let text = e.to_string();
        // sqlx says only "pool timed out while waiting for an open
        // connection": name the server and the setting.
        let text = if text.contains("timed out") {
            ralph_core::remote::no_answer(
                ralph_core::remote::Party::Postgres,
                &self.url_shown,
                "the state store",
            )
        } else {
            text
        };
        StateError::Io {
            path: self.describe_target(),
            error: std::io::Error::other(text),
        }
    }

    /// The sealed JSON bodies `sql` selects for this stack and environment
    /// (bound as $1 and $2), opened and parsed, in the order selected.
    async fn bodies<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
    ) -> Result<Vec<T>, StateError> {
        let rows = self
            .scoped(sql)
            .fetch_all(self.pool().await?)
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let plain = self
                .sealer
                .open(r.get::<Vec<u8>, _>("body").as_slice())
                .await
                .map_err(|m| self.err(m))?;
            out.push(serde_json::from_slice(&plain).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    fn describe_target(&self) -> String {
        format!(
            "{} (stack {}, environment {})",
            self.url_shown, self.stack, self.environment
        )
    }

    /// A statement about this stack and environment: they are bound as $1
    /// and $2, the rest follow.
    fn scoped<'q>(
        &'q self,
        sql: &'q str,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(sql).bind(&self.stack).bind(&self.environment)
    }

    async fn pool(&self) -> Result<&PgPool, StateError> {
        self.ready
            .get_or_try_init(|| async {
                // One creator at a time, however many runners start at once.
                // The first contact says so when the server is slow.
                let mut tx = ralph_core::remote::bounded(
                    ralph_core::remote::Party::Postgres,
                    &self.url_shown,
                    "opening the state store",
                    self.pool.begin(),
                )
                .await
                .map_err(|e| self.err(e))?
                .map_err(|e| self.err(e))?;
                sqlx::query("SELECT pg_advisory_xact_lock(7203118541)")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                for ddl in SCHEMA {
                    sqlx::query(ddl)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.err(e))?;
                }
                tx.commit().await.map_err(|e| self.err(e))?;
                Ok::<(), StateError>(())
            })
            .await?;
        Ok(&self.pool)
    }

    async fn decode(&self, body: &[u8], what: &str) -> Result<State, StateError> {
        let plain = self
            .sealer
            .open(body)
            .await
            .map_err(|m| self.err(format!("{what}: {m}")))?;
        super::parse_state(
            &plain,
            &format!("{} {what}", self.describe_target()),
            "the history rows (ralph_deploy.states)",
        )
    }

    /// The state at `serial` from the history.
    pub async fn read_serial(&self, serial: u64) -> Result<State, StateError> {
        let pool = self.pool().await?;
        let row = self.scoped("SELECT body FROM ralph_deploy.states WHERE stack = $1 AND environment = $2 AND serial = $3")
        .bind(serial as i64)
        .fetch_optional(pool)
        .await
        .map_err(|e| self.err(e))?
        .ok_or_else(|| self.err(format!("no state with serial {serial} in the history")))?;
        self.decode(
            row.get::<Vec<u8>, _>("body").as_slice(),
            &format!("serial {serial}"),
        )
        .await
    }

    /// The current state's row (body and serial), through the head row.
    async fn current_row(
        &self,
        pool: &PgPool,
    ) -> Result<Option<sqlx::postgres::PgRow>, StateError> {
        self.scoped(
            "SELECT s.body, s.serial FROM ralph_deploy.heads h JOIN ralph_deploy.states s \
             ON s.stack = h.stack AND s.environment = h.environment AND s.serial = h.serial \
             WHERE h.stack = $1 AND h.environment = $2",
        )
        .fetch_optional(pool)
        .await
        .map_err(|e| self.err(e))
    }

    fn start_renewing(&self, id: String) {
        let pool = self.pool.clone();
        let (stack, env, lease) = (self.stack.clone(), self.environment.clone(), self.lease);
        let handle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let r = sqlx::query(
                    "UPDATE ralph_deploy.locks SET expires_at = now() + make_interval(secs => $4) \
                     WHERE stack = $1 AND environment = $2 AND id = $3",
                )
                .bind(&stack)
                .bind(&env)
                .bind(&id)
                .bind(lease.as_secs_f64())
                .execute(&pool)
                .await;
                if matches!(r, Ok(ref done) if done.rows_affected() == 0) {
                    // Taken over: the next write is refused by the serial check.
                    return;
                }
            }
        });
        if let Ok(mut r) = self.renewer.lock() {
            if let Some(old) = r.replace(handle) {
                old.abort();
            }
        }
    }
}

const SCHEMA: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS ralph_deploy",
    "CREATE TABLE IF NOT EXISTS ralph_deploy.heads (
        stack text NOT NULL, environment text NOT NULL,
        serial bigint NOT NULL, lineage text NOT NULL,
        written_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (stack, environment))",
    "CREATE TABLE IF NOT EXISTS ralph_deploy.states (
        stack text NOT NULL, environment text NOT NULL, serial bigint NOT NULL,
        body bytea NOT NULL, written_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (stack, environment, serial))",
    "CREATE TABLE IF NOT EXISTS ralph_deploy.snapshots (
        stack text NOT NULL, environment text NOT NULL, name text NOT NULL,
        operation text NOT NULL, serial bigint NOT NULL, body bytea NOT NULL,
        taken_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (stack, environment, name))",
    "CREATE TABLE IF NOT EXISTS ralph_deploy.locks (
        stack text NOT NULL, environment text NOT NULL, id text NOT NULL,
        info jsonb NOT NULL, expires_at timestamptz NOT NULL,
        PRIMARY KEY (stack, environment))",
    "CREATE TABLE IF NOT EXISTS ralph_deploy.intents (
        stack text NOT NULL, environment text NOT NULL, id text NOT NULL,
        body bytea NOT NULL, opened_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (stack, environment, id))",
    "CREATE TABLE IF NOT EXISTS ralph_deploy.results (
        stack text NOT NULL, environment text NOT NULL, seq bigserial NOT NULL,
        since bigint NOT NULL, body bytea NOT NULL,
        written_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (stack, environment, seq))",
];

/// The URL without its password, for messages.
fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}@{host}")
            }
            None => format!("{scheme}://{rest}"),
        },
        None => "a PostgreSQL database".into(),
    }
}

#[async_trait::async_trait]
impl super::StateStore for PostgresBackend {
    async fn read(&self) -> Result<Option<State>, StateError> {
        let pool = self.pool().await?;
        let row = self.current_row(pool).await?;
        let Some(row) = row else {
            if let Ok(mut s) = self.seen.lock() {
                *s = Some(0);
            }
            return Ok(None);
        };
        let state = self
            .decode(
                row.get::<Vec<u8>, _>("body").as_slice(),
                "the current state",
            )
            .await?;
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(state.serial);
        }
        let mut state = state;
        let results = super::Journal::results(self).await?;
        super::replay(&mut state, &results);
        Ok(Some(state))
    }

    async fn write(&self, state: &State) -> Result<(), StateError> {
        let pool = self.pool().await?;
        let body = self
            .sealer
            .seal_state(state)
            .await
            .map_err(|m| self.err(m))?;
        let mut tx = pool.begin().await.map_err(|e| self.err(e))?;
        let head = self.scoped("SELECT serial, lineage FROM ralph_deploy.heads WHERE stack = $1 AND environment = $2 FOR UPDATE")
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        let seen = self.seen.lock().ok().and_then(|s| *s);
        if let Some(head) = &head {
            let (serial, lineage): (i64, String) = (head.get("serial"), head.get("lineage"));
            if lineage != state.lineage {
                return Err(self.err(format!(
                    "refusing to write: the stored state has lineage {lineage}, this one {}",
                    state.lineage
                )));
            }
            if Some(serial as u64) != seen || state.serial <= serial as u64 {
                return Err(self.err(format!(
                    "refusing to write serial {}: another run wrote serial {serial} since this one read serial {} (its lock was taken over, or the state was pushed); nothing was overwritten",
                    state.serial,
                    seen.map(|s| s.to_string()).unwrap_or_else(|| "none".into())
                )));
            }
        } else if seen.is_some_and(|s| s != 0) {
            return Err(
                self.err("refusing to write: the state this run read is gone from the store")
            );
        }
        self.scoped("INSERT INTO ralph_deploy.states (stack, environment, serial, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (stack, environment, serial) DO UPDATE SET body = EXCLUDED.body, written_at = now()")
        .bind(state.serial as i64)
        .bind(&body)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        self.scoped("INSERT INTO ralph_deploy.heads (stack, environment, serial, lineage) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (stack, environment) DO UPDATE SET serial = EXCLUDED.serial, lineage = EXCLUDED.lineage, written_at = now()")
        .bind(state.serial as i64)
        .bind(&state.lineage)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        self.scoped("DELETE FROM ralph_deploy.states WHERE stack = $1 AND environment = $2 AND serial <= $3 - $4")
        .bind(state.serial as i64)
        .bind(HISTORY)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(state.serial);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.describe_target()
    }

    async fn snapshot_before(&self, operation: &str) -> Result<Option<String>, StateError> {
        let pool = self.pool().await?;
        let row = self.current_row(pool).await?;
        let Some(row) = row else { return Ok(None) };
        let serial: i64 = row.get("serial");
        let op: String = operation
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let name = format!(
            "{}-serial{serial}-before-{op}",
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        );
        self.scoped("INSERT INTO ralph_deploy.snapshots (stack, environment, name, operation, serial, body) \
             VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&name)
        .bind(operation)
        .bind(serial)
        .bind(row.get::<Vec<u8>, _>("body"))
        .execute(pool)
        .await
        .map_err(|e| self.err(e))?;
        self.scoped("DELETE FROM ralph_deploy.snapshots WHERE stack = $1 AND environment = $2 AND name NOT IN \
             (SELECT name FROM ralph_deploy.snapshots WHERE stack = $1 AND environment = $2 ORDER BY taken_at DESC, name DESC LIMIT $3)")
        .bind(SNAPSHOTS)
        .execute(pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(Some(name))
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>, StateError> {
        let pool = self.pool().await?;
        let rows = self
            .scoped(
                "SELECT name, operation, serial, taken_at FROM ralph_deploy.snapshots \
             WHERE stack = $1 AND environment = $2 ORDER BY name",
            )
            .fetch_all(pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| Snapshot {
                name: r.get("name"),
                operation: r.get("operation"),
                serial: r.get::<i64, _>("serial") as u64,
                taken_at: r
                    .get::<DateTime<Utc>, _>("taken_at")
                    .format("%Y%m%dT%H%M%S%.3fZ")
                    .to_string(),
            })
            .collect())
    }

    async fn put_snapshot(
        &self,
        name: &str,
        operation: &str,
        state: &State,
    ) -> Result<(), StateError> {
        let body = self
            .sealer
            .seal_state(state)
            .await
            .map_err(|m| self.err(m))?;
        self.scoped("INSERT INTO ralph_deploy.snapshots (stack, environment, name, operation, serial, body) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stack, environment, name) DO UPDATE SET body = EXCLUDED.body")
        .bind(name)
        .bind(operation)
        .bind(state.serial as i64)
        .bind(&body)
        .execute(self.pool().await?)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn read_snapshot(&self, which: &str) -> Result<State, StateError> {
        let pool = self.pool().await?;
        let row = self.scoped("SELECT body FROM ralph_deploy.snapshots WHERE stack = $1 AND environment = $2 \
             AND (name = $3 OR serial::text = $3) ORDER BY taken_at DESC LIMIT 1")
        .bind(which)
        .fetch_optional(pool)
        .await
        .map_err(|e| self.err(e))?
        .ok_or_else(|| {
            self.err(format!(
                "no snapshot named or with serial `{which}`; `ralph-deploy state snapshots` lists them"
            ))
        })?;
        self.decode(row.get::<Vec<u8>, _>("body").as_slice(), which)
            .await
    }
}

#[async_trait::async_trait]
impl super::Locker for PostgresBackend {
    async fn lock(&self, info: &LockInfo) -> Result<Option<LockInfo>, StateError> {
        let pool = self.pool().await?;
        let json = serde_json::to_value(info).map_err(|e| self.err(e))?;
        let mut tx = pool.begin().await.map_err(|e| self.err(e))?;
        // Creating the row is the lock: of two runs at once, exactly one
        // inserts (the other waits for it, then inserts nothing). A SELECT
        // ... FOR UPDATE alone would lock no row when there is none yet.
        let inserted = self
            .scoped(
                "INSERT INTO ralph_deploy.locks (stack, environment, id, info, expires_at) \
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) \
             ON CONFLICT (stack, environment) DO NOTHING",
            )
            .bind(&info.id)
            .bind(&json)
            .bind(self.lease.as_secs_f64())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?
            .rows_affected();
        if inserted == 1 {
            tx.commit().await.map_err(|e| self.err(e))?;
            self.start_renewing(info.id.clone());
            return Ok(None);
        }
        // Held: by whom, and is its lease still running? The row is locked
        // until this transaction ends, so no third run can slip in.
        let row = self
            .scoped(
                "SELECT info, expires_at < now() AS expired FROM ralph_deploy.locks \
             WHERE stack = $1 AND environment = $2 FOR UPDATE",
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let holder: LockInfo = serde_json::from_value(row.get("info")).map_err(|e| self.err(e))?;
        let expired: bool = row.get("expired");
        if !expired && !holder.holder_is_dead() {
            return Err(StateError::Locked(Box::new(LockHeld {
                target: self.describe_target(),
                holder,
            })));
        }
        self.scoped("UPDATE ralph_deploy.locks SET id = $3, info = $4, expires_at = now() + make_interval(secs => $5) \
             WHERE stack = $1 AND environment = $2")
        .bind(&info.id)
        .bind(&json)
        .bind(self.lease.as_secs_f64())
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        self.start_renewing(info.id.clone());
        Ok(Some(holder))
    }

    async fn unlock(&self, info: &LockInfo) -> Result<(), StateError> {
        if let Ok(mut r) = self.renewer.lock() {
            if let Some(h) = r.take() {
                h.abort();
            }
        }
        let pool = self.pool().await?;
        let done = self
            .scoped(
                "DELETE FROM ralph_deploy.locks WHERE stack = $1 AND environment = $2 AND id = $3",
            )
            .bind(&info.id)
            .execute(pool)
            .await
            .map_err(|e| self.err(e))?;
        if done.rows_affected() == 0 {
            return Err(StateError::NotLocked(self.describe_target()));
        }
        Ok(())
    }

    async fn holder(&self) -> Result<Option<LockInfo>, StateError> {
        let pool = self.pool().await?;
        let row = self
            .scoped("SELECT info FROM ralph_deploy.locks WHERE stack = $1 AND environment = $2")
            .fetch_optional(pool)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| serde_json::from_value(r.get("info")).map_err(|e| self.err(e)))
            .transpose()
    }

    async fn force_unlock(&self, id: &str) -> Result<LockInfo, StateError> {
        let Some(holder) = self.holder().await? else {
            return Err(StateError::NotLocked(self.describe_target()));
        };
        if holder.id != id {
            return Err(StateError::WrongLock {
                target: self.describe_target(),
                holder: holder.id,
                wanted: id.to_string(),
            });
        }
        self.scoped(
            "DELETE FROM ralph_deploy.locks WHERE stack = $1 AND environment = $2 AND id = $3",
        )
        .bind(id)
        .execute(self.pool().await?)
        .await
        .map_err(|e| self.err(e))?;
        Ok(holder)
    }
}

#[async_trait::async_trait]
impl super::Journal for PostgresBackend {
    async fn open_intent(&self, intent: &Intent) -> Result<(), StateError> {
        let body = self
            .sealer
            .seal_record(intent)
            .await
            .map_err(|m| self.err(m))?;
        self.scoped("INSERT INTO ralph_deploy.intents (stack, environment, id, body) VALUES ($1, $2, $3, $4)")
        .bind(&intent.id)
        .bind(&body)
        .execute(self.pool().await?)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn close_intent(&self, id: &str) -> Result<(), StateError> {
        self.scoped(
            "DELETE FROM ralph_deploy.intents WHERE stack = $1 AND environment = $2 AND id = $3",
        )
        .bind(id)
        .execute(self.pool().await?)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn open_intents(&self) -> Result<Vec<Intent>, StateError> {
        self.bodies(
            "SELECT body FROM ralph_deploy.intents WHERE stack = $1 AND environment = $2 ORDER BY opened_at, id",
        )
        .await
    }

    async fn compact(&self) -> Result<(), StateError> {
        // Closed intents are deleted when closed.
        Ok(())
    }

    async fn record_result(&self, entry: &super::Entry) -> Result<(), StateError> {
        let body = self
            .sealer
            .seal_record(entry)
            .await
            .map_err(|m| self.err(m))?;
        // The result and the closing of its intent in one transaction.
        let mut tx = self.pool().await?.begin().await.map_err(|e| self.err(e))?;
        self.scoped("INSERT INTO ralph_deploy.results (stack, environment, since, body) VALUES ($1, $2, $3, $4)")
        .bind(entry.since as i64)
        .bind(&body)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        if let Some(id) = &entry.closes {
            self.scoped("DELETE FROM ralph_deploy.intents WHERE stack = $1 AND environment = $2 AND id = $3")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    async fn results(&self) -> Result<Vec<super::Entry>, StateError> {
        self.bodies(
            "SELECT body FROM ralph_deploy.results WHERE stack = $1 AND environment = $2 ORDER BY seq",
        )
        .await
    }

    async fn forget_results(&self, serial: u64) -> Result<(), StateError> {
        self.scoped(
            "DELETE FROM ralph_deploy.results WHERE stack = $1 AND environment = $2 AND since < $3",
        )
        .bind(serial as i64)
        .execute(self.pool().await?)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        if let Ok(mut r) = self.renewer.lock() {
            if let Some(h) = r.take() {
                h.abort();
            }
        }
    }
}

/// Shared between the backend and tests: the kind of store a URL names.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

#[allow(dead_code)]
fn _assert_send_sync(b: Arc<PostgresBackend>) -> Arc<dyn super::Backend> {
    b
}
