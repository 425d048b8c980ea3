//! The model: what the stack loader, the engine and the drivers all stand
//! on, and which depends on none of them.
//!
//! - [`kinds`]: kind descriptors (`KindSchema`, `Field`, `Ty`) and the
//!   value checks they carry;
//! - [`Catalog`]: which kinds exist (the driver registry implements it; the
//!   stack loader and the JSON Schema only ever see this trait);
//! - [`Timeouts`], [`CloudSettings`], the ownership tag keys, and
//!   [`json_to_text`], the one way a value becomes text (tags, labels).
//!
//! Layers, bottom up: this crate (`model`, the driver interface) <-
//! ralph-stack and the driver crates <- ralph-engine <- the command line.
//! The stack loader and the drivers are crates that do not depend on each
//! other, so neither can import the other.

pub mod capacity;
pub mod kinds;
pub mod support;

use std::time::Duration;

use serde_json::Value as Json;

pub mod address;
pub use kinds::{did_you_mean, Attr, Check, Field, KindSchema, Ty};

/// What a plan does to one resource.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    NoOp,
    Create,
    Update,
    /// Delete the existing resource, then create its replacement.
    Replace,
    Delete,
}

impl Action {
    pub fn symbol(self) -> &'static str {
        match self {
            Action::NoOp => " ",
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }
}

/// Tag keys under this prefix mark what ralph-deploy created.
pub const OWNER_TAG_PREFIX: &str = "ralph-deploy:";
pub const TAG_STACK: &str = "ralph-deploy:stack";
pub const TAG_ENVIRONMENT: &str = "ralph-deploy:environment";
pub const TAG_ADDRESS: &str = "ralph-deploy:address";

/// The kinds a build knows. Implemented by the driver registry; read by the
/// stack loader (kind lookup, did-you-mean) and the JSON Schema.
pub trait Catalog {
    fn schema(&self, kind: &str) -> Option<&'static KindSchema>;
    /// Every kind's schema, in a stable order.
    fn schemas(&self) -> Vec<&'static KindSchema>;
    /// Every kind's name, in the same order.
    fn kinds(&self) -> Vec<&'static str> {
        self.schemas().iter().map(|s| s.kind).collect()
    }
}

/// How long create, update and delete may wait for the cloud, per resource.
/// The stack's `timeouts:` overrides the kind's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub create: Option<Duration>,
    pub update: Option<Duration>,
    pub delete: Option<Duration>,
}

impl Timeouts {
    pub fn create_or(&self, d: Duration) -> Duration {
        self.create.unwrap_or(d)
    }
    pub fn update_or(&self, d: Duration) -> Duration {
        self.update.unwrap_or(d)
    }
    pub fn delete_or(&self, d: Duration) -> Duration {
        self.delete.unwrap_or(d)
    }
}

/// Per-cloud settings from the stack file. Anything left out comes from the
/// environment the way each cloud's own tools take it (AWS_REGION,
/// AWS_PROFILE, AWS_ENDPOINT_URL, the credential chain).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CloudSettings {
    pub aws: Option<AwsSettings>,
    pub gcp: Option<GcpSettings>,
}

impl CloudSettings {
    /// The region the state's key management (KMS) and bucket calls use
    /// when the state's own settings name none: the stack's AWS region.
    pub fn state_region(&self) -> Option<String> {
        self.aws.as_ref().and_then(|a| a.region.clone())
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcpSettings {
    pub project: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

/// A value as text: strings as they are, null as empty, anything else as
/// JSON (tags, labels and environment variables are text).
pub fn json_to_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}
