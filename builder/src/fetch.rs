//! ADD's remote sources. An `http://` or `https://` source is downloaded
//! into the build's staging area, as `docker build` does it: the file is
//! not extracted, its mode is 0600, it is named after the URL's last path
//! segment when the destination is a directory, and `--checksum=sha256:HEX`
//! pins its content. Proxies come from the environment (`HTTPS_PROXY`,
//! `NO_PROXY`…). The download happens on every build; the layer's cache
//! key is its content, so an unchanged file still hits the cache.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::blobs::HashingWriter;

/// Time to connect (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the response head, then for the body to stall at most.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("cannot stage the download of {url}")]
    Stage {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url} does not match --checksum: want {want}, got {got}")]
    Checksum { url: String, want: String, got: String },
    #[error("invalid --checksum {0:?} (want sha256:<64 hex digits>)")]
    BadChecksum(String),
    #[error("--checksum needs exactly one http(s) source")]
    ChecksumSources,
}

/// Whether an ADD source is a remote URL.
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// The file name a URL gives a download into a directory: its path's last
/// segment, without query or fragment; `None` when it has none.
pub fn file_name(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (_, path) = rest.split_once('/')?;
    let name = path.rsplit('/').next().unwrap_or_default();
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

/// A checked `--checksum` value: `sha256:HEX`.
pub fn parse_checksum(value: &str) -> Result<String, FetchError> {
    let hex = value.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FetchError::BadChecksum(value.to_string()));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// A downloaded file: where it is staged and its digest.
#[derive(Debug)]
pub struct Download {
    pub path: PathBuf,
    pub digest: String,
}

/// Download `url` into the staged file `path` (open as `file`); with
/// `checksum`, refuse content that does not hash to it. Blocking: call it
/// off the async runtime.
pub fn fetch(url: &str, (path, mut file): (PathBuf, File), checksum: Option<&str>) -> Result<Download, FetchError> {
    let fetch_err = |message: String| FetchError::Fetch { url: url.to_string(), message };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .user_agent(concat!("hybrid-build/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| fetch_err(e.to_string()))?;
    let mut body = response.body_mut().as_reader();
    let mut hashing = HashingWriter::new(&mut file);
    io::copy(&mut body, &mut hashing).map_err(|e| fetch_err(format!("reading the body: {e}")))?;
    let (_, digest, _) = hashing.finish();
    file.flush().map_err(|source| FetchError::Stage { url: url.to_string(), source })?;
    if let Some(want) = checksum {
        if want != digest {
            return Err(FetchError::Checksum { url: url.to_string(), want: want.to_string(), got: digest });
        }
    }
    tracing::debug!("fetched {url} ({digest})");
    Ok(Download { path, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls() {
        assert_eq!(file_name("https://example.com/a/tool.tar.gz?x=1#f").as_deref(), Some("tool.tar.gz"));
        assert_eq!(file_name("http://example.com/a/").as_deref(), None);
        assert_eq!(file_name("http://example.com").as_deref(), None);
        assert_eq!(file_name("http://example.com?q=/x").as_deref(), None);
    }

    #[test]
    fn checksums() {
        let hex = "A".repeat(64);
        assert_eq!(parse_checksum(&format!("sha256:{hex}")).unwrap(), format!("sha256:{}", "a".repeat(64)));
        assert!(parse_checksum("sha256:abc").is_err());
        assert!(parse_checksum(&format!("md5:{hex}")).is_err());
    }
}
