//! A local content-addressed blob directory (`sha256/<hex>` files) that a
//! build writes its layers, config and manifest into, and that archives are
//! read into. Blobs of a base image that stay in containerd are recorded as
//! remote and fetched only if an OCI archive needs them.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a `sha256:<64 hex>` digest, or `None` if it is not one
/// (which also keeps digests from untrusted manifests out of file paths).
pub fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn invalid_digest(digest: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("unsupported digest {digest:?} (want sha256:<hex>)"))
}

/// A writer that hashes (SHA-256) and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), written: 0 }
    }

    /// The inner writer, the `sha256:` digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, format!("sha256:{}", hex::encode(self.hasher.finalize())), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A blob being written; [`BlobWriter::commit`] moves it into place.
pub struct BlobWriter {
    file: HashingWriter<io::BufWriter<File>>,
    temp: PathBuf,
    root: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Finish the blob; returns its digest and size.
    pub fn commit(self) -> io::Result<(String, u64)> {
        let (file, digest, size) = self.file.finish();
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let hex = sha256_hex(&digest).ok_or_else(|| invalid_digest(&digest))?;
        std::fs::rename(&self.temp, self.root.join("sha256").join(hex))?;
        Ok((digest, size))
    }
}

/// Remove the scratch directories in `dir` whose build is gone: a build
/// killed outright (SIGKILL, or with its machine's power) leaves its layers
/// and blobs there (see left_behind.rs). A directory named otherwise (one
/// of a build from before the pid was in the name) is left.
fn remove_stale_scratch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(crate::left_behind::build_of) else { continue };
        if crate::left_behind::gone(pid) {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::debug!("removed the scratch directory {:?} of a build that is gone", entry.path()),
                Err(e) => tracing::debug!("cannot remove the scratch directory {:?} of a build that is gone: {e}", entry.path()),
            }
        }
    }
}

pub struct BlobStore {
    root: PathBuf,
    remote: BTreeSet<String>,
    counter: AtomicU64,
    _temp: tempfile::TempDir,
}

impl BlobStore {
    /// A store in a fresh temporary directory (removed on drop), named
    /// after this process: the scratch directories of builds that were
    /// killed (and could not remove theirs) are removed first.
    pub fn temp() -> io::Result<BlobStore> {
        let temp_dir = std::env::temp_dir();
        remove_stale_scratch(&temp_dir);
        let temp = tempfile::Builder::new().prefix(&crate::left_behind::own_prefix()).tempdir_in(&temp_dir)?;
        let root = temp.path().to_path_buf();
        for dir in ["sha256", "ingest", "staging"] {
            std::fs::create_dir(root.join(dir))?;
        }
        Ok(BlobStore { root, remote: BTreeSet::new(), counter: AtomicU64::new(0), _temp: temp })
    }

    fn next_name(&self) -> String {
        self.counter.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// A new empty file for build scratch data (e.g. files extracted by ADD).
    pub fn staging_file(&self) -> io::Result<(PathBuf, File)> {
        let path = self.root.join("staging").join(self.next_name());
        let file = File::create(&path)?;
        Ok((path, file))
    }

    pub fn writer(&self) -> io::Result<BlobWriter> {
        let temp = self.root.join("ingest").join(self.next_name());
        let file = File::create(&temp)?;
        Ok(BlobWriter {
            file: HashingWriter::new(io::BufWriter::new(file)),
            temp,
            root: self.root.clone(),
        })
    }

    pub fn put_bytes(&self, data: &[u8]) -> io::Result<(String, u64)> {
        let mut writer = self.writer()?;
        writer.write_all(data)?;
        writer.commit()
    }

    /// Where the blob `digest` is (or would be) stored locally.
    pub fn path(&self, digest: &str) -> io::Result<PathBuf> {
        let hex = sha256_hex(digest).ok_or_else(|| invalid_digest(digest))?;
        Ok(self.root.join("sha256").join(hex))
    }

    pub fn has_local(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    pub fn open(&self, digest: &str) -> io::Result<File> {
        File::open(self.path(digest)?)
    }

    pub fn read(&self, digest: &str) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open(digest)?.read_to_end(&mut data)?;
        Ok(data)
    }

    /// Record that `digest` lives in containerd and is not (yet) local.
    pub fn mark_remote(&mut self, digest: &str) {
        if !self.has_local(digest) {
            self.remote.insert(digest.to_string());
        }
    }

    /// Blobs recorded as remote and still missing locally.
    pub fn missing_remote(&self) -> Vec<String> {
        self.remote.iter().filter(|d| !self.has_local(d)).cloned().collect()
    }

    /// The store's directory (for tests and diagnostics).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_of_a_build_that_is_gone_is_removed_and_others_are_left() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that is gone: a child's, once reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let stale = dir.path().join(format!("hybrid-build-{gone}-abc"));
        let live = dir.path().join(format!("{}def", crate::left_behind::own_prefix()));
        let legacy = dir.path().join("hybrid-build-Xy12ab");
        let other = dir.path().join("unrelated-1-x");
        for d in [&stale, &live, &legacy, &other] {
            std::fs::create_dir_all(d.join("sha256")).unwrap();
        }
        remove_stale_scratch(dir.path());
        assert!(!stale.exists(), "the gone build's scratch is removed");
        assert!(live.exists() && legacy.exists() && other.exists(), "the rest stays");
    }

    #[test]
    fn put_and_read_back() {
        let store = BlobStore::temp().unwrap();
        let (digest, size) = store.put_bytes(b"hello").unwrap();
        assert_eq!(digest, sha256_digest(b"hello"));
        assert_eq!(size, 5);
        assert_eq!(store.read(&digest).unwrap(), b"hello");
        assert!(store.path("sha256:../../etc/passwd").is_err());
    }
}
