//! `failover` on RDS: a read replica promoted to primary, and snapshots on
//! request (`capability::Promotion`, `capability::Snapshots`).
//!
//! The steps, each safe to repeat (a failover interrupted at any point is
//! finished by running it again):
//! 1. promote the replica (tagged with the failover's id);
//! 2. take the old primary's ownership tags off and rename it out of the
//!    way (`<name>-old-<UTC minute>`; it keeps its deletion protection and
//!    is left for the operator to inspect; `destroy` finds it by its
//!    retired-* tags, `Promotion::retired`, and deletes it first);
//! 3. give the promoted instance the primary's name and ownership tags, so
//!    its endpoint is the name the application already uses.

use std::time::Duration;

use serde_json::{Map, Value as Json};

use super::super::api_error;
use super::super::arn_tags::{self, ArnService};
use super::{observe_instance, read_instance};
use crate::arn_of;
use ralph_core::driver::capability::{Lag, Promoted, Promotion, PromotionPlan, Retired, Snapshots};
use ralph_core::driver::{Context, Desired, DriverError, Observed, STATUS_ATTR};

/// Marks the promoted instance between its promotion and taking over the
/// primary's name, so that a resumed failover tells it from the old primary.
const FAILOVER_TAG: &str = "ralph-deploy-failover";
/// Left on the old primary once it is out of the way: what it was.
const RETIRED_TAG: &str = "ralph-deploy-retired";
/// Also left on it: the ownership it had, by which `destroy` finds it (the
/// ownership tags themselves go, so that no refresh takes it for the
/// stack's primary again).
const RETIRED_STACK_TAG: &str = "ralph-deploy-retired-stack";
const RETIRED_ENVIRONMENT_TAG: &str = "ralph-deploy-retired-environment";
const RETIRED_ADDRESS_TAG: &str = "ralph-deploy-retired-address";

/// The instance named `id`, as refresh reads it (`None` when there is none).
/// The replica's lag behind its primary: the highest `ReplicaLag` CloudWatch
/// has for it over the last ten minutes, in seconds (`None`: no datapoint,
/// so the lag is unknown).
async fn replica_lag(cx: &Context, id: &str) -> Result<Option<f64>, DriverError> {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, Statistic};
    let now = std::time::SystemTime::now();
    let out = crate::clients(cx)
        .await?
        .cloudwatch
        .get_metric_statistics()
        .namespace("AWS/RDS")
        .metric_name("ReplicaLag")
        .dimensions(
            Dimension::builder()
                .name("DBInstanceIdentifier")
                .value(id)
                .build(),
        )
        .start_time(DateTime::from(now - Duration::from_secs(600)))
        // Past now: the current minute's datapoints count too.
        .end_time(DateTime::from(now + Duration::from_secs(60)))
        .period(60)
        .statistics(Statistic::Maximum)
        .send()
        .await
        .map_err(|e| api_error("GetMetricStatistics", e))?;
    // The latest minute is the one that counts.
    Ok(out
        .datapoints()
        .iter()
        .filter_map(|d| Some((d.timestamp()?.as_secs_f64(), d.maximum()?)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, lag)| lag))
}

/// Promotes the read replica `id` to a standalone instance (with the
/// primary's backup settings) and waits until it is available and no
/// longer a replica. `marker` tags it as the instance this failover
/// promoted. Nothing is sent again for an instance already promoted.
async fn promote(
    cx: &Context,
    address: &str,
    have: &Observed,
    backup_retention_days: Option<i32>,
    backup_window: Option<&str>,
    marker: &str,
    timeout: Duration,
) -> Result<Observed, DriverError> {
    let rds = &crate::clients(cx).await?.rds;
    let id = have.id.as_str();
    add_tags(cx, &arn_of(have), &[(FAILOVER_TAG, marker)]).await?;
    if is_replica(have) {
        rds.promote_read_replica()
            .db_instance_identifier(id)
            .set_backup_retention_period(backup_retention_days)
            .set_preferred_backup_window(backup_window.map(str::to_string))
            .send()
            .await
            .map_err(|e| api_error("PromoteReadReplica", e))?;
    }
    // Available is not enough right after the call: it must also have
    // stopped replicating.
    cx.wait_until(
        address,
        &format!("{id} to be promoted"),
        timeout,
        || async {
            let o = read_instance(cx, id).await?.ok_or_else(|| {
                DriverError::new(format!("{id} disappeared while being promoted"))
            })?;
            let status = status_of(&o);
            if ["failed", "incompatible-parameters", "storage-full"].contains(&status.as_str()) {
                return Err(DriverError::new(format!(
                    "{id} is `{status}`; see its events in the console"
                )));
            }
            if status == "available" && !is_replica(&o) {
                Ok((Some(o), status))
            } else {
                Ok((None, format!("promoting ({status})")))
            }
        },
    )
    .await
}

fn status_of(o: &Observed) -> String {
    o.attrs
        .get(STATUS_ATTR)
        .and_then(Json::as_str)
        .unwrap_or("unknown")
        .to_string()
}

/// Whether the instance still replicates from another.
fn is_replica(o: &Observed) -> bool {
    o.attrs
        .get("replicate_source_db")
        .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()))
}

/// Whether this failover (`marker`) promoted the instance: its tags, as
/// the read that found it returned them (the marker is not an ownership
/// tag, so it is among the user tags).
fn promoted_by(o: &Observed, marker: &str) -> bool {
    o.attrs
        .get("tags")
        .and_then(|t| t.get(FAILOVER_TAG))
        .and_then(Json::as_str)
        == Some(marker)
}

/// Renames the instance `from` to `to` at once and waits until it answers
/// to its new name. Done already (only `to` exists) is fine.
async fn rename(
    cx: &Context,
    address: &str,
    from: &str,
    to: &str,
    timeout: Duration,
) -> Result<Observed, DriverError> {
    if read_instance(cx, from).await?.is_some() {
        crate::clients(cx)
            .await?
            .rds
            .modify_db_instance()
            .db_instance_identifier(from)
            .new_db_instance_identifier(to)
            .apply_immediately(true)
            .send()
            .await
            .map_err(|e| api_error("ModifyDBInstance", e))?;
    }
    cx.wait_until(
        address,
        &format!("{from} to be renamed {to}"),
        timeout,
        || async {
            Ok(match read_instance(cx, to).await? {
                Some(o) if status_of(&o) == "available" => (Some(o), "available".to_string()),
                Some(o) => (None, status_of(&o)),
                None => (None, "renaming".to_string()),
            })
        },
    )
    .await
}

/// Tags on the RDS resource at `arn`.
async fn add_tags(cx: &Context, arn: &str, tags: &[(&str, &str)]) -> Result<(), DriverError> {
    let tags = tags
        .iter()
        .map(|(k, v)| aws_sdk_rds::types::Tag::builder().key(*k).value(*v).build())
        .collect();
    crate::clients(cx)
        .await?
        .rds
        .add_tags_to_resource()
        .resource_name(arn)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| api_error("AddTagsToResource", e))?;
    Ok(())
}

/// Takes the ownership tags off the old primary (so no refresh takes it
/// for the stack's again) and records what it was: in words in
/// `RETIRED_TAG`, and the owner and `address` in the retired-* tags.
async fn retire(cx: &Context, o: &Observed, address: &str, what: &str) -> Result<(), DriverError> {
    let rds = &crate::clients(cx).await?.rds;
    let arn = arn_of(o);
    add_tags(
        cx,
        &arn,
        &[
            (RETIRED_TAG, what),
            (RETIRED_STACK_TAG, &cx.owner.stack),
            (RETIRED_ENVIRONMENT_TAG, &cx.owner.environment),
            (RETIRED_ADDRESS_TAG, address),
        ],
    )
    .await?;
    rds.remove_tags_from_resource()
        .resource_name(&arn)
        .set_tag_keys(Some(
            [
                ralph_core::model::TAG_STACK,
                ralph_core::model::TAG_ENVIRONMENT,
                ralph_core::model::TAG_ADDRESS,
            ]
            .map(str::to_string)
            .to_vec(),
        ))
        .send()
        .await
        .map_err(|e| api_error("RemoveTagsFromResource", e))?;
    Ok(())
}

/// Gives the promoted instance the primary's tags: its ownership tags with
/// the primary's address, the stack's tags, and no failover marker (a user
/// tag the stack does not have, so `sync` removes it).
async fn take_over_tags(cx: &Context, o: &Observed, want: &Desired<'_>) -> Result<(), DriverError> {
    arn_tags::sync(cx, ArnService::Rds, &arn_of(o), o, want).await
}

/// `aws.rds_instance`'s replica promotion.
pub struct RdsPromotion;

#[async_trait::async_trait]
impl Promotion for RdsPromotion {
    fn primary_of<'a>(&self, inputs: &'a Map<String, Json>) -> Option<&'a str> {
        inputs
            .get("replicate_source_db")
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `<name>-old-<UTC minute>`, within RDS's 63 characters and without a
    /// trailing or doubled hyphen.
    fn aside_name(&self, primary_id: &str, now: chrono::DateTime<chrono::Utc>) -> String {
        let suffix = format!("-old-{}", now.format("%Y%m%d%H%M"));
        let keep: String = primary_id.chars().take(63 - suffix.len()).collect();
        format!("{}{suffix}", keep.trim_end_matches('-'))
    }

    async fn replica_lag(&self, cx: &Context, replica_id: &str) -> Result<Lag, DriverError> {
        Ok(Lag {
            seconds: replica_lag(cx, replica_id).await?,
            source: format!("CloudWatch's ReplicaLag for {replica_id}"),
        })
    }

    async fn promote(
        &self,
        cx: &Context,
        p: &PromotionPlan<'_>,
        stopped: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Promoted, DriverError> {
        let unfinished = || DriverError::new("interrupted");
        let int = |k: &str| {
            p.primary_inputs
                .get(k)
                .and_then(Json::as_i64)
                .and_then(|v| i32::try_from(v).ok())
        };

        // 1. Promote (an instance still under the replica's name).
        if let Some(replica) = read_instance(cx, p.replica_id).await? {
            cx.step(
                p.replica,
                format!("promoting {} to a standalone primary", p.replica_id),
            );
            promote(
                cx,
                p.replica,
                &replica,
                int("backup_retention_days"),
                p.primary_inputs.get("backup_window").and_then(Json::as_str),
                p.marker,
                p.timeout,
            )
            .await?;
        }
        if stopped() {
            return Err(unfinished());
        }

        // 2. The old primary out of the way (unless it is gone, or the
        //    primary's name already belongs to the promoted instance).
        let mut old_primary = None;
        if let Some(old) = read_instance(cx, p.primary_id).await? {
            if !promoted_by(&old, p.marker) {
                retire(cx, &old, p.primary, &p.retired_as).await?;
                cx.step(
                    p.primary,
                    format!(
                        "renaming the old primary {} to {}",
                        p.primary_id, p.old_name
                    ),
                );
                rename(cx, p.primary, p.primary_id, p.old_name, p.timeout).await?;
                old_primary = Some(p.old_name.to_string());
            }
        } else if read_instance(cx, p.old_name).await?.is_some() {
            old_primary = Some(p.old_name.to_string());
        }
        if stopped() {
            return Err(unfinished());
        }

        // 3. The promoted instance takes the primary's name and tags.
        if read_instance(cx, p.replica_id).await?.is_some() {
            cx.step(
                p.primary,
                format!("renaming the promoted {} to {}", p.replica_id, p.primary_id),
            );
            rename(cx, p.primary, p.replica_id, p.primary_id, p.timeout).await?;
        }
        let gone = || DriverError::new(format!("{} is gone", p.primary_id));
        let promoted = read_instance(cx, p.primary_id).await?.ok_or_else(gone)?;
        if !promoted_by(&promoted, p.marker) {
            return Err(DriverError::new(format!(
                "{} is not the instance this failover promoted; look at it in the console before running failover again",
                p.primary_id
            )));
        }
        let want = Desired {
            address: p.primary,
            props: p.primary_inputs,
            owner: &cx.owner,
            timeouts: Default::default(),
            replaces: None,
        };
        take_over_tags(cx, &promoted, &want).await?;
        Ok(Promoted {
            observed: read_instance(cx, p.primary_id).await?.ok_or_else(gone)?,
            old_primary,
        })
    }

    async fn retired(&self, cx: &Context) -> Result<Vec<Retired>, DriverError> {
        let rds = &crate::clients(cx).await?.rds;
        let mut found = Vec::new();
        let mut pages = rds.describe_db_instances().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| api_error("DescribeDBInstances", e))?;
            for d in page.db_instances() {
                let tag = |k: &str| {
                    d.tag_list()
                        .iter()
                        .find(|t| t.key() == Some(k))
                        .and_then(|t| t.value())
                        .map(str::to_string)
                };
                let ours = tag(RETIRED_STACK_TAG).as_deref() == Some(cx.owner.stack.as_str())
                    && tag(RETIRED_ENVIRONMENT_TAG).as_deref()
                        == Some(cx.owner.environment.as_str());
                if let (true, Some(id), Some(address)) =
                    (ours, d.db_instance_identifier(), tag(RETIRED_ADDRESS_TAG))
                {
                    // The listing says all a read would: no second call.
                    found.push(Retired {
                        address,
                        observed: observe_instance(id, d),
                    });
                }
            }
        }
        Ok(found)
    }
}

/// `aws.rds_instance`'s manual snapshots.
pub struct RdsSnapshots;

#[async_trait::async_trait]
impl Snapshots for RdsSnapshots {
    fn is_primary(&self, props: &Map<String, Json>) -> bool {
        RdsPromotion.primary_of(props).is_none()
    }

    async fn snapshot(
        &self,
        cx: &Context,
        props: &Map<String, Json>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<String, DriverError> {
        let instance = props
            .get("identifier")
            .and_then(Json::as_str)
            .unwrap_or_default();
        let id = format!("{instance}-{}", now.format("%Y%m%d%H%M%S"));
        crate::clients(cx)
            .await?
            .rds
            .create_db_snapshot()
            .db_instance_identifier(instance)
            .db_snapshot_identifier(&id)
            .send()
            .await
            .map_err(|e| api_error("CreateDBSnapshot", e))?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_name_fits_rds_rules() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-27T19:05:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            RdsPromotion.aside_name("prod-postgres", at),
            "prod-postgres-old-202611271905"
        );
        let long = format!("{}-x", "a".repeat(44));
        let n = RdsPromotion.aside_name(&long, at);
        assert!(n.len() <= 63, "{n}");
        assert!(!n.contains("--"), "{n}");
    }
}
