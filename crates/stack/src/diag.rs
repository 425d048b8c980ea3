//! Diagnostics for stack files: every problem carries the file, line and
//! column it comes from, a message saying what is wrong, and help saying what
//! to do. They are rendered with miette at the edge (CLI) or as JSON.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

/// Where a value sits in a stack file or a component file. Lines and
/// columns are 1-based; `offset` counts characters from the start of the
/// file; `file` indexes the [`SourceFile`]s of the load (0: the stack file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub file: u32,
    pub offset: usize,
    pub line: usize,
    pub column: usize,
    pub len: usize,
}

impl Span {
    pub fn from_marked(span: &marked_yaml::Span) -> Span {
        match span.start() {
            Some(start) => {
                let len = span
                    .end()
                    .map(|end| end.character().saturating_sub(start.character()))
                    .unwrap_or(0);
                Span {
                    file: start.source() as u32,
                    offset: start.character(),
                    line: start.line(),
                    column: start.column(),
                    len,
                }
            }
            None => Span::default(),
        }
    }

    pub fn from_marker(m: &marked_yaml::Marker) -> Span {
        Span {
            file: m.source() as u32,
            offset: m.character(),
            line: m.line(),
            column: m.column(),
            len: 0,
        }
    }
}

/// A value together with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

/// One file a stack was loaded from: the stack file, or a component file
/// as one use of it brought it in.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: String,
    pub source: Arc<str>,
    /// For a component file: which use brought it in, such as "component
    /// `app` used at stacks/prod.yaml:40:3".
    pub via: Option<String>,
}

/// One problem in a stack file.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// For a problem in a component file: the use that brought it in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(skip)]
    pub span: Span,
    /// The source around it holds a secret: never shown as a snippet.
    #[serde(skip)]
    pub redact: bool,
    /// About the file as a whole (it cannot be read): shown without a
    /// position, which would point at nothing.
    #[serde(skip)]
    pub whole_file: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.whole_file {
            write!(f, "{}: {}", self.file, self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )?;
        }
        if let Some(via) = &self.via {
            write!(f, " (in {via})")?;
        }
        if let Some(help) = &self.help {
            write!(f, " (help: {help})")?;
        }
        Ok(())
    }
}

/// Collects problems while loading and validating one stack file, so that a
/// user sees all of them at once instead of one per run.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    /// The stack file.
    pub file: String,
    /// Every file of the load; `Span::file` indexes it.
    pub files: Arc<Vec<SourceFile>>,
    pub problems: Vec<Problem>,
}

impl Diagnostics {
    pub fn new(file: &Path, source: Arc<str>) -> Self {
        let path = file.display().to_string();
        Diagnostics {
            file: path.clone(),
            files: Arc::new(vec![SourceFile {
                path,
                source,
                via: None,
            }]),
            problems: Vec::new(),
        }
    }

    /// Diagnostics over the files of one load.
    pub fn with_files(files: Arc<Vec<SourceFile>>) -> Self {
        Diagnostics {
            file: files.first().map(|f| f.path.clone()).unwrap_or_default(),
            files,
            problems: Vec::new(),
        }
    }

    /// Registers another file (a component file for one of its uses); its
    /// index is the source id to parse it with.
    pub fn add_file(&mut self, file: SourceFile) -> u32 {
        let files = Arc::make_mut(&mut self.files);
        files.push(file);
        (files.len() - 1) as u32
    }

    fn file_of(&self, span: Span) -> &SourceFile {
        self.files
            .get(span.file as usize)
            .unwrap_or_else(|| &self.files[0])
    }

    /// The text of the stack file.
    pub fn source(&self) -> &Arc<str> {
        &self.files[0].source
    }

    pub fn error(&mut self, span: Span, message: impl Into<String>) {
        self.push(span, message.into(), None);
    }

    pub fn error_help(&mut self, span: Span, message: impl Into<String>, help: impl Into<String>) {
        self.push(span, message.into(), Some(help.into()));
    }

    /// A problem reported by location only, never with a snippet: the line
    /// holds a secret (a password in a URL), or there is no text to show.
    pub fn error_no_snippet(
        &mut self,
        span: Span,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(span, message.into(), Some(help.into()));
        if let Some(p) = self.problems.last_mut() {
            p.redact = true;
        }
    }

    /// A problem with the file as a whole: it cannot be read.
    pub fn file_error(&mut self, message: impl Into<String>, help: impl Into<String>) {
        self.push(Span::default(), message.into(), Some(help.into()));
        if let Some(p) = self.problems.last_mut() {
            p.redact = true;
            p.whole_file = true;
        }
    }

    fn push(&mut self, span: Span, message: String, help: Option<String>) {
        // A message quotes what the user wrote; a hostile file can make that
        // huge. Keep messages readable whatever the input.
        let message = shorten(&message, MAX_MESSAGE_CHARS);
        let help = help.map(|h| shorten(&h, MAX_MESSAGE_CHARS));
        let (line, column) = if span.line == 0 {
            (1, 1)
        } else {
            (span.line, span.column)
        };
        let file = self.file_of(span);
        self.problems.push(Problem {
            file: file.path.clone(),
            line,
            column,
            message,
            help,
            via: file.via.clone(),
            span,
            redact: false,
            whole_file: false,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// Problems in source order, each once.
    pub fn sorted(mut self) -> Self {
        self.problems.sort_by(|a, b| {
            (a.span.file, a.line, a.column, &a.message).cmp(&(
                b.span.file,
                b.line,
                b.column,
                &b.message,
            ))
        });
        self.problems.dedup_by(|a, b| {
            a.span.file == b.span.file
                && a.line == b.line
                && a.column == b.column
                && a.message == b.message
        });
        self
    }

    /// Renders every problem with a source snippet (a plain line where the
    /// snippet would be unreadable: very long source lines).
    pub fn render(&self) -> String {
        use miette::{GraphicalReportHandler, GraphicalTheme, NamedSource};
        let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
            .with_context_lines(1);
        let mut out = String::new();
        for p in &self.problems {
            if p.redact || !self.snippet_is_readable(p) {
                out.push_str(&format!("  x {p}\n\n"));
                continue;
            }
            let source = &self.file_of(p.span).source;
            let byte_offset = char_to_byte(source, p.span.offset);
            let byte_len = char_to_byte(&source[byte_offset..], p.span.len.max(1)).max(1);
            let via = p
                .via
                .as_ref()
                .map(|v| format!(" (in {v})"))
                .unwrap_or_default();
            let diag = RenderedProblem {
                message: format!("{}:{}:{}: {}{via}", p.file, p.line, p.column, p.message),
                help: p.help.clone(),
                src: NamedSource::new(&p.file, source.to_string()),
                at: miette::SourceSpan::new(
                    byte_offset.into(),
                    byte_len.min(source.len().saturating_sub(byte_offset)),
                ),
            };
            // The renderer is a library: should it ever fail on some input,
            // the problem is still reported, as a plain line.
            let mut one = String::new();
            let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handler.render_report(&mut one, &diag)
            }));
            match rendered {
                Ok(Ok(())) => out.push_str(&one),
                _ => out.push_str(&format!("  x {p}\n\n")),
            }
        }
        out
    }

    /// Whether the lines around the problem are short enough to show.
    fn snippet_is_readable(&self, p: &Problem) -> bool {
        if p.span.len > MAX_SNIPPET_LINE_CHARS {
            return false;
        }
        let line = p.line.max(1);
        self.file_of(p.span)
            .source
            .lines()
            .skip(line.saturating_sub(2))
            .take(3)
            .all(|l| l.len() <= MAX_SNIPPET_LINE_CHARS)
    }
}

/// Longer messages are cut in the middle.
const MAX_MESSAGE_CHARS: usize = 600;
/// Source lines longer than this are not shown as a snippet.
const MAX_SNIPPET_LINE_CHARS: usize = 400;

/// `text` cut to at most `max` characters, keeping both ends.
pub fn shorten(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    let keep = max.saturating_sub(40) / 2;
    let head: String = text.chars().take(keep).collect();
    let tail: String = text.chars().skip(n - keep).collect();
    format!("{head}...({} characters left out)...{tail}", n - 2 * keep)
}

fn char_to_byte(s: &str, chars: usize) -> usize {
    s.char_indices()
        .nth(chars)
        .map(|(i, _)| i)
        .unwrap_or(s.len())
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
struct RenderedProblem {
    message: String,
    #[help]
    help: Option<String>,
    #[source_code]
    src: miette::NamedSource<String>,
    #[label("here")]
    at: miette::SourceSpan,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
