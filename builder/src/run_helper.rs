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

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hybrid_runtime::oneshot::run_to_completion;
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
        Some(Ok(job)) => match run_to_completion(&job.config(), || {}) {
            Ok(completed) => Outcome::Exited(completed.code),
            Err(e) => Outcome::Failed(e.to_string()),
        },
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
