//! `aws.eip`: an Elastic IP address in the VPC domain (for NAT gateways).

use aws_sdk_ec2::types::{DomainType, Filter, ResourceType};

use super::ec2_listing::{self, Listed};
use super::{api_error, ec2, observed, opt_str, sync_tags, tag_spec};
use ralph_core::driver::{Context, Desired, Driver, DriverError, Known, Observed, Timeouts};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

static SCHEMA: KindSchema = KindSchema {
    kind: "aws.eip",
    doc: "An Elastic IP address, allocated for use in a VPC.",
    fields: &[
        Field::new("tags", Ty::StringMap, "tags besides the ownership tags")
            .default("{}")
            .check(checks::tags),
    ],
    attrs: &[
        Attr {
            name: "id",
            ty: Ty::String,
            doc: "the allocation id (eipalloc-...)",
        },
        Attr {
            name: "public_ip",
            ty: Ty::String,
            doc: "the address",
        },
    ],
    taggable: true,
    name_field: None,
    exactly_one_of: &[],
    ordered: &[],
};

pub struct ElasticIp;

fn observe(a: &aws_sdk_ec2::types::Address) -> Option<Observed> {
    Some(observed(
        a.allocation_id()?,
        a.tags(),
        vec![("public_ip", opt_str(a.public_ip()))],
    ))
}

#[async_trait::async_trait]
impl Listed for ElasticIp {
    const NOUN: &'static str = "address";
    const ID_FILTER: &'static str = "allocation-id";

    async fn describe(cx: &Context, filters: Vec<Filter>) -> Result<Vec<Observed>, DriverError> {
        // DescribeAddresses is not paged.
        let out = ec2(cx)
            .await?
            .describe_addresses()
            .set_filters(Some(filters))
            .send()
            .await
            .map_err(|e| api_error("DescribeAddresses", e))?;
        Ok(out.addresses().iter().filter_map(observe).collect())
    }
}

#[async_trait::async_trait]
impl Driver for ElasticIp {
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
            .allocate_address()
            .domain(DomainType::Vpc)
            .tag_specifications(tag_spec(ResourceType::ElasticIp, want))
            .send()
            .await
            .map_err(|e| api_error("AllocateAddress", e))?;
        let id = out
            .allocation_id()
            .ok_or_else(|| DriverError::new("AllocateAddress returned no allocation id"))?
            .to_string();
        ec2_listing::read_back::<Self>(cx, &id).await
    }

    async fn update(
        &self,
        cx: &Context,
        want: &Desired<'_>,
        have: &Observed,
        _changed: &[String],
    ) -> Result<Observed, DriverError> {
        sync_tags(cx, &have.id, have, want).await?;
        ec2_listing::read_back::<Self>(cx, &have.id).await
    }

    async fn delete(
        &self,
        cx: &Context,
        have: &Observed,
        _timeouts: &Timeouts,
    ) -> Result<(), DriverError> {
        match ec2(cx)
            .await?
            .release_address()
            .allocation_id(&have.id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(super::error_code(&e), Some("InvalidAllocationID.NotFound")) => {
                Ok(())
            }
            Err(e) => Err(api_error("ReleaseAddress", e)),
        }
    }
}
