//! The rootfs mounts that Create hands over, mounted at bundle/rootfs.

use std::path::{Path, PathBuf};

use containerd_shim::protos::api::Mount;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot create rootfs dir {0:?}: {1}")]
    Mkdir(PathBuf, std::io::Error),
    #[error("cannot mount {kind} {source_path:?} at {target:?}: {message}")]
    Mount {
        kind: String,
        source_path: String,
        target: PathBuf,
        message: String,
    },
}

pub fn rootfs_path(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Mount every layer mount at bundle/rootfs (containerd gives one overlay or
/// bind mount for snapshotters like overlayfs). No mounts: the bundle
/// already carries its rootfs.
pub fn mount_all(bundle: &Path, mounts: &[Mount]) -> Result<(), RootfsError> {
    if mounts.is_empty() {
        return Ok(());
    }
    let target = rootfs_path(bundle);
    std::fs::create_dir_all(&target).map_err(|e| RootfsError::Mkdir(target.clone(), e))?;
    for m in mounts {
        containerd_shim::mount::mount_rootfs(Some(&m.type_), Some(&m.source), &m.options, &target).map_err(|e| {
            RootfsError::Mount {
                kind: m.type_.clone(),
                source_path: m.source.clone(),
                target: target.clone(),
                message: e.to_string(),
            }
        })?;
    }
    Ok(())
}

/// Unmount everything at bundle/rootfs; nothing mounted is not an error.
pub fn unmount_all(bundle: &Path) {
    let target = rootfs_path(bundle);
    // Lazy detach: a process that still holds a file open must not keep the
    // mount (and the snapshot) alive, and must not fail the delete.
    loop {
        match nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                tracing::warn!(?target, "cannot unmount rootfs: {e}");
                break;
            }
        }
    }
}
