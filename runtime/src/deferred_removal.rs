//! Removing a deleted container's state directory after Delete's answer.
//!
//! libcontainer's state (state.json, youki_config.json, the notify socket)
//! is a few small files; unlinking a file frees its block, and where the
//! filesystem is mounted with `discard` (the test machine's root, which
//! holds /run) the unlink waits for the device: 0.4 to 0.5 ms of every
//! Delete (sched_switch stacks: blkdev_issue_discard from ext4_free_blocks
//! in the serving thread). Delete now renames the directory aside (one
//! metadata change: the container's name is free at once) and a thread
//! removes it; a shim about to exit waits for those threads
//! ([`wait_for_removals`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::in_flight::InFlight;

/// The renamed directories still being removed.
static REMOVING: InFlight = InFlight::new();

/// The prefix of a directory renamed aside to be removed.
pub const ASIDE_PREFIX: &str = ".deleted-";

/// Remove the directory `dir`: renamed aside now, removed by a thread.
/// Removed here, as before, when it cannot be renamed or no thread starts.
pub fn remove_dir_soon(dir: &Path) -> std::io::Result<()> {
    let Some(aside) = aside_name(dir) else { return remove_now(dir) };
    match std::fs::rename(dir, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => return remove_now(dir),
    }
    REMOVING.started();
    let for_thread = aside.clone();
    let spawned = crate::fork_guard::spawn("state-removal".into(), move || {
        if let Err(e) = std::fs::remove_dir_all(&for_thread) {
            tracing::warn!("cannot remove {for_thread:?}: {e}");
        }
        REMOVING.done();
    });
    if spawned.is_err() {
        REMOVING.done();
        return remove_now(&aside);
    }
    Ok(())
}

/// Wait until the directories renamed aside are removed, at most `limit`;
/// false when some are not yet.
pub fn wait_for_removals(limit: Duration) -> bool {
    REMOVING.wait_for_none(limit)
}

fn remove_now(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        done => done,
    }
}

/// `dir`'s sibling to rename it to: hidden, and unique to this process and moment.
fn aside_name(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_string_lossy();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some(dir.with_file_name(format!("{ASIDE_PREFIX}{name}-{}-{nanos}", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_gone_at_once_and_removed_soon() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("some-container");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("state.json"), "{}").unwrap();
        std::fs::write(dir.join("sub/file"), "x").unwrap();
        remove_dir_soon(&dir).expect("removed");
        assert!(!dir.exists(), "the name is free at once");
        // The same name can be made again meanwhile, and is left alone.
        std::fs::create_dir(&dir).unwrap();
        assert!(wait_for_removals(Duration::from_secs(5)), "removed within 5 s");
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("some-container")]);
    }

    #[test]
    fn a_missing_directory_is_no_error() {
        let root = tempfile::tempdir().expect("tempdir");
        remove_dir_soon(&root.path().join("gone")).expect("nothing to remove");
    }
}
