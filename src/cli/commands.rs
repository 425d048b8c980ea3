//! One function per command.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context as _};

use super::diff_text::Style;
use super::render::{plan_text, summary_text, JsonReporter};
use super::{
    CliError, Command, DbCommand, GraphFormat, MigrateCommand, RunArgs, StackArgs, StateCommand,
    EXIT_CHANGES, EXIT_ERROR, EXIT_OK,
};
use ralph_core::events::{Reporter, Silent};
use ralph_engine::apply::ApplyOptions;
use ralph_engine::ops::apply::{Approver, Outcome, Request};
use ralph_engine::ops::{OpError, Session};
use ralph_engine::plan::saved::{self, PlanFile};
use ralph_engine::plan::Plan;
use ralph_engine::state::State;

pub use ralph_engine::ops::EXIT_INTERRUPTED;

pub async fn run(cmd: Command) -> anyhow::Result<i32> {
    let result = match cmd {
        Command::Validate { args, json } => validate(&args, json),
        Command::Check {
            args,
            format,
            date,
            policy,
        } => check_cmd(&args, format, date, &policy),
        Command::Plan {
            args,
            json,
            format,
            detailed_exitcode,
            out,
            destroy,
            select,
        } => {
            let format = if json {
                super::PlanFormat::Json
            } else {
                format
            };
            let planned = plan_cmd(
                &args,
                format,
                detailed_exitcode,
                out.as_deref(),
                destroy,
                &select,
            );
            json_error_event(format == super::PlanFormat::Json, planned.await)
        }
        Command::Show { plan, format } => show(&plan, format),
        Command::Apply { args, run, select } => {
            json_error_event(run.json, apply_cmd(&args, &run, false, &select).await)
        }
        Command::Destroy { args, run, select } => {
            json_error_event(run.json, apply_cmd(&args, &run, true, &select).await)
        }
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
        } => json_error_event(
            run.json,
            super::kube::deploy_cmd(&args, &image, resource.as_deref(), &run).await,
        ),
        Command::Rollback {
            args,
            resource,
            run,
        } => json_error_event(
            run.json,
            super::kube::rollback_cmd(&args, resource.as_deref(), &run).await,
        ),
        Command::Output { args, name, json } => output(&args, name.as_deref(), json).await,
        Command::State { command } => state_cmd(command).await,
        Command::Graph { args, format, plan } => graph(&args, format, plan.as_deref()),
        Command::ForceUnlock { args, lock_id } => force_unlock(&args, &lock_id).await,
        Command::Status { args, json } => status_cmd(&args, json).await,
        Command::Backup {
            args,
            pick,
            retention_days,
            snapshot,
            json,
        } => {
            let o = ralph_engine::ops::backup::BackupOptions {
                retention_days,
                snapshot,
                ..pick.into()
            };
            backup_cmd(&args, &o, json).await
        }
        Command::Restore {
            args,
            backup,
            into,
            pick,
            json,
        } => restore_cmd(&args, &pick.into(), &backup, into.as_deref(), json).await,
        Command::Failover {
            args,
            replica,
            force,
            auto_approve,
            json,
        } => {
            let o = ralph_engine::ops::failover::Options { replica, force };
            failover_cmd(&args, &o, auto_approve, json).await
        }
        Command::Migrate {
            command: MigrateCommand::Status { args, json },
        } => migrate_status(&args, json).await,
        Command::Db {
            command: DbCommand::Partitions { args, months_ahead },
        } => db_partitions(&args, months_ahead).await,
        Command::Import { args, address, id } => import_cmd(&args, &address, &id).await,
        Command::Completions { shell } => completions(shell),
        Command::Addons {
            command: super::AddonsCommand::Pin { urls },
        } => addons_pin(&urls),
        Command::Man => Ok(man()?),
        Command::Fmt { paths, check, diff } => fmt_cmd(&paths, check, diff),
        Command::Reference { page } => reference(page),
        Command::Schema { component } => Ok(schema(component)?),
    };
    finish(result)
}

/// A command's result as the exit code: invalid stacks are reported here,
/// as text or as the JSON stream's `error` event; other errors go on.
fn finish(result: Result<i32, CliError>) -> anyhow::Result<i32> {
    match result {
        Ok(code) => Ok(code),
        Err(CliError::Invalid(d, json)) => {
            if json {
                // One line, as every line of a JSON stream is: the stream's
                // `error` event, with the problems.
                println!(
                    "{}",
                    super::render::json_line(serde_json::json!({
                        "event": "error",
                        "message": format!("{} problem(s) in {}; nothing was changed", d.problems.len(), d.file),
                        "valid": false,
                        "problems": d.problems,
                    }))
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

/// `completions SHELL`: the script for the shell; without one, which shells there are.
fn completions(shell: Option<clap_complete::Shell>) -> Result<i32, CliError> {
    let Some(shell) = shell else {
        use clap::ValueEnum;
        let shells: Vec<String> = clap_complete::Shell::value_variants()
            .iter()
            .filter_map(|s| s.to_possible_value().map(|v| v.get_name().to_string()))
            .collect();
        eprintln!(
            "error: name the shell to complete for: {}. For example `ralph-deploy completions bash > /etc/bash_completion.d/ralph-deploy`",
            shells.join(", ")
        );
        return Ok(2);
    };
    let mut cmd = <super::Cli as clap::CommandFactory>::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "ralph-deploy", &mut out);
    super::out::bytes(&out);
    Ok(EXIT_OK)
}

/// `addons pin URL...`: each download's pinned entry, for the add-on catalogue.
fn addons_pin(urls: &[String]) -> Result<i32, CliError> {
    let mut failed = 0;
    for url in urls {
        match ralph_core::download::pin(url) {
            Ok(p) => {
                println!("{}", p.entry);
                eprintln!(
                    "{url}: {} bytes, kept for review at {}",
                    p.bytes,
                    p.path.display()
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if failed == 0 { EXIT_OK } else { 1 })
}

/// `man`: the manual page, with a section for each command's options.
fn man() -> anyhow::Result<i32> {
    let cmd = <super::Cli as clap::CommandFactory>::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    // Each command's own options follow the overview, a section each.
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        out.extend_from_slice(
            format!(".SH \"RALPH-DEPLOY {}\"\n", sub.get_name().to_uppercase()).as_bytes(),
        );
        let page = clap_mangen::Man::new(sub.clone());
        page.render_description_section(&mut out)?;
        page.render_options_section(&mut out)?;
    }
    super::out::bytes(&out);
    Ok(EXIT_OK)
}

/// `reference PAGE`: a page of the generated documentation.
fn reference(page: super::ReferencePage) -> Result<i32, CliError> {
    let registry = ralph_engine::registry();
    print!(
        "{}",
        match page {
            super::ReferencePage::Commands => super::reference::commands(),
            super::ReferencePage::Stack => super::reference::stack(&registry),
            super::ReferencePage::Rules => super::reference::rules(),
            super::ReferencePage::Language => super::reference::language(),
        }
    );
    Ok(EXIT_OK)
}

/// `schema`: the JSON Schema of stack files, or with `--component` of components.
fn schema(component: bool) -> anyhow::Result<i32> {
    let registry = ralph_engine::registry();
    let schema = if component {
        ralph_stack::json_schema::component_schema(&registry)
    } else {
        ralph_stack::json_schema::stack_schema(&registry)
    };
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(EXIT_OK)
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

fn check_cmd(
    args: &StackArgs,
    format: super::CheckFormat,
    date: Option<chrono::NaiveDate>,
    policy: &[PathBuf],
) -> Result<i32, CliError> {
    let s = args.session(format != super::CheckFormat::Text)?;
    let date = date.unwrap_or_else(|| chrono::Utc::now().date_naive());
    let policies =
        ralph_engine::check::policies(&s.stack, policy).map_err(|e| CliError::Other(anyhow!(e)))?;
    let report = ralph_engine::check::check(&s.stack, date, None, &policies)
        .map_err(|e| CliError::Other(anyhow!(e)))?;
    match format {
        super::CheckFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(json_error)?
        ),
        super::CheckFormat::Sarif => println!(
            "{}",
            serde_json::to_string_pretty(&ralph_engine::check::sarif::log(&report))
                .map_err(json_error)?
        ),
        super::CheckFormat::Text => {
            print!("{}", report.text());
            println!(
                "{}: {} on {date}{}.",
                args.stack.display(),
                report.summary(),
                if report.blocking().next().is_some() {
                    "; apply refuses until the errors are fixed or waived"
                } else {
                    ""
                }
            );
        }
    }
    Ok(if report.blocking().next().is_some() {
        EXIT_ERROR
    } else {
        EXIT_OK
    })
}

/// A value that would not serialise: an error, never `null` or "".
fn json_error(e: serde_json::Error) -> CliError {
    CliError::Other(anyhow!("cannot write the output as JSON: {e}"))
}

pub(super) fn reporter(json: bool) -> Arc<dyn Reporter> {
    let r: Arc<dyn Reporter> = if json {
        Arc::new(JsonReporter)
    } else {
        super::progress::reporter()
    };
    // Slow remote parties are named through the same view.
    ralph_core::remote::set_reporter(r.clone());
    r
}

pub(super) async fn read_state(s: &Session) -> Result<(State, bool), CliError> {
    Ok(s.read_state().await?)
}

/// A plan in the chosen format (`requests`: the API calls it cost, for JSON).
fn plan_in(
    plan: &Plan,
    format: super::PlanFormat,
    requests: Option<u64>,
    report: &ralph_engine::check::Report,
) -> anyhow::Result<String> {
    Ok(match format {
        super::PlanFormat::Json => {
            let mut v = serde_json::to_value(plan)?;
            v["counts"] = serde_json::to_value(plan.counts())?;
            if let Some(r) = requests {
                v["requests"] = serde_json::json!(r);
            }
            v["findings"] = serde_json::to_value(&report.findings)?;
            format!("{}\n", serde_json::to_string_pretty(&v)?)
        }
        super::PlanFormat::Markdown => format!(
            "{}{}",
            crate::cli::render::plan_markdown(plan),
            crate::cli::render::findings_markdown(report)
        ),
        super::PlanFormat::Text => format!(
            "{}{}",
            plan_text(plan, Style::for_stdout()),
            crate::cli::render::findings_text(report)
        ),
    })
}

/// `show PLAN`: a saved plan's changes; `check` and `apply` judge the stack.
fn show(plan: &Path, format: super::PlanFormat) -> Result<i32, CliError> {
    let file = saved::read(plan).map_err(|e| anyhow!(e))?;
    let none = ralph_engine::check::Report::default();
    print!("{}", plan_in(&file.plan, format, None, &none)?);
    Ok(EXIT_OK)
}

async fn plan_cmd(
    args: &StackArgs,
    format: super::PlanFormat,
    detailed: bool,
    out: Option<&Path>,
    destroy: bool,
    select: &super::SelectArgs,
) -> Result<i32, CliError> {
    let json = format == super::PlanFormat::Json;
    let mut s = args.session(json)?;
    s.scope = select.scope();
    let cx = s.context(if json {
        Arc::new(Silent)
    } else {
        reporter(false)
    });
    if select.refresh_only {
        if destroy || out.is_some() || !select.replace.is_empty() || !select.refresh {
            return Err(CliError::Other(anyhow!(
                "--refresh-only cannot be combined with --destroy, --out, --replace or --refresh=false. Nothing was changed"
            )));
        }
        let drift = ralph_engine::ops::drift::plan(&s, &cx).await?;
        print!("{}", super::render::drift_text(&drift, json));
        return Ok(if detailed && !drift.is_empty() {
            EXIT_CHANGES
        } else {
            EXIT_OK
        });
    }
    if destroy && !select.replace.is_empty() {
        return Err(CliError::Other(anyhow!(
            "--replace cannot be used with --destroy. Nothing was changed"
        )));
    }
    let (state, existed) = read_state(&s).await?;
    let plan = s.make_plan(&state, existed, &cx, destroy).await?;
    let report = if destroy {
        ralph_engine::check::Report::default()
    } else {
        ralph_engine::ops::apply::findings(&s, &plan)?
    };
    print!(
        "{}",
        plan_in(&plan, format, Some(cx.request_count()), &report).map_err(CliError::Other)?
    );
    if let Some(path) = out {
        let file = PlanFile {
            plan: plan.clone(),
            variables: args.all_vars().map_err(CliError::Other)?,
        };
        let bytes = saved::to_bytes(&file).map_err(|e| CliError::Other(e.into()))?;
        ralph_engine::state::local::atomic_write(path, &bytes)
            .with_context(|| format!("writing the plan to {}", path.display()))?;
        // On stderr unless the plan is for people on a terminal: stdout
        // is the document (`--format markdown > comment.md`, JSON).
        let note = format!(
            "Saved the plan to {}. Apply exactly this plan with: ralph-deploy {} {}",
            path.display(),
            if destroy { "destroy" } else { "apply" },
            path.display()
        );
        if format == super::PlanFormat::Text {
            println!("{note}");
        } else {
            eprintln!("{note}");
        }
    }
    Ok(if detailed && plan.has_changes() {
        EXIT_CHANGES
    } else {
        EXIT_OK
    })
}

/// A JSON event stream that ends in an error (a refresh that failed, a
/// refused plan) ends with an `error` event, so a consumer reading stdout
/// learns why there is no summary. The message also goes to stderr.
pub(super) fn json_error_event(json: bool, result: Result<i32, CliError>) -> Result<i32, CliError> {
    if let (true, Err(CliError::Other(e))) = (json, &result) {
        println!(
            "{}",
            super::render::json_line(serde_json::json!({
                "event": "error",
                "message": format!("{e:#}"),
            }))
        );
    }
    result
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

async fn apply_cmd(
    args: &StackArgs,
    run: &RunArgs,
    destroy: bool,
    select: &super::SelectArgs,
) -> Result<i32, CliError> {
    // `apply FILE` / `destroy FILE` with a saved plan: verify it, then load
    // the stack it was made from.
    let saved = if saved::looks_like_plan(&args.stack) {
        if select.any() {
            return Err(CliError::Other(anyhow!(
                "--target, --exclude, --replace, --refresh and --refresh-only cannot be used with a saved plan: the plan fixes what it covers and how it was made. Nothing was changed. Drop them, or make a new plan with them"
            )));
        }
        Some(saved_plan(args, destroy)?)
    } else {
        None
    };
    let effective_args = match &saved {
        Some(file) => StackArgs {
            stack: PathBuf::from(&file.plan.stack_path),
            env: Some(file.plan.environment.clone()),
            vars: file.variables.clone(),
            var_files: Vec::new(),
            state_dir: args.state_dir.clone(),
            state: args.state.clone(),
            lock_timeout: args.lock_timeout,
        },
        None => args.clone(),
    };
    let mut s = effective_args.session(run.json)?;
    s.scope = select.scope();
    if destroy && (!select.replace.is_empty() || select.refresh_only) {
        return Err(CliError::Other(anyhow!(
            "--replace and --refresh-only cannot be used with destroy. Nothing was changed"
        )));
    }
    if select.refresh_only {
        return refresh_only_cmd(&s, run).await;
    }
    let cx = s.context(reporter(run.json));
    let request = Request {
        destroy,
        saved: saved.map(|f| f.plan),
        allow_protected: run.allow_protected,
        options: ApplyOptions {
            parallelism: run.parallelism,
        },
    };
    let approver = Terminal {
        json: run.json,
        destroy,
        auto_approve: run.auto_approve,
    };
    match ralph_engine::ops::apply::run(&s, &cx, request, &approver).await? {
        Outcome::NoChanges => {
            if run.json {
                println!(
                    "{}",
                    crate::cli::render::json_line(
                        serde_json::json!({ "event": "summary", "changes": 0 })
                    )
                );
            }
            Ok(EXIT_OK)
        }
        Outcome::Cancelled => {
            eprintln!("Cancelled; nothing was changed.");
            Ok(EXIT_ERROR)
        }
        Outcome::Applied {
            report,
            interrupted,
        } => {
            if run.json {
                let mut v = serde_json::to_value(&report).map_err(json_error)?;
                v["event"] = serde_json::json!("summary");
                v["changes"] = serde_json::json!(report.results.len());
                println!("{}", crate::cli::render::json_line(v));
            } else {
                super::progress::finish();
                eprint!("{}", summary_text(&report, destroy));
            }
            Ok(if interrupted {
                EXIT_INTERRUPTED
            } else if report.succeeded() {
                EXIT_OK
            } else {
                EXIT_ERROR
            })
        }
    }
}

/// `apply --refresh-only`: the drift shown, approved, written to the state.
async fn refresh_only_cmd(s: &Session, run: &RunArgs) -> Result<i32, CliError> {
    let cx = &s.context(reporter(run.json));
    let json = run.json;
    let auto = run.auto_approve;
    let approve = move |drift: &[ralph_engine::ops::drift::Drift]| -> Result<bool, OpError> {
        if !json {
            print!("{}", super::render::drift_text(drift, false));
        }
        if auto {
            return Ok(true);
        }
        confirm("Record these changes in the state (the cloud is not touched)?").map_err(
            |e| match e {
                CliError::Other(e) => OpError::Refused(e.to_string()),
                CliError::Invalid(d, _) => OpError::Other(d.to_string()),
            },
        )
    };
    let (drift, written) = ralph_engine::ops::drift::apply(s, cx, &approve).await?;
    if json {
        println!(
            "{}",
            crate::cli::render::json_line(serde_json::json!({
                "event": "summary",
                "changes": if written { drift.len() } else { 0 },
                "refresh_only": true,
                "drifted": drift.len(),
                "written": written,
            }))
        );
    } else if drift.is_empty() {
        print!("{}", super::render::drift_text(&drift, false));
    } else if written {
        eprintln!(
            "Refresh-only complete: the state now records {} drifted resource(s) as the cloud has them.",
            drift.len()
        );
    } else {
        eprintln!("Cancelled; the state was not changed.");
        return Ok(EXIT_ERROR);
    }
    Ok(EXIT_OK)
}

/// Shows plans on the terminal and asks there (or not at all in CI).
struct Terminal {
    json: bool,
    destroy: bool,
    auto_approve: bool,
}

impl Approver for Terminal {
    fn show(&self, plan: &Plan) {
        if !self.json {
            print!("{}", plan_text(plan, Style::for_stdout()));
        }
    }

    fn findings(&self, report: &ralph_engine::check::Report) {
        if self.json {
            if !report.findings.is_empty() {
                println!(
                    "{}",
                    crate::cli::render::json_line(serde_json::json!({
                        "event": "findings",
                        "findings": report.findings,
                    }))
                );
            }
        } else {
            print!("{}", crate::cli::render::findings_text(report));
        }
    }

    fn approve(&self, _plan: &Plan) -> Result<bool, OpError> {
        if self.auto_approve {
            return Ok(true);
        }
        confirm(if self.destroy {
            "Destroy these resources?"
        } else {
            "Apply these changes?"
        })
        .map_err(|e| match e {
            CliError::Other(e) => OpError::Refused(e.to_string()),
            CliError::Invalid(d, _) => OpError::Other(d.to_string()),
        })
    }
}

/// Whether an option's value came from the environment variable `var`
/// (set, and equal to `value` when one is given) rather than from one of
/// `flags` on the command line (clap reads both into one field): a message
/// then names what the user really set.
fn from_environment(var: &str, value: Option<&str>, flags: &[&str]) -> bool {
    let on_command_line = std::env::args().any(|a| {
        flags.iter().any(|f| {
            a == *f || a.starts_with(&format!("{f}=")) || (f.len() == 2 && a.starts_with(f))
        })
    });
    !on_command_line
        && std::env::var(var).is_ok_and(|v| !v.is_empty() && value.is_none_or(|want| v == want))
}

/// Reads and verifies a saved plan, and refuses what the plan already fixes.
fn saved_plan(args: &StackArgs, destroy: bool) -> Result<PlanFile, CliError> {
    let file = saved::read(&args.stack).map_err(|e| CliError::Other(e.into()))?;
    let plan = &file.plan;
    // (The same environment, from RALPH_DEPLOY_ENV in a CI job, is no conflict.)
    if let Some(env) = args.env.as_ref().filter(|e| **e != plan.environment) {
        if from_environment("RALPH_DEPLOY_ENV", Some(env), &["--env", "-e"]) {
            return Err(CliError::Other(anyhow!(
                "RALPH_DEPLOY_ENV={env} is set, but this saved plan is for environment `{}`. Nothing was changed. Apply the plan with RALPH_DEPLOY_ENV unset (or set to `{}`), or make a plan for `{env}`",
                plan.environment,
                plan.environment
            )));
        }
        return Err(CliError::Other(anyhow!(
            "--env {env} cannot be used with a saved plan: the plan fixes its environment (`{}`). Nothing was changed. Drop --env, or make a plan for `{env}` with `ralph-deploy plan --env {env} --out FILE`",
            plan.environment
        )));
    }
    if args.vars.is_empty()
        && !args.var_files.is_empty()
        && from_environment("RALPH_DEPLOY_VAR_FILE", None, &["--var-file"])
    {
        return Err(CliError::Other(anyhow!(
            "RALPH_DEPLOY_VAR_FILE is set, but a saved plan fixes its variables. Nothing was changed. Apply the plan with RALPH_DEPLOY_VAR_FILE unset, or make a new plan with that file"
        )));
    }
    if !args.vars.is_empty() || !args.var_files.is_empty() {
        return Err(CliError::Other(anyhow!(
            "--var and --var-file cannot be used with a saved plan: the plan fixes its variables ({}). Nothing was changed. Drop --var, or make a new plan with them",
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

async fn output(args: &StackArgs, name: Option<&str>, json: bool) -> Result<i32, CliError> {
    let s = args.session(json)?;
    let (state, existed) = read_state(&s).await?;
    if !existed {
        return Err(CliError::Other(anyhow!(
            "there is no state at {} yet, so no outputs: run `ralph-deploy apply` first (or point --state at the store the applies use)",
            s.backend.describe()
        )));
    }
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
                    " yet: run apply first".to_string()
                } else {
                    let hint = ralph_core::model::kinds::did_you_mean(
                        n,
                        s.stack.outputs.keys().map(String::as_str),
                    )
                    .map(|x| format!(" (did you mean `{x}`?)"))
                    .unwrap_or_else(|| {
                        format!(
                            "; it has: {}",
                            s.stack
                                .outputs
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    });
                    format!("; the stack does not declare it{hint}")
                }
            ))),
        },
        None => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&state.outputs).map_err(json_error)?
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
        StateCommand::Snapshots { args, json } => state_snapshots(&args, json).await,
        StateCommand::Restore { args, snapshot } => {
            let s = args.session(false)?;
            let cx = s.context(reporter(false));
            let r = ralph_engine::ops::restore_snapshot(&s, &cx, &snapshot).await?;
            println!(
                "Restored the state of serial {} ({} resources, {} outputs) as serial {}. The state before this restore is kept as a snapshot too. Run `ralph-deploy plan` to see how the cloud differs from it.",
                r.from_serial, r.resources, r.outputs, r.serial
            );
            Ok(EXIT_OK)
        }
        StateCommand::Pull { args } => {
            let s = args.session(false)?;
            let (state, existed) = read_state(&s).await?;
            if !existed {
                return Err(CliError::Other(anyhow::anyhow!(
                    "there is no state at {} yet",
                    s.backend.describe()
                )));
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&state).map_err(|e| CliError::Other(e.into()))?
            );
            Ok(EXIT_OK)
        }
        StateCommand::Push { args, file, force } => state_push(&args, &file, force).await,
        StateCommand::Rm { args, addresses } => {
            let s = args.session(false)?;
            let cx = s.context(reporter(false));
            let removed = ralph_engine::ops::state_cmds::rm(&s, &cx, &addresses).await?;
            for a in &removed {
                println!("forgot {a}");
            }
            eprintln!("The resources still exist and carry their ralph-deploy:* ownership tags: while the stack declares them the next plan adopts them again, and once it does not, the next plan deletes them as orphans. Remove those tags to hand them over.");
            Ok(EXIT_OK)
        }
        StateCommand::Rekey { args } => {
            let s = args.session(false)?;
            let cx = s.context(reporter(false));
            let serial = ralph_engine::ops::state_cmds::rekey(&s, &cx).await?;
            println!(
                "Rewrote the state as serial {serial} with the current key. Snapshots and history written before stay sealed with the old key: keep it in RALPH_DEPLOY_STATE_OLD_KEY while you may need them."
            );
            Ok(EXIT_OK)
        }
        StateCommand::Mv { args, from, to } => {
            let s = args.session(false)?;
            let cx = s.context(reporter(false));
            for (a, b) in ralph_engine::ops::state_cmds::mv(&s, &cx, &from, &to).await? {
                println!("moved {a} to {b}");
            }
            Ok(EXIT_OK)
        }
        StateCommand::Migrate { args, to } => state_migrate(&args, &to).await,
        StateCommand::List { args } => state_list(&args).await,
        StateCommand::Show { args, address } => state_show(&args, &address).await,
    }
}

/// `state snapshots`: the copies kept before each command.
async fn state_snapshots(args: &StackArgs, json: bool) -> Result<i32, CliError> {
    let s = args.session(json)?;
    let list = s
        .backend
        .snapshots()
        .await
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

/// `state push FILE`: a state file replaces the stored state.
async fn state_push(args: &StackArgs, file: &Path, force: bool) -> Result<i32, CliError> {
    let s = args.session(false)?;
    let text = ralph_core::files::read_text_bounded(&file, 64 << 20)
        .map_err(|e| CliError::Other(anyhow::anyhow!("{}: {e}", file.display())))?;
    let incoming: ralph_engine::state::State = serde_json::from_str(&text).map_err(|e| {
        CliError::Other(anyhow::anyhow!(
            "{}: not a state file ({e}); `ralph-deploy state pull` prints one",
            file.display()
        ))
    })?;
    let cx = s.context(reporter(false));
    let serial = ralph_engine::ops::state_cmds::push(&s, &cx, incoming, force).await?;
    println!(
        "Pushed {} as serial {serial} of {}.",
        file.display(),
        s.backend.describe()
    );
    Ok(EXIT_OK)
}

/// `state migrate TO`: the state and its snapshots copied to another store.
async fn state_migrate(args: &StackArgs, to: &str) -> Result<i32, CliError> {
    let s = args.session(false)?;
    let cx = s.context(reporter(false));
    let location = if ralph_engine::state::postgres::is_postgres_url(&to) || to.contains("://") {
        ralph_engine::ops::StateLocation::Url(to.to_string())
    } else {
        ralph_engine::ops::StateLocation::Dir(PathBuf::from(&to))
    };
    let target = ralph_engine::ops::state_cmds::backend_at(&s, &location)?;
    let shown = target.describe();
    let (serial, copied) = ralph_engine::ops::state_cmds::migrate(&s, &cx, target).await?;
    println!(
        "Copied serial {serial} and {copied} before-command snapshot(s) from {} to {shown}. Point every run at the new store (--state or RALPH_DEPLOY_STATE); the old copy is left as it was.",
        s.backend.describe(),
    );
    Ok(EXIT_OK)
}

/// `state list`: the recorded resources, one a line.
async fn state_list(args: &StackArgs) -> Result<i32, CliError> {
    let s = args.session(false)?;
    let (state, existed) = read_state(&s).await?;
    for (address, r) in &state.resources {
        println!("{address}\t{}\t{}", r.kind, r.id);
    }
    // Nothing listed is an answer too, said on stderr so that the
    // list stays empty for scripts.
    if !existed {
        eprintln!(
            "There is no state at {} yet: nothing has been applied for this stack and environment (run `ralph-deploy apply`, or point --state at the store the applies use).",
            s.backend.describe()
        );
    } else if state.resources.is_empty() {
        eprintln!(
            "The state at {} records no resources (serial {}): everything was destroyed, or nothing applied yet.",
            s.backend.describe(), state.serial
        );
    }
    Ok(EXIT_OK)
}

/// `state show ADDRESS`: one recorded resource.
async fn state_show(args: &StackArgs, address: &str) -> Result<i32, CliError> {
    let s = args.session(false)?;
    let (state, _) = read_state(&s).await?;
    match state.resources.get(address) {
        Some(r) => {
            println!("{}", serde_json::to_string_pretty(r).map_err(json_error)?);
            Ok(EXIT_OK)
        }
        None => {
            let hint = ralph_core::model::kinds::did_you_mean(
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

fn graph(args: &StackArgs, format: GraphFormat, plan: Option<&Path>) -> Result<i32, CliError> {
    let s = args.session(false)?;
    let actions: std::collections::BTreeMap<String, String> = match plan {
        None => Default::default(),
        Some(p) => {
            let file = saved::read(p).map_err(|e| CliError::Other(e.into()))?;
            if file.plan.stack != s.stack.name || file.plan.environment != s.stack.environment {
                return Err(CliError::Other(anyhow!(
                    "{} is a plan of `{}` / `{}`, not of `{}` / `{}`",
                    p.display(),
                    file.plan.stack,
                    file.plan.environment,
                    s.stack.name,
                    s.stack.environment
                )));
            }
            file.plan
                .changes
                .iter()
                .filter(|c| c.is_change())
                .map(|c| {
                    let a = serde_json::to_value(c.action).ok();
                    (
                        c.address.clone(),
                        a.and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    )
                })
                .collect()
        }
    };
    let g = s
        .stack
        .graph()
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
            GraphFormat::Dot => g.to_dot_with(&kinds, &actions),
            GraphFormat::Svg => svg(&g.to_dot_with(&kinds, &actions))?,
            GraphFormat::Mermaid => g.to_mermaid_with(&kinds, &actions),
            GraphFormat::Json => {
                let nodes: Vec<serde_json::Value> = s
                .stack
                .resources
                .values()
                .map(|r| {
                    let mut n = serde_json::json!({ "address": r.address, "kind": r.kind.kind, "depends_on": g.dependencies_of(&r.address) });
                    if let Some(a) = actions.get(&r.address) {
                        n["action"] = serde_json::json!(a);
                    }
                    n
                })
                .collect();
                format!("{}\n", serde_json::json!({ "nodes": nodes }))
            }
        }
    );
    Ok(EXIT_OK)
}

/// DOT drawn as SVG by Graphviz.
fn svg(dot: &str) -> Result<String, CliError> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            CliError::Other(anyhow!(
                "--format svg needs Graphviz's `dot` on PATH ({e}): install graphviz (apt-get install graphviz, brew install graphviz), or print --format dot and draw it elsewhere"
            ))
        })?;
    child
        .stdin
        .take()
        .map(|mut i| i.write_all(dot.as_bytes()))
        .transpose()
        .map_err(|e| CliError::Other(e.into()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| CliError::Other(e.into()))?;
    if !out.status.success() {
        return Err(CliError::Other(anyhow!(
            "dot -Tsvg failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    String::from_utf8(out.stdout).map_err(|e| CliError::Other(e.into()))
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

async fn import_cmd(args: &StackArgs, address: &str, id: &str) -> Result<i32, CliError> {
    let s = args.session(false)?;
    let cx = s.context(reporter(false));
    let done = ralph_engine::ops::state_cmds::import(&s, &cx, address, id).await?;
    println!(
        "Imported {} {} as `{address}`. Run `ralph-deploy plan` to see how it differs from the stack; the next apply also gives it the ralph-deploy ownership tags.",
        done.kind, done.id
    );
    Ok(EXIT_OK)
}

async fn status_cmd(args: &StackArgs, json: bool) -> Result<i32, CliError> {
    let s = args.session(json)?;
    let cx = s.context(Arc::new(Silent));
    let reports = ralph_engine::ops::status::status(&s, &cx).await?;
    let healthy = reports.iter().all(|r| r.checks.iter().all(|c| c.healthy));
    let nothing = reports.is_empty().then(|| {
        format!(
            "Nothing to check: {} declares no kubernetes.orchestrator, no kubernetes.manifests and no recovery.rpo (status checks the orchestrator's pods and its stores, the add-ons' workloads, and the age of the last backup).",
            s.stack.path.display()
        )
    });
    if json {
        let mut doc = serde_json::json!({
            "stack": s.stack.name,
            "environment": s.stack.environment,
            "healthy": healthy,
            "services": reports,
        });
        if let Some(n) = &nothing {
            doc["note"] = serde_json::Value::String(n.clone());
        }
        println!("{doc}");
    } else if let Some(n) = &nothing {
        println!("{n}");
    } else {
        for r in &reports {
            println!("{}:", r.address);
            for c in &r.checks {
                println!(
                    "  {:10} {:9} {}  ({}; {} ms)",
                    c.check,
                    if c.healthy { "healthy" } else { "UNHEALTHY" },
                    c.detail,
                    c.target,
                    c.elapsed_ms
                );
            }
        }
        println!(
            "{}",
            if healthy {
                "Healthy."
            } else {
                "Unhealthy: see the checks marked UNHEALTHY above."
            }
        );
    }
    Ok(if healthy { EXIT_OK } else { EXIT_ERROR })
}

async fn backup_cmd(
    args: &StackArgs,
    o: &ralph_engine::ops::backup::BackupOptions,
    json: bool,
) -> Result<i32, CliError> {
    let s = args.session(json)?;
    let cx = s.context(Arc::new(Silent));
    let r = ralph_engine::ops::backup::backup(&s, &cx, o).await?;
    if json {
        println!("{}", serde_json::to_string(&r).map_err(json_error)?);
    } else {
        let rows: i64 = r.manifest.tables.iter().map(|t| t.rows).sum();
        println!(
            "Backed up {} ({} tables, {rows} rows, {} bytes compressed) to {}",
            r.manifest.database,
            r.manifest.tables.len(),
            r.manifest.bytes,
            r.url
        );
        for k in &r.removed {
            println!("Removed {k}, older than the retention.");
        }
        if let Some(id) = &r.snapshot {
            println!("Snapshot {id} started.");
        }
    }
    Ok(EXIT_OK)
}

async fn failover_cmd(
    args: &StackArgs,
    o: &ralph_engine::ops::failover::Options,
    auto_approve: bool,
    json: bool,
) -> Result<i32, CliError> {
    let s = args.session(json)?;
    if !auto_approve
        && !confirm(&format!(
            "Fail over the database of {} ({}) to its read replica{}?",
            s.stack.name,
            s.stack.environment,
            o.replica
                .as_ref()
                .map(|r| format!(" {r}"))
                .unwrap_or_default()
        ))?
    {
        eprintln!("Failover cancelled; nothing was changed.");
        return Ok(EXIT_ERROR);
    }
    let cx = s.context(reporter(json));
    let r = ralph_engine::ops::failover::failover(&s, &cx, o).await?;
    if json {
        // The stream's last line, as apply's: a summary, with the failover.
        println!(
            "{}",
            super::render::json_line(serde_json::json!({
                "event": "summary",
                "changes": 1,
                "failover": r,
            }))
        );
    } else {
        println!(
            "Failed over: {} is {} now, the promoted replica{}.",
            r.primary,
            r.instance,
            r.lag_seconds
                .map(|l| format!(" ({l:.0}s behind when promoted)"))
                .unwrap_or_default()
        );
        match &r.old_primary {
            Some(old) => println!("The old primary is {old}: no longer the stack's (its ownership tags or labels are off), deletion protection kept; delete it once you no longer need it."),
            None => println!("The old primary no longer existed."),
        }
        if !r.rolled.is_empty() {
            println!("Rolled onto the new primary: {}.", r.rolled.join(", "));
        }
        println!(
            "{} is gone from the state: the next `ralph-deploy apply` creates a new replica.",
            r.replica
        );
    }
    Ok(EXIT_OK)
}

async fn restore_cmd(
    args: &StackArgs,
    o: &ralph_engine::ops::backup::BackupOptions,
    key: &str,
    into: Option<&str>,
    json: bool,
) -> Result<i32, CliError> {
    let s = args.session(json)?;
    let cx = s.context(Arc::new(Silent));
    let r = ralph_engine::ops::backup::restore(&s, &cx, o, key, into).await?;
    if json {
        println!("{}", serde_json::to_string(&r).map_err(json_error)?);
    } else {
        println!(
            "Restored {} into database {}: {} tables, every row count and checksum matches the backup.",
            r.key,
            r.database,
            r.tables.len()
        );
    }
    Ok(EXIT_OK)
}

async fn migrate_status(args: &StackArgs, json: bool) -> Result<i32, CliError> {
    let s = args.session(json)?;
    let cx = s.context(Arc::new(Silent));
    let mut report = serde_json::Map::new();
    let mut pending = false;
    for st in ralph_engine::ops::db::migrate_status(&s, &cx).await? {
        pending |= st.migrations.iter().any(|m| m.status != "applied");
        if json {
            report.insert(
                st.address,
                serde_json::to_value(&st.migrations).map_err(json_error)?,
            );
        } else {
            println!("{} ({}):", st.address, st.target);
            for m in &st.migrations {
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
    for (address, n) in ralph_engine::ops::db::partitions(&s, &cx, months_ahead).await? {
        println!("{address}: {n} partition(s) created; the current month and {months_ahead} ahead now exist.");
    }
    Ok(EXIT_OK)
}

/// `fmt`: the stack and component files under `paths`, formatted in place
/// (or checked). Files named on the command line are always read; a
/// directory search takes only YAML files that are stack or component files
/// and counts the rest as skipped.
fn fmt_cmd(paths: &[PathBuf], check: bool, diff: bool) -> Result<i32, CliError> {
    fn collect(p: &Path, named: bool, out: &mut Vec<(PathBuf, bool)>) -> std::io::Result<()> {
        if p.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)?.collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || name == "target" || name == "node_modules" {
                    continue;
                }
                let path = e.path();
                if path.is_dir() {
                    collect(&path, false, out)?;
                } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                    out.push((path, false));
                }
            }
        } else {
            out.push((p.to_path_buf(), named));
        }
        Ok(())
    }
    let mut files = Vec::new();
    for p in paths {
        collect(p, true, &mut files).with_context(|| format!("reading {}", p.display()))?;
    }
    let (mut checked, mut unformatted, mut refused, mut skipped) = (0, 0, 0, 0);
    for (f, named) in &files {
        let text = ralph_core::files::read_text_bounded(f, 4 << 20)
            .with_context(|| format!("reading {}", f.display()))?;
        if !named && !ralph_stack::fmt::is_stack_or_component(&text) {
            skipped += 1;
            continue;
        }
        checked += 1;
        match ralph_stack::fmt::format(&text) {
            Ok(formatted) if formatted == text => {}
            Ok(formatted) => {
                unformatted += 1;
                if diff {
                    let name = f.display().to_string();
                    print!(
                        "{}",
                        similar::TextDiff::from_lines(&text, &formatted)
                            .unified_diff()
                            .context_radius(2)
                            .header(&name, &name)
                    );
                } else {
                    println!("{}", f.display());
                }
                if !check {
                    ralph_engine::state::local::atomic_write(f, formatted.as_bytes())
                        .with_context(|| format!("writing {}", f.display()))?;
                }
            }
            Err(why) => {
                refused += 1;
                eprintln!("{}: left as it is: {why}", f.display());
            }
        }
    }
    let other = match skipped {
        0 => String::new(),
        n => format!("; {n} other YAML file(s) skipped (not stack or component files)"),
    };
    let verdict = match (check, unformatted) {
        (_, 0) => "all formatted".to_string(),
        (true, n) => format!("{n} not formatted (run `ralph-deploy fmt`)"),
        (false, n) => format!("{n} reformatted"),
    };
    let unread = match refused {
        0 => String::new(),
        n => format!(", {n} left as they are (see above)"),
    };
    eprintln!("{checked} stack and component file(s): {verdict}{unread}{other}.");
    Ok(if refused > 0 {
        EXIT_ERROR
    } else if check && unformatted > 0 {
        3
    } else {
        EXIT_OK
    })
}
