//! Run one container to completion from this process, for callers that are
//! not a shim (`hybrid build`'s RUN): the same decision, the same
//! [`HybridContainer`] lifecycle, then a wait for the init process and a
//! delete that always happens.
//!
//! libcontainer clones the init process as a sibling of its intermediate
//! process (`CLONE_PARENT`), so the init process is a child of the caller and
//! the caller reaps it here. The caller also becomes a child subreaper, so
//! that nothing the container leaves behind is reparented past it.
//!
//! Callers must not start or end threads while this runs: libcontainer
//! clones without fork's safeguards and its intermediate process leaves by
//! `std::process::exit`, whose clean-up takes a lock of Rust's runtime that
//! a thread starting or ending at the moment of the clone holds forever in
//! the clone. Hence no thread here: the wait polls, and `while_running` is
//! called between polls (to copy the output, say).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::container::{ContainerConfig, ContainerError, HybridContainer};
use crate::workload::{decide, WorkloadError, WorkloadKind};

#[derive(Debug, thiserror::Error)]
pub enum OneshotError {
    #[error("cannot load the container spec {path:?}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("container {0}: no init process after create")]
    NoPid(String),
    #[error("container {id}: cannot wait for its init process {pid}: {source}")]
    Wait { id: String, pid: i32, source: Errno },
    #[error("container {0}: interrupted (killed and deleted)")]
    Interrupted(String),
}

/// Set from a signal handler to stop the container being run: it is killed
/// and deleted like any other, and the run ends as interrupted.
static CANCEL: AtomicBool = AtomicBool::new(false);

/// Ask [`run_to_completion`] to kill its container and return. Only an
/// atomic store: safe to call from a signal handler.
pub fn request_cancel() {
    CANCEL.store(true, Ordering::SeqCst);
}

fn cancel_requested() -> bool {
    CANCEL.load(Ordering::SeqCst)
}

/// How a container's init process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// What the decision made of the entrypoint.
    pub kind: WorkloadKind,
    /// The exit status, or 128 + the signal that ended it (as shells say).
    pub code: i32,
}

/// How often the wait looks at the init process.
const POLL: Duration = Duration::from_millis(20);

/// Decide, create, start and wait for the container of `config` (whose
/// bundle holds config.json and whose rootfs is mounted), then delete it
/// (its cgroup and state) whatever happened. `while_running` is called
/// every few milliseconds until the init process has exited.
pub fn run_to_completion(config: &ContainerConfig, mut while_running: impl FnMut()) -> Result<Completed, OneshotError> {
    let path = config.bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| OneshotError::Spec { path, message: e.to_string() })?;
    let workload = decide(&spec, &config.rootfs)?;
    let kind = workload.kind;
    become_subreaper();
    let mut container = HybridContainer::create(config, workload)?;
    let result = match container.pid() {
        Some(pid) => start_and_wait(&mut container, pid, &mut while_running),
        None => Err(OneshotError::NoPid(config.id.clone())),
    };
    let result = match result {
        Ok(_) if cancel_requested() => Err(OneshotError::Interrupted(config.id.clone())),
        other => other,
    };
    let deleted = container.delete();
    if result.is_err() {
        // The init process may still be there (start failed): delete killed
        // it; reap it so no zombie is left.
        if let Some(pid) = container.pid() {
            reap_within(Pid::from_raw(pid), Duration::from_secs(2));
        }
    }
    match (result, deleted) {
        (Ok(code), Ok(())) => Ok(Completed { kind, code }),
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(e), Err(delete_err)) => {
            tracing::warn!(id = %config.id, "cannot delete the container after a failure: {delete_err}");
            Err(e)
        }
        (Err(e), Ok(())) => Err(e),
    }
}

fn start_and_wait(container: &mut HybridContainer, pid: i32, while_running: &mut dyn FnMut()) -> Result<i32, OneshotError> {
    if cancel_requested() {
        return Err(OneshotError::Interrupted(container.id().to_string()));
    }
    container.start()?;
    let pid = Pid::from_raw(pid);
    let mut killed = false;
    loop {
        // __WALL: the init process was cloned without an exit signal of its own.
        match waitpid(pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(WaitStatus::StillAlive) => {
                if cancel_requested() && !killed {
                    killed = true;
                    if let Err(e) = container.kill(libc::SIGKILL as u32, true) {
                        tracing::warn!(id = %container.id(), "cannot kill the interrupted container: {e}");
                    }
                }
                while_running();
                std::thread::sleep(POLL);
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(source) => {
                return Err(OneshotError::Wait { id: container.id().to_string(), pid: pid.as_raw(), source });
            }
        }
    }
}

/// Reap `pid` if it exits within `limit` (after a kill).
fn reap_within(pid: Pid, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => std::thread::sleep(Duration::from_millis(10)),
            _ => return,
        }
    }
}

/// Orphans of the container's processes come to this process, not to the
/// host's init.
fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and changes only
    // this process's reaper attribute; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!("cannot become a child subreaper: {}", std::io::Error::last_os_error());
    }
}
