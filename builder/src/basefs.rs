//! Reading the filesystem of image layers a build already has: which paths
//! are directories (for `COPY file /some/dir`), single files such as
//! /etc/passwd (for `--chown=name`), and whole stages unpacked into a
//! directory (for `COPY --from`). Layers may be plain, gzip or zstd tars.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use crate::layer::clean_image_path;

/// A layer blob's or an ADD archive's stream, decompressed by its magic
/// bytes (gzip, zstd, xz; anything else is read as it is).
pub fn decompress<'a>(reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::new(reader);
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(GzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader)?)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::read::XzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

/// A whiteout entry (`dir/.wh.name` or the opaque `dir/.wh..wh..opq`).
enum Whiteout {
    Opaque(String),
    Remove(String),
}

/// (parent, name) of a clean image path.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn whiteout(path: &str) -> Option<Whiteout> {
    let (parent, name) = split(path);
    if name == ".wh..wh..opq" {
        return Some(Whiteout::Opaque(parent.to_string()));
    }
    let hidden = name.strip_prefix(".wh.")?;
    Some(Whiteout::Remove(clean_image_path("/", &format!("{parent}/{hidden}"))))
}

fn under(path: &str, dir: &str) -> bool {
    dir.is_empty() || path == dir || path.starts_with(&format!("{dir}/"))
}

/// Directories (and symlinks, to follow) of a stack of layers, to tell
/// whether `COPY file /some/dir` means a directory there.
#[derive(Default, Clone, Debug)]
pub struct BaseDirs {
    dirs: HashSet<String>,
    links: HashMap<String, String>,
}

impl BaseDirs {
    pub fn scan(&mut self, layer: impl Read) -> io::Result<()> {
        let mut archive = tar::Archive::new(layer);
        for entry in archive.entries()? {
            let entry = entry?;
            let path = clean_image_path("/", &entry.path()?.to_string_lossy());
            match whiteout(&path) {
                Some(Whiteout::Remove(gone)) => {
                    self.dirs.remove(&gone);
                    self.links.remove(&gone);
                    continue;
                }
                Some(Whiteout::Opaque(dir)) => {
                    self.dirs.retain(|d| d == &dir || !under(d, &dir));
                    self.links.retain(|l, _| !under(l, &dir));
                    continue;
                }
                None => {}
            }
            self.dirs.remove(&path);
            self.links.remove(&path);
            match entry.header().entry_type() {
                tar::EntryType::Directory => {
                    self.dirs.insert(path);
                }
                tar::EntryType::Symlink => {
                    if let Some(target) = entry.link_name()? {
                        self.links.insert(path, target.to_string_lossy().into_owned());
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn is_dir(&self, path: &str) -> bool {
        let mut path = path.to_string();
        for _ in 0..16 {
            if path.is_empty() || self.dirs.contains(&path) {
                return true;
            }
            let Some(target) = self.links.get(&path) else { return false };
            let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
            path = clean_image_path(&format!("/{parent}"), target);
        }
        false
    }
}

/// The content of the regular file at image path `wanted` after applying
/// `layers` in order (`None` if absent or removed).
pub fn read_file(layers: Vec<Box<dyn Read + '_>>, wanted: &str) -> io::Result<Option<Vec<u8>>> {
    let mut found = None;
    for layer in layers {
        let mut archive = tar::Archive::new(layer);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = clean_image_path("/", &entry.path()?.to_string_lossy());
            match whiteout(&path) {
                Some(Whiteout::Remove(gone)) if under(wanted, &gone) => found = None,
                Some(Whiteout::Opaque(dir)) if under(wanted, &dir) && wanted != dir => found = None,
                _ if path == wanted => {
                    found = if entry.header().entry_type().is_file() {
                        let mut data = Vec::new();
                        entry.read_to_end(&mut data)?;
                        Some(data)
                    } else {
                        None
                    };
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

/// Remove `path` (file, symlink or directory tree) under `root`, refusing
/// anything whose parent resolves outside `root` (symlinks in a layer must
/// never make a whiteout delete host files).
fn remove_inside(root: &Path, rel: &str) -> io::Result<()> {
    let (parent, _) = split(rel);
    let target = root.join(rel);
    let Ok(parent_real) = fs::canonicalize(root.join(parent)) else { return Ok(()) };
    if !parent_real.starts_with(fs::canonicalize(root)?) {
        return Err(io::Error::other(format!("whiteout {rel:?} points outside the layer root")));
    }
    match fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(&target),
        Ok(_) => fs::remove_file(&target),
        Err(_) => Ok(()),
    }
}

/// Give an unpacked entry the owner its header names (RUN sees them; COPY
/// --from sets its own). Headers without a valid owner leave root's.
fn keep_owner<R: Read>(entry: &tar::Entry<'_, R>, path: &Path) -> io::Result<()> {
    let header = entry.header();
    let (Ok(uid), Ok(gid)) = (header.uid(), header.gid()) else { return Ok(()) };
    let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else { return Ok(()) };
    if (uid, gid) == (0, 0) || entry.header().entry_type().is_hard_link() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    // chown clears set-uid and set-gid: put the mode back.
    if !header.entry_type().is_symlink() {
        if let Ok(mode) = header.mode() {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
        }
    }
    Ok(())
}

/// Unpack one layer into `root`, applying whiteouts (and keeping owners).
pub fn unpack(layer: impl Read, root: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = clean_image_path("/", &entry.path()?.to_string_lossy());
        match whiteout(&path) {
            Some(Whiteout::Remove(gone)) => remove_inside(root, &gone)?,
            Some(Whiteout::Opaque(dir)) => {
                let Ok(children) = fs::read_dir(root.join(&dir)) else { continue };
                for child in children {
                    let name = child?.file_name();
                    remove_inside(root, &clean_image_path("/", &format!("{dir}/{}", name.to_string_lossy())))?;
                }
            }
            None => {
                // A directory replaced by a file (or the reverse) in a later layer.
                let existing = root.join(&path);
                if let Ok(meta) = fs::symlink_metadata(&existing) {
                    if meta.is_dir() != entry.header().entry_type().is_dir() {
                        remove_inside(root, &path)?;
                    }
                }
                // unpack_in refuses `..` and paths through symlinks leaving root.
                if entry.unpack_in(root)? {
                    keep_owner(&entry, &root.join(&path))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, path, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn files_and_whiteouts_across_layers() {
        let one = tar_of(&[("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"), ("etc/gone", b"x"), ("d/f", b"f")]);
        let two = tar_of(&[("etc/.wh.gone", b""), ("d/.wh..wh..opq", b"")]);
        let layers = || -> Vec<Box<dyn Read>> { vec![Box::new(&one[..]), Box::new(&two[..])] };
        assert!(read_file(layers(), "etc/passwd").unwrap().unwrap().starts_with(b"root"));
        assert_eq!(read_file(layers(), "etc/gone").unwrap(), None);
        assert_eq!(read_file(layers(), "d/f").unwrap(), None);

        let dir = tempfile::tempdir().unwrap();
        unpack(&one[..], dir.path()).unwrap();
        unpack(&two[..], dir.path()).unwrap();
        assert!(dir.path().join("etc/passwd").is_file());
        assert!(!dir.path().join("etc/gone").exists());
        assert!(dir.path().join("d").is_dir() && !dir.path().join("d/f").exists());
    }

    #[test]
    fn unpack_keeps_owners_and_setuid() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chown needs root");
            return;
        }
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o4755);
        header.set_uid(1000);
        header.set_gid(1001);
        header.set_size(1);
        builder.append_data(&mut header, "bin/tool", &b"x"[..]).unwrap();
        let data = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        unpack(&data[..], dir.path()).unwrap();
        let meta = fs::metadata(dir.path().join("bin/tool")).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (1000, 1001, 0o4755));
    }

    #[test]
    fn decompresses_by_magic() {
        let data = tar_of(&[("a", b"a")]);
        let zst = zstd::encode_all(&data[..], 3).unwrap();
        let mut out = Vec::new();
        decompress(&zst[..]).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
}
