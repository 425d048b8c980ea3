//! One attribute's change, as people read it: maps and lists element by
//! element (what is added, removed or changed; unchanged elements counted,
//! not printed), nested values indented, long strings wrapped rather than
//! cut, and colour when the output is a terminal.

use serde_json::Value as Json;

/// Values printed on one line up to this width; longer ones are opened up.
const INLINE: usize = 80;
/// Strings longer than this are wrapped onto continuation lines.
const WRAP: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Add,
    Remove,
    Change,
}

impl Mark {
    fn symbol(self) -> &'static str {
        match self {
            Mark::Add => "+",
            Mark::Remove => "-",
            Mark::Change => "~",
        }
    }

    /// ANSI colour: green, red, yellow.
    fn colour(self) -> &'static str {
        match self {
            Mark::Add => "32",
            Mark::Remove => "31",
            Mark::Change => "33",
        }
    }
}

/// Whether and how to colour.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    /// No colour (files, Markdown).
    pub fn plain() -> Style {
        Style { colour: false }
    }

    /// Colour on a terminal, unless NO_COLOR is set (https://no-color.org).
    pub fn for_stdout() -> Style {
        use std::io::IsTerminal;
        Style {
            colour: std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    pub fn mark(&self, m: Mark) -> String {
        self.paint(m, m.symbol())
    }

    pub fn paint(&self, m: Mark, s: &str) -> String {
        if self.colour {
            format!("\x1b[{}m{s}\x1b[0m", m.colour())
        } else {
            s.to_string()
        }
    }

    fn dim(&self, s: &str) -> String {
        if self.colour {
            format!("\x1b[2m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// A scalar or a short container on one line (`{ a = 1, b = "x" }`);
/// strings in full, quoted.
fn inline(v: &Json) -> String {
    match v {
        // A part of a value known only after apply (a plan's partly known list).
        Json::Object(m) if ralph_stack::expr::is_unknown(v) => format!(
            "(known after apply: {})",
            m.values().next().and_then(Json::as_str).unwrap_or_default()
        ),
        Json::Object(m) if m.is_empty() => "{}".into(),
        Json::Object(m) => format!(
            "{{ {} }}",
            m.iter()
                .map(|(k, v)| format!("{} = {}", key(k), inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Json::Array(a) => format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

/// A map key: bare when it is a plain identifier, quoted otherwise.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit())
    {
        k.to_string()
    } else {
        Json::String(k.to_string()).to_string()
    }
}

fn is_container(v: &Json) -> bool {
    matches!(v, Json::Object(m) if !m.is_empty() && !ralph_stack::expr::is_unknown(v))
        || matches!(v, Json::Array(a) if !a.is_empty())
}

/// Pushes `text` as lines at `indent`: a long string is wrapped with its
/// continuation lines indented further.
fn push_wrapped(out: &mut Vec<String>, indent: usize, head: &str, value: &str) {
    let pad = " ".repeat(indent);
    if value.chars().count() <= WRAP || !value.starts_with('"') {
        out.push(format!("{pad}{head}{value}"));
        return;
    }
    let chars: Vec<char> = value.chars().collect();
    let mut chunks = chars.chunks(WRAP).map(|c| c.iter().collect::<String>());
    out.push(format!("{pad}{head}{}", chunks.next().unwrap_or_default()));
    let cont = " ".repeat(indent + head.chars().count());
    for c in chunks {
        out.push(format!("{cont}{c}"));
    }
}

/// `name = value` for a value added or removed as a whole: containers that
/// do not fit on a line are opened up, every element marked.
fn whole(out: &mut Vec<String>, st: &Style, indent: usize, m: Mark, name: &str, v: &Json) {
    let text = inline(v);
    let head = format!("{} {name} = ", st.mark(m));
    if !is_container(v) || text.chars().count() + indent + name.len() <= INLINE {
        push_wrapped(out, indent, &head, &text);
        return;
    }
    let pad = " ".repeat(indent);
    match v {
        Json::Object(map) => {
            out.push(format!("{pad}{head}{{"));
            for (k, x) in map {
                whole(out, st, indent + 4, m, &key(k), x);
            }
            out.push(format!("{pad}  }}"));
        }
        Json::Array(items) => {
            out.push(format!("{pad}{head}["));
            for x in items {
                element(out, st, indent + 4, m, x);
            }
            out.push(format!("{pad}  ]"));
        }
        _ => {}
    }
}

/// A list element added or removed.
fn element(out: &mut Vec<String>, st: &Style, indent: usize, m: Mark, v: &Json) {
    let text = inline(v);
    let pad = " ".repeat(indent);
    if text.chars().count() + indent <= INLINE || !is_container(v) {
        push_wrapped(out, indent, &format!("{} ", st.mark(m)), &text);
        return;
    }
    match v {
        Json::Object(map) => {
            out.push(format!("{pad}{} {{", st.mark(m)));
            for (k, x) in map {
                whole(out, st, indent + 4, m, &key(k), x);
            }
            out.push(format!("{pad}  }},"));
        }
        _ => push_wrapped(out, indent, &format!("{} ", st.mark(m)), &text),
    }
}

fn hidden(out: &mut Vec<String>, st: &Style, indent: usize, n: usize, what: &str) {
    if n > 0 {
        let s = if n == 1 { "" } else { "s" };
        out.push(format!(
            "{}{}",
            " ".repeat(indent),
            st.dim(&format!("# ({n} unchanged {what}{s} hidden)"))
        ));
    }
}

/// The lines of one attribute's change at `indent`. `before`/`after` are
/// `None` when absent (create, delete); `known` is false when the new
/// value is known only after apply; `note` ends the first line.
pub fn attribute(
    st: &Style,
    indent: usize,
    name: &str,
    before: Option<&Json>,
    after: Option<&Json>,
    known: bool,
    note: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let pad = " ".repeat(indent);
    match (before, after) {
        (_, None) if !known => {
            let b = before
                .map(|b| format!("{} -> ", inline(b)))
                .unwrap_or_default();
            let m = if before.is_some() {
                Mark::Change
            } else {
                Mark::Add
            };
            out.push(format!(
                "{pad}{} {name} = {b}(known after apply){note}",
                st.mark(m)
            ));
        }
        (None, Some(a)) => whole(&mut out, st, indent, Mark::Add, name, a),
        (Some(b), None) => whole(&mut out, st, indent, Mark::Remove, name, b),
        (None, None) => {}
        (Some(Json::Object(b)), Some(Json::Object(a))) if !b.is_empty() && !a.is_empty() => {
            out.push(format!("{pad}{} {name} = {{{note}", st.mark(Mark::Change)));
            let mut same = 0;
            for (k, av) in a {
                match b.get(k) {
                    None => whole(&mut out, st, indent + 4, Mark::Add, &key(k), av),
                    Some(bv) if bv == av => same += 1,
                    Some(bv) if is_container(bv) && is_container(av) => out.extend(attribute(
                        st,
                        indent + 4,
                        &key(k),
                        Some(bv),
                        Some(av),
                        true,
                        "",
                    )),
                    Some(bv) => push_wrapped(
                        &mut out,
                        indent + 4,
                        &format!("{} {} = {} -> ", st.mark(Mark::Change), key(k), inline(bv)),
                        &inline(av),
                    ),
                }
            }
            for (k, bv) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                whole(&mut out, st, indent + 4, Mark::Remove, &key(k), bv);
            }
            hidden(&mut out, st, indent + 4, same, "element");
            out.push(format!("{pad}  }}"));
        }
        (Some(Json::Array(b)), Some(Json::Array(a))) if !b.is_empty() && !a.is_empty() => {
            out.push(format!("{pad}{} {name} = [{note}", st.mark(Mark::Change)));
            for x in b.iter().filter(|x| !a.contains(x)) {
                element(&mut out, st, indent + 4, Mark::Remove, x);
            }
            for x in a.iter().filter(|x| !b.contains(x)) {
                element(&mut out, st, indent + 4, Mark::Add, x);
            }
            let same = a.iter().filter(|x| b.contains(x)).count();
            if same == a.len() && a.len() == b.len() {
                out.push(format!(
                    "{pad}    {}",
                    st.dim("# (the same elements in another order)")
                ));
            } else {
                hidden(&mut out, st, indent + 4, same, "element");
            }
            out.push(format!("{pad}  ]"));
        }
        (Some(b), Some(a)) => push_wrapped(
            &mut out,
            indent,
            &format!("{} {name} = {} -> ", st.mark(Mark::Change), inline(b)),
            &format!("{}{note}", inline(a)),
        ),
    }
    // The note goes on the first line (containers put it after the brace).
    // (An unknown value's line already carries it.)
    if !note.is_empty() && known && matches!((before, after), (None, Some(_)) | (Some(_), None)) {
        if let Some(first) = out.first_mut() {
            first.push_str(note);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plain(name: &str, b: Option<Json>, a: Option<Json>) -> String {
        attribute(&Style::default(), 6, name, b.as_ref(), a.as_ref(), true, "").join("\n")
    }

    #[test]
    fn a_map_shows_only_the_changed_keys_and_counts_the_rest() {
        let text = plain(
            "tags",
            Some(json!({"Name": "web", "tier": "private", "team": "core", "old": "x"})),
            Some(json!({"Name": "web", "tier": "private-apps", "team": "core", "new": "y"})),
        );
        assert_eq!(
            text,
            [
                "      ~ tags = {",
                "          ~ tier = \"private\" -> \"private-apps\"",
                "          + new = \"y\"",
                "          - old = \"x\"",
                "          # (2 unchanged elements hidden)",
                "        }",
            ]
            .join("\n")
        );
    }

    #[test]
    fn a_list_shows_what_is_added_and_removed_keeping_key_order() {
        let rule = |port: u16| json!({"from_port": port, "to_port": port, "protocol": "tcp"});
        let text = plain(
            "egress",
            Some(json!([rule(443), rule(5432)])),
            Some(json!([rule(443), rule(6379)])),
        );
        assert!(
            text.contains("- { from_port = 5432, to_port = 5432, protocol = \"tcp\" }"),
            "{text}"
        );
        assert!(
            text.contains("+ { from_port = 6379, to_port = 6379,"),
            "{text}"
        );
        assert!(text.contains("# (1 unchanged element hidden)"), "{text}");
        assert!(
            !text.contains("443"),
            "unchanged elements are not printed: {text}"
        );
        let reordered = plain("ids", Some(json!(["a", "b"])), Some(json!(["b", "a"])));
        assert!(reordered.contains("another order"), "{reordered}");
    }

    #[test]
    fn long_strings_are_wrapped_in_full_not_cut() {
        let long = "x".repeat(250);
        let text = plain("policy", Some(json!("short")), Some(json!(long)));
        let xs: usize = text.chars().filter(|c| *c == 'x').count();
        assert_eq!(xs, 250, "{text}");
        assert!(text.lines().count() >= 3, "{text}");
        assert!(!text.contains("..."), "{text}");
    }

    #[test]
    fn nested_values_are_opened_up_on_create_and_unknowns_say_so() {
        let text = plain(
            "labels",
            None,
            Some(
                json!({"workload": "ralph-orchestrator", "team": "platform", "cost-center": "engineering-42"}),
            ),
        );
        assert!(text.starts_with("      + labels = {\n"), "{text}");
        assert!(
            text.contains("          + \"cost-center\" = \"engineering-42\""),
            "{text}"
        );
        let unknown = attribute(&Style::default(), 6, "vpc_id", None, None, false, "").join("\n");
        assert_eq!(unknown, "      + vpc_id = (known after apply)");
    }

    #[test]
    fn colour_only_when_asked() {
        let plain = attribute(
            &Style::default(),
            0,
            "n",
            Some(&json!(1)),
            Some(&json!(2)),
            true,
            "",
        );
        assert!(!plain.join("").contains('\x1b'));
        let coloured = attribute(
            &Style { colour: true },
            0,
            "n",
            Some(&json!(1)),
            Some(&json!(2)),
            true,
            "",
        );
        assert!(
            coloured.join("").contains("\x1b[33m~\x1b[0m"),
            "{coloured:?}"
        );
    }
}
