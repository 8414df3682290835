//! `hybrid build --artifact`: the built image as an OCI wasm artifact (the
//! CNCF wasm working group's layout): the module that the image's
//! ENTRYPOINT/CMD names becomes the one layer, `application/wasm`, under a
//! config `application/vnd.wasm.config.v0+json` (created, author,
//! architecture `wasm`, os `wasip1` or `wasip2`, layerDigests, and for a
//! component its imports and exports).
//!
//! Two forms ([`ArtifactForm`]):
//! - `manifest`: the artifact manifest alone. Registries and wasm tooling
//!   take it as is; containerd runs it through CRI only (its `ctr run`
//!   refuses a config that is not an image config, and 1.6 before 1.6.25
//!   cannot unpack an image whose layers are not tars).
//! - `index` (the default): an image index holding the artifact (platform
//!   wasip1|wasip2/wasm) and, for this host's linux platform, a manifest
//!   with no layers whose config is the image's own config (entrypoint,
//!   env, workdir, user, labels) minus its layers. containerd 1.6's `ctr run`
//!   and CRI pick that entry, give the container an empty rootfs, and
//!   hybrid's shim fetches the module from the artifact entry (see
//!   shim/src/artifact.rs for what containerd 1.6 does with each form).

use std::collections::HashMap;
use std::io::Read;

use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, Platform,
};
use thiserror::Error;

use crate::basefs;
use crate::blobs::BlobStore;
use crate::image::{canonical_json, descriptor, ImageError, WrittenImage};
use crate::layer::clean_image_path;

pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which artifact form `--artifact` writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ArtifactForm {
    /// An index with the artifact and a layerless linux entry (runs with
    /// containerd 1.6's `ctr run` and CRI).
    #[default]
    Index,
    /// The artifact manifest alone.
    Manifest,
}

impl std::str::FromStr for ArtifactForm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "index" => Ok(ArtifactForm::Index),
            "manifest" => Ok(ArtifactForm::Manifest),
            other => Err(format!("unknown artifact form {other:?} (want index or manifest)")),
        }
    }
}

impl std::fmt::Display for ArtifactForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArtifactForm::Index => "index",
            ArtifactForm::Manifest => "manifest",
        })
    }
}

#[derive(Debug, Error)]
pub enum ArtifactError {
    #[error("--artifact: the image has no ENTRYPOINT or CMD naming its wasm module")]
    NoEntrypoint,
    #[error("--artifact: module {path} (the image's entrypoint) is not a regular file in the image (PATH {search})")]
    NotFound { path: String, search: String },
    #[error("--artifact: {path} is not a wasm module or component in its binary form: it starts with {found}")]
    NotWasm { path: String, found: String },
    #[error("--artifact: cannot read layer {digest}")]
    Layer {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--artifact: cannot read the image config {digest}")]
    Config {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--artifact: component {path}: {reason}")]
    Component { path: String, reason: String },
    #[error("--artifact: cannot store the {what}")]
    Store {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("--artifact: cannot serialize the {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// A written artifact: the image's target (index or manifest) and every
/// other blob it needs, for the archive, layout and containerd outputs.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub target: Descriptor,
    pub blobs: Vec<String>,
}

/// The module found in the image: its path there and its bytes.
struct Module {
    path: String,
    bytes: Vec<u8>,
}

/// Write the artifact of `image` (whose layers must all be local in `blobs`).
pub fn write(blobs: &BlobStore, image: &WrittenImage, form: ArtifactForm) -> Result<Artifact, ArtifactError> {
    let config_digest = image.config.digest().to_string();
    let raw = blobs.read(&config_digest).map_err(|source| ArtifactError::Config { digest: config_digest.clone(), source })?;
    let config: ImageConfiguration = serde_json::from_slice(&raw)
        .map_err(|e| ArtifactError::Config { digest: config_digest.clone(), source: std::io::Error::other(e) })?;
    let module = find_module(blobs, image, &config)?;
    let component = wasmparser::Parser::is_component(&module.bytes);
    if !component && !wasmparser::Parser::is_core_wasm(&module.bytes) {
        return Err(ArtifactError::NotWasm { path: module.path, found: describe(&module.bytes) });
    }
    let os = if component { "wasip2" } else { "wasip1" };

    let store = |what: &'static str| move |source| ArtifactError::Store { what, source };
    let (layer_digest, layer_size) = blobs.put_bytes(&module.bytes).map_err(store("wasm layer"))?;
    let mut layer = descriptor(WASM_LAYER_MEDIA_TYPE, &layer_digest, layer_size)?;
    let title = module.path.rsplit('/').next().unwrap_or(&module.path).to_string();
    layer.set_annotations(Some(HashMap::from([(TITLE_ANNOTATION.to_string(), title)])));

    let mut wasm_config = serde_json::json!({
        "architecture": "wasm",
        "os": os,
        "layerDigests": [layer_digest],
    });
    if let Some(created) = config.created() {
        wasm_config["created"] = serde_json::json!(created);
    }
    if let Some(author) = config.author() {
        wasm_config["author"] = serde_json::json!(author);
    }
    if component {
        wasm_config["component"] = component_world(&module)?;
    }
    let json = |what: &'static str| move |source| ArtifactError::Json { what, source };
    let bytes = canonical_json(&wasm_config).map_err(json("wasm config"))?;
    let (digest, size) = blobs.put_bytes(&bytes).map_err(store("wasm config"))?;
    let wasm_config_desc = descriptor(WASM_CONFIG_MEDIA_TYPE, &digest, size)?;

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(wasm_config_desc.clone())
        .layers(vec![layer.clone()])
        .build()
        .map_err(|e| ImageError::Spec(e.to_string()))?;
    let bytes = canonical_json(&manifest).map_err(json("artifact manifest"))?;
    let (digest, size) = blobs.put_bytes(&bytes).map_err(store("artifact manifest"))?;
    let mut artifact_desc = descriptor(MediaType::ImageManifest.as_ref(), &digest, size)?;
    let artifact_blobs = vec![wasm_config_desc.digest().to_string(), layer_digest.clone()];
    if form == ArtifactForm::Manifest {
        return Ok(Artifact { target: artifact_desc, blobs: artifact_blobs });
    }

    let mut platform = Platform::default();
    platform.set_architecture(Arch::from("wasm"));
    platform.set_os(Os::from(os));
    artifact_desc.set_platform(Some(platform));
    artifact_desc.set_artifact_type(Some(MediaType::from(WASM_CONFIG_MEDIA_TYPE)));
    let (launcher_desc, launcher_config) = write_launcher(blobs, image, &raw, &digest)?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![launcher_desc.clone(), artifact_desc.clone()])
        .build()
        .map_err(|e| ImageError::Spec(e.to_string()))?;
    let bytes = canonical_json(&index).map_err(json("index"))?;
    let (digest, size) = blobs.put_bytes(&bytes).map_err(store("index"))?;
    let target = descriptor(MediaType::ImageIndex.as_ref(), &digest, size)?;
    let mut all = vec![launcher_config, launcher_desc.digest().to_string(), artifact_desc.digest().to_string()];
    all.extend(artifact_blobs);
    Ok(Artifact { target, blobs: all })
}

/// The linux entry of the index: the image's config without its layers,
/// and a manifest with none. Returns its descriptor and its config's digest.
fn write_launcher(
    blobs: &BlobStore,
    image: &WrittenImage,
    raw_config: &[u8],
    artifact_digest: &str,
) -> Result<(Descriptor, String), ArtifactError> {
    let mut config: serde_json::Value = serde_json::from_slice(raw_config)
        .map_err(|source| ArtifactError::Json { what: "image config", source })?;
    let created = config.get("created").cloned().unwrap_or(serde_json::Value::Null);
    config["rootfs"] = serde_json::json!({ "type": "layers", "diff_ids": [] });
    config["history"] = serde_json::json!([{
        "created": created,
        "created_by": format!("hybrid build --artifact: the wasm module is in the artifact manifest {artifact_digest}"),
        "comment": "hybrid build",
        "empty_layer": true,
    }]);
    let store = |what: &'static str| move |source| ArtifactError::Store { what, source };
    let bytes = canonical_json(&config).map_err(|source| ArtifactError::Json { what: "launcher config", source })?;
    let (config_digest, size) = blobs.put_bytes(&bytes).map_err(store("launcher config"))?;
    let config_desc = descriptor(MediaType::ImageConfig.as_ref(), &config_digest, size)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(Vec::new())
        .build()
        .map_err(|e| ImageError::Spec(e.to_string()))?;
    let bytes = canonical_json(&manifest).map_err(|source| ArtifactError::Json { what: "launcher manifest", source })?;
    let (digest, size) = blobs.put_bytes(&bytes).map_err(store("launcher manifest"))?;
    let mut desc = descriptor(MediaType::ImageManifest.as_ref(), &digest, size)?;
    desc.set_platform(image.manifest.platform().clone());
    Ok((desc, config_digest))
}

/// The file the image's entrypoint names, resolved like execvp would in
/// the container (relative to WORKDIR, or along PATH).
fn find_module(blobs: &BlobStore, image: &WrittenImage, config: &ImageConfiguration) -> Result<Module, ArtifactError> {
    let exec = config.config().clone().unwrap_or_default();
    let argv: Vec<String> = exec.entrypoint().iter().chain(exec.cmd().iter()).flatten().cloned().collect();
    let program = argv.first().filter(|p| !p.is_empty()).ok_or(ArtifactError::NoEntrypoint)?;
    // runwasi's `module.wasm#export` names the module before the `#`.
    let program = match program.rsplit_once('#') {
        Some((p, e)) if !e.is_empty() && !e.contains('/') => p,
        _ => program.as_str(),
    };
    let workdir = exec.working_dir().clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".to_string());
    let path_var = exec
        .env()
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let candidates: Vec<String> = if program.contains('/') {
        vec![clean_image_path(&workdir, program)]
    } else {
        path_var.split(':').filter(|d| !d.is_empty()).map(|d| clean_image_path(&workdir, &format!("{d}/{program}"))).collect()
    };
    for candidate in &candidates {
        let mut readers: Vec<Box<dyn Read>> = Vec::new();
        for layer in &image.layers {
            let digest = layer.digest().to_string();
            let layer_err = |source| ArtifactError::Layer { digest: digest.clone(), source };
            readers.push(basefs::decompress(blobs.open(&digest).map_err(layer_err)?).map_err(layer_err)?);
        }
        let found = basefs::read_file(readers, candidate)
            .map_err(|source| ArtifactError::Layer { digest: "of the image".to_string(), source })?;
        if let Some(bytes) = found {
            return Ok(Module { path: format!("/{candidate}"), bytes });
        }
    }
    let search = if program.contains('/') { "not searched".to_string() } else { path_var };
    Err(ArtifactError::NotFound { path: program.to_string(), search })
}

/// A component's own imports and exports (not those of components and
/// modules nested in it), and the world it targets when that is clear.
fn component_world(module: &Module) -> Result<serde_json::Value, ArtifactError> {
    let parse_err = |e: wasmparser::BinaryReaderError| ArtifactError::Component { path: module.path.clone(), reason: e.to_string() };
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(&module.bytes) {
        match payload.map_err(parse_err)? {
            wasmparser::Payload::ModuleSection { .. } | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    imports.push(import.map_err(parse_err)?.name.full_name().into_owned());
                }
            }
            wasmparser::Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    exports.push(export.map_err(parse_err)?.name.full_name().into_owned());
                }
            }
            _ => {}
        }
    }
    let mut world = serde_json::json!({ "imports": imports, "exports": exports });
    // A component exporting wasi:cli/run is a wasi:cli/command.
    if let Some(version) = exports.iter().find_map(|e| e.strip_prefix("wasi:cli/run@")) {
        world["target"] = serde_json::json!(format!("wasi:cli/command@{version}"));
    }
    Ok(world)
}

fn describe(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing (the file is empty)".to_string();
    }
    let shown: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", shown.join(" "))
}

#[cfg(test)]
#[path = "artifact_tests.rs"]
mod tests;
