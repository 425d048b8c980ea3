//! `aws.cloudwatch_log_group`: a CloudWatch Logs log group with the
//! stack's retention. Declared before what writes to it (an EKS cluster's
//! control-plane logs go to `/aws/eks/NAME/cluster`, which EKS would
//! otherwise create itself and keep forever), so the retention is the
//! stack's from the first line.
//!
//! Log groups cannot be listed by tag, so refresh reads the recorded and
//! declared names (one DescribeLogGroups and one ListTagsForResource each).

use serde_json::Value as Json;

use super::{api_error, made, observed_with, ours_or_refuse, read_tag_pairs, tag_map};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

/// The retention periods CloudWatch Logs takes, in days.
const RETENTION_DAYS: &[i64] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

fn retention(v: &Json) -> Result<(), String> {
    checks::one_of(
        v,
        RETENTION_DAYS,
        "a retention CloudWatch Logs takes",
        "days",
    )
}

fn group_name(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = checks::name_of(s, 1..=512, "_-/.#");
    checks::require(ok, || {
        format!("`{s}` is not a log group name: 1-512 characters of letters, digits, _ - / . #")
    })
}

static SCHEMA: KindSchema = KindSchema::new("aws.cloudwatch_log_group", "logs", "A CloudWatch Logs log group with a retention period (an EKS cluster's control-plane logs, the application's logs).")
    .fields(&[
        Field::name("the group's name, such as /aws/eks/CLUSTER/cluster")
            .check(group_name),
        Field::new("retention_days", Ty::Int, "how long events are kept, in days (one of the periods CloudWatch Logs takes)")
            .default("90")
            .check(retention),
        Field::new("kms_key_id", Ty::String, "a KMS key ARN to encrypt the events with (empty: CloudWatch Logs' own encryption)")
            .default("\"\"")
            .forces_replace(),
        Field::tags(),
    ])
    .attrs(&[
        Attr::string("id", "the group's name"),
        Attr::string("arn", "the group's ARN (without the `:*` of its streams)"),
    ])
    .name_field("name");

pub struct LogGroup;

async fn read_one(cx: &Context, name: &str) -> Result<Option<Observed>, DriverError> {
    let logs = &crate::clients(cx).await?.logs;
    let out = logs
        .describe_log_groups()
        .log_group_name_prefix(name)
        .send()
        .await
        .map_err(|e| api_error("DescribeLogGroups", e))?;
    let Some(g) = out
        .log_groups()
        .iter()
        .find(|g| g.log_group_name() == Some(name))
    else {
        return Ok(None);
    };
    let arn = g
        .arn()
        .unwrap_or_default()
        .trim_end_matches(":*")
        .to_string();
    let answer = logs
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await;
    let found = super::found(
        "ListTagsForResource",
        answer,
        &["ResourceNotFoundException"],
    )?;
    let Some(tags) = found.map(|t| t.tags.unwrap_or_default()) else {
        return Ok(None);
    };
    Ok(Some(observed_with(
        name,
        read_tag_pairs(tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        vec![
            ("name", Json::String(name.to_string())),
            ("arn", Json::String(arn)),
            (
                "retention_days",
                g.retention_in_days()
                    .map(|d| Json::from(d as i64))
                    .unwrap_or(Json::Null),
            ),
            (
                "kms_key_id",
                Json::String(g.kms_key_id().unwrap_or_default().to_string()),
            ),
        ],
    )))
}

async fn set_retention(cx: &Context, want: &Desired<'_>, name: &str) -> Result<(), DriverError> {
    crate::clients(cx)
        .await?
        .logs
        .put_retention_policy()
        .log_group_name(name)
        .retention_in_days(want.int::<i32>("retention_days")?.unwrap_or(90))
        .send()
        .await
        .map_err(|e| api_error("PutRetentionPolicy", e))?;
    Ok(())
}

#[async_trait::async_trait]
impl Driver for LogGroup {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    fn typical_seconds(&self) -> u64 {
        2
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let mut names: Vec<&str> = known.iter().map(|k| k.id.as_str()).collect();
        names.sort();
        names.dedup();
        let found = futures::future::try_join_all(names.iter().map(|n| read_one(cx, n))).await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        read_one(cx, id).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let name = want.required_str("name")?;
        let kms = want.str("kms_key_id").filter(|k| !k.is_empty());
        let answer = crate::clients(cx)
            .await?
            .logs
            .create_log_group()
            .log_group_name(name)
            .set_kms_key_id(kms.map(str::to_string))
            .set_tags(Some(tag_map(want).into_iter().collect()))
            .send()
            .await;
        if made("CreateLogGroup", answer, "ResourceAlreadyExistsException")?.is_none() {
            let what = format!("log group {name} exists");
            ours_or_refuse(read_one(cx, name).await?.as_ref(), want, &what, name)?;
        }
        set_retention(cx, want, name).await?;
        found_again(read_one(cx, name).await?, "log group", &name)
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        if u.changes("retention_days") {
            set_retention(cx, want, &have.id).await?;
        }
        if u.changes("tags") {
            let logs = &crate::clients(cx).await?.logs;
            let arn = crate::arn_of(have);
            let removed = super::removed_tag_keys(have, want);
            let untag = logs.untag_resource().resource_arn(&arn);
            let tag = logs.tag_resource().resource_arn(&arn);
            super::retag(
                &removed,
                (
                    "UntagResource",
                    untag.set_tag_keys(Some(removed.clone())).send(),
                ),
                (
                    "TagResource",
                    tag.set_tags(Some(tag_map(want).into_iter().collect()))
                        .send(),
                ),
            )
            .await?;
        }
        found_again(read_one(cx, &have.id).await?, "log group", &have.id)
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        super::delete_answer(
            "DeleteLogGroup",
            crate::clients(cx)
                .await?
                .logs
                .delete_log_group()
                .log_group_name(&d.have.id)
                .send()
                .await,
            &["ResourceNotFoundException"],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_and_names_are_what_cloudwatch_logs_takes() {
        assert!(retention(&Json::from(90)).is_ok());
        assert!(retention(&Json::from(45))
            .unwrap_err()
            .contains("1, 3, 5, 7"));
        assert!(group_name(&Json::from("/aws/eks/ralph-production/cluster")).is_ok());
        assert!(group_name(&Json::from("has space")).is_err());
    }
}
