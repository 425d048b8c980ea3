//! Operations: what each command does, between the command line (which
//! parses arguments and prints) and the engine (plan, apply, drivers).
//!
//! Every operation that changes the cloud or the state runs through one
//! locked runner, [`locked`]: take the state lock (a dead holder's is taken
//! over with a warning), keep a snapshot of the state as it was, settle the
//! intents an interrupted run left open, do the work (which journals its own
//! intents), and release the lock whatever happened. [`SignalGuard`] gives
//! the work the same Ctrl-C behaviour everywhere: the first interrupt starts
//! nothing new and lets operations in flight be recorded, a second one exits
//! at once (the journal lets the next run recover).

pub mod apply;
pub mod backup;
pub mod db;
pub mod drift;
pub mod failover;
pub mod release;
pub mod state_cmds;
pub mod status;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::apply::recover::{recover, Recovery, FAILOVER};
use crate::plan::refresh::refresh;
use crate::plan::{destroy_changes, diff, Action, Plan, PLAN_FORMAT};
use crate::state::{Backend, LockInfo, State, StateError};
pub use ralph_core::driver::capability::Role;
use ralph_core::driver::{Context, Observed, Owner, Registry};
use ralph_core::events::{Event, Reporter};
use ralph_stack::{Diagnostics, LoadOptions, Reference, Stack};

/// Exit code of a run stopped by Ctrl-C / SIGTERM.
pub const EXIT_INTERRUPTED: i32 = 130;

/// What went wrong in an operation, for the command line to report.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    State(#[from] StateError),
    /// The operation refused to start; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// A resource's driver failed.
    #[error("{address}: {message}")]
    Resource { address: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl OpError {
    pub fn refused(message: impl Into<String>) -> OpError {
        OpError::Refused(message.into())
    }
}

/// A stack loaded for one environment, with its state backend and the
/// kinds this build knows: what every stack operation starts from.
pub struct Session {
    pub stack: Stack,
    pub backend: Box<dyn Backend>,
    pub registry: Registry,
    /// How long to wait for a lock another run holds (`--lock-timeout`);
    /// `None`: fail at once, naming the holder.
    pub lock_timeout: Option<std::time::Duration>,
    /// `--target` / `--exclude`, `--replace` and `--refresh` of this run.
    pub scope: crate::plan::Scope,
}

/// Closes what a command opened to reach private stores (the proxy pods of
/// forwards through a cluster): called once the command has finished.
pub async fn close_connections() {
    ralph_service::kubernetes::forward::close_all().await;
}

/// The backend `location` names for `stack`, with the sealer the
/// environment and the stack's `state` settings ask for. Without
/// `--state`/`RALPH_DEPLOY_STATE`, the stack's `state.url` decides, then the
/// local directory.
pub fn backend_for(location: &StateLocation, stack: &Stack) -> Result<Box<dyn Backend>, String> {
    crate::state::open(
        location,
        &stack.name,
        &stack.environment,
        stack.state.kms_key.as_deref(),
        stack.state.encrypt,
        stack.cloud.state_region(),
    )
}

/// The resource `id` of `kind`, for an import to `address` (`import`
/// command or `import:` entry): it must exist and belong to no other stack.
pub async fn find_to_import(
    driver: &dyn ralph_core::driver::Driver,
    cx: &Context,
    address: &str,
    kind: &str,
    id: &str,
) -> Result<Observed, OpError> {
    let found = driver.lookup(cx, id).await.map_err(|e| {
        OpError::Other(format!(
            "import of `{address}`: looking up {kind} {id}: {}",
            e.message
        ))
    })?;
    let Some(obs) = found else {
        return Err(OpError::refused(format!(
            "import of `{address}`: no {kind} with id `{id}` exists (at {}); nothing was changed",
            cx.party_of(kind).1
        )));
    };
    if let Some(owner) = &obs.owner {
        if *owner != cx.owner {
            return Err(OpError::refused(format!(
                "import of `{address}`: {kind} {id} belongs to stack `{}` environment `{}` (its ownership tags say so); nothing was changed",
                owner.stack, owner.environment
            )));
        }
    }
    Ok(obs)
}

pub use crate::state::StateLocation;

#[derive(Debug)]
pub enum LoadError {
    Stack(Box<Diagnostics>),
    State(String),
}

impl Session {
    /// Loads and validates the stack; problems come back all at once.
    pub fn load(
        path: &Path,
        options: &LoadOptions,
        state: &StateLocation,
    ) -> Result<Session, LoadError> {
        let registry = crate::registry();
        let stack =
            Stack::load(path, options, &registry).map_err(|d| LoadError::Stack(Box::new(d)))?;
        // Without --state, the stack's `state.url`, then local files.
        let location = match (state, &stack.state.url) {
            (StateLocation::Dir(_), Some(url)) => StateLocation::Url(url.clone()),
            (l, _) => l.clone(),
        };
        let backend = backend_for(&location, &stack).map_err(LoadError::State)?;
        Ok(Session {
            stack,
            backend,
            registry,
            lock_timeout: None,
            scope: Default::default(),
        })
    }

    /// One resource step outside a plan (a release, a failover's restart)
    /// on this session's stack, state store and kinds: see
    /// [`crate::apply::run_step`].
    pub(crate) async fn run_step<F, Fut>(
        &self,
        cx: &Context,
        state: State,
        step: crate::apply::OneStep<'_>,
        call: F,
    ) -> Result<(Result<Observed, String>, State), crate::apply::ApplyError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Observed, ralph_core::driver::DriverError>>,
    {
        let backend = self.backend.as_ref();
        crate::apply::run_step(&self.stack, state, backend, &self.registry, cx, step, call).await
    }

    pub fn owner(&self) -> Owner {
        Owner {
            stack: self.stack.name.clone(),
            environment: self.stack.environment.clone(),
        }
    }

    pub fn context(&self, reporter: Arc<dyn Reporter>) -> Context {
        Context::new(
            self.owner(),
            self.stack.base_dir(),
            self.stack.cloud.clone(),
            reporter,
        )
    }

    /// The recorded state, or a new empty one; `true` when it existed.
    pub async fn read_state(&self) -> Result<(State, bool), OpError> {
        match self.backend.read().await? {
            Some(st) => {
                if st.stack != self.stack.name || st.environment != self.stack.environment {
                    return Err(OpError::refused(format!(
                        "the state at {} belongs to stack `{}` environment `{}`, not `{}` `{}`",
                        self.backend.describe(),
                        st.stack,
                        st.environment,
                        self.stack.name,
                        self.stack.environment
                    )));
                }
                Ok((st, true))
            }
            None => Ok((State::new(&self.stack.name, &self.stack.environment), false)),
        }
    }

    /// Refreshes and diffs: the plan for this stack (or its destruction)
    /// against `state` and the cloud.
    pub async fn make_plan(
        &self,
        state: &State,
        existed: bool,
        cx: &Context,
        destroy: bool,
    ) -> Result<Plan, OpError> {
        self.make_plan_of(state, existed, cx, destroy, &self.scope)
            .await
    }

    /// A plan of the part of the stack `selection` covers (all of it when
    /// empty); a partial plan says so in a warning.
    pub async fn make_plan_of(
        &self,
        state: &State,
        existed: bool,
        cx: &Context,
        destroy: bool,
        scope: &crate::plan::Scope,
    ) -> Result<Plan, OpError> {
        let selection = &scope.selection;
        self.replaced_exist(&scope.replace)?;
        // `moved` renames state entries first; the diff runs on the result.
        let mut moved_state;
        let mut moves = Vec::new();
        let state = if destroy || self.stack.moved.is_empty() {
            state
        } else {
            moved_state = state.clone();
            moves = moved_state
                .apply_moves(&self.stack.moves())
                .into_iter()
                .map(|(from, to)| crate::plan::Move { from, to })
                .collect();
            &moved_state
        };
        self.warn_other_stack_file(state, cx);
        let mut refreshed = if scope.refresh {
            refresh(Some(&self.stack), state, &self.registry, cx)
                .await
                .map_err(|e| OpError::Other(e.to_string()))?
        } else {
            cx.reporter.report(ralph_core::events::Event::Warning {
                message: "planned from the state alone (--refresh=false): changes made outside ralph-deploy are not seen".into(),
            });
            crate::plan::Refreshed::from_state(state)
        };
        if !destroy && scope.refresh {
            self.planned_imports(state, &mut refreshed, cx).await?;
        }
        let mut changes = if destroy {
            let mut changes = destroy_changes(state, &refreshed);
            if scope.refresh {
                changes.extend(self.retired_changes(state, cx).await?);
            }
            crate::plan::with_declared_dependencies(&mut changes, &self.stack);
            changes
        } else {
            diff(
                &self.stack,
                state,
                &refreshed,
                &self.registry,
                &cx.owner,
                &scope.replace,
            )
            .map_err(|e| OpError::Other(e.to_string()))?
        };
        changes.sort_by(|a, b| a.address.cmp(&b.address).then(a.action.cmp(&b.action)));
        if !destroy {
            self.preflight(&changes, cx).await?;
        }
        if !selection.is_empty() {
            // What each resource needs: the stack's references and
            // depends_on, and for what the stack no longer declares, the
            // dependencies the state recorded.
            let mut deps: std::collections::BTreeMap<String, Vec<String>> = state
                .resources
                .iter()
                .map(|(a, r)| (a.clone(), r.depends_on.clone()))
                .collect();
            for c in &changes {
                deps.insert(c.address.clone(), c.depends_on.clone());
            }
            if !destroy {
                for r in self.stack.resources.values() {
                    deps.insert(r.address.clone(), r.dependencies());
                }
            }
            let left_out = selection
                .apply(&mut changes, &deps, destroy)
                .map_err(OpError::refused)?;
            cx.reporter.report(ralph_core::events::Event::Warning {
                message: format!(
                    "this run covers part of the stack ({}): {} change(s) left out{}; run without them to converge the rest",
                    selection_text(selection),
                    left_out.len(),
                    if left_out.is_empty() { String::new() } else { format!(" ({})", left_out.join(", ")) }
                ),
            });
        }
        Ok(Plan {
            format: PLAN_FORMAT.into(),
            stack: self.stack.name.clone(),
            stack_path: self.stack.path.display().to_string(),
            environment: self.stack.environment.clone(),
            stack_digest: self.stack.digest.clone(),
            state_lineage: existed.then(|| state.lineage.clone()),
            state_serial: if existed { state.serial } else { 0 },
            destroy,
            moves,
            changes,
            created_at: chrono::Utc::now(),
            selection: selection.clone(),
            replace: scope.replace.clone(),
            refreshed: scope.refresh,
        })
    }

    /// The deletions of the old primaries this owner's failovers retired
    /// (`Promotion::retired`), asked of each promotable kind the state
    /// holds: each holds its network (a subnet group, a peering) until it
    /// goes, so it goes first, as the primary it was would.
    async fn retired_changes(
        &self,
        state: &State,
        cx: &Context,
    ) -> Result<Vec<crate::plan::Change>, OpError> {
        let kinds: std::collections::BTreeSet<&str> =
            state.resources.values().map(|r| r.kind.as_str()).collect();
        let mut changes = Vec::new();
        for kind in kinds {
            let Some(promotion) = self.registry.driver(kind).and_then(|d| d.promotion()) else {
                continue;
            };
            let retired = promotion.retired(cx).await.map_err(|e| OpError::Resource {
                address: kind.to_string(),
                message: format!("finding the old primaries failovers retired: {}", e.message),
            })?;
            changes.extend(
                retired
                    .into_iter()
                    .map(|r| crate::plan::retired_change(kind, r, state)),
            );
        }
        Ok(changes)
    }

    /// Every `--replace` names a resource of the stack.
    fn replaced_exist(&self, replace: &[String]) -> Result<(), OpError> {
        for name in replace {
            if !self
                .stack
                .resources
                .keys()
                .any(|a| crate::plan::Selection::names(name, a))
            {
                let hint = ralph_core::model::kinds::did_you_mean(
                    name,
                    self.stack.resources.keys().map(|k| k.as_str()),
                )
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
                return Err(OpError::refused(format!(
                    "--replace {name}: the stack declares no such resource{hint}. Nothing was changed"
                )));
            }
        }
        Ok(())
    }

    /// The state was last applied from another file of the same stack name.
    fn warn_other_stack_file(&self, state: &State, cx: &Context) {
        if let Some(recorded) = &state.stack_file {
            let here = crate::state::stack_file_identity(&self.stack.path);
            if *recorded != here {
                cx.reporter.report(ralph_core::events::Event::Warning {
                    message: format!(
                        "the state of stack `{}` environment `{}` ({}) was last applied from {recorded}, not from {here}: both files are named `{}`, so they manage the same resources. If {here} is meant to be a deployment of its own, give it another `name:`",
                        self.stack.name,
                        self.stack.environment,
                        self.backend.describe(),
                        self.stack.name,
                    ),
                });
            }
        }
    }

    /// What the providers' own listings refuse, before anything is changed.
    async fn preflight(
        &self,
        changes: &[ralph_core::change::Change],
        cx: &Context,
    ) -> Result<(), OpError> {
        let mut refused = Vec::new();
        for c in changes {
            if !matches!(c.action, Action::Create | Action::Replace | Action::Update) {
                continue;
            }
            if let Some(driver) = self.registry.driver(&c.kind) {
                match driver.preflight(cx, c).await {
                    // A new project: the API is enabled by this apply,
                    // before the resource; the dated table still holds.
                    Err(e) if e.api_disabled => cx.reporter.report(ralph_core::events::Event::Warning {
                        message: format!(
                            "{}: not checked against the provider's own listing, whose API the project has not enabled yet (the dated support table still applies)",
                            c.address
                        ),
                    }),
                    Err(e) => refused.push(format!("{}: {}", c.address, e.message)),
                    Ok(()) => {}
                }
            }
        }
        if !refused.is_empty() {
            return Err(OpError::refused(format!(
                "{}; nothing was changed",
                refused.join("; ")
            )));
        }
        Ok(())
    }

    /// The stack's `import:` entries not in the state yet: each resource is
    /// looked up by its id and planned as an adoption (recorded by the
    /// apply, then brought to the stack and tagged like any resource).
    async fn planned_imports(
        &self,
        state: &State,
        refreshed: &mut crate::plan::Refreshed,
        cx: &Context,
    ) -> Result<(), OpError> {
        for entry in &self.stack.imports {
            let address = &entry.to.value;
            if state.resources.contains_key(address) {
                continue;
            }
            let Some(r) = self.stack.resources.get(address) else {
                continue;
            };
            let Some(driver) = self.registry.driver(r.kind.kind) else {
                continue;
            };
            let obs = find_to_import(driver, cx, address, r.kind.kind, &entry.id.value).await?;
            refreshed.orphans.retain(|(_, _, o)| o.id != obs.id);
            refreshed.adopted.insert(address.clone());
            refreshed
                .kinds
                .insert(address.clone(), r.kind.kind.to_string());
            refreshed.current.insert(address.clone(), obs);
        }
        Ok(())
    }

    /// The resources whose kind offers `role`, with their properties
    /// resolved from the state (hosts, ARNs and endpoints come from applied
    /// resources).
    pub async fn resolved_all(
        &self,
        role: Role,
        unapplied: Unapplied,
    ) -> Result<Vec<(String, Map<String, Json>)>, OpError> {
        let (state, _) = self.read_state().await?;
        self.resolved_in(&state, role, unapplied)
    }

    /// The driver of the stack's resource at `address`.
    pub fn driver_at(&self, address: &str) -> Result<&dyn ralph_core::driver::Driver, OpError> {
        let kind = self
            .stack
            .resources
            .get(address)
            .map(|r| r.kind.kind)
            .ok_or_else(|| OpError::Other(format!("{address} is not a resource of the stack")))?;
        self.registry
            .driver(kind)
            .ok_or_else(|| OpError::Other(format!("no driver for {kind}")))
    }

    /// [`Session::resolved_all`] against a state already read (commands
    /// that look at several kinds read it once).
    pub fn resolved_in(
        &self,
        state: &crate::state::State,
        role: Role,
        unapplied: Unapplied,
    ) -> Result<Vec<(String, Map<String, Json>)>, OpError> {
        let owner = self.owner();
        let mut out = Vec::new();
        for r in self
            .stack
            .resources
            .values()
            .filter(|r| self.registry.offers(r.kind.kind, role))
        {
            let driver = self
                .registry
                .driver(r.kind.kind)
                .ok_or_else(|| OpError::Other(format!("no driver for {}", r.kind.kind)))?;
            let lookup = |reference: &Reference| {
                state
                    .attribute(&reference.address, &reference.attribute)
                    .or_else(|| {
                        (unapplied == Unapplied::Placeholder).then(|| {
                            Json::String(format!(
                                "({}.{} known after apply)",
                                reference.address, reference.attribute
                            ))
                        })
                    })
            };
            let desired =
                crate::plan::desired_properties(r, driver, &owner, &self.stack.base_dir(), &lookup)
                    .map_err(|e| OpError::Other(e.to_string()))?;
            let mut props = Map::new();
            for (k, v) in desired {
                match (v, unapplied) {
                    (Some(v), _) => {
                        props.insert(k, v);
                    }
                    (None, Unapplied::Placeholder) => {
                        props.insert(k, Json::String("(known after apply)".into()));
                    }
                    (None, Unapplied::Refuse) => {
                        return Err(OpError::refused(format!(
                            "`{k}` of {} refers to a resource that is not applied yet: run apply first",
                            r.address
                        )));
                    }
                }
            }
            // A name the tool generated is the state's.
            if let Some(field) = r.kind.generates_names() {
                if !props.contains_key(field) {
                    if let Some(v) = state.attribute(&r.address, field) {
                        props.insert(field.to_string(), v);
                    }
                }
            }
            out.push((r.address.clone(), props));
        }
        Ok(out)
    }

    /// [`Session::resolved_all`], refusing a stack without any.
    pub async fn resolved_targets(
        &self,
        role: Role,
        unapplied: Unapplied,
    ) -> Result<Vec<(String, Map<String, Json>)>, OpError> {
        let out = self.resolved_all(role, unapplied).await?;
        if out.is_empty() {
            return Err(OpError::refused(format!(
                "{} declares no {}",
                self.stack.path.display(),
                self.registry.role_text(role)
            )));
        }
        Ok(out)
    }
}

fn selection_text(s: &crate::plan::Selection) -> String {
    let mut parts: Vec<String> = s.targets.iter().map(|t| format!("--target {t}")).collect();
    parts.extend(s.excludes.iter().map(|e| format!("--exclude {e}")));
    parts.join(" ")
}

/// What to do with a property that refers to a resource not applied yet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Unapplied {
    Refuse,
    /// Show it as `(known after apply)`, for offline rendering.
    Placeholder,
}

/// What the locked runner hands the work: the state as recorded once open
/// intents are settled.
pub struct Locked {
    pub state: State,
    pub existed: bool,
    pub recovery: Recovery,
}

/// The one locked runner: lock, snapshot, recover, work, unlock.
pub async fn locked<T, F, Fut>(
    s: &Session,
    cx: &Context,
    operation: &str,
    work: F,
) -> Result<T, OpError>
where
    F: FnOnce(Locked) -> Fut,
    Fut: std::future::Future<Output = Result<T, OpError>>,
{
    run_locked(s, cx, operation, true, work).await
}

/// [`locked`] for an operation that changes no resource of the stack
/// (`backup`, `restore`): no copy of the state is kept before it, so they
/// do not push the copies kept before applies out of the history.
pub async fn locked_without_copy<T, F, Fut>(
    s: &Session,
    cx: &Context,
    operation: &str,
    work: F,
) -> Result<T, OpError>
where
    F: FnOnce(Locked) -> Fut,
    Fut: std::future::Future<Output = Result<T, OpError>>,
{
    run_locked(s, cx, operation, false, work).await
}

async fn run_locked<T, F, Fut>(
    s: &Session,
    cx: &Context,
    operation: &str,
    copy: bool,
    work: F,
) -> Result<T, OpError>
where
    F: FnOnce(Locked) -> Fut,
    Fut: std::future::Future<Output = Result<T, OpError>>,
{
    let lock = LockInfo::for_operation(operation);
    let started = std::time::Instant::now();
    let mut last_said: Option<std::time::Instant> = None;
    let taken = loop {
        match s.backend.lock(&lock).await {
            Ok(taken) => break taken,
            Err(crate::state::StateError::Locked(held))
                if s.lock_timeout.is_some_and(|t| started.elapsed() < t)
                    && !cx.stop.load(Ordering::SeqCst) =>
            {
                // Queue behind the holder, the way CI queues deployments.
                if last_said.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(30)) {
                    cx.reporter.report(Event::Warning {
                        message: format!(
                            "waiting for the lock ({}s of {}s): held by `{}` (pid {} on {}, user {}, since {})",
                            started.elapsed().as_secs(),
                            s.lock_timeout.unwrap_or_default().as_secs(),
                            held.holder.operation,
                            held.holder.pid,
                            held.holder.host,
                            held.holder.user,
                            held.holder.since.format("%H:%M:%S UTC"),
                        ),
                    });
                    last_said = Some(std::time::Instant::now());
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(stale) = taken {
        cx.reporter.report(Event::Warning {
            message: format!(
                "took over a stale lock: `{}` (pid {} on {}, since {}) no longer holds it (its process is gone, or its lease ran out without renewal); its work is recovered from the state and the cloud",
                stale.operation, stale.pid, stale.host, stale.since
            ),
        });
    }
    // A second Ctrl-C ends the work where it stands (the intent journal
    // lets the next run recover it) and still releases the lock below.
    let held = HeldLock::mark();
    let work = async {
        crate::apply::recover::fold_results(s.backend.as_ref()).await?;
        if copy {
            s.backend.snapshot_before(operation).await.map_err(|e| {
                OpError::refused(format!(
                    "cannot keep a copy of the state before {operation}, so nothing was changed: {e}"
                ))
            })?;
        }
        let (mut state, existed) = s.read_state().await?;
        // Settle what an interrupted run left open before anything else.
        let recovery = recover(s.backend.as_ref(), &mut state, &s.registry, cx).await?;
        if let Some(f) = recovery.failover.as_ref().filter(|_| operation != FAILOVER) {
            return Err(OpError::refused(format!(
                "a failover of {} started at {} did not finish, so {operation} would work from a half-changed database topology; nothing was changed. Finish it first: ralph-deploy failover {} --env {}",
                f.address,
                f.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                s.stack.path.display(),
                s.stack.environment
            )));
        }
        work(Locked {
            state,
            existed,
            recovery,
        })
        .await
    };
    let mut aborted = false;
    let result = tokio::select! {
        r = work => r,
        _ = abort_requested() => {
            aborted = true;
            Err(OpError::refused(
                "stopped at once by a second interrupt; the operations in flight are in the intent journal and the next run recovers them",
            ))
        }
    };
    let unlocked =
        tokio::time::timeout(std::time::Duration::from_secs(10), s.backend.unlock(&lock)).await;
    match unlocked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => cx.reporter.report(Event::Warning {
            message: format!("could not release the lock: {e}"),
        }),
        Err(_) => cx.reporter.report(Event::Warning {
            message: "could not release the lock within 10s: the next run takes it over once its holder is gone or its lease runs out".into(),
        }),
    }
    drop(held);
    if aborted {
        std::process::exit(EXIT_INTERRUPTED);
    }
    result
}

/// How a second interrupt reaches the runner holding the lock.
fn abort_signal() -> &'static (AtomicBool, tokio::sync::Notify, AtomicBool) {
    static S: std::sync::OnceLock<(AtomicBool, tokio::sync::Notify, AtomicBool)> =
        std::sync::OnceLock::new();
    S.get_or_init(|| {
        (
            AtomicBool::new(false),
            tokio::sync::Notify::new(),
            AtomicBool::new(false),
        )
    })
}

/// Resolves once a second interrupt asked the runner to stop at once.
async fn abort_requested() {
    let (requested, notify, _) = abort_signal();
    while !requested.load(Ordering::SeqCst) {
        notify.notified().await;
    }
}

/// While alive, a lock is held: a second interrupt then goes through the
/// runner (which releases it) instead of exiting at once.
struct HeldLock;

impl HeldLock {
    fn mark() -> HeldLock {
        abort_signal().2.store(true, Ordering::SeqCst);
        HeldLock
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        abort_signal().2.store(false, Ordering::SeqCst);
    }
}

/// While alive, Ctrl-C / SIGTERM set the context's stop flag (nothing new
/// starts, waits end, operations in flight are recorded); a second signal
/// exits at once with [`EXIT_INTERRUPTED`]. Taken by every operation once
/// it starts changing things (before that, an interrupt simply ends it).
pub struct SignalGuard(tokio::task::JoinHandle<()>);

impl SignalGuard {
    pub fn install(cx: &Context) -> SignalGuard {
        let stop = cx.stop.clone();
        let reporter = cx.reporter.clone();
        SignalGuard(tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            stop.store(true, Ordering::SeqCst);
            reporter.report(Event::Warning {
                message: "interrupted: recording the operations in flight and starting no new ones (interrupt again to exit at once; the next run recovers)".into(),
            });
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            reporter.report(Event::Warning {
                message: "stopping at once: releasing the lock; the intent journal lets the next run recover".into(),
            });
            let (requested, notify, held) = abort_signal();
            if !held.load(Ordering::SeqCst) {
                std::process::exit(EXIT_INTERRUPTED);
            }
            requested.store(true, Ordering::SeqCst);
            notify.notify_one();
            // The runner releases the lock and exits; a third interrupt, or
            // a release that hangs, exits regardless.
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
                _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => {},
            }
            std::process::exit(EXIT_INTERRUPTED);
        }))
    }

    pub fn interrupted(cx: &Context) -> bool {
        cx.stop.load(Ordering::SeqCst)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What `state restore` did.
pub struct Restored {
    pub from_serial: u64,
    pub serial: u64,
    pub resources: usize,
    pub outputs: usize,
}

/// Makes a kept snapshot the current state again, under the lock, as a new
/// serial of the same lineage (the state it replaces is kept as a snapshot
/// by the runner first).
pub async fn restore_snapshot(s: &Session, cx: &Context, which: &str) -> Result<Restored, OpError> {
    locked(s, cx, "state restore", |l| async move {
        let mut restored = s.backend.read_snapshot(which).await?;
        if restored.stack != s.stack.name || restored.environment != s.stack.environment {
            return Err(OpError::refused(format!(
                "snapshot `{which}` belongs to stack `{}` environment `{}`; nothing was changed",
                restored.stack, restored.environment
            )));
        }
        if l.existed && restored.lineage != l.state.lineage {
            return Err(OpError::refused(format!(
                "snapshot `{which}` is of another state lineage ({}, the current state is {}); nothing was changed",
                restored.lineage, l.state.lineage
            )));
        }
        let from_serial = restored.serial;
        restored.serial = l.state.serial + 1;
        s.backend.write(&restored).await?;
        Ok(Restored {
            from_serial,
            serial: restored.serial,
            resources: restored.resources.len(),
            outputs: restored.outputs.len(),
        })
    })
    .await
}
