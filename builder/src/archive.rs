//! OCI image archives: a tar of an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/...`), written reproducibly and read back
//! into a [`BlobStore`] (each blob checked against its digest), as are OCI
//! image layout directories.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};
use thiserror::Error;

use crate::blobs::{sha256_hex, BlobStore};
use crate::image::canonical_json;

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("cannot write OCI archive {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read OCI image {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("OCI image {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("OCI image {path}: blob {entry} does not match its digest (it hashes to {actual})")]
    DigestMismatch { path: String, entry: String, actual: String },
    #[error("cannot write OCI archive {path}: blob {digest} is not available locally")]
    MissingBlob { path: String, digest: String },
}

/// One image of an archive: the manifest (or index) descriptor and the
/// blobs it needs, in order.
pub struct ArchiveImage<'a> {
    pub target: &'a Descriptor,
    pub blobs: &'a [String],
}

/// Write an OCI archive of `image` to `path` (through a temporary file that
/// is renamed into place). The index entry carries `name` (full name, as
/// `io.containerd.image.name`) and `tag` (as `org.opencontainers.image.ref.name`).
pub fn write(
    path: &Path,
    blobs: &BlobStore,
    image: &ArchiveImage<'_>,
    name: &str,
    tag: Option<&str>,
    mtime: u64,
) -> Result<(), ArchiveError> {
    let shown = path.display().to_string();
    let write_err = |source| ArchiveError::Write { path: shown.clone(), source };
    let index_json = index_json(image, name, tag, &shown)?;
    let files = blob_files(blobs, image, &shown)?;

    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));

    let temp = tempfile::Builder::new().prefix(".hybrid-archive-").tempfile_in(dir).map_err(write_err)?;
    let mut builder = tar::Builder::new(BufWriter::new(temp.as_file()));
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let add = |builder: &mut tar::Builder<_>, name: &str, kind, size: u64, data: &mut dyn Read| {
        let mode = if kind == tar::EntryType::Directory { 0o755 } else { 0o644 };
        builder.append_data(&mut header(kind, mode, size), name, data).map_err(write_err)
    };
    add(&mut builder, "oci-layout", tar::EntryType::Regular, OCI_LAYOUT.len() as u64, &mut &OCI_LAYOUT[..])?;
    add(&mut builder, "index.json", tar::EntryType::Regular, index_json.len() as u64, &mut &index_json[..])?;
    add(&mut builder, "blobs/", tar::EntryType::Directory, 0, &mut io::empty())?;
    add(&mut builder, "blobs/sha256/", tar::EntryType::Directory, 0, &mut io::empty())?;
    for (hex, file) in &files {
        let mut f = File::open(file).map_err(write_err)?;
        let size = f.metadata().map_err(write_err)?.len();
        add(&mut builder, &format!("blobs/sha256/{hex}"), tar::EntryType::Regular, size, &mut f)?;
    }
    let mut out = builder.into_inner().map_err(write_err)?;
    out.flush().map_err(write_err)?;
    drop(out);
    temp.as_file().sync_all().map_err(write_err)?;
    temp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

/// `index.json` for `image`, its entry annotated with `name` and `tag`.
fn index_json(image: &ArchiveImage<'_>, name: &str, tag: Option<&str>, shown: &str) -> Result<Vec<u8>, ArchiveError> {
    let mut target = image.target.clone();
    let mut annotations = HashMap::new();
    annotations.insert(ANNOTATION_IMAGE_NAME.to_string(), name.to_string());
    if let Some(tag) = tag {
        annotations.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
    }
    target.set_annotations(Some(annotations));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![target])
        .build()
        .map_err(|e| ArchiveError::Invalid { path: shown.to_string(), reason: e.to_string() })?;
    canonical_json(&index).map_err(|e| ArchiveError::Write { path: shown.to_string(), source: io::Error::other(e) })
}

/// The image's blobs (hex → local file), sorted and deduplicated.
fn blob_files(blobs: &BlobStore, image: &ArchiveImage<'_>, shown: &str) -> Result<BTreeMap<String, PathBuf>, ArchiveError> {
    let mut files = BTreeMap::new();
    for digest in image.blobs.iter().chain(std::iter::once(&image.target.digest().to_string())) {
        let missing = || ArchiveError::MissingBlob { path: shown.to_string(), digest: digest.clone() };
        let hex = sha256_hex(digest).ok_or_else(missing)?;
        if !blobs.has_local(digest) {
            return Err(missing());
        }
        let path = blobs.path(digest).map_err(|source| ArchiveError::Write { path: shown.to_string(), source })?;
        files.insert(hex.to_string(), path);
    }
    Ok(files)
}

/// Write `image` as an OCI image layout directory at `dir` (`oci-layout`,
/// `index.json`, `blobs/sha256/`); every file's mtime is `mtime`
/// (SOURCE_DATE_EPOCH), so the directory packs reproducibly.
pub fn write_layout(
    dir: &Path,
    blobs: &BlobStore,
    image: &ArchiveImage<'_>,
    name: &str,
    tag: Option<&str>,
    mtime: u64,
) -> Result<(), ArchiveError> {
    let shown = dir.display().to_string();
    let write_err = |source| ArchiveError::Write { path: shown.clone(), source };
    let index_json = index_json(image, name, tag, &shown)?;
    let files = blob_files(blobs, image, &shown)?;
    let blob_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir).map_err(write_err)?;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    // Through a temporary file and a rename: readers never see half a file.
    let put = |path: &Path, data: &mut dyn Read| -> io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new("."));
        let mut temp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(parent)?;
        io::copy(data, &mut temp)?;
        // Blobs are public content: readable like an extracted archive.
        std::fs::set_permissions(temp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        temp.as_file().set_modified(time)?;
        temp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    for (hex, file) in &files {
        let target = blob_dir.join(hex);
        if !target.is_file() {
            put(&target, &mut File::open(file).map_err(write_err)?).map_err(write_err)?;
        }
    }
    put(&dir.join("oci-layout"), &mut &OCI_LAYOUT[..]).map_err(write_err)?;
    put(&dir.join("index.json"), &mut &index_json[..]).map_err(write_err)?;
    for d in [blob_dir.as_path(), blob_dir.parent().unwrap_or(dir), dir] {
        File::open(d).and_then(|f| f.set_modified(time)).map_err(write_err)?;
    }
    Ok(())
}

/// `oci-layout`'s content, if it is a version this reader knows.
fn check_layout_version(data: &[u8]) -> Result<(), String> {
    let layout: serde_json::Value = serde_json::from_slice(data).map_err(|e| format!("bad oci-layout: {e}"))?;
    if layout.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        return Err(format!("unsupported oci-layout {}", String::from_utf8_lossy(data)));
    }
    Ok(())
}

/// Copy the blob `blobs/sha256/<hex>` (shown as `name`) of the archive or
/// layout `shown` into `blobs`, refusing it unless it hashes to its name.
fn import_blob(shown: &str, hex: &str, name: &str, data: &mut dyn Read, blobs: &BlobStore) -> Result<(), ArchiveError> {
    let read_err = |source| ArchiveError::Read { path: shown.to_string(), source };
    let expected = format!("sha256:{hex}");
    if sha256_hex(&expected).is_none() {
        return Err(ArchiveError::Invalid { path: shown.to_string(), reason: format!("bad blob name {name}") });
    }
    let mut writer = blobs.writer().map_err(read_err)?;
    io::copy(data, &mut writer).map_err(read_err)?;
    let (actual, _) = writer.commit().map_err(read_err)?;
    if actual != expected {
        return Err(ArchiveError::DigestMismatch { path: shown.to_string(), entry: name.to_string(), actual });
    }
    Ok(())
}

/// Read the OCI image layout directory `dir` (as `hybrid build --oci-dir`,
/// skopeo or buildkit write it): every blob in `blobs/sha256/` goes into
/// `blobs` (verified); returns the parsed `index.json`.
pub fn read_layout(dir: &Path, blobs: &BlobStore) -> Result<ImageIndex, ArchiveError> {
    let shown = dir.display().to_string();
    let read_err = |source| ArchiveError::Read { path: shown.clone(), source };
    let invalid = |reason: String| ArchiveError::Invalid { path: shown.clone(), reason };
    let layout = std::fs::read(dir.join("oci-layout")).map_err(|e| invalid(format!("no oci-layout file ({e})")))?;
    check_layout_version(&layout).map_err(invalid)?;
    let blob_dir = dir.join("blobs").join("sha256");
    for entry in std::fs::read_dir(&blob_dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = format!("blobs/sha256/{}", entry.file_name().to_string_lossy());
        let Some(hex) = entry.file_name().to_str().map(str::to_string) else {
            return Err(invalid(format!("bad blob name {name}")));
        };
        if !entry.file_type().map_err(read_err)?.is_file() {
            return Err(invalid(format!("blob {name} is not a regular file")));
        }
        let mut file = File::open(entry.path()).map_err(read_err)?;
        import_blob(&shown, &hex, &name, &mut file, blobs)?;
    }
    let data = std::fs::read(dir.join("index.json")).map_err(|e| invalid(format!("no index.json ({e})")))?;
    serde_json::from_slice(&data).map_err(|e| invalid(format!("bad index.json: {e}")))
}

/// Read the OCI archive at `path`: every `blobs/sha256/*` entry goes into
/// `blobs` (verified); returns the parsed `index.json`.
pub fn read(path: &Path, blobs: &BlobStore) -> Result<ImageIndex, ArchiveError> {
    let shown = path.display().to_string();
    let read_err = |source| ArchiveError::Read { path: shown.clone(), source };
    let invalid = |reason: String| ArchiveError::Invalid { path: shown.clone(), reason };
    let file = File::open(path).map_err(read_err)?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let mut index = None;
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let entry_path = entry.path().map_err(read_err)?.into_owned();
        let parts: Vec<String> = entry_path
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        match parts.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["index.json"] => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(read_err)?;
                index = Some(data);
            }
            ["oci-layout"] => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(read_err)?;
                check_layout_version(&data).map_err(invalid)?;
            }
            ["blobs", "sha256", hex] => {
                let name = entry_path.display().to_string();
                import_blob(&shown, hex, &name, &mut entry, blobs)?;
            }
            _ => tracing::debug!("{shown}: ignoring {}", entry_path.display()),
        }
    }
    let data = index.ok_or_else(|| invalid("no index.json (not an OCI image archive)".into()))?;
    serde_json::from_slice(&data).map_err(|e| invalid(format!("bad index.json: {e}")))
}
