//! Rendering: plans in the familiar symbols, events as lines or JSON.

use ralph_core::events::{Event, Reporter};
use ralph_engine::apply::ApplyReport;
use ralph_engine::plan::{Action, Plan};

use super::diff_text::{self, Mark, Style};

/// The plan as text; `style` colours the change symbols (a terminal).
pub fn plan_text(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    let title = if plan.destroy { "Destroy plan" } else { "Plan" };
    out.push_str(&format!(
        "{title} for stack `{}`, environment `{}`:\n\n",
        plan.stack, plan.environment
    ));
    let mut any = false;
    for m in &plan.moves {
        any = true;
        out.push_str(&format!("  > {} has moved to {}\n", m.from, m.to));
    }
    for c in &plan.changes {
        if !c.is_change() {
            continue;
        }
        any = true;
        let id = c.id.as_deref().map(|i| format!(" {i}")).unwrap_or_default();
        let verb = match c.action {
            Action::Create => "will be created",
            Action::Update => "will be updated in place",
            Action::Replace => "must be replaced",
            Action::Delete => "will be deleted",
            Action::NoOp => "will be adopted into the state",
        };
        let symbol = if c.action == Action::NoOp {
            "="
        } else {
            c.action.symbol()
        };
        let mark = match c.action {
            Action::Create => Mark::Add,
            Action::Delete | Action::Replace => Mark::Remove,
            _ => Mark::Change,
        };
        out.push_str(&format!(
            "  {} {} ({}){id} {verb}",
            style.paint(mark, symbol),
            c.address,
            c.kind
        ));
        if let Some(r) = &c.reason {
            out.push_str(&format!(": {r}"));
        }
        if c.protect && matches!(c.action, Action::Delete | Action::Replace) {
            out.push_str(" [protected]");
        }
        out.push('\n');
        for a in &c.attributes {
            let note = if a.forces_replace {
                "  # forces replacement"
            } else {
                ""
            };
            let before = match c.action {
                Action::Create => None,
                _ => a.before.as_ref(),
            };
            for line in diff_text::attribute(
                &style,
                6,
                &a.name,
                before,
                a.after.as_ref().or(a.partial.as_ref()),
                a.after.is_some() || a.partial.is_some(),
                note,
            ) {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    let c = plan.counts();
    if !any {
        out.push_str(if plan.refreshed {
            "  No changes. The cloud matches the stack.\n"
        } else {
            "  No changes. The recorded state matches the stack (the cloud was not read).\n"
        });
    }
    for note in release_notes(plan) {
        out.push_str(&format!("\n  Note: {note}\n"));
    }
    out.push_str(&format!(
        "\nPlan: {} to create, {} to update, {} to replace, {} to delete{}{}, {} unchanged.\n",
        c.create,
        c.update,
        c.replace,
        c.delete,
        if c.adopt > 0 {
            format!(", {} to adopt", c.adopt)
        } else {
            String::new()
        },
        if c.moved > 0 {
            format!(", {} to move", c.moved)
        } else {
            String::new()
        },
        c.unchanged
    ));
    out
}

/// Why a plan leaves a field alone that the stack sets otherwise: a
/// release (`deploy --image`, `rollback`) stands over it.
fn release_notes(plan: &Plan) -> Vec<String> {
    let value =
        |v: Option<&serde_json::Value>| v.map_or("(unknown)".to_string(), |v| v.to_string());
    plan.changes
        .iter()
        .filter(|c| !c.release_holds.is_empty())
        .map(|c| {
            let held: Vec<String> = c
                .release_holds
                .iter()
                .map(|a| {
                    format!("{} {} (the stack says {})", a.name, value(a.before.as_ref()), value(a.after.as_ref()))
                })
                .collect();
            format!(
                "{} runs a release made by `deploy` or `rollback`: {}. It stands until the stack changes {}.",
                c.address,
                held.join(", "),
                if held.len() == 1 { "that value" } else { "one of these values" }
            )
        })
        .collect()
}

/// GitHub's limit on a comment is 65,536 characters; a plan longer than
/// this is cut at a resource boundary, with a note.
const MARKDOWN_LIMIT: usize = 60_000;

/// The plan as Markdown for a pull-request comment: a summary table,
/// replacements and deletions called out first (protected ones flagged),
/// then each change in a collapsed block. Secret values are never
/// properties, so there is nothing to redact.
pub fn plan_markdown(plan: &Plan) -> String {
    let c = plan.counts();
    let mut out = format!(
        "### ralph-deploy {}: `{}` / `{}`\n\n",
        if plan.destroy { "destroy plan" } else { "plan" },
        plan.stack,
        plan.environment
    );
    if !plan.selection.is_empty() {
        let mut parts: Vec<String> = plan
            .selection
            .targets
            .iter()
            .map(|t| format!("`--target {t}`"))
            .collect();
        parts.extend(
            plan.selection
                .excludes
                .iter()
                .map(|e| format!("`--exclude {e}`")),
        );
        out.push_str(&format!(
            "> **Partial plan** ({}): the rest of the stack is not covered.\n\n",
            parts.join(" ")
        ));
    }
    out.push_str("| create | update | replace | delete | adopt | move | unchanged |\n|---:|---:|---:|---:|---:|---:|---:|\n");
    out.push_str(&format!(
        "| {} | {} | {} | {} | {} | {} | {} |\n\n",
        c.create, c.update, c.replace, c.delete, c.adopt, c.moved, c.unchanged
    ));
    for note in release_notes(plan) {
        out.push_str(&format!("> **Note:** {note}\n\n"));
    }
    let changes: Vec<_> = plan.changes.iter().filter(|c| c.is_change()).collect();
    if changes.is_empty() && plan.moves.is_empty() {
        out.push_str("No changes. The cloud matches the stack.\n");
        return out;
    }
    let risky: Vec<_> = changes
        .iter()
        .filter(|c| matches!(c.action, Action::Delete | Action::Replace))
        .collect();
    if !risky.is_empty() {
        out.push_str("**Deletions and replacements**\n\n");
        for c in &risky {
            out.push_str(&format!(
                "- {} `{}` ({}){}{}\n",
                if c.action == Action::Delete {
                    "delete"
                } else {
                    "replace"
                },
                c.address,
                c.kind,
                c.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default(),
                if c.protect {
                    " **[protected: needs --allow-protected]**"
                } else {
                    ""
                }
            ));
        }
        out.push('\n');
    }
    for m in &plan.moves {
        out.push_str(&format!("- `{}` has moved to `{}`\n", m.from, m.to));
    }
    if !plan.moves.is_empty() {
        out.push('\n');
    }
    // Risky ones first, then the rest in address order.
    let mut ordered: Vec<_> = risky.iter().map(|c| **c).collect();
    ordered.extend(
        changes
            .iter()
            .filter(|c| !matches!(c.action, Action::Delete | Action::Replace))
            .copied(),
    );
    let plain = Style::plain();
    for (i, c) in ordered.iter().enumerate() {
        let block = markdown_block(c, &plain);
        if out.len() + block.len() > MARKDOWN_LIMIT {
            out.push_str(&format!(
                "\n_{} more change(s) not shown: the plan is longer than a comment can hold. Run `ralph-deploy plan` or `show` on the saved plan for all of it._\n",
                ordered.len() - i
            ));
            break;
        }
        out.push_str(&block);
    }
    out
}

/// One change as a collapsed block with its attributes as a diff.
fn markdown_block(c: &ralph_core::change::Change, plain: &Style) -> String {
    let verb = match c.action {
        Action::Create => "create",
        Action::Update => "update in place",
        Action::Replace => "replace",
        Action::Delete => "delete",
        Action::NoOp => "adopt",
    };
    let mut block = format!(
        "<details><summary><code>{} {}</code> ({}) {verb}</summary>\n\n```diff\n",
        if c.action == Action::NoOp {
            "="
        } else {
            c.action.symbol()
        },
        html_escape(&c.address),
        html_escape(&c.kind)
    );
    for a in &c.attributes {
        let before = match c.action {
            Action::Create => None,
            _ => a.before.as_ref(),
        };
        let note = if a.forces_replace {
            "  # forces replacement"
        } else {
            ""
        };
        for line in diff_text::attribute(
            plain,
            0,
            &a.name,
            before,
            a.after.as_ref().or(a.partial.as_ref()),
            a.after.is_some() || a.partial.is_some(),
            note,
        ) {
            // diff colouring keys on the first column: + added, - removed, ! changed.
            let line = line.replacen("~ ", "! ", 1);
            block.push_str(&line.replace("```", "`\u{200b}``"));
            block.push('\n');
        }
    }
    block.push_str("```\n\n</details>\n");
    block
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn summary_text(report: &ApplyReport, destroy: bool) -> String {
    let mut out = String::new();
    for r in &report.results {
        if let Some(e) = &r.error {
            out.push_str(&format!(
                "  {} {}: {} ({})\n",
                r.action.symbol(),
                r.address,
                r.outcome,
                e
            ));
        }
    }
    for (service, throttles, limit) in &report.throttled {
        out.push_str(&format!("  {service} throttled {throttles} time(s); its concurrency adapted down to {limit:.1}\n"));
    }
    let verb = if destroy { "Destroy" } else { "Apply" };
    let status = if report.succeeded() {
        "complete"
    } else {
        "incomplete"
    };
    out.push_str(&format!(
        "{verb} {status}: {} created, {} updated, {} replaced, {} deleted{}; {} failed, {} skipped, {} not started. {} API requests ({} retried) in {:.1}s.\n",
        report.created,
        report.updated,
        report.replaced,
        report.deleted,
        if report.adopted > 0 { format!(", {} adopted", report.adopted) } else { String::new() },
        report.failed,
        report.skipped,
        report.not_started,
        report.requests,
        report.retries,
        report.elapsed_ms as f64 / 1000.0
    ));
    out
}

/// Now, as JSON events carry it: RFC 3339, UTC, milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The version of the JSON event stream (schema/events.schema.json).
pub const EVENTS_VERSION: u64 = 1;

/// One line of the JSON event stream: the event with its schema version
/// (`v`) and the time it happened (`time`, RFC 3339 UTC, milliseconds); the
/// last line of a run (`summary`, `error`) also names the tool's version.
pub fn json_line(mut v: serde_json::Value) -> String {
    if let Some(m) = v.as_object_mut() {
        m.insert("v".into(), serde_json::json!(EVENTS_VERSION));
        m.insert("time".into(), serde_json::Value::String(now()));
        if matches!(
            m.get("event").and_then(|e| e.as_str()),
            Some("summary" | "error")
        ) {
            m.insert("tool".into(), serde_json::json!("ralph-deploy"));
            m.insert(
                "version".into(),
                serde_json::json!(env!("CARGO_PKG_VERSION")),
            );
        }
    }
    v.to_string()
}

/// JSON lines on stdout, one object per event (see [`json_line`]).
pub struct JsonReporter;

impl Reporter for JsonReporter {
    fn report(&self, event: Event) {
        let Ok(v) = serde_json::to_value(&event) else {
            return;
        };
        super::out::write(format_args!("{}", json_line(v)), true);
    }
}

/// Drift found by a refresh-only plan: text, or one JSON document.
pub fn drift_text(drift: &[ralph_engine::ops::drift::Drift], json: bool) -> String {
    if json {
        return format!(
            "{}\n",
            serde_json::json!({ "refresh_only": true, "drift": drift, "drifted": drift.len() })
        );
    }
    if drift.is_empty() {
        return "No drift: the state matches the cloud.\n".to_string();
    }
    let style = Style::for_stdout();
    let mut out = String::from(
        "Changed outside ralph-deploy (refresh-only records these in the state; the cloud is not touched):\n",
    );
    for d in drift {
        if d.gone {
            out.push_str(&format!(
                "  - {} ({}) {}: gone from the cloud; the state forgets it\n",
                d.address, d.kind, d.id
            ));
            continue;
        }
        out.push_str(&format!("  ~ {} ({}) {}\n", d.address, d.kind, d.id));
        for a in &d.changed {
            for line in diff_text::attribute(
                &style,
                6,
                &a.name,
                a.recorded.as_ref(),
                Some(&a.reported),
                true,
                "",
            ) {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    out.push_str(&format!(
        "Refresh-only: {} resource(s) drifted.\n",
        drift.len()
    ));
    out
}

/// `check`'s findings under a plan: nothing when there are none.
pub fn findings_text(report: &ralph_engine::check::Report) -> String {
    if report.findings.is_empty() {
        return String::new();
    }
    format!(
        "\nCheck: {}{}\n{}",
        report.summary(),
        if report.blocking().next().is_some() {
            " (apply refuses until the errors are fixed or waived)"
        } else {
            ""
        },
        report.text()
    )
}

/// `check`'s findings as a Markdown section of the pull-request comment.
pub fn findings_markdown(report: &ralph_engine::check::Report) -> String {
    if report.findings.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n**Check**: {}\n\n| | Rule | Where | Finding |\n|---|---|---|---|\n",
        report.summary()
    );
    for f in &report.findings {
        let mark = match (&f.waived, f.severity) {
            (Some(_), _) => "waived",
            (None, ralph_engine::check::Severity::Error) => "**error**",
            (None, ralph_engine::check::Severity::Warning) => "warning",
        };
        let note = match &f.waived {
            Some(reason) => format!("{} (waived: {reason})", f.message),
            None => format!("{} Fix: {}", f.message, f.help),
        };
        out.push_str(&format!(
            "| {mark} | `{}` | `{}:{}` | {} |\n",
            f.rule,
            f.file,
            f.line,
            note.replace('|', "\\|").replace('\n', " ")
        ));
    }
    out
}
