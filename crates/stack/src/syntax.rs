//! The expression language inside `${ ... }`: references (`vpc.id`,
//! `private["a"].id`, `private[*].id`, `var.zones`, `input.host`,
//! `each.key`, `each.value.cidr`), literals (`"text"`, `8`, `true`) and
//! function calls (`cidrsubnet(var.cidr, 8, 1)`). Parsing is separate from
//! meaning: the loader decides what a name refers to in its scope.

/// One parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// `head.step.step...`
    Path {
        head: String,
        steps: Vec<Step>,
    },
    Call {
        name: String,
        args: Vec<Ast>,
    },
    List(Vec<Ast>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `.name`
    Attr(String),
    /// `["key"]`
    Key(String),
    /// `[0]`
    Index(i64),
    /// `[*]`
    Splat,
    /// `[each.key]`: a key computed from a known value.
    Dyn(Box<Ast>),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Attr(a) => write!(f, ".{a}"),
            Step::Key(k) => write!(f, "[{k:?}]"),
            Step::Index(i) => write!(f, "[{i}]"),
            Step::Splat => write!(f, "[*]"),
            Step::Dyn(_) => write!(f, "[...]"),
        }
    }
}

/// Parses the text between `${` and `}`.
pub fn parse(text: &str) -> Result<Ast, String> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
    };
    let ast = p.expr(0)?;
    p.skip_ws();
    if p.pos < p.chars.len() {
        return Err(format!(
            "unexpected `{}` after `{}`",
            p.chars[p.pos..].iter().collect::<String>(),
            p.chars[..p.pos].iter().collect::<String>().trim()
        ));
    }
    Ok(ast)
}

/// Expressions nest at most this deep (calls in calls, lists in lists).
const MAX_NESTING: usize = 32;

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(match self.peek() {
                Some(found) => format!("expected `{c}` {what}, found `{found}`"),
                None => format!("expected `{c}` {what}, found the end of the expression"),
            })
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.skip_ws();
        let start = self.pos;
        if !self
            .peek()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        {
            return None;
        }
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.pos += 1;
        }
        Some(self.chars[start..self.pos].iter().collect())
    }

    fn string(&mut self) -> Result<String, String> {
        // The opening quote is consumed by the caller.
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("a string is not closed by `\"`".into()),
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some(c @ ('"' | '\\')) => out.push(c),
                        other => {
                            return Err(format!(
                                "unknown escape `\\{}` in a string",
                                other.map(String::from).unwrap_or_default()
                            ))
                        }
                    }
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn number(&mut self) -> Result<Ast, String> {
        let start = self.pos;
        if self.peek() == Some('-') {
            self.pos += 1;
        }
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_digit() || c == '.' || c == '_')
        {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos]
            .iter()
            .filter(|c| **c != '_')
            .collect();
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Ast::Int(i));
        }
        text.parse::<f64>()
            .map(Ast::Float)
            .map_err(|_| format!("`{text}` is not a number"))
    }

    fn expr(&mut self, depth: usize) -> Result<Ast, String> {
        if depth > MAX_NESTING {
            return Err(format!(
                "the expression nests more than {MAX_NESTING} levels deep"
            ));
        }
        self.skip_ws();
        match self.peek() {
            None => Err("the expression is empty".into()),
            Some('"') => {
                self.pos += 1;
                Ok(Ast::Str(self.string()?))
            }
            Some(c) if c.is_ascii_digit() || c == '-' => self.number(),
            Some('[') => {
                self.pos += 1;
                let mut items = Vec::new();
                if !self.eat(']') {
                    loop {
                        items.push(self.expr(depth + 1)?);
                        if self.eat(']') {
                            break;
                        }
                        self.expect(',', "between list items")?;
                    }
                }
                Ok(Ast::List(items))
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let head = self.ident().unwrap_or_default();
                if self.eat('(') {
                    let mut args = Vec::new();
                    if !self.eat(')') {
                        loop {
                            args.push(self.expr(depth + 1)?);
                            if self.eat(')') {
                                break;
                            }
                            self.expect(',', &format!("between the arguments of `{head}`"))?;
                        }
                    }
                    return Ok(Ast::Call { name: head, args });
                }
                match head.as_str() {
                    "true" => return Ok(Ast::Bool(true)),
                    "false" => return Ok(Ast::Bool(false)),
                    _ => {}
                }
                let mut steps = Vec::new();
                loop {
                    if self.eat('.') {
                        match self.ident() {
                            Some(a) => steps.push(Step::Attr(a)),
                            None => return Err(format!("expected a name after `{head}.`")),
                        }
                    } else if self.eat('[') {
                        self.skip_ws();
                        let step = match self.peek() {
                            Some('*') => {
                                self.pos += 1;
                                Step::Splat
                            }
                            Some('"') => {
                                self.pos += 1;
                                Step::Key(self.string()?)
                            }
                            Some(c) if c.is_ascii_digit() => match self.number()? {
                                Ast::Int(i) => Step::Index(i),
                                _ => return Err("an index must be a whole number".into()),
                            },
                            Some(c) if c.is_ascii_alphabetic() => {
                                Step::Dyn(Box::new(self.expr(depth + 1)?))
                            }
                            _ => {
                                return Err(format!(
                                    "expected `\"key\"`, a number or `*` inside `[` after `{head}`"
                                ))
                            }
                        };
                        self.expect(']', "to close the index")?;
                        steps.push(step);
                    } else {
                        break;
                    }
                }
                Ok(Ast::Path { head, steps })
            }
            Some(c) => Err(format!("unexpected `{c}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(head: &str, steps: Vec<Step>) -> Ast {
        Ast::Path {
            head: head.into(),
            steps,
        }
    }

    #[test]
    fn parses_references_indexes_and_splats() {
        assert_eq!(
            parse("vpc.id").unwrap(),
            path("vpc", vec![Step::Attr("id".into())])
        );
        assert_eq!(
            parse(r#"private["a"].id"#).unwrap(),
            path(
                "private",
                vec![Step::Key("a".into()), Step::Attr("id".into())]
            )
        );
        assert_eq!(
            parse("private[*].id").unwrap(),
            path("private", vec![Step::Splat, Step::Attr("id".into())])
        );
        assert_eq!(
            parse("var.zones[0]").unwrap(),
            path("var", vec![Step::Attr("zones".into()), Step::Index(0)])
        );
    }

    #[test]
    fn parses_calls_with_nested_arguments() {
        assert_eq!(
            parse(r#"cidrsubnet(var.cidr, 8, 10)"#).unwrap(),
            Ast::Call {
                name: "cidrsubnet".into(),
                args: vec![
                    path("var", vec![Step::Attr("cidr".into())]),
                    Ast::Int(8),
                    Ast::Int(10)
                ]
            }
        );
        assert_eq!(
            parse(r#"join(",", ["a", "b\"c"])"#).unwrap(),
            Ast::Call {
                name: "join".into(),
                args: vec![
                    Ast::Str(",".into()),
                    Ast::List(vec![Ast::Str("a".into()), Ast::Str("b\"c".into())])
                ]
            }
        );
    }

    #[test]
    fn refuses_malformed_expressions_with_a_message() {
        for bad in [
            "",
            "vpc.",
            "f(1,",
            "a[",
            "a[%]",
            "\"open",
            "vpc.id extra",
            "#",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        let deep = format!("{}1{}", "f(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).unwrap_err().contains("nests"));
    }
}
