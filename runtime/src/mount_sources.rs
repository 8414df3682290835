//! Bind mount sources, checked before a container is made.
//!
//! libcontainer's init reports a bind mount whose source is missing as
//! "failed to prepare rootfs: io error: No such file or directory", naming
//! neither the mount nor the path, and for a wasm container it does so after
//! Create has answered (ready_later.rs). runc names both, at create. A stat
//! per bind mount before the container is made gives the operator the same:
//! Create fails, naming the destination and the source.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

#[derive(Debug, thiserror::Error)]
#[error("mount {destination:?}: bind source {path:?}: {error}")]
pub struct MountSourceError {
    destination: PathBuf,
    path: PathBuf,
    error: std::io::Error,
}

/// Check that every bind mount of `spec` has a source (a path relative to
/// `bundle` is taken from there, as libcontainer does).
pub fn check_bind_sources(bundle: &Path, spec: &Spec) -> Result<(), MountSourceError> {
    for mount in spec.mounts().as_deref().unwrap_or_default() {
        let options = mount.options().as_deref().unwrap_or_default();
        let bind = mount.typ().as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind");
        let Some(source) = mount.source().as_ref().filter(|_| bind) else { continue };
        let path = bundle.join(source);
        if let Err(error) = std::fs::metadata(&path) {
            return Err(MountSourceError { destination: mount.destination().clone(), path, error });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn spec_with(mounts: Vec<oci_spec::runtime::Mount>) -> Spec {
        let mut spec = Spec::default();
        spec.set_mounts(Some(mounts));
        spec
    }

    #[test]
    fn a_missing_bind_source_is_named_with_its_destination() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let mount = MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source(&missing)
            .options(vec!["rbind".to_string(), "rw".to_string()])
            .build()
            .expect("mount");
        let error = check_bind_sources(dir.path(), &spec_with(vec![mount])).expect_err("missing source");
        let message = error.to_string();
        assert!(message.contains("/data") && message.contains(&missing.display().to_string()), "{message}");
    }

    #[test]
    fn present_sources_relative_ones_and_other_mounts_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("here")).expect("dir");
        let relative = MountBuilder::default().destination("/a").source("here").options(vec!["bind".to_string()]).build().expect("mount");
        let tmpfs = MountBuilder::default().destination("/b").typ("tmpfs").source("tmpfs").build().expect("mount");
        assert!(check_bind_sources(dir.path(), &spec_with(vec![relative, tmpfs])).is_ok());
        // The default spec's own mounts (proc, /dev, ...) are not binds.
        assert!(check_bind_sources(dir.path(), &Spec::default()).is_ok());
    }
}
