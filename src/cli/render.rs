//! Rendering: plans in the familiar symbols, events as lines or JSON.

use std::io::Write;

use crate::apply::ApplyReport;
use crate::events::{Event, Reporter};
use crate::plan::{Action, Plan};

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
                a.after.as_ref(),
                a.after.is_some(),
                note,
            ) {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    let c = plan.counts();
    if !any {
        out.push_str("  No changes. The cloud matches the stack.\n");
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

/// Progress lines on stderr.
pub struct TextReporter;

impl Reporter for TextReporter {
    fn report(&self, event: Event) {
        let line = match event {
            Event::RefreshStarted { .. } | Event::RefreshFinished { .. } => return,
            Event::ResourceStarted {
                address,
                action,
                phase,
                ..
            } => match phase {
                Some("delete") => format!("{address}: replacing: deleting the old one..."),
                Some(_) => format!("{address}: replacing: creating the new one..."),
                None => format!("{address}: {}...", progressive(action)),
            },
            Event::ResourceWaiting {
                address,
                status,
                elapsed_s,
            } => format!("{address}: still {status} ({elapsed_s}s)"),
            Event::ResourceFinished {
                address,
                action,
                id,
                elapsed_ms,
            } => {
                format!(
                    "{address}: {} {id} in {:.1}s",
                    done(action),
                    elapsed_ms as f64 / 1000.0
                )
            }
            Event::ResourceFailed {
                address,
                action,
                error,
            } => format!("{address}: {} failed: {error}", progressive(action)),
            Event::ResourceSkipped { address, because } => {
                format!("{address}: skipped because {because} failed")
            }
            Event::ResourceMoved { from, to } => format!("{from}: moved to {to} in the state"),
            Event::Step { address, message } => format!("{address}: {message}"),
            Event::Warning { message } => format!("warning: {message}"),
        };
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// Now, as JSON events carry it: RFC 3339, UTC, milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// JSON lines on stdout, one object per event, each with the time it
/// happened (`time`, RFC 3339 UTC, milliseconds).
pub struct JsonReporter;

impl Reporter for JsonReporter {
    fn report(&self, event: Event) {
        let Ok(mut v) = serde_json::to_value(&event) else {
            return;
        };
        if let Some(m) = v.as_object_mut() {
            m.insert("time".into(), serde_json::Value::String(now()));
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
    }
}

fn progressive(a: Action) -> &'static str {
    match a {
        Action::Create => "creating",
        Action::Update => "updating",
        Action::Replace => "replacing",
        Action::Delete => "deleting",
        Action::NoOp => "checking",
    }
}

fn done(a: Action) -> &'static str {
    match a {
        Action::Create => "created",
        Action::Update => "updated",
        Action::Replace => "replaced",
        Action::Delete => "deleted",
        Action::NoOp => "checked",
    }
}
