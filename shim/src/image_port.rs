//! The tcp port a wasi:http component listens on when no annotation names
//! one: the first its image EXPOSEs. The spec does not carry EXPOSE, so
//! the shim reads the image config from containerd, as artifact.rs reads
//! an artifact's module (in a helper process: no tokio in the shim), and
//! only for a component that serves wasi:http.

use std::path::Path;

use hybrid_runtime::http::{bytes_serve_http, HTTP_PORT_ANNOTATION};
use hybrid_runtime::workload::{read_entrypoint, Workload, WorkloadKind};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use oci_spec::runtime::Spec;

use crate::artifact::{connect, container_image, containerd_address, run_helper, ArtifactError, Client, MAX_JSON_BYTES, WASM_CONFIG_MEDIA_TYPE};

/// The helper's argv[1]: `containerd-shim-hybrid-v2 image-http-port ADDRESS NAMESPACE ID`.
pub const HELPER_COMMAND: &str = "image-http-port";

/// The port container `id`'s image EXPOSEs, when the container will serve
/// wasi:http on it: its entrypoint is a component exporting the handler and
/// no annotation chooses the port. None leaves the choice to the runtime
/// (the annotation, else its default); a failed lookup is logged, not fatal.
pub fn exposed_http_port(id: &str, namespace: &str, spec: &Spec, rootfs: &Path, workload: &Workload) -> Option<u16> {
    let annotated = spec.annotations().as_ref().is_some_and(|a| a.contains_key(HTTP_PORT_ANNOTATION));
    if workload.kind != WorkloadKind::WasmComponent || annotated {
        return None;
    }
    let address = containerd_address()?;
    let component = read_entrypoint(rootfs, workload).ok()?;
    if !bytes_serve_http(&component) {
        return None;
    }
    let answer = run_helper(&[HELPER_COMMAND.as_ref(), address.as_ref(), namespace.as_ref(), id.as_ref()]);
    match answer.as_deref().map(|a| a.split_once(' ')) {
        Ok(Some(("port", port))) => {
            let port = port.parse().ok();
            tracing::info!(?port, "the image exposes the wasi:http port");
            port
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("cannot read the image's EXPOSE, the default port applies: {e}");
            None
        }
    }
}

/// The helper process: say `port N` or `none` on stdout, or the error on
/// stderr. Returns the exit status.
pub fn helper_main(args: &[String]) -> i32 {
    let [address, namespace, id] = args else {
        eprintln!("usage: {HELPER_COMMAND} ADDRESS NAMESPACE ID");
        return 2;
    };
    let result = crate::artifact::block_on_with_timeout(find_port(address, namespace, id));
    match result {
        Ok(Some(port)) => println!("port {port}"),
        Ok(None) => println!("none"),
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    }
    0
}

async fn find_port(address: &str, namespace: &str, id: &str) -> Result<Option<u16>, ArtifactError> {
    let client = connect(address, namespace).await?;
    let Some((image, target)) = container_image(&client, id).await? else {
        return Ok(None);
    };
    let Some(manifest) = image_manifest(&client, &image, &target).await? else {
        return Ok(None);
    };
    let config = client.read(&image, "config", manifest.config(), MAX_JSON_BYTES).await?;
    let config: serde_json::Value = serde_json::from_slice(&config).map_err(|e| ArtifactError::Blob {
        image: image.clone(),
        what: "config",
        digest: manifest.config().digest().to_string(),
        reason: e.to_string(),
    })?;
    let exposed = config.pointer("/config/ExposedPorts").and_then(|p| p.as_object());
    Ok(exposed.and_then(|ports| first_tcp_port(ports.keys().map(String::as_str))))
}

/// The manifest of an ordinary image that `target` is, or that the index
/// `target` holds for this machine (else its first non-wasm entry).
async fn image_manifest(client: &Client, image: &str, target: &Descriptor) -> Result<Option<ImageManifest>, ArtifactError> {
    let parse_err = |what: &'static str, desc: &Descriptor| {
        let digest = desc.digest().to_string();
        move |e: serde_json::Error| ArtifactError::Blob { image: image.to_string(), what, digest, reason: e.to_string() }
    };
    let ordinary = |m: &ImageManifest| m.config().media_type().to_string() != WASM_CONFIG_MEDIA_TYPE;
    let media_type = target.media_type().to_string();
    if media_type.ends_with("manifest.v1+json") || media_type.ends_with("manifest.v2+json") {
        let data = client.read(image, "manifest", target, MAX_JSON_BYTES).await?;
        let manifest: ImageManifest = serde_json::from_slice(&data).map_err(parse_err("manifest", target))?;
        return Ok(Some(manifest).filter(ordinary));
    }
    if !(media_type.ends_with("index.v1+json") || media_type.ends_with("manifest.list.v2+json")) {
        return Ok(None);
    }
    let data = client.read(image, "index", target, MAX_JSON_BYTES).await?;
    let index: ImageIndex = serde_json::from_slice(&data).map_err(parse_err("index", target))?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let platform = |entry: &Descriptor| entry.platform().as_ref().map(|p| (p.os().to_string(), p.architecture().to_string()));
    let wasm = |entry: &Descriptor| platform(entry).is_some_and(|(_, a)| a == "wasm");
    let entry = index
        .manifests()
        .iter()
        .find(|e| platform(e).is_some_and(|(os, a)| os == "linux" && a == arch))
        .or_else(|| index.manifests().iter().find(|e| !wasm(e)));
    let Some(entry) = entry else { return Ok(None) };
    let data = client.read(image, "manifest", entry, MAX_JSON_BYTES).await?;
    let manifest: ImageManifest = serde_json::from_slice(&data).map_err(parse_err("manifest", entry))?;
    Ok(Some(manifest).filter(ordinary))
}

/// The lowest tcp port among EXPOSE's `PORT/PROTO` keys (a bare port is
/// tcp). The config holds them as a JSON object, whose order means
/// nothing: the lowest is the one choice that is the same everywhere.
fn first_tcp_port<'a>(keys: impl Iterator<Item = &'a str>) -> Option<u16> {
    keys.filter_map(|key| match key.split_once('/') {
        Some((port, proto)) if proto.eq_ignore_ascii_case("tcp") => port.parse().ok(),
        Some(_) => None,
        None => key.parse().ok(),
    })
    .filter(|port| *port != 0)
    .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_tcp_port_is_taken() {
        assert_eq!(first_tcp_port(["9000/tcp", "8080/tcp", "53/udp"].into_iter()), Some(8080));
        assert_eq!(first_tcp_port(["53/udp"].into_iter()), None);
        assert_eq!(first_tcp_port(["3000"].into_iter()), Some(3000));
        assert_eq!(first_tcp_port(["x/tcp", "0/tcp"].into_iter()), None);
    }
}
