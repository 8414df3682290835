//! The serving shim's main loop: containerd-shim's own, but with ttrpc's
//! asynchronous server.
//!
//! containerd opens a connection to the shim for every task, also when one
//! shim serves a group, and ttrpc's synchronous server (containerd-shim's
//! `run`) gives each connection threads of its own for the container's
//! whole life; its asynchronous one keeps none (see task_async.rs).
//! containerd-shim's `run` serves only the synchronous way, so the serving
//! path is here: `start` (main.rs) binds the socket and forks the serving
//! process; `delete` still goes through `run`.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use containerd_shim::protos::shim_async::create_task;
use containerd_shim::protos::ttrpc::asynchronous::Server;
use containerd_shim::{Config, Error, Flags, Shim};
use oci_spec::runtime::Spec;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::{SIGCHLD, SIGINT, SIGPIPE, SIGTERM};
use signal_hook::iterator::Signals;

use hybrid_runtime::state_in_memory::{keep_in_memory, StateRoot, SHIM_STATE_ROOT};

use crate::shim::{shim_answers, socket_path, HybridShim};
use crate::task_async::AsyncTaskService;

/// How long a thread of the blocking pool that answers the task calls
/// (task_async.rs) stays once idle: long enough for a task's Create, Start
/// and first Stats to share one.
const CALL_THREAD_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long after the shim starts its first Create is expected.
const FIRST_CREATE_WITHIN: std::time::Duration = std::time::Duration::from_millis(100);

/// Serve containerd on `listener`, the group's socket that `start` bound
/// (`flags.socket` names it) before forking this process, until the shim
/// is told to exit (the last container of its group deleted, or Shutdown).
/// `first_spec` is the spec of the container it starts for.
pub fn serve(runtime_id: &str, flags: &Flags, mut config: Config, listener: UnixListener, first_spec: Option<&Spec>) -> Result<(), Error> {
    if flags.namespace.is_empty() {
        return Err(Error::InvalidArgument("shim namespace cannot be empty".into()));
    }
    // Where containerd takes events, as containerd-shim reads it.
    let ttrpc_address =
        std::env::var("TTRPC_ADDRESS").map_err(|e| Error::InvalidArgument(format!("TTRPC_ADDRESS: {e}")))?;
    // Before any thread exists, as signal-hook asks. SIGPIPE is taken so
    // that a write to a closed socket fails instead of ending the shim.
    let signals = Signals::new([SIGTERM, SIGINT, SIGPIPE, SIGCHLD])
        .map_err(|e| Error::Other(format!("cannot handle signals: {e}")))?;
    // containerd sends the first Create within milliseconds: its cgroup
    // join should find the kernel's grace period over (see
    // hybrid_runtime::cgroup_join).
    hybrid_runtime::cgroup_join::open_window_for(FIRST_CREATE_WITHIN);
    // Orphaned container processes are reparented here, to be reaped.
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(Error::Other(format!("cannot become a subreaper: {}", std::io::Error::last_os_error())));
    }
    // A wasm process cloned from this one without the spawner keeps the
    // runtime's descriptors (see hybrid_runtime::fds::keep_in_clones), and
    // the log fifo its copy of the logger writes to (closed, its number
    // could be taken by a file of the guest's).
    let ((mut shim, runtime), kept) = hybrid_runtime::fds::opened_by(|| {
        let shim = HybridShim::new(runtime_id, flags, &mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ttrpc")
            .thread_keep_alive(CALL_THREAD_IDLE)
            .enable_io()
            .enable_time()
            .build();
        (shim, runtime)
    });
    let runtime = runtime.map_err(|e| Error::Other(format!("cannot start the ttrpc runtime: {e}")))?;
    // The blocking pool's first thread, where the calls are answered
    // (task_async.rs), started while this thread goes on to serve
    // (containerd's Create is already on its way), not by that call.
    runtime.spawn_blocking(|| ());
    // Before the first Create can be served (containerd's connection waits
    // for the server below); a state root left on disk still serves.
    match keep_in_memory(Path::new(SHIM_STATE_ROOT)) {
        Ok(StateRoot::Mounted) => tracing::info!("container state kept on a tmpfs mounted at {SHIM_STATE_ROOT}"),
        Ok(StateRoot::OnDiskInUse) => {
            tracing::info!("container state stays on disk at {SHIM_STATE_ROOT}: containers of an earlier shim are there")
        }
        Ok(StateRoot::InMemory) => {}
        Err(e) => tracing::warn!("container state stays where it is: {e}"),
    }
    hybrid_runtime::fds::keep_in_clones(kept);
    // The first container's cgroups and their manager are made while it is
    // served, where its spec says it is wasm (see
    // hybrid_runtime::first_cgroups); not before the listing above, which
    // the manager's thread's own descriptors would blur.
    if let Some(spec) = first_spec {
        hybrid_runtime::first_cgroups::start(spec, &flags.id);
    }
    let task = create_task(Arc::new(AsyncTaskService::new(shim.task_service(runtime.handle(), ttrpc_address))));
    // Serves for as long as it lives: to the exit below.
    let _server = runtime.block_on(async {
        let listen_err = |e: std::io::Error| Error::Other(format!("cannot serve on {}: {e}", flags.socket));
        listener.set_nonblocking(true).map_err(listen_err)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(listen_err)?;
        let mut server = Server::new().add_listener(crate::whole_frames::listener(listener)).register_service(task);
        server.start().await?;
        Ok::<_, Error>(server)
    })?;
    tracing::info!("shim serving on {}", flags.socket);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || handle_signals(signals))
        .map_err(|e| Error::Other(format!("cannot start the signal thread: {e}")))?;
    shim.wait();
    tracing::info!("shim shutting down");
    let address = containerd_shim::util::read_address().unwrap_or_else(|_| flags.socket.clone());
    let _ = std::fs::remove_file(socket_path(&address));
    // Shutdown has been answered and containerd goes on (it closes the
    // connection itself): the deleted containers' state and descriptors
    // still being removed are finished first (see
    // hybrid_runtime::deferred_removal).
    // Cgroups made ahead for a Create that never came go too.
    hybrid_runtime::first_cgroups::forget();
    if !hybrid_runtime::deferred_removal::wait_for_removals(crate::service::SHUTDOWN_WAIT_LIMIT) {
        tracing::warn!("container state still being removed at exit is left");
    }
    // Nothing is left to serve (Shutdown found no container, and flushed
    // the events): exit now, without the server's orderly shutdown and the
    // runtime's drop, which joins its threads (about 1 ms). containerd
    // execs `delete` once this process's connection closes, and takes a
    // connection closed before Shutdown's answer as that answer.
    std::process::exit(0);
}

/// Bind the group's socket; None when a live shim already listens on it.
/// A socket file left by a shim that is gone is replaced.
pub fn listen(address: &str) -> Result<Option<UnixListener>, Error> {
    let path = Path::new(socket_path(address));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::Other(format!("cannot create {dir:?}: {e}")))?;
    }
    let bind_err = |e: std::io::Error| Error::Other(format!("cannot listen on {path:?}: {e}"));
    match UnixListener::bind(path) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if shim_answers(address) {
                return Ok(None);
            }
            std::fs::remove_file(path).map_err(bind_err)?;
            UnixListener::bind(path).map(Some).map_err(bind_err)
        }
        Err(e) => Err(bind_err(e)),
    }
}

/// Which side of `fork_server` a process is on.
pub enum Forked {
    /// The `start` process: it tells containerd the address and exits.
    Start,
    /// The serving shim, detached from containerd.
    Server,
}

/// Fork the serving shim from `start` instead of executing the binary a
/// second time (about 2 ms and a hundred page faults less per pod).
/// The child leaves containerd's session and lets go of the pipes that
/// containerd reads `start`'s output from: containerd waits for every
/// holder to close them.
pub fn fork_server() -> Result<Forked, Error> {
    // SAFETY: `start` runs on its main thread alone (no logger, no runtime,
    // no other thread), so the child's copy of its memory holds no lock of a
    // thread missing there.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(Error::Other(format!("cannot fork the serving shim: {e}"))),
        Ok(nix::unistd::ForkResult::Parent { .. }) => Ok(Forked::Start),
        Ok(nix::unistd::ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            if hybrid_runtime::fds::stdio_to_dev_null().is_err() {
                // Without /dev/null containerd would wait for this process
                // forever: closing is the next best.
                for fd in 0..3 {
                    // SAFETY: closes this process's standard descriptors.
                    unsafe { libc::close(fd) };
                }
            }
            Ok(Forked::Server)
        }
    }
}

/// The forked shim keeps `start`'s command line, which `ps` would show as
/// a `start` still running: its last argument is rewritten in place to
/// `serve` (the kernel reads a command line from the process's memory).
/// Only when the memory holds exactly `start` where it should.
pub fn show_as_serving() {
    extern "C" {
        // glibc's pointer to argv[0], the first of the argument strings
        // the kernel laid out back to back, each ending in a NUL.
        static program_invocation_name: *mut libc::c_char;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.last().map(|a| a.as_os_str()) != Some(std::ffi::OsStr::new("start")) {
        return;
    }
    let offset: usize = args[..args.len() - 1].iter().map(|a| a.len() + 1).sum();
    // SAFETY: argv[0] to the last argument's NUL is one writable block of
    // this process's stack (see above) of `offset` + 6 bytes, the lengths
    // args_os copied from it at startup; the bytes are checked to be
    // `start` and its NUL before five of them are overwritten, in place.
    unsafe {
        let last = program_invocation_name.add(offset).cast::<u8>();
        if std::slice::from_raw_parts(last, 6) == b"start\0" {
            std::ptr::copy_nonoverlapping(b"serve".as_ptr(), last, 5);
        }
    }
}

/// Reap every child that exits (containers' processes, reparented ones) and
/// report it to containerd-shim's monitor, where the exit watchers wait.
fn handle_signals(mut signals: Signals) {
    for signal in signals.forever() {
        if signal != SIGCHLD {
            // SIGTERM and SIGINT do not end a shim: containerd ends it
            // through Shutdown once its tasks are gone.
            tracing::debug!(signal, "signal received");
            continue;
        }
        loop {
            let exit = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as i32),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid: {e}");
                    break;
                }
            };
            if let Err(e) = containerd_shim::monitor::monitor_notify_by_pid(exit.0.as_raw(), exit.1) {
                tracing::error!("cannot report the exit of {}: {e}", exit.0);
            }
        }
    }
}
