//! Where a process with threads must clone anyway. libcontainer clones with
//! the raw system call, which copies one thread and takes none of glibc's
//! fork-time locks (see clone_job.rs). The shim hands those clones to its
//! spawner; a process without one (the `hybrid` command's one-shot runs, a
//! shim run with HYBRID_SPAWNER=off) runs them in a forked copy of itself
//! ([`in_forked_copy`]): glibc's `fork` takes and resets malloc's and
//! stdio's locks, and the copy has a single thread. Rust's own locks are
//! not reset: a thread that starts or ends at the instant of the fork can
//! still leave one held, which is why the shim has the spawner.
//!
//! Locks of ours that the copy uses are kept apart from the fork by an
//! `RwLock`: the fork takes it for writing; the threads hybrid starts take
//! it for reading while they start, and so does the shim's use of the wasm
//! engine it shares with the containers (wasmtime's registries have locks
//! of their own).

use std::os::fd::AsRawFd;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

static FORK: RwLock<()> = RwLock::new(());

/// The longest answer a forked copy sends (a pid, or an error's message):
/// written at once into an empty pipe, it never blocks the copy.
const MAX_ANSWER: usize = 16 * 1024;
/// How long a forked copy may take: libcontainer's own waits are shorter,
/// so a copy still there after this is stuck.
const COPY_TIMEOUT: Duration = Duration::from_secs(120);

/// Held while a forked copy is made: no thread of ours is starting meanwhile.
fn for_fork() -> RwLockWriteGuard<'static, ()> {
    FORK.write().unwrap_or_else(|p| p.into_inner())
}

/// Held while a shim thread uses state a clone will use too (the shared
/// wasm engine): no copy is forked meanwhile.
pub(crate) fn for_shared_state() -> RwLockReadGuard<'static, ()> {
    for_spawn()
}

fn for_spawn() -> RwLockReadGuard<'static, ()> {
    FORK.read().unwrap_or_else(|p| p.into_inner())
}

/// `std::thread::Builder::spawn`, never at the same time as a fork.
pub fn spawn<F>(name: String, f: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let _guard = for_spawn();
    std::thread::Builder::new().name(name).spawn(f)
}

/// Run `work` (libcontainer's create or exec, which clone) in a forked,
/// single-threaded copy of this process, and return what it answered.
/// The processes it leaves running (a container's init, an exec) are its
/// children until it exits, then this process's: it is a child subreaper
/// (the shim, the `hybrid` command's one-shot runs). Even a process with
/// a single thread forks: the work changes the process it runs in (a
/// create joins the container's cgroups and leaves for its mount
/// namespace), which must be a copy that exits after it.
pub(crate) fn in_forked_copy<T, F>(work: F) -> Result<T, String>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, String>,
{
    // The answer's pipe: its write end also reaches the container's
    // processes through their clones (until they exec), so the answer is
    // read once the copy has exited, not at end of file.
    let (answer_read, answer_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).map_err(|e| format!("cannot create a pipe: {e}"))?;
    let guard = for_fork();
    // SAFETY: glibc's fork takes malloc's and stdio's locks around the fork
    // and resets them in the child, and the guard keeps our own threads from
    // starting or using the shared engine meanwhile. The child runs only
    // `work` (which takes no lock of the shim's: its logging writes without
    // one, see the shim's init_logging) and then `_exit`s.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(answer_read);
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|_| Err("panicked".to_string()));
            let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
            if bytes.len() > MAX_ANSWER {
                bytes = serde_json::to_vec(&Err::<T, String>("answer too long".to_string())).unwrap_or_default();
            }
            let _ = nix::unistd::write(&answer_write, &bytes);
            // SAFETY: _exit ends the copy without destructors or atexit
            // handlers (what `work` made lives on; nothing may delete it).
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(guard);
            drop(answer_write);
            wait_for_exit(child)?;
            let mut bytes = vec![0u8; MAX_ANSWER];
            let len = match nix::unistd::read(answer_read.as_raw_fd(), &mut bytes) {
                Ok(len) if len > 0 => len,
                _ => return Err("the forked process ended without an answer".to_string()),
            };
            serde_json::from_slice::<Result<T, String>>(&bytes[..len]).map_err(|e| format!("bad answer from the forked process: {e}"))?
        }
        Err(e) => Err(format!("cannot fork: {e}")),
    }
}

/// Wait until `child` has exited, reaped by us or by the caller's reaper
/// (the shim's reaps every child): a pidfd tells either way.
fn wait_for_exit(child: nix::unistd::Pid) -> Result<(), String> {
    // The child cannot have been reaped yet: it has not answered.
    let pidfd = crate::fds::pidfd(child).map_err(|e| format!("cannot watch the forked process: {e}"))?;
    match crate::fds::readable_within(&pidfd, COPY_TIMEOUT) {
        Ok(true) => {}
        Ok(false) => {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            return Err(format!("the forked process took over {} s and was killed", COPY_TIMEOUT.as_secs()));
        }
        Err(e) => return Err(format!("cannot wait for the forked process: {e}")),
    }
    // Reap it, unless a reaper did; ECHILD then.
    let _ = nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test harness has threads: the work runs in a forked copy.
    fn with_a_second_thread<T>(f: impl FnOnce() -> T) -> T {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = stopped.recv();
        });
        let out = f();
        drop(stop);
        let _ = thread.join();
        out
    }

    #[test]
    fn a_multi_threaded_process_runs_the_work_in_a_copy_and_gets_its_answer() {
        let ours = std::process::id();
        let theirs = with_a_second_thread(|| in_forked_copy(|| Ok(std::process::id())));
        let theirs = theirs.expect("answer");
        assert_ne!(theirs, ours, "the work ran in another process");
    }

    #[test]
    fn the_copy_s_error_and_panic_come_back_as_errors() {
        let failed = with_a_second_thread(|| in_forked_copy::<u32, _>(|| Err("no such container".to_string())));
        assert_eq!(failed, Err("no such container".to_string()));
        let panicked = with_a_second_thread(|| in_forked_copy::<u32, _>(|| panic!("boom")));
        assert_eq!(panicked, Err("panicked".to_string()));
    }

    #[test]
    fn a_copy_that_dies_without_answering_is_an_error_not_a_hang() {
        let died = with_a_second_thread(|| {
            in_forked_copy::<u32, _>(|| {
                // SAFETY: ends the forked copy at once.
                unsafe { libc::_exit(3) }
            })
        });
        assert_eq!(died, Err("the forked process ended without an answer".to_string()));
    }
}
