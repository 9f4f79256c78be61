//! Loading a plan file: bytes → checked UTF-8 text → YAML (with safety limits) → a JSON
//! value plus a map from every JSON pointer to its place in the file.
//!
//! Architecture invariant: loading never panics and never allocates without bound: file
//! size, nesting depth, node count and alias expansion are all capped before the values
//! they would produce exist.

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::{Error as YamlError, Location, Spanned};

use crate::codes;
use crate::diagnostic::{Diagnostic, Span};

/// Largest plan file read, in bytes. Real plans are tens of kilobytes.
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;
/// Deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 64;
/// Most YAML nodes accepted, after alias expansion.
pub const MAX_NODES: usize = 2_000_000;

/// A loaded YAML document.
#[derive(Debug)]
pub struct Document {
    /// The document as a JSON value (what the schema validates).
    pub value: Value,
    spans: HashMap<String, NodeSpans>,
}

#[derive(Debug, Clone, Copy)]
struct NodeSpans {
    key: Option<Span>,
    value: Span,
}

impl Document {
    /// Where the value at `pointer` is (the nearest enclosing value when the pointer itself
    /// has no node, e.g. a missing key).
    pub fn value_span(&self, pointer: &str) -> Option<Span> {
        self.nearest(pointer).map(|n| n.value)
    }

    /// The best place to show for `pointer`: a scalar's own text; for a mapping or list, the
    /// key that introduces it (its own text starts on the next line or is a lone bracket).
    pub fn span(&self, pointer: &str) -> Option<Span> {
        let container = matches!(self.value.pointer(pointer), Some(Value::Object(_) | Value::Array(_)));
        if container { self.key_span(pointer) } else { self.value_span(pointer) }
    }

    /// Where the key of the mapping entry at `pointer` is; falls back to the value.
    pub fn key_span(&self, pointer: &str) -> Option<Span> {
        self.nearest(pointer).map(|n| n.key.unwrap_or(n.value))
    }

    fn nearest(&self, mut pointer: &str) -> Option<&NodeSpans> {
        loop {
            if let Some(spans) = self.spans.get(pointer) {
                return Some(spans);
            }
            pointer = &pointer[..pointer.rfind('/')?];
        }
    }
}

/// Parses a plan file's bytes. On failure, the diagnostic says why and where.
#[expect(clippy::result_large_err, reason = "called once per file; the error is the common result for bad input")]
pub fn load(bytes: &[u8]) -> Result<(&str, Document), Diagnostic> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Diagnostic::new(
            codes::LIMIT,
            "",
            format!(
                "the file is {:.1} MiB; plans are limited to {} MiB",
                bytes.len() as f64 / (1024.0 * 1024.0),
                MAX_FILE_BYTES / (1024 * 1024)
            ),
        ));
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(Diagnostic::new(codes::BINARY, "", "the file contains a NUL byte: it is binary, not a YAML plan")
            .at(Some(byte_span(bytes, at))));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        Diagnostic::new(codes::NOT_UTF8, "", format!("the file is not UTF-8: invalid byte 0x{:02x}", bytes[at]))
            .at(Some(byte_span(bytes, at)))
            .with_help("re-save the file as UTF-8")
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    }) {
        return Err(Diagnostic::new(codes::EMPTY, "", "the file holds no YAML document"));
    }
    let node: Spanned<Node> = serde_saphyr::from_str_with_options(text, options()).map_err(|e| yaml_error(text, &e))?;
    let mut spans = HashMap::new();
    let mut pointer = String::new();
    let value = lower(text, node, None, &mut pointer, &mut spans);
    Ok((text, Document { value, spans }))
}

fn options() -> serde_saphyr::Options {
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = 200_000;
    alias_limits.max_replay_stack_depth = 16;
    alias_limits.max_alias_expansions_per_anchor = 1_000;
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_documents: 2,
            max_aliases: 10_000,
            max_anchors: 10_000,
        },
        alias_limits: alias_limits,
        strict_booleans: true,
    }
}

/// The one-byte span at a byte offset, with its line and column (1-based, in characters).
fn byte_span(bytes: &[u8], at: usize) -> Span {
    let before = &bytes[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    Span { line, column, start: at, end: at + 1 }
}

fn yaml_error(text: &str, error: &YamlError) -> Diagnostic {
    let inner = error.without_snippet();
    let span = error.location().and_then(|l| span_of(text, &l));
    let (code, message, help) = match inner {
        YamlError::DuplicateMappingKey { key, .. } => (
            codes::DUPLICATE_KEY,
            match key {
                Some(k) => format!("duplicate key `{k}` in the same mapping"),
                None => "duplicate key in the same mapping".to_owned(),
            },
            Some("remove one of the two entries; YAML tools disagree on which one wins"),
        ),
        YamlError::MultipleDocuments { .. } => (
            codes::MULTIPLE_DOCUMENTS,
            "the file holds more than one YAML document".to_owned(),
            Some("put each plan in its own file"),
        ),
        YamlError::Eof { .. } => (codes::EMPTY, "the file holds no YAML document".to_owned(), None),
        other => {
            let message = strip_location(&other.to_string());
            if message.contains("limit exceeded") || message.contains("budget") {
                let what = if message.contains("Depth") || message.contains("recursion") {
                    format!("the document nests deeper than {MAX_DEPTH} levels")
                } else if message.contains("alias") {
                    "aliases expand to more nodes than handoff accepts (an alias bomb?)".to_owned()
                } else {
                    format!("the document exceeds handoff's safety limits ({message})")
                };
                (codes::LIMIT, what, Some("plans are small documents: keep nesting shallow and aliases few"))
            } else {
                let help = message.contains("tab").then_some("YAML indentation must use spaces, not tabs");
                (codes::YAML_SYNTAX, message, help)
            }
        }
    };
    let diagnostic = Diagnostic::new(code, "", message).at(span);
    match help {
        Some(h) => diagnostic.with_help(h),
        None => diagnostic,
    }
}

/// `line 2 column 1: message at line 2, column 1 (defined at …)` → `message`: the position
/// is shown by the diagnostic itself.
fn strip_location(message: &str) -> String {
    let message = message.lines().next().unwrap_or(message);
    let message = message.strip_prefix("line ").and_then(|r| r.split_once(": ").map(|(_, m)| m)).unwrap_or(message);
    let message = message.split(" at line ").next().unwrap_or(message);
    message.trim().to_owned()
}

/// The byte span of a parser location, clamped to the text.
fn span_of(text: &str, location: &Location) -> Option<Span> {
    let line = usize::try_from(location.line()).ok().filter(|&l| l > 0)?;
    let column = usize::try_from(location.column()).ok().filter(|&c| c > 0)?;
    let span = location.span();
    let start = match span.byte_offset() {
        Some(offset) => usize::try_from(offset).ok()?,
        None => {
            let line_start = text.split_inclusive('\n').take(line - 1).map(str::len).sum::<usize>();
            line_start + text[line_start.min(text.len())..].chars().take(column - 1).map(char::len_utf8).sum::<usize>()
        }
    };
    let start = start.min(text.len());
    let len = span.byte_len().and_then(|l| usize::try_from(l).ok()).unwrap_or(0);
    let mut end = (start + len).min(text.len());
    // Keep multi-line nodes (block mappings, block scalars) to their first line.
    if let Some(nl) = text[start..end].find('\n') {
        end = start + nl;
    }
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(Span { line, column, start, end })
}

/// Appends a JSON pointer token (RFC 6901 escaping).
pub(crate) fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// `pointer` with `token` appended (RFC 6901 escaping).
pub(crate) fn child(pointer: &str, token: &str) -> String {
    let mut out = pointer.to_owned();
    push_token(&mut out, token);
    out
}

fn lower(
    text: &str,
    node: Spanned<Node>,
    key: Option<Span>,
    pointer: &mut String,
    spans: &mut HashMap<String, NodeSpans>,
) -> Value {
    if let Some(value) = span_of(text, &node.referenced) {
        spans.insert(pointer.clone(), NodeSpans { key, value });
    }
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::Number(i.into()),
        Node::UInt(u) => Value::Number(u.into()),
        Node::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Node::Str(s) => Value::String(s),
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let len = pointer.len();
                    push_token(pointer, &i.to_string());
                    let v = lower(text, item, None, pointer, spans);
                    pointer.truncate(len);
                    v
                })
                .collect(),
        ),
        Node::Map(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (k, v) in entries {
                let key_text = k.value.key_text();
                let key_span = span_of(text, &k.referenced);
                let len = pointer.len();
                push_token(pointer, &key_text);
                let v = lower(text, v, key_span, pointer, spans);
                pointer.truncate(len);
                map.insert(key_text, v);
            }
            Value::Object(map)
        }
    }
}

/// A YAML node as the deserializer hands it over, children with their locations.
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl Node {
    /// A mapping key as JSON object key text.
    fn key_text(&self) -> String {
        match self {
            Node::Null => "null".to_owned(),
            Node::Bool(b) => b.to_string(),
            Node::Int(i) => i.to_string(),
            Node::UInt(u) => u.to_string(),
            Node::Float(f) => f.to_string(),
            Node::Str(s) => s.clone(),
            Node::Seq(_) | Node::Map(_) => "<complex key>".to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(key) = map.next_key()? {
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}
