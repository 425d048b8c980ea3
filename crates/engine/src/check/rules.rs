//! The built-in rules (see `super::RULES` for what each holds true).
//!
//! Values are read symbolically: a reference stays as the text
//! `${address.attribute}`, so a rule can tell which resource a property names
//! before anything exists. A value that cannot be known (a literal id of
//! something made elsewhere) is never a finding: rules report what the stack
//! shows, not what it might hide.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use ipnet::Ipv4Net;
use serde_json::Value as Json;

use super::{Findings, Severity};
use ralph_core::model::support::{self, Provider, Store, StoreSupport};
use ralph_core::model::Action;
use ralph_stack::{Expr, Resource, Span, Stack};

/// The kinds `ralph-deploy backup` writes to.
const BUCKETS: &[&str] = &["aws.s3_bucket", "gcp.storage_bucket"];

/// The kinds that hold data: replacing one loses it.
const STORES: &[&str] = &[
    "aws.rds_instance",
    "aws.elasticache_replication_group",
    "aws.s3_bucket",
    "gcp.storage_bucket",
    "gcp.sql_instance",
    "gcp.redis_instance",
];

pub(super) fn all(stack: &Stack, date: NaiveDate, f: &mut Findings) {
    aws_stores_reachable(stack, f);
    gcp_stores_reachable(stack, f);
    open_to_internet(stack, f);
    api_endpoints(stack, f);
    kubernetes_versions(stack, date, f);
    store_versions(stack, date, f);
    stores(stack, f);
    orchestrators(stack, f);
    secret_rotation(stack, f);
    recovery(stack, f);
}

/// A property as written, references kept as `${address.attribute}` text;
/// the kind's default when it is not set.
pub(super) fn sym(r: &Resource, field: &str) -> Option<Json> {
    match r.properties.get(field) {
        Some(p) => p
            .value
            .evaluate(&|reference| Some(Json::String(reference.to_string()))),
        None => r.kind.field(field).and_then(|f| f.default_value()),
    }
}

fn text(r: &Resource, field: &str) -> Option<String> {
    sym(r, field).and_then(|v| v.as_str().map(str::to_string))
}

/// `text`, with a reference to another resource's property (a replica's
/// `private_network: ${db.private_network}`) followed to that property's
/// own text, so that two spellings of one network compare equal.
fn text_through(stack: &Stack, r: &Resource, field: &str) -> Option<String> {
    let mut t = text(r, field)?;
    for _ in 0..8 {
        let Some((address, property)) = reference(&t) else {
            break;
        };
        let Some(next) = stack.resources.get(address).and_then(|o| text(o, property)) else {
            break;
        };
        t = next;
    }
    Some(t)
}

fn flag(r: &Resource, field: &str) -> Option<bool> {
    sym(r, field).and_then(|v| v.as_bool())
}

fn int(r: &Resource, field: &str) -> Option<i64> {
    sym(r, field).and_then(|v| v.as_i64())
}

fn strings(r: &Resource, field: &str) -> Option<Vec<String>> {
    match sym(r, field)? {
        Json::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
        ),
        Json::String(s) => Some(vec![s]),
        _ => None,
    }
}

/// Where `field` is written (the resource itself when it is not).
fn at(r: &Resource, field: &str) -> Span {
    r.properties.get(field).map_or(r.span, |p| p.value.span)
}

/// Where item `i` of the list `field` is written.
fn item_at(r: &Resource, field: &str, i: usize) -> Span {
    match r.properties.get(field).map(|p| &p.value.expr) {
        Some(Expr::List(items)) => items.get(i).map_or(at(r, field), |item| item.span),
        _ => at(r, field),
    }
}

/// `${address.attribute}` -> (address, attribute).
fn reference(s: &str) -> Option<(&str, &str)> {
    s.strip_prefix("${")?.strip_suffix('}')?.rsplit_once('.')
}

/// The resource a `${address.attribute}` text names, if it is of `kind`.
fn named<'s>(stack: &'s Stack, s: &str, kind: &str) -> Option<&'s Resource> {
    let (address, _) = reference(s)?;
    stack.resources.get(address).filter(|r| r.kind.kind == kind)
}

fn of_kind<'s>(stack: &'s Stack, kind: &'s str) -> impl Iterator<Item = &'s Resource> + 's {
    stack
        .resources
        .values()
        .filter(move |r| r.kind.kind == kind)
}

/// A reference's address for messages (`nodes_sg`), or the text itself.
fn shown(s: &str) -> String {
    match reference(s) {
        Some((address, "id")) => format!("`{address}`"),
        Some(_) | None => format!("`{s}`"),
    }
}

/// A database that is not a read replica (RDS's `replicate_source_db`,
/// Cloud SQL's `master_instance`).
fn is_primary(r: &Resource) -> bool {
    ["replicate_source_db", "master_instance"]
        .iter()
        .all(|field| text(r, field).is_none_or(|s| s.is_empty()))
}

/// Whether a database of `kind` in the stack replicates `primary`, named
/// through `field` by a reference to it.
fn has_replica(stack: &Stack, kind: &str, field: &str, primary: &str) -> bool {
    of_kind(stack, kind).any(|r| {
        text(r, field)
            .as_deref()
            .and_then(reference)
            .is_some_and(|(source, _)| source == primary)
    })
}

// ------------------------------------------------------------ reachability

/// What the nodes of the stack's EKS node groups carry and where they are.
struct AwsNodes {
    groups: BTreeSet<String>,
    subnets: Vec<Ipv4Net>,
    /// Every subnet's range is known.
    subnets_known: bool,
    names: Vec<String>,
}

fn aws_nodes(stack: &Stack) -> Option<AwsNodes> {
    let mut nodes = AwsNodes {
        groups: BTreeSet::new(),
        subnets: Vec::new(),
        subnets_known: true,
        names: Vec::new(),
    };
    for ng in of_kind(stack, "aws.eks_nodegroup") {
        nodes.names.push(format!("`{}`", ng.address));
        let own = strings(ng, "security_group_ids").unwrap_or_default();
        if own.is_empty() {
            // Without groups of their own (a launch template's), EKS puts
            // managed nodes in the cluster security group it makes.
            match text(ng, "cluster_name").as_deref().and_then(reference) {
                Some((cluster, _)) => {
                    nodes
                        .groups
                        .insert(format!("${{{cluster}.cluster_security_group_id}}"));
                }
                None => nodes.subnets_known = false,
            }
        }
        nodes.groups.extend(own);
        for s in strings(ng, "subnet_ids").unwrap_or_default() {
            match named(stack, &s, "aws.subnet")
                .and_then(|subnet| text(subnet, "cidr_block"))
                .and_then(|c| c.parse::<Ipv4Net>().ok())
            {
                Some(net) => nodes.subnets.push(net),
                None => nodes.subnets_known = false,
            }
        }
    }
    (!nodes.names.is_empty()).then_some(nodes)
}

/// Whether a rule's protocol and ports take TCP `port`.
fn takes_port(rule: &Json, port: i64) -> bool {
    let protocol = rule["protocol"].as_str().unwrap_or("");
    match protocol {
        "all" | "-1" => true,
        "tcp" | "6" => {
            let from = rule["from_port"].as_i64().unwrap_or(0);
            let to = rule["to_port"].as_i64().unwrap_or(from);
            (from..=to).contains(&port)
        }
        _ => false,
    }
}

enum Admits {
    Yes,
    No,
    /// Something the stack does not show (a literal id, a computed range).
    Unknown,
}

fn aws_admits(stack: &Stack, groups: &[String], port: i64, nodes: &AwsNodes) -> Admits {
    let mut unknown = false;
    for g in groups {
        if nodes.groups.contains(g) && g.ends_with(".cluster_security_group_id}") {
            // EKS's cluster security group admits all traffic from itself.
            return Admits::Yes;
        }
        let Some(sg) = named(stack, g, "aws.security_group") else {
            unknown = true;
            continue;
        };
        let Some(Json::Array(rules)) = sym(sg, "ingress") else {
            unknown |= sg.properties.contains_key("ingress");
            continue;
        };
        for rule in rules.iter().filter(|r| takes_port(r, port)) {
            if let Some(source) = rule["source_security_group_id"].as_str() {
                if nodes.groups.contains(source) {
                    return Admits::Yes;
                }
                if reference(source).is_none() {
                    unknown = true;
                }
            }
            if let Some(cidr) = rule["cidr_block"].as_str() {
                match cidr.parse::<Ipv4Net>() {
                    Ok(net) if nodes.subnets_known && !nodes.subnets.is_empty() => {
                        if nodes.subnets.iter().any(|s| net.contains(s)) {
                            return Admits::Yes;
                        }
                    }
                    _ => unknown = true,
                }
            }
        }
    }
    if unknown {
        Admits::Unknown
    } else {
        Admits::No
    }
}

fn aws_stores_reachable(stack: &Stack, f: &mut Findings) {
    let Some(nodes) = aws_nodes(stack) else {
        return;
    };
    let stores = [
        ("aws.rds_instance", "vpc_security_group_ids", 5432),
        (
            "aws.elasticache_replication_group",
            "security_group_ids",
            6379,
        ),
    ];
    for (kind, field, default_port) in stores {
        for store in of_kind(stack, kind) {
            let port = int(store, "port").unwrap_or(default_port);
            let Some(groups) = strings(store, field) else {
                continue;
            };
            let carried = nodes
                .groups
                .iter()
                .map(|g| match reference(g) {
                    Some((c, "cluster_security_group_id")) => {
                        format!("the cluster security group of `{c}`")
                    }
                    _ => shown(g),
                })
                .collect::<Vec<_>>()
                .join(", ");
            if groups.is_empty() {
                f.add(
                    "network.store-unreachable",
                    &store.address,
                    store.span,
                    format!(
                        "`{}` names no security group, so it is in the VPC's default group, which admits only its own members: the pods on {} cannot connect",
                        store.address,
                        nodes.names.join(", ")
                    ),
                    format!("set `{field}` to a group whose ingress admits port {port} from a group the nodes carry ({carried})"),
                );
                continue;
            }
            if let Admits::No = aws_admits(stack, &groups, port, &nodes) {
                f.add(
                    "network.store-unreachable",
                    &store.address,
                    at(store, field),
                    format!(
                        "`{}` listens on port {port} behind {}, which admit(s) neither a group the nodes of {} carry ({carried}) nor a range holding their subnets: the pods cannot connect",
                        store.address,
                        groups.iter().map(|g| shown(g)).collect::<Vec<_>>().join(", "),
                        nodes.names.join(", "),
                    ),
                    "admit the nodes' group on that port (`source_security_group_id: ${eks.cluster_security_group_id}`, the group EKS puts managed nodes in), or give the node group `security_group_ids` that include a group the store admits",
                );
            }
        }
    }
}

fn gcp_stores_reachable(stack: &Stack, f: &mut Findings) {
    let connected: BTreeSet<String> = of_kind(stack, "gcp.service_networking_connection")
        .filter_map(|c| text(c, "network"))
        .collect();
    let clusters: Vec<(String, String)> = of_kind(stack, "gcp.gke_cluster")
        .filter_map(|c| Some((c.address.clone(), text(c, "network")?)))
        .collect();
    let stores = of_kind(stack, "gcp.sql_instance")
        .filter_map(|r| {
            Some((
                r,
                "private_network",
                text_through(stack, r, "private_network")?,
            ))
        })
        .chain(
            of_kind(stack, "gcp.redis_instance")
                .filter(|r| text(r, "connect_mode").as_deref() == Some("PRIVATE_SERVICE_ACCESS"))
                .filter_map(|r| Some((r, "authorized_network", text(r, "authorized_network")?))),
        );
    for (store, field, network) in stores {
        if network.is_empty() {
            continue;
        }
        if !connected.contains(&network) {
            f.add(
                "network.store-unreachable",
                &store.address,
                at(store, field),
                format!(
                    "`{}` takes a private address on {} through private services access, and the stack makes no private services connection on that network: Google refuses to create it",
                    store.address,
                    shown(&network)
                ),
                "add a gcp.service_networking_connection on the network, with a reserved range (gcp.global_address, purpose VPC_PEERING)",
            );
        }
        if !clusters.is_empty() && !clusters.iter().any(|(_, n)| n == &network) {
            f.add(
                "network.store-unreachable",
                &store.address,
                at(store, field),
                format!(
                    "`{}` is on {}, and the cluster(s) {} on other networks: the pods cannot reach its private address",
                    store.address,
                    shown(&network),
                    clusters
                        .iter()
                        .map(|(a, n)| format!("`{a}` ({})", shown(n)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "put the store on the cluster's network",
            );
        }
    }
}

const ANYWHERE: &str = "0.0.0.0/0";

/// A TCP rule for the edge's ports only.
fn edge_only(protocol: &str, ports: &[(i64, i64)]) -> bool {
    protocol == "tcp"
        && !ports.is_empty()
        && ports
            .iter()
            .all(|&(from, to)| (from == 80 || from == 443) && from == to)
}

fn open_to_internet(stack: &Stack, f: &mut Findings) {
    for sg in of_kind(stack, "aws.security_group") {
        let Some(Json::Array(rules)) = sym(sg, "ingress") else {
            continue;
        };
        for (i, rule) in rules.iter().enumerate() {
            if rule["cidr_block"].as_str() != Some(ANYWHERE) {
                continue;
            }
            let protocol = rule["protocol"].as_str().unwrap_or("");
            let from = rule["from_port"].as_i64().unwrap_or(0);
            let to = rule["to_port"].as_i64().unwrap_or(from);
            if !edge_only(protocol, &[(from, to)]) {
                let what = if protocol == "all" || protocol == "-1" {
                    "all traffic".to_string()
                } else if from == to {
                    format!("{protocol} port {from}")
                } else {
                    format!("{protocol} ports {from}-{to}")
                };
                f.add(
                    "network.open-to-internet",
                    &sg.address,
                    item_at(sg, "ingress", i),
                    format!("`{}` admits {what} from the whole internet ({ANYWHERE})", sg.address),
                    "admit the ranges or groups that need it; only the edge (TCP 80 and 443) faces the internet",
                );
            }
        }
    }
    for fw in of_kind(stack, "gcp.firewall") {
        if text(fw, "direction").is_some_and(|d| d == "EGRESS") {
            continue;
        }
        if !strings(fw, "source_ranges").is_some_and(|r| r.iter().any(|c| c == ANYWHERE)) {
            continue;
        }
        let Some(Json::Array(allow)) = sym(fw, "allow") else {
            continue;
        };
        let edge = allow.iter().all(|a| {
            let ports: Vec<(i64, i64)> = a["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| p.as_str())
                        .map(|p| match p.split_once('-') {
                            Some((a, b)) => (a.parse().unwrap_or(-1), b.parse().unwrap_or(-1)),
                            None => (p.parse().unwrap_or(-1), p.parse().unwrap_or(-1)),
                        })
                        .collect()
                })
                .unwrap_or_default();
            edge_only(a["protocol"].as_str().unwrap_or(""), &ports)
        });
        if !edge {
            f.add(
                "network.open-to-internet",
                &fw.address,
                at(fw, "source_ranges"),
                format!(
                    "`{}` admits more than the edge's TCP 80 and 443 from the whole internet ({ANYWHERE})",
                    fw.address
                ),
                "narrow `source_ranges` to the ranges that need it (Google's health checks: 35.191.0.0/16, 130.211.0.0/22)",
            );
        }
    }
    for db in of_kind(stack, "aws.rds_instance") {
        if flag(db, "publicly_accessible") == Some(true) {
            f.add(
                "network.open-to-internet",
                &db.address,
                at(db, "publicly_accessible"),
                format!("`{}` is publicly accessible: it gets an address on the internet", db.address),
                "leave `publicly_accessible` off; the tool reaches private databases through the cluster",
            );
        }
    }
}

fn api_endpoints(stack: &Stack, f: &mut Findings) {
    for c in of_kind(stack, "aws.eks_cluster") {
        if flag(c, "endpoint_public_access") == Some(false) {
            continue;
        }
        let cidrs = strings(c, "public_access_cidrs").unwrap_or_default();
        if cidrs.is_empty() || cidrs.iter().any(|c| c == ANYWHERE) {
            f.add(
                "network.api-endpoint-open",
                &c.address,
                at(c, "public_access_cidrs"),
                format!("`{}`'s public API endpoint admits the whole internet", c.address),
                "set `public_access_cidrs` to your office or VPN and your CI runners' ranges, or turn `endpoint_public_access` off",
            );
        }
    }
    for c in of_kind(stack, "gcp.gke_cluster") {
        let cidrs = strings(c, "authorized_networks").unwrap_or_default();
        if cidrs.is_empty() || cidrs.iter().any(|c| c == ANYWHERE) {
            f.add(
                "network.api-endpoint-open",
                &c.address,
                at(c, "authorized_networks"),
                format!("`{}`'s control plane admits the whole internet", c.address),
                "set `authorized_networks` to your office or VPN and your CI runners' ranges",
            );
        }
    }
}

// ---------------------------------------------------------------- versions

fn kubernetes_versions(stack: &Stack, date: NaiveDate, f: &mut Findings) {
    let clusters = of_kind(stack, "aws.eks_cluster")
        .map(|c| (c, Provider::Eks))
        .chain(of_kind(stack, "gcp.gke_cluster").map(|c| (c, Provider::Gke)));
    for (c, provider) in clusters {
        let Some(version) = text(c, "version") else {
            continue;
        };
        let minor = version.split('.').take(2).collect::<Vec<_>>().join(".");
        let Some(window) = support::window(provider, &minor) else {
            continue;
        };
        let days = (window.end_of_support - date).num_days();
        let (severity, message) = if days < 0 {
            (
                Severity::Error,
                format!(
                    "Kubernetes {minor} left {}'s support on {} (the table of {})",
                    provider.label(),
                    window.end_of_support,
                    support::as_of()
                ),
            )
        } else if days <= support::WARNING_DAYS {
            (
                Severity::Warning,
                format!(
                    "Kubernetes {minor} leaves {}'s support on {}, in {days} day(s)",
                    provider.label(),
                    window.end_of_support
                ),
            )
        } else {
            continue;
        };
        let newest = support::offered(provider, date);
        f.add_as(
            "versions.kubernetes-support",
            severity,
            &c.address,
            at(c, "version"),
            message,
            format!(
                "upgrade one minor version at a time (control plane, then nodes); offered on {date}: {}",
                newest.join(", ")
            ),
        );
    }
}

fn store_versions(stack: &Stack, date: NaiveDate, f: &mut Findings) {
    let postgres_on_rds = of_kind(stack, "aws.rds_instance")
        .filter(|r| text(r, "engine").is_none_or(|e| e == "postgres"))
        .map(|r| (r, Store::RdsPostgres, "engine_version"));
    let stores = postgres_on_rds
        .chain(
            of_kind(stack, "gcp.sql_instance")
                .map(|r| (r, Store::CloudSqlPostgres, "database_version")),
        )
        .chain(
            of_kind(stack, "aws.elasticache_replication_group")
                .map(|r| (r, Store::ElastiCacheRedis, "engine_version")),
        );
    for (r, store, field) in stores {
        let Some(major) = text(r, field).and_then(|v| store.major_of(&v)) else {
            continue;
        };
        let (engine, label) = (store.engine(), store.label());
        let (severity, message) = match support::store_support(store, &major, date) {
            StoreSupport::Supported => continue,
            StoreSupport::Ended(Some(w)) => (
                Severity::Error,
                format!("{engine} {major} left {label}'s support on {} (the table of {})", w.end_of_support, support::stores_as_of()),
            ),
            StoreSupport::Ended(None) => (
                Severity::Error,
                format!("{engine} {major} is older than every version {label} supports (the table of {})", support::stores_as_of()),
            ),
            StoreSupport::Extended(w) => (
                Severity::Warning,
                format!(
                    "{engine} {major} left {label}'s standard support on {}: extended support is charged until {}, when the provider upgrades it",
                    w.end_of_standard, w.end_of_support
                ),
            ),
            StoreSupport::StandardEnds(w) => (
                Severity::Warning,
                format!(
                    "{engine} {major} leaves {label}'s standard support on {}, in {} day(s); extended support is charged after that",
                    w.end_of_standard,
                    (w.end_of_standard - date).num_days()
                ),
            ),
        };
        f.add_as(
            "versions.store-support",
            severity,
            &r.address,
            at(r, field),
            message,
            format!(
                "upgrade the major version (test it on a restored copy first); in standard support on {date}: {}",
                support::store_offered(store, date).join(", ")
            ),
        );
    }
}

// ------------------------------------------------------------- data stores

fn stores(stack: &Stack, f: &mut Findings) {
    rds_instances(stack, f);
    sql_instances(stack, f);
    elasticache_groups(stack, f);
    memorystore_instances(stack, f);
    deletion_protection(stack, f);
}

/// Amazon RDS primaries: Multi-AZ, a read replica, backups, encryption.
fn rds_instances(stack: &Stack, f: &mut Findings) {
    for db in of_kind(stack, "aws.rds_instance").filter(|r| is_primary(r)) {
        let a = &db.address;
        if flag(db, "multi_az") != Some(true) {
            f.add(
                "stores.high-availability",
                a,
                at(db, "multi_az"),
                format!("`{a}` runs in one availability zone"),
                "set `multi_az: true` (a synchronous standby in another zone)",
            );
        }
        if !has_replica(stack, "aws.rds_instance", "replicate_source_db", a) {
            f.add(
                "stores.replica",
                a,
                db.span,
                format!("`{a}` has no read replica in the stack"),
                format!("add an aws.rds_instance with `replicate_source_db: ${{{a}.id}}`"),
            );
        }
        let days = int(db, "backup_retention_days").unwrap_or(1);
        if days < 7 {
            f.add(
                "stores.backups",
                a,
                at(db, "backup_retention_days"),
                format!("`{a}` keeps automated backups {days} day(s)"),
                "set `backup_retention_days` to 7 or more (the guide keeps 30); RDS keeps point-in-time recovery over the same days",
            );
        }
        if flag(db, "storage_encrypted") != Some(true) {
            f.add(
                "stores.encryption",
                a,
                at(db, "storage_encrypted"),
                format!("`{a}`'s storage is not encrypted"),
                "set `storage_encrypted: true` (only possible when the instance is created)",
            );
        }
    }
}

/// Cloud SQL primaries: a read replica (and a name failover can keep), regional HA, backups with point-in-time recovery.
fn sql_instances(stack: &Stack, f: &mut Findings) {
    for db in of_kind(stack, "gcp.sql_instance").filter(|r| is_primary(r)) {
        let a = &db.address;
        if !has_replica(stack, "gcp.sql_instance", "master_instance", a) {
            f.add(
                "stores.replica",
                a,
                db.span,
                format!("`{a}` has no read replica in the stack"),
                format!("add a gcp.sql_instance with `master_instance: ${{{a}.name}}`"),
            );
        } else if db.properties.contains_key("name") {
            f.add(
                "recovery.failover-name",
                a,
                at(db, "name"),
                format!("`{a}` has a read replica and a fixed `name`: `failover` cannot keep that name"),
                "use `name_prefix` instead of `name` (changing it replaces the instance: do it before it holds data), and on the replica too",
            );
        }
        if text(db, "availability_type").as_deref() != Some("REGIONAL") {
            f.add(
                "stores.high-availability",
                a,
                at(db, "availability_type"),
                format!("`{a}` runs in one zone"),
                "set `availability_type: REGIONAL` (a standby in another zone, automatic failover)",
            );
        }
        let kept = int(db, "backup_retention").unwrap_or(7);
        if kept < 7 || flag(db, "point_in_time_recovery") != Some(true) {
            f.add(
                "stores.backups",
                a,
                at(
                    db,
                    if kept < 7 {
                        "backup_retention"
                    } else {
                        "point_in_time_recovery"
                    },
                ),
                format!(
                    "`{a}` keeps {kept} daily backup(s){}",
                    if flag(db, "point_in_time_recovery") == Some(true) {
                        ""
                    } else {
                        " and no point-in-time recovery"
                    }
                ),
                "set `backup_retention` to 7 or more and `point_in_time_recovery: true`",
            );
        }
    }
}

/// ElastiCache groups: failover to another zone, encryption, snapshots.
fn elasticache_groups(stack: &Stack, f: &mut Findings) {
    for cache in of_kind(stack, "aws.elasticache_replication_group") {
        let a = &cache.address;
        if flag(cache, "multi_az") != Some(true) || flag(cache, "automatic_failover") != Some(true)
        {
            f.add(
                "stores.high-availability",
                a,
                at(cache, "automatic_failover"),
                format!("`{a}` does not fail over to another zone"),
                "set `multi_az: true` and `automatic_failover: true`, with `num_cache_clusters` 2 or more",
            );
        }
        for (field, what) in [
            ("transit_encryption", "in transit (TLS)"),
            ("at_rest_encryption", "at rest"),
        ] {
            if flag(cache, field) != Some(true) {
                f.add(
                    "stores.encryption",
                    a,
                    at(cache, field),
                    format!("`{a}` is not encrypted {what}"),
                    format!("set `{field}: true` (only possible when the group is created)"),
                );
            }
        }
        if int(cache, "snapshot_retention_days").unwrap_or(0) < 1 {
            f.add_as(
                "stores.backups",
                Severity::Warning,
                a,
                at(cache, "snapshot_retention_days"),
                format!("`{a}` keeps no snapshots"),
                "set `snapshot_retention_days` (the queues' state survives a lost group)",
            );
        }
    }
}

/// Memorystore instances: a replica, TLS.
fn memorystore_instances(stack: &Stack, f: &mut Findings) {
    for cache in of_kind(stack, "gcp.redis_instance") {
        let a = &cache.address;
        if text(cache, "tier").as_deref() != Some("STANDARD_HA") {
            f.add(
                "stores.high-availability",
                a,
                at(cache, "tier"),
                format!("`{a}` has no replica to fail over to"),
                "set `tier: STANDARD_HA`",
            );
        }
        if text(cache, "transit_encryption").as_deref() != Some("SERVER_AUTHENTICATION") {
            f.add(
                "stores.encryption",
                a,
                at(cache, "transit_encryption"),
                format!("`{a}` is reached without TLS"),
                "set `transit_encryption: SERVER_AUTHENTICATION` and mount its `server_ca` in the pods (`redis_ca`)",
            );
        }
    }
}

/// Stores that hold data: the cloud's deletion protection and `protect: true`.
fn deletion_protection(stack: &Stack, f: &mut Findings) {
    // Databases: the cloud's own deletion protection (both kinds have it).
    // (A read replica holds no data of its own.)
    let databases = of_kind(stack, "aws.rds_instance")
        .chain(of_kind(stack, "gcp.sql_instance"))
        .filter(|r| is_primary(r));
    for db in databases {
        if flag(db, "deletion_protection") != Some(true) {
            let a = &db.address;
            f.add(
                "stores.deletion-protection",
                a,
                at(db, "deletion_protection"),
                format!("`{a}` can be deleted by one API call"),
                "set `deletion_protection: true`",
            );
        }
    }
    for store in stack
        .resources
        .values()
        // (A bucket's objects are kept by its versioning.)
        .filter(|r| {
            STORES.contains(&r.kind.kind) && !BUCKETS.contains(&r.kind.kind) && is_primary(r)
        })
    {
        if !store.protect {
            f.add(
                "stores.deletion-protection",
                &store.address,
                store.span,
                format!(
                    "`{}` holds data and is not `protect: true`: a plan may replace or destroy it",
                    store.address
                ),
                "add `protect: true` to the resource (destroy then needs --allow-protected)",
            );
        }
    }
}

// ------------------------------------------------------------ orchestrator

/// The cluster resource an orchestrator's `cluster_endpoint` names.
fn cluster_of<'s>(stack: &'s Stack, app: &Resource) -> Option<&'s Resource> {
    let endpoint = text(app, "cluster_endpoint")?;
    let (address, _) = reference(&endpoint)?;
    stack.resources.get(address)
}

/// Whether an EKS add-on `name` is installed on `cluster`.
fn eks_addon<'s>(stack: &'s Stack, cluster: &str, name: &str) -> Option<&'s Resource> {
    of_kind(stack, "aws.eks_addon").find(|a| {
        text(a, "name").as_deref() == Some(name)
            && text(a, "cluster_name")
                .as_deref()
                .and_then(reference)
                .is_some_and(|(c, _)| c == cluster)
    })
}

/// Whether any manifests resource of the stack names `needle` (a file, a URL
/// or a value), case-insensitively.
fn manifests_mention(stack: &Stack, needle: &str) -> bool {
    of_kind(stack, "kubernetes.manifests").any(|m| {
        m.properties.values().any(|p| {
            p.value
                .evaluate(&|r| Some(Json::String(r.to_string())))
                .is_some_and(|v| v.to_string().to_lowercase().contains(needle))
        })
    })
}

fn orchestrators(stack: &Stack, f: &mut Findings) {
    for app in of_kind(stack, "kubernetes.orchestrator") {
        drain(app, f);
        prometheus(stack, app, f);
        logs_shipped(stack, app, f);
        image_pinned(app, f);
        database_url(app, f);
        policy_enforced(stack, app, f);
        edge(stack, app, f);
    }
}

/// A PodDisruptionBudget that lets a node drain.
fn drain(app: &Resource, f: &mut Findings) {
    let a = &app.address;
    if let Some(replicas) = int(app, "replicas") {
        let min = int(app, "min_available").unwrap_or(replicas - 1);
        if replicas > 0 && min >= replicas {
            f.add(
                "scheduling.drain",
                a,
                at(app, if app.properties.contains_key("min_available") { "min_available" } else { "replicas" }),
                format!("`{a}`'s PodDisruptionBudget keeps {min} of {replicas} pod(s): no node can be drained"),
                "set `min_available` below `replicas` (the default is replicas - 1)",
            );
        }
    }
}

/// Something that loads the rendered alert rules and scrape settings.
fn prometheus(stack: &Stack, app: &Resource, f: &mut Findings) {
    let a = &app.address;
    if flag(app, "monitoring") != Some(false)
        && flag(app, "monitoring_install") != Some(true)
        && text(app, "prometheus").is_none_or(|p| p.is_empty())
        && !manifests_mention(stack, "kind: prometheus")
        && !manifests_mention(stack, "prometheus/prometheus")
        && !manifests_mention(stack, "prom/prometheus")
    {
        f.add(
            "monitoring.prometheus",
            a,
            at(app, "monitoring"),
            format!("`{a}`'s alert rules and scrape settings are rendered, and nothing in the stack runs a Prometheus that loads them"),
            "set `monitoring_install: true` (a Prometheus and an Alertmanager beside the pods), install the Prometheus Operator among the stack's manifests, or name the Prometheus that loads them in `prometheus`",
        );
    }
}

/// On EKS, something that ships the containers' logs.
fn logs_shipped(stack: &Stack, app: &Resource, f: &mut Findings) {
    let a = &app.address;
    // EKS keeps no container logs of its own: something must ship them
    // (GKE sends them to Cloud Logging by default).
    if let Some(cluster) = cluster_of(stack, app).filter(|c| c.kind.kind == "aws.eks_cluster") {
        let shipped = manifests_mention(stack, "fluent-bit")
            || manifests_mention(stack, "fluentbit")
            || manifests_mention(stack, "cloudwatch_logs")
            || eks_addon(stack, &cluster.address, "amazon-cloudwatch-observability").is_some();
        if !shipped {
            f.add(
                "logs.shipped",
                a,
                at(app, "cluster_endpoint"),
                format!("`{a}`'s logs stay on the nodes of `{}`: nothing ships them, and they go with each pod", cluster.address),
                "ship them to CloudWatch Logs: the Fluent Bit add-on (../addons/fluent-bit.yaml.j2, with an aws.cloudwatch_log_group and its IRSA role, as stacks/aws-production.yaml does) or the amazon-cloudwatch-observability EKS add-on",
            );
        }
    }
}

/// A pinned image, not `latest`.
fn image_pinned(app: &Resource, f: &mut Findings) {
    let a = &app.address;
    let tag = text(app, "tag");
    let image = text(app, "image").unwrap_or_default();
    if tag.as_deref() == Some("latest") || (image.ends_with(":latest") && tag.is_none()) {
        f.add(
            "app.image-pinned",
            a,
            at(app, if tag.is_some() { "tag" } else { "image" }),
            format!("`{a}` runs the image tagged `latest`"),
            "pin a release (`tag: \"2.1.0\"`) or a digest, and roll out new ones with `ralph-deploy deploy --image`",
        );
    }
}

/// The DATABASE_URL's scheme and TLS.
fn database_url(app: &Resource, f: &mut Findings) {
    let a = &app.address;
    if let Some(url) = text(app, "database_url") {
        if url.starts_with("postgres://") {
            f.add(
                "app.database-url",
                a,
                at(app, "database_url"),
                format!("`{a}`'s DATABASE_URL starts with `postgres://`"),
                "write `postgresql://` (SQLAlchemy's dialect name)",
            );
        }
        if url.contains("sslmode=disable") {
            f.add(
                "stores.encryption",
                a,
                at(app, "database_url"),
                format!("`{a}` connects to its database with `sslmode=disable`"),
                "connect with `sslmode=require` (or verify-full)",
            );
        }
    }
}

/// A NetworkPolicy the cluster enforces, and metrics for the autoscaler.
fn policy_enforced(stack: &Stack, app: &Resource, f: &mut Findings) {
    let a = &app.address;
    let cluster = cluster_of(stack, app);
    let network_policy = flag(app, "network_policy").unwrap_or(true);
    match cluster.map(|c| (c, c.kind.kind)) {
        Some((c, "aws.eks_cluster")) => {
            let enforced = eks_addon(stack, &c.address, "vpc-cni").is_some_and(|cni| {
                text(cni, "configuration")
                    .and_then(|t| serde_json::from_str::<Json>(&t).ok())
                    .is_some_and(|v| {
                        matches!(&v["enableNetworkPolicy"], Json::Bool(true))
                            || v["enableNetworkPolicy"].as_str() == Some("true")
                    })
            });
            if network_policy && !enforced {
                f.add(
                    "cluster.network-policy",
                    a,
                    at(app, "network_policy"),
                    format!("`{a}`'s NetworkPolicy is stored and not enforced: `{}` has no vpc-cni add-on with its network policy agent on", c.address),
                    format!("add an aws.eks_addon `vpc-cni` on `{}` with `configuration: '{{\"enableNetworkPolicy\": \"true\"}}'`", c.address),
                );
            }
            let autoscaling = flag(app, "autoscaling").unwrap_or(true);
            if autoscaling
                && eks_addon(stack, &c.address, "metrics-server").is_none()
                && !manifests_mention(stack, "metrics-server")
            {
                f.add(
                    "cluster.metrics",
                    a,
                    at(app, "autoscaling"),
                    format!("`{a}`'s HorizontalPodAutoscaler has no metrics: `{}` runs no metrics-server", c.address),
                    format!("add an aws.eks_addon `metrics-server` on `{}`", c.address),
                );
            }
        }
        Some((c, "gcp.gke_cluster")) => {
            if network_policy && flag(c, "dataplane_v2") != Some(true) {
                f.add(
                    "cluster.network-policy",
                    a,
                    at(app, "network_policy"),
                    format!("`{a}`'s NetworkPolicy is stored and not enforced: `{}` runs without Dataplane V2", c.address),
                    format!("set `dataplane_v2: true` on `{}`", c.address),
                );
            }
        }
        _ => {}
    }
}

/// A public host: a certificate issuer and a web application firewall.
fn edge(stack: &Stack, app: &Resource, f: &mut Findings) {
    let a = &app.address;
    if text(app, "ingress_host").is_some_and(|h| !h.is_empty()) {
        // GKE's own controller takes a Google-managed certificate, an
        // ALB one from ACM.
        let class = text(app, "ingress_class");
        let managed = class.as_deref() == Some("gce")
            || (class.as_deref() == Some("alb")
                && text(app, "certificate_arn").is_some_and(|c| !c.is_empty()));
        if !managed && !manifests_mention(stack, "issuer") {
            f.add(
                "edge.tls",
                a,
                at(app, "ingress_host"),
                format!("`{a}` serves a public host, and the stack installs no certificate issuer: its TLS secret will never exist"),
                "install cert-manager and a ClusterIssuer (the stacks' `cluster_addons` take ../addons/cluster-issuer.yaml.j2)",
            );
        }
        // On an ALB the ACL must be the one the Ingress names, on GKE's
        // load balancer the Cloud Armor policy its BackendConfig names;
        // elsewhere one that the stack makes.
        let waf = if class.as_deref() == Some("alb") {
            text(app, "waf_acl_arn").is_some_and(|w| !w.is_empty())
        } else if class.as_deref() == Some("gce") {
            text(app, "security_policy").is_some_and(|w| !w.is_empty())
        } else {
            stack.resources.values().any(|r| {
                r.kind.kind.starts_with("aws.wafv2") || r.kind.kind == "gcp.security_policy"
            })
        };
        if !waf {
            f.add(
                "edge.waf",
                a,
                at(app, "ingress_host"),
                format!("`{a}` serves a public host with no web application firewall in front"),
                match class.as_deref() {
                    Some("alb") => "add an aws.wafv2_web_acl and set the orchestrator's `waf_acl_arn` to its arn",
                    Some("gce") => "add a gcp.security_policy and set the orchestrator's `security_policy` to its name",
                    _ => "put AWS WAF or Cloud Armor in front of the load balancer; until the stack can, waive this rule with the reason",
                },
            );
        }
    }
}

/// The application's database password, the one credential the stack makes
/// and hands to a login, rotates on a schedule the stack states.
fn secret_rotation(stack: &Stack, f: &mut Findings) {
    for role in of_kind(stack, "postgres.role") {
        let Some(source) = text(role, "password_secret") else {
            continue;
        };
        let Some(secret) =
            named(stack, &source, "aws.secret").or_else(|| named(stack, &source, "gcp.secret"))
        else {
            continue;
        };
        if int(secret, "rotate_every_days").is_some() {
            continue;
        }
        let a = &secret.address;
        f.add(
            "secrets.rotation",
            a,
            at(secret, "rotation"),
            format!(
                "`{a}`, the password of database role `{}`, is never rotated unless someone remembers to",
                role.address
            ),
            format!("set `rotate_every_days` on `{a}` (90 is common; at most 365): the first plan of each period shows the rotation, and the role and the pods follow in the same apply"),
        );
    }
}

fn recovery(stack: &Stack, f: &mut Findings) {
    let database = stack
        .resources
        .values()
        .find(|r| matches!(r.kind.kind, "aws.rds_instance" | "gcp.sql_instance") && is_primary(r));
    if let Some(db) = database {
        if stack.recovery.rpo.is_none() || stack.recovery.rto.is_none() {
            f.add(
                "recovery.objectives",
                "stack",
                Span::default(),
                format!(
                    "the stack keeps a database (`{}`) and declares no recovery {}",
                    db.address,
                    match (stack.recovery.rpo, stack.recovery.rto) {
                        (None, None) => "objectives",
                        (None, Some(_)) => "point objective",
                        _ => "time objective",
                    }
                ),
                "add `recovery: { rpo: 1h, rto: 4h }` (the guide's); `status` then holds the latest backup against the RPO",
            );
        }
    }
    let has_bucket = stack
        .resources
        .values()
        .any(|r| BUCKETS.contains(&r.kind.kind));
    if stack.recovery.rpo.is_some() && !has_bucket {
        f.add(
            "recovery.backup-bucket",
            "stack",
            Span::default(),
            "the stack declares a recovery point objective and no bucket for `ralph-deploy backup`".to_string(),
            "add an `aws.s3_bucket` or a `gcp.storage_bucket` (versioned, private, expiring) for the backups",
        );
    }
}

// -------------------------------------------------------------------- plan

/// What a plan would do: (address, kind, action) of each change.
pub(super) fn plan(stack: &Stack, changes: &[(String, String, Action)], f: &mut Findings) {
    for (address, kind, action) in changes {
        if !STORES.contains(&kind.as_str()) || !matches!(action, Action::Replace | Action::Delete) {
            continue;
        }
        let span = stack
            .resources
            .get(address)
            .map_or(Span::default(), |r| r.span);
        f.add(
            "plan.replaces-data",
            address,
            span,
            format!(
                "the plan {} `{address}` ({kind}): its data goes with it",
                if *action == Action::Replace { "replaces" } else { "deletes" }
            ),
            if *action == Action::Replace {
                "change what forces the replacement back (`plan` names it), or move the data first and waive this finding for the address"
            } else {
                "keep the resource in the stack (or `moved:` it to its new address); to drop it on purpose, back it up and waive this finding for the address"
            },
        );
    }
}
