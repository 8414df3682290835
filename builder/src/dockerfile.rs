//! Dockerfile parser for the subset hybrid builds: FROM, COPY, ADD, WORKDIR,
//! ENV, CMD, ENTRYPOINT, LABEL, EXPOSE, VOLUME, USER, STOPSIGNAL; comments and
//! `\` line continuations. Arguments are kept raw (see [`crate::words`]):
//! variables are expanded at build time, against the image's environment.

use std::path::Path;

use thiserror::Error;

use crate::words::{self, WordError};

#[derive(Debug, Error)]
pub enum ParseError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: no instructions (a Dockerfile starts with FROM)")]
    Empty { file: String },
    #[error("{file}:{line}: {kind}")]
    Syntax { file: String, line: usize, kind: SyntaxError },
}

#[derive(Debug, Error)]
pub enum SyntaxError {
    #[error("unknown instruction \"{0}\"")]
    UnknownInstruction(String),
    #[error("{0} is not supported yet")]
    Unsupported(String),
    #[error("{0} flag {1} is not supported")]
    UnsupportedFlag(String, String),
    #[error("{0} requires {1}")]
    Arguments(&'static str, &'static str),
    #[error("the first instruction must be FROM, not {0}")]
    FromFirst(String),
    #[error("multi-stage builds are not supported (second FROM)")]
    MultiStage,
    #[error("{0}: expected NAME=VALUE, got {1:?}")]
    KeyValue(&'static str, String),
    #[error(transparent)]
    Word(#[from] WordError),
}

/// Arguments of COPY, ADD and VOLUME: exec (JSON array) form is taken
/// literally, shell-form words are expanded at build time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words {
    pub words: Vec<String>,
    pub json: bool,
}

/// CMD / ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

impl Command {
    /// The argv stored in the image config: shell form runs through
    /// `/bin/sh -c`.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    From { image: String },
    Copy(Words),
    Add(Words),
    Workdir(String),
    /// Raw NAME / VALUE pairs.
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Cmd(Command),
    Entrypoint(Command),
    Expose(Vec<String>),
    Volume(Words),
    User(String),
    StopSignal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line the instruction starts on.
    pub line: usize,
    /// The instruction as written (continuations joined), for history.
    pub text: String,
    pub kind: Kind,
}

/// Read and parse the Dockerfile at `path`; errors name it as `display`.
pub fn parse_file(path: &Path, display: &str) -> Result<Vec<Instruction>, ParseError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ParseError::Read { path: display.to_string(), source })?;
    parse(&text, display)
}

/// Parse Dockerfile `text`; `file` names it in errors (`file:line: ...`).
pub fn parse(text: &str, file: &str) -> Result<Vec<Instruction>, ParseError> {
    let mut out = Vec::new();
    for (line, logical) in logical_lines(text) {
        let syntax = |kind| ParseError::Syntax { file: file.to_string(), line, kind };
        let kind = parse_instruction(&logical).map_err(syntax)?;
        let is_from = matches!(kind, Kind::From { .. });
        match (out.is_empty(), is_from) {
            (true, false) => {
                let name = logical.split_whitespace().next().unwrap_or_default();
                return Err(syntax(SyntaxError::FromFirst(name.to_uppercase())));
            }
            (false, true) => return Err(syntax(SyntaxError::MultiStage)),
            _ => {}
        }
        out.push(Instruction { line, text: logical.trim().to_string(), kind });
    }
    if out.is_empty() {
        return Err(ParseError::Empty { file: file.to_string() });
    }
    Ok(out)
}

/// Join `\`-continued lines and drop comments and blank lines; yields
/// (first line number, joined text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.trim_end().is_empty() {
            // Comments and blank lines are skipped, also inside a
            // continuation (as docker does).
            continue;
        }
        let (start, mut joined) = current.take().unwrap_or((index + 1, String::new()));
        let content = line.trim_end();
        match content.strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                current = Some((start, joined));
            }
            None => {
                joined.push_str(content);
                out.push((start, joined));
            }
        }
    }
    if let Some(last) = current {
        out.push(last);
    }
    out
}

fn parse_instruction(logical: &str) -> Result<Kind, SyntaxError> {
    let logical = logical.trim();
    let (name, rest) = match logical.find(char::is_whitespace) {
        Some(i) => (&logical[..i], logical[i..].trim()),
        None => (logical, ""),
    };
    let upper = name.to_uppercase();
    let name: &'static str = match upper.as_str() {
        "FROM" => "FROM",
        "COPY" => "COPY",
        "ADD" => "ADD",
        "WORKDIR" => "WORKDIR",
        "ENV" => "ENV",
        "LABEL" => "LABEL",
        "CMD" => "CMD",
        "ENTRYPOINT" => "ENTRYPOINT",
        "EXPOSE" => "EXPOSE",
        "VOLUME" => "VOLUME",
        "USER" => "USER",
        "STOPSIGNAL" => "STOPSIGNAL",
        "RUN" | "ARG" | "SHELL" | "HEALTHCHECK" | "ONBUILD" | "MAINTAINER" => {
            return Err(SyntaxError::Unsupported(upper));
        }
        _ => return Err(SyntaxError::UnknownInstruction(name.to_string())),
    };
    if rest.is_empty() && !matches!(name, "CMD" | "ENTRYPOINT") {
        return Err(SyntaxError::Arguments(name, "an argument"));
    }
    Ok(match name {
        "FROM" => {
            let words = words::split_raw(rest)?;
            reject_flags(name, &words)?;
            match words.as_slice() {
                [image] => Kind::From { image: image.clone() },
                [image, as_, _alias] if as_.eq_ignore_ascii_case("as") => {
                    Kind::From { image: image.clone() }
                }
                _ => return Err(SyntaxError::Arguments(name, "an image (FROM IMAGE [AS NAME])")),
            }
        }
        "COPY" | "ADD" => {
            let words = json_or_words(rest)?;
            if !words.json {
                reject_flags(name, &words.words)?;
            }
            if words.words.len() < 2 {
                return Err(SyntaxError::Arguments(name, "at least one source and a destination"));
            }
            if name == "COPY" {
                Kind::Copy(words)
            } else {
                Kind::Add(words)
            }
        }
        "VOLUME" => Kind::Volume(json_or_words(rest)?),
        "WORKDIR" => Kind::Workdir(rest.to_string()),
        "USER" => Kind::User(rest.to_string()),
        "STOPSIGNAL" => Kind::StopSignal(rest.to_string()),
        "ENV" => Kind::Env(key_values(name, rest)?),
        "LABEL" => Kind::Label(key_values(name, rest)?),
        "CMD" => Kind::Cmd(command(rest)),
        "ENTRYPOINT" => Kind::Entrypoint(command(rest)),
        _ => Kind::Expose(words::split_raw(rest)?),
    })
}

fn reject_flags(name: &str, words: &[String]) -> Result<(), SyntaxError> {
    match words.iter().find(|w| w.starts_with("--")) {
        Some(flag) => {
            let flag = flag.split('=').next().unwrap_or(flag);
            Err(SyntaxError::UnsupportedFlag(name.to_string(), flag.to_string()))
        }
        None => Ok(()),
    }
}

/// A JSON array of strings, if `rest` is one.
fn json_array(rest: &str) -> Option<Vec<String>> {
    if rest.starts_with('[') {
        serde_json::from_str(rest).ok()
    } else {
        None
    }
}

fn json_or_words(rest: &str) -> Result<Words, SyntaxError> {
    Ok(match json_array(rest) {
        Some(words) => Words { words, json: true },
        None => Words { words: words::split_raw(rest)?, json: false },
    })
}

fn command(rest: &str) -> Command {
    match json_array(rest) {
        Some(argv) => Command::Exec(argv),
        None => Command::Shell(rest.to_string()),
    }
}

/// `NAME=VALUE ...` pairs, or the legacy `NAME VALUE` form where the value
/// is the rest of the line.
fn key_values(name: &'static str, rest: &str) -> Result<Vec<(String, String)>, SyntaxError> {
    let words = words::split_raw(rest)?;
    let first = words.first().map(String::as_str).unwrap_or_default();
    if !first.contains('=') {
        // Legacy form: the key is the first word, the value everything after it.
        let value = rest[first.len()..].trim();
        if value.is_empty() {
            return Err(SyntaxError::KeyValue(name, rest.to_string()));
        }
        return Ok(vec![(first.to_string(), value.to_string())]);
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(SyntaxError::KeyValue(name, word)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Kind> {
        parse(text, "Dockerfile").unwrap().into_iter().map(|i| i.kind).collect()
    }

    fn error(text: &str) -> String {
        parse(text, "Dockerfile").unwrap_err().to_string()
    }

    #[test]
    fn continuations_and_comments() {
        let text = "# syntax comment\nFROM scratch\nLABEL a=b \\\n  # inner comment\n\n      c=\"d e\"\nCOPY x \\\n /y\n";
        let parsed = parse(text, "Dockerfile").unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[1].line, 3);
        assert_eq!(
            parsed[1].kind,
            Kind::Label(vec![("a".into(), "b".into()), ("c".into(), "\"d e\"".into())])
        );
        assert_eq!(parsed[2].line, 7);
        assert_eq!(
            parsed[2].kind,
            Kind::Copy(Words { words: vec!["x".into(), "/y".into()], json: false })
        );
    }

    #[test]
    fn json_versus_shell_form() {
        let k = kinds("FROM scratch\nCMD [\"/app\", \"-v\"]\nENTRYPOINT run --fast\nCMD [broken\n");
        assert_eq!(k[1], Kind::Cmd(Command::Exec(vec!["/app".into(), "-v".into()])));
        assert_eq!(k[2], Kind::Entrypoint(Command::Shell("run --fast".into())));
        if let Kind::Entrypoint(c) = &k[2] {
            assert_eq!(c.argv(), vec!["/bin/sh", "-c", "run --fast"]);
        }
        assert_eq!(k[3], Kind::Cmd(Command::Shell("[broken".into())));
        let k = kinds("FROM scratch\nCOPY [\"a b\", \"/c/\"]\n");
        assert_eq!(k[1], Kind::Copy(Words { words: vec!["a b".into(), "/c/".into()], json: true }));
    }

    #[test]
    fn env_forms() {
        let k = kinds("FROM scratch\nENV a=b c=\"d e\"\nENV f g h\n");
        assert_eq!(k[1], Kind::Env(vec![("a".into(), "b".into()), ("c".into(), "\"d e\"".into())]));
        assert_eq!(k[2], Kind::Env(vec![("f".into(), "g h".into())]));
        assert!(error("FROM scratch\nENV =x\n").contains("Dockerfile:2: ENV: expected NAME=VALUE"));
    }

    #[test]
    fn unknown_instruction_names_file_and_line() {
        assert_eq!(error("FROM scratch\n\nFOO bar\n"), "Dockerfile:3: unknown instruction \"FOO\"");
        assert_eq!(error("FROM scratch\n# c\nRUN make\n"), "Dockerfile:3: RUN is not supported yet");
        assert_eq!(
            error("FROM scratch\nCOPY \\\n  a \\\n  b\nBAR\n"),
            "Dockerfile:5: unknown instruction \"BAR\""
        );
    }

    #[test]
    fn structural_errors() {
        assert_eq!(error("COPY a b\n"), "Dockerfile:1: the first instruction must be FROM, not COPY");
        assert_eq!(error("# only\n"), "Dockerfile: no instructions (a Dockerfile starts with FROM)");
        assert!(error("FROM scratch\nFROM scratch\n").contains("multi-stage"));
        assert!(error("FROM scratch\nCOPY a\n").contains("Dockerfile:2: COPY requires"));
        assert_eq!(
            error("FROM scratch\nCOPY --chown=1:1 a /b\n"),
            "Dockerfile:2: COPY flag --chown is not supported"
        );
        assert!(error("FROM scratch\nLABEL a=\"b\n").contains("unterminated double quote"));
    }
}
