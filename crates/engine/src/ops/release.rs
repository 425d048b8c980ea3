//! The orchestrator's own operations: `render` its manifests, `deploy` a
//! new image and nothing else (what `kubectl set image` plus `kubectl
//! rollout status` do), `rollback` to the release before the current one.
//! Deploy and rollback run under the locked runner, each release through
//! apply's own resource step (`apply::run_step`: intent, limiter, rollout
//! and wait, journaled result, events), so a kill mid-rollout is recovered
//! by the next command (the unfinished rollout then reads as not ready, and
//! the next apply settles it).

use serde_json::{Map, Value as Json};

use crate::apply::OneStep;
use crate::state::ResourceState;
use ralph_core::driver::{Context, Desired, Known, Update, STACK_VALUES_ATTR};
use ralph_service::kubernetes::{connect, discover, orchestrator, render};

use super::{locked, OpError, Role, Session, SignalGuard, Unapplied};

fn pick(
    targets: Vec<(String, Map<String, Json>)>,
    resource: Option<&str>,
) -> Result<Vec<(String, Map<String, Json>)>, OpError> {
    match resource {
        None => Ok(targets),
        Some(r) => {
            let names: Vec<String> = targets.iter().map(|t| t.0.clone()).collect();
            // An address, or a component use (everything of the kind under it).
            let found: Vec<_> = targets
                .into_iter()
                .filter(|t| ralph_core::model::address::is_under(&t.0, r))
                .collect();
            if found.is_empty() {
                return Err(OpError::refused(format!(
                    "{r} is not an orchestrator of this stack (it has: {})",
                    names.join(", ")
                )));
            }
            Ok(found)
        }
    }
}

/// The manifests as the next apply would send them (secrets as
/// placeholders), as YAML. API versions come from the cluster with
/// `discover_versions`, else those of a current Kubernetes release.
pub async fn render_yaml(
    s: &Session,
    cx: &Context,
    resource: Option<&str>,
    discover_versions: bool,
) -> Result<String, OpError> {
    let (state, _) = s.read_state().await?;
    let mut out = String::new();
    for (address, mut props) in pick(
        s.resolved_targets(Role::Orchestrator, Unapplied::Placeholder)
            .await?,
        resource,
    )? {
        if !props.contains_key("tag") {
            // The tag `deploy --image` rolled out, as recorded.
            if let Some(t) = state
                .resources
                .get(&address)
                .and_then(|r| r.inputs.get("tag"))
            {
                props.insert("tag".into(), t.clone());
            }
        }
        let failed = |e: String| OpError::Resource {
            address: address.clone(),
            message: e,
        };
        let api = if discover_versions {
            let client = connect(cx, &props)
                .await
                .map_err(|e| failed(e.to_string()))?;
            discover(cx, &client)
                .await
                .map_err(|e| failed(e.to_string()))?
        } else {
            render::ApiVersions::modern()
        };
        let objects =
            orchestrator::render_offline(&cx.owner, &address, &s.stack.base_dir(), &props, api)
                .map_err(|e| failed(e.to_string()))?;
        out.push_str(&render::to_yaml(&objects));
    }
    Ok(out)
}

/// Splits `--image`: a bare tag, or a full `repository:tag` reference.
pub fn split_image(image: &str) -> (Option<&str>, &str) {
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => (Some(&image[..last_slash + i]), &image[last_slash + i + 1..]),
        None if last_slash > 0 => (Some(image), "latest"),
        None => (None, image),
    }
}

/// Per orchestrator resource: whether its release rolled out.
pub struct Released {
    pub address: String,
    pub image: String,
    pub result: Result<(), String>,
}

/// `deploy --image`: the recorded release with a new image.
pub async fn deploy(
    s: &Session,
    cx: &Context,
    image: &str,
    resource: Option<&str>,
) -> Result<Vec<Released>, OpError> {
    let (repository, tag) = split_image(image);
    if tag.is_empty() {
        return Err(OpError::refused(format!("--image `{image}` has no tag")));
    }
    release(s, cx, "deploy", resource, |recorded| {
        let mut props = recorded.inputs.clone();
        props.insert("tag".into(), Json::String(tag.to_string()));
        if let Some(r) = repository {
            props.insert("image".into(), Json::String(r.to_string()));
        }
        Ok(props)
    })
    .await
}

/// `rollback`: the release before the current good one, as recorded.
pub async fn rollback(
    s: &Session,
    cx: &Context,
    resource: Option<&str>,
) -> Result<Vec<Released>, OpError> {
    release(s, cx, "rollback", resource, |recorded| {
        recorded
            .attrs
            .get("previous_good")
            .and_then(Json::as_object)
            .cloned()
            .ok_or_else(|| "the state records no earlier good release to roll back to".to_string())
    })
    .await
}

/// Rolls out `change(recorded)` on each chosen orchestrator resource under
/// the lock, journaled, and records what runs.
async fn release<F>(
    s: &Session,
    cx: &Context,
    operation: &str,
    resource: Option<&str>,
    change: F,
) -> Result<Vec<Released>, OpError>
where
    F: Fn(&ResourceState) -> Result<Map<String, Json>, String>,
{
    locked(s, cx, operation, |l| async move {
        let mut state = l.state;
        let addresses: Vec<String> = s
            .stack
            .resources
            .values()
            .filter(|r| {
                s.registry.offers(r.kind.kind, Role::Orchestrator)
                    && resource.is_none_or(|want| ralph_core::model::address::is_under(&r.address, want))
            })
            .map(|r| r.address.clone())
            .collect();
        if addresses.is_empty() {
            return Err(OpError::refused(format!(
                "{} declares no {}{}",
                s.stack.path.display(),
                s.registry.role_text(Role::Orchestrator),
                resource.map(|r| format!(" named {r}")).unwrap_or_default()
            )));
        }
        let _guard = SignalGuard::install(cx);
        let mut out = Vec::new();
        for address in addresses {
            if SignalGuard::interrupted(cx) {
                break;
            }
            let failed = |message: String| OpError::Resource {
                address: address.clone(),
                message,
            };
            let driver = s.driver_at(&address)?;
            let Some(recorded) = state.resources.get(&address).cloned() else {
                return Err(failed(
                    "not deployed yet: run `ralph-deploy apply` first".into(),
                ));
            };
            let mut props = change(&recorded).map_err(failed)?;
            // What the stack had for what a release sets, so the release
            // stands until the stack changes it (`Field::released`).
            let stack_values = recorded
                .attrs
                .get(STACK_VALUES_ATTR)
                .cloned()
                .unwrap_or_else(|| {
                    let kind = driver.schema();
                    let released = kind.fields.iter().filter(|f| f.released);
                    Json::Object(
                        released
                            .filter_map(|f| Some((f.name.to_string(), recorded.inputs.get(f.name)?.clone())))
                            .collect(),
                    )
                });
            props.insert(STACK_VALUES_ATTR.into(), stack_values);
            let known = Known {
                id: recorded.id.clone(),
                inputs: recorded.inputs.clone(),
                attrs: recorded.attrs.clone(),
            };
            let have = driver
                .refresh(cx, &[known])
                .await
                .map_err(|e| failed(e.message))?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    failed("its Deployment is gone from the cluster; run `ralph-deploy apply` to create it again".into())
                })?;
            let timeouts = s
                .stack
                .resources
                .get(&address)
                .map(|r| r.timeouts)
                .unwrap_or_default();
            let want = Desired {
                address: &address,
                props: &props,
                owner: &cx.owner,
                timeouts,
                replaces: None,
            };
            let image = render::image_ref(&props).unwrap_or_default();
            let (result, after) = s.run_step(
                cx,
                state,
                OneStep {
                    address: &address,
                    // The stack values go with the release's attributes
                    // only: recorded inputs fill what a refresh leaves out.
                    inputs: {
                        let mut inputs = props.clone();
                        inputs.remove(STACK_VALUES_ATTR);
                        inputs
                    },
                },
                || {
                    let u = Update {
                        want: &want,
                        have: &have,
                        changed: &[],
                    };
                    driver.update(cx, u)
                },
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
            state = after;
            out.push(Released {
                address,
                image,
                result: result.map(|_| ()),
            });
        }
        s.backend.compact().await?;
        Ok(out)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn images_split_into_repository_and_tag() {
        assert_eq!(split_image("1.2.3"), (None, "1.2.3"));
        assert_eq!(split_image("ghcr.io/o/r:1.2"), (Some("ghcr.io/o/r"), "1.2"));
        assert_eq!(
            split_image("localhost:5000/r:v1"),
            (Some("localhost:5000/r"), "v1")
        );
        assert_eq!(
            split_image("localhost:5000/r"),
            (Some("localhost:5000/r"), "latest")
        );
    }
}
