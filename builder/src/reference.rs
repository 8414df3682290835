//! Image names, normalized the way docker and `ctr` do:
//! `hello` → `docker.io/library/hello:latest`,
//! `me/app:1` → `docker.io/me/app:1`, `registry.local:5000/app` →
//! `registry.local:5000/app:latest` (a registry domain is kept as written).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid image name {name:?}: {reason}")]
pub struct ReferenceError {
    pub name: String,
    pub reason: &'static str,
}

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `domain/path`, e.g. `docker.io/library/hello`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl Reference {
    /// Parse and normalize `name`; `latest` is the tag when neither tag nor
    /// digest is given.
    pub fn parse(name: &str) -> Result<Reference, ReferenceError> {
        let err = |reason| ReferenceError { name: name.to_string(), reason };
        if name.is_empty() {
            return Err(err("empty"));
        }
        let (rest, digest) = match name.split_once('@') {
            Some((rest, digest)) => {
                let valid = digest
                    .strip_prefix("sha256:")
                    .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
                if !valid {
                    return Err(err("digest must be sha256:<64 hex digits>"));
                }
                (rest, Some(digest.to_string()))
            }
            None => (name, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && !tag.starts_with(['.', '-'])
                && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                return Err(err("bad tag"));
            }
        }
        let (domain, remainder) = match path.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => ("docker.io".to_string(), path.to_string()),
        };
        let remainder = if domain == "docker.io" && !remainder.contains('/') {
            format!("library/{remainder}")
        } else {
            remainder
        };
        if remainder.split('/').any(|component| !valid_component(component)) {
            return Err(err("repository components must be lower-case letters, digits and separators (. _ __ -)"));
        }
        if domain.is_empty() || domain.contains(char::is_whitespace) {
            return Err(err("bad registry domain"));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference { repository: format!("{domain}/{remainder}"), tag, digest })
    }
}

fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
}

/// The normalized full name, e.g. `docker.io/library/hello:latest`.
pub fn normalize(name: &str) -> Result<String, ReferenceError> {
    Reference::parse(name).map(|r| r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_ctr() {
        assert_eq!(normalize("hello:latest").unwrap(), "docker.io/library/hello:latest");
        assert_eq!(normalize("hello").unwrap(), "docker.io/library/hello:latest");
        assert_eq!(normalize("hybrid-examples/busybox:latest").unwrap(), "docker.io/hybrid-examples/busybox:latest");
        assert_eq!(normalize("docker.io/library/hello:1").unwrap(), "docker.io/library/hello:1");
        assert_eq!(normalize("localhost:5000/app").unwrap(), "localhost:5000/app:latest");
        assert_eq!(normalize("ghcr.io/o/app:v1.2").unwrap(), "ghcr.io/o/app:v1.2");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(normalize(&format!("app@{digest}")).unwrap(), format!("docker.io/library/app@{digest}"));
        assert!(normalize("Hello").is_err());
        assert!(normalize("app:").is_err());
        assert!(normalize("").is_err());
    }
}
