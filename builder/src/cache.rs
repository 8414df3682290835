//! The build cache: each layer step's key (sha256 of the parent key, the
//! instruction after substitution and the digest of its inputs) maps to the
//! layer blob it produced, kept in the cache's own blob directory so a
//! rebuild with the same inputs reuses the same bytes (and digests).
//!
//! Layout (directories 0700, since the blobs may hold private context
//! files): `keys/<hex>.json`, `blobs/sha256/<hex>`. Every file is written to
//! a temporary file and renamed into place, so concurrent builds and crashes
//! never leave half-written entries.
//!
//! Pruning ([`prune`]) removes entries least recently used first (a hit
//! touches its key file's mtime). An entry is its key file; removing that
//! (one unlink) removes the entry at once, and its blob goes when no key
//! is left that names it. Builds hold a shared lock on `lock` while they
//! use the cache, and pruning takes it exclusively, so it never removes
//! what a running build is using.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use thiserror::Error;

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
    /// The shared lock that keeps [`prune`] out while this build runs.
    _lock: File,
}

/// Default `--max` of `hybrid cache prune`: 2 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 2 << 30;

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("invalid size {0:?} (want bytes or a number with K, M, G or T, e.g. 500M, 2G)")]
    Size(String),
    #[error("build cache {0} is in use by a running build; prune it when the build is done")]
    Busy(String),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.display().to_string();
    move |source| CacheError::Io { action, path, source }
}

/// A size: bytes, or a number with a binary suffix (`K`, `M`, `G`, `T`,
/// optionally followed by `i` and/or `B`, any case): `500M`, `2G`, `2GiB`.
pub fn parse_size(text: &str) -> Result<u64, CacheError> {
    let bad = || CacheError::Size(text.to_string());
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let suffix = suffix.trim().to_ascii_lowercase();
    let (letter, rest) = suffix.split_at(suffix.len().min(1));
    let shift = match (letter, rest) {
        ("", "") | ("b", "") => 0,
        (_, "" | "b" | "i" | "ib") => match letter {
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    number.checked_mul(1 << shift).ok_or_else(bad)
}

/// What [`prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Entries (keys) removed.
    pub removed_entries: usize,
    /// Bytes freed (key files and blobs).
    pub removed_bytes: u64,
    /// Bytes the cache still holds.
    pub remaining_bytes: u64,
    pub remaining_entries: usize,
}

/// Lock `root/lock` (created if missing): shared for a build, exclusive
/// (without waiting) for pruning. Returns `None` when the lock is taken.
fn lock(root: &Path, exclusive: bool) -> io::Result<Option<File>> {
    let path = root.join("lock");
    let file = File::options().read(true).write(true).create(true).truncate(false).open(path)?;
    let op = if exclusive { libc::LOCK_EX | libc::LOCK_NB } else { libc::LOCK_SH };
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(Some(file));
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if exclusive => return Ok(None),
            _ => return Err(error),
        }
    }
}

/// Remove the least recently used entries of the cache at `root` until it
/// holds at most `max` bytes, and blobs no entry names. A missing cache is
/// empty. Fails (removing nothing) while a build uses the cache.
pub fn prune(root: &Path, max: u64) -> Result<PruneReport, CacheError> {
    if !root.exists() {
        return Ok(PruneReport::default());
    }
    let shown = root.display().to_string();
    let _lock = lock(root, true).map_err(io_err("lock", root))?.ok_or(CacheError::Busy(shown))?;
    let keys_dir = root.join("keys");
    let blobs_dir = root.join("blobs").join("sha256");

    // Every blob (name → size); temporary files of a crashed build too.
    let mut blob_sizes: HashMap<String, u64> = HashMap::new();
    let mut stale_temps = Vec::new();
    for (dir, is_blobs) in [(&blobs_dir, true), (&keys_dir, false)] {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read", dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if name.starts_with(".tmp-") {
                stale_temps.push((entry.path(), size));
            } else if is_blobs {
                blob_sizes.insert(name, size);
            }
        }
    }

    // Every key: (last use, path, size, blob name).
    struct Key {
        used: SystemTime,
        path: PathBuf,
        size: u64,
        blob: Option<String>,
    }
    let mut keys = Vec::new();
    if let Ok(entries) = fs::read_dir(&keys_dir) {
        for entry in entries {
            let entry = entry.map_err(io_err("read", &keys_dir))?;
            let path = entry.path();
            if !entry.file_name().to_string_lossy().ends_with(".json") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            // An unreadable entry is a miss for builds: first to go.
            let blob = fs::read(&path)
                .ok()
                .and_then(|data| serde_json::from_slice::<CachedLayer>(&data).ok())
                .and_then(|layer| sha256_hex(&layer.digest).map(str::to_string));
            let used = if blob.is_some() { meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) } else { SystemTime::UNIX_EPOCH };
            keys.push(Key { used, path, size: meta.len(), blob });
        }
    }
    keys.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.path.cmp(&b.path)));

    let mut refs: HashMap<&str, usize> = HashMap::new();
    for key in &keys {
        if let Some(blob) = &key.blob {
            *refs.entry(blob.as_str()).or_default() += 1;
        }
    }
    let blob_size = |name: &str| blob_sizes.get(name).copied().unwrap_or(0);
    let mut total: u64 = keys.iter().map(|k| k.size).sum::<u64>() + refs.keys().map(|b| blob_size(b)).sum::<u64>();
    let mut report = PruneReport::default();
    let mut kept = keys.len();
    for key in &keys {
        if total <= max {
            break;
        }
        match fs::remove_file(&key.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &key.path)(e)),
        }
        kept -= 1;
        report.removed_entries += 1;
        total -= key.size;
        report.removed_bytes += key.size;
        if let Some(blob) = &key.blob {
            if let Some(count) = refs.get_mut(blob.as_str()) {
                *count -= 1;
                if *count == 0 {
                    total -= blob_size(blob);
                }
            }
        }
    }

    // Blobs no remaining key names, and leftover temporary files.
    let mut garbage: Vec<(PathBuf, u64)> = blob_sizes
        .iter()
        .filter(|(name, _)| refs.get(name.as_str()).copied().unwrap_or(0) == 0)
        .map(|(name, size)| (blobs_dir.join(name), *size))
        .collect();
    garbage.extend(stale_temps);
    for (path, size) in garbage {
        match fs::remove_file(&path) {
            Ok(()) => report.removed_bytes += size,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
    }
    report.remaining_bytes = total;
    report.remaining_entries = kept;
    Ok(report)
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
        let lock = lock(root, false)?.ok_or_else(|| io::Error::other("cache lock unavailable"))?;
        Ok(Cache { root: root.to_path_buf(), _lock: lock })
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
        let key_path = self.key_path(key);
        let data = fs::read(&key_path).ok()?;
        let layer: CachedLayer = serde_json::from_slice(&data).ok()?;
        let layer = self.copy_blob(key, layer, blobs)?;
        // Last use, for pruning.
        if let Err(e) = File::options().write(true).open(&key_path).and_then(|f| f.set_modified(SystemTime::now())) {
            tracing::debug!("cannot touch build cache entry {}: {e}", key_path.display());
        }
        Some(layer)
    }

    fn copy_blob(&self, key: &str, layer: CachedLayer, blobs: &BlobStore) -> Option<CachedLayer> {
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

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("3kb").unwrap(), 3 << 10);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("7B").unwrap(), 7);
        for bad in ["", "M", "1.5G", "2X", "-1", "5i", "99999999999T"] {
            assert!(matches!(parse_size(bad), Err(CacheError::Size(_))), "{bad}");
        }
    }

    fn put_layer(cache: &Cache, blobs: &BlobStore, key: &str, data: &[u8]) -> CachedLayer {
        let (digest, size) = blobs.put_bytes(data).unwrap();
        let layer = CachedLayer { digest, diff_id: "sha256:x".into(), size, media_type: "m".into() };
        cache.put(key, &layer, blobs).unwrap();
        layer
    }

    fn set_used(cache: &Cache, key: &str, seconds: u64) {
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
        File::options().write(true).open(cache.key_path(key)).unwrap().set_modified(time).unwrap();
    }

    #[test]
    fn prunes_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let blobs = BlobStore::temp().unwrap();
        let cache = Cache::open(&root).unwrap();
        let old = put_layer(&cache, &blobs, "old", &[1u8; 1000]);
        let mid = put_layer(&cache, &blobs, "mid", &[2u8; 1000]);
        let new = put_layer(&cache, &blobs, "new", &[3u8; 1000]);
        // "mid" shares its blob with "shared".
        cache.put("shared", &mid, &blobs).unwrap();
        set_used(&cache, "old", 100);
        set_used(&cache, "mid", 200);
        set_used(&cache, "shared", 300);
        set_used(&cache, "new", 400);
        // A hit makes "old" the most recently used.
        assert!(cache.get("old", &BlobStore::temp().unwrap()).is_some());

        // While a build holds the cache, pruning removes nothing.
        assert!(matches!(prune(&root, 0), Err(CacheError::Busy(_))));
        drop(cache);

        let report = prune(&root, 2500).unwrap();
        // "mid" and "shared" go (freeing their blob), "new" and "old" stay.
        assert_eq!((report.removed_entries, report.remaining_entries), (2, 2));
        assert!(report.remaining_bytes <= 2500);
        let cache = Cache::open(&root).unwrap();
        let other = BlobStore::temp().unwrap();
        assert_eq!(cache.get("old", &other), Some(old.clone()));
        assert_eq!(cache.get("new", &other), Some(new));
        assert_eq!(cache.get("mid", &other), None);
        assert_eq!(cache.get("shared", &other), None);
        assert!(!cache.blob_path(&mid.digest).unwrap().exists());
        drop(cache);

        // Everything goes under a zero limit; an absent cache is empty.
        let report = prune(&root, 0).unwrap();
        assert_eq!((report.removed_entries, report.remaining_entries, report.remaining_bytes), (2, 0, 0));
        assert_eq!(fs::read_dir(root.join("blobs/sha256")).unwrap().count(), 0);
        assert_eq!(prune(&dir.path().join("none"), 0).unwrap(), PruneReport::default());
    }

    #[test]
    fn prune_removes_orphans_and_damaged_keys_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let blobs = BlobStore::temp().unwrap();
        let cache = Cache::open(&root).unwrap();
        let good = put_layer(&cache, &blobs, "good", b"good");
        fs::write(root.join("keys/bad.json"), b"not json").unwrap();
        fs::write(root.join("blobs/sha256").join("ab".repeat(32)), b"orphan").unwrap();
        fs::write(root.join("blobs/sha256/.tmp-crashed"), b"partial").unwrap();
        drop(cache);
        let report = prune(&root, DEFAULT_MAX_SIZE).unwrap();
        assert_eq!((report.removed_entries, report.remaining_entries), (0, 2));
        assert_eq!(fs::read_dir(root.join("blobs/sha256")).unwrap().count(), 1);
        let keys_size = fs::metadata(root.join("keys/good.json")).unwrap().len() + 8;
        let report = prune(&root, keys_size + 4).unwrap();
        assert_eq!((report.removed_entries, report.remaining_entries), (0, 2));
        let report = prune(&root, keys_size + 3).unwrap();
        // The damaged key goes first.
        assert_eq!((report.removed_entries, report.remaining_entries), (1, 1));
        let cache = Cache::open(&root).unwrap();
        assert_eq!(cache.get("good", &BlobStore::temp().unwrap()), Some(good));
    }
}
