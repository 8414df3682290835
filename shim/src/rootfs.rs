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
        set_aside_old_workdir(m);
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

/// The directory an overlay mount of `m` works in (`workdir=`), if any.
fn overlay_workdir(m: &Mount) -> Option<&Path> {
    if m.type_ != "overlay" {
        return None;
    }
    m.options.iter().find_map(|o| o.strip_prefix("workdir=")).map(Path::new)
}

/// Move the `work` directory an earlier mount of this snapshot left in its
/// workdir (containerd mounts a container's snapshot for a moment before
/// Create, to read its /etc/passwd and /etc/group) out of the kernel's way.
///
/// At mount, overlayfs removes a leftover `work` itself, inside the mount
/// call; on a filesystem mounted with `discard` that frees a block and
/// waits for the device to discard it: 0.2 ms on the idle test machine, up
/// to 16 ms (10 on average) with its disk busy (a perf recording beside
/// the cold starts). A rename frees nothing,
/// and overlayfs ignores other entries in its workdir. containerd removes
/// the set-aside directory with the snapshot, off any request's path; the
/// ones a snapshot mounted again (a container started again) already has
/// are removed here, on a thread of its own.
fn set_aside_old_workdir(m: &Mount) {
    let Some(workdir) = overlay_workdir(m) else { return };
    let old = workdir.join("work");
    if std::fs::symlink_metadata(&old).is_err() {
        return;
    }
    let earlier: Vec<PathBuf> = std::fs::read_dir(workdir)
        .map(|entries| {
            entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(OLD_WORK_PREFIX)).map(|e| e.path()).collect()
        })
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let aside = workdir.join(format!("{OLD_WORK_PREFIX}{}-{nanos}", std::process::id()));
    if let Err(e) = std::fs::rename(&old, &aside) {
        // The mount removes it then, as it always did.
        tracing::debug!(?old, "cannot set the old overlay work dir aside: {e}");
        return;
    }
    if earlier.is_empty() {
        return;
    }
    let removal = hybrid_runtime::fork_guard::spawn("old-workdirs".into(), move || {
        for dir in earlier {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::debug!(?dir, "cannot remove an old overlay work dir: {e}");
            }
        }
    });
    if let Err(e) = removal {
        tracing::debug!("cannot start a thread to remove old overlay work dirs: {e}");
    }
}

/// How the directories [`set_aside_old_workdir`] moved aside are named.
const OLD_WORK_PREFIX: &str = "hybrid-old-work-";

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
    fn an_overlays_workdir_is_found_in_its_options() {
        let m = mount("overlay", &["index=off", "workdir=/snap/1/work", "upperdir=/snap/1/fs"]);
        assert_eq!(overlay_workdir(&m), Some(Path::new("/snap/1/work")));
        assert_eq!(overlay_workdir(&mount("bind", &["rbind", "workdir=/x"])), None);
        assert_eq!(overlay_workdir(&mount("overlay", &["lowerdir=/a"])), None);
    }

    #[test]
    fn an_old_work_dir_is_set_aside_and_one_set_aside_before_removed() {
        let dir = std::env::temp_dir().join(format!("hybrid-rootfs-test-{}", std::process::id()));
        let workdir = dir.join("work");
        let m = mount("overlay", &[&format!("workdir={}", workdir.display())]);
        let aside = || -> Vec<PathBuf> { std::fs::read_dir(&workdir).unwrap().flatten().map(|e| e.path()).collect() };
        // A first mount's leftover is moved out of the mount's way, and stays.
        std::fs::create_dir_all(workdir.join("work").join("leftover")).unwrap();
        set_aside_old_workdir(&m);
        let first = aside();
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(first[0].file_name().unwrap().to_string_lossy().starts_with(OLD_WORK_PREFIX), "{first:?}");
        // A second mount's: set aside too, and the first removed (on a thread).
        std::fs::create_dir_all(workdir.join("work")).unwrap();
        set_aside_old_workdir(&m);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while first[0].exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let second = aside();
        assert_eq!(second.len(), 1, "{second:?}");
        assert_ne!(second, first);
        assert!(!workdir.join("work").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flags_binds_and_long_lowerdirs_go_through_containerd_shim() {
        assert_eq!(plain_overlay_data(&mount("overlay", &["ro", "lowerdir=/a:/b"])), None);
        assert_eq!(plain_overlay_data(&mount("bind", &["rbind=x"])), None);
        let long = format!("lowerdir={}", vec!["/var/lib/containerd/snapshots/123/fs"; 200].join(":"));
        assert_eq!(plain_overlay_data(&mount("overlay", &[long.as_str()])), None);
    }
}
