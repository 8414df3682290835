//! libcontainer's create and exec, as jobs for a process where its clones
//! are safe.
//!
//! libcontainer clones the calling process with the raw system call for a
//! container's intermediate and init processes (an exec's too), and those
//! run Rust code up to their exec, or to their exit. A raw clone copies one
//! thread and none of the locks the other threads held: glibc's malloc
//! arena, Rust's own registry of thread stacks (taken by every thread that
//! starts or ends, and by `std::process::exit` in libcontainer's clones).
//! Cloned from the shim, whose ttrpc workers come and go under load, a copy
//! now and then hung on one of them (about one exec in 170 with `ctr task
//! ps` in loops beside). So the shim prepares everything that needs its own
//! state (stdio, the terminal's socket, the out-of-memory pipe) and hands
//! libcontainer's part to the spawner (spawner.rs), forked before the shim
//! had a second thread, as a [`CloneJob`] with its descriptors.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::container::ContainerError;
use crate::executor::HybridExecutor;
use crate::logdriver::LogOwner;
use crate::network_ahead::ReadyNetworkNamespace;
use crate::late_entry::LateEntry;
use crate::ready_later::{EarlyAnswer, Made};
use crate::stdio::StdioPaths;
use crate::tty::ConsoleSocket;
use crate::wasm::CompiledEntry;
use crate::workload::Workload;

/// Where a creator takes a job's compile cache entry that follows the job
/// (late_entry.rs): opened, or None when the init is to compile the module
/// itself; an error fails the Create.
pub(crate) type LateEntrySource<'a> = &'a mut dyn FnMut() -> Result<Option<crate::wasm::PrecompiledEntry>, String>;

/// What runs in the container's new process, and where its descriptors
/// are among those sent with the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobProcess {
    pub workload: Workload,
    /// The module's compile cache entry, checked by the shim; opened by the
    /// process that clones, so the container loads machine code only.
    pub compiled: Option<CompiledEntry>,
    /// The wasm guest's memory bound, worked out by the shim.
    pub memory_limit: Option<i64>,
    /// Where the terminal's master goes (the shim listens there).
    pub console_socket: Option<PathBuf>,
    /// Indices of stdin, stdout and stderr among the job's descriptors;
    /// None with a terminal.
    pub stdio: Option<[usize; 3]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum CloneJob {
    /// Create a container whose init process waits for start.
    Create {
        id: String,
        bundle: PathBuf,
        state_root: PathBuf,
        process: JobProcess,
        /// Where a wasi:http component listens.
        http_port: u16,
        /// Index of the guest report pipe's write end, for a wasm init.
        guest_report_fd: Option<usize>,
        /// The cgroups this process joins itself before libcontainer runs.
        own_join: Option<crate::cgroup_join::OwnJoin>,
        /// Whether this process makes the init itself, without
        /// libcontainer's intermediate ([`crate::direct_init::chosen`]).
        direct_init: bool,
        /// Index of the ready pipe's write end: where an init made without
        /// libcontainer's intermediate is answered before it is ready
        /// (ready_later.rs).
        ready_fd: Option<usize>,
        /// Whether the module's compile cache entry follows the job (see
        /// late_entry.rs): `process.compiled` is then None.
        entry_later: bool,
    },
    /// Start an exec in a running container.
    Exec {
        id: String,
        state_root: PathBuf,
        process_file: PathBuf,
        process: JobProcess,
        /// The container's cgroups, joined by this process itself.
        own_join: Option<crate::cgroup_join::OwnJoin>,
    },
}

impl CloneJob {
    /// Run the job in this process, which must have a single thread; `fds`
    /// are the descriptors its indices name, `ready_network` a network
    /// namespace made ahead for a wasm init made here (network_ahead.rs).
    /// Answers the pid of the process it made (the container's init, the
    /// exec), which is this process's child until it exits; a Create with
    /// a ready pipe may answer through `early` before its init is ready,
    /// and then tells the rest on the pipe.
    /// A job whose entry comes later takes it from `late` (late_entry.rs).
    pub(crate) fn run(
        self,
        fds: Vec<OwnedFd>,
        ready_network: Option<ReadyNetworkNamespace>,
        early: &mut EarlyAnswer,
        late: LateEntrySource,
    ) -> Result<Made, String> {
        let fd = |index: usize| fds.get(index).map(AsRawFd::as_raw_fd).ok_or_else(|| format!("descriptor {index} was not sent"));
        // A wasm init in cgroups joined here is made without libcontainer's
        // intermediate process (see direct_init.rs), as the shim decided.
        let direct_spec = match &self {
            CloneJob::Create { bundle, direct_init: true, own_join: Some(_), .. } => crate::direct_init::load_spec(bundle).ok(),
            _ => None,
        };
        // Before libcontainer runs: its intermediate and init are then born
        // in the cgroups (see cgroup_join.rs).
        let (CloneJob::Create { own_join, .. } | CloneJob::Exec { own_join, .. }) = &self;
        if let Some(join) = own_join {
            join.run(direct_spec.is_none()).map_err(|e| e.to_string())?;
        }
        match self {
            CloneJob::Create { id, bundle, state_root, process, http_port, guest_report_fd, own_join: _, direct_init: _, ready_fd, entry_later } => {
                let mut executor = process.executor().with_http_port(http_port).waiting_for_start();
                if let Some(index) = guest_report_fd {
                    executor = executor.with_guest_report(fd(index)?);
                }
                let ready_fd = ready_fd.map(fd).transpose()?;
                let (mut container, proc_covered) = match (direct_spec, process.stdio) {
                    (Some(spec), Some([stdin, stdout, stderr])) => {
                        let stdio = crate::direct_init::InitStdio { stdin: fd(stdin)?, stdout: fd(stdout)?, stderr: fd(stderr)? };
                        let answer_early = ready_fd.map(|fd| (fd, &mut *early));
                        let executor = executor.answered_before_ready(answer_early.as_ref().is_some_and(|(_, early)| early.possible()));
                        let late = entry_later.then_some(&mut *late);
                        let made = crate::direct_init::create(&id, &bundle, &state_root, spec, executor, stdio, ready_network, answer_early, late);
                        match made {
                            Ok(made) => (made.container, Some(made.proc_covered)),
                            Err(e) => return Err(report_after_answer(early, ready_fd, e)),
                        }
                    }
                    _ => {
                        // Not for libcontainer's clones to inherit.
                        drop(ready_network);
                        let builder = process.builder(&id, &state_root, executor, &fds)?;
                        let container = builder.as_init(&bundle).with_systemd(false).with_detach(true).build().map_err(|e| e.to_string())?;
                        (container, None)
                    }
                };
                // The last thing this process does: it leaves the host's
                // mount namespace (see guest_mounts.rs). A guest that would
                // see /proc does not run.
                let pid = container.pid().map(|p| p.as_raw()).ok_or_else(|| "the container has no init pid".to_string());
                let made = pid.and_then(|pid| {
                    if process.workload.kind.is_wasm() {
                        crate::guest_mounts::hide_proc(pid)?;
                    }
                    Ok(pid)
                });
                // Its guest may run now (the init made here waits for this).
                if let (Ok(_), Some(covered)) = (&made, proc_covered) {
                    crate::guest_mounts::tell_covered(covered);
                }
                match made {
                    // That init has told its readiness itself.
                    Ok(pid) if early.sent() => Ok(Made { pid, ready_later: true }),
                    Ok(pid) => Ok(Made::ready(pid)),
                    Err(e) if early.sent() => {
                        // The shim has the container: it is left for its
                        // Delete, its init killed before it could start.
                        if let Some(pid) = container.pid() {
                            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                        }
                        Err(report_after_answer(early, ready_fd, e))
                    }
                    Err(e) => {
                        let _ = container.delete(true);
                        Err(e)
                    }
                }
            }
            CloneJob::Exec { id, state_root, process_file, process, own_join: _ } => {
                drop(ready_network);
                let executor = process.executor();
                let builder = process.builder(&id, &state_root, executor, &fds)?;
                let pid = builder.as_tenant().with_process(Some(&process_file)).with_detach(true).build().map_err(|e| e.to_string())?;
                Ok(Made::ready(pid.as_raw()))
            }
        }
    }

    /// Run the job where libcontainer's clones are safe: in the spawner,
    /// or, in a process without one (the `hybrid` command, a shim run with
    /// HYBRID_SPAWNER=off) or whose spawner is gone (killed), in a forked
    /// copy of this process.
    /// A job whose entry comes later (late_entry.rs) gets it from `late`:
    /// the spawner's creator after the job, a forked copy with it.
    pub(crate) fn run_cleanly(mut self, fds: Vec<OwnedFd>, mut late: Option<&mut dyn FnMut() -> LateEntry>) -> Result<Made, String> {
        if crate::spawner::available() {
            match crate::spawner::run(&self, &fds, &mut late) {
                Ok(answer) => return answer,
                Err(e) => tracing::warn!("{e}: the job runs in a forked copy of this process"),
            }
        }
        if let CloneJob::Create { process, entry_later, .. } = &mut self {
            if let Some(late) = late.as_mut().filter(|_| *entry_later) {
                process.compiled = Some(late().0?);
                *entry_later = false;
            }
        }
        let mut no_late_entry = || Err("no compile cache entry follows this job".to_string());
        crate::fork_guard::in_forked_copy(move || self.run(fds, None, &mut EarlyAnswer::none(), &mut no_late_entry))
    }

    /// Whether a message with the module's entry follows this job.
    pub(crate) fn entry_later(&self) -> bool {
        matches!(self, CloneJob::Create { entry_later: true, .. })
    }
}

/// A Create's failure `message`, told on the ready pipe as well when the
/// answer went before it (the shim then learns it there).
fn report_after_answer(early: &EarlyAnswer, ready_fd: Option<std::os::fd::RawFd>, message: String) -> String {
    if let (true, Some(fd)) = (early.sent(), ready_fd) {
        crate::ready_later::report(fd, Err(message.clone()));
    }
    message
}

impl JobProcess {
    /// The process of a job and what it needs from this process: with a
    /// terminal, a socket to listen on for its master (libcontainer
    /// connects to it from the creator); without, the streams of `stdio`,
    /// opened for `owner` and added to `fds`. `memory_limit` applies to a
    /// wasm workload only.
    pub(crate) fn prepare(
        workload: Workload,
        compiled: Option<CompiledEntry>,
        memory_limit: Option<i64>,
        terminal: bool,
        stdio: &StdioPaths,
        owner: &LogOwner,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<(Self, Option<ConsoleSocket>), ContainerError> {
        let (console_socket, stdio) = match terminal {
            true => {
                let socket = ConsoleSocket::new().map_err(|source| ContainerError::Tty { id: owner.id.clone(), source })?;
                (Some(socket), None)
            }
            false => {
                let opened = stdio.open_for(owner)?;
                let first = fds.len();
                fds.extend([OwnedFd::from(opened.stdin), OwnedFd::from(opened.stdout), OwnedFd::from(opened.stderr)]);
                (None, Some([first, first + 1, first + 2]))
            }
        };
        let process = JobProcess {
            workload,
            compiled,
            memory_limit,
            console_socket: console_socket.as_ref().map(|s| s.path().to_path_buf()),
            stdio,
        };
        Ok((process, console_socket))
    }

    fn executor(&self) -> HybridExecutor {
        let precompiled = self.compiled.as_ref().and_then(CompiledEntry::open);
        let executor = HybridExecutor::new(self.workload.clone(), precompiled);
        match self.workload.kind.is_wasm() {
            true => executor.with_memory_limit(self.memory_limit),
            false => executor,
        }
    }

    fn builder(
        &self,
        id: &str,
        state_root: &std::path::Path,
        executor: HybridExecutor,
        fds: &[OwnedFd],
    ) -> Result<ContainerBuilder, String> {
        let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
            .with_executor(executor)
            .with_root_path(state_root)
            .map_err(|e| e.to_string())?
            .with_console_socket(self.console_socket.clone());
        if let Some([stdin, stdout, stderr]) = self.stdio {
            let dup = |index: usize| -> Result<OwnedFd, String> {
                let fd = fds.get(index).ok_or_else(|| format!("descriptor {index} was not sent"))?;
                fd.try_clone().map_err(|e| format!("cannot duplicate descriptor {index}: {e}"))
            };
            builder = builder.with_stdin(dup(stdin)?).with_stdout(dup(stdout)?).with_stderr(dup(stderr)?);
        }
        Ok(builder)
    }
}
