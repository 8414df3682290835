//! Overlapping the kernel's wait at a container's first cgroup join with
//! the work before it.
//!
//! Moving a process into a cgroup (a write to `cgroup.procs`) takes the
//! kernel's cgroup_threadgroup_rwsem for writing. That per-cpu rwsem makes
//! its first writer after a quiet spell wait for an RCU grace period
//! (10-15 ms on the 2-core test machine, cgroup v1 or v2 alike); writers
//! that come while one is waiting, or shortly after, share that grace
//! period. A container's process joins its cgroups deep in libcontainer,
//! some 10-15 ms after Create or Exec arrives (rootfs, spec, module cache,
//! clones): it paid the whole wait on top. Here a thread of the shim
//! "moves" the shim into the cgroup it is already in (the kernel changes
//! nothing, but takes the lock) as the request arrives, so that the grace
//! period runs meanwhile and the container's join finds it over or nearly.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use libcgroups::common::CgroupSetup;
use libcgroups::v1::ControllerType;

/// The shim's own `cgroup.procs`, found once (None: no cgroup to rejoin).
static OWN_PROCS: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Start the grace period a cgroup join is about to wait for, in the
/// background. Best effort: any failure only loses the overlap.
pub fn start_grace_period() {
    let spawned = crate::fork_guard::spawn("cgroup-join".into(), || {
        // Paths and the open allocate: not while a clone is being taken
        // (see fork_guard). The write, which waits, holds no lock of ours
        // and allocates nothing (the pid is formatted on the stack).
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
        let _ = (&file).write_all(&pid.get_ref()[..len]);
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
