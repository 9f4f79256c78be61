//! Finding literal secrets in text, so that no output ever repeats them.
//!
//! Architecture invariant: every rendering of plan text or plan values (snippets, messages,
//! JSON, annotations) passes through here first, whether or not the plan got as far as the
//! `literal-credential` lint.

/// Keys whose values are secrets when written literally.
pub const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "credentials",
    "authorization",
];

/// Whether `text` is exactly one `${ENV_VAR}` reference.
pub fn is_reference(text: &str) -> bool {
    text.len() > 3
        && text.starts_with("${")
        && text.ends_with('}')
        && !text[2..text.len() - 1].contains(['$', '{', '}'])
}

/// Whether a secret-named key's value carries no literal secret: a reference, or an
/// authorization scheme followed by one (`Bearer ${API_TOKEN}`).
pub fn is_referenced_value(text: &str) -> bool {
    let text = text.trim();
    is_reference(text)
        || text
            .split_once(' ')
            .is_some_and(|(scheme, rest)| scheme.bytes().all(|b| b.is_ascii_alphabetic()) && is_reference(rest.trim()))
}

/// Whether a mapping key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|k| key.ends_with(k))
}

/// Byte ranges of literal secrets in `text`: the password of `scheme://user:password@host`,
/// the credentials after `Bearer ` / `Basic `, and values of secret-named keys.
pub fn scan(text: &str) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let bytes = text.as_bytes();
    let ends_token = |b: u8| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b',' | b'}' | b']');
    // URL userinfo passwords.
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let end = bytes[start..].iter().position(|&b| ends_token(b) || b == b'/').map_or(bytes.len(), |p| start + p);
        let authority = &text[start..end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
        {
            let password = &authority[colon + 1..at];
            if !password.is_empty() && !is_reference(password) {
                ranges.push((start + colon + 1, start + at));
            }
        }
        from = start;
    }
    // HTTP authorization schemes.
    for scheme in ["Bearer ", "Basic ", "bearer ", "basic "] {
        let mut from = 0;
        while let Some(found) = text[from..].find(scheme) {
            let start = from + found + scheme.len();
            let end = token_end(text, start, ends_token);
            if end > start && !is_reference(&text[start..end]) {
                ranges.push((start, end));
            }
            from = start;
        }
    }
    // `secret_key: value` in block or flow style.
    let mut from = 0;
    while let Some(found) = text[from..].find(':') {
        let colon = from + found;
        from = colon + 1;
        let key_start =
            text[..colon].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).map_or(0, |i| i + 1);
        if !is_secret_key(&text[key_start..colon]) || colon == key_start {
            continue;
        }
        let value_start = colon + 1 + text[colon + 1..].len() - text[colon + 1..].trim_start_matches([' ', '\t']).len();
        let rest = &text[value_start..];
        let quoted = rest.starts_with(['"', '\'']);
        let inner_start = value_start + usize::from(quoted);
        let end = if quoted {
            let quote = rest.as_bytes()[0];
            bytes[inner_start..].iter().position(|&b| b == quote || b == b'\n').map_or(bytes.len(), |p| inner_start + p)
        } else {
            token_end(text, inner_start, |b| matches!(b, b'\n' | b',' | b'}' | b'#'))
        };
        let value = text[inner_start..end].trim_end();
        if !value.is_empty() && !is_referenced_value(value) && !matches!(value, "|" | ">" | "null" | "~") {
            ranges.push((inner_start, inner_start + value.len()));
        }
    }
    ranges.extend(argument_secrets(text));
    ranges.sort_unstable();
    ranges
}

/// Whether a value is no literal: empty, a `${ENV_VAR}` reference, or a shell variable
/// (`$DB_PASSWORD`, `"$DB_PASSWORD"`) that the command's own environment fills in.
fn is_variable(value: &str) -> bool {
    let value = value.trim_start_matches(['"', '\'']);
    value.is_empty() || value.starts_with('$')
}

/// Byte ranges of credentials written into command arguments: `--password=…`,
/// `PGPASSWORD=…`, `token=…` (a secret-named key and `=`), `--password …` (a secret-named
/// flag and the next word), and `-p…` after `mysql`, `mysqldump` or `mariadb`. Shell
/// variables and `${ENV_VAR}` references are not literal.
pub fn argument_secrets(text: &str) -> Vec<(usize, usize)> {
    let ends = |b: u8| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'&' | b';' | b'|' | b',' | b')');
    let word_start = |at: usize| {
        text[..at].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).map_or(0, |i| i + 1)
    };
    let value_at = |start: usize| {
        let quoted = text[start..].starts_with(['"', '\'']);
        let inner = start + usize::from(quoted);
        let end = token_end(text, inner, |b| if quoted { b == text.as_bytes()[start] } else { ends(b) });
        (!is_variable(&text[start..end]) && !is_reference(&text[inner..end]) && end > inner).then_some((inner, end))
    };
    let mut ranges = Vec::new();
    for (at, _) in text.match_indices('=') {
        let key = &text[word_start(at)..at];
        if is_secret_key(key.trim_start_matches('-')) {
            ranges.extend(value_at(at + 1));
        }
    }
    for (at, _) in text.match_indices("--") {
        let end = token_end(text, at + 2, |b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        let flag = &text[at + 2..end];
        if is_secret_key(flag) && text[end..].starts_with(' ') && !text[end + 1..].starts_with('-') {
            ranges.extend(value_at(end + 1));
        }
    }
    for (at, _) in text.match_indices(" -p") {
        let line = &text[text[..at].rfind('\n').map_or(0, |i| i + 1)..at];
        let mysql = ["mysql", "mysqldump", "mariadb"].iter().any(|program| line.contains(program));
        if mysql && !text[at + 3..].starts_with([' ', '\t', '\n']) && at + 3 < text.len() {
            ranges.extend(value_at(at + 3));
        }
    }
    ranges
}

/// End of the token starting at `start`: the first byte `ends` accepts, a leading `${…}`
/// reference counting as one piece whatever it contains.
fn token_end(text: &str, start: usize, ends: impl Fn(u8) -> bool) -> usize {
    let rest = &text[start..];
    let skip = if rest.starts_with("${") { rest.find('}').map_or(0, |p| p + 1) } else { 0 };
    let from = start + skip;
    text.as_bytes()[from..].iter().position(|&b| ends(b)).map_or(text.len(), |p| from + p)
}

/// `text` with every literal secret replaced by `****`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in scan(text) {
        if start < last {
            continue;
        }
        out.push_str(&text[last..start]);
        out.push_str("****");
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_found_in_every_form() {
        for text in [
            "uri: mongodb://app:hunter2@db:27017/menu",
            "{endpoints: {db: \"redis://:hunter2@cache:6379\"}}",
            "headers: {Authorization: \"Bearer hunter2\"}",
            "password: hunter2",
            "  db_password: 'hunter2'",
            "- {token: hunter2, other: 1}",
            "command: [sh, -c, 'mongodump --password=hunter2 --out x']",
            "pg_dump --password hunter2 db",
            "PGPASSWORD=hunter2 psql -h db",
            "curl https://x/api?token=hunter2&a=1",
            "mysql -u root -phunter2 menu",
        ] {
            let redacted = redact(text);
            assert!(!redacted.contains("hunter2"), "{text} → {redacted}");
            assert!(redacted.contains("****"), "{text} → {redacted}");
        }
    }

    #[test]
    fn references_and_plain_text_are_left_alone() {
        for text in [
            "uri: mongodb://app:${DB_PASSWORD}@db/menu",
            "password: ${DB_PASSWORD}",
            "Authorization: \"Bearer ${API_TOKEN}\"",
            "url: https://example.com/a@b",
            "description: the password policy",
            "token_ttl_note: see docs",
            "sh -c 'mongodump --password=\"$DB_PASSWORD\"'",
            "PGPASSWORD=${PG_PASSWORD} psql",
            "mkdir -p build && mysql --version",
            "--password --other",
        ] {
            assert_eq!(redact(text), text);
        }
    }
}
