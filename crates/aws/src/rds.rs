//! RDS PostgreSQL: `aws.rds_subnet_group`, `aws.rds_parameter_group` and
//! `aws.rds_instance` (a primary, or a read replica with
//! `replicate_source_db`). The master password is managed by RDS in Secrets
//! Manager (`ManageMasterUserPassword`): the tool never knows it, and the
//! state holds only the secret's ARN. A Multi-AZ instance takes 20-40
//! minutes on AWS: create, modify and delete wait for it.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_rds::types::{ApplyMethod, Parameter};
use serde_json::{Map, Value as Json};

use super::arn_tags::{self, ArnService};
use super::subnet_group::subnet_group_calls;
use super::{
    api_error, error_code, found, gone_or_deleting, observed_with, opt_str, read_each,
    read_tag_pairs, strings, user_tags_of, wait_gone, Readiness, Waiting,
};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
    STATUS_ATTR,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

const INSTANCE_TIMEOUT: Duration = Duration::from_secs(40 * 60);

mod failover;

fn identifier(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = checks::lowercase_name(s, 1..=63) && !s.contains("--");
    checks::require(ok, || {
        format!("`{s}` breaks RDS naming: 1-63 lowercase letters, digits and single hyphens, starting with a letter, not ending with a hyphen")
    })
}

fn instance_class(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    checks::require(s.starts_with("db.") && s.split('.').count() == 3, || {
        format!("`{s}` is not a DB instance class such as db.t3.large")
    })
}

fn retention(v: &Json) -> Result<(), String> {
    match v.as_i64() {
        Some(0..=35) => Ok(()),
        _ => Err("backup_retention_days must be between 0 and 35".into()),
    }
}

/// Minutes since midnight of `hh:mm` (24-hour, UTC).
fn clock(t: &str) -> Option<u32> {
    let (h, m) = t.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// RDS PreferredBackupWindow: `hh24:mi-hh24:mi`, UTC, at least 30 minutes.
fn backup_window(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let parsed = s
        .split_once('-')
        .and_then(|(a, b)| Some((clock(a)?, clock(b)?)));
    let Some((from, to)) = parsed else {
        return Err(format!(
            "backup window `{s}` is not hh:mm-hh:mm (24-hour, UTC), such as 03:00-04:00"
        ));
    };
    let length = (to + 24 * 60 - from) % (24 * 60);
    if length < 30 {
        return Err(format!(
            "backup window `{s}` is {length} minutes long; RDS needs at least 30"
        ));
    }
    Ok(())
}

/// RDS PreferredMaintenanceWindow: `ddd:hh24:mi-ddd:hh24:mi`, UTC, at
/// least 30 minutes.
fn maintenance_window(v: &Json) -> Result<(), String> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let s = v.as_str().unwrap_or_default();
    let point = |p: &str| -> Option<u32> {
        let (day, time) = p.split_once(':')?;
        let d = DAYS.iter().position(|x| x.eq_ignore_ascii_case(day))? as u32;
        Some(d * 24 * 60 + clock(time)?)
    };
    let parsed = s
        .split_once('-')
        .and_then(|(a, b)| Some((point(a)?, point(b)?)));
    let Some((from, to)) = parsed else {
        return Err(format!(
            "maintenance window `{s}` is not ddd:hh:mm-ddd:hh:mm (UTC), such as sun:04:30-sun:05:30"
        ));
    };
    let week = 7 * 24 * 60;
    let length = (to + week - from) % week;
    if length < 30 {
        return Err(format!(
            "maintenance window `{s}` is {length} minutes long; RDS needs at least 30"
        ));
    }
    Ok(())
}

fn storage(v: &Json) -> Result<(), String> {
    match v.as_i64() {
        Some(20..=65536) => Ok(()),
        _ => Err("allocated_storage must be between 20 and 65536 GiB".into()),
    }
}

static SUBNET_GROUP: KindSchema = KindSchema::new(
    "aws.rds_subnet_group",
    "rds",
    "The subnets an RDS instance may use.",
)
.fields(&[
    Field::name("the group name").check(identifier),
    Field::new("description", Ty::String, "what it is for").default("\"Managed by ralph-deploy\""),
    Field::new(
        "subnet_ids",
        Ty::Set(&Ty::String),
        "private subnets in at least two zones",
    )
    .required(),
    Field::tags(),
])
.attrs(&[
    Attr::string("id", "the group name"),
    Attr::string("arn", "the group ARN"),
])
.name_field("name");

static PARAMETER_GROUP: KindSchema = KindSchema::new(
    "aws.rds_parameter_group",
    "rds",
    "Database engine settings for RDS instances.",
)
.fields(&[
    Field::name("the group name").check(identifier),
    Field::new(
        "family",
        Ty::String,
        "the engine family, such as postgres15",
    )
    .default("\"postgres15\"")
    .forces_replace(),
    Field::new("description", Ty::String, "what it is for")
        .default("\"Managed by ralph-deploy\"")
        .forces_replace(),
    Field::new(
        "parameters",
        Ty::StringMap,
        "parameter name to value (applied at the next reboot)",
    )
    .default("{}"),
    Field::tags(),
])
.attrs(&[
    Attr::string("id", "the group name"),
    Attr::string("arn", "the group ARN"),
])
.name_field("name");

static INSTANCE: KindSchema = KindSchema::new(
    "aws.rds_instance",
    "rds",
    "An RDS database instance: a primary, or a read replica of one.",
)
.fields(&[
    Field::fixed("identifier", Ty::String, "the instance identifier").check(identifier),
    Field::new(
        "replicate_source_db",
        Ty::String,
        "make this a read replica of that instance",
    )
    .forces_replace(),
    Field::new("engine", Ty::String, "the engine")
        .default("\"postgres\"")
        .forces_replace(),
    Field::new(
        "engine_version",
        Ty::Version,
        "engine version, such as \"15\"; upgrades happen in place",
    ),
    Field::new("instance_class", Ty::String, "such as db.t3.large")
        .required()
        .check(instance_class),
    Field::new(
        "allocated_storage",
        Ty::Int,
        "GiB of storage (can only grow)",
    )
    .check(storage),
    Field::new("storage_type", Ty::String, "gp3, gp2 or io1").default("\"gp3\""),
    Field::new("storage_encrypted", Ty::Bool, "encrypt storage at rest")
        .default("true")
        .forces_replace(),
    Field::new("kms_key_id", Ty::String, "KMS key for storage encryption").forces_replace(),
    Field::new(
        "multi_az",
        Ty::Bool,
        "a synchronous standby in another zone",
    )
    .default("false"),
    Field::new(
        "db_subnet_group_name",
        Ty::String,
        "the subnet group (primaries)",
    )
    .forces_replace(),
    Field::new("parameter_group_name", Ty::String, "the parameter group"),
    Field::new(
        "vpc_security_group_ids",
        Ty::Set(&Ty::String),
        "security groups",
    )
    .default("[]"),
    Field::new(
        "backup_retention_days",
        Ty::Int,
        "days of automated backups (0 turns them off)",
    )
    .check(retention),
    Field::new(
        "backup_window",
        Ty::String,
        "daily backup window, UTC, such as 03:00-04:00",
    )
    .check(backup_window),
    Field::new(
        "maintenance_window",
        Ty::String,
        "weekly maintenance window, such as sun:04:00-sun:05:00",
    )
    .check(maintenance_window),
    Field::new(
        "deletion_protection",
        Ty::Bool,
        "the service refuses to delete it",
    )
    .default("true"),
    Field::new(
        "db_name",
        Ty::String,
        "a database created with the instance",
    )
    .forces_replace(),
    Field::new(
        "master_username",
        Ty::String,
        "the administrator (primaries)",
    )
    .forces_replace(),
    Field::new(
        "publicly_accessible",
        Ty::Bool,
        "reachable from outside the VPC",
    )
    .default("false"),
    Field::new(
        "skip_final_snapshot",
        Ty::Bool,
        "delete without a final snapshot",
    )
    .default("false"),
    Field::tags(),
])
.attrs(&[
    Attr::string("id", "the instance identifier"),
    Attr::string("arn", "the instance ARN"),
    Attr::string("address", "the endpoint host name"),
    Attr::new("port", Ty::Int, "the endpoint port"),
    Attr::string(
        "master_user_secret_arn",
        "the Secrets Manager secret RDS keeps the master password in",
    ),
    Attr::string("status", "creating, available, modifying, ..."),
])
.name_field("identifier");

pub struct ParameterGroup;
pub struct Instance;

fn int(want: &Desired<'_>, f: &str) -> Result<Option<i32>, DriverError> {
    want.int(f)
}

// ---- subnet group ----

subnet_group_calls!(DbSubnets {
    schema: SUBNET_GROUP,
    arn: ArnService::Rds,
    client: rds,
    tags: arn_tags::rds_tags,
    noun: "DBSubnetGroup",
    missing: "DBSubnetGroupNotFoundFault",
    describe: describe_db_subnet_groups,
    groups: db_subnet_groups,
    group_arn: db_subnet_group_arn,
    name: db_subnet_group_name,
    description: db_subnet_group_description,
    create: create_db_subnet_group,
    modify: modify_db_subnet_group,
    delete: delete_db_subnet_group,
});

// ---- parameter group ----

async fn read_parameter_group(cx: &Context, name: &str) -> Result<Option<Observed>, DriverError> {
    let rds = &crate::clients(cx).await?.rds;
    let answer = rds
        .describe_db_parameter_groups()
        .db_parameter_group_name(name)
        .send()
        .await;
    let found = super::found(
        "DescribeDBParameterGroups",
        answer,
        &["DBParameterGroupNotFound"],
    )?;
    let Some(g) = found.and_then(|o| o.db_parameter_groups?.into_iter().next()) else {
        return Ok(None);
    };
    let arn = g.db_parameter_group_arn().unwrap_or_default().to_string();
    let mut params = Map::new();
    let mut pages = rds
        .describe_db_parameters()
        .db_parameter_group_name(name)
        .source("user")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| api_error("DescribeDBParameters", e))?;
        for p in page.parameters() {
            if let (Some(k), Some(v)) = (p.parameter_name(), p.parameter_value()) {
                params.insert(k.to_string(), Json::String(v.to_string()));
            }
        }
    }
    Ok(Some(observed_with(
        name,
        arn_tags::read(cx, ArnService::Rds, &arn).await?,
        vec![
            ("name", Json::String(name.to_string())),
            ("arn", Json::String(arn)),
            ("family", opt_str(g.db_parameter_group_family())),
            ("description", opt_str(g.description())),
            ("parameters", Json::Object(params)),
        ],
    )))
}

async fn set_parameters(
    cx: &Context,
    name: &str,
    have: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
) -> Result<(), DriverError> {
    let rds = &crate::clients(cx).await?.rds;
    let changed: Vec<Parameter> = want
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, v)| {
            Parameter::builder()
                .parameter_name(k)
                .parameter_value(v)
                .apply_method(ApplyMethod::PendingReboot)
                .build()
        })
        .collect();
    // The API takes at most 20 parameters per call.
    for chunk in changed.chunks(20) {
        rds.modify_db_parameter_group()
            .db_parameter_group_name(name)
            .set_parameters(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| api_error("ModifyDBParameterGroup", e))?;
    }
    let removed: Vec<Parameter> = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .map(|k| {
            Parameter::builder()
                .parameter_name(k)
                .apply_method(ApplyMethod::PendingReboot)
                .build()
        })
        .collect();
    for chunk in removed.chunks(20) {
        rds.reset_db_parameter_group()
            .db_parameter_group_name(name)
            .set_parameters(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| api_error("ResetDBParameterGroup", e))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Driver for ParameterGroup {
    fn schema(&self) -> &'static KindSchema {
        &PARAMETER_GROUP
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        read_each(
            known,
            |id| async move { read_parameter_group(cx, &id).await },
        )
        .await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let name = want.required_str("name")?;
        crate::clients(cx)
            .await?
            .rds
            .create_db_parameter_group()
            .db_parameter_group_name(name)
            .db_parameter_group_family(want.str("family").unwrap_or("postgres15"))
            .description(want.str("description").unwrap_or("Managed by ralph-deploy"))
            .set_tags(Some(arn_tags::rds_tags(want)))
            .send()
            .await
            .map_err(|e| api_error("CreateDBParameterGroup", e))?;
        set_parameters(
            cx,
            name,
            &BTreeMap::new(),
            &user_tags_of(want.props.get("parameters")),
        )
        .await?;
        found_again(
            read_parameter_group(cx, name).await?,
            "parameter group",
            &name,
        )
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        if u.changes("parameters") {
            set_parameters(
                cx,
                &have.id,
                &user_tags_of(have.attrs.get("parameters")),
                &user_tags_of(want.props.get("parameters")),
            )
            .await?;
        }
        if u.changes("tags") {
            arn_tags::sync(cx, ArnService::Rds, &crate::arn_of(have), have, want).await?;
        }
        found_again(
            read_parameter_group(cx, &have.id).await?,
            "parameter group",
            &have.id,
        )
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        super::delete_answer(
            "DeleteDBParameterGroup",
            crate::clients(cx)
                .await?
                .rds
                .delete_db_parameter_group()
                .db_parameter_group_name(&d.have.id)
                .send()
                .await,
            &["DBParameterGroupNotFound"],
        )
    }
}

// ---- instance ----

async fn read_instance(cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
    let rds = &crate::clients(cx).await?.rds;
    let answer = rds
        .describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await;
    let missing = ["DBInstanceNotFound", "DBInstanceNotFoundFault"];
    let Some(out) = found("DescribeDBInstances", answer, &missing)? else {
        return Ok(None);
    };
    Ok(out.db_instances().first().map(|d| observe_instance(id, d)))
}

/// What DescribeDBInstances says of one instance, as the kind's attributes.
pub(super) fn observe_instance(id: &str, d: &aws_sdk_rds::types::DbInstance) -> Observed {
    let tags = read_tag_pairs(
        d.tag_list()
            .iter()
            .filter_map(|t| Some((t.key()?, t.value()?))),
    );
    let int = |v: Option<i32>| v.map(|x| Json::from(x as i64)).unwrap_or(Json::Null);
    let boolean = |v: Option<bool>| v.map(Json::Bool).unwrap_or(Json::Null);
    let status = d.db_instance_status().unwrap_or("unknown").to_string();
    let sgs: Vec<Json> = d
        .vpc_security_groups()
        .iter()
        .filter_map(|g| {
            g.vpc_security_group_id()
                .map(|s| Json::String(s.to_string()))
        })
        .collect();
    let o = observed_with(
        id,
        tags,
        vec![
            ("identifier", Json::String(id.to_string())),
            ("arn", opt_str(d.db_instance_arn())),
            (
                "replicate_source_db",
                opt_str(d.read_replica_source_db_instance_identifier()),
            ),
            ("engine", opt_str(d.engine())),
            ("engine_version", opt_str(d.engine_version())),
            ("instance_class", opt_str(d.db_instance_class())),
            ("allocated_storage", int(d.allocated_storage())),
            ("storage_type", opt_str(d.storage_type())),
            ("storage_encrypted", boolean(d.storage_encrypted())),
            ("multi_az", boolean(d.multi_az())),
            (
                "db_subnet_group_name",
                opt_str(d.db_subnet_group().and_then(|g| g.db_subnet_group_name())),
            ),
            (
                "parameter_group_name",
                opt_str(
                    d.db_parameter_groups()
                        .first()
                        .and_then(|g| g.db_parameter_group_name()),
                ),
            ),
            ("vpc_security_group_ids", Json::Array(sgs)),
            ("backup_retention_days", int(d.backup_retention_period())),
            ("backup_window", opt_str(d.preferred_backup_window())),
            (
                "maintenance_window",
                opt_str(d.preferred_maintenance_window()),
            ),
            ("deletion_protection", boolean(d.deletion_protection())),
            ("db_name", opt_str(d.db_name())),
            ("master_username", opt_str(d.master_username())),
            ("publicly_accessible", boolean(d.publicly_accessible())),
            ("address", opt_str(d.endpoint().and_then(|e| e.address()))),
            ("port", int(d.endpoint().and_then(|e| e.port()))),
            (
                "master_user_secret_arn",
                opt_str(d.master_user_secret().and_then(|s| s.secret_arn())),
            ),
        ],
    );
    o.with_status(&status, "available")
}

const INSTANCE_READY: Readiness = Readiness {
    what: "the database",
    ready: "available",
    failed: &[
        "failed",
        "incompatible-parameters",
        "incompatible-network",
        "storage-full",
        "inaccessible-encryption-credentials",
    ],
};

async fn wait_available(cx: &Context, w: Waiting<'_>) -> Result<Observed, DriverError> {
    INSTANCE_READY.wait(cx, w, || read_instance(cx, w.id)).await
}

#[async_trait::async_trait]
impl Driver for Instance {
    fn promotion(&self) -> Option<&dyn ralph_core::driver::capability::Promotion> {
        Some(&failover::RdsPromotion)
    }

    fn snapshots(&self) -> Option<&dyn ralph_core::driver::capability::Snapshots> {
        Some(&failover::RdsSnapshots)
    }

    fn typical_seconds(&self) -> u64 {
        1200
    }

    fn schema(&self) -> &'static KindSchema {
        &INSTANCE
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let all = read_each(known, |id| async move { read_instance(cx, &id).await }).await?;
        Ok(all
            .into_iter()
            .filter(|o| o.attrs.get(STATUS_ATTR).and_then(Json::as_str) != Some("deleting"))
            .collect())
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let rds = &crate::clients(cx).await?.rds;
        let id = want.required_str("identifier")?;
        let s = |f: &str| want.str(f).map(str::to_string);
        if let Some(source) = want.str("replicate_source_db") {
            rds.create_db_instance_read_replica()
                .db_instance_identifier(id)
                .source_db_instance_identifier(source)
                .db_instance_class(want.required_str("instance_class")?)
                .multi_az(want.bool("multi_az").unwrap_or(false))
                .set_storage_type(s("storage_type"))
                .set_db_parameter_group_name(s("parameter_group_name"))
                .set_vpc_security_group_ids(Some(strings(want.props.get("vpc_security_group_ids"))))
                .deletion_protection(want.bool("deletion_protection").unwrap_or(true))
                .publicly_accessible(want.bool("publicly_accessible").unwrap_or(false))
                .set_tags(Some(arn_tags::rds_tags(want)))
                .send()
                .await
                .map_err(|e| api_error("CreateDBInstanceReadReplica", e))?;
        } else {
            rds.create_db_instance()
                .db_instance_identifier(id)
                .engine(want.str("engine").unwrap_or("postgres"))
                .set_engine_version(s("engine_version"))
                .db_instance_class(want.required_str("instance_class")?)
                .set_allocated_storage(int(want, "allocated_storage")?.or(Some(20)))
                .set_storage_type(s("storage_type"))
                .storage_encrypted(want.bool("storage_encrypted").unwrap_or(true))
                .set_kms_key_id(s("kms_key_id"))
                .multi_az(want.bool("multi_az").unwrap_or(false))
                .set_db_subnet_group_name(s("db_subnet_group_name"))
                .set_db_parameter_group_name(s("parameter_group_name"))
                .set_vpc_security_group_ids(Some(strings(want.props.get("vpc_security_group_ids"))))
                .set_backup_retention_period(int(want, "backup_retention_days")?)
                .set_preferred_backup_window(s("backup_window"))
                .set_preferred_maintenance_window(s("maintenance_window"))
                .deletion_protection(want.bool("deletion_protection").unwrap_or(true))
                .set_db_name(s("db_name"))
                .master_username(want.str("master_username").unwrap_or("ralph"))
                .manage_master_user_password(true)
                .publicly_accessible(want.bool("publicly_accessible").unwrap_or(false))
                .copy_tags_to_snapshot(true)
                .set_tags(Some(arn_tags::rds_tags(want)))
                .send()
                .await
                .map_err(|e| api_error("CreateDBInstance", e))?;
        }
        wait_available(
            cx,
            Waiting::created(want.address, id, want.timeouts.create_or(INSTANCE_TIMEOUT)),
        )
        .await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let settings = [
            "engine_version",
            "instance_class",
            "allocated_storage",
            "storage_type",
            "multi_az",
            "parameter_group_name",
            "vpc_security_group_ids",
            "backup_retention_days",
            "backup_window",
            "maintenance_window",
            "deletion_protection",
            "publicly_accessible",
        ];
        if settings.iter().any(|f| u.changes(f)) {
            let s = |f: &str| {
                if u.changes(f) {
                    want.str(f).map(str::to_string)
                } else {
                    None
                }
            };
            let b = |f: &str| if u.changes(f) { want.bool(f) } else { None };
            let mut req = crate::clients(cx)
                .await?
                .rds
                .modify_db_instance()
                .db_instance_identifier(&have.id)
                .apply_immediately(true);
            req = req
                .set_engine_version(s("engine_version"))
                .set_db_instance_class(s("instance_class"))
                .set_allocated_storage(if u.changes("allocated_storage") {
                    int(want, "allocated_storage")?
                } else {
                    None
                })
                .set_storage_type(s("storage_type"))
                .set_multi_az(b("multi_az"))
                .set_db_parameter_group_name(s("parameter_group_name"))
                .set_backup_retention_period(if u.changes("backup_retention_days") {
                    int(want, "backup_retention_days")?
                } else {
                    None
                })
                .set_preferred_backup_window(s("backup_window"))
                .set_preferred_maintenance_window(s("maintenance_window"))
                .set_deletion_protection(b("deletion_protection"))
                .set_publicly_accessible(b("publicly_accessible"));
            if u.changes("engine_version") {
                req = req.allow_major_version_upgrade(true);
            }
            if u.changes("vpc_security_group_ids") {
                req = req.set_vpc_security_group_ids(Some(strings(
                    want.props.get("vpc_security_group_ids"),
                )));
            }
            req.send()
                .await
                .map_err(|e| api_error("ModifyDBInstance", e))?;
        }
        if u.changes("tags") {
            arn_tags::sync(cx, ArnService::Rds, &crate::arn_of(have), have, want).await?;
        }
        wait_available(
            cx,
            Waiting::existing(
                want.address,
                &have.id,
                want.timeouts.update_or(INSTANCE_TIMEOUT),
            ),
        )
        .await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let rds = &crate::clients(cx).await?.rds;
        let address = d.address();
        // Only reached with --allow-protected: lift the service's own protection first.
        if d.have.attrs.get("deletion_protection") == Some(&Json::Bool(true)) {
            rds.modify_db_instance()
                .db_instance_identifier(&d.have.id)
                .deletion_protection(false)
                .apply_immediately(true)
                .send()
                .await
                .map_err(|e| api_error("ModifyDBInstance", e))?;
            wait_available(
                cx,
                Waiting::existing(&address, &d.have.id, d.timeouts.update_or(INSTANCE_TIMEOUT)),
            )
            .await?;
        }
        let replica = d
            .have
            .attrs
            .get("replicate_source_db")
            .is_some_and(|v| !v.is_null());
        let skip = replica || d.have.attrs.get("skip_final_snapshot") == Some(&Json::Bool(true));
        let mut req = rds
            .delete_db_instance()
            .db_instance_identifier(&d.have.id)
            .skip_final_snapshot(skip)
            .delete_automated_backups(false);
        if !skip {
            // To the millisecond: an instance of the same name destroyed in
            // the same second (destroy, apply, destroy) left its own.
            req = req.final_db_snapshot_identifier(format!(
                "{}-final-{}",
                d.have.id,
                chrono::Utc::now().format("%Y%m%d%H%M%S%3f")
            ));
        }
        // Already being deleted (a run killed mid-delete, or a retried
        // request whose first attempt took effect): wait for it instead of
        // asking again, which would fail or take a second final snapshot.
        if !gone_or_deleting(read_instance(cx, &d.have.id)).await? {
            match req.send().await {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        error_code(&e),
                        Some("DBInstanceNotFound" | "DBInstanceNotFoundFault")
                    ) =>
                {
                    return Ok(())
                }
                Err(e)
                    if matches!(
                        error_code(&e),
                        Some(
                            "InvalidDBInstanceState"
                                | "InvalidDBInstanceStateFault"
                                | "DBSnapshotAlreadyExists"
                                | "DBSnapshotAlreadyExistsFault"
                        )
                    ) =>
                {
                    if !gone_or_deleting(read_instance(cx, &d.have.id)).await? {
                        return Err(api_error("DeleteDBInstance", e));
                    }
                }
                Err(e) => return Err(api_error("DeleteDBInstance", e)),
            }
        }
        wait_gone(
            cx,
            d.have,
            "the database",
            d.timeouts.delete_or(INSTANCE_TIMEOUT),
            || read_instance(cx, &d.have.id),
        )
        .await
    }
}
