//! One way the EC2 kinds find their resources: the ones the stack owns by
//! its ownership tags (refresh), one by its id (lookup, adoption, import),
//! and the read after a change. Each kind says how it describes a set of
//! resources by filters; the rest is here.

use aws_sdk_ec2::types::Filter;

use ralph_core::driver::{Context, DriverError, Observed, Owner};

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
    by_id::<K>(cx, id).await?.ok_or_else(|| {
        DriverError::new(format!(
            "{} {id} vanished right after it was changed",
            K::NOUN
        ))
    })
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
