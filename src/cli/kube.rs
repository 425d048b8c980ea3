//! The orchestrator's own commands: `render` prints its manifests,
//! `deploy --image` rolls out a new image and nothing else (what
//! `kubectl set image` plus `kubectl rollout status` do), and `rollback`
//! returns to the release before the current one.

use std::sync::Arc;

use anyhow::anyhow;
use serde_json::{Map, Value as Json};

use super::commands::{lock_error, read_state, reporter, resolved_targets, Unapplied};
use super::{CliError, RunArgs, Session, StackArgs, EXIT_ERROR, EXIT_OK};
use crate::drivers::kubernetes::{connect, discover, orchestrator, render};
use crate::drivers::{Context, Desired, Known, Owner};
use crate::events::Silent;
use crate::state::{LockInfo, Locker, ResourceState, StateStore};

const KIND: &str = "kubernetes.orchestrator";

fn pick(
    targets: Vec<(String, Map<String, Json>)>,
    resource: Option<&str>,
) -> Result<Vec<(String, Map<String, Json>)>, CliError> {
    match resource {
        None => Ok(targets),
        Some(r) => {
            let names: Vec<String> = targets.iter().map(|t| t.0.clone()).collect();
            let found: Vec<_> = targets.into_iter().filter(|t| t.0 == r).collect();
            if found.is_empty() {
                return Err(CliError::Other(anyhow!(
                    "{r} is not a {KIND} resource of this stack (it has: {})",
                    names.join(", ")
                )));
            }
            Ok(found)
        }
    }
}

/// `render`: the manifests, as the next apply would send them (secrets as
/// placeholders). API versions come from the cluster with `--discover`,
/// else those of a current Kubernetes release.
pub(super) async fn render_cmd(
    args: &StackArgs,
    resource: Option<&str>,
    discover_versions: bool,
) -> Result<i32, CliError> {
    let s = args.session(false)?;
    let cx = s.context(Arc::new(Silent));
    let (state, _) = read_state(&s).await?;
    for (address, mut props) in pick(
        resolved_targets(&s, KIND, Unapplied::Placeholder).await?,
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
        let api = if discover_versions {
            let client = connect(&cx, &props)
                .await
                .map_err(|e| CliError::Other(anyhow!("{address}: {e}")))?;
            discover(&cx, &client)
                .await
                .map_err(|e| CliError::Other(anyhow!("{address}: {e}")))?
        } else {
            render::ApiVersions::modern()
        };
        let objects =
            orchestrator::render_offline(&cx.owner, &address, &s.stack.base_dir(), &props, api)
                .map_err(|e| CliError::Other(anyhow!("{address}: {e}")))?;
        print!("{}", render::to_yaml(&objects));
    }
    Ok(EXIT_OK)
}

/// Splits `--image`: a bare tag, or a full `repository:tag` reference.
fn split_image(image: &str) -> (Option<&str>, &str) {
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => (Some(&image[..last_slash + i]), &image[last_slash + i + 1..]),
        None if last_slash > 0 => (Some(image), "latest"),
        None => (None, image),
    }
}

/// Runs `change` on each chosen orchestrator resource under the state lock,
/// starting from what the state recorded for it, and records the result.
async fn locked_release<F>(
    s: &Session,
    cx: &Context,
    operation: &str,
    resource: Option<&str>,
    change: F,
) -> Result<i32, CliError>
where
    F: Fn(&ResourceState) -> Result<Map<String, Json>, String>,
{
    let lock = LockInfo::for_operation(operation);
    if let Some(stale) = s.backend.lock(&lock).await.map_err(lock_error)? {
        eprintln!(
            "warning: took over a stale lock: `{}` (pid {} on {}, since {}) no longer runs",
            stale.operation, stale.pid, stale.host, stale.since
        );
    }
    let result = async {
        s.backend.snapshot_before(operation).map_err(|e| {
            CliError::Other(anyhow!(
                "cannot keep a copy of the state before {operation}, so nothing was changed: {e}"
            ))
        })?;
        let (mut state, _) = read_state(s).await?;
        let addresses: Vec<String> = s
            .stack
            .resources
            .values()
            .filter(|r| r.kind.kind == KIND && resource.is_none_or(|want| want == r.address))
            .map(|r| r.address.clone())
            .collect();
        if addresses.is_empty() {
            return Err(CliError::Other(anyhow!(
                "{} declares no {KIND} resource{}",
                s.stack.path.display(),
                resource.map(|r| format!(" named {r}")).unwrap_or_default()
            )));
        }
        let registry = &s.registry;
        let driver = registry
            .driver(KIND)
            .ok_or_else(|| CliError::Other(anyhow!("no driver for {KIND}")))?;
        let mut failed = false;
        for address in addresses {
            let Some(recorded) = state.resources.get(&address).cloned() else {
                return Err(CliError::Other(anyhow!(
                    "{address} is not deployed yet: run `ralph-deploy apply` first"
                )));
            };
            let props = change(&recorded).map_err(|e| CliError::Other(anyhow!("{address}: {e}")))?;
            let known = Known {
                id: recorded.id.clone(),
                inputs: recorded.inputs.clone(),
                attrs: recorded.attrs.clone(),
            };
            let have = driver
                .refresh(cx, &[known])
                .await
                .map_err(|e| CliError::Other(anyhow!("{address}: {e}")))?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    CliError::Other(anyhow!(
                        "{address}: its Deployment is gone from the cluster; run `ralph-deploy apply` to create it again"
                    ))
                })?;
            let timeouts = s
                .stack
                .resources
                .get(&address)
                .map(|r| r.timeouts)
                .unwrap_or_default();
            let owner: &Owner = &cx.owner;
            let want = Desired {
                address: &address,
                props: &props,
                owner,
                timeouts,
            };
            eprintln!("{address}: {operation} {}", render::image_ref(&props).unwrap_or_default());
            let (outcome, observed) = match driver.update(cx, &want, &have, &[]).await {
                Ok(o) => (Ok(()), Some(o)),
                Err(e) => (Err(e.message.clone()), e.partial.map(|p| *p)),
            };
            if let Some(o) = observed {
                let rs = state.resources.entry(address.clone()).or_insert(recorded);
                if outcome.is_ok() {
                    rs.inputs = props.clone();
                }
                rs.attrs = o.attrs;
                rs.updated_at = chrono::Utc::now();
                crate::apply::record_outputs(&s.stack, &mut state);
                state.serial += 1;
                s.backend
                    .write(&state)
                    .await
                    .map_err(|e| CliError::Other(e.into()))?;
            }
            match outcome {
                Ok(()) => eprintln!("{address}: rolled out"),
                Err(e) => {
                    eprintln!("{address}: {e}");
                    failed = true;
                }
            }
        }
        Ok(if failed { EXIT_ERROR } else { EXIT_OK })
    }
    .await;
    if let Err(e) = s.backend.unlock(&lock).await {
        eprintln!("warning: could not release the lock: {e}");
    }
    result
}

/// `deploy --image TAG`: the recorded release with a new image.
pub(super) async fn deploy_cmd(
    args: &StackArgs,
    image: &str,
    resource: Option<&str>,
    run: &RunArgs,
) -> Result<i32, CliError> {
    let (repository, tag) = split_image(image);
    if tag.is_empty() {
        return Err(CliError::Other(anyhow!("--image {image:?} has no tag")));
    }
    let s = args.session(run.json)?;
    let cx = s.context(reporter(run.json));
    locked_release(&s, &cx, "deploy", resource, |recorded| {
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
pub(super) async fn rollback_cmd(
    args: &StackArgs,
    resource: Option<&str>,
    run: &RunArgs,
) -> Result<i32, CliError> {
    let s = args.session(run.json)?;
    let cx = s.context(reporter(run.json));
    locked_release(&s, &cx, "rollback", resource, |recorded| {
        recorded
            .attrs
            .get("previous_good")
            .and_then(Json::as_object)
            .cloned()
            .ok_or_else(|| "the state records no earlier good release to roll back to".to_string())
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
