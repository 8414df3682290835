//! Extra processes in a running container (containerd's Exec). The same
//! workload decision applies: a native binary joins the container's
//! namespaces and cgroup; a wasm module runs in a sandbox there.

use std::path::PathBuf;

use oci_spec::runtime::Process;

use crate::clone_job::{CloneJob, JobProcess};
use crate::compile_cache::CompileCache;
use crate::container::{ContainerError, HybridContainer};
use crate::stdio::{HeldFifos, StdioPaths};
use crate::tty::Console;
use crate::wasm;
use crate::workload::{decide_process, read_entrypoint, Workload};

/// An exec whose process is decided and compiled, ready to start.
pub struct PreparedExec {
    pub exec_id: String,
    pub workload: Workload,
    process_file: PathBuf,
    compiled: Option<crate::wasm::CompiledEntry>,
    stdio: StdioPaths,
    terminal: bool,
    /// Read ends of the process's output fifos (see HeldFifos), held while
    /// the shim keeps the exec.
    _held_fifos: HeldFifos,
}

/// A started exec: its pid (in the shim's pid namespace) and its terminal.
pub struct StartedExec {
    pub pid: i32,
    pub console: Option<Console>,
}

impl HybridContainer {
    /// The container's root as an exec will see it: with the spec's mounts
    /// (a bind mount, a volume holding the program), through its init's
    /// root in /proc; the rootfs as mounted for it when the init is gone.
    fn root_as_seen_inside(&self) -> std::path::PathBuf {
        let inside = self.pid().map(|pid| std::path::PathBuf::from(format!("/proc/{pid}/root")));
        match inside {
            Some(root) if root.is_dir() => root,
            _ => self.rootfs().to_path_buf(),
        }
    }

    /// Check and prepare an exec: `process_json` is the OCI process that
    /// containerd sends. Errors here fail containerd's Exec, before Start.
    pub fn prepare_exec(&self, exec_id: &str, process_json: &[u8], stdio: StdioPaths) -> Result<PreparedExec, ContainerError> {
        let exec_err = |message: String| ContainerError::Exec {
            id: self.id().to_string(),
            exec_id: exec_id.to_string(),
            message,
        };
        if exec_id.is_empty() || exec_id.contains('/') {
            return Err(exec_err(format!("invalid exec id {exec_id:?}")));
        }
        let process: Process =
            serde_json::from_slice(process_json).map_err(|e| exec_err(format!("invalid process spec: {e}")))?;
        let terminal = process.terminal().unwrap_or(false);
        let args = process.args().clone().unwrap_or_default();
        let env = process.env().clone().unwrap_or_default();
        let root = self.root_as_seen_inside();
        let workload = decide_process(&args, &env, process.cwd(), self.annotations(), &root)?;
        let compiled = if workload.kind.is_wasm() {
            let module = read_entrypoint(&root, &workload)?;
            Some(wasm::precompile(&workload.entrypoint, &module, &CompileCache::from_env())?.0)
        } else {
            None
        };
        // libcontainer's tenant builder reads the process from a file; keep it
        // in the container's state dir, removed with the container.
        let process_file = self.state_dir().join(format!("exec-{exec_id}.json"));
        let process_json: std::borrow::Cow<[u8]> = match self.proc_hidden() {
            // Supplementary groups are set by reading /proc/self/setgroups
            // in the container, which a wasm container has no more (see
            // guest_mounts.rs): its execs run with the user's uid and gid.
            true if process.user().additional_gids().as_ref().is_some_and(|g| !g.is_empty()) => {
                let mut process = process;
                let mut user = process.user().clone();
                user.set_additional_gids(None);
                process.set_user(user);
                serde_json::to_vec(&process).map_err(|e| exec_err(format!("cannot encode the process spec: {e}")))?.into()
            }
            _ => process_json.into(),
        };
        std::fs::write(&process_file, process_json).map_err(|e| exec_err(format!("cannot write {process_file:?}: {e}")))?;
        let held_fifos = stdio.hold_output_fifos();
        Ok(PreparedExec { exec_id: exec_id.to_string(), workload, process_file, compiled, stdio, terminal, _held_fifos: held_fifos })
    }

    /// Start a prepared exec.
    pub fn start_exec(&self, exec: &PreparedExec) -> Result<StartedExec, ContainerError> {
        // The process joins the container's cgroups: on a cgroup v1 host
        // its creator does that without the kernel's lock; elsewhere start
        // the kernel's wait now, and keep it from coming back until it has
        // joined (see cgroup_join.rs).
        let own_join = match crate::cgroup_join::own_join_possible() {
            true => self.cgroups_path().and_then(|path| crate::cgroup_join::OwnJoin::existing(&path)),
            false => None,
        };
        let _join_window = own_join.is_none().then(crate::cgroup_join::JoinWindow::for_request);
        let id = self.id().to_string();
        let mut fds = Vec::new();
        let (process, console_socket) = JobProcess::prepare(
            exec.workload.clone(),
            exec.compiled.clone(),
            self.wasm_memory_limit(),
            exec.terminal,
            &exec.stdio,
            &self.log_owner(),
            &mut fds,
        )?;
        let job = CloneJob::Exec {
            id: id.clone(),
            state_root: self.state_root().to_path_buf(),
            process_file: exec.process_file.clone(),
            process,
            own_join,
        };
        let job_err = |message| ContainerError::Job { id: id.clone(), action: "exec", message };
        let pid = nix::unistd::Pid::from_raw(job.run_cleanly(fds, None).map_err(job_err)?.pid);
        let console = match console_socket {
            // The process runs already; if its terminal cannot be had, it is
            // killed rather than left without stdio.
            Some(socket) => match socket.receive_master().and_then(|m| Console::start(m, &exec.stdio, &id)) {
                Ok(console) => Some(console),
                Err(source) => {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    return Err(ContainerError::Tty { id, source });
                }
            },
            None => None,
        };
        Ok(StartedExec { pid: pid.as_raw(), console })
    }
}
