//! hybrid-builder: Dockerfile → OCI image, without a daemon.
//!
//! [`build`] parses a Dockerfile subset ([`dockerfile`]), turns each
//! COPY/ADD into one reproducible gzip layer ([`layer`], [`copy`]), writes the
//! OCI config and manifest ([`image`]), and outputs an OCI image archive
//! ([`archive`]) and/or loads the image into containerd ([`containerd`]).
//! [`load`] loads an existing OCI archive the same way.

pub mod archive;
pub mod blobs;
mod build;
pub mod containerd;
pub mod copy;
pub mod dockerfile;
pub mod image;
pub mod layer;
pub mod reference;
pub mod words;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use build::StepError;

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
    #[error("{file}:{line}: {instruction}")]
    Step {
        file: String,
        line: usize,
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
    Containerd(#[from] ContainerdError),
    #[error("invalid SOURCE_DATE_EPOCH {0:?} (want whole seconds since 1970)")]
    SourceDateEpoch(String),
    #[error("OCI archive {0} names no image (no io.containerd.image.name or full org.opencontainers.image.ref.name annotation); give a name")]
    NoName(String),
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
}

/// What a build or load produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Full image name, e.g. `docker.io/library/hello:latest`.
    pub name: String,
    /// Manifest digest (the image's identity).
    pub digest: String,
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
    let instructions = dockerfile::parse_file(&dockerfile, &file)?;

    let blobs = BlobStore::temp().map_err(BuildError::Temp)?;
    let mut session = build::Session::new(&options.containerd, context, blobs, options.source_date_epoch);
    for instruction in &instructions {
        session.step(instruction).await.map_err(|source| BuildError::Step {
            file: file.clone(),
            line: instruction.line,
            instruction: short(&instruction.text),
            source,
        })?;
    }
    let written = session.image.write(&session.blobs)?;
    let digest = written.manifest.digest().to_string();
    tracing::info!("built {name}: manifest {digest}, {} layers", written.layers.len());

    if let Some(output) = &options.output {
        session.fetch_remote_blobs().await?;
        let mut blob_list = vec![written.config.digest().to_string()];
        blob_list.extend(written.layers.iter().map(|l| l.digest().to_string()));
        let image = ArchiveImage { target: &written.manifest, blobs: &blob_list };
        archive::write(output, &session.blobs, &image, &name, reference.tag.as_deref(), options.source_date_epoch)?;
        tracing::info!("wrote OCI archive {}", output.display());
    }
    if options.load {
        let store = match session.store.take() {
            Some(store) => store,
            None => ContainerdStore::connect(&options.containerd.address, &options.containerd.namespace).await?,
        };
        load_into(store, &session.blobs, &[(name.clone(), written.manifest.clone())]).await?;
        tracing::info!("loaded {name} into containerd (namespace {})", options.containerd.namespace);
    }
    Ok(ImageInfo { name, digest })
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
        .map(|(name, desc)| ImageInfo { name, digest: desc.digest().to_string() })
        .collect())
}

#[cfg(test)]
mod tests;
