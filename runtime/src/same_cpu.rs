//! Forking a child that starts on its parent's cpu.
//!
//! The spawner forks a creator and waits for it; the creator forks the
//! container's init and waits for it. The kernel starts a forked child on
//! the cpu it finds idlest, which is the other cpu when the parent's is
//! busy with the parent: the parent then sleeps at once, its cpu idles,
//! and the child waits for the other to wake. On a virtual machine an idle
//! vCPU is halted, and waking it goes through the host: a pipe round trip
//! between two processes took 0.64 ms median (2.1 ms p90, up to 11 ms)
//! across the test machine's two vCPUs against 0.016 ms on one, and
//! perf's sched traces of `ctr run` showed the creator's child started
//! 1.3 to 9.5 ms after its fork in half the runs. Pinned to the parent's
//! cpu for the fork, the child starts there as soon as the parent sleeps;
//! each side then takes back the cpu mask the parent had, so nothing runs
//! pinned (the kernel keeps a cpuset cgroup's bounds over any mask).
//! A thread whose long work runs beside that chain moves off its cpu
//! instead ([`move_off`]).

use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use nix::unistd::{fork, ForkResult, Pid};

/// The calling thread's cpu mask, while it is pinned to one cpu.
struct Pinned {
    before: CpuSet,
}

impl Pinned {
    /// Pin the calling thread to the cpu it runs on; None (nothing
    /// changed) when a call fails or the mask has one cpu already.
    fn here() -> Option<Self> {
        let before = sched_getaffinity(Pid::from_raw(0)).ok()?;
        let cpu = sched_getcpu().ok()?;
        if allowed(&before) <= 1 {
            return None;
        }
        let mut only = CpuSet::new();
        only.set(cpu).ok()?;
        sched_setaffinity(Pid::from_raw(0), &only).ok()?;
        Some(Self { before })
    }

    /// Take back the mask the thread had or, where that is refused (its
    /// cpuset changed meanwhile), every cpu: the kernel bounds the mask by
    /// the cpuset, and a parent left pinned would pin every later child.
    fn restore(self) -> nix::Result<()> {
        sched_setaffinity(Pid::from_raw(0), &self.before).or_else(|_| sched_setaffinity(Pid::from_raw(0), &every_cpu()?))
    }
}

/// How many cpus `mask` allows.
fn allowed(mask: &CpuSet) -> usize {
    (0..CpuSet::count()).filter(|&c| mask.is_set(c).unwrap_or(false)).count()
}

/// A mask of every cpu there can be: given to a thread, every cpu its
/// cpuset allows.
fn every_cpu() -> nix::Result<CpuSet> {
    let mut every = CpuSet::new();
    for cpu in 0..CpuSet::count() {
        every.set(cpu)?;
    }
    Ok(every)
}

/// Move the calling thread off `cpu` when it runs there and may run
/// elsewhere, its mask then taken back (the kernel leaves a running
/// thread where it is): for a thread's long work beside the chain of
/// forks above, which stays on the cpu of the thread that started it.
/// Placed by the kernel on that same cpu, such work made the chain wait
/// for it while the other cpu idled. Best effort: a failed call changes
/// nothing, or leaves every cpu the cpuset allows.
pub(crate) fn move_off(cpu: usize) {
    if current_cpu() != Some(cpu) {
        return;
    }
    let Ok(before) = sched_getaffinity(Pid::from_raw(0)) else { return };
    let mut others = before;
    if others.unset(cpu).is_err() || allowed(&others) == 0 {
        return;
    }
    if sched_setaffinity(Pid::from_raw(0), &others).is_ok() {
        if let Err(e) = (Pinned { before }).restore() {
            tracing::debug!("cannot take back the cpu mask after a move: {e}");
        }
    }
}

/// The cpu the calling thread runs on, if the kernel says.
pub(crate) fn current_cpu() -> Option<usize> {
    sched_getcpu().ok()
}

/// fork(2), the child started on the caller's cpu (see above). A child
/// that cannot take back its parent's cpu mask exits at once (status 1):
/// a container process must not run bound to one cpu.
///
/// # Safety
/// As [`nix::unistd::fork`]: the caller must be single-threaded, or the
/// child must call only async-signal-safe functions.
pub(crate) unsafe fn fork_on_this_cpu() -> nix::Result<ForkResult> {
    let pinned = Pinned::here();
    // SAFETY: forwarded to the caller's contract.
    let forked = unsafe { fork() };
    if let Some(pinned) = pinned {
        match (&forked, pinned.restore()) {
            (Ok(ForkResult::Child), Err(_)) => {
                const MESSAGE: &[u8] = b"hybrid: cannot take back the cpu mask after fork\n";
                // SAFETY: write and _exit are async-signal-safe; the buffer
                // is valid for its length.
                unsafe {
                    libc::write(libc::STDERR_FILENO, MESSAGE.as_ptr().cast(), MESSAGE.len());
                    libc::_exit(1)
                }
            }
            (_, Err(e)) => tracing::debug!("cannot take back the cpu mask after fork: {e}"),
            (_, Ok(())) => {}
        }
    }
    forked
}

#[cfg(test)]
mod tests {
    use super::*;
    // The masks a test changes are its own thread's; the harness's keep theirs.
    use crate::test_support::in_own_thread;

    fn mask() -> Vec<usize> {
        let set = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect()
    }

    #[test]
    fn parent_and_child_keep_the_parents_mask() {
        in_own_thread(|| {
            let before = mask();
            // SAFETY: the child only reads its mask and _exits.
            let forked = unsafe { fork_on_this_cpu() }.expect("fork");
            match forked {
                ForkResult::Child => {
                    let same = mask() == before;
                    // SAFETY: _exit ends the child at once.
                    unsafe { libc::_exit(if same { 0 } else { 3 }) }
                }
                ForkResult::Parent { child } => {
                    assert_eq!(mask(), before, "the parent is left pinned");
                    let status = nix::sys::wait::waitpid(child, None).expect("wait");
                    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0), "the child is left pinned");
                }
            }
        });
    }

    #[test]
    fn every_cpu_unpins_a_pinned_thread() {
        in_own_thread(|| {
            let before = mask();
            let pinned = Pinned::here();
            sched_setaffinity(Pid::from_raw(0), &every_cpu().expect("mask")).expect("every cpu");
            let after = mask();
            assert!(before.iter().all(|cpu| after.contains(cpu)), "{after:?} lacks some of {before:?}");
            drop(pinned);
        });
    }

    #[test]
    fn a_moved_thread_leaves_the_cpu_and_keeps_its_mask() {
        in_own_thread(|| {
            let before = mask();
            let cpu = sched_getcpu().expect("cpu");
            move_off(cpu);
            assert_eq!(mask(), before, "the mask is not taken back");
            if before.len() > 1 {
                assert_ne!(sched_getcpu().expect("cpu"), cpu, "still on cpu {cpu}");
            }
        });
    }

    #[test]
    fn one_cpu_allowed_is_left_alone() {
        in_own_thread(|| {
            let cpu = sched_getcpu().expect("cpu");
            let mut only = CpuSet::new();
            only.set(cpu).expect("set");
            sched_setaffinity(Pid::from_raw(0), &only).expect("pin");
            assert!(Pinned::here().is_none());
        });
    }
}
