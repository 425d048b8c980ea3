//! `aws.iam_role`: an IAM role that an AWS service assumes (the EKS control
//! plane, EC2 nodes), or that Kubernetes service accounts assume through an
//! EKS cluster's OIDC provider (IRSA), with managed policies attached and
//! an inline policy of the stack's own.

use serde_json::{json, Value as Json};

use super::{
    api_error, found, observed_with, opt_str, read_each, read_tag_pairs, removed_tag_keys, strings,
};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

fn role_name(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = checks::name_of(s, 1..=64, "+=,.@_-");
    checks::require(ok, || {
        format!("role name `{s}` must be 1-64 characters of letters, digits and +=,.@_-")
    })
}

static SCHEMA: KindSchema = KindSchema::new("aws.iam_role", "iam", "An IAM role assumed by an AWS service, or by Kubernetes service accounts (IRSA).")
    .fields(&[
        Field::name("the role name")
            .check(role_name),
        Field::new(
            "assume_role_service",
            Ty::String,
            "the service principal that assumes it, such as eks.amazonaws.com",
        ),
        Field::new(
            "oidc_provider_arn",
            Ty::String,
            "instead of a service: the aws.iam_oidc_provider whose tokens the service accounts below present (IRSA)",
        ),
        Field::new(
            "service_accounts",
            Ty::Set(&Ty::String),
            "with oidc_provider_arn: the Kubernetes service accounts, namespace/name, that may assume it",
        )
        .default("[]")
        .check(service_account_names),
        Field::new(
            "managed_policy_arns",
            Ty::Set(&Ty::String),
            "managed policies to attach",
        )
        .default("[]"),
        Field::new(
            "inline_policy",
            Ty::String,
            "a policy document (JSON) the role holds as its inline policy `ralph-deploy`",
        )
        .default("\"\""),
        Field::new("description", Ty::String, "what the role is for")
            .default("\"Managed by ralph-deploy\""),
        Field::tags(),
    ])
    .attrs(&[
        Attr::string("id", "the role name"),
        Attr::string("arn", "the role ARN"),
    ])
    .name_field("name")
    .exactly_one_of(&["assume_role_service", "oidc_provider_arn"]);

pub struct IamRole;

/// The inline policy's name.
const INLINE: &str = "ralph-deploy";

fn service_account_names(v: &Json) -> Result<(), String> {
    for s in v.as_array().into_iter().flatten().filter_map(Json::as_str) {
        let ok = s
            .split_once('/')
            .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'));
        if !ok {
            return Err(format!(
                "service account `{s}` must be namespace/name, such as kube-system/cluster-autoscaler"
            ));
        }
    }
    Ok(())
}

/// The issuer a provider ARN names (`arn:aws:iam::ACCOUNT:oidc-provider/ISSUER`).
fn issuer_of(provider_arn: &str) -> &str {
    provider_arn
        .split_once(":oidc-provider/")
        .map(|(_, i)| i)
        .unwrap_or(provider_arn)
}

fn trust_policy(want: &Desired<'_>) -> Result<String, DriverError> {
    if let Some(service) = want.str("assume_role_service").filter(|s| !s.is_empty()) {
        return Ok(json!({
            "Version": "2012-10-17",
            "Statement": [{ "Effect": "Allow", "Principal": { "Service": service }, "Action": "sts:AssumeRole" }]
        })
        .to_string());
    }
    let provider = want.required_str("oidc_provider_arn")?;
    let issuer = issuer_of(provider);
    let subjects: Vec<String> = strings(want.props.get("service_accounts"))
        .iter()
        .map(|s| format!("system:serviceaccount:{}", s.replacen('/', ":", 1)))
        .collect();
    Ok(json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Federated": provider },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": { "StringEquals": {
                format!("{issuer}:sub"): subjects,
                format!("{issuer}:aud"): "sts.amazonaws.com",
            }}
        }]
    })
    .to_string())
}

/// Who a trust policy (as IAM returns it: URL-encoded JSON) lets in:
/// (service principal, OIDC provider ARN, service accounts as namespace/name).
fn trusted(document: &str) -> (Json, Json, Json) {
    let decoded = percent_decode(document);
    let v: Json = serde_json::from_str(&decoded).unwrap_or(Json::Null);
    let principal = &v["Statement"][0]["Principal"];
    let one = |p: &Json| match p {
        Json::String(s) => Json::String(s.clone()),
        Json::Array(a) if a.len() == 1 => a[0].clone(),
        _ => Json::Null,
    };
    let provider = one(&principal["Federated"]);
    let mut accounts = vec![];
    if let Some(p) = provider.as_str() {
        let key = format!("{}:sub", issuer_of(p));
        let sub = &v["Statement"][0]["Condition"]["StringEquals"][key.as_str()];
        let subs: Vec<&Json> = match sub {
            Json::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        accounts = subs
            .into_iter()
            .filter_map(Json::as_str)
            .filter_map(|s| s.strip_prefix("system:serviceaccount:"))
            .map(|s| Json::String(s.replacen(':', "/", 1)))
            .collect();
    }
    (one(&principal["Service"]), provider, Json::Array(accounts))
}

/// A policy document with its keys sorted and no spaces, so that the
/// stack's and IAM's forms of one document compare equal.
fn canonical(document: &str) -> Result<String, String> {
    fn sort(v: Json) -> Json {
        match v {
            Json::Object(m) => {
                let mut pairs: Vec<(String, Json)> = m.into_iter().collect();
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
                Json::Object(pairs.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            Json::Array(a) => Json::Array(a.into_iter().map(sort).collect()),
            other => other,
        }
    }
    let v: Json = serde_json::from_str(document).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("a policy document is a JSON object".into());
    }
    Ok(sort(v).to_string())
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
    let iam = &crate::clients(cx).await?.iam;
    let answer = iam.get_role().role_name(name).send().await;
    let Some(role) = super::found("GetRole", answer, &["NoSuchEntity"])?.and_then(|o| o.role)
    else {
        return Ok(None);
    };
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
    let answer = iam
        .get_role_policy()
        .role_name(name)
        .policy_name(INLINE)
        .send()
        .await;
    let inline = match found("GetRolePolicy", answer, &["NoSuchEntity"])? {
        Some(out) => canonical(&percent_decode(out.policy_document())).unwrap_or_default(),
        None => String::new(),
    };
    let (service, provider, accounts) = role
        .assume_role_policy_document()
        .map(trusted)
        .unwrap_or((Json::Null, Json::Null, Json::Array(vec![])));
    let tags = read_tag_pairs(role.tags().iter().map(|t| (t.key(), t.value())));
    Ok(Some(observed_with(
        role.role_name(),
        tags,
        vec![
            ("name", Json::String(role.role_name().to_string())),
            ("arn", Json::String(role.arn().to_string())),
            ("assume_role_service", service),
            ("oidc_provider_arn", provider),
            ("service_accounts", accounts),
            ("inline_policy", Json::String(inline)),
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
    let iam = &crate::clients(cx).await?.iam;
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

/// Puts the stack's inline policy on the role, or removes it when the stack
/// has none.
async fn put_inline(cx: &Context, name: &str, want: &Desired<'_>) -> Result<(), DriverError> {
    let iam = &crate::clients(cx).await?.iam;
    match want.str("inline_policy").filter(|p| !p.is_empty()) {
        Some(doc) => {
            iam.put_role_policy()
                .role_name(name)
                .policy_name(INLINE)
                .policy_document(doc)
                .send()
                .await
                .map_err(|e| api_error("PutRolePolicy", e))?;
            Ok(())
        }
        None => super::delete_answer(
            "DeleteRolePolicy",
            iam.delete_role_policy()
                .role_name(name)
                .policy_name(INLINE)
                .send()
                .await,
            &["NoSuchEntity"],
        ),
    }
}

#[async_trait::async_trait]
impl Driver for IamRole {
    /// The inline policy compares in one canonical form; a document that is
    /// not JSON is refused before anything is sent.
    fn normalize(
        &self,
        _base_dir: &std::path::Path,
        props: &mut serde_json::Map<String, Json>,
    ) -> Result<(), String> {
        if let Some(doc) = props
            .get("inline_policy")
            .and_then(Json::as_str)
            .filter(|d| !d.trim().is_empty())
        {
            let c = canonical(doc)
                .map_err(|e| format!("inline_policy is not a JSON policy document: {e}"))?;
            props.insert("inline_policy".into(), Json::String(c));
        }
        Ok(())
    }

    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        read_each(known, |id| async move { read_one(cx, &id).await }).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let name = want.required_str("name")?;
        let tags = super::iam_tags(want);
        crate::clients(cx)
            .await?
            .iam
            .create_role()
            .role_name(name)
            .assume_role_policy_document(trust_policy(want)?)
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
        put_inline(cx, name, want).await?;
        found_again(read_one(cx, name).await?, "role", &name)
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let iam = &crate::clients(cx).await?.iam;
        if u.changes("assume_role_service")
            || u.changes("oidc_provider_arn")
            || u.changes("service_accounts")
        {
            iam.update_assume_role_policy()
                .role_name(&have.id)
                .policy_document(trust_policy(want)?)
                .send()
                .await
                .map_err(|e| api_error("UpdateAssumeRolePolicy", e))?;
        }
        if u.changes("inline_policy") {
            put_inline(cx, &have.id, want).await?;
        }
        if u.changes("description") {
            iam.update_role()
                .role_name(&have.id)
                .description(want.str("description").unwrap_or_default())
                .send()
                .await
                .map_err(|e| api_error("UpdateRole", e))?;
        }
        if u.changes("managed_policy_arns") {
            sync_policies(
                cx,
                &have.id,
                &strings(have.attrs.get("managed_policy_arns")),
                &strings(want.props.get("managed_policy_arns")),
            )
            .await?;
        }
        if u.changes("tags") {
            let removed = removed_tag_keys(have, want);
            let untag = iam.untag_role().role_name(&have.id);
            let tag = iam.tag_role().role_name(&have.id);
            super::retag(
                &removed,
                (
                    "UntagRole",
                    untag.set_tag_keys(Some(removed.clone())).send(),
                ),
                ("TagRole", tag.set_tags(Some(super::iam_tags(want))).send()),
            )
            .await?;
        }
        found_again(read_one(cx, &have.id).await?, "role", &have.id)
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        // A role with attached policies cannot be deleted.
        let current = match read_one(cx, &d.have.id).await? {
            Some(c) => c,
            None => return Ok(()),
        };
        sync_policies(
            cx,
            &d.have.id,
            &strings(current.attrs.get("managed_policy_arns")),
            &[],
        )
        .await?;
        // Nor one with inline policies.
        if current
            .attrs
            .get("inline_policy")
            .and_then(Json::as_str)
            .is_some_and(|p| !p.is_empty())
        {
            super::delete_answer(
                "DeleteRolePolicy",
                crate::clients(cx)
                    .await?
                    .iam
                    .delete_role_policy()
                    .role_name(&d.have.id)
                    .policy_name(INLINE)
                    .send()
                    .await,
                &["NoSuchEntity"],
            )?;
        }
        super::delete_answer(
            "DeleteRole",
            crate::clients(cx)
                .await?
                .iam
                .delete_role()
                .role_name(&d.have.id)
                .send()
                .await,
            &["NoSuchEntity"],
        )
    }
}
