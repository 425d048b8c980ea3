//! Scopes: the resources and component uses of the stack file or of one
//! component instance, `for_each` expansion, and what a name inside
//! `${...}` refers to. Everything is expanded while loading: the plan,
//! the graph and the state see flat addresses (`app.deployment`,
//! `private["a"]`), so the engine below needs no notion of components.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoaderOptions, Node};
use serde_json::Value as Json;

use super::{
    json_to_sexpr, report_load_error, span_of, span_of_map, too_deep, Loader, Name, Scope,
    COMPONENT_KEYS, INPUT_TYPES, MAX_COMPONENT_DEPTH, MAX_FILE_BYTES, RESOURCE_KEYS, USE_KEYS,
    VARIABLE_KEYS,
};
use crate::diag::{SourceFile, Span, Spanned};
use crate::expr::{Expr, Part, Reference, SExpr};
use crate::functions::{self, Func};
use crate::syntax::{self, Ast, Step};
use crate::Moved;
use ralph_core::model::{address, did_you_mean, Catalog};

/// One resource declaration waiting to be read for each of its instances.
struct Declared<'n> {
    key: &'n MarkedScalarNode,
    map: &'n MarkedMappingNode,
    instances: Vec<(Option<(String, Json)>, String)>,
}

impl Loader {
    /// Reads a scope: declares its names, expands its component uses (in
    /// the order their inputs need), then reads each resource instance.
    pub(super) fn body(
        &mut self,
        resources: Option<&MarkedMappingNode>,
        components: Option<&MarkedMappingNode>,
        skip: &BTreeSet<String>,
        registry: &dyn Catalog,
    ) {
        let mut declared: Vec<Declared> = Vec::new();
        if let Some(map) = resources {
            for (k, v) in map.iter() {
                if skip.contains(k.as_str()) {
                    continue;
                }
                if let Some(d) = self.declare_resource(k, v) {
                    declared.push(d);
                }
            }
        }
        let mut uses: Vec<(&MarkedScalarNode, &MarkedMappingNode)> = Vec::new();
        if let Some(map) = components {
            for (k, v) in map.iter() {
                let name = k.as_str();
                let kspan = Span::from_marked(k.span());
                if !address::valid_name(name) {
                    self.d.error_help(kspan, format!("component use name `{name}` is not valid"), "use lowercase letters, digits, `_` and `-`, starting with a letter, at most 64 characters");
                    continue;
                }
                if self.scope.names.contains_key(name) {
                    self.d.error_help(
                        kspan,
                        format!("`{name}` names both a resource and a component use"),
                        "rename one of them: references like `${name.attribute}` must say which",
                    );
                    continue;
                }
                let Some(m) = self.mapping(v, &format!("component `{name}`")) else {
                    continue;
                };
                self.check_keys(m, USE_KEYS, &format!("in component use `{name}`"));
                self.scope.names.insert(name.to_string(), Name::Pending);
                uses.push((k, m));
            }
        }
        for (k, m) in self.use_order(uses) {
            self.use_component(k, m, registry);
        }
        for d in declared {
            for (each, addr) in d.instances {
                self.scope.each = each;
                let before = self.d.problems.len();
                match self.resource(d.key, d.map, registry, addr.clone()) {
                    Some(r) if self.d.problems.len() == before => {
                        self.out.insert(r.address.clone(), r);
                    }
                    Some(r) => {
                        // Loaded with problems (a value that did not read):
                        // its other properties are still checked, but not
                        // for what is missing.
                        self.partial.incomplete.insert(r.address.clone());
                        self.out.insert(r.address.clone(), r);
                    }
                    None => {
                        self.partial.unloaded.insert(addr);
                    }
                }
            }
            self.scope.each = None;
        }
    }

    fn declare_resource<'n>(
        &mut self,
        key: &'n MarkedScalarNode,
        node: &'n Node,
    ) -> Option<Declared<'n>> {
        let name = key.as_str();
        let kspan = Span::from_marked(key.span());
        if !address::valid_name(name) {
            self.d.error_help(kspan, format!("resource address `{name}` is not valid"), "use lowercase letters, digits, `_` and `-`, starting with a letter, at most 64 characters");
        }
        let map = self.mapping(node, &format!("resource `{name}`"))?;
        self.check_keys(map, RESOURCE_KEYS, &format!("in resource `{name}`"));
        if let Some(enabled) = map.get_node("enabled") {
            if !self.boolean(enabled, "enabled")? {
                // Still a name here: a reference to it is told it is
                // disabled, not that it does not exist.
                self.scope.names.insert(name.to_string(), Name::Disabled);
                return None;
            }
        }
        let full = format!("{}{name}", self.scope.prefix);
        let (keys, instances) = match map.get_node("for_each") {
            Some(fe) => {
                let items = self.for_each_items(fe)?;
                let keys = items.iter().map(|(k, _)| k.clone()).collect();
                let instances = items
                    .into_iter()
                    .map(|(k, v)| {
                        let a = address::instance(&full, &k);
                        (Some((k, v)), a)
                    })
                    .collect();
                (Some(keys), instances)
            }
            None => (None, vec![(None, full)]),
        };
        self.scope
            .names
            .insert(name.to_string(), Name::Resource { keys });
        Some(Declared {
            key,
            map,
            instances,
        })
    }

    /// The (key, value) pairs of a `for_each`: a list of strings (each is
    /// its own key) or a mapping. It must be known while loading.
    fn for_each_items(&mut self, node: &Node) -> Option<Vec<(String, Json)>> {
        let v = self.expr(node, 1)?;
        let span = v.span;
        let Some(value) = v.to_literal() else {
            self.d.error_help(
                span,
                "`for_each` must be known before the apply, but it refers to a resource attribute",
                "build it from variables, inputs, `each` or literal lists and mappings",
            );
            return None;
        };
        let items: Vec<(String, Json)> = match value {
            Json::Array(list) => {
                let mut out = Vec::new();
                for item in list {
                    match &item {
                        Json::String(s) => out.push((s.clone(), item.clone())),
                        Json::Number(n) => out.push((n.to_string(), item.clone())),
                        _ => {
                            self.d.error_help(
                                span,
                                "`for_each` over a list takes strings (each is the key of one instance)",
                                "to give each instance several values, write a mapping from key to value",
                            );
                            return None;
                        }
                    }
                }
                out
            }
            Json::Object(m) => m.into_iter().collect(),
            other => {
                self.d.error_help(
                    span,
                    format!(
                        "`for_each` takes a list or a mapping, found {}",
                        describe_json(&other)
                    ),
                    "write a list of keys, or a mapping from key to value",
                );
                return None;
            }
        };
        let mut seen = BTreeSet::new();
        for (k, _) in &items {
            if !address::valid_instance_key(k) {
                self.d.error_help(
                    span,
                    format!("`for_each` key `{k}` cannot name an instance"),
                    "keys go into addresses and cloud tags: use 1 to 64 letters, digits, `_` and `-`",
                );
                return None;
            }
            if !seen.insert(k.clone()) {
                self.d.error_help(
                    span,
                    format!("`for_each` has the key `{k}` twice"),
                    "each instance needs a key of its own",
                );
                return None;
            }
        }
        Some(items)
    }

    /// Component uses ordered so that a use comes after the uses its inputs
    /// and `for_each` refer to; a cycle between uses is reported.
    fn use_order<'n>(
        &mut self,
        uses: Vec<(&'n MarkedScalarNode, &'n MarkedMappingNode)>,
    ) -> Vec<(&'n MarkedScalarNode, &'n MarkedMappingNode)> {
        let names: BTreeSet<String> = uses.iter().map(|(k, _)| k.as_str().to_string()).collect();
        let mut needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (k, m) in &uses {
            let mut heads = BTreeSet::new();
            for key in ["inputs", "for_each"] {
                if let Some(n) = m.get_node(key) {
                    collect_heads(n, &mut heads);
                }
            }
            heads.retain(|h| names.contains(h) && h != k.as_str());
            needs.insert(k.as_str().to_string(), heads);
        }
        let mut order = Vec::new();
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut remaining = uses;
        while !remaining.is_empty() {
            let (ready, rest): (Vec<_>, Vec<_>) = remaining
                .into_iter()
                .partition(|(k, _)| needs[k.as_str()].iter().all(|n| done.contains(n)));
            if ready.is_empty() {
                let cycle: Vec<&str> = rest.iter().map(|(k, _)| k.as_str()).collect();
                self.d.error_help(
                    Span::from_marked(rest[0].0.span()),
                    format!(
                        "component uses {} take inputs from each other's outputs (a cycle)",
                        cycle
                            .iter()
                            .map(|c| format!("`{c}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "pass one of them what it needs from a resource directly, not through the other's outputs",
                );
                for (k, _) in rest {
                    self.scope.names.remove(k.as_str());
                }
                break;
            }
            for (k, m) in ready {
                done.insert(k.as_str().to_string());
                order.push((k, m));
            }
            remaining = rest;
        }
        order
    }

    /// Expands one component use (each instance of it) into resources.
    fn use_component(
        &mut self,
        key: &MarkedScalarNode,
        m: &MarkedMappingNode,
        registry: &dyn Catalog,
    ) {
        let name = key.as_str().to_string();
        let kspan = Span::from_marked(key.span());
        let Some(source_node) = m.get_node("source") else {
            self.d.error_help(
                kspan,
                format!("component use `{name}` has no `source`"),
                "add `source: ../components/NAME.yaml` (relative to this file)",
            );
            self.scope.names.remove(&name);
            return;
        };
        let Some(source) = self.scalar(source_node, "source").map(str::to_string) else {
            self.scope.names.remove(&name);
            return;
        };
        let Some((file, path, top)) = self.component_file(&name, &source, span_of(source_node))
        else {
            self.scope.names.remove(&name);
            return;
        };
        let top = &top;
        let Some(top) = top.as_mapping() else {
            self.d.error(
                Span {
                    file,
                    ..Span::default()
                },
                "a component file must be a mapping with `inputs`, `resources` and `outputs`",
            );
            self.scope.names.remove(&name);
            return;
        };
        self.check_keys(top, COMPONENT_KEYS, "at the top of a component file");
        let decls = self.input_declarations(top.get_node("inputs"));
        let full = format!("{}{name}", self.scope.prefix);
        let instances: Vec<(Option<(String, Json)>, String)> = match m.get_node("for_each") {
            Some(fe) => match self.for_each_items(fe) {
                Some(items) => items
                    .into_iter()
                    .map(|(k, v)| {
                        let a = address::instance(&full, &k);
                        (Some((k, v)), a)
                    })
                    .collect(),
                None => {
                    self.scope.names.remove(&name);
                    return;
                }
            },
            None => vec![(None, full)],
        };
        let keys = m.get_node("for_each").map(|_| {
            instances
                .iter()
                .filter_map(|(e, _)| e.as_ref().map(|x| x.0.clone()))
                .collect()
        });
        let before: BTreeSet<String> = self.out.keys().cloned().collect();
        let mut outputs = BTreeMap::new();
        for (each, addr) in instances {
            self.scope.each = each.clone();
            let inputs = self.use_inputs(&name, m, &decls, kspan);
            self.scope.each = None;
            let Some(inputs) = inputs else {
                continue;
            };
            let outs = self.instance(&addr, &path, top, inputs, registry);
            outputs.insert(each.map(|e| e.0).unwrap_or_default(), outs);
        }
        let addresses: Vec<String> = self
            .out
            .keys()
            .filter(|a| !before.contains(*a))
            .cloned()
            .collect();
        self.use_depends_on(m, &addresses);
        self.scope.names.insert(
            name,
            Name::Component {
                keys,
                outputs,
                addresses,
            },
        );
    }

    /// One instance of a component: its resources and nested components
    /// under `addr.`, in a scope of its own; returns its outputs.
    fn instance(
        &mut self,
        addr: &str,
        path: &Path,
        top: &MarkedMappingNode,
        inputs: BTreeMap<String, SExpr>,
        registry: &dyn Catalog,
    ) -> BTreeMap<String, SExpr> {
        let child = Scope {
            prefix: format!("{addr}."),
            inputs: Some(inputs),
            each: None,
            names: BTreeMap::new(),
            dir: path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| ".".into()),
            chain: {
                let mut c = self.scope.chain.clone();
                c.push(path.to_path_buf());
                c
            },
        };
        let parent = std::mem::replace(&mut self.scope, child);
        let resources = top
            .get_node("resources")
            .and_then(|n| self.mapping(n, "resources"))
            .cloned();
        let components = top
            .get_node("components")
            .and_then(|n| self.mapping(n, "components"))
            .cloned();
        self.body(
            resources.as_ref(),
            components.as_ref(),
            &BTreeSet::new(),
            registry,
        );
        let mut outs = BTreeMap::new();
        if let Some(map) = top
            .get_node("outputs")
            .and_then(|n| self.mapping(n, "outputs"))
        {
            for (k, v) in map.iter() {
                if let Some(o) = self.output(k, v) {
                    outs.insert(o.name, o.value);
                }
            }
        }
        self.scope = parent;
        outs
    }

    /// `depends_on` on a use: every resource of it comes after those.
    fn use_depends_on(&mut self, m: &MarkedMappingNode, addresses: &[String]) {
        let deps = self.depends_on_list(
            m.get_node("depends_on"),
            "`depends_on` must be a list of names",
            "write `depends_on: [nodes]`",
        );
        for a in addresses {
            if let Some(r) = self.out.get_mut(a) {
                r.depends_on.extend(deps.iter().cloned());
            }
        }
    }

    /// Reads a component file for one use; registers it with the
    /// diagnostics so that its problems name the file and the use.
    fn component_file(
        &mut self,
        name: &str,
        source: &str,
        at: Span,
    ) -> Option<(u32, PathBuf, Node)> {
        if self.scope.chain.len() >= MAX_COMPONENT_DEPTH {
            self.d.error_help(
                at,
                format!("components nest more than {MAX_COMPONENT_DEPTH} levels deep"),
                "flatten the components",
            );
            return None;
        }
        let path = self.scope.dir.join(source);
        let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if self.scope.chain.contains(&canonical) {
            self.d.error_help(
                at,
                format!("component `{name}` uses `{source}`, which is already being used on the way here"),
                "a component cannot use itself, directly or through others",
            );
            return None;
        }
        let text = match ralph_core::files::read_text_bounded(&path, MAX_FILE_BYTES) {
            Ok(t) => t,
            Err(e) => {
                self.d.error_help(
                    at,
                    format!("cannot read component file {}: {e}", path.display()),
                    "`source` is relative to the file that uses the component",
                );
                return None;
            }
        };
        let use_file = &self.d.files[at.file as usize].path;
        let via = format!(
            "component `{}{name}` used at {use_file}:{}:{}",
            self.scope.prefix, at.line, at.column
        );
        let file = self.d.add_file(SourceFile {
            path: tidy(&path).display().to_string(),
            source: Arc::from(text.as_str()),
            via: Some(via),
        });
        if let Some(mut span) = too_deep(&text) {
            span.file = file;
            self.d
                .error_help(span, "the file nests too deeply", "flatten the structure");
            return None;
        }
        match marked_yaml::parse_yaml_with_options(
            file as usize,
            &text,
            LoaderOptions::default()
                .error_on_duplicate_keys(true)
                .prevent_coercion(true),
        ) {
            Ok(node) => Some((file, canonical, node)),
            Err(e) => {
                report_load_error(&mut self.d, e);
                None
            }
        }
    }

    /// A component file's `inputs`: name -> (type, default, where declared).
    fn input_declarations(
        &mut self,
        node: Option<&Node>,
    ) -> BTreeMap<String, (String, Option<Node>, Span)> {
        let mut out = BTreeMap::new();
        let Some(map) = node.and_then(|n| self.mapping(n, "inputs")) else {
            return out;
        };
        for (k, v) in map.iter() {
            let name = k.as_str().to_string();
            let kspan = Span::from_marked(k.span());
            let Some(m) = self.mapping(v, &format!("input `{name}`")) else {
                continue;
            };
            self.check_keys(m, VARIABLE_KEYS, &format!("in input `{name}`"));
            let ty = match m.get_node("type") {
                Some(t) => match self.scalar(t, "type") {
                    Some(s) if INPUT_TYPES.contains(&s) => s.to_string(),
                    Some(s) => {
                        let hint = did_you_mean(s, INPUT_TYPES.iter().copied())
                            .map(|x| format!("did you mean `{x}`?"))
                            .unwrap_or_else(|| format!("use one of: {}", INPUT_TYPES.join(", ")));
                        self.d
                            .error_help(span_of(t), format!("unknown input type `{s}`"), hint);
                        continue;
                    }
                    None => continue,
                },
                None => "any".into(),
            };
            out.insert(name, (ty, m.get_node("default").cloned(), kspan));
        }
        out
    }

    /// The inputs one instance of a use passes, read in the using scope and
    /// checked against the component's declarations.
    fn use_inputs(
        &mut self,
        name: &str,
        m: &MarkedMappingNode,
        decls: &BTreeMap<String, (String, Option<Node>, Span)>,
        kspan: Span,
    ) -> Option<BTreeMap<String, SExpr>> {
        let mut out = BTreeMap::new();
        let mut ok = true;
        if let Some(given) = m.get_node("inputs").and_then(|n| self.mapping(n, "inputs")) {
            for (k, v) in given.iter() {
                let input = k.as_str();
                let Some((ty, _, _)) = decls.get(input) else {
                    let hint = did_you_mean(input, decls.keys().map(String::as_str))
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| {
                            format!(
                                "the component takes: {}",
                                decls.keys().cloned().collect::<Vec<_>>().join(", ")
                            )
                        });
                    self.d.error_help(
                        Span::from_marked(k.span()),
                        format!("component `{name}` has no input `{input}`"),
                        hint,
                    );
                    ok = false;
                    continue;
                };
                let Some(value) = self.expr(v, 1) else {
                    ok = false;
                    continue;
                };
                if let Some(problem) = input_type_problem(ty, &value) {
                    self.d.error_help(
                        value.span,
                        format!(
                            "input `{input}` of component `{name}` must be {ty}, found {problem}"
                        ),
                        "pass a value of the input's declared type",
                    );
                    ok = false;
                    continue;
                }
                out.insert(input.to_string(), value);
            }
        }
        for (input, (_, default, dspan)) in decls {
            if out.contains_key(input) {
                continue;
            }
            match default {
                Some(d) => {
                    let v = super::node_to_json(d);
                    out.insert(input.clone(), json_to_sexpr(&v, span_of(d)));
                }
                None if !ok => {}
                None => {
                    self.d.error_help(
                        kspan,
                        format!("component `{name}` needs the input `{input}`"),
                        format!(
                            "add `{input}:` under `inputs` (declared at line {} of the component file)",
                            dspan.line
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// Parses and reads one `${...}` expression in the current scope.
    pub(super) fn lower_text(&mut self, text: &str, span: Span) -> Option<SExpr> {
        match syntax::parse(text) {
            Ok(ast) => self.lower(&ast, &text.to_string(), span),
            Err(msg) => {
                self.d.error_help(
                    span,
                    format!("`${{{text}}}`: {msg}"),
                    "write `${address.attribute}`, `${var.name}`, `${each.key}` or a call such as `${join(\",\", var.zones)}`",
                );
                None
            }
        }
    }

    fn lower(&mut self, ast: &Ast, text: &String, span: Span) -> Option<SExpr> {
        let lit = |v: Json| Some(json_to_sexpr(&v, span));
        match ast {
            Ast::Str(s) => lit(Json::String(s.clone())),
            Ast::Int(i) => lit(Json::from(*i)),
            Ast::Float(f) => lit(serde_json::Number::from_f64(*f)
                .map(Json::Number)
                .unwrap_or(Json::Null)),
            Ast::Bool(b) => lit(Json::Bool(*b)),
            Ast::List(items) => {
                let items = items
                    .iter()
                    .map(|i| self.lower(i, text, span))
                    .collect::<Option<Vec<_>>>()?;
                Some(SExpr {
                    expr: Expr::List(items),
                    span,
                })
            }
            Ast::Call { name, args } => {
                let Some(f) = Func::by_name(name) else {
                    let hint = did_you_mean(name, functions::NAMES.iter().copied())
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| format!("functions: {}", functions::NAMES.join(", ")));
                    self.d
                        .error_help(span, format!("unknown function `{name}`"), hint);
                    return None;
                };
                if let Err(msg) = f.check_arity(args.len()) {
                    self.d.error(span, msg);
                    return None;
                }
                let args = args
                    .iter()
                    .map(|a| self.lower(a, text, span))
                    .collect::<Option<Vec<_>>>()?;
                let known: Vec<Option<Json>> = args.iter().map(SExpr::to_literal).collect();
                for (i, k) in known.iter().enumerate() {
                    if let Some(v) = k {
                        if let Err(msg) = f.check_arg(i, v) {
                            self.d.error_help(span, msg, f.signature());
                            return None;
                        }
                    }
                }
                if known.iter().all(Option::is_some) {
                    let values: Vec<Json> = known.into_iter().flatten().collect();
                    return match f.call(&values) {
                        Ok(v) => lit(v),
                        Err(msg) => {
                            self.d.error_help(span, msg, f.signature());
                            None
                        }
                    };
                }
                Some(SExpr {
                    expr: Expr::Call(f, args),
                    span,
                })
            }
            Ast::Path { head, steps } => self.lower_path(head, steps, text, span),
        }
    }

    fn lower_path(&mut self, head: &str, steps: &[Step], text: &str, span: Span) -> Option<SExpr> {
        let fixed = self.fixed_steps(steps, text, span)?;
        let steps = &fixed[..];
        let first_attr = |steps: &[Step]| match steps.first() {
            Some(Step::Attr(a)) => Some(a.clone()),
            _ => None,
        };
        match head {
            "var" => {
                if self.scope.inputs.is_some() {
                    self.d.error_help(
                        span,
                        format!("`${{{text}}}`: a component does not see the stack's variables"),
                        "declare an input in the component (`inputs:`), refer to it as `${input.name}`, and pass the variable from the stack",
                    );
                    return None;
                }
                let Some(name) = first_attr(steps) else {
                    self.d.error(span, "write `${var.name}`");
                    return None;
                };
                let v = self.variable(&name, span)?;
                self.index_json(v, &steps[1..], text, span)
                    .map(|v| json_to_sexpr(&v, span))
            }
            "input" => self.lower_input(first_attr(steps), steps, text, span),
            "each" => {
                let Some((key, value)) = self.scope.each.clone() else {
                    self.d.error_help(
                        span,
                        format!("`${{{text}}}`: `each` is only known in a resource or component use with `for_each`"),
                        "add `for_each:` to the resource, or remove the reference",
                    );
                    return None;
                };
                match first_attr(steps).as_deref() {
                    Some("key") if steps.len() == 1 => {
                        Some(json_to_sexpr(&Json::String(key), span))
                    }
                    Some("value") => self
                        .index_json(value, &steps[1..], text, span)
                        .map(|j| json_to_sexpr(&j, span)),
                    _ => {
                        self.d.error(
                            span,
                            format!("`${{{text}}}`: write `${{each.key}}` or `${{each.value}}`"),
                        );
                        None
                    }
                }
            }
            "stack" => {
                match first_attr(steps).as_deref() {
                    Some("name") if steps.len() == 1 => {
                        Some(json_to_sexpr(&Json::String(self.stack_name.clone()), span))
                    }
                    Some("environment") if steps.len() == 1 => {
                        Some(json_to_sexpr(&Json::String(self.environment.clone()), span))
                    }
                    _ => {
                        self.d.error(span, format!("`${{{text}}}`: write `${{stack.name}}` or `${{stack.environment}}`"));
                        None
                    }
                }
            }
            _ => self.lower_name(head, steps, text, span),
        }
    }

    /// A reference to a resource or a component use of this scope.
    fn lower_name(&mut self, head: &str, steps: &[Step], text: &str, span: Span) -> Option<SExpr> {
        let full = format!("{}{head}", self.scope.prefix);
        let Some(name) = self.scope.names.get(head).cloned() else {
            let candidates: Vec<String> = self.scope.names.keys().cloned().collect();
            let hint = did_you_mean(head, candidates.iter().map(String::as_str))
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| {
                    if self.scope.inputs.is_some() {
                        "refer to a resource of this component, or to an input as `${input.name}`".into()
                    } else {
                        "refer to a resource declared under `resources` (or to a variable as `${var.name}`)".into()
                    }
                });
            self.d.error_help(
                span,
                format!("reference to `{full}`, which is not a resource in this stack"),
                hint,
            );
            return None;
        };
        let bad = |this: &mut Self, msg: String, help: &str| {
            this.d
                .error_help(span, format!("`${{{text}}}`: {msg}"), help.to_string());
            None
        };
        match name {
            Name::Disabled => bad(
                self,
                format!(
                    "resource `{full}` is disabled (`enabled: false`) in environment `{}`",
                    self.environment
                ),
                "disable what refers to it in this environment too, or enable it",
            ),
            Name::Pending => bad(
                self,
                format!("component `{head}` is not expanded yet"),
                "component uses may not take inputs from each other in a cycle",
            ),
            Name::Resource { keys: None } => match steps {
                [Step::Attr(a)] => Some(reference(&full, a, span)),
                [] => bad(
                    self,
                    "name an attribute".into(),
                    "write `${address.attribute}`",
                ),
                _ => bad(
                    self,
                    format!("`{head}` has no `for_each`, so it takes one attribute and no index"),
                    "write `${address.attribute}`",
                ),
            },
            Name::Resource { keys: Some(keys) } => match steps {
                [Step::Key(k), Step::Attr(a)] => {
                    if !keys.contains(k) {
                        return self.no_key(head, k, &keys, span);
                    }
                    Some(reference(&address::instance(&full, k), a, span))
                }
                [Step::Splat, Step::Attr(a)] => Some(SExpr {
                    expr: Expr::List(
                        keys.iter()
                            .map(|k| reference(&address::instance(&full, k), a, span))
                            .collect(),
                    ),
                    span,
                }),
                _ => bad(
                    self,
                    format!("`{head}` has `for_each`: name one instance or all of them"),
                    &format!(
                        "write `${{{head}[\"KEY\"].attribute}}` or `${{{head}[*].attribute}}`"
                    ),
                ),
            },
            Name::Component { keys, outputs, .. } => {
                self.lower_output(head, &full, keys.as_deref(), &outputs, steps, text, span)
            }
        }
    }

    /// `[each.key]` and friends: computed keys must be known now.
    fn fixed_steps(&mut self, steps: &[Step], text: &str, span: Span) -> Option<Vec<Step>> {
        let mut fixed = Vec::with_capacity(steps.len());
        for step in steps {
            match step {
                Step::Dyn(ast) => {
                    let key = self.lower(ast, &text.to_string(), span)?;
                    match key.to_literal() {
                        Some(Json::String(k)) => fixed.push(Step::Key(k)),
                        Some(Json::Number(n)) if n.is_i64() => {
                            fixed.push(Step::Index(n.as_i64().unwrap_or_default()))
                        }
                        _ => {
                            self.d.error_help(
                                span,
                                format!("`${{{text}}}`: an index must be a string or a number known before the apply"),
                                "index with `each.key`, a variable, an input or a literal",
                            );
                            return None;
                        }
                    }
                }
                other => fixed.push(other.clone()),
            }
        }
        Some(fixed)
    }

    /// `${input.NAME...}` inside a component file.
    fn lower_input(
        &mut self,
        name: Option<String>,
        steps: &[Step],
        text: &str,
        span: Span,
    ) -> Option<SExpr> {
        let Some(name) = name else {
            self.d.error(span, "write `${input.name}`");
            return None;
        };
        let Some(inputs) = &self.scope.inputs else {
            self.d.error_help(
                span,
                format!("`${{{text}}}`: `input` is only known inside a component file"),
                "in a stack file, use variables: `${var.name}`",
            );
            return None;
        };
        match inputs.get(&name) {
            Some(v) => {
                let v = v.clone();
                if steps.len() == 1 {
                    return Some(SExpr { span, ..v });
                }
                match v.to_literal() {
                    Some(j) => self
                        .index_json(j, &steps[1..], text, span)
                        .map(|j| json_to_sexpr(&j, span)),
                    None => {
                        self.d.error(span, format!("`${{{text}}}`: the input is not known before the apply, so it cannot be indexed"));
                        None
                    }
                }
            }
            None => {
                let hint = did_you_mean(&name, inputs.keys().map(String::as_str))
                    .map(|s| format!("did you mean `${{input.{s}}}`?"))
                    .unwrap_or_else(|| "declare it under `inputs` in the component file".into());
                self.d.error_help(
                    span,
                    format!("input `{name}` is not declared in this component"),
                    hint,
                );
                None
            }
        }
    }

    /// `${use.output}`, `${use["KEY"].output}` or `${use[*].output}`: a
    /// component use's outputs.
    #[allow(clippy::too_many_arguments)]
    fn lower_output(
        &mut self,
        head: &str,
        full: &str,
        keys: Option<&[String]>,
        outputs: &BTreeMap<String, BTreeMap<String, SExpr>>,
        steps: &[Step],
        text: &str,
        span: Span,
    ) -> Option<SExpr> {
        let bad = |this: &mut Self, msg: String, help: &str| {
            this.d
                .error_help(span, format!("`${{{text}}}`: {msg}"), help.to_string());
            None
        };
        let pick = |this: &mut Self, inst: &str, o: &str| -> Option<SExpr> {
            let outs = outputs.get(inst)?;
            match outs.get(o) {
                Some(v) => Some(SExpr { span, ..v.clone() }),
                None => {
                    let hint = did_you_mean(o, outs.keys().map(String::as_str))
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| {
                            format!(
                                "its outputs: {}",
                                outs.keys().cloned().collect::<Vec<_>>().join(", ")
                            )
                        });
                    this.d.error_help(
                        span,
                        format!("component `{full}` has no output `{o}`"),
                        hint,
                    );
                    None
                }
            }
        };
        match (keys, steps) {
            (None, [Step::Attr(o)]) => pick(self, "", o),
            (Some(keys), [Step::Key(k), Step::Attr(o)]) => {
                if !keys.contains(k) {
                    return self.no_key(head, k, keys, span);
                }
                pick(self, k, o)
            }
            (Some(keys), [Step::Splat, Step::Attr(o)]) => {
                let items = keys
                    .iter()
                    .map(|k| pick(self, k, o))
                    .collect::<Option<Vec<_>>>()?;
                Some(SExpr {
                    expr: Expr::List(items),
                    span,
                })
            }
            (None, _) => bad(
                self,
                format!("`{head}` is a component use: name one of its outputs"),
                "write `${component.output}`",
            ),
            (Some(_), _) => bad(
                self,
                format!(
                    "`{head}` is a component use with `for_each`: name one instance or all of them"
                ),
                &format!("write `${{{head}[\"KEY\"].output}}` or `${{{head}[*].output}}`"),
            ),
        }
    }

    fn no_key(&mut self, head: &str, key: &str, keys: &[String], span: Span) -> Option<SExpr> {
        let hint = did_you_mean(key, keys.iter().map(String::as_str))
            .map(|s| format!("did you mean `{head}[\"{s}\"]`?"))
            .unwrap_or_else(|| format!("its keys: {}", keys.join(", ")));
        self.d
            .error_help(span, format!("`{head}` has no instance `{key}`"), hint);
        None
    }

    /// `steps` applied to a known value (`var.zones[0]`, `each.value.cidr`).
    fn index_json(&mut self, mut v: Json, steps: &[Step], text: &str, span: Span) -> Option<Json> {
        for step in steps {
            let next = match (step, &v) {
                (Step::Attr(k) | Step::Key(k), Json::Object(m)) => m.get(k).cloned(),
                (Step::Index(i), Json::Array(a)) => {
                    usize::try_from(*i).ok().and_then(|i| a.get(i).cloned())
                }
                _ => None,
            };
            match next {
                Some(n) => v = n,
                None => {
                    self.d.error(
                        span,
                        format!(
                            "`${{{text}}}`: {} has nothing at `{step}`",
                            describe_json(&v)
                        ),
                    );
                    return None;
                }
            }
        }
        Some(v)
    }

    /// Adds an interpolated value to a string's parts.
    pub(super) fn splice(
        &mut self,
        parts: &mut Vec<Part>,
        v: SExpr,
        text: &str,
        span: Span,
    ) -> bool {
        if let Some(j) = v.to_literal() {
            if j.is_array() || j.is_object() {
                self.d.error_help(
                    span,
                    format!(
                        "`${{{text}}}` is {} and cannot be part of a text",
                        describe_json(&j)
                    ),
                    "make the whole value `${...}`, or turn it into text with join(\", \", ...)",
                );
                return false;
            }
            push_lit(parts, super::super::expr::json_to_text(&j));
            return true;
        }
        match v.expr {
            Expr::Str(vparts) => {
                for p in vparts {
                    match p {
                        Part::Lit(l) => push_lit(parts, l),
                        other => parts.push(other),
                    }
                }
            }
            Expr::List(_) | Expr::Map(_) => {
                self.d.error_help(
                    span,
                    format!("`${{{text}}}` is a list and cannot be part of a text"),
                    "make the whole value `${...}`, or turn it into text with join(\", \", ...)",
                );
                return false;
            }
            _ => parts.push(Part::Value(Box::new(v))),
        }
        true
    }

    /// The addresses a `depends_on` entry names in this scope.
    pub(super) fn depends_on_addresses(&self, name: &str) -> Vec<String> {
        let full = format!("{}{name}", self.scope.prefix);
        match self.scope.names.get(name) {
            Some(Name::Resource { keys: Some(keys) }) => {
                keys.iter().map(|k| address::instance(&full, k)).collect()
            }
            Some(Name::Component { addresses, .. }) => addresses.clone(),
            // Waiting for what is disabled here is waiting for nothing.
            Some(Name::Disabled) => Vec::new(),
            _ => vec![full],
        }
    }

    /// The stack's `moved` entries.
    pub(super) fn moved(&mut self, node: Option<&Node>) -> Vec<Moved> {
        let mut out = Vec::new();
        let example = "write `moved: [{ from: old_name, to: new_name }]`";
        for item in self.list_items(node, "moved", example) {
            let Some(m) = self.mapping(item, "a `moved` entry") else {
                continue;
            };
            self.check_keys(m, &["from", "to"], "in a `moved` entry");
            let get = |this: &mut Self, key: &str| -> Option<Spanned<String>> {
                match m.get_node(key) {
                    Some(n) => {
                        let s = this.scalar(n, key)?.to_string();
                        if let Err(msg) = address::parse(&s) {
                            this.d.error_help(
                                span_of(n),
                                msg,
                                "write an address as plan shows it: `name`, `name[\"key\"]` or `component.name`",
                            );
                            return None;
                        }
                        Some(Spanned::new(s, span_of(n)))
                    }
                    None => {
                        this.d.error_help(
                            span_of_map(m),
                            format!("a `moved` entry needs `{key}`"),
                            "write `{ from: old_name, to: new_name }`",
                        );
                        None
                    }
                }
            };
            let from = get(self, "from");
            let to = get(self, "to");
            if let (Some(from), Some(to)) = (from, to) {
                out.push(Moved { from, to });
            }
        }
        out
    }
}

/// `stacks/../components/x.yaml` as `components/x.yaml`, for messages.
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        return PathBuf::from(".");
    }
    out.iter().collect()
}

fn reference(address: &str, attribute: &str, span: Span) -> SExpr {
    SExpr {
        expr: Expr::Str(vec![Part::Ref(Reference {
            address: address.to_string(),
            attribute: attribute.to_string(),
        })]),
        span,
    }
}

pub(super) fn push_lit(parts: &mut Vec<Part>, text: String) {
    match parts.last_mut() {
        Some(Part::Lit(l)) => l.push_str(&text),
        _ => parts.push(Part::Lit(text)),
    }
}

/// Names that `${...}` expressions under `node` start with (for ordering
/// component uses). Unparsable text is left to the reader to report.
fn collect_heads(node: &Node, out: &mut BTreeSet<String>) {
    match node {
        Node::Scalar(s) => {
            if let Ok(parts) = crate::expr::split_template(s.as_str()) {
                for p in parts {
                    if let crate::expr::RawPart::Expr(e) = p {
                        if let Ok(ast) = syntax::parse(&e) {
                            ast_heads(&ast, out);
                        }
                    }
                }
            }
        }
        Node::Sequence(seq) => seq.iter().for_each(|n| collect_heads(n, out)),
        Node::Mapping(m) => m.iter().for_each(|(_, v)| collect_heads(v, out)),
    }
}

fn ast_heads(ast: &Ast, out: &mut BTreeSet<String>) {
    match ast {
        Ast::Path { head, .. } => {
            out.insert(head.clone());
        }
        Ast::Call { args, .. } | Ast::List(args) => args.iter().for_each(|a| ast_heads(a, out)),
        _ => {}
    }
}

/// What is wrong with `value` for an input of type `ty` (`None`: fine or
/// not known before the apply).
fn input_type_problem(ty: &str, value: &SExpr) -> Option<&'static str> {
    let describe = match &value.expr {
        Expr::Null => "nothing (null)",
        Expr::Bool(_) => "a boolean",
        Expr::Int(_) | Expr::Float(_) => "a number",
        Expr::Str(_) => "a string",
        Expr::List(_) => "a list",
        Expr::Map(_) => "a mapping",
        Expr::Call(f, _) if f.returns_string() => "a string",
        Expr::Call(..) => return None,
    };
    let fits = match ty {
        "any" => true,
        "string" => matches!(
            value.expr,
            Expr::Str(_) | Expr::Int(_) | Expr::Float(_) | Expr::Bool(_) | Expr::Call(..)
        ),
        "number" => {
            matches!(value.expr, Expr::Int(_) | Expr::Float(_))
                || (value.sole_reference().is_some())
        }
        "bool" => matches!(value.expr, Expr::Bool(_)) || value.sole_reference().is_some(),
        "list" => matches!(value.expr, Expr::List(_)) || value.sole_reference().is_some(),
        "map" => matches!(value.expr, Expr::Map(_)) || value.sole_reference().is_some(),
        _ => true,
    };
    (!fits).then_some(describe)
}

fn describe_json(v: &Json) -> &'static str {
    match v {
        Json::Null => "nothing (null)",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a mapping",
    }
}
