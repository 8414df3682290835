//! Dockerfile parser: parser directives (`# escape=`), comments, line
//! continuations, heredocs (`COPY <<EOF /path`, `RUN <<EOF`), and the instructions of
//! [`crate::instruction`]. Arguments are kept raw (see [`crate::words`]):
//! variables are expanded at build time. Every error names the file, the
//! line and the column (`Dockerfile:3:5: ...`).

use std::path::Path;

use thiserror::Error;

pub use crate::instruction::{Command, CopyArgs, Healthcheck, Heredoc, Kind, Network, RunArgs, SyntaxError, Words};

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
    #[error("{file}:{line}:{column}: {kind}")]
    Syntax { file: String, line: usize, column: usize, kind: SyntaxError },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line the instruction starts on.
    pub line: usize,
    /// 1-based column of the instruction keyword.
    pub column: usize,
    /// The instruction as written (continuations joined), for history.
    pub text: String,
    pub kind: Kind,
}

/// A parsed Dockerfile: ARGs before the first FROM, then stages, all in
/// order in `instructions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\` or `` ` `` from `# escape=`).
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

/// Read and parse the Dockerfile at `path`; errors name it as `display`.
pub fn parse_file(path: &Path, display: &str) -> Result<Dockerfile, ParseError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ParseError::Read { path: display.to_string(), source })?;
    parse(&text, display)
}

/// A piece of a logical line: where it starts in the joined text and where
/// that is in the file, to turn offsets back into line:column.
#[derive(Debug, Clone, Copy)]
struct Segment {
    offset: usize,
    line: usize,
    column: usize,
}

struct Logical {
    text: String,
    segments: Vec<Segment>,
    /// Physical line index after the last line of this instruction.
    next: usize,
}

impl Logical {
    /// (line, column) of byte `offset` in the joined text.
    fn position(&self, offset: usize) -> (usize, usize) {
        let seg = self.segments.iter().rev().find(|s| s.offset <= offset).copied().unwrap_or(Segment {
            offset: 0,
            line: 1,
            column: 1,
        });
        let end = offset.min(self.text.len());
        let chars = self.text.get(seg.offset..end).map_or(0, |s| s.chars().count());
        (seg.line, seg.column + chars)
    }
}

/// Parse Dockerfile `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Dockerfile, ParseError> {
    let lines: Vec<&str> = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let err = |line: usize, column: usize, kind| ParseError::Syntax { file: file.to_string(), line, column, kind };
    let (escape, mut index) = directives(&lines).map_err(|(line, kind)| err(line, 1, kind))?;
    let mut instructions: Vec<Instruction> = Vec::new();
    let mut seen_from = false;
    while let Some(logical) = logical_line(&lines, index, escape) {
        index = logical.next;
        let (heredocs, after) = read_heredocs(&lines, &logical, index, escape)
            .map_err(|(offset, kind)| {
                let (line, column) = logical.position(offset);
                err(line, column, kind)
            })?;
        index = after;
        let (kind, keyword_at) = crate::instruction::parse(&logical.text, escape, heredocs).map_err(|(offset, kind)| {
            let (line, column) = logical.position(offset);
            err(line, column, kind)
        })?;
        let (line, column) = logical.position(keyword_at);
        match &kind {
            Kind::From { .. } => seen_from = true,
            Kind::Arg(_) => {}
            _ if !seen_from => {
                let name = logical.text.split_whitespace().next().unwrap_or_default().to_uppercase();
                return Err(err(line, column, SyntaxError::FromFirst(name)));
            }
            _ => {}
        }
        if let Kind::From { name: Some(name), .. } = &kind {
            let duplicate = instructions
                .iter()
                .any(|i| matches!(&i.kind, Kind::From { name: Some(n), .. } if n == name));
            if duplicate {
                return Err(err(line, column, SyntaxError::DuplicateStage(name.clone())));
            }
        }
        instructions.push(Instruction { line, column, text: logical.text.trim().to_string(), kind });
    }
    if !seen_from {
        return Err(ParseError::Empty { file: file.to_string() });
    }
    Ok(Dockerfile { escape, instructions })
}

/// Parser directives (`# escape=`, `# syntax=`, `# check=`) at the very top;
/// returns the escape character and the first line after them.
fn directives(lines: &[&str]) -> Result<(char, usize), (usize, SyntaxError)> {
    let mut escape = '\\';
    let mut seen = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(body) = line.trim().strip_prefix('#') else { return Ok((escape, index)) };
        let Some((key, value)) = body.split_once('=') else { return Ok((escape, index)) };
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok((escape, index));
        }
        if seen.contains(&key) {
            return Err((index + 1, SyntaxError::Directive(format!("{key} given twice"))));
        }
        seen.push(key.clone());
        if key == "escape" {
            escape = match value.trim() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err((index + 1, SyntaxError::Directive(format!("invalid escape {other:?} (want \\ or `)"))));
                }
            };
        }
    }
    Ok((escape, lines.len()))
}

fn is_comment_or_blank(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.starts_with('#') || trimmed.is_empty()
}

/// The next instruction from physical line `index` on: continuation lines
/// joined, comments and blank lines skipped (also inside a continuation,
/// as docker does).
fn logical_line(lines: &[&str], mut index: usize, escape: char) -> Option<Logical> {
    while index < lines.len() && is_comment_or_blank(lines[index]) {
        index += 1;
    }
    if index >= lines.len() {
        return None;
    }
    let mut text = String::new();
    let mut segments = Vec::new();
    while index < lines.len() {
        let line = lines[index];
        index += 1;
        if !segments.is_empty() && is_comment_or_blank(line) {
            continue;
        }
        segments.push(Segment { offset: text.len(), line: index, column: 1 });
        let content = line.trim_end();
        match content.strip_suffix(escape) {
            Some(head) => text.push_str(head),
            None => {
                text.push_str(content);
                break;
            }
        }
    }
    Some(Logical { text, segments, next: index })
}

/// A heredoc marker word (`<<EOF`, `<<-"EOF"`): (strip tabs, name, quoted).
/// In RUN the shell's own syntax may follow the name (`<<EOF>/file`);
/// COPY/ADD take the word whole.
fn heredoc_marker(word: &str, run: bool) -> Option<(bool, &str, bool)> {
    let marker = word.strip_prefix("<<")?;
    if run && marker.starts_with('<') {
        return None; // a here-string (<<<)
    }
    let (strip_tabs, marker) = match marker.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, marker),
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    if run {
        let quote = marker.chars().next().filter(|c| *c == '"' || *c == '\'');
        let body = quote.map_or(marker, |q| &marker[q.len_utf8()..]);
        let end = body.find(|c: char| !valid(c)).unwrap_or(body.len());
        let closed = quote.is_none_or(|q| body[end..].starts_with(q));
        let name = &body[..end];
        return (closed && !name.chars().all(|c| c == '.')).then_some((strip_tabs, name, quote.is_some()));
    }
    let (name, quoted) = match marker.as_bytes().first() {
        Some(b'"') | Some(b'\'') if marker.len() >= 2 && marker.ends_with(&marker[..1]) => {
            (&marker[1..marker.len() - 1], true)
        }
        _ => (marker, false),
    };
    Some((strip_tabs, name, quoted))
}

/// Whether a RUN's command (after its flags) is in exec (JSON) form, which
/// has no heredocs.
fn run_exec_form(text: &str, words: &[(usize, String)]) -> bool {
    let first = words.iter().skip(1).find(|(_, w)| !w.starts_with("--"));
    first.is_some_and(|(at, _)| crate::instruction::json_array(text[*at..].trim()).is_some())
}

/// For COPY/ADD/RUN with `<<NAME` words: the heredoc bodies that follow the
/// instruction, and the line after them. Errors carry the offset of the
/// unterminated marker.
fn read_heredocs(
    lines: &[&str],
    logical: &Logical,
    mut index: usize,
    escape: char,
) -> Result<(Vec<Heredoc>, usize), (usize, SyntaxError)> {
    let keyword = logical.text.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
    let run = keyword == "RUN";
    if keyword != "COPY" && keyword != "ADD" && !run {
        return Ok((Vec::new(), index));
    }
    let words = crate::words::split_spans(&logical.text, escape).unwrap_or_default();
    if run && run_exec_form(&logical.text, &words) {
        return Ok((Vec::new(), index));
    }
    let mut heredocs = Vec::new();
    for (offset, word) in words.iter().skip(1) {
        let Some((strip_tabs, name, quoted)) = heredoc_marker(word, run) else { continue };
        let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        // The name becomes a file name: no empty, `.` or `..`.
        if !valid || name.chars().all(|c| c == '.') {
            return Err((*offset, SyntaxError::Heredoc(format!("invalid heredoc marker {word:?}"))));
        }
        let mut content = String::new();
        let mut closed = false;
        while index < lines.len() {
            let raw = lines[index];
            index += 1;
            let line = if strip_tabs { raw.trim_start_matches('\t') } else { raw };
            if line == name {
                closed = true;
                break;
            }
            content.push_str(line);
            content.push('\n');
        }
        if !closed {
            return Err((*offset, SyntaxError::Heredoc(format!("unterminated heredoc {name} (no line {name:?} after it)"))));
        }
        heredocs.push(Heredoc { marker: word.clone(), name: name.to_string(), content, expand: !quoted });
    }
    Ok((heredocs, index))
}

#[cfg(test)]
#[path = "dockerfile_tests.rs"]
mod tests;
