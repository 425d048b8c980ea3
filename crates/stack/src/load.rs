//! YAML to [`Stack`]: parse with spans, pick the environment, merge its
//! overlay, resolve variables, and turn property values into expressions.
//! Structural problems are collected, not thrown, so one run reports them all.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::diag::{Diagnostics, Span, Spanned};
use super::expr::{split_template, Expr, Part, RawPart, SExpr};
use super::{AwsSettings, CloudSettings, GcpSettings, Output, Resource, Stack};
use components::push_lit;

#[path = "components.rs"]
mod components;
use ralph_core::model::{did_you_mean, Catalog, Timeouts};

/// Larger stack files are refused before parsing.
const MAX_FILE_BYTES: usize = 16 << 20;
/// Deeper nesting is refused: no stack needs it, and hostile input must fail fast.
const MAX_DEPTH: usize = 48;

pub(super) const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "cloud",
    "variables",
    "environments",
    "resources",
    "components",
    "moved",
    "state",
    "recovery",
    "import",
    "outputs",
    "waivers",
    "policies",
];
pub(super) const ENV_KEYS: &[&str] = &["variables", "cloud", "resources", "waivers"];
pub(super) const RESOURCE_KEYS: &[&str] = &[
    "kind",
    "properties",
    "depends_on",
    "protect",
    "enabled",
    "description",
    "timeouts",
    "for_each",
];
/// At the top of a component file.
pub(super) const COMPONENT_KEYS: &[&str] = &[
    "description",
    "inputs",
    "resources",
    "components",
    "outputs",
];
/// In a use of a component.
pub(super) const USE_KEYS: &[&str] = &["source", "inputs", "for_each", "depends_on", "description"];
/// Component inputs take these types, and `any` (a reference's type is known
/// only to the kind it comes from).
pub(super) const INPUT_TYPES: &[&str] = &["string", "number", "bool", "list", "map", "any"];
/// Components may use components this deep.
const MAX_COMPONENT_DEPTH: usize = 8;
const VARIABLE_KEYS: &[&str] = &["type", "default", "description"];
pub(super) const VARIABLE_TYPES: &[&str] = &["string", "number", "bool", "list", "map"];
const OUTPUT_KEYS: &[&str] = &["value", "description"];

/// What the command line adds to a stack file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--env`; required when the stack declares more than one environment.
    pub environment: Option<String>,
    /// `--var name=value`, parsed according to the variable's declared type.
    pub variables: Vec<(String, String)>,
    /// `RALPH_DEPLOY_VAR_<name>` from the environment: like `variables`, but
    /// applied first, and ignored for variables this stack does not declare.
    pub env_variables: Vec<(String, String)>,
}

/// Loads what can be loaded: the stack (when its outline reads), every
/// problem found, and what was left out because of them.
pub fn load_partial(
    path: &Path,
    options: &LoadOptions,
    registry: &dyn Catalog,
) -> (Option<Stack>, Diagnostics, Partial) {
    let text = match ralph_core::files::read_text_bounded(path, MAX_FILE_BYTES) {
        Ok(t) => t,
        Err(e) => {
            let mut d = Diagnostics::new(path, Arc::from(""));
            let help = match e {
                ralph_core::files::ReadError::Io(_) | ralph_core::files::ReadError::Directory => {
                    "check the path: name a stack file (YAML)"
                }
                ralph_core::files::ReadError::TooLarge { .. } => {
                    "split the stack, or check that the path names the stack file"
                }
                ralph_core::files::ReadError::NotText { .. } => {
                    "stack files are YAML text in UTF-8; check that the path names the stack file"
                }
            };
            d.file_error(format!("cannot read the stack file: {e}"), help);
            return (None, d, Partial::default());
        }
    };
    let source: Arc<str> = Arc::from(text.as_str());
    let mut d = Diagnostics::new(path, source.clone());
    if let Some(span) = too_deep(&text) {
        d.error_help(
            span,
            format!("the file nests more than {MAX_DEPTH} levels deep"),
            "flatten the structure",
        );
        return (None, d, Partial::default());
    }
    let root = match marked_yaml::parse_yaml_with_options(
        0,
        &text,
        LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .prevent_coercion(true),
    ) {
        Ok(root) => root,
        Err(e) => {
            report_load_error(&mut d, e);
            return (None, d, Partial::default());
        }
    };
    let Some(top) = root.as_mapping() else {
        d.error(
            span_of(&root),
            "a stack file must be a mapping with `name` and `resources`",
        );
        return (None, d, Partial::default());
    };
    let mut loader = Loader {
        d,
        vars: BTreeMap::new(),
        stack_name: String::new(),
        environment: String::new(),
        scope: Scope {
            dir: path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| ".".into()),
            ..Scope::default()
        },
        out: BTreeMap::new(),
        partial: Partial::default(),
    };
    let stack = loader.stack(path, top, options, registry);
    (stack, loader.d, loader.partial)
}

struct Loader {
    d: Diagnostics,
    vars: BTreeMap<String, Json>,
    stack_name: String,
    environment: String,
    /// Where names are looked up while values are read.
    scope: Scope,
    /// Every resource instance, by its full address.
    out: BTreeMap<String, Resource>,
    /// What did not load whole, so that validation of the rest (run in the
    /// same pass) says nothing more about it.
    partial: Partial,
}

/// The resources a load with problems left out or read in part: `validate`
/// still checks the rest of the file, and stays silent about these where it
/// would only repeat the load's problem in other words.
#[derive(Debug, Clone, Default)]
pub struct Partial {
    /// Declared, but not loaded (an unknown kind, no `kind`, not a mapping).
    pub unloaded: std::collections::BTreeSet<String>,
    /// Loaded, but some property did not read (a bad reference or
    /// expression): no "needs the property" for these.
    pub incomplete: std::collections::BTreeSet<String>,
}

/// The stack file, or one instance of a component use, while it is read.
#[derive(Debug, Clone, Default)]
struct Scope {
    /// "" for the stack; `app.` or `zone["a"].` inside a component.
    prefix: String,
    /// The component's inputs, read in the using scope; `None` in the stack
    /// file (which has variables instead).
    inputs: Option<BTreeMap<String, SExpr>>,
    /// `each.key` and `each.value` inside a `for_each`.
    each: Option<(String, Json)>,
    names: BTreeMap<String, Name>,
    /// Component sources are relative to this directory.
    dir: std::path::PathBuf,
    /// The component files on the way here (a component may not use itself).
    chain: Vec<std::path::PathBuf>,
}

/// What a name in a scope stands for.
#[derive(Debug, Clone)]
enum Name {
    /// A resource; with `for_each`, the keys of its instances.
    Resource { keys: Option<Vec<String>> },
    /// A component use: each instance's outputs ("" when there is no
    /// `for_each`) and the addresses of every resource it made.
    Component {
        keys: Option<Vec<String>>,
        outputs: BTreeMap<String, BTreeMap<String, SExpr>>,
        addresses: Vec<String>,
    },
    /// A component use not expanded yet.
    Pending,
    /// A resource with `enabled: false` in this environment.
    Disabled,
}

impl Loader {
    fn stack(
        &mut self,
        path: &Path,
        top: &MarkedMappingNode,
        options: &LoadOptions,
        registry: &dyn Catalog,
    ) -> Option<Stack> {
        self.check_keys(top, TOP_KEYS, "at the top of a stack file");
        let name = self.stack_name_of(top);
        self.stack_name = name.clone().unwrap_or_default();

        // Pick the environment and its overlay.
        let environments = top
            .get_node("environments")
            .and_then(|n| self.mapping(n, "environments"));
        let (environment, overlay) = self.pick_environment(environments, options)?;
        self.environment = environment.clone();
        if let Some(o) = overlay {
            self.check_keys(o, ENV_KEYS, &format!("in environment `{environment}`"));
        }
        let overlay_node = |key: &str| overlay.and_then(|o| o.get_node(key));

        self.variables(
            top.get_node("variables"),
            overlay_node("variables"),
            &environment,
            options,
        );

        let cloud_node = merged(top.get_node("cloud"), overlay_node("cloud"));
        let cloud = self.cloud(cloud_node.as_ref());

        let resources_node = merged(top.get_node("resources"), overlay_node("resources"));
        let bad_overlay = self.bad_overlay(
            overlay_node("resources").and_then(Node::as_mapping),
            top.get_node("resources").and_then(Node::as_mapping),
            &environment,
        );
        let resources_map = match &resources_node {
            Some(node) => self.mapping(node, "resources").cloned(),
            None => {
                if top.get_node("components").is_none() {
                    self.d.error_help(
                        span_of_map(top),
                        "the stack has no `resources`",
                        "add a `resources:` mapping",
                    );
                }
                None
            }
        };
        let components_map = top
            .get_node("components")
            .and_then(|n| self.mapping(n, "components"))
            .cloned();
        self.body(
            resources_map.as_ref(),
            components_map.as_ref(),
            &bad_overlay,
            registry,
        );
        let resources = std::mem::take(&mut self.out);
        let moved = self.moved(top.get_node("moved"));
        let state = self.state_settings(top.get_node("state"));
        let recovery = self.recovery(top.get_node("recovery"));
        let imports = self.imports(top.get_node("import"));
        // The environment's own waivers (a staging overlay's single zone)
        // add to the stack's.
        let mut waivers = self.waivers(top.get_node("waivers"));
        waivers.extend(self.waivers(overlay_node("waivers")));
        let policies = self.policies(top.get_node("policies"));

        let mut outputs = BTreeMap::new();
        if let Some(map) = top
            .get_node("outputs")
            .and_then(|n| self.mapping(n, "outputs"))
        {
            for (k, v) in map.iter() {
                if let Some(o) = self.output(k, v) {
                    outputs.insert(o.name.clone(), o);
                }
            }
        }

        let digest = self.digest(&environment);
        Some(Stack {
            path: path.to_path_buf(),
            source: self.d.source().clone(),
            files: self.d.files.clone(),
            digest,
            name: name?,
            environment,
            cloud,
            variables: self.vars.clone(),
            resources,
            outputs,
            moved,
            state,
            recovery,
            imports,
            waivers,
            policies,
        })
    }

    /// The stack's `name`, which goes into tags and resource names.
    fn stack_name_of(&mut self, top: &MarkedMappingNode) -> Option<String> {
        let name = match top.get_node("name") {
            Some(n) => self.scalar(n, "name").map(|s| s.to_string()),
            None => {
                self.d.error_help(
                    span_of_map(top),
                    "the stack has no `name`",
                    "add `name: my-stack` at the top",
                );
                None
            }
        };
        if let Some(n) = &name {
            if !valid_stack_name(n) {
                let span = top.get_node("name").map(span_of).unwrap_or_default();
                self.d.error_help(
                    span,
                    format!("stack name `{n}` is not valid"),
                    "use 1 to 40 lowercase letters, digits and hyphens, starting with a letter (it goes into tags and resource names)",
                );
            }
        }
        name
    }

    /// The overlay's resources that the stack does not declare (and the
    /// overlay does not declare with a kind): each is an error.
    fn bad_overlay(
        &mut self,
        overlay: Option<&MarkedMappingNode>,
        base: Option<&MarkedMappingNode>,
        environment: &str,
    ) -> std::collections::BTreeSet<String> {
        let mut bad_overlay = std::collections::BTreeSet::new();
        if let (Some(o), Some(base)) = (overlay, base) {
            for (k, v) in o.iter() {
                let addr = k.as_str();
                let adds_kind = v.as_mapping().is_some_and(|m| m.get_node("kind").is_some());
                if base.get_node(addr).is_none() && !adds_kind {
                    bad_overlay.insert(addr.to_string());
                    let hint = did_you_mean(addr, base.keys().map(|k| k.as_str()))
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| "an overlay changes resources declared under the top-level `resources`, or declares a new one with its `kind`".into());
                    self.d.error_help(Span::from_marked(k.span()), format!("environment `{environment}` overrides resource `{addr}`, which the stack does not declare"), hint);
                }
            }
        }
        bad_overlay
    }

    /// What identifies the loaded stack: its files, the environment and the
    /// variables' values (a saved plan is applied only to the same).
    fn digest(&self, environment: &str) -> String {
        let mut h = Sha256::new();
        for f in self.d.files.iter() {
            h.update(f.source.as_bytes());
            h.update([0]);
        }
        h.update(environment.as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(&self.vars).unwrap_or_default());
        hex::encode(h.finalize())
    }

    fn pick_environment<'a>(
        &mut self,
        envs: Option<&'a MarkedMappingNode>,
        options: &LoadOptions,
    ) -> Option<(String, Option<&'a MarkedMappingNode>)> {
        let Some(envs) = envs else {
            return Some((
                options
                    .environment
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                None,
            ));
        };
        let names: Vec<&str> = envs.keys().map(|k| k.as_str()).collect();
        for k in envs.keys() {
            if !valid_identifier(k.as_str()) {
                self.d.error_help(
                    Span::from_marked(k.span()),
                    format!("environment name `{}` is not valid", k.as_str()),
                    "use lowercase letters, digits, `-` and `_`, starting with a letter",
                );
            }
        }
        let chosen = match &options.environment {
            Some(e) => e.clone(),
            None if names.len() == 1 => names[0].to_string(),
            None => {
                // Point at the first environment's name, not the whole mapping.
                let at = envs
                    .keys()
                    .next()
                    .map(|k| Span::from_marked(k.span()))
                    .unwrap_or_else(|| span_of_map(envs));
                self.d.error_help(
                    at,
                    format!(
                        "the stack declares environments {}; none was chosen",
                        names.join(", ")
                    ),
                    format!("pass --env {}", names.first().copied().unwrap_or("NAME")),
                );
                return None;
            }
        };
        match envs.get_node(&chosen) {
            Some(node) => {
                // `staging: {}` or `staging:` (null) both mean "no overrides".
                let overlay = node.as_mapping();
                if overlay.is_none()
                    && !node.as_scalar().is_some_and(|s| {
                        s.as_str().is_empty() || s.as_str() == "~" || s.as_str() == "null"
                    })
                {
                    self.d.error(
                        span_of(node),
                        format!("environment `{chosen}` must be a mapping of overrides"),
                    );
                }
                Some((chosen, overlay))
            }
            None => {
                let hint = match did_you_mean(&chosen, names.iter().copied()) {
                    Some(s) => format!("did you mean `--env {s}`?"),
                    None => format!("choose one of: {}", names.join(", ")),
                };
                // Point at the first environment's name: a short excerpt.
                let at = envs
                    .keys()
                    .next()
                    .map(|k| Span::from_marked(k.span()))
                    .unwrap_or_else(|| span_of_map(envs));
                self.d.error_help(
                    at,
                    format!("environment `{chosen}` is not declared in this stack"),
                    hint,
                );
                None
            }
        }
    }

    fn variables(
        &mut self,
        decls: Option<&Node>,
        overlay: Option<&Node>,
        environment: &str,
        options: &LoadOptions,
    ) {
        let decls = decls.and_then(|n| self.mapping(n, "variables"));
        let overlay = overlay.and_then(|n| self.mapping(n, "variables"));
        let declared = self.declared_variables(decls);
        if let Some(overlay) = overlay {
            self.overlay_variables(overlay, &declared, environment);
        }
        for (name, text) in &options.env_variables {
            if let Some((ty, kspan)) = declared.get(name) {
                match parse_cli_value(text, ty) {
                    Ok(v) => {
                        self.vars.insert(name.clone(), v);
                    }
                    Err(msg) => self.d.error_help(
                        *kspan,
                        format!("RALPH_DEPLOY_VAR_{}: {msg}", name.to_ascii_uppercase()),
                        format!("variable `{name}` is declared here with type {ty}"),
                    ),
                }
            }
        }
        for (name, text) in &options.variables {
            match declared.get(name) {
                Some((ty, kspan)) => match parse_cli_value(text, ty) {
                    Ok(v) => {
                        self.vars.insert(name.clone(), v);
                    }
                    Err(msg) => self.d.error_help(
                        *kspan,
                        format!("--var {name}={text}: {msg}"),
                        format!("variable `{name}` is declared here with type {ty}"),
                    ),
                },
                None => {
                    let hint = did_you_mean(name, declared.keys().map(|s| s.as_str()))
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| "declare it under `variables` in the stack".into());
                    self.d.error_help(
                        Span::default(),
                        format!("--var sets `{name}`, which the stack does not declare"),
                        hint,
                    );
                }
            }
        }
        for (name, (_, kspan)) in &declared {
            if !self.vars.contains_key(name) {
                self.d.error_help(
                    *kspan,
                    format!("variable `{name}` has no value in environment `{environment}`"),
                    format!("give it a `default`, set it under `environments.{environment}.variables`, or pass --var {name}=..."),
                );
            }
        }
    }

    /// The stack's variable declarations: name to (type, where declared);
    /// defaults go into the values.
    fn declared_variables(
        &mut self,
        decls: Option<&MarkedMappingNode>,
    ) -> BTreeMap<String, (String, Span)> {
        let mut declared: BTreeMap<String, (String, Span)> = BTreeMap::new();
        let Some(decls) = decls else {
            return declared;
        };
        for (k, v) in decls.iter() {
            let name = k.as_str().to_string();
            let kspan = Span::from_marked(k.span());
            if !valid_variable_name(&name) {
                self.d.error_help(
                    kspan,
                    format!("variable name `{name}` is not valid"),
                    "use lowercase letters, digits and `_`, starting with a letter",
                );
            }
            let Some(m) = self.mapping(v, &format!("variable `{name}`")) else {
                continue;
            };
            self.check_keys(m, VARIABLE_KEYS, &format!("in variable `{name}`"));
            let ty = match m.get_node("type") {
                Some(t) => match self.scalar(t, "type") {
                    Some(s) if VARIABLE_TYPES.contains(&s) => s.to_string(),
                    Some(s) => {
                        let hint = did_you_mean(s, VARIABLE_TYPES.iter().copied())
                            .map(|x| format!("did you mean `{x}`?"))
                            .unwrap_or_else(|| {
                                format!("use one of: {}", VARIABLE_TYPES.join(", "))
                            });
                        self.d
                            .error_help(span_of(t), format!("unknown variable type `{s}`"), hint);
                        continue;
                    }
                    None => continue,
                },
                None => "string".into(),
            };
            declared.insert(name.clone(), (ty.clone(), kspan));
            if let Some(def) = m.get_node("default") {
                if let Some(v) =
                    self.typed_value(def, &ty, &format!("the default of variable `{name}`"))
                {
                    self.vars.insert(name.clone(), v);
                }
            }
        }
        declared
    }

    /// An environment's values for declared variables.
    fn overlay_variables(
        &mut self,
        overlay: &MarkedMappingNode,
        declared: &BTreeMap<String, (String, Span)>,
        environment: &str,
    ) {
        for (k, v) in overlay.iter() {
            let name = k.as_str();
            match declared.get(name) {
                Some((ty, _)) => {
                    let ty = ty.clone();
                    if let Some(v) = self.typed_value(
                        v,
                        &ty,
                        &format!("variable `{name}` in environment `{environment}`"),
                    ) {
                        self.vars.insert(name.to_string(), v);
                    }
                }
                None => {
                    let hint = did_you_mean(name, declared.keys().map(|s| s.as_str()))
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| {
                            "declare it under the top-level `variables` first".into()
                        });
                    self.d.error_help(Span::from_marked(k.span()), format!("environment `{environment}` sets variable `{name}`, which is not declared"), hint);
                }
            }
        }
    }

    fn typed_value(&mut self, node: &Node, ty: &str, what: &str) -> Option<Json> {
        let v = node_to_json(node);
        let ok = match ty {
            "string" => {
                if let Json::String(_) = v {
                    true
                } else if let Some(s) = node.as_scalar() {
                    // An unquoted 15 is still a fine string for a string variable.
                    return Some(Json::String(s.as_str().to_string()));
                } else {
                    false
                }
            }
            "number" => v.is_number(),
            "bool" => v.is_boolean(),
            "list" => v.is_array(),
            "map" => v.is_object(),
            _ => false,
        };
        if ok {
            Some(v)
        } else {
            self.d
                .error(span_of(node), format!("{what} must be of type {ty}"));
            None
        }
    }

    fn cloud(&mut self, node: Option<&Node>) -> CloudSettings {
        let mut cloud = CloudSettings::default();
        let Some(map) = node.and_then(|n| self.mapping(n, "cloud")) else {
            return cloud;
        };
        self.check_keys(map, &["aws", "gcp"], "in `cloud`");
        if let Some(aws) = map
            .get_node("aws")
            .and_then(|n| self.mapping(n, "cloud.aws"))
        {
            self.check_keys(aws, &["region", "profile", "endpoint"], "in `cloud.aws`");
            cloud.aws = Some(AwsSettings {
                region: self.setting(aws, "region"),
                profile: self.setting(aws, "profile"),
                endpoint: self.setting(aws, "endpoint"),
            });
            if let (Some(r), Some(node)) = (
                cloud.aws.as_ref().and_then(|a| a.region.clone()),
                aws.get_node("region"),
            ) {
                if !valid_region(&r) {
                    self.d.error_help(
                        span_of(node),
                        format!("`{r}` is not an AWS region name"),
                        "use a region such as us-east-1 or eu-west-2",
                    );
                }
            }
            if let (Some(e), Some(node)) = (
                cloud.aws.as_ref().and_then(|a| a.endpoint.clone()),
                aws.get_node("endpoint"),
            ) {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    self.d.error_help(
                        span_of(node),
                        format!("endpoint `{e}` is not a URL"),
                        "write it as http://host:port or https://host",
                    );
                }
            }
        }
        if let Some(gcp) = map
            .get_node("gcp")
            .and_then(|n| self.mapping(n, "cloud.gcp"))
        {
            self.check_keys(gcp, &["project", "region", "endpoint"], "in `cloud.gcp`");
            cloud.gcp = Some(GcpSettings {
                project: self.setting(gcp, "project"),
                region: self.setting(gcp, "region"),
                endpoint: self.setting(gcp, "endpoint"),
            });
        }
        cloud
    }

    /// The `import:` list.
    fn imports(&mut self, node: Option<&Node>) -> Vec<super::ImportEntry> {
        let mut out = Vec::new();
        let example = "write `import: [{ to: vpc, id: vpc-0abc123 }]`";
        for item in self.list_items(node, "import", example) {
            let Some(m) = self.mapping(item, "an `import` entry") else {
                continue;
            };
            self.check_keys(m, &["to", "id"], "in an `import` entry");
            let mut get = |key: &str| -> Option<Spanned<String>> {
                match m.get_node(key) {
                    Some(n) => {
                        let v = self.setting(m, key)?;
                        Some(Spanned::new(v, span_of(n)))
                    }
                    None => {
                        self.d.error_help(
                            span_of_map(m),
                            format!("an `import` entry needs `{key}`"),
                            "write `{ to: ADDRESS, id: CLOUD_ID }`",
                        );
                        None
                    }
                }
            };
            if let (Some(to), Some(id)) = (get("to"), get("id")) {
                out.push(super::ImportEntry { to, id });
            }
        }
        out
    }

    /// The `policies:` list: paths of `.rego` files or directories.
    fn policies(&mut self, node: Option<&Node>) -> Vec<Spanned<String>> {
        let example =
            "write `policies: [policies/]`: .rego files or directories, relative to the stack file";
        let mut out = Vec::new();
        for item in self.list_items(node, "policies", example) {
            match item.as_scalar() {
                Some(s) if !s.as_str().is_empty() => {
                    out.push(Spanned::new(s.as_str().to_string(), span_of(item)))
                }
                _ => self.d.error_help(
                    span_of(item),
                    "a `policies` entry must be a path",
                    "write a .rego file or a directory of them, relative to the stack file",
                ),
            }
        }
        out
    }

    /// The `waivers:` list.
    fn waivers(&mut self, node: Option<&Node>) -> Vec<super::Waiver> {
        let mut out = Vec::new();
        let example =
            "write `waivers: [{ rule: RULE, address: ADDRESS, reason: WHY, until: YYYY-MM-DD }]`";
        for item in self.list_items(node, "waivers", example) {
            let Some(m) = self.mapping(item, "a waiver") else {
                continue;
            };
            self.check_keys(m, &["rule", "address", "reason", "until"], "in a waiver");
            let span = span_of_map(m);
            let spanned = |this: &mut Self, key: &str| -> Option<Spanned<String>> {
                let n = m.get_node(key)?;
                let v = this.setting(m, key)?;
                Some(Spanned::new(v, span_of(n)))
            };
            let rule = spanned(self, "rule");
            let address = spanned(self, "address");
            let reason = spanned(self, "reason");
            let until =
                spanned(self, "until").and_then(|u| {
                    match chrono::NaiveDate::parse_from_str(&u.value, "%Y-%m-%d") {
                        Ok(d) => Some(Spanned::new(d, u.span)),
                        Err(_) => {
                            self.d.error_help(
                                u.span,
                                format!("`until` `{}` is not a date", u.value),
                                "write the last day the waiver holds as YYYY-MM-DD",
                            );
                            None
                        }
                    }
                });
            match (rule, reason) {
                (Some(rule), Some(reason)) => out.push(super::Waiver {
                    rule,
                    address,
                    reason: reason.value,
                    until,
                    span,
                }),
                (rule, _) => self.d.error_help(
                    span,
                    if rule.is_none() {
                        "a waiver needs `rule`: the id of the finding it accepts"
                    } else {
                        "a waiver needs `reason`: why the finding is accepted"
                    },
                    "write `{ rule: RULE, reason: WHY }`, with `address:` to narrow it and `until: YYYY-MM-DD` to end it",
                ),
            }
        }
        out
    }

    /// The `state:` section.
    fn state_settings(&mut self, node: Option<&Node>) -> super::StateSettings {
        let mut out = super::StateSettings::default();
        let Some(map) = node.and_then(|n| self.mapping(n, "state")) else {
            return out;
        };
        self.check_keys(map, &["url", "encrypt", "kms_key"], "in `state`");
        if let Some(url) = self.setting(map, "url") {
            let span = map.get_node("url").map(span_of).unwrap_or_default();
            let scheme_ok = ["s3://", "postgres://", "postgresql://"]
                .iter()
                .any(|p| url.starts_with(p));
            let has_password = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .is_some_and(|(userinfo, _)| userinfo.contains(':'));
            if !scheme_ok {
                self.d.error_help(
                    span,
                    format!("`{url}` is not a state store"),
                    "write s3://bucket/prefix or postgres://user@host/database (leave `state` out for local files)",
                );
            } else if has_password {
                self.d.error_no_snippet(
                    span,
                    "the state url carries a password",
                    "credentials never go in the stack file: set PGPASSWORD (or use the AWS credential chain) in the environment that runs ralph-deploy",
                );
            } else {
                out.url = Some(url);
            }
        }
        if let Some(e) = map.get_node("encrypt") {
            out.encrypt = self.boolean(e, "encrypt").unwrap_or(false);
        }
        out.kms_key = self.setting(map, "kms_key");
        out
    }

    fn recovery(&mut self, node: Option<&Node>) -> super::Recovery {
        let mut out = super::Recovery::default();
        let Some(map) = node.and_then(|n| self.mapping(n, "recovery")) else {
            return out;
        };
        self.check_keys(map, &["rpo", "rto"], "in `recovery`");
        for key in ["rpo", "rto"] {
            let Some(text) = self.setting(map, key) else {
                continue;
            };
            match parse_duration(&text) {
                Some(d) if !d.is_zero() => {
                    if key == "rpo" {
                        out.rpo = Some(d);
                    } else {
                        out.rto = Some(d);
                    }
                }
                _ => {
                    let span = map.get_node(key).map(span_of).unwrap_or_default();
                    self.d.error_help(
                        span,
                        format!("`{key}` `{text}` is not a duration"),
                        "write it as 90s, 30m, 1h or 1h30m",
                    );
                }
            }
        }
        out
    }

    /// A cloud setting: a string, variables allowed, resource references not.
    fn setting(&mut self, map: &MarkedMappingNode, key: &str) -> Option<String> {
        let node = map.get_node(key)?;
        let e = self.expr(node, 0)?;
        match e.to_literal() {
            Some(Json::String(s)) if !s.is_empty() => Some(s),
            Some(Json::Null) => None,
            Some(_) | None => {
                self.d.error(e.span, format!("`{key}` must be a plain string (variables are allowed, resource references are not)"));
                None
            }
        }
    }

    /// One resource instance at `address` (its name in the file is `key`).
    fn resource(
        &mut self,
        key: &MarkedScalarNode,
        map: &MarkedMappingNode,
        registry: &dyn Catalog,
        address: String,
    ) -> Option<Resource> {
        let kspan = Span::from_marked(key.span());
        let kind_node = match map.get_node("kind") {
            Some(k) => k,
            None => {
                self.d.error_help(
                    kspan,
                    format!("resource `{address}` has no `kind`"),
                    format!("add `kind:` with one of: {}", registry.kinds().join(", ")),
                );
                return None;
            }
        };
        let kind_text = self.scalar(kind_node, "kind")?.to_string();
        // A component may take its kind as an input (`kind: ${input.secret_kind}`).
        let kind_name = if kind_text.contains("${") {
            match self.expr(kind_node, 1).and_then(|e| e.to_literal()) {
                Some(Json::String(k)) => k,
                _ => {
                    self.d.error_help(
                        span_of(kind_node),
                        "`kind` must be known while loading",
                        "write the kind, or take it from a variable or an input",
                    );
                    return None;
                }
            }
        } else {
            kind_text
        };
        let kind_name = kind_name.as_str();
        let Some(kind) = registry.schema(kind_name) else {
            let hint = match did_you_mean(kind_name, registry.kinds()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("known kinds: {}", registry.kinds().join(", ")),
            };
            self.d.error_help(
                span_of(kind_node),
                format!("unknown resource kind `{kind_name}`"),
                hint,
            );
            return None;
        };
        let mut properties = BTreeMap::new();
        if let Some(p) = map.get_node("properties") {
            if let Some(pm) = self.mapping(p, "properties") {
                for (k, v) in pm.iter() {
                    if let Some(value) = self.expr(v, 1) {
                        properties.insert(
                            k.as_str().to_string(),
                            super::Property {
                                key_span: Span::from_marked(k.span()),
                                value,
                            },
                        );
                    }
                }
            }
        }
        let depends_on = self.depends_on_list(
            map.get_node("depends_on"),
            "`depends_on` must be a list of resource addresses",
            "write `depends_on: [vpc, igw]`",
        );
        let timeouts = self.timeouts(map.get_node("timeouts"));
        let protect = match map.get_node("protect") {
            Some(p) => self.boolean(p, "protect").unwrap_or(false),
            None => false,
        };
        Some(Resource {
            address,
            kind,
            span: kspan,
            properties,
            depends_on,
            protect,
            timeouts,
        })
    }

    /// A `depends_on` list: each entry's addresses, where it was written.
    pub(crate) fn depends_on_list(
        &mut self,
        node: Option<&Node>,
        problem: &str,
        help: &str,
    ) -> Vec<Spanned<String>> {
        let mut deps = Vec::new();
        let Some(dn) = node else {
            return deps;
        };
        match dn.as_sequence() {
            Some(seq) => {
                for item in seq.iter() {
                    if let Some(s) = self.scalar(item, "depends_on entry") {
                        for a in self.depends_on_addresses(s) {
                            deps.push(Spanned::new(a, span_of(item)));
                        }
                    }
                }
            }
            None => self.d.error_help(span_of(dn), problem, help),
        }
        deps
    }

    /// A resource's `timeouts`: create, update and delete, as durations.
    fn timeouts(&mut self, node: Option<&Node>) -> Timeouts {
        let mut timeouts = Timeouts::default();
        if let Some(t) = node {
            if let Some(tm) = self.mapping(t, "timeouts") {
                self.check_keys(tm, &["create", "update", "delete"], "in `timeouts`");
                for (k, v) in tm.iter() {
                    let Some(text) = self.scalar(v, k.as_str()) else {
                        continue;
                    };
                    match parse_duration(text) {
                        Some(d) => match k.as_str() {
                            "create" => timeouts.create = Some(d),
                            "update" => timeouts.update = Some(d),
                            _ => timeouts.delete = Some(d),
                        },
                        None => self.d.error_help(
                            span_of(v),
                            format!("`{text}` is not a duration"),
                            "write it as 90s, 20m or 1h30m",
                        ),
                    }
                }
            }
        }
        timeouts
    }

    fn output(&mut self, key: &MarkedScalarNode, node: &Node) -> Option<Output> {
        let name = key.as_str().to_string();
        if !valid_variable_name(&name) {
            self.d.error_help(
                Span::from_marked(key.span()),
                format!("output name `{name}` is not valid"),
                "use lowercase letters, digits and `_`, starting with a letter",
            );
        }
        let (value_node, description) = match node.as_mapping() {
            Some(m) => {
                self.check_keys(m, OUTPUT_KEYS, &format!("in output `{name}`"));
                let Some(v) = m.get_node("value") else {
                    self.d.error_help(
                        span_of(node),
                        format!("output `{name}` has no `value`"),
                        "write `value: ${address.attribute}`",
                    );
                    return None;
                };
                let desc = m
                    .get_node("description")
                    .and_then(|d| d.as_scalar())
                    .map(|s| s.as_str().to_string());
                (v, desc)
            }
            None => (node, None),
        };
        let value = self.expr(value_node, 1)?;
        Some(Output {
            name,
            value,
            description,
        })
    }

    /// A property value: literals typed the YAML way, strings split into
    /// literal text and references, variables substituted.
    fn expr(&mut self, node: &Node, depth: usize) -> Option<SExpr> {
        let span = span_of(node);
        if depth > MAX_DEPTH {
            self.d.error(
                span,
                format!("values nest more than {MAX_DEPTH} levels deep"),
            );
            return None;
        }
        let expr = match node {
            Node::Scalar(s) => return self.scalar_expr(s, span),
            Node::Sequence(seq) => {
                Expr::List(seq.iter().filter_map(|n| self.expr(n, depth + 1)).collect())
            }
            Node::Mapping(m) => Expr::Map(
                m.iter()
                    .filter_map(|(k, v)| {
                        Some((
                            Spanned::new(k.as_str().to_string(), Span::from_marked(k.span())),
                            self.expr(v, depth + 1)?,
                        ))
                    })
                    .collect(),
            ),
        };
        Some(SExpr { expr, span })
    }

    fn scalar_expr(&mut self, s: &MarkedScalarNode, span: Span) -> Option<SExpr> {
        if s.may_coerce() {
            let text = s.as_str();
            let literal = match text {
                "" | "~" | "null" | "Null" | "NULL" => Some(Expr::Null),
                _ => s
                    .as_bool()
                    .map(Expr::Bool)
                    .or_else(|| s.as_i64().map(Expr::Int))
                    .or_else(|| {
                        if looks_like_float(text) {
                            s.as_f64().map(Expr::Float)
                        } else {
                            None
                        }
                    }),
            };
            if let Some(expr) = literal {
                return Some(SExpr { expr, span });
            }
        }
        let raw = match split_template(s.as_str()) {
            Ok(r) => r,
            Err(msg) => {
                self.d.error_help(
                    span,
                    msg,
                    "write `${address.attribute}` or `${var.name}`; `$${` writes a literal `${`",
                );
                return None;
            }
        };
        // A string that is exactly one `${...}` takes the value's own type.
        if let [RawPart::Expr(e)] = raw.as_slice() {
            return self.lower_text(e, span);
        }
        let mut parts: Vec<Part> = Vec::new();
        for p in raw {
            match p {
                RawPart::Lit(l) => push_lit(&mut parts, l),
                RawPart::Expr(e) => {
                    let v = self.lower_text(&e, span)?;
                    if !self.splice(&mut parts, v, &e, span) {
                        return None;
                    }
                }
            }
        }
        if parts.is_empty() {
            parts.push(Part::Lit(String::new()));
        }
        Some(SExpr {
            expr: Expr::Str(parts),
            span,
        })
    }

    fn variable(&mut self, name: &str, span: Span) -> Option<Json> {
        match self.vars.get(name) {
            Some(v) => Some(v.clone()),
            None => {
                let hint = did_you_mean(name, self.vars.keys().map(|s| s.as_str()))
                    .map(|s| format!("did you mean `${{var.{s}}}`?"))
                    .unwrap_or_else(|| "declare it under `variables`".into());
                self.d.error_help(
                    span,
                    format!("variable `{name}` is not declared or has no value"),
                    hint,
                );
                None
            }
        }
    }

    fn check_keys(&mut self, map: &MarkedMappingNode, allowed: &[&str], context: &str) {
        for k in map.keys() {
            if !allowed.contains(&k.as_str()) {
                let hint = match did_you_mean(k.as_str(), allowed.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("allowed here: {}", allowed.join(", ")),
                };
                self.d.error_help(
                    Span::from_marked(k.span()),
                    format!("unknown field `{}` {context}", k.as_str()),
                    hint,
                );
            }
        }
    }

    /// The entries of the top-level list `key` (none when it is absent);
    /// anything but a list is reported, with `example` as the help.
    fn list_items<'n>(
        &mut self,
        node: Option<&'n Node>,
        key: &str,
        example: &str,
    ) -> Vec<&'n Node> {
        let Some(node) = node else {
            return Vec::new();
        };
        match node.as_sequence() {
            Some(seq) => seq.iter().collect(),
            None => {
                let message = format!("`{key}` must be a list");
                self.d.error_help(span_of(node), message, example);
                Vec::new()
            }
        }
    }

    fn mapping<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedMappingNode> {
        match node.as_mapping() {
            Some(m) => Some(m),
            None => {
                if node.as_scalar().is_some_and(|s| {
                    s.may_coerce()
                        && (s.as_str().is_empty() || s.as_str() == "~" || s.as_str() == "null")
                }) {
                    return None;
                }
                self.d
                    .error(span_of(node), format!("`{what}` must be a mapping"));
                None
            }
        }
    }

    fn scalar<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        match node.as_scalar() {
            Some(s) if !s.as_str().is_empty() => Some(s.as_str()),
            _ => {
                self.d.error(
                    span_of(node),
                    format!("`{what}` must be a non-empty string"),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.as_scalar().and_then(|s| s.as_bool()) {
            Some(b) => Some(b),
            None => {
                self.d.error_help(
                    span_of(node),
                    format!("`{what}` must be true or false"),
                    "write true or false without quotes",
                );
                None
            }
        }
    }
}

fn report_load_error(d: &mut Diagnostics, e: LoadError) {
    match e {
        LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => d.error(
            Span::from_marker(&m),
            "a stack file must be a mapping with `name` and `resources`",
        ),
        LoadError::UnexpectedAnchor(m) => d.error_help(
            Span::from_marker(&m),
            "YAML anchors and aliases are not accepted in stack files",
            "write the value out, or use a variable (`${var.name}`) to share it",
        ),
        LoadError::MappingKeyMustBeScalar(m) => {
            d.error(Span::from_marker(&m), "mapping keys must be plain strings")
        }
        LoadError::UnexpectedTag(m) => d.error_help(
            Span::from_marker(&m),
            "YAML tags (`!tag`) are not accepted in stack files",
            "remove the tag",
        ),
        LoadError::ScanError(m, se) => d.error(
            Span::from_marker(&m),
            format!("YAML syntax error: {}", se.info()),
        ),
        LoadError::DuplicateKey(dk) => d.error_help(
            Span::from_marked(dk.key.span()),
            format!("`{}` is declared twice", dk.key.as_str()),
            format!(
                "the first declaration is at line {}; remove one or rename it",
                dk.prev_key.span().start().map(|m| m.line()).unwrap_or(0)
            ),
        ),
    }
}

/// Overlay merge: mappings merge key by key, anything else replaces.
fn merged(base: Option<&Node>, overlay: Option<&Node>) -> Option<Node> {
    match (base, overlay) {
        (None, None) => None,
        (Some(b), None) => Some(b.clone()),
        (None, Some(o)) => Some(o.clone()),
        (Some(b), Some(o)) => match (b.as_mapping(), o.as_mapping()) {
            (Some(bm), Some(om)) => {
                let mut out = bm.clone();
                for (k, v) in om.iter() {
                    let m = merged(bm.get_node(k.as_str()), Some(v)).unwrap_or_else(|| v.clone());
                    out.insert(k.clone(), m);
                }
                Some(Node::Mapping(out))
            }
            _ => Some(o.clone()),
        },
    }
}

fn span_of(node: &Node) -> Span {
    let mut s = Span::from_marked(node.span());
    if s.len == 0 {
        if let Some(sc) = node.as_scalar() {
            s.len = sc.as_str().chars().count();
        }
    }
    s
}

fn span_of_map(m: &MarkedMappingNode) -> Span {
    Span::from_marked(m.span())
}

/// Plain YAML conversion for variable values (no references inside).
fn node_to_json(node: &Node) -> Json {
    match node {
        Node::Scalar(s) => {
            if s.may_coerce() {
                match s.as_str() {
                    "" | "~" | "null" | "Null" | "NULL" => return Json::Null,
                    t => {
                        if let Some(b) = s.as_bool() {
                            return Json::Bool(b);
                        }
                        if let Some(i) = s.as_i64() {
                            return Json::from(i);
                        }
                        if looks_like_float(t) {
                            if let Some(f) = s.as_f64().and_then(serde_json::Number::from_f64) {
                                return Json::Number(f);
                            }
                        }
                    }
                }
            }
            Json::String(s.as_str().to_string())
        }
        Node::Sequence(seq) => Json::Array(seq.iter().map(node_to_json).collect()),
        Node::Mapping(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().to_string(), node_to_json(v)))
                .collect(),
        ),
    }
}

fn json_to_sexpr(v: &Json, span: Span) -> SExpr {
    let expr = match v {
        Json::Null => Expr::Null,
        Json::Bool(b) => Expr::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Expr::Int(i),
            None => Expr::Float(n.as_f64().unwrap_or_default()),
        },
        Json::String(s) => Expr::Str(vec![Part::Lit(s.clone())]),
        Json::Array(items) => Expr::List(items.iter().map(|i| json_to_sexpr(i, span)).collect()),
        Json::Object(m) => Expr::Map(
            m.iter()
                .map(|(k, v)| (Spanned::new(k.clone(), span), json_to_sexpr(v, span)))
                .collect(),
        ),
    };
    SExpr { expr, span }
}

fn parse_cli_value(text: &str, ty: &str) -> Result<Json, String> {
    match ty {
        "string" => Ok(Json::String(text.to_string())),
        "number" => serde_json::from_str::<serde_json::Number>(text)
            .map(Json::Number)
            .map_err(|_| "expected a number".into()),
        "bool" => match text {
            "true" => Ok(Json::Bool(true)),
            "false" => Ok(Json::Bool(false)),
            _ => Err("expected true or false".into()),
        },
        "list" => match serde_json::from_str::<Json>(text) {
            Ok(v @ Json::Array(_)) => Ok(v),
            _ => Err("expected a JSON list such as [\"a\",\"b\"]".into()),
        },
        "map" => match serde_json::from_str::<Json>(text) {
            Ok(v @ Json::Object(_)) => Ok(v),
            _ => Err("expected a JSON object such as {\"k\":\"v\"}".into()),
        },
        _ => Err(format!("unknown type {ty}")),
    }
}

fn looks_like_float(t: &str) -> bool {
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+')
        && t.chars().next().is_some_and(|c| c.is_ascii_digit())
        && t.contains('.')
}

/// A cheap pre-scan: flow collections (`[[[[...`) or indentation nested beyond
/// any sane stack are refused before the parser builds a tree for them.
fn too_deep(text: &str) -> Option<Span> {
    let mut depth = 0usize;
    let (mut line, mut col) = (1usize, 0usize);
    let mut in_quote: Option<char> = None;
    for (offset, c) in text.chars().enumerate() {
        col += 1;
        match c {
            '\n' => {
                line += 1;
                col = 0;
                in_quote = None;
            }
            '"' | '\'' if in_quote == Some(c) => in_quote = None,
            '"' | '\'' if in_quote.is_none() && depth > 0 => in_quote = Some(c),
            '[' | '{' if in_quote.is_none() => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(Span {
                        file: 0,
                        offset,
                        line,
                        column: col,
                        len: 1,
                    });
                }
            }
            ']' | '}' if in_quote.is_none() => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    for (i, l) in text.lines().enumerate() {
        let indent = l.len() - l.trim_start_matches(' ').len();
        if indent > MAX_DEPTH * 8 {
            return Some(Span {
                file: 0,
                offset: 0,
                line: i + 1,
                column: 1,
                len: 1,
            });
        }
    }
    None
}

fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn valid_attribute(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn valid_variable_name(s: &str) -> bool {
    valid_attribute(s) && s.len() <= 64
}

fn valid_stack_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.ends_with('-')
}

fn valid_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
}

/// `90s`, `20m`, `1h30m`, `2h`.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: u64 = num.parse().ok()?;
            num.clear();
            total += n * match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => return None,
            };
            any = true;
        }
    }
    if !num.is_empty() || !any || total == 0 {
        return None;
    }
    Some(std::time::Duration::from_secs(total))
}
