//! The shim's state root kept in memory: a tmpfs at /run/hybrid.
//!
//! What the shim keeps of a container (libcontainer's state.json and
//! config, its notify socket, a console socket) describes processes of
//! this boot only, and is written, read and removed with every container.
//! runc and youki keep theirs under /run, a tmpfs on a host run by
//! systemd. Where /run is a directory of the root filesystem instead (a
//! host without systemd, as this project's test machine: ext4 mounted
//! with `discard`), each container's files went to the disk and their
//! removal waited for the device: in paired runs of the wasm hello, 30
//! each, the runtime's part took 2.25 ms less (median) with the state on a
//! tmpfs; the creator's writes 0.65 ms, and containerd's `delete` cleanup
//! no longer waited behind the removal's discards.
//!
//! So the shim that finds its state root on a disk mounts a tmpfs over it,
//! once per boot, unless the directory already holds a container's state
//! (a shim from before runs containers there: a tmpfs over their state
//! would hide it from them). Shims starting together take a lock on the
//! directory first, so only one mounts.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};

/// The shim's state root: libcontainer's state per containerd namespace,
/// and the console sockets (tty.rs), are under it.
pub const SHIM_STATE_ROOT: &str = "/run/hybrid";

#[derive(Debug, thiserror::Error)]
pub enum StateInMemoryError {
    #[error("state root {path:?}: {message}")]
    Root { path: PathBuf, message: String },
    #[error("state root {path:?}: cannot mount a tmpfs: {source}")]
    Mount { path: PathBuf, source: nix::Error },
}

/// Where the state root is, as [`keep_in_memory`] left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateRoot {
    /// On a tmpfs (or ramfs) already.
    InMemory,
    /// On the tmpfs mounted now.
    Mounted,
    /// On a disk, with a container's state in it.
    OnDiskInUse,
}

/// See the module comment: `root` (created if missing) on a tmpfs.
pub fn keep_in_memory(root: &Path) -> Result<StateRoot, StateInMemoryError> {
    let failed = |message: String| StateInMemoryError::Root { path: root.to_path_buf(), message };
    if !root.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o711).create(root).map_err(|e| failed(e.to_string()))?;
    }
    if in_memory(root).map_err(|e| failed(e.to_string()))? {
        return Ok(StateRoot::InMemory);
    }
    let dir = std::fs::File::open(root).map_err(|e| failed(e.to_string()))?;
    let _locked = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| failed(format!("cannot lock: {e}")))?;
    // Another shim may have mounted it while this one waited.
    if in_memory(root).map_err(|e| failed(e.to_string()))? {
        return Ok(StateRoot::InMemory);
    }
    if holds_state(root).map_err(|e| failed(e.to_string()))? {
        return Ok(StateRoot::OnDiskInUse);
    }
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0711"),
    )
    .map_err(|source| StateInMemoryError::Mount { path: root.to_path_buf(), source })?;
    Ok(StateRoot::Mounted)
}

/// ramfs's magic number (linux/magic.h), which neither nix nor libc names.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

fn in_memory(path: &Path) -> nix::Result<bool> {
    let fs = statfs(path)?.filesystem_type();
    Ok(fs == TMPFS_MAGIC || fs == RAMFS_MAGIC)
}

/// Whether `root` holds anything but empty directories (the namespaces'
/// directories a shim of an earlier boot left: no container is in them).
fn holds_state(root: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() || std::fs::read_dir(entry.path())?.next().is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_namespace_directories_are_no_state_but_a_container_is() {
        let root = tempfile::tempdir().expect("tempdir");
        assert!(!holds_state(root.path()).expect("empty root"));
        std::fs::create_dir_all(root.path().join("default")).expect("mkdir");
        std::fs::create_dir_all(root.path().join("k8s.io")).expect("mkdir");
        assert!(!holds_state(root.path()).expect("empty namespaces"));
        std::fs::create_dir_all(root.path().join("default/web")).expect("mkdir");
        assert!(holds_state(root.path()).expect("a container"));
    }

    #[test]
    fn a_file_at_the_top_is_state() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("something"), b"x").expect("write");
        assert!(holds_state(root.path()).expect("a file"));
    }

    #[test]
    fn a_root_on_a_tmpfs_is_left_as_it_is() {
        // /dev/shm is a tmpfs wherever these tests run (the test machine
        // and a container alike); skipped where it is not.
        let shm = Path::new("/dev/shm");
        if !in_memory(shm).unwrap_or(false) {
            return;
        }
        let root = shm.join(format!("hybrid-state-test-{}", std::process::id()));
        let outcome = keep_in_memory(&root);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(outcome.expect("keep_in_memory"), StateRoot::InMemory);
    }
}
