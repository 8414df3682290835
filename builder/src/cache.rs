//! The build cache: each layer step's key (sha256 of the parent key, the
//! instruction after substitution and the digest of its inputs) maps to the
//! layer blob it produced, kept in the cache's own blob directory so a
//! rebuild with the same inputs reuses the same bytes (and digests).
//!
//! Layout (directories 0700, since the blobs may hold private context
//! files): `keys/<hex>.json`, `blobs/sha256/<hex>`. Every file is written to
//! a temporary file and renamed into place, so concurrent builds and crashes
//! never leave half-written entries.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::blobs::{sha256_hex, BlobStore};

pub const DEFAULT_CACHE_DIR: &str = "/var/lib/hybrid/cache";

/// `HYBRID_CACHE_DIR`, or the default.
pub fn cache_dir_from_env() -> PathBuf {
    std::env::var_os("HYBRID_CACHE_DIR").filter(|v| !v.is_empty()).map_or_else(|| DEFAULT_CACHE_DIR.into(), PathBuf::from)
}

/// What a cached step produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLayer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
}

/// The next key in a chain.
pub fn chain_key(parent: &str, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(parent);
    for part in parts {
        hasher.update(b"\n");
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

pub struct Cache {
    root: PathBuf,
}

fn make_private_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// Write `data` to `path` through a temporary file in the same directory.
fn write_atomic(path: &Path, data: &mut dyn io::Read) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    io::copy(data, &mut temp)?;
    temp.flush()?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl Cache {
    /// Open (creating it, private to its owner) the cache at `root`.
    pub fn open(root: &Path) -> io::Result<Cache> {
        make_private_dir(root)?;
        make_private_dir(&root.join("keys"))?;
        make_private_dir(&root.join("blobs").join("sha256"))?;
        Ok(Cache { root: root.to_path_buf() })
    }

    fn key_path(&self, key: &str) -> PathBuf {
        self.root.join("keys").join(format!("{key}.json"))
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        Some(self.root.join("blobs").join("sha256").join(sha256_hex(digest)?))
    }

    /// The layer cached under `key`, copied into `blobs` (verified against
    /// its digest; a damaged entry is a miss).
    pub fn get(&self, key: &str, blobs: &BlobStore) -> Option<CachedLayer> {
        let data = fs::read(self.key_path(key)).ok()?;
        let layer: CachedLayer = serde_json::from_slice(&data).ok()?;
        if blobs.has_local(&layer.digest) {
            return Some(layer);
        }
        let mut file = File::open(self.blob_path(&layer.digest)?).ok()?;
        let mut writer = blobs.writer().ok()?;
        io::copy(&mut file, &mut writer).ok()?;
        let (digest, _) = writer.commit().ok()?;
        if digest != layer.digest {
            tracing::warn!("build cache entry {key} is damaged (blob hashes to {digest}); rebuilding");
            return None;
        }
        Some(layer)
    }

    /// Remember that `key` produced `layer` (its blob taken from `blobs`).
    pub fn put(&self, key: &str, layer: &CachedLayer, blobs: &BlobStore) -> io::Result<()> {
        let blob = self.blob_path(&layer.digest).ok_or_else(|| io::Error::other("bad digest"))?;
        if !blob.is_file() {
            write_atomic(&blob, &mut blobs.open(&layer.digest)?)?;
        }
        let json = serde_json::to_vec(layer).map_err(io::Error::other)?;
        write_atomic(&self.key_path(key), &mut &json[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_get_and_private_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let cache = Cache::open(&root).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o700);
        let blobs = BlobStore::temp().unwrap();
        let (digest, size) = blobs.put_bytes(b"layer").unwrap();
        let layer = CachedLayer { digest, diff_id: "sha256:x".into(), size, media_type: "m".into() };
        let key = chain_key("parent", &["COPY a /b", "sha256:inputs"]);
        assert_eq!(cache.get(&key, &blobs), None);
        cache.put(&key, &layer, &blobs).unwrap();
        let other = BlobStore::temp().unwrap();
        assert_eq!(cache.get(&key, &other), Some(layer.clone()));
        assert_eq!(other.read(&layer.digest).unwrap(), b"layer");
        assert_ne!(key, chain_key("parent", &["COPY a /b", "sha256:other"]));
    }
}
