//! Keeping the kernel's wait at a container's cgroup join off its start.
//!
//! Moving a process into a cgroup (a write to `cgroup.procs`) takes the
//! kernel's cgroup_threadgroup_rwsem for writing. That per-cpu rwsem makes
//! its first writer after a quiet spell wait for an RCU grace period (6 to
//! 27 ms measured on the 2-core test machine, cgroup v1 or v2 alike);
//! writers that come while one waits share that grace period, and writers
//! that come within a grace period of the last one leaving wait for none.
//! A container's process joins its cgroups deep in libcontainer (which
//! writes its pid, the form that takes the lock), some 5-15 ms after Create
//! or Exec arrives: it paid the whole wait on top. Here a thread of the
//! shim "moves" the shim into the cgroup it is already in (the kernel
//! changes nothing, but takes the lock) from the moment the request
//! arrives, again every millisecond while the window is open: the grace
//! period runs meanwhile, and the lock then never goes quiet before the
//! container's join.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libcgroups::common::CgroupSetup;
use libcgroups::v1::ControllerType;

/// The shim's own `cgroup.procs`, found once (None: no cgroup to rejoin).
static OWN_PROCS: OnceLock<Option<PathBuf>> = OnceLock::new();

/// How often the window's thread takes the lock: well inside the shortest
/// grace period seen (6 ms), so that the lock never goes quiet.
const REJOIN_EVERY: Duration = Duration::from_millis(1);

/// While alive (and `longest` at most), a cgroup join waits for no grace
/// period. Dropped: the thread stops at its next round. Best effort: any
/// failure only loses the overlap.
pub struct JoinWindow {
    closed: Arc<AtomicBool>,
}

/// Longest a request's window stays open: a Create or Exec that takes
/// longer (a module compiled, an image's slow disk) has joined already or
/// pays one wait.
const REQUEST_WINDOW: Duration = Duration::from_secs(2);

impl JoinWindow {
    /// Open the window for the join of the Create or Exec being served.
    pub fn for_request() -> Self {
        let closed = Arc::new(AtomicBool::new(false));
        keep_lock_warm(REQUEST_WINDOW, closed.clone());
        Self { closed }
    }
}

impl Drop for JoinWindow {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// Open a window that closes by itself after `longest`: for a shim that
/// has just started and is about to be sent its first Create.
pub fn open_window_for(longest: Duration) {
    keep_lock_warm(longest, Arc::new(AtomicBool::new(false)));
}

/// Start the grace period from a short-lived child process, for a
/// process that is about to exit and must not wait: the shim's `start`,
/// whose container's Create follows within milliseconds. Only for a
/// single-threaded process (the child runs in a copy of its memory).
pub fn start_grace_period_in_child() {
    // SAFETY: the caller is single-threaded (see above), so the child's
    // copy of its memory holds no lock of a thread missing there.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // Let go of the caller's stdio first: its reader (containerd
            // reading `start`) waits for every holder to close them.
            let _ = crate::fds::stdio_to_dev_null();
            if let Some(procs) = own_cgroup_procs() {
                let _ = std::fs::write(procs, std::process::id().to_string());
            }
            // SAFETY: _exit ends this child without running the parent's
            // atexit handlers or flushing its copies of the parent's buffers.
            unsafe { libc::_exit(0) };
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {}
        Err(e) => tracing::debug!("no cgroup join child: {e}"),
    }
}

fn keep_lock_warm(longest: Duration, closed: Arc<AtomicBool>) {
    let spawned = crate::fork_guard::spawn("cgroup-join".into(), move || {
        // Paths and the open allocate: not while a clone is being taken
        // (see fork_guard). The writes, which wait, hold no lock of ours
        // and allocate nothing (the pid is formatted on the stack).
        let file = {
            let _no_clone = crate::fork_guard::for_shared_state();
            let Some(procs) = OWN_PROCS.get_or_init(own_cgroup_procs) else { return };
            match std::fs::OpenOptions::new().write(true).open(procs) {
                Ok(file) => file,
                Err(e) => return tracing::debug!("cannot open {procs:?} to rejoin: {e}"),
            }
        };
        let mut pid = std::io::Cursor::new([0u8; 16]);
        let _ = write!(pid, "{}", std::process::id());
        let len = pid.position() as usize;
        let until = Instant::now() + longest;
        loop {
            if (&file).write_all(&pid.get_ref()[..len]).is_err() {
                return;
            }
            if closed.load(Ordering::Relaxed) || Instant::now() >= until {
                return;
            }
            std::thread::sleep(REJOIN_EVERY);
        }
    });
    if let Err(e) = spawned {
        tracing::debug!("no cgroup join thread: {e}");
    }
}

/// `cgroup.procs` of the cgroup this process is in: in the unified
/// hierarchy on cgroup v2, in the pids hierarchy on v1 (any hierarchy
/// would do: the lock is one for all).
fn own_cgroup_procs() -> Option<PathBuf> {
    let own = procfs::process::Process::myself().ok()?.cgroups().ok()?.0;
    let (mount, pathname) = match libcgroups::common::get_cgroup_setup().ok()? {
        CgroupSetup::Unified => {
            let entry = own.into_iter().find(|c| c.hierarchy == 0)?;
            (libcgroups::v2::util::get_unified_mount_point().ok()?, entry.pathname)
        }
        CgroupSetup::Legacy | CgroupSetup::Hybrid => {
            let entry = own.into_iter().find(|c| c.controllers.iter().any(|k| k == "pids"))?;
            (libcgroups::v1::util::get_subsystem_mount_point(&ControllerType::Pids).ok()?, entry.pathname)
        }
    };
    Some(mount.join(pathname.trim_start_matches('/')).join("cgroup.procs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_cgroup_procs_lists_this_process() {
        // Every Linux host hybrid supports has a pids hierarchy (v1) or the
        // unified one (v2): the path must be found and hold this process.
        let procs = own_cgroup_procs().expect("this process's cgroup.procs");
        let listed = std::fs::read_to_string(&procs).expect("readable cgroup.procs");
        let pid = std::process::id().to_string();
        assert!(listed.lines().any(|line| line == pid), "{procs:?} does not list {pid}");
    }
}
