//! The plug-in point inside libcontainer: the container's init process, once
//! namespaces, mounts, cgroups, user and capabilities are in place, hands the
//! process over to this executor. The decision was made before (see
//! `workload`); here it is only carried out.

use std::path::PathBuf;
use std::sync::Arc;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use oci_spec::runtime::Spec;

use crate::wasm::{WasiSetup, WasmSandbox};
use crate::workload::Workload;

/// Runs a native workload by exec, or a wasm workload in the sandbox in this
/// very process, so that both live in the same namespaces and cgroup.
#[derive(Clone)]
pub struct HybridExecutor {
    workload: Workload,
    /// The module's machine code, compiled by the shim before the clone;
    /// the container's copy of these pages is shared copy-on-write.
    precompiled: Option<Arc<Vec<u8>>>,
}

impl HybridExecutor {
    pub fn new(workload: Workload, precompiled: Option<Arc<Vec<u8>>>) -> Self {
        Self { workload, precompiled }
    }
}

impl Executor for HybridExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if !self.workload.kind.is_wasm() {
            return DefaultExecutor {}.exec(spec);
        }
        let code = run_wasm_in_container(spec, &self.workload, self.precompiled.as_deref().map(Vec::as_slice))
            .map_err(|e| ExecutorError::Other(e.to_string()))?;
        // The process is the container's init: its exit status is the task's.
        std::process::exit(code);
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        if self.workload.kind.is_wasm() {
            // Already validated before the container was created.
            Ok(())
        } else {
            DefaultExecutor {}.validate(spec)
        }
    }
}

/// PID 1 of a pid namespace ignores signals it has no handler for. A guest
/// cannot handle signals, so terminate as an unhandled signal would.
extern "C" fn terminate_on_signal(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(128 + sig) }
}

fn install_termination_handlers() {
    let action = SigAction::new(
        SigHandler::Handler(terminate_on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT] {
        // SAFETY: the handler only calls _exit, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            tracing::warn!(%signal, "cannot install termination handler: {e}");
        }
    }
}

/// Do what execve would: close every descriptor marked close-on-exec.
/// libcontainer marks all it inherited from the shim (its sockets, pipes)
/// and, for an exec, waits for the close of one of them to know the process
/// is running; the guest opens its own files afterwards.
fn close_cloexec_fds() {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = fds.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // SAFETY: F_GETFD only reads the descriptor's flags; a stale number (the
        // read_dir handle itself, now closed) just fails with EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
            // SAFETY: the descriptor is one this process would lose on exec;
            // nothing in this single-threaded process uses it any more.
            unsafe { libc::close(fd) };
        }
    }
}

fn run_wasm_in_container(spec: &Spec, workload: &Workload, precompiled: Option<&[u8]>) -> Result<i32, crate::wasm::WasmError> {
    install_termination_handlers();
    close_cloexec_fds();
    let process = spec.process().as_ref();
    let args = process.and_then(|p| p.args().clone()).unwrap_or_default();
    let env = process.and_then(|p| p.env().clone()).unwrap_or_default();
    let cwd = process.map(|p| p.cwd().clone()).unwrap_or_else(|| PathBuf::from("/"));
    let mut preopens = vec![(PathBuf::from("/"), "/".to_string())];
    if cwd != PathBuf::from("/") {
        // Relative paths in the guest resolve against ".", the container's cwd.
        preopens.push((cwd.clone(), ".".to_string()));
    }
    let setup = WasiSetup {
        args,
        env: WasiSetup::env_from_spec(&env),
        preopens,
    };
    let sandbox = WasmSandbox::new()?;
    let module = sandbox.load(&workload.entrypoint, precompiled)?;
    sandbox.run(&workload.entrypoint, &module, workload.export.as_deref(), &setup)
}
