//! `-info`: what this runtime supports, as the OCI runtime features document
//! (the JSON `runc features` prints). containerd 1.6's shim API has no
//! RuntimeInfo message, so the features are printed as JSON.

use std::collections::HashMap;

use oci_spec::runtime::{
    CgroupBuilder, FeaturesBuilder, LinuxFeatureBuilder, LinuxNamespaceType,
};

pub fn features_json() -> Result<String, String> {
    let cgroup = CgroupBuilder::default().v1(true).v2(true).systemd(false).build().map_err(|e| e.to_string())?;
    let linux = LinuxFeatureBuilder::default()
        .namespaces(vec![
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::User,
            LinuxNamespaceType::Cgroup,
        ])
        .cgroup(cgroup)
        .build()
        .map_err(|e| e.to_string())?;
    let annotations: HashMap<String, String> = [
        ("io.containerd.hybrid.v2.version", env!("CARGO_PKG_VERSION")),
        ("io.containerd.hybrid.v2.native", "youki libcontainer"),
        ("io.containerd.hybrid.v2.wasm", "wasmtime 48, WASI preview 1"),
        ("io.containerd.hybrid.v2.wasm.decision", "entrypoint \\0asm or WAT text; run.oci.handler=wasm; module.wasm.image/variant=compat|compat-smart"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let features = FeaturesBuilder::default()
        .oci_version_min("1.0.0")
        .oci_version_max("1.2.0")
        .hooks(vec!["prestart".into(), "createRuntime".into(), "createContainer".into(), "startContainer".into(), "poststart".into(), "poststop".into()])
        .linux(linux)
        .annotations(annotations)
        .build()
        .map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&features).map_err(|e| e.to_string())
}
