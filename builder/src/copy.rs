//! COPY and ADD: resolve sources in the build context (wildcards, no escape
//! from the context), copy files and directories into a [`LayerWriter`], and
//! for ADD extract local tar archives (plain, gzip, xz or zstd) safely.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::basefs;
use crate::blobs::BlobStore;
use crate::ignore::Ignore;
use crate::layer::{clean_image_path, LayerError, LayerWriter};

/// One COPY/ADD step.
pub struct CopySpec<'a> {
    /// Canonical path of the build context.
    pub context: &'a Path,
    /// Source patterns, relative to the context.
    pub sources: &'a [String],
    /// Destination as written (after variable expansion).
    pub dest: &'a str,
    /// The image's working directory (`/`-rooted).
    pub workdir: &'a str,
    /// ADD: extract local tar archives.
    pub extract_archives: bool,
    /// `.dockerignore` of the context (not for `COPY --from`).
    pub ignore: Option<&'a Ignore>,
    /// `context` is an image's root filesystem (`COPY --from`): symlinks in
    /// source paths resolve inside it, absolute ones from its root.
    pub rootfs: bool,
    /// Sources staged by the build (heredocs, ADD's downloads).
    pub staged: &'a [StagedSource],
}

/// A source the build wrote to a file of its own: a heredoc or a download.
#[derive(Debug, Clone)]
pub struct StagedSource {
    /// Its file name in a destination directory (`None`: it has none, a URL
    /// ending in `/`).
    pub name: Option<String>,
    /// Where it is staged.
    pub path: PathBuf,
    pub mode: u32,
    /// What it came from, for errors (the heredoc's name, the URL).
    pub origin: String,
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Read { path: path.display().to_string(), source }
}

fn utf8(name: &std::ffi::OsStr) -> Result<&str, LayerError> {
    name.to_str().ok_or_else(|| LayerError::NonUtf8(name.to_string_lossy().into_owned()))
}

/// Whether the destination names a directory by its spelling.
pub fn dest_spelled_as_dir(dest: &str) -> bool {
    dest.ends_with('/') || dest == "." || dest == ".." || dest.ends_with("/.") || dest.ends_with("/..")
}

/// Fill `layer` for `spec`; `is_dir(path)` tells whether an image path
/// (relative to `/`) is already a directory in the image below.
pub fn copy(
    spec: &CopySpec<'_>,
    layer: &mut LayerWriter,
    blobs: &BlobStore,
    is_dir: &mut dyn FnMut(&str) -> bool,
) -> Result<(), LayerError> {
    let mut sources = Vec::new();
    for pattern in spec.sources {
        sources.extend(resolve(spec.context, pattern, spec.ignore, spec.rootfs)?);
    }
    let dest = clean_image_path(spec.workdir, spec.dest);
    let dest_is_dir = dest_spelled_as_dir(spec.dest) || dest.is_empty() || layer.is_directory(&dest) || is_dir(&dest);
    if sources.len() + spec.staged.len() > 1 && !dest_is_dir {
        return Err(LayerError::DestinationNotDirectory(spec.dest.to_string()));
    }
    for staged in spec.staged {
        let target = match (&staged.name, dest_is_dir) {
            (Some(name), true) => clean_image_path("/", &format!("{dest}/{name}")),
            (None, true) => return Err(LayerError::NoFileName(staged.origin.clone())),
            (_, false) => dest.clone(),
        };
        let size = fs::metadata(&staged.path).map_err(read_err(&staged.path))?.len();
        layer.add_file(&target, staged.path.clone(), staged.mode, size)?;
    }
    for (shown, path) in sources {
        let meta = fs::metadata(&path).map_err(read_err(&path))?;
        if meta.is_dir() {
            layer.add_dir(&dest, meta.permissions().mode())?;
            copy_dir(&path, &context_rel(spec.context, &path), &dest, layer, spec.ignore)?;
        } else if spec.extract_archives && is_tar_archive(&path)? {
            extract(&path, &shown, &dest, layer, blobs)?;
        } else {
            let target = if dest_is_dir {
                let name = path.file_name().map(utf8).transpose()?.unwrap_or_default();
                clean_image_path("/", &format!("{dest}/{name}"))
            } else {
                dest.clone()
            };
            layer.add_file(&target, path, meta.permissions().mode(), meta.len())?;
        }
    }
    Ok(())
}

/// The canonical host paths a source pattern names, with the pattern match
/// as shown to the user; wildcards (`*`, `?`, `[...]`) allowed.
fn resolve(context: &Path, pattern: &str, ignore: Option<&Ignore>, rootfs: bool) -> Result<Vec<(String, PathBuf)>, LayerError> {
    if crate::fetch::is_url(pattern) {
        return Err(LayerError::Url(pattern.to_string()));
    }
    let mut parts = Vec::new();
    for component in Path::new(pattern).components() {
        match component {
            Component::Normal(c) => parts.push(utf8(c)?.to_string()),
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(LayerError::OutsideContext(pattern.to_string()));
                }
            }
            _ => {}
        }
    }
    let mut candidates = vec![(String::new(), context.to_path_buf())];
    for part in &parts {
        let mut next = Vec::new();
        for (shown, dir) in candidates {
            if part.contains(['*', '?', '[']) {
                let Ok(entries) = fs::read_dir(&dir) else { continue };
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(read_err(&dir))?;
                    names.push(utf8(&entry.file_name())?.to_string());
                }
                names.sort();
                for name in names.into_iter().filter(|n| wildcard_match(part, n)) {
                    next.push((join_shown(&shown, &name), dir.join(&name)));
                }
            } else {
                next.push((join_shown(&shown, part), dir.join(part)));
            }
        }
        candidates = next;
    }
    let wildcard = parts.iter().any(|p| p.contains(['*', '?', '[']));
    let mut out = Vec::new();
    for (shown, path) in candidates {
        let resolved = if rootfs { canonicalize_in(context, &path) } else { fs::canonicalize(&path) };
        let canonical = match resolved {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !wildcard => {
                return Err(LayerError::SourceNotFound(pattern.to_string()));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(&path)(e)),
        };
        if !canonical.starts_with(context) {
            return Err(LayerError::OutsideContext(if shown.is_empty() { pattern.to_string() } else { shown }));
        }
        // Excluded by .dockerignore: as if it were not in the context.
        // (A directory may still hold `!` exceptions.)
        let excluded = ignore.is_some_and(|i| {
            i.is_ignored(&context_rel(context, &canonical)) && !(i.has_exceptions() && canonical.is_dir())
        });
        if excluded {
            if wildcard {
                continue;
            }
            return Err(LayerError::SourceNotFound(pattern.to_string()));
        }
        out.push((shown, canonical));
    }
    if out.is_empty() {
        return Err(LayerError::NoMatch(pattern.to_string()));
    }
    Ok(out)
}

/// Resolve the symlinks of `path` (under `root`) as if `root` were `/`:
/// the result always stays inside `root`.
fn canonicalize_in(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let rel = path.strip_prefix(root).map_err(|_| io::Error::new(io::ErrorKind::NotFound, "outside the root"))?;
    let mut todo: Vec<std::ffi::OsString> = rel.components().rev().map(|c| c.as_os_str().to_owned()).collect();
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        match part.to_str() {
            Some("." | "/") => continue,
            Some("..") => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        let candidate: PathBuf = parts.iter().chain(std::iter::once(&part)).fold(root.to_path_buf(), |p, c| p.join(c));
        let meta = fs::symlink_metadata(&candidate)?;
        if !meta.file_type().is_symlink() {
            parts.push(part);
            continue;
        }
        hops += 1;
        if hops > 40 {
            return Err(io::Error::other(format!("too many levels of symbolic links at {}", candidate.display())));
        }
        let target = fs::read_link(&candidate)?;
        if target.is_absolute() {
            parts.clear();
        }
        todo.extend(target.components().rev().map(|c| c.as_os_str().to_owned()));
    }
    Ok(parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// `path` relative to `context`, `/`-separated (`""` for the context).
fn context_rel(context: &Path, path: &Path) -> String {
    path.strip_prefix(context).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

fn join_shown(shown: &str, name: &str) -> String {
    if shown.is_empty() {
        name.to_string()
    } else {
        format!("{shown}/{name}")
    }
}

/// Shell-style wildcard match of one path component: `*`, `?`, `[a-z]`,
/// `[!a]`, and `\` escapes.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(close) = p.iter().skip(2).position(|&c| c == ']').map(|i| i + 2) else {
                    return n.first() == Some(&'[') && go(&p[1..], &n[1..]);
                };
                let Some(&c) = n.first() else { return false };
                let (negated, set) = match p[1] {
                    '!' | '^' => (true, &p[2..close]),
                    _ => (false, &p[1..close]),
                };
                let mut matched = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        matched |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        matched |= set[i] == c;
                        i += 1;
                    }
                }
                matched != negated && go(&p[close + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

/// Copy the contents of directory `dir` into the image directory `dest`;
/// symlinks are copied as symlinks, other special files are skipped; `rel`
/// is `dir` relative to the context, for `.dockerignore`.
fn copy_dir(dir: &Path, rel: &str, dest: &str, layer: &mut LayerWriter, ignore: Option<&Ignore>) -> Result<(), LayerError> {
    for entry in fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let path = entry.path();
        let name = utf8(&entry.file_name())?.to_string();
        let target = if dest.is_empty() { name.clone() } else { format!("{dest}/{name}") };
        let entry_rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let ignored = ignore.is_some_and(|i| i.is_ignored(&entry_rel));
        let meta = fs::symlink_metadata(&path).map_err(read_err(&path))?;
        let kind = meta.file_type();
        let mode = meta.permissions().mode();
        if kind.is_dir() {
            // An excluded directory may still hold `!` exceptions.
            if !ignored {
                layer.add_dir(&target, mode)?;
            }
            if !ignored || ignore.is_some_and(Ignore::has_exceptions) {
                copy_dir(&path, &entry_rel, &target, layer, ignore)?;
            }
        } else if ignored {
            continue;
        } else if kind.is_file() {
            layer.add_file(&target, path, mode, meta.len())?;
        } else if kind.is_symlink() {
            let link = fs::read_link(&path).map_err(read_err(&path))?;
            layer.add_symlink(&target, utf8(link.as_os_str())?)?;
        } else {
            tracing::warn!("skipping {}: not a regular file, directory or symlink", path.display());
        }
    }
    Ok(())
}

/// Whether `path` is a tar archive, plain or compressed (gzip, xz, zstd),
/// told by its content as Docker does; anything else is copied as is.
pub fn is_tar_archive(path: &Path) -> Result<bool, LayerError> {
    let file = File::open(path).map_err(read_err(path))?;
    let mut block = Vec::new();
    // A stream that does not decode (a stray magic number) is no archive.
    let decoded = basefs::decompress(file).and_then(|r| r.take(512).read_to_end(&mut block));
    Ok(decoded.is_ok() && block.len() >= 262 && &block[257..262] == b"ustar")
}

/// A relative, `..`-free path of an archive entry, or why it is refused.
fn entry_path(path: &Path) -> Result<String, &'static str> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => parts.push(c.to_str().ok_or("has a name that is not valid UTF-8")?),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a \"..\" component (escapes the destination)"),
            Component::RootDir | Component::Prefix(_) => return Err("has an absolute path"),
        }
    }
    Ok(parts.join("/"))
}

/// Whether a symlink at image path `at` with target `link` resolves inside
/// the image directory `dest` (absolute targets are image paths).
fn link_stays_inside(dest: &str, at: &str, link: &str) -> bool {
    let mut resolved: Vec<&str> = Vec::new();
    if !link.starts_with('/') {
        resolved.extend(at.split('/').filter(|c| !c.is_empty()));
        resolved.pop();
    }
    for component in link.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if resolved.pop().is_none() {
                    return false;
                }
            }
            c => resolved.push(c),
        }
    }
    let resolved = resolved.join("/");
    dest.is_empty() || resolved == dest || resolved.starts_with(&format!("{dest}/"))
}

/// The largest extension header (a GNU long name or link, a pax record set)
/// accepted: the tar reader holds one whole in memory, so an archive must
/// not make ADD allocate gigabytes for one name.
const MAX_EXTENSION_HEADER: u64 = 1 << 20;
/// The longest entry path or link target accepted (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;

/// Refuse oversize extension headers before the tar reader reads them,
/// with a pass over the archive's raw headers.
fn check_extension_headers(path: &Path, shown: &str) -> Result<(), LayerError> {
    use tar::EntryType::{GNULongLink, GNULongName, XGlobalHeader, XHeader};
    let archive_err = |source| LayerError::Archive { archive: shown.to_string(), source };
    let file = File::open(path).map_err(read_err(path))?;
    let mut archive = tar::Archive::new(basefs::decompress(file).map_err(archive_err)?);
    for (n, entry) in archive.entries().map_err(archive_err)?.raw(true).enumerate() {
        let entry = entry.map_err(archive_err)?;
        let kind = entry.header().entry_type();
        if !matches!(kind, GNULongName | GNULongLink | XHeader | XGlobalHeader) {
            continue;
        }
        let size = entry.header().size().map_err(archive_err)?;
        if size > MAX_EXTENSION_HEADER {
            return Err(LayerError::UnsafeEntry {
                archive: shown.to_string(),
                entry: format!("#{} ({kind:?} header)", n + 1),
                reason: format!("is {size} bytes, over the limit of {MAX_EXTENSION_HEADER} for a header"),
            });
        }
    }
    Ok(())
}

/// Extract the tar archive at `path` into the image directory `dest`.
fn extract(
    path: &Path,
    shown: &str,
    dest: &str,
    layer: &mut LayerWriter,
    blobs: &BlobStore,
) -> Result<(), LayerError> {
    let archive_err = |source| LayerError::Archive { archive: shown.to_string(), source };
    check_extension_headers(path, shown)?;
    let file = File::open(path).map_err(read_err(path))?;
    let mut archive = tar::Archive::new(basefs::decompress(file).map_err(archive_err)?);
    layer.add_dir(dest, 0o755)?;
    // Regular files extracted so far (archive path → image path), for hard links.
    let mut files: HashMap<String, String> = HashMap::new();
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        let raw = entry.path().map_err(archive_err)?.into_owned();
        let unsafe_entry = |reason: &str| LayerError::UnsafeEntry {
            archive: shown.to_string(),
            entry: raw.display().to_string(),
            reason: reason.to_string(),
        };
        if raw.as_os_str().len() > MAX_PATH {
            return Err(unsafe_entry(&format!("has a path of {} bytes, over the limit of {MAX_PATH}", raw.as_os_str().len())));
        }
        if let Some(link) = entry.link_name_bytes().filter(|l| l.len() > MAX_PATH) {
            return Err(unsafe_entry(&format!("has a link target of {} bytes, over the limit of {MAX_PATH}", link.len())));
        }
        let rel = entry_path(&raw).map_err(unsafe_entry)?;
        let kind = entry.header().entry_type();
        if rel.is_empty() {
            if kind.is_dir() {
                continue;
            }
            return Err(unsafe_entry("has an empty path"));
        }
        let target = if dest.is_empty() { rel.clone() } else { format!("{dest}/{rel}") };
        let mode = entry.header().mode().map_err(archive_err)?;
        match kind {
            tar::EntryType::Directory => layer.add_dir(&target, mode)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let (staged, mut out) = blobs.staging_file().map_err(LayerError::Write)?;
                let size = io::copy(&mut entry, &mut out).map_err(archive_err)?;
                layer.add_file(&target, staged, mode, size)?;
                files.insert(rel, target);
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name().map_err(archive_err)?.ok_or_else(|| unsafe_entry("is a symlink without a target"))?;
                let link = link.to_str().ok_or_else(|| unsafe_entry("has a link target that is not valid UTF-8"))?;
                if !link_stays_inside(dest, &target, link) {
                    return Err(unsafe_entry(&format!("is a symlink to {link:?}, outside the destination")));
                }
                layer.add_symlink(&target, link)?;
            }
            tar::EntryType::Link => {
                let link = entry.link_name().map_err(archive_err)?.ok_or_else(|| unsafe_entry("is a hard link without a target"))?;
                let outside = || unsafe_entry(&format!("is a hard link to {:?}, outside the archive's files", link.display()));
                let linked = entry_path(&link).map_err(|_| outside())?;
                let image_path = files.get(&linked).ok_or_else(outside)?;
                let (source, mode, size) = layer.file_at(image_path).ok_or_else(outside)?;
                layer.add_file(&target, source, mode, size)?;
                files.insert(rel, target);
            }
            tar::EntryType::Char | tar::EntryType::Block => return Err(unsafe_entry("is a device node")),
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => return Err(unsafe_entry(&format!("has an unsupported type ({other:?})"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.txt", "a.txt"));
        assert!(!wildcard_match("*.txt", "a.txt.bak"));
        assert!(wildcard_match("file?.[a-c]", "file1.b"));
        assert!(!wildcard_match("[!a]x", "ax"));
        assert!(wildcard_match("\\*", "*"));
    }

    #[test]
    fn symlinks_resolve_inside_a_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/busybox"), b"bb").unwrap();
        std::os::unix::fs::symlink("/usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::symlink("busybox", root.join("usr/bin/sh")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(canonicalize_in(&root, &root.join("bin/sh")).unwrap(), root.join("usr/bin/busybox"));
        assert_eq!(canonicalize_in(&root, &root.join("escape")).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(canonicalize_in(&root, &root.join("loop")).is_err());
    }

    #[test]
    fn symlink_targets() {
        assert!(link_stays_inside("", "usr/bin/env", "../../bin/busybox"));
        assert!(!link_stays_inside("", "bin/x", "../../../etc"));
        assert!(link_stays_inside("opt", "opt/a/b", "../c"));
        assert!(!link_stays_inside("opt", "opt/a", "../../etc/passwd"));
        assert!(!link_stays_inside("opt", "opt/a", "/etc/passwd"));
        assert!(link_stays_inside("", "etc/localtime", "/usr/share/zoneinfo/UTC"));
    }
}
