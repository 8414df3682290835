//! OCI wasm artifacts: images whose config is `application/vnd.wasm.config.v0+json`
//! and whose one layer is the module itself (`application/wasm`, or the
//! older `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`),
//! not a tar. Such an image gives the container an empty rootfs; at Create
//! the shim reads the module from containerd's content store (as runwasi
//! does: Containers.Get for the image name, Images.Get, Content.Read of
//! index, manifest and layer), writes it into the rootfs, root-owned and
//! read-only, and hands its path to the workload decision
//! (`hybrid_runtime::workload::decide_with_artifact`), which stays the one
//! place that says wasm or native.
//!
//! What containerd 1.6 (Debian's 1.6.20) does with such images, tried with
//! `ctr` against a private containerd:
//! - `ctr images import` stores the manifest, config and layer blobs and the
//!   image record, then fails to unpack ("mismatched image rootfs and
//!   manifest layers": the config has no rootfs.diff_ids, the manifest one
//!   layer); `--no-unpack` stores it cleanly.
//! - `ctr run` / `ctr container create` fail in the client with the same
//!   message, before any container or shim exists. containerd 1.6.25 and
//!   1.7.7 skip non-tar layers when unpacking, but `ctr run` still refuses
//!   the config ("unknown image config media type"): only CRI creates
//!   containers from a bare artifact, with an empty snapshot.
//! - An image index holding the artifact (platform wasip1|wasip2/wasm) and
//!   a linux manifest with no layers, whose config is an ordinary image
//!   config (entrypoint, env), imports, unpacks and runs with `ctr run` and
//!   CRI on 1.6.20: the shim gets an empty rootfs (one bind mount) and finds
//!   the artifact in the index. `hybrid build --artifact` writes that form.
//!
//! So the shim looks for an artifact only when the rootfs is empty, and
//! accepts the image (the container's image record) being the artifact
//! manifest itself or an index with an artifact entry.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, images_client::ImagesClient,
    GetContainerRequest, GetImageRequest, ReadContentRequest,
};
use containerd_client::tonic::metadata::MetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER_MEDIA_TYPES: [&str; 2] =
    ["application/wasm", "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"];
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
const DEFAULT_MODULE_NAME: &str = "module.wasm";
/// Manifests and indexes are small; a bigger one is not what it claims.
pub(crate) const MAX_JSON_BYTES: u64 = 4 << 20;
const MAX_MODULE_BYTES: u64 = 1 << 30;
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// containerd's gRPC address (the shim's `-address`), set once at start.
static CONTAINERD_ADDRESS: OnceLock<String> = OnceLock::new();

pub fn set_containerd_address(address: &str) {
    if !address.is_empty() {
        let _ = CONTAINERD_ADDRESS.set(address.to_string());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot start a containerd client: {0}")]
    Runtime(std::io::Error),
    /// The helper's own error, as it said it.
    #[error("{0}")]
    Helper(String),
    #[error("wasm artifact helper: {0}")]
    HelperRun(String),
    #[error("cannot connect to containerd at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("containerd {op}: {message}")]
    Rpc { op: String, message: String },
    #[error("containerd took longer than {0:?} to answer about the container's image")]
    Timeout(Duration),
    #[error("image {image}: {what} {digest}: {reason}")]
    Blob { image: String, what: &'static str, digest: String, reason: String },
    #[error("image {image} is a wasm artifact (manifest {manifest}) but has no wasm layer (want {})", WASM_LAYER_MEDIA_TYPES.join(" or "))]
    NoWasmLayer { image: String, manifest: String },
    #[error("image {image}: wasm artifact manifest {manifest} has {count} wasm layers; one is supported")]
    ManyLayers { image: String, manifest: String, count: usize },
    #[error("image {image}: cannot place wasm layer {digest} at {path:?}: {source}")]
    Place { image: String, digest: String, path: PathBuf, source: std::io::Error },
}

/// The helper's argv[1]: `containerd-shim-hybrid-v2 fetch-wasm-artifact
/// ADDRESS NAMESPACE ID ROOTFS`.
pub const HELPER_COMMAND: &str = "fetch-wasm-artifact";

/// If the container's rootfs is empty and its image is a wasm artifact,
/// write the artifact's module into the rootfs and return its absolute path
/// inside the container.
///
/// The containerd client (tonic on tokio) runs in a helper process, this
/// binary run again: a tokio runtime with I/O in the shim would leave
/// tokio's process-wide signal pipe behind, which the container's init
/// process (a clone of the shim) inherits, closes with the shim's other
/// close-on-exec descriptors, and then finds broken when wasmtime-wasi
/// starts its own runtime (EBADF, an abort). The helper's result comes on
/// its stdout; its exit status may be taken by containerd-shim's reaper.
pub fn place_module(id: &str, namespace: &str, rootfs: &Path) -> Result<Option<PathBuf>, ArtifactError> {
    // An image with filesystem layers is never an artifact; this keeps
    // every ordinary start free of containerd round trips.
    let empty = std::fs::read_dir(rootfs).map(|mut entries| entries.next().is_none()).unwrap_or(false);
    let Some(address) = CONTAINERD_ADDRESS.get().filter(|_| empty) else {
        return Ok(None);
    };
    let stdout = run_helper(&[HELPER_COMMAND.as_ref(), address.as_ref(), namespace.as_ref(), id.as_ref(), rootfs.as_os_str()])?;
    match stdout.splitn(4, ' ').collect::<Vec<_>>().as_slice() {
        ["placed", image, layer, path] => {
            tracing::info!(%image, %layer, path, "wasm artifact module placed");
            Ok(Some(PathBuf::from(path)))
        }
        _ if stdout == "none" => Ok(None),
        _ => Err(ArtifactError::HelperRun(format!("gave no answer ({stdout:?})"))),
    }
}

/// containerd's address, when the shim was given one.
pub(crate) fn containerd_address() -> Option<&'static str> {
    CONTAINERD_ADDRESS.get().map(String::as_str)
}

/// Run this binary again with `args` (a helper command); its answer, the
/// one line on its stdout, or its error from its stderr.
pub(crate) fn run_helper(args: &[&std::ffi::OsStr]) -> Result<String, ArtifactError> {
    let helper_err = |message: String| ArtifactError::HelperRun(message);
    let mut child = std::process::Command::new("/proc/self/exe")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| helper_err(format!("cannot run: {e}")))?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        // The helper writes one short line to one of the two pipes, so
        // reading stderr to its end first cannot leave it blocked.
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    let mut stdout = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stdout);
    }
    let _ = child.wait();
    match stdout.trim_end() {
        "" if !stderr.trim().is_empty() => Err(ArtifactError::Helper(stderr.trim().to_string())),
        "" => Err(helper_err("gave no answer".to_string())),
        answer => Ok(answer.to_string()),
    }
}

/// Run one lookup to its end, or to [`TIMEOUT`], on a runtime of its own
/// (helper processes only: never in the shim, see the module's comment).
pub fn block_on_with_timeout<T>(
    lookup: impl std::future::Future<Output = Result<T, ArtifactError>>,
) -> Result<T, ArtifactError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ArtifactError::Runtime)?;
    runtime.block_on(async { tokio::time::timeout(TIMEOUT, lookup).await.map_err(|_| ArtifactError::Timeout(TIMEOUT))? })
}

/// The helper process: find and place the module; say `placed PATH` or
/// `none` on stdout, or the error on stderr. Returns the exit status.
pub fn helper_main(args: &[String]) -> i32 {
    let [address, namespace, id, rootfs] = args else {
        eprintln!("usage: {HELPER_COMMAND} ADDRESS NAMESPACE ID ROOTFS");
        return 2;
    };
    let result = block_on_with_timeout(find_module(address, namespace, id))
        .and_then(|found| {
            found.map(|module| Ok((write_module(&module, Path::new(rootfs))?, module.image, module.layer))).transpose()
        });
    // One short line, on stdout or stderr (see place_module).
    match result {
        Ok(Some((path, image, layer))) => {
            println!("placed {image} {layer} {}", path.display());
            0
        }
        Ok(None) => {
            println!("none");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Write `module` at the root of `rootfs`; its path inside the container.
fn write_module(module: &Module, rootfs: &Path) -> Result<PathBuf, ArtifactError> {
    let path = Path::new("/").join(&module.name);
    let place_err = |source| ArtifactError::Place {
        image: module.image.clone(),
        digest: module.layer.clone(),
        path: path.clone(),
        source,
    };
    // A fresh file in a fresh, empty rootfs: never through a link, never
    // over something else. The shim runs as root, so root owns it.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .custom_flags(libc::O_NOFOLLOW)
        .open(rootfs.join(&module.name))
        .map_err(place_err)?;
    file.write_all(&module.bytes).map_err(place_err)?;
    Ok(path)
}

struct Module {
    image: String,
    layer: String,
    name: String,
    bytes: Vec<u8>,
}

pub(crate) struct Client {
    channel: Channel,
    namespace: MetadataValue<containerd_client::tonic::metadata::Ascii>,
}

impl Client {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("containerd-namespace", self.namespace.clone());
        request
    }

    /// Blob `digest` of `image`, checked against its digest, at most `limit` bytes.
    pub(crate) async fn read(&self, image: &str, what: &'static str, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, ArtifactError> {
        let digest = desc.digest().to_string();
        let blob_err = |reason: String| ArtifactError::Blob { image: image.to_string(), what, digest: digest.clone(), reason };
        if desc.size() > limit {
            return Err(blob_err(format!("{} bytes, more than the {limit} allowed", desc.size())));
        }
        let request = self.request(ReadContentRequest { digest: digest.clone(), offset: 0, size: 0 });
        let mut stream = ContentClient::new(self.channel.clone())
            .read(request)
            .await
            .map_err(|s| blob_err(format!("cannot read it from containerd: {}", s.message())))?
            .into_inner();
        let mut bytes = Vec::with_capacity(usize::try_from(desc.size()).unwrap_or(0));
        while let Some(chunk) = stream.message().await.map_err(|s| blob_err(format!("read: {}", s.message())))? {
            bytes.extend_from_slice(&chunk.data);
            if bytes.len() as u64 > limit {
                return Err(blob_err(format!("more than the {limit} bytes allowed")));
            }
        }
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest || bytes.len() as u64 != desc.size() {
            return Err(blob_err(format!("content does not match (sha256 {actual}, {} bytes)", bytes.len())));
        }
        Ok(bytes)
    }
}

async fn find_module(address: &str, namespace: &str, id: &str) -> Result<Option<Module>, ArtifactError> {
    let client = connect(address, namespace).await?;
    let Some((image, target)) = container_image(&client, id).await? else {
        return Ok(None);
    };
    let Some((manifest_digest, manifest)) = find_manifest(&client, &image, &target).await? else {
        return Ok(None);
    };
    let mut layers = manifest
        .layers()
        .iter()
        .filter(|l| WASM_LAYER_MEDIA_TYPES.contains(&l.media_type().to_string().as_str()));
    let (layer, more) = (layers.next(), layers.count());
    let Some(layer) = layer else {
        return Err(ArtifactError::NoWasmLayer { image, manifest: manifest_digest });
    };
    if more > 0 {
        return Err(ArtifactError::ManyLayers { image, manifest: manifest_digest, count: more + 1 });
    }
    let bytes = client.read(&image, "wasm layer", layer, MAX_MODULE_BYTES).await?;
    Ok(Some(Module { name: module_name(layer), layer: layer.digest().to_string(), image, bytes }))
}

/// A client of containerd at `address`, in `namespace`.
pub(crate) async fn connect(address: &str, namespace: &str) -> Result<Client, ArtifactError> {
    let namespace = namespace
        .parse()
        .map_err(|_| ArtifactError::Rpc { op: "namespace".into(), message: format!("invalid namespace {namespace:?}") })?;
    let channel = containerd_client::connect(address).await.map_err(|e| {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        ArtifactError::Connect { address: address.to_string(), reason: cause.to_string() }
    })?;
    Ok(Client { channel, namespace })
}

/// The image container `id` was made from, and the descriptor its name
/// points at (a manifest or an index); None for a container without one.
pub(crate) async fn container_image(client: &Client, id: &str) -> Result<Option<(String, Descriptor)>, ArtifactError> {
    let rpc = |op: String| move |s: containerd_client::tonic::Status| ArtifactError::Rpc { op, message: s.message().to_string() };
    let container = ContainersClient::new(client.channel.clone())
        .get(client.request(GetContainerRequest { id: id.to_string() }))
        .await
        .map_err(rpc(format!("get container {id}")))?
        .into_inner()
        .container;
    let Some(image) = container.map(|c| c.image).filter(|i| !i.is_empty()) else {
        return Ok(None);
    };
    let target = ImagesClient::new(client.channel.clone())
        .get(client.request(GetImageRequest { name: image.clone() }))
        .await
        .map_err(rpc(format!("get image {image}")))?
        .into_inner()
        .image
        .and_then(|i| i.target);
    let Some(target) = target else { return Ok(None) };
    let target: Descriptor = serde_json::from_value(serde_json::json!({
        "mediaType": target.media_type,
        "digest": target.digest,
        "size": target.size,
    }))
    .map_err(|e| ArtifactError::Blob { image: image.clone(), what: "target", digest: target.digest.clone(), reason: e.to_string() })?;
    Ok(Some((image, target)))
}

fn is_wasm_config(manifest: &ImageManifest) -> bool {
    manifest.config().media_type().to_string() == WASM_CONFIG_MEDIA_TYPE
}

/// The wasm artifact manifest `target` is, or that the index `target` holds.
async fn find_manifest(client: &Client, image: &str, target: &Descriptor) -> Result<Option<(String, ImageManifest)>, ArtifactError> {
    let parse_err = |what: &'static str, desc: &Descriptor| {
        let digest = desc.digest().to_string();
        move |e: serde_json::Error| ArtifactError::Blob { image: image.to_string(), what, digest, reason: e.to_string() }
    };
    let media_type = target.media_type().to_string();
    if media_type.ends_with("manifest.v1+json") || media_type.ends_with("manifest.v2+json") {
        let data = client.read(image, "manifest", target, MAX_JSON_BYTES).await?;
        let manifest: ImageManifest = serde_json::from_slice(&data).map_err(parse_err("manifest", target))?;
        return Ok(is_wasm_config(&manifest).then(|| (target.digest().to_string(), manifest)));
    }
    if !(media_type.ends_with("index.v1+json") || media_type.ends_with("manifest.list.v2+json")) {
        return Ok(None);
    }
    let data = client.read(image, "index", target, MAX_JSON_BYTES).await?;
    let index: ImageIndex = serde_json::from_slice(&data).map_err(parse_err("index", target))?;
    for entry in index.manifests() {
        let says_wasm = entry.artifact_type().as_ref().is_some_and(|t| t.to_string() == WASM_CONFIG_MEDIA_TYPE)
            || entry.platform().as_ref().is_some_and(|p| p.architecture().to_string() == "wasm");
        if !says_wasm {
            continue;
        }
        let data = client.read(image, "manifest", entry, MAX_JSON_BYTES).await?;
        let manifest: ImageManifest = serde_json::from_slice(&data).map_err(parse_err("manifest", entry))?;
        if is_wasm_config(&manifest) {
            return Ok(Some((entry.digest().to_string(), manifest)));
        }
    }
    Ok(None)
}

/// The file name for the module: the layer's title when it is a plain
/// file name, else `module.wasm`.
fn module_name(layer: &Descriptor) -> String {
    let title = layer.annotations().as_ref().and_then(|a| a.get(TITLE_ANNOTATION));
    title
        .filter(|t| t.len() <= 255 && !t.contains('\0'))
        .filter(|t| matches!(Path::new(t.as_str()).components().collect::<Vec<_>>().as_slice(), [Component::Normal(_)]))
        .cloned()
        .unwrap_or_else(|| DEFAULT_MODULE_NAME.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(title: Option<&str>) -> Descriptor {
        let mut json = serde_json::json!({
            "mediaType": "application/wasm",
            "digest": format!("sha256:{}", "a".repeat(64)),
            "size": 8,
        });
        if let Some(title) = title {
            json["annotations"] = serde_json::json!({ TITLE_ANNOTATION: title });
        }
        serde_json::from_value(json).expect("descriptor")
    }

    #[test]
    fn the_module_is_named_by_a_plain_title_only() {
        assert_eq!(module_name(&layer(Some("hello.wasm"))), "hello.wasm");
        assert_eq!(module_name(&layer(None)), DEFAULT_MODULE_NAME);
        for bad in ["../etc/passwd", "/abs.wasm", "a/b.wasm", "..", ".", ""] {
            assert_eq!(module_name(&layer(Some(bad))), DEFAULT_MODULE_NAME, "{bad:?}");
        }
    }

    #[test]
    fn a_rootfs_with_files_is_not_looked_up() {
        set_containerd_address("/nonexistent/containerd.sock");
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("app"), b"x").expect("write");
        assert!(place_module("id", "default", root.path()).expect("no lookup").is_none());
    }
}
