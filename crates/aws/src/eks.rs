//! `aws.eks_cluster` and `aws.eks_nodegroup`: the Kubernetes control plane
//! and its managed worker nodes. Creating a cluster takes 15-20 minutes on
//! AWS and a nodegroup up to 30: create, update and delete wait for ACTIVE
//! (or gone) within the kind's timeouts, which the stack can override.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_eks::types::{
    CapacityTypes, LaunchTemplateSpecification, NodegroupScalingConfig, NodegroupUpdateConfig,
    UpdateLabelsPayload, VpcConfigRequest,
};
use serde_json::{Map, Value as Json};

use super::arn_tags::{self, ArnService};
use super::{
    api_error, delete_started, error_code, observed_with, opt_str, read_each, read_tag_pairs,
    strings, tag_map, wait_gone, Readiness, Waiting,
};
use ralph_core::driver::{
    Context, Delete, Desired, Driver, DriverError, Known, Observed, Update, STATUS_ATTR,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};
use ralph_core::model::support;

/// EKS's answer for a cluster or nodegroup that does not exist.
const NOT_FOUND: &str = "ResourceNotFoundException";

const CLUSTER_CREATE: Duration = Duration::from_secs(20 * 60);
const CLUSTER_UPDATE: Duration = Duration::from_secs(60 * 60);
const CLUSTER_DELETE: Duration = Duration::from_secs(15 * 60);
const NODEGROUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

fn eks_name(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = !s.is_empty()
        && s.len() <= 100
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    checks::require(ok, || {
        format!("`{s}` must be 1-100 letters, digits, `-` and `_`, starting with a letter or digit")
    })
}

fn k8s_version(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    {
        support::check(support::Provider::Eks, s, support::today())
    } else {
        Err(format!(
            "`{s}` is not a Kubernetes minor version such as {DEFAULT_VERSION} (quote it: \"{DEFAULT_VERSION}\")"
        ))
    }
}

/// The version a cluster gets when the stack names none: the newest the
/// support table lists (support/kubernetes-versions.json).
pub const DEFAULT_VERSION: &str = "1.35";

fn capacity(v: &Json) -> Result<(), String> {
    checks::choice(v, &["ON_DEMAND", "SPOT"], "capacity_type")
}

static CLUSTER: KindSchema = KindSchema::new("aws.eks_cluster", "eks", "An EKS cluster (the Kubernetes control plane).")
    .fields(&[
        Field::name("the cluster name")
            .check(eks_name),
        Field::new(
            "version",
            Ty::String,
            "Kubernetes minor version, upgraded in place one step at a time",
        )
        .default("\"1.35\"")
        .check(k8s_version),
        Field::fixed("role_arn", Ty::String, "the control plane's IAM role"),
        Field::fixed("subnet_ids",
            Ty::Set(&Ty::String),
            "subnets for the control plane's network interfaces"),
        Field::new(
            "security_group_ids",
            Ty::Set(&Ty::String),
            "extra security groups",
        )
        .default("[]")
        .forces_replace(),
        Field::new(
            "endpoint_private_access",
            Ty::Bool,
            "reach the API from inside the VPC",
        )
        .default("true"),
        Field::new(
            "endpoint_public_access",
            Ty::Bool,
            "reach the API from the internet",
        )
        .default("true"),
        Field::new(
            "public_access_cidrs",
            Ty::Set(&Ty::Cidr),
            "who may reach the public endpoint (changes in place)",
        )
        .default("[\"0.0.0.0/0\"]")
        .check(checks::no_placeholder_ranges),
        Field::new(
            "authentication_mode",
            Ty::String,
            "who may use the cluster is kept in EKS access entries (API, or API_AND_CONFIG_MAP beside the aws-auth ConfigMap) or only in aws-auth (CONFIG_MAP); changes in place, towards API only",
        )
        .default("\"API_AND_CONFIG_MAP\"")
        .check(authentication_mode),
        Field::new(
            "control_plane_logs",
            Ty::Set(&Ty::String),
            "control-plane logs sent to CloudWatch Logs (log group /aws/eks/NAME/cluster): api, audit, authenticator, controllerManager, scheduler; changes in place",
        )
        .default("[]")
        .check(log_types),
        Field::tags(),
    ])
    .attrs(&[
        Attr::string("id", "the cluster name"),
        Attr::string("arn", "the cluster ARN"),
        Attr::string("endpoint", "the API server URL"),
        Attr::string("certificate_authority", "the API server's CA, base64 PEM"),
        Attr::string("oidc_issuer", "the OIDC issuer URL (for IRSA)"),
        Attr::string("cluster_security_group_id", "the security group EKS created"),
        Attr::string("status", "CREATING, ACTIVE, UPDATING, DELETING, FAILED"),
    ])
    .name_field("name");

static NODEGROUP: KindSchema =
    KindSchema::new("aws.eks_nodegroup", "eks", "An EKS managed nodegroup.")
        .fields(&[
            Field::fixed(
                "cluster_name",
                Ty::String,
                "the cluster, usually `${eks.name}`",
            ),
            Field::name("the nodegroup name").check(eks_name),
            Field::fixed("node_role_arn", Ty::String, "the nodes' IAM role"),
            Field::fixed(
                "subnet_ids",
                Ty::Set(&Ty::String),
                "where nodes run (private subnets)",
            ),
            Field::new(
                "instance_types",
                Ty::List(&Ty::String),
                "EC2 instance types",
            )
            .default("[\"m5.xlarge\"]")
            .forces_replace(),
            Field::new("capacity_type", Ty::String, "ON_DEMAND or SPOT")
                .default("\"ON_DEMAND\"")
                .forces_replace()
                .check(capacity),
            // EKS CreateNodegroup: diskSize in GiB (EBS gp2/gp3 up to 16 TiB),
            // scalingConfig minSize >= 0, maxSize >= 1, minSize <= desiredSize <=
            // maxSize; updateConfig maxUnavailable 1 to 100.
            Field::new("disk_size", Ty::Int, "root volume GiB")
                .default("50")
                .forces_replace()
                .check(checks::range::<1, 16384>),
            Field::new(
                "security_group_ids",
                Ty::Set(&Ty::String),
                "security groups the nodes carry, through a launch template the nodegroup owns \
             (named CLUSTER-NODEGROUP: these groups, the root volume encrypted, IMDSv2); \
             empty: the nodes carry only the cluster security group EKS makes",
            )
            .default("[]")
            .forces_replace(),
            Field::new("min_size", Ty::Int, "fewest nodes")
                .required()
                .check(checks::range::<0, 1000>),
            Field::new("max_size", Ty::Int, "most nodes")
                .required()
                .check(checks::range::<1, 1000>),
            Field::new("desired_size", Ty::Int, "nodes now")
                .required()
                .check(checks::range::<0, 1000>),
            Field::new(
                "max_unavailable",
                Ty::Int,
                "nodes replaced at once during updates",
            )
            .default("1")
            .check(checks::range::<1, 100>),
            Field::new("labels", Ty::StringMap, "Kubernetes node labels").default("{}"),
            Field::tags(),
        ])
        .attrs(&[
            Attr::string("id", "cluster:nodegroup"),
            Attr::string("arn", "the nodegroup ARN"),
            Attr::string("status", "CREATING, ACTIVE, UPDATING, DELETING, ..."),
        ])
        .ordered(&[
            ("min_size", "desired_size"),
            ("desired_size", "max_size"),
            ("min_size", "max_size"),
        ]);

pub struct EksCluster;
pub struct EksNodegroup;

fn str_array(items: &[String]) -> Json {
    Json::Array(items.iter().map(|s| Json::String(s.clone())).collect())
}

fn tags_of(
    t: Option<&HashMap<String, String>>,
) -> (Option<String>, Option<ralph_core::driver::Owner>, Json) {
    read_tag_pairs(
        t.into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
}

async fn read_cluster(cx: &Context, name: &str) -> Result<Option<Observed>, DriverError> {
    let answer = crate::clients(cx)
        .await?
        .eks
        .describe_cluster()
        .name(name)
        .send()
        .await;
    let Some(c) = super::found("DescribeCluster", answer, &[NOT_FOUND])?.and_then(|o| o.cluster)
    else {
        return Ok(None);
    };
    let vpc = c.resources_vpc_config();
    let status = c
        .status()
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| "UNKNOWN".into());
    let o = observed_with(
        name,
        tags_of(c.tags()),
        vec![
            ("name", Json::String(name.to_string())),
            ("arn", opt_str(c.arn())),
            ("version", opt_str(c.version())),
            ("role_arn", opt_str(c.role_arn())),
            ("endpoint", opt_str(c.endpoint())),
            (
                "certificate_authority",
                opt_str(c.certificate_authority().and_then(|ca| ca.data())),
            ),
            (
                "oidc_issuer",
                opt_str(c.identity().and_then(|i| i.oidc()).and_then(|o| o.issuer())),
            ),
            (
                "subnet_ids",
                str_array(vpc.map(|v| v.subnet_ids()).unwrap_or_default()),
            ),
            (
                "security_group_ids",
                str_array(vpc.map(|v| v.security_group_ids()).unwrap_or_default()),
            ),
            (
                "cluster_security_group_id",
                opt_str(vpc.and_then(|v| v.cluster_security_group_id())),
            ),
            (
                "endpoint_private_access",
                vpc.map(|v| Json::Bool(v.endpoint_private_access()))
                    .unwrap_or(Json::Null),
            ),
            (
                "endpoint_public_access",
                vpc.map(|v| Json::Bool(v.endpoint_public_access()))
                    .unwrap_or(Json::Null),
            ),
            (
                "public_access_cidrs",
                vpc.map(|v| str_array(v.public_access_cidrs()))
                    .unwrap_or(Json::Null),
            ),
            (
                "control_plane_logs",
                Json::Array({
                    let mut on: Vec<String> = c
                        .logging()
                        .map(|l| l.cluster_logging())
                        .unwrap_or_default()
                        .iter()
                        .filter(|s| s.enabled() == Some(true))
                        .flat_map(|s| s.types().iter().map(|t| t.as_str().to_string()))
                        .collect();
                    on.sort();
                    on.dedup();
                    on.into_iter().map(Json::String).collect()
                }),
            ),
            (
                "authentication_mode",
                Json::String(
                    c.access_config()
                        .and_then(|a| a.authentication_mode())
                        .map(|m| m.as_str().to_string())
                        .unwrap_or_else(|| "CONFIG_MAP".into()),
                ),
            ),
        ],
    );
    Ok(Some(o.with_status(&status, "ACTIVE")))
}

const LOG_TYPES: &[&str] = &[
    "api",
    "audit",
    "authenticator",
    "controllerManager",
    "scheduler",
];

fn log_types(v: &Json) -> Result<(), String> {
    for t in v.as_array().into_iter().flatten() {
        let t = t.as_str().unwrap_or_default();
        if !LOG_TYPES.contains(&t) {
            return Err(format!(
                "`{t}` is not an EKS control-plane log type: {}",
                LOG_TYPES.join(", ")
            ));
        }
    }
    Ok(())
}

/// The logging request: the wanted types on, with `off` the others off
/// (an update names both, since EKS keeps each type's last setting).
fn logging(want: &Desired<'_>, off: bool) -> aws_sdk_eks::types::Logging {
    use aws_sdk_eks::types::{LogSetup, LogType, Logging};
    let on = strings(want.props.get("control_plane_logs"));
    let mut b = Logging::builder().cluster_logging(
        LogSetup::builder()
            .set_types(Some(on.iter().map(|t| LogType::from(t.as_str())).collect()))
            .enabled(true)
            .build(),
    );
    let rest: Vec<LogType> = LOG_TYPES
        .iter()
        .filter(|t| !on.iter().any(|o| o == *t))
        .map(|t| LogType::from(*t))
        .collect();
    if off && !rest.is_empty() {
        b = b.cluster_logging(
            LogSetup::builder()
                .set_types(Some(rest))
                .enabled(false)
                .build(),
        );
    }
    b.build()
}

fn authentication_mode(v: &Json) -> Result<(), String> {
    checks::choice(
        v,
        &["API", "API_AND_CONFIG_MAP", "CONFIG_MAP"],
        "authentication_mode",
    )
}

fn auth_mode(want: &Desired<'_>) -> aws_sdk_eks::types::AuthenticationMode {
    aws_sdk_eks::types::AuthenticationMode::from(
        want.str("authentication_mode")
            .unwrap_or("API_AND_CONFIG_MAP"),
    )
}

const CLUSTER_READY: Readiness = Readiness {
    what: "the EKS cluster",
    ready: "ACTIVE",
    failed: &["FAILED"],
};

async fn wait_cluster(cx: &Context, w: Waiting<'_>) -> Result<Observed, DriverError> {
    CLUSTER_READY.wait(cx, w, || read_cluster(cx, w.id)).await
}

fn vpc_request(want: &Desired<'_>, for_update: bool) -> VpcConfigRequest {
    let mut b = VpcConfigRequest::builder()
        .endpoint_private_access(want.bool("endpoint_private_access").unwrap_or(true))
        .endpoint_public_access(want.bool("endpoint_public_access").unwrap_or(true))
        .set_public_access_cidrs(Some(strings(want.props.get("public_access_cidrs"))));
    if !for_update {
        b = b
            .set_subnet_ids(Some(strings(want.props.get("subnet_ids"))))
            .set_security_group_ids(Some(strings(want.props.get("security_group_ids"))));
    }
    b.build()
}

/// A request token that is the same for the same create, so a create
/// repeated after a killed run is not a second one, and another for a
/// create that replaces (or re-creates) what the state recorded: EKS would
/// take a reused token for the request it first answered.
fn token(want: &Desired<'_>) -> String {
    format!("ralph-{}", super::create_token(want, &[]))
}

#[async_trait::async_trait]
impl Driver for EksCluster {
    fn typical_seconds(&self) -> u64 {
        900
    }

    fn schema(&self) -> &'static KindSchema {
        &CLUSTER
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let all = read_each(known, |id| async move { read_cluster(cx, &id).await }).await?;
        Ok(all
            .into_iter()
            .filter(|o| o.attrs.get(STATUS_ATTR).and_then(Json::as_str) != Some("DELETING"))
            .collect())
    }

    /// A Kubernetes version the plan creates or upgrades to must be one
    /// EKS lists as offered today (DescribeClusterVersions): the dated
    /// table `validate` reads can be older than the provider's calendar.
    async fn preflight(
        &self,
        cx: &Context,
        change: &ralph_core::change::Change,
    ) -> Result<(), DriverError> {
        let Some(version) = change
            .attributes
            .iter()
            .find(|a| a.name == "version")
            .and_then(|a| a.after.as_ref())
            .and_then(Json::as_str)
        else {
            return Ok(());
        };
        let Some(wanted) = support::minor_of(version) else {
            return Ok(());
        };
        let listed = crate::clients(cx)
            .await?
            .eks
            .describe_cluster_versions()
            .include_all(true)
            .send()
            .await;
        let listed = match listed {
            Ok(l) => l,
            Err(e) => {
                // A role without eks:DescribeClusterVersions still plans,
                // on the dated table alone.
                cx.reporter.report(ralph_core::events::Event::Warning {
                    message: format!(
                        "{}: could not ask EKS which versions it offers ({}); relying on the dated table",
                        change.address,
                        api_error("DescribeClusterVersions", e).message
                    ),
                });
                return Ok(());
            }
        };
        use aws_sdk_eks::types::VersionStatus;
        let offered: Vec<&str> = listed
            .cluster_versions()
            .iter()
            .filter(|v| !matches!(v.version_status(), Some(VersionStatus::Unsupported)))
            .filter_map(|v| v.cluster_version())
            .collect();
        if offered.contains(&wanted.as_str()) {
            return Ok(());
        }
        let why = match listed
            .cluster_versions()
            .iter()
            .find(|v| v.cluster_version() == Some(wanted.as_str()))
        {
            Some(_) => "its support has ended",
            None => "it is not listed",
        };
        Err(DriverError::new(format!(
            "Amazon EKS does not offer Kubernetes {wanted} ({why}, by DescribeClusterVersions); it offers {}",
            offered.join(", ")
        )))
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let name = want.required_str("name")?;
        crate::clients(cx)
            .await?
            .eks
            .create_cluster()
            .name(name)
            .version(want.str("version").unwrap_or(DEFAULT_VERSION))
            .role_arn(want.required_str("role_arn")?)
            .resources_vpc_config(vpc_request(want, false))
            .access_config(
                aws_sdk_eks::types::CreateAccessConfigRequest::builder()
                    .authentication_mode(auth_mode(want))
                    .bootstrap_cluster_creator_admin_permissions(true)
                    .build(),
            )
            .set_tags(Some(tag_map(want).into_iter().collect()))
            .set_logging(
                (!strings(want.props.get("control_plane_logs")).is_empty())
                    .then(|| logging(want, false)),
            )
            .client_request_token(token(want))
            .send()
            .await
            .map_err(|e| api_error("CreateCluster", e))?;
        wait_cluster(
            cx,
            Waiting::created(want.address, name, want.timeouts.create_or(CLUSTER_CREATE)),
        )
        .await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let eks = &crate::clients(cx).await?.eks;
        let w = Waiting::existing(
            want.address,
            &have.id,
            want.timeouts.update_or(CLUSTER_UPDATE),
        );
        if u.changes("version") {
            eks.update_cluster_version()
                .name(&have.id)
                .version(want.str("version").unwrap_or(DEFAULT_VERSION))
                .send()
                .await
                .map_err(|e| api_error("UpdateClusterVersion", e))?;
            wait_cluster(cx, w).await?;
        }
        if u.changes("endpoint_private_access")
            || u.changes("endpoint_public_access")
            || u.changes("public_access_cidrs")
        {
            eks.update_cluster_config()
                .name(&have.id)
                .resources_vpc_config(vpc_request(want, true))
                .send()
                .await
                .map_err(|e| api_error("UpdateClusterConfig", e))?;
            wait_cluster(cx, w).await?;
        }
        // EKS takes one kind of change per UpdateClusterConfig.
        if u.changes("control_plane_logs") {
            eks.update_cluster_config()
                .name(&have.id)
                .logging(logging(want, true))
                .send()
                .await
                .map_err(|e| api_error("UpdateClusterConfig", e))?;
            wait_cluster(cx, w).await?;
        }
        if u.changes("authentication_mode") {
            eks.update_cluster_config()
                .name(&have.id)
                .access_config(
                    aws_sdk_eks::types::UpdateAccessConfigRequest::builder()
                        .authentication_mode(auth_mode(want))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| api_error("UpdateClusterConfig", e))?;
            wait_cluster(cx, w).await?;
        }
        if u.changes("tags") {
            let arn = crate::arn_of(have);
            arn_tags::sync(cx, ArnService::Eks, &arn, have, want).await?;
        }
        wait_cluster(cx, w).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let answer = crate::clients(cx)
            .await?
            .eks
            .delete_cluster()
            .name(&d.have.id)
            .send()
            .await;
        let read = read_cluster(cx, &d.have.id);
        if delete_started("DeleteCluster", answer, &[NOT_FOUND], read).await? {
            return Ok(());
        }
        wait_gone(
            cx,
            d.have,
            "the EKS cluster",
            d.timeouts.delete_or(CLUSTER_DELETE),
            || read_cluster(cx, &d.have.id),
        )
        .await
    }
}

fn split_id(id: &str) -> Result<(&str, &str), DriverError> {
    id.split_once(':')
        .ok_or_else(|| DriverError::new(format!("nodegroup id `{id}` is not cluster:nodegroup")))
}

async fn read_nodegroup(
    cx: &Context,
    cluster: &str,
    name: &str,
) -> Result<Option<Observed>, DriverError> {
    let answer = crate::clients(cx)
        .await?
        .eks
        .describe_nodegroup()
        .cluster_name(cluster)
        .nodegroup_name(name)
        .send()
        .await;
    let found = super::found("DescribeNodegroup", answer, &[NOT_FOUND])?;
    let Some(n) = found.and_then(|o| o.nodegroup) else {
        return Ok(None);
    };
    let scaling = n.scaling_config();
    let template = match n.launch_template().and_then(|t| t.id()) {
        Some(id) => read_template(cx, id).await?,
        None => None,
    };
    let int = |v: Option<i32>| v.map(|x| Json::from(x as i64)).unwrap_or(Json::Null);
    let labels: Map<String, Json> = n
        .labels()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), Json::String(v.clone())))
        .collect();
    let status = n
        .status()
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| "UNKNOWN".into());
    let o = observed_with(
        &format!("{cluster}:{name}"),
        tags_of(n.tags()),
        vec![
            ("cluster_name", Json::String(cluster.to_string())),
            ("name", Json::String(name.to_string())),
            ("arn", opt_str(n.nodegroup_arn())),
            ("node_role_arn", opt_str(n.node_role())),
            ("subnet_ids", str_array(n.subnets())),
            ("instance_types", str_array(n.instance_types())),
            (
                "capacity_type",
                opt_str(n.capacity_type().map(|c| c.as_str())),
            ),
            (
                "disk_size",
                match &template {
                    Some(t) => int(t.disk_size),
                    None => int(n.disk_size()),
                },
            ),
            (
                "security_group_ids",
                Json::Array(
                    template
                        .as_ref()
                        .map(|t| {
                            t.security_groups
                                .iter()
                                .cloned()
                                .map(Json::String)
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
            ),
            ("min_size", int(scaling.and_then(|s| s.min_size()))),
            ("max_size", int(scaling.and_then(|s| s.max_size()))),
            ("desired_size", int(scaling.and_then(|s| s.desired_size()))),
            (
                "max_unavailable",
                int(n.update_config().and_then(|u| u.max_unavailable())),
            ),
            ("labels", Json::Object(labels)),
        ],
    );
    Ok(Some(o.with_status(&status, "ACTIVE")))
}

const NODEGROUP_READY: Readiness = Readiness {
    what: "the nodegroup",
    ready: "ACTIVE",
    failed: &["CREATE_FAILED", "DEGRADED", "DELETE_FAILED"],
};

async fn wait_nodegroup(
    cx: &Context,
    cluster: &str,
    w: Waiting<'_>,
) -> Result<Observed, DriverError> {
    NODEGROUP_READY
        .wait(cx, w, || read_nodegroup(cx, cluster, w.id))
        .await
}

fn int(want: &Desired<'_>, f: &str) -> Result<Option<i32>, DriverError> {
    want.int(f)
}

/// `running`: the desired size the nodegroup has now. Unless the stack
/// changes `desired_size` itself, a running size within the new [min, max]
/// stays: it is the cluster autoscaler's choice.
fn scaling(
    want: &Desired<'_>,
    running: Option<i32>,
    desired_changed: bool,
) -> Result<NodegroupScalingConfig, DriverError> {
    let min = int(want, "min_size")?;
    let max = int(want, "max_size")?;
    let desired = match running {
        Some(r) if !desired_changed => {
            Some(r.clamp(min.unwrap_or(r), max.unwrap_or(r).max(min.unwrap_or(r))))
        }
        _ => int(want, "desired_size")?,
    };
    Ok(NodegroupScalingConfig::builder()
        .set_min_size(min)
        .set_max_size(max)
        .set_desired_size(desired)
        .build())
}

#[async_trait::async_trait]
impl Driver for EksNodegroup {
    fn typical_seconds(&self) -> u64 {
        400
    }

    fn schema(&self) -> &'static KindSchema {
        &NODEGROUP
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let eks = &crate::clients(cx).await?.eks;
        let mut candidates: Vec<(String, String)> = known
            .iter()
            .filter_map(|k| {
                split_id(&k.id)
                    .ok()
                    .map(|(c, n)| (c.to_string(), n.to_string()))
            })
            .collect();
        // Nodegroups of the stack's own clusters, so an unrecorded one is found.
        let mut clusters = eks.list_clusters().into_paginator().send();
        while let Some(page) = clusters.next().await {
            let page = page.map_err(|e| api_error("ListClusters", e))?;
            for cluster in page.clusters() {
                let Some(c) = read_cluster(cx, cluster).await? else {
                    continue;
                };
                if c.owner.as_ref() != Some(&cx.owner) {
                    continue;
                }
                let groups = eks
                    .list_nodegroups()
                    .cluster_name(cluster)
                    .send()
                    .await
                    .map_err(|e| api_error("ListNodegroups", e))?;
                candidates.extend(
                    groups
                        .nodegroups()
                        .iter()
                        .map(|n| (cluster.clone(), n.clone())),
                );
            }
        }
        candidates.sort();
        candidates.dedup();
        let mut out = Vec::new();
        for (cluster, name) in candidates {
            if let Some(o) = read_nodegroup(cx, &cluster, &name).await? {
                if o.attrs.get(STATUS_ATTR).and_then(Json::as_str) != Some("DELETING") {
                    let recorded = known.iter().find(|k| k.id == o.id);
                    out.push(ralph_core::driver::autoscaled_size(
                        o,
                        recorded,
                        [
                            "desired_size",
                            "min_size",
                            "max_size",
                            "running_desired_size",
                        ],
                    ));
                }
            }
        }
        Ok(out)
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let cluster = want.required_str("cluster_name")?;
        let name = want.required_str("name")?;
        let labels: HashMap<String, String> = super::user_tags_of(want.props.get("labels"));
        let groups = strings(want.props.get("security_group_ids"));
        let template = if groups.is_empty() {
            None
        } else {
            Some(ensure_template(cx, want, cluster, name, &groups).await?)
        };
        let disk_size = if template.is_some() {
            None // in the launch template; EKS refuses both
        } else {
            int(want, "disk_size")?
        };
        crate::clients(cx)
            .await?
            .eks
            .create_nodegroup()
            .set_launch_template(template.map(|id| {
                LaunchTemplateSpecification::builder()
                    .id(id)
                    .version("$Default")
                    .build()
            }))
            .cluster_name(cluster)
            .nodegroup_name(name)
            .node_role(want.required_str("node_role_arn")?)
            .set_subnets(Some(strings(want.props.get("subnet_ids"))))
            .set_instance_types(Some(strings(want.props.get("instance_types"))))
            .capacity_type(CapacityTypes::from(
                want.str("capacity_type").unwrap_or("ON_DEMAND"),
            ))
            .set_disk_size(disk_size)
            .scaling_config(scaling(want, None, true)?)
            .update_config(
                NodegroupUpdateConfig::builder()
                    .set_max_unavailable(int(want, "max_unavailable")?)
                    .build(),
            )
            .set_labels(Some(labels))
            .set_tags(Some(tag_map(want).into_iter().collect()))
            .client_request_token(token(want))
            .send()
            .await
            .map_err(|e| api_error("CreateNodegroup", e))?;
        wait_nodegroup(
            cx,
            cluster,
            Waiting::created(
                want.address,
                name,
                want.timeouts.create_or(NODEGROUP_TIMEOUT),
            ),
        )
        .await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let (cluster, name) = split_id(&have.id)?;
        let timeout = want.timeouts.update_or(NODEGROUP_TIMEOUT);
        if u.changes("min_size")
            || u.changes("max_size")
            || u.changes("desired_size")
            || u.changes("max_unavailable")
            || u.changes("labels")
        {
            let mut req = crate::clients(cx)
                .await?
                .eks
                .update_nodegroup_config()
                .cluster_name(cluster)
                .nodegroup_name(name);
            if u.changes("min_size") || u.changes("max_size") || u.changes("desired_size") {
                let running = have
                    .attrs
                    .get("running_desired_size")
                    .and_then(Json::as_i64)
                    .map(|v| v as i32);
                req = req.scaling_config(scaling(want, running, u.changes("desired_size"))?);
            }
            if u.changes("max_unavailable") {
                req = req.update_config(
                    NodegroupUpdateConfig::builder()
                        .set_max_unavailable(int(want, "max_unavailable")?)
                        .build(),
                );
            }
            if u.changes("labels") {
                let wanted: HashMap<String, String> = super::user_tags_of(want.props.get("labels"));
                let current: HashMap<String, String> =
                    super::user_tags_of(have.attrs.get("labels"));
                let removed: Vec<String> = current
                    .keys()
                    .filter(|k| !wanted.contains_key(*k))
                    .cloned()
                    .collect();
                req = req.labels(
                    UpdateLabelsPayload::builder()
                        .set_add_or_update_labels(Some(wanted))
                        .set_remove_labels(Some(removed))
                        .build(),
                );
            }
            req.send()
                .await
                .map_err(|e| api_error("UpdateNodegroupConfig", e))?;
        }
        if u.changes("tags") {
            let arn = crate::arn_of(have);
            arn_tags::sync(cx, ArnService::Eks, &arn, have, want).await?;
        }
        wait_nodegroup(cx, cluster, Waiting::existing(want.address, name, timeout)).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let (cluster, name) = split_id(&d.have.id)?;
        let answer = crate::clients(cx)
            .await?
            .eks
            .delete_nodegroup()
            .cluster_name(cluster)
            .nodegroup_name(name)
            .send()
            .await;
        let read = read_nodegroup(cx, cluster, name);
        if delete_started("DeleteNodegroup", answer, &[NOT_FOUND], read).await? {
            return Ok(());
        }
        wait_gone(
            cx,
            d.have,
            "the nodegroup",
            d.timeouts.delete_or(NODEGROUP_TIMEOUT),
            || read_nodegroup(cx, cluster, name),
        )
        .await?;
        delete_template(cx, cluster, name).await
    }
}

/// What a nodegroup's launch template gives its nodes.
struct Template {
    security_groups: Vec<String>,
    disk_size: Option<i32>,
}

fn template_name(cluster: &str, nodegroup: &str) -> String {
    format!("{cluster}-{nodegroup}")
}

/// The default version of launch template `id`, or None when it is gone.
async fn read_template(cx: &Context, id: &str) -> Result<Option<Template>, DriverError> {
    let out = match crate::clients(cx)
        .await?
        .ec2
        .describe_launch_template_versions()
        .launch_template_id(id)
        .versions("$Default")
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if error_code(&e).is_some_and(|c| c.starts_with("InvalidLaunchTemplateId")) => {
            return Ok(None)
        }
        Err(e) => return Err(api_error("DescribeLaunchTemplateVersions", e)),
    };
    let Some(data) = out
        .launch_template_versions()
        .first()
        .and_then(|v| v.launch_template_data())
    else {
        return Ok(None);
    };
    let mut security_groups: Vec<String> = data.security_group_ids().to_vec();
    security_groups.sort();
    let disk_size = data
        .block_device_mappings()
        .iter()
        .find_map(|m| m.ebs().and_then(|e| e.volume_size()));
    Ok(Some(Template {
        security_groups,
        disk_size,
    }))
}

/// The nodegroup's launch template: made with the ownership tags, or the
/// one a run that died before creating the nodegroup left (ours only).
async fn ensure_template(
    cx: &Context,
    want: &Desired<'_>,
    cluster: &str,
    nodegroup: &str,
    groups: &[String],
) -> Result<String, DriverError> {
    use aws_sdk_ec2::types::{
        LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
        LaunchTemplateHttpTokensState, LaunchTemplateInstanceMetadataOptionsRequest,
        RequestLaunchTemplateData, ResourceType, VolumeType,
    };
    let ec2 = &crate::clients(cx).await?.ec2;
    let name = template_name(cluster, nodegroup);
    let data = RequestLaunchTemplateData::builder()
        .set_security_group_ids(Some(groups.to_vec()))
        .block_device_mappings(
            LaunchTemplateBlockDeviceMappingRequest::builder()
                .device_name("/dev/xvda")
                .ebs(
                    LaunchTemplateEbsBlockDeviceRequest::builder()
                        .set_volume_size(int(want, "disk_size")?)
                        .volume_type(VolumeType::Gp3)
                        .encrypted(true)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        // IMDSv2 only; two hops so pods on the node still reach it.
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_tokens(LaunchTemplateHttpTokensState::Required)
                .http_put_response_hop_limit(2)
                .build(),
        )
        .build();
    match ec2
        .create_launch_template()
        .launch_template_name(&name)
        .launch_template_data(data)
        .tag_specifications(super::tag_spec(ResourceType::LaunchTemplate, want))
        .send()
        .await
    {
        Ok(out) => out
            .launch_template()
            .and_then(|t| t.launch_template_id())
            .map(str::to_string)
            .ok_or_else(|| {
                DriverError::new(format!("CreateLaunchTemplate {name}: no id in the answer"))
            }),
        Err(e) if error_code(&e).is_some_and(|c| c.contains("AlreadyExists")) => {
            let found = ec2
                .describe_launch_templates()
                .launch_template_names(&name)
                .send()
                .await
                .map_err(|e| api_error("DescribeLaunchTemplates", e))?;
            let t = found.launch_templates().first().ok_or_else(|| {
                DriverError::new(format!("launch template {name} exists but cannot be read"))
            })?;
            let (address, owner, _) = super::read_tags(t.tags());
            if owner.as_ref() != Some(&cx.owner) || address.as_deref() != Some(want.address) {
                return Err(DriverError::new(format!(
                    "launch template {name} exists and is not this stack's: rename the nodegroup or delete the template"
                )));
            }
            Ok(t.launch_template_id().unwrap_or_default().to_string())
        }
        Err(e) => Err(api_error("CreateLaunchTemplate", e)),
    }
}

async fn delete_template(cx: &Context, cluster: &str, nodegroup: &str) -> Result<(), DriverError> {
    match crate::clients(cx)
        .await?
        .ec2
        .delete_launch_template()
        .launch_template_name(template_name(cluster, nodegroup))
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e).is_some_and(|c| c.starts_with("InvalidLaunchTemplate")) => Ok(()),
        Err(e) => Err(api_error("DeleteLaunchTemplate", e)),
    }
}
