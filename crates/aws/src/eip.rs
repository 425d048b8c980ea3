//! `aws.eip`: an Elastic IP address in the VPC domain (for NAT gateways).

use aws_sdk_ec2::types::{DomainType, Filter, ResourceType};

use super::ec2_listing::{Ec2Kind, Listed};
use super::{api_error, ec2, observed, opt_str, tag_spec};
use ralph_core::driver::{Context, Desired, DriverError, Observed};
use ralph_core::model::kinds::{Attr, Field, KindSchema};

static SCHEMA: KindSchema = KindSchema::new(
    "aws.eip",
    "ec2",
    "An Elastic IP address, allocated for use in a VPC.",
)
.fields(&[Field::tags()])
.attrs(&[
    Attr::string("id", "the allocation id (eipalloc-...)"),
    Attr::string("public_ip", "the address"),
]);

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
impl Ec2Kind for ElasticIp {
    fn schema() -> &'static KindSchema {
        &SCHEMA
    }

    async fn make(cx: &Context, want: &Desired<'_>) -> Result<String, DriverError> {
        let out = ec2(cx)
            .await?
            .allocate_address()
            .domain(DomainType::Vpc)
            .tag_specifications(tag_spec(ResourceType::ElasticIp, want))
            .send()
            .await
            .map_err(|e| api_error("AllocateAddress", e))?;
        super::made_id("AllocateAddress", out.allocation_id())
    }

    async fn remove(cx: &Context, have: &Observed) -> Result<(), DriverError> {
        let client = ec2(cx).await?;
        let answer = client
            .release_address()
            .allocation_id(&have.id)
            .send()
            .await;
        super::delete_answer("ReleaseAddress", answer, &["InvalidAllocationID.NotFound"])
    }
}
