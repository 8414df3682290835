//! Which directories of the container a wasm guest can reach. By default
//! the whole root (with the spec's mounts inside it, and the kernel holding
//! a read-only root read-only), plus the cwd as "." for relative paths.
//! The annotation `io.containerd.hybrid.v2.preopens` narrows that to a list:
//! `/data,/config:ro` preopens just those two, the second read-only.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// The annotation that narrows the preopened directories.
pub const PREOPENS_ANNOTATION: &str = "io.containerd.hybrid.v2.preopens";

/// One directory the guest gets, at `guest`, backed by `host` (a path in
/// the container's root, which is `/` for the process by then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

impl Preopen {
    pub fn read_write(host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        Self { host: host.into(), guest: guest.into(), read_only: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreopensError {
    #[error("annotation {PREOPENS_ANNOTATION}: entry {entry:?}: {reason}")]
    Entry { entry: String, reason: &'static str },
}

/// What of the container's filesystem the preopens depend on.
#[derive(Debug, Clone, Default)]
pub struct RootView {
    /// The spec's root is read-only.
    pub read_only: bool,
    /// Destinations of the spec's mounts that are writable (volumes, tmpfs).
    pub writable_mounts: Vec<PathBuf>,
}

impl RootView {
    pub fn from_spec(spec: &oci_spec::runtime::Spec) -> Self {
        let read_only = spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false);
        // The kernel's own trees are no place for a guest's writes.
        let system = ["/proc", "/sys", "/dev"];
        let writable_mounts = spec
            .mounts()
            .iter()
            .flatten()
            .filter(|m| !m.options().iter().flatten().any(|o| o == "ro"))
            .map(|m| m.destination().clone())
            .filter(|d| d != Path::new("/") && !system.iter().any(|s| d.starts_with(s)))
            .collect();
        Self { read_only, writable_mounts }
    }
}

/// The guest's preopens for a process with `cwd` in a container with the
/// given `annotations` and `root`.
pub fn preopens_for(cwd: &Path, annotations: &HashMap<String, String>, root: &RootView) -> Result<Vec<Preopen>, PreopensError> {
    let mut preopens = match annotations.get(PREOPENS_ANNOTATION) {
        // A read-only root is read-only at the WASI level too, so that the
        // guest gets "not permitted" rather than an I/O error; its writable
        // mounts then need preopens of their own (the guest's libc picks the
        // longest matching preopen for a path).
        None if root.read_only => std::iter::once(Preopen { host: "/".into(), guest: "/".into(), read_only: true })
            .chain(root.writable_mounts.iter().filter_map(|m| Some(Preopen::read_write(m, m.to_str()?))))
            .collect(),
        None => vec![Preopen::read_write("/", "/")],
        Some(list) => parse(list)?,
    };
    if cwd != Path::new("/") {
        // Relative paths in the guest resolve against ".", the cwd, with the
        // rights of the preopen that holds it (none: no ".").
        let holder = preopens.iter().filter(|p| cwd.starts_with(&p.host)).max_by_key(|p| p.host.as_os_str().len());
        if let Some(holder) = holder {
            let read_only = holder.read_only;
            preopens.push(Preopen { host: cwd.to_path_buf(), guest: ".".into(), read_only });
        }
    }
    Ok(preopens)
}

fn parse(list: &str) -> Result<Vec<Preopen>, PreopensError> {
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let err = |reason| PreopensError::Entry { entry: entry.to_string(), reason };
        let (path, read_only) = match entry.rsplit_once(':') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            Some(_) => return Err(err("the only options are :ro and :rw")),
            None => (entry, false),
        };
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err(err("the path must be absolute"));
        }
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(err("the path must not contain .."));
        }
        let guest = path.to_str().ok_or_else(|| err("the path must be utf-8"))?.to_string();
        out.push(Preopen { host: path.to_path_buf(), guest, read_only });
    }
    if out.is_empty() {
        return Err(PreopensError::Entry { entry: list.to_string(), reason: "no directory listed" });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(value: &str) -> HashMap<String, String> {
        HashMap::from([(PREOPENS_ANNOTATION.to_string(), value.to_string())])
    }

    #[test]
    fn the_whole_root_by_default_and_the_cwd_as_dot() {
        let got = preopens_for(Path::new("/app"), &HashMap::new(), &RootView::default()).expect("preopens");
        assert_eq!(got, vec![Preopen::read_write("/", "/"), Preopen::read_write("/app", ".")]);
    }

    #[test]
    fn a_read_only_root_keeps_its_writable_mounts_writable() {
        let root = RootView { read_only: true, writable_mounts: vec!["/data".into()] };
        let got = preopens_for(Path::new("/data/work"), &HashMap::new(), &root).expect("preopens");
        assert_eq!(got[0], Preopen { host: "/".into(), guest: "/".into(), read_only: true });
        assert_eq!(got[1], Preopen::read_write("/data", "/data"));
        assert_eq!(got[2], Preopen::read_write("/data/work", "."), "the cwd takes its closest preopen's rights");
    }

    #[test]
    fn the_annotation_narrows_and_marks_read_only() {
        let got = preopens_for(Path::new("/config/sub"), &annotated("/data, /config:ro"), &RootView::default()).expect("preopens");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Preopen::read_write("/data", "/data"));
        assert_eq!(got[1], Preopen { host: "/config".into(), guest: "/config".into(), read_only: true });
        assert_eq!(got[2], Preopen { host: "/config/sub".into(), guest: ".".into(), read_only: true });
    }

    #[test]
    fn a_cwd_outside_every_preopen_gets_no_dot() {
        let got = preopens_for(Path::new("/elsewhere"), &annotated("/data"), &RootView::default()).expect("preopens");
        assert_eq!(got, vec![Preopen::read_write("/data", "/data")]);
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        for bad in ["data", "/a/../b", "/x:rx", " , "] {
            let err = preopens_for(Path::new("/"), &annotated(bad), &RootView::default()).expect_err(bad);
            assert!(err.to_string().contains(PREOPENS_ANNOTATION), "{err}");
        }
    }
}
