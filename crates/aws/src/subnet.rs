//! `aws.subnet`: a subnet in one availability zone, public or private.

use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType};
use serde_json::Value as Json;

use super::ec2_listing::{self, paged_listing};
use super::{api_error, ec2, observed, opt_str, sync_tags, tag_spec};
use ralph_core::driver::{Context, Desired, Driver, DriverError, Known, Observed, Timeouts};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

static SCHEMA: KindSchema = KindSchema {
    kind: "aws.subnet",
    doc: "A subnet of a VPC in one availability zone.",
    fields: &[
        Field::new("vpc_id", Ty::String, "the VPC, usually `${vpc.id}`")
            .required()
            .forces_replace(),
        Field::new(
            "cidr_block",
            Ty::Cidr,
            "the subnet's range, inside the VPC's",
        )
        .required()
        .forces_replace()
        .within("vpc_id", "cidr_block"),
        Field::new(
            "availability_zone",
            Ty::String,
            "the zone, such as us-east-1a",
        )
        .required()
        .forces_replace()
        .check(checks::availability_zone),
        Field::new(
            "map_public_ip_on_launch",
            Ty::Bool,
            "give instances public addresses (public subnets)",
        )
        .default("false"),
        Field::new("tags", Ty::StringMap, "tags besides the ownership tags")
            .default("{}")
            .check(checks::tags),
    ],
    attrs: &[
        Attr {
            name: "id",
            ty: Ty::String,
            doc: "the subnet id (subnet-...)",
        },
        Attr {
            name: "arn",
            ty: Ty::String,
            doc: "the subnet ARN",
        },
    ],
    taggable: true,
    name_field: None,
    exactly_one_of: &[],
    ordered: &[],
};

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
impl Driver for Subnet {
    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        ec2_listing::by_id::<Self>(cx, id).await
    }
    fn service(&self) -> &'static str {
        "ec2"
    }

    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    async fn refresh(&self, cx: &Context, _known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        ec2_listing::owned::<Self>(cx).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
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
        let id = out
            .subnet()
            .and_then(|s| s.subnet_id())
            .ok_or_else(|| DriverError::new("CreateSubnet returned no id"))?
            .to_string();
        if want.bool("map_public_ip_on_launch") == Some(true) {
            set_public(cx, &id, true).await?;
        }
        ec2_listing::read_back::<Self>(cx, &id).await
    }

    async fn update(
        &self,
        cx: &Context,
        want: &Desired<'_>,
        have: &Observed,
        changed: &[String],
    ) -> Result<Observed, DriverError> {
        if changed.iter().any(|c| c == "map_public_ip_on_launch") {
            set_public(
                cx,
                &have.id,
                want.bool("map_public_ip_on_launch").unwrap_or(false),
            )
            .await?;
        }
        if changed.iter().any(|c| c == "tags") {
            sync_tags(cx, &have.id, have, want).await?;
        }
        ec2_listing::read_back::<Self>(cx, &have.id).await
    }

    async fn delete(
        &self,
        cx: &Context,
        have: &Observed,
        _timeouts: &Timeouts,
    ) -> Result<(), DriverError> {
        super::delete_answer(
            "DeleteSubnet",
            ec2(cx)
                .await?
                .delete_subnet()
                .subnet_id(&have.id)
                .send()
                .await,
            &["InvalidSubnetID.NotFound"],
        )
    }
}
