//! The fakes' buckets and database dumps: objects kept in the fake cloud
//! (an upload visible only once finished), and a database server whose
//! databases are lists of table sums. Every call that changes something is
//! a mutating call of the fake cloud, so the kill switch can fall between
//! any two steps of a backup or a restore.

use bytes::Bytes;
use futures::stream::BoxStream;
use serde_json::{Map, Value as Json};

use super::{FakeCloud, FakeDriver};
use ralph_core::driver::capability::{Dumps, Manifest, ObjectStore, TableSum, Upload};
use ralph_core::driver::{Context, DriverError};
use std::sync::Arc;

impl FakeCloud {
    /// One mutating call: `f` takes effect, then the kill switch counts it.
    async fn mutate<T>(
        &self,
        op: &'static str,
        on: &str,
        f: impl FnOnce(&FakeCloud) -> T,
    ) -> Result<T, DriverError> {
        let started = self.begin(op, "fake.object", on).await?;
        let out = f(self);
        self.end(op, on, started)?;
        Ok(out)
    }

    fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.objects
            .lock()
            .unwrap()
            .get(&(bucket.to_string(), key.to_string()))
            .cloned()
    }

    /// The keys of `bucket` under `prefix`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.objects
            .lock()
            .unwrap()
            .keys()
            .filter(|(b, k)| b == bucket && k.starts_with(prefix))
            .map(|(_, k)| k.clone())
            .collect()
    }
}

/// The tables every database of the fake server starts with.
pub fn seeded_tables() -> Vec<TableSum> {
    vec![
        TableSum {
            table: "public.tasks".into(),
            rows: 3,
            checksum: "1234".into(),
        },
        TableSum {
            table: "public.audit_log".into(),
            rows: 7,
            checksum: "5678".into(),
        },
    ]
}

struct FakeUpload {
    cloud: Arc<FakeCloud>,
    bucket: String,
    key: String,
    body: Vec<u8>,
}

#[async_trait::async_trait]
impl Upload for FakeUpload {
    fn part_size(&self) -> usize {
        16
    }

    async fn part(&mut self, _cx: &Context, bytes: Vec<u8>) -> Result<(), DriverError> {
        self.cloud.alive()?;
        self.body.extend(bytes);
        Ok(())
    }

    async fn finish(self: Box<Self>, _cx: &Context) -> Result<(), DriverError> {
        let FakeUpload {
            cloud,
            bucket,
            key,
            body,
        } = *self;
        cloud
            .mutate("finish upload", &bucket, |c| {
                c.objects
                    .lock()
                    .unwrap()
                    .insert((bucket.clone(), key), body);
            })
            .await
    }

    async fn abort(self: Box<Self>, _cx: &Context) {}
}

#[async_trait::async_trait]
impl ObjectStore for FakeDriver {
    fn bucket_name(&self, props: &Map<String, Json>) -> Option<String> {
        self.store.and_then(|s| s.bucket_name(props))
    }

    fn expire_after_days(&self, props: &Map<String, Json>) -> Option<i64> {
        self.store.and_then(|s| s.expire_after_days(props))
    }

    fn url(&self, bucket: &str, key: &str) -> String {
        self.store
            .map(|s| s.url(bucket, key))
            .unwrap_or_else(|| format!("fake://{bucket}/{key}"))
    }

    async fn upload(
        &self,
        _cx: &Context,
        bucket: &str,
        key: &str,
        _content_type: &str,
    ) -> Result<Box<dyn Upload>, DriverError> {
        self.cloud.alive()?;
        Ok(Box::new(FakeUpload {
            cloud: self.cloud.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            body: Vec::new(),
        }))
    }

    async fn put(
        &self,
        _cx: &Context,
        bucket: &str,
        key: &str,
        _content_type: &str,
        body: Vec<u8>,
    ) -> Result<(), DriverError> {
        self.cloud
            .mutate("put object", bucket, |c| {
                c.objects
                    .lock()
                    .unwrap()
                    .insert((bucket.to_string(), key.to_string()), body);
            })
            .await
    }

    async fn get(
        &self,
        _cx: &Context,
        bucket: &str,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, DriverError>>, DriverError> {
        self.cloud.alive()?;
        let body = self
            .cloud
            .object(bucket, key)
            .ok_or_else(|| DriverError::new(format!("no object {key} in {bucket}")))?;
        Ok(Box::pin(futures::stream::iter([Ok(Bytes::from(body))])))
    }

    async fn list(
        &self,
        _cx: &Context,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<String>, DriverError> {
        self.cloud.alive()?;
        Ok(self.cloud.keys(bucket, prefix))
    }

    async fn delete(&self, _cx: &Context, bucket: &str, key: &str) -> Result<(), DriverError> {
        self.cloud
            .mutate("delete object", bucket, |c| {
                c.objects
                    .lock()
                    .unwrap()
                    .remove(&(bucket.to_string(), key.to_string()));
            })
            .await
    }
}

fn database_of(props: &Map<String, Json>) -> String {
    props
        .get("database")
        .and_then(Json::as_str)
        .filter(|d| !d.is_empty())
        .unwrap_or("ralph")
        .to_string()
}

#[async_trait::async_trait]
impl Dumps for FakeDriver {
    async fn database(
        &self,
        _cx: &Context,
        props: &Map<String, Json>,
    ) -> Result<String, DriverError> {
        self.cloud.alive()?;
        Ok(database_of(props))
    }

    async fn exists(
        &self,
        _cx: &Context,
        _props: &Map<String, Json>,
        database: &str,
    ) -> Result<bool, DriverError> {
        self.cloud.alive()?;
        Ok(self.cloud.databases.lock().unwrap().contains_key(database))
    }

    async fn dump(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
        store: &dyn ObjectStore,
        bucket: &str,
        key: &str,
    ) -> Result<Manifest, DriverError> {
        self.cloud.alive()?;
        let database = database_of(props);
        let tables = self
            .cloud
            .databases
            .lock()
            .unwrap()
            .entry(database.clone())
            .or_insert_with(seeded_tables)
            .clone();
        let body = serde_json::to_vec(&tables).unwrap_or_default();
        let mut upload = store.upload(cx, bucket, key, "application/json").await?;
        for part in body.chunks(upload.part_size()) {
            upload.part(cx, part.to_vec()).await?;
        }
        upload.finish(cx).await?;
        let manifest = Manifest {
            format: "ralph-deploy-backup/1".into(),
            database,
            server_version: "fake".into(),
            created: chrono::Utc::now(),
            bytes: body.len() as u64,
            tables,
        };
        manifest.put(cx, store, bucket, key).await?;
        Ok(manifest)
    }

    async fn restore(
        &self,
        cx: &Context,
        _props: &Map<String, Json>,
        store: &dyn ObjectStore,
        bucket: &str,
        key: &str,
        database: &str,
    ) -> Result<Vec<TableSum>, DriverError> {
        let manifest = Manifest::get(cx, store, bucket, key).await?;
        let dumped: Vec<TableSum> = serde_json::from_slice(&store.get_all(cx, bucket, key).await?)
            .map_err(|e| DriverError::new(format!("dump: {e}")))?;
        let created = self
            .cloud
            .mutate("create database", database, |c| {
                let mut dbs = c.databases.lock().unwrap();
                if dbs.contains_key(database) {
                    return false;
                }
                dbs.insert(database.to_string(), Vec::new());
                true
            })
            .await?;
        if !created {
            return Err(DriverError::new(format!(
                "database {database} exists already"
            )));
        }
        // The tables arrive one at a time, as pg_restore loads them.
        for table in &dumped {
            self.cloud
                .mutate("restore table", database, |c| {
                    if let Some(db) = c.databases.lock().unwrap().get_mut(database) {
                        db.push(table.clone());
                    }
                })
                .await?;
        }
        let found = self.cloud.databases.lock().unwrap()[database].clone();
        if found != manifest.tables {
            return Err(DriverError::new(format!(
                "the restored database {database} does not match the backup"
            )));
        }
        Ok(found)
    }

    async fn discard(
        &self,
        _cx: &Context,
        _props: &Map<String, Json>,
        database: &str,
    ) -> Result<(), DriverError> {
        self.cloud
            .mutate("drop database", database, |c| {
                c.databases.lock().unwrap().remove(database);
            })
            .await
    }
}
