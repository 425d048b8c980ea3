//! The five Compute calls a networking collection is driven by (list, get,
//! insert, patch, delete), each on the collection's typed client and
//! answered as JSON. The collections differ only in their client, their
//! model type, the setter that names one item and whether they live in a
//! region; `collection!` writes the calls from those four facts, so the
//! driver above says what it asks, never how each client spells it.

use serde_json::Value as Json;

use super::SERVICE;
use crate::{call, call_create, call_opt, json, message, GcpClients};
use ralph_core::driver::{Context, DriverError};

/// Where and why a call is made: the clients, the region (ignored by the
/// global collections) and the words naming the call in errors.
pub struct At<'a> {
    pub cx: &'a Context,
    pub g: &'a GcpClients,
    pub region: &'a str,
    pub what: &'a str,
}

/// One collection's calls. A `None` from `get`/`delete` is a 404, from
/// `insert` a 409 (it exists already).
#[async_trait::async_trait]
pub trait Calls: Send + Sync {
    /// One page of the items matching `filter`, from `token`.
    async fn list(&self, at: &At<'_>, filter: &str, token: &str) -> Result<Json, DriverError>;
    async fn get(&self, at: &At<'_>, name: &str) -> Result<Option<Json>, DriverError>;
    async fn insert(&self, at: &At<'_>, body: Json) -> Result<Option<Json>, DriverError>;
    /// `None`: the collection has nothing to change in place.
    async fn patch(&self, at: &At<'_>, name: &str, body: Json)
        -> Result<Option<Json>, DriverError>;
    async fn delete(&self, at: &At<'_>, name: &str) -> Result<Option<Json>, DriverError>;
}

/// A request builder of a regional collection takes the region; a global
/// one's does not.
macro_rules! scoped {
    (regional, $builder:expr, $at:expr) => {
        $builder.set_region($at.region)
    };
    (global, $builder:expr, $at:expr) => {
        $builder
    };
}

/// The patch of a collection that has one, and the answer of one that
/// has none.
macro_rules! patch_call {
    (none, $scope:ident, $client:ident, $model:ident, $set_name:ident, $at:expr, $name:expr, $body:expr) => {{
        let _ = ($at, $name, $body);
        Ok(None)
    }};
    (patch, $scope:ident, $client:ident, $model:ident, $set_name:ident, $at:expr, $name:expr, $body:expr) => {{
        let at = $at;
        let body: google_cloud_compute_v1::model::$model = message(stringify!($model), $body)?;
        let op = call(at.cx, SERVICE, at.what, || {
            scoped!($scope, at.g.$client.patch().set_project(&at.g.project), at)
                .$set_name($name)
                .set_body(body.clone())
                .send()
        })
        .await?;
        Ok(Some(json(&op)))
    }};
}

/// `Calls` for the unit type `$calls` on client field `$client`, whose
/// items are `$model` and named by `$set_name`.
macro_rules! collection {
    ($calls:ident, $client:ident, $model:ident, $set_name:ident, $scope:ident, $patch:ident) => {
        pub struct $calls;

        #[async_trait::async_trait]
        impl Calls for $calls {
            async fn list(
                &self,
                at: &At<'_>,
                filter: &str,
                token: &str,
            ) -> Result<Json, DriverError> {
                let page = call(at.cx, SERVICE, at.what, || {
                    scoped!($scope, at.g.$client.list().set_project(&at.g.project), at)
                        .set_filter(filter)
                        .set_max_results(500u32)
                        .set_page_token(token)
                        .send()
                })
                .await?;
                Ok(json(&page))
            }

            async fn get(&self, at: &At<'_>, name: &str) -> Result<Option<Json>, DriverError> {
                let item = call_opt(at.cx, SERVICE, at.what, || {
                    scoped!($scope, at.g.$client.get().set_project(&at.g.project), at)
                        .$set_name(name)
                        .send()
                })
                .await?;
                Ok(item.map(|v| json(&v)))
            }

            async fn insert(&self, at: &At<'_>, body: Json) -> Result<Option<Json>, DriverError> {
                let body: google_cloud_compute_v1::model::$model =
                    message(stringify!($model), body)?;
                let op = call_create(at.cx, SERVICE, at.what, || {
                    scoped!($scope, at.g.$client.insert().set_project(&at.g.project), at)
                        .set_body(body.clone())
                        .send()
                })
                .await?;
                Ok(op.map(|o| json(&o)))
            }

            async fn patch(
                &self,
                at: &At<'_>,
                name: &str,
                body: Json,
            ) -> Result<Option<Json>, DriverError> {
                patch_call!($patch, $scope, $client, $model, $set_name, at, name, body)
            }

            async fn delete(&self, at: &At<'_>, name: &str) -> Result<Option<Json>, DriverError> {
                let op = call_opt(at.cx, SERVICE, at.what, || {
                    scoped!($scope, at.g.$client.delete().set_project(&at.g.project), at)
                        .$set_name(name)
                        .send()
                })
                .await?;
                Ok(op.map(|o| json(&o)))
            }
        }
    };
}

collection!(Networks, networks, Network, set_network, global, patch);
collection!(
    Subnetworks,
    subnetworks,
    Subnetwork,
    set_subnetwork,
    regional,
    patch
);
collection!(Firewalls, firewalls, Firewall, set_firewall, global, patch);
collection!(Routers, routers, Router, set_router, regional, patch);
collection!(Addresses, addresses, Address, set_address, global, none);
