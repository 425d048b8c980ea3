//! ElastiCache Redis: `aws.elasticache_subnet_group` and
//! `aws.elasticache_replication_group` (a primary with replicas, automatic
//! failover, Multi-AZ, encryption in transit and at rest, and an AUTH token
//! read from a Secrets Manager secret at apply time and never stored).
//! Creating a group takes up to an hour on AWS.

use std::time::Duration;

use serde_json::Value as Json;

use super::arn_tags::{self, ArnService};
use super::subnet_group::subnet_group_calls;
use super::{
    api_error, delete_started, found, observed_with, opt_str, read_each, strings, wait_gone,
    Readiness, Waiting,
};
use ralph_core::driver::{
    Context, Delete, Desired, Driver, DriverError, Known, Observed, Update, STATUS_ATTR,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

const GROUP_TIMEOUT: Duration = Duration::from_secs(60 * 60);

fn group_id(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = checks::lowercase_name(s, 1..=40) && !s.contains("--");
    checks::require(ok, || {
        format!("`{s}` breaks ElastiCache naming: 1-40 lowercase letters, digits and single hyphens, starting with a letter")
    })
}

fn node_type(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    checks::require(s.starts_with("cache.") && s.split('.').count() == 3, || {
        format!("`{s}` is not a cache node type such as cache.r6g.large")
    })
}

fn clusters(v: &Json) -> Result<(), String> {
    match v.as_i64() {
        Some(1..=6) => Ok(()),
        _ => Err(
            "num_cache_clusters must be between 1 and 6 (a primary and up to 5 replicas)".into(),
        ),
    }
}

static SUBNET_GROUP: KindSchema = KindSchema::new(
    "aws.elasticache_subnet_group",
    "elasticache",
    "The subnets an ElastiCache group may use.",
)
.fields(&[
    Field::name("the group name").check(group_id),
    Field::new("description", Ty::String, "what it is for").default("\"Managed by ralph-deploy\""),
    Field::new("subnet_ids", Ty::Set(&Ty::String), "private subnets").required(),
    Field::tags(),
])
.attrs(&[
    Attr::string("id", "the group name"),
    Attr::string("arn", "the group ARN"),
])
.name_field("name");

static GROUP: KindSchema = KindSchema::new("aws.elasticache_replication_group", "elasticache", "A Redis replication group: a primary and its replicas.")
    .fields(&[
        Field::fixed("replication_group_id", Ty::String, "the group id")
            .check(group_id),
        Field::new("description", Ty::String, "what it is for")
            .default("\"Managed by ralph-deploy\""),
        Field::new(
            "engine_version",
            Ty::Version,
            "Redis version, such as \"7.1\"",
        ),
        Field::new("node_type", Ty::String, "such as cache.r6g.large")
            .required()
            .check(node_type),
        Field::new(
            "num_cache_clusters",
            Ty::Int,
            "nodes: the primary plus replicas",
        )
        .default("2")
        .check(clusters),
        Field::new("subnet_group_name", Ty::String, "the subnet group").forces_replace(),
        Field::new(
            "security_group_ids",
            Ty::Set(&Ty::String),
            "security groups",
        )
        .default("[]"),
        Field::new(
            "parameter_group_name",
            Ty::String,
            "a cache parameter group",
        ),
        Field::new(
            "automatic_failover",
            Ty::Bool,
            "promote a replica when the primary fails",
        )
        .default("true"),
        Field::new("multi_az", Ty::Bool, "spread nodes over zones").default("true"),
        Field::new(
            "transit_encryption",
            Ty::Bool,
            "TLS between clients and nodes",
        )
        .default("true")
        .forces_replace(),
        Field::new("at_rest_encryption", Ty::Bool, "encrypt data on disk")
            .default("true")
            .forces_replace(),
        Field::new(
            "auth_token_secret_arn",
            Ty::String,
            "a Secrets Manager secret holding the AUTH token (needs transit_encryption)",
        )
        .forces_replace(),
        Field::new(
            "auth_token_version",
            Ty::String,
            "the version of the token's secret, usually `${secrets.redis_auth_version}`: when it changes, the group takes the new token beside the old one (ROTATE), so clients holding either get in, until an `aws.elasticache_auth_rotation` that runs after the clients have the new token keeps it alone",
        ),
        Field::new(
            "snapshot_retention_days",
            Ty::Int,
            "days of automatic snapshots",
        )
        .default("0")
        .check(checks::range::<0, 35>),
        Field::new("port", Ty::Int, "the port")
            .default("6379")
            .forces_replace()
            .check(checks::tcp_port),
        Field::tags(),
    ])
    .attrs(&[
        Attr::string("id", "the group id"),
        Attr::string("arn", "the group ARN"),
        Attr::string("primary_endpoint", "where writes go"),
        Attr::string("reader_endpoint", "where reads may go"),
        Attr::string("status", "creating, available, modifying, ..."),
    ])
    .name_field("replication_group_id");

pub struct ReplicationGroup;

/// Brings a replication group's or subnet group's tags to the stack's.
async fn sync_ec_tags(
    cx: &Context,
    have: &Observed,
    want: &Desired<'_>,
) -> Result<(), DriverError> {
    let arn = crate::arn_of(have);
    arn_tags::sync(cx, ArnService::ElastiCache, &arn, have, want).await
}

// ---- subnet group ----

subnet_group_calls!(CacheSubnets {
    schema: SUBNET_GROUP,
    arn: ArnService::ElastiCache,
    client: elasticache,
    tags: arn_tags::elasticache_tags,
    noun: "CacheSubnetGroup",
    missing: "CacheSubnetGroupNotFoundFault",
    describe: describe_cache_subnet_groups,
    groups: cache_subnet_groups,
    group_arn: arn,
    name: cache_subnet_group_name,
    description: cache_subnet_group_description,
    create: create_cache_subnet_group,
    modify: modify_cache_subnet_group,
    delete: delete_cache_subnet_group,
});

// ---- replication group ----

/// The group as DescribeReplicationGroups gives it; None when it is gone.
pub(super) async fn describe_group(
    cx: &Context,
    id: &str,
) -> Result<Option<aws_sdk_elasticache::types::ReplicationGroup>, DriverError> {
    let ec = &crate::clients(cx).await?.elasticache;
    let answer = ec
        .describe_replication_groups()
        .replication_group_id(id)
        .send()
        .await;
    let out = found(
        "DescribeReplicationGroups",
        answer,
        &["ReplicationGroupNotFoundFault"],
    )?;
    Ok(out.and_then(|o| o.replication_groups().first().cloned()))
}

pub(super) async fn read_group(cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
    let Some(g) = describe_group(cx, id).await? else {
        return Ok(None);
    };
    let g = &g;
    let arn = g.arn().unwrap_or_default().to_string();
    let status = g.status().unwrap_or("unknown").to_string();
    let node_group = g.node_groups().first();
    let o = observed_with(
        id,
        arn_tags::read(cx, ArnService::ElastiCache, &arn).await?,
        vec![
            ("replication_group_id", Json::String(id.to_string())),
            ("arn", Json::String(arn)),
            ("description", opt_str(g.description())),
            ("node_type", opt_str(g.cache_node_type())),
            (
                "num_cache_clusters",
                Json::from(g.member_clusters().len() as i64),
            ),
            (
                "automatic_failover",
                g.automatic_failover()
                    .map(|a| Json::Bool(a.as_str() == "enabled" || a.as_str() == "enabling"))
                    .unwrap_or(Json::Null),
            ),
            (
                "multi_az",
                g.multi_az()
                    .map(|m| Json::Bool(m.as_str() == "enabled"))
                    .unwrap_or(Json::Null),
            ),
            (
                "transit_encryption",
                g.transit_encryption_enabled()
                    .map(Json::Bool)
                    .unwrap_or(Json::Null),
            ),
            (
                "at_rest_encryption",
                g.at_rest_encryption_enabled()
                    .map(Json::Bool)
                    .unwrap_or(Json::Null),
            ),
            (
                "snapshot_retention_days",
                g.snapshot_retention_limit()
                    .map(|d| Json::from(d as i64))
                    .unwrap_or(Json::Null),
            ),
            (
                "primary_endpoint",
                opt_str(
                    node_group
                        .and_then(|n| n.primary_endpoint())
                        .and_then(|e| e.address()),
                ),
            ),
            (
                "reader_endpoint",
                opt_str(
                    node_group
                        .and_then(|n| n.reader_endpoint())
                        .and_then(|e| e.address()),
                ),
            ),
        ],
    );
    Ok(Some(o.with_status(&status, "available")))
}

const GROUP_READY: Readiness = Readiness {
    what: "the Redis group",
    ready: "available",
    failed: &["create-failed"],
};

pub(super) async fn wait_group(cx: &Context, w: Waiting<'_>) -> Result<Observed, DriverError> {
    GROUP_READY.wait(cx, w, || read_group(cx, w.id)).await
}

/// Gives the group the token its secret holds now, beside the old one
/// (`ROTATE`) or alone (`SET`), and waits for it. The token stays in this
/// call.
pub(super) async fn rotate_token(
    cx: &Context,
    want: &Desired<'_>,
    id: &str,
    strategy: &str,
    timeout: Duration,
) -> Result<Observed, DriverError> {
    use aws_sdk_elasticache::types::AuthTokenUpdateStrategyType;
    let arn = want.required_str("auth_token_secret_arn")?;
    let token = auth_token(cx, arn).await?;
    crate::clients(cx)
        .await?
        .elasticache
        .modify_replication_group()
        .replication_group_id(id)
        .apply_immediately(true)
        .auth_token(token)
        .auth_token_update_strategy(AuthTokenUpdateStrategyType::from(strategy))
        .send()
        .await
        .map_err(|e| api_error("ModifyReplicationGroup", e))?;
    wait_group(cx, Waiting::existing(want.address, id, timeout)).await
}

/// The secret's current version: its value and when it was made.
async fn current_version(
    cx: &Context,
    arn: &str,
) -> Result<aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput, DriverError>
{
    crate::clients(cx)
        .await?
        .secrets
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| api_error("GetSecretValue", e))
}

/// When the secret's current value was made (its version's creation).
/// Only the date leaves this call.
async fn token_made(
    cx: &Context,
    arn: &str,
) -> Result<Option<aws_sdk_elasticache::primitives::DateTime>, DriverError> {
    Ok(current_version(cx, arn).await?.created_date().copied())
}

/// Whether the group already holds the value its secret holds now: its
/// token last changed when or after that value was made (the group was
/// made from it, or rotated to it). Asked where no version is on record
/// yet: the secret may have taken a new value in this very apply, which
/// the group has never seen. Where either service gives no date, yes (as
/// a version on record for the first time always counted).
pub(super) async fn holds_current_token(
    cx: &Context,
    group: &aws_sdk_elasticache::types::ReplicationGroup,
    arn: &str,
) -> Result<bool, DriverError> {
    let changed = group.auth_token_last_modified_date();
    let Some(changed) = changed.or(group.replication_group_create_time()) else {
        return Ok(true);
    };
    Ok(token_made(cx, arn)
        .await?
        .is_none_or(|value| changed.secs() >= value.secs()))
}

/// Whether a rotation may have left the group a second token: the secret's
/// current value was made after the group, so the group did not start with
/// it and took it beside its first (`ROTATE`).
pub(super) async fn took_a_later_token(
    cx: &Context,
    group: &aws_sdk_elasticache::types::ReplicationGroup,
    arn: &str,
) -> Result<bool, DriverError> {
    let Some(made) = group.replication_group_create_time() else {
        return Ok(false);
    };
    Ok(token_made(cx, arn)
        .await?
        .is_some_and(|value| value.secs() > made.secs()))
}

/// Reads the AUTH token from its secret. The value stays in this call.
pub(super) async fn auth_token(cx: &Context, arn: &str) -> Result<String, DriverError> {
    let out = current_version(cx, arn).await?;
    out.secret_string().map(str::to_string).ok_or_else(|| {
        DriverError::new(format!(
            "secret {arn} has no string value for the Redis AUTH token"
        ))
    })
}

#[async_trait::async_trait]
impl Driver for ReplicationGroup {
    fn typical_seconds(&self) -> u64 {
        900
    }

    fn schema(&self) -> &'static KindSchema {
        &GROUP
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let all = read_each(known, |id| async move { read_group(cx, &id).await }).await?;
        Ok(all
            .into_iter()
            .filter(|o| o.attrs.get(STATUS_ATTR).and_then(Json::as_str) != Some("deleting"))
            .collect())
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let id = want.required_str("replication_group_id")?;
        let token = match want.str("auth_token_secret_arn") {
            Some(arn) => Some(auth_token(cx, arn).await?),
            None => None,
        };
        crate::clients(cx)
            .await?
            .elasticache
            .create_replication_group()
            .replication_group_id(id)
            .replication_group_description(
                want.str("description").unwrap_or("Managed by ralph-deploy"),
            )
            .engine("redis")
            .set_engine_version(want.str("engine_version").map(str::to_string))
            .cache_node_type(want.required_str("node_type")?)
            .set_num_cache_clusters(want.int("num_cache_clusters")?)
            .automatic_failover_enabled(want.bool("automatic_failover").unwrap_or(true))
            .multi_az_enabled(want.bool("multi_az").unwrap_or(true))
            .set_cache_subnet_group_name(want.str("subnet_group_name").map(str::to_string))
            .set_security_group_ids(Some(strings(want.props.get("security_group_ids"))))
            .set_cache_parameter_group_name(want.str("parameter_group_name").map(str::to_string))
            .transit_encryption_enabled(want.bool("transit_encryption").unwrap_or(true))
            .at_rest_encryption_enabled(want.bool("at_rest_encryption").unwrap_or(true))
            .set_auth_token(token)
            .set_snapshot_retention_limit(want.int("snapshot_retention_days")?)
            .set_port(want.int("port")?)
            .set_tags(Some(arn_tags::elasticache_tags(want)))
            .send()
            .await
            .map_err(|e| api_error("CreateReplicationGroup", e))?;
        wait_group(
            cx,
            Waiting::created(want.address, id, want.timeouts.create_or(GROUP_TIMEOUT)),
        )
        .await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let ec = &crate::clients(cx).await?.elasticache;
        let timeout = want.timeouts.update_or(GROUP_TIMEOUT);
        let w = Waiting::existing(want.address, &have.id, timeout);
        let modifiable = [
            "description",
            "node_type",
            "engine_version",
            "security_group_ids",
            "parameter_group_name",
            "automatic_failover",
            "multi_az",
            "snapshot_retention_days",
        ];
        if modifiable.iter().any(|f| u.changes(f)) {
            let s = |f: &str| {
                if u.changes(f) {
                    want.str(f).map(str::to_string)
                } else {
                    None
                }
            };
            let b = |f: &str| if u.changes(f) { want.bool(f) } else { None };
            let mut req = ec
                .modify_replication_group()
                .replication_group_id(&have.id)
                .apply_immediately(true)
                .set_replication_group_description(s("description"))
                .set_cache_node_type(s("node_type"))
                .set_engine_version(s("engine_version"))
                .set_cache_parameter_group_name(s("parameter_group_name"))
                .set_automatic_failover_enabled(b("automatic_failover"))
                .set_multi_az_enabled(b("multi_az"))
                .set_snapshot_retention_limit(if u.changes("snapshot_retention_days") {
                    want.int("snapshot_retention_days")?
                } else {
                    None
                });
            if u.changes("security_group_ids") {
                req =
                    req.set_security_group_ids(Some(strings(want.props.get("security_group_ids"))));
            }
            req.send()
                .await
                .map_err(|e| api_error("ModifyReplicationGroup", e))?;
            wait_group(cx, w).await?;
        }
        // A version recorded before: a new token to rotate to. A version
        // given for the first time: only if the group does not hold that
        // value already (the secret took a new one in the same apply).
        let recorded = have
            .attrs
            .get("auth_token_version")
            .is_some_and(|v| !v.is_null());
        let rotate = u.changes("auth_token_version")
            && (recorded || {
                let arn = want.required_str("auth_token_secret_arn")?;
                match describe_group(cx, &have.id).await? {
                    Some(g) => !holds_current_token(cx, &g, arn).await?,
                    None => false,
                }
            });
        if rotate {
            rotate_token(cx, want, &have.id, "ROTATE", timeout).await?;
        }
        if u.changes("num_cache_clusters") {
            let want_n: i32 = want.int("num_cache_clusters")?.unwrap_or(2);
            let have_n = have
                .attrs
                .get("num_cache_clusters")
                .and_then(Json::as_i64)
                .and_then(|v| i32::try_from(v).ok())
                .unwrap_or(1);
            if want_n > have_n {
                ec.increase_replica_count()
                    .replication_group_id(&have.id)
                    .new_replica_count(want_n - 1)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| api_error("IncreaseReplicaCount", e))?;
            } else if want_n < have_n {
                ec.decrease_replica_count()
                    .replication_group_id(&have.id)
                    .new_replica_count(want_n - 1)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| api_error("DecreaseReplicaCount", e))?;
            }
            wait_group(cx, w).await?;
        }
        if u.changes("tags") {
            sync_ec_tags(cx, have, want).await?;
        }
        wait_group(cx, w).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let answer = crate::clients(cx)
            .await?
            .elasticache
            .delete_replication_group()
            .replication_group_id(&d.have.id)
            .send()
            .await;
        let read = read_group(cx, &d.have.id);
        let not_found = ["ReplicationGroupNotFoundFault"];
        if delete_started("DeleteReplicationGroup", answer, &not_found, read).await? {
            return Ok(());
        }
        wait_gone(
            cx,
            d.have,
            "the Redis group",
            d.timeouts.delete_or(GROUP_TIMEOUT),
            || read_group(cx, &d.have.id),
        )
        .await
    }
}
