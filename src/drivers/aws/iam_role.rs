//! `aws.iam_role`: an IAM role that an AWS service assumes (the EKS control
//! plane, EC2 nodes), with managed policies attached.

use aws_sdk_iam::types::Tag;
use serde_json::{json, Value as Json};

use super::{
    api_error, error_code, observed_with, opt_str, read_each, read_tag_pairs, removed_tag_keys,
    strings, tag_map,
};
use crate::drivers::{Context, Desired, Driver, DriverError, Known, Observed, Timeouts};
use crate::kinds::{checks, Attr, Field, KindSchema, Ty};

fn role_name(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
    {
        Ok(())
    } else {
        Err(format!(
            "role name `{s}` must be 1-64 characters of letters, digits and +=,.@_-"
        ))
    }
}

static SCHEMA: KindSchema = KindSchema {
    kind: "aws.iam_role",
    doc: "An IAM role assumed by an AWS service.",
    fields: &[
        Field::new("name", Ty::String, "the role name")
            .required()
            .forces_replace()
            .check(role_name),
        Field::new(
            "assume_role_service",
            Ty::String,
            "the service principal that assumes it, such as eks.amazonaws.com",
        )
        .required(),
        Field::new(
            "managed_policy_arns",
            Ty::Set(&Ty::String),
            "managed policies to attach",
        )
        .default("[]"),
        Field::new("description", Ty::String, "what the role is for")
            .default("\"Managed by ralph-deploy\""),
        Field::new("tags", Ty::StringMap, "tags besides the ownership tags")
            .default("{}")
            .check(checks::tags),
    ],
    attrs: &[
        Attr {
            name: "id",
            ty: Ty::String,
            doc: "the role name",
        },
        Attr {
            name: "arn",
            ty: Ty::String,
            doc: "the role ARN",
        },
    ],
    taggable: true,
    name_field: Some("name"),
    exactly_one_of: &[],
    ordered: &[],
};

pub struct IamRole;

fn trust_policy(service: &str) -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{ "Effect": "Allow", "Principal": { "Service": service }, "Action": "sts:AssumeRole" }]
    })
    .to_string()
}

/// The service principal of a trust policy as IAM returns it (URL-encoded JSON).
fn trusted_service(document: &str) -> Json {
    let decoded = percent_decode(document);
    let v: Json = serde_json::from_str(&decoded).unwrap_or(Json::Null);
    let principal = &v["Statement"][0]["Principal"]["Service"];
    match principal {
        Json::String(s) => Json::String(s.clone()),
        Json::Array(a) if a.len() == 1 => a[0].clone(),
        _ => Json::Null,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_one(cx: &Context, name: &str) -> Result<Option<Observed>, DriverError> {
    let iam = &cx.aws().await?.iam;
    let role = match iam.get_role().role_name(name).send().await {
        Ok(out) => out.role,
        Err(e) if error_code(&e) == Some("NoSuchEntity") => return Ok(None),
        Err(e) => return Err(api_error("GetRole", e)),
    };
    let Some(role) = role else { return Ok(None) };
    let attached = iam
        .list_attached_role_policies()
        .role_name(name)
        .send()
        .await
        .map_err(|e| api_error("ListAttachedRolePolicies", e))?;
    let policies: Vec<Json> = attached
        .attached_policies()
        .iter()
        .filter_map(|p| p.policy_arn().map(|a| Json::String(a.to_string())))
        .collect();
    let tags = read_tag_pairs(role.tags().iter().map(|t| (t.key(), t.value())));
    Ok(Some(observed_with(
        role.role_name(),
        tags,
        vec![
            ("name", Json::String(role.role_name().to_string())),
            ("arn", Json::String(role.arn().to_string())),
            (
                "assume_role_service",
                role.assume_role_policy_document()
                    .map(trusted_service)
                    .unwrap_or(Json::Null),
            ),
            ("managed_policy_arns", Json::Array(policies)),
            ("description", opt_str(role.description())),
        ],
    )))
}

async fn sync_policies(
    cx: &Context,
    name: &str,
    have: &[String],
    want: &[String],
) -> Result<(), DriverError> {
    let iam = &cx.aws().await?.iam;
    for arn in have.iter().filter(|a| !want.contains(a)) {
        iam.detach_role_policy()
            .role_name(name)
            .policy_arn(arn)
            .send()
            .await
            .map_err(|e| api_error("DetachRolePolicy", e))?;
    }
    for arn in want.iter().filter(|a| !have.contains(a)) {
        iam.attach_role_policy()
            .role_name(name)
            .policy_arn(arn)
            .send()
            .await
            .map_err(|e| api_error("AttachRolePolicy", e))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Driver for IamRole {
    fn service(&self) -> &'static str {
        "iam"
    }

    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        read_each(known, |id| async move { read_one(cx, &id).await }).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let name = want.required_str("name")?;
        let tags: Vec<Tag> = tag_map(want)
            .into_iter()
            .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
            .collect();
        cx.aws()
            .await?
            .iam
            .create_role()
            .role_name(name)
            .assume_role_policy_document(trust_policy(want.required_str("assume_role_service")?))
            .description(want.str("description").unwrap_or_default())
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| api_error("CreateRole", e))?;
        sync_policies(
            cx,
            name,
            &[],
            &strings(want.props.get("managed_policy_arns")),
        )
        .await?;
        read_one(cx, name).await?.ok_or_else(|| {
            DriverError::new(format!("role {name} vanished right after it was created"))
        })
    }

    async fn update(
        &self,
        cx: &Context,
        want: &Desired<'_>,
        have: &Observed,
        changed: &[String],
    ) -> Result<Observed, DriverError> {
        let iam = &cx.aws().await?.iam;
        let has = |f: &str| changed.iter().any(|c| c == f);
        if has("assume_role_service") {
            iam.update_assume_role_policy()
                .role_name(&have.id)
                .policy_document(trust_policy(want.required_str("assume_role_service")?))
                .send()
                .await
                .map_err(|e| api_error("UpdateAssumeRolePolicy", e))?;
        }
        if has("description") {
            iam.update_role()
                .role_name(&have.id)
                .description(want.str("description").unwrap_or_default())
                .send()
                .await
                .map_err(|e| api_error("UpdateRole", e))?;
        }
        if has("managed_policy_arns") {
            sync_policies(
                cx,
                &have.id,
                &strings(have.attrs.get("managed_policy_arns")),
                &strings(want.props.get("managed_policy_arns")),
            )
            .await?;
        }
        if has("tags") {
            let removed = removed_tag_keys(have, want);
            if !removed.is_empty() {
                iam.untag_role()
                    .role_name(&have.id)
                    .set_tag_keys(Some(removed))
                    .send()
                    .await
                    .map_err(|e| api_error("UntagRole", e))?;
            }
            let tags: Vec<Tag> = tag_map(want)
                .into_iter()
                .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
                .collect();
            iam.tag_role()
                .role_name(&have.id)
                .set_tags(Some(tags))
                .send()
                .await
                .map_err(|e| api_error("TagRole", e))?;
        }
        read_one(cx, &have.id)
            .await?
            .ok_or_else(|| DriverError::new(format!("role {} vanished", have.id)))
    }

    async fn delete(
        &self,
        cx: &Context,
        have: &Observed,
        _timeouts: &Timeouts,
    ) -> Result<(), DriverError> {
        // A role with attached policies cannot be deleted.
        let current = match read_one(cx, &have.id).await? {
            Some(c) => c,
            None => return Ok(()),
        };
        sync_policies(
            cx,
            &have.id,
            &strings(current.attrs.get("managed_policy_arns")),
            &[],
        )
        .await?;
        super::delete_answer(
            "DeleteRole",
            cx.aws()
                .await?
                .iam
                .delete_role()
                .role_name(&have.id)
                .send()
                .await,
            &["NoSuchEntity"],
        )
    }
}
