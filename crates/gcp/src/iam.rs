//! IAM: `gcp.service_account` (the identities the nodes and the
//! orchestrator's pods act as) and `gcp.iam_member` (one member in one role,
//! on the project's policy or on a service account's: the roles the
//! workloads need, and GKE workload identity's binding of a Kubernetes
//! service account to a Google one).
//!
//! Service accounts have no labels: ownership is the description marker,
//! and refresh pages through the project's accounts. A policy is changed by
//! reading it and writing it back with its etag; a write that lost a race
//! (409 ABORTED) reads again and retries. A member only ever adds or removes
//! itself: bindings made by anyone else are left as they are.

use serde_json::{json, Value as Json};

use super::{
    call, call_create, call_opt, describe, from_description, json, message, observed, GcpClients,
};
use ralph_core::driver::{Context, Delete, Desired, Driver, DriverError, Known, Observed, Update};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

const SERVICE: &str = "iam";

fn account_id(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = ralph_core::model::kinds::checks::lowercase_name(s, 6..=30);
    checks::require(ok, || {
        format!("account_id `{s}` must be 6-30 lowercase letters, digits and hyphens, starting with a letter")
    })
}

fn role(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    checks::require(
        s.starts_with("roles/") || s.starts_with("projects/") || s.starts_with("organizations/"),
        || format!("role `{s}` is not a role name such as roles/cloudsql.client"),
    )
}

fn member(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let kinds = [
        "user:",
        "serviceAccount:",
        "group:",
        "domain:",
        "principal:",
        "principalSet:",
    ];
    checks::require(
        kinds.iter().any(|k| s.starts_with(k)) && s.len() > s.find(':').unwrap_or(0) + 1,
        || {
            format!("member `{s}` must be TYPE:ID, such as serviceAccount:NAME@PROJECT.iam.gserviceaccount.com")
        },
    )
}

static ACCOUNT: KindSchema =
    KindSchema::new("gcp.service_account", SERVICE, "A Google service account.")
        .fields(&[
            Field::fixed("account_id", Ty::String, "the part before @ of its email")
                .check(account_id),
            Field::new("display_name", Ty::String, "a display name").default("\"\""),
            Field::new("description", Ty::String, "what it is for").default("\"\""),
        ])
        .attrs(&[
            Attr::string("id", "projects/P/serviceAccounts/EMAIL"),
            Attr::string("email", "the account's email"),
            Attr::string("member", "serviceAccount:EMAIL, as IAM bindings name it"),
        ]);

static MEMBER: KindSchema = KindSchema::new(
    "gcp.iam_member",
    SERVICE,
    "One member in one role: on the project, or on a service account.",
)
.fields(&[
    Field::fixed("role", Ty::String, "such as roles/cloudsql.client").check(role),
    Field::fixed("member", Ty::String, "such as `${app_sa.member}`").check(member),
    Field::new(
        "service_account",
        Ty::String,
        "a service account (`${app_sa.id}`) whose policy it goes in; empty: the project's",
    )
    .default("\"\"")
    .forces_replace(),
])
.attrs(&[Attr::string("id", "RESOURCE ROLE MEMBER")]);

pub fn drivers() -> Vec<Box<dyn Driver>> {
    vec![Box::new(ServiceAccount), Box::new(Member)]
}

pub struct ServiceAccount;
pub struct Member;

fn observe_account(a: &google_cloud_iam_admin_v1::model::ServiceAccount) -> Observed {
    let (owner, address, description) = from_description(&a.description);
    observed(
        a.name.clone(),
        owner,
        address,
        vec![
            ("id", json!(a.name)),
            (
                "account_id",
                json!(a.email.split('@').next().unwrap_or_default()),
            ),
            ("display_name", json!(a.display_name)),
            ("description", json!(description)),
            ("email", json!(a.email)),
            ("member", json!(format!("serviceAccount:{}", a.email))),
        ],
    )
}

fn account_name(g: &GcpClients, account_id: &str) -> String {
    format!(
        "projects/{}/serviceAccounts/{account_id}@{}.iam.gserviceaccount.com",
        g.project, g.project
    )
}

async fn read_account(cx: &Context, name: &str) -> Result<Option<Observed>, DriverError> {
    let g = crate::clients(cx).await?;
    Ok(call_opt(cx, SERVICE, &format!("reading {name}"), || {
        g.iam.get_service_account().set_name(name).send()
    })
    .await?
    .as_ref()
    .map(observe_account))
}

fn account_body(
    cx: &Context,
    want: &Desired<'_>,
) -> Result<google_cloud_iam_admin_v1::model::ServiceAccount, DriverError> {
    message(
        "service account",
        json!({
            "displayName": want.str("display_name").unwrap_or_default(),
            "description": describe(&cx.owner, want.address, want.str("description").unwrap_or_default()),
        }),
    )
}

#[async_trait::async_trait]
impl Driver for ServiceAccount {
    fn schema(&self) -> &'static KindSchema {
        &ACCOUNT
    }
    async fn refresh(&self, cx: &Context, _known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let g = crate::clients(cx).await?;
        let parent = format!("projects/{}", g.project);
        crate::every_page(|token| {
            let parent = &parent;
            async move {
                let page = call(cx, SERVICE, "listing service accounts", || {
                    g.iam
                        .list_service_accounts()
                        .set_name(parent)
                        .set_page_size(100)
                        .set_page_token(&token)
                        .send()
                })
                .await?;
                let items = page.accounts.iter().map(observe_account);
                Ok((
                    items.filter(|o| crate::ours(cx, o)).collect(),
                    Some(page.next_page_token),
                ))
            }
        })
        .await
    }

    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        read_account(cx, id).await
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let g = crate::clients(cx).await?;
        let id = want.required_str("account_id")?;
        let parent = format!("projects/{}", g.project);
        let body = account_body(cx, want)?;
        let made = call_create(
            cx,
            SERVICE,
            &format!("creating service account {id}"),
            || {
                g.iam
                    .create_service_account()
                    .set_name(&parent)
                    .set_account_id(id)
                    .set_service_account(body.clone())
                    .send()
            },
        )
        .await?;
        match made {
            Some(a) => Ok(observe_account(&a)),
            None => {
                let name = account_name(g, id);
                super::take_over(cx, want.address, &name, read_account(cx, &name).await?)
            }
        }
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let g = crate::clients(cx).await?;
        let mut body = account_body(cx, want)?;
        body.name = have.id.clone();
        let mask =
            google_cloud_wkt::FieldMask::default().set_paths(["display_name", "description"]);
        let a = call(cx, SERVICE, &format!("updating {}", have.id), || {
            g.iam
                .patch_service_account()
                .set_service_account(body.clone())
                .set_update_mask(mask.clone())
                .send()
        })
        .await?;
        Ok(observe_account(&a))
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let g = crate::clients(cx).await?;
        call_opt(cx, SERVICE, &format!("deleting {}", d.have.id), || {
            g.iam.delete_service_account().set_name(&d.have.id).send()
        })
        .await?;
        Ok(())
    }
}

/// `RESOURCE ROLE MEMBER`: where the binding is, and what it binds.
fn member_id(resource: &str, role: &str, member: &str) -> String {
    format!("{resource} {role} {member}")
}

fn split_member(id: &str) -> Option<(String, String, String)> {
    let mut parts = id.splitn(3, ' ');
    Some((
        parts.next()?.to_string(),
        parts.next()?.to_string(),
        parts.next()?.to_string(),
    ))
}

/// The policy of a project (`projects/P`) or a service account.
async fn get_policy(cx: &Context, resource: &str) -> Result<Option<Json>, DriverError> {
    let g = crate::clients(cx).await?;
    let what = format!("reading the IAM policy of {resource}");
    let policy = if resource.contains("/serviceAccounts/") {
        call_opt(cx, SERVICE, &what, || {
            g.iam.get_iam_policy().set_resource(resource).send()
        })
        .await?
    } else {
        call_opt(cx, "cloudresourcemanager", &what, || {
            g.projects.get_iam_policy().set_resource(resource).send()
        })
        .await?
    };
    Ok(policy.as_ref().map(json))
}

fn has_member(policy: &Json, role: &str, member: &str) -> bool {
    policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|b| {
            b["role"] == role
                && b["condition"].is_null()
                && b["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|x| x == member))
        })
}

/// Adds (or removes) one member, read-modify-write with the etag; a write
/// that lost a race to another writer is tried again on the new policy.
async fn change(
    cx: &Context,
    resource: &str,
    role: &str,
    member: &str,
    add: bool,
) -> Result<(), DriverError> {
    let g = crate::clients(cx).await?;
    // This run's own changes to one policy go one at a time: they would
    // only make each other's etags stale (and retry).
    let lock = policy_lock(resource);
    let _one_at_a_time = lock.lock().await;
    for attempt in 0..10 {
        let Some(mut policy) = get_policy(cx, resource).await? else {
            return if add {
                Err(DriverError::new(format!("{resource} does not exist")))
            } else {
                Ok(())
            };
        };
        if has_member(&policy, role, member) == add {
            return Ok(());
        }
        let bindings = policy["bindings"].as_array().cloned().unwrap_or_default();
        let mut found = false;
        let mut next: Vec<Json> = Vec::new();
        for mut b in bindings {
            if b["role"] == role && b["condition"].is_null() {
                found = true;
                let mut members: Vec<Json> = b["members"].as_array().cloned().unwrap_or_default();
                members.retain(|m| m != member);
                if add {
                    members.push(json!(member));
                }
                if members.is_empty() {
                    continue;
                }
                b["members"] = Json::Array(members);
            }
            next.push(b);
        }
        if add && !found {
            next.push(json!({"role": role, "members": [member]}));
        }
        policy["bindings"] = Json::Array(next);
        let what = format!("setting the IAM policy of {resource}");
        let policy: google_cloud_iam_v1::model::Policy = message("IAM policy", policy)?;
        let written = if resource.contains("/serviceAccounts/") {
            call_create(cx, SERVICE, &what, || {
                g.iam
                    .set_iam_policy()
                    .set_resource(resource)
                    .set_policy(policy.clone())
                    .send()
            })
            .await?
        } else {
            call_create(cx, "cloudresourcemanager", &what, || {
                g.projects
                    .set_iam_policy()
                    .set_resource(resource)
                    .set_policy(policy.clone())
                    .send()
            })
            .await?
        };
        if written.is_some() {
            return Ok(());
        }
        // 409: the etag was stale. Read it again, after a short pause.
        tokio::time::sleep(std::time::Duration::from_millis(
            50 * (attempt + 1) + rand::random::<u64>() % 100,
        ))
        .await;
    }
    Err(DriverError::new(format!("the IAM policy of {resource} kept changing under ten attempts to write it; run apply again")))
}

fn policy_lock(resource: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    > = std::sync::OnceLock::new();
    let mut map = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.entry(resource.to_string()).or_default().clone()
}

fn resource_of(g: &GcpClients, want: &Desired<'_>) -> String {
    want.str("service_account")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("projects/{}", g.project))
}

fn observe_member(resource: &str, role: &str, member: &str, g: &GcpClients) -> Observed {
    let id = member_id(resource, role, member);
    let service_account = if resource == format!("projects/{}", g.project) {
        String::new()
    } else {
        resource.to_string()
    };
    observed(
        id.clone(),
        None,
        None,
        vec![
            ("id", json!(id)),
            ("role", json!(role)),
            ("member", json!(member)),
            ("service_account", json!(service_account)),
        ],
    )
}

#[async_trait::async_trait]
impl Driver for Member {
    fn schema(&self) -> &'static KindSchema {
        &MEMBER
    }
    /// One policy read per resource that recorded members are in.
    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let g = crate::clients(cx).await?;
        let mut by_resource: std::collections::BTreeMap<String, Vec<(String, String)>> =
            Default::default();
        for k in known {
            if let Some((resource, role, member)) = split_member(&k.id) {
                by_resource
                    .entry(resource)
                    .or_default()
                    .push((role, member));
            }
        }
        let mut out = Vec::new();
        for (resource, members) in by_resource {
            let Some(policy) = get_policy(cx, &resource).await? else {
                continue;
            };
            for (role, member) in members {
                if has_member(&policy, &role, &member) {
                    out.push(observe_member(&resource, &role, &member, g));
                }
            }
        }
        Ok(out)
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let g = crate::clients(cx).await?;
        let resource = resource_of(g, want);
        let role = want.required_str("role")?;
        let member = want.required_str("member")?;
        change(cx, &resource, role, member, true).await?;
        Ok(observe_member(&resource, role, member, g))
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        // Every field forces a replacement: nothing changes in place.
        let _ = (cx, want);
        Ok(have.clone())
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let Some((resource, role, member)) = split_member(&d.have.id) else {
            return Ok(());
        };
        change(cx, &resource, &role, &member, false).await
    }
}
