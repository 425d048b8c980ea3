//! `aws.iam_oidc_provider`: an IAM OpenID Connect identity provider, the
//! trust anchor of IAM roles for service accounts (IRSA): a Kubernetes
//! service account's projected token, issued by the EKS cluster's OIDC
//! issuer, is exchanged for a role's credentials when the role's trust
//! policy names this provider (`aws.iam_role`'s `oidc_provider_arn`).

use serde_json::Value as Json;

use super::{api_error, observed_with, read_tag_pairs, strings};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
};
use ralph_core::model::kinds::{Attr, Field, KindSchema, Ty};

fn https_url(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    match s.strip_prefix("https://") {
        Some(rest) if !rest.is_empty() && !rest.contains(' ') && rest.len() <= 255 => Ok(()),
        _ => Err(format!(
            "`{s}` must be the issuer's https:// URL (an EKS cluster's `oidc_issuer`)"
        )),
    }
}

static SCHEMA: KindSchema = KindSchema::new(
    "aws.iam_oidc_provider",
    "iam",
    "An IAM OpenID Connect provider for an EKS cluster's issuer (IAM roles for service accounts).",
)
.fields(&[
    Field::fixed(
        "url",
        Ty::String,
        "the issuer's URL, such as an EKS cluster's oidc_issuer",
    )
    .check(https_url),
    Field::new(
        "client_ids",
        Ty::Set(&Ty::String),
        "the audiences tokens must name (sts.amazonaws.com for IRSA)",
    )
    .default("[\"sts.amazonaws.com\"]"),
    Field::new(
        "thumbprints",
        Ty::Set(&Ty::String),
        "the issuer's certificate thumbprints (IAM verifies EKS issuers itself; leave empty)",
    )
    .default("[]"),
    Field::tags(),
])
.attrs(&[
    Attr::string("id", "the provider ARN"),
    Attr::string("arn", "the provider ARN (a role's oidc_provider_arn)"),
    Attr::string(
        "issuer",
        "the URL without https://, the prefix of the trust policy's condition keys",
    ),
]);

pub struct OidcProvider;

async fn read_one(cx: &Context, arn: &str) -> Result<Option<Observed>, DriverError> {
    let iam = &crate::clients(cx).await?.iam;
    let answer = iam
        .get_open_id_connect_provider()
        .open_id_connect_provider_arn(arn)
        .send()
        .await;
    let Some(out) = super::found("GetOpenIDConnectProvider", answer, &["NoSuchEntity"])? else {
        return Ok(None);
    };
    // IAM answers the URL without its scheme.
    let issuer = out
        .url()
        .unwrap_or_default()
        .trim_start_matches("https://")
        .to_string();
    let list = |v: &[String]| Json::Array(v.iter().map(|s| Json::String(s.clone())).collect());
    let tags = read_tag_pairs(out.tags().iter().map(|t| (t.key(), t.value())));
    Ok(Some(observed_with(
        arn,
        tags,
        vec![
            ("arn", Json::String(arn.to_string())),
            ("url", Json::String(format!("https://{issuer}"))),
            ("issuer", Json::String(issuer)),
            ("client_ids", list(out.client_id_list())),
            ("thumbprints", list(out.thumbprint_list())),
        ],
    )))
}

/// Adds and removes a set's members with IAM's one-at-a-time calls.
async fn sync_client_ids(
    cx: &Context,
    arn: &str,
    have: &[String],
    want: &[String],
) -> Result<(), DriverError> {
    let iam = &crate::clients(cx).await?.iam;
    for id in want.iter().filter(|i| !have.contains(i)) {
        iam.add_client_id_to_open_id_connect_provider()
            .open_id_connect_provider_arn(arn)
            .client_id(id)
            .send()
            .await
            .map_err(|e| api_error("AddClientIDToOpenIDConnectProvider", e))?;
    }
    for id in have.iter().filter(|i| !want.contains(i)) {
        iam.remove_client_id_from_open_id_connect_provider()
            .open_id_connect_provider_arn(arn)
            .client_id(id)
            .send()
            .await
            .map_err(|e| api_error("RemoveClientIDFromOpenIDConnectProvider", e))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Driver for OidcProvider {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    /// The account's providers (a handful), read one by one for their tags:
    /// the stack's own are found even when the state never recorded them.
    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let iam = &crate::clients(cx).await?.iam;
        let listed = iam
            .list_open_id_connect_providers()
            .send()
            .await
            .map_err(|e| api_error("ListOpenIDConnectProviders", e))?;
        let mut arns: Vec<String> = listed
            .open_id_connect_provider_list()
            .iter()
            .filter_map(|p| p.arn().map(str::to_string))
            .collect();
        arns.extend(known.iter().map(|k| k.id.clone()));
        arns.sort();
        arns.dedup();
        let found = futures::future::try_join_all(arns.iter().map(|a| read_one(cx, a))).await?;
        Ok(found
            .into_iter()
            .flatten()
            .filter(|o| o.owner.as_ref() == Some(&cx.owner) || known.iter().any(|k| k.id == o.id))
            .collect())
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        read_one(cx, id).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let url = want.required_str("url")?;
        let thumbprints = strings(want.props.get("thumbprints"));
        let out = crate::clients(cx)
            .await?
            .iam
            .create_open_id_connect_provider()
            .url(url)
            .set_client_id_list(Some(strings(want.props.get("client_ids"))))
            .set_thumbprint_list((!thumbprints.is_empty()).then_some(thumbprints))
            .set_tags(Some(super::iam_tags(want)))
            .send()
            .await
            .map_err(|e| api_error("CreateOpenIDConnectProvider", e))?;
        let arn = out
            .open_id_connect_provider_arn()
            .unwrap_or_default()
            .to_string();
        found_again(read_one(cx, &arn).await?, "OIDC provider", &arn)
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let iam = &crate::clients(cx).await?.iam;
        if u.changes("client_ids") {
            sync_client_ids(
                cx,
                &have.id,
                &strings(have.attrs.get("client_ids")),
                &strings(want.props.get("client_ids")),
            )
            .await?;
        }
        if u.changes("thumbprints") {
            iam.update_open_id_connect_provider_thumbprint()
                .open_id_connect_provider_arn(&have.id)
                .set_thumbprint_list(Some(strings(want.props.get("thumbprints"))))
                .send()
                .await
                .map_err(|e| api_error("UpdateOpenIDConnectProviderThumbprint", e))?;
        }
        if u.changes("tags") {
            let removed = super::removed_tag_keys(have, want);
            let untag = iam.untag_open_id_connect_provider();
            let untag = untag.open_id_connect_provider_arn(&have.id);
            let tag = iam.tag_open_id_connect_provider();
            let tag = tag.open_id_connect_provider_arn(&have.id);
            super::retag(
                &removed,
                (
                    "UntagOpenIDConnectProvider",
                    untag.set_tag_keys(Some(removed.clone())).send(),
                ),
                (
                    "TagOpenIDConnectProvider",
                    tag.set_tags(Some(super::iam_tags(want))).send(),
                ),
            )
            .await?;
        }
        found_again(read_one(cx, &have.id).await?, "OIDC provider", &have.id)
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        super::delete_answer(
            "DeleteOpenIDConnectProvider",
            crate::clients(cx)
                .await?
                .iam
                .delete_open_id_connect_provider()
                .open_id_connect_provider_arn(&d.have.id)
                .send()
                .await,
            &["NoSuchEntity"],
        )
    }
}
