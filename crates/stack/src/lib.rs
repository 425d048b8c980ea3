//! Stack files: the declarative description of one deployment.
//!
//! `load` turns YAML into a [`Stack`] for one environment (overlays merged,
//! variables substituted), `validate` checks it against the resource kinds
//! before any cloud is contacted, and `json_schema` describes the format.
//! Every value keeps the [`Span`] it was written at, so that semantic errors
//! (a dangling reference, a CIDR outside its VPC) point at file:line:column.

pub mod diag;
pub mod expr;
pub mod fmt;
pub mod functions;
pub mod json_schema;
pub mod language;
mod load;
pub mod syntax;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;

pub use diag::{Diagnostics, Problem, SourceFile, Span, Spanned};
pub use expr::{Expr, Reference, SExpr};
pub use load::LoadOptions;

pub use ralph_core::model::{AwsSettings, CloudSettings, GcpSettings};
use ralph_core::model::{Catalog, KindSchema, Timeouts};

/// A stack, loaded for one environment and validated.
#[derive(Debug, Clone)]
pub struct Stack {
    pub path: PathBuf,
    /// The stack file's text.
    pub source: Arc<str>,
    /// The stack file and every component file (once per use), for
    /// diagnostics: `Span::file` indexes it.
    pub files: Arc<Vec<SourceFile>>,
    /// sha256 of the file, the environment and the variable values: a saved
    /// plan is only applied to the stack it was made from.
    pub digest: String,
    pub name: String,
    pub environment: String,
    pub cloud: CloudSettings,
    pub variables: BTreeMap<String, Json>,
    /// Every resource instance by its full address (`vpc`,
    /// `private["a"]`, `app.deployment`): components and `for_each` are
    /// expanded while loading.
    pub resources: BTreeMap<String, Resource>,
    pub outputs: BTreeMap<String, Output>,
    /// State entries renamed by the stack's `moved` list.
    pub moved: Vec<Moved>,
    /// Where the state lives and how it is sealed (`state:`).
    pub state: StateSettings,
    pub recovery: Recovery,
    /// Resources made outside the tool, adopted by the next apply.
    pub imports: Vec<ImportEntry>,
    /// Findings of `check` the team accepted, each with its reason.
    pub waivers: Vec<Waiver>,
    /// Custom rules for `check`: `.rego` files or directories, relative to
    /// the stack file.
    pub policies: Vec<Spanned<String>>,
}

/// `waivers: [{ rule: edge.waf, address: app.orchestrator, reason: ..., until: 2027-03-31 }]`:
/// a finding of `check` accepted on purpose. Without `address` it covers
/// the rule everywhere in the stack; after `until` it is a finding itself.
#[derive(Debug, Clone)]
pub struct Waiver {
    pub rule: Spanned<String>,
    pub address: Option<Spanned<String>>,
    pub reason: String,
    pub until: Option<Spanned<chrono::NaiveDate>>,
    pub span: Span,
}

impl Waiver {
    /// Whether the waiver covers a finding at `address` (a resource, or
    /// everything under a component use or a `for_each`).
    pub fn covers(&self, rule: &str, address: &str) -> bool {
        self.rule.value == rule
            && self.address.as_ref().is_none_or(|a| {
                let a = a.value.as_str();
                address == a
                    || address
                        .strip_prefix(a)
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            })
    }
}

/// `import: [{ to: vpc, id: vpc-0abc }]`.
#[derive(Debug, Clone)]
pub struct ImportEntry {
    pub to: Spanned<String>,
    pub id: Spanned<String>,
}

/// `state: { url: s3://bucket/prefix, encrypt: true, kms_key: alias/x }`.
/// `--state` / `RALPH_DEPLOY_STATE` override the url; credentials never
/// come from here.
#[derive(Debug, Clone, Default)]
pub struct StateSettings {
    pub url: Option<String>,
    /// Refuse to run without a state key.
    pub encrypt: bool,
    /// An AWS KMS key for envelope encryption.
    pub kms_key: Option<String>,
}

/// `recovery: { rpo: 1h, rto: 4h }`: the recovery objectives. `status`
/// holds the latest backup's age against the RPO.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// The most data (time) the environment may lose.
    pub rpo: Option<std::time::Duration>,
    /// How long a recovery may take.
    pub rto: Option<std::time::Duration>,
}

/// `moved: [{ from: private_a, to: 'private["a"]' }]`: the resource recorded
/// at `from` is now declared at `to` (or, for a component or a `for_each`,
/// everything under `from` is now under `to`).
#[derive(Debug, Clone)]
pub struct Moved {
    pub from: Spanned<String>,
    pub to: Spanned<String>,
}

#[derive(Debug, Clone)]
pub struct Resource {
    pub address: String,
    pub kind: &'static KindSchema,
    pub span: Span,
    pub properties: BTreeMap<String, Property>,
    pub depends_on: Vec<Spanned<String>>,
    pub protect: bool,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone)]
pub struct Property {
    pub key_span: Span,
    pub value: SExpr,
}

impl Resource {
    /// Every resource reference in the properties, with where it was written.
    pub fn references(&self) -> Vec<(Reference, Span)> {
        let mut out = Vec::new();
        for p in self.properties.values() {
            p.value.collect_references(&mut out);
        }
        out
    }

    /// What the stack says of `field` without evaluating references: its
    /// literal value, or the field's default.
    pub fn stated(&self, field: &str) -> Option<Json> {
        match self.properties.get(field) {
            Some(p) => p.value.to_literal(),
            None => self.kind.field(field).and_then(|f| f.default_value()),
        }
    }

    /// Addresses this resource must come after: references and `depends_on`.
    pub fn dependencies(&self) -> Vec<String> {
        let mut deps: Vec<String> = self
            .references()
            .into_iter()
            .map(|(r, _)| r.address)
            .chain(self.depends_on.iter().map(|d| d.value.clone()))
            .collect();
        deps.sort();
        deps.dedup();
        deps
    }
}

#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub value: SExpr,
    pub description: Option<String>,
}

impl Stack {
    /// The `moved` entries as (from, to).
    pub fn moves(&self) -> Vec<(String, String)> {
        self.moved
            .iter()
            .map(|m| (m.from.value.clone(), m.to.value.clone()))
            .collect()
    }

    /// The directory relative paths in the stack start from.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// The dependency graph of the resources (references and `depends_on`
    /// among declared resources).
    pub fn graph(&self) -> Result<ralph_core::graph::ResourceGraph, ralph_core::graph::Cycle> {
        let deps = self
            .resources
            .values()
            .map(|r| {
                let d = r
                    .dependencies()
                    .into_iter()
                    .filter(|a| self.resources.contains_key(a))
                    .collect();
                (r.address.clone(), d)
            })
            .collect();
        ralph_core::graph::ResourceGraph::from_dependencies(&deps)
    }

    /// Loads and validates `path` for `environment`. On any problem, returns
    /// all of them; nothing outside this process is touched.
    pub fn load(
        path: &Path,
        options: &LoadOptions,
        catalog: &dyn Catalog,
    ) -> Result<Stack, Diagnostics> {
        // One pass reports everything: what the load found, and what
        // validation finds in the rest of the file.
        let (stack, mut d, partial) = load::load_partial(path, options, catalog);
        if let Some(stack) = &stack {
            d.problems
                .extend(validate::validate_partial(stack, &partial).problems);
        }
        match stack {
            Some(stack) if d.is_empty() => Ok(stack),
            _ => Err(d.sorted()),
        }
    }
}
