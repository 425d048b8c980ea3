//! `aws.route_table_association`: ties a subnet to a route table.
//! Associations carry no tags; refresh reads them from the stack's route
//! tables (one paged call) and matches them by id, or by the pair
//! (route table, subnet), which identifies an association uniquely.

use serde_json::Value as Json;

use super::{api_error, ec2};
use ralph_core::driver::{Context, Delete, Desired, Driver, DriverError, Known, Observed, Update};
use ralph_core::model::kinds::{Attr, Field, KindSchema, Ty};

static SCHEMA: KindSchema = KindSchema::new(
    "aws.route_table_association",
    "ec2",
    "Associates a subnet with a route table.",
)
.fields(&[
    Field::fixed(
        "route_table_id",
        Ty::String,
        "the route table, usually `${rt.id}`",
    ),
    Field::fixed(
        "subnet_id",
        Ty::String,
        "the subnet, usually `${subnet.id}`",
    ),
])
.attrs(&[Attr::string("id", "the association id (rtbassoc-...)")]);

pub struct RouteTableAssociation;

#[async_trait::async_trait]
impl Driver for RouteTableAssociation {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    async fn refresh(&self, cx: &Context, _known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        Ok(associations(super::route_table::list(cx).await?))
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        Ok(
            associations(super::route_table::holding_association(cx, id).await?)
                .into_iter()
                .find(|o| o.id == id),
        )
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let rt = want.required_str("route_table_id")?;
        let subnet = want.required_str("subnet_id")?;
        let out = ec2(cx)
            .await?
            .associate_route_table()
            .route_table_id(rt)
            .subnet_id(subnet)
            .send()
            .await
            .map_err(|e| api_error("AssociateRouteTable", e))?;
        let id = super::made_id("AssociateRouteTable", out.association_id())?;
        let mut attrs = serde_json::Map::new();
        attrs.insert("id".into(), Json::String(id.clone()));
        attrs.insert("route_table_id".into(), Json::String(rt.to_string()));
        attrs.insert("subnet_id".into(), Json::String(subnet.to_string()));
        Ok(Observed {
            address: Some(want.address.to_string()),
            owner: Some(want.owner.clone()),
            id,
            attrs,
        })
    }

    async fn update(&self, _cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { have, .. } = u;
        // Every field forces a replacement; nothing changes in place.
        Ok(have.clone())
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        super::delete_answer(
            "DisassociateRouteTable",
            ec2(cx)
                .await?
                .disassociate_route_table()
                .association_id(&d.have.id)
                .send()
                .await,
            &["InvalidAssociationID.NotFound"],
        )
    }
}

/// The associations the route tables report, one `Observed` each.
fn associations(tables: Vec<Observed>) -> Vec<Observed> {
    let mut out = Vec::new();
    for t in tables {
        for a in t
            .attrs
            .get("associations")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let Some(id) = a.get("id").and_then(Json::as_str) else {
                continue;
            };
            let mut attrs = serde_json::Map::new();
            attrs.insert("id".into(), Json::String(id.to_string()));
            attrs.insert(
                "route_table_id".into(),
                a.get("route_table_id").cloned().unwrap_or(Json::Null),
            );
            attrs.insert(
                "subnet_id".into(),
                a.get("subnet_id").cloned().unwrap_or(Json::Null),
            );
            out.push(Observed {
                address: None,
                owner: None,
                id: id.to_string(),
                attrs,
            });
        }
    }
    out
}
