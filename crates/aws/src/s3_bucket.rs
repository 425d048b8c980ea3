//! `aws.s3_bucket`: the backup bucket: versioning, default encryption,
//! lifecycle expiry after the retention period, public access blocked.

use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketVersioningStatus, CreateBucketConfiguration,
    ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
    NoncurrentVersionExpiration, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    Tag, Tagging, VersioningConfiguration,
};
use serde_json::Value as Json;

use super::{api_error, error_code, observed_with, read_each, read_tag_pairs, tag_map};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

/// S3 bucket naming rules.
fn bucket_name(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let chars_ok = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ends_ok = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    let ip_like = s.split('.').count() == 4 && s.split('.').all(|p| p.parse::<u8>().is_ok());
    if !(3..=63).contains(&s.len())
        || !chars_ok
        || !ends_ok
        || s.contains("..")
        || ip_like
        || s.starts_with("xn--")
    {
        return Err(format!(
            "bucket name `{s}` breaks S3's rules: 3-63 lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit, not an IP address"
        ));
    }
    Ok(())
}

fn sse(v: &Json) -> Result<(), String> {
    checks::choice(v, &["AES256", "aws:kms"], "encryption")
}

static SCHEMA: KindSchema = KindSchema::new("aws.s3_bucket", "s3", "An S3 bucket (backups).")
    .fields(&[
        Field::name("the globally unique bucket name").check(bucket_name),
        Field::new("versioning", Ty::Bool, "keep every version of every object").default("true"),
        Field::new(
            "encryption",
            Ty::String,
            "default encryption: AES256 or aws:kms",
        )
        .default("\"AES256\"")
        .check(sse),
        Field::new("kms_key_id", Ty::String, "the KMS key for aws:kms"),
        Field::new(
            "expire_after_days",
            Ty::Int,
            "delete objects (and old versions) after this many days",
        )
        .check(checks::range::<1, 2147483647>),
        Field::new(
            "block_public_access",
            Ty::Bool,
            "block every form of public access",
        )
        .default("true"),
        Field::new(
            "force_destroy",
            Ty::Bool,
            "let destroy delete a bucket that still holds objects",
        )
        .default("false"),
        Field::tags(),
    ])
    .attrs(&[
        Attr::string("id", "the bucket name"),
        Attr::string("arn", "the bucket ARN"),
    ])
    .name_field("name");

pub struct S3Bucket;

async fn read_one(cx: &Context, name: &str) -> Result<Option<Observed>, DriverError> {
    let s3 = &crate::clients(cx).await?.s3;
    let tags = match s3.get_bucket_tagging().bucket(name).send().await {
        Ok(out) => out
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect::<Vec<_>>(),
        Err(e) if error_code(&e) == Some("NoSuchBucket") => return Ok(None),
        Err(e) if error_code(&e) == Some("NoSuchTagSet") => Vec::new(),
        Err(e) => return Err(api_error("GetBucketTagging", e)),
    };
    let versioning = s3
        .get_bucket_versioning()
        .bucket(name)
        .send()
        .await
        .map_err(|e| api_error("GetBucketVersioning", e))?;
    let enabled = versioning.status() == Some(&BucketVersioningStatus::Enabled);
    let (encryption, kms) = match s3.get_bucket_encryption().bucket(name).send().await {
        Ok(out) => {
            let rule = out
                .server_side_encryption_configuration()
                .and_then(|c| c.rules().first())
                .and_then(|r| r.apply_server_side_encryption_by_default());
            (
                rule.map(|r| Json::String(r.sse_algorithm().as_str().to_string()))
                    .unwrap_or(Json::Null),
                rule.and_then(|r| r.kms_master_key_id())
                    .map(|k| Json::String(k.to_string()))
                    .unwrap_or(Json::Null),
            )
        }
        Err(e) if error_code(&e) == Some("ServerSideEncryptionConfigurationNotFoundError") => {
            (Json::Null, Json::Null)
        }
        Err(e) => return Err(api_error("GetBucketEncryption", e)),
    };
    let expire = match s3
        .get_bucket_lifecycle_configuration()
        .bucket(name)
        .send()
        .await
    {
        Ok(out) => out
            .rules()
            .iter()
            .find(|r| {
                r.id() == Some("ralph-deploy-retention") && r.status() == &ExpirationStatus::Enabled
            })
            .and_then(|r| r.expiration())
            .and_then(|e| e.days())
            .map(|d| Json::from(d as i64))
            .unwrap_or(Json::Null),
        Err(e) if error_code(&e) == Some("NoSuchLifecycleConfiguration") => Json::Null,
        Err(e) => return Err(api_error("GetBucketLifecycleConfiguration", e)),
    };
    let blocked = match s3.get_public_access_block().bucket(name).send().await {
        Ok(out) => out.public_access_block_configuration().is_some_and(|c| {
            c.block_public_acls() == Some(true)
                && c.ignore_public_acls() == Some(true)
                && c.block_public_policy() == Some(true)
                && c.restrict_public_buckets() == Some(true)
        }),
        Err(e) if error_code(&e) == Some("NoSuchPublicAccessBlockConfiguration") => false,
        Err(e) => return Err(api_error("GetPublicAccessBlock", e)),
    };
    let tags = read_tag_pairs(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Ok(Some(observed_with(
        name,
        tags,
        vec![
            ("name", Json::String(name.to_string())),
            ("arn", Json::String(format!("arn:aws:s3:::{name}"))),
            ("versioning", Json::Bool(enabled)),
            ("encryption", encryption),
            ("kms_key_id", kms),
            ("expire_after_days", expire),
            ("block_public_access", Json::Bool(blocked)),
        ],
    )))
}

async fn configure(
    cx: &Context,
    name: &str,
    want: &Desired<'_>,
    changed: Option<&[String]>,
) -> Result<(), DriverError> {
    let s3 = &crate::clients(cx).await?.s3;
    let has = |f: &str| changed.is_none_or(|c| c.iter().any(|x| x == f));
    if has("tags") {
        let tags: Vec<Tag> = tag_map(want)
            .into_iter()
            .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
            .collect();
        let tagging = Tagging::builder()
            .set_tag_set(Some(tags))
            .build()
            .map_err(|e| DriverError::new(e.to_string()))?;
        s3.put_bucket_tagging()
            .bucket(name)
            .tagging(tagging)
            .send()
            .await
            .map_err(|e| api_error("PutBucketTagging", e))?;
    }
    if has("versioning") {
        let status = if want.bool("versioning") == Some(false) {
            BucketVersioningStatus::Suspended
        } else {
            BucketVersioningStatus::Enabled
        };
        // A bucket that never had versioning needs no "Suspended" call.
        if changed.is_some() || status == BucketVersioningStatus::Enabled {
            s3.put_bucket_versioning()
                .bucket(name)
                .versioning_configuration(VersioningConfiguration::builder().status(status).build())
                .send()
                .await
                .map_err(|e| api_error("PutBucketVersioning", e))?;
        }
    }
    if has("encryption") || has("kms_key_id") {
        let algorithm = ServerSideEncryption::from(want.str("encryption").unwrap_or("AES256"));
        let default = ServerSideEncryptionByDefault::builder()
            .sse_algorithm(algorithm)
            .set_kms_master_key_id(want.str("kms_key_id").map(str::to_string))
            .build()
            .map_err(|e| DriverError::new(e.to_string()))?;
        let config = ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(default)
                    .build(),
            )
            .build()
            .map_err(|e| DriverError::new(e.to_string()))?;
        s3.put_bucket_encryption()
            .bucket(name)
            .server_side_encryption_configuration(config)
            .send()
            .await
            .map_err(|e| api_error("PutBucketEncryption", e))?;
    }
    if has("block_public_access") {
        let on = want.bool("block_public_access") != Some(false);
        s3.put_public_access_block()
            .bucket(name)
            .public_access_block_configuration(
                PublicAccessBlockConfiguration::builder()
                    .block_public_acls(on)
                    .ignore_public_acls(on)
                    .block_public_policy(on)
                    .restrict_public_buckets(on)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| api_error("PutPublicAccessBlock", e))?;
    }
    if has("expire_after_days") {
        match want.int::<i32>("expire_after_days")? {
            Some(days) => {
                let rule = LifecycleRule::builder()
                    .id("ralph-deploy-retention")
                    .status(ExpirationStatus::Enabled)
                    .filter(LifecycleRuleFilter::builder().prefix("").build())
                    .expiration(LifecycleExpiration::builder().days(days).build())
                    .noncurrent_version_expiration(
                        NoncurrentVersionExpiration::builder()
                            .noncurrent_days(days)
                            .build(),
                    )
                    .build()
                    .map_err(|e| DriverError::new(e.to_string()))?;
                let config = BucketLifecycleConfiguration::builder()
                    .rules(rule)
                    .build()
                    .map_err(|e| DriverError::new(e.to_string()))?;
                s3.put_bucket_lifecycle_configuration()
                    .bucket(name)
                    .lifecycle_configuration(config)
                    .send()
                    .await
                    .map_err(|e| api_error("PutBucketLifecycleConfiguration", e))?;
            }
            None if changed.is_some() => {
                s3.delete_bucket_lifecycle()
                    .bucket(name)
                    .send()
                    .await
                    .map_err(|e| api_error("DeleteBucketLifecycle", e))?;
            }
            None => {}
        }
    }
    Ok(())
}

/// Deletes every object version and delete marker (for force_destroy).
async fn empty(cx: &Context, name: &str) -> Result<(), DriverError> {
    let s3 = &crate::clients(cx).await?.s3;
    loop {
        let out = s3
            .list_object_versions()
            .bucket(name)
            .send()
            .await
            .map_err(|e| api_error("ListObjectVersions", e))?;
        let mut ids = Vec::new();
        for v in out.versions() {
            ids.push((
                v.key().unwrap_or_default().to_string(),
                v.version_id().map(str::to_string),
            ));
        }
        for m in out.delete_markers() {
            ids.push((
                m.key().unwrap_or_default().to_string(),
                m.version_id().map(str::to_string),
            ));
        }
        if ids.is_empty() {
            return Ok(());
        }
        for (key, version) in ids {
            s3.delete_object()
                .bucket(name)
                .key(key)
                .set_version_id(version)
                .send()
                .await
                .map_err(|e| api_error("DeleteObject", e))?;
        }
    }
}

#[async_trait::async_trait]
impl Driver for S3Bucket {
    fn object_store(&self) -> Option<&dyn ralph_core::driver::capability::ObjectStore> {
        Some(&super::s3_objects::S3Objects)
    }

    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        read_each(known, |id| async move { read_one(cx, &id).await }).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let clients = crate::clients(cx).await?;
        let name = want.required_str("name")?;
        let mut req = clients.s3.create_bucket().bucket(name);
        if clients.region != "us-east-1" {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        clients.region.as_str(),
                    ))
                    .build(),
            );
        }
        req.send().await.map_err(|e| api_error("CreateBucket", e))?;
        let created = Observed {
            address: Some(want.address.to_string()),
            owner: Some(want.owner.clone()),
            id: name.to_string(),
            attrs: Default::default(),
        };
        if let Err(e) = configure(cx, name, want, None).await {
            return Err(e.with_partial(created));
        }
        found_again(read_one(cx, name).await?, "bucket", &name)
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let (want, have, changed) = (u.want, u.have, u.changed);
        configure(cx, &have.id, want, Some(changed)).await?;
        found_again(read_one(cx, &have.id).await?, "bucket", &have.id)
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        if d.have.attrs.get("force_destroy") == Some(&Json::Bool(true)) {
            empty(cx, &d.have.id).await?;
        }
        match crate::clients(cx).await?.s3.delete_bucket().bucket(&d.have.id).send().await {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("NoSuchBucket") => Ok(()),
            Err(e) if error_code(&e) == Some("BucketNotEmpty") => Err(DriverError::new(format!(
                "bucket {} still holds objects: empty it, or set `force_destroy: true` on it and apply before destroying",
                d.have.id
            ))),
            Err(e) => Err(api_error("DeleteBucket", e)),
        }
    }
}
