//! `aws.nat_gateway`: a NAT gateway in a public subnet, so private subnets
//! reach the internet. Creation takes minutes on AWS: create waits for
//! `available`, delete waits for `deleted`.

use std::time::Duration;

use aws_sdk_ec2::types::{ConnectivityType, Filter, NatGatewayState, ResourceType};
use serde_json::Value as Json;

use super::ec2_listing::{Ec2Kind, Listed};
use super::{api_error, ec2, observed, opt_str, tag_spec};
use ralph_core::driver::{Context, Desired, DriverError, Observed, Owner};
use ralph_core::model::kinds::{Attr, Field, KindSchema, Ty};

fn connectivity(v: &Json) -> Result<(), String> {
    match v.as_str() {
        Some("public" | "private") => Ok(()),
        _ => Err("connectivity_type must be `public` or `private`".into()),
    }
}

static SCHEMA: KindSchema = KindSchema::new("aws.nat_gateway", "ec2", "A NAT gateway.")
    .fields(&[
        Field::fixed("subnet_id", Ty::String, "the (public) subnet it lives in"),
        Field::new(
            "allocation_id",
            Ty::String,
            "the Elastic IP for a public gateway, usually `${eip.id}`",
        )
        .forces_replace(),
        Field::new("connectivity_type", Ty::String, "`public` or `private`")
            .default("\"public\"")
            .forces_replace()
            .check(connectivity),
        Field::tags(),
    ])
    .attrs(&[
        Attr::string("id", "the gateway id (nat-...)"),
        Attr::string("public_ip", "its public address"),
    ]);

const CREATE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DELETE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

pub struct NatGateway;

fn observe(g: &aws_sdk_ec2::types::NatGateway) -> Option<Observed> {
    let addr = g.nat_gateway_addresses().first();
    Some(observed(
        g.nat_gateway_id()?,
        g.tags(),
        vec![
            ("subnet_id", opt_str(g.subnet_id())),
            (
                "allocation_id",
                opt_str(addr.and_then(|a| a.allocation_id())),
            ),
            (
                "connectivity_type",
                opt_str(g.connectivity_type().map(|c| c.as_str())),
            ),
            ("public_ip", opt_str(addr.and_then(|a| a.public_ip()))),
            ("state", opt_str(g.state().map(|s| s.as_str()))),
        ],
    ))
}

#[async_trait::async_trait]
impl Listed for NatGateway {
    const NOUN: &'static str = "NAT gateway";
    const ID_FILTER: &'static str = "nat-gateway-id";

    /// Deleted gateways stay visible for an hour; they are gone for us.
    async fn describe(cx: &Context, filters: Vec<Filter>) -> Result<Vec<Observed>, DriverError> {
        let mut pages = ec2(cx)
            .await?
            .describe_nat_gateways()
            .set_filter(Some(filters))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| api_error("DescribeNatGateways", e))?;
            let live = page
                .nat_gateways()
                .iter()
                .filter(|g| g.state() != Some(&NatGatewayState::Deleted));
            out.extend(live.filter_map(observe));
        }
        Ok(out)
    }

    fn owned_filters(owner: &Owner) -> Vec<Filter> {
        let mut filters = super::owner_filters(owner);
        let states = ["pending", "available", "deleting", "failed"];
        filters.push(
            Filter::builder()
                .name("state")
                .set_values(Some(states.map(String::from).to_vec()))
                .build(),
        );
        filters
    }
}

async fn state_of(cx: &Context, id: &str) -> Result<(Option<Observed>, String), DriverError> {
    let out = ec2(cx)
        .await?
        .describe_nat_gateways()
        .nat_gateway_ids(id)
        .send()
        .await;
    let out = super::found("DescribeNatGateways", out, &["NatGatewayNotFound"])?;
    let g = out.as_ref().and_then(|o| o.nat_gateways().first());
    let state = g.and_then(|g| g.state()).map_or("deleted", |s| s.as_str());
    Ok((g.and_then(observe), state.to_string()))
}

/// Waits until no gateway that is being deleted holds Elastic IP
/// `allocation`: EC2 keeps the address associated until the deletion is
/// done (about a minute), and refuses it to a new gateway until then
/// (`Resource.AlreadyAssociated`). A gateway deleted outside and made again
/// at once, or replaced, would fail without this.
async fn await_address(cx: &Context, address: &str, allocation: &str) -> Result<(), DriverError> {
    let deleting = Filter::builder().name("state").values("deleting").build();
    let found = ec2(cx)
        .await?
        .describe_nat_gateways()
        .filter(deleting)
        .send()
        .await
        .map_err(|e| api_error("DescribeNatGateways", e))?;
    // Checked here as well: not every EC2 stand-in applies the filter.
    let holders = found.nat_gateways().iter().filter(|g| {
        g.state() == Some(&NatGatewayState::Deleting)
            && g.nat_gateway_addresses()
                .iter()
                .any(|a| a.allocation_id() == Some(allocation))
    });
    for id in holders.filter_map(|g| g.nat_gateway_id()) {
        let what = format!("NAT gateway {id}, being deleted, to let go of {allocation}");
        cx.wait_until(address, &what, DELETE_TIMEOUT, || async {
            let (_, state) = state_of(cx, id).await?;
            Ok(((state == "deleted").then_some(()), state))
        })
        .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Ec2Kind for NatGateway {
    const TYPICAL_SECONDS: u64 = 120;

    fn schema() -> &'static KindSchema {
        &SCHEMA
    }

    /// One being deleted is gone for the stack too (EC2 takes about a
    /// minute over it, and lists it as `deleted` for an hour after).
    fn present(o: &Observed) -> bool {
        o.attrs.get("state").and_then(Json::as_str) != Some("deleting")
    }

    async fn make(cx: &Context, want: &Desired<'_>) -> Result<String, DriverError> {
        let mut req = ec2(cx)
            .await?
            .create_nat_gateway()
            .subnet_id(want.required_str("subnet_id")?)
            .connectivity_type(ConnectivityType::from(
                want.str("connectivity_type").unwrap_or("public"),
            ))
            .tag_specifications(tag_spec(ResourceType::Natgateway, want));
        // No client token of ours: the SDK makes one per call, which its
        // own retries repeat, and a gateway a killed run asked for carries
        // the ownership tags from the start, so the next run finds it. A
        // token derived from the address would make EC2 answer every later
        // create of that address (after a deletion, a replacement) with the
        // first gateway, long gone.
        if let Some(a) = want.str("allocation_id") {
            await_address(cx, want.address, a).await?;
            req = req.allocation_id(a);
        }
        let out = req
            .send()
            .await
            .map_err(|e| api_error("CreateNatGateway", e))?;
        let id = super::made_id(
            "CreateNatGateway",
            out.nat_gateway().and_then(|g| g.nat_gateway_id()),
        )?;
        cx.wait_until(
            want.address,
            "the NAT gateway to become available",
            CREATE_TIMEOUT,
            || async {
                let (obs, state) = state_of(cx, &id).await?;
                if state == "failed" {
                    let reason = obs
                        .map(|_| "see the gateway's failure message in the console")
                        .unwrap_or("");
                    return Err(DriverError::new(format!(
                        "NAT gateway {id} failed to create {reason}"
                    )));
                }
                Ok(((state == "available").then_some(()), state))
            },
        )
        .await?;
        Ok(id)
    }

    async fn remove(cx: &Context, have: &Observed) -> Result<(), DriverError> {
        let client = ec2(cx).await?;
        let answer = client
            .delete_nat_gateway()
            .nat_gateway_id(&have.id)
            .send()
            .await;
        if super::found("DeleteNatGateway", answer, &["NatGatewayNotFound"])?.is_none() {
            return Ok(());
        }
        cx.wait_until(
            have.address.as_deref().unwrap_or(&have.id),
            "the NAT gateway to be deleted",
            DELETE_TIMEOUT,
            || async {
                let (_, state) = state_of(cx, &have.id).await?;
                Ok(((state == "deleted").then_some(()), state))
            },
        )
        .await
    }
}
