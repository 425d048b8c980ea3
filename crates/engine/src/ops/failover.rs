//! `failover`: the read replica becomes the primary.
//!
//! The steps, each safe to repeat (a failover killed at any point is
//! finished by running it again; until then every other locked command
//! refuses to run, see `apply::recover`):
//! 1. check the replica's lag against the stack's `recovery.rpo`;
//! 2. promote the replica, move the old primary out of the way and give the
//!    promoted instance the primary's identity and ownership: the
//!    database kind's own way (`capability::Promotion`; on RDS, renames);
//! 3. record the new topology (the primary's entry is the promoted instance,
//!    the replica's entry is gone, so the next plan creates a new replica);
//! 4. bring the promoted instance to the primary's settings (Multi-AZ,
//!    backups), and what depends on it (its address: the roles, the schema)
//!    and the orchestrators to the new state, through the engine;
//! 5. roll every orchestrator's pods so none keeps a connection to the old
//!    primary, and wait for the rollouts.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::{locked, OpError, Role, Session, SignalGuard};
use crate::apply::recover::FAILOVER;
use crate::state::{Intent, State};
use ralph_core::driver::capability::{Lag, Promotion, PromotionPlan};
use ralph_core::driver::{Context, Known};
use ralph_core::events::Event;
use ralph_core::model::Action;

/// Database waits (promotion, renames) when the stack sets no update timeout.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(40 * 60);
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

pub struct Options {
    /// The replica to promote (its address), when the stack has several.
    pub replica: Option<String>,
    /// Promote even when the replica lags more than the RPO, or its lag is unknown.
    pub force: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// The stack's primary (its address), now the promoted instance.
    pub primary: String,
    /// The replica's address (gone from the state: the next plan creates it).
    pub replica: String,
    /// The instance now serving as primary: under the primary's name where
    /// the cloud renames (RDS), under its own where it does not (Cloud SQL).
    pub instance: String,
    /// Where the old primary was moved to (`None`: it no longer existed).
    pub old_primary: Option<String>,
    /// The replica's lag when the failover started, in seconds.
    pub lag_seconds: Option<f64>,
    /// Resources the engine brought to the stack afterwards.
    pub converged: Vec<String>,
    /// Orchestrators whose pods were rolled onto the new primary.
    pub rolled: Vec<String>,
    /// Whether this run finished a failover an earlier run started.
    pub resumed: bool,
}

/// The pair to fail over, as the intent records it.
struct Pair {
    /// The database kind (the primary's and the replica's).
    kind: String,
    primary: String,
    replica: String,
    primary_id: String,
    replica_id: String,
    old_name: String,
}

impl Pair {
    fn to_intent(&self, lag: Option<f64>) -> Intent {
        let mut props = Map::new();
        for (k, v) in [
            ("replica", &self.replica),
            ("primary_id", &self.primary_id),
            ("replica_id", &self.replica_id),
            ("old_name", &self.old_name),
        ] {
            props.insert(k.into(), Json::String(v.clone()));
        }
        if let Some(l) = lag.and_then(serde_json::Number::from_f64) {
            props.insert("lag_seconds".into(), Json::Number(l));
        }
        Intent {
            id: uuid::Uuid::new_v4().to_string(),
            address: self.primary.clone(),
            kind: self.kind.clone(),
            action: FAILOVER.into(),
            lookup: Some(self.replica_id.clone()),
            props,
            depends_on: Vec::new(),
            protect: true,
            started_at: chrono::Utc::now(),
            pid: std::process::id(),
        }
    }

    fn from_intent(i: &Intent) -> Result<Pair, OpError> {
        let get = |k: &str| {
            i.props
                .get(k)
                .and_then(Json::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    OpError::Other(format!("the open failover intent {} has no `{k}`", i.id))
                })
        };
        Ok(Pair {
            kind: i.kind.clone(),
            primary: i.address.clone(),
            replica: get("replica")?,
            primary_id: get("primary_id")?,
            replica_id: get("replica_id")?,
            old_name: get("old_name")?,
        })
    }
}

/// The kind's promotion.
fn promotion<'s>(s: &'s Session, kind: &str) -> Result<&'s dyn Promotion, OpError> {
    s.registry
        .driver(kind)
        .and_then(|d| d.promotion())
        .ok_or_else(|| OpError::Other(format!("{kind} has no replica promotion")))
}

/// The replica (and its primary) to fail over, from the state.
fn choose(s: &Session, state: &State, wanted: Option<&str>) -> Result<Pair, OpError> {
    let pairs: Vec<(String, String)> = state
        .resources
        .iter()
        .filter_map(|(address, r)| {
            let promotion = s.registry.driver(&r.kind)?.promotion()?;
            let source = promotion.primary_of(&r.inputs)?;
            let primary = state
                .resources
                .iter()
                .find(|(_, p)| p.kind == r.kind && promotion.is_named(&p.id, &p.attrs, source))?;
            Some((primary.0.clone(), address.clone()))
        })
        .filter(|(_, replica)| wanted.is_none_or(|w| w == replica))
        .collect();
    let (primary, replica) = match pairs.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(OpError::refused(match wanted {
                Some(w) => format!("{w} is not a read replica of another database in the state of {} ({}); nothing was changed", s.stack.name, s.stack.environment),
                None => format!("the state of {} ({}) records no read replica that can be promoted (failover promotes the replicas of {}); nothing was changed", s.stack.name, s.stack.environment, promotable_kinds(s)),
            }))
        }
        many => {
            return Err(OpError::refused(format!(
                "the stack has {} read replicas ({}): choose one with --replica; nothing was changed",
                many.len(),
                many.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let kind = state.resources[&primary].kind.clone();
    let primary_id = state.resources[&primary].id.clone();
    keeps_its_name(s, &kind, &primary)?;
    Ok(Pair {
        replica_id: state.resources[&replica].id.clone(),
        old_name: promotion(s, &kind)?.aside_name(&primary_id, chrono::Utc::now()),
        kind,
        primary,
        replica,
        primary_id,
    })
}

/// Refuses a primary whose name the stack fixes when the promoted replica
/// cannot take it: the next plan would replace the promoted instance.
fn keeps_its_name(s: &Session, kind: &str, primary: &str) -> Result<(), OpError> {
    let driver = s
        .registry
        .driver(kind)
        .ok_or_else(|| OpError::Other(format!("no driver for {kind}")))?;
    let promotion = promotion(s, kind)?;
    let schema = driver.schema();
    let fixed = schema.name_field.filter(|f| {
        s.stack
            .resources
            .get(primary)
            .is_some_and(|r| r.properties.contains_key(*f))
    });
    match (promotion.renames(), fixed, schema.generates_names()) {
        (false, Some(field), generated) => Err(OpError::refused(format!(
            "{kind} renames no instance, so the promoted replica keeps its own name, and {primary} fixes its `{field}` in {}: the next plan would replace the promoted primary. {}Nothing was changed",
            s.stack.path.display(),
            match generated {
                Some(_) => format!("Give {primary} `{}` instead of `{field}` (the tool then chooses the name and the state follows a failover); changing it replaces the instance, so do it before it holds data. ", ralph_core::model::kinds::NAME_PREFIX),
                None => String::new(),
            }
        ))),
        _ => Ok(()),
    }
}

/// The kinds whose replicas `failover` promotes, for messages.
fn promotable_kinds(s: &Session) -> String {
    s.registry
        .drivers()
        .filter(|d| d.promotion().is_some())
        .map(|d| d.schema().kind)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses a replica that lags more than the RPO (or whose lag is unknown)
/// unless forced; returns the lag.
async fn check_lag(
    s: &Session,
    cx: &Context,
    pair: &Pair,
    force: bool,
) -> Result<Option<f64>, OpError> {
    let Lag {
        seconds: lag,
        source,
    } = promotion(s, &pair.kind)?
        .replica_lag(cx, &pair.replica_id)
        .await
        .map_err(|e| OpError::Resource {
            address: pair.replica.clone(),
            message: format!("reading its replication lag: {}", e.message),
        })?;
    let rpo = s.stack.recovery.rpo;
    let problem = match (lag, rpo) {
        _ if force => None,
        (None, _) => Some(format!(
            "{source} has no reading in the last 10 minutes, so how much data the promotion would lose is unknown"
        )),
        (Some(_), None) => Some(format!(
            "{} states no `recovery.rpo` to hold the replica's lag against",
            s.stack.path.display()
        )),
        (Some(l), Some(rpo)) if l > rpo.as_secs_f64() => Some(format!(
            "{} lags {l:.0}s behind {}, more than the stack's RPO of {}s: promoting it now would lose that much data",
            pair.replica_id,
            pair.primary_id,
            rpo.as_secs()
        )),
        _ => None,
    };
    match problem {
        Some(p) => Err(OpError::refused(format!(
            "{p}. Nothing was changed. To promote it anyway, run again with --force"
        ))),
        None => Ok(lag),
    }
}

/// `address` and everything recorded as depending on it, directly or not
/// (what reads the primary's address: roles, the schema, the orchestrators).
fn dependents(state: &State, address: &str) -> std::collections::BTreeSet<String> {
    let deps = state
        .resources
        .iter()
        .map(|(a, r)| (a.clone(), r.depends_on.clone()))
        .collect();
    match ralph_core::graph::ResourceGraph::from_dependencies(&deps) {
        Ok(g) => g.with_all_dependents(address),
        // (a recorded cycle cannot be applied anyway: the primary alone)
        Err(_) => std::collections::BTreeSet::from([address.to_string()]),
    }
}

/// Every recorded resource that lived in the old primary `from` recorded
/// as living in `to`, which serves the same data (its kind says how:
/// `Driver::moved_parent`), so that no plan recreates it.
fn move_children(s: &Session, state: &mut State, from: &str, to: &str) {
    for r in state.resources.values_mut() {
        let Some(driver) = s.registry.driver(&r.kind) else {
            continue;
        };
        let known = Known {
            id: r.id.clone(),
            inputs: r.inputs.clone(),
            attrs: r.attrs.clone(),
        };
        if let Some(moved) = driver.moved_parent(&known, from, to) {
            r.id = moved.id;
            r.inputs = moved.inputs;
            r.attrs = moved.attrs;
            r.updated_at = chrono::Utc::now();
        }
    }
}

pub async fn failover(s: &Session, cx: &Context, o: &Options) -> Result<Report, OpError> {
    locked(s, cx, FAILOVER, |l| async move {
        let mut state = l.state;
        let (pair, intent, resumed) = begin(s, cx, o, l.recovery.failover.as_ref(), &state).await?;
        let lag_seconds = intent.props.get("lag_seconds").and_then(Json::as_f64);
        let _guard = SignalGuard::install(cx);
        let promoted = promote(s, cx, &pair, &intent, &state).await?;
        let ralph_core::driver::capability::Promoted {
            observed: promoted,
            old_primary: moved_old,
        } = promoted;

        // 3. The new topology in the state.
        record_topology(s, &mut state, &pair, &promoted);
        s.backend.write(&state).await?;
        let instance = promoted.id.clone();
        cx.step(
            &pair.primary,
            format!("{instance} is the primary now; the state records it"),
        );

        // 4. The primary's settings and the orchestrators' inputs.
        let (state, converged) = converge(s, cx, state, &pair).await?;
        if let Some(e) = stopped(cx) {
            return Err(e);
        }

        // 5. Every orchestrator's pods reconnect.
        let (_, rolled) = roll_pods(s, cx, state, &pair).await?;
        s.backend.close_intent(&intent.id).await?;
        s.backend.compact().await?;
        Ok(Report {
            primary: pair.primary.clone(),
            replica: pair.replica.clone(),
            instance,
            old_primary: moved_old,
            lag_seconds,
            converged,
            rolled,
            resumed,
        })
    })
    .await
}

/// An interruption's error, once the user has asked to stop.
fn stopped(cx: &Context) -> Option<OpError> {
    SignalGuard::interrupted(cx).then(|| {
        OpError::Other("interrupted: the failover is unfinished; run `ralph-deploy failover` again to finish it".into())
    })
}

/// 1. The pair and its intent: the unfinished failover's, or a new one once
///    the replica is chosen and its lag is within the objective.
async fn begin(
    s: &Session,
    cx: &Context,
    o: &Options,
    open: Option<&Intent>,
    state: &State,
) -> Result<(Pair, Intent, bool), OpError> {
    if let Some(open) = open {
        let pair = Pair::from_intent(open)?;
        if o.replica.as_deref().is_some_and(|r| r != pair.replica) {
            return Err(OpError::refused(format!(
                "a failover to {} is unfinished: finish it first (run without --replica); nothing was changed",
                pair.replica
            )));
        }
        cx.reporter.report(Event::Warning {
            message: format!(
                "finishing the failover of {} to {} that a run started at {}",
                pair.primary,
                pair.replica,
                open.started_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        });
        return Ok((pair, open.clone(), true));
    }
    let pair = choose(s, state, o.replica.as_deref())?;
    let lag = check_lag(s, cx, &pair, o.force).await?;
    let intent = pair.to_intent(lag);
    s.backend.open_intent(&intent).await?;
    Ok((pair, intent, false))
}

/// 2. The database kind's promotion of the replica.
async fn promote(
    s: &Session,
    cx: &Context,
    pair: &Pair,
    intent: &Intent,
    state: &State,
) -> Result<ralph_core::driver::capability::Promoted, OpError> {
    let recorded = state
        .resources
        .get(&pair.primary)
        .ok_or_else(|| OpError::Other(format!("{} is not in the state", pair.primary)))?;
    let timeout = s
        .stack
        .resources
        .get(&pair.primary)
        .map(|r| r.timeouts.update_or(DATABASE_TIMEOUT))
        .unwrap_or(DATABASE_TIMEOUT);
    let plan = PromotionPlan {
        primary: &pair.primary,
        replica: &pair.replica,
        primary_id: &pair.primary_id,
        replica_id: &pair.replica_id,
        old_name: &pair.old_name,
        marker: &intent.id,
        primary_inputs: &recorded.inputs,
        retired_as: format!(
            "{}/{}/{} until a failover at {}",
            s.stack.name,
            s.stack.environment,
            pair.primary,
            intent.started_at.format("%Y-%m-%dT%H:%MZ")
        ),
        timeout,
    };
    let interrupted = || SignalGuard::interrupted(cx);
    let promoted = promotion(s, &pair.kind)?
        .promote(cx, &plan, &interrupted)
        .await;
    if let Some(e) = stopped(cx) {
        return Err(e);
    }
    promoted.map_err(|e| OpError::Resource {
        address: pair.primary.clone(),
        message: format!(
            "{}. The failover is unfinished: run `ralph-deploy failover` again to finish it",
            e.message
        ),
    })
}

/// The primary's entry is the promoted instance (under its own id where the
/// cloud renames nothing, and what lived in the old primary follows it); the
/// replica's entry is gone.
fn record_topology(
    s: &Session,
    state: &mut State,
    pair: &Pair,
    promoted: &ralph_core::driver::Observed,
) {
    if let Some(p) = state.resources.get_mut(&pair.primary) {
        if p.id != promoted.id {
            let name_field = s
                .registry
                .driver(&pair.kind)
                .and_then(|d| d.schema().name_field);
            if let Some(f) = name_field.filter(|f| p.inputs.contains_key(*f)) {
                p.inputs
                    .insert(f.to_string(), Json::String(promoted.id.clone()));
            }
            p.id = promoted.id.clone();
        }
        p.attrs = promoted.attrs.clone();
        p.updated_at = chrono::Utc::now();
    }
    if promoted.id != pair.primary_id {
        move_children(s, state, &pair.primary_id, &promoted.id);
    }
    state.resources.remove(&pair.replica);
    for r in state.resources.values_mut() {
        r.depends_on.retain(|d| d != &pair.replica);
    }
    crate::apply::record_outputs(&s.stack, state);
    state.serial += 1;
}

/// 4. The primary's settings and the orchestrators' inputs, through the
///    engine (journaled like any apply). The new replica waits for the next
///    apply. Returns the addresses it changed.
async fn converge(
    s: &Session,
    cx: &Context,
    state: State,
    pair: &Pair,
) -> Result<(State, Vec<String>), OpError> {
    let mut plan = s.make_plan(&state, true, cx, false).await?;
    let following = dependents(&state, &pair.primary);
    plan.changes.retain(|c| {
        c.action == Action::Update
            && (following.contains(&c.address) || s.registry.offers(&c.kind, Role::Orchestrator))
    });
    if !plan.has_changes() {
        return Ok((state, Vec::new()));
    }
    let (report, after) = crate::apply::apply(
        &plan,
        Some(&s.stack),
        state,
        s.backend.as_ref(),
        &s.registry,
        cx,
        &Default::default(),
        &cx.stop,
    )
    .await
    .map_err(|e| OpError::Other(e.to_string()))?;
    if let Some(bad) = report.results.iter().find(|r| r.error.is_some()) {
        return Err(OpError::Resource {
            address: bad.address.clone(),
            message: format!(
                "{}. The database failed over; run `ralph-deploy failover` again to finish the rest",
                bad.error.clone().unwrap_or_default()
            ),
        });
    }
    if !report.succeeded() {
        return Err(OpError::Other("the engine did not finish bringing the primary and the orchestrators to the stack; run `ralph-deploy failover` again".into()));
    }
    Ok((
        after,
        report.results.iter().map(|r| r.address.clone()).collect(),
    ))
}

/// 5. Every orchestrator's pods reconnect (those the engine just rolled for
///    a changed DATABASE_URL too: a rollout that changed no pod template
///    leaves connections to the old primary open), each as one step.
async fn roll_pods(
    s: &Session,
    cx: &Context,
    mut state: State,
    pair: &Pair,
) -> Result<(State, Vec<String>), OpError> {
    let mut rolled = Vec::new();
    let orchestrators: Vec<String> = state
        .resources
        .iter()
        .filter(|(_, r)| s.registry.offers(&r.kind, Role::Orchestrator))
        .map(|(a, _)| a.clone())
        .collect();
    for address in orchestrators {
        let Some(r) = state.resources.get(&address).cloned() else {
            continue;
        };
        cx.step(
            &address,
            format!("rolling the pods onto the new primary {}", pair.primary_id),
        );
        let known = Known {
            id: r.id.clone(),
            inputs: r.inputs.clone(),
            attrs: r.attrs.clone(),
        };
        let restarts = s
            .registry
            .driver(&r.kind)
            .and_then(|d| d.restarts())
            .ok_or_else(|| OpError::Other(format!("{} cannot restart its pods", r.kind)))?;
        let reason = format!("failover of {} to {}", pair.primary, pair.replica_id);
        let (result, after) = s
            .run_step(
                cx,
                state,
                crate::apply::OneStep {
                    address: &address,
                    inputs: r.inputs.clone(),
                },
                || restarts.restart(cx, &address, &known, &reason, ROLLOUT_TIMEOUT),
            )
            .await
            .map_err(|e| OpError::Other(e.to_string()))?;
        state = after;
        result.map_err(|message| OpError::Resource {
            address: address.clone(),
            message: format!("{message}. The database failed over; run `ralph-deploy failover` again to roll the pods"),
        })?;
        rolled.push(address);
    }
    Ok((state, rolled))
}
