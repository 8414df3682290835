//! One Dockerfile instruction, from its joined text: keyword, flags and
//! arguments (kept raw: expanded at build time). Errors carry the byte
//! offset of the thing at fault, which the caller turns into line:column.

use thiserror::Error;

use crate::words::{self, WordError};

#[derive(Debug, Error)]
pub enum SyntaxError {
    #[error("unknown instruction \"{0}\"")]
    UnknownInstruction(String),
    #[error("{0} is not supported yet")]
    Unsupported(String),
    #[error("{0} flag {1} is not supported")]
    UnsupportedFlag(String, String),
    #[error("{0} flag {1} requires a value ({1}=VALUE)")]
    FlagValue(&'static str, String),
    #[error("{0} flag {1}: invalid value {2:?} (want {3})")]
    FlagChoice(&'static str, &'static str, String, &'static str),
    #[error("{0} requires {1}")]
    Arguments(&'static str, &'static str),
    #[error("the first instruction must be FROM, not {0}")]
    FromFirst(String),
    #[error("stage name {0:?} is used twice")]
    DuplicateStage(String),
    #[error("invalid stage name {0:?} (want letters, digits, '-', '_' or '.', starting with a letter)")]
    StageName(String),
    #[error("{0}: expected NAME=VALUE, got {1:?}")]
    KeyValue(&'static str, String),
    #[error("ARG: invalid name {0:?}")]
    ArgName(String),
    #[error("parser directive: {0}")]
    Directive(String),
    #[error("{0}")]
    Heredoc(String),
    #[error("SHELL requires a JSON array of strings, e.g. SHELL [\"/bin/sh\", \"-c\"]")]
    ShellForm,
    #[error("HEALTHCHECK: invalid duration {0:?} (want e.g. 30s, 1m30s, 500ms)")]
    Duration(String),
    #[error("HEALTHCHECK: invalid retries {0:?}")]
    Retries(String),
    #[error("HEALTHCHECK requires NONE or CMD followed by a command")]
    HealthcheckForm,
    #[error("ONBUILD cannot trigger {0}")]
    OnBuild(String),
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

/// A here-document source of COPY/ADD (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The word as written (`<<EOF`, `<<-"EOF"`).
    pub marker: String,
    /// The file name it gets when copied into a directory.
    pub name: String,
    pub content: String,
    /// Unquoted markers have variables expanded in the content.
    pub expand: bool,
}

/// COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyArgs {
    /// `--from=STAGE|INDEX` (raw).
    pub from: Option<String>,
    /// `--chown=USER[:GROUP]` (raw).
    pub chown: Option<String>,
    /// `--chmod=MODE` (raw, octal).
    pub chmod: Option<String>,
    /// ADD `--checksum=sha256:HEX` (raw): the content of its URL source.
    pub checksum: Option<String>,
    /// Sources (without heredoc markers) and the destination, last.
    pub words: Words,
    pub heredocs: Vec<Heredoc>,
}

/// CMD / ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

impl Command {
    /// The argv stored in the image config: shell form runs through the
    /// image's SHELL (`/bin/sh -c` by default).
    pub fn argv(&self, shell: &[String]) -> Vec<String> {
        match self {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => shell.iter().cloned().chain(std::iter::once(s.clone())).collect(),
        }
    }
}

/// `RUN --network=`: `none` (a new, empty network namespace, the default)
/// or `host` (the builder's network).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    #[default]
    None,
    Host,
}

/// RUN: the command (exec form taken literally; shell form run by the
/// image's SHELL, expanded by that shell, not by the builder) and the
/// here-documents that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub network: Network,
    pub command: Command,
    pub heredocs: Vec<Heredoc>,
}

/// HEALTHCHECK CMD: docker's `Healthcheck` config object (durations in
/// nanoseconds; unset ones are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["CMD", argv...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    pub interval: Option<u64>,
    pub timeout: Option<u64>,
    pub start_period: Option<u64>,
    pub start_interval: Option<u64>,
    pub retries: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `image` raw (ARGs before FROM expand in it); `name` lower-cased;
    /// `platform` the raw `--platform=OS/ARCH[/VARIANT]` (ARGs expand in it).
    From { image: String, name: Option<String>, platform: Option<String> },
    /// NAME and raw default.
    Arg(Vec<(String, Option<String>)>),
    Copy(CopyArgs),
    Add(CopyArgs),
    Run(RunArgs),
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
    Shell(Vec<String>),
    /// `None` is HEALTHCHECK NONE.
    Healthcheck(Option<Healthcheck>),
    /// The trigger instruction's text.
    OnBuild(String),
}

type Located<T> = Result<T, (usize, SyntaxError)>;

/// Byte offset of `sub` (a slice of `whole`) in `whole`.
fn offset_in(whole: &str, sub: &str) -> usize {
    (sub.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize).min(whole.len())
}

/// Parse one joined instruction; returns its kind and the keyword's offset.
pub fn parse(text: &str, escape: char, heredocs: Vec<Heredoc>) -> Located<(Kind, usize)> {
    let trimmed = text.trim();
    let keyword_at = offset_in(text, trimmed);
    let (name, rest) = match trimmed.find(char::is_whitespace) {
        Some(i) => (&trimmed[..i], trimmed[i..].trim()),
        None => (trimmed, ""),
    };
    let rest_at = if rest.is_empty() { keyword_at } else { offset_in(text, rest) };
    let kind = parse_kind(name, rest, escape, heredocs).map_err(|(at, e)| match at {
        At::Keyword => (keyword_at, e),
        At::Rest(o) => (rest_at + o, e),
    })?;
    Ok((kind, keyword_at))
}

/// Where in the instruction an error is.
enum At {
    Keyword,
    /// Offset in the arguments.
    Rest(usize),
}

fn at_rest<T>(r: Result<T, impl Into<SyntaxError>>) -> Result<T, (At, SyntaxError)> {
    r.map_err(|e| (At::Rest(0), e.into()))
}

fn parse_kind(name: &str, rest: &str, escape: char, heredocs: Vec<Heredoc>) -> Result<Kind, (At, SyntaxError)> {
    let upper = name.to_uppercase();
    let name: &'static str = match upper.as_str() {
        "FROM" => "FROM",
        "ARG" => "ARG",
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
        "SHELL" => "SHELL",
        "HEALTHCHECK" => "HEALTHCHECK",
        "ONBUILD" => "ONBUILD",
        "RUN" => "RUN",
        "MAINTAINER" => return Err((At::Keyword, SyntaxError::Unsupported(upper))),
        _ => return Err((At::Keyword, SyntaxError::UnknownInstruction(name.to_string()))),
    };
    if rest.is_empty() && !matches!(name, "CMD" | "ENTRYPOINT") {
        return Err((At::Keyword, SyntaxError::Arguments(name, "an argument")));
    }
    Ok(match name {
        "FROM" => from(rest, escape)?,
        "ARG" => Kind::Arg(args(rest, escape)?),
        "COPY" | "ADD" => {
            let args = copy_args(name, rest, escape, heredocs)?;
            if name == "COPY" {
                Kind::Copy(args)
            } else {
                Kind::Add(args)
            }
        }
        "RUN" => Kind::Run(run_args(rest, escape, heredocs)?),
        "VOLUME" => Kind::Volume(at_rest(json_or_words(rest, escape))?),
        "WORKDIR" => Kind::Workdir(rest.to_string()),
        "USER" => Kind::User(rest.to_string()),
        "STOPSIGNAL" => Kind::StopSignal(rest.to_string()),
        "ENV" => Kind::Env(key_values(name, rest, escape)?),
        "LABEL" => Kind::Label(key_values(name, rest, escape)?),
        "CMD" => Kind::Cmd(command(rest)),
        "ENTRYPOINT" => Kind::Entrypoint(command(rest)),
        "SHELL" => Kind::Shell(json_array(rest).filter(|v| !v.is_empty()).ok_or((At::Rest(0), SyntaxError::ShellForm))?),
        "HEALTHCHECK" => Kind::Healthcheck(healthcheck(rest, escape)?),
        "ONBUILD" => {
            let inner = rest.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
            if matches!(inner.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                return Err((At::Rest(0), SyntaxError::OnBuild(inner)));
            }
            // Checked now so a broken trigger fails this build, not the child's.
            parse_kind(&inner, rest[inner.len()..].trim(), escape, Vec::new())
                .map_err(|(_, e)| (At::Rest(0), e))?;
            Kind::OnBuild(rest.to_string())
        }
        _ => Kind::Expose(at_rest(words::split_raw(rest, escape))?),
    })
}

fn from(rest: &str, escape: char) -> Result<Kind, (At, SyntaxError)> {
    let spans = at_rest(words::split_spans(rest, escape))?;
    let (flag_list, first) = flags("FROM", &spans)?;
    let mut platform = None;
    for (at, flag, value) in flag_list {
        match flag.as_str() {
            "platform" if !value.is_empty() => platform = Some(value),
            "platform" => return Err((At::Rest(at), SyntaxError::FlagValue("FROM", "--platform".into()))),
            _ => return Err((At::Rest(at), SyntaxError::UnsupportedFlag("FROM".into(), format!("--{flag}")))),
        }
    }
    match &spans[first..] {
        [(_, image)] => Ok(Kind::From { image: image.clone(), name: None, platform }),
        [(_, image), (_, as_), (at, alias)] if as_.eq_ignore_ascii_case("as") => {
            let valid = alias.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && alias.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err((At::Rest(*at), SyntaxError::StageName(alias.clone())));
            }
            Ok(Kind::From { image: image.clone(), name: Some(alias.to_ascii_lowercase()), platform })
        }
        _ => Err((At::Rest(0), SyntaxError::Arguments("FROM", "an image (FROM [--platform=OS/ARCH] IMAGE [AS NAME])"))),
    }
}

fn args(rest: &str, escape: char) -> Result<Vec<(String, Option<String>)>, (At, SyntaxError)> {
    let words = at_rest(words::split_spans(rest, escape))?;
    words
        .into_iter()
        .map(|(at, word)| {
            let (name, default) = match word.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (word.clone(), None),
            };
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err((At::Rest(at), SyntaxError::ArgName(name)));
            }
            Ok((name, default))
        })
        .collect()
}

/// Leading `--name=value` flags of `words` (shell form), as
/// (offset, name, value); the rest are returned from `first`.
fn flags(owner: &'static str, words: &[(usize, String)]) -> Result<(Vec<(usize, String, String)>, usize), (At, SyntaxError)> {
    let mut out = Vec::new();
    let mut first = 0;
    for (at, word) in words {
        let Some(flag) = word.strip_prefix("--") else { break };
        first += 1;
        let Some((name, value)) = flag.split_once('=') else {
            return Err((At::Rest(*at), SyntaxError::FlagValue(owner, format!("--{flag}"))));
        };
        out.push((*at, name.to_string(), value.to_string()));
    }
    Ok((out, first))
}

fn copy_args(name: &'static str, rest: &str, escape: char, heredocs: Vec<Heredoc>) -> Result<CopyArgs, (At, SyntaxError)> {
    let spans = at_rest(words::split_spans(rest, escape))?;
    let (flag_list, first) = flags(name, &spans)?;
    let mut args = CopyArgs {
        from: None,
        chown: None,
        chmod: None,
        checksum: None,
        words: Words { words: Vec::new(), json: false },
        heredocs: Vec::new(),
    };
    for (at, flag, value) in flag_list {
        let slot = match flag.as_str() {
            "from" if name == "COPY" => &mut args.from,
            "chown" => &mut args.chown,
            "chmod" => &mut args.chmod,
            "checksum" if name == "ADD" => &mut args.checksum,
            _ => return Err((At::Rest(at), SyntaxError::UnsupportedFlag(name.to_string(), format!("--{flag}")))),
        };
        *slot = Some(value);
    }
    // The rest is either a JSON array or shell words (after the flags).
    let after = spans.get(first).map_or(rest.len(), |(at, _)| *at);
    let remainder = &rest[after..];
    args.words = match json_array(remainder) {
        Some(words) => Words { words, json: true },
        None => {
            let mut plain = Vec::new();
            for (_, word) in &spans[first..] {
                match heredocs.iter().find(|h| &h.marker == word) {
                    Some(h) => args.heredocs.push(h.clone()),
                    None => plain.push(word.clone()),
                }
            }
            Words { words: plain, json: false }
        }
    };
    let sources = args.words.words.len().saturating_sub(1) + args.heredocs.len();
    if args.words.words.is_empty() || sources == 0 {
        return Err((At::Rest(0), SyntaxError::Arguments(name, "at least one source and a destination")));
    }
    Ok(args)
}

/// RUN's flags (`--network`; others are refused by name) and command.
fn run_args(rest: &str, escape: char, heredocs: Vec<Heredoc>) -> Result<RunArgs, (At, SyntaxError)> {
    let mut network = Network::None;
    let mut after = 0;
    if rest.starts_with("--") {
        let spans = at_rest(words::split_spans(rest, escape))?;
        let (flag_list, first) = flags("RUN", &spans)?;
        for (at, flag, value) in flag_list {
            match flag.as_str() {
                "network" => {
                    network = match value.as_str() {
                        "none" => Network::None,
                        "host" => Network::Host,
                        _ => return Err((At::Rest(at), SyntaxError::FlagChoice("RUN", "--network", value, "none or host"))),
                    }
                }
                _ => return Err((At::Rest(at), SyntaxError::UnsupportedFlag("RUN".into(), format!("--{flag}")))),
            }
        }
        after = spans.get(first).map_or(rest.len(), |(at, _)| *at);
    }
    let command_text = rest[after..].trim();
    if command_text.is_empty() {
        return Err((At::Rest(after), SyntaxError::Arguments("RUN", "a command")));
    }
    let command = command(command_text);
    if matches!(&command, Command::Exec(argv) if argv.is_empty()) {
        return Err((At::Rest(after), SyntaxError::Arguments("RUN", "a command")));
    }
    Ok(RunArgs { network, command, heredocs })
}

/// A JSON array of strings, if `rest` is one.
pub(crate) fn json_array(rest: &str) -> Option<Vec<String>> {
    if rest.starts_with('[') {
        serde_json::from_str(rest).ok()
    } else {
        None
    }
}

fn json_or_words(rest: &str, escape: char) -> Result<Words, SyntaxError> {
    Ok(match json_array(rest) {
        Some(words) => Words { words, json: true },
        None => Words { words: words::split_raw(rest, escape)?, json: false },
    })
}

fn command(rest: &str) -> Command {
    match json_array(rest) {
        Some(argv) => Command::Exec(argv),
        None => Command::Shell(rest.to_string()),
    }
}

/// Go-style duration (`1m30s`, `500ms`, `2h`) in nanoseconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale: f64 = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add((number * scale) as u64)?;
    }
    Some(total)
}

fn healthcheck(rest: &str, escape: char) -> Result<Option<Healthcheck>, (At, SyntaxError)> {
    let spans = at_rest(words::split_spans(rest, escape))?;
    let (flag_list, first) = flags("HEALTHCHECK", &spans)?;
    let Some((cmd_at, keyword)) = spans.get(first) else {
        return Err((At::Rest(0), SyntaxError::HealthcheckForm));
    };
    if keyword.eq_ignore_ascii_case("none") {
        if spans.len() != first + 1 || !flag_list.is_empty() {
            return Err((At::Rest(0), SyntaxError::HealthcheckForm));
        }
        return Ok(None);
    }
    if !keyword.eq_ignore_ascii_case("cmd") {
        return Err((At::Rest(*cmd_at), SyntaxError::HealthcheckForm));
    }
    let command_text = rest[cmd_at + keyword.len()..].trim();
    if command_text.is_empty() {
        return Err((At::Rest(*cmd_at), SyntaxError::HealthcheckForm));
    }
    let test = match command(command_text) {
        Command::Exec(argv) => std::iter::once("CMD".to_string()).chain(argv).collect(),
        Command::Shell(s) => vec!["CMD-SHELL".to_string(), s],
    };
    let mut check = Healthcheck { test, interval: None, timeout: None, start_period: None, start_interval: None, retries: None };
    for (at, flag, value) in flag_list {
        let duration = || parse_duration(&value).ok_or((At::Rest(at), SyntaxError::Duration(value.clone())));
        match flag.as_str() {
            "interval" => check.interval = Some(duration()?),
            "timeout" => check.timeout = Some(duration()?),
            "start-period" => check.start_period = Some(duration()?),
            "start-interval" => check.start_interval = Some(duration()?),
            "retries" => {
                check.retries = Some(value.parse().map_err(|_| (At::Rest(at), SyntaxError::Retries(value.clone())))?)
            }
            _ => {
                return Err((At::Rest(at), SyntaxError::UnsupportedFlag("HEALTHCHECK".into(), format!("--{flag}"))))
            }
        }
    }
    Ok(Some(check))
}

/// `NAME=VALUE ...` pairs, or the legacy `NAME VALUE` form where the value
/// is the rest of the line.
fn key_values(name: &'static str, rest: &str, escape: char) -> Result<Vec<(String, String)>, (At, SyntaxError)> {
    let words = at_rest(words::split_spans(rest, escape))?;
    let first = words.first().map(|(_, w)| w.as_str()).unwrap_or_default();
    if !first.contains('=') {
        // Legacy form: the key is the first word, the value everything after it.
        let value = rest[first.len()..].trim();
        if value.is_empty() {
            return Err((At::Rest(0), SyntaxError::KeyValue(name, rest.to_string())));
        }
        return Ok(vec![(first.to_string(), value.to_string())]);
    }
    words
        .into_iter()
        .map(|(at, word)| match word.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err((At::Rest(at), SyntaxError::KeyValue(name, word))),
        })
        .collect()
}
