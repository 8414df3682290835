//! hybrid-builder: Dockerfile → OCI image, without a daemon.
//!
//! [`build`] parses a Dockerfile ([`dockerfile`], [`instruction`]): ARGs,
//! stages (`FROM ... AS name`), and turns each COPY/ADD into one
//! reproducible layer ([`layer`], [`copy`]) and each RUN into the layer its
//! container wrote ([`overlay_diff`]), reused from the build cache
//! ([`cache`]) when its inputs did not change; then it writes the OCI
//! config and manifest of the last (or `--target`) stage ([`image`]), and
//! outputs an OCI image archive or layout ([`archive`]) and/or loads the
//! image into containerd ([`containerd`]). [`load`] loads an existing OCI
//! archive the same way.

pub mod archive;
pub mod artifact;
pub mod basefs;
pub mod blobs;
mod build;
pub mod cache;
pub mod containerd;
pub mod copy;
mod copystep;
pub mod dockerfile;
pub mod fetch;
pub mod ignore;
pub mod image;
pub mod instruction;
pub mod layer;
mod left_behind;
pub mod overlay_diff;
pub mod owner;
pub mod platform;
pub mod progress;
pub mod reference;
mod run;
mod run_container;
pub mod run_helper;
pub mod words;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use artifact::ArtifactForm;
pub use build::StepError;
pub use cache::{cache_dir_from_env, DEFAULT_CACHE_DIR};
pub use layer::Compression;
pub use platform::Platform;

use crate::archive::{ArchiveError, ArchiveImage, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME};
use crate::blobs::BlobStore;
use crate::containerd::{ContainerdError, ContainerdStore};
use crate::dockerfile::ParseError;
use crate::image::ImageError;
use crate::reference::{Reference, ReferenceError};

pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("cannot use build context {path}")]
    Context {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{file}:{line}:{column}: {instruction}")]
    Step {
        file: String,
        line: usize,
        column: usize,
        instruction: String,
        #[source]
        source: StepError,
    },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("cannot create the build's temporary directory")]
    Temp(#[source] std::io::Error),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Artifact(#[from] artifact::ArtifactError),
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("invalid SOURCE_DATE_EPOCH {0:?} (want whole seconds since 1970)")]
    SourceDateEpoch(String),
    #[error("OCI archive {0} names no image (no io.containerd.image.name or full org.opencontainers.image.ref.name annotation); give a name")]
    NoName(String),
    #[error("target stage {0:?} not found in the Dockerfile")]
    NoTarget(String),
    #[error("invalid build argument {0:?} (want NAME=VALUE)")]
    BuildArg(String),
    #[error("cannot read {path}")]
    Ignore {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("OCI archive {path} holds {count} images; a name can only be given for one")]
    NameForMany { path: String, count: usize },
}

/// Where and in which namespace to reach containerd.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    pub address: PathBuf,
    pub namespace: String,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions { address: DEFAULT_ADDRESS.into(), namespace: DEFAULT_NAMESPACE.into() }
    }
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub context: PathBuf,
    /// Default: `CONTEXT/Dockerfile`.
    pub dockerfile: Option<PathBuf>,
    /// `NAME[:TAG]`, normalized like `ctr` (`docker.io/library/NAME:latest`).
    pub tag: String,
    /// Write an OCI image archive here.
    pub output: Option<PathBuf>,
    /// Load the image into containerd.
    pub load: bool,
    pub containerd: ContainerdOptions,
    /// File mtimes and `created` times (SOURCE_DATE_EPOCH; 0 by default).
    pub source_date_epoch: u64,
    /// `--build-arg NAME=VALUE`, in order (a later one wins).
    pub build_args: Vec<(String, String)>,
    /// Build up to this stage and output it (default: the last stage).
    pub target: Option<String>,
    /// The build cache directory (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    pub compression: Compression,
    /// Also write the image as an OCI layout directory here.
    pub output_layout: Option<PathBuf>,
    /// Print each step (and whether it was cached) to stderr.
    pub progress: bool,
    /// Write the image as an OCI wasm artifact (see [`artifact`]).
    pub artifact: Option<ArtifactForm>,
    /// The platform built for (default: the host's); `FROM --platform`
    /// overrides it for its stage.
    pub platform: Platform,
}

impl BuildOptions {
    /// Options with defaults for everything but the context and the tag.
    pub fn new(context: PathBuf, tag: String) -> BuildOptions {
        BuildOptions {
            context,
            dockerfile: None,
            tag,
            output: None,
            load: false,
            containerd: ContainerdOptions::default(),
            source_date_epoch: 0,
            build_args: Vec::new(),
            target: None,
            cache_dir: None,
            compression: Compression::Gzip,
            output_layout: None,
            progress: false,
            artifact: None,
            platform: Platform::host(),
        }
    }
}

/// `NAME=VALUE` of `--build-arg` (`NAME` alone takes the value from the
/// environment, as docker does).
pub fn parse_build_arg(text: &str) -> Result<(String, String), BuildError> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        None if !text.is_empty() => std::env::var(text)
            .map(|v| (text.to_string(), v))
            .map_err(|_| BuildError::BuildArg(text.to_string())),
        _ => Err(BuildError::BuildArg(text.to_string())),
    }
}

/// One layer step of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    pub instruction: String,
    /// The layer blob digest.
    pub layer: Option<String>,
    /// Taken from the build cache.
    pub cached: bool,
}

/// What a build or load produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Full image name, e.g. `docker.io/library/hello:latest`.
    pub name: String,
    /// Manifest digest (the image's identity).
    pub digest: String,
    /// The layer steps of a build (empty for a load).
    pub steps: Vec<StepReport>,
}

/// SOURCE_DATE_EPOCH from the environment (0 if unset or empty).
pub fn source_date_epoch_from_env() -> Result<u64, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| BuildError::SourceDateEpoch(v)),
        _ => Ok(0),
    }
}

/// Shorten an instruction for error messages.
fn short(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &collapsed[..i]),
        None => collapsed,
    }
}

/// Build the image described by `options`.
pub async fn build(options: &BuildOptions) -> Result<ImageInfo, BuildError> {
    let reference = Reference::parse(&options.tag)?;
    let name = reference.to_string();
    let context_err = |source| BuildError::Context { path: options.context.display().to_string(), source };
    let context = std::fs::canonicalize(&options.context).map_err(context_err)?;
    if !context.is_dir() {
        return Err(context_err(std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")));
    }
    let dockerfile = options.dockerfile.clone().unwrap_or_else(|| options.context.join("Dockerfile"));
    let file = dockerfile.display().to_string();
    let parsed = dockerfile::parse_file(&dockerfile, &file)?;
    if let Some(target) = &options.target {
        let lower = target.to_ascii_lowercase();
        let found = parsed
            .instructions
            .iter()
            .any(|i| matches!(&i.kind, dockerfile::Kind::From { name: Some(n), .. } if *n == lower));
        if !found {
            return Err(BuildError::NoTarget(target.clone()));
        }
    }
    let ignore = ignore::Ignore::load(&context)
        .map_err(|source| BuildError::Ignore { path: context.join(".dockerignore").display().to_string(), source })?;
    let cache = options.cache_dir.as_ref().and_then(|dir| match cache::Cache::open(dir) {
        Ok(cache) => Some(cache),
        Err(e) => {
            tracing::warn!("build cache {} unusable ({e}); building without it", dir.display());
            None
        }
    });

    let blobs = BlobStore::temp().map_err(BuildError::Temp)?;
    let mut session = build::Session::new(options, context, ignore, blobs, parsed.escape, cache);
    let total = parsed.instructions.len();
    let progress = progress::Progress::new(options.progress);
    let needed = needed_stages(&parsed.instructions, options.target.as_deref());
    let mut stage_index = None;
    for (n, instruction) in parsed.instructions.iter().enumerate() {
        let is_from = matches!(instruction.kind, dockerfile::Kind::From { .. });
        if is_from && session.started() {
            if let (Some(target), Some(current)) = (&options.target, session.current_stage_name()) {
                if target.eq_ignore_ascii_case(current) {
                    break;
                }
            }
        }
        if let dockerfile::Kind::From { name, .. } = &instruction.kind {
            let index = stage_index.map_or(0, |i| i + 1);
            stage_index = Some(index);
            if !needed.get(index).copied().unwrap_or(true) {
                let args = stage_args(&parsed.instructions[n + 1..]);
                session.skip_stage(name.clone(), &args);
                continue;
            }
        }
        if stage_index.is_some_and(|i| !needed.get(i).copied().unwrap_or(true)) {
            continue;
        }
        run_step(&mut session, &progress, instruction, &file, n + 1, total).await?;
        if is_from {
            // The base image's ONBUILD triggers run right after its FROM.
            for trigger in std::mem::take(&mut session.stage.image.base_triggers) {
                let instruction = trigger_instruction(&trigger, instruction, session.escape, &file)?;
                run_step(&mut session, &progress, &instruction, &file, n + 1, total).await?;
            }
        }
    }
    let unused: Vec<&str> = options
        .build_args
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !session.declared_args.contains(*k))
        .collect();
    if !unused.is_empty() {
        tracing::warn!("build arguments not declared by any ARG: {}", unused.join(", "));
    }
    let written = session.stage.image.write(&session.blobs)?;
    // Both file outputs hold the same blobs: the config, then every layer.
    let mut blob_list = vec![written.config.digest().to_string()];
    blob_list.extend(written.layers.iter().map(|l| l.digest().to_string()));
    let mut target = written.manifest.clone();
    if let Some(form) = options.artifact {
        session.fetch_remote_blobs().await?;
        let built = artifact::write(&session.blobs, &written, form)?;
        (target, blob_list) = (built.target, built.blobs);
    }
    let digest = target.digest().to_string();
    tracing::info!("built {name}: {} {digest}, {} layers", target.media_type(), written.layers.len());
    let image = ArchiveImage { target: &target, blobs: &blob_list };
    if options.output.is_some() || options.output_layout.is_some() {
        session.fetch_remote_blobs().await?;
    }
    if let Some(output) = &options.output {
        archive::write(output, &session.blobs, &image, &name, reference.tag.as_deref(), options.source_date_epoch)?;
        tracing::info!("wrote OCI archive {}", output.display());
    }
    if let Some(layout) = &options.output_layout {
        archive::write_layout(layout, &session.blobs, &image, &name, reference.tag.as_deref(), options.source_date_epoch)?;
        tracing::info!("wrote OCI layout {}", layout.display());
    }
    if options.load {
        let mut store = match session.store.take() {
            Some(store) => store,
            None => ContainerdStore::connect(&options.containerd.address, &options.containerd.namespace).await?,
        };
        store.set_upload_progress(progress.uploads());
        load_into(store, &session.blobs, &[(name.clone(), target.clone())]).await?;
        tracing::info!("loaded {name} into containerd (namespace {})", options.containerd.namespace);
    }
    Ok(ImageInfo { name, digest, steps: std::mem::take(&mut session.steps) })
}

/// ARG names declared in a stage (the instructions up to the next FROM).
fn stage_args(rest: &[dockerfile::Instruction]) -> Vec<String> {
    rest.iter()
        .take_while(|i| !matches!(i.kind, dockerfile::Kind::From { .. }))
        .filter_map(|i| match &i.kind {
            dockerfile::Kind::Arg(list) => Some(list.iter().map(|(n, _)| n.clone())),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Which stages the output (the last stage, or `target`) needs: itself,
/// the stage it is FROM, and the stages it COPYs `--from`, transitively. A
/// reference with a variable in it may mean any earlier stage.
fn needed_stages(instructions: &[dockerfile::Instruction], target: Option<&str>) -> Vec<bool> {
    use dockerfile::Kind;
    // Per stage: its name and the references it makes.
    let mut stages: Vec<(Option<String>, Vec<String>)> = Vec::new();
    for instruction in instructions {
        match &instruction.kind {
            Kind::From { image, name, .. } => stages.push((name.clone(), vec![image.clone()])),
            Kind::Copy(args) => {
                if let (Some(stage), Some(from)) = (stages.last_mut(), &args.from) {
                    stage.1.push(from.clone());
                }
            }
            _ => {}
        }
    }
    let last = stages.len().saturating_sub(1);
    let start = target
        .and_then(|t| stages.iter().position(|(n, _)| n.as_deref() == Some(t.to_ascii_lowercase().as_str())))
        .unwrap_or(last);
    let mut needed = vec![false; stages.len()];
    let mut todo = vec![start];
    while let Some(i) = todo.pop() {
        if i >= needed.len() || needed[i] {
            continue;
        }
        needed[i] = true;
        for reference in &stages[i].1 {
            if reference.contains('$') {
                todo.extend(0..i);
                continue;
            }
            let lower = reference.to_ascii_lowercase();
            let by_name = stages[..i].iter().rposition(|(n, _)| n.as_deref() == Some(lower.as_str()));
            let by_index = reference.parse::<usize>().ok().filter(|&j| j < i);
            todo.extend(by_name.or(by_index));
        }
    }
    needed
}

/// Run one instruction, wrapping its error with `file:line:column:`, and
/// print it (with CACHED for a layer from the cache) when asked to.
async fn run_step(
    session: &mut build::Session<'_>,
    progress: &progress::Progress,
    instruction: &dockerfile::Instruction,
    file: &str,
    n: usize,
    total: usize,
) -> Result<(), BuildError> {
    let layers_before = session.steps.len();
    session.run_output = progress.output(n, total);
    let bar = progress.step(n, total, &short(&instruction.text));
    let result = session.step(instruction).await.map_err(|source| BuildError::Step {
        file: file.to_string(),
        line: instruction.line,
        column: instruction.column,
        instruction: short(&instruction.text),
        source,
    });
    match result {
        Ok(()) => {
            bar.finish(session.steps.len() > layers_before && session.steps.last().is_some_and(|s| s.cached));
            Ok(())
        }
        Err(e) => {
            bar.abandon();
            Err(e)
        }
    }
}

/// An ONBUILD trigger of a base image as an instruction, reported at the
/// FROM that brought it in.
fn trigger_instruction(
    trigger: &str,
    from: &dockerfile::Instruction,
    escape: char,
    file: &str,
) -> Result<dockerfile::Instruction, BuildError> {
    let (kind, _) = instruction::parse(trigger, escape, Vec::new()).map_err(|(_, kind)| {
        dockerfile::ParseError::Syntax { file: file.to_string(), line: from.line, column: from.column, kind }
    })?;
    Ok(dockerfile::Instruction { line: from.line, column: from.column, text: trigger.to_string(), kind })
}

/// Push images (name, target) from `blobs` under a lease, then record them.
async fn load_into(
    mut store: ContainerdStore,
    blobs: &BlobStore,
    images: &[(String, oci_spec::image::Descriptor)],
) -> Result<(), ContainerdError> {
    store.create_lease().await?;
    let mut result = Ok(());
    for (name, target) in images {
        result = async {
            store.push(blobs, target).await?;
            store.put_image(name, target).await
        }
        .await;
        if result.is_err() {
            break;
        }
    }
    if let Err(e) = store.delete_lease().await {
        tracing::warn!("{e}");
    }
    result
}

/// The image name an archive's index entry carries, if any.
fn annotated_name(desc: &oci_spec::image::Descriptor) -> Result<Option<String>, ReferenceError> {
    let annotations = desc.annotations().clone().unwrap_or_default();
    if let Some(name) = annotations.get(ANNOTATION_IMAGE_NAME) {
        return reference::normalize(name).map(Some);
    }
    match annotations.get(ANNOTATION_REF_NAME) {
        // A bare tag ("latest") is not a name.
        Some(r) if r.contains(['/', ':']) => reference::normalize(r).map(Some),
        _ => Ok(None),
    }
}

/// Load the OCI archive at `path` into containerd; `name` overrides the
/// archive's own image name (for a single-image archive).
pub async fn load(path: &Path, name: Option<&str>, containerd: &ContainerdOptions) -> Result<Vec<ImageInfo>, BuildError> {
    let blobs = BlobStore::temp().map_err(BuildError::Temp)?;
    let index = archive::read(path, &blobs)?;
    let shown = path.display().to_string();
    let count = index.manifests().len();
    if name.is_some() && count != 1 {
        return Err(BuildError::NameForMany { path: shown, count });
    }
    let mut images = Vec::new();
    for desc in index.manifests() {
        let image_name = match name {
            Some(n) => reference::normalize(n)?,
            None => annotated_name(desc)?.ok_or_else(|| BuildError::NoName(shown.clone()))?,
        };
        images.push((image_name, desc.clone()));
    }
    if images.is_empty() {
        return Err(BuildError::NoName(shown));
    }
    let store = ContainerdStore::connect(&containerd.address, &containerd.namespace).await?;
    load_into(store, &blobs, &images).await?;
    Ok(images
        .into_iter()
        .map(|(name, desc)| ImageInfo { name, digest: desc.digest().to_string(), steps: Vec::new() })
        .collect())
}

#[cfg(test)]
mod tests;
