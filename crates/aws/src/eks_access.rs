//! `aws.eks_access_entry`: a principal (an IAM role or user) allowed into
//! an EKS cluster, with one EKS access policy, through the cluster's access
//! entries (its authentication mode must be API or API_AND_CONFIG_MAP).
//! This is how a team gets in besides the principal that created the
//! cluster: each administrator the stack names gets an entry.

use serde_json::Value as Json;

use super::{api_error, observed_with, opt_str, read_each, read_tag_pairs, strings, tag_map};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

/// EKS's own access policies (`arn:aws:eks::aws:cluster-access-policy/NAME`).
const POLICIES: &[&str] = &[
    "AmazonEKSClusterAdminPolicy",
    "AmazonEKSAdminPolicy",
    "AmazonEKSEditPolicy",
    "AmazonEKSViewPolicy",
    "AmazonEKSAdminViewPolicy",
];

fn policy_name(v: &Json) -> Result<(), String> {
    match v.as_str() {
        Some(p) if POLICIES.contains(&p) => Ok(()),
        other => Err(format!(
            "policy {} is not one of EKS's access policies: {}",
            ralph_core::model::kinds::shown(other),
            POLICIES.join(", ")
        )),
    }
}

fn principal(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = s.starts_with("arn:aws")
        && s.split(':').count() == 6
        && (s.contains(":role/") || s.contains(":user/"));
    checks::require(ok, || {
        format!("`{s}` is not the ARN of an IAM role or user (arn:aws:iam::ACCOUNT:role/NAME)")
    })
}

static SCHEMA: KindSchema = KindSchema::new("aws.eks_access_entry", "eks", "A principal allowed into an EKS cluster with one of EKS's access policies (an access entry).")
    .fields(&[
        Field::fixed("cluster_name", Ty::String, "the cluster, usually `${eks.name}`"),
        Field::fixed("principal_arn",
            Ty::String,
            "the IAM role or user let in (it must exist)")
        .check(principal),
        Field::new(
            "policy",
            Ty::String,
            "the EKS access policy: AmazonEKSClusterAdminPolicy, AmazonEKSAdminPolicy, AmazonEKSEditPolicy or AmazonEKSViewPolicy (changes in place)",
        )
        .default("\"AmazonEKSClusterAdminPolicy\"")
        .check(policy_name),
        Field::new(
            "namespaces",
            Ty::Set(&Ty::String),
            "limit the policy to these namespaces (empty: the whole cluster)",
        )
        .default("[]"),
        Field::tags(),
    ])
    .attrs(&[
        Attr::string("id", "CLUSTER/PRINCIPAL_ARN"),
        Attr::string("arn", "the access entry's ARN"),
    ]);

pub struct EksAccessEntry;

fn policy_arn(name: &str) -> String {
    format!("arn:aws:eks::aws:cluster-access-policy/{name}")
}

fn split_id(id: &str) -> Option<(&str, &str)> {
    id.split_once('/')
}

async fn read_one(cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
    let Some((cluster, principal)) = split_id(id) else {
        return Ok(None);
    };
    let eks = &crate::clients(cx).await?.eks;
    let answer = eks
        .describe_access_entry()
        .cluster_name(cluster)
        .principal_arn(principal)
        .send()
        .await;
    let found = super::found(
        "DescribeAccessEntry",
        answer,
        &["ResourceNotFoundException"],
    )?;
    let Some(entry) = found.and_then(|o| o.access_entry) else {
        return Ok(None);
    };
    let policies = eks
        .list_associated_access_policies()
        .cluster_name(cluster)
        .principal_arn(principal)
        .send()
        .await
        .map_err(|e| api_error("ListAssociatedAccessPolicies", e))?;
    let first = policies.associated_access_policies().first();
    let policy = first
        .and_then(|p| p.policy_arn())
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string());
    let namespaces: Vec<Json> = first
        .and_then(|p| p.access_scope())
        .map(|s| {
            s.namespaces()
                .iter()
                .map(|n| Json::String(n.clone()))
                .collect()
        })
        .unwrap_or_default();
    let tags = read_tag_pairs(
        entry
            .tags()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    Ok(Some(observed_with(
        id,
        tags,
        vec![
            ("cluster_name", Json::String(cluster.to_string())),
            ("principal_arn", Json::String(principal.to_string())),
            ("policy", policy.map(Json::String).unwrap_or(Json::Null)),
            ("namespaces", Json::Array(namespaces)),
            ("arn", opt_str(entry.access_entry_arn())),
        ],
    )))
}

async fn associate(
    cx: &Context,
    cluster: &str,
    principal: &str,
    want: &Desired<'_>,
) -> Result<(), DriverError> {
    use aws_sdk_eks::types::{AccessScope, AccessScopeType};
    let namespaces = strings(want.props.get("namespaces"));
    let scope = if namespaces.is_empty() {
        AccessScope::builder()
            .r#type(AccessScopeType::Cluster)
            .build()
    } else {
        AccessScope::builder()
            .r#type(AccessScopeType::Namespace)
            .set_namespaces(Some(namespaces))
            .build()
    };
    crate::clients(cx)
        .await?
        .eks
        .associate_access_policy()
        .cluster_name(cluster)
        .principal_arn(principal)
        .policy_arn(policy_arn(
            want.str("policy").unwrap_or("AmazonEKSClusterAdminPolicy"),
        ))
        .access_scope(scope)
        .send()
        .await
        .map_err(|e| api_error("AssociateAccessPolicy", e))?;
    Ok(())
}

#[async_trait::async_trait]
impl Driver for EksAccessEntry {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        read_each(known, |id| async move { read_one(cx, &id).await }).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let cluster = want.required_str("cluster_name")?;
        let principal = want.required_str("principal_arn")?;
        let id = format!("{cluster}/{principal}");
        let made = crate::clients(cx)
            .await?
            .eks
            .create_access_entry()
            .cluster_name(cluster)
            .principal_arn(principal)
            .set_tags(Some(tag_map(want).into_iter().collect()))
            .send()
            .await;
        if super::made("CreateAccessEntry", made, "ResourceInUseException")?.is_none() {
            let what = format!("{principal} already has an access entry on {cluster}");
            super::ours_or_refuse(read_one(cx, &id).await?.as_ref(), want, &what, &id)?;
        }
        associate(cx, cluster, principal, want).await?;
        found_again(read_one(cx, &id).await?, "access entry", &id)
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let Some((cluster, principal)) = split_id(&have.id) else {
            return Err(DriverError::new(format!(
                "`{}` is not CLUSTER/PRINCIPAL",
                have.id
            )));
        };
        if u.changes("policy") || u.changes("namespaces") {
            if let Some(old) = have.attrs.get("policy").and_then(Json::as_str) {
                if Some(old) != want.str("policy") {
                    super::delete_answer(
                        "DisassociateAccessPolicy",
                        crate::clients(cx)
                            .await?
                            .eks
                            .disassociate_access_policy()
                            .cluster_name(cluster)
                            .principal_arn(principal)
                            .policy_arn(policy_arn(old))
                            .send()
                            .await,
                        &["ResourceNotFoundException"],
                    )?;
                }
            }
            associate(cx, cluster, principal, want).await?;
        }
        if u.changes("tags") {
            let arn = crate::arn_of(have);
            super::arn_tags::sync(cx, super::arn_tags::ArnService::Eks, &arn, have, want).await?;
        }
        found_again(read_one(cx, &have.id).await?, "access entry", &have.id)
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let Some((cluster, principal)) = split_id(&d.have.id) else {
            return Ok(());
        };
        // A cluster that is gone took its entries with it.
        super::delete_answer(
            "DeleteAccessEntry",
            crate::clients(cx)
                .await?
                .eks
                .delete_access_entry()
                .cluster_name(cluster)
                .principal_arn(principal)
                .send()
                .await,
            &["ResourceNotFoundException"],
        )
    }
}
