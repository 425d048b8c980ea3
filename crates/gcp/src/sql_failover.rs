//! `failover` on Cloud SQL (`capability::Promotion`): a read replica
//! promoted to a standalone primary.
//!
//! Cloud SQL renames no instance, so the promoted replica keeps its own
//! name and the state records it as the primary (which is why a primary
//! with replicas names itself by `name_prefix`; `failover` refuses a fixed
//! name). The steps, each safe to repeat (the names never move, so a
//! resumed failover finds every instance where it left it):
//! 1. promote the replica (`instances.promoteReplica`), unless it already is
//!    a primary;
//! 2. take the old primary's ownership labels off (null removes a label in
//!    a PATCH) and label it retired: it keeps its data and its deletion
//!    protection, for the operator to inspect (`destroy` finds it by its
//!    retired-* labels, `Promotion::retired`, and deletes it first);
//! 3. give the promoted instance the primary's ownership labels.
//!
//! The replica's lag is Cloud Monitoring's `replica_lag` gauge.

use std::time::Duration;

use serde_json::{json, Map, Value as Json};

use super::rest::Rest;
use super::sql::{list_instances, master_of, observe_instance, read_instance, wait_op};
use super::{
    label_text, label_value, labels, message, owner_filter, LABEL_ADDRESS, LABEL_ENVIRONMENT,
    LABEL_STACK,
};
use ralph_core::driver::capability::{Lag, Promoted, Promotion, PromotionPlan, Retired};
use ralph_core::driver::{Context, DriverError, Observed};

const SERVICE: &str = "sqladmin";
const SQL_ENDPOINT: &str = "https://sqladmin.googleapis.com/";
const MONITORING: &str = "monitoring";
const MONITORING_ENDPOINT: &str = "https://monitoring.googleapis.com/";
/// Cloud SQL's replication lag gauge, in seconds, per replica.
const REPLICA_LAG: &str = "cloudsql.googleapis.com/database/replication/replica_lag";
/// Left on the old primary: the address it served, and the failover.
const RETIRED_LABEL: &str = "ralph-deploy-retired";
const FAILOVER_LABEL: &str = "ralph-deploy-failover";
/// And the ownership it had, by which `destroy` finds it (the ownership
/// labels themselves go, so that no refresh takes it for the stack's).
const RETIRED_OWNER_LABELS: [&str; 2] = [
    "ralph-deploy-retired-stack",
    "ralph-deploy-retired-environment",
];

fn is_replica(o: &Observed) -> bool {
    master_of(&o.attrs).is_some()
}

/// A label value within Google's 63 characters.
fn short_label(s: &str) -> Json {
    let mut v = label_value(s);
    v.truncate(63);
    Json::String(v)
}

/// Sets the instance's labels (a PATCH of `settings.userLabels`; a null
/// value removes that label) and waits for the operation.
async fn patch_labels(
    cx: &Context,
    address: &str,
    instance: &str,
    labels: Map<String, Json>,
    timeout: Duration,
) -> Result<(), DriverError> {
    let project = crate::clients(cx).await?.project.clone();
    let rest = Rest::new(cx, SERVICE, SQL_ENDPOINT).await?;
    let what = format!("labelling Cloud SQL instance {instance}");
    let op = rest
        .send(
            "PATCH",
            &format!("v1/projects/{project}/instances/{instance}"),
            Some(json!({"settings": {"userLabels": labels}})),
            &what,
        )
        .await?
        .ok_or_else(|| DriverError::new(format!("{instance} is gone")))?;
    let op: google_cloud_sql_v1::model::Operation = message("a Cloud SQL operation", op)?;
    wait_op(cx, address, &op, timeout).await
}

/// The replica's latest `replica_lag` over the last ten minutes (`None`: no
/// point, so the lag is unknown).
async fn replica_lag(cx: &Context, replica: &str) -> Result<Option<f64>, DriverError> {
    let project = crate::clients(cx).await?.project.clone();
    let rest = Rest::new(cx, MONITORING, MONITORING_ENDPOINT).await?;
    let now = chrono::Utc::now();
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let filter = format!(
        "metric.type=\"{REPLICA_LAG}\" AND resource.labels.database_id=\"{project}:{replica}\""
    );
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let path = format!(
        "v3/projects/{project}/timeSeries?filter={}&interval.startTime={}&interval.endTime={}",
        enc(&filter),
        enc(&time(now - chrono::Duration::minutes(10))),
        enc(&time(now)),
    );
    let answer = rest
        .send(
            "GET",
            &path,
            None,
            &format!("reading the replication lag of {replica}"),
        )
        .await?
        .unwrap_or(Json::Null);
    Ok(latest_point(&answer))
}

/// The value of the latest point of any series in a `timeSeries.list`
/// answer (a double, or an int64 as Google writes it: a string).
fn latest_point(answer: &Json) -> Option<f64> {
    let series = answer.get("timeSeries").and_then(Json::as_array)?;
    series
        .iter()
        .filter_map(|s| s.get("points").and_then(Json::as_array))
        .flatten()
        .filter_map(|p| {
            let at = p.pointer("/interval/endTime")?.as_str()?;
            let at = chrono::DateTime::parse_from_rfc3339(at).ok()?;
            let v = p.get("value")?;
            let value = v.get("doubleValue").and_then(Json::as_f64).or_else(|| {
                v.get("int64Value")
                    .and_then(|i| i.as_str().and_then(|s| s.parse().ok()).or(i.as_f64()))
            })?;
            Some((at, value))
        })
        .max_by_key(|(at, _)| *at)
        .map(|(_, v)| v)
}

/// `gcp.sql_instance`'s replica promotion.
pub struct CloudSqlPromotion;

#[async_trait::async_trait]
impl Promotion for CloudSqlPromotion {
    fn primary_of<'a>(&self, inputs: &'a Map<String, Json>) -> Option<&'a str> {
        master_of(inputs)
    }

    fn renames(&self) -> bool {
        false
    }

    /// The old primary stays under its own name.
    fn aside_name(&self, primary_id: &str, _now: chrono::DateTime<chrono::Utc>) -> String {
        primary_id.to_string()
    }

    async fn replica_lag(&self, cx: &Context, replica_id: &str) -> Result<Lag, DriverError> {
        Ok(Lag {
            seconds: replica_lag(cx, replica_id).await?,
            source: format!("Cloud Monitoring's replica_lag for {replica_id}"),
        })
    }

    async fn promote(
        &self,
        cx: &Context,
        p: &PromotionPlan<'_>,
        stopped: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Promoted, DriverError> {
        let unfinished = || DriverError::new("interrupted");
        let gone = || DriverError::new(format!("{} is gone", p.replica_id));

        // 1. Promote (an instance that still replicates).
        let replica = read_instance(cx, p.replica_id).await?.ok_or_else(gone)?;
        if is_replica(&replica) {
            cx.step(
                p.replica,
                format!("promoting {} to a standalone primary", p.replica_id),
            );
            let g = crate::clients(cx).await?;
            let what = format!("promoting {}", p.replica_id);
            let op = super::call(cx, SERVICE, &what, || {
                g.sql
                    .promote_replica()
                    .set_project(&g.project)
                    .set_instance(p.replica_id)
                    .send()
            })
            .await?;
            wait_op(cx, p.replica, &op, p.timeout).await?;
        }
        if stopped() {
            return Err(unfinished());
        }

        // 2. The old primary is no longer the stack's (unless it is gone or
        //    was retired already).
        if let Some(old) = read_instance(cx, p.primary_id).await? {
            if old.owner.as_ref() == Some(&cx.owner) {
                cx.step(
                    p.primary,
                    format!(
                        "retiring the old primary {}: it keeps its data and its deletion protection",
                        p.primary_id
                    ),
                );
                let mut retired = Map::new();
                for k in [LABEL_STACK, LABEL_ENVIRONMENT, LABEL_ADDRESS] {
                    retired.insert(k.into(), Json::Null);
                }
                retired.insert(RETIRED_LABEL.into(), short_label(p.primary));
                retired.insert(FAILOVER_LABEL.into(), short_label(p.marker));
                let [stack, environment] = RETIRED_OWNER_LABELS;
                retired.insert(stack.into(), label_value(&cx.owner.stack).into());
                retired.insert(
                    environment.into(),
                    label_value(&cx.owner.environment).into(),
                );
                patch_labels(cx, p.primary, p.primary_id, retired, p.timeout).await?;
            }
        }
        if stopped() {
            return Err(unfinished());
        }

        // 3. The promoted instance is the stack's primary.
        let promoted = read_instance(cx, p.replica_id).await?.ok_or_else(gone)?;
        if promoted.address.as_deref() != Some(p.primary) {
            cx.step(
                p.primary,
                format!("{} takes over as {}", p.replica_id, p.primary),
            );
            let owned = labels(&cx.owner, p.primary, p.primary_inputs.get("labels"));
            patch_labels(cx, p.primary, p.replica_id, owned, p.timeout).await?;
        }
        Ok(Promoted {
            observed: read_instance(cx, p.replica_id).await?.ok_or_else(gone)?,
            old_primary: Some(p.primary_id.to_string()),
        })
    }

    async fn retired(&self, cx: &Context) -> Result<Vec<Retired>, DriverError> {
        let filter = owner_filter(&cx.owner, "settings.userLabels.", RETIRED_OWNER_LABELS);
        let found = list_instances(cx, &filter).await?;
        Ok(found
            .iter()
            .filter_map(|i| {
                let labels = &i.settings.as_ref()?.user_labels;
                let address = label_text(labels.get(RETIRED_LABEL)?)?;
                Some(Retired {
                    address,
                    observed: observe_instance(i),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_point_counts_whatever_its_type() {
        let answer = json!({"timeSeries": [{"points": [
            {"interval": {"endTime": "2026-12-06T10:01:00Z"}, "value": {"doubleValue": 2.5}},
            {"interval": {"endTime": "2026-12-06T10:03:00Z"}, "value": {"int64Value": "7"}},
            {"interval": {"endTime": "2026-12-06T10:02:00Z"}, "value": {"doubleValue": 9000.0}},
        ]}]});
        assert_eq!(latest_point(&answer), Some(7.0));
        assert_eq!(latest_point(&json!({})), None);
    }
}
