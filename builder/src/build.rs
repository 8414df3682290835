//! One build: the Dockerfile's instructions applied in order to an
//! [`ImageState`], COPY/ADD layers written into a [`BlobStore`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{self, Read};
use std::path::PathBuf;

use flate2::read::GzDecoder;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use thiserror::Error;

use crate::archive::{self, ArchiveError};
use crate::blobs::BlobStore;
use crate::containerd::{ContainerdError, ContainerdStore};
use crate::copy::{self, dest_spelled_as_dir, CopySpec};
use crate::dockerfile::{Instruction, Kind, Words};
use crate::image::{descriptor, is_index, parse_json, rfc3339, select_platform, ImageError, ImageState};
use crate::layer::{clean_image_path, LayerError, LayerWriter};
use crate::reference::{self, ReferenceError};
use crate::words::{self, WordError};
use crate::ContainerdOptions;

/// Why one instruction failed (wrapped with `file:line:` by the caller).
#[derive(Debug, Error)]
pub enum StepError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Word(#[from] WordError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("invalid port {0:?} (want PORT[/tcp|udp|sctp] or a range PORT-PORT)")]
    Port(String),
    #[error("{0} requires a non-empty value")]
    Empty(&'static str),
    #[error("base image archive {0} not found")]
    BaseArchive(String),
    #[error("OCI archive {0} holds no image")]
    EmptyArchive(String),
    #[error("cannot read base image blob {digest}")]
    BaseBlob {
        digest: String,
        #[source]
        source: io::Error,
    },
}

/// Directories (and symlinks, to follow) of the base image's layers, to
/// tell whether `COPY file /some/dir` means a directory there.
#[derive(Default)]
struct BaseDirs {
    dirs: HashSet<String>,
    links: HashMap<String, String>,
}

impl BaseDirs {
    fn scan(&mut self, layer: impl Read) -> io::Result<()> {
        let mut archive = tar::Archive::new(layer);
        for entry in archive.entries()? {
            let entry = entry?;
            let path = clean_image_path("/", &entry.path()?.to_string_lossy());
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let gone = clean_image_path("/", &format!("{parent}/{hidden}"));
                self.dirs.remove(&gone);
                self.links.remove(&gone);
                continue;
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

    fn is_dir(&self, path: &str) -> bool {
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

/// Connect to containerd on first use.
async fn connect<'a>(
    slot: &'a mut Option<ContainerdStore>,
    options: &ContainerdOptions,
) -> Result<&'a ContainerdStore, ContainerdError> {
    let store = match slot.take() {
        Some(store) => store,
        None => ContainerdStore::connect(&options.address, &options.namespace).await?,
    };
    Ok(slot.insert(store))
}

pub(crate) struct Session<'a> {
    pub containerd: &'a ContainerdOptions,
    pub context: PathBuf,
    pub blobs: BlobStore,
    pub store: Option<ContainerdStore>,
    pub image: ImageState,
    pub mtime: u64,
    scratch: bool,
    base_layers: Vec<Descriptor>,
    base_dirs: Option<BaseDirs>,
    /// Directories made by this build (layers and WORKDIR).
    built_dirs: BTreeSet<String>,
}

impl<'a> Session<'a> {
    pub fn new(containerd: &'a ContainerdOptions, context: PathBuf, blobs: BlobStore, mtime: u64) -> Self {
        Session {
            containerd,
            context,
            blobs,
            store: None,
            image: ImageState::scratch(rfc3339(mtime)),
            mtime,
            scratch: true,
            base_layers: Vec::new(),
            base_dirs: None,
            built_dirs: BTreeSet::new(),
        }
    }

    fn expand(&self, raw: &str) -> Result<String, WordError> {
        words::expand(raw, &|name| self.image.env(name))
    }

    fn expand_words(&self, words: &Words) -> Result<Vec<String>, WordError> {
        if words.json {
            return Ok(words.words.clone());
        }
        words.words.iter().map(|w| self.expand(w)).collect()
    }

    /// Expand NAME/VALUE pairs, all against the environment from before
    /// the instruction (as docker does).
    fn expand_pairs(&self, pairs: &[(String, String)]) -> Result<Vec<(String, String)>, WordError> {
        pairs.iter().map(|(k, v)| Ok((self.expand(k)?, self.expand(v)?))).collect()
    }

    pub async fn step(&mut self, instruction: &Instruction) -> Result<(), StepError> {
        let text = instruction.text.as_str();
        match &instruction.kind {
            Kind::From { image } => return self.from(image).await,
            Kind::Copy(words) => return self.copy(words, false, text).await,
            Kind::Add(words) => return self.copy(words, true, text).await,
            Kind::Workdir(raw) => {
                let dir = self.expand(raw)?;
                if dir.is_empty() {
                    return Err(StepError::Empty("WORKDIR"));
                }
                let clean = clean_image_path(&self.image.workdir(), &dir);
                self.built_dirs.insert(clean.clone());
                self.image.set_workdir(format!("/{clean}"));
            }
            Kind::Env(pairs) => {
                for (k, v) in self.expand_pairs(pairs)? {
                    self.image.set_env(&k, &v);
                }
            }
            Kind::Label(pairs) => {
                for (k, v) in self.expand_pairs(pairs)? {
                    self.image.set_label(k, v);
                }
            }
            Kind::Cmd(command) => self.image.set_cmd(command.argv()),
            Kind::Entrypoint(command) => self.image.set_entrypoint(command.argv()),
            Kind::Expose(raw) => {
                for word in raw {
                    let port = normalize_port(&self.expand(word)?)?;
                    self.image.add_exposed_port(port);
                }
            }
            Kind::Volume(words) => {
                for path in self.expand_words(words)? {
                    if path.is_empty() {
                        return Err(StepError::Empty("VOLUME"));
                    }
                    self.image.add_volume(path);
                }
            }
            Kind::User(raw) => {
                let user = self.expand(raw)?;
                self.image.set_user(user);
            }
            Kind::StopSignal(raw) => {
                let signal = self.expand(raw)?;
                self.image.set_stop_signal(signal);
            }
        }
        self.image.add_history(text);
        Ok(())
    }

    async fn from(&mut self, raw: &str) -> Result<(), StepError> {
        let image = words::expand(raw, &|_| None)?;
        let created = rfc3339(self.mtime);
        if image == "scratch" {
            self.image = ImageState::scratch(created);
            return Ok(());
        }
        let (manifest, config) = match image.strip_prefix("oci-archive:") {
            Some(path) => self.base_from_archive(path)?,
            None => self.base_from_containerd(&image).await?,
        };
        self.scratch = false;
        self.image = ImageState::from_base(config, &manifest, created);
        self.base_layers = self.image.layers().to_vec();
        Ok(())
    }

    fn local_blob(&self, digest: &str) -> Result<Vec<u8>, StepError> {
        self.blobs.read(digest).map_err(|source| StepError::BaseBlob { digest: digest.to_string(), source })
    }

    /// The archive path: absolute, relative to the context, or else to the
    /// current directory.
    fn base_from_archive(&mut self, path: &str) -> Result<(ImageManifest, ImageConfiguration), StepError> {
        let in_context = self.context.join(path);
        let path = [in_context, PathBuf::from(path)]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| StepError::BaseArchive(path.to_string()))?;
        let index = archive::read(&path, &self.blobs)?;
        let shown = path.display().to_string();
        let mut target = match index.manifests().as_slice() {
            [] => return Err(StepError::EmptyArchive(shown)),
            [only] => only.clone(),
            _ => select_platform(&index, &shown)?.clone(),
        };
        if is_index(target.media_type()) {
            let digest = target.digest().to_string();
            let nested: ImageIndex = parse_json("index", &digest, &self.local_blob(&digest)?)?;
            target = select_platform(&nested, &digest)?.clone();
        }
        let digest = target.digest().to_string();
        let manifest: ImageManifest = parse_json("manifest", &digest, &self.local_blob(&digest)?)?;
        let config_digest = manifest.config().digest().to_string();
        let config = parse_json("config", &config_digest, &self.local_blob(&config_digest)?)?;
        Ok((manifest, config))
    }

    async fn base_from_containerd(&mut self, image: &str) -> Result<(ImageManifest, ImageConfiguration), StepError> {
        let name = reference::normalize(image)?;
        let store = connect(&mut self.store, self.containerd).await?;
        let mut target = store.get_image(&name).await?;
        if is_index(target.media_type()) {
            let digest = target.digest().to_string();
            let index: ImageIndex = parse_json("index", &digest, &store.read(&digest, &self.blobs).await?)?;
            target = select_platform(&index, &digest)?.clone();
        }
        let digest = target.digest().to_string();
        let manifest: ImageManifest = parse_json("manifest", &digest, &store.read(&digest, &self.blobs).await?)?;
        let config_digest = manifest.config().digest().to_string();
        let config = parse_json("config", &config_digest, &store.read(&config_digest, &self.blobs).await?)?;
        for layer in manifest.layers() {
            self.blobs.mark_remote(layer.digest().as_ref());
        }
        tracing::info!("base image {name} ({digest}) from containerd");
        Ok((manifest, config))
    }

    /// Fetch from containerd the blobs an OCI archive needs but that stayed
    /// there (base image layers).
    pub async fn fetch_remote_blobs(&mut self) -> Result<(), ContainerdError> {
        let missing = self.blobs.missing_remote();
        if missing.is_empty() {
            return Ok(());
        }
        let store = connect(&mut self.store, self.containerd).await?;
        for digest in missing {
            tracing::info!("fetching {digest} from containerd");
            store.fetch(&digest, &self.blobs).await?;
        }
        Ok(())
    }

    async fn ensure_base_dirs(&mut self) -> Result<(), StepError> {
        if self.base_dirs.is_some() {
            return Ok(());
        }
        let mut dirs = BaseDirs::default();
        for layer in self.base_layers.clone() {
            let digest = layer.digest().to_string();
            if !self.blobs.has_local(&digest) {
                connect(&mut self.store, self.containerd).await?.fetch(&digest, &self.blobs).await?;
            }
            let blob_err = |source| StepError::BaseBlob { digest: digest.clone(), source };
            let mut file = io::BufReader::new(self.blobs.open(&digest).map_err(blob_err)?);
            let gzip = io::BufRead::fill_buf(&mut file).map_err(blob_err)?.starts_with(&[0x1f, 0x8b]);
            let scanned = if gzip { dirs.scan(GzDecoder::new(file)) } else { dirs.scan(file) };
            if let Err(e) = scanned {
                tracing::warn!("cannot list base layer {digest} ({e}); assuming COPY destinations are files");
            }
        }
        self.base_dirs = Some(dirs);
        Ok(())
    }

    async fn copy(&mut self, words: &Words, add: bool, text: &str) -> Result<(), StepError> {
        let expanded = self.expand_words(words)?;
        let Some((dest, sources)) = expanded.split_last() else {
            return Err(StepError::Empty(if add { "ADD" } else { "COPY" }));
        };
        let workdir = self.image.workdir();
        let dest_path = clean_image_path(&workdir, dest);
        if !self.scratch && !dest_spelled_as_dir(dest) && !self.built_dirs.contains(&dest_path) {
            self.ensure_base_dirs().await?;
        }
        let mut layer = LayerWriter::new(self.scratch);
        let spec = CopySpec { context: &self.context, sources, dest, workdir: &workdir, extract_archives: add };
        let built = &self.built_dirs;
        let base = self.base_dirs.as_ref();
        let mut is_dir = |path: &str| built.contains(path) || base.is_some_and(|b| b.is_dir(path));
        copy::copy(&spec, &mut layer, &self.blobs, &mut is_dir)?;
        self.built_dirs.extend(layer.directories().map(str::to_string));
        let blob = layer.finish(&self.blobs, self.mtime)?;
        let desc = descriptor(blob.media_type, &blob.digest, blob.size)?;
        tracing::info!("{text}: layer {} ({} bytes)", blob.digest, blob.size);
        self.image.add_layer(desc, blob.diff_id, text);
        Ok(())
    }
}

/// `80` → `80/tcp`; `53/UDP` → `53/udp`; ranges `8000-8010/tcp`.
fn normalize_port(word: &str) -> Result<String, StepError> {
    let bad = || StepError::Port(word.to_string());
    let (ports, proto) = word.split_once('/').unwrap_or((word, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    let valid = |p: &str| p.parse::<u16>().is_ok_and(|n| n > 0);
    let ok = match ports.split_once('-') {
        Some((a, b)) => valid(a) && valid(b),
        None => valid(ports),
    };
    if !ok {
        return Err(bad());
    }
    Ok(format!("{ports}/{proto}"))
}
