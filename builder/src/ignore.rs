//! `.dockerignore`: patterns (`*`, `?`, `[...]` per path component, `**`
//! for any number of components) relative to the context, `!` exceptions,
//! the last matching line wins; a pattern matching a directory excludes
//! everything under it, as docker's matcher does.

use std::path::Path;

use crate::copy::wildcard_match;
use crate::layer::clean_image_path;

#[derive(Debug, Clone, Default)]
pub struct Ignore {
    /// (exception, components)
    patterns: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    /// Read `CONTEXT/.dockerignore` (none: nothing is ignored).
    pub fn load(context: &Path) -> std::io::Result<Ignore> {
        match std::fs::read_to_string(context.join(".dockerignore")) {
            Ok(text) => Ok(Ignore::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ignore::default()),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let clean = clean_image_path("/", pattern);
            if clean.is_empty() {
                continue;
            }
            patterns.push((exception, clean.split('/').map(str::to_string).collect()));
        }
        Ignore { patterns }
    }

    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|(e, _)| *e)
    }

    /// Whether `rel` (a clean path relative to the context) is excluded.
    pub fn is_ignored(&self, rel: &str) -> bool {
        if rel.is_empty() {
            return false;
        }
        let parts: Vec<&str> = rel.split('/').collect();
        let mut ignored = false;
        for (exception, pattern) in &self.patterns {
            // The path itself or one of its parent directories.
            let hit = (1..=parts.len()).any(|n| matches(pattern, &parts[..n]));
            if hit {
                ignored = !exception;
            }
        }
        ignored
    }
}

fn matches(pattern: &[String], parts: &[&str]) -> bool {
    match pattern.split_first() {
        None => parts.is_empty(),
        Some((first, rest)) if first == "**" => (0..=parts.len()).any(|i| matches(rest, &parts[i..])),
        Some((first, rest)) => match parts.split_first() {
            Some((part, more)) => wildcard_match(first, part) && matches(rest, more),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_like_patterns() {
        let ignore = Ignore::parse("# comment\n*.md\n!README.md\ntarget\n**/*.tmp\n/secret/*\n!secret/ok\n");
        assert!(ignore.is_ignored("notes.md"));
        assert!(!ignore.is_ignored("README.md"));
        assert!(!ignore.is_ignored("docs/notes.md"), "* does not cross directories");
        assert!(ignore.is_ignored("target/debug/x"), "a directory excludes its contents");
        assert!(ignore.is_ignored("a/b/c.tmp"));
        assert!(ignore.is_ignored("c.tmp"));
        assert!(ignore.is_ignored("secret/key"));
        assert!(!ignore.is_ignored("secret/ok"));
        assert!(!ignore.is_ignored("src/main.rs"));
        assert!(ignore.has_exceptions());
    }
}
