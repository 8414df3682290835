//! RUN containers are made by a fresh copy of the program, not by the build
//! process itself. A build is a tokio program with threads, and
//! libcontainer clones without fork's safeguards: a clone taken while
//! another thread holds a lock (a thread starting or ending holds one of
//! Rust's runtime) deadlocks when its copy of the lock is needed, and the
//! clone inherits process-wide state (tokio's signal pipe) that the wasm
//! executor cannot use once the container closed its descriptors. The
//! helper is single-threaded and has no async runtime.
//!
//! A program opts in by calling [`main_hook`] first thing in `main` (the
//! `hybrid` command does); the helper is that program run again as
//! `PROGRAM __hybrid-build-run JOB` (JSON), which prints the outcome as one
//! JSON line. Programs that do not opt in run RUN containers in-process.
//!
//! The helper also owns what a killed build must not leave behind. It
//! mounts the RUN overlay in a mount namespace of its own, so the mount
//! ends with it; and when the build dies (parent-death signal) or is
//! interrupted (SIGINT, SIGTERM, SIGHUP) it kills and deletes the container
//! before it exits. Containers of builds killed outright, helper and all,
//! are swept by the next RUN ([`crate::run_container`]).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hybrid_runtime::oneshot::{request_cancel, run_to_completion};
use hybrid_runtime::{ContainerConfig, StdioPaths};
use serde::{Deserialize, Serialize};

use crate::run::RunError;

const HELPER_ARG: &str = "__hybrid-build-run";

static AVAILABLE: AtomicBool = AtomicBool::new(false);

/// What the helper runs: a [`ContainerConfig`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Job {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub state_root: PathBuf,
    pub namespace: String,
    pub stdout: String,
    pub stderr: String,
    /// The build's pid: the helper stops when it is no longer its parent.
    pub parent: u32,
    /// The overlay for the helper to mount as `rootfs`, with the working
    /// directory to make in it.
    pub overlay: Option<OverlayJob>,
}

/// An overlay mount of the helper's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OverlayJob {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub cwd: String,
}

impl Job {
    pub fn config(&self) -> ContainerConfig {
        ContainerConfig {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            state_root: self.state_root.clone(),
            namespace: self.namespace.clone(),
            stdio: StdioPaths { stdin: String::new(), stdout: self.stdout.clone(), stderr: self.stderr.clone() },
        }
    }
}

/// The helper's answer.
#[derive(Debug, Serialize, Deserialize)]
enum Outcome {
    Exited(i32),
    Failed(String),
}

/// Call first thing in `main`, before any thread or async runtime: in the
/// helper this runs the container and returns the exit code to return from
/// `main`; elsewhere it returns `None` and lets builds use the helper.
pub fn main_hook() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(HELPER_ARG.as_ref()) {
        AVAILABLE.store(true, Ordering::Relaxed);
        return None;
    }
    let outcome = match args.next().and_then(|a| a.into_string().ok()).map(|a| serde_json::from_str::<Job>(&a)) {
        Some(Ok(job)) => {
            stop_with_the_build(job.parent);
            match run_in_helper(&job) {
                Ok(code) => Outcome::Exited(code),
                Err(e) => Outcome::Failed(e),
            }
        }
        Some(Err(e)) => Outcome::Failed(format!("invalid RUN helper job: {e}")),
        None => Outcome::Failed("RUN helper without a job".to_string()),
    };
    match serde_json::to_string(&outcome) {
        Ok(line) => {
            println!("{line}");
            Some(ExitCode::SUCCESS)
        }
        Err(_) => Some(ExitCode::FAILURE),
    }
}

extern "C" fn on_stop_signal(_: libc::c_int) {
    request_cancel();
}

/// Interrupts, hang-ups and the build's death stop the container.
fn stop_with_the_build(parent: u32) {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only does an atomic store, which is
        // async-signal-safe; it is a plain `extern "C" fn(c_int)`.
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) };
    // The build may have died before the signal was asked for.
    if std::os::unix::process::parent_id() != parent {
        request_cancel();
    }
}

/// Mount the overlay (if the job has one) in a mount namespace of this
/// process's own, then run the container.
fn run_in_helper(job: &Job) -> Result<i32, String> {
    let _mounted = match &job.overlay {
        Some(overlay) => {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(|e| format!("cannot make a mount namespace for the RUN overlay: {e}"))?;
            // Slave: the host's mounts still show here; ours never show there.
            let none: Option<&str> = None;
            nix::mount::mount(none, "/", none, nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE, none)
                .map_err(|e| format!("cannot make / a slave mount: {e}"))?;
            let mounted = crate::run_container::mount_overlay(&overlay.lower, &overlay.upper, &overlay.work, &job.rootfs)
                .map_err(|e| e.to_string())?;
            crate::run_container::ensure_workdir(&job.rootfs, &overlay.cwd)
                .map_err(|e| format!("cannot make WORKDIR {}: {e}", overlay.cwd))?;
            Some(mounted)
        }
        None => None,
    };
    run_to_completion(&job.config(), || {}).map(|completed| completed.code).map_err(|e| e.to_string())
}

/// Whether this program called [`main_hook`].
pub(crate) fn available() -> bool {
    AVAILABLE.load(Ordering::Relaxed)
}

/// Run `job` in the helper; `while_running` is called every few
/// milliseconds until it is done. Returns the container's exit code.
pub(crate) fn run(job: &Job, mut while_running: impl FnMut()) -> Result<i32, RunError> {
    let helper_err = |message: String| RunError::Helper(message);
    let json = serde_json::to_string(job).map_err(|e| helper_err(e.to_string()))?;
    // /proc/self/exe: this very program, even if its file was replaced since.
    let mut child: Child = Command::new("/proc/self/exe")
        .arg(HELPER_ARG)
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| helper_err(format!("cannot start it: {e}")))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {
                while_running();
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(helper_err(format!("cannot wait for it: {e}"))),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        // The pipe holds one short line: reading after the exit cannot block.
        let _ = stdout.read_to_string(&mut out);
    }
    match serde_json::from_str::<Outcome>(out.trim()) {
        Ok(Outcome::Exited(code)) => Ok(code),
        Ok(Outcome::Failed(message)) => Err(RunError::Runtime(message)),
        Err(_) => Err(helper_err(format!("it ended with {status} and no outcome"))),
    }
}
