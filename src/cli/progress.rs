//! What a person sees while apply, destroy, deploy and rollback run.
//!
//! On a terminal (stderr), a live view drawn with indicatif: one line per
//! resource in flight with its phase, the cloud's own status, its elapsed
//! time against how long it typically takes, and an overall line with what
//! is done, what waits on dependencies and an estimate of the time left
//! from the remaining critical path of the graph. Finished resources scroll
//! up above the live lines, so the last screen is the record and then the
//! summary.
//!
//! Off a terminal (a CI log), plain lines with a UTC time and no control
//! characters, and a heartbeat for every resource still in flight after a
//! quiet interval (`RALPH_DEPLOY_HEARTBEAT` seconds, 30 by default), so a
//! twenty-minute create never looks frozen.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use ralph_core::events::{Event, PlannedStep, Reporter};
use ralph_core::model::Action;

/// The live view of this process, if one is drawing (see [`finish`]).
static LIVE: OnceLock<Mutex<Option<Weak<Progress>>>> = OnceLock::new();

/// Clears the live view, so that what is printed next (the summary, an
/// error) is the last thing on the screen. Harmless when none is drawing.
pub fn finish() {
    let live = LIVE.get().and_then(|m| m.lock().ok()?.take());
    if let Some(p) = live.and_then(|w| w.upgrade()) {
        p.stop();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Announced, not started: waiting for what it needs.
    Pending,
    /// The tool is making its requests.
    Working,
    /// The cloud is working; the tool polls its status.
    Service,
    Done,
    Failed,
    Skipped,
}

struct Item {
    service: String,
    typical: Duration,
    after: Vec<String>,
    phase: Phase,
    /// What the resource is doing, in words ("creating", "replacing:
    /// deleting the old one").
    doing: String,
    /// The cloud's last reported status.
    status: Option<String>,
    started: Option<Instant>,
    took: Option<Duration>,
    /// When a line about it was last printed (lines mode).
    last_line: Instant,
    bar: Option<ProgressBar>,
}

struct Inner {
    items: BTreeMap<String, Item>,
    /// Steps announced by `ApplyStarted` (0 for deploy and rollback).
    announced: usize,
    started: Instant,
    last_heartbeat: Instant,
    ticker: bool,
    stopped: bool,
}

enum Mode {
    Live {
        multi: MultiProgress,
        overall: ProgressBar,
    },
    Lines {
        heartbeat: Duration,
    },
}

pub struct Progress {
    inner: Mutex<Inner>,
    mode: Mode,
    me: Weak<Progress>,
}

/// The reporter for text output: live on a terminal, lines otherwise.
pub fn reporter() -> Arc<Progress> {
    let live = std::io::stderr().is_terminal()
        && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(false);
    let mode = if live {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let overall = multi.add(ProgressBar::hidden());
        if let Ok(style) = ProgressStyle::with_template("{msg}") {
            overall.set_style(style);
        }
        Mode::Live { multi, overall }
    } else {
        let secs = std::env::var("RALPH_DEPLOY_HEARTBEAT")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(30.0);
        Mode::Lines {
            heartbeat: Duration::from_secs_f64(secs),
        }
    };
    let now = Instant::now();
    let p = Arc::new_cyclic(|me| Progress {
        inner: Mutex::new(Inner {
            items: BTreeMap::new(),
            announced: 0,
            started: now,
            last_heartbeat: now,
            ticker: false,
            stopped: false,
        }),
        mode,
        me: me.clone(),
    });
    if live {
        *LIVE
            .get_or_init(|| Mutex::new(None))
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(&p));
    }
    p
}

/// `6m12s`, `45s`, `1h02m`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn doing(action: Action, phase: Option<&str>) -> String {
    match (action, phase) {
        (_, Some("delete")) => "replacing: deleting the old one".into(),
        (_, Some(_)) => "replacing: creating the new one".into(),
        (Action::Create, None) => "creating".into(),
        (Action::Update, None) => "updating".into(),
        (Action::Replace, None) => "replacing".into(),
        (Action::Delete, None) => "deleting".into(),
        (Action::NoOp, None) => "checking".into(),
    }
}

fn done_word(a: Action) -> &'static str {
    match a {
        Action::Create => "created",
        Action::Update => "updated",
        Action::Replace => "replaced",
        Action::Delete => "deleted",
        Action::NoOp => "checked",
    }
}

impl Inner {
    fn item(&mut self, address: &str, action: Action) -> &mut Item {
        let now = Instant::now();
        self.items
            .entry(address.to_string())
            .or_insert_with(|| Item {
                service: String::new(),
                typical: Duration::ZERO,
                after: Vec::new(),
                phase: Phase::Pending,
                doing: doing(action, None),
                status: None,
                started: None,
                took: None,
                last_line: now,
                bar: None,
            })
    }

    /// How much slower (or faster) than typical this cloud has been so far:
    /// the finished steps' time over their typical time (1 until a step
    /// that typically takes a while has finished).
    fn pace(&self) -> f64 {
        let (mut took, mut typical) = (0.0, 0.0);
        for i in self.items.values() {
            if let (Phase::Done, Some(t)) = (i.phase, i.took) {
                took += t.as_secs_f64();
                typical += i.typical.as_secs_f64();
            }
        }
        if typical >= 1.0 {
            (took / typical).clamp(0.001, 100.0)
        } else {
            1.0
        }
    }

    /// The time left: the longest chain of unfinished steps, each at its
    /// typical time scaled by the pace so far, less what the ones in flight
    /// have already spent. None before an apply announced its steps.
    fn time_left(&self) -> Option<Duration> {
        if self.announced == 0 {
            return None;
        }
        let pace = self.pace();
        let open: BTreeMap<String, Vec<String>> = self
            .items
            .iter()
            .filter(|(_, i)| matches!(i.phase, Phase::Pending | Phase::Working | Phase::Service))
            .map(|(k, i)| (k.clone(), i.after.clone()))
            .collect();
        let cost = |k: &str| -> u64 {
            let Some(i) = self.items.get(k) else { return 0 };
            let expected = i.typical.as_secs_f64() * pace;
            let spent = i.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
            ((expected - spent).max(0.0) * 1000.0) as u64
        };
        let left = ralph_core::graph::remaining_cost(&open, &cost)
            .into_values()
            .max()
            .unwrap_or(0);
        Some(Duration::from_millis(left))
    }

    fn counts(&self) -> (usize, usize, usize, usize) {
        let (mut done, mut flying, mut pending, mut failed) = (0, 0, 0, 0);
        for i in self.items.values() {
            match i.phase {
                Phase::Done => done += 1,
                Phase::Working | Phase::Service => flying += 1,
                Phase::Pending => pending += 1,
                Phase::Failed | Phase::Skipped => failed += 1,
            }
        }
        (done, flying, pending, failed)
    }

    fn overall(&self) -> String {
        let (done, flying, pending, failed) = self.counts();
        let total = self.announced.max(done + flying + pending + failed);
        let mut s = format!(
            "[{done}/{total} done] {} elapsed · {flying} in flight",
            human(self.started.elapsed())
        );
        if pending > 0 {
            s.push_str(&format!(" · {pending} waiting on dependencies"));
        }
        if failed > 0 {
            s.push_str(&format!(" · {failed} failed or skipped"));
        }
        if let Some(left) = self.time_left() {
            if flying + pending > 0 {
                s.push_str(&format!(" · about {} left", human(left)));
            }
        }
        s
    }
}

impl Item {
    /// "creating · RDS: creating · 6m12s of typically 15m"
    fn line(&self, address: &str) -> String {
        let mut s = format!("{address}: {}", self.doing);
        if let Some(st) = &self.status {
            if self.service.is_empty() {
                s.push_str(&format!(" · {st}"));
            } else {
                // Acronyms as AWS writes them (RDS, EKS), words capitalised.
                let service = if self.service.len() <= 4 {
                    self.service.to_uppercase()
                } else {
                    let mut c = self.service.chars();
                    c.next()
                        .map(|f| f.to_uppercase().chain(c).collect())
                        .unwrap_or_default()
                };
                s.push_str(&format!(" · {service}: {st}"));
            }
        }
        if let Some(start) = self.started {
            let spent = start.elapsed();
            if spent < Duration::from_secs(10) {
                s.push_str(&format!(" · {:.1}s", spent.as_secs_f64()));
            } else {
                s.push_str(&format!(" · {}", human(spent)));
            }
            if self.typical >= Duration::from_secs(60) {
                s.push_str(&format!(
                    " of typically {}",
                    ralph_engine::ops::status::humantime(self.typical)
                ));
            }
        }
        s
    }
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A line that stays: above the live view, or a timestamped log line.
    fn say(&self, line: &str) {
        match &self.mode {
            Mode::Live { multi, .. } => {
                let _ = multi.println(line);
            }
            Mode::Lines { .. } => {
                let now = chrono::Utc::now().format("%H:%M:%SZ");
                let _ = writeln!(std::io::stderr(), "{now} {line}");
            }
        }
    }

    fn start_ticker(&self, inner: &mut Inner) {
        if inner.ticker {
            return;
        }
        inner.ticker = true;
        let me = self.me.clone();
        // Lines mode looks often enough that a heartbeat is never late by
        // more than a quarter of its interval.
        let every = match self.mode {
            Mode::Live { .. } => Duration::from_millis(125),
            Mode::Lines { heartbeat } => {
                (heartbeat / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
            }
        };
        std::thread::spawn(move || loop {
            std::thread::sleep(every);
            let Some(p) = me.upgrade() else { return };
            if !p.tick() {
                return;
            }
        });
    }

    /// Redraws the live view, or prints heartbeats; false once stopped.
    fn tick(&self) -> bool {
        let mut inner = self.lock();
        if inner.stopped {
            return false;
        }
        match &self.mode {
            Mode::Live { overall, .. } => {
                for (address, item) in &inner.items {
                    if let Some(bar) = &item.bar {
                        bar.set_message(item.line(address));
                        bar.tick();
                    }
                }
                overall.set_message(inner.overall());
            }
            Mode::Lines { heartbeat } => {
                let heartbeat = *heartbeat;
                let now = Instant::now();
                let mut lines = Vec::new();
                for (address, item) in inner.items.iter_mut() {
                    if matches!(item.phase, Phase::Working | Phase::Service)
                        && now.duration_since(item.last_line) >= heartbeat
                    {
                        item.last_line = now;
                        lines.push(format!("{} (still)", item.line(address)));
                    }
                }
                if !lines.is_empty() && now.duration_since(inner.last_heartbeat) >= heartbeat {
                    inner.last_heartbeat = now;
                    lines.push(inner.overall());
                }
                drop(inner);
                for l in lines {
                    self.say(&l);
                }
            }
        }
        true
    }

    fn stop(&self) {
        let mut inner = self.lock();
        inner.stopped = true;
        if let Mode::Live { multi, overall } = &self.mode {
            for item in inner.items.values_mut() {
                if let Some(bar) = item.bar.take() {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
            }
            overall.finish_and_clear();
            let _ = multi.clear();
        }
    }

    fn begin(&self, inner: &mut Inner, address: &str) {
        let Mode::Live { multi, overall } = &self.mode else {
            return;
        };
        let Some(item) = inner.items.get_mut(address) else {
            return;
        };
        if item.bar.is_none() {
            let bar = multi.insert_before(overall, ProgressBar::new_spinner());
            let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            let template = if colour {
                "{spinner:.cyan} {wide_msg}"
            } else {
                "{spinner} {wide_msg}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(item.line(address));
            item.bar = Some(bar);
        }
        if overall.is_hidden() {
            overall.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    fn end(&self, inner: &mut Inner, address: &str) {
        if let Mode::Live { multi, .. } = &self.mode {
            if let Some(bar) = inner.items.get_mut(address).and_then(|i| i.bar.take()) {
                bar.finish_and_clear();
                multi.remove(&bar);
            }
        }
    }
}

impl Reporter for Progress {
    fn report(&self, event: Event) {
        let mut inner = self.lock();
        if inner.stopped {
            // After the view was cleared (the summary is out): plain lines.
            drop(inner);
            if let Some(line) = plain(&event) {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            return;
        }
        let live = matches!(self.mode, Mode::Live { .. });
        let mut say = None;
        match event {
            Event::RefreshStarted { .. } | Event::RefreshFinished { .. } => {}
            Event::ApplyStarted { steps } => {
                inner.started = Instant::now();
                inner.announced = steps.len();
                for PlannedStep {
                    address,
                    action,
                    service,
                    typical_s,
                    after,
                    ..
                } in steps
                {
                    let item = inner.item(&address, action);
                    item.service = service;
                    item.typical = Duration::from_secs(typical_s);
                    item.after = after;
                }
                self.start_ticker(&mut inner);
            }
            Event::ResourceStarted {
                address,
                action,
                phase,
                ..
            } => {
                let item = inner.item(&address, action);
                item.phase = Phase::Working;
                item.doing = doing(action, phase);
                item.status = None;
                item.started.get_or_insert_with(Instant::now);
                item.last_line = Instant::now();
                if !live {
                    say = Some(format!("{address}: {}...", item.doing));
                }
                self.begin(&mut inner, &address);
                self.start_ticker(&mut inner);
            }
            Event::ResourceWaiting {
                address, status, ..
            } => {
                let item = inner.item(&address, Action::NoOp);
                item.phase = Phase::Service;
                item.status = Some(status);
                item.started.get_or_insert_with(Instant::now);
                item.last_line = Instant::now();
                if !live {
                    say = Some(item.line(&address));
                }
            }
            Event::ResourceFinished {
                address,
                action,
                id,
                elapsed_ms,
            } => {
                let item = inner.item(&address, action);
                item.phase = Phase::Done;
                let took = Duration::from_millis(elapsed_ms as u64);
                item.took = Some(item.started.map(|s| s.elapsed()).unwrap_or(took));
                say = Some(format!(
                    "{}{address}: {} {id} in {:.1}s",
                    if live { "✓ " } else { "" },
                    done_word(action),
                    elapsed_ms as f64 / 1000.0
                ));
                self.end(&mut inner, &address);
            }
            Event::ResourceFailed {
                address,
                action,
                error,
            } => {
                let item = inner.item(&address, action);
                item.phase = Phase::Failed;
                say = Some(format!(
                    "{}{address}: {} failed: {error}",
                    if live { "✗ " } else { "" },
                    item.doing
                ));
                self.end(&mut inner, &address);
            }
            Event::ResourceSkipped { address, because } => {
                let item = inner.item(&address, Action::NoOp);
                item.phase = Phase::Skipped;
                say = Some(format!("{address}: skipped because {because} failed"));
                self.end(&mut inner, &address);
            }
            other => say = plain(&other),
        }
        drop(inner);
        if let Some(line) = say {
            self.say(&line);
        }
    }
}

/// The events that read the same live or not.
fn plain(event: &Event) -> Option<String> {
    Some(match event {
        Event::ResourceMoved { from, to } => format!("{from}: moved to {to} in the state"),
        Event::Step { address, message } => format!("{address}: {message}"),
        Event::Warning { message } => format!("warning: {message}"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(address: &str, typical_s: u64, after: &[&str]) -> PlannedStep {
        PlannedStep {
            address: address.into(),
            kind: "k".into(),
            action: Action::Create,
            service: "svc".into(),
            typical_s,
            after: after.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn time_left_follows_the_longest_open_chain_at_the_pace_so_far() {
        let p = Progress {
            inner: Mutex::new(Inner {
                items: BTreeMap::new(),
                announced: 0,
                started: Instant::now(),
                last_heartbeat: Instant::now(),
                ticker: true,
                stopped: false,
            }),
            mode: Mode::Lines {
                heartbeat: Duration::from_secs(3600),
            },
            me: Weak::new(),
        };
        p.report(Event::ApplyStarted {
            steps: vec![
                step("vpc", 10, &[]),
                step("cluster", 600, &["vpc"]),
                step("nodes", 300, &["cluster"]),
                step("db", 900, &["vpc"]),
            ],
        });
        let left = p.lock().time_left().unwrap();
        assert_eq!(left, Duration::from_secs(910), "vpc then db");
        // The vpc took twice its typical time: everything is expected slower.
        p.report(Event::ResourceFinished {
            address: "vpc".into(),
            action: Action::Create,
            id: "vpc-1".into(),
            elapsed_ms: 20_000,
        });
        {
            let mut inner = p.lock();
            inner.items.get_mut("vpc").unwrap().took = Some(Duration::from_secs(20));
            let left = inner.time_left().unwrap();
            assert_eq!(left.as_secs(), 1800, "db at twice 900s");
            assert!(
                inner.overall().contains("[1/4 done]"),
                "{}",
                inner.overall()
            );
            assert!(inner.overall().contains("3 waiting on dependencies"));
        }
        let item = Item {
            service: "rds".into(),
            typical: Duration::from_secs(900),
            after: vec![],
            phase: Phase::Service,
            doing: "creating".into(),
            status: Some("creating".into()),
            started: Some(Instant::now() - Duration::from_secs(372)),
            took: None,
            last_line: Instant::now(),
            bar: None,
        };
        assert_eq!(
            item.line("db"),
            "db: creating · RDS: creating · 6m12s of typically 15m"
        );
    }
}
