//! What the EC2 kinds share: how they find their resources (the ones the
//! stack owns by its ownership tags, one by its id for lookup, adoption and
//! import, the read after a change) and their `Driver` (`Ec2`). Each kind
//! says how it describes a set of resources by filters and how it makes,
//! changes and deletes one; the rest is here.

use std::path::Path;

use aws_sdk_ec2::types::Filter;
use serde_json::{Map, Value as Json};

use ralph_core::driver::{
    Context, Delete, Desired, Driver, DriverError, Known, Observed, Owner, Update,
};
use ralph_core::model::kinds::KindSchema;

/// An EC2 kind whose Describe call takes filters.
#[async_trait::async_trait]
pub trait Listed {
    /// What a resource of the kind is called in messages ("subnet").
    const NOUN: &'static str;
    /// The filter naming one resource by its id ("subnet-id").
    const ID_FILTER: &'static str;

    /// Every resource that matches all of `filters`, observed.
    async fn describe(cx: &Context, filters: Vec<Filter>) -> Result<Vec<Observed>, DriverError>;

    /// The filters that find what the stack owns: its ownership tags (a
    /// kind may leave out states that count as gone).
    fn owned_filters(owner: &Owner) -> Vec<Filter> {
        super::owner_filters(owner)
    }
}

/// What the stack and environment own, by their tags.
pub async fn owned<K: Listed>(cx: &Context) -> Result<Vec<Observed>, DriverError> {
    K::describe(cx, K::owned_filters(&cx.owner)).await
}

/// One resource by its id, if it exists.
pub async fn by_id<K: Listed>(cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
    let found = K::describe(cx, vec![super::id_filter(K::ID_FILTER, id)]).await?;
    Ok(found.into_iter().find(|o| o.id == id))
}

/// The resource just created or changed.
pub async fn read_back<K: Listed>(cx: &Context, id: &str) -> Result<Observed, DriverError> {
    ralph_core::driver::found_again(by_id::<K>(cx, id).await?, K::NOUN, id)
}

/// `Listed` for a kind whose Describe call pages: the kind, its noun and
/// id filter, then the call, the setter of its filters, the accessor of a
/// page's items, the operation's name for errors, and the function observing
/// one item (`None` skips it).
macro_rules! paged_listing {
    ($kind:ty, $noun:literal, $id_filter:literal,
     $describe:ident, $set_filters:ident, $items:ident, $operation:literal, $observe:expr) => {
        #[async_trait::async_trait]
        impl $crate::ec2_listing::Listed for $kind {
            const NOUN: &'static str = $noun;
            const ID_FILTER: &'static str = $id_filter;

            async fn describe(
                cx: &ralph_core::driver::Context,
                filters: Vec<aws_sdk_ec2::types::Filter>,
            ) -> Result<Vec<ralph_core::driver::Observed>, ralph_core::driver::DriverError> {
                let mut pages = $crate::ec2(cx)
                    .await?
                    .$describe()
                    .$set_filters(Some(filters))
                    .into_paginator()
                    .send();
                let mut out = Vec::new();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| $crate::api_error($operation, e))?;
                    out.extend(page.$items().iter().filter_map($observe));
                }
                Ok(out)
            }
        }
    };
}
pub(crate) use paged_listing;

/// An EC2 kind as a driver sees it: how it is listed (`Listed`), made,
/// changed besides its tags, and deleted. [`Ec2`] is its `Driver`: the
/// listing by ownership tags, the lookup by id, the tag sync and the read
/// after every change are the same for every EC2 kind, and written once.
#[async_trait::async_trait]
pub trait Ec2Kind: Listed + Send + Sync + 'static {
    fn schema() -> &'static KindSchema;
    /// How long a create typically takes on the real cloud, in seconds.
    const TYPICAL_SECONDS: u64 = 1;

    /// Makes it, tagged from the start, and answers its id.
    async fn make(cx: &Context, want: &Desired<'_>) -> Result<String, DriverError>;

    /// Changes the fields that differ other than the tags, in place.
    async fn change(_cx: &Context, _u: Update<'_>) -> Result<(), DriverError> {
        Ok(())
    }

    /// Deletes it; one that is gone already counts as deleted.
    async fn remove(cx: &Context, have: &Observed) -> Result<(), DriverError>;

    /// Whether a listed resource is still there for the stack (a NAT
    /// gateway being deleted is not).
    fn present(_o: &Observed) -> bool {
        true
    }

    /// The resource as this kind shows it (a route table's associations
    /// are a kind of their own).
    fn shown(o: Observed) -> Observed {
        o
    }

    /// The desired properties in the form EC2 reports them.
    fn normalize(_props: &mut Map<String, Json>) -> Result<(), String> {
        Ok(())
    }
}

/// The `Driver` of EC2 kind `K`.
pub struct Ec2<K>(pub K);

#[async_trait::async_trait]
impl<K: Ec2Kind> Driver for Ec2<K> {
    fn schema(&self) -> &'static KindSchema {
        K::schema()
    }

    fn typical_seconds(&self) -> u64 {
        K::TYPICAL_SECONDS
    }

    fn normalize(&self, _base: &Path, props: &mut Map<String, Json>) -> Result<(), String> {
        K::normalize(props)
    }

    async fn refresh(&self, cx: &Context, _known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let found = owned::<K>(cx).await?;
        Ok(found.into_iter().filter(K::present).map(K::shown).collect())
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        Ok(by_id::<K>(cx, id).await?.filter(K::present).map(K::shown))
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let id = K::make(cx, want).await?;
        Ok(K::shown(read_back::<K>(cx, &id).await?))
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        K::change(cx, u).await?;
        if u.changes("tags") {
            super::sync_tags(cx, &have.id, have, want).await?;
        }
        Ok(K::shown(read_back::<K>(cx, &have.id).await?))
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        K::remove(cx, d.have).await
    }
}
