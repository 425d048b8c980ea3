//! One function per command.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};

use super::render::{plan_text, summary_text, JsonReporter, TextReporter};
use super::{
    CliError, Command, DbCommand, GraphFormat, MigrateCommand, RunArgs, Session, StackArgs,
    StateCommand, EXIT_CHANGES, EXIT_ERROR, EXIT_OK,
};
use crate::apply::{apply, ApplyOptions};
use crate::drivers::{Context, Registry};
use crate::events::{Reporter, Silent};
use crate::graph::ResourceGraph;
use crate::plan::saved::{self, PlanFile};
use crate::plan::{destroy_changes, diff, refresh::refresh, Plan, PLAN_FORMAT};
use crate::state::{Journal, LockInfo, Locker, State, StateError, StateStore};

/// Exit code for a run stopped by Ctrl-C / SIGTERM.
pub const EXIT_INTERRUPTED: i32 = 130;

pub async fn run(cmd: Command) -> anyhow::Result<i32> {
    let result = match cmd {
        Command::Validate { args, json } => validate(&args, json),
        Command::Plan {
            args,
            json,
            detailed_exitcode,
            out,
            destroy,
        } => plan_cmd(&args, json, detailed_exitcode, out.as_deref(), destroy).await,
        Command::Apply { args, run } => apply_cmd(&args, &run, false).await,
        Command::Destroy { args, run } => apply_cmd(&args, &run, true).await,
        Command::Render {
            args,
            resource,
            discover,
        } => super::kube::render_cmd(&args, resource.as_deref(), discover).await,
        Command::Deploy {
            args,
            image,
            resource,
            run,
        } => super::kube::deploy_cmd(&args, &image, resource.as_deref(), &run).await,
        Command::Rollback {
            args,
            resource,
            run,
        } => super::kube::rollback_cmd(&args, resource.as_deref(), &run).await,
        Command::Output { args, name, json } => output(&args, name.as_deref(), json).await,
        Command::State { command } => state_cmd(command).await,
        Command::Graph { args, format } => graph(&args, format),
        Command::ForceUnlock { args, lock_id } => force_unlock(&args, &lock_id).await,
        Command::Migrate {
            command: MigrateCommand::Status { args, json },
        } => migrate_status(&args, json).await,
        Command::Db {
            command: DbCommand::Partitions { args, months_ahead },
        } => db_partitions(&args, months_ahead).await,
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::stack::json_schema::stack_schema(
                    &Registry::builtin()
                ))?
            );
            Ok(EXIT_OK)
        }
    };
    match result {
        Ok(code) => Ok(code),
        Err(CliError::Invalid(d, json)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "valid": false, "problems": d.problems })
                    )?
                );
            } else {
                eprint!("{}", d.render());
                eprintln!(
                    "{} problem(s) in {}; nothing was changed.",
                    d.problems.len(),
                    d.file
                );
            }
            Ok(EXIT_ERROR)
        }
        Err(CliError::Other(e)) => Err(e),
    }
}

fn validate(args: &StackArgs, json: bool) -> Result<i32, CliError> {
    let s = args.session(json)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "valid": true, "stack": s.stack.name, "environment": s.stack.environment, "resources": s.stack.resources.len() })
        );
    } else {
        println!(
            "{} is valid: stack `{}`, environment `{}`, {} resources.",
            args.stack.display(),
            s.stack.name,
            s.stack.environment,
            s.stack.resources.len()
        );
    }
    Ok(EXIT_OK)
}

pub(super) fn reporter(json: bool) -> Arc<dyn Reporter> {
    if json {
        Arc::new(JsonReporter)
    } else {
        Arc::new(TextReporter)
    }
}

pub(super) async fn read_state(s: &Session) -> Result<(State, bool), CliError> {
    match s
        .backend
        .read()
        .await
        .map_err(|e| CliError::Other(e.into()))?
    {
        Some(st) => {
            if st.stack != s.stack.name || st.environment != s.stack.environment {
                return Err(CliError::Other(anyhow!(
                    "the state at {} belongs to stack `{}` environment `{}`, not `{}` `{}`",
                    s.backend.describe(),
                    st.stack,
                    st.environment,
                    s.stack.name,
                    s.stack.environment
                )));
            }
            Ok((st, true))
        }
        None => Ok((State::new(&s.stack.name, &s.stack.environment), false)),
    }
}

async fn make_plan(
    s: &Session,
    state: &State,
    existed: bool,
    cx: &Context,
    destroy: bool,
    cli_vars: &[String],
) -> Result<Plan, CliError> {
    let refreshed = refresh(Some(&s.stack), state, &s.registry, cx)
        .await
        .map_err(|e| CliError::Other(e.into()))?;
    let mut changes = if destroy {
        destroy_changes(state, &refreshed)
    } else {
        diff(&s.stack, state, &refreshed, &s.registry, &cx.owner)
    };
    changes.sort_by(|a, b| a.address.cmp(&b.address).then(a.action.cmp(&b.action)));
    let _ = cli_vars;
    Ok(Plan {
        format: PLAN_FORMAT.into(),
        stack: s.stack.name.clone(),
        stack_path: s.stack.path.display().to_string(),
        environment: s.stack.environment.clone(),
        stack_digest: s.stack.digest.clone(),
        state_lineage: existed.then(|| state.lineage.clone()),
        state_serial: if existed { state.serial } else { 0 },
        destroy,
        changes,
        created_at: chrono::Utc::now(),
    })
}

async fn plan_cmd(
    args: &StackArgs,
    json: bool,
    detailed: bool,
    out: Option<&Path>,
    destroy: bool,
) -> Result<i32, CliError> {
    let s = args.session(json)?;
    let cx = s.context(if json {
        Arc::new(Silent)
    } else {
        reporter(false)
    });
    let (state, existed) = read_state(&s).await?;
    let plan = make_plan(&s, &state, existed, &cx, destroy, &args.vars).await?;
    if json {
        let mut v = serde_json::to_value(&plan).map_err(|e| CliError::Other(e.into()))?;
        v["counts"] = serde_json::to_value(plan.counts()).unwrap_or_default();
        v["requests"] = serde_json::json!(cx.request_count());
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| CliError::Other(e.into()))?
        );
    } else {
        print!("{}", plan_text(&plan));
    }
    if let Some(path) = out {
        let file = PlanFile {
            plan: plan.clone(),
            variables: args.vars.clone(),
        };
        let bytes = saved::to_bytes(&file).map_err(|e| CliError::Other(e.into()))?;
        crate::state::local::atomic_write(path, &bytes)
            .with_context(|| format!("writing the plan to {}", path.display()))?;
        if !json {
            println!(
                "Saved the plan to {}. Apply exactly this plan with: ralph-deploy apply {}",
                path.display(),
                path.display()
            );
        }
    }
    Ok(if detailed && plan.has_changes() {
        EXIT_CHANGES
    } else {
        EXIT_OK
    })
}

/// Asks on the terminal; refuses when there is none.
fn confirm(question: &str) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Other(anyhow!("{question} needs a confirmation, and there is no terminal to ask on: pass --auto-approve (as CI does)")));
    }
    eprint!("{question}\n  Only `yes` is accepted: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Other(e.into()))?;
    Ok(line.trim() == "yes")
}

async fn apply_cmd(args: &StackArgs, run: &RunArgs, destroy: bool) -> Result<i32, CliError> {
    // `apply FILE` / `destroy FILE` with a saved plan: verify it, then load
    // the stack it was made from.
    let saved = if saved::looks_like_plan(&args.stack) {
        Some(saved_plan(args, destroy)?)
    } else {
        None
    };
    let effective_args = match &saved {
        Some(file) => StackArgs {
            stack: PathBuf::from(&file.plan.stack_path),
            env: Some(file.plan.environment.clone()),
            vars: file.variables.clone(),
            state_dir: args.state_dir.clone(),
        },
        None => args.clone(),
    };
    let s = effective_args.session(run.json)?;
    let cx = s.context(reporter(run.json));
    let lock = LockInfo::for_operation(if destroy { "destroy" } else { "apply" });
    if let Some(stale) = s.backend.lock(&lock).await.map_err(lock_error)? {
        eprintln!(
            "warning: took over a stale lock: `{}` (pid {} on {}, since {}) no longer runs; its work is recovered from the state and the cloud",
            stale.operation, stale.pid, stale.host, stale.since
        );
    }
    let result = match s.backend.snapshot_before(&lock.operation) {
        Ok(_) => locked_apply(&s, &cx, run, destroy, saved.map(|f| f.plan), None).await,
        Err(e) => Err(CliError::Other(anyhow!(
            "cannot keep a copy of the state before {}, so nothing was changed: {e}",
            lock.operation
        ))),
    };
    if let Err(e) = s.backend.unlock(&lock).await {
        eprintln!("warning: could not release the lock: {e}");
    }
    result
}

/// Reads and verifies a saved plan, and refuses what the plan already fixes.
fn saved_plan(args: &StackArgs, destroy: bool) -> Result<PlanFile, CliError> {
    let file = saved::read(&args.stack).map_err(|e| CliError::Other(e.into()))?;
    let plan = &file.plan;
    if let Some(env) = &args.env {
        return Err(CliError::Other(anyhow!(
            "--env {env} cannot be used with a saved plan: the plan fixes its environment (`{}`). Nothing was changed. Drop --env, or make a plan for `{env}` with `ralph-deploy plan --env {env} --out FILE`",
            plan.environment
        )));
    }
    if !args.vars.is_empty() {
        return Err(CliError::Other(anyhow!(
            "--var cannot be used with a saved plan: the plan fixes its variables ({}). Nothing was changed. Drop --var, or make a new plan with them",
            if file.variables.is_empty() {
                "none were given".to_string()
            } else {
                file.variables
                    .iter()
                    .map(|v| v.split('=').next().unwrap_or(v).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )));
    }
    match (plan.destroy, destroy) {
        (true, false) => Err(CliError::Other(anyhow!(
            "{} is a destroy plan: apply it with `ralph-deploy destroy {}`. Nothing was changed",
            args.stack.display(),
            args.stack.display()
        ))),
        (false, true) => Err(CliError::Other(anyhow!(
            "{} is not a destroy plan: apply it with `ralph-deploy apply {}`, or make one with `ralph-deploy plan --destroy --out FILE`. Nothing was changed",
            args.stack.display(),
            args.stack.display()
        ))),
        _ => Ok(file),
    }
}

pub(super) fn lock_error(e: StateError) -> CliError {
    CliError::Other(anyhow!(e))
}

/// `only`: apply just the changes of these addresses (`deploy`).
pub(super) async fn locked_apply(
    s: &Session,
    cx: &Context,
    run: &RunArgs,
    destroy: bool,
    saved: Option<Plan>,
    only: Option<&[String]>,
) -> Result<i32, CliError> {
    let (mut state, existed) = read_state(s).await?;
    // Settle what an interrupted run left open before planning anything.
    let recovery = crate::apply::recover::recover(&s.backend, &mut state, &s.registry, cx)
        .await
        .map_err(|e| CliError::Other(e.into()))?;
    if !recovery.adopted.is_empty() && saved.is_some() {
        return Err(CliError::Other(anyhow!(
            "recovery adopted resources into the state, so the saved plan is stale; run `ralph-deploy plan --out` again"
        )));
    }
    let approved = saved.is_some();
    let plan = match saved {
        Some(plan) => {
            if plan.stack_digest != s.stack.digest {
                return Err(CliError::Other(anyhow!(
                    "the saved plan is stale: {} (or the variables it is loaded with) changed since the plan was made; run `ralph-deploy plan --out` again",
                    s.stack.path.display()
                )));
            }
            let current_lineage = existed.then(|| state.lineage.clone());
            let current_serial = if existed { state.serial } else { 0 };
            if plan.state_lineage.is_none() && current_lineage.is_some() {
                return Err(CliError::Other(anyhow!(
                    "the saved plan is stale: it was made before the state at {} existed, and another run has written it since (serial {current_serial}); run `ralph-deploy plan --out` again",
                    s.backend.describe()
                )));
            }
            if plan.state_lineage != current_lineage {
                return Err(CliError::Other(anyhow!(
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
                return Err(CliError::Other(anyhow!(
                    "the saved plan is stale: the state changed since the plan was made (serial {} then, {} now); run `ralph-deploy plan --out` again",
                    plan.state_serial,
                    current_serial
                )));
            }
            // Derive the changes again from the stack, the state and the
            // cloud; apply runs those, and only if they are the plan's.
            let fresh = make_plan(s, &state, existed, cx, plan.destroy, &[]).await?;
            let differences = saved::differences(&plan.changes, &fresh.changes);
            if !differences.is_empty() {
                let shown = differences.len().min(10);
                return Err(CliError::Other(anyhow!(
                    "the saved plan does not match what the stack, the state and the cloud give now, so nothing was changed:\n  {}{}\nThe cloud changed since the plan was made, or the plan file was edited; run `ralph-deploy plan --out` again",
                    differences[..shown].join("\n  "),
                    if differences.len() > shown {
                        format!("\n  ... and {} more", differences.len() - shown)
                    } else {
                        String::new()
                    }
                )));
            }
            Plan {
                created_at: plan.created_at,
                ..fresh
            }
        }
        None => make_plan(s, &state, existed, cx, destroy, &[]).await?,
    };
    let mut plan = plan;
    if let Some(only) = only {
        plan.changes.retain(|c| only.contains(&c.address));
    }
    if !run.json {
        print!("{}", plan_text(&plan));
    }
    let violations = plan.protected_violations();
    if !violations.is_empty() && !run.allow_protected {
        let list = violations
            .iter()
            .map(|c| {
                format!(
                    "{} ({})",
                    c.address,
                    if c.action == crate::plan::Action::Delete {
                        "delete"
                    } else {
                        "replace"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(CliError::Other(anyhow!(
            "refusing to delete or replace protected resources: {list}. Nothing was changed. If this is intended, run again with --allow-protected"
        )));
    }
    if !plan.has_changes() {
        if run.json {
            println!(
                "{}",
                serde_json::json!({ "event": "summary", "changes": 0 })
            );
        }
        return Ok(EXIT_OK);
    }
    // A saved plan is the approval (it was reviewed when it was made).
    if !run.auto_approve
        && !approved
        && !confirm(if destroy {
            "Destroy these resources?"
        } else {
            "Apply these changes?"
        })?
    {
        eprintln!("Cancelled; nothing was changed.");
        return Ok(EXIT_ERROR);
    }
    let stop = cx.stop.clone();
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            stop.store(true, Ordering::SeqCst);
            eprintln!("Interrupted: recording the operations in flight and starting no new ones (interrupt again to exit at once; the next apply recovers).");
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            eprintln!("Exiting at once; the intent journal lets the next apply recover.");
            std::process::exit(EXIT_INTERRUPTED);
        })
    };
    let options = ApplyOptions {
        parallelism: run.parallelism,
    };
    let (report, _) = apply(
        &plan,
        if destroy { None } else { Some(&s.stack) },
        state,
        &s.backend,
        &s.registry,
        cx,
        &options,
        &stop,
    )
    .await
    .map_err(|e| CliError::Other(e.into()))?;
    watcher.abort();
    if run.json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["event"] = serde_json::json!("summary");
        println!("{v}");
    } else {
        eprint!("{}", summary_text(&report, destroy));
    }
    Ok(if stop.load(Ordering::SeqCst) {
        EXIT_INTERRUPTED
    } else if report.succeeded() {
        EXIT_OK
    } else {
        EXIT_ERROR
    })
}

async fn output(args: &StackArgs, name: Option<&str>, json: bool) -> Result<i32, CliError> {
    let s = args.session(json)?;
    let (state, _) = read_state(&s).await?;
    match name {
        Some(n) => match state.outputs.get(n) {
            Some(v) => {
                match (json, v) {
                    (false, serde_json::Value::String(s)) => println!("{s}"),
                    _ => println!("{v}"),
                }
                Ok(EXIT_OK)
            }
            None => Err(CliError::Other(anyhow!(
                "no output `{n}` in the state{}",
                if s.stack.outputs.contains_key(n) {
                    " yet: run apply first"
                } else {
                    "; the stack does not declare it"
                }
            ))),
        },
        None => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&state.outputs).unwrap_or_default()
                );
            } else {
                for (k, v) in &state.outputs {
                    println!("{k} = {v}");
                }
            }
            Ok(EXIT_OK)
        }
    }
}

async fn state_cmd(cmd: StateCommand) -> Result<i32, CliError> {
    match cmd {
        StateCommand::Snapshots { args, json } => {
            let s = args.session(json)?;
            let list = s
                .backend
                .snapshots()
                .map_err(|e| CliError::Other(e.into()))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).map_err(|e| CliError::Other(e.into()))?
                );
            } else if list.is_empty() {
                println!("No snapshots yet: one is kept before every apply, destroy, deploy and rollback.");
            } else {
                for snap in &list {
                    println!(
                        "{}\tserial {}\tbefore {}",
                        snap.name, snap.serial, snap.operation
                    );
                }
            }
            Ok(EXIT_OK)
        }
        StateCommand::Restore { args, snapshot } => {
            let s = args.session(false)?;
            let lock = LockInfo::for_operation("state restore");
            if let Some(stale) = s.backend.lock(&lock).await.map_err(lock_error)? {
                eprintln!(
                    "warning: took over a stale lock: `{}` (pid {} on {}) no longer runs",
                    stale.operation, stale.pid, stale.host
                );
            }
            let result = restore_snapshot(&s, &snapshot).await;
            if let Err(e) = s.backend.unlock(&lock).await {
                eprintln!("warning: could not release the lock: {e}");
            }
            result
        }
        StateCommand::List { args } => {
            let s = args.session(false)?;
            let (state, _) = read_state(&s).await?;
            for (address, r) in &state.resources {
                println!("{address}\t{}\t{}", r.kind, r.id);
            }
            Ok(EXIT_OK)
        }
        StateCommand::Show { args, address } => {
            let s = args.session(false)?;
            let (state, _) = read_state(&s).await?;
            match state.resources.get(&address) {
                Some(r) => {
                    println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
                    Ok(EXIT_OK)
                }
                None => {
                    let hint = crate::kinds::did_you_mean(
                        &address,
                        state.resources.keys().map(|s| s.as_str()),
                    )
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                    Err(CliError::Other(anyhow!(
                        "`{address}` is not in the state{hint}"
                    )))
                }
            }
        }
    }
}

async fn restore_snapshot(s: &Session, which: &str) -> Result<i32, CliError> {
    let mut restored = s
        .backend
        .read_snapshot(which)
        .map_err(|e| CliError::Other(e.into()))?;
    let (current, existed) = read_state(s).await?;
    if restored.stack != s.stack.name || restored.environment != s.stack.environment {
        return Err(CliError::Other(anyhow!(
            "snapshot `{which}` belongs to stack `{}` environment `{}`; nothing was changed",
            restored.stack,
            restored.environment
        )));
    }
    if existed && restored.lineage != current.lineage {
        return Err(CliError::Other(anyhow!(
            "snapshot `{which}` is of another state lineage ({}, the current state is {}); nothing was changed",
            restored.lineage,
            current.lineage
        )));
    }
    let open = s
        .backend
        .open_intents()
        .await
        .map_err(|e| CliError::Other(e.into()))?;
    if !open.is_empty() {
        return Err(CliError::Other(anyhow!(
            "an interrupted run left {} operation(s) unsettled; run `ralph-deploy plan` or `apply` first so they are recovered, then restore. Nothing was changed",
            open.len()
        )));
    }
    s.backend
        .snapshot_before("state restore")
        .map_err(|e| CliError::Other(e.into()))?;
    let from_serial = restored.serial;
    restored.serial = current.serial + 1;
    s.backend
        .write(&restored)
        .await
        .map_err(|e| CliError::Other(e.into()))?;
    println!(
        "Restored the state of serial {from_serial} ({} resources, {} outputs) as serial {}. The state before this restore is kept as a snapshot too. Run `ralph-deploy plan` to see how the cloud differs from it.",
        restored.resources.len(),
        restored.outputs.len(),
        restored.serial
    );
    Ok(EXIT_OK)
}

fn graph(args: &StackArgs, format: GraphFormat) -> Result<i32, CliError> {
    let s = args.session(false)?;
    let g = ResourceGraph::from_stack(&s.stack)
        .map_err(|c| CliError::Other(anyhow!("dependency cycle: {}", c.describe())))?;
    let kinds = s
        .stack
        .resources
        .iter()
        .map(|(a, r)| (a.clone(), r.kind.kind.to_string()))
        .collect();
    print!(
        "{}",
        match format {
            GraphFormat::Dot => g.to_dot(&kinds),
            GraphFormat::Mermaid => g.to_mermaid(&kinds),
            GraphFormat::Json => {
                let nodes: Vec<serde_json::Value> = s
                .stack
                .resources
                .values()
                .map(|r| serde_json::json!({ "address": r.address, "kind": r.kind.kind, "depends_on": g.dependencies_of(&r.address) }))
                .collect();
                format!("{}\n", serde_json::json!({ "nodes": nodes }))
            }
        }
    );
    Ok(EXIT_OK)
}

async fn force_unlock(args: &StackArgs, id: &str) -> Result<i32, CliError> {
    let s = args.session(false)?;
    let holder = s
        .backend
        .force_unlock(id)
        .await
        .map_err(|e| CliError::Other(e.into()))?;
    println!(
        "Removed the lock held by `{}` (pid {} on {}, since {}).",
        holder.operation, holder.pid, holder.host, holder.since
    );
    Ok(EXIT_OK)
}

/// What to do with a property that refers to a resource not applied yet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Unapplied {
    Refuse,
    /// Show it as `(known after apply)`, for offline rendering.
    Placeholder,
}

/// The resources of `kind` in the stack, with their properties resolved
/// from the state (hosts, ARNs and endpoints come from applied resources).
pub(super) async fn resolved_targets(
    s: &Session,
    kind: &str,
    unapplied: Unapplied,
) -> Result<Vec<(String, serde_json::Map<String, serde_json::Value>)>, CliError> {
    let (state, _) = read_state(s).await?;
    let mut out = Vec::new();
    for r in s.stack.resources.values().filter(|r| r.kind.kind == kind) {
        let driver = s
            .registry
            .driver(r.kind.kind)
            .ok_or_else(|| CliError::Other(anyhow!("no driver for {}", r.kind.kind)))?;
        let lookup = |reference: &crate::stack::Reference| {
            state
                .attribute(&reference.address, &reference.attribute)
                .or_else(|| {
                    (unapplied == Unapplied::Placeholder).then(|| {
                        serde_json::Value::String(format!(
                            "({}.{} known after apply)",
                            reference.address, reference.attribute
                        ))
                    })
                })
        };
        let owner = crate::drivers::Owner {
            stack: s.stack.name.clone(),
            environment: s.stack.environment.clone(),
        };
        let desired =
            crate::plan::desired_properties(r, driver, &owner, &s.stack.base_dir(), &lookup);
        let mut props = serde_json::Map::new();
        for (k, v) in desired {
            match (v, unapplied) {
                (Some(v), _) => {
                    props.insert(k, v);
                }
                (None, Unapplied::Placeholder) => {
                    props.insert(k, serde_json::Value::String("(known after apply)".into()));
                }
                (None, Unapplied::Refuse) => {
                    return Err(CliError::Other(anyhow!(
                        "`{}` of {} refers to a resource that is not applied yet: run apply first",
                        k,
                        r.address
                    )));
                }
            }
        }
        out.push((r.address.clone(), props));
    }
    if out.is_empty() {
        return Err(CliError::Other(anyhow!(
            "{} declares no {kind} resource",
            s.stack.path.display()
        )));
    }
    Ok(out)
}

async fn migration_targets(
    s: &Session,
) -> Result<Vec<(String, serde_json::Map<String, serde_json::Value>)>, CliError> {
    resolved_targets(s, "postgres.migrations", Unapplied::Refuse).await
}

async fn migrate_status(args: &StackArgs, json: bool) -> Result<i32, CliError> {
    let s = args.session(json)?;
    let cx = s.context(Arc::new(Silent));
    let mut report = serde_json::Map::new();
    let mut pending = false;
    for (address, props) in migration_targets(&s).await? {
        let list = crate::drivers::postgres::migrations::status(&cx, &props)
            .await
            .map_err(|e| CliError::Other(anyhow!("{address}: {e}")))?;
        pending |= list.iter().any(|m| m.status != "applied");
        if json {
            report.insert(address, serde_json::to_value(&list).unwrap_or_default());
        } else {
            println!(
                "{address} ({}):",
                crate::drivers::postgres::describe_target(&props)
            );
            for m in &list {
                println!("  {:8} {}", m.status, m.migration);
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Object(report));
    }
    Ok(if pending { EXIT_CHANGES } else { EXIT_OK })
}

async fn db_partitions(args: &StackArgs, months_ahead: i32) -> Result<i32, CliError> {
    let s = args.session(false)?;
    let cx = s.context(Arc::new(Silent));
    for (address, props) in migration_targets(&s).await? {
        let n = crate::drivers::postgres::ensure_partitions(&cx, &props, months_ahead)
            .await
            .map_err(|e| CliError::Other(anyhow!("{address}: {e}")))?;
        println!("{address}: {n} partition(s) created; the current month and {months_ahead} ahead now exist.");
    }
    Ok(EXIT_OK)
}
