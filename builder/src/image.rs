//! The image being built: OCI config (runtime settings, rootfs.diff_ids,
//! history) and the list of layer descriptors; written as canonical
//! (sorted-key) JSON config and manifest blobs.

use std::collections::HashMap;

use oci_spec::image::{
    Arch, Config, Descriptor, Digest, History, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder,
    MediaType,
};
use serde::Serialize;
use thiserror::Error;

use crate::blobs::BlobStore;
use crate::platform::Platform;

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("invalid digest {0:?}")]
    Digest(String),
    #[error("cannot build the image {0}")]
    Spec(String),
    #[error("cannot serialize the image {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot parse the {what} {digest}")]
    Parse {
        what: &'static str,
        digest: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{image} has no manifest for platform {platform}")]
    NoPlatform { image: String, platform: String },
    #[error("cannot store the image {what}")]
    Store {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The architecture images are built for (the host's).
pub fn host_arch() -> Arch {
    match std::env::consts::ARCH {
        "aarch64" => Arch::ARM64,
        "x86_64" => Arch::Amd64,
        other => Arch::from(other),
    }
}

/// `seconds` since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// JSON with object keys sorted at every level (oci-spec keeps some maps in
/// `HashMap`s), so the same image always has the same digest.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    fn sort(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    serde_json::to_vec(&sort(serde_json::to_value(value)?))
}

pub fn descriptor(media_type: &str, digest: &str, size: u64) -> Result<Descriptor, ImageError> {
    let parsed: Digest = digest.parse().map_err(|_| ImageError::Digest(digest.to_string()))?;
    Ok(Descriptor::new(MediaType::from(media_type), size, parsed))
}

pub fn is_index(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex)
        || matches!(media_type, MediaType::Other(m) if m == MEDIA_TYPE_DOCKER_MANIFEST_LIST)
}

pub fn is_manifest(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageManifest)
        || matches!(media_type, MediaType::Other(m) if m == MEDIA_TYPE_DOCKER_MANIFEST)
}

/// The manifest for `platform` in `index` (or its only entry, when that
/// names no platform); `image` names the image for the error.
pub fn select_platform<'a>(index: &'a ImageIndex, image: &str, platform: &Platform) -> Result<&'a Descriptor, ImageError> {
    let found = index.manifests().iter().find(|d| d.platform().as_ref().is_some_and(|p| platform.matches_oci(p)));
    match (found, index.manifests().as_slice()) {
        (Some(d), _) => Ok(d),
        (None, [only]) if only.platform().is_none() => Ok(only),
        _ => Err(ImageError::NoPlatform { image: image.to_string(), platform: platform.to_string() }),
    }
}

pub fn parse_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    digest: &str,
    data: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|source| ImageError::Parse { what, digest: digest.to_string(), source })
}

/// A built image's blobs.
#[derive(Debug, Clone)]
pub struct WrittenImage {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Clone)]
pub struct ImageState {
    config: ImageConfiguration,
    /// Docker's config fields that OCI's `Config` lacks (`Shell`,
    /// `Healthcheck`, `OnBuild`), merged into the config JSON on write the
    /// way docker and buildkit store them.
    extras: serde_json::Map<String, serde_json::Value>,
    /// The base image's ONBUILD triggers, run right after FROM.
    pub base_triggers: Vec<String>,
    exec: Config,
    layers: Vec<Descriptor>,
    created: String,
    /// CMD set by this Dockerfile (ENTRYPOINT resets only an inherited CMD).
    cmd_set: bool,
}

impl ImageState {
    /// FROM scratch: the build platform, the default PATH.
    pub fn scratch(created: String, platform: &Platform) -> ImageState {
        let mut config = ImageConfiguration::default();
        config.set_architecture(platform.oci_arch());
        config.set_os(platform.oci_os());
        config.set_variant(platform.variant.clone());
        let mut exec = Config::default();
        exec.set_env(Some(vec![DEFAULT_PATH.to_string()]));
        ImageState {
            config,
            extras: Default::default(),
            base_triggers: Vec::new(),
            exec,
            layers: Vec::new(),
            created,
            cmd_set: false,
        }
    }

    /// FROM a base image (`raw` is its config JSON, for the docker-only
    /// fields); docker layer media types become their OCI equals.
    pub fn from_base(mut config: ImageConfiguration, raw: &[u8], manifest: &ImageManifest, created: String) -> ImageState {
        let mut extras = serde_json::Map::new();
        let mut base_triggers = Vec::new();
        if let Ok(serde_json::Value::Object(mut top)) = serde_json::from_slice::<serde_json::Value>(raw) {
            if let Some(serde_json::Value::Object(mut exec)) = top.remove("config") {
                for key in ["Shell", "Healthcheck"] {
                    if let Some(value) = exec.remove(key).filter(|v| !v.is_null()) {
                        extras.insert(key.to_string(), value);
                    }
                }
                // Triggers run in the child build and are not inherited.
                if let Some(serde_json::Value::Array(triggers)) = exec.remove("OnBuild") {
                    base_triggers = triggers.into_iter().filter_map(|t| t.as_str().map(str::to_string)).collect();
                }
            }
        }
        let exec = config.config().clone().unwrap_or_default();
        config.set_config(None);
        let layers = manifest
            .layers()
            .iter()
            .cloned()
            .map(|mut d| {
                if matches!(d.media_type(), MediaType::Other(m) if m == DOCKER_LAYER_GZIP) {
                    d.set_media_type(MediaType::ImageLayerGzip);
                }
                d
            })
            .collect();
        ImageState { config, extras, base_triggers, exec, layers, created, cmd_set: false }
    }

    /// The platform in the config (os/architecture/variant).
    pub fn platform(&self) -> String {
        let mut text = format!("{}/{}", self.config.os(), self.config.architecture());
        if let Some(v) = self.config.variant().as_ref().filter(|v| !v.is_empty()) {
            text = format!("{text}/{v}");
        }
        text
    }

    /// Set the config's os/architecture/variant.
    pub fn set_platform(&mut self, platform: &Platform) {
        self.config.set_os(platform.oci_os());
        self.config.set_architecture(platform.oci_arch());
        self.config.set_variant(platform.variant.clone());
    }

    /// The SHELL for shell-form commands.
    pub fn shell(&self) -> Vec<String> {
        self.extras
            .get("Shell")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_else(|| vec!["/bin/sh".to_string(), "-c".to_string()])
    }

    pub fn set_shell(&mut self, shell: Vec<String>) {
        self.extras.insert("Shell".into(), serde_json::json!(shell));
    }

    pub fn set_healthcheck(&mut self, check: Option<&crate::instruction::Healthcheck>) {
        let value = match check {
            None => serde_json::json!({ "Test": ["NONE"] }),
            Some(c) => {
                let mut object = serde_json::Map::new();
                object.insert("Test".into(), serde_json::json!(c.test));
                let durations = [
                    ("Interval", c.interval),
                    ("Timeout", c.timeout),
                    ("StartPeriod", c.start_period),
                    ("StartInterval", c.start_interval),
                    ("Retries", c.retries),
                ];
                for (key, value) in durations {
                    if let Some(v) = value {
                        object.insert(key.into(), serde_json::json!(v));
                    }
                }
                serde_json::Value::Object(object)
            }
        };
        self.extras.insert("Healthcheck".into(), value);
    }

    pub fn add_onbuild(&mut self, trigger: String) {
        let list = self.extras.entry("OnBuild").or_insert_with(|| serde_json::json!([]));
        if let serde_json::Value::Array(items) = list {
            items.push(serde_json::Value::String(trigger));
        }
    }

    pub fn user(&self) -> Option<String> {
        self.exec.user().clone().filter(|u| !u.is_empty())
    }

    pub fn layers(&self) -> &[Descriptor] {
        &self.layers
    }

    pub fn env(&self, name: &str) -> Option<String> {
        self.exec.env().as_ref()?.iter().find_map(|e| {
            let (k, v) = e.split_once('=').unwrap_or((e, ""));
            (k == name).then(|| v.to_string())
        })
    }

    /// The whole environment, `NAME=VALUE` in order.
    pub fn env_list(&self) -> Vec<String> {
        self.exec.env().clone().unwrap_or_default()
    }

    pub fn set_env(&mut self, name: &str, value: &str) {
        let mut env = self.exec.env().clone().unwrap_or_default();
        let entry = format!("{name}={value}");
        match env.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == name) {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
        self.exec.set_env(Some(env));
    }

    /// The working directory (`/` if unset).
    pub fn workdir(&self) -> String {
        self.exec.working_dir().clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into())
    }

    pub fn set_workdir(&mut self, dir: String) {
        self.exec.set_working_dir(Some(dir));
    }

    pub fn set_cmd(&mut self, argv: Vec<String>) {
        self.exec.set_cmd(Some(argv));
        self.cmd_set = true;
    }

    pub fn set_entrypoint(&mut self, argv: Vec<String>) {
        self.exec.set_entrypoint(Some(argv));
        if !self.cmd_set {
            self.exec.set_cmd(None);
        }
    }

    pub fn set_label(&mut self, key: String, value: String) {
        let mut labels = self.exec.labels().clone().unwrap_or_default();
        labels.insert(key, value);
        self.exec.set_labels(Some(labels));
    }

    pub fn add_exposed_port(&mut self, port: String) {
        let mut ports = self.exec.exposed_ports().clone().unwrap_or_default();
        if !ports.contains(&port) {
            ports.push(port);
        }
        self.exec.set_exposed_ports(Some(ports));
    }

    pub fn add_volume(&mut self, path: String) {
        let mut volumes = self.exec.volumes().clone().unwrap_or_default();
        if !volumes.contains(&path) {
            volumes.push(path);
        }
        self.exec.set_volumes(Some(volumes));
    }

    pub fn set_user(&mut self, user: String) {
        self.exec.set_user(Some(user));
    }

    pub fn set_stop_signal(&mut self, signal: String) {
        self.exec.set_stop_signal(Some(signal));
    }

    fn push_history(&mut self, created_by: &str, empty_layer: bool) {
        let mut entry = History::default();
        entry.set_created(Some(self.created.clone()));
        entry.set_created_by(Some(created_by.to_string()));
        entry.set_comment(Some("hybrid build".to_string()));
        if empty_layer {
            entry.set_empty_layer(Some(true));
        }
        let mut history = self.config.history().clone().unwrap_or_default();
        history.push(entry);
        self.config.set_history(Some(history));
    }

    /// A metadata-only instruction.
    pub fn add_history(&mut self, created_by: &str) {
        self.push_history(created_by, true);
    }

    pub fn add_layer(&mut self, layer: Descriptor, diff_id: String, created_by: &str) {
        self.layers.push(layer);
        self.config.rootfs_mut().diff_ids_mut().push(diff_id);
        self.push_history(created_by, false);
    }

    /// Write the config and manifest blobs.
    pub fn write(&self, blobs: &BlobStore) -> Result<WrittenImage, ImageError> {
        let mut config = self.config.clone();
        config.set_created(Some(self.created.clone()));
        config.set_config(Some(self.exec.clone()));
        let json_err = |source| ImageError::Json { what: "config", source };
        let mut value = serde_json::to_value(&config).map_err(json_err)?;
        if let Some(serde_json::Value::Object(exec)) = value.get_mut("config") {
            exec.extend(self.extras.clone());
        }
        let json = canonical_json(&value).map_err(json_err)?;
        let (digest, size) = blobs.put_bytes(&json).map_err(|source| ImageError::Store { what: "config", source })?;
        let config_desc = descriptor(MediaType::ImageConfig.as_ref(), &digest, size)?;

        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_desc.clone())
            .layers(self.layers.clone())
            .build()
            .map_err(|e| ImageError::Spec(e.to_string()))?;
        let json = canonical_json(&manifest).map_err(|source| ImageError::Json { what: "manifest", source })?;
        let (digest, size) =
            blobs.put_bytes(&json).map_err(|source| ImageError::Store { what: "manifest", source })?;
        let mut manifest_desc = descriptor(MediaType::ImageManifest.as_ref(), &digest, size)?;
        let mut platform = oci_spec::image::Platform::default();
        platform.set_architecture(config.architecture().clone());
        platform.set_os(config.os().clone());
        platform.set_variant(config.variant().clone().filter(|v| !v.is_empty()));
        manifest_desc.set_platform(Some(platform));
        manifest_desc.set_annotations(None::<HashMap<String, String>>);
        Ok(WrittenImage { manifest: manifest_desc, config: config_desc, layers: self.layers.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn env_and_entrypoint_rules() {
        let mut image = ImageState::scratch(rfc3339(0), &Platform::host());
        assert_eq!(image.env("PATH").as_deref(), Some(&DEFAULT_PATH[5..]));
        image.set_env("A", "1");
        image.set_env("A", "2");
        assert_eq!(image.env("A").as_deref(), Some("2"));
        image.set_cmd(vec!["x".into()]);
        image.set_entrypoint(vec!["/e".into()]);
        assert_eq!(image.exec.cmd().as_deref(), Some(&["x".to_string()][..]));
    }

    #[test]
    fn platform_in_config_and_manifest_entry() {
        let blobs = BlobStore::temp().unwrap();
        let arm = Platform::parse("linux/arm/v7").unwrap();
        let written = ImageState::scratch(rfc3339(0), &arm).write(&blobs).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&blobs.read(written.config.digest().as_ref()).unwrap()).unwrap();
        assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some("arm")));
        assert_eq!(config["variant"].as_str(), Some("v7"));
        let entry = written.manifest.platform().clone().unwrap();
        assert!(arm.matches_oci(&entry));
        assert_eq!(entry.variant().as_deref(), Some("v7"));

        let mut image = ImageState::scratch(rfc3339(0), &Platform::host());
        image.set_platform(&Platform::parse("wasip1/wasm").unwrap());
        assert_eq!(image.platform(), "wasip1/wasm");
        let written = image.write(&blobs).unwrap();
        let entry = written.manifest.platform().clone().unwrap();
        assert_eq!((entry.os().to_string(), entry.architecture().to_string()), ("wasip1".into(), "wasm".into()));
        assert_eq!(entry.variant(), &None);
    }

    #[test]
    fn selects_the_platform_of_an_index() {
        let entry = |p: &str| {
            let mut d = descriptor(MediaType::ImageManifest.as_ref(), &format!("sha256:{}", "a".repeat(64)), 1).unwrap();
            d.set_platform(Some(Platform::parse(p).unwrap().to_oci()));
            d
        };
        let mut arm = entry("linux/arm64");
        arm.set_size(2);
        let index = oci_spec::image::ImageIndexBuilder::default()
            .schema_version(2u32)
            .manifests(vec![entry("linux/amd64"), arm])
            .build()
            .unwrap();
        let found = select_platform(&index, "image x", &Platform::parse("linux/arm64").unwrap()).unwrap();
        assert_eq!(found.size(), 2);
        let err = select_platform(&index, "image x", &Platform::parse("linux/s390x").unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "image x has no manifest for platform linux/s390x");
    }
}
