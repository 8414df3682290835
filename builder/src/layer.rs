//! One image layer: a tree of entries collected by COPY/ADD, written as a
//! reproducible tar (sorted entries, uid/gid 0, fixed mtime, mode kept, no
//! user/group names), compressed with gzip (fixed header), zstd, or not.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use flate2::GzBuilder;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::blobs::{BlobStore, HashingWriter};

pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// How layer blobs are compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => MEDIA_TYPE_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_LAYER_ZSTD,
            Compression::None => MEDIA_TYPE_LAYER_TAR,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            other => Err(format!("unknown compression {other:?} (want gzip, zstd or none)")),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        })
    }
}

#[derive(Debug, Error)]
pub enum LayerError {
    #[error("{0:?} is outside the build context")]
    OutsideContext(String),
    #[error("{0:?} not found in the build context")]
    SourceNotFound(String),
    #[error("{0:?} matches no files in the build context")]
    NoMatch(String),
    #[error("COPY cannot take a URL source ({0}): use ADD")]
    Url(String),
    #[error("cannot name the file downloaded from {0} (the URL has no file name): give ADD a destination file, not a directory")]
    NoFileName(String),
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("file name {0:?} is not valid UTF-8")]
    NonUtf8(String),
    #[error("with more than one source the destination must be a directory ending in '/', not {0:?}")]
    DestinationNotDirectory(String),
    #[error("cannot create /{path}: /{parent} is not a directory in this layer")]
    ParentNotDirectory { path: String, parent: String },
    #[error("cannot replace directory /{0} with a file")]
    ReplaceDirectory(String),
    #[error("archive {archive}: entry {entry:?} {reason}")]
    UnsafeEntry { archive: String, entry: String, reason: String },
    #[error("cannot extract archive {archive}")]
    Archive {
        archive: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} changed while the layer was written")]
    Changed(String),
    #[error("cannot write the layer blob")]
    Write(#[source] io::Error),
}

#[derive(Debug, Clone)]
enum Node {
    /// `explicit`: copied or extracted, not only a parent of something.
    Dir { mode: u32, explicit: bool, owner: Owner },
    File { source: PathBuf, mode: u32, size: u64, owner: Owner },
    Symlink { target: String, owner: Owner },
}

/// (uid, gid)
pub type Owner = (u32, u32);

/// A written layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// Digest of the compressed blob.
    pub digest: String,
    pub size: u64,
    /// Digest of the uncompressed tar (the config's rootfs.diff_ids).
    pub diff_id: String,
    pub media_type: String,
}

/// Entries of one layer, keyed by path relative to `/` (`app/bin/x`).
#[derive(Debug, Default)]
pub struct LayerWriter {
    nodes: BTreeMap<String, Node>,
    /// Write directories that exist only as parents of other entries
    /// (on a base image they may be symlinks there, which a directory
    /// entry would replace).
    implicit_parents: bool,
    /// `--chown` for entries added from now on.
    owner: Owner,
    /// `--chmod` for files and directories added from now on.
    chmod: Option<u32>,
}

/// Join `path` onto the image directory `base` (both `/`-rooted strings)
/// and clean it lexically; `..` stops at `/`. Returns the path without the
/// leading `/` (`""` is the root).
pub fn clean_image_path(base: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let start = if path.starts_with('/') { "" } else { base };
    for component in start.split('/').chain(path.split('/')) {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

impl LayerWriter {
    pub fn new(implicit_parents: bool) -> Self {
        LayerWriter { nodes: BTreeMap::new(), implicit_parents, owner: (0, 0), chmod: None }
    }

    /// Owner and mode override (`--chown`, `--chmod`) of the entries added
    /// after this.
    pub fn set_attributes(&mut self, owner: Option<Owner>, chmod: Option<u32>) {
        self.owner = owner.unwrap_or((0, 0));
        self.chmod = chmod;
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Directories this layer creates (explicitly or as parents).
    pub fn directories(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().filter(|(_, n)| matches!(n, Node::Dir { .. })).map(|(p, _)| p.as_str())
    }

    pub fn is_directory(&self, path: &str) -> bool {
        path.is_empty() || matches!(self.nodes.get(path), Some(Node::Dir { .. }))
    }

    /// A regular file (already added) at `path`: its source and mode.
    pub fn file_at(&self, path: &str) -> Option<(PathBuf, u32, u64)> {
        match self.nodes.get(path) {
            Some(Node::File { source, mode, size, .. }) => Some((source.clone(), *mode, *size)),
            _ => None,
        }
    }

    fn ensure_parents(&mut self, path: &str) -> Result<(), LayerError> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            match self.nodes.get(parent) {
                None => {
                    self.nodes.insert(parent.to_string(), Node::Dir { mode: 0o755, explicit: false, owner: (0, 0) });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => {
                    return Err(LayerError::ParentNotDirectory {
                        path: path.to_string(),
                        parent: parent.to_string(),
                    });
                }
            }
            end += i + 1;
        }
        Ok(())
    }

    /// Add (or re-mode) the directory `path`; the root is ignored.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), LayerError> {
        if path.is_empty() {
            return Ok(());
        }
        self.ensure_parents(path)?;
        let node = Node::Dir { mode: self.chmod.unwrap_or(mode) & 0o7777, explicit: true, owner: self.owner };
        match self.nodes.get(path) {
            None | Some(Node::Dir { .. }) => {
                self.nodes.insert(path.to_string(), node);
                Ok(())
            }
            Some(_) => Err(LayerError::ParentNotDirectory { path: path.to_string(), parent: path.to_string() }),
        }
    }

    fn add_leaf(&mut self, path: &str, node: Node) -> Result<(), LayerError> {
        if path.is_empty() {
            return Err(LayerError::ReplaceDirectory(String::new()));
        }
        self.ensure_parents(path)?;
        if let Some(Node::Dir { .. }) = self.nodes.get(path) {
            return Err(LayerError::ReplaceDirectory(path.to_string()));
        }
        self.nodes.insert(path.to_string(), node);
        Ok(())
    }

    pub fn add_file(&mut self, path: &str, source: PathBuf, mode: u32, size: u64) -> Result<(), LayerError> {
        let node = Node::File { source, mode: self.chmod.unwrap_or(mode) & 0o7777, size, owner: self.owner };
        self.add_leaf(path, node)
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), LayerError> {
        self.add_leaf(path, Node::Symlink { target: target.to_string(), owner: self.owner })
    }

    /// Write the tar stream into `out` with every mtime set to `mtime`.
    pub fn write_tar<W: Write>(&self, out: W, mtime: u64) -> Result<W, LayerError> {
        let mut builder = tar::Builder::new(out);
        for (path, node) in &self.nodes {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(mtime);
            let (Node::Dir { owner, .. } | Node::File { owner, .. } | Node::Symlink { owner, .. }) = node;
            header.set_uid(u64::from(owner.0));
            header.set_gid(u64::from(owner.1));
            header.set_size(0);
            match node {
                Node::Dir { explicit: false, .. } if !self.implicit_parents => continue,
                Node::Dir { mode, .. } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    builder.append_data(&mut header, format!("{path}/"), io::empty())
                }
                Node::File { source, mode, size, .. } => {
                    let read_err = |e| LayerError::Read { path: source.display().to_string(), source: e };
                    let file = File::open(source).map_err(read_err)?;
                    let len = file.metadata().map_err(read_err)?.len();
                    if len != *size {
                        return Err(LayerError::Changed(source.display().to_string()));
                    }
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(*size);
                    builder.append_data(&mut header, path, file.take(*size))
                }
                Node::Symlink { target, .. } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    builder.append_link(&mut header, path, target)
                }
            }
            .map_err(LayerError::Write)?;
        }
        builder.into_inner().map_err(LayerError::Write)
    }

    /// What the layer will contain, as a digest: paths, kinds, modes,
    /// owners, link targets and file contents (the build cache's "inputs").
    pub fn input_digest(&self) -> Result<String, LayerError> {
        let mut hasher = Sha256::new();
        hasher.update(if self.implicit_parents { "parents\n" } else { "no-parents\n" });
        for (path, node) in &self.nodes {
            match node {
                Node::Dir { mode, explicit, owner } => {
                    hasher.update(format!("d {path:?} {mode:o} {explicit} {owner:?}\n"));
                }
                Node::Symlink { target, owner } => hasher.update(format!("l {path:?} {target:?} {owner:?}\n")),
                Node::File { source, mode, size, owner } => {
                    let read_err = |e| LayerError::Read { path: source.display().to_string(), source: e };
                    let mut content = Sha256::new();
                    let copied = io::copy(&mut File::open(source).map_err(read_err)?, &mut content).map_err(read_err)?;
                    if copied != *size {
                        return Err(LayerError::Changed(source.display().to_string()));
                    }
                    hasher.update(format!("f {path:?} {mode:o} {size} {owner:?} {}\n", hex::encode(content.finalize())));
                }
            }
        }
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// Write the layer as a blob into `blobs`.
    pub fn finish(&self, blobs: &BlobStore, mtime: u64, compression: Compression) -> Result<LayerBlob, LayerError> {
        write_blob(blobs, compression, |out| self.write_tar(out, mtime).map(drop))
    }
}

/// Write a layer blob into `blobs`: `write_tar` writes the uncompressed tar
/// stream (hashed for the diff_id) and this compresses it.
pub fn write_blob(
    blobs: &BlobStore,
    compression: Compression,
    write_tar: impl FnOnce(&mut dyn Write) -> Result<(), LayerError>,
) -> Result<LayerBlob, LayerError> {
    let writer = blobs.writer().map_err(LayerError::Write)?;
    let (diff_id, writer) = match compression {
        Compression::Gzip => {
            // No file name, mtime 0 and a fixed OS byte: the same tar
            // gives the same gzip bytes.
            let gz = GzBuilder::new().mtime(0).operating_system(255).write(writer, flate2::Compression::default());
            let mut hashing = HashingWriter::new(gz);
            write_tar(&mut hashing)?;
            let (gz, diff_id, _) = hashing.finish();
            (diff_id, gz.finish().map_err(LayerError::Write)?)
        }
        Compression::Zstd => {
            // Single-threaded, no content size in the header: deterministic.
            let zst = zstd::stream::write::Encoder::new(writer, 3).map_err(LayerError::Write)?;
            let mut hashing = HashingWriter::new(zst);
            write_tar(&mut hashing)?;
            let (zst, diff_id, _) = hashing.finish();
            (diff_id, zst.finish().map_err(LayerError::Write)?)
        }
        Compression::None => {
            let mut hashing = HashingWriter::new(writer);
            write_tar(&mut hashing)?;
            let (writer, diff_id, _) = hashing.finish();
            (diff_id, writer)
        }
    };
    let (digest, size) = writer.commit().map_err(LayerError::Write)?;
    Ok(LayerBlob { digest, size, diff_id, media_type: compression.media_type().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_paths() {
        assert_eq!(clean_image_path("/app", "x/../y"), "app/y");
        assert_eq!(clean_image_path("/app", "/etc/./z"), "etc/z");
        assert_eq!(clean_image_path("/", "../../a"), "a");
        assert_eq!(clean_image_path("/", "."), "");
    }

    #[test]
    fn tar_is_sorted_and_normalized() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f");
        std::fs::write(&src, b"data").unwrap();
        let mut layer = LayerWriter::new(true);
        layer.add_file("b/f", src.clone(), 0o640, 4).unwrap();
        layer.add_symlink("a", "b/f").unwrap();
        assert!(layer.add_file("b/f/x", src, 0o644, 4).is_err());
        let tar = layer.write_tar(Vec::new(), 42).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<(String, u32, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (e.path().unwrap().display().to_string(), h.mode().unwrap(), h.mtime().unwrap(), h.uid().unwrap())
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("a".into(), 0o777, 42, 0),
                ("b/".into(), 0o755, 42, 0),
                ("b/f".into(), 0o640, 42, 0)
            ]
        );
    }
}
