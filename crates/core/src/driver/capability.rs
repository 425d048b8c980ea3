//! What a kind offers beyond its lifecycle, for the day-2 operations
//! (`ops`): a role the operations find resources by (the orchestrator, the
//! schema, the add-ons), and the capabilities they call through a trait
//! (a database's replica promotion and snapshots, a bucket's objects).
//! Operations ask the registry which kinds offer what, so none of them
//! names a cloud or a kind: a kind of another cloud that implements the
//! trait is found the same way.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use serde_json::{Map, Value as Json};

use super::{Context, DriverError, Known, Observed};

/// What a resource is to the operations that look for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Runs the orchestrator: `deploy`, `rollback`, `render`, `status`, and
    /// the pods a failover rolls.
    Orchestrator,
    /// Installs add-ons whose health `status` reads.
    AddOns,
    /// Owns a database's schema and says how to reach it: `db`, `backup`,
    /// `restore`.
    Schema,
    /// A database login whose server the tool reaches (its tunnel url).
    DatabaseLogin,
    /// A bucket whose objects backups go to ([`ObjectStore`]).
    Bucket,
    /// A database whose read replicas can be promoted ([`Promotion`]).
    Promotable,
    /// A database the cloud can snapshot ([`Snapshots`]).
    Snapshots,
}

impl Role {
    /// The role's name in messages ("the stack has no …").
    pub fn noun(self) -> &'static str {
        match self {
            Role::Orchestrator => "orchestrator",
            Role::AddOns => "add-ons resource",
            Role::Schema => "database schema (migrations) resource",
            Role::DatabaseLogin => "database role",
            Role::Bucket => "backup bucket",
            Role::Promotable => "database with read replicas",
            Role::Snapshots => "database the cloud can snapshot",
        }
    }
}

/// Whether `driver`'s kind offers `role`.
pub fn offers(driver: &dyn super::Driver, role: Role) -> bool {
    match role {
        Role::Bucket => driver.object_store().is_some(),
        Role::Promotable => driver.promotion().is_some(),
        Role::Snapshots => driver.snapshots().is_some(),
        _ => driver.roles().contains(&role),
    }
}

/// A bucket's objects, as backups use them.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// The bucket's name in a resource's resolved properties (`name`).
    fn bucket_name(&self, props: &Map<String, Json>) -> Option<String> {
        props.get("name").and_then(Json::as_str).map(str::to_string)
    }
    /// How many days the bucket keeps an object (`expire_after_days`).
    fn expire_after_days(&self, props: &Map<String, Json>) -> Option<i64> {
        props.get("expire_after_days").and_then(Json::as_i64)
    }
    /// An object's URL as the cloud's own tools write it (`s3://B/K`).
    fn url(&self, bucket: &str, key: &str) -> String;
    /// Starts a streamed upload of `key`: parts in order, then finish.
    async fn upload(
        &self,
        cx: &Context,
        bucket: &str,
        key: &str,
        content_type: &str,
    ) -> Result<Box<dyn Upload>, DriverError>;
    /// Writes a small object whole.
    async fn put(
        &self,
        cx: &Context,
        bucket: &str,
        key: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(), DriverError>;
    /// An object's bytes, as they arrive.
    async fn get(
        &self,
        cx: &Context,
        bucket: &str,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, DriverError>>, DriverError>;
    /// A small object's bytes, whole.
    async fn get_all(&self, cx: &Context, bucket: &str, key: &str) -> Result<Vec<u8>, DriverError> {
        use futures::StreamExt;
        let mut chunks = self.get(cx, bucket, key).await?;
        let mut body = Vec::new();
        while let Some(chunk) = chunks.next().await {
            body.extend_from_slice(&chunk?);
        }
        Ok(body)
    }
    /// The keys under `prefix`.
    async fn list(
        &self,
        cx: &Context,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<String>, DriverError>;
    async fn delete(&self, cx: &Context, bucket: &str, key: &str) -> Result<(), DriverError>;
}

/// An upload under way: nothing is visible under its key until `finish`.
#[async_trait::async_trait]
pub trait Upload: Send {
    /// The size the parts should have (the last one may be shorter).
    fn part_size(&self) -> usize;
    async fn part(&mut self, cx: &Context, bytes: Vec<u8>) -> Result<(), DriverError>;
    async fn finish(self: Box<Self>, cx: &Context) -> Result<(), DriverError>;
    /// Drops what was uploaded (best effort: no half object is left).
    async fn abort(self: Box<Self>, cx: &Context);
}

/// A failover's pair, as its intent records it.
pub struct PromotionPlan<'a> {
    /// The primary's and the replica's addresses.
    pub primary: &'a str,
    pub replica: &'a str,
    /// Their ids in the cloud.
    pub primary_id: &'a str,
    pub replica_id: &'a str,
    /// Where the old primary goes (see [`Promotion::aside_name`]).
    pub old_name: &'a str,
    /// The failover's id: marks the instance it promoted.
    pub marker: &'a str,
    /// The primary's recorded inputs (its backup settings, its tags).
    pub primary_inputs: &'a Map<String, Json>,
    /// What the old primary was, left on it (`stack/env/address until …`).
    pub retired_as: String,
    pub timeout: Duration,
}

/// What a promotion left: the instance now serving under the primary's
/// identity, and where the old primary went (`None`: it was gone).
pub struct Promoted {
    pub observed: Observed,
    pub old_primary: Option<String>,
}

/// A database kind whose read replica can take over as the primary.
/// A replica's lag behind its primary, as a promotion reads it.
#[derive(Debug, Clone)]
pub struct Lag {
    /// Seconds behind (`None`: the metric has no recent reading).
    pub seconds: Option<f64>,
    /// Where it was read, for messages ("CloudWatch's ReplicaLag for ...").
    pub source: String,
}

#[async_trait::async_trait]
pub trait Promotion: Send + Sync {
    /// The primary a replica's recorded inputs name (an id or another
    /// reference the cloud takes); `None`: it is not a replica.
    fn primary_of<'a>(&self, inputs: &'a Map<String, Json>) -> Option<&'a str>;
    /// Whether the recorded resource (`id`, `attrs`) is the one `source`
    /// names.
    fn is_named(&self, id: &str, attrs: &Map<String, Json>, source: &str) -> bool {
        id == source || attrs.get("arn").and_then(Json::as_str) == Some(source)
    }
    /// Whether the promoted instance takes the primary's name (RDS renames
    /// it). When not, it serves under its own name, which the state then
    /// records as the primary's: only a primary whose name the tool
    /// generated (`name_prefix`) can follow it.
    fn renames(&self) -> bool {
        true
    }
    /// Where the old primary is moved to, a name the cloud accepts.
    fn aside_name(&self, primary_id: &str, now: chrono::DateTime<chrono::Utc>) -> String;
    /// The replica's lag behind its primary, from the cloud's metrics.
    async fn replica_lag(&self, cx: &Context, replica_id: &str) -> Result<Lag, DriverError>;
    /// The replica promoted, the old primary out of the way and the
    /// promoted instance under the primary's identity and ownership. Every
    /// step is safe to repeat: a promotion interrupted anywhere is finished
    /// by calling this again with the same plan. `stopped` is asked between
    /// steps; when it says so, the promotion returns an error saying it is
    /// unfinished.
    async fn promote(
        &self,
        cx: &Context,
        plan: &PromotionPlan<'_>,
        stopped: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Promoted, DriverError>;
    /// The old primaries this owner's failovers retired that still stand
    /// (a deleting one too), each with the address it served. They hold
    /// their network (a subnet group, a peering) until they go, so
    /// `destroy` deletes them first.
    async fn retired(&self, cx: &Context) -> Result<Vec<Retired>, DriverError>;
}

/// An old primary a failover retired: no longer the stack's, kept with its
/// data and its deletion protection.
pub struct Retired {
    /// The address it served as primary.
    pub address: String,
    /// As a refresh reads it (its id, its protection, its settings).
    pub observed: Observed,
}

/// A workload whose pods can be replaced in place, every one of them, the
/// rollout waited for (`failover` rolls the orchestrators onto the new
/// primary so none keeps a connection to the old one).
#[async_trait::async_trait]
pub trait Restarts: Send + Sync {
    /// Restarts the recorded workload at `address` (`reason` is left on
    /// it) and returns it as it runs afterwards.
    async fn restart(
        &self,
        cx: &Context,
        address: &str,
        known: &Known,
        reason: &str,
        timeout: Duration,
    ) -> Result<Observed, DriverError>;
}

/// A database kind whose instances the cloud can snapshot on request.
#[async_trait::async_trait]
pub trait Snapshots: Send + Sync {
    /// Whether the resource (its resolved properties) is a primary (a
    /// replica's snapshots are its primary's).
    fn is_primary(&self, props: &Map<String, Json>) -> bool;
    /// Takes a snapshot of the instance the properties name, called `name`
    /// plus a time stamp; returns the snapshot's id.
    async fn snapshot(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<String, DriverError>;
}

/// What a backup holds, stored beside it as `<key>.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub database: String,
    pub server_version: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub bytes: u64,
    pub tables: Vec<TableSum>,
}

impl Manifest {
    /// Writes it beside the dump at `key`, as `<key>.json`: last, so that a
    /// dump without one never finished.
    pub async fn put(
        &self,
        cx: &Context,
        store: &dyn ObjectStore,
        bucket: &str,
        key: &str,
    ) -> Result<(), DriverError> {
        let body = serde_json::to_vec_pretty(self).unwrap_or_default();
        let at = format!("{key}.json");
        store.put(cx, bucket, &at, "application/json", body).await
    }

    /// The manifest of the dump at `key`.
    pub async fn get(
        cx: &Context,
        store: &dyn ObjectStore,
        bucket: &str,
        key: &str,
    ) -> Result<Manifest, DriverError> {
        let body = store
            .get_all(cx, bucket, &format!("{key}.json"))
            .await
            .map_err(|e| {
                DriverError::new(format!("reading the manifest of {key}: {}", e.message))
            })?;
        serde_json::from_slice(&body).map_err(|e| {
            DriverError::new(format!(
                "the manifest of {key} is not one ralph-deploy wrote: {e}"
            ))
        })
    }
}

/// One table's rows in a backup: how many, and a checksum of their content.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TableSum {
    pub table: String,
    pub rows: i64,
    /// The sum of every row's 64-bit text hash: equal sets of rows give
    /// equal sums whatever their order.
    pub checksum: String,
}

/// A database whose data can be dumped into a bucket and restored from it
/// (`backup`, `restore`), reached through the resource's resolved
/// properties (the schema resource says where and how to connect).
#[async_trait::async_trait]
pub trait Dumps: Send + Sync {
    /// The name of the database the properties reach (a restore's default
    /// name starts with it).
    async fn database(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
    ) -> Result<String, DriverError>;
    /// Whether `database` exists beside the one the properties reach (a
    /// restore is refused into one that does, before anything starts).
    async fn exists(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
        database: &str,
    ) -> Result<bool, DriverError>;
    /// Dumps the database into `bucket`/`key`, then writes the manifest
    /// beside it as `<key>.json` (last: a dump without one never finished).
    async fn dump(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
        store: &dyn ObjectStore,
        bucket: &str,
        key: &str,
    ) -> Result<Manifest, DriverError>;
    /// Creates `database` (which must not exist) beside the one the
    /// properties reach, restores `key` into it and checks every table
    /// against the manifest; returns the sums found.
    async fn restore(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
        store: &dyn ObjectStore,
        bucket: &str,
        key: &str,
        database: &str,
    ) -> Result<Vec<TableSum>, DriverError>;
    /// Drops `database`, which a killed restore left unfinished (nothing
    /// when it is not there).
    async fn discard(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
        database: &str,
    ) -> Result<(), DriverError>;
}
