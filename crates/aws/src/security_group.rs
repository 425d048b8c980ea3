//! `aws.security_group`: a security group with its ingress and egress rules.
//! Rules are written flat (one source per rule) and compared as a set, so the
//! way EC2 groups them never shows up as a difference. The default egress
//! rule EC2 adds is removed unless the stack asks for it.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType, UserIdGroupPair};
use serde_json::{Map, Value as Json};

use super::ec2_listing::{self, paged_listing, Ec2Kind};
use super::{api_error, ec2, observed, opt_str, tag_spec};
use ralph_core::driver::{Context, Desired, DriverError, Observed, Update};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

static RULE: &[Field] = &[
    Field::new("protocol", Ty::String, "tcp, udp, icmp or all")
        .required()
        .check(checks::ip_protocol),
    Field::new("from_port", Ty::Int, "first port (not for `all`)").check(checks::port),
    Field::new("to_port", Ty::Int, "last port; defaults to from_port").check(checks::port),
    Field::new("cidr_block", Ty::Cidr, "the peer range"),
    Field::new(
        "source_security_group_id",
        Ty::String,
        "the peer security group",
    ),
    Field::new("description", Ty::String, "what the rule is for")
        .check(checks::security_group_description),
];

static SCHEMA: KindSchema = KindSchema::new(
    "aws.security_group",
    "ec2",
    "A VPC security group and its rules.",
)
.fields(&[
    Field::name("the group name, unique in the VPC").check(checks::security_group_name),
    Field::new("description", Ty::String, "what the group is for")
        .default("\"Managed by ralph-deploy\"")
        .check(checks::security_group_description)
        .forces_replace(),
    Field::fixed("vpc_id", Ty::String, "the VPC, usually `${vpc.id}`"),
    Field::new("ingress", Ty::Set(&Ty::Object(RULE)), "inbound rules")
        .default("[]")
        .check(checks::rule_port_ranges),
    Field::new(
        "egress",
        Ty::Set(&Ty::Object(RULE)),
        "outbound rules; none unless listed",
    )
    .default("[]")
    .check(checks::rule_port_ranges),
    Field::tags(),
])
.attrs(&[
    Attr::string("id", "the group id (sg-...)"),
    Attr::string("arn", "the group ARN"),
]);

pub struct SecurityGroup;

/// One rule in canonical form: protocol `-1` for all, no ports for `-1`,
/// `to_port` filled from `from_port`, empty description dropped.
fn canonical(rule: &Json) -> Json {
    let Some(m) = rule.as_object() else {
        return rule.clone();
    };
    let mut out = Map::new();
    let proto = match m.get("protocol").and_then(Json::as_str) {
        Some("all") | Some("-1") | None => "-1".to_string(),
        Some(p) => p.to_ascii_lowercase(),
    };
    if proto != "-1" {
        let from = m.get("from_port").and_then(Json::as_i64);
        let to = m.get("to_port").and_then(Json::as_i64).or(from);
        if let Some(f) = from {
            out.insert("from_port".into(), Json::from(f));
        }
        if let Some(t) = to {
            out.insert("to_port".into(), Json::from(t));
        }
    }
    out.insert("protocol".into(), Json::String(proto));
    for k in ["cidr_block", "source_security_group_id"] {
        if let Some(v) = m.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(d) = m
        .get("description")
        .and_then(Json::as_str)
        .filter(|d| !d.is_empty())
    {
        out.insert("description".into(), Json::String(d.to_string()));
    }
    Json::Object(out)
}

fn flatten(perms: &[IpPermission]) -> Json {
    let mut rules = Vec::new();
    for p in perms {
        let base = |extra: Vec<(&str, Json)>, desc: Option<&str>| {
            let mut m = Map::new();
            m.insert("protocol".into(), opt_str(p.ip_protocol()));
            if let Some(f) = p.from_port() {
                m.insert("from_port".into(), Json::from(f));
            }
            if let Some(t) = p.to_port() {
                m.insert("to_port".into(), Json::from(t));
            }
            for (k, v) in extra {
                m.insert(k.into(), v);
            }
            if let Some(d) = desc {
                m.insert("description".into(), Json::String(d.to_string()));
            }
            canonical(&Json::Object(m))
        };
        for r in p.ip_ranges() {
            rules.push(base(
                vec![("cidr_block", opt_str(r.cidr_ip()))],
                r.description(),
            ));
        }
        for g in p.user_id_group_pairs() {
            rules.push(base(
                vec![("source_security_group_id", opt_str(g.group_id()))],
                g.description(),
            ));
        }
    }
    Json::Array(rules)
}

fn permission(rule: &Json) -> IpPermission {
    let r = canonical(rule);
    let get = |k: &str| r.get(k).and_then(Json::as_str).map(str::to_string);
    // Validation keeps ports within -1..=65535, which i32 holds.
    let port = |k: &str| {
        r.get(k)
            .and_then(Json::as_i64)
            .and_then(|p| i32::try_from(p).ok())
    };
    let mut b = IpPermission::builder()
        .ip_protocol(get("protocol").unwrap_or_else(|| "-1".into()))
        .set_from_port(port("from_port"))
        .set_to_port(port("to_port"));
    if let Some(c) = get("cidr_block") {
        b = b.ip_ranges(
            IpRange::builder()
                .cidr_ip(c)
                .set_description(get("description"))
                .build(),
        );
    }
    if let Some(g) = get("source_security_group_id") {
        b = b.user_id_group_pairs(
            UserIdGroupPair::builder()
                .group_id(g)
                .set_description(get("description"))
                .build(),
        );
    }
    b.build()
}

fn rule_set(v: Option<&Json>) -> BTreeSet<String> {
    v.and_then(Json::as_array)
        .into_iter()
        .flatten()
        .map(|r| canonical(r).to_string())
        .collect()
}

async fn sync_rules(
    cx: &Context,
    id: &str,
    egress: bool,
    have: Option<&Json>,
    want: Option<&Json>,
) -> Result<(), DriverError> {
    let client = ec2(cx).await?;
    let have = rule_set(have);
    let want = rule_set(want);
    let parse = |s: &String| serde_json::from_str::<Json>(s).unwrap_or(Json::Null);
    let revoke: Vec<IpPermission> = have
        .difference(&want)
        .map(|s| permission(&parse(s)))
        .collect();
    let grant: Vec<IpPermission> = want
        .difference(&have)
        .map(|s| permission(&parse(s)))
        .collect();
    if !revoke.is_empty() {
        if egress {
            client
                .revoke_security_group_egress()
                .group_id(id)
                .set_ip_permissions(Some(revoke))
                .send()
                .await
                .map_err(|e| api_error("RevokeSecurityGroupEgress", e))?;
        } else {
            client
                .revoke_security_group_ingress()
                .group_id(id)
                .set_ip_permissions(Some(revoke))
                .send()
                .await
                .map_err(|e| api_error("RevokeSecurityGroupIngress", e))?;
        }
    }
    if !grant.is_empty() {
        if egress {
            client
                .authorize_security_group_egress()
                .group_id(id)
                .set_ip_permissions(Some(grant))
                .send()
                .await
                .map_err(|e| api_error("AuthorizeSecurityGroupEgress", e))?;
        } else {
            client
                .authorize_security_group_ingress()
                .group_id(id)
                .set_ip_permissions(Some(grant))
                .send()
                .await
                .map_err(|e| api_error("AuthorizeSecurityGroupIngress", e))?;
        }
    }
    Ok(())
}

fn observe(g: &aws_sdk_ec2::types::SecurityGroup) -> Option<Observed> {
    Some(observed(
        g.group_id()?,
        g.tags(),
        vec![
            ("name", opt_str(g.group_name())),
            ("description", opt_str(g.description())),
            ("vpc_id", opt_str(g.vpc_id())),
            ("ingress", flatten(g.ip_permissions())),
            ("egress", flatten(g.ip_permissions_egress())),
            ("arn", opt_str(g.security_group_arn())),
        ],
    ))
}

paged_listing!(
    SecurityGroup,
    "security group",
    "group-id",
    describe_security_groups,
    set_filters,
    security_groups,
    "DescribeSecurityGroups",
    observe
);

#[async_trait::async_trait]
impl Ec2Kind for SecurityGroup {
    fn schema() -> &'static KindSchema {
        &SCHEMA
    }

    fn normalize(props: &mut Map<String, Json>) -> Result<(), String> {
        for k in ["ingress", "egress"] {
            if let Some(Json::Array(rules)) = props.get_mut(k) {
                for r in rules.iter_mut() {
                    *r = canonical(r);
                }
            }
        }
        Ok(())
    }

    async fn make(cx: &Context, want: &Desired<'_>) -> Result<String, DriverError> {
        let out = ec2(cx)
            .await?
            .create_security_group()
            .group_name(want.required_str("name")?)
            .description(want.str("description").unwrap_or("Managed by ralph-deploy"))
            .vpc_id(want.required_str("vpc_id")?)
            .tag_specifications(tag_spec(ResourceType::SecurityGroup, want))
            .send()
            .await
            .map_err(|e| api_error("CreateSecurityGroup", e))?;
        let id = super::made_id("CreateSecurityGroup", out.group_id())?;
        // The rules EC2 gave the new group (its default egress) are replaced.
        let fresh = ec2_listing::read_back::<Self>(cx, &id).await?;
        sync_both(cx, &id, &fresh, want, &["ingress", "egress"]).await?;
        Ok(id)
    }

    async fn change(cx: &Context, u: Update<'_>) -> Result<(), DriverError> {
        let (want, have, changed) = (u.want, u.have, u.changed);
        let changed: Vec<&str> = changed.iter().map(String::as_str).collect();
        sync_both(cx, &have.id, have, want, &changed).await
    }

    async fn remove(cx: &Context, have: &Observed) -> Result<(), DriverError> {
        let client = ec2(cx).await?;
        let answer = client
            .delete_security_group()
            .group_id(&have.id)
            .send()
            .await;
        super::delete_answer("DeleteSecurityGroup", answer, &["InvalidGroup.NotFound"])
    }
}

/// Brings the ingress and egress rules named in `which` from what `have`
/// holds to what `want` declares; the two directions are independent calls.
async fn sync_both(
    cx: &Context,
    id: &str,
    have: &Observed,
    want: &Desired<'_>,
    which: &[&str],
) -> Result<(), DriverError> {
    let direction = |egress: bool| {
        let name = if egress { "egress" } else { "ingress" };
        let wanted = which.contains(&name);
        async move {
            if wanted {
                let (old, new) = (have.attrs.get(name), want.props.get(name));
                sync_rules(cx, id, egress, old, new).await?;
            }
            Ok::<(), DriverError>(())
        }
    };
    futures::try_join!(direction(false), direction(true))?;
    Ok(())
}
