//! What a wasm container's process prepares before Start.
//!
//! libcontainer's init, once confined (root pivoted, capabilities and
//! seccomp set), asks the executor to validate the spec, tells its creator
//! it is ready and waits for Start. Between that answer and Start,
//! containerd carries Create's answer to its client and Start's call back:
//! milliseconds in which the process only waits. Loading the program from
//! its compile cache entry and starting the WASI runtime take about a
//! millisecond that would otherwise come after Start; a thread started
//! from `validate` does them meanwhile ([`begin`]), and the executor takes
//! what it made after Start ([`take`]). Where the creator answers the shim
//! only once this process is ready, the thread first waits for the
//! creator's exit (on two cores, beside the creator, it slowed the answer
//! by as much as it saved); where the answer went at the fork
//! (ready_later.rs), Start waits for the creator anyway, and loading at
//! once took 0.3 ms off the runtime's part (80 A/B rounds). Only a
//! container's init prepares ahead: an exec
//! runs at once, and its creator waits for it.
//!
//! A thread beside libcontainer's own changes what the process may do
//! alone, so `begin` first does, on its one thread, what must not race:
//! it blanks the host's environment (while /proc still shows where it is)
//! and drops what an execve would drop of the capabilities, which are per
//! thread. Descriptors are the other care: the executor closes, after
//! Start, those the process inherited (see executor::close_cloexec_fds);
//! with the thread's own open by then (the entry's mapping, the runtime's
//! epoll), it closes exactly those listed here before the thread started,
//! each checked by device and inode so that a number reused by the thread
//! is never closed under it. Where they cannot be listed (no /proc), nothing
//! is prepared ahead.

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Mutex;
use std::thread::JoinHandle;

use wasmtime::component::Component;

use crate::wasm::{PrecompiledEntry, Program, WasmError, WasmSandbox};
use crate::workload::Workload;

/// What a wasm process runs, loaded ([`prepare`]).
pub(crate) enum Prepared {
    /// A WASI command, and the runtime wasmtime-wasi blocks on.
    Command { program: Program, runtime: tokio::runtime::Runtime },
    /// A wasi:http component, served on a runtime of its own (http.rs).
    HttpHandler(Component),
}

/// A descriptor this process inherited, as it was when listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inherited {
    fd: RawFd,
    dev: u64,
    ino: u64,
}

struct Ahead {
    thread: JoinHandle<Result<Prepared, WasmError>>,
    inherited: Vec<Inherited>,
}

/// The one preparation of this process, taken by the executor after Start.
static AHEAD: Mutex<Option<Ahead>> = Mutex::new(None);

/// Start preparing `workload`'s program in a thread; `keep` are the
/// descriptors the executor keeps open (see executor::close_cloexec_fds).
/// With `after_creator`, the thread first waits for the creator's exit
/// (its answer to the shim comes after this process is ready); without
/// (the answer went before, ready_later.rs), the shim's Start already
/// waits for the creator, and the program is better loaded by then.
/// Does nothing when the inherited descriptors cannot be listed or the
/// thread cannot start: the executor then does all of it after Start.
pub(crate) fn begin(workload: &Workload, precompiled: Option<&PrecompiledEntry>, keep: &[RawFd], after_creator: bool) {
    let Some(inherited) = list_inherited(keep) else { return };
    crate::guest_mounts::blank_host_environment();
    crate::executor::drop_capabilities_as_exec_would();
    let entrypoint = workload.entrypoint.clone();
    let serves_only_as_component = workload.export.is_none();
    let precompiled = precompiled.cloned();
    let creator = nix::unistd::getppid();
    let spawned = std::thread::Builder::new().name("wasm-ahead".into()).spawn(move || {
        // Its events would go to the shim's log, whose descriptor the
        // executor closes after Start.
        let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
        if after_creator {
            wait_for_exit(creator, CREATOR_WAIT);
        }
        prepare(&entrypoint, precompiled.as_ref(), serves_only_as_component)
    });
    match spawned {
        Ok(thread) => {
            if let Ok(mut ahead) = AHEAD.lock() {
                *ahead = Some(Ahead { thread, inherited });
            }
        }
        Err(e) => tracing::debug!("the wasm program is loaded after start: {e}"),
    }
}

/// What `begin` prepared, once its thread is done, after closing the
/// descriptors this process inherited (still the same objects) but `keep`;
/// None when nothing was prepared ahead.
pub(crate) fn take() -> Option<Result<Prepared, WasmError>> {
    let ahead = AHEAD.lock().ok()?.take()?;
    let prepared = ahead
        .thread
        .join()
        .unwrap_or_else(|_| Err(WasmError::Engine("the thread loading the wasm program panicked".to_string())));
    for inherited in ahead.inherited {
        if identify(inherited.fd) == Some((inherited.dev, inherited.ino)) {
            // SAFETY: the descriptor is still the object this process
            // inherited, which nothing in it uses any more (see the module
            // comment); the preparing thread has ended.
            unsafe { libc::close(inherited.fd) };
        }
    }
    Some(prepared)
}

/// How long the thread waits for the creator to be done.
const CREATOR_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Wait until process `pid` has exited, `longest` at most. The process that
/// made this one (libcontainer's creator) answers the shim once this
/// process is ready, covers its /proc and exits: on two cores, loading the
/// program beside that would only slow the answer down.
fn wait_for_exit(pid: nix::unistd::Pid, longest: std::time::Duration) {
    if let Ok(pidfd) = crate::fds::pidfd(pid) {
        let _ = crate::fds::readable_within(&pidfd, longest);
    }
}

/// Load the program at `entrypoint` (from its `precompiled` entry when
/// that loads) and tell what it is: a component that handles requests
/// instead of running (wasi:http/proxy) is served, unless an export is
/// named (`may_serve_http` false); anything else runs as a command, on a
/// WASI runtime started here. Ahead of Start on [`begin`]'s thread, or
/// after it.
pub(crate) fn prepare(entrypoint: &Path, precompiled: Option<&PrecompiledEntry>, may_serve_http: bool) -> Result<Prepared, WasmError> {
    let sandbox = WasmSandbox::shared()?;
    let program = sandbox.load(entrypoint, precompiled)?;
    if let Program::Component(component) = &program {
        if may_serve_http && crate::http::component_serves_http(sandbox.engine(), component) {
            return Ok(Prepared::HttpHandler(component.clone()));
        }
    }
    sandbox.link_ahead(entrypoint, &program)?;
    Ok(Prepared::Command { program, runtime: wasi_runtime()? })
}

/// The runtime wasmtime-wasi blocks on for WASI calls that wait (a sleep,
/// a read): the one current here, else a global one with a worker per
/// core. One worker is all a single guest needs, and every extra thread
/// costs this process a stack and a malloc arena.
fn wasi_runtime() -> Result<tokio::runtime::Runtime, WasmError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .enable_io()
        .build()
        .map_err(|e| WasmError::Engine(format!("cannot start the wasi runtime: {e}")))
}

/// The descriptors above stdio this process holds but `keep`, or None
/// when /proc does not list them.
fn list_inherited(keep: &[RawFd]) -> Option<Vec<Inherited>> {
    // The listing's own descriptor is closed by now: fstat fails on it.
    let inherited = crate::fds::listed_above_stdio()?
        .into_iter()
        .filter(|fd| !keep.contains(fd))
        .filter_map(|fd| identify(fd).map(|(dev, ino)| Inherited { fd, dev, ino }))
        .collect();
    Some(inherited)
}

fn identify(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: fstat writes into the zeroed stat buffer it is given, and
    // fails harmlessly on a closed descriptor.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above; `stat` outlives the call.
    (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some((stat.st_dev, stat.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn inherited_descriptors_are_listed_with_their_identity_and_kept_ones_left_out() {
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        let kept = std::fs::File::open("/dev/null").expect("/dev/null");
        let listed = list_inherited(&[kept.as_raw_fd()]).expect("/proc/self/fd lists");
        let entry = listed.iter().find(|i| i.fd == file.as_raw_fd()).expect("the open file is listed");
        assert_eq!(identify(file.as_raw_fd()), Some((entry.dev, entry.ino)));
        assert!(listed.iter().all(|i| i.fd != kept.as_raw_fd()), "a kept descriptor is not listed");
        assert!(listed.iter().all(|i| i.fd > 2), "stdio is not listed");
    }

    #[test]
    fn a_descriptor_reused_for_another_object_is_not_taken_for_the_inherited_one() {
        let first = std::fs::File::open("/dev/null").expect("/dev/null");
        let fd = first.as_raw_fd();
        let was = identify(fd).expect("open");
        let other = std::fs::File::open("/").expect("/");
        // The number now names another object, as when the preparing
        // thread opened one on a number libcontainer had closed.
        // SAFETY: dup2 replaces this test's own descriptor, which `first`
        // closes once more when dropped (harmlessly: it is still open).
        assert!(unsafe { libc::dup2(other.as_raw_fd(), fd) } == fd);
        assert_ne!(identify(fd), Some(was));
        assert_eq!(identify(fd), identify(other.as_raw_fd()));
    }
}
