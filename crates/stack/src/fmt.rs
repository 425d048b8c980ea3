//! `ralph-deploy fmt`: the canonical layout of stack and component files,
//! with the author's comments, order and quoting kept.
//!
//! It works on lines, not on a re-serialised document (which would drop
//! comments): indentation becomes two spaces per nesting level, trailing
//! whitespace goes, runs of blank lines become one, the file ends with one
//! newline, and a whole-line comment takes the indentation of the line it
//! describes. Block scalars (`|`, `>`) and flow collections that span lines
//! move with their owner, their own layout untouched.
//!
//! Every result is checked: the formatted text must parse to the same YAML
//! value as the original. When it does not (a layout this does not
//! understand), the file is left as it is and the caller is told why.

/// Whether `text` is a stack or component file (a YAML mapping with
/// `resources` or `components`): what `fmt` formats when it searches a
/// directory, leaving workflows, manifests and templates alone.
pub fn is_stack_or_component(text: &str) -> bool {
    matches!(
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text),
        Ok(serde_yaml_ng::Value::Mapping(m))
            if m.contains_key("resources") || m.contains_key("components")
    )
}

/// Formats `text`. `Err` names why the file is left as it is.
pub fn format(text: &str) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::new();
    // Indentation widths of the open levels, in the original.
    let mut levels: Vec<usize> = vec![0];
    // A block scalar or a multi-line flow collection: lines indented past
    // `owner` (or until the brackets close) move by `shift`.
    let mut carry: Option<(usize, isize)> = None;
    let mut open_brackets: i32 = 0;
    let mut pending_comments: Vec<&str> = Vec::new();
    let mut blank = false;

    let indent_of = |l: &str| l.len() - l.trim_start_matches(' ').len();
    for raw in &lines {
        if raw.contains('\t') && raw.trim_start().starts_with('\t') {
            return Err("a line is indented with a tab".into());
        }
        let line = raw.trim_end();
        let ind = indent_of(line);
        // Inside a block scalar: keep the content's own layout (blank lines
        // included), moved with its owner.
        if let Some((owner, shift)) = carry {
            if open_brackets > 0 || line.is_empty() || ind > owner {
                open_brackets += brackets(line);
                if line.is_empty() {
                    out.push(String::new());
                } else {
                    let new = (ind as isize + shift).max(0) as usize;
                    out.push(format!("{}{}", " ".repeat(new), &line[ind..]));
                }
                continue;
            }
            carry = None;
            open_brackets = 0;
            // Blank lines the scalar's end took along stay blank lines.
            while out.last().is_some_and(|l| l.is_empty()) {
                out.pop();
                blank = true;
            }
        }
        if line.is_empty() {
            if !out.is_empty() || !pending_comments.is_empty() {
                blank = true;
            }
            continue;
        }
        if line.trim_start().starts_with('#') {
            if blank && !pending_comments.is_empty() {
                pending_comments.push("");
            } else if blank && !out.is_empty() {
                out.push(String::new());
            }
            blank = false;
            pending_comments.push(line.trim_start());
            continue;
        }
        if line == "---" || line == "..." {
            return Err("several documents in one file".into());
        }
        let top = |l: &[usize]| l.last().copied().unwrap_or(0);
        while levels.len() > 1 && ind < top(&levels) {
            levels.pop();
        }
        if ind > top(&levels) {
            levels.push(ind);
        } else if ind != top(&levels) {
            return Err(format!(
                "a line is indented by {ind}, which matches no enclosing level: `{}`",
                line.trim()
            ));
        }
        let depth = levels.len() - 1;
        let new_ind = depth * 2;
        // Comments first (a blank line before them was placed when they
        // were read), then the blank line between them and this line.
        for c in pending_comments.drain(..) {
            if c.is_empty() {
                out.push(String::new());
            } else {
                out.push(format!("{}{c}", " ".repeat(new_ind)));
            }
        }
        if blank && !out.is_empty() {
            out.push(String::new());
        }
        blank = false;
        let content = &line[ind..];
        out.push(format!("{}{content}", " ".repeat(new_ind)));
        let shift = new_ind as isize - ind as isize;
        // What follows this line and belongs to it: a block scalar, or the
        // rest of a flow collection.
        let b = brackets(content);
        if opens_block_scalar(content) || b > 0 {
            carry = Some((ind, shift));
            open_brackets = b;
            // An item's block scalar (`- |`) is owned by the item's level.
        }
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    for c in pending_comments.drain(..) {
        out.push(c.to_string());
    }
    let mut formatted = out.join("\n");
    formatted.push('\n');
    let before: Result<serde_yaml_ng::Value, _> = serde_yaml_ng::from_str(text);
    let after: Result<serde_yaml_ng::Value, _> = serde_yaml_ng::from_str(&formatted);
    match (before, after) {
        (Ok(a), Ok(b)) if a == b => Ok(formatted),
        (Err(e), _) => Err(format!("it is not valid YAML: {e}")),
        _ => Err("its layout is one fmt does not know how to keep; nothing was changed".into()),
    }
}

/// `[`/`{` minus `]`/`}` outside quotes and comments.
fn brackets(s: &str) -> i32 {
    let mut n = 0;
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '#' if prev == ' ' => break,
                '[' | '{' => n += 1,
                ']' | '}' => n -= 1,
                _ => {}
            },
        }
        prev = c;
    }
    n
}

/// `key: |`, `key: >-`, `- |2` and the like.
fn opens_block_scalar(content: &str) -> bool {
    let s = content.split(" #").next().unwrap_or(content).trim_end();
    let last = s.rsplit([' ', ':']).next().unwrap_or("");
    let after_marker =
        s.ends_with(&format!(": {last}")) || s.ends_with(&format!("- {last}")) || s == last;
    after_marker
        && (last.starts_with('|') || last.starts_with('>'))
        && last[1..]
            .chars()
            .all(|c| matches!(c, '-' | '+' | '1'..='9'))
}

#[cfg(test)]
mod tests {
    use super::format;

    #[test]
    fn levels_become_two_spaces_and_comments_follow_their_line() {
        let messy = "name: x   \nresources:\n    vpc:\n        kind: aws.vpc\n      # the range\n        properties:\n            cidr_block: 10.0.0.0/16\n\n\n\n    list:\n    - a\n    - b:   1\n      c: 2\n";
        let want = "name: x\nresources:\n  vpc:\n    kind: aws.vpc\n    # the range\n    properties:\n      cidr_block: 10.0.0.0/16\n\n  list:\n  - a\n  - b:   1\n    c: 2\n";
        assert_eq!(format(messy).unwrap(), want);
        assert_eq!(format(want).unwrap(), want, "formatting is idempotent");
    }

    #[test]
    fn block_scalars_and_flow_collections_keep_their_own_layout() {
        let messy = "a:\n    script: |\n      line one\n\n        indented more\n    flow: [1,\n           2]\n    after: >-\n       folded\n    z: 1";
        let out = format(messy).unwrap();
        assert_eq!(
            out,
            "a:\n  script: |\n    line one\n\n      indented more\n  flow: [1,\n         2]\n  after: >-\n     folded\n  z: 1\n"
        );
    }

    #[test]
    fn blank_lines_around_comments_stay_where_they_were() {
        let t = "a: 1\n\n# about b\n# more\n\nb: 2\n";
        assert_eq!(format(t).unwrap(), t);
    }

    #[test]
    fn what_it_cannot_keep_is_refused_not_changed() {
        assert!(format("a:\n  b: 1\n c: 2\n").is_err());
        assert!(format("a: [1, 2\n").is_err());
    }
}
