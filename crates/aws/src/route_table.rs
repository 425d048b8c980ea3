//! `aws.route_table`: a route table with its routes (the VPC's `local`
//! route is implicit and never listed).

use std::collections::BTreeMap;

use aws_sdk_ec2::types::ResourceType;
use serde_json::{Map, Value as Json};

use super::ec2_listing::{self, paged_listing, Ec2Kind, Listed};
use super::{api_error, ec2, observed, opt_str, tag_spec};
use ralph_core::driver::{Context, Desired, DriverError, Observed, Update};
use ralph_core::model::kinds::{Attr, Field, KindSchema, Ty};

static ROUTE: &[Field] = &[
    Field::new(
        "destination_cidr_block",
        Ty::Cidr,
        "where the route leads, such as 0.0.0.0/0",
    )
    .required(),
    Field::new(
        "gateway_id",
        Ty::String,
        "an internet gateway, usually `${igw.id}`",
    ),
    Field::new(
        "nat_gateway_id",
        Ty::String,
        "a NAT gateway, usually `${nat.id}`",
    ),
];

static SCHEMA: KindSchema = KindSchema::new(
    "aws.route_table",
    "ec2",
    "A route table of a VPC and its routes.",
)
.fields(&[
    Field::fixed("vpc_id", Ty::String, "the VPC, usually `${vpc.id}`"),
    Field::new(
        "routes",
        Ty::Set(&Ty::Object(ROUTE)),
        "routes besides the VPC's local route",
    )
    .default("[]"),
    Field::tags(),
])
.attrs(&[Attr::string("id", "the route table id (rtb-...)")]);

pub struct RouteTable;

fn observe(t: &aws_sdk_ec2::types::RouteTable) -> Option<Observed> {
    let routes: Vec<Json> = t
        .routes()
        .iter()
        .filter(|r| {
            r.gateway_id() != Some("local")
                && r.origin().map(|o| o.as_str()) != Some("CreateRouteTable")
        })
        .filter_map(|r| {
            let mut m = Map::new();
            m.insert(
                "destination_cidr_block".into(),
                Json::String(r.destination_cidr_block()?.to_string()),
            );
            if let Some(g) = r.gateway_id() {
                m.insert("gateway_id".into(), Json::String(g.to_string()));
            }
            if let Some(n) = r.nat_gateway_id() {
                m.insert("nat_gateway_id".into(), Json::String(n.to_string()));
            }
            Some(Json::Object(m))
        })
        .collect();
    let mut o = observed(
        t.route_table_id()?,
        t.tags(),
        vec![
            ("vpc_id", opt_str(t.vpc_id())),
            ("routes", Json::Array(routes)),
        ],
    );
    // Associations are their own kind; keep them for its refresh.
    let assoc: Vec<Json> = t
        .associations()
        .iter()
        .filter(|a| a.main() != Some(true))
        .filter_map(|a| {
            Some(serde_json::json!({
                "id": a.route_table_association_id()?,
                "subnet_id": a.subnet_id()?,
                "route_table_id": t.route_table_id()?,
            }))
        })
        .collect();
    o.attrs.insert("associations".into(), Json::Array(assoc));
    Some(o)
}

paged_listing!(
    RouteTable,
    "route table",
    "route-table-id",
    describe_route_tables,
    set_filters,
    route_tables,
    "DescribeRouteTables",
    observe
);

/// The route table holding association `id`, whoever made it.
pub(super) async fn holding_association(
    cx: &Context,
    id: &str,
) -> Result<Vec<Observed>, DriverError> {
    let filter = super::id_filter("association.route-table-association-id", id);
    RouteTable::describe(cx, vec![filter]).await
}

/// The stack's route tables with their associations (the associations'
/// kind reads them there).
pub(super) async fn list(cx: &Context) -> Result<Vec<Observed>, DriverError> {
    ec2_listing::owned::<RouteTable>(cx).await
}

/// A route table as its own kind sees it: the associations are a kind of
/// their own.
fn without_associations(mut o: Observed) -> Observed {
    o.attrs.remove("associations");
    o
}

fn by_destination(v: Option<&Json>) -> BTreeMap<String, Map<String, Json>> {
    v.and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let m = r.as_object()?;
            Some((
                m.get("destination_cidr_block")?.as_str()?.to_string(),
                m.clone(),
            ))
        })
        .collect()
}

/// A route's destination and target on a CreateRoute or ReplaceRoute
/// request: the two take the same fields, on builders of different types.
macro_rules! route_to {
    ($req:expr, $table:expr, $dest:expr, $target:expr) => {
        $req.route_table_id($table)
            .destination_cidr_block($dest)
            .set_gateway_id($target("gateway_id"))
            .set_nat_gateway_id($target("nat_gateway_id"))
    };
}

async fn sync_routes(
    cx: &Context,
    id: &str,
    have: Option<&Json>,
    want: Option<&Json>,
) -> Result<(), DriverError> {
    let client = ec2(cx).await?;
    let have = by_destination(have);
    let want = by_destination(want);
    for dest in have.keys().filter(|d| !want.contains_key(*d)) {
        client
            .delete_route()
            .route_table_id(id)
            .destination_cidr_block(dest)
            .send()
            .await
            .map_err(|e| api_error("DeleteRoute", e))?;
    }
    for (dest, route) in &want {
        let target = |k: &str| route.get(k).and_then(Json::as_str).map(str::to_string);
        match have.get(dest) {
            Some(old) if old == route => {}
            Some(_) => {
                let req = route_to!(client.replace_route(), id, dest, target);
                req.send().await.map_err(|e| api_error("ReplaceRoute", e))?;
            }
            None => {
                let req = route_to!(client.create_route(), id, dest, target);
                req.send().await.map_err(|e| api_error("CreateRoute", e))?;
            }
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Ec2Kind for RouteTable {
    fn schema() -> &'static KindSchema {
        &SCHEMA
    }

    fn shown(o: Observed) -> Observed {
        without_associations(o)
    }

    async fn make(cx: &Context, want: &Desired<'_>) -> Result<String, DriverError> {
        let out = ec2(cx)
            .await?
            .create_route_table()
            .vpc_id(want.required_str("vpc_id")?)
            .tag_specifications(tag_spec(ResourceType::RouteTable, want))
            .send()
            .await
            .map_err(|e| api_error("CreateRouteTable", e))?;
        let id = super::made_id(
            "CreateRouteTable",
            out.route_table().and_then(|t| t.route_table_id()),
        )?;
        sync_routes(cx, &id, None, want.props.get("routes")).await?;
        Ok(id)
    }

    async fn change(cx: &Context, u: Update<'_>) -> Result<(), DriverError> {
        let Update { want, have, .. } = u;
        if u.changes("routes") {
            let (old, new) = (have.attrs.get("routes"), want.props.get("routes"));
            sync_routes(cx, &have.id, old, new).await?;
        }
        Ok(())
    }

    async fn remove(cx: &Context, have: &Observed) -> Result<(), DriverError> {
        let client = ec2(cx).await?;
        let answer = client
            .delete_route_table()
            .route_table_id(&have.id)
            .send()
            .await;
        super::delete_answer(
            "DeleteRouteTable",
            answer,
            &["InvalidRouteTableID.NotFound"],
        )
    }
}
