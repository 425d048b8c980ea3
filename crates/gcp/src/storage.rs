//! Cloud Storage: `gcp.storage_bucket`, the bucket backups go to, and its
//! objects as backups use them (`capability::ObjectStore`).
//!
//! The bucket is private by construction: uniform bucket-level access (no
//! object ACLs) and public access prevention enforced unless the stack
//! says otherwise. `expire_after_days` is a lifecycle rule deleting live
//! objects at that age and old versions as long after they were replaced;
//! `retention_days` a retention policy (objects cannot be deleted or
//! overwritten younger than that, which Google enforces, not this tool).
//! Bucket names are global: a create answered 409 is this resource's
//! bucket when its labels say so, someone else's otherwise.
//!
//! google-cloud-rust's storage crate is not a dependency: the JSON API (v1)
//! through `rest::Rest`. A backup's upload is a parallel-composite one, as
//! `gcloud storage` makes for large files: each part is a media upload of
//! its own object, `compose` joins them (32 at a time) into the backup, and
//! the parts are deleted. Nothing appears under the backup's key before the
//! last compose.

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use serde_json::{json, Value as Json};

use super::rest::Rest;
use super::{from_labels, labels, observed, take_over};
use ralph_core::driver::capability::{ObjectStore, Upload};
use ralph_core::driver::{Context, Delete, Desired, Driver, DriverError, Known, Observed, Update};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

const SERVICE: &str = "storage";
const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// Parts of a backup's upload: 8 MiB, as on S3.
const PART_SIZE: usize = 8 << 20;
/// Cloud Storage composes at most 32 objects in one request.
const COMPOSE_MAX: usize = 32;

/// Cloud Storage's bucket names: 3-63 lower-case letters, digits, `-`, `_`
/// and `.`, starting and ending with a letter or digit, not starting with
/// `goog`.
fn bucket_name(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok = (3..=63).contains(&s.len())
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && !s.contains("..")
        && !s.starts_with("goog");
    checks::require(ok, || {
        format!(
            "`{s}` is not a Cloud Storage bucket name: 3-63 lower-case letters, digits, -, _ or ., starting and ending with a letter or digit, not starting with goog"
        )
    })
}

fn storage_class(v: &Json) -> Result<(), String> {
    checks::choice(
        v,
        &["STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"],
        "storage_class",
    )
}

static SCHEMA: KindSchema = KindSchema::new("gcp.storage_bucket", SERVICE, "A Cloud Storage bucket (backups): uniform access, no public access, versions, expiry and retention.")
    .fields(&[
        Field::name("the globally unique bucket name")
            .check(bucket_name),
        Field::fixed("location",
            Ty::String,
            "a region such as europe-west1, or a multi-region such as EU"),
        Field::new(
            "storage_class",
            Ty::String,
            "STANDARD, NEARLINE, COLDLINE or ARCHIVE",
        )
        .default("\"STANDARD\"")
        .check(storage_class),
        Field::new("versioning", Ty::Bool, "keep replaced and deleted objects as old versions")
            .default("true"),
        Field::new(
            "expire_after_days",
            Ty::Int,
            "delete objects at this age, and old versions this long after they were replaced",
        )
        .check(checks::range::<1, 36500>),
        Field::new(
            "retention_days",
            Ty::Int,
            "no object can be deleted or replaced before this age (a retention policy, not locked)",
        )
        .check(checks::range::<1, 36500>),
        Field::new(
            "block_public_access",
            Ty::Bool,
            "public access prevention enforced: no object can be made public",
        )
        .default("true"),
        Field::new(
            "force_destroy",
            Ty::Bool,
            "let destroy delete a bucket that still holds objects",
        )
        .default("false"),
        Field::labels(),
    ])
    .attrs(&[
        Attr::string("id", "the bucket name"),
        Attr::string("url", "gs://NAME"),
    ])
    .name_field("name");

pub struct StorageBucket;

/// A path segment: an object name escaped (its slashes too).
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn observe(v: &Json) -> Option<Observed> {
    let name = v["name"].as_str()?;
    let (owner, address, user) = from_labels(v.get("labels"));
    let rules = v["lifecycle"]["rule"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let expire = rules
        .iter()
        .find(|r| r["action"]["type"] == "Delete" && r["condition"]["age"].is_i64())
        .and_then(|r| r["condition"]["age"].as_i64());
    let retention = v["retentionPolicy"]["retentionPeriod"]
        .as_str()
        .and_then(|s| s.parse::<i64>().ok())
        .or_else(|| v["retentionPolicy"]["retentionPeriod"].as_i64())
        .map(|s| s / 86_400);
    let iam = &v["iamConfiguration"];
    Some(observed(
        name,
        owner,
        address,
        vec![
            ("id", json!(name)),
            ("url", json!(format!("gs://{name}"))),
            ("name", json!(name)),
            (
                "location",
                json!(v["location"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_lowercase()),
            ),
            (
                "storage_class",
                json!(v["storageClass"].as_str().unwrap_or("STANDARD")),
            ),
            (
                "versioning",
                json!(v["versioning"]["enabled"].as_bool().unwrap_or(false)),
            ),
            (
                "expire_after_days",
                expire.map(Json::from).unwrap_or(Json::Null),
            ),
            (
                "retention_days",
                retention.map(Json::from).unwrap_or(Json::Null),
            ),
            (
                "block_public_access",
                json!(iam["publicAccessPrevention"] == "enforced"),
            ),
            ("labels", Json::Object(user)),
        ],
    ))
}

/// The settings of a create or a patch. `have` (a patch) names the labels
/// to remove: a patch merges labels, null removes one.
fn body(cx: &Context, want: &Desired<'_>, have: Option<&Observed>) -> Result<Json, DriverError> {
    let mut labels = labels(&cx.owner, want.address, want.props.get("labels"));
    if let Some(old) = have
        .and_then(|h| h.attrs.get("labels"))
        .and_then(Json::as_object)
    {
        for k in old.keys() {
            labels.entry(k.clone()).or_insert(Json::Null);
        }
    }
    let rules: Vec<Json> = match want.int::<i64>("expire_after_days")? {
        Some(days) => vec![
            json!({"action": {"type": "Delete"}, "condition": {"age": days}}),
            json!({"action": {"type": "Delete"}, "condition": {"daysSinceNoncurrentTime": days}}),
        ],
        None => Vec::new(),
    };
    let retention = match want.int::<i64>("retention_days")? {
        Some(days) => json!({"retentionPeriod": (days * 86_400).to_string()}),
        None => Json::Null,
    };
    Ok(json!({
        "name": want.required_str("name")?,
        "storageClass": want.str("storage_class").unwrap_or("STANDARD"),
        "versioning": {"enabled": want.bool("versioning").unwrap_or(true)},
        "lifecycle": {"rule": rules},
        "retentionPolicy": retention,
        "iamConfiguration": {
            "uniformBucketLevelAccess": {"enabled": true},
            "publicAccessPrevention": if want.bool("block_public_access").unwrap_or(true) { "enforced" } else { "inherited" },
        },
        "labels": labels,
    }))
}

async fn read(rest: &Rest<'_>, name: &str) -> Result<Option<Observed>, DriverError> {
    Ok(rest
        .send(
            "GET",
            &format!("storage/v1/b/{}", segment(name)),
            None,
            &format!("reading bucket {name}"),
        )
        .await?
        .as_ref()
        .and_then(observe))
}

#[async_trait::async_trait]
impl Driver for StorageBucket {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    fn typical_seconds(&self) -> u64 {
        2
    }

    fn object_store(&self) -> Option<&dyn ObjectStore> {
        Some(&GcsObjects)
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let project = crate::clients(cx).await?.project.clone();
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let mut out: Vec<Observed> = rest
            .list_pages(
                &format!("storage/v1/b?project={project}"),
                "items",
                "maxResults",
                &format!("listing the buckets of project {project}"),
            )
            .await?
            .iter()
            .filter_map(observe)
            .filter(|o| crate::ours(cx, o))
            .collect();
        // Recorded and declared names the listing did not return (another
        // project's bucket, or one whose labels were removed).
        for k in known {
            if !k.id.is_empty() && !out.iter().any(|o| o.id == k.id) {
                if let Some(o) = read(&rest, &k.id).await? {
                    out.push(o);
                }
            }
        }
        Ok(out)
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        read(&rest, id).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let project = crate::clients(cx).await?.project.clone();
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let name = want.required_str("name")?;
        let what = format!("creating bucket {name}");
        let mut settings = body(cx, want, None)?;
        settings["location"] = json!(want.required_str("location")?);
        match rest
            .create(&format!("storage/v1/b?project={project}"), settings, &what)
            .await?
        {
            Ok(v) => observe(&v)
                .ok_or_else(|| DriverError::new(format!("{what}: the answer is not a bucket"))),
            // Taken: this resource's bucket from a run killed after the
            // create, or another's (names are global).
            Err(_) => {
                let found = read(&rest, name).await?;
                let mine = take_over(cx, want.address, &format!("bucket {name}"), found)?;
                let u = Update {
                    want,
                    have: &mine,
                    changed: &[],
                };
                self.update(cx, u).await
            }
        }
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let name = want.required_str("name")?;
        let what = format!("updating bucket {name}");
        let got = rest
            .send(
                "PATCH",
                &format!("storage/v1/b/{}", segment(name)),
                Some(body(cx, want, Some(have))?),
                &what,
            )
            .await?
            .ok_or_else(|| DriverError::new(format!("{what}: the bucket is gone")))?;
        observe(&got).ok_or_else(|| DriverError::new(format!("{what}: the answer is not a bucket")))
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let name = d.have.id.as_str();
        let objects = GcsObjects.list(cx, name, "").await?;
        if !objects.is_empty() {
            if d.have.attrs.get("force_destroy") != Some(&Json::Bool(true)) {
                return Err(DriverError::new(format!(
                    "bucket {name} still holds {} objects: empty it, or set `force_destroy: true` on it and apply before destroying",
                    objects.len()
                )));
            }
            for key in objects {
                GcsObjects.delete(cx, name, &key).await?;
            }
        }
        rest.send(
            "DELETE",
            &format!("storage/v1/b/{}", segment(name)),
            None,
            &format!("deleting bucket {name}"),
        )
        .await?;
        Ok(())
    }
}

/// A `gcp.storage_bucket`'s objects.
pub struct GcsObjects;

fn object_path(bucket: &str, key: &str) -> String {
    format!("storage/v1/b/{}/o/{}", segment(bucket), segment(key))
}

#[async_trait::async_trait]
impl ObjectStore for GcsObjects {
    fn url(&self, bucket: &str, key: &str) -> String {
        format!("gs://{bucket}/{key}")
    }

    async fn upload(
        &self,
        _cx: &Context,
        bucket: &str,
        key: &str,
        content_type: &str,
    ) -> Result<Box<dyn Upload>, DriverError> {
        Ok(Box::new(Composite {
            bucket: bucket.to_string(),
            key: key.to_string(),
            content_type: content_type.to_string(),
            parts: Vec::new(),
        }))
    }

    async fn put(
        &self,
        cx: &Context,
        bucket: &str,
        key: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(), DriverError> {
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        rest.send_media(
            &format!(
                "upload/storage/v1/b/{}/o?uploadType=media&name={}",
                segment(bucket),
                segment(key)
            ),
            content_type,
            body,
            &format!("writing gs://{bucket}/{key}"),
        )
        .await?
        .ok_or_else(|| DriverError::new(format!("writing gs://{bucket}/{key}: no such bucket")))?;
        Ok(())
    }

    async fn get(
        &self,
        cx: &Context,
        bucket: &str,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, DriverError>>, DriverError> {
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let what = format!("reading gs://{bucket}/{key}");
        let rx = rest
            .download(&format!("{}?alt=media", object_path(bucket, key)), &what)
            .await?
            .ok_or_else(|| DriverError::new(format!("{what}: no such object")))?;
        Ok(tokio_stream_of(rx))
    }

    async fn list(
        &self,
        cx: &Context,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<String>, DriverError> {
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        Ok(rest
            .list_pages(
                &format!(
                    "storage/v1/b/{}/o?prefix={}",
                    segment(bucket),
                    segment(prefix)
                ),
                "items",
                "maxResults",
                &format!("listing gs://{bucket}/{prefix}"),
            )
            .await?
            .iter()
            .filter_map(|o| o["name"].as_str().map(str::to_string))
            .collect())
    }

    async fn delete(&self, cx: &Context, bucket: &str, key: &str) -> Result<(), DriverError> {
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        rest.send(
            "DELETE",
            &object_path(bucket, key),
            None,
            &format!("deleting gs://{bucket}/{key}"),
        )
        .await?;
        Ok(())
    }
}

fn tokio_stream_of(rx: super::rest::Chunks) -> BoxStream<'static, Result<Bytes, DriverError>> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }).boxed()
}

/// The composes that join `parts` into `key`, in order: the first 32 parts
/// into the key, then the key and up to 31 more, until every part is in.
fn compose_batches<'a>(key: &'a str, parts: &'a [String]) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut done = 0;
    while done < parts.len() {
        let mut batch: Vec<&str> = if done > 0 { vec![key] } else { Vec::new() };
        let room = COMPOSE_MAX - batch.len();
        batch.extend(parts.iter().skip(done).take(room).map(String::as_str));
        done += batch.len() - usize::from(done > 0);
        out.push(batch);
    }
    out
}

/// A parallel-composite upload: a part object per part, composed into the
/// key at the end.
struct Composite {
    bucket: String,
    key: String,
    content_type: String,
    parts: Vec<String>,
}

impl Composite {
    async fn drop_parts(&self, cx: &Context) -> Result<(), DriverError> {
        for part in &self.parts {
            GcsObjects.delete(cx, &self.bucket, part).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Upload for Composite {
    fn part_size(&self) -> usize {
        PART_SIZE
    }

    async fn part(&mut self, cx: &Context, bytes: Vec<u8>) -> Result<(), DriverError> {
        let name = format!("{}.part-{:05}", self.key, self.parts.len() + 1);
        GcsObjects
            .put(cx, &self.bucket, &name, "application/octet-stream", bytes)
            .await?;
        self.parts.push(name);
        Ok(())
    }

    async fn finish(self: Box<Self>, cx: &Context) -> Result<(), DriverError> {
        let rest = Rest::new(cx, SERVICE, DEFAULT_ENDPOINT).await?;
        let what = format!("composing gs://{}/{}", self.bucket, self.key);
        for batch in compose_batches(&self.key, &self.parts) {
            let sources: Vec<Json> = batch.iter().map(|p| json!({"name": p})).collect();
            rest.send(
                "POST",
                &format!("{}/compose", object_path(&self.bucket, &self.key)),
                Some(json!({
                    "sourceObjects": sources,
                    "destination": {"contentType": self.content_type},
                })),
                &what,
            )
            .await?
            .ok_or_else(|| DriverError::new(format!("{what}: a part is gone")))?;
        }
        self.drop_parts(cx).await
    }

    async fn abort(self: Box<Self>, cx: &Context) {
        let _ = self.drop_parts(cx).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_one_path_segment() {
        assert_eq!(segment("backups/a b/x.dump"), "backups%2Fa%20b%2Fx.dump");
        assert_eq!(segment("plain-name_1.json"), "plain-name_1.json");
    }

    #[test]
    fn seventy_parts_are_three_composes_of_at_most_32() {
        let parts: Vec<String> = (1..=70).map(|i| format!("k.part-{i:05}")).collect();
        let batches = compose_batches("k", &parts);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [32, 32, 8]
        );
        assert_eq!(batches[1][0], "k");
        assert_eq!(batches[2][0], "k");
        let joined: Vec<&str> = batches
            .iter()
            .flatten()
            .copied()
            .filter(|p| *p != "k")
            .collect();
        assert_eq!(joined, parts.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            compose_batches("k", &parts[..1]),
            vec![vec!["k.part-00001"]]
        );
    }

    #[test]
    fn bucket_names_follow_googles_rules() {
        assert!(bucket_name(&json!("ralph-prod-backups")).is_ok());
        for bad in ["ab", "Ralph", "-x-bucket", "google-x", "a..b", "x_"] {
            assert!(bucket_name(&json!(bad)).is_err(), "{bad}");
        }
    }
}
