//! `gcp.security_policy`: a Cloud Armor backend security policy, the web
//! application firewall in front of GKE's external Application Load
//! Balancer. The orchestrator's Ingress attaches it through a BackendConfig
//! (`security_policy`), so GKE's controller sets it on the backend service
//! it makes.
//!
//! The policy's rules are the stack's, at fixed priorities:
//! - 1000 + i: Google's preconfigured WAF rule set i (`sqli-v33-stable`, ...),
//!   denying with 403;
//! - 2000: the rate limit per client address (action `throttle`, over the
//!   limit 429). It comes after the WAF rules because a throttle rule ends
//!   the evaluation of a conforming request (it is allowed), so nothing
//!   after it would be asked;
//! - 2147483647: the default rule (allow), which every policy has.
//!
//! A rule at any other priority (one added by hand) shows as a difference
//! and is removed by the next apply. Rules change one by one (addRule,
//! patchRule, removeRule: `patch` never touches them); the description and
//! Layer 7 DDoS defense through `patch` with the fingerprint read just
//! before. Ownership is a marker in the description, as for the other
//! Compute kinds, which have no labels to list by.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value as Json};

use super::compute::{relative, rfc1035, wait_op};
use super::{
    call, call_create, call_opt, describe, description_filter, from_description, json, message,
    observed, GcpClients,
};
use ralph_core::driver::{
    found_again, Context, Delete, DeleteAttempt, Desired, Driver, DriverError, Known, Observed,
    Update,
};
use ralph_core::model::kinds::{Attr, Field, KindSchema, Ty};

const SERVICE: &str = "compute";
const OP_TIMEOUT: Duration = Duration::from_secs(600);
const WAF_PRIORITY: i64 = 1000;
const RATE_PRIORITY: i64 = 2000;
const DEFAULT_PRIORITY: i64 = 2_147_483_647;

/// Google's preconfigured WAF rule sets (ModSecurity CRS 3.3 and 3.0, and
/// the CVE and JSON-SQLi canaries), as `evaluatePreconfiguredWaf` names them.
const WAF_SETS: &[&str] = &[
    "sqli-v33-stable",
    "xss-v33-stable",
    "lfi-v33-stable",
    "rfi-v33-stable",
    "rce-v33-stable",
    "methodenforcement-v33-stable",
    "scannerdetection-v33-stable",
    "protocolattack-v33-stable",
    "php-v33-stable",
    "sessionfixation-v33-stable",
    "java-v33-stable",
    "nodejs-v33-stable",
    "sqli-v33-canary",
    "xss-v33-canary",
    "lfi-v33-canary",
    "rfi-v33-canary",
    "rce-v33-canary",
    "methodenforcement-v33-canary",
    "scannerdetection-v33-canary",
    "protocolattack-v33-canary",
    "php-v33-canary",
    "sessionfixation-v33-canary",
    "java-v33-canary",
    "nodejs-v33-canary",
    "sqli-stable",
    "xss-stable",
    "lfi-stable",
    "rfi-stable",
    "rce-stable",
    "methodenforcement-stable",
    "scannerdetection-stable",
    "protocolattack-stable",
    "php-stable",
    "sessionfixation-stable",
    "cve-canary",
    "json-sqli-canary",
];

/// The rate limit's windows Cloud Armor takes, in seconds.
const WINDOWS: &[i64] = &[
    10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, 3600,
];

fn waf_sets(v: &Json) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in v.as_array().into_iter().flatten().enumerate() {
        let s = s.as_str().unwrap_or_default();
        if !WAF_SETS.contains(&s) {
            return Err(format!(
                "entry {}: `{s}` is not one of Cloud Armor's preconfigured WAF rule sets (such as sqli-v33-stable, xss-v33-stable, lfi-v33-stable, rce-v33-stable, scannerdetection-v33-stable, protocolattack-v33-stable)",
                i + 1
            ));
        }
        if !seen.insert(s) {
            return Err(format!("entry {}: `{s}` is named twice", i + 1));
        }
    }
    if seen.len() > (RATE_PRIORITY - WAF_PRIORITY) as usize {
        return Err("too many rule sets".into());
    }
    Ok(())
}

fn window(v: &Json) -> Result<(), String> {
    ralph_core::model::kinds::checks::one_of(v, WINDOWS, "a window Cloud Armor takes", "seconds")
}

static SCHEMA: KindSchema = KindSchema::new("gcp.security_policy", SERVICE, "A Cloud Armor security policy for the backends of GKE's load balancer: Google's preconfigured WAF rules (each denying with 403), a rate limit per client address (429 over it) and Layer 7 DDoS defense. The orchestrator attaches it with `security_policy`.")
    .fields(&[
        Field::name("the policy's name").check(rfc1035),
        Field::new("description", Ty::String, "what it is for").default("\"\""),
        Field::new("preconfigured_waf", Ty::List(&Ty::String), "Google's preconfigured WAF rule sets to deny, in order (such as sqli-v33-stable, xss-v33-stable, lfi-v33-stable, rce-v33-stable, scannerdetection-v33-stable, protocolattack-v33-stable)").default("[]").check(waf_sets),
        Field::new("rate_limit", Ty::Int, "requests one client address may make per window before it is answered 429; 0: no rate limit").default("0").check(ralph_core::model::kinds::checks::range::<0, 1_000_000>),
        Field::new("rate_window_seconds", Ty::Int, "the rate limit's window: 10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700 or 3600 seconds").default("60").check(window),
        Field::new("adaptive_protection", Ty::Bool, "Layer 7 DDoS defense (Adaptive Protection): Google learns the traffic and proposes rules against an attack").default("true"),
    ])
    .attrs(&[
        Attr::string("id", "the policy's path, projects/P/global/securityPolicies/NAME"),
        Attr::string("self_link", "the policy's full URL"),
    ])
    .name_field("name");

pub struct SecurityPolicy;

/// Every client address: the match of the rate rule and the default rule.
fn everyone() -> Json {
    json!({"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}})
}

/// The rules the properties ask for, by priority (the default rule too).
fn rules(p: &Map<String, Json>) -> BTreeMap<i64, Json> {
    let mut out = BTreeMap::new();
    for (i, set) in p
        .get("preconfigured_waf")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .enumerate()
    {
        let priority = WAF_PRIORITY + i as i64;
        out.insert(
            priority,
            json!({
                "priority": priority,
                "description": format!("preconfigured WAF rules {set}"),
                "action": "deny(403)",
                "match": {"expr": {"expression": format!("evaluatePreconfiguredWaf('{set}')")}},
            }),
        );
    }
    let limit = p.get("rate_limit").and_then(Json::as_i64).unwrap_or(0);
    if limit > 0 {
        out.insert(
            RATE_PRIORITY,
            json!({
                "priority": RATE_PRIORITY,
                "description": "rate limit per client address",
                "action": "throttle",
                "match": everyone(),
                "rateLimitOptions": {
                    "conformAction": "allow",
                    "exceedAction": "deny(429)",
                    "enforceOnKey": "IP",
                    "rateLimitThreshold": {
                        "count": limit,
                        "intervalSec": p.get("rate_window_seconds").and_then(Json::as_i64).unwrap_or(60),
                    },
                },
            }),
        );
    }
    out.insert(
        DEFAULT_PRIORITY,
        json!({
            "priority": DEFAULT_PRIORITY,
            "description": "default rule",
            "action": "allow",
            "match": everyone(),
        }),
    );
    out
}

/// Whether everything `want` sets is in `have` with the same value (Google
/// adds fields of its own to what it stores; numbers may come back as
/// strings).
fn covers(have: &Json, want: &Json) -> bool {
    match (have, want) {
        (Json::Object(h), Json::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| covers(hv, v))),
        (Json::Array(h), Json::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(a, b)| covers(a, b))
        }
        (Json::String(h), Json::Number(w)) => h == &w.to_string(),
        _ => have == want,
    }
}

fn priority_of(rule: &Json) -> Option<i64> {
    match rule.get("priority")? {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The rule set a preconfigured WAF rule evaluates.
fn waf_set(rule: &Json) -> Option<String> {
    let e = rule.pointer("/match/expr/expression")?.as_str()?;
    let inner = e
        .trim()
        .strip_prefix("evaluatePreconfiguredWaf(")?
        .strip_suffix(')')?;
    let first = inner.split(',').next()?.trim();
    Some(first.trim_matches(|c| c == '\'' || c == '"').to_string())
}

fn id_of(g: &GcpClients, name: &str) -> String {
    format!("projects/{}/global/securityPolicies/{name}", g.project)
}

fn name_of(id: &str) -> &str {
    super::short_name(id)
}

impl SecurityPolicy {
    /// The properties and attributes of an answer. A rule the stack does
    /// not write (a hand-added one, or ours at another priority) shows in
    /// `preconfigured_waf` as `unmanaged rule at priority N`, so that the
    /// plan shows it and the apply removes it.
    fn observe(v: &Json) -> Option<Observed> {
        let link = v.get("selfLink")?.as_str()?;
        let id = relative(link);
        let (owner, address, description) = from_description(
            v.get("description")
                .and_then(Json::as_str)
                .unwrap_or_default(),
        );
        let mut by_priority: Vec<(i64, &Json)> = v
            .get("rules")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| Some((priority_of(r)?, r)))
            .collect();
        by_priority.sort_by_key(|(p, _)| *p);
        let mut waf = Vec::new();
        let (mut limit, mut window) = (json!(0), json!(60));
        for (p, r) in by_priority {
            let action = r.get("action").and_then(Json::as_str).unwrap_or_default();
            if p == DEFAULT_PRIORITY && action == "allow" {
                continue;
            }
            if p == RATE_PRIORITY && action == "throttle" {
                let t = r.pointer("/rateLimitOptions/rateLimitThreshold");
                let num = |k: &str| {
                    t.and_then(|t| t.get(k))
                        .and_then(|n| n.as_i64().or_else(|| n.as_str()?.parse().ok()))
                        .map(Json::from)
                };
                limit = num("count").unwrap_or(json!(0));
                window = num("intervalSec").unwrap_or(json!(60));
                continue;
            }
            match waf_set(r) {
                Some(set)
                    if (WAF_PRIORITY..RATE_PRIORITY).contains(&p) && action == "deny(403)" =>
                {
                    waf.push(Json::String(set))
                }
                _ => waf.push(Json::String(format!("unmanaged rule at priority {p}"))),
            }
        }
        let adaptive = v
            .pointer("/adaptiveProtectionConfig/layer7DdosDefenseConfig/enable")
            .and_then(Json::as_bool)
            .unwrap_or(false);
        Some(observed(
            id.clone(),
            owner,
            address,
            vec![
                ("name", v.get("name").cloned().unwrap_or(Json::Null)),
                ("description", Json::String(description)),
                ("preconfigured_waf", Json::Array(waf)),
                ("rate_limit", limit),
                ("rate_window_seconds", window),
                ("adaptive_protection", json!(adaptive)),
                ("id", Json::String(id)),
                ("self_link", Json::String(link.to_string())),
            ],
        ))
    }

    async fn read(cx: &Context, g: &GcpClients, name: &str) -> Result<Option<Json>, DriverError> {
        Ok(call_opt(
            cx,
            SERVICE,
            &format!("reading security policy {name}"),
            || {
                g.security_policies
                    .get()
                    .set_project(&g.project)
                    .set_security_policy(name)
                    .send()
            },
        )
        .await?
        .map(|v| json(&v)))
    }

    async fn read_back(cx: &Context, g: &GcpClients, id: &str) -> Result<Observed, DriverError> {
        let found = Self::read(cx, g, name_of(id)).await?;
        found_again(
            found.as_ref().and_then(Self::observe),
            "security policy",
            id,
        )
    }

    fn adaptive(p: &Map<String, Json>) -> Json {
        json!({"layer7DdosDefenseConfig": {
            "enable": p.get("adaptive_protection").and_then(Json::as_bool).unwrap_or(true)
        }})
    }

    /// Makes the policy's rules the wanted ones, one call per rule that
    /// differs: removed first (a priority freed), then changed, then added.
    async fn sync_rules(
        cx: &Context,
        g: &GcpClients,
        address: &str,
        name: &str,
        have: &Json,
        want: &BTreeMap<i64, Json>,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        let current: BTreeMap<i64, &Json> = have
            .get("rules")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| Some((priority_of(r)?, r)))
            .collect();
        for p in current.keys().filter(|p| !want.contains_key(p)) {
            let what = format!("removing rule {p} of security policy {name}");
            let op = json(
                &call(cx, SERVICE, &what, || {
                    g.security_policies
                        .remove_rule()
                        .set_project(&g.project)
                        .set_security_policy(name)
                        .set_priority(*p as i32)
                        .send()
                })
                .await?,
            );
            wait_op(cx, g, address, &op, timeout, "security policy rule").await?;
        }
        for (p, rule) in want {
            let what = format!("writing rule {p} of security policy {name}");
            let body: google_cloud_compute_v1::model::SecurityPolicyRule =
                message("security policy rule", rule.clone())?;
            let op = match current.get(p) {
                Some(h) if covers(h, rule) => continue,
                Some(_) => {
                    call(cx, SERVICE, &what, || {
                        g.security_policies
                            .patch_rule()
                            .set_project(&g.project)
                            .set_security_policy(name)
                            .set_priority(*p as i32)
                            .set_body(body.clone())
                            .send()
                    })
                    .await?
                }
                None => {
                    call(cx, SERVICE, &what, || {
                        g.security_policies
                            .add_rule()
                            .set_project(&g.project)
                            .set_security_policy(name)
                            .set_body(body.clone())
                            .send()
                    })
                    .await?
                }
            };
            wait_op(cx, g, address, &json(&op), timeout, "security policy rule").await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Driver for SecurityPolicy {
    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    fn typical_seconds(&self) -> u64 {
        15
    }

    async fn refresh(&self, cx: &Context, _known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let g = crate::clients(cx).await?;
        let filter = description_filter(&cx.owner);
        crate::every_page(|token| {
            let filter = &filter;
            async move {
                let page = json(
                    &call(cx, SERVICE, "listing security policies", || {
                        g.security_policies
                            .list()
                            .set_project(&g.project)
                            .set_filter(filter)
                            .set_max_results(500u32)
                            .set_page_token(&token)
                            .send()
                    })
                    .await?,
                );
                Ok(crate::compute::items_of(&page, Self::observe))
            }
        })
        .await
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        let g = crate::clients(cx).await?;
        Ok(Self::read(cx, g, name_of(id))
            .await?
            .as_ref()
            .and_then(Self::observe))
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let g = crate::clients(cx).await?;
        let name = want.str("name").unwrap_or_default();
        let id = id_of(g, name);
        let wanted = rules(want.props);
        let body: google_cloud_compute_v1::model::SecurityPolicy = message(
            "security policy",
            json!({
                "name": name,
                "description": describe(&cx.owner, want.address, want.str("description").unwrap_or_default()),
                "type": "CLOUD_ARMOR",
                "rules": wanted.values().collect::<Vec<_>>(),
                "adaptiveProtectionConfig": Self::adaptive(want.props),
            }),
        )?;
        let timeout = want.timeouts.create_or(OP_TIMEOUT);
        let op = call_create(cx, SERVICE, &format!("creating {}", want.address), || {
            g.security_policies
                .insert()
                .set_project(&g.project)
                .set_body(body.clone())
                .send()
        })
        .await?;
        match op {
            Some(op) => {
                wait_op(cx, g, want.address, &json(&op), timeout, "security policy").await?;
                Self::read_back(cx, g, &id).await
            }
            None => {
                // A killed run's policy, or another's: taken over only if
                // its description says it is this resource, then given the
                // wanted rules.
                let found = cx
                    .wait_until(
                        want.address,
                        &format!("the existing {id} to be readable"),
                        timeout,
                        || async { Ok((Self::read(cx, g, name).await?, "PENDING".to_string())) },
                    )
                    .await?;
                super::take_over(cx, want.address, &id, Self::observe(&found))?;
                Self::sync_rules(cx, g, want.address, name, &found, &wanted, timeout).await?;
                Self::read_back(cx, g, &id).await
            }
        }
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let (want, have, changed) = (u.want, u.have, u.changed);
        let g = crate::clients(cx).await?;
        let name = name_of(&have.id).to_string();
        let timeout = want.timeouts.update_or(OP_TIMEOUT);
        let current = Self::read(cx, g, &name)
            .await?
            .ok_or_else(|| DriverError::new(format!("{} no longer exists", have.id)))?;
        if changed
            .iter()
            .any(|c| c == "description" || c == "adaptive_protection")
        {
            let body: google_cloud_compute_v1::model::SecurityPolicy = message(
                "security policy",
                json!({
                    "description": describe(&cx.owner, want.address, want.str("description").unwrap_or_default()),
                    "adaptiveProtectionConfig": Self::adaptive(want.props),
                    "fingerprint": current.get("fingerprint"),
                }),
            )?;
            let op = call(cx, SERVICE, &format!("updating {}", want.address), || {
                g.security_policies
                    .patch()
                    .set_project(&g.project)
                    .set_security_policy(&name)
                    .set_body(body.clone())
                    .send()
            })
            .await?;
            wait_op(cx, g, want.address, &json(&op), timeout, "security policy").await?;
        }
        Self::sync_rules(
            cx,
            g,
            want.address,
            &name,
            &current,
            &rules(want.props),
            timeout,
        )
        .await?;
        Self::read_back(cx, g, &have.id).await
    }

    /// Retried while a backend service still uses the policy: GKE's
    /// controller lets it go only after the Ingress is gone.
    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let g = crate::clients(cx).await?;
        let name = name_of(&d.have.id).to_string();
        let address = d.address();
        let (name, address) = (&name, &address);
        ralph_core::driver::delete_once_released(
            cx,
            d,
            "the load balancer's backend services",
            || async move {
                let what = format!("deleting {}", d.have.id);
                let op = match call_opt(cx, SERVICE, &what, || {
                    g.security_policies
                        .delete()
                        .set_project(&g.project)
                        .set_security_policy(name)
                        .send()
                })
                .await
                {
                    Ok(None) => return Ok(DeleteAttempt::Gone),
                    Ok(Some(op)) => op,
                    Err(e) if e.message.contains("already being used") => {
                        return Ok(DeleteAttempt::InUse)
                    }
                    Err(e) => return Err(e),
                };
                wait_op(
                    cx,
                    g,
                    address,
                    &json(&op),
                    d.timeouts.delete_or(OP_TIMEOUT),
                    "security policy",
                )
                .await?;
                Ok(DeleteAttempt::Gone)
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(v: Json) -> Map<String, Json> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn rules_put_the_waf_before_the_rate_limit_and_keep_the_default() {
        let r = rules(&props(json!({
            "preconfigured_waf": ["sqli-v33-stable", "xss-v33-stable"],
            "rate_limit": 100, "rate_window_seconds": 60,
        })));
        let priorities: Vec<i64> = r.keys().copied().collect();
        assert_eq!(priorities, vec![1000, 1001, 2000, DEFAULT_PRIORITY]);
        assert_eq!(r[&2000]["action"], "throttle");
        assert_eq!(
            r[&2000]["rateLimitOptions"]["rateLimitThreshold"]["count"],
            100
        );
        assert_eq!(
            r[&1001]["match"]["expr"]["expression"],
            "evaluatePreconfiguredWaf('xss-v33-stable')"
        );
        let none = rules(&props(json!({"preconfigured_waf": [], "rate_limit": 0})));
        assert_eq!(
            none.keys().copied().collect::<Vec<_>>(),
            vec![DEFAULT_PRIORITY]
        );
    }

    #[test]
    fn observe_reads_back_what_rules_wrote_and_shows_hand_added_rules() {
        let mut written: Vec<Json> = rules(&props(json!({
            "preconfigured_waf": ["sqli-v33-stable"], "rate_limit": 100, "rate_window_seconds": 120,
        })))
        .into_values()
        .collect();
        written.push(json!({"priority": 10, "action": "deny(403)", "match": everyone()}));
        let v = json!({"selfLink": "https://compute.googleapis.com/compute/v1/projects/p/global/securityPolicies/edge",
                       "name": "edge", "description": "", "rules": written});
        let o = SecurityPolicy::observe(&v).expect("observed");
        assert_eq!(o.id, "projects/p/global/securityPolicies/edge");
        assert_eq!(
            o.attrs["preconfigured_waf"],
            json!(["unmanaged rule at priority 10", "sqli-v33-stable"])
        );
        assert_eq!(o.attrs["rate_limit"], 100);
        assert_eq!(o.attrs["rate_window_seconds"], 120);
        assert_eq!(o.attrs["adaptive_protection"], false);
    }

    #[test]
    fn covers_ignores_what_google_adds() {
        let want =
            json!({"priority": 2000, "rateLimitOptions": {"rateLimitThreshold": {"count": 100}}});
        let have = json!({"priority": 2000, "kind": "compute#securityPolicyRule", "preview": false,
                          "rateLimitOptions": {"rateLimitThreshold": {"count": 100, "intervalSec": 60}}});
        assert!(covers(&have, &want));
        let changed =
            json!({"priority": 2000, "rateLimitOptions": {"rateLimitThreshold": {"count": 50}}});
        assert!(!covers(&changed, &want));
    }

    #[test]
    fn checks_name_what_to_write() {
        assert!(waf_sets(&json!(["sqli-v33-stable"])).is_ok());
        let e = waf_sets(&json!(["sqli"])).unwrap_err();
        assert!(
            e.contains("entry 1") && e.contains("sqli-v33-stable"),
            "{e}"
        );
        assert!(waf_sets(&json!(["xss-stable", "xss-stable"])).is_err());
        assert!(window(&json!(60)).is_ok());
        assert!(window(&json!(45)).unwrap_err().contains("10, 30, 60"));
    }
}
