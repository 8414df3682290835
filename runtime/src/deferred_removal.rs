//! Removing a deleted container's state, and closing what it held, after
//! Delete's answer.
//!
//! libcontainer's state (state.json, youki_config.json, the notify socket)
//! is a few small files; unlinking a file frees its block, and where the
//! filesystem is mounted with `discard` (the test machine's root, which
//! holds /run) the unlink waits for the device: 0.4 to 0.5 ms of every
//! Delete (sched_switch stacks: blkdev_issue_discard from ext4_free_blocks
//! in the serving thread). The same wait comes with the last close of a
//! container's stdio fifos: the client removed their directory before
//! Delete, and that close frees the directory's block (0.3 to 4 ms,
//! `close` in the Delete's thread). Delete now renames the state directory
//! aside (one metadata change: the container's name is free at once) and
//! hands both to one thread, which runs the work queued and exits when
//! none is left; a shim about to exit waits for it ([`wait_for_removals`]),
//! after its last answer. A shim killed before its thread removed what it
//! renamed aside leaves it: the first removal of a later shim sweeps what
//! shims that are gone left beside it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::in_flight::InFlight;

/// The work queued and not yet done.
static REMOVING: InFlight = InFlight::new();

/// The work waiting for the thread, and whether that thread runs.
static QUEUE: Mutex<Queue> = Mutex::new(Queue { jobs: VecDeque::new(), worker: false });

type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    worker: bool,
}

/// The prefix of a directory renamed aside to be removed.
pub const ASIDE_PREFIX: &str = ".deleted-";

/// Remove the directory `dir`: renamed aside now, removed by the thread.
/// Removed here, as before, when it cannot be renamed or no thread starts.
pub fn remove_dir_soon(dir: &Path) -> std::io::Result<()> {
    let Some(aside) = aside_name(dir) else { return remove_now(dir) };
    match std::fs::rename(dir, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => return remove_now(dir),
    }
    let sweep = SWEPT.set(()).is_ok().then(|| dir.parent().map(Path::to_path_buf)).flatten();
    soon(Box::new(move || {
        if let Err(e) = remove_now(&aside) {
            tracing::warn!("cannot remove {aside:?}: {e}");
        }
        if let Some(root) = sweep {
            sweep_left_aside(&root);
        }
    }));
    Ok(())
}

/// Set once this process has swept a state root (see sweep_left_aside).
static SWEPT: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// Remove what shims that are gone renamed aside under `root` and did not
/// remove (killed first). The owner is the pid in the name; a name whose
/// process lives (this one, another shim's thread at work) is left.
fn sweep_left_aside(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = aside_owner(&name.to_string_lossy()) else { continue };
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(owner), None) == Err(nix::errno::Errno::ESRCH);
        if gone {
            let path = entry.path();
            match remove_now(&path) {
                Ok(()) => tracing::info!("removed {path:?}, left aside by shim {owner}, which is gone"),
                Err(e) => tracing::warn!("cannot remove {path:?}, left aside by shim {owner}: {e}"),
            }
        }
    }
}

/// The pid of the process that renamed a directory aside to `name` (see
/// aside_name); None for any other name.
fn aside_owner(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(ASIDE_PREFIX)?;
    let mut fields = rest.rsplitn(3, '-');
    let _nanos: u128 = fields.next()?.parse().ok()?;
    let pid: i32 = fields.next()?.parse().ok()?;
    fields.next().filter(|n| !n.is_empty())?;
    (pid > 0).then_some(pid)
}

/// Work of another thread that must end before the process exits, as
/// the queued removals must: counted with them from `new` until dropped
/// (a Create's cgroup thread, which removes what a failed Create made).
pub struct BeforeExit(());

impl BeforeExit {
    pub fn new() -> Self {
        REMOVING.started();
        Self(())
    }
}

impl Default for BeforeExit {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BeforeExit {
    fn drop(&mut self) {
        REMOVING.done();
    }
}

/// Drop `value` (a deleted container's descriptors, say) on the thread.
pub fn drop_soon<T: Send + 'static>(value: T) {
    soon(Box::new(move || drop(value)));
}

/// Queue `job` for the thread, starting it when it does not run; run it
/// here when no thread starts.
fn soon(job: Job) {
    REMOVING.started();
    let mut queue = QUEUE.lock().unwrap_or_else(|p| p.into_inner());
    queue.jobs.push_back(job);
    if queue.worker {
        return;
    }
    match crate::fork_guard::spawn("state-removal".into(), run_queued) {
        Ok(_) => queue.worker = true,
        Err(_) => {
            let jobs = std::mem::take(&mut queue.jobs);
            drop(queue);
            for job in jobs {
                job();
                REMOVING.done();
            }
        }
    }
}

/// The thread: the queued work, oldest first, until none is left.
fn run_queued() {
    loop {
        let job = {
            let mut queue = QUEUE.lock().unwrap_or_else(|p| p.into_inner());
            match queue.jobs.pop_front() {
                Some(job) => job,
                None => {
                    queue.worker = false;
                    return;
                }
            }
        };
        job();
        REMOVING.done();
    }
}

/// Wait until the queued work is done, at most `limit`; false when some
/// is not yet.
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
    fn values_are_dropped_in_the_order_given() {
        struct Noted(usize, std::sync::Arc<Mutex<Vec<usize>>>);
        impl Drop for Noted {
            fn drop(&mut self) {
                self.1.lock().unwrap().push(self.0);
            }
        }
        let dropped = std::sync::Arc::new(Mutex::new(Vec::new()));
        for n in 0..50 {
            drop_soon(Noted(n, dropped.clone()));
        }
        assert!(wait_for_removals(Duration::from_secs(5)), "dropped within 5 s");
        assert_eq!(*dropped.lock().unwrap(), (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn what_a_gone_shim_left_aside_is_swept_and_a_live_ones_is_not() {
        let root = tempfile::tempdir().expect("tempdir");
        // A pid that was and is no more: a child reaped.
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let gone = child.id();
        child.wait().expect("reap");
        let ours = std::process::id();
        let names = [
            format!("{ASIDE_PREFIX}web-{gone}-17"),
            format!("{ASIDE_PREFIX}my-app-{ours}-18"),
            format!("{ASIDE_PREFIX}init-1-19"),
            "live-container".to_string(),
            format!("{ASIDE_PREFIX}odd"),
        ];
        for name in &names {
            std::fs::create_dir_all(root.path().join(name).join("sub")).unwrap();
        }
        sweep_left_aside(root.path());
        let mut left: Vec<String> =
            std::fs::read_dir(root.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let mut expected: Vec<String> = names[1..].to_vec();
        expected.sort();
        assert_eq!(left, expected, "only the gone shim's is removed");
    }

    #[test]
    fn the_owner_is_read_from_the_aside_name() {
        let dir = Path::new("/run/hybrid/default/my-app-2");
        let aside = aside_name(dir).expect("an aside name");
        let name = aside.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(aside_owner(&name), Some(std::process::id() as i32));
        assert_eq!(aside_owner("my-app-2"), None);
        assert_eq!(aside_owner(".deleted-x-0-5"), None);
        assert_eq!(aside_owner(".deleted--12-5"), None);
    }

    #[test]
    fn the_wait_before_exit_includes_work_held_for_it() {
        let held = BeforeExit::new();
        assert!(!wait_for_removals(Duration::from_millis(50)), "not over while held");
        drop(held);
        assert!(wait_for_removals(Duration::from_secs(5)), "over once dropped");
    }

    #[test]
    fn a_missing_directory_is_no_error() {
        let root = tempfile::tempdir().expect("tempdir");
        remove_dir_soon(&root.path().join("gone")).expect("nothing to remove");
    }
}
