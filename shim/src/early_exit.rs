//! A wasm init's exit, from its guest's report rather than from the reap.
//!
//! The init writes its guest's exit code on a pipe just before it exits
//! (hybrid_runtime::guest_report); the kernel's teardown of the process
//! comes after, and with it the SIGCHLD the exit watcher waits for. A task
//! of the shim's runtime waits on the pipe and records the exit at once:
//! TaskExit goes out and Wait is answered while the process is still being
//! torn down. The reap then finishes the exit (state.rs: the rootfs and
//! the held namespace) and says nothing more; Delete waits for it.

use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::events::EventSender;
use crate::state::{mark_exited, ExitKnownFrom, Shared};

/// Wait on the report pipe `fd` of container `id`'s init (a dup of its
/// read end) on `runtime`; the task ends at the report, at the pipe's EOF
/// (a guest killed before it reported), or when aborted by the handle
/// (the container deleted first).
pub fn watch_guest_report(runtime: &tokio::runtime::Handle, state: Shared, events: EventSender, id: String, fd: OwnedFd) -> tokio::task::AbortHandle {
    runtime
        .spawn(async move {
            // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, which owns
            // it: it stays open and the same descriptor until dropped.
            let pipe = match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
                Ok(pipe) => pipe,
                Err(e) => return tracing::debug!(id = %id, "cannot wait on the guest's report: {e}"),
            };
            if pipe.readable().await.is_err() {
                return;
            }
            record_reported_exit(&state, &events, &id);
        })
        .abort_handle()
}

/// Record the init's exit from its guest's report, if there is one and the
/// exit is not known yet.
fn record_reported_exit(state: &Shared, events: &EventSender, id: &str) {
    {
        let mut st = state.lock();
        let Some(entry) = st.containers.get_mut(id) else { return };
        let report = entry.container.guest_report();
        let Some(code) = report.exit_code else { return };
        let init = &mut entry.init;
        // A terminal's last output is drained by the reap's path.
        if !init.started || init.exited.is_some() || init.console.is_some() {
            return;
        }
        let oom = report.out_of_memory.then_some("wasm guest ran out of memory");
        // As the kernel will report it: the low 8 bits of the exit code.
        mark_exited(id, id, init, (code as u32) & 0xff, oom, ExitKnownFrom::GuestReport, events);
    }
    state.exits.send_modify(|n| *n = n.wrapping_add(1));
}
