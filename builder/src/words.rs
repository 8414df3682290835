//! Dockerfile words, the way docker's shell lexer treats them: at parse time
//! an argument string is split at unquoted whitespace (quotes and escapes
//! kept); at build time each word has its quotes and backslash escapes
//! removed and `$VAR` / `${VAR}` / `${VAR:-default}` / `${VAR:+alt}`
//! expanded from the image's environment.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WordError {
    #[error("unterminated {0} quote in {1:?}")]
    Unterminated(&'static str, String),
    #[error("missing '}}' in variable reference in {0:?}")]
    UnclosedBrace(String),
    #[error("bad variable substitution \"${{{0}}}\"")]
    BadSubstitution(String),
}

/// Split `input` at unquoted whitespace. Quotes and backslashes stay in the
/// words (they are removed later by [`expand`]); `""` is a word.
pub fn split_raw(input: &str, escape: char) -> Result<Vec<String>, WordError> {
    Ok(split_spans(input, escape)?.into_iter().map(|(_, w)| w).collect())
}

/// Like [`split_raw`], with each word's byte offset in `input` (for error
/// columns).
pub fn split_spans(input: &str, escape: char) -> Result<Vec<(usize, String)>, WordError> {
    let mut words = Vec::new();
    let mut start = 0;
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = input.char_indices();
    while let Some((i, c)) = chars.next() {
        if !in_word && !c.is_whitespace() {
            start = i;
        }
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push((start, std::mem::take(&mut word)));
                    in_word = false;
                }
            }
            c if c == escape => {
                in_word = true;
                word.push(escape);
                if let Some((_, next)) = chars.next() {
                    word.push(next);
                }
            }
            '\'' | '"' => {
                in_word = true;
                word.push(c);
                let mut closed = false;
                while let Some((_, q)) = chars.next() {
                    word.push(q);
                    if q == c {
                        closed = true;
                        break;
                    }
                    if q == escape && c == '"' {
                        if let Some((_, next)) = chars.next() {
                            word.push(next);
                        }
                    }
                }
                if !closed {
                    let kind = if c == '\'' { "single" } else { "double" };
                    return Err(WordError::Unterminated(kind, input.to_string()));
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push((start, word));
    }
    Ok(words)
}

/// Remove quotes and backslash escapes from `raw` and expand variables with
/// `lookup` (unset variables expand to nothing). Whitespace is kept as is.
pub fn expand(raw: &str, escape: char, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, WordError> {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c == escape => match chars.next() {
                Some(next) => out.push(next),
                None => out.push(escape),
            },
            '\'' => {
                let mut closed = false;
                for q in chars.by_ref() {
                    if q == '\'' {
                        closed = true;
                        break;
                    }
                    out.push(q);
                }
                if !closed {
                    return Err(WordError::Unterminated("single", raw.to_string()));
                }
            }
            '"' => {
                let mut closed = false;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => {
                            closed = true;
                            break;
                        }
                        q if q == escape => match chars.peek() {
                            Some(&n) if n == '"' || n == '$' || n == escape => {
                                out.push(n);
                                chars.next();
                            }
                            _ => out.push(escape),
                        },
                        '$' => expand_variable(&mut chars, &mut out, raw, escape, lookup)?,
                        q => out.push(q),
                    }
                }
                if !closed {
                    return Err(WordError::Unterminated("double", raw.to_string()));
                }
            }
            '$' => expand_variable(&mut chars, &mut out, raw, escape, lookup)?,
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Expand only variables in `raw` (heredoc bodies): quotes stay as they
/// are; the escape character only protects a `$`.
pub fn expand_vars(raw: &str, escape: char, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, WordError> {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c == escape && chars.peek() == Some(&'$') => {
                out.push('$');
                chars.next();
            }
            '$' => expand_variable(&mut chars, &mut out, raw, escape, lookup)?,
            c => out.push(c),
        }
    }
    Ok(out)
}

/// After a `$`: expand `NAME`, `{NAME}`, `{NAME:-word}` or `{NAME:+word}`;
/// a `$` not followed by a name is literal.
fn expand_variable(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    out: &mut String,
    raw: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), WordError> {
    match chars.peek() {
        Some('{') => {
            chars.next();
            let mut body = String::new();
            let mut closed = false;
            // Nested `${...}` in a default or alternative word.
            let mut depth = 0;
            for c in chars.by_ref() {
                match c {
                    '}' if depth == 0 => {
                        closed = true;
                        break;
                    }
                    '}' => depth -= 1,
                    '{' if body.ends_with('$') => depth += 1,
                    _ => {}
                }
                body.push(c);
            }
            if !closed {
                return Err(WordError::UnclosedBrace(raw.to_string()));
            }
            let name_len = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(body.len());
            let (name, rest) = body.split_at(name_len);
            if name.is_empty() {
                return Err(WordError::BadSubstitution(body));
            }
            let value = lookup(name).filter(|v| !v.is_empty());
            if rest.is_empty() {
                out.push_str(&value.unwrap_or_default());
            } else if let Some(default) = rest.strip_prefix(":-") {
                match value {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&expand(default, escape, lookup)?),
                }
            } else if let Some(alternative) = rest.strip_prefix(":+") {
                if value.is_some() {
                    out.push_str(&expand(alternative, escape, lookup)?);
                }
            } else {
                return Err(WordError::BadSubstitution(body));
            }
        }
        Some(&c) if c.is_ascii_alphabetic() || c == '_' => {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push_str(&lookup(&name).unwrap_or_default());
        }
        _ => out.push('$'),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: char = '\\';

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/root".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn splits_at_unquoted_whitespace_keeping_quotes() {
        let words = split_raw(r#"a "b c"  'd e' f\ g """#, '\\').unwrap();
        assert_eq!(words, vec!["a", r#""b c""#, "'d e'", r"f\ g", r#""""#]);
        assert!(matches!(split_raw("a \"b", '\\'), Err(WordError::Unterminated("double", _))));
    }

    #[test]
    fn expands_and_unquotes() {
        assert_eq!(expand(r#""hi $HOME""#, E, &env).unwrap(), "hi /root");
        assert_eq!(expand("'$HOME'", E, &env).unwrap(), "$HOME");
        assert_eq!(expand(r"\$HOME", E, &env).unwrap(), "$HOME");
        assert_eq!(expand("${HOME}/x", E, &env).unwrap(), "/root/x");
        assert_eq!(expand("${NOPE:-dflt}", E, &env).unwrap(), "dflt");
        assert_eq!(expand("${EMPTY:-dflt}", E, &env).unwrap(), "dflt");
        assert_eq!(expand("${HOME:+set}", E, &env).unwrap(), "set");
        assert_eq!(expand("a $ b", E, &env).unwrap(), "a $ b");
        assert_eq!(expand("$NOPE", E, &env).unwrap(), "");
        assert!(expand("${HOME", E, &env).is_err());
        assert_eq!(expand("${NOPE:+alt}x", E, &env).unwrap(), "x");
        assert_eq!(expand("${HOME:-${NOPE}}", E, &env).unwrap(), "/root");
    }

    #[test]
    fn backtick_escape_and_spans() {
        assert_eq!(expand(r"C:\dir `$HOME", '`', &env).unwrap(), r"C:\dir $HOME");
        assert_eq!(split_spans("a  `  b c", '`').unwrap(), vec![(0, "a".to_string()), (3, "` ".to_string()), (6, "b".to_string()), (8, "c".to_string())]);
        assert_eq!(expand_vars("say \"$HOME\" \\$HOME\n", E, &env).unwrap(), "say \"/root\" $HOME\n");
    }
}
