//! `aws.internet_gateway`: an internet gateway attached to a VPC.

use aws_sdk_ec2::types::ResourceType;
use serde_json::Value as Json;

use super::ec2_listing::{paged_listing, Ec2Kind};
use super::{api_error, ec2, observed, tag_spec};
use ralph_core::driver::{Context, Desired, DriverError, Observed, Update};
use ralph_core::model::kinds::{Attr, Field, KindSchema, Ty};

static SCHEMA: KindSchema = KindSchema::new(
    "aws.internet_gateway",
    "ec2",
    "An internet gateway, attached to a VPC.",
)
.fields(&[
    Field::new(
        "vpc_id",
        Ty::String,
        "the VPC to attach to; moving it detaches and re-attaches in place",
    )
    .required(),
    Field::tags(),
])
.attrs(&[Attr::string("id", "the gateway id (igw-...)")]);

pub struct InternetGateway;

fn observe(g: &aws_sdk_ec2::types::InternetGateway) -> Option<Observed> {
    let id = g.internet_gateway_id()?;
    let vpc = g
        .attachments()
        .iter()
        .find_map(|a| a.vpc_id())
        .map(|v| Json::String(v.to_string()))
        .unwrap_or(Json::Null);
    Some(observed(id, g.tags(), vec![("vpc_id", vpc)]))
}

async fn detach(cx: &Context, id: &str, vpc: &str) -> Result<(), DriverError> {
    match ec2(cx)
        .await?
        .detach_internet_gateway()
        .internet_gateway_id(id)
        .vpc_id(vpc)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                super::error_code(&e),
                Some("Gateway.NotAttached" | "InvalidInternetGatewayID.NotFound")
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(api_error("DetachInternetGateway", e)),
    }
}

paged_listing!(
    InternetGateway,
    "internet gateway",
    "internet-gateway-id",
    describe_internet_gateways,
    set_filters,
    internet_gateways,
    "DescribeInternetGateways",
    observe
);

async fn attach(cx: &Context, id: &str, want: &Desired<'_>) -> Result<(), DriverError> {
    ec2(cx)
        .await?
        .attach_internet_gateway()
        .internet_gateway_id(id)
        .vpc_id(want.required_str("vpc_id")?)
        .send()
        .await
        .map_err(|e| api_error("AttachInternetGateway", e))?;
    Ok(())
}

fn attached_vpc(have: &Observed) -> Option<&str> {
    have.attrs.get("vpc_id").and_then(Json::as_str)
}

#[async_trait::async_trait]
impl Ec2Kind for InternetGateway {
    fn schema() -> &'static KindSchema {
        &SCHEMA
    }

    async fn make(cx: &Context, want: &Desired<'_>) -> Result<String, DriverError> {
        let out = ec2(cx)
            .await?
            .create_internet_gateway()
            .tag_specifications(tag_spec(ResourceType::InternetGateway, want))
            .send()
            .await
            .map_err(|e| api_error("CreateInternetGateway", e))?;
        let id = super::made_id(
            "CreateInternetGateway",
            out.internet_gateway().and_then(|g| g.internet_gateway_id()),
        )?;
        attach(cx, &id, want).await?;
        Ok(id)
    }

    async fn change(cx: &Context, u: Update<'_>) -> Result<(), DriverError> {
        let Update { want, have, .. } = u;
        if u.changes("vpc_id") {
            if let Some(old) = attached_vpc(have) {
                detach(cx, &have.id, old).await?;
            }
            attach(cx, &have.id, want).await?;
        }
        Ok(())
    }

    async fn remove(cx: &Context, have: &Observed) -> Result<(), DriverError> {
        if let Some(vpc) = attached_vpc(have) {
            detach(cx, &have.id, vpc).await?;
        }
        let client = ec2(cx).await?;
        let answer = client
            .delete_internet_gateway()
            .internet_gateway_id(&have.id)
            .send()
            .await;
        let gone = ["InvalidInternetGatewayID.NotFound"];
        super::delete_answer("DeleteInternetGateway", answer, &gone)
    }
}
