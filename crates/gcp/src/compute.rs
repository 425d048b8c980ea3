//! Compute Engine networking: `gcp.network` (custom subnet mode),
//! `gcp.subnetwork` (with secondary ranges for GKE's pods and services),
//! `gcp.firewall`, `gcp.router` (with Cloud NAT for private nodes) and
//! `gcp.global_address` (the private services access range Cloud SQL's and
//! Memorystore's private IPs come from).
//!
//! These resources have no labels, so ownership is a marker at the end of
//! the description and refresh lists each kind once with a filter on it
//! (per region for the regional kinds). Every change is a Compute
//! operation, polled through `globalOperations.get` / `regionOperations.get`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Map, Value as Json};

mod calls;

use self::calls::{At, Calls};
use super::OpState;
use super::{call, describe, description_filter, from_description, json, observed, GcpClients};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

const SERVICE: &str = "compute";
const OP_TIMEOUT: Duration = Duration::from_secs(600);

/// A name Compute accepts: RFC 1035, 1-63 characters.
pub fn rfc1035(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = ralph_core::model::kinds::checks::lowercase_name(s, 1..=63);
    checks::require(ok, || {
        format!("`{s}` is not a valid name: 1-63 characters, lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen")
    })
}

fn routing_mode(v: &Json) -> Result<(), String> {
    ralph_core::model::kinds::checks::choice(v, &["REGIONAL", "GLOBAL"], "routing_mode")
}

/// A firewall's `allow` rules as Google accepts them: a protocol by name
/// (tcp, udp, icmp, esp, ah, sctp, ipip, all) or number (0-255), and ports
/// (`N` or `N-M`, upwards, 0-65535) only for tcp, udp and sctp.
fn firewall_rules(v: &Json) -> Result<(), String> {
    for (i, rule) in v.as_array().into_iter().flatten().enumerate() {
        let n = i + 1;
        let Some(protocol) = rule.get("protocol").and_then(Json::as_str) else {
            continue;
        };
        let named = ["tcp", "udp", "icmp", "esp", "ah", "sctp", "ipip", "all"];
        let numbered = protocol.parse::<u16>().is_ok_and(|p| p <= 255);
        if !named.contains(&protocol) && !numbered {
            return Err(format!(
                "rule {n}: protocol `{protocol}` is not one of {} or a protocol number 0-255",
                named.join(", ")
            ));
        }
        let ports: Vec<&str> = rule
            .get("ports")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .collect();
        if ports.is_empty() {
            continue;
        }
        if !matches!(protocol, "tcp" | "udp" | "sctp" | "6" | "17" | "132") {
            return Err(format!(
                "rule {n}: ports are only for tcp, udp and sctp, not `{protocol}`; remove `ports` (the rule then allows the whole protocol)"
            ));
        }
        for p in ports {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            match (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                (Ok(a), Ok(b)) if a <= b && b <= 65535 => {}
                (Ok(a), Ok(b)) if a > b => {
                    return Err(format!("rule {n}: the port range `{p}` runs downwards; write the lower port first"))
                }
                _ => {
                    return Err(format!(
                        "rule {n}: `{p}` is not a port (0-65535) or a range of ports such as `30000-32767`"
                    ))
                }
            }
        }
    }
    Ok(())
}

fn direction(v: &Json) -> Result<(), String> {
    ralph_core::model::kinds::checks::choice(v, &["INGRESS", "EGRESS"], "direction")
}

const ID: Attr = Attr::string(
    "id",
    "the resource's path, such as projects/P/global/networks/NAME (what other resources refer to)",
);
const SELF_LINK: Attr = Attr::string("self_link", "the resource's full URL");

static NETWORK: KindSchema = KindSchema::new(
    "gcp.network",
    SERVICE,
    "A VPC network in custom subnet mode.",
)
.fields(&[
    Field::name("the network's name").check(rfc1035),
    Field::new("description", Ty::String, "what it is for")
        .default("\"\"")
        .forces_replace(),
    Field::new(
        "routing_mode",
        Ty::String,
        "REGIONAL or GLOBAL dynamic routing",
    )
    .default("\"REGIONAL\"")
    .check(routing_mode),
    Field::new("mtu", Ty::Int, "the MTU")
        .default("1460")
        .forces_replace()
        .check(ralph_core::model::kinds::checks::range::<1300, 8896>),
])
.attrs(&[ID, SELF_LINK])
.name_field("name");

static SECONDARY: &[Field] = &[
    Field::new(
        "range_name",
        Ty::String,
        "the range's name (GKE's pods or services)",
    )
    .required()
    .check(rfc1035),
    Field::new("ip_cidr_range", Ty::Cidr, "the range").required(),
];

static SUBNETWORK: KindSchema = KindSchema::new("gcp.subnetwork", SERVICE, "A subnetwork of a VPC network in one region, with secondary ranges for GKE's pods and services.")
    .fields(&[
        Field::name("the subnetwork's name").check(rfc1035),
        super::network_field(),
        super::region_field(),
        Field::fixed("ip_cidr_range", Ty::Cidr, "the primary range"),
        Field::new("secondary_ranges", Ty::List(&Ty::Object(SECONDARY)), "secondary ranges, such as pods and services for GKE").default("[]"),
        Field::new("private_google_access", Ty::Bool, "reach Google APIs without external addresses").default("true"),
        Field::new("description", Ty::String, "what it is for").default("\"\"").forces_replace(),
    ])
    .attrs(&[ID, SELF_LINK, Attr::string("gateway_address", "the subnetwork's gateway")])
    .name_field("name");

static RULE: &[Field] = &[
    Field::new(
        "protocol",
        Ty::String,
        "tcp, udp, icmp, all, or a protocol number",
    )
    .required(),
    Field::new(
        "ports",
        Ty::List(&Ty::String),
        "ports or ranges (\"443\", \"30000-32767\"); empty: all",
    )
    .default("[]"),
];

static FIREWALL: KindSchema = KindSchema::new("gcp.firewall", SERVICE, "A VPC firewall rule.")
    .fields(&[
        Field::name("the rule's name").check(rfc1035),
        super::network_field(),
        Field::new("direction", Ty::String, "INGRESS or EGRESS")
            .default("\"INGRESS\"")
            .forces_replace()
            .check(direction),
        Field::new("priority", Ty::Int, "0 (first) to 65535")
            .default("1000")
            .check(ralph_core::model::kinds::checks::range::<0, 65535>),
        Field::new("allow", Ty::List(&Ty::Object(RULE)), "what the rule allows")
            .required()
            .check(firewall_rules),
        Field::new(
            "source_ranges",
            Ty::Set(&Ty::Cidr),
            "where traffic may come from (INGRESS)",
        )
        .default("[]"),
        Field::new(
            "target_tags",
            Ty::Set(&Ty::String),
            "the instances it applies to (empty: all)",
        )
        .default("[]"),
        Field::new("description", Ty::String, "what it is for").default("\"\""),
    ])
    .attrs(&[ID, SELF_LINK])
    .name_field("name");

static NAT: &[Field] = &[
    Field::new("name", Ty::String, "the NAT's name")
        .required()
        .check(rfc1035),
    Field::new(
        "source_ranges",
        Ty::String,
        "ALL_SUBNETWORKS_ALL_IP_RANGES or ALL_SUBNETWORKS_ALL_PRIMARY_IP_RANGES",
    )
    .default("\"ALL_SUBNETWORKS_ALL_IP_RANGES\""),
];

static ROUTER: KindSchema = KindSchema::new(
    "gcp.router",
    SERVICE,
    "A Cloud Router, with Cloud NAT so private nodes reach the internet.",
)
.fields(&[
    Field::name("the router's name").check(rfc1035),
    super::network_field(),
    super::region_field(),
    Field::new(
        "nat",
        Ty::Object(NAT),
        "a Cloud NAT with automatically allocated addresses",
    ),
    Field::new("description", Ty::String, "what it is for")
        .default("\"\"")
        .forces_replace(),
])
.attrs(&[ID, SELF_LINK])
.name_field("name");

static GLOBAL_ADDRESS: KindSchema = KindSchema::new("gcp.global_address", SERVICE, "An internal address range for private services access (VPC_PEERING), where Cloud SQL's and Memorystore's private addresses come from.")
    .fields(&[
        Field::name("the range's name").check(rfc1035),
        super::network_field(),
        Field::new("prefix_length", Ty::Int, "the range's size (16: a /16)").default("16").forces_replace().check(ralph_core::model::kinds::checks::range::<8, 29>),
        Field::new("description", Ty::String, "what it is for").default("\"\"").forces_replace(),
    ])
    .attrs(&[ID, SELF_LINK, Attr::string("address", "the range's first address")])
    .name_field("name");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Collection {
    Networks,
    Subnetworks,
    Firewalls,
    Routers,
    Addresses,
}

impl Collection {
    fn regional(self) -> bool {
        matches!(self, Collection::Subnetworks | Collection::Routers)
    }
    fn path(self) -> &'static str {
        match self {
            Collection::Networks => "networks",
            Collection::Subnetworks => "subnetworks",
            Collection::Firewalls => "firewalls",
            Collection::Routers => "routers",
            Collection::Addresses => "addresses",
        }
    }
    fn calls(self) -> &'static dyn Calls {
        match self {
            Collection::Networks => &calls::Networks,
            Collection::Subnetworks => &calls::Subnetworks,
            Collection::Firewalls => &calls::Firewalls,
            Collection::Routers => &calls::Routers,
            Collection::Addresses => &calls::Addresses,
        }
    }
    /// The id (relative resource name) of item `name`.
    fn id(self, project: &str, region: &str, name: &str) -> String {
        let path = self.path();
        if self.regional() {
            format!("projects/{project}/regions/{region}/{path}/{name}")
        } else {
            format!("projects/{project}/global/{path}/{name}")
        }
    }
}

/// One Compute networking kind.
pub struct ComputeKind {
    schema: &'static KindSchema,
    collection: Collection,
}

pub fn drivers() -> Vec<Box<dyn Driver>> {
    [
        (&NETWORK, Collection::Networks),
        (&SUBNETWORK, Collection::Subnetworks),
        (&FIREWALL, Collection::Firewalls),
        (&ROUTER, Collection::Routers),
        (&GLOBAL_ADDRESS, Collection::Addresses),
    ]
    .into_iter()
    .map(|(schema, collection)| Box::new(ComputeKind { schema, collection }) as Box<dyn Driver>)
    .collect()
}

/// `projects/P/global/networks/N` from a full URL (or the path itself).
pub fn relative(link: &str) -> String {
    match link.find("/projects/") {
        Some(i) => link[i + 1..].to_string(),
        None => link.to_string(),
    }
}

fn region_of(want: &Desired<'_>, g: &GcpClients) -> String {
    want.str("region")
        .filter(|r| !r.is_empty())
        .unwrap_or(&g.region)
        .to_string()
}

/// The region and name of a recorded id.
fn parse_id(id: &str) -> (Option<String>, String) {
    let parts: Vec<&str> = id.split('/').collect();
    let region = parts
        .iter()
        .position(|p| *p == "regions")
        .and_then(|i| parts.get(i + 1))
        .map(|s| s.to_string());
    (region, parts.last().copied().unwrap_or(id).to_string())
}

impl ComputeKind {
    fn body(&self, cx: &Context, g: &GcpClients, want: &Desired<'_>) -> Json {
        let name = want.str("name").unwrap_or_default();
        let description = describe(
            &cx.owner,
            want.address,
            want.str("description").unwrap_or_default(),
        );
        let p = want.props;
        match self.collection {
            Collection::Networks => json!({
                "name": name, "description": description, "autoCreateSubnetworks": false,
                "routingConfig": {"routingMode": p.get("routing_mode")}, "mtu": p.get("mtu"),
            }),
            Collection::Subnetworks => json!({
                "name": name, "description": description, "network": p.get("network"),
                "region": region_of(want, g), "ipCidrRange": p.get("ip_cidr_range"),
                "privateIpGoogleAccess": p.get("private_google_access"),
                "secondaryIpRanges": secondary(p),
            }),
            Collection::Firewalls => json!({
                "name": name, "description": description, "network": p.get("network"),
                "direction": p.get("direction"), "priority": p.get("priority"),
                "allowed": allowed(p), "sourceRanges": p.get("source_ranges"),
                "targetTags": p.get("target_tags"),
            }),
            // The region is the URL's (the body's is output only).
            Collection::Routers => json!({
                "name": name, "description": description, "network": p.get("network"),
                "nats": nats(p),
            }),
            Collection::Addresses => json!({
                "name": name, "description": description, "network": p.get("network"),
                "addressType": "INTERNAL", "purpose": "VPC_PEERING",
                "prefixLength": p.get("prefix_length"),
            }),
        }
    }

    /// The kind's properties and attributes from an answer.
    fn observe(&self, v: &Json) -> Option<Observed> {
        let link = v.get("selfLink")?.as_str()?;
        let id = relative(link);
        let (owner, address, description) = from_description(
            v.get("description")
                .and_then(Json::as_str)
                .unwrap_or_default(),
        );
        let network = v
            .get("network")
            .and_then(Json::as_str)
            .map(relative)
            .map(Json::String)
            .unwrap_or(Json::Null);
        let region = v
            .get("region")
            .and_then(Json::as_str)
            .map(|r| Json::String(super::short_name(r).to_string()))
            .unwrap_or(Json::Null);
        let mut attrs = vec![
            ("name", v.get("name").cloned().unwrap_or(Json::Null)),
            ("description", Json::String(description)),
            ("id", Json::String(id.clone())),
            ("self_link", Json::String(link.to_string())),
        ];
        match self.collection {
            Collection::Networks => {
                attrs.push(("routing_mode", super::s(v, "routingConfig.routingMode")));
                attrs.push(("mtu", v.get("mtu").cloned().unwrap_or(json!(1460))));
            }
            Collection::Subnetworks => {
                attrs.push(("network", network));
                attrs.push(("region", region));
                attrs.push(("ip_cidr_range", super::s(v, "ipCidrRange")));
                attrs.push((
                    "private_google_access",
                    json!(v
                        .get("privateIpGoogleAccess")
                        .and_then(Json::as_bool)
                        .unwrap_or(false)),
                ));
                let ranges: Vec<Json> = v.get("secondaryIpRanges").and_then(Json::as_array).into_iter().flatten()
                    .map(|r| json!({"range_name": r.get("rangeName"), "ip_cidr_range": r.get("ipCidrRange")}))
                    .collect();
                attrs.push(("secondary_ranges", Json::Array(ranges)));
                attrs.push(("gateway_address", super::s(v, "gatewayAddress")));
            }
            Collection::Firewalls => {
                attrs.push(("network", network));
                attrs.push(("direction", super::s(v, "direction")));
                attrs.push((
                    "priority",
                    v.get("priority").cloned().unwrap_or(json!(1000)),
                ));
                let allow: Vec<Json> = v.get("allowed").and_then(Json::as_array).into_iter().flatten()
                    .map(|r| json!({"protocol": r.get("IPProtocol"), "ports": r.get("ports").cloned().unwrap_or(json!([]))}))
                    .collect();
                attrs.push(("allow", Json::Array(allow)));
                attrs.push((
                    "source_ranges",
                    v.get("sourceRanges").cloned().unwrap_or(json!([])),
                ));
                attrs.push((
                    "target_tags",
                    v.get("targetTags").cloned().unwrap_or(json!([])),
                ));
            }
            Collection::Routers => {
                attrs.push(("network", network));
                attrs.push(("region", region));
                let nat = v.get("nats").and_then(Json::as_array).and_then(|n| n.first())
                    .map(|n| json!({"name": n.get("name"), "source_ranges": n.get("sourceSubnetworkIpRangesToNat")}))
                    .unwrap_or(Json::Null);
                attrs.push(("nat", nat));
            }
            Collection::Addresses => {
                attrs.push(("network", network));
                attrs.push((
                    "prefix_length",
                    v.get("prefixLength").cloned().unwrap_or(Json::Null),
                ));
                attrs.push(("address", super::s(v, "address")));
            }
        }
        Some(observed(id, owner, address, attrs))
    }

    fn at<'a>(cx: &'a Context, g: &'a GcpClients, region: &'a str, what: &'a str) -> At<'a> {
        At {
            cx,
            g,
            region,
            what,
        }
    }

    async fn list(
        &self,
        cx: &Context,
        g: &GcpClients,
        region: &str,
    ) -> Result<Vec<Observed>, DriverError> {
        let filter = description_filter(&cx.owner);
        let what = format!("listing {}", self.collection.path());
        let at = Self::at(cx, g, region, &what);
        let calls = self.collection.calls();
        crate::every_page(|token| {
            let (at, filter) = (&at, &filter);
            async move {
                let page = calls.list(at, filter, &token).await?;
                Ok(items_of(&page, |v| self.observe(v)))
            }
        })
        .await
    }

    async fn get(
        &self,
        cx: &Context,
        g: &GcpClients,
        id: &str,
    ) -> Result<Option<Observed>, DriverError> {
        let (region, name) = parse_id(id);
        let region = region.unwrap_or_else(|| g.region.clone());
        let what = format!("reading {id}");
        let at = Self::at(cx, g, &region, &what);
        let v = self.collection.calls().get(&at, &name).await?;
        Ok(v.as_ref().and_then(|v| self.observe(v)))
    }

    async fn read_back(
        &self,
        cx: &Context,
        g: &GcpClients,
        id: &str,
    ) -> Result<Observed, DriverError> {
        found_again(self.get(cx, g, id).await?, "Compute resource", id)
    }

    /// What a patch sends: the fields that can change in place, with the
    /// fingerprint of the item as read for the kinds whose patch needs it.
    async fn patch_body(
        &self,
        at: &At<'_>,
        name: &str,
        mut body: Json,
    ) -> Result<Json, DriverError> {
        Ok(match self.collection {
            Collection::Networks => json!({"routingConfig": body["routingConfig"]}),
            Collection::Subnetworks => {
                let current = self.collection.calls().get(at, name).await?;
                json!({
                    "fingerprint": current.as_ref().and_then(|c| c.get("fingerprint")),
                    "secondaryIpRanges": body["secondaryIpRanges"],
                    "privateIpGoogleAccess": body["privateIpGoogleAccess"],
                })
            }
            Collection::Firewalls => {
                if let Some(m) = body.as_object_mut() {
                    m.remove("network");
                    m.remove("direction");
                }
                body
            }
            Collection::Routers => json!({"nats": body["nats"]}),
            Collection::Addresses => body,
        })
    }
}

/// A Compute list page's items, observed, and the next page's token.
pub fn items_of(
    page: &Json,
    observe: impl Fn(&Json) -> Option<Observed>,
) -> (Vec<Observed>, Option<String>) {
    let items = page
        .get("items")
        .and_then(Json::as_array)
        .into_iter()
        .flatten();
    let next = page.get("nextPageToken").and_then(Json::as_str);
    (
        items.filter_map(observe).collect(),
        next.map(str::to_string),
    )
}

/// Waits for a Compute operation (global or regional) to finish; its
/// error, if any, fails. `what` names it in progress lines and errors.
pub async fn wait_op(
    cx: &Context,
    g: &GcpClients,
    address: &str,
    op: &Json,
    timeout: Duration,
    what: &str,
) -> Result<(), DriverError> {
    let name = op
        .get("name")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string();
    let region = op
        .get("region")
        .and_then(Json::as_str)
        .map(|r| super::short_name(r).to_string());
    let (name, region) = (&name, &region);
    let what = format!("{what} operation {name}");
    crate::wait_operation(cx, address, &what, timeout, || async move {
        {
            let op: Json = match region {
                Some(r) => json(
                    &call(cx, SERVICE, "reading a region operation", || {
                        g.region_ops
                            .get()
                            .set_project(&g.project)
                            .set_region(r)
                            .set_operation(name)
                            .send()
                    })
                    .await?,
                ),
                None => json(
                    &call(cx, SERVICE, "reading a global operation", || {
                        g.global_ops
                            .get()
                            .set_project(&g.project)
                            .set_operation(name)
                            .send()
                    })
                    .await?,
                ),
            };
            let status = op.get("status").and_then(Json::as_str).unwrap_or("PENDING");
            if status != "DONE" {
                return Ok(OpState::Running(status.to_string()));
            }
            let errors = op.pointer("/error/errors").and_then(Json::as_array);
            Ok(match errors {
                Some(errors) => OpState::Failed(
                    errors
                        .iter()
                        .map(|e| {
                            format!(
                                "{}: {}",
                                super::s(e, "code").as_str().unwrap_or("ERROR"),
                                super::s(e, "message").as_str().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                None => OpState::Done,
            })
        }
    })
    .await
}

fn secondary(p: &Map<String, Json>) -> Json {
    Json::Array(
        p.get("secondary_ranges").and_then(Json::as_array).into_iter().flatten()
            .map(|r| json!({"rangeName": r.get("range_name"), "ipCidrRange": r.get("ip_cidr_range")}))
            .collect(),
    )
}

fn allowed(p: &Map<String, Json>) -> Json {
    Json::Array(
        p.get("allow")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .map(|r| {
                let mut m = Map::new();
                m.insert(
                    "IPProtocol".into(),
                    r.get("protocol").cloned().unwrap_or(Json::Null),
                );
                if let Some(ports) = r
                    .get("ports")
                    .and_then(Json::as_array)
                    .filter(|p| !p.is_empty())
                {
                    m.insert("ports".into(), Json::Array(ports.clone()));
                }
                Json::Object(m)
            })
            .collect(),
    )
}

fn nats(p: &Map<String, Json>) -> Json {
    match p.get("nat").and_then(Json::as_object) {
        None => json!([]),
        Some(n) => json!([{
            "name": n.get("name"),
            "natIpAllocateOption": "AUTO_ONLY",
            "sourceSubnetworkIpRangesToNat": n.get("source_ranges").cloned().unwrap_or(json!("ALL_SUBNETWORKS_ALL_IP_RANGES")),
        }]),
    }
}

#[async_trait::async_trait]
impl Driver for ComputeKind {
    fn schema(&self) -> &'static KindSchema {
        self.schema
    }

    /// Fills the defaults of nested fields (a rule's ports, the NAT's
    /// source ranges), as the API reports them back.
    fn normalize(
        &self,
        _base: &std::path::Path,
        props: &mut Map<String, Json>,
    ) -> Result<(), String> {
        if let Some(Json::Array(rules)) = props.get_mut("allow") {
            for r in rules.iter_mut().filter_map(Json::as_object_mut) {
                r.entry("ports").or_insert_with(|| json!([]));
            }
        }
        if let Some(Json::Object(nat)) = props.get_mut("nat") {
            nat.entry("source_ranges")
                .or_insert_with(|| json!("ALL_SUBNETWORKS_ALL_IP_RANGES"));
        }
        Ok(())
    }

    fn typical_seconds(&self) -> u64 {
        match self.collection {
            Collection::Networks | Collection::Routers => 25,
            _ => 15,
        }
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let g = crate::clients(cx).await?;
        if !self.collection.regional() {
            return self.list(cx, g, "").await;
        }
        let mut regions: BTreeSet<String> =
            known.iter().filter_map(|k| parse_id(&k.id).0).collect();
        regions.insert(g.region.clone());
        let mut out = Vec::new();
        for r in regions {
            out.extend(self.list(cx, g, &r).await?);
        }
        Ok(out)
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        let g = crate::clients(cx).await?;
        let id = if id.contains('/') {
            id.to_string()
        } else {
            self.collection.id(&g.project, &g.region, id)
        };
        self.get(cx, g, &id).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let g = crate::clients(cx).await?;
        let body = self.body(cx, g, want);
        let region = region_of(want, g);
        let what = format!("creating {}", want.address);
        let at = Self::at(cx, g, &region, &what);
        let op = self.collection.calls().insert(&at, body).await?;
        let name = want.str("name").unwrap_or_default();
        let id = self.collection.id(&g.project, &region, name);
        let timeout = want.timeouts.create_or(OP_TIMEOUT);
        match op {
            Some(op) => {
                wait_op(cx, g, want.address, &op, timeout, self.collection.path()).await?;
                self.read_back(cx, g, &id).await
            }
            None => {
                // It exists, or an insert is still making it (a killed run's):
                // once it can be read, it is taken over if it is ours.
                let found = cx
                    .wait_until(
                        want.address,
                        &format!("the existing {id} to be readable"),
                        timeout,
                        || async { Ok((self.get(cx, g, &id).await?, "PENDING".to_string())) },
                    )
                    .await?;
                super::take_over(cx, want.address, &id, Some(found))
            }
        }
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let g = crate::clients(cx).await?;
        let (region, name) = parse_id(&have.id);
        let region = region.unwrap_or_else(|| g.region.clone());
        let what = format!("updating {}", want.address);
        let at = Self::at(cx, g, &region, &what);
        let body = self.patch_body(&at, &name, self.body(cx, g, want)).await?;
        let Some(op) = self.collection.calls().patch(&at, &name, body).await? else {
            return Err(DriverError::new(format!(
                "a {} has nothing to change in place",
                self.schema.kind
            )));
        };
        let timeout = want.timeouts.update_or(OP_TIMEOUT);
        wait_op(cx, g, want.address, &op, timeout, self.collection.path()).await?;
        self.read_back(cx, g, &have.id).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let g = crate::clients(cx).await?;
        let (region, name) = parse_id(&d.have.id);
        let region = region.unwrap_or_else(|| g.region.clone());
        let what = format!("deleting {}", d.have.id);
        let at = Self::at(cx, g, &region, &what);
        let Some(op) = self.collection.calls().delete(&at, &name).await? else {
            return Ok(());
        };
        let address = d.address();
        let timeout = d.timeouts.delete_or(OP_TIMEOUT);
        wait_op(cx, g, &address, &op, timeout, self.collection.path()).await
    }
}
