//! Diagnostics: what is wrong, where, and how to fix it; rendered as text, JSON or GitHub
//! workflow annotations.

use std::fmt::Write as _;

use annotate_snippets::renderer::DecorStyle;
use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::Serialize;

use crate::codes::Code;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; never fails validation.
    Warning,
    /// The plan is invalid.
    Error,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// A place in the source: 1-based line and column (in characters), and the byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Byte offset of the start.
    #[serde(skip)]
    pub start: usize,
    /// Byte offset one past the end.
    #[serde(skip)]
    pub end: usize,
}

/// One problem found in a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Stable code.
    pub code: &'static Code,
    /// Severity (usually the code's default).
    pub severity: Severity,
    /// What is wrong, naming the field.
    pub message: String,
    /// JSON pointer to the offending value (`""` for the whole document).
    pub pointer: String,
    /// Where it is in the file, when known.
    pub span: Option<Span>,
    /// How to fix it, when there is more to say than the message.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic with the code's default severity and no position yet.
    pub fn new(code: &'static Code, pointer: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: code.severity,
            message: message.into(),
            pointer: pointer.into(),
            span: None,
            help: None,
        }
    }

    /// Adds a hint on how to fix it.
    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Sets the position.
    pub fn at(mut self, span: Option<Span>) -> Diagnostic {
        self.span = span;
        self
    }
}

/// The JSON form of one diagnostic.
#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    severity: Severity,
    code: &'a str,
    name: &'a str,
    message: &'a str,
    line: Option<usize>,
    column: Option<usize>,
    pointer: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    help: Option<&'a str>,
}

impl Diagnostic {
    /// The JSON form: `{severity, code, name, message, line, column, pointer, help}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(JsonDiagnostic {
            severity: self.severity,
            code: self.code.id,
            name: self.code.name,
            message: &self.message,
            line: self.span.map(|s| s.line),
            column: self.span.map(|s| s.column),
            pointer: &self.pointer,
            help: self.help.as_deref(),
        })
        .unwrap_or_default()
    }

    /// A GitHub Actions workflow command (`::error file=…,line=…,col=…,title=…::…`).
    pub fn to_github(&self, path: &str) -> String {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!("::{kind} file={}", github_property(path));
        if let Some(span) = self.span {
            let _ = write!(out, ",line={},col={}", span.line, span.column);
        }
        let _ = write!(
            out,
            ",title={}::{}",
            github_property(&format!("{} {}", self.code.id, self.code.name)),
            github_data(&self.message)
        );
        if let Some(help) = &self.help {
            let _ = write!(out, "{}", github_data(&format!("\nhelp: {help}")));
        }
        out
    }

    /// Human form with a source snippet and a caret under the offending text.
    ///
    /// Secrets never reach the output: source text inside `secrets` (byte ranges, e.g. the
    /// values that `literal-credential` diagnostics point at) is masked before rendering.
    pub fn render(&self, path: &str, source: &str, secrets: &[(usize, usize)], color: bool) -> String {
        let level = match self.severity {
            Severity::Error => Level::ERROR,
            Severity::Warning => Level::WARNING,
        };
        let title = format!("{} [{} {}]", self.message, self.code.id, self.code.name);
        let renderer = if color { Renderer::styled() } else { Renderer::plain() }.decor_style(DecorStyle::Ascii);
        let mut groups: Vec<Group<'_>> = Vec::new();
        let masked;
        match self.span {
            Some(span)
                if span.start <= span.end
                    && span.end <= source.len()
                    && source.is_char_boundary(span.start)
                    && source.is_char_boundary(span.end) =>
            {
                let (first, last) = line_window(source, span.start, span.end);
                masked = mask(&source[first..last], first, secrets);
                let text = masked.as_str();
                // An empty span marks the character at its start (none at the end of a line);
                // a span never ends inside a character.
                let one = source[span.start..].chars().next().filter(|c| *c != '\n').map_or(0, char::len_utf8);
                let end = if span.end > span.start { span.end } else { span.start + one };
                let snippet = Snippet::source(text).line_start(span.line).path(path).fold(false).annotation(
                    AnnotationKind::Primary.span(span.start - first..end.min(last) - first).label(self.pointer_label()),
                );
                groups.push(level.primary_title(title).element(snippet));
            }
            // No text to show (not UTF-8, or no position): name the place only.
            span => {
                let origin = annotate_snippets::Origin::path(path);
                let origin = match span {
                    Some(span) => origin.line(span.line).char_column(span.column),
                    None => origin,
                };
                groups.push(level.primary_title(title).element(origin));
            }
        }
        if let Some(help) = &self.help {
            groups.push(Group::with_title(Level::HELP.secondary_title(help.as_str())));
        }
        renderer.render(&groups).to_string()
    }

    fn pointer_label(&self) -> String {
        if self.pointer.is_empty() { "here".to_owned() } else { self.pointer.clone() }
    }
}

/// Byte range of the whole lines holding `start..end`.
fn line_window(source: &str, start: usize, end: usize) -> (usize, usize) {
    let first = source[..start].rfind('\n').map_or(0, |i| i + 1);
    let last = source[end..].find('\n').map_or(source.len(), |i| end + i);
    (first, last)
}

/// `text` (which starts at byte `offset` of the source) with every non-blank character
/// inside a secret range replaced by as many `*` as it has bytes, so that byte offsets into
/// the source still fall on the same characters.
fn mask(text: &str, offset: usize, secrets: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        let at = offset + i;
        if !c.is_whitespace() && secrets.iter().any(|&(s, e)| at >= s && at < e) {
            out.extend(std::iter::repeat_n('*', c.len_utf8()));
        } else {
            out.push(c);
        }
    }
    out
}

fn github_data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

fn github_property(text: &str) -> String {
    github_data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A diagnostic at `start..end` of `source`, rendered without color.
    fn rendered(source: &str, start: usize, end: usize, secrets: &[(usize, usize)]) -> String {
        let mut diagnostic = Diagnostic::new(crate::codes::YAML_SYNTAX, "", "here");
        diagnostic.span = Some(Span { line: 1, column: 1, start, end });
        diagnostic.render("plan.yaml", source, secrets, false)
    }

    #[test]
    fn spans_next_to_and_inside_wide_characters_never_split_them() {
        let source = "a: x — y\n";
        let dash = source.find('—').unwrap();
        // An empty span before a three-byte character marks the whole character.
        assert!(rendered(source, dash, dash, &[]).contains("— y"), "{}", rendered(source, dash, dash, &[]));
        // A span that ends inside it names the place only.
        assert!(rendered(source, 0, dash + 1, &[]).contains("plan.yaml:1:1"));
        // Masking keeps byte offsets: a wide secret before the span.
        let masked = rendered(source, dash + 4, dash + 5, &[(dash, dash + 3)]);
        assert!(masked.contains("x *** y") && !masked.contains('—'), "{masked}");
    }
}
