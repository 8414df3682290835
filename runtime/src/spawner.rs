//! Wasm containers made by a process that stays as it started.
//!
//! A wasm container's process never execs: it is a clone of the process
//! that created it, sharing that process's pages copy-on-write. Cloned from
//! the shim, it would keep, as private copies, every page the busy shim
//! writes afterwards (its heap, the stacks of its ttrpc threads): hundreds
//! of KiB per idle container. So the shim forks a *spawner* first thing,
//! while it is small and single-threaded. The spawner makes the shared wasm
//! engine and then only waits: for each container it forks a short-lived
//! creator, which makes the container as the shim would (libcontainer's
//! clones included; the module already compiled by the shim), sends back
//! the guest's out-of-memory
//! pipe, and exits. The container's init process is then adopted by the
//! shim, a child subreaper, and the shim loads the container from its
//! state as if it had made it.
//!
//! Terminals and `binary://` log drivers keep state in the creating process
//! (a console's copy threads, the logger's process), so those containers,
//! and native ones, are still made in the shim.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use nix::sys::time::TimeVal;
use nix::unistd::{fork, ForkResult};
use serde::{Deserialize, Serialize};

use crate::container::{ContainerConfig, ContainerError, HybridContainer, SpecView};
use crate::wasm::CompiledEntry;
use crate::workload::Workload;

/// A request is a container's config: well under this.
const MAX_MESSAGE: usize = 256 * 1024;
/// How long the shim waits for a creator's answer: a create that takes
/// longer is stuck (libcontainer's own waits are shorter).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// The shim's end of the socket to its spawner.
static SPAWNER: OnceLock<Mutex<OwnedFd>> = OnceLock::new();

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    config: ContainerConfig,
    workload: Workload,
    image_port: Option<u16>,
    /// The module's compile cache entry, checked by the shim.
    compiled: Option<CompiledEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    /// Created; the out-of-memory pipe's read end comes with it.
    Created,
    Failed(String),
}

/// Fork the spawner. Call first thing in `main`, while the process is
/// single-threaded, and only in the process that will serve containers.
/// The calling process becomes a child subreaper: the init processes of
/// the spawner's containers are reparented to it when their creator exits.
pub fn start() -> std::io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag; no memory is
    // passed. Set before the fork: only processes forked after it are
    // reparented here (the kernel marks descendants at fork time).
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: the process is single-threaded (the caller's contract), so
    // the child may run any code, not just async-signal-safe functions.
    match unsafe { fork() }? {
        ForkResult::Parent { .. } => {
            drop(theirs);
            setsockopt(&ours, sockopt::ReceiveTimeout, &TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0))?;
            let _ = SPAWNER.set(Mutex::new(ours));
            Ok(())
        }
        ForkResult::Child => {
            drop(ours);
            serve(theirs)
        }
    }
}

/// Whether this process has a spawner (the shim, after [`start`]).
pub(crate) fn available() -> bool {
    SPAWNER.get().is_some()
}

/// Create the container of `config` through the spawner, then load it here.
/// `compiled` is the module's compile cache entry, checked by the caller;
/// `view` what the caller read of the spec.
pub(crate) fn create(
    config: &ContainerConfig,
    workload: &Workload,
    image_port: Option<u16>,
    compiled: Option<CompiledEntry>,
    view: SpecView,
) -> Result<HybridContainer, ContainerError> {
    let spawner_err = |message: String| ContainerError::Spawner { id: config.id.clone(), message };
    let socket = SPAWNER.get().ok_or_else(|| spawner_err("no spawner".to_string()))?;
    let request = Request { config: config.clone(), workload: workload.clone(), image_port, compiled };
    let bytes = serde_json::to_vec(&request).map_err(|e| spawner_err(e.to_string()))?;
    // One create at a time: a request and its answer share the socket.
    let socket = socket.lock().unwrap_or_else(|p| p.into_inner());
    sendmsg::<UnixAddr>(socket.as_raw_fd(), &[IoSlice::new(&bytes)], &[], MsgFlags::empty(), None)
        .map_err(|e| spawner_err(format!("cannot send the request: {e}")))?;
    let (answer, fds) = receive(socket.as_raw_fd()).map_err(|e| spawner_err(format!("no answer: {e}")))?;
    drop(socket);
    match serde_json::from_slice::<Answer>(&answer) {
        Ok(Answer::Created) => HybridContainer::adopt(config, fds.into_iter().next(), view),
        Ok(Answer::Failed(message)) => Err(spawner_err(message)),
        Err(e) => Err(spawner_err(format!("bad answer: {e}"))),
    }
}

/// One message and the descriptors that came with it.
fn receive(fd: RawFd) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<UnixAddr>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let len = msg.bytes;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: SCM_RIGHTS descriptors are new in this process and
            // owned by nobody else.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if len == 0 {
        return Err(nix::errno::Errno::ECONNRESET);
    }
    buf.truncate(len);
    Ok((buf, fds))
}

/// The spawner: make the engine, then a creator per request, until the
/// shim goes away.
fn serve(socket: OwnedFd) -> ! {
    // SAFETY: PR_SET_PDEATHSIG and PR_SET_NAME take a signal number and a
    // NUL-terminated name of at most 16 bytes; nothing else is touched.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"hybrid-spawner".as_ptr(), 0, 0, 0);
    }
    detach_descriptors(socket.as_raw_fd());
    // Made here, once, its pages are shared by every container.
    if let Err(e) = crate::wasm::warm_shared_engine() {
        tracing::warn!("spawner: {e}");
    }
    loop {
        let request = match receive(socket.as_raw_fd()) {
            Ok((bytes, _)) => bytes,
            // The shim is gone (EOF) or the socket is broken: nothing to serve.
            Err(_) => exit_now(0),
        };
        // SAFETY: the spawner is single-threaded.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let (answer, oom) = create_for_shim(&request);
                let bytes = serde_json::to_vec(&answer).unwrap_or_default();
                let fds: Vec<RawFd> = oom.iter().map(AsRawFd::as_raw_fd).collect();
                let rights = [ControlMessage::ScmRights(&fds)];
                let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
                let sent = sendmsg::<UnixAddr>(socket.as_raw_fd(), &[IoSlice::new(&bytes)], cmsgs, MsgFlags::empty(), None);
                // The container lives on; nothing of this process is needed
                // (no destructor may delete what was just made).
                exit_now(if sent.is_ok() { 0 } else { 1 })
            }
            Ok(ForkResult::Parent { child }) => {
                // The creator is quick; its init process is not its child
                // for long (it is reparented to the shim when this exits).
                let _ = nix::sys::wait::waitpid(child, None);
            }
            Err(e) => {
                let answer = serde_json::to_vec(&Answer::Failed(format!("spawner cannot fork: {e}"))).unwrap_or_default();
                let _ = sendmsg::<UnixAddr>(socket.as_raw_fd(), &[IoSlice::new(&answer)], &[], MsgFlags::empty(), None);
            }
        }
    }
}

/// Hold no descriptor of the shim's but `keep`: the shim's stdio are pipes
/// whose readers wait for EOF (containerd-shim's `start` waits on them), and
/// containers get their stdio from their own paths.
fn detach_descriptors(keep: RawFd) {
    let _ = crate::fds::stdio_to_dev_null();
    for fd in crate::fds::open_above_stdio().into_iter().filter(|&fd| fd != keep) {
        // SAFETY: nothing in this process uses these descriptors (they are
        // the shim's, inherited by the fork); a stale number (the closed
        // read_dir handle) fails with EBADF.
        unsafe { libc::close(fd) };
    }
}

/// In the creator: make the container; the answer and the OOM pipe.
fn create_for_shim(request: &[u8]) -> (Answer, Option<OwnedFd>) {
    let request: Request = match serde_json::from_slice(request) {
        Ok(request) => request,
        Err(e) => return (Answer::Failed(format!("bad request: {e}")), None),
    };
    let view = SpecView::load(&request.config.bundle);
    match HybridContainer::make(&request.config, request.workload, request.image_port, request.compiled, view) {
        Ok(mut container) => (Answer::Created, container.take_oom_events().map(OwnedFd::from)),
        Err(e) => (Answer::Failed(e.to_string()), None),
    }
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process at once, without running destructors
    // or atexit handlers that could touch state shared with the shim.
    unsafe { libc::_exit(code) }
}
