//! `aws.eks_addon`: an EKS add-on (vpc-cni, coredns, kube-proxy, the EBS
//! CSI driver, ...) managed by EKS, with its configuration values. The
//! production stack takes over `vpc-cni` to turn on its network policy
//! agent: without it, EKS stores NetworkPolicies and enforces none.

use std::time::Duration;

use serde_json::Value as Json;

use super::{api_error, observed_with, opt_str, read_each, read_tag_pairs, tag_map};
use super::{Readiness, Waiting};
use ralph_core::driver::{Context, Delete, Desired, Driver, DriverError, Known, Observed, Update};
use ralph_core::model::kinds::{Attr, Field, KindSchema, Ty};

const TIMEOUT: Duration = Duration::from_secs(20 * 60);

fn json_object(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if s.trim().is_empty() {
        return Ok(());
    }
    match serde_json::from_str::<Json>(s) {
        Ok(Json::Object(_)) => Ok(()),
        Ok(_) => Err(
            "configuration must be a JSON object, such as {\"enableNetworkPolicy\": \"true\"}"
                .into(),
        ),
        Err(e) => Err(format!("configuration is not JSON: {e}")),
    }
}

static SCHEMA: KindSchema = KindSchema::new(
    "aws.eks_addon",
    "eks",
    "An EKS add-on, such as vpc-cni with its network policy agent on.",
)
.fields(&[
    Field::fixed(
        "cluster_name",
        Ty::String,
        "the cluster, usually `${eks.name}`",
    ),
    Field::name(
        "the add-on: vpc-cni, coredns, kube-proxy, aws-ebs-csi-driver, eks-pod-identity-agent, ...",
    ),
    Field::new(
        "version",
        Ty::String,
        "the add-on version (empty: EKS's default for the cluster's Kubernetes version)",
    )
    .default("\"\""),
    Field::new(
        "configuration",
        Ty::String,
        "its configuration values, a JSON object in the add-on's schema (changes in place)",
    )
    .default("\"\"")
    .check(json_object),
    Field::new(
        "service_account_role_arn",
        Ty::String,
        "an IAM role for the add-on's service account (IRSA)",
    )
    .default("\"\""),
    Field::tags(),
])
.attrs(&[
    Attr::string("id", "CLUSTER/ADDON"),
    Attr::string("arn", "the add-on's ARN"),
]);

pub struct EksAddon;

/// Configuration values compare as JSON, whatever their layout.
fn canonical(text: &str) -> Json {
    if text.trim().is_empty() {
        return Json::String(String::new());
    }
    serde_json::from_str::<Json>(text)
        .map(|v| Json::String(v.to_string()))
        .unwrap_or_else(|_| Json::String(text.to_string()))
}

async fn read_one(cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
    let Some((cluster, name)) = id.split_once('/') else {
        return Ok(None);
    };
    let answer = crate::clients(cx)
        .await?
        .eks
        .describe_addon()
        .cluster_name(cluster)
        .addon_name(name)
        .send()
        .await;
    let found = super::found("DescribeAddon", answer, &["ResourceNotFoundException"])?;
    let Some(a) = found.and_then(|o| o.addon) else {
        return Ok(None);
    };
    let status = a
        .status()
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    let tags = read_tag_pairs(
        a.tags()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let o = observed_with(
        id,
        tags,
        vec![
            ("cluster_name", Json::String(cluster.to_string())),
            ("name", Json::String(name.to_string())),
            ("version", opt_str(a.addon_version())),
            (
                "configuration",
                canonical(a.configuration_values().unwrap_or_default()),
            ),
            (
                "service_account_role_arn",
                Json::String(a.service_account_role_arn().unwrap_or_default().to_string()),
            ),
            ("arn", opt_str(a.addon_arn())),
        ],
    );
    Ok(Some(o.with_status(&status, "ACTIVE")))
}

const ADDON_READY: Readiness = Readiness {
    what: "the add-on",
    ready: "ACTIVE",
    failed: &["CREATE_FAILED", "UPDATE_FAILED", "DEGRADED"],
};

async fn wait_active(cx: &Context, w: Waiting<'_>) -> Result<Observed, DriverError> {
    ADDON_READY.wait(cx, w, || read_one(cx, w.id)).await
}

fn opt(want: &Desired<'_>, f: &str) -> Option<String> {
    want.str(f).filter(|s| !s.is_empty()).map(str::to_string)
}

#[async_trait::async_trait]
impl Driver for EksAddon {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    fn typical_seconds(&self) -> u64 {
        60
    }

    /// The configuration compares as JSON (refresh keeps EKS's chosen
    /// version from showing as a change when the stack names none).
    fn normalize(
        &self,
        _base_dir: &std::path::Path,
        props: &mut serde_json::Map<String, Json>,
    ) -> Result<(), String> {
        if let Some(c) = props.get("configuration").and_then(Json::as_str) {
            let c = canonical(c);
            props.insert("configuration".into(), c);
        }
        Ok(())
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let mut found = read_each(known, |id| async move { read_one(cx, &id).await }).await?;
        // EKS's default version when the stack named none is not a change.
        for o in &mut found {
            if let Some(k) = known.iter().find(|k| k.id == o.id) {
                if k.inputs.get("version").and_then(Json::as_str) == Some("") {
                    o.attrs
                        .insert("version".into(), Json::String(String::new()));
                }
            }
        }
        Ok(found)
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        use aws_sdk_eks::types::ResolveConflicts;
        let cluster = want.required_str("cluster_name")?;
        let name = want.required_str("name")?;
        let id = format!("{cluster}/{name}");
        let made = crate::clients(cx)
            .await?
            .eks
            .create_addon()
            .cluster_name(cluster)
            .addon_name(name)
            .set_addon_version(opt(want, "version"))
            .set_configuration_values(opt(want, "configuration"))
            .set_service_account_role_arn(opt(want, "service_account_role_arn"))
            // EKS installs vpc-cni, coredns and kube-proxy itself: taking
            // them over overwrites what it set up.
            .resolve_conflicts(ResolveConflicts::Overwrite)
            .set_tags(Some(tag_map(want).into_iter().collect()))
            .send()
            .await;
        if super::made("CreateAddon", made, "ResourceInUseException")?.is_none() {
            let what = format!("{cluster} already has the {name} add-on");
            super::ours_or_refuse(read_one(cx, &id).await?.as_ref(), want, &what, &id)?;
        }
        let timeout = want.timeouts.create_or(TIMEOUT);
        let mut o = wait_active(cx, Waiting::created(want.address, &id, timeout)).await?;
        if opt(want, "version").is_none() {
            o.attrs
                .insert("version".into(), Json::String(String::new()));
        }
        Ok(o)
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        use aws_sdk_eks::types::ResolveConflicts;
        let Some((cluster, name)) = have.id.split_once('/') else {
            return Err(DriverError::new(format!(
                "`{}` is not CLUSTER/ADDON",
                have.id
            )));
        };
        if u.changes("version")
            || u.changes("configuration")
            || u.changes("service_account_role_arn")
        {
            let mut req = crate::clients(cx)
                .await?
                .eks
                .update_addon()
                .cluster_name(cluster)
                .addon_name(name)
                .resolve_conflicts(ResolveConflicts::Overwrite);
            if u.changes("version") {
                req = req.set_addon_version(opt(want, "version"));
            }
            if u.changes("configuration") {
                // An empty object clears what was set.
                req = req.configuration_values(
                    opt(want, "configuration").unwrap_or_else(|| "{}".into()),
                );
            }
            if u.changes("service_account_role_arn") {
                req = req.service_account_role_arn(
                    want.str("service_account_role_arn").unwrap_or_default(),
                );
            }
            req.send().await.map_err(|e| api_error("UpdateAddon", e))?;
        }
        if u.changes("tags") {
            let arn = crate::arn_of(have);
            super::arn_tags::sync(cx, super::arn_tags::ArnService::Eks, &arn, have, want).await?;
        }
        let timeout = want.timeouts.update_or(TIMEOUT);
        let mut o = wait_active(cx, Waiting::existing(want.address, &have.id, timeout)).await?;
        if opt(want, "version").is_none() {
            o.attrs
                .insert("version".into(), Json::String(String::new()));
        }
        Ok(o)
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let Some((cluster, name)) = d.have.id.split_once('/') else {
            return Ok(());
        };
        // `preserve`: the add-on's software stays on the cluster (the nodes
        // need their network plugin); EKS only stops managing it. A cluster
        // that is gone took its add-ons with it.
        super::delete_answer(
            "DeleteAddon",
            crate::clients(cx)
                .await?
                .eks
                .delete_addon()
                .cluster_name(cluster)
                .addon_name(name)
                .preserve(true)
                .send()
                .await,
            &["ResourceNotFoundException"],
        )?;
        let id = d.have.id.clone();
        super::wait_gone(
            cx,
            d.have,
            "the add-on",
            d.timeouts.delete_or(TIMEOUT),
            || read_one(cx, &id),
        )
        .await
    }
}
