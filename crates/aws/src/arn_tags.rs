//! Tagging by ARN, the style RDS, ElastiCache and EKS share: read a
//! resource's tags by its ARN, and bring them to what the stack wants
//! (remove the keys no longer wanted, then add or overwrite the rest, the
//! ownership tags included). EC2's style (resource ids, CreateTags and
//! DeleteTags) is `super::sync_tags`.

use serde_json::Value as Json;

use super::{api_error, read_tag_pairs, removed_tag_keys, tag_map};
use ralph_core::driver::{Context, Desired, DriverError, Observed, Owner};

/// The services that tag by ARN.
#[derive(Debug, Clone, Copy)]
pub enum ArnService {
    Rds,
    ElastiCache,
    Eks,
}

/// The stack's tags and the ownership tags as a service's own `Tag` type
/// (RDS and ElastiCache each have one, built alike).
macro_rules! service_tags {
    ($tag:ty, $want:expr) => {
        tag_map($want)
            .into_iter()
            .map(|(k, v)| <$tag>::builder().key(k).value(v).build())
            .collect()
    };
}

/// The tags a create sends to RDS: the stack's and the ownership tags.
pub fn rds_tags(want: &Desired<'_>) -> Vec<aws_sdk_rds::types::Tag> {
    service_tags!(aws_sdk_rds::types::Tag, want)
}

/// The same for ElastiCache.
pub fn elasticache_tags(want: &Desired<'_>) -> Vec<aws_sdk_elasticache::types::Tag> {
    service_tags!(aws_sdk_elasticache::types::Tag, want)
}

/// RDS and ElastiCache name the resource `ResourceName` and share their
/// tag calls' names and shapes, in types of their own: their pairs...
macro_rules! named_pairs {
    ($client:expr, $arn:expr) => {
        $client
            .list_tags_for_resource()
            .resource_name($arn)
            .send()
            .await
            .map_err(|e| api_error("ListTagsForResource", e))?
            .tag_list()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect()
    };
}

/// (address, owner, user tags) of the resource at `arn`.
pub async fn read(
    cx: &Context,
    service: ArnService,
    arn: &str,
) -> Result<(Option<String>, Option<Owner>, Json), DriverError> {
    let aws = crate::clients(cx).await?;
    let pairs: Vec<(String, String)> = match service {
        ArnService::Rds => named_pairs!(aws.rds, arn),
        ArnService::ElastiCache => named_pairs!(aws.elasticache, arn),
        ArnService::Eks => aws
            .eks
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .map_err(|e| api_error("ListTagsForResource", e))?
            .tags()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    };
    Ok(read_tag_pairs(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
}

/// Brings the tags of the resource at `arn` from `have` to `want`.
pub async fn sync(
    cx: &Context,
    service: ArnService,
    arn: &str,
    have: &Observed,
    want: &Desired<'_>,
) -> Result<(), DriverError> {
    let aws = crate::clients(cx).await?;
    let removed = removed_tag_keys(have, want);
    let keys = Some(removed.clone());
    // RDS and ElastiCache name their calls alike and the resource by its
    // `ResourceName`, in types of their own.
    macro_rules! by_name {
        ($client:expr, $tags:expr) => {{
            let untag = $client.remove_tags_from_resource().resource_name(arn);
            let tag = $client.add_tags_to_resource().resource_name(arn);
            super::retag(
                &removed,
                ("RemoveTagsFromResource", untag.set_tag_keys(keys).send()),
                ("AddTagsToResource", tag.set_tags(Some($tags)).send()),
            )
            .await
        }};
    }
    match service {
        ArnService::Rds => by_name!(aws.rds, rds_tags(want)),
        ArnService::ElastiCache => by_name!(aws.elasticache, elasticache_tags(want)),
        ArnService::Eks => {
            let untag_call = aws.eks.untag_resource().resource_arn(arn);
            let tag_call = aws.eks.tag_resource().resource_arn(arn);
            let tags = tag_map(want).into_iter().collect();
            super::retag(
                &removed,
                ("UntagResource", untag_call.set_tag_keys(keys).send()),
                ("TagResource", tag_call.set_tags(Some(tags)).send()),
            )
            .await
        }
    }
}
