//! What the engine reports while it works. The engine never prints: the CLI
//! renders these as text lines on stderr or as JSON lines on stdout.

use std::time::Duration;

use serde::Serialize;

use crate::model::Action;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An apply or destroy is about to start: every step it will take, so
    /// that progress can be shown against the whole and the time left
    /// estimated from the graph.
    ApplyStarted {
        steps: Vec<PlannedStep>,
    },
    RefreshStarted {
        kinds: usize,
    },
    RefreshFinished {
        resources: usize,
        elapsed_ms: u128,
    },
    ResourceStarted {
        address: String,
        kind: String,
        action: Action,
        /// For a replacement, which half starts: `delete` (the old one) or
        /// `create` (the new one).
        #[serde(skip_serializing_if = "Option::is_none")]
        phase: Option<&'static str>,
    },
    /// A long operation is still in progress (the cloud's own status).
    ResourceWaiting {
        address: String,
        status: String,
        elapsed_s: u64,
    },
    ResourceFinished {
        address: String,
        action: Action,
        id: String,
        elapsed_ms: u128,
    },
    ResourceFailed {
        address: String,
        action: Action,
        error: String,
    },
    ResourceSkipped {
        address: String,
        because: String,
    },
    /// A `moved` entry renamed a state entry (nothing in the cloud changes).
    ResourceMoved {
        from: String,
        to: String,
    },
    /// One step of a day-2 operation (failover: promoted, renamed, ...).
    Step {
        address: String,
        message: String,
    },
    Warning {
        message: String,
    },
}

/// One step of an apply, as `ApplyStarted` announces it.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub address: String,
    pub kind: String,
    pub action: Action,
    /// The cloud service the step's requests go to (`rds`, `eks`, ...).
    pub service: String,
    /// How long the step typically takes on the real cloud, in seconds.
    pub typical_s: u64,
    /// Steps of this run that must finish before this one starts.
    pub after: Vec<String>,
}

pub trait Reporter: Send + Sync {
    fn report(&self, event: Event);
}

/// Discards everything (library use, tests).
pub struct Silent;

impl Reporter for Silent {
    fn report(&self, _: Event) {}
}

pub fn millis(d: Duration) -> u128 {
    d.as_millis()
}
