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
        let mount_err = |message: String| RootfsError::Mount {
            kind: m.type_.clone(),
            source_path: m.source.clone(),
            target: target.clone(),
            message,
        };
        match plain_overlay_data(m) {
            Some(data) => nix::mount::mount(Some(m.source.as_str()), &target, Some("overlay"), nix::mount::MsFlags::empty(), Some(data.as_str()))
                .map_err(|e| mount_err(e.to_string()))?,
            None => containerd_shim::mount::mount_rootfs(Some(&m.type_), Some(&m.source), &m.options, &target)
                .map_err(|e| mount_err(e.to_string()))?,
        }
    }
    Ok(())
}

/// The data of an overlay mount that can be mounted as it is: options that
/// are all `key=value` (no mount flags) and short enough for the kernel's
/// one page. That is what containerd's overlayfs snapshotter hands over for
/// a container, and this thread mounts it directly. Anything else goes
/// through containerd-shim's `mount_rootfs`, which parses flags and
/// shortens long lowerdir lists, in a forked child that changes its cwd
/// (about a millisecond more per Create).
fn plain_overlay_data(m: &Mount) -> Option<String> {
    // The page less containerd-shim's own margin.
    const MAX_DATA: usize = 4096 - 512;
    if m.type_ != "overlay" || !m.options.iter().all(|o| o.contains('=')) {
        return None;
    }
    let data = m.options.join(",");
    (data.len() < MAX_DATA).then_some(data)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, options: &[&str]) -> Mount {
        Mount { type_: kind.to_string(), source: kind.to_string(), options: options.iter().map(|o| o.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn a_snapshotters_overlay_is_mounted_as_it_is() {
        let m = mount("overlay", &["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"]);
        assert_eq!(plain_overlay_data(&m).as_deref(), Some("index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b"));
    }

    #[test]
    fn flags_binds_and_long_lowerdirs_go_through_containerd_shim() {
        assert_eq!(plain_overlay_data(&mount("overlay", &["ro", "lowerdir=/a:/b"])), None);
        assert_eq!(plain_overlay_data(&mount("bind", &["rbind=x"])), None);
        let long = format!("lowerdir={}", vec!["/var/lib/containerd/snapshots/123/fs"; 200].join(":"));
        assert_eq!(plain_overlay_data(&mount("overlay", &[long.as_str()])), None);
    }
}
