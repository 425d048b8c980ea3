//! State in an S3 bucket: `s3://bucket/prefix` keeps, per stack and
//! environment, `state.json` (written compare-and-swap with `If-Match` on
//! the ETag this run read, or `If-None-Match: *` when there was none, so a
//! writer that lost its lock can never overwrite a newer state; turn on the
//! bucket's versioning to keep every serial), `lock.json` (created with
//! `If-None-Match: *`, holding owner, operation, host and a lease expiry
//! that the holder renews while it runs; an expired lease is taken over
//! with a warning naming the old holder, a live one never), the
//! before-command `snapshots/`, one object per open intent under
//! `intents/`, and one per resource result under `results/` (named by the
//! serial it follows and the time it was written, so a listing is in the
//! order written; `read` replays them over `state.json`). Credentials and the endpoint come from the standard AWS
//! chain (`AWS_PROFILE`, `AWS_ENDPOINT_URL`, ...), never from the stack.

use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Intent, LockHeld, LockInfo, Snapshot, State, StateError};

pub struct S3Backend {
    sealer: std::sync::Arc<super::codec::Sealer>,
    bucket: String,
    /// `prefix/stack/environment`, no trailing slash.
    base: String,
    region: Option<String>,
    client: tokio::sync::OnceCell<aws_sdk_s3::Client>,
    /// The ETag of the state this run read or wrote (`Some(None)`: read, absent).
    seen: Mutex<Option<Option<String>>>,
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    lease: Duration,
}

/// The lock object's content.
#[derive(Serialize, Deserialize)]
struct LeasedLock {
    #[serde(flatten)]
    info: LockInfo,
    expires_at: DateTime<Utc>,
}

pub fn is_s3_url(s: &str) -> bool {
    s.starts_with("s3://")
}

impl S3Backend {
    pub fn new(
        url: &str,
        stack: &str,
        environment: &str,
        region: Option<String>,
        sealer: std::sync::Arc<super::codec::Sealer>,
    ) -> Result<S3Backend, StateError> {
        let rest = url.trim_start_matches("s3://");
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StateError::Io {
                path: url.to_string(),
                error: std::io::Error::other("write it as s3://bucket or s3://bucket/prefix"),
            });
        }
        let prefix = prefix.trim_matches('/');
        let base = if prefix.is_empty() {
            format!("{stack}/{environment}")
        } else {
            format!("{prefix}/{stack}/{environment}")
        };
        Ok(S3Backend {
            bucket: bucket.to_string(),
            sealer,
            base,
            region,
            client: tokio::sync::OnceCell::new(),
            seen: Mutex::new(None),
            renewer: Mutex::new(None),
            lease: std::env::var("RALPH_DEPLOY_LOCK_LEASE_SECONDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(super::postgres::LEASE),
        })
    }

    async fn s3(&self) -> &aws_sdk_s3::Client {
        self.client
            .get_or_init(|| async {
                let config = super::aws_sdk_config(self.region.as_deref()).await;
                let custom = std::env::var("AWS_ENDPOINT_URL").is_ok_and(|e| !e.is_empty());
                aws_sdk_s3::Client::from_conf(
                    aws_sdk_s3::config::Builder::from(&config)
                        .force_path_style(custom)
                        .build(),
                )
            })
            .await
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    fn target(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.base)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> StateError {
        StateError::Io {
            path: self.target(),
            error: std::io::Error::other(format!("{what}: {e}")),
        }
    }

    /// (body, etag) of an object; `None` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Option<String>)>, StateError> {
        match self
            .s3()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let etag = out.e_tag().map(str::to_string);
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| self.err("reading", e))?
                    .into_bytes()
                    .to_vec();
                Ok(Some((body, etag)))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(self.err(
                &format!("GetObject {key}"),
                aws_sdk_s3::error::DisplayErrorContext(e),
            )),
        }
    }

    /// Puts an object; `if_match`: only over that ETag; `if_none`: only
    /// if absent. `Ok(None)`: the precondition failed.
    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        if_match: Option<&str>,
        if_none: bool,
    ) -> Result<Option<String>, StateError> {
        let mut req = self
            .s3()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body));
        if let Some(etag) = if_match {
            req = req.if_match(etag);
        }
        if if_none {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_string())),
            Err(e)
                if e.raw_response()
                    .is_some_and(|r| r.status().as_u16() == 412 || r.status().as_u16() == 409) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.err(
                &format!("PutObject {key}"),
                aws_sdk_s3::error::DisplayErrorContext(e),
            )),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.s3()
            .await
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                self.err(
                    &format!("DeleteObject {key}"),
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, DateTime<Utc>)>, StateError> {
        let mut out = Vec::new();
        let mut pages = self
            .s3()
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.key(prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                self.err("ListObjectsV2", aws_sdk_s3::error::DisplayErrorContext(e))
            })?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    let at = o
                        .last_modified()
                        .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
                        .unwrap_or_default();
                    out.push((k.to_string(), at));
                }
            }
        }
        Ok(out)
    }

    async fn decode(&self, body: &[u8], what: &str) -> Result<State, StateError> {
        let plain = self
            .sealer
            .open(body)
            .await
            .map_err(|m| self.err(what, m))?;
        super::parse_state(
            &plain,
            &format!("{} {what}", self.target()),
            "the bucket's object versions",
        )
    }

    /// A journaled result (`None`: gone meanwhile).
    async fn result_at(&self, key: String) -> Result<Option<super::Entry>, StateError> {
        let Some((body, _)) = self.get(&key).await? else {
            return Ok(None);
        };
        let plain = self
            .sealer
            .open(&body)
            .await
            .map_err(|m| self.err(&key, m))?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| self.err(&key, e))
    }

    fn lock_body(&self, info: &LockInfo) -> Result<Vec<u8>, StateError> {
        let lease = chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(60));
        serde_json::to_vec(&LeasedLock {
            info: info.clone(),
            expires_at: Utc::now() + lease,
        })
        .map_err(|e| self.err("lock", e))
    }

    fn start_renewing(&self, info: LockInfo, mut etag: String) {
        let client = self.client.get().cloned();
        let Some(client) = client else { return };
        let (bucket, key, lease) = (self.bucket.clone(), self.key("lock.json"), self.lease);
        let lease_c = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
        let handle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let Ok(body) = serde_json::to_vec(&LeasedLock {
                    info: info.clone(),
                    expires_at: Utc::now() + lease_c,
                }) else {
                    return;
                };
                match client
                    .put_object()
                    .bucket(&bucket)
                    .key(&key)
                    .if_match(&etag)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                {
                    Ok(out) => etag = out.e_tag().unwrap_or_default().to_string(),
                    // Taken over (or gone): the next state write is refused
                    // by its own precondition.
                    Err(_) => return,
                }
            }
        });
        if let Ok(mut r) = self.renewer.lock() {
            if let Some(old) = r.replace(handle) {
                old.abort();
            }
        }
    }

    fn stop_renewing(&self) {
        if let Ok(mut r) = self.renewer.lock() {
            if let Some(h) = r.take() {
                h.abort();
            }
        }
    }
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        self.stop_renewing();
    }
}

#[async_trait::async_trait]
impl super::StateStore for S3Backend {
    async fn read(&self) -> Result<Option<State>, StateError> {
        let got = self.get(&self.key("state.json")).await?;
        let (state, etag) = match got {
            Some((body, etag)) => (Some(self.decode(&body, "state.json").await?), etag),
            None => (None, None),
        };
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(etag);
        }
        let Some(mut state) = state else {
            return Ok(None);
        };
        let results = super::Journal::results(self).await?;
        super::replay(&mut state, &results);
        Ok(Some(state))
    }

    async fn write(&self, state: &State) -> Result<(), StateError> {
        let body = self.sealer.seal_state(state).await;
        let body = body.map_err(|m| self.err("state", m))?;
        let seen = self.seen.lock().ok().and_then(|s| s.clone());
        let seen = match seen {
            Some(s) => s,
            // Never read in this run: find out what is there first.
            None => self
                .get(&self.key("state.json"))
                .await?
                .and_then(|(_, e)| e),
        };
        let written = self
            .put(
                &self.key("state.json"),
                body,
                seen.as_deref(),
                seen.is_none(),
            )
            .await?;
        match written {
            Some(etag) => {
                if let Ok(mut s) = self.seen.lock() {
                    *s = Some(Some(etag));
                }
                Ok(())
            }
            None => Err(self.err(
                "state.json",
                format!(
                    "refusing to write serial {}: the state changed since this run read it (another run wrote it: its lock was taken over, or the state was pushed); nothing was overwritten",
                    state.serial
                ),
            )),
        }
    }

    fn describe(&self) -> String {
        self.target()
    }

    async fn snapshot_before(&self, operation: &str) -> Result<Option<String>, StateError> {
        let Some((body, _)) = self.get(&self.key("state.json")).await? else {
            return Ok(None);
        };
        let serial = self.decode(&body, "state.json").await?.serial;
        let op: String = operation
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let name = format!(
            "{}-serial{serial}-before-{op}",
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        );
        self.put(
            &self.key(&format!("snapshots/{name}.json")),
            body,
            None,
            false,
        )
        .await?;
        let mut all = self.list("snapshots/").await?;
        all.sort();
        while all.len() > 30 {
            let (k, _) = all.remove(0);
            self.delete(&k).await?;
        }
        Ok(Some(name))
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>, StateError> {
        let mut names: Vec<String> = self
            .list("snapshots/")
            .await?
            .into_iter()
            .filter_map(|(k, _)| {
                k.rsplit('/')
                    .next()
                    .map(|n| n.trim_end_matches(".json").to_string())
            })
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| {
                let (taken_at, rest) = name.split_once("-serial").unwrap_or((&name, ""));
                let (serial, operation) = rest.split_once("-before-").unwrap_or((rest, ""));
                Snapshot {
                    taken_at: taken_at.to_string(),
                    serial: serial.parse().unwrap_or(0),
                    operation: operation.to_string(),
                    name: name.clone(),
                }
            })
            .collect())
    }

    async fn put_snapshot(
        &self,
        name: &str,
        _operation: &str,
        state: &State,
    ) -> Result<(), StateError> {
        let body = self.sealer.seal_state(state).await;
        let body = body.map_err(|m| self.err("snapshot", m))?;
        self.put(
            &self.key(&format!("snapshots/{name}.json")),
            body,
            None,
            false,
        )
        .await?;
        Ok(())
    }

    async fn read_snapshot(&self, which: &str) -> Result<State, StateError> {
        let list = self.snapshots().await?;
        let found = list
            .iter()
            .rev()
            .find(|s| s.name == which || s.serial.to_string() == which)
            .ok_or_else(|| {
                self.err(
                    "snapshots",
                    format!("no snapshot named or with serial `{which}`; `ralph-deploy state snapshots` lists them"),
                )
            })?;
        let key = self.key(&format!("snapshots/{}.json", found.name));
        let (body, _) = self
            .get(&key)
            .await?
            .ok_or_else(|| self.err("snapshots", format!("{key} vanished")))?;
        self.decode(&body, &found.name).await
    }
}

#[async_trait::async_trait]
impl super::Locker for S3Backend {
    async fn lock(&self, info: &LockInfo) -> Result<Option<LockInfo>, StateError> {
        let key = self.key("lock.json");
        let body = self.lock_body(info)?;
        if let Some(etag) = self.put(&key, body.clone(), None, true).await? {
            self.start_renewing(info.clone(), etag);
            return Ok(None);
        }
        // Held: by whom, and is the lease still running?
        let Some((held, etag)) = self.get(&key).await? else {
            // Released in between: try once more.
            return match self.put(&key, body, None, true).await? {
                Some(etag) => {
                    self.start_renewing(info.clone(), etag);
                    Ok(None)
                }
                None => Err(self.err("lock.json", "the lock is contended; try again")),
            };
        };
        let holder: LeasedLock =
            serde_json::from_slice(&held).map_err(|e| self.err("lock.json", e))?;
        if holder.expires_at > Utc::now() && !holder.info.holder_is_dead() {
            return Err(StateError::Locked(Box::new(LockHeld {
                target: self.target(),
                holder: holder.info,
            })));
        }
        // Expired: take it over, only if nobody else did first.
        match self.put(&key, body, etag.as_deref(), false).await? {
            Some(new_etag) => {
                self.start_renewing(info.clone(), new_etag);
                Ok(Some(holder.info))
            }
            None => Err(self.err(
                "lock.json",
                "another run took over the expired lock first; try again",
            )),
        }
    }

    async fn unlock(&self, info: &LockInfo) -> Result<(), StateError> {
        self.stop_renewing();
        let key = self.key("lock.json");
        let Some((held, _)) = self.get(&key).await? else {
            return Err(StateError::NotLocked(self.target()));
        };
        let holder: LeasedLock =
            serde_json::from_slice(&held).map_err(|e| self.err("lock.json", e))?;
        if holder.info.id != info.id {
            return Err(StateError::WrongLock {
                target: self.target(),
                holder: holder.info.id,
                wanted: info.id.clone(),
            });
        }
        self.delete(&key).await
    }

    async fn holder(&self) -> Result<Option<LockInfo>, StateError> {
        let Some((held, _)) = self.get(&self.key("lock.json")).await? else {
            return Ok(None);
        };
        let holder: LeasedLock =
            serde_json::from_slice(&held).map_err(|e| self.err("lock.json", e))?;
        Ok(Some(holder.info))
    }

    async fn force_unlock(&self, id: &str) -> Result<LockInfo, StateError> {
        let Some(holder) = self.holder().await? else {
            return Err(StateError::NotLocked(self.target()));
        };
        if holder.id != id {
            return Err(StateError::WrongLock {
                target: self.target(),
                holder: holder.id,
                wanted: id.to_string(),
            });
        }
        self.delete(&self.key("lock.json")).await?;
        Ok(holder)
    }
}

#[async_trait::async_trait]
impl super::Journal for S3Backend {
    async fn open_intent(&self, intent: &Intent) -> Result<(), StateError> {
        let body = self.sealer.seal_record(intent).await;
        let body = body.map_err(|m| self.err("intent", m))?;
        self.put(
            &self.key(&format!("intents/{}.json", intent.id)),
            body,
            None,
            false,
        )
        .await?;
        Ok(())
    }

    async fn close_intent(&self, id: &str) -> Result<(), StateError> {
        self.delete(&self.key(&format!("intents/{id}.json"))).await
    }

    async fn open_intents(&self) -> Result<Vec<Intent>, StateError> {
        let mut out = Vec::new();
        for (key, _) in self.list("intents/").await? {
            if let Some((body, _)) = self.get(&key).await? {
                let plain = self
                    .sealer
                    .open(&body)
                    .await
                    .map_err(|m| self.err(&key, m))?;
                out.push(serde_json::from_slice::<Intent>(&plain).map_err(|e| self.err(&key, e))?);
            }
        }
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        Ok(out)
    }

    async fn compact(&self) -> Result<(), StateError> {
        Ok(())
    }

    async fn record_result(&self, entry: &super::Entry) -> Result<(), StateError> {
        let body = self.sealer.seal_record(entry).await;
        let body = body.map_err(|m| self.err("result", m))?;
        let at = Utc::now();
        let key = self.key(&format!(
            "results/{:012}-{:020}-{}.json",
            entry.since,
            at.timestamp_nanos_opt().unwrap_or_default(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        self.put(&key, body, None, false).await?;
        // The result is durable first: a crash between the two leaves an
        // open intent whose address the state holds, which recovery closes.
        if let Some(id) = &entry.closes {
            self.close_intent(id).await?;
        }
        Ok(())
    }

    async fn results(&self) -> Result<Vec<super::Entry>, StateError> {
        use futures::StreamExt;
        let mut keys: Vec<String> = self
            .list("results/")
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.sort();
        let bodies: Vec<Result<Option<super::Entry>, StateError>> =
            futures::stream::iter(keys.into_iter().map(|key| self.result_at(key)))
                .buffered(16)
                .collect()
                .await;
        bodies.into_iter().filter_map(Result::transpose).collect()
    }

    async fn forget_results(&self, serial: u64) -> Result<(), StateError> {
        let held: Vec<String> = self
            .list("results/")
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| {
                k.rsplit('/')
                    .next()
                    .and_then(|name| name.split('-').next())
                    .and_then(|since| since.parse::<u64>().ok())
                    .is_some_and(|since| since < serial)
            })
            .collect();
        for chunk in held.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|k| {
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key(k)
                        .build()
                        .map_err(|e| self.err("DeleteObjects", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let delete = aws_sdk_s3::types::Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| self.err("DeleteObjects", e))?;
            self.s3()
                .await
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| {
                    self.err("DeleteObjects", aws_sdk_s3::error::DisplayErrorContext(e))
                })?;
        }
        Ok(())
    }
}
