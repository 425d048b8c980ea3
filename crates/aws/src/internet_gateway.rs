//! `aws.internet_gateway`: an internet gateway attached to a VPC.

use aws_sdk_ec2::types::ResourceType;
use serde_json::Value as Json;

use super::ec2_listing::{self, paged_listing};
use super::{api_error, ec2, observed, sync_tags, tag_spec};
use ralph_core::driver::{Context, Desired, Driver, DriverError, Known, Observed, Timeouts};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

static SCHEMA: KindSchema = KindSchema {
    kind: "aws.internet_gateway",
    doc: "An internet gateway, attached to a VPC.",
    fields: &[
        Field::new(
            "vpc_id",
            Ty::String,
            "the VPC to attach to; moving it detaches and re-attaches in place",
        )
        .required(),
        Field::new("tags", Ty::StringMap, "tags besides the ownership tags")
            .default("{}")
            .check(checks::tags),
    ],
    attrs: &[Attr {
        name: "id",
        ty: Ty::String,
        doc: "the gateway id (igw-...)",
    }],
    taggable: true,
    name_field: None,
    exactly_one_of: &[],
    ordered: &[],
};

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

#[async_trait::async_trait]
impl Driver for InternetGateway {
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
        let client = ec2(cx).await?;
        let out = client
            .create_internet_gateway()
            .tag_specifications(tag_spec(ResourceType::InternetGateway, want))
            .send()
            .await
            .map_err(|e| api_error("CreateInternetGateway", e))?;
        let id = out
            .internet_gateway()
            .and_then(|g| g.internet_gateway_id())
            .ok_or_else(|| DriverError::new("CreateInternetGateway returned no id"))?
            .to_string();
        client
            .attach_internet_gateway()
            .internet_gateway_id(&id)
            .vpc_id(want.required_str("vpc_id")?)
            .send()
            .await
            .map_err(|e| api_error("AttachInternetGateway", e))?;
        ec2_listing::read_back::<Self>(cx, &id).await
    }

    async fn update(
        &self,
        cx: &Context,
        want: &Desired<'_>,
        have: &Observed,
        changed: &[String],
    ) -> Result<Observed, DriverError> {
        if changed.iter().any(|c| c == "vpc_id") {
            if let Some(old) = have.attrs.get("vpc_id").and_then(Json::as_str) {
                detach(cx, &have.id, old).await?;
            }
            ec2(cx)
                .await?
                .attach_internet_gateway()
                .internet_gateway_id(&have.id)
                .vpc_id(want.required_str("vpc_id")?)
                .send()
                .await
                .map_err(|e| api_error("AttachInternetGateway", e))?;
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
        if let Some(vpc) = have.attrs.get("vpc_id").and_then(Json::as_str) {
            detach(cx, &have.id, vpc).await?;
        }
        super::delete_answer(
            "DeleteInternetGateway",
            ec2(cx)
                .await?
                .delete_internet_gateway()
                .internet_gateway_id(&have.id)
                .send()
                .await,
            &["InvalidInternetGatewayID.NotFound"],
        )
    }
}
