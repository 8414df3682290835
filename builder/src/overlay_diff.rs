//! The layer a RUN step made: overlayfs's upper directory as an OCI layer.
//!
//! Overlay whiteouts (character devices 0:0) become `.wh.NAME` entries and
//! directories marked opaque (`trusted.overlay.opaque=y`) get a
//! `.wh..wh..opq` entry; everything else keeps its kind, mode, owner, link
//! target and content. Like [`crate::layer`]: entries sorted, every mtime
//! set to the build's SOURCE_DATE_EPOCH, no user or group names. Within a
//! directory the whiteouts come first, so that a reader applying the layer
//! in order never removes what the layer itself adds. Files hard-linked
//! to each other within the layer stay hard links.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::blobs::BlobStore;
use crate::layer::{write_blob, Compression, LayerBlob, LayerError};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const REDIRECT_XATTR: &str = "trusted.overlay.redirect";
const METACOPY_XATTR: &str = "trusted.overlay.metacopy";

#[derive(Debug, Error)]
pub enum DiffError {
    #[error("cannot read {path} in the RUN container's changes")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} in the RUN container's changes was renamed or copied up without its data (overlay {1}); cannot make it a layer")]
    Unsupported(String, &'static str),
    #[error(transparent)]
    Layer(#[from] LayerError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `copied_up`: only there because something below it changed (the
    /// same mode and owner as in the lower directory); not written.
    Dir { opaque: bool, copied_up: bool },
    File { size: u64 },
    Symlink(PathBuf),
    /// A hard link to an earlier entry of this layer.
    HardLink(PathBuf),
    /// A removed path (written as `.wh.NAME`).
    Whiteout,
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Relative to the root, no leading `/`.
    path: PathBuf,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    /// (device, inode) of a file with more than one name.
    inode: Option<(u64, u64)>,
}

/// What a RUN layer changed, for the build's idea of the image's directories.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Directories it holds.
    pub dirs: Vec<String>,
    /// Paths it removed (whiteouts).
    pub removed: Vec<String>,
}

/// Write the overlay upper directory `upper` (over `lower`, if given) as a
/// layer blob into `blobs`.
pub fn write_layer(
    upper: &Path,
    lower: Option<&Path>,
    blobs: &BlobStore,
    mtime: u64,
    compression: Compression,
) -> Result<(LayerBlob, Changes), DiffError> {
    let entries = collect(upper, lower)?;
    let mut changes = Changes::default();
    for entry in &entries {
        let path = entry.path.to_string_lossy().into_owned();
        match entry.kind {
            Kind::Dir { .. } => changes.dirs.push(path),
            Kind::Whiteout => changes.removed.push(path),
            _ => {}
        }
    }
    let mut failure = None;
    let blob = write_blob(blobs, compression, |out| {
        write_tar(upper, &entries, out, mtime).map_err(|e| match e {
            DiffError::Layer(e) => e,
            other => {
                let message = other.to_string();
                failure = Some(other);
                LayerError::Write(io::Error::other(message))
            }
        })
    });
    match (blob, failure) {
        (_, Some(e)) => Err(e),
        (Ok(blob), None) => Ok((blob, changes)),
        (Err(e), None) => Err(e.into()),
    }
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> DiffError + '_ {
    move |source| DiffError::Read { path: format!("/{}", path.display()), source }
}

/// The value of extended attribute `name` of `path` (not following a
/// symlink), if it has one.
fn xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let c_name = CString::new(name).map_err(io::Error::other)?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and outlive the call; the
    // kernel writes at most buf.len() bytes into buf.
    let n = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// All entries of `upper`, in the order they are written; the second and
/// later names of a file become hard links to its first.
fn collect(upper: &Path, lower: Option<&Path>) -> Result<Vec<Entry>, DiffError> {
    let mut entries = Vec::new();
    walk(upper, lower, Path::new(""), &mut entries)?;
    let mut first_names: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for entry in &mut entries {
        let Some(inode) = entry.inode else { continue };
        match first_names.get(&inode) {
            Some(first) => entry.kind = Kind::HardLink(first.clone()),
            None => {
                first_names.insert(inode, entry.path.clone());
            }
        }
    }
    Ok(entries)
}

/// `lower`: the lower directory, while `dir` is a directory there too (not
/// below an opaque directory, nor through a symlink).
fn walk(root: &Path, lower: Option<&Path>, dir: &Path, out: &mut Vec<Entry>) -> Result<(), DiffError> {
    let full = root.join(dir);
    let mut names: Vec<OsString> = fs::read_dir(&full)
        .and_then(|it| it.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(read_err(dir))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut children = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let meta = fs::symlink_metadata(root.join(&path)).map_err(read_err(&path))?;
        let file_type = meta.file_type();
        let mut inode = None;
        let kind = if file_type.is_char_device() && meta.rdev() == 0 {
            Kind::Whiteout
        } else if file_type.is_dir() {
            if xattr(&root.join(&path), REDIRECT_XATTR).map_err(read_err(&path))?.is_some() {
                return Err(DiffError::Unsupported(format!("/{}", path.display()), "redirect_dir"));
            }
            let opaque = xattr(&root.join(&path), OPAQUE_XATTR).map_err(read_err(&path))?.as_deref() == Some(b"y");
            let below = lower.and_then(|l| fs::symlink_metadata(l.join(&path)).ok()).filter(|m| m.is_dir());
            let same = |m: &fs::Metadata| m.mode() & 0o7777 == meta.mode() & 0o7777 && m.uid() == meta.uid() && m.gid() == meta.gid();
            Kind::Dir { opaque, copied_up: !opaque && below.as_ref().is_some_and(same) }
        } else if file_type.is_file() {
            if xattr(&root.join(&path), METACOPY_XATTR).map_err(read_err(&path))?.is_some() {
                return Err(DiffError::Unsupported(format!("/{}", path.display()), "metacopy"));
            }
            if meta.nlink() > 1 {
                inode = Some((meta.dev(), meta.ino()));
            }
            Kind::File { size: meta.len() }
        } else if file_type.is_symlink() {
            Kind::Symlink(fs::read_link(root.join(&path)).map_err(read_err(&path))?)
        } else if file_type.is_char_device() || file_type.is_block_device() {
            let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            if file_type.is_char_device() {
                Kind::Char(major, minor)
            } else {
                Kind::Block(major, minor)
            }
        } else if file_type.is_fifo() {
            Kind::Fifo
        } else {
            tracing::warn!("RUN left a socket at /{}; a layer cannot hold it", path.display());
            continue;
        };
        children.push(Entry { path, kind, mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid(), inode });
    }
    // Whiteouts first (in name order), then the rest (in name order).
    let (whiteouts, others): (Vec<Entry>, Vec<Entry>) = children.into_iter().partition(|e| e.kind == Kind::Whiteout);
    out.extend(whiteouts);
    for entry in others {
        let recurse = match entry.kind {
            Kind::Dir { opaque, .. } => {
                let in_lower = !opaque && lower.is_some_and(|l| fs::symlink_metadata(l.join(&entry.path)).is_ok_and(|m| m.is_dir()));
                Some((entry.path.clone(), in_lower))
            }
            _ => None,
        };
        out.push(entry);
        if let Some((path, in_lower)) = recurse {
            walk(root, lower.filter(|_| in_lower), &path, out)?;
        }
    }
    Ok(())
}

/// `dir/.wh.name` for the removed `dir/name`.
fn whiteout_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or(OsStr::new(""));
    let mut hidden = OsString::from(".wh.");
    hidden.push(name);
    path.with_file_name(hidden)
}

fn write_tar(root: &Path, entries: &[Entry], out: &mut dyn Write, mtime: u64) -> Result<(), DiffError> {
    let mut builder = tar::Builder::new(out);
    let write_err = |e| DiffError::Layer(LayerError::Write(e));
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(mtime);
        header.set_uid(u64::from(entry.uid));
        header.set_gid(u64::from(entry.gid));
        header.set_mode(entry.mode);
        header.set_size(0);
        let path = &entry.path;
        match &entry.kind {
            Kind::Dir { copied_up: true, .. } => {}
            Kind::Dir { opaque, .. } => {
                header.set_entry_type(tar::EntryType::Directory);
                let mut name = path.as_os_str().to_os_string();
                name.push("/");
                builder.append_data(&mut header, name, io::empty()).map_err(write_err)?;
                if *opaque {
                    let mut marker = marker_header(mtime);
                    builder.append_data(&mut marker, path.join(".wh..wh..opq"), io::empty()).map_err(write_err)?;
                }
            }
            Kind::Whiteout => {
                let mut marker = marker_header(mtime);
                builder.append_data(&mut marker, whiteout_name(path), io::empty()).map_err(write_err)?;
            }
            Kind::File { size } => {
                let file = File::open(root.join(path)).map_err(read_err(path))?;
                let len = file.metadata().map_err(read_err(path))?.len();
                if len != *size {
                    return Err(LayerError::Changed(format!("/{}", path.display())).into());
                }
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(*size);
                builder.append_data(&mut header, path, file.take(*size)).map_err(write_err)?;
            }
            Kind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut header, path, target).map_err(write_err)?;
            }
            Kind::HardLink(target) => {
                header.set_entry_type(tar::EntryType::Link);
                builder.append_link(&mut header, path, target).map_err(write_err)?;
            }
            Kind::Char(major, minor) | Kind::Block(major, minor) => {
                let block = matches!(entry.kind, Kind::Block(..));
                header.set_entry_type(if block { tar::EntryType::Block } else { tar::EntryType::Char });
                header.set_device_major(*major).map_err(write_err)?;
                header.set_device_minor(*minor).map_err(write_err)?;
                builder.append_data(&mut header, path, io::empty()).map_err(write_err)?;
            }
            Kind::Fifo => {
                header.set_entry_type(tar::EntryType::Fifo);
                builder.append_data(&mut header, path, io::empty()).map_err(write_err)?;
            }
        }
    }
    builder.into_inner().map_err(write_err)?;
    Ok(())
}

/// The header of a whiteout marker: an empty regular file owned by root.
fn marker_header(mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mode(0o644);
    header.set_size(0);
    header
}

#[cfg(test)]
#[path = "overlay_diff_tests.rs"]
mod tests;
