//! The plug-in point inside libcontainer: the container's init process, once
//! namespaces, mounts, cgroups, user and capabilities are in place, hands the
//! process over to this executor. The decision was made before (see
//! `workload`); here it is only carried out.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use libcontainer::workload::default::DefaultExecutor;
use std::collections::HashMap;

use libcontainer::workload::{Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use oci_spec::runtime::Spec;

use crate::limits::guest_memory_limit;
use crate::start_ahead::Prepared;
use crate::wasm::{PrecompiledEntry, WasiSetup, WasmExit, WasmSandbox};
use crate::workload::Workload;

/// Runs a native workload by exec, or a wasm workload in the sandbox in this
/// very process, so that both live in the same namespaces and cgroup.
#[derive(Clone)]
pub struct HybridExecutor {
    workload: Workload,
    /// The module's machine code, compiled by the shim before the clone;
    /// the container's copy of these pages is shared copy-on-write.
    /// The module's compile cache entry, opened by the creator.
    precompiled: Option<PrecompiledEntry>,
    /// The write end of a pipe to the shim (inherited through the clone):
    /// the guest's end is reported on it (see guest_report.rs).
    guest_report_fd: Option<RawFd>,
    /// The container's memory limit as worked out on the host, where the
    /// cgroups above the container (a pod's) can be read; None: the spec's.
    memory_limit: Option<i64>,
    /// Where a wasi:http component listens (http.rs), resolved at Create.
    http_port: u16,
    /// The process waits for Start once validated (a container's init, not
    /// an exec): it prepares the guest meanwhile (start_ahead.rs).
    waits_for_start: bool,
    /// Its creator answered the shim before it was ready (ready_later.rs):
    /// the preparation need not wait for the creator to be done.
    answered_before_ready: bool,
    /// Where the compile cache entry comes from after the fork, when it
    /// was not there before it (late_entry.rs): the init's end of a socket
    /// pair from its creator.
    entry_from: Option<RawFd>,
    /// The ready pipe's write end, where an init whose creator answered
    /// early tells its readiness itself (ready_later.rs).
    ready_report: Option<RawFd>,
    /// Where the creator says the init's /proc is covered
    /// (guest_mounts::covered_pipe): the guest waits for it.
    proc_covered: Option<RawFd>,
}

impl HybridExecutor {
    pub fn new(workload: Workload, precompiled: Option<PrecompiledEntry>) -> Self {
        Self {
            workload,
            precompiled,
            guest_report_fd: None,
            memory_limit: None,
            http_port: crate::http::DEFAULT_HTTP_PORT,
            waits_for_start: false,
            answered_before_ready: false,
            entry_from: None,
            ready_report: None,
            proc_covered: None,
        }
    }

    /// For a container's init, which waits for Start after validation.
    pub fn waiting_for_start(mut self) -> Self {
        self.waits_for_start = true;
        self
    }

    /// For an init whose creator answers the shim before it is ready.
    pub(crate) fn answered_before_ready(mut self, answered: bool) -> Self {
        self.answered_before_ready = answered;
        self
    }

    pub fn with_http_port(mut self, port: u16) -> Self {
        self.http_port = port;
        self
    }

    pub fn with_memory_limit(mut self, limit: Option<i64>) -> Self {
        self.memory_limit = limit;
        self
    }

    /// For an init whose compile cache entry comes on `fd` (late_entry.rs).
    pub(crate) fn with_entry_from(mut self, fd: RawFd) -> Self {
        self.entry_from = Some(fd);
        self
    }

    /// For an init that tells its readiness on `fd` itself.
    pub(crate) fn tells_readiness_on(mut self, fd: RawFd) -> Self {
        self.ready_report = Some(fd);
        self
    }

    /// For an init whose guest waits for its creator's word on `fd` that
    /// /proc is covered.
    pub(crate) fn with_proc_covered_on(mut self, fd: RawFd) -> Self {
        self.proc_covered = Some(fd);
        self
    }

    pub fn with_guest_report(mut self, fd: RawFd) -> Self {
        self.guest_report_fd = Some(fd);
        self
    }
}

impl Executor for HybridExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if !self.workload.kind.is_wasm() {
            return DefaultExecutor {}.exec(spec);
        }
        // The shim's log writer is among the descriptors an exec would close
        // (see close_cloexec_fds); this process's events would only print
        // write errors onto the guest's stderr.
        let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
        if let Some(fd) = self.proc_covered {
            crate::guest_mounts::wait_until_covered(fd).map_err(|e| {
                eprintln!("hybrid: {e}");
                ExecutorError::Other(e)
            })?;
        }
        let exit = run_wasm_in_container(spec, self)
            .map_err(|e| {
                // Nothing would show it otherwise: libcontainer ends the
                // process with 255, and this process logs nowhere.
                eprintln!("hybrid: {e}");
                ExecutorError::Other(e.to_string())
            })?;
        // The process is the container's init (or the exec): its exit
        // status is the task's. The shim was told already (guest_ended).
        std::process::exit(exit.code);
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        if self.workload.kind.is_wasm() {
            // Already validated before the container was created. An init
            // is confined now and waits for Start next: it loads the
            // program meanwhile (see start_ahead.rs). An exec runs at once,
            // and its creator waits for it to let go of what it inherited.
            if let Some(fd) = self.entry_from {
                // Passed on by the creator long before this point (the
                // init's setup takes milliseconds, the check of the module
                // less than one).
                crate::late_entry::receive_in_init(fd).map_err(ExecutorValidationError::ArgValidationError)?;
            }
            // Confined and checked: what is left before Start is this
            // process's own (its creator covers /proc meanwhile, and the
            // guest waits for that, see exec). Told here, the shim's Start
            // need not wait for the creator to hear it and tell.
            if let Some(fd) = self.ready_report {
                crate::ready_later::report(fd, Ok(()));
                // SAFETY: the ready pipe's write end, inherited through
                // the fork; nothing else in this process uses it.
                unsafe { libc::close(fd) };
            }
            if self.waits_for_start {
                let after_creator = !self.answered_before_ready;
                crate::start_ahead::begin(&self.workload, self.precompiled(), &self.kept_fds(), after_creator);
            }
            Ok(())
        } else {
            DefaultExecutor {}.validate(spec)
        }
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        if self.workload.kind.is_wasm() {
            // The guest's environment is the spec's, handed to WASI; this
            // process's own stays blank, and setting it now would race
            // with the thread start_ahead began.
            Ok(())
        } else {
            DefaultExecutor {}.setup_envs(envs)
        }
    }
}

impl HybridExecutor {
    /// The guest has ended: the shim is told now, not from the reap after
    /// the process's teardown (see guest_report.rs), and the container's
    /// stdio let go of, so that the client reading it (`ctr run` waits
    /// for its end before Delete) sees its end before that teardown too:
    /// the WASI runtime's threads joined, the runtime's address space
    /// unmapped (0.3 ms and more, traced). What the guest wrote has been
    /// written: its WASI context is gone with its store.
    fn guest_ended(&self, exit: &WasmExit) {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        if let Some(fd) = self.guest_report_fd {
            crate::guest_report::send(fd, exit.code, exit.out_of_memory);
        }
        // The runtime's idle worker thread uses none of them. Where /dev/null
        // cannot be opened they stay, and end with the process.
        let _ = crate::fds::stdio_to_dev_null();
    }

    /// The module's compile cache entry: opened by the creator before the
    /// fork, or received after it.
    fn precompiled(&self) -> Option<&PrecompiledEntry> {
        self.precompiled.as_ref().or_else(|| crate::late_entry::received())
    }

    /// The descriptors a wasm process keeps when it lets go of what it
    /// inherited: the OOM pipe, the compile cache entry, and a shim's
    /// runtime's (see fds::keep_in_clones).
    fn kept_fds(&self) -> Vec<RawFd> {
        let entry_fd = self.precompiled().map(|entry| entry.file.as_raw_fd());
        [self.guest_report_fd, entry_fd].into_iter().flatten().chain(crate::fds::kept_in_clones().iter().copied()).collect()
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

/// Do what execve would: close the descriptors marked close-on-exec.
/// libcontainer marks all it inherited from the shim (its sockets, pipes)
/// and, for an exec, waits for the close of one of them (its exec-notify
/// pipe) to know the process is running; the guest opens its own files
/// afterwards. `keep` are ours: the OOM pipe and the module's compile
/// cache entry; and a shim's runtime's (see fds::keep_in_clones). Where
/// /proc is gone (a wasm container: see guest_mounts) the process cannot
/// list its descriptors, so everything above stdio but `keep` is closed,
/// marked or not: a guest reaches none of them (WASI
/// knows its stdio and preopens only). Listing nothing there once left an
/// exec's pipe open: its Start, and the shim's other calls with it, waited
/// for the exec'd module to end.
fn close_cloexec_fds(keep: &[RawFd]) {
    let listed = crate::fds::open_above_stdio();
    if listed.is_empty() {
        close_all_above_stdio_but(keep);
        return;
    }
    for fd in listed.into_iter().filter(|fd| !keep.contains(fd)) {
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

/// Close every descriptor above stderr except `keep`, with close_range
/// over the gaps between the kept ones.
fn close_all_above_stdio_but(keep: &[RawFd]) {
    let mut kept: Vec<u32> = keep.iter().filter_map(|&fd| u32::try_from(fd).ok()).filter(|&fd| fd > 2).collect();
    kept.sort_unstable();
    kept.dedup();
    let mut first = 3u32;
    let close = |from: u32, to: u32| {
        // SAFETY: close_range closes this single-threaded process's
        // descriptors in [from, to], none of which anything in it uses any
        // more; no memory is passed.
        if from <= to && unsafe { libc::close_range(from, to, 0) } != 0 {
            tracing::warn!("cannot close descriptors {from} to {to}: {}", std::io::Error::last_os_error());
        }
    };
    for fd in kept {
        if fd > first {
            close(first, fd - 1);
        }
        first = fd + 1;
    }
    close(first, u32::MAX);
}

/// The process never execs, so without this `ps` and `top` would show it
/// under the shim's name: name it after its module instead.
fn name_process_after(module: &std::path::Path) {
    let stem = module.file_stem().and_then(|s| s.to_str()).unwrap_or("module");
    // The kernel keeps 15 bytes of a task's name.
    let name: String = format!("wasm:{stem}").chars().take(15).collect();
    if let Ok(name) = std::ffi::CString::new(name) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
        // bytes, which `name` is; it touches nothing else.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
    }
}

/// A native process loses its capabilities at execve unless it runs as
/// root (or keeps them as ambient ones): runc sets the spec's sets, then the
/// kernel transforms them as the binary starts. The wasm process never
/// execs, so make the same change here, or a guest running as uid 1000
/// would keep an effective set that its native twin would not have.
pub(crate) fn drop_capabilities_as_exec_would() {
    if nix::unistd::geteuid().is_root() {
        // Root keeps what the spec gave it: execve could only add to it.
        return;
    }
    let ambient = match caps::read(None, caps::CapSet::Ambient) {
        Ok(ambient) => ambient,
        Err(e) => {
            tracing::warn!("cannot read the ambient capabilities: {e}");
            caps::CapsHashSet::new()
        }
    };
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
        if let Err(e) = caps::set(None, set, &ambient) {
            tracing::warn!("cannot drop the {set:?} capabilities: {e}");
        }
    }
}

fn run_wasm_in_container(
    spec: &Spec,
    executor: &HybridExecutor,
) -> Result<WasmExit, crate::wasm::WasmError> {
    let workload = &executor.workload;
    install_termination_handlers();
    let may_serve_http = workload.export.is_none();
    let prepared = match crate::start_ahead::take() {
        Some(prepared) => prepared?,
        None => {
            crate::guest_mounts::blank_host_environment();
            close_cloexec_fds(&executor.kept_fds());
            drop_capabilities_as_exec_would();
            crate::start_ahead::prepare(&workload.entrypoint, executor.precompiled(), may_serve_http)?
        }
    };
    name_process_after(&workload.entrypoint);
    let process = spec.process().as_ref();
    let args = process.and_then(|p| p.args().clone()).unwrap_or_default();
    let env = process.and_then(|p| p.env().clone()).unwrap_or_default();
    let cwd = process.map(|p| p.cwd().clone()).unwrap_or_else(|| PathBuf::from("/"));
    let annotations = spec.annotations().clone().unwrap_or_default();
    let root = crate::preopens::RootView::from_spec(spec);
    let preopens = crate::preopens::preopens_for(&cwd, &annotations, &root)?;
    let spec_memory_limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit());
    let setup = WasiSetup {
        args,
        env: WasiSetup::env_from_spec(&env),
        preopens,
        memory_limit: guest_memory_limit(executor.memory_limit.or(spec_memory_limit)),
    };
    let sandbox = WasmSandbox::shared()?;
    let (module, runtime) = match prepared {
        Prepared::Command { program, runtime } => (program, runtime),
        Prepared::HttpHandler(component) => {
            let exit = crate::http::serve(sandbox.engine(), &workload.entrypoint, &component, &setup, executor.http_port)?;
            executor.guest_ended(&exit);
            return Ok(exit);
        }
    };
    let _entered = runtime.enter();
    // What the creating process allocated and freed (the spec, libcontainer's
    // work, the module's bytes) is still in this process's heap, as pages
    // of its own: give them back before the guest runs for as long as it
    // likes.
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    // And the stack pages libcontainer's init went deep on.
    crate::stack::release_unused();
    let exit = sandbox.run(&workload.entrypoint, &module, workload.export.as_deref(), &setup)?;
    executor.guest_ended(&exit);
    Ok(exit)
}
