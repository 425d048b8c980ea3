//! `aws.wafv2_web_acl`: an AWS WAF web ACL in front of a regional load
//! balancer (the ALB of the AWS Load Balancer Controller takes it from the
//! Ingress's `alb.ingress.kubernetes.io/wafv2-acl-arn`). It allows by
//! default and blocks what AWS's managed rule groups match, plus clients
//! that exceed a rate per IP address (the guide's 100 requests a minute).
//!
//! WAF names an ACL by name, scope and id together, and every change
//! carries the lock token of the version it replaces: the state keeps the
//! ARN (which holds all three) and reads the token afresh for each write.

use aws_sdk_wafv2::types::{
    AllowAction, BlockAction, DefaultAction, ManagedRuleGroupStatement, NoneAction, OverrideAction,
    RateBasedStatement, RateBasedStatementAggregateKeyType, Rule, RuleAction, Scope, Statement,
    Tag, VisibilityConfig,
};
use serde_json::Value as Json;

use super::{api_error, observed_with, read_tag_pairs, removed_tag_keys, strings};
use ralph_core::driver::{
    found_again, Context, Delete, DeleteAttempt, Desired, Driver, DriverError, Known, Observed,
    Update,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

/// The rate rule's name, and the prefix the managed groups' rules carry.
const RATE_RULE: &str = "rate-per-ip";

fn acl_name(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    checks::require(ok, || {
        format!("`{s}` is not a web ACL name: 1 to 128 letters, digits, hyphens and underscores")
    })
}

fn scope(v: &Json) -> Result<(), String> {
    match v.as_str() {
        Some("REGIONAL" | "CLOUDFRONT") => Ok(()),
        other => Err(format!(
            "`{}` is not a scope: REGIONAL (a load balancer) or CLOUDFRONT",
            other.unwrap_or_default()
        )),
    }
}

fn rate_limit(v: &Json) -> Result<(), String> {
    match v.as_i64() {
        Some(0) => Ok(()),
        Some(n) if (10..=2_000_000_000).contains(&n) => Ok(()),
        _ => Err(format!(
            "{v} is not a rate limit: 0 (none) or 10 to 2,000,000,000 requests per window"
        )),
    }
}

fn window(v: &Json) -> Result<(), String> {
    match v.as_i64() {
        Some(60 | 120 | 300 | 600) => Ok(()),
        _ => Err(format!(
            "{v} is not an evaluation window WAF offers: 60, 120, 300 or 600 seconds"
        )),
    }
}

static SCHEMA: KindSchema = KindSchema::new("aws.wafv2_web_acl", "wafv2", "An AWS WAF web ACL for a load balancer: AWS's managed rule groups and a rate limit per client address.")
    .fields(&[
        Field::name("the ACL's name, unique in the account and region")
            .check(acl_name),
        Field::new(
            "scope",
            Ty::String,
            "REGIONAL (an ALB) or CLOUDFRONT",
        )
        .default("\"REGIONAL\"")
        .forces_replace()
        .check(scope),
        Field::new("description", Ty::String, "what it protects").default("\"\""),
        Field::new(
            "managed_rule_groups",
            Ty::List(&Ty::String),
            "AWS's managed rule groups to apply, in order (their rules block what they match)",
        )
        .default("[\"AWSManagedRulesCommonRuleSet\", \"AWSManagedRulesKnownBadInputsRuleSet\", \"AWSManagedRulesAmazonIpReputationList\"]"),
        Field::new(
            "rate_limit",
            Ty::Int,
            "block a client address that sends more requests than this within rate_window_seconds (0: no limit)",
        )
        .default("0")
        .check(rate_limit),
        Field::new(
            "rate_window_seconds",
            Ty::Int,
            "the window the rate limit counts over: 60, 120, 300 or 600",
        )
        .default("300")
        .check(window),
        Field::tags(),
    ])
    .attrs(&[
        Attr::string("id", "the ACL's ARN"),
        Attr::string("arn", "the ACL's ARN (the Ingress's alb.ingress.kubernetes.io/wafv2-acl-arn)"),
        Attr::new("capacity", Ty::Int, "the web ACL capacity units its rules use (at most 1,500 without extra charge)"),
    ]);

pub struct WebAcl;

/// (scope, name, id) of an ACL's ARN:
/// `arn:aws:wafv2:REGION:ACCOUNT:regional/webacl/NAME/ID`.
fn parts(arn: &str) -> Result<(Scope, String, String), DriverError> {
    let resource = arn.splitn(6, ':').nth(5).unwrap_or_default();
    let mut p = resource.split('/');
    match (p.next(), p.next(), p.next(), p.next()) {
        (Some(s), Some("webacl"), Some(name), Some(id)) => Ok((
            if s == "global" {
                Scope::Cloudfront
            } else {
                Scope::Regional
            },
            name.to_string(),
            id.to_string(),
        )),
        _ => Err(DriverError::new(format!(
            "`{arn}` is not a WAF web ACL ARN (arn:aws:wafv2:REGION:ACCOUNT:regional/webacl/NAME/ID)"
        ))),
    }
}

fn visibility(metric: &str) -> Result<VisibilityConfig, DriverError> {
    VisibilityConfig::builder()
        .sampled_requests_enabled(true)
        .cloud_watch_metrics_enabled(true)
        .metric_name(metric.chars().take(128).collect::<String>())
        .build()
        .map_err(|e| DriverError::new(format!("the ACL's visibility settings: {e}")))
}

/// The rules the stack asks for: each managed group (its own actions), then
/// the rate rule (block).
fn rules(want: &Desired<'_>) -> Result<Vec<Rule>, DriverError> {
    let bad = |e: aws_sdk_wafv2::error::BuildError| DriverError::new(format!("a WAF rule: {e}"));
    let mut out = Vec::new();
    for (i, group) in strings(want.props.get("managed_rule_groups"))
        .iter()
        .enumerate()
    {
        out.push(
            Rule::builder()
                .name(group)
                .priority(i as i32)
                .statement(
                    Statement::builder()
                        .managed_rule_group_statement(
                            ManagedRuleGroupStatement::builder()
                                .vendor_name("AWS")
                                .name(group)
                                .build()
                                .map_err(bad)?,
                        )
                        .build(),
                )
                .override_action(
                    OverrideAction::builder()
                        .none(NoneAction::builder().build())
                        .build(),
                )
                .visibility_config(visibility(group)?)
                .build()
                .map_err(bad)?,
        );
    }
    let limit = want
        .props
        .get("rate_limit")
        .and_then(Json::as_i64)
        .unwrap_or(0);
    if limit > 0 {
        let window = want
            .props
            .get("rate_window_seconds")
            .and_then(Json::as_i64)
            .unwrap_or(300);
        out.push(
            Rule::builder()
                .name(RATE_RULE)
                .priority(out.len() as i32)
                .statement(
                    Statement::builder()
                        .rate_based_statement(
                            RateBasedStatement::builder()
                                .limit(limit)
                                .evaluation_window_sec(window)
                                .aggregate_key_type(RateBasedStatementAggregateKeyType::Ip)
                                .build()
                                .map_err(bad)?,
                        )
                        .build(),
                )
                .action(
                    RuleAction::builder()
                        .block(BlockAction::builder().build())
                        .build(),
                )
                .visibility_config(visibility(RATE_RULE)?)
                .build()
                .map_err(bad)?,
        );
    }
    Ok(out)
}

fn waf_tags(want: &Desired<'_>) -> Vec<Tag> {
    super::tag_map(want)
        .into_iter()
        .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
        .collect()
}

/// The ACL and the lock token of its current version, or None.
async fn fetch(
    cx: &Context,
    arn: &str,
) -> Result<Option<(aws_sdk_wafv2::types::WebAcl, String)>, DriverError> {
    let (scope, name, id) = parts(arn)?;
    let answer = crate::clients(cx)
        .await?
        .wafv2
        .get_web_acl()
        .scope(scope)
        .name(name)
        .id(id)
        .send()
        .await;
    let Some(out) = super::found("GetWebACL", answer, &["WAFNonexistentItemException"])? else {
        return Ok(None);
    };
    let token = out.lock_token().unwrap_or_default().to_string();
    Ok(out.web_acl.map(|acl| (acl, token)))
}

async fn read_one(cx: &Context, arn: &str) -> Result<Option<Observed>, DriverError> {
    let Some((acl, _)) = fetch(cx, arn).await? else {
        return Ok(None);
    };
    let tags = crate::clients(cx)
        .await?
        .wafv2
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await
        .map_err(|e| api_error("ListTagsForResource", e))?;
    let pairs: Vec<(&str, &str)> = tags
        .tag_info_for_resource()
        .map(|i| i.tag_list())
        .unwrap_or_default()
        .iter()
        .map(|t| (t.key(), t.value()))
        .collect();
    let mut sorted: Vec<&Rule> = acl.rules().iter().collect();
    sorted.sort_by_key(|r| r.priority());
    let mut groups = Vec::new();
    let (mut limit, mut window) = (0, 300);
    for r in sorted {
        let Some(s) = r.statement() else { continue };
        if let Some(m) = s.managed_rule_group_statement() {
            groups.push(Json::String(m.name().to_string()));
        } else if let Some(rb) = s.rate_based_statement() {
            limit = rb.limit();
            window = match rb.evaluation_window_sec() {
                0 => 300,
                w => w,
            };
        }
    }
    Ok(Some(observed_with(
        arn,
        read_tag_pairs(pairs.into_iter()),
        vec![
            ("arn", Json::String(arn.to_string())),
            ("name", Json::String(acl.name().to_string())),
            (
                "scope",
                Json::String(
                    if arn.contains(":global/") {
                        "CLOUDFRONT"
                    } else {
                        "REGIONAL"
                    }
                    .into(),
                ),
            ),
            (
                "description",
                Json::String(acl.description().unwrap_or_default().to_string()),
            ),
            ("managed_rule_groups", Json::Array(groups)),
            ("rate_limit", Json::from(limit)),
            ("rate_window_seconds", Json::from(window)),
            ("capacity", Json::from(acl.capacity())),
        ],
    )))
}

/// An ACL of this name in the scope, by listing (a create that answered
/// that the name is taken: a killed run, or another stack's).
async fn find_by_name(
    cx: &Context,
    scope: Scope,
    name: &str,
) -> Result<Option<String>, DriverError> {
    let waf = &crate::clients(cx).await?.wafv2;
    let mut marker: Option<String> = None;
    loop {
        let out = waf
            .list_web_acls()
            .scope(scope.clone())
            .set_next_marker(marker.clone())
            .limit(100)
            .send()
            .await
            .map_err(|e| api_error("ListWebACLs", e))?;
        if let Some(s) = out.web_acls().iter().find(|s| s.name() == Some(name)) {
            return Ok(s.arn().map(str::to_string));
        }
        match out.next_marker() {
            Some(m) if !m.is_empty() && !out.web_acls().is_empty() => marker = Some(m.to_string()),
            _ => return Ok(None),
        }
    }
}

fn scope_of(want: &Desired<'_>) -> Scope {
    Scope::from(want.str("scope").unwrap_or("REGIONAL"))
}

#[async_trait::async_trait]
impl Driver for WebAcl {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    /// An interrupted create has no ARN to look for: its ACL is found by
    /// name when the next create is refused as a duplicate.
    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        super::read_each(&super::arns(known), |arn| async move {
            read_one(cx, &arn).await
        })
        .await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let name = want.required_str("name")?;
        let description = want.str("description").filter(|d| !d.is_empty());
        let made = crate::clients(cx)
            .await?
            .wafv2
            .create_web_acl()
            .name(name)
            .scope(scope_of(want))
            .set_description(description.map(str::to_string))
            .default_action(
                DefaultAction::builder()
                    .allow(AllowAction::builder().build())
                    .build(),
            )
            .set_rules(Some(rules(want)?))
            .visibility_config(visibility(name)?)
            .set_tags(Some(waf_tags(want)))
            .send()
            .await;
        let arn = match super::made("CreateWebACL", made, "WAFDuplicateItemException")? {
            Some(out) => out
                .summary()
                .and_then(|s| s.arn())
                .unwrap_or_default()
                .to_string(),
            None => {
                let arn = find_by_name(cx, scope_of(want), name)
                    .await?
                    .unwrap_or_default();
                let what = format!("a web ACL named {name} exists");
                super::ours_or_refuse(read_one(cx, &arn).await?.as_ref(), want, &what, &arn)?;
                arn
            }
        };
        found_again(read_one(cx, &arn).await?, "web ACL", &arn)
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let (want, have, changed) = (u.want, u.have, u.changed);
        let waf = &crate::clients(cx).await?.wafv2;
        if changed.iter().any(|c| c != "tags") {
            let (scope, name, id) = parts(&have.id)?;
            let Some((_, token)) = fetch(cx, &have.id).await? else {
                return Err(DriverError::new(format!("web ACL {} vanished", have.id)));
            };
            let description = want.str("description").filter(|d| !d.is_empty());
            waf.update_web_acl()
                .scope(scope)
                .name(&name)
                .id(id)
                .lock_token(token)
                .set_description(description.map(str::to_string))
                .default_action(
                    DefaultAction::builder()
                        .allow(AllowAction::builder().build())
                        .build(),
                )
                .set_rules(Some(rules(want)?))
                .visibility_config(visibility(&name)?)
                .send()
                .await
                .map_err(|e| api_error("UpdateWebACL", e))?;
        }
        if u.changes("tags") {
            let removed = removed_tag_keys(have, want);
            let untag = waf.untag_resource().resource_arn(&have.id);
            let tag = waf.tag_resource().resource_arn(&have.id);
            super::retag(
                &removed,
                (
                    "UntagResource",
                    untag.set_tag_keys(Some(removed.clone())).send(),
                ),
                ("TagResource", tag.set_tags(Some(waf_tags(want))).send()),
            )
            .await?;
        }
        found_again(read_one(cx, &have.id).await?, "web ACL", &have.id)
    }

    /// An ACL a load balancer still uses cannot be deleted: the controller
    /// lets it go when the Ingress goes, so the delete is retried until then.
    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let waf = &crate::clients(cx).await?.wafv2;
        let (scope, name, id) = parts(&d.have.id)?;
        ralph_core::driver::delete_once_released(
            cx,
            d,
            "the load balancers that use the web ACL",
            || async {
                let Some((_, token)) = fetch(cx, &d.have.id).await? else {
                    return Ok(DeleteAttempt::Gone);
                };
                let answer = waf
                    .delete_web_acl()
                    .scope(scope.clone())
                    .name(&name)
                    .id(&id)
                    .lock_token(token)
                    .send()
                    .await;
                super::delete_attempt(
                    "DeleteWebACL",
                    answer,
                    &["WAFNonexistentItemException"],
                    // Still associated, or changed since the token was read.
                    &["WAFAssociatedItemException", "WAFOptimisticLockException"],
                )
            },
        )
        .await
    }
}
