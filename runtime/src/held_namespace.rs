//! Keeping a container's mount namespace alive past its init's exit.
//!
//! The last process to leave a mount namespace tears it down inside its
//! exit: every mount in it is unmounted, and the kernel then waits for an
//! expedited RCU grace period (`namespace_unlock`) before the parent is
//! told of the exit. That wait sat between a container's last instruction
//! and the SIGCHLD that lets the shim answer Wait: 0.3 to 0.5 ms on the idle
//! 2-core test machine, several ms while a cold start keeps both cores
//! busy (seen in sched_switch stacks: `synchronize_rcu_expedited` from
//! `free_nsproxy` in `do_exit`). A descriptor of the namespace, held by the
//! shim from Create, makes the exit only drop a reference; the teardown
//! then runs where the descriptor is closed, on a thread of the shim's
//! after the exit was reported ([`HeldMountNamespace`]'s drop).

use std::fs::File;

/// A descriptor of a container's mount namespace. Dropping it may tear the
/// namespace down and wait for the kernel: drop it off any request's path.
#[derive(Debug)]
pub struct HeldMountNamespace(#[allow(dead_code)] File);

impl HeldMountNamespace {
    /// Hold the mount namespace of process `pid`; None when it cannot be
    /// opened (the process is gone): the exit then tears it down, as it
    /// always did.
    pub fn of(pid: i32) -> Option<Self> {
        match File::open(format!("/proc/{pid}/ns/mnt")) {
            Ok(file) => Some(Self(file)),
            Err(e) => {
                tracing::debug!("cannot hold the mount namespace of pid {pid}: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn it_holds_the_namespace_the_process_is_in() {
        let held = HeldMountNamespace::of(std::process::id() as i32).expect("own mount namespace");
        let own = std::fs::metadata("/proc/self/ns/mnt").expect("own namespace");
        let meta = held.0.metadata().expect("held namespace");
        assert_eq!((meta.dev(), meta.ino()), (own.dev(), own.ino()));
    }

    #[test]
    fn a_process_that_is_gone_gives_none() {
        // Pids never go above the kernel's pid_max (at most 2^22).
        assert!(HeldMountNamespace::of(1 << 23).is_none());
    }
}
