//! Apply: carry out a plan, walking the graph in parallel.
//!
//! Two walks: first every delete (removed resources and the old half of
//! replacements) in reverse dependency order, then every create and update
//! in dependency order. Each resource starts as soon as what it waits for is
//! done. A failure skips only what depends on it; independent branches
//! finish. Each resource's result is journaled as it comes in (one small
//! record, closing its intent); the whole state is written every
//! [`CHECKPOINT_EVERY`] and at the end, so an interrupted apply loses at
//! most the resources that were in flight, and the cost per resource does
//! not grow with the size of the state. No lock is held across I/O: the
//! state in memory is changed under a mutex, the journal written after.

pub mod recover;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value as Json};
use std::sync::Mutex;

use crate::plan::{desired_properties, Action, Change, Plan};
use crate::state::{Backend, Entry, Intent, ResourceState, State, StateError};
use ralph_core::driver::{Context, Delete, Desired, Driver, Observed, Registry, Update};
use ralph_core::events::Event;
use ralph_core::graph::{walk, walk_prioritized, Outcome};
use ralph_stack::{Reference, Stack};

/// How often a running apply may write the whole state (a checkpoint). Between
/// checkpoints the results are in the journal, which every read replays.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// A checkpoint also waits until results for at least 1/`CHECKPOINT_SHARE`
/// of the state have been journaled since the last one: each whole-state
/// write is paid for by as many small ones, so the bytes written per
/// resource stay flat however large the state and however long the apply.
const CHECKPOINT_SHARE: usize = 2;

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
    /// A step outside a plan could not run or be recorded ([`run_step`]).
    #[error("{0}")]
    Step(String),
}

/// Why one step failed (reported per resource; the walk goes on elsewhere).
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("{0}")]
    Driver(String),
    #[error("no driver for kind {0}")]
    NoDriver(String),
    #[error("`{0}` refers to a resource that has no value yet")]
    Unresolved(String),
    #[error("cannot journal the intent, so nothing was done: {0}")]
    Journal(StateError),
    #[error("the change was made but the state could not be written: {0}")]
    Record(StateError),
    #[error("the change is recorded but its intent could not be closed: {0}")]
    Close(StateError),
    #[error("the old resource could not be deleted")]
    OldNotDeleted,
    #[error("{0} is not in the stack")]
    NotInStack(String),
}

/// What every step shares: the plan, the stack, the state being written,
/// the backend, the drivers and the context.
struct Steps<'a> {
    stack: Option<&'a Stack>,
    /// The state as results come in. Held only to read or change memory,
    /// never across a write.
    state: Mutex<State>,
    /// One whole-state write at a time (checkpoints and the last write).
    writing: tokio::sync::Mutex<()>,
    /// Results journaled since the last checkpoint.
    since_checkpoint: std::sync::atomic::AtomicUsize,
    backend: &'a dyn Backend,
    registry: &'a Registry,
    cx: &'a Context,
}

impl<'a> Steps<'a> {
    fn new(
        stack: Option<&'a Stack>,
        state: State,
        backend: &'a dyn Backend,
        registry: &'a Registry,
        cx: &'a Context,
    ) -> Self {
        Steps {
            stack,
            state: Mutex::new(state),
            writing: tokio::sync::Mutex::new(()),
            since_checkpoint: Default::default(),
            backend,
            registry,
            cx,
        }
    }

    /// Journals what is about to happen; returns the intent's id.
    async fn intend(
        &self,
        c: &Change,
        action: &str,
        lookup: Option<String>,
        props: &Map<String, Json>,
        protect: bool,
    ) -> Result<String, StepError> {
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
            .map_err(StepError::Journal)?;
        Ok(intent.id)
    }

    async fn done(&self, intent: &str) -> Result<(), StepError> {
        self.backend
            .close_intent(intent)
            .await
            .map_err(StepError::Close)
    }

    /// Records what `address` now holds (`None`: removed) in memory, then
    /// journals it, closing `closes`. The journal is written after the
    /// mutex is released; a checkpoint taken in between holds the change.
    async fn record(
        &self,
        address: &str,
        resource: Option<ResourceState>,
        closes: Option<&str>,
    ) -> Result<(), StepError> {
        let entry = {
            let mut st = self.state.lock().expect("state mutex");
            match &resource {
                Some(r) => {
                    st.resources.insert(address.to_string(), r.clone());
                }
                None => {
                    st.resources.remove(address);
                }
            }
            self.since_checkpoint
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Entry {
                lineage: st.lineage.clone(),
                since: st.serial,
                address: address.to_string(),
                resource,
                closes: closes.map(str::to_string),
            }
        };
        self.backend
            .record_result(&entry)
            .await
            .map_err(StepError::Record)
    }

    async fn put(
        &self,
        address: &str,
        rs: ResourceState,
        closes: Option<&str>,
    ) -> Result<(), StepError> {
        self.record(address, Some(rs), closes).await
    }

    /// Writes the whole state as it stands (a new serial). Results
    /// journaled before it are held by it; later ones replay over it.
    /// Nothing is written until enough has been journaled (see
    /// [`CHECKPOINT_SHARE`]).
    async fn checkpoint(&self) -> Result<(), StateError> {
        use std::sync::atomic::Ordering;
        let _one = self.writing.lock().await;
        let snapshot = {
            let mut st = self.state.lock().expect("state mutex");
            let journaled = self.since_checkpoint.load(Ordering::Relaxed);
            if journaled == 0 || journaled * CHECKPOINT_SHARE < st.resources.len() {
                return Ok(());
            }
            self.since_checkpoint.store(0, Ordering::Relaxed);
            st.serial += 1;
            st.clone()
        };
        self.backend.write(&snapshot).await
    }

    fn driver(&self, kind: &str) -> Result<&dyn Driver, StepError> {
        self.registry
            .driver(kind)
            .ok_or_else(|| StepError::NoDriver(kind.to_string()))
    }

    fn failed(&self, c: &Change, e: &StepError) {
        self.cx.reporter.report(Event::ResourceFailed {
            address: c.address.clone(),
            action: c.action,
            error: e.to_string(),
        });
    }

    /// Adopt: a resource found by its ownership tags that needs no change
    /// is recorded as the cloud reports it.
    async fn adopt(&self, c: &Change) -> Result<bool, StepError> {
        let (Some(stack), Some(obs)) = (self.stack, c.current_observed()) else {
            return Ok(false);
        };
        let Some(r) = stack.resources.get(&c.address) else {
            return Ok(false);
        };
        // What the cloud does not report (a secret's source, settings used
        // only at deletion) is recorded as the stack states it.
        let mut inputs = current_inputs(r.kind, &obs.attrs);
        for f in r.kind.fields {
            if !inputs.contains_key(f.name) {
                if let Some(v) = r.stated(f.name) {
                    inputs.insert(f.name.to_string(), v);
                }
            }
        }
        let rs = ResourceState::reported(
            &c.kind,
            &obs.id,
            inputs,
            obs.attrs.clone(),
            c.depends_on.clone(),
            r.protect,
        );
        self.put(&c.address, rs, None).await?;
        Ok(true)
    }

    /// Delete (a removed resource, or the old half of a replacement). One
    /// already gone from the cloud only leaves the state.
    async fn delete(&self, c: &Change) -> Result<(), StepError> {
        let t = Instant::now();
        self.cx.reporter.report(Event::ResourceStarted {
            address: c.address.clone(),
            kind: c.kind.clone(),
            action: c.action,
            phase: (c.action == Action::Replace).then_some("delete"),
        });
        let driver = self.driver(&c.kind)?;
        let intent = match c.current_observed() {
            Some(obs) => {
                let timeouts = self
                    .stack
                    .and_then(|s| s.resources.get(&c.address))
                    .map(|r| r.timeouts)
                    .unwrap_or_default();
                let intent = self
                    .intend(c, "delete", c.id.clone(), &Map::new(), c.protect)
                    .await?;
                let limiter = self.cx.limits.service(driver.service());
                let permit = limiter.acquire().await;
                let result = driver
                    .delete(
                        self.cx,
                        Delete {
                            have: &obs,
                            timeouts: &timeouts,
                        },
                    )
                    .await;
                drop(permit);
                result.map_err(|e| StepError::Driver(e.message))?;
                limiter.succeeded();
                Some(intent)
            }
            None => None,
        };
        let recorded = self
            .state
            .lock()
            .expect("state mutex")
            .resources
            .get(&c.address)
            .is_some_and(|r| Some(&r.id) == c.id.as_ref());
        if recorded {
            self.record(&c.address, None, intent.as_deref()).await?;
        } else if let Some(intent) = intent {
            self.done(&intent).await?;
        }
        if c.action == Action::Delete {
            self.cx.reporter.report(Event::ResourceFinished {
                address: c.address.clone(),
                action: c.action,
                id: c.id.clone().unwrap_or_default(),
                elapsed_ms: t.elapsed().as_millis(),
            });
        }
        Ok(())
    }

    /// The properties to send, references resolved from the state as it
    /// has filled so far.
    async fn resolve(
        &self,
        r: &ralph_stack::Resource,
        driver: &dyn Driver,
    ) -> Result<Map<String, Json>, StepError> {
        // Only the attributes this resource refers to, copied under the
        // mutex: never the whole state per resource.
        let known: BTreeMap<(String, String), Option<Json>> = {
            let st = self.state.lock().expect("state mutex");
            r.references()
                .into_iter()
                .map(|(rf, _)| {
                    let v = st.attribute(&rf.address, &rf.attribute);
                    ((rf.address, rf.attribute), v)
                })
                .collect()
        };
        let lookup = |reference: &Reference| {
            known
                .get(&(reference.address.clone(), reference.attribute.clone()))
                .cloned()
                .flatten()
        };
        let desired = desired_properties(r, driver, &self.cx.owner, &self.cx.base_dir, &lookup)
            .map_err(|e| StepError::Driver(e.to_string()))?;
        let mut props = Map::new();
        for (name, v) in desired {
            props.insert(name.clone(), v.ok_or(StepError::Unresolved(name))?);
        }
        Ok(props)
    }

    /// Create, update in place (which also resumes waiting for a resource
    /// that is not ready yet), or the new half of a replacement.
    async fn build(&self, c: &Change) -> Result<(), StepError> {
        let stack = self
            .stack
            .ok_or_else(|| StepError::NotInStack(c.address.clone()))?;
        let r = stack
            .resources
            .get(&c.address)
            .ok_or_else(|| StepError::NotInStack(c.address.clone()))?;
        let driver = self.driver(r.kind.kind)?;
        let mut props = self.resolve(r, driver).await?;
        let update = c.action == Action::Update;
        // A name left to the tool is chosen before the intent records it, so
        // a killed create is found again by it.
        if let Some(field) = r.kind.generates_names().filter(|_| !update) {
            if !props.contains_key(field) {
                if let Some(prefix) = props
                    .get(ralph_core::model::kinds::NAME_PREFIX)
                    .and_then(Json::as_str)
                {
                    let name = ralph_core::model::kinds::generated_name(prefix);
                    props.insert(field.to_string(), Json::String(name));
                }
            }
        }
        let want = Desired {
            address: &c.address,
            props: &props,
            owner: &self.cx.owner,
            timeouts: r.timeouts,
            replaces: c.id.as_deref().filter(|_| !update),
        };
        let lookup = if update {
            c.id.clone()
        } else {
            r.kind
                .name_field
                .and_then(|f| props.get(f))
                .and_then(Json::as_str)
                .map(str::to_string)
        };
        let spec = StepSpec {
            verb: if update { "update" } else { "create" },
            phase: (c.action == Action::Replace).then_some("create"),
            lookup,
            inputs: &props,
            inputs_if_failed: &props,
            protect: r.protect,
        };
        self.step(c, driver, spec, || async {
            match (update, c.current_observed()) {
                (true, Some(have)) => {
                    let changed: Vec<String> =
                        c.attributes.iter().map(|a| a.name.clone()).collect();
                    let u = Update {
                        want: &want,
                        have: &have,
                        changed: &changed,
                    };
                    driver.update(self.cx, u).await
                }
                _ => driver.create(self.cx, &want).await,
            }
        })
        .await
        .map(|_| ())
    }

    /// One resource's step, the same for apply's creates and updates and
    /// for the operations' changes outside a plan ([`run_step`]): reported
    /// as started, journaled as an intent, `call` (with its wait) under the
    /// service's limiter, the result recorded as it comes back and reported.
    /// A call that fails after leaving something (a create not ready in
    /// time, a rollout that failed and was rolled back) is recorded with
    /// `inputs_if_failed`, so the next run waits for it instead of making
    /// another; one that left nothing keeps its intent open, and whether it
    /// took effect is for the next run's recovery to find out.
    async fn step<F, Fut>(
        &self,
        c: &Change,
        driver: &dyn Driver,
        spec: StepSpec<'_>,
        call: F,
    ) -> Result<Observed, StepError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Observed, ralph_core::driver::DriverError>>,
    {
        let t = Instant::now();
        self.cx.reporter.report(Event::ResourceStarted {
            address: c.address.clone(),
            kind: c.kind.clone(),
            action: c.action,
            phase: spec.phase,
        });
        let intent = self
            .intend(c, spec.verb, spec.lookup, spec.inputs, spec.protect)
            .await?;
        // At most the service's current limit of operations at once.
        let limiter = self.cx.limits.service(driver.service());
        let permit = limiter.acquire().await;
        let result = call().await;
        drop(permit);
        if result.is_ok() {
            limiter.succeeded();
        }
        let record = |obs: &Observed, inputs: &Map<String, Json>| {
            ResourceState::reported(
                &c.kind,
                &obs.id,
                inputs.clone(),
                obs.attrs.clone(),
                c.depends_on.clone(),
                spec.protect,
            )
        };
        match result {
            Ok(obs) => {
                self.put(&c.address, record(&obs, spec.inputs), Some(&intent))
                    .await?;
                self.cx.reporter.report(Event::ResourceFinished {
                    address: c.address.clone(),
                    action: c.action,
                    id: obs.id.clone(),
                    elapsed_ms: t.elapsed().as_millis(),
                });
                Ok(obs)
            }
            Err(e) => {
                if let Some(partial) = &e.partial {
                    self.put(
                        &c.address,
                        record(partial, spec.inputs_if_failed),
                        Some(&intent),
                    )
                    .await?;
                }
                Err(StepError::Driver(e.message))
            }
        }
    }
}

/// How one step is journaled and recorded (see `Steps::step`).
struct StepSpec<'a> {
    /// The intent's action: create, update.
    verb: &'static str,
    /// The progress phase (a replacement's `create`).
    phase: Option<&'static str>,
    /// What finds the resource again after a kill (its id or name).
    lookup: Option<String>,
    /// The inputs recorded when the call succeeds.
    inputs: &'a Map<String, Json>,
    /// The inputs recorded with what a failed call left behind.
    inputs_if_failed: &'a Map<String, Json>,
    protect: bool,
}

/// One change to a recorded resource outside a plan: `deploy` and
/// `rollback`'s release, a failover's restart of the pods.
pub struct OneStep<'a> {
    pub address: &'a str,
    /// The inputs to record when it succeeds (a failure keeps the recorded
    /// ones).
    pub inputs: Map<String, Json>,
}

/// Runs `call` (the driver's update, or a capability such as a restart)
/// on the recorded resource `step.address` through the same
/// step as apply's updates (`Steps::step`: intent, the service's limiter,
/// the call and its wait, the journaled result, the events), then writes
/// the state once with the stack's outputs. Returns what the call reported
/// (or why it failed) and the state written.
pub async fn run_step<F, Fut>(
    stack: &Stack,
    state: State,
    backend: &dyn Backend,
    registry: &Registry,
    cx: &Context,
    step: OneStep<'_>,
    call: F,
) -> Result<(Result<Observed, String>, State), ApplyError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Observed, ralph_core::driver::DriverError>>,
{
    let recorded = state.resources.get(step.address).cloned().ok_or_else(|| {
        ApplyError::Step(StepError::NotInStack(step.address.to_string()).to_string())
    })?;
    let driver = registry
        .driver(&recorded.kind)
        .ok_or_else(|| ApplyError::Step(StepError::NoDriver(recorded.kind.clone()).to_string()))?;
    let change = Change {
        id: Some(recorded.id.clone()),
        protect: recorded.protect,
        depends_on: recorded.depends_on.clone(),
        current: Some(recorded.attrs.clone()),
        ..Change::new(step.address, &recorded.kind, Action::Update)
    };
    let steps = Steps::new(Some(stack), state, backend, registry, cx);
    let spec = StepSpec {
        verb: "update",
        phase: None,
        lookup: Some(recorded.id.clone()),
        inputs: &step.inputs,
        inputs_if_failed: &recorded.inputs,
        protect: recorded.protect,
    };
    let outcome = match steps.step(&change, driver, spec, call).await {
        Ok(o) => Ok(o),
        Err(StepError::Driver(message)) => {
            steps.failed(&change, &StepError::Driver(message.clone()));
            Err(message)
        }
        Err(e) => return Err(ApplyError::Step(e.to_string())),
    };
    let mut st = steps.state.into_inner().expect("state mutex");
    record_outputs(stack, &mut st);
    st.serial += 1;
    backend.write(&st).await?;
    if let Err(e) = backend.forget_results(st.serial).await {
        cx.reporter.report(Event::Warning {
            message: format!("could not drop the journaled results the state now holds (they are never replayed over it): {e}"),
        });
    }
    Ok((outcome, st))
}

/// Carries out `plan` against the cloud and the (locked) state.
/// `stack` is `None` for destroy plans.
#[allow(clippy::too_many_arguments)]
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
    // Results journaled from here replay over a written state of this
    // lineage: a state never written is written first.
    let mut state = state;
    // Written with the rest when the apply finishes.
    record_dependencies(&mut state, plan);
    if state.serial == 0 {
        state.serial = 1;
        backend.write(&state).await?;
    }
    let steps = Steps::new(stack, state, backend, registry, cx);
    let by_key = keyed(plan);
    let mut report = ApplyReport::default();

    // Adopted resources that need no change are recorded first.
    report.adopted = adopt_unchanged(&steps, plan).await?;

    let Walks {
        deleting,
        reverse,
        building,
        forward,
    } = walks_of(&by_key);
    // Longest expected chain first: the critical path never queues behind
    // quick side branches when more resources are ready than may run.
    let cost = |k: &str| {
        building
            .get(k)
            .and_then(|c| registry.driver(&c.kind))
            .map(|d| d.typical_seconds())
            .unwrap_or(1)
    };
    cx.reporter
        .report(planned_steps(&by_key, &reverse, &forward, registry));
    let steps_ref = &steps;
    let walks_done = tokio::sync::Notify::new();
    let walks = async {
        let delete_outcomes = walk(&reverse, options.parallelism, stop, |k| {
            let c = deleting[&k];
            async move {
                steps_ref.delete(c).await.map_err(|e| {
                    steps_ref.failed(c, &e);
                    e.to_string()
                })
            }
        })
        .await;

        let failed_deletes: BTreeSet<String> = delete_outcomes
            .iter()
            .filter(|(_, o)| **o != Outcome::Done)
            .map(|(k, _)| k.clone())
            .collect();
        let priority = ralph_core::graph::remaining_cost(&forward, &cost);
        // Resources that typically take seconds, not minutes.
        let quick: BTreeSet<String> = forward.keys().filter(|k| cost(k) <= 10).cloned().collect();
        let failed_deletes = &failed_deletes;
        let build_outcomes = walk_prioritized(
            &forward,
            &priority,
            &quick,
            options.parallelism,
            stop,
            |k| {
                let c = building[&k];
                async move {
                    if failed_deletes.contains(&c.address) {
                        return Err(StepError::OldNotDeleted.to_string());
                    }
                    steps_ref.build(c).await.map_err(|e| {
                        steps_ref.failed(c, &e);
                        e.to_string()
                    })
                }
            },
        )
        .await;
        walks_done.notify_one();
        (delete_outcomes, build_outcomes)
    };
    // Checkpoints beside the walks: no step waits for a whole-state write.
    let checkpoints = checkpoints(steps_ref, &walks_done);
    let ((delete_outcomes, build_outcomes), ()) = tokio::join!(walks, checkpoints);

    tally(&by_key, &delete_outcomes, &build_outcomes, cx, &mut report);

    let st = finish(steps, plan, stack, backend, cx).await?;
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

/// Records the adopted resources that need no change; returns how many.
async fn adopt_unchanged(steps: &Steps<'_>, plan: &Plan) -> Result<usize, ApplyError> {
    let mut adopted = 0;
    for c in plan
        .changes
        .iter()
        .filter(|c| c.adopt && c.action == Action::NoOp)
    {
        match steps.adopt(c).await {
            Ok(true) => adopted += 1,
            Ok(false) => {}
            Err(StepError::Record(e)) => return Err(ApplyError::State(e)),
            Err(e) => {
                return Err(ApplyError::State(StateError::Io {
                    path: steps.backend.describe(),
                    error: std::io::Error::other(e.to_string()),
                }))
            }
        }
    }
    Ok(adopted)
}

/// Records the stack's dependencies for the resources that need no change
/// but whose record names others (the stack gained or dropped a reference,
/// or an adoption recorded none): a later destroy from the record alone
/// (`--refresh=false`, a stack that no longer declares them) then goes in
/// the stack's order. A record whose stack now names what a release rolled
/// out forgets the stack values kept beside the release
/// (`Change::release_settled`). Returns how many records changed.
pub fn record_dependencies(state: &mut State, plan: &Plan) -> usize {
    let mut changed = 0;
    for c in plan
        .changes
        .iter()
        .filter(|c| c.action == Action::NoOp && !c.adopt)
    {
        let Some(r) = state.resources.get_mut(&c.address) else {
            continue;
        };
        if c.release_settled {
            let key = ralph_core::driver::STACK_VALUES_ATTR;
            let forgot = [r.attrs.remove(key), r.inputs.remove(key)];
            changed += usize::from(forgot.iter().any(Option::is_some));
        }
        let mut had = r.depends_on.clone();
        let mut now = c.depends_on.clone();
        had.sort();
        now.sort();
        if had != now {
            r.depends_on = c.depends_on.clone();
            changed += 1;
        }
    }
    changed
}

/// Writes a checkpoint every [`CHECKPOINT_EVERY`] until the walks are done.
async fn checkpoints(steps: &Steps<'_>, walks_done: &tokio::sync::Notify) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
            _ = walks_done.notified() => break,
        }
        if let Err(e) = steps.checkpoint().await {
            steps.cx.reporter.report(Event::Warning {
                message: format!(
                    "could not write a checkpoint of the state (the results are in the journal, which the next run replays): {e}"
                ),
            });
        }
    }
}

/// The two walks of an apply: deletes with their reverse dependencies
/// (dependents first), builds with their dependencies (dependencies first).
struct Walks<'p> {
    deleting: BTreeMap<String, &'p Change>,
    reverse: BTreeMap<String, Vec<String>>,
    building: BTreeMap<String, &'p Change>,
    forward: BTreeMap<String, Vec<String>>,
}

fn walks_of<'p>(by_key: &BTreeMap<String, &'p Change>) -> Walks<'p> {
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
    Walks {
        deleting,
        reverse,
        building,
        forward,
    }
}

/// The `apply_started` event: every step with its service, typical time
/// and what it waits for.
fn planned_steps(
    by_key: &BTreeMap<String, &Change>,
    reverse: &BTreeMap<String, Vec<String>>,
    forward: &BTreeMap<String, Vec<String>>,
    registry: &Registry,
) -> Event {
    Event::ApplyStarted {
        steps: by_key
            .iter()
            .filter(|(_, c)| c.action != Action::NoOp)
            .map(|(k, c)| ralph_core::events::PlannedStep {
                address: c.address.clone(),
                kind: c.kind.clone(),
                action: c.action,
                service: registry
                    .driver(&c.kind)
                    .map(|d| d.service().to_string())
                    .unwrap_or_default(),
                typical_s: registry
                    .driver(&c.kind)
                    .map(|d| d.typical_seconds())
                    .unwrap_or(1),
                after: match c.action {
                    Action::Delete => reverse.get(k).cloned().unwrap_or_default(),
                    _ => forward.get(k).cloned().unwrap_or_default(),
                },
            })
            .collect(),
    }
}

/// After the walks: the outputs from what is now recorded, the whole state
/// written once more, and the journaled results it holds dropped.
async fn finish(
    steps: Steps<'_>,
    plan: &Plan,
    stack: Option<&Stack>,
    backend: &dyn Backend,
    cx: &Context,
) -> Result<State, ApplyError> {
    // Outputs, from what is now recorded.
    let mut st = steps.state.into_inner().expect("state mutex");
    match stack {
        Some(stack) => {
            record_outputs(stack, &mut st);
            st.stack_file = Some(crate::state::stack_file_identity(&stack.path));
        }
        None => st.outputs.clear(),
    }
    st.applied_plan = Some(plan.created_at);
    st.serial += 1;
    backend.write(&st).await?;
    // Everything journaled is in what was just written.
    if let Err(e) = backend.forget_results(st.serial).await {
        cx.reporter.report(Event::Warning {
            message: format!("could not drop the journaled results the state now holds (they are never replayed over it): {e}"),
        });
    }
    Ok(st)
}

/// Each change under a key of its own (an address, or for a second
/// change of one address, the address and the id it deletes).
fn keyed(plan: &Plan) -> BTreeMap<String, &Change> {
    let mut per_address: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &plan.changes {
        *per_address.entry(c.address.as_str()).or_default() += 1;
    }
    let key = |c: &Change| -> String {
        let dup = per_address[c.address.as_str()] > 1;
        if dup && c.action == Action::Delete {
            format!("{} ({})", c.address, c.id.clone().unwrap_or_default())
        } else {
            c.address.clone()
        }
    };
    plan.changes.iter().map(|c| (key(c), c)).collect()
}

/// The outcome of every change, counted and reported.
fn tally(
    by_key: &BTreeMap<String, &Change>,
    delete_outcomes: &BTreeMap<String, Outcome>,
    build_outcomes: &BTreeMap<String, Outcome>,
    cx: &Context,
    report: &mut ApplyReport,
) {
    for (k, c) in by_key {
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
}

/// For an adopted resource: its properties as the cloud reports them.
fn current_inputs(
    kind: &ralph_core::model::kinds::KindSchema,
    attrs: &Map<String, Json>,
) -> Map<String, Json> {
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
