//! One build: the Dockerfile's instructions applied in order, stage by
//! stage, each stage an [`ImageState`]; COPY/ADD (see [`crate::copystep`])
//! and RUN (see [`crate::run`]) write layers into a [`BlobStore`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::path::PathBuf;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use thiserror::Error;

use crate::archive::{self, ArchiveError};
use crate::basefs::BaseDirs;
use crate::blobs::BlobStore;
use crate::cache::{chain_key, Cache};
use crate::containerd::{ContainerdError, ContainerdStore};
use crate::dockerfile::{Instruction, Kind, Words};
use crate::ignore::Ignore;
use crate::image::{is_index, parse_json, rfc3339, select_platform, ImageError, ImageState};
use crate::layer::{clean_image_path, LayerError};
use crate::owner::OwnerError;
use crate::platform::{Platform, PlatformError};
use crate::reference::{self, ReferenceError};
use crate::words::{self, WordError};
use crate::{BuildOptions, ContainerdOptions, StepReport};

/// Why one instruction failed (wrapped with `file:line:column:` by the caller).
#[derive(Debug, Error)]
pub enum StepError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
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
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error("invalid port {0:?} (want PORT[/tcp|udp|sctp] or a range PORT-PORT)")]
    Port(String),
    #[error("{0} requires a non-empty value")]
    Empty(&'static str),
    #[error("base image {what} {path} not found")]
    BaseArchive { what: &'static str, path: String },
    #[error("{0} holds no image")]
    EmptyArchive(String),
    #[error("cannot read base image blob {digest}")]
    BaseBlob {
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error("COPY --from={0}: a stage cannot copy from itself")]
    FromItself(String),
    #[error("COPY --from={0}: stage index out of range (only {1} earlier stages)")]
    StageIndex(String, usize),
    #[error("cannot unpack layer {digest} of {what}")]
    Unpack {
        digest: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot stage the heredoc {name}")]
    Heredoc {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("no {what} {name:?} in the image's {file}")]
    NoUser { what: &'static str, name: String, file: &'static str },
    #[error("cannot create a directory for {0}")]
    Temp(String, #[source] io::Error),
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    #[error("FROM --platform: {0}")]
    Platform(#[from] PlatformError),
    #[error("RUN on platform {0} needs an emulator, not supported")]
    Emulator(String),
}

/// Connect to containerd on first use.
pub(crate) async fn connect<'a>(
    slot: &'a mut Option<ContainerdStore>,
    options: &ContainerdOptions,
) -> Result<&'a ContainerdStore, ContainerdError> {
    let store = match slot.take() {
        Some(store) => store,
        None => ContainerdStore::connect(&options.address, &options.namespace).await?,
    };
    Ok(slot.insert(store))
}

/// A base image on the local filesystem.
#[derive(Debug, Clone, Copy)]
enum LocalImage {
    /// `oci-archive:PATH`: a tar of an OCI image layout.
    Archive,
    /// `oci-layout:PATH`: an OCI image layout directory.
    Layout,
}

impl LocalImage {
    fn name(self) -> &'static str {
        match self {
            LocalImage::Archive => "OCI archive",
            LocalImage::Layout => "OCI layout",
        }
    }
}

/// One build stage (`FROM ... [AS name]` and what follows).
#[derive(Clone)]
pub(crate) struct Stage {
    pub name: Option<String>,
    pub image: ImageState,
    /// FROM scratch (layers then carry their parent directories).
    pub scratch: bool,
    pub base_layers: Vec<Descriptor>,
    pub base_dirs: Option<BaseDirs>,
    /// Directories made by this stage (layers and WORKDIR).
    pub built_dirs: BTreeSet<String>,
    /// ARGs declared in this stage, with their values.
    pub args: HashMap<String, String>,
    /// Build cache key of the last layer (or the base).
    pub cache_key: String,
    /// The platform this stage is built for.
    pub platform: Platform,
}

impl Stage {
    fn scratch(created: String, settings: &str, platform: &Platform) -> Stage {
        Stage {
            name: None,
            image: ImageState::scratch(created, platform),
            scratch: true,
            base_layers: Vec::new(),
            base_dirs: None,
            built_dirs: BTreeSet::new(),
            args: HashMap::new(),
            cache_key: chain_key(settings, &["scratch", &platform.to_string()]),
            platform: platform.clone(),
        }
    }
}

pub(crate) struct Session<'a> {
    pub options: &'a BuildOptions,
    pub context: PathBuf,
    pub ignore: Ignore,
    pub blobs: BlobStore,
    pub store: Option<ContainerdStore>,
    pub mtime: u64,
    pub escape: char,
    pub cache: Option<Cache>,
    /// What layer bytes depend on besides the steps (compression, mtime).
    settings_key: String,
    global_args: HashMap<String, String>,
    pub declared_args: HashSet<String>,
    /// Finished stages, in order.
    pub stages: Vec<Stage>,
    pub stage: Stage,
    started: bool,
    /// Unpacked stages and images for `COPY --from`.
    pub rootfs: HashMap<String, tempfile::TempDir>,
    pub steps: Vec<StepReport>,
    /// The unpacked filesystem RUN steps use as their lower layer.
    pub run_lower: Option<crate::run::LowerDir>,
    /// Where RUN output goes (set per step).
    pub run_output: crate::progress::OutputSink,
}

impl<'a> Session<'a> {
    pub fn new(options: &'a BuildOptions, context: PathBuf, ignore: Ignore, blobs: BlobStore, escape: char, cache: Option<Cache>) -> Self {
        let mtime = options.source_date_epoch;
        let settings_key = chain_key("hybrid-build-v1", &[&options.compression.to_string(), &mtime.to_string()]);
        Session {
            options,
            context,
            ignore,
            blobs,
            store: None,
            mtime,
            escape,
            cache,
            stage: Stage::scratch(rfc3339(mtime), &settings_key, &options.platform),
            settings_key,
            global_args: platform_args(&options.platform),
            declared_args: HashSet::new(),
            stages: Vec::new(),
            started: false,
            rootfs: HashMap::new(),
            steps: Vec::new(),
            run_lower: None,
            run_output: Default::default(),
        }
    }

    /// The value of `name` in the current stage: ENV wins over ARG.
    pub fn lookup(&self, name: &str) -> Option<String> {
        self.stage.image.env(name).or_else(|| self.stage.args.get(name).cloned())
    }

    pub fn expand(&self, raw: &str) -> Result<String, WordError> {
        words::expand(raw, self.escape, &|name| self.lookup(name))
    }

    pub fn expand_words(&self, words: &Words) -> Result<Vec<String>, WordError> {
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

    /// The name of the stage being built (for `--target`).
    pub fn current_stage_name(&self) -> Option<&str> {
        self.started.then_some(self.stage.name.as_deref()).flatten()
    }

    pub fn started(&self) -> bool {
        self.started
    }

    pub async fn step(&mut self, instruction: &Instruction) -> Result<(), StepError> {
        let text = instruction.text.as_str();
        match &instruction.kind {
            Kind::From { image, name, platform } => return self.from(image, name.clone(), platform.as_deref()).await,
            Kind::Arg(list) => return self.arg(list),
            Kind::Copy(args) => return self.copy(args, false, text).await,
            Kind::Add(args) => return self.copy(args, true, text).await,
            Kind::Run(args) => return self.run(args, text).await,
            Kind::Workdir(raw) => {
                let dir = self.expand(raw)?;
                if dir.is_empty() {
                    return Err(StepError::Empty("WORKDIR"));
                }
                let clean = clean_image_path(&self.stage.image.workdir(), &dir);
                self.stage.built_dirs.insert(clean.clone());
                self.stage.image.set_workdir(format!("/{clean}"));
            }
            Kind::Env(pairs) => {
                for (k, v) in self.expand_pairs(pairs)? {
                    self.stage.image.set_env(&k, &v);
                }
            }
            Kind::Label(pairs) => {
                for (k, v) in self.expand_pairs(pairs)? {
                    self.stage.image.set_label(k, v);
                }
            }
            Kind::Cmd(command) => {
                let argv = command.argv(&self.stage.image.shell());
                self.stage.image.set_cmd(argv);
            }
            Kind::Entrypoint(command) => {
                let argv = command.argv(&self.stage.image.shell());
                self.stage.image.set_entrypoint(argv);
            }
            Kind::Expose(raw) => {
                for word in raw {
                    let port = normalize_port(&self.expand(word)?)?;
                    self.stage.image.add_exposed_port(port);
                }
            }
            Kind::Volume(words) => {
                for path in self.expand_words(words)? {
                    if path.is_empty() {
                        return Err(StepError::Empty("VOLUME"));
                    }
                    self.stage.image.add_volume(path);
                }
            }
            Kind::User(raw) => {
                let user = self.expand(raw)?;
                if user.is_empty() {
                    return Err(StepError::Empty("USER"));
                }
                self.check_user(&user).await?;
                self.stage.image.set_user(user);
            }
            Kind::StopSignal(raw) => {
                let signal = self.expand(raw)?;
                self.stage.image.set_stop_signal(signal);
            }
            Kind::Shell(shell) => self.stage.image.set_shell(shell.clone()),
            Kind::Healthcheck(check) => self.stage.image.set_healthcheck(check.as_ref()),
            // Stored as written: the trigger runs (and expands) in the child build.
            Kind::OnBuild(trigger) => self.stage.image.add_onbuild(trigger.clone()),
        }
        self.stage.image.add_history(text);
        Ok(())
    }

    fn build_arg(&self, name: &str) -> Option<String> {
        self.options.build_args.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    /// ARG before FROM sets a global (for FROM lines, and for stages that
    /// declare it again); inside a stage it is visible to what follows.
    fn arg(&mut self, list: &[(String, Option<String>)]) -> Result<(), StepError> {
        for (name, default) in list {
            self.declared_args.insert(name.clone());
            let value = match self.build_arg(name) {
                Some(v) => Some(v),
                None => match default {
                    Some(raw) if self.started => Some(self.expand(raw)?),
                    Some(raw) => Some(words::expand(raw, self.escape, &|n| self.global_args.get(n).cloned())?),
                    None if self.started => self.global_args.get(name).cloned(),
                    None => None,
                },
            };
            let Some(value) = value else { continue };
            if self.started {
                self.stage.args.insert(name.clone(), value);
            } else {
                self.global_args.insert(name.clone(), value);
            }
        }
        Ok(())
    }

    /// A stage the output does not need: recorded (so stage indexes stay
    /// right) but not built, like buildkit does.
    pub fn skip_stage(&mut self, name: Option<String>, args: &[String]) {
        if self.started {
            let done = std::mem::replace(&mut self.stage, Stage::scratch(rfc3339(self.mtime), &self.settings_key, &self.options.platform));
            self.stages.push(done);
        }
        self.started = true;
        self.stage = Stage::scratch(rfc3339(self.mtime), &self.settings_key, &self.options.platform);
        self.stage.name = name;
        self.declared_args.extend(args.iter().cloned());
    }

    /// The finished stage named `name` (case-insensitive), or at index `name`.
    pub fn find_stage(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| name.parse::<usize>().ok().filter(|i| *i < self.stages.len()))
    }

    async fn from(&mut self, raw: &str, name: Option<String>, platform: Option<&str>) -> Result<(), StepError> {
        let image = words::expand(raw, self.escape, &|n| self.global_args.get(n).cloned())?;
        if image.is_empty() {
            return Err(StepError::Empty("FROM"));
        }
        let platform = match platform {
            Some(raw) => Platform::parse(&words::expand(raw, self.escape, &|n| self.global_args.get(n).cloned())?)?,
            None => self.options.platform.clone(),
        };
        if self.started {
            let done = std::mem::replace(&mut self.stage, Stage::scratch(rfc3339(self.mtime), &self.settings_key, &self.options.platform));
            self.stages.push(done);
        }
        self.started = true;
        let lower = image.to_ascii_lowercase();
        let earlier = self.stages.iter().rposition(|s| s.name.as_deref() == Some(lower.as_str()));
        let mut stage = match earlier {
            Some(i) => {
                let mut stage = self.stages[i].clone();
                // ONBUILD triggers of a stage run only for images built on it.
                stage.image.base_triggers.clear();
                stage
            }
            None => self.base_stage(&image, &platform).await?,
        };
        stage.name = name;
        stage.args.clear();
        self.stage = stage;
        Ok(())
    }

    /// A fresh stage on the image `image` (`scratch`, `oci-archive:PATH`,
    /// `oci-layout:DIR` or a containerd image) for `platform`.
    pub async fn base_stage(&mut self, image: &str, platform: &Platform) -> Result<Stage, StepError> {
        let created = rfc3339(self.mtime);
        if image == "scratch" {
            return Ok(Stage::scratch(created, &self.settings_key, platform));
        }
        let (manifest, config, raw, digest) = if let Some(path) = image.strip_prefix("oci-archive:") {
            self.base_from_local(path, LocalImage::Archive, platform)?
        } else if let Some(path) = image.strip_prefix("oci-layout:") {
            self.base_from_local(path, LocalImage::Layout, platform)?
        } else {
            self.base_from_containerd(image, platform).await?
        };
        let mut state = ImageState::from_base(config, &raw, &manifest, created);
        let base_platform = state.platform();
        if !Platform::parse(&base_platform).is_ok_and(|p| p.matches(platform)) {
            tracing::warn!("base image {image} is {base_platform}, not {platform}; the image says {platform}");
        }
        state.set_platform(platform);
        Ok(Stage {
            name: None,
            base_layers: state.layers().to_vec(),
            image: state,
            scratch: false,
            base_dirs: None,
            built_dirs: BTreeSet::new(),
            args: HashMap::new(),
            cache_key: chain_key(&self.settings_key, &["base", &digest, &platform.to_string()]),
            platform: platform.clone(),
        })
    }

    fn local_blob(&self, digest: &str) -> Result<Vec<u8>, StepError> {
        self.blobs.read(digest).map_err(|source| StepError::BaseBlob { digest: digest.to_string(), source })
    }

    /// An OCI archive (a file) or layout (a directory): absolute, relative
    /// to the context, or else to the current directory. Returns manifest,
    /// config, raw config and the manifest digest.
    fn base_from_local(&mut self, path: &str, kind: LocalImage, platform: &Platform) -> Result<(ImageManifest, ImageConfiguration, Vec<u8>, String), StepError> {
        let in_context = self.context.join(path);
        let found = [in_context, PathBuf::from(path)].into_iter().find(|p| match kind {
            LocalImage::Archive => p.is_file(),
            LocalImage::Layout => p.is_dir(),
        });
        let path = found.ok_or_else(|| StepError::BaseArchive { what: kind.name(), path: path.to_string() })?;
        let index = match kind {
            LocalImage::Archive => archive::read(&path, &self.blobs)?,
            LocalImage::Layout => archive::read_layout(&path, &self.blobs)?,
        };
        let shown = format!("{} {}", kind.name(), path.display());
        if index.manifests().is_empty() {
            return Err(StepError::EmptyArchive(shown));
        }
        let mut target = select_platform(&index, &shown, platform)?.clone();
        if is_index(target.media_type()) {
            let digest = target.digest().to_string();
            let nested: ImageIndex = parse_json("index", &digest, &self.local_blob(&digest)?)?;
            target = select_platform(&nested, &shown, platform)?.clone();
        }
        let digest = target.digest().to_string();
        let manifest: ImageManifest = parse_json("manifest", &digest, &self.local_blob(&digest)?)?;
        let config_digest = manifest.config().digest().to_string();
        let raw = self.local_blob(&config_digest)?;
        let config = parse_json("config", &config_digest, &raw)?;
        Ok((manifest, config, raw, digest))
    }

    async fn base_from_containerd(&mut self, image: &str, platform: &Platform) -> Result<(ImageManifest, ImageConfiguration, Vec<u8>, String), StepError> {
        let name = reference::normalize(image)?;
        let store = connect(&mut self.store, &self.options.containerd).await?;
        let mut target = store.get_image(&name).await?;
        if is_index(target.media_type()) {
            let digest = target.digest().to_string();
            let index: ImageIndex = parse_json("index", &digest, &store.read(&digest, &self.blobs).await?)?;
            target = select_platform(&index, &format!("image {name}"), platform)?.clone();
        }
        let digest = target.digest().to_string();
        let manifest: ImageManifest = parse_json("manifest", &digest, &store.read(&digest, &self.blobs).await?)?;
        let config_digest = manifest.config().digest().to_string();
        let raw = store.read(&config_digest, &self.blobs).await?;
        let config = parse_json("config", &config_digest, &raw)?;
        for layer in manifest.layers() {
            self.blobs.mark_remote(layer.digest().as_ref());
        }
        tracing::info!("base image {name} ({digest}) from containerd");
        Ok((manifest, config, raw, digest))
    }

    /// USER names (not numbers) must exist in the image's /etc/passwd and
    /// /etc/group when it has them: else the container could not start.
    /// Images without them (wasm on scratch) are not checked, and neither
    /// are base layers that stayed in containerd (no fetch just for this).
    async fn check_user(&mut self, user: &str) -> Result<(), StepError> {
        let (name, group) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
        let all_local = self.stage.image.layers().iter().all(|l| self.blobs.has_local(l.digest().as_ref()));
        if !all_local {
            return Ok(());
        }
        let checks = [(Some(name), "user", "etc/passwd"), (group, "group", "etc/group")];
        for (wanted, what, file) in checks {
            let Some(wanted) = wanted.filter(|w| w.parse::<u32>().is_err()) else { continue };
            let Some(content) = self.image_file(file).await? else { continue };
            if !content.lines().any(|line| line.split(':').next() == Some(wanted)) {
                let file = if what == "user" { "/etc/passwd" } else { "/etc/group" };
                return Err(StepError::NoUser { what, name: wanted.to_string(), file });
            }
        }
        Ok(())
    }

    /// Make the blob `digest` local (fetching it from containerd).
    pub async fn ensure_local(&mut self, digest: &str) -> Result<(), StepError> {
        if !self.blobs.has_local(digest) {
            connect(&mut self.store, &self.options.containerd).await?.fetch(digest, &self.blobs).await?;
        }
        Ok(())
    }

    /// Fetch from containerd the blobs an OCI archive needs but that stayed
    /// there (base image layers).
    pub async fn fetch_remote_blobs(&mut self) -> Result<(), ContainerdError> {
        let missing = self.blobs.missing_remote();
        if missing.is_empty() {
            return Ok(());
        }
        let store = connect(&mut self.store, &self.options.containerd).await?;
        for digest in missing {
            tracing::info!("fetching {digest} from containerd");
            store.fetch(&digest, &self.blobs).await?;
        }
        Ok(())
    }
}

/// The automatic platform ARGs (global: a stage sees them after `ARG
/// NAME`), as docker sets them.
fn platform_args(target: &Platform) -> HashMap<String, String> {
    let host = Platform::host();
    let mut args = HashMap::from([
        ("BUILDPLATFORM".to_string(), host.to_string()),
        ("BUILDOS".to_string(), host.os.clone()),
        ("BUILDARCH".to_string(), host.arch.clone()),
        ("TARGETPLATFORM".to_string(), target.to_string()),
        ("TARGETOS".to_string(), target.os.clone()),
        ("TARGETARCH".to_string(), target.arch.clone()),
    ]);
    if let Some(variant) = &target.variant {
        args.insert("TARGETVARIANT".to_string(), variant.clone());
    }
    args
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
