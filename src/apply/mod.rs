//! Apply: carry out a plan, walking the graph in parallel.
//!
//! Two walks: first every delete (removed resources and the old half of
//! replacements) in reverse dependency order, then every create and update
//! in dependency order. Each resource starts as soon as what it waits for is
//! done. A failure skips only what depends on it; independent branches
//! finish. The state is written after every resource, so an interrupted
//! apply loses at most the resources that were in flight.

pub mod recover;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value as Json};
use tokio::sync::Mutex;

use crate::drivers::{Context, Desired, Registry};
use crate::events::Event;
use crate::graph::{walk, walk_prioritized, Outcome};
use crate::plan::{desired_properties, Action, Change, Plan};
use crate::stack::{Reference, Stack};
use crate::state::{Backend, Intent, ResourceState, State, StateError};

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub parallelism: usize,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions { parallelism: 10 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceResult {
    pub address: String,
    pub action: Action,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ApplyReport {
    pub results: Vec<ResourceResult>,
    pub created: usize,
    pub updated: usize,
    pub replaced: usize,
    pub deleted: usize,
    pub adopted: usize,
    pub failed: usize,
    pub skipped: usize,
    pub not_started: usize,
    pub requests: u64,
    /// Requests that were retries (throttling, 5xx, timeouts, resets).
    pub retries: u64,
    /// Per service that throttled: (service, throttles seen, concurrency at the end).
    pub throttled: Vec<(String, u64, f64)>,
    pub elapsed_ms: u128,
}

impl ApplyReport {
    pub fn succeeded(&self) -> bool {
        self.failed == 0 && self.skipped == 0 && self.not_started == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
}

struct Shared<'a> {
    state: Mutex<State>,
    backend: &'a dyn Backend,
}

impl Shared<'_> {
    /// Journals what is about to happen; returns the intent's id.
    async fn intend(
        &self,
        c: &Change,
        action: &str,
        lookup: Option<String>,
        props: &Map<String, Json>,
        protect: bool,
    ) -> Result<String, String> {
        let intent = Intent {
            id: uuid::Uuid::new_v4().to_string(),
            address: c.address.clone(),
            kind: c.kind.clone(),
            action: action.to_string(),
            lookup,
            props: props.clone(),
            depends_on: c.depends_on.clone(),
            protect,
            started_at: chrono::Utc::now(),
            pid: std::process::id(),
        };
        self.backend
            .open_intent(&intent)
            .await
            .map_err(|e| format!("cannot journal the intent, so nothing was done: {e}"))?;
        Ok(intent.id)
    }

    async fn done(&self, intent: &str) -> Result<(), String> {
        self.backend
            .close_intent(intent)
            .await
            .map_err(|e| format!("the change is recorded but its intent could not be closed: {e}"))
    }

    async fn record(&self, f: impl FnOnce(&mut State)) -> Result<(), String> {
        let mut st = self.state.lock().await;
        f(&mut st);
        st.serial += 1;
        self.backend
            .write(&st)
            .await
            .map_err(|e| format!("the change was made but the state could not be written: {e}"))
    }
}

/// Carries out `plan` against the cloud and the (locked) state.
/// `stack` is `None` for destroy plans.
pub async fn apply(
    plan: &Plan,
    stack: Option<&Stack>,
    state: State,
    backend: &dyn Backend,
    registry: &Registry,
    cx: &Context,
    options: &ApplyOptions,
    stop: &AtomicBool,
) -> Result<(ApplyReport, State), ApplyError> {
    let started = Instant::now();
    cx.limits.set_max(options.parallelism);
    let requests_before = cx.request_count();
    let retries_before = cx.retry_count();
    let shared = Shared {
        state: Mutex::new(state),
        backend,
    };
    let key = |c: &Change| -> String {
        let dup = plan
            .changes
            .iter()
            .filter(|o| o.address == c.address)
            .count()
            > 1;
        if dup && c.action == Action::Delete {
            format!("{} ({})", c.address, c.id.clone().unwrap_or_default())
        } else {
            c.address.clone()
        }
    };
    let by_key: BTreeMap<String, &Change> = plan.changes.iter().map(|c| (key(c), c)).collect();
    let mut report = ApplyReport::default();

    // Adopted resources that need no change are recorded first.
    for c in plan
        .changes
        .iter()
        .filter(|c| c.adopt && c.action == Action::NoOp)
    {
        if let (Some(stack), Some(obs)) = (stack, c.current_observed()) {
            if let Some(r) = stack.resources.get(&c.address) {
                let inputs = current_inputs(r.kind, &obs.attrs);
                let rs = ResourceState {
                    kind: c.kind.clone(),
                    id: obs.id.clone(),
                    inputs,
                    attrs: obs.attrs.clone(),
                    depends_on: c.depends_on.clone(),
                    protect: r.protect,
                    updated_at: chrono::Utc::now(),
                };
                shared
                    .record(|st| {
                        st.resources.insert(c.address.clone(), rs);
                    })
                    .await
                    .map_err(|e| {
                        ApplyError::State(StateError::Io {
                            path: backend.describe(),
                            source: std::io::Error::other(e),
                        })
                    })?;
                report.adopted += 1;
            }
        }
    }

    // Walk 1: deletes, dependents before their dependencies.
    let deleting: BTreeMap<String, &Change> = by_key
        .iter()
        .filter(|(_, c)| matches!(c.action, Action::Delete | Action::Replace))
        .map(|(k, c)| (k.clone(), *c))
        .collect();
    let mut reverse: BTreeMap<String, Vec<String>> =
        deleting.keys().map(|k| (k.clone(), Vec::new())).collect();
    for (k, c) in &deleting {
        for dep in &c.depends_on {
            if let Some(list) = reverse.get_mut(dep) {
                list.push(k.clone());
            }
        }
    }
    let delete_outcomes = walk(&reverse, options.parallelism, stop, |k| {
        let c = deleting[&k];
        let shared = &shared;
        async move {
            let t = Instant::now();
            cx.reporter.report(Event::ResourceStarted {
                address: c.address.clone(),
                kind: c.kind.clone(),
                action: c.action,
            });
            let driver = registry
                .driver(&c.kind)
                .ok_or_else(|| format!("no driver for kind {}", c.kind))?;
            let result = match c.current_observed() {
                Some(obs) => {
                    let timeouts = stack
                        .and_then(|s| s.resources.get(&c.address))
                        .map(|r| r.timeouts)
                        .unwrap_or_default();
                    let intent = shared
                        .intend(c, "delete", c.id.clone(), &Map::new(), c.protect)
                        .await?;
                    let limiter = cx.limits.service(driver.service());
                    let permit = limiter.acquire().await;
                    let result = driver
                        .delete(cx, &obs, &timeouts)
                        .await
                        .map_err(|e| e.message)
                        .map(|_| Some(intent));
                    drop(permit);
                    if result.is_ok() {
                        limiter.succeeded();
                    }
                    result
                }
                None => Ok(None), // already gone from the cloud
            };
            match result {
                Ok(intent) => {
                    let address = c.address.clone();
                    let id = c.id.clone();
                    shared
                        .record(|st| {
                            if st
                                .resources
                                .get(&address)
                                .map(|r| Some(&r.id) == id.as_ref())
                                .unwrap_or(false)
                            {
                                st.resources.remove(&address);
                            }
                        })
                        .await?;
                    if let Some(intent) = intent {
                        shared.done(&intent).await?;
                    }
                    if c.action == Action::Delete {
                        cx.reporter.report(Event::ResourceFinished {
                            address: c.address.clone(),
                            action: c.action,
                            id: c.id.clone().unwrap_or_default(),
                            elapsed_ms: t.elapsed().as_millis(),
                        });
                    }
                    Ok(())
                }
                Err(e) => {
                    cx.reporter.report(Event::ResourceFailed {
                        address: c.address.clone(),
                        action: c.action,
                        error: e.clone(),
                    });
                    Err(e)
                }
            }
        }
    })
    .await;

    // Walk 2: creates and updates, dependencies first.
    let building: BTreeMap<String, &Change> = by_key
        .iter()
        .filter(|(_, c)| matches!(c.action, Action::Create | Action::Update | Action::Replace))
        .map(|(k, c)| (k.clone(), *c))
        .collect();
    let forward: BTreeMap<String, Vec<String>> = building
        .iter()
        .map(|(k, c)| {
            (
                k.clone(),
                c.depends_on
                    .iter()
                    .filter(|d| building.contains_key(*d))
                    .cloned()
                    .collect(),
            )
        })
        .collect();
    let failed_deletes: BTreeSet<String> = delete_outcomes
        .iter()
        .filter(|(_, o)| **o != Outcome::Done)
        .map(|(k, _)| k.clone())
        .collect();
    // Longest expected chain first: the critical path never queues behind
    // quick side branches when more resources are ready than may run.
    let cost = |k: &str| {
        building
            .get(k)
            .and_then(|c| registry.driver(&c.kind))
            .map(|d| d.typical_seconds())
            .unwrap_or(1)
    };
    let priority = crate::graph::remaining_cost(&forward, &cost);
    let build_outcomes = walk_prioritized(&forward, &priority, options.parallelism, stop, |k| {
        let c = building[&k];
        let shared = &shared;
        let failed_deletes = &failed_deletes;
        async move {
            if failed_deletes.contains(&c.address) {
                return Err("the old resource could not be deleted".to_string());
            }
            let t = Instant::now();
            let Some(stack) = stack else {
                return Err("no stack for a create".to_string());
            };
            let r = stack
                .resources
                .get(&c.address)
                .ok_or_else(|| format!("{} is not in the stack", c.address))?;
            let driver = registry
                .driver(r.kind.kind)
                .ok_or_else(|| format!("no driver for kind {}", r.kind.kind))?;
            let snapshot = shared.state.lock().await.clone();
            let lookup = |reference: &Reference| {
                snapshot.attribute(&reference.address, &reference.attribute)
            };
            let desired = desired_properties(r, driver, &cx.owner, &cx.base_dir, &lookup);
            let mut props = Map::new();
            for (name, v) in desired {
                match v {
                    Some(v) => {
                        props.insert(name, v);
                    }
                    None => {
                        let msg = format!("`{name}` refers to a resource that has no value yet");
                        cx.reporter.report(Event::ResourceFailed {
                            address: c.address.clone(),
                            action: c.action,
                            error: msg.clone(),
                        });
                        return Err(msg);
                    }
                }
            }
            cx.reporter.report(Event::ResourceStarted {
                address: c.address.clone(),
                kind: c.kind.clone(),
                action: c.action,
            });
            let want = Desired {
                address: &c.address,
                props: &props,
                owner: &cx.owner,
                timeouts: r.timeouts,
            };
            let (verb, lookup) = match c.action {
                Action::Update => ("update", c.id.clone()),
                _ => (
                    "create",
                    r.kind
                        .name_field
                        .and_then(|f| props.get(f))
                        .and_then(Json::as_str)
                        .map(str::to_string),
                ),
            };
            let intent = shared.intend(c, verb, lookup, &props, r.protect).await?;
            // At most the service's current limit of operations at once.
            let limiter = cx.limits.service(driver.service());
            let permit = limiter.acquire().await;
            let result = match (c.action, c.current_observed()) {
                (Action::Update, Some(have)) => {
                    let changed: Vec<String> =
                        c.attributes.iter().map(|a| a.name.clone()).collect();
                    driver.update(cx, &want, &have, &changed).await
                }
                _ => driver.create(cx, &want).await,
            };
            drop(permit);
            if result.is_ok() {
                limiter.succeeded();
            }
            match result {
                Ok(obs) => {
                    let rs = ResourceState {
                        kind: r.kind.kind.to_string(),
                        id: obs.id.clone(),
                        inputs: props.clone(),
                        attrs: obs.attrs.clone(),
                        depends_on: c.depends_on.clone(),
                        protect: r.protect,
                        updated_at: chrono::Utc::now(),
                    };
                    let address = c.address.clone();
                    shared
                        .record(|st| {
                            st.resources.insert(address, rs);
                        })
                        .await?;
                    shared.done(&intent).await?;
                    cx.reporter.report(Event::ResourceFinished {
                        address: c.address.clone(),
                        action: c.action,
                        id: obs.id,
                        elapsed_ms: t.elapsed().as_millis(),
                    });
                    Ok(())
                }
                Err(e) => {
                    // Created but not ready in time: record it, so the next
                    // apply waits for it instead of creating another.
                    if let Some(partial) = e.partial {
                        let rs = ResourceState {
                            kind: r.kind.kind.to_string(),
                            id: partial.id.clone(),
                            inputs: props.clone(),
                            attrs: partial.attrs.clone(),
                            depends_on: c.depends_on.clone(),
                            protect: r.protect,
                            updated_at: chrono::Utc::now(),
                        };
                        let address = c.address.clone();
                        shared
                            .record(|st| {
                                st.resources.insert(address, rs);
                            })
                            .await?;
                        shared.done(&intent).await?;
                    }
                    // Otherwise the intent stays open: whether the call took
                    // effect is for the next run's recovery to find out.
                    cx.reporter.report(Event::ResourceFailed {
                        address: c.address.clone(),
                        action: c.action,
                        error: e.message.clone(),
                    });
                    Err(e.message)
                }
            }
        }
    })
    .await;

    // Outcomes per change.
    for (k, c) in &by_key {
        let outcome = match c.action {
            Action::NoOp => continue,
            Action::Delete => delete_outcomes.get(k).cloned(),
            Action::Create | Action::Update => build_outcomes.get(k).cloned(),
            Action::Replace => match delete_outcomes.get(k) {
                Some(Outcome::Done) => build_outcomes.get(k).cloned(),
                other => other.cloned(),
            },
        }
        .unwrap_or(Outcome::NotStarted);
        let (label, error) = match &outcome {
            Outcome::Done => {
                match c.action {
                    Action::Create => report.created += 1,
                    Action::Update => report.updated += 1,
                    Action::Replace => report.replaced += 1,
                    Action::Delete => report.deleted += 1,
                    Action::NoOp => {}
                }
                ("done", None)
            }
            Outcome::Failed(e) => {
                report.failed += 1;
                ("failed", Some(e.clone()))
            }
            Outcome::Skipped { because } => {
                report.skipped += 1;
                cx.reporter.report(Event::ResourceSkipped {
                    address: c.address.clone(),
                    because: because.clone(),
                });
                (
                    "skipped",
                    Some(format!("not attempted because `{because}` failed")),
                )
            }
            Outcome::NotStarted => {
                report.not_started += 1;
                (
                    "not_started",
                    Some("not started: the apply was interrupted".into()),
                )
            }
        };
        report.results.push(ResourceResult {
            address: c.address.clone(),
            action: c.action,
            outcome: label.into(),
            error,
        });
    }

    // Outputs, from what is now recorded.
    let mut st = shared.state.into_inner();
    match stack {
        Some(stack) => record_outputs(stack, &mut st),
        None => st.outputs.clear(),
    }
    st.serial += 1;
    backend.write(&st).await?;
    report.requests = cx.request_count() - requests_before;
    report.retries = cx.retry_count().saturating_sub(retries_before);
    report.throttled = cx
        .limits
        .report()
        .into_iter()
        .filter(|(_, _, t)| *t > 0)
        .map(|(s, l, t)| (s, t, l))
        .collect();
    report.elapsed_ms = started.elapsed().as_millis();
    Ok((report, st))
}

/// For an adopted resource: its properties as the cloud reports them.
fn current_inputs(kind: &crate::kinds::KindSchema, attrs: &Map<String, Json>) -> Map<String, Json> {
    kind.fields
        .iter()
        .filter_map(|f| Some((f.name.to_string(), attrs.get(f.name)?.clone())))
        .collect()
}

/// The stack's outputs, evaluated from what the state now records.
pub fn record_outputs(stack: &Stack, st: &mut State) {
    let mut outputs = BTreeMap::new();
    for (name, o) in &stack.outputs {
        if let Some(v) = o
            .value
            .evaluate(&|r: &Reference| st.attribute(&r.address, &r.attribute))
        {
            outputs.insert(name.clone(), v);
        }
    }
    st.outputs = outputs;
}
