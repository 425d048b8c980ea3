//! `aws.subnet`: a subnet in one availability zone, public or private.

use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType};
use serde_json::Value as Json;

use super::ec2_listing::{paged_listing, Ec2Kind};
use super::{api_error, ec2, observed, opt_str, tag_spec};
use ralph_core::driver::{Context, Desired, DriverError, Observed, Update};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

static SCHEMA: KindSchema = KindSchema::new(
    "aws.subnet",
    "ec2",
    "A subnet of a VPC in one availability zone.",
)
.fields(&[
    Field::fixed("vpc_id", Ty::String, "the VPC, usually `${vpc.id}`"),
    Field::fixed(
        "cidr_block",
        Ty::Cidr,
        "the subnet's range, inside the VPC's",
    )
    .within("vpc_id", "cidr_block"),
    Field::fixed(
        "availability_zone",
        Ty::String,
        "the zone, such as us-east-1a",
    )
    .check(checks::availability_zone),
    Field::new(
        "map_public_ip_on_launch",
        Ty::Bool,
        "give instances public addresses (public subnets)",
    )
    .default("false"),
    Field::tags(),
])
.attrs(&[
    Attr::string("id", "the subnet id (subnet-...)"),
    Attr::string("arn", "the subnet ARN"),
]);

pub struct Subnet;

fn observe(s: &aws_sdk_ec2::types::Subnet) -> Option<Observed> {
    let id = s.subnet_id()?;
    Some(observed(
        id,
        s.tags(),
        vec![
            ("vpc_id", opt_str(s.vpc_id())),
            ("cidr_block", opt_str(s.cidr_block())),
            ("availability_zone", opt_str(s.availability_zone())),
            (
                "map_public_ip_on_launch",
                Json::Bool(s.map_public_ip_on_launch().unwrap_or(false)),
            ),
            ("arn", opt_str(s.subnet_arn())),
        ],
    ))
}

async fn set_public(cx: &Context, id: &str, public: bool) -> Result<(), DriverError> {
    ec2(cx)
        .await?
        .modify_subnet_attribute()
        .subnet_id(id)
        .map_public_ip_on_launch(AttributeBooleanValue::builder().value(public).build())
        .send()
        .await
        .map_err(|e| api_error("ModifySubnetAttribute", e))?;
    Ok(())
}

paged_listing!(
    Subnet,
    "subnet",
    "subnet-id",
    describe_subnets,
    set_filters,
    subnets,
    "DescribeSubnets",
    observe
);

#[async_trait::async_trait]
impl Ec2Kind for Subnet {
    fn schema() -> &'static KindSchema {
        &SCHEMA
    }

    async fn make(cx: &Context, want: &Desired<'_>) -> Result<String, DriverError> {
        let out = ec2(cx)
            .await?
            .create_subnet()
            .vpc_id(want.required_str("vpc_id")?)
            .cidr_block(want.required_str("cidr_block")?)
            .availability_zone(want.required_str("availability_zone")?)
            .tag_specifications(tag_spec(ResourceType::Subnet, want))
            .send()
            .await
            .map_err(|e| api_error("CreateSubnet", e))?;
        let id = super::made_id("CreateSubnet", out.subnet().and_then(|s| s.subnet_id()))?;
        if want.bool("map_public_ip_on_launch") == Some(true) {
            set_public(cx, &id, true).await?;
        }
        Ok(id)
    }

    async fn change(cx: &Context, u: Update<'_>) -> Result<(), DriverError> {
        let Update { want, have, .. } = u;
        if u.changes("map_public_ip_on_launch") {
            let public = want.bool("map_public_ip_on_launch").unwrap_or(false);
            set_public(cx, &have.id, public).await?;
        }
        Ok(())
    }

    async fn remove(cx: &Context, have: &Observed) -> Result<(), DriverError> {
        let client = ec2(cx).await?;
        let answer = client.delete_subnet().subnet_id(&have.id).send().await;
        super::delete_answer("DeleteSubnet", answer, &["InvalidSubnetID.NotFound"])
    }
}
