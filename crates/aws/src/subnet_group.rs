//! `aws.rds_subnet_group` and `aws.elasticache_subnet_group`: the subnets a
//! database or a cache may use. One kind implementation over the two
//! services' calls, which differ only in their names ([`Calls`]); tags go
//! through each service's ARN tagging (`arn_tags`).

use serde_json::Value as Json;

use super::arn_tags::{self, ArnService};
use super::{observed_with, read_each, strings};
use ralph_core::driver::{
    found_again, Context, Delete, Desired, Driver, DriverError, Known, Observed, Update,
};
use ralph_core::model::kinds::KindSchema;

/// What a subnet group is in its service: its ARN, description and subnets.
pub struct Found {
    pub arn: String,
    pub description: Option<String>,
    pub subnet_ids: Vec<String>,
}

/// A service's subnet-group calls.
#[async_trait::async_trait]
pub trait Calls: Send + Sync {
    fn schema(&self) -> &'static KindSchema;
    fn arn_service(&self) -> ArnService;
    /// The group called `name`; `None` when there is none.
    async fn describe(&self, cx: &Context, name: &str) -> Result<Option<Found>, DriverError>;
    /// Creates the group with the ownership and the stack's tags.
    async fn create(
        &self,
        cx: &Context,
        name: &str,
        description: &str,
        subnet_ids: Vec<String>,
        want: &Desired<'_>,
    ) -> Result<(), DriverError>;
    async fn modify(
        &self,
        cx: &Context,
        name: &str,
        description: &str,
        subnet_ids: Vec<String>,
    ) -> Result<(), DriverError>;
    /// Deletes it; one already gone is fine.
    async fn delete(&self, cx: &Context, name: &str) -> Result<(), DriverError>;
}

/// A service's [`Calls`], from the names its SDK gives the same things: its
/// client, the operations' noun (`DBSubnetGroup`), the not-found code, the
/// five calls, the list the describe answers, the group's ARN getter, and
/// the name and description fields (each a setter on the requests and, for
/// the description, a getter on the group).
macro_rules! subnet_group_calls {
    ($ty:ident {
        schema: $schema:expr,
        arn: $arn:expr,
        client: $client:ident,
        tags: $tags:path,
        noun: $noun:literal,
        missing: $missing:literal,
        describe: $describe:ident,
        groups: $groups:ident,
        group_arn: $group_arn:ident,
        name: $name:ident,
        description: $description:ident,
        create: $create:ident,
        modify: $modify:ident,
        delete: $delete:ident $(,)?
    }) => {
        pub struct $ty;

        #[async_trait::async_trait]
        impl $crate::subnet_group::Calls for $ty {
            fn schema(&self) -> &'static ralph_core::model::kinds::KindSchema {
                &$schema
            }

            fn arn_service(&self) -> $crate::arn_tags::ArnService {
                $arn
            }

            async fn describe(
                &self,
                cx: &ralph_core::driver::Context,
                name: &str,
            ) -> Result<Option<$crate::subnet_group::Found>, ralph_core::driver::DriverError> {
                let client = &$crate::clients(cx).await?.$client;
                let answer = client.$describe().$name(name).send().await;
                let op = concat!("Describe", $noun, "s");
                let Some(out) = $crate::found(op, answer, &[$missing])? else {
                    return Ok(None);
                };
                Ok(out.$groups().first().map(|g| $crate::subnet_group::Found {
                    arn: g.$group_arn().unwrap_or_default().to_string(),
                    description: g.$description().map(str::to_string),
                    subnet_ids: g
                        .subnets()
                        .iter()
                        .filter_map(|s| s.subnet_identifier().map(str::to_string))
                        .collect(),
                }))
            }

            async fn create(
                &self,
                cx: &ralph_core::driver::Context,
                name: &str,
                description: &str,
                subnet_ids: Vec<String>,
                want: &ralph_core::driver::Desired<'_>,
            ) -> Result<(), ralph_core::driver::DriverError> {
                let client = &$crate::clients(cx).await?.$client;
                client
                    .$create()
                    .$name(name)
                    .$description(description)
                    .set_subnet_ids(Some(subnet_ids))
                    .set_tags(Some($tags(want)))
                    .send()
                    .await
                    .map_err(|e| $crate::api_error(concat!("Create", $noun), e))?;
                Ok(())
            }

            async fn modify(
                &self,
                cx: &ralph_core::driver::Context,
                name: &str,
                description: &str,
                subnet_ids: Vec<String>,
            ) -> Result<(), ralph_core::driver::DriverError> {
                let client = &$crate::clients(cx).await?.$client;
                client
                    .$modify()
                    .$name(name)
                    .$description(description)
                    .set_subnet_ids(Some(subnet_ids))
                    .send()
                    .await
                    .map_err(|e| $crate::api_error(concat!("Modify", $noun), e))?;
                Ok(())
            }

            async fn delete(
                &self,
                cx: &ralph_core::driver::Context,
                name: &str,
            ) -> Result<(), ralph_core::driver::DriverError> {
                let client = &$crate::clients(cx).await?.$client;
                $crate::delete_answer(
                    concat!("Delete", $noun),
                    client.$delete().$name(name).send().await,
                    &[$missing],
                )
            }
        }
    };
}
pub(crate) use subnet_group_calls;

/// The subnet-group kind of one service.
pub struct SubnetGroup(pub &'static dyn Calls);

const DESCRIPTION: &str = "Managed by ralph-deploy";

impl SubnetGroup {
    async fn read(&self, cx: &Context, name: &str) -> Result<Option<Observed>, DriverError> {
        let Some(g) = self.0.describe(cx, name).await? else {
            return Ok(None);
        };
        let subnets = g.subnet_ids.into_iter().map(Json::String).collect();
        Ok(Some(observed_with(
            name,
            arn_tags::read(cx, self.0.arn_service(), &g.arn).await?,
            vec![
                ("name", Json::String(name.to_string())),
                ("arn", Json::String(g.arn)),
                (
                    "description",
                    g.description.map(Json::String).unwrap_or(Json::Null),
                ),
                ("subnet_ids", Json::Array(subnets)),
            ],
        )))
    }

    async fn read_back(&self, cx: &Context, name: &str) -> Result<Observed, DriverError> {
        found_again(self.read(cx, name).await?, "subnet group", &name)
    }
}

#[async_trait::async_trait]
impl Driver for SubnetGroup {
    fn schema(&self) -> &'static KindSchema {
        self.0.schema()
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        read_each(known, |id| async move { self.read(cx, &id).await }).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let name = want.required_str("name")?;
        let description = want.str("description").unwrap_or(DESCRIPTION);
        let subnets = strings(want.props.get("subnet_ids"));
        self.0.create(cx, name, description, subnets, want).await?;
        self.read_back(cx, name).await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let (want, have, changed) = (u.want, u.have, u.changed);
        if changed
            .iter()
            .any(|c| c == "description" || c == "subnet_ids")
        {
            let description = want.str("description").unwrap_or(DESCRIPTION);
            let subnets = strings(want.props.get("subnet_ids"));
            self.0.modify(cx, &have.id, description, subnets).await?;
        }
        if u.changes("tags") {
            let arn = crate::arn_of(have);
            arn_tags::sync(cx, self.0.arn_service(), &arn, have, want).await?;
        }
        self.read_back(cx, &have.id).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        self.0.delete(cx, &d.have.id).await
    }
}
