//! Custom rules in Rego, the Open Policy Agent language, evaluated by
//! regorus (a Rego interpreter in Rust) in-process: no OPA binary, no
//! network.
//!
//! A policy is a `.rego` file whose package sits under `ralph` (`package
//! ralph.tagging`). Its `deny` rules give errors and its `warn` rules
//! warnings; each is a set of messages, or of objects
//! `{"msg": ..., "address": ...}` to place the finding on a resource. The
//! rule id of its findings is `policy.` and the package's last part
//! (`policy.tagging`), which waivers name like any built-in rule.
//!
//! The input document (docs/check-rules.md shows it):
//! `{stack, environment, date, resources: {ADDRESS: {kind, properties,
//! protect, depends_on}}, changes: [{address, kind, action}]}` with the
//! properties as `check` reads them (variables substituted, references kept
//! as `${address.attribute}` text) and `changes` only when a plan is judged.

use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

use super::Severity;
use ralph_core::model::Action;
use ralph_stack::Stack;

/// The policy files of one run, read and parsed once.
#[derive(Default, Clone)]
pub struct Policies {
    /// The parsed policies, cloned for each evaluation (no re-parsing).
    engine: Option<regorus::Engine>,
    /// `policy.<package>` for every package the files declare.
    pub rules: Vec<String>,
}

/// One finding of a custom rule, before it is located.
pub(super) struct Custom {
    pub rule: String,
    pub severity: Severity,
    pub address: Option<String>,
    pub message: String,
}

impl Policies {
    /// Reads `.rego` files: each path a file or a directory (its `.rego`
    /// files, sorted, not recursing into hidden directories).
    pub fn read(paths: &[PathBuf]) -> Result<Policies, String> {
        let mut files = Vec::new();
        for p in paths {
            collect(p, &mut files)?;
        }
        let mut rules = Vec::new();
        let mut engine = regorus::Engine::new();
        for (path, text) in &files {
            let package = engine
                .add_policy(path.display().to_string(), text.clone())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let name = package.strip_prefix("data.").unwrap_or(&package);
            let Some(rest) = name.strip_prefix("ralph.") else {
                return Err(format!(
                    "{}: package `{name}` is not under `ralph`: write `package ralph.NAME`, and its `deny` and `warn` rules become the rule `policy.NAME`",
                    path.display()
                ));
            };
            let id = format!("policy.{}", rest.rsplit('.').next().unwrap_or(rest));
            if !rules.contains(&id) {
                rules.push(id);
            }
        }
        Ok(Policies {
            engine: (!files.is_empty()).then_some(engine),
            rules,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.engine.is_none()
    }

    /// Evaluates every package's `deny` and `warn` over the input.
    pub(super) fn eval(&self, input: &Json) -> Result<Vec<Custom>, String> {
        let Some(mut engine) = self.engine.clone() else {
            return Ok(Vec::new());
        };
        let input = regorus::Value::from_json_str(&input.to_string()).map_err(|e| e.to_string())?;
        engine.set_input(input);
        let results = engine
            .eval_query("data.ralph".to_string(), false)
            .map_err(|e| format!("evaluating the policies: {e}"))?;
        let data = match results.result.first().and_then(|r| r.expressions.first()) {
            Some(x) => serde_json::from_str(&x.value.to_json_str().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?,
            None => Json::Null,
        };
        let mut out = Vec::new();
        walk(&data, &mut Vec::new(), &mut out)?;
        Ok(out)
    }
}

fn collect(p: &Path, files: &mut Vec<(PathBuf, String)>) -> Result<(), String> {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|e| {
                !e.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() || e.extension().is_some_and(|x| x == "rego") {
                collect(&e, files)?;
            }
        }
        Ok(())
    } else {
        let text = std::fs::read_to_string(p).map_err(|e| {
            format!(
                "{}: {e} (a policy is a .rego file or a directory of them)",
                p.display()
            )
        })?;
        files.push((p.to_path_buf(), text));
        Ok(())
    }
}

/// Finds `deny` and `warn` sets in the evaluated `data.ralph` tree.
fn walk(v: &Json, package: &mut Vec<String>, out: &mut Vec<Custom>) -> Result<(), String> {
    let Json::Object(map) = v else { return Ok(()) };
    for (key, value) in map {
        let severity = match key.as_str() {
            "deny" => Some(Severity::Error),
            "warn" => Some(Severity::Warning),
            _ => None,
        };
        match (severity, value) {
            (Some(severity), Json::Array(items)) => {
                let rule = format!("policy.{}", package.last().map_or("ralph", |s| s.as_str()));
                for item in items {
                    let (message, address) = match item {
                        Json::String(s) => (s.clone(), None),
                        Json::Object(o) => (
                            o.get("msg")
                                .and_then(Json::as_str)
                                .map(str::to_string)
                                .ok_or_else(|| {
                                    format!("{rule}: a finding object needs a `msg` string: {item}")
                                })?,
                            o.get("address").and_then(Json::as_str).map(str::to_string),
                        ),
                        other => {
                            return Err(format!("{rule}: `{key}` holds {other}, not a message"))
                        }
                    };
                    out.push(Custom {
                        rule: rule.clone(),
                        severity,
                        address,
                        message,
                    });
                }
            }
            (None, Json::Object(_)) => {
                package.push(key.clone());
                walk(value, package, out)?;
                package.pop();
            }
            _ => {}
        }
    }
    Ok(())
}

/// The input document of the policies.
pub(super) fn input(
    stack: &Stack,
    date: chrono::NaiveDate,
    plan: Option<&[(String, String, Action)]>,
) -> Json {
    let resources: serde_json::Map<String, Json> = stack
        .resources
        .values()
        .map(|r| {
            let properties: serde_json::Map<String, Json> = r
                .properties
                .keys()
                .filter_map(|k| Some((k.clone(), super::rules::sym(r, k)?)))
                .collect();
            (
                r.address.clone(),
                json!({
                    "kind": r.kind.kind,
                    "properties": properties,
                    "protect": r.protect,
                    "depends_on": r.depends_on.iter().map(|d| d.value.clone()).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let mut doc = json!({
        "stack": stack.name,
        "environment": stack.environment,
        "date": date.to_string(),
        "resources": resources,
    });
    if let Some(changes) = plan {
        doc["changes"] = changes
            .iter()
            .map(|(address, kind, action)| json!({ "address": address, "kind": kind, "action": action }))
            .collect();
    }
    doc
}
