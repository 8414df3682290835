//! OCI wasm artifacts (config `application/vnd.wasm.config.v0+json`, the
//! module as the one layer): built by `hybrid build --artifact`, loaded into
//! the private containerd 1.6, and run through the shim, which fetches the
//! module from containerd's content store at Create.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hybrid_tests::cri::{self, api, container_config};
use hybrid_tests::*;
use sha2::{Digest as _, Sha256};

const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

fn hybrid(args: &[&str], context: &Path) -> Ran {
    Command::new(hybrid_bin()).args(args).arg(context).output().expect("run hybrid").into()
}

/// `hybrid build --artifact[=FORM] --load` of `context` as
/// `docker.io/hybrid-tests/NAME:latest` into `namespace`.
fn build_artifact(name: &str, form: &str, namespace: &str, context: &Path) -> String {
    let env = env();
    let tag = format!("hybrid-tests/{name}:latest");
    let artifact = format!("--artifact={form}");
    let built = hybrid(
        &["build", "-t", &tag, &artifact, "--load", "--address", &env.address, "--namespace", namespace],
        context,
    );
    assert_eq!(built.code, 0, "hybrid build {artifact} {tag}: {built:?}");
    format!("docker.io/{tag}")
}

/// The containerd log lines of `id`'s Create that say where the module went.
fn placed_line(env: &Env, id: &str) -> Option<String> {
    let needle = format!("create{{id={id}}}");
    env.containerd_log().lines().find(|l| l.contains(&needle) && l.contains("wasm artifact module placed")).map(str::to_string)
}

#[test]
fn an_artifact_image_runs_through_ctr() {
    let env = env();
    let image = build_artifact("hello-artifact", "index", "default", &repo_root().join("wasm-examples/hello-rust"));
    let listed = env.ctr_out(&["images", "ls"]);
    let line = listed.stdout.lines().find(|l| l.starts_with(&format!("{image} "))).unwrap_or_default();
    assert!(line.contains("image.index") && line.contains("wasip1/wasm"), "an index with the artifact entry: {listed:?}");

    let id = unique_id("artifact");
    let mut cmd = env.ctr();
    cmd.args(["run", "--rm", "--runtime", HYBRID_RUNTIME, "--env", "EXIT_CODE=3", &image, &id, "/hello.wasm", "one", "two"]);
    let ran: Ran = cmd.output().expect("ctr run").into();
    assert_eq!(ran.code, 3, "the module's exit status is the task's: {ran:?}");
    assert!(ran.stdout.contains("hello from wasm"), "{ran:?}");
    assert!(ran.stdout.contains("args: one two"), "{ran:?}");
    assert!(ran.stdout.contains("GREETING=hi from the Dockerfile"), "the Dockerfile's ENV comes along: {ran:?}");
    // Only the module travels in an artifact, not the image's other files.
    assert!(ran.stdout.contains("message: (unreadable)"), "{ran:?}");
    let placed = placed_line(env, &id).unwrap_or_else(|| panic!("no placement logged for {id}:\n{}", env.containerd_log()));
    assert!(placed.contains("layer=sha256:") && placed.contains("path=\"/hello.wasm\""), "{placed}");
}

#[test]
fn a_component_artifact_runs_through_ctr() {
    let env = env();
    let context = tempfile::tempdir().expect("tempdir");
    let out = Command::new(hybrid_bin())
        .args(["wasm", "componentize"])
        .arg(repo_root().join("wasm-examples/hello-rust/hello.wasm"))
        .arg("-o")
        .arg(context.path().join("hello.wasm"))
        .output()
        .expect("hybrid wasm componentize");
    assert!(out.status.success(), "{:?}", Ran::from(out));
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.wasm /hello.wasm\nENV GREETING=component\nENTRYPOINT [\"/hello.wasm\"]\n",
    )
    .expect("Dockerfile");
    let image = build_artifact("hello-p2-artifact", "index", "default", context.path());
    let listed = env.ctr_out(&["images", "ls"]);
    assert!(listed.stdout.contains("wasip2/wasm"), "a component is a wasip2 artifact: {listed:?}");
    let ran = env.run(HYBRID_RUNTIME, &image, &unique_id("p2art"), &["/hello.wasm", "p2", "args"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("hello from wasm"), "{ran:?}");
    assert!(ran.stdout.contains("args: p2 args"), "{ran:?}");
    assert!(ran.stdout.contains("GREETING=component"), "{ran:?}");
}

#[test]
fn a_bare_artifact_runs_through_cri_but_not_ctr() {
    let cri = cri::cri();
    let env = cri.env;
    let hello = repo_root().join("wasm-examples/hello-rust");
    let image = build_artifact("hello-bare-artifact", "manifest", cri::NAMESPACE, &hello);

    // containerd 1.6's ctr cannot make a container of it (it cannot unpack
    // the non-tar layer; newer ones refuse the config): see shim/src/artifact.rs.
    let ran = env.ctr_out(&["-n", cri::NAMESPACE, "run", "--rm", "--runtime", HYBRID_RUNTIME, &image, &unique_id("bare")]);
    assert_ne!(ran.code, 0, "{ran:?}");

    let pod_config = cri.pod_config("artifact").expect("pod config");
    let pod = cri.run_pod(&pod_config).unwrap_or_else(|e| panic!("{e:#}\n{}", cri.containerd_log_tail(30)));
    // The bare artifact has no image config: the command comes from the pod spec.
    let config = container_config("hello", &image, &["/hello.wasm"], &["via", "cri"]);
    let result = cri.run_container(&pod, &pod_config, config).and_then(|id| {
        cri.wait_container_state(&id, api::ContainerState::ContainerExited, Duration::from_secs(30))
    });
    let log = std::fs::read_to_string(cri.log_file(&pod_config, "hello/0.log")).unwrap_or_default();
    cri.cleanup_pod(&pod);
    let status = result.unwrap_or_else(|e| panic!("{e:#}\n{}", cri.containerd_log_tail(30)));
    assert_eq!(status.exit_code, 0, "{}\n{log}", cri::describe(&status));
    assert!(log.contains("hello from wasm") && log.contains("args: via cri"), "{log}");
}

/// An index like `--artifact` writes (a layerless linux entry and a wasm
/// artifact entry whose manifest has `layers`), as an OCI archive loaded
/// with `hybrid load` as `docker.io/hybrid-tests/NAME:latest`.
fn load_crafted(name: &str, layers: &[(&str, &[u8])]) -> String {
    let env = env();
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut put = |data: Vec<u8>| {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        let size = data.len();
        blobs.push(data);
        serde_json::json!({ "digest": digest, "size": size })
    };
    let mut descriptor = |media_type: &str, data: Vec<u8>| {
        let mut desc = put(data);
        desc["mediaType"] = serde_json::json!(media_type);
        desc
    };
    let layer_descs: Vec<_> = layers.iter().map(|(media_type, data)| descriptor(media_type, data.to_vec())).collect();
    let wasm_config = serde_json::json!({ "architecture": "wasm", "os": "wasip1", "layerDigests": [] });
    let artifact = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor(WASM_CONFIG, wasm_config.to_string().into_bytes()),
        "layers": layer_descs,
    });
    let launcher_config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": { "Entrypoint": ["/module.wasm"] },
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    let launcher = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", launcher_config.to_string().into_bytes()),
        "layers": [],
    });
    let mut launcher_desc = descriptor("application/vnd.oci.image.manifest.v1+json", launcher.to_string().into_bytes());
    launcher_desc["platform"] = serde_json::json!({ "architecture": launcher_config["architecture"], "os": "linux" });
    let mut artifact_desc = descriptor("application/vnd.oci.image.manifest.v1+json", artifact.to_string().into_bytes());
    artifact_desc["platform"] = serde_json::json!({ "architecture": "wasm", "os": "wasip1" });
    artifact_desc["artifactType"] = serde_json::json!(WASM_CONFIG);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [launcher_desc, artifact_desc],
    });
    let mut index_desc = descriptor("application/vnd.oci.image.index.v1+json", index.to_string().into_bytes());
    let full = format!("docker.io/hybrid-tests/{name}:latest");
    index_desc["annotations"] = serde_json::json!({ "io.containerd.image.name": full });
    let layout = serde_json::json!({ "schemaVersion": 2, "manifests": [index_desc] });

    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("image.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&archive).expect("create archive"));
    let mut add = |path: String, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, path, data).expect("append");
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), layout.to_string().as_bytes());
    for blob in &blobs {
        add(format!("blobs/sha256/{}", hex::encode(Sha256::digest(blob))), blob);
    }
    tar.finish().expect("finish archive");
    drop(tar);
    let loaded = hybrid(&["load", "--address", &env.address], &archive);
    assert_eq!(loaded.code, 0, "hybrid load {name}: {loaded:?}");
    full
}

#[test]
fn an_artifact_without_a_wasm_layer_fails_create_naming_the_image() {
    let env = env();
    let image = load_crafted("artifact-no-layer", &[("application/octet-stream", b"not a module")]);
    let ran = env.run(HYBRID_RUNTIME, &image, &unique_id("nolayer"), &[]);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stderr.contains(&format!("image {image} is a wasm artifact")) && ran.stderr.contains("has no wasm layer"),
        "{ran:?}"
    );
}

#[test]
fn a_wasm_layer_that_is_not_wasm_fails_create_naming_it() {
    let env = env();
    let image = load_crafted("artifact-not-wasm", &[("application/wasm", b"\x7fELF\x02\x01\x01\0")]);
    let ran = env.run(HYBRID_RUNTIME, &image, &unique_id("notwasm"), &[]);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(ran.stderr.contains("wasm artifact module \"/module.wasm\" is not a wasm module"), "{ran:?}");
}
