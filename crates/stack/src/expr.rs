//! Property values as written in a stack: literals, lists, mappings and
//! strings with `${address.attribute}` references. Variables are substituted
//! while loading, so only references to other resources remain here.

use serde_json::Value as Json;

use super::diag::{Span, Spanned};
use super::functions::Func;

#[derive(Debug, Clone, PartialEq)]
pub struct SExpr {
    pub expr: Expr,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string; `parts` has a single literal when there is no reference.
    Str(Vec<Part>),
    List(Vec<SExpr>),
    Map(Vec<(Spanned<String>, SExpr)>),
    /// A function call with an argument not known before the apply
    /// (calls on known values are evaluated while loading).
    Call(Func, Vec<SExpr>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Lit(String),
    Ref(Reference),
    /// Any other value interpolated into text (a call, a list of references).
    Value(Box<SExpr>),
}

/// `${address.attribute}`: an attribute of another resource in the stack.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Reference {
    pub address: String,
    pub attribute: String,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "${{{}.{}}}", self.address, self.attribute)
    }
}

/// A piece of a string template before variables are substituted.
#[derive(Debug, Clone, PartialEq)]
pub enum RawPart {
    Lit(String),
    /// The text between `${` and `}`, trimmed.
    Expr(String),
}

/// Splits `text` into literal text and `${...}` expressions. `$${` writes a
/// literal `${`. Returns a message on an unclosed `${`.
pub fn split_template(text: &str) -> Result<Vec<RawPart>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        lit.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if after.starts_with("$${") {
            lit.push_str("${");
            rest = &after[3..];
        } else if let Some(body) = after.strip_prefix("${") {
            let Some(end) = body.find('}') else {
                return Err("`${` is not closed by `}`".into());
            };
            if !lit.is_empty() {
                parts.push(RawPart::Lit(std::mem::take(&mut lit)));
            }
            parts.push(RawPart::Expr(body[..end].trim().to_string()));
            rest = &body[end + 1..];
        } else {
            lit.push('$');
            rest = &after[1..];
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() || parts.is_empty() {
        parts.push(RawPart::Lit(lit));
    }
    Ok(parts)
}

impl SExpr {
    pub fn literal_str(&self) -> Option<&str> {
        match &self.expr {
            Expr::Str(parts) if parts.len() == 1 => match &parts[0] {
                Part::Lit(s) => Some(s),
                Part::Ref(_) | Part::Value(_) => None,
            },
            _ => None,
        }
    }

    /// The whole value is a single reference, so it takes the referenced type.
    pub fn sole_reference(&self) -> Option<&Reference> {
        match &self.expr {
            Expr::Str(parts) if parts.len() == 1 => match &parts[0] {
                Part::Ref(r) => Some(r),
                Part::Lit(_) | Part::Value(_) => None,
            },
            _ => None,
        }
    }

    pub fn collect_references(&self, out: &mut Vec<(Reference, Span)>) {
        match &self.expr {
            Expr::Str(parts) => {
                for p in parts {
                    match p {
                        Part::Ref(r) => out.push((r.clone(), self.span)),
                        Part::Value(v) => v.collect_references(out),
                        Part::Lit(_) => {}
                    }
                }
            }
            Expr::List(items) | Expr::Call(_, items) => {
                items.iter().for_each(|i| i.collect_references(out))
            }
            Expr::Map(entries) => entries.iter().for_each(|(_, v)| v.collect_references(out)),
            _ => {}
        }
    }

    /// The value with no reference resolved, when it has none.
    pub fn to_literal(&self) -> Option<Json> {
        self.evaluate(&|_| None)
    }

    /// Evaluates the value; `None` when a reference is not known yet (the
    /// resource will only be created or replaced by the apply).
    pub fn evaluate(&self, lookup: &dyn Fn(&Reference) -> Option<Json>) -> Option<Json> {
        Some(match &self.expr {
            Expr::Null => Json::Null,
            Expr::Bool(b) => Json::Bool(*b),
            Expr::Int(i) => Json::from(*i),
            Expr::Float(f) => serde_json::Number::from_f64(*f)
                .map(Json::Number)
                .unwrap_or(Json::Null),
            Expr::Str(parts) => {
                if let [Part::Ref(r)] = parts.as_slice() {
                    return lookup(r);
                }
                let mut s = String::new();
                for p in parts {
                    match p {
                        Part::Lit(l) => s.push_str(l),
                        Part::Ref(r) => s.push_str(&json_to_text(&lookup(r)?)),
                        Part::Value(v) => s.push_str(&json_to_text(&v.evaluate(lookup)?)),
                    }
                }
                Json::String(s)
            }
            Expr::Call(f, args) => {
                let args = args
                    .iter()
                    .map(|a| a.evaluate(lookup))
                    .collect::<Option<Vec<_>>>()?;
                // Argument types were checked while loading where known; a
                // call that still fails has no value to give.
                f.call(&args).ok()?
            }
            Expr::List(items) => Json::Array(
                items
                    .iter()
                    .map(|i| i.evaluate(lookup))
                    .collect::<Option<Vec<_>>>()?,
            ),
            Expr::Map(entries) => {
                let mut m = serde_json::Map::new();
                for (k, v) in entries {
                    m.insert(k.value.clone(), v.evaluate(lookup)?);
                }
                Json::Object(m)
            }
        })
    }
}

/// The key of the marker [`SExpr::evaluate_partial`] puts where a value is
/// known only after apply: `{"$unknown": "nodes_sg.id"}`.
pub const UNKNOWN_MARKER: &str = "$unknown";

impl SExpr {
    /// Like [`SExpr::evaluate`], but a value that is not known yet stays a
    /// marker naming what it waits for, and the rest of a list or map is
    /// still given: a plan shows every rule's port and range although one
    /// field of each is known only after apply.
    pub fn evaluate_partial(&self, lookup: &dyn Fn(&Reference) -> Option<Json>) -> Json {
        let unknown = |what: String| {
            let mut m = serde_json::Map::new();
            m.insert(UNKNOWN_MARKER.into(), Json::String(what));
            Json::Object(m)
        };
        match &self.expr {
            Expr::List(items) => {
                Json::Array(items.iter().map(|i| i.evaluate_partial(lookup)).collect())
            }
            Expr::Map(entries) => Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.value.clone(), v.evaluate_partial(lookup)))
                    .collect(),
            ),
            _ => self.evaluate(lookup).unwrap_or_else(|| {
                let mut refs = Vec::new();
                self.collect_references(&mut refs);
                let names: Vec<String> = refs
                    .iter()
                    .map(|(r, _)| format!("{}.{}", r.address, r.attribute))
                    .collect();
                unknown(names.join(", "))
            }),
        }
    }
}

/// Whether `v` (from [`SExpr::evaluate_partial`]) has anything known in it
/// beyond markers.
pub fn partly_known(v: &Json) -> bool {
    match v {
        Json::Object(_) if is_unknown(v) => false,
        Json::Object(m) => m.values().any(partly_known) || m.is_empty(),
        Json::Array(a) => a.iter().any(partly_known) || a.is_empty(),
        _ => true,
    }
}

/// Whether `v` is the marker of a value known only after apply.
pub fn is_unknown(v: &Json) -> bool {
    matches!(v, Json::Object(m) if m.len() == 1 && m.get(UNKNOWN_MARKER).is_some_and(Json::is_string))
}

/// How a value reads when interpolated into a string.
pub use ralph_core::model::json_to_text;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_templates() {
        assert_eq!(
            split_template("plain").unwrap(),
            vec![RawPart::Lit("plain".into())]
        );
        assert_eq!(
            split_template("a-${ var.x }-b").unwrap(),
            vec![
                RawPart::Lit("a-".into()),
                RawPart::Expr("var.x".into()),
                RawPart::Lit("-b".into())
            ]
        );
        assert_eq!(
            split_template("$${not}").unwrap(),
            vec![RawPart::Lit("${not}".into())]
        );
        assert_eq!(
            split_template("cost $5").unwrap(),
            vec![RawPart::Lit("cost $5".into())]
        );
        assert!(split_template("${open").is_err());
    }
}
