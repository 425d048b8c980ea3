//! `apply` and `destroy`, from the stack or from a saved plan.

use crate::apply::{apply, ApplyOptions, ApplyReport};
use crate::plan::saved;
use crate::plan::{Action, Plan};
use ralph_core::driver::Context;

use super::{locked, Locked, OpError, Session, SignalGuard};

/// What the caller decides and shows: the operation only asks.
pub trait Approver {
    /// Shows the plan about to be applied (the command line prints it).
    fn show(&self, plan: &Plan);
    /// Whether to go ahead with `plan` (not asked for a saved plan, which
    /// is its own approval, or when there is nothing to do).
    fn approve(&self, plan: &Plan) -> Result<bool, OpError>;
    /// Shows what `check` found in the stack and the plan.
    fn findings(&self, _report: &crate::check::Report) {}
}

pub struct Request {
    pub destroy: bool,
    /// A verified saved plan (see `plan::saved::read`).
    pub saved: Option<Plan>,
    pub allow_protected: bool,
    pub options: ApplyOptions,
}

pub enum Outcome {
    /// Nothing to change.
    NoChanges,
    /// The user said no; nothing was changed.
    Cancelled,
    Applied {
        report: ApplyReport,
        interrupted: bool,
    },
}

/// Applies the stack (or destroys it) under the lock.
pub async fn run(
    s: &Session,
    cx: &Context,
    request: Request,
    approver: &dyn Approver,
) -> Result<Outcome, OpError> {
    let operation = if request.destroy { "destroy" } else { "apply" };
    locked(s, cx, operation, |l| work(s, cx, request, approver, l)).await
}

async fn work(
    s: &Session,
    cx: &Context,
    request: Request,
    approver: &dyn Approver,
    l: Locked,
) -> Result<Outcome, OpError> {
    let Locked {
        mut state,
        existed,
        recovery,
    } = l;
    let approved = request.saved.is_some();
    let plan = match request.saved {
        Some(plan) => {
            if !recovery.adopted.is_empty() {
                return Err(OpError::refused(
                    "recovery adopted resources into the state, so the saved plan is stale; run `ralph-deploy plan --out` again",
                ));
            }
            checked_saved_plan(s, cx, &state, existed, plan).await?
        }
        None => s.make_plan(&state, existed, cx, request.destroy).await?,
    };
    approver.show(&plan);
    let violations = protected_violations(&plan);
    if !violations.is_empty() && !request.allow_protected {
        return Err(OpError::refused(format!(
            "refusing to delete or replace protected resources: {}. Nothing was changed. If this is intended, run again with --allow-protected",
            violations.join(", ")
        )));
    }
    if !plan.has_changes() {
        // Nothing in the cloud to change; the record's dependencies may be
        // stale all the same (one state write, no cloud call).
        if crate::apply::record_dependencies(&mut state, &plan) > 0 {
            state.serial += 1;
            s.backend.write(&state).await?;
        }
        return Ok(Outcome::NoChanges);
    }
    if !request.destroy {
        let report = findings(s, &plan)?;
        approver.findings(&report);
        let blocking: Vec<String> = report
            .blocking()
            .map(|f| format!("{} at {} ({}:{})", f.rule, f.address, f.file, f.line))
            .collect();
        if !blocking.is_empty() {
            return Err(OpError::refused(format!(
                "`check` finds {} error(s) no waiver accepts: {}. Nothing was changed. Fix them (`ralph-deploy check` says how), or accept one on purpose under the stack's `waivers:` with a reason",
                blocking.len(),
                blocking.join("; ")
            )));
        }
    }
    if !approved && !approver.approve(&plan)? {
        return Ok(Outcome::Cancelled);
    }
    if !plan.moves.is_empty() {
        // Renames only: one state write, before anything in the cloud changes.
        let moves: Vec<(String, String)> = plan
            .moves
            .iter()
            .map(|m| (m.from.clone(), m.to.clone()))
            .collect();
        let done = state.apply_moves(&moves);
        for (from, to) in &done {
            cx.reporter
                .report(ralph_core::events::Event::ResourceMoved {
                    from: from.clone(),
                    to: to.clone(),
                });
        }
        state.serial += 1;
        s.backend.write(&state).await?;
    }
    let guard = SignalGuard::install(cx);
    let stack = if request.destroy {
        None
    } else {
        Some(&s.stack)
    };
    let (report, _) = apply(
        &plan,
        stack,
        state,
        s.backend.as_ref(),
        &s.registry,
        cx,
        &request.options,
        &cx.stop,
    )
    .await
    .map_err(|e| OpError::Other(e.to_string()))?;
    let interrupted = SignalGuard::interrupted(cx);
    drop(guard);
    Ok(Outcome::Applied {
        report,
        interrupted,
    })
}

/// `check` on the stack, with what `plan` would do and the stack's own
/// policies, at today's date.
pub fn findings(s: &Session, plan: &Plan) -> Result<crate::check::Report, OpError> {
    let changes: Vec<(String, String, Action)> = plan
        .changes
        .iter()
        .map(|c| (c.address.clone(), c.kind.clone(), c.action))
        .collect();
    let today = chrono::Utc::now().date_naive();
    let policies = crate::check::policies(&s.stack, &[]).map_err(OpError::refused)?;
    crate::check::check(
        &s.stack,
        today,
        (!plan.destroy).then_some(changes.as_slice()),
        &policies,
    )
    .map_err(|e| OpError::refused(format!("{e}. Nothing was changed")))
}

fn protected_violations(plan: &Plan) -> Vec<String> {
    plan.protected_violations()
        .iter()
        .map(|c| match (c.action, &c.reason) {
            (Action::Delete, _) => format!("{} (delete)", c.address),
            // Why: which property forces it (or --replace).
            (_, Some(why)) => format!("{} (replace: {why})", c.address),
            (_, None) => format!("{} (replace)", c.address),
        })
        .collect()
}

/// A saved plan is applied only onto the stack, variables and state it was
/// made from, and only if the changes derived again now are its own; the
/// re-derived changes are what runs.
async fn checked_saved_plan(
    s: &Session,
    cx: &Context,
    state: &crate::state::State,
    existed: bool,
    plan: Plan,
) -> Result<Plan, OpError> {
    if plan.stack_digest != s.stack.digest {
        return Err(OpError::refused(format!(
            "the saved plan is stale: {} (or the variables it is loaded with) changed since the plan was made; run `ralph-deploy plan --out` again",
            s.stack.path.display()
        )));
    }
    let current_lineage = existed.then(|| state.lineage.clone());
    let current_serial = if existed { state.serial } else { 0 };
    if existed
        && state.applied_plan == Some(plan.created_at)
        && plan
            .state_lineage
            .as_ref()
            .is_none_or(|l| *l == state.lineage)
    {
        return Err(OpError::refused(format!(
            "this saved plan (made {}) was applied already: the state at {} went from serial {} to {current_serial} since. Nothing was changed. To see whether anything changed since, run `ralph-deploy plan`",
            plan.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            s.backend.describe(),
            plan.state_serial
        )));
    }
    if plan.state_lineage.is_none() && current_lineage.is_some() {
        return Err(OpError::refused(format!(
            "the saved plan is stale: it was made before the state at {} existed, and another run has written it since (serial {current_serial}); run `ralph-deploy plan --out` again",
            s.backend.describe()
        )));
    }
    if plan.state_lineage != current_lineage {
        return Err(OpError::refused(format!(
            "the saved plan was made against another state: {}, while the state at {} {}. Nothing was changed; make a new plan against this state",
            match &plan.state_lineage {
                Some(l) => format!("lineage {l}"),
                None => "no state at all".to_string(),
            },
            s.backend.describe(),
            match &current_lineage {
                Some(l) => format!("has lineage {l}"),
                None => "does not exist".to_string(),
            }
        )));
    }
    if plan.state_serial != current_serial {
        return Err(OpError::refused(format!(
            "the saved plan is stale: the state changed since the plan was made (serial {} then, {} now); run `ralph-deploy plan --out` again",
            plan.state_serial, current_serial
        )));
    }
    let fresh = s
        .make_plan_of(
            state,
            existed,
            cx,
            plan.destroy,
            &crate::plan::Scope::of(&plan),
        )
        .await?;
    let mut differences = saved::differences(&plan.changes, &fresh.changes);
    if plan.moves != fresh.moves {
        differences.push(format!(
            "moves: the plan says {} move(s), now there are {}",
            plan.moves.len(),
            fresh.moves.len()
        ));
    }
    if !differences.is_empty() {
        let shown = differences.len().min(10);
        return Err(OpError::refused(format!(
            "the saved plan does not match what the stack, the state and the cloud give now, so nothing was changed:\n  {}{}\nThe cloud changed since the plan was made, or the plan file was edited; run `ralph-deploy plan --out` again",
            differences[..shown].join("\n  "),
            if differences.len() > shown {
                format!("\n  ... and {} more", differences.len() - shown)
            } else {
                String::new()
            }
        )));
    }
    Ok(Plan {
        created_at: plan.created_at,
        ..fresh
    })
}
