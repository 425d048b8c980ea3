//! `aws.vpc`: a VPC with its DNS settings.

use aws_sdk_ec2::types::{AttributeBooleanValue, Filter, ResourceType, VpcAttributeName};
use serde_json::Value as Json;

use super::ec2_listing::{Ec2Kind, Listed};
use super::{api_error, ec2, observed, tag_spec};
use ralph_core::driver::{Context, Desired, DriverError, Observed, Update};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

fn vpc_prefix(v: &Json) -> Result<(), String> {
    let net: ipnet::Ipv4Net = v
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|_| "not a CIDR block".to_string())?;
    checks::require((16..=28).contains(&net.prefix_len()), || {
        format!(
            "a VPC's CIDR block must have a prefix between /16 and /28, not /{}",
            net.prefix_len()
        )
    })
}

static SCHEMA: KindSchema = KindSchema::new("aws.vpc", "ec2", "An Amazon VPC.")
    .fields(&[
        Field::fixed("cidr_block", Ty::Cidr, "the VPC's IPv4 range, /16 to /28").check(vpc_prefix),
        Field::new(
            "enable_dns_support",
            Ty::Bool,
            "resolve DNS through the Amazon DNS server",
        )
        .default("true"),
        Field::new(
            "enable_dns_hostnames",
            Ty::Bool,
            "give instances public DNS hostnames",
        )
        .default("true"),
        Field::tags(),
    ])
    .attrs(&[
        Attr::string("id", "the VPC id (vpc-...)"),
        Attr::string("owner_id", "the owning account"),
        Attr::string(
            "default_security_group_id",
            "the VPC's default security group",
        ),
    ]);

pub struct Vpc;

async fn dns(cx: &Context, id: &str, attr: VpcAttributeName) -> Result<Json, DriverError> {
    let out = ec2(cx)
        .await?
        .describe_vpc_attribute()
        .vpc_id(id)
        .attribute(attr.clone())
        .send()
        .await
        .map_err(|e| api_error("DescribeVpcAttribute", e))?;
    let v = match attr {
        VpcAttributeName::EnableDnsSupport => out.enable_dns_support().and_then(|a| a.value()),
        _ => out.enable_dns_hostnames().and_then(|a| a.value()),
    };
    Ok(v.map(Json::Bool).unwrap_or(Json::Null))
}

async fn set_dns(
    cx: &Context,
    id: &str,
    support: Option<bool>,
    hostnames: Option<bool>,
) -> Result<(), DriverError> {
    let client = ec2(cx).await?;
    // EC2 takes one attribute per call; the two calls are independent.
    let support = async {
        if let Some(s) = support {
            client
                .modify_vpc_attribute()
                .vpc_id(id)
                .enable_dns_support(AttributeBooleanValue::builder().value(s).build())
                .send()
                .await
                .map_err(|e| api_error("ModifyVpcAttribute", e))?;
        }
        Ok::<(), DriverError>(())
    };
    let hostnames = async {
        if let Some(h) = hostnames {
            client
                .modify_vpc_attribute()
                .vpc_id(id)
                .enable_dns_hostnames(AttributeBooleanValue::builder().value(h).build())
                .send()
                .await
                .map_err(|e| api_error("ModifyVpcAttribute", e))?;
        }
        Ok::<(), DriverError>(())
    };
    futures::try_join!(support, hostnames)?;
    Ok(())
}

#[async_trait::async_trait]
impl Listed for Vpc {
    const NOUN: &'static str = "VPC";
    const ID_FILTER: &'static str = "vpc-id";

    async fn describe(cx: &Context, filters: Vec<Filter>) -> Result<Vec<Observed>, DriverError> {
        describe(cx, filters).await
    }
}

/// The VPCs matching `filters`, with their DNS attributes and default
/// security group.
async fn describe(
    cx: &Context,
    filters: Vec<aws_sdk_ec2::types::Filter>,
) -> Result<Vec<Observed>, DriverError> {
    let client = ec2(cx).await?;
    let mut pages = client
        .describe_vpcs()
        .set_filters(Some(filters))
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| api_error("DescribeVpcs", e))?;
        for v in page.vpcs() {
            let Some(id) = v.vpc_id() else { continue };
            let (support, hostnames) = futures::try_join!(
                dns(cx, id, VpcAttributeName::EnableDnsSupport),
                dns(cx, id, VpcAttributeName::EnableDnsHostnames)
            )?;
            out.push(observed(
                id,
                v.tags(),
                vec![
                    ("cidr_block", super::opt_str(v.cidr_block())),
                    ("owner_id", super::opt_str(v.owner_id())),
                    ("enable_dns_support", support),
                    ("enable_dns_hostnames", hostnames),
                ],
            ));
        }
    }
    // The default security group of each VPC, in one call for all of them.
    if !out.is_empty() {
        let ids: Vec<String> = out.iter().map(|o| o.id.clone()).collect();
        let sgs = client
            .describe_security_groups()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("vpc-id")
                    .set_values(Some(ids))
                    .build(),
            )
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("group-name")
                    .values("default")
                    .build(),
            )
            .send()
            .await
            .map_err(|e| api_error("DescribeSecurityGroups", e))?;
        for sg in sgs.security_groups() {
            if let Some(o) = out.iter_mut().find(|o| Some(o.id.as_str()) == sg.vpc_id()) {
                o.attrs.insert(
                    "default_security_group_id".into(),
                    super::opt_str(sg.group_id()),
                );
            }
        }
    }
    Ok(out)
}

/// Waits for a VPC that was not `available` at once.
async fn wait_available(cx: &Context, address: &str, id: &str) -> Result<(), DriverError> {
    let client = ec2(cx).await?;
    cx.wait_until(
        address,
        "the VPC to become available",
        std::time::Duration::from_secs(300),
        || async {
            let out = client
                .describe_vpcs()
                .vpc_ids(id)
                .send()
                .await
                .map_err(|e| api_error("DescribeVpcs", e))?;
            let state = out
                .vpcs()
                .first()
                .and_then(|v| v.state())
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| "unknown".into());
            Ok(((state == "available").then_some(()), state))
        },
    )
    .await
}

#[async_trait::async_trait]
impl Ec2Kind for Vpc {
    fn schema() -> &'static KindSchema {
        &SCHEMA
    }

    async fn make(cx: &Context, want: &Desired<'_>) -> Result<String, DriverError> {
        let out = ec2(cx)
            .await?
            .create_vpc()
            .cidr_block(want.required_str("cidr_block")?)
            .tag_specifications(tag_spec(ResourceType::Vpc, want))
            .send()
            .await
            .map_err(|e| api_error("CreateVpc", e))?;
        let id = super::made_id("CreateVpc", out.vpc().and_then(|v| v.vpc_id()))?;
        // Usually available at once; otherwise wait for it.
        let available = out
            .vpc()
            .and_then(|v| v.state())
            .is_some_and(|s| s.as_str() == "available");
        if !available {
            wait_available(cx, want.address, &id).await?;
        }
        let support = want.bool("enable_dns_support");
        set_dns(cx, &id, support, want.bool("enable_dns_hostnames")).await?;
        Ok(id)
    }

    async fn change(cx: &Context, u: Update<'_>) -> Result<(), DriverError> {
        let Update { want, have, .. } = u;
        let pick = |name: &str| {
            if u.changes(name) {
                want.bool(name)
            } else {
                None
            }
        };
        let support = pick("enable_dns_support");
        set_dns(cx, &have.id, support, pick("enable_dns_hostnames")).await
    }

    async fn remove(cx: &Context, have: &Observed) -> Result<(), DriverError> {
        let answer = ec2(cx).await?.delete_vpc().vpc_id(&have.id).send().await;
        super::delete_answer("DeleteVpc", answer, &["InvalidVpcID.NotFound"])
    }
}
