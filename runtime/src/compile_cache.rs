//! The compile cache: a wasm module is compiled once, then loaded
//! precompiled by every container that runs it.
//!
//! An entry's key is sha256(module bytes ‖ the engine's compatibility hash),
//! so a new wasmtime or other codegen settings miss instead of loading code
//! built for another engine. Entries are written atomically (temp file +
//! rename) in a root-only directory and end with a CRC-32 of the rest: a
//! corrupt entry is recompiled, never handed to wasmtime. A verified
//! module entry is mapped (`Module::deserialize_open_file`, which ignores
//! the trailing checksum), not copied: every container running a module
//! shares its machine code through the page cache.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

/// What an entry holds: a core module or a component, compiled differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ArtifactKind {
    Module,
    Component,
}

/// Where entries live unless `HYBRID_WASM_CACHE` says otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/hybrid/wasm-cache";
/// The bound on the cache's total size unless `HYBRID_WASM_CACHE_MAX_BYTES` says otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 512 * 1024 * 1024;
const ENTRY_SUFFIX: &str = "cwasm";
/// The trailing checksum: a CRC-32 (little-endian), which catches what
/// corrupts a file written once and renamed into place (a torn or
/// short write, flipped bits, a stray overwrite); the key, not the
/// checksum, ties an entry to its module. Checked at every Create: over
/// a 350 KiB entry, sha2's SHA-256 takes 0.37 ms on the test machine (with
/// SHA-NI), crc32fast 0.008 ms. Entries of the SHA-256 era fail the check
/// and are compiled again once.
const CHECKSUM_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("compile cache {path:?}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot compile wasm module: {0}")]
    Compile(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

/// What happened when a module was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A valid entry was there.
    Hit,
    /// No entry (or a corrupt one): the module was compiled and stored.
    Compiled,
}

#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl CompileCache {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self { dir: dir.into(), max_bytes }
    }

    /// The cache as configured by the environment, or the defaults.
    pub fn from_env() -> Self {
        let dir = std::env::var_os("HYBRID_WASM_CACHE").map(PathBuf::from).unwrap_or_else(|| DEFAULT_CACHE_DIR.into());
        let max_bytes = std::env::var("HYBRID_WASM_CACHE_MAX_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_BYTES);
        Self::new(dir, max_bytes)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry's path for `module` (binary or text) compiled by `engine`.
    pub fn entry_path(&self, engine: &Engine, module: &[u8], kind: ArtifactKind) -> PathBuf {
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut engine_hash);
        let mut key = Sha256::new();
        key.update(module);
        key.update(engine_hash.finish().to_le_bytes());
        key.update([kind as u8]);
        self.dir.join(format!("{}.{ENTRY_SUFFIX}", hex::encode(key.finalize())))
    }

    /// Make sure a valid entry exists for `module`, compiling it if needed.
    pub fn ensure(&self, engine: &Engine, module: &[u8], kind: ArtifactKind) -> Result<(PathBuf, CacheOutcome), CacheError> {
        let path = self.entry_path(engine, module, kind);
        if read_verified(&path).is_some() {
            touch(&path);
            return Ok((path, CacheOutcome::Hit));
        }
        let compiled = match kind {
            ArtifactKind::Module => engine.precompile_module(module),
            ArtifactKind::Component => engine.precompile_component(module),
        }
        .map_err(|e| CacheError::Compile(format!("{e:#}")))?;
        self.store(&path, &compiled)?;
        self.evict_beyond_bound(&path);
        Ok((path, CacheOutcome::Compiled))
    }

    /// Load an entry as a module, or None when it is missing, corrupt or
    /// was built for another engine (the caller then compiles).
    pub fn load(engine: &Engine, path: &Path) -> Option<Module> {
        read_verified(path)?;
        load_artifact_file(engine, fs::File::open(path).ok()?)
    }
}

/// A component from the bytes of an entry [`CompileCache::ensure`]
/// verified (the trailing checksum included), or None when wasmtime
/// refuses them.
pub fn load_component_artifact_bytes(engine: &Engine, entry: &[u8]) -> Option<Component> {
    // SAFETY: as for load_artifact_file, with precompile_component.
    usable(unsafe { Component::deserialize(engine, entry) })
}

/// A module from an open entry [`CompileCache::ensure`] verified, mapped
/// (wasmtime ignores the trailing checksum), or None when wasmtime refuses
/// it (another engine's artifact).
pub fn load_artifact_file(engine: &Engine, entry: fs::File) -> Option<Module> {
    // SAFETY: wasmtime requires the file to hold what precompile_module
    // of a compatible engine produced, unchanged while mapped. The entry
    // is root-only and written once, atomically (a new file renamed into
    // place; never modified), and its checksum was verified when it was
    // ensured, so it is exactly that; wasmtime itself rejects another
    // engine's artifact by its header.
    usable(unsafe { Module::deserialize_open_file(engine, entry) })
}

/// A deserialized entry, or None (logged) so that the caller compiles.
fn usable<T>(deserialized: wasmtime::Result<T>) -> Option<T> {
    deserialized
        .map_err(|e| tracing::warn!("compile cache entry not usable, compiling instead: {e:#}"))
        .ok()
}

impl CompileCache {
    fn store(&self, path: &Path, compiled: &[u8]) -> Result<(), CacheError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(io_err(&self.dir))?;
        // An existing directory keeps its mode; make sure it is root-only.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&self.dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io_err(&self.dir))?;
        tmp.write_all(compiled).map_err(io_err(tmp.path()))?;
        tmp.write_all(&crc32fast::hash(compiled).to_le_bytes()).map_err(io_err(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err(path))?;
        tmp.persist(path).map_err(|e| CacheError::Io { path: path.to_path_buf(), source: e.error })?;
        Ok(())
    }

    /// Keep the cache under its bound: remove the least recently used
    /// entries (by mtime, which a hit refreshes), never `keep`.
    fn evict_beyond_bound(&self, keep: &Path) {
        let Ok(dir) = fs::read_dir(&self.dir) else { return };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = dir
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == ENTRY_SUFFIX))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
            }
        }
    }
}

/// How much of an entry [`read_verified`] reads at a time.
const VERIFY_CHUNK: usize = 32 * 1024;

/// Some when `path` is a valid entry: its trailing checksum matches the
/// artifact before it. Read through one small buffer (below the shim's
/// mmap threshold), not into one of the entry's size: that would be
/// freshly mapped at every Create and cost a page fault per 4 KiB (0.3 ms
/// of a Create for a 350 KiB entry).
fn read_verified(path: &Path) -> Option<()> {
    use std::io::Read;
    let mut file = fs::File::open(path).ok()?;
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    let artifact_len = len.checked_sub(CHECKSUM_LEN).filter(|&n| n > 0)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; VERIFY_CHUNK.min(len)];
    let mut tail = Vec::with_capacity(CHECKSUM_LEN);
    let mut offset = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        let chunk = &buf[..n];
        // The part of this chunk before the checksum, and the rest.
        let artifact_part = artifact_len.saturating_sub(offset).min(n);
        hasher.update(&chunk[..artifact_part]);
        tail.extend_from_slice(&chunk[artifact_part..]);
        offset += n;
    }
    // A file that changed length meanwhile is not the entry we measured.
    (offset == len && tail.len() == CHECKSUM_LEN && hasher.finalize().to_le_bytes()[..] == tail[..]).then_some(())
}

fn touch(path: &Path) {
    if let Ok(file) = fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = r#"(module (func (export "_start")))"#;

    fn engine() -> Engine {
        crate::wasm::new_engine().expect("engine")
    }

    #[test]
    fn second_ensure_is_a_hit_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CompileCache::new(dir.path().join("c"), DEFAULT_MAX_BYTES);
        let engine = engine();
        let (path, first) = cache.ensure(&engine, WAT.as_bytes(), ArtifactKind::Module).expect("ensure");
        assert_eq!(first, CacheOutcome::Compiled);
        let (again, second) = cache.ensure(&engine, WAT.as_bytes(), ArtifactKind::Module).expect("ensure");
        assert_eq!((again.as_path(), second), (path.as_path(), CacheOutcome::Hit));
        assert!(CompileCache::load(&engine, &path).is_some());
        let mode = fs::metadata(cache.dir()).expect("dir").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the cache is root-only");
    }

    #[test]
    fn an_entry_is_verified_whatever_its_size_against_the_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        for size in [1, VERIFY_CHUNK - 3, VERIFY_CHUNK - 2, VERIFY_CHUNK, VERIFY_CHUNK + 1, 3 * VERIFY_CHUNK + 5] {
            let artifact: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let mut entry = artifact.clone();
            entry.extend_from_slice(&crc32fast::hash(&artifact).to_le_bytes());
            let path = dir.path().join(format!("e{size}"));
            std::fs::write(&path, &entry).unwrap();
            assert!(read_verified(&path).is_some(), "size {size}");
            // Any byte changed, of the artifact or of its checksum, fails it.
            for at in [0, size - 1, size, entry.len() - 1] {
                let mut bad = entry.clone();
                bad[at] ^= 0x01;
                std::fs::write(&path, &bad).unwrap();
                assert!(read_verified(&path).is_none(), "size {size}, byte {at} flipped");
            }
            // Cut short, or with a byte more, it fails too.
            std::fs::write(&path, &entry[..entry.len() - 1]).unwrap();
            assert!(read_verified(&path).is_none(), "size {size} cut short");
            let mut longer = entry.clone();
            longer.push(0);
            std::fs::write(&path, &longer).unwrap();
            assert!(read_verified(&path).is_none(), "size {size} with a byte more");
        }
        std::fs::write(dir.path().join("tiny"), [1, 2, 3, 4]).unwrap();
        assert!(read_verified(&dir.path().join("tiny")).is_none(), "a checksum alone is no entry");
    }

    #[test]
    fn a_corrupt_entry_is_recompiled_not_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CompileCache::new(dir.path(), DEFAULT_MAX_BYTES);
        let engine = engine();
        let (path, _) = cache.ensure(&engine, WAT.as_bytes(), ArtifactKind::Module).expect("ensure");
        let len = fs::metadata(&path).expect("entry").len() as usize;
        // A flipped bit in the machine code, in the checksum; a short write.
        for (at, truncate) in [(len / 2, false), (len - 1, false), (len / 2, true)] {
            let mut bytes = fs::read(&path).expect("read");
            bytes[at] ^= 0x10;
            if truncate {
                bytes.truncate(at);
            }
            fs::write(&path, &bytes).expect("corrupt");
            assert!(CompileCache::load(&engine, &path).is_none(), "a corrupt entry is loaded (byte {at}, truncated {truncate})");
            let (_, outcome) = cache.ensure(&engine, WAT.as_bytes(), ArtifactKind::Module).expect("ensure");
            assert_eq!(outcome, CacheOutcome::Compiled);
            assert!(CompileCache::load(&engine, &path).is_some());
        }
    }

    #[test]
    fn the_bound_evicts_old_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CompileCache::new(dir.path(), 1);
        let engine = engine();
        let (first, _) = cache.ensure(&engine, WAT.as_bytes(), ArtifactKind::Module).expect("ensure");
        let (second, _) = cache.ensure(&engine, br#"(module (func (export "_start") nop))"#, ArtifactKind::Module).expect("ensure");
        assert!(!first.exists(), "the older entry is evicted");
        assert!(second.exists(), "the newest entry stays");
    }
}
