//! `aws.elasticache_auth_rotation`: the second half of an AUTH token
//! rotation. ElastiCache rotates in two steps: `ROTATE` adds the new token
//! and keeps the old one valid, `SET` leaves the new one alone. The group
//! (`aws.elasticache_replication_group` with `auth_token_version`) does the
//! first when the secret gets a new version; this resource, placed after
//! the clients (it depends on the orchestrator, whose pods roll onto the
//! new token), does the second. So no client ever holds a token the group
//! refuses: before the rollout both tokens work, after it only the pods'.
//!
//! It owns nothing in the cloud: creating it records the version the group
//! was made with (a new group has that token alone), deleting it forgets
//! it. A group older than its secret's current value (a stack that first
//! records the version in the apply that rotates the token) took that value
//! beside its first: creating the rotation then keeps the new one alone.

use serde_json::{json, Value as Json};

use super::elasticache::{describe_group, read_group, rotate_token, took_a_later_token};
use ralph_core::driver::{Context, Delete, Desired, Driver, DriverError, Known, Observed, Update};
use ralph_core::model::kinds::{Attr, Field, KindSchema, Ty};

static ROTATION: KindSchema = KindSchema::new("aws.elasticache_auth_rotation", "elasticache", "Finishes a Redis AUTH token rotation: once what it depends on (the pods) has the new token, the replication group keeps only that one (SET).")
    .fields(&[
        Field::fixed("replication_group_id",
            Ty::String,
            "the group, usually `${redis.id}`"),
        Field::new(
            "auth_token_secret_arn",
            Ty::String,
            "the token's secret, the group's `auth_token_secret_arn`",
        )
        .required(),
        Field::new(
            "auth_token_version",
            Ty::String,
            "the version the group rotated to, the group's `auth_token_version`",
        )
        .required(),
    ])
    .attrs(&[Attr::string("id", "GROUP/auth")]);

pub struct Rotation;

fn observed(group: &str, props: &serde_json::Map<String, Json>) -> Observed {
    let id = format!("{group}/auth");
    let mut attrs = props.clone();
    attrs.insert("id".into(), json!(id));
    Observed {
        id,
        owner: None,
        address: None,
        attrs,
    }
}

#[async_trait::async_trait]
impl Driver for Rotation {
    fn schema(&self) -> &'static KindSchema {
        &ROTATION
    }

    /// There while its group is; what it last set is what the state recorded.
    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let mut out = Vec::new();
        for k in known.iter().filter(|k| !k.inputs.is_empty()) {
            let group = k
                .inputs
                .get("replication_group_id")
                .and_then(Json::as_str)
                .unwrap_or_default();
            if read_group(cx, group).await?.is_some() {
                out.push(observed(group, &k.inputs));
            }
        }
        Ok(out)
    }

    /// Records the version; where the group was not made with the
    /// secret's current value (it took it beside the first in the same
    /// apply that first recorded a version), finishes that rotation too.
    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let group = want.required_str("replication_group_id")?;
        let Some(found) = describe_group(cx, group).await? else {
            return Err(DriverError::new(format!(
                "the replication group {group} does not exist"
            )));
        };
        if took_a_later_token(cx, &found, want.required_str("auth_token_secret_arn")?).await? {
            let timeout = want
                .timeouts
                .create_or(std::time::Duration::from_secs(60 * 60));
            rotate_token(cx, want, group, "SET", timeout).await?;
        }
        Ok(observed(group, want.props))
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, .. } = u;
        let group = want.required_str("replication_group_id")?;
        let timeout = want
            .timeouts
            .update_or(std::time::Duration::from_secs(60 * 60));
        rotate_token(cx, want, group, "SET", timeout).await?;
        Ok(observed(group, want.props))
    }

    async fn delete(&self, _cx: &Context, _d: Delete<'_>) -> Result<(), DriverError> {
        Ok(())
    }
}
