//! Recovery: before anything is planned, the results an interrupted run
//! journaled after its last checkpoint are written into the state
//! ([`fold_results`], before the command keeps its copy of the state), and
//! every intent an earlier run left open is settled. A create whose result never reached the state is looked
//! up (by its ownership tags, by the name it was created with, or for kinds
//! without tags by the properties that identify it) and adopted into the
//! state, or confirmed absent. Updates and deletes need nothing: the refresh
//! that follows sees where they got to. A backup killed before its manifest
//! was written has its dump removed from the bucket; a restore killed
//! half-way has the database it was making dropped.

use crate::state::{Backend, Intent, ResourceState, State, StateError};
use ralph_core::driver::{Context, Known, Observed, Registry};
use ralph_core::events::Event;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Recovery {
    /// (address, cloud id) adopted into the state.
    pub adopted: Vec<(String, String)>,
    /// Creates that never happened.
    pub absent: Vec<String>,
    pub closed: usize,
    /// Unfinished backups removed and unfinished restores dropped: what
    /// each was (`backup KEY`, `restore DATABASE`).
    pub discarded: Vec<String>,
    /// A failover an interrupted run left unfinished: kept open, because
    /// only `ralph-deploy failover` can finish it (an apply meanwhile would
    /// take the promoted replica for a replica that stopped replicating).
    pub failover: Option<Intent>,
}

/// The intent action of `ralph-deploy failover`.
pub const FAILOVER: &str = "failover";
/// The intent action of `ralph-deploy backup` (its lookup: the dump's key).
pub const BACKUP: &str = "backup";
/// The intent action of `ralph-deploy restore` (its lookup: the database).
pub const RESTORE: &str = "restore";
/// The intent action of `ralph-deploy db partitions` (idempotent DDL: a
/// killed run's intent is only closed).
pub const PARTITIONS: &str = "partitions";

/// Settles a backup's or a restore's intent: an unfinished dump (no
/// manifest beside it) is removed, a restore's database dropped. `Ok(None)`:
/// nothing was left to remove.
async fn discard(
    intent: &Intent,
    registry: &Registry,
    cx: &Context,
) -> Result<Option<String>, String> {
    let driver = registry
        .driver(&intent.kind)
        .ok_or_else(|| format!("no driver for kind {}", intent.kind))?;
    let lookup = intent.lookup.clone().unwrap_or_default();
    if intent.action == BACKUP {
        let store = driver
            .object_store()
            .ok_or_else(|| format!("{} keeps no objects", intent.kind))?;
        let bucket = intent
            .props
            .get("bucket")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let found = store
            .list(cx, bucket, &lookup)
            .await
            .map_err(|e| e.message)?;
        if found.contains(&format!("{lookup}.json")) || !found.contains(&lookup) {
            return Ok(None);
        }
        store
            .delete(cx, bucket, &lookup)
            .await
            .map_err(|e| e.message)?;
        return Ok(Some(format!("backup {lookup}")));
    }
    let dumps = driver
        .dumps()
        .ok_or_else(|| format!("{} cannot dump a database", intent.kind))?;
    if !dumps
        .exists(cx, &intent.props, &lookup)
        .await
        .map_err(|e| e.message)?
    {
        return Ok(None);
    }
    dumps
        .discard(cx, &intent.props, &lookup)
        .await
        .map_err(|e| e.message)?;
    Ok(Some(format!("restore {lookup}")))
}

fn find<'a>(
    intent: &Intent,
    candidates: &'a [Observed],
    cx: &Context,
    registry: &Registry,
) -> Option<&'a Observed> {
    let ours = |o: &Observed| o.owner.as_ref().is_none_or(|w| *w == cx.owner);
    let tagged = candidates.iter().find(|o| {
        o.address.as_deref() == Some(intent.address.as_str()) && o.owner.as_ref() == Some(&cx.owner)
    });
    if tagged.is_some() {
        return tagged;
    }
    if let Some(name) = &intent.lookup {
        if let Some(o) = candidates.iter().find(|o| &o.id == name && ours(o)) {
            return Some(o);
        }
    }
    // Kinds without tags: the properties that identify the resource.
    let schema = registry.schema(&intent.kind)?;
    if !schema.taggable {
        let keys: Vec<&str> = schema
            .fields
            .iter()
            .filter(|f| f.replace)
            .map(|f| f.name)
            .collect();
        return candidates.iter().find(|o| {
            !keys.is_empty()
                && keys.iter().all(|k| {
                    intent
                        .props
                        .get(*k)
                        .is_some_and(|v| o.attrs.get(*k) == Some(v))
                })
        });
    }
    None
}

/// Writes the results an interrupted run journaled after its last
/// checkpoint (which every read replays) into a new serial, and empties
/// the journal of results (those of a state since deleted go too). Run
/// under the lock, first: the copy kept before a command then holds them.
pub async fn fold_results(backend: &dyn Backend) -> Result<usize, StateError> {
    let results = backend.results().await?;
    if results.is_empty() {
        return Ok(0);
    }
    if let Some(mut state) = backend.read().await? {
        state.serial += 1;
        backend.write(&state).await?;
    }
    backend.forget_results(u64::MAX).await?;
    Ok(results.len())
}

pub async fn recover(
    backend: &dyn Backend,
    state: &mut State,
    registry: &Registry,
    cx: &Context,
) -> Result<Recovery, StateError> {
    let intents = backend.open_intents().await?;
    let mut out = Recovery::default();
    if intents.is_empty() {
        return Ok(out);
    }
    cx.reporter.report(Event::Warning {
        message: format!(
            "recovering {} operation(s) an interrupted run left open",
            intents.len()
        ),
    });
    for intent in &intents {
        if intent.action == FAILOVER {
            out.failover = Some(intent.clone());
            continue;
        }
        if intent.action == BACKUP || intent.action == RESTORE {
            match discard(intent, registry, cx).await {
                Ok(Some(what)) => {
                    cx.reporter.report(Event::Warning {
                        message: format!(
                            "{}: removed the unfinished {what} an interrupted run left",
                            intent.address
                        ),
                    });
                    out.discarded.push(what);
                }
                Ok(None) => {}
                Err(e) => {
                    // Cannot tell yet: keep the intent for the next run.
                    cx.reporter.report(Event::Warning {
                        message: format!(
                            "{}: could not settle the interrupted {}: {e}",
                            intent.address, intent.action
                        ),
                    });
                    continue;
                }
            }
        }
        if intent.action == "create" && !state.resources.contains_key(&intent.address) {
            let Some(driver) = registry.driver(&intent.kind) else {
                continue;
            };
            let known = Known {
                id: intent.lookup.clone().unwrap_or_default(),
                inputs: intent.props.clone(),
                ..Default::default()
            };
            let candidates = match driver.refresh(cx, &[known]).await {
                Ok(c) => c,
                Err(e) => {
                    // Cannot tell yet: keep the intent for the next run.
                    cx.reporter.report(Event::Warning {
                        message: format!(
                            "{}: could not look for the interrupted create: {}",
                            intent.address, e.message
                        ),
                    });
                    continue;
                }
            };
            match find(intent, &candidates, cx, registry) {
                Some(o) => {
                    state.resources.insert(
                        intent.address.clone(),
                        ResourceState::reported(
                            &intent.kind,
                            &o.id,
                            intent.props.clone(),
                            o.attrs.clone(),
                            intent.depends_on.clone(),
                            intent.protect,
                        ),
                    );
                    state.serial += 1;
                    backend.write(state).await?;
                    cx.reporter.report(Event::Warning {
                        message: format!(
                            "{}: adopted {} created by the interrupted run",
                            intent.address, o.id
                        ),
                    });
                    out.adopted.push((intent.address.clone(), o.id.clone()));
                }
                None => out.absent.push(intent.address.clone()),
            }
        }
        backend.close_intent(&intent.id).await?;
        out.closed += 1;
    }
    backend.compact().await?;
    Ok(out)
}
