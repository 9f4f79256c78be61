//! Escaping text from plans and logs for terminals and documents: control characters (and
//! the bidirectional overrides that reorder what a reader sees) are written as escapes, so
//! a name can neither move the cursor, recolor a terminal, nor hide text.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal or a document as itself.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every control character (newlines and tabs included) and bidirectional
/// override written as an escape (`\n`, `\u{1b}`); borrowed when there is none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`escape`], keeping line breaks: for multi-line text (messages with hints).
pub fn escape_lines(text: &str) -> String {
    text.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_overrides_are_escaped_and_plain_text_borrowed() {
        assert_eq!(escape("red\u{1b}[31m\u{7}"), "red\\u{1b}[31m\\u{7}");
        assert_eq!(escape("a\nb\tc\u{202e}"), "a\\nb\\tc\\u{202e}");
        assert!(matches!(escape("plain — ünïcode"), Cow::Borrowed(_)));
        assert_eq!(escape_lines("one\u{1b}\ntwo"), "one\\u{1b}\ntwo");
    }
}
