//! A workaround for libcontainer 0.7 on cgroup v1: a container that joins
//! an existing pid namespace (a Kubernetes pod with shareProcessNamespace)
//! cannot have the `cgroup` mount CRI puts in every spec. libcontainer's
//! `mount_cgroup_v1` looks up its own pid, as seen in the joined namespace,
//! in the host's /proc: it fails (or reads a stranger's cgroups). For such a
//! spec the mount is rewritten, in the bundle's config.json before create,
//! into what runc makes of it: a tmpfs with the container's own cgroup of
//! every v1 hierarchy bound under it.

use std::path::{Path, PathBuf};

use libcgroups::common::{get_cgroup_setup, CgroupSetup, DEFAULT_CGROUP_ROOT};
use oci_spec::runtime::{LinuxNamespaceType, Mount, MountBuilder, Spec};

#[derive(Debug, thiserror::Error)]
pub enum CgroupMountError {
    #[error("bundle {path:?}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error("cgroup {path:?}: cannot create it for the container's cgroup mount: {source}")]
    Create { path: PathBuf, source: std::io::Error },
}

/// Rewrite the bundle's cgroup v1 mount if libcontainer could not make it;
/// `spec` is the bundle's config.json as already loaded. Returns whether
/// the spec was changed.
pub fn rewrite_for_shared_pid_namespace(bundle: &Path, spec: &Spec) -> Result<bool, CgroupMountError> {
    let path = bundle.join("config.json");
    let spec_err = |message: String| CgroupMountError::Spec { path: path.clone(), message };
    let Some(linux) = spec.linux().as_ref() else { return Ok(false) };
    let joins_pid_namespace = linux
        .namespaces()
        .as_ref()
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_some()));
    let Some(cgroups_path) = linux.cgroups_path().clone() else { return Ok(false) };
    let mounts = spec.mounts().clone().unwrap_or_default();
    let has_cgroup_mount = mounts.iter().any(|m| m.typ().as_deref() == Some("cgroup"));
    if !joins_pid_namespace || !has_cgroup_mount || matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified) | Err(_)) {
        return Ok(false);
    }
    let hierarchies: Vec<PathBuf> = libcgroups::v1::util::list_subsystem_mount_points()
        .map_err(|e| spec_err(format!("cannot list the cgroup v1 hierarchies: {e}")))?
        .into_iter()
        .filter(|p| p.starts_with(DEFAULT_CGROUP_ROOT))
        .collect();
    let relative = cgroups_path.strip_prefix("/").unwrap_or(&cgroups_path).to_path_buf();
    let mut rewritten = Vec::with_capacity(mounts.len() + hierarchies.len());
    for mount in mounts {
        if mount.typ().as_deref() != Some("cgroup") {
            rewritten.push(mount);
            continue;
        }
        rewritten.extend(replacement(&mount, &hierarchies, &relative).map_err(|e| match e {
            Replace::Spec(message) => spec_err(message),
            Replace::Create(path, source) => CgroupMountError::Create { path, source },
        })?);
    }
    let mut spec = spec.clone();
    spec.set_mounts(Some(rewritten));
    crate::guest_mounts::rewrite_in_place(&path, &spec).map_err(|e| spec_err(format!("cannot write the rewritten spec: {e}")))?;
    tracing::info!(?cgroups_path, "cgroup v1 mount rewritten for a shared pid namespace");
    Ok(true)
}

enum Replace {
    Spec(String),
    Create(PathBuf, std::io::Error),
}

/// tmpfs at the mount's destination, then each hierarchy's container cgroup.
fn replacement(mount: &Mount, hierarchies: &[PathBuf], cgroup: &Path) -> Result<Vec<Mount>, Replace> {
    let read_only = mount.options().as_ref().is_some_and(|o| o.iter().any(|o| o == "ro"));
    let strings = |opts: &[&str]| opts.iter().map(|o| o.to_string()).collect::<Vec<_>>();
    let mut out = vec![MountBuilder::default()
        .destination(mount.destination().clone())
        .typ("tmpfs")
        .source("tmpfs")
        .options(strings(&["noexec", "nosuid", "nodev", "mode=755"]))
        .build()
        .map_err(|e| Replace::Spec(e.to_string()))?];
    for hierarchy in hierarchies {
        let Some(name) = hierarchy.file_name() else { continue };
        let source = hierarchy.join(cgroup);
        // libcontainer creates it too, later; a bind needs it now.
        std::fs::create_dir_all(&source).map_err(|e| Replace::Create(source.clone(), e))?;
        let mut options = strings(&["rbind", "nosuid", "noexec", "nodev"]);
        if read_only {
            options.push("ro".to_string());
        }
        out.push(
            MountBuilder::default()
                .destination(mount.destination().join(name))
                .typ("bind")
                .source(source)
                .options(options)
                .build()
                .map_err(|e| Replace::Spec(e.to_string()))?,
        );
    }
    Ok(out)
}
