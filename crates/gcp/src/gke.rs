//! GKE: `gcp.gke_cluster` (regional or zonal, private nodes, workload
//! identity, release channel, VPC-native with the subnetwork's secondary
//! ranges) and `gcp.gke_node_pool` (machine type, autoscaling, auto-repair
//! and auto-upgrade; size, autoscaling, management and labels change in
//! place). The cluster's endpoint and CA are attributes, so the orchestrator
//! deploys onto it in the same apply.
//!
//! GKE creates a cluster only with a node pool: a one-node `bootstrap`
//! pool goes with the create and is removed once the cluster runs, so the
//! stack's pools are its own resources. A cluster runs one operation at a
//! time; a change refused because another is running waits and retries.
//! Refresh is one listing of every location (`-`), which returns the node
//! pools too.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value as Json};

use super::OpState;
use super::{call, call_opt, from_labels, json, labels, message, observed};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
    READY_ATTR, STATUS_ATTR,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};
use ralph_core::model::support;

const SERVICE: &str = "container";
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(45 * 60);
const POOL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const BOOTSTRAP_POOL: &str = "bootstrap";

/// A Compute Engine machine type name: a series, then its shape
/// (`n2-standard-4`, `e2-medium`, `n2-custom-4-8192`).
fn machine_type(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let parts: Vec<&str> = s.split('-').collect();
    let ok = parts.len() >= 2
        && parts[0].starts_with(|c: char| c.is_ascii_lowercase())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    checks::require(ok, || {
        format!(
            "`{s}` is not a Compute Engine machine type; write a series and a shape, such as n2-standard-4 or e2-standard-2"
        )
    })
}

fn channel(v: &Json) -> Result<(), String> {
    ralph_core::model::kinds::checks::choice(
        v,
        &["RAPID", "REGULAR", "STABLE", "EXTENDED", "UNSPECIFIED"],
        "release_channel",
    )
}

fn gke_version(v: &Json) -> Result<(), String> {
    match v.as_str() {
        Some(s) => support::check(support::Provider::Gke, s, support::today()),
        None => Ok(()),
    }
}

static CLUSTER: KindSchema = KindSchema::new("gcp.gke_cluster", SERVICE, "A GKE Standard cluster, VPC-native, with private nodes and workload identity.")
    .fields(&[
        Field::name("the cluster's name")
            .check(super::compute::rfc1035),
        Field::new(
            "location",
            Ty::String,
            "a region (regional cluster) or a zone (default: cloud.gcp.region)",
        )
        .forces_replace(),
        super::network_field(),
        Field::fixed("subnetwork",
            Ty::String,
            "the nodes' subnetwork, usually `${nodes_subnet.id}`"),
        Field::fixed("pods_range",
            Ty::String,
            "the subnetwork's secondary range for pods"),
        Field::fixed("services_range",
            Ty::String,
            "the subnetwork's secondary range for services"),
        Field::new(
            "version",
            Ty::Version,
            "the control plane's minimum version, such as \"1.35\" (upgraded in place, one minor version at a time)",
        )
        .default("\"1.35\"")
        .check(gke_version),
        Field::new(
            "release_channel",
            Ty::String,
            "RAPID, REGULAR, STABLE or EXTENDED (changes in place)",
        )
        .default("\"REGULAR\"")
        .check(channel),
        Field::new(
            "private_nodes",
            Ty::Bool,
            "nodes get internal addresses only (they reach out through Cloud NAT)",
        )
        .default("true")
        .forces_replace(),
        Field::new(
            "master_ipv4_cidr",
            Ty::Cidr,
            "the control plane's /28 (private clusters)",
        )
        .default("\"172.16.0.0/28\"")
        .forces_replace(),
        Field::new(
            "workload_identity",
            Ty::Bool,
            "pods act as Google service accounts (PROJECT.svc.id.goog)",
        )
        .default("true")
        .forces_replace(),
        Field::new(
            "dataplane_v2",
            Ty::Bool,
            "GKE Dataplane V2 (networkConfig.datapathProvider ADVANCED_DATAPATH), which enforces NetworkPolicies; without it they are stored and ignored",
        )
        .default("false")
        .forces_replace(),
        Field::new(
            "authorized_networks",
            Ty::Set(&Ty::Cidr),
            "the only ranges that may reach the control plane's public endpoint (master authorized networks; changes in place); empty: any address",
        )
        .default("[]")
        .check(ralph_core::model::kinds::checks::no_placeholder_ranges),
        Field::new(
            "labels",
            Ty::StringMap,
            "labels besides the ownership labels (change in place)",
        )
        .default("{}"),
    ])
    .attrs(&[
        Attr::string("id", "projects/P/locations/L/clusters/NAME"),
        Attr::string("endpoint", "the API server's URL"),
        Attr::string("certificate_authority", "the cluster's CA certificate (base64 PEM)"),
    ])
    .name_field("name");

static POOL: KindSchema = KindSchema::new(
    "gcp.gke_node_pool",
    SERVICE,
    "A GKE node pool, autoscaled, with auto-repair and auto-upgrade.",
)
.fields(&[
    Field::fixed("cluster", Ty::String, "the cluster, usually `${gke.id}`"),
    Field::name("the pool's name").check(super::compute::rfc1035),
    Field::new("machine_type", Ty::String, "such as n2-standard-4")
        .check(machine_type)
        .required()
        .forces_replace(),
    Field::new("disk_size_gb", Ty::Int, "each node's boot disk")
        .default("100")
        .forces_replace()
        .check(ralph_core::model::kinds::checks::range::<10, 65536>),
    Field::new(
        "node_count",
        Ty::Int,
        "nodes per zone now (changes in place; the autoscaler moves it within min..max)",
    )
    .default("1")
    .check(ralph_core::model::kinds::checks::range::<0, 1000>),
    Field::new("min_nodes", Ty::Int, "autoscaling minimum per zone")
        .default("1")
        .check(ralph_core::model::kinds::checks::range::<0, 1000>),
    Field::new("max_nodes", Ty::Int, "autoscaling maximum per zone")
        .default("3")
        .check(ralph_core::model::kinds::checks::range::<1, 1000>),
    Field::new("auto_repair", Ty::Bool, "recreate unhealthy nodes").default("true"),
    Field::new("auto_upgrade", Ty::Bool, "follow the cluster's version").default("true"),
    Field::new(
        "service_account",
        Ty::String,
        "the nodes' service account (default: the Compute default)",
    )
    .default("\"\"")
    .forces_replace(),
    Field::new(
        "labels",
        Ty::StringMap,
        "Kubernetes labels on the nodes (change in place)",
    )
    .default("{}"),
])
.attrs(&[Attr::string(
    "id",
    "projects/P/locations/L/clusters/C/nodePools/NAME",
)])
.ordered(&[
    ("min_nodes", "max_nodes"),
    ("min_nodes", "node_count"),
    ("node_count", "max_nodes"),
]);

pub fn drivers() -> Vec<Box<dyn Driver>> {
    vec![Box::new(Cluster), Box::new(NodePool)]
}

pub struct Cluster;
pub struct NodePool;

fn observe_cluster(c: &google_cloud_container_v1::model::Cluster) -> Observed {
    use google_cloud_container_v1::model::cluster::Status;
    let v = json(c);
    let (owner, address, user) = from_labels(v.get("resourceLabels"));
    let id = c
        .self_link
        .find("projects/")
        .map(|i| c.self_link[i..].to_string())
        .unwrap_or_else(|| c.name.clone());
    let status = c.status.name().unwrap_or("STATUS_UNSPECIFIED").to_string();
    let network = |n: &str| {
        if n.contains('/') {
            n.to_string()
        } else {
            String::new()
        }
    };
    observed(
        id.clone(),
        owner,
        address,
        vec![
            ("id", json!(id)),
            ("name", json!(c.name)),
            ("location", json!(c.location)),
            ("network", json!(network(&c.network))),
            ("subnetwork", json!(network(&c.subnetwork))),
            (
                "pods_range",
                super::s(&v, "ipAllocationPolicy.clusterSecondaryRangeName"),
            ),
            (
                "services_range",
                super::s(&v, "ipAllocationPolicy.servicesSecondaryRangeName"),
            ),
            ("version", json!(c.current_master_version)),
            (
                "release_channel",
                json!(c
                    .release_channel
                    .as_ref()
                    .and_then(|r| r.channel.name())
                    .unwrap_or("UNSPECIFIED")),
            ),
            (
                "private_nodes",
                json!(super::s(&v, "privateClusterConfig.enablePrivateNodes")
                    .as_bool()
                    .unwrap_or(false)),
            ),
            (
                "master_ipv4_cidr",
                super::s(&v, "privateClusterConfig.masterIpv4CidrBlock"),
            ),
            (
                "workload_identity",
                json!(c
                    .workload_identity_config
                    .as_ref()
                    .is_some_and(|w| !w.workload_pool.is_empty())),
            ),
            ("authorized_networks", observed_authorized_networks(&v)),
            (
                "dataplane_v2",
                json!(
                    c.network_config
                        .as_ref()
                        .and_then(|n| n.datapath_provider.name())
                        == Some("ADVANCED_DATAPATH")
                ),
            ),
            ("labels", Json::Object(user)),
            (
                "endpoint",
                json!(if c.endpoint.is_empty() {
                    String::new()
                } else {
                    format!("https://{}", c.endpoint)
                }),
            ),
            (
                "certificate_authority",
                json!(c
                    .master_auth
                    .as_ref()
                    .map(|m| m.cluster_ca_certificate.clone())
                    .unwrap_or_default()),
            ),
            (STATUS_ATTR, json!(status)),
            // The bootstrap pool still there (a run killed before removing
            // it) reads as not ready: the next apply finishes the create.
            (
                READY_ATTR,
                json!(
                    matches!(c.status, Status::Running)
                        && !c.node_pools.iter().any(|p| p.name == BOOTSTRAP_POOL)
                ),
            ),
        ],
    )
}

/// The target size of every managed instance group of the project, by
/// self link (one aggregated list, whatever the number of pools and zones).
async fn group_sizes(cx: &Context) -> Result<HashMap<String, i64>, DriverError> {
    let g = crate::clients(cx).await?;
    let sizes = crate::every_page(|token| async move {
        let what = "listing the node pools' instance groups";
        let page = call(cx, "compute", what, || {
            g.instance_groups
                .aggregated_list()
                .set_project(&g.project)
                .set_page_token(token.clone())
                .send()
        })
        .await?;
        let managers = page.items.values().flat_map(|s| &s.instance_group_managers);
        let sizes = managers.filter_map(|m| match (&m.self_link, m.target_size) {
            (Some(link), Some(size)) => Some((relative_link(link), i64::from(size))),
            _ => None,
        });
        Ok((sizes.collect(), page.next_page_token))
    })
    .await?;
    Ok(sizes.into_iter().collect())
}

/// `projects/...` from a full Compute URL, so links compare whatever host
/// or version prefix the API put in front.
fn relative_link(link: &str) -> String {
    link.find("projects/")
        .map(|i| link[i..].to_string())
        .unwrap_or_else(|| link.to_string())
}

/// A pool's size per zone now: its first instance group's target size
/// (`setSize` and the autoscaler change those; `initialNodeCount` stays what
/// the pool was created with), or the initial count for a pool whose groups
/// are not made yet.
fn pool_size(p: &google_cloud_container_v1::model::NodePool, sizes: &HashMap<String, i64>) -> i64 {
    p.instance_group_urls
        .iter()
        .find_map(|u| sizes.get(&relative_link(u)).copied())
        .unwrap_or(i64::from(p.initial_node_count))
}

fn observe_pool(
    cluster_id: &str,
    p: &google_cloud_container_v1::model::NodePool,
    sizes: &HashMap<String, i64>,
) -> Observed {
    use google_cloud_container_v1::model::node_pool::Status;
    let v = json(p);
    let (owner, address, _) = from_labels(v.pointer("/config/resourceLabels"));
    let id = format!("{cluster_id}/nodePools/{}", p.name);
    let config = p.config.clone().unwrap_or_default();
    let auto = p.autoscaling.clone().unwrap_or_default();
    let mgmt = p.management.clone().unwrap_or_default();
    observed(
        id.clone(),
        owner,
        address,
        vec![
            ("id", json!(id)),
            ("cluster", json!(cluster_id)),
            ("name", json!(p.name)),
            ("machine_type", json!(config.machine_type)),
            (
                "disk_size_gb",
                json!(if config.disk_size_gb == 0 {
                    100
                } else {
                    config.disk_size_gb
                }),
            ),
            ("node_count", json!(pool_size(p, sizes))),
            ("min_nodes", json!(auto.min_node_count)),
            ("max_nodes", json!(auto.max_node_count)),
            ("auto_repair", json!(mgmt.auto_repair)),
            ("auto_upgrade", json!(mgmt.auto_upgrade)),
            (
                "service_account",
                json!(if config.service_account == "default" {
                    String::new()
                } else {
                    config.service_account.clone()
                }),
            ),
            ("labels", json!(config.labels)),
            (
                STATUS_ATTR,
                json!(p.status.name().unwrap_or("STATUS_UNSPECIFIED")),
            ),
            (READY_ATTR, json!(matches!(p.status, Status::Running))),
        ],
    )
}

async fn list_clusters(
    cx: &Context,
) -> Result<Vec<google_cloud_container_v1::model::Cluster>, DriverError> {
    let g = crate::clients(cx).await?;
    let parent = g.location_path("-");
    Ok(call(cx, SERVICE, "listing GKE clusters", || {
        g.gke.list_clusters().set_parent(&parent).send()
    })
    .await?
    .clusters)
}

async fn read_cluster(
    cx: &Context,
    id: &str,
) -> Result<Option<google_cloud_container_v1::model::Cluster>, DriverError> {
    let g = crate::clients(cx).await?;
    call_opt(cx, SERVICE, &format!("reading {id}"), || {
        g.gke.get_cluster().set_name(id).send()
    })
    .await
}

/// Waits for a GKE operation (one at a time per cluster).
async fn wait_op(
    cx: &Context,
    address: &str,
    op: google_cloud_container_v1::model::Operation,
    timeout: Duration,
) -> Result<(), DriverError> {
    let g = crate::clients(cx).await?;
    let name = op
        .self_link
        .find("projects/")
        .map(|i| op.self_link[i..].to_string())
        .unwrap_or(op.name.clone());
    let what = format!("GKE operation {}", op.name);
    crate::wait_operation(cx, address, &what, timeout, || {
        let name = &name;
        async move {
            let op = call(cx, SERVICE, "reading a GKE operation", || {
                g.gke.get_operation().set_name(name).send()
            })
            .await?;
            Ok(match op.status.name().unwrap_or("PENDING") {
                "DONE" => match op.error.as_ref().filter(|e| e.code != 0) {
                    Some(e) => OpState::Failed(e.message.clone()),
                    None => OpState::Done,
                },
                status => OpState::Running(status.to_string()),
            })
        }
    })
    .await
}

/// A cluster the tool is changing (or one of its node pools): where
/// progress is reported, and how long each of its operations may take.
#[derive(Clone, Copy)]
struct On<'a> {
    cx: &'a Context,
    address: &'a str,
    cluster: &'a str,
    timeout: Duration,
}

impl<'a> On<'a> {
    fn new(cx: &'a Context, address: &'a str, cluster: &'a str, timeout: Duration) -> Self {
        On {
            cx,
            address,
            cluster,
            timeout,
        }
    }

    /// Runs a cluster-changing call; while the cluster is busy with another
    /// operation (FAILED_PRECONDITION), waits and tries again.
    async fn mutate<F, Fut>(self, what: &str, mut f: F) -> Result<(), DriverError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<
            Output = Result<
                google_cloud_container_v1::model::Operation,
                google_cloud_gax::error::Error,
            >,
        >,
    {
        let On {
            cx,
            address,
            cluster,
            timeout,
        } = self;
        let start = std::time::Instant::now();
        loop {
            let busy = std::sync::atomic::AtomicBool::new(false);
            let out = call(cx, SERVICE, what, || {
                let fut = f();
                let busy = &busy;
                async move {
                    let r = fut.await;
                    if let Err(e) = &r {
                        if e.status().is_some_and(|s| {
                            s.code == google_cloud_gax::error::rpc::Code::FailedPrecondition
                                && s.message.contains("operation")
                        }) {
                            busy.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    r
                }
            })
            .await;
            match out {
                Ok(op) => return wait_op(cx, address, op, timeout).await,
                Err(_)
                    if busy.load(std::sync::atomic::Ordering::SeqCst)
                        && start.elapsed() < timeout =>
                {
                    cx.wait_until(
                        address,
                        &format!("{cluster} to finish its running operation"),
                        timeout,
                        || async move {
                            let c = read_cluster(cx, cluster).await?;
                            let status = c
                                .as_ref()
                                .and_then(|c| c.status.name())
                                .unwrap_or("GONE")
                                .to_string();
                            Ok((
                                (status != "RECONCILING" && status != "PROVISIONING").then_some(()),
                                status,
                            ))
                        },
                    )
                    .await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for the cluster to run, removes the node pool it was created
    /// with (GKE needs one) and waits again.
    async fn settle(self) -> Result<Observed, DriverError> {
        wait_running(self).await?;
        remove_bootstrap(self).await?;
        wait_running(self).await
    }
}

/// The ranges admitted to the control plane: where GKE reports them now
/// (`controlPlaneEndpointsConfig.ipEndpointsConfig`), else the older
/// `masterAuthorizedNetworksConfig`; none when the feature is off.
fn observed_authorized_networks(cluster: &Json) -> Json {
    let config = cluster
        .pointer("/controlPlaneEndpointsConfig/ipEndpointsConfig/authorizedNetworksConfig")
        .or_else(|| cluster.get("masterAuthorizedNetworksConfig"));
    let ranges: Vec<Json> = config
        .filter(|c| c.get("enabled").and_then(Json::as_bool) == Some(true))
        .and_then(|c| c.get("cidrBlocks"))
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("cidrBlock").cloned())
        .collect();
    Json::Array(ranges)
}

/// `masterAuthorizedNetworksConfig` for a list of ranges (none: off).
fn authorized_networks(ranges: Option<&Json>) -> Json {
    let blocks: Vec<Json> = ranges
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .map(|r| json!({"displayName": "ralph-deploy", "cidrBlock": r}))
        .collect();
    json!({"enabled": !blocks.is_empty(), "cidrBlocks": blocks})
}

fn cluster_location(g: &super::GcpClients, want: &Desired<'_>) -> String {
    want.str("location")
        .filter(|l| !l.is_empty())
        .unwrap_or(&g.region)
        .to_string()
}

#[async_trait::async_trait]
impl Driver for Cluster {
    fn schema(&self) -> &'static KindSchema {
        &CLUSTER
    }
    fn typical_seconds(&self) -> u64 {
        600
    }

    async fn refresh(&self, cx: &Context, _known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        Ok(list_clusters(cx)
            .await?
            .iter()
            .map(observe_cluster)
            .filter(|o| crate::ours(cx, o))
            .collect())
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        Ok(read_cluster(cx, id).await?.as_ref().map(observe_cluster))
    }

    /// A version the plan creates or upgrades to must be one GKE offers in
    /// the cluster's location today (getServerConfig): the dated table
    /// `validate` reads can be older than Google's calendar.
    async fn preflight(
        &self,
        cx: &Context,
        change: &ralph_core::change::Change,
    ) -> Result<(), DriverError> {
        let after = |name: &str| {
            change
                .attributes
                .iter()
                .find(|a| a.name == name)
                .and_then(|a| a.after.as_ref())
                .and_then(Json::as_str)
                .map(str::to_string)
        };
        let Some(wanted) = after("version").and_then(|v| ralph_core::model::support::minor_of(&v))
        else {
            return Ok(());
        };
        let g = crate::clients(cx).await?;
        let location = after("location")
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| g.region.clone());
        let name = g.location_path(&location);
        let config = call(cx, SERVICE, "asking GKE which versions it offers", || {
            g.gke.get_server_config().set_name(&name).send()
        })
        .await?;
        let mut offered: Vec<String> = config
            .valid_master_versions
            .iter()
            .filter_map(|v| ralph_core::model::support::minor_of(v))
            .collect();
        offered.dedup();
        if offered.contains(&wanted) {
            return Ok(());
        }
        Err(DriverError::new(format!(
            "GKE does not offer Kubernetes {wanted} in {location} (by getServerConfig); it offers {}",
            offered.join(", ")
        )))
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let g = crate::clients(cx).await?;
        let name = want.required_str("name")?;
        let parent = g.location_path(&cluster_location(g, want));
        let id = format!("{parent}/clusters/{name}");
        let p = want.props;
        let mut cluster = json!({
            "name": name,
            "network": p.get("network"),
            "subnetwork": p.get("subnetwork"),
            "initialClusterVersion": p.get("version"),
            "releaseChannel": {"channel": p.get("release_channel")},
            "ipAllocationPolicy": {
                "useIpAliases": true,
                "clusterSecondaryRangeName": p.get("pods_range"),
                "servicesSecondaryRangeName": p.get("services_range"),
            },
            "resourceLabels": labels(&cx.owner, want.address, p.get("labels")),
            "nodePools": [{"name": BOOTSTRAP_POOL, "initialNodeCount": 1, "config": {"machineType": "e2-small"}}],
        });
        if want.bool("private_nodes") == Some(true) {
            cluster["privateClusterConfig"] = json!({"enablePrivateNodes": true, "masterIpv4CidrBlock": p.get("master_ipv4_cidr")});
        }
        cluster["masterAuthorizedNetworksConfig"] =
            authorized_networks(p.get("authorized_networks"));
        if want.bool("dataplane_v2") == Some(true) {
            cluster["networkConfig"] = json!({"datapathProvider": "ADVANCED_DATAPATH"});
        }
        if want.bool("workload_identity") == Some(true) {
            cluster["workloadIdentityConfig"] =
                json!({"workloadPool": format!("{}.svc.id.goog", g.project)});
        }
        let cluster: google_cloud_container_v1::model::Cluster = message("GKE cluster", cluster)?;
        let on = On::new(
            cx,
            want.address,
            &id,
            want.timeouts.create_or(CLUSTER_TIMEOUT),
        );
        // A cluster a killed run asked for shows at once (PROVISIONING).
        if let Some(c) = read_cluster(cx, &id).await? {
            super::take_over(cx, want.address, &id, Some(observe_cluster(&c)))?;
        } else {
            let made = on
                .mutate(&format!("creating GKE cluster {name}"), || {
                    let create = g.gke.create_cluster().set_parent(&parent);
                    create.set_cluster(cluster.clone()).send()
                })
                .await;
            if let Err(e) = made {
                return match read_cluster(cx, &id).await {
                    Ok(Some(c)) => Err(e.with_partial(observe_cluster(&c))),
                    _ => Err(e),
                };
            }
        }
        on.settle().await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let (want, have, changed) = (u.want, u.have, u.changed);
        let g = crate::clients(cx).await?;
        let on = On::new(
            cx,
            want.address,
            &have.id,
            want.timeouts.update_or(CLUSTER_TIMEOUT),
        );
        // GKE takes one change per clusters.update: the channel, then the
        // control plane's version (upgraded in place; the node pools follow
        // on their own with auto_upgrade, or through their own version).
        let updates = [
            (
                "release_channel",
                json!({"desiredReleaseChannel": {"channel": want.props.get("release_channel")}}),
                "updating",
            ),
            (
                "version",
                json!({"desiredMasterVersion": want.props.get("version")}),
                "upgrading",
            ),
            (
                "authorized_networks",
                json!({"desiredMasterAuthorizedNetworksConfig": authorized_networks(want.props.get("authorized_networks"))}),
                "limiting who reaches",
            ),
        ];
        for (field, body, verb) in updates {
            if !changed.iter().any(|c| c == field) {
                continue;
            }
            let update: google_cloud_container_v1::model::ClusterUpdate =
                message("cluster update", body)?;
            on.mutate(&format!("{verb} {}", have.id), || {
                let call = g.gke.update_cluster().set_name(&have.id);
                call.set_update(update.clone()).send()
            })
            .await?;
        }
        if u.changes("labels") {
            let labels: std::collections::HashMap<String, String> = super::string_map(
                &Json::Object(labels(&cx.owner, want.address, want.props.get("labels"))),
            );
            let fingerprint = read_cluster(cx, &have.id)
                .await?
                .map(|c| c.label_fingerprint)
                .unwrap_or_default();
            on.mutate(&format!("labelling {}", have.id), || {
                let call = g.gke.set_labels().set_name(&have.id);
                let call = call.set_resource_labels(labels.clone());
                call.set_label_fingerprint(&fingerprint).send()
            })
            .await?;
        }
        // A cluster killed between its create and removing the bootstrap pool.
        on.settle().await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let g = crate::clients(cx).await?;
        let address = d.address();
        if read_cluster(cx, &d.have.id).await?.is_none() {
            return Ok(());
        }
        let on = On::new(
            cx,
            &address,
            &d.have.id,
            d.timeouts.delete_or(CLUSTER_TIMEOUT),
        );
        on.mutate(&format!("deleting {}", d.have.id), || {
            g.gke.delete_cluster().set_name(&d.have.id).send()
        })
        .await
    }
}

async fn wait_running(on: On<'_>) -> Result<Observed, DriverError> {
    let On {
        cx,
        address,
        cluster: id,
        timeout,
    } = on;
    let c = cx
        .wait_until(
            address,
            &format!("{id} to be RUNNING"),
            timeout,
            || async move {
                let c = read_cluster(cx, id)
                    .await?
                    .ok_or_else(|| DriverError::new(format!("{id} is gone")))?;
                let status = c.status.name().unwrap_or_default().to_string();
                Ok(((status == "RUNNING").then_some(c), status))
            },
        )
        .await?;
    Ok(observe_cluster(&c))
}

async fn remove_bootstrap(on: On<'_>) -> Result<(), DriverError> {
    let g = crate::clients(on.cx).await?;
    let cluster = on.cluster;
    let has = read_cluster(on.cx, cluster)
        .await?
        .is_some_and(|c| c.node_pools.iter().any(|p| p.name == BOOTSTRAP_POOL));
    if !has {
        return Ok(());
    }
    let pool = format!("{cluster}/nodePools/{BOOTSTRAP_POOL}");
    on.mutate("removing the bootstrap node pool", || {
        g.gke.delete_node_pool().set_name(&pool).send()
    })
    .await
}

async fn pool_running(
    cx: &Context,
    address: &str,
    id: &str,
    timeout: Duration,
) -> Result<Observed, DriverError> {
    super::wait_ready(cx, address, id, timeout, || read_pool(cx, id)).await
}

/// The cluster a node pool's id (`CLUSTER/nodePools/NAME`) names.
fn cluster_of(pool: &str) -> &str {
    pool.split("/nodePools/").next().unwrap_or_default()
}

async fn read_pool(cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
    let g = crate::clients(cx).await?;
    let cluster = cluster_of(id);
    let Some(p) = call_opt(cx, SERVICE, &format!("reading {id}"), || {
        g.gke.get_node_pool().set_name(id).send()
    })
    .await?
    else {
        return Ok(None);
    };
    let sizes = if p.instance_group_urls.is_empty() {
        HashMap::new()
    } else {
        group_sizes(cx).await?
    };
    Ok(Some(observe_pool(cluster, &p, &sizes)))
}

#[async_trait::async_trait]
impl Driver for NodePool {
    fn schema(&self) -> &'static KindSchema {
        &POOL
    }
    fn typical_seconds(&self) -> u64 {
        240
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let clusters = list_clusters(cx).await?;
        let sizes = if clusters.iter().any(|c| !c.node_pools.is_empty()) {
            group_sizes(cx).await?
        } else {
            HashMap::new()
        };
        let mut out = Vec::new();
        for c in clusters {
            let cid = observe_cluster(&c).id;
            out.extend(
                c.node_pools
                    .iter()
                    .map(|p| observe_pool(&cid, p, &sizes))
                    .filter(|o| crate::ours(cx, o))
                    .map(|o| {
                        // GKE's autoscaler moves the size within min..max:
                        // not drift, and never resized back.
                        let recorded = known.iter().find(|k| k.id == o.id);
                        ralph_core::driver::autoscaled_size(
                            o,
                            recorded,
                            ["node_count", "min_nodes", "max_nodes", "running_node_count"],
                        )
                    }),
            );
        }
        Ok(out)
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        read_pool(cx, id).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let g = crate::clients(cx).await?;
        let cluster = want.required_str("cluster")?;
        let name = want.required_str("name")?;
        let id = format!("{cluster}/nodePools/{name}");
        let p = want.props;
        let mut config = json!({
            "machineType": p.get("machine_type"),
            "diskSizeGb": p.get("disk_size_gb"),
            "labels": p.get("labels"),
            "resourceLabels": labels(&cx.owner, want.address, None),
            "oauthScopes": ["https://www.googleapis.com/auth/cloud-platform"],
        });
        if let Some(sa) = want.str("service_account").filter(|s| !s.is_empty()) {
            config["serviceAccount"] = json!(sa);
        }
        let pool: google_cloud_container_v1::model::NodePool = message(
            "node pool",
            json!({
                "name": name,
                "initialNodeCount": p.get("node_count"),
                "config": config,
                "autoscaling": {"enabled": true, "minNodeCount": p.get("min_nodes"), "maxNodeCount": p.get("max_nodes")},
                "management": {"autoRepair": p.get("auto_repair"), "autoUpgrade": p.get("auto_upgrade")},
            }),
        )?;
        let timeout = want.timeouts.create_or(POOL_TIMEOUT);
        if let Some(found) = read_pool(cx, &id).await? {
            // Asked for by a run that was killed: ours, once it runs.
            super::take_over(cx, want.address, &id, Some(found))?;
            return pool_running(cx, want.address, &id, timeout).await;
        }
        let on = On::new(cx, want.address, cluster, timeout);
        let made = on
            .mutate(&format!("creating node pool {name}"), || {
                let create = g.gke.create_node_pool().set_parent(cluster);
                create.set_node_pool(pool.clone()).send()
            })
            .await;
        match made {
            Ok(()) => found_again(read_pool(cx, &id).await?, "node pool", &id),
            Err(e) => match read_pool(cx, &id).await {
                Ok(Some(o)) => Err(e.with_partial(o)),
                _ => Err(e),
            },
        }
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let g = crate::clients(cx).await?;
        let timeout = want.timeouts.update_or(POOL_TIMEOUT);
        let on = On::new(cx, want.address, cluster_of(&have.id), timeout);
        let p = want.props;
        if u.changes("min_nodes") || u.changes("max_nodes") {
            let auto: google_cloud_container_v1::model::NodePoolAutoscaling = message(
                "autoscaling",
                json!({"enabled": true, "minNodeCount": p.get("min_nodes"), "maxNodeCount": p.get("max_nodes")}),
            )?;
            on.mutate("setting the node pool's autoscaling", || {
                let call = g.gke.set_node_pool_autoscaling().set_name(&have.id);
                call.set_autoscaling(auto.clone()).send()
            })
            .await?;
        }
        if u.changes("node_count") {
            let n = want.int::<i32>("node_count")?.unwrap_or(1);
            on.mutate("resizing the node pool", || {
                let call = g.gke.set_node_pool_size().set_name(&have.id);
                call.set_node_count(n).send()
            })
            .await?;
        }
        if u.changes("auto_repair") || u.changes("auto_upgrade") {
            let m: google_cloud_container_v1::model::NodeManagement = message(
                "node management",
                json!({"autoRepair": p.get("auto_repair"), "autoUpgrade": p.get("auto_upgrade")}),
            )?;
            on.mutate("setting the node pool's management", || {
                let call = g.gke.set_node_pool_management().set_name(&have.id);
                call.set_management(m.clone()).send()
            })
            .await?;
        }
        if u.changes("labels") {
            let l: google_cloud_container_v1::model::NodeLabels =
                message("node labels", json!({"labels": p.get("labels")}))?;
            on.mutate("labelling the node pool", || {
                let call = g.gke.update_node_pool().set_name(&have.id);
                call.set_labels(l.clone()).send()
            })
            .await?;
        }
        pool_running(cx, want.address, &have.id, timeout).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let g = crate::clients(cx).await?;
        let address = d.address();
        if read_pool(cx, &d.have.id).await?.is_none() {
            return Ok(());
        }
        let timeout = d.timeouts.delete_or(POOL_TIMEOUT);
        let on = On::new(cx, &address, cluster_of(&d.have.id), timeout);
        on.mutate(&format!("deleting {}", d.have.id), || {
            g.gke.delete_node_pool().set_name(&d.have.id).send()
        })
        .await
    }
}
