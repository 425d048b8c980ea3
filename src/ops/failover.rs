//! `failover`: the read replica becomes the primary.
//!
//! The steps, each safe to repeat (a failover killed at any point is
//! finished by running it again; until then every other locked command
//! refuses to run, see `apply::recover`):
//! 1. check the replica's lag against the stack's `recovery.rpo`;
//! 2. promote the replica (marked with this failover's id);
//! 3. take the old primary's ownership tags off and rename it out of the way
//!    (`<name>-old-<UTC minute>`; it keeps its deletion protection and is
//!    left for the operator to inspect and delete);
//! 4. give the promoted instance the primary's name and ownership tags, so
//!    its endpoint is the name the application already uses and the stack's
//!    primary is this instance from now on;
//! 5. record the new topology (the primary's entry is the promoted instance,
//!    the replica's entry is gone, so the next plan creates a new replica);
//! 6. bring the promoted instance to the primary's settings (Multi-AZ,
//!    backups) and the orchestrators to the new state through the engine;
//! 7. roll every orchestrator's pods so none keeps a connection to the old
//!    primary, and wait for the rollouts.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::{locked, OpError, Session, SignalGuard};
use crate::apply::recover::FAILOVER;
use crate::drivers::aws::rds;
use crate::drivers::kubernetes::orchestrator;
use crate::drivers::{Context, Desired, Known};
use crate::events::Event;
use crate::model::Action;
use crate::state::{Intent, State};

const RDS_INSTANCE: &str = "aws.rds_instance";
const ORCHESTRATOR: &str = "kubernetes.orchestrator";
/// RDS waits (promotion, renames) when the stack sets no update timeout.
const RDS_TIMEOUT: Duration = Duration::from_secs(40 * 60);
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
    /// The instance now serving as primary, under the primary's name.
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
            kind: RDS_INSTANCE.into(),
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
            primary: i.address.clone(),
            replica: get("replica")?,
            primary_id: get("primary_id")?,
            replica_id: get("replica_id")?,
            old_name: get("old_name")?,
        })
    }
}

/// The name the old primary moves to: `<name>-old-<UTC minute>`, within
/// RDS's 63 characters and without a trailing or doubled hyphen.
fn old_name(primary_id: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let suffix = format!("-old-{}", now.format("%Y%m%d%H%M"));
    let keep: String = primary_id.chars().take(63 - suffix.len()).collect();
    format!("{}{suffix}", keep.trim_end_matches('-'))
}

/// The replica (and its primary) to fail over, from the state.
fn choose(s: &Session, state: &State, wanted: Option<&str>) -> Result<Pair, OpError> {
    let pairs: Vec<(String, String)> = state
        .resources
        .iter()
        .filter(|(_, r)| r.kind == RDS_INSTANCE)
        .filter_map(|(address, r)| {
            let source = r.inputs.get("replicate_source_db")?.as_str()?;
            let primary = state.resources.iter().find(|(_, p)| {
                p.kind == RDS_INSTANCE
                    && (p.id == source || p.attrs.get("arn").and_then(Json::as_str) == Some(source))
            })?;
            Some((primary.0.clone(), address.clone()))
        })
        .filter(|(_, replica)| wanted.is_none_or(|w| w == replica))
        .collect();
    let (primary, replica) = match pairs.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(OpError::refused(match wanted {
                Some(w) => format!("{w} is not a read replica of another database in the state of {} ({}); nothing was changed", s.stack.name, s.stack.environment),
                None => format!("the state of {} ({}) records no read replica of kind {RDS_INSTANCE} to promote (failover does not promote other kinds' replicas yet); nothing was changed", s.stack.name, s.stack.environment),
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
    let primary_id = state.resources[&primary].id.clone();
    Ok(Pair {
        replica_id: state.resources[&replica].id.clone(),
        old_name: old_name(&primary_id, chrono::Utc::now()),
        primary,
        replica,
        primary_id,
    })
}

/// Refuses a replica that lags more than the RPO (or whose lag is unknown)
/// unless forced; returns the lag.
async fn check_lag(
    s: &Session,
    cx: &Context,
    pair: &Pair,
    force: bool,
) -> Result<Option<f64>, OpError> {
    let lag = rds::replica_lag(cx, &pair.replica_id)
        .await
        .map_err(|e| OpError::Resource {
            address: pair.replica.clone(),
            message: format!("reading its replication lag: {}", e.message),
        })?;
    let rpo = s.stack.recovery.rpo;
    let problem = match (lag, rpo) {
        _ if force => None,
        (None, _) => Some(format!(
            "CloudWatch has no ReplicaLag for {} in the last 10 minutes, so how much data the promotion would lose is unknown",
            pair.replica_id
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

fn step(cx: &Context, address: &str, message: String) {
    cx.reporter.report(Event::Step {
        address: address.to_string(),
        message,
    });
}

pub async fn failover(s: &Session, cx: &Context, o: &Options) -> Result<Report, OpError> {
    locked(s, cx, FAILOVER, |l| async move {
        let mut state = l.state;
        let (pair, intent, resumed) = match &l.recovery.failover {
            Some(open) => {
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
                (pair, open.clone(), true)
            }
            None => {
                let pair = choose(s, &state, o.replica.as_deref())?;
                let lag = check_lag(s, cx, &pair, o.force).await?;
                let intent = pair.to_intent(lag);
                s.backend.open_intent(&intent).await?;
                (pair, intent, false)
            }
        };
        let lag_seconds = intent.props.get("lag_seconds").and_then(Json::as_f64);
        let _guard = SignalGuard::install(cx);
        let failed = |e: crate::drivers::DriverError| OpError::Resource {
            address: pair.primary.clone(),
            message: format!("{}. The failover is unfinished: run `ralph-deploy failover` again to finish it", e.message),
        };
        let stopped = || {
            SignalGuard::interrupted(cx).then(|| {
                OpError::Other("interrupted: the failover is unfinished; run `ralph-deploy failover` again to finish it".into())
            })
        };
        let recorded = state
            .resources
            .get(&pair.primary)
            .cloned()
            .ok_or_else(|| OpError::Other(format!("{} is not in the state", pair.primary)))?;
        let timeout = s
            .stack
            .resources
            .get(&pair.primary)
            .map(|r| r.timeouts.update_or(RDS_TIMEOUT))
            .unwrap_or(RDS_TIMEOUT);
        let int = |k: &str| {
            recorded
                .inputs
                .get(k)
                .and_then(Json::as_i64)
                .and_then(|v| i32::try_from(v).ok())
        };

        // 2. Promote (an instance still under the replica's name).
        if let Some(replica) = rds::instance(cx, &pair.replica_id).await.map_err(failed)? {
            step(cx, &pair.replica, format!("promoting {} to a standalone primary", pair.replica_id));
            rds::promote(
                cx,
                &pair.replica,
                &replica,
                int("backup_retention_days"),
                recorded.inputs.get("backup_window").and_then(Json::as_str),
                &intent.id,
                timeout,
            )
            .await
            .map_err(failed)?;
        }
        if let Some(e) = stopped() {
            return Err(e);
        }

        // 3. The old primary out of the way (unless it is gone, or the
        //    primary's name already belongs to the promoted instance).
        let mut moved_old = None;
        if let Some(old) = rds::instance(cx, &pair.primary_id).await.map_err(failed)? {
            if !rds::promoted_by(&old, &intent.id) {
                rds::retire(
                    cx,
                    &old,
                    &format!("{}/{}/{} until a failover at {}", s.stack.name, s.stack.environment, pair.primary, intent.started_at.format("%Y-%m-%dT%H:%MZ")),
                )
                .await
                .map_err(failed)?;
                step(cx, &pair.primary, format!("renaming the old primary {} to {}", pair.primary_id, pair.old_name));
                rds::rename(cx, &pair.primary, &pair.primary_id, &pair.old_name, timeout)
                    .await
                    .map_err(failed)?;
                moved_old = Some(pair.old_name.clone());
            }
        } else if rds::instance(cx, &pair.old_name).await.map_err(failed)?.is_some() {
            moved_old = Some(pair.old_name.clone());
        }
        if let Some(e) = stopped() {
            return Err(e);
        }

        // 4. The promoted instance takes the primary's name and tags.
        if rds::instance(cx, &pair.replica_id).await.map_err(failed)?.is_some() {
            step(cx, &pair.primary, format!("renaming the promoted {} to {}", pair.replica_id, pair.primary_id));
            rds::rename(cx, &pair.primary, &pair.replica_id, &pair.primary_id, timeout)
                .await
                .map_err(failed)?;
        }
        let promoted = rds::instance(cx, &pair.primary_id)
            .await
            .map_err(failed)?
            .ok_or_else(|| failed(crate::drivers::DriverError::new(format!("{} is gone", pair.primary_id))))?;
        if !rds::promoted_by(&promoted, &intent.id) {
            return Err(failed(crate::drivers::DriverError::new(format!(
                "{} is not the instance this failover promoted; look at it in the console before running failover again",
                pair.primary_id
            ))));
        }
        let want = Desired {
            address: &pair.primary,
            props: &recorded.inputs,
            owner: &cx.owner,
            timeouts: Default::default(),
        };
        rds::take_over_tags(cx, &promoted, &want).await.map_err(failed)?;
        let promoted = rds::instance(cx, &pair.primary_id)
            .await
            .map_err(failed)?
            .ok_or_else(|| failed(crate::drivers::DriverError::new(format!("{} is gone", pair.primary_id))))?;

        // 5. The new topology in the state.
        if let Some(p) = state.resources.get_mut(&pair.primary) {
            p.attrs = promoted.attrs.clone();
            p.updated_at = chrono::Utc::now();
        }
        state.resources.remove(&pair.replica);
        for r in state.resources.values_mut() {
            r.depends_on.retain(|d| d != &pair.replica);
        }
        crate::apply::record_outputs(&s.stack, &mut state);
        state.serial += 1;
        s.backend.write(&state).await?;
        step(cx, &pair.primary, format!("{} is the primary now; the state records it", pair.primary_id));

        // 6. The primary's settings and the orchestrators' inputs, through
        //    the engine (journaled like any apply). The new replica waits
        //    for the next apply.
        let mut plan = s.make_plan(&state, true, cx, false).await?;
        plan.changes.retain(|c| {
            c.action == Action::Update && (c.address == pair.primary || c.kind == ORCHESTRATOR)
        });
        let mut converged = Vec::new();
        if plan.has_changes() {
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
            state = after;
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
            converged = report.results.iter().map(|r| r.address.clone()).collect();
        }
        if let Some(e) = stopped() {
            return Err(e);
        }

        // 7. Every orchestrator's pods reconnect (those the engine just
        //    rolled for a changed DATABASE_URL too: a rollout that changed no
        //    pod template leaves connections to the old primary open).
        let mut rolled = Vec::new();
        let orchestrators: Vec<String> = state
            .resources
            .iter()
            .filter(|(_, r)| r.kind == ORCHESTRATOR)
            .map(|(a, _)| a.clone())
            .collect();
        for address in orchestrators {
            let Some(r) = state.resources.get(&address).cloned() else {
                continue;
            };
            step(cx, &address, format!("rolling the pods onto the new primary {}", pair.primary_id));
            let known = Known {
                id: r.id.clone(),
                inputs: r.inputs.clone(),
                attrs: r.attrs.clone(),
            };
            let observed = orchestrator::restart(
                cx,
                &address,
                &known,
                &format!("failover of {} to {}", pair.primary, pair.replica_id),
                ROLLOUT_TIMEOUT,
            )
            .await
            .map_err(|e| OpError::Resource {
                address: address.clone(),
                message: format!("{}. The database failed over; run `ralph-deploy failover` again to roll the pods", e.message),
            })?;
            if let Some(rs) = state.resources.get_mut(&address) {
                rs.attrs = observed.attrs;
                rs.updated_at = chrono::Utc::now();
            }
            state.serial += 1;
            s.backend.write(&state).await?;
            rolled.push(address);
        }
        s.backend.close_intent(&intent.id).await?;
        s.backend.compact().await?;
        Ok(Report {
            primary: pair.primary.clone(),
            replica: pair.replica.clone(),
            instance: pair.primary_id.clone(),
            old_primary: moved_old,
            lag_seconds,
            converged,
            rolled,
            resumed,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_name_fits_rds_rules() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-27T19:05:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            old_name("prod-postgres", at),
            "prod-postgres-old-202611271905"
        );
        let long = format!("{}-x", "a".repeat(44));
        let n = old_name(&long, at);
        assert!(n.len() <= 63, "{n}");
        assert!(!n.contains("--"), "{n}");
    }
}
