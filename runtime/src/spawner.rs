//! Containers made by a process that stays as it started.
//!
//! The shim forks a *spawner* first thing, while it is small and
//! single-threaded. The spawner makes the shared wasm engine and then only
//! forks: for each job (clone_job.rs: a container's create, an exec's
//! start) a short-lived creator, forked ahead of the job where one is
//! expected, which takes the job and the descriptors the shim sent, runs
//! libcontainer's part, answers, and exits. The container's
//! processes are then adopted by the shim, a child subreaper, which loads
//! the container from its state as if it had made it.
//!
//! Two things come of it. libcontainer's raw clones are taken from a
//! process that never had a second thread, so no lock of a missing thread
//! is held in them (see clone_job.rs). And a wasm container's process,
//! which never execs, shares its pages copy-on-write with the small
//! spawner instead of with the busy shim, whose later writes to its heap
//! and its threads' stacks would each leave a private copy in every idle
//! container.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::socket::{
    sendmsg, setsockopt, socketpair, sockopt, AddressFamily, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use nix::sys::time::TimeVal;
use nix::sys::wait::WaitStatus;
use nix::unistd::{fork, ForkResult};

use crate::clone_job::CloneJob;
use crate::late_entry::LateEntry;
use crate::network_ahead::ReadyNetworkNamespace;
use crate::ready_later::{EarlyAnswer, Made};

/// A job is a container's ids, paths and workload: well under this.
const MAX_MESSAGE: usize = 256 * 1024;
/// How long the shim waits for a creator's answer: a job that takes
/// longer is stuck (libcontainer's own waits are shorter).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a creator forked ahead of its job waits for it: a shim's
/// first Create comes within milliseconds of its start, a group's next
/// ones in bursts; an idle shim keeps no such process for long.
const SPARE_IDLE: Duration = Duration::from_secs(1);
/// A creator's exit when the shim is gone (its end of the socket closed).
const SHIM_GONE: i32 = 3;
/// A creator's exit when it was forked ahead and no job came.
const NO_JOB: i32 = 4;

/// The shim's end of the socket to its spawner.
static SPAWNER: OnceLock<Mutex<OwnedFd>> = OnceLock::new();

/// What a creator answers: the process its job made, or why not.
type Answer = Result<Made, String>;

/// Fork the spawner. Call first thing in `main`, while the process is
/// single-threaded, and only in the process that will serve containers;
/// `first_bundle` is the bundle of the container it starts for. The
/// calling process becomes a child subreaper: the processes the spawner's
/// creators leave are reparented to it when their creator exits.
pub fn start(first_bundle: Option<PathBuf>) -> std::io::Result<()> {
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
            serve(theirs, first_bundle)
        }
    }
}

/// Whether this process has a spawner (the shim, after [`start`]).
pub(crate) fn available() -> bool {
    SPAWNER.get().is_some()
}

/// Run `job` in a creator of the spawner, with `fds` (the descriptors
/// its indices name), and return its answer; or say why the job could not
/// be sent (then nothing of it ran, and `late` was not called: the caller
/// may run it elsewhere). A job whose entry comes later (late_entry.rs)
/// is followed by what `late` gives, made while the creator works.
pub(crate) fn run(job: &CloneJob, fds: &[OwnedFd], late: &mut Option<&mut dyn FnMut() -> LateEntry>) -> Result<Answer, String> {
    let socket = SPAWNER.get().ok_or_else(|| "no spawner".to_string())?;
    let bytes = serde_json::to_vec(job).map_err(|e| format!("cannot encode the job: {e}"))?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    // One job at a time: a job and its answer share the socket.
    let socket = socket.lock().unwrap_or_else(|p| p.into_inner());
    crate::fds::send_with_fds(socket.as_raw_fd(), &bytes, &raw).map_err(|e| format!("cannot send the job to the spawner: {e}"))?;
    if let Some(late) = late.as_mut().filter(|_| job.entry_later()) {
        let entry = late();
        let sent = serde_json::to_vec(&entry)
            .map_err(|e| e.to_string())
            .and_then(|bytes| crate::fds::send_with_fds(socket.as_raw_fd(), &bytes, &[]).map_err(|e| e.to_string()));
        if let Err(e) = sent {
            // The creator, which has the job, fails it without the entry.
            return Ok(Err(format!("cannot send the compile cache entry to the spawner: {e}")));
        }
    }
    let answer = receive(socket.as_raw_fd()).map_err(|e| format!("no answer from the spawner: {e}"));
    drop(socket);
    Ok(answer.and_then(|(answer, _)| {
        serde_json::from_slice::<Answer>(&answer).map_err(|e| format!("bad answer from the spawner: {e}"))?
    }))
}

/// One message and the descriptors that came with it.
fn receive(fd: RawFd) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    crate::fds::receive_with_fds(fd, MAX_MESSAGE)
}

/// The spawner: make the engine, then a creator per job, until the shim
/// goes away.
fn serve(socket: OwnedFd, first_bundle: Option<PathBuf>) -> ! {
    // SAFETY: PR_SET_PDEATHSIG and PR_SET_NAME take a signal number and a
    // NUL-terminated name of at most 16 bytes; nothing else is touched.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"hybrid-spawner".as_ptr(), 0, 0, 0);
    }
    detach_descriptors(socket.as_raw_fd());
    // Its containers, cloned from this thread, give back the stack pages
    // their setup touched (stack.rs), once /proc is gone from them.
    crate::stack::learn_main_stack();
    // Made here, once, its pages are shared by every container.
    if let Err(e) = crate::wasm::warm_shared_engine() {
        tracing::warn!("spawner: {e}");
    }
    // The first container's network namespace, while its job is on its way
    // (network_ahead.rs); it goes with the first job.
    let mut ready_network = match first_bundle.as_deref().map(ReadyNetworkNamespace::for_bundle).transpose() {
        Ok(ready) => ready.flatten(),
        Err(e) => {
            // Every container cloned from here would start in it.
            tracing::error!("spawner: {e}");
            exit_now(1)
        }
    };
    // The creator of the next job is forked before the job comes and
    // takes it from the socket itself: the fork (this process's page
    // tables copied, the child scheduled) is then not between a Create's
    // job and its start. The first job is on its way as the shim starts;
    // a creator forked ahead that gets none within SPARE_IDLE goes, and
    // the next is forked once a job is there.
    let mut ahead = true;
    loop {
        if !ahead {
            match crate::fds::readable_within(&socket, Duration::MAX) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) => exit_now(0),
            }
        }
        // SAFETY: the spawner is single-threaded.
        match unsafe { crate::same_cpu::fork_on_this_cpu() } {
            Ok(ForkResult::Child) => create(&socket, ahead, ready_network.take()),
            Ok(ForkResult::Parent { child }) => {
                // The network namespace made ahead is the creator's now
                // (a creator that got no job drops it: its init makes its
                // own).
                ready_network = None;
                // The creator is quick; the processes it leaves are not its
                // children for long (they go to the shim when it exits).
                match nix::sys::wait::waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, SHIM_GONE)) => exit_now(0),
                    Ok(WaitStatus::Exited(_, NO_JOB)) => ahead = false,
                    _ => ahead = true,
                }
            }
            Err(e) => {
                // The job is answered here, then.
                let Ok((_, fds)) = receive(socket.as_raw_fd()) else { exit_now(0) };
                drop(fds);
                let answer = serde_json::to_vec(&Answer::Err(format!("spawner cannot fork: {e}"))).unwrap_or_default();
                let _ = sendmsg::<UnixAddr>(socket.as_raw_fd(), &[IoSlice::new(&answer)], &[], MsgFlags::empty(), None);
            }
        }
    }
}

/// A creator: take the next job from `socket` (within SPARE_IDLE when
/// forked `ahead` of it), run it and answer, then exit.
fn create(socket: &OwnedFd, ahead: bool, ready_network: Option<ReadyNetworkNamespace>) -> ! {
    if ahead && !crate::fds::readable_within(socket, SPARE_IDLE).unwrap_or(true) {
        exit_now(NO_JOB)
    }
    let (job, fds) = match receive(socket.as_raw_fd()) {
        Ok(received) => received,
        // The shim is gone (EOF) or the socket is broken: nothing to serve.
        Err(_) => exit_now(SHIM_GONE),
    };
    let send = |answer: &Answer| {
        let bytes = serde_json::to_vec(answer).unwrap_or_default();
        sendmsg::<UnixAddr>(socket.as_raw_fd(), &[IoSlice::new(&bytes)], &[], MsgFlags::empty(), None).is_ok()
    };
    // A Create may answer before its init is ready (ready_later.rs).
    let mut sent_early = None;
    let mut send_early = |made: Made| sent_early = Some(send(&Ok(made)));
    let mut early = EarlyAnswer::new(&mut send_early);
    // A job whose entry follows it takes it from the socket (late_entry.rs).
    let entry_taken = std::cell::Cell::new(false);
    let mut late = || {
        entry_taken.set(true);
        let (bytes, _) = receive(socket.as_raw_fd()).map_err(|e| format!("no compile cache entry from the shim: {e}"))?;
        let LateEntry(entry) = serde_json::from_slice(&bytes).map_err(|e| format!("bad compile cache entry: {e}"))?;
        // One that cannot be opened is logged; the init compiles the module.
        Ok(entry?.open())
    };
    let job = serde_json::from_slice::<CloneJob>(&job);
    let entry_later = job.as_ref().is_ok_and(CloneJob::entry_later);
    let answer: Answer = match job {
        Ok(job) => job.run(fds, ready_network, &mut early, &mut late),
        Err(e) => Err(format!("bad job: {e}")),
    };
    drop(early);
    // Taken from the socket even when the job failed before it needed the
    // entry: the next creator takes the next job from there.
    if entry_later && !entry_taken.get() {
        let _ = receive(socket.as_raw_fd());
    }
    let sent = sent_early.unwrap_or_else(|| send(&answer));
    // The container lives on; nothing of this process is needed
    // (no destructor may delete what was just made).
    exit_now(if sent { 0 } else { 1 })
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

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process at once, without running destructors
    // or atexit handlers that could touch state shared with the shim.
    unsafe { libc::_exit(code) }
}
