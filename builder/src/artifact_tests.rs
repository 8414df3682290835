//! `--artifact`: the forms, media types and digests that the build writes.

use std::path::Path;

use oci_spec::image::{ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

use super::*;
use crate::archive;
use crate::tests::{options, write};
use crate::{build, BuildError};

const MODULE: &[u8] = b"\0asm\x01\0\0\0";
const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn context(root: &Path, dockerfile: &str, module: &[u8]) {
    write(root, "Dockerfile", dockerfile.as_bytes());
    write(root, "hello.wasm", module);
}

/// Build `ctx` with `--artifact=form` into an archive; its blobs and target.
async fn build_artifact(ctx: &Path, form: ArtifactForm) -> Result<(BlobStore, Descriptor), BuildError> {
    let out = ctx.with_extension("tar");
    let mut opts = options(ctx, &out);
    opts.artifact = Some(form);
    let info = build(&opts).await?;
    let blobs = BlobStore::temp().unwrap();
    let index = archive::read(&out, &blobs).unwrap();
    let target = index.manifests()[0].clone();
    assert_eq!(target.digest().to_string(), info.digest, "the image's digest is its target's");
    Ok((blobs, target))
}

fn json<T: serde::de::DeserializeOwned>(blobs: &BlobStore, desc: &Descriptor) -> T {
    let data = blobs.read(desc.digest().as_ref()).unwrap();
    assert_eq!(sha256(&data), desc.digest().to_string());
    assert_eq!(data.len() as u64, desc.size());
    serde_json::from_slice(&data).unwrap()
}

/// The artifact manifest's checks; returns its wasm config.
fn check_artifact(blobs: &BlobStore, manifest: &ImageManifest, module: &[u8]) -> serde_json::Value {
    assert_eq!(manifest.config().media_type().to_string(), WASM_CONFIG_MEDIA_TYPE);
    let [layer] = manifest.layers().as_slice() else { panic!("one layer: {manifest:?}") };
    assert_eq!(layer.media_type().to_string(), WASM_LAYER_MEDIA_TYPE);
    assert_eq!(layer.digest().to_string(), sha256(module));
    assert_eq!(layer.size(), module.len() as u64);
    assert_eq!(blobs.read(layer.digest().as_ref()).unwrap(), module, "the layer is the module itself, not a tar");
    assert_eq!(layer.annotations().as_ref().unwrap()[TITLE_ANNOTATION], "hello.wasm");
    let config: serde_json::Value = json(blobs, manifest.config());
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["layerDigests"], serde_json::json!([sha256(module)]));
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    config
}

#[tokio::test]
async fn the_index_form_holds_the_artifact_and_a_layerless_linux_entry() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    context(&ctx, "FROM scratch\nCOPY hello.wasm /hello.wasm\nENV GREETING=hi\nENTRYPOINT [\"/hello.wasm\"]\n", MODULE);
    let (blobs, target) = build_artifact(&ctx, ArtifactForm::Index).await.unwrap();
    assert_eq!(target.media_type(), &MediaType::ImageIndex);
    let index: ImageIndex = json(&blobs, &target);
    let [launcher, wasm] = index.manifests().as_slice() else { panic!("two entries: {index:?}") };

    let platform = launcher.platform().as_ref().unwrap();
    assert_eq!(platform.os(), &Os::Linux);
    let manifest: ImageManifest = json(&blobs, launcher);
    assert!(manifest.layers().is_empty());
    assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);
    let config: serde_json::Value = json(&blobs, manifest.config());
    assert_eq!(config["rootfs"], serde_json::json!({ "type": "layers", "diff_ids": [] }));
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/hello.wasm"]));
    assert!(config["config"]["Env"].as_array().unwrap().contains(&serde_json::json!("GREETING=hi")));

    let platform = wasm.platform().as_ref().unwrap();
    assert_eq!((platform.architecture().to_string(), platform.os().to_string()), ("wasm".into(), "wasip1".into()));
    assert_eq!(wasm.artifact_type().as_ref().unwrap().to_string(), WASM_CONFIG_MEDIA_TYPE);
    let manifest: ImageManifest = json(&blobs, wasm);
    let config = check_artifact(&blobs, &manifest, MODULE);
    assert_eq!(config["os"], "wasip1");
    assert!(config.get("component").is_none());
}

#[tokio::test]
async fn the_manifest_form_is_the_bare_artifact_and_finds_the_module_on_path() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    let dockerfile = "FROM scratch\nCOPY hello.wasm /app/bin/hello.wasm\nENV PATH=/app/bin\nCMD [\"hello.wasm\", \"arg\"]\n";
    context(&ctx, dockerfile, MODULE);
    let (blobs, target) = build_artifact(&ctx, ArtifactForm::Manifest).await.unwrap();
    assert_eq!(target.media_type(), &MediaType::ImageManifest);
    let manifest: ImageManifest = json(&blobs, &target);
    check_artifact(&blobs, &manifest, MODULE);
}

#[tokio::test]
async fn a_component_is_wasip2_with_its_world() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("ctx");
    context(&ctx, "FROM scratch\nCOPY hello.wasm /hello.wasm\nCMD [\"/hello.wasm\"]\n", COMPONENT);
    let (blobs, target) = build_artifact(&ctx, ArtifactForm::Manifest).await.unwrap();
    let manifest: ImageManifest = json(&blobs, &target);
    let config = check_artifact(&blobs, &manifest, COMPONENT);
    assert_eq!(config["os"], "wasip2");
    assert_eq!(config["component"], serde_json::json!({ "imports": [], "exports": [] }));
}

#[tokio::test]
async fn errors_name_what_is_missing_or_not_wasm() {
    let temp = tempfile::tempdir().unwrap();
    let ctx = temp.path().join("script");
    context(&ctx, "FROM scratch\nCOPY hello.wasm /run.sh\nENTRYPOINT [\"/run.sh\"]\n", b"#!/bin/sh\necho hi\n");
    let err = build_artifact(&ctx, ArtifactForm::Index).await.err().expect("must fail").to_string();
    assert!(err.contains("/run.sh is not a wasm module"), "{err}");

    let ctx = temp.path().join("none");
    context(&ctx, "FROM scratch\nCOPY hello.wasm /hello.wasm\n", MODULE);
    let err = build_artifact(&ctx, ArtifactForm::Index).await.err().expect("must fail").to_string();
    assert!(err.contains("no ENTRYPOINT or CMD"), "{err}");

    let ctx = temp.path().join("missing");
    context(&ctx, "FROM scratch\nCOPY hello.wasm /hello.wasm\nCMD [\"/other.wasm\"]\n", MODULE);
    let err = build_artifact(&ctx, ArtifactForm::Index).await.err().expect("must fail").to_string();
    assert!(err.contains("/other.wasm"), "{err}");
}
