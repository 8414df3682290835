//! One container's Linux lifecycle on youki's libcontainer: create (init
//! process waiting), start, kill, delete. Native and wasm containers share
//! all of it; only the executor differs.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;

use crate::guest_report::{GuestReport, GuestReportPipe};
use crate::held_namespace::HeldMountNamespace;
use crate::ready_later::{AfterReady, Readiness, ReadyPipe};
use crate::clone_job::{CloneJob, JobProcess};
use crate::late_entry::LateEntry;
use crate::stdio::{HeldFifos, StdioError, StdioPaths};
use crate::limits::WasmMemoryLimit;
use crate::logdriver::LogOwner;
use crate::tty::Console;
use crate::workload::Workload;

mod cgroups;
mod module_check;

pub use cgroups::{CgroupWarmup, LearnedCgroups};
use cgroups::{OwnLimits, SetupDone, Teardown};
use module_check::ModuleCheck;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    Workload(#[from] crate::workload::WorkloadError),
    #[error(transparent)]
    Wasm(#[from] crate::wasm::WasmError),
    #[error("container {id}: {action}: {source}")]
    Libcontainer {
        id: String,
        action: &'static str,
        source: libcontainer::error::LibcontainerError,
    },
    /// libcontainer's error, from the process that ran its part (see
    /// clone_job.rs), or why that process could not be had.
    #[error("container {id}: {action}: {message}")]
    Job { id: String, action: &'static str, message: String },
    #[error("cannot create state root {path:?}: {source}")]
    StateRoot { path: PathBuf, source: std::io::Error },
    #[error("container {id}: exec {exec_id}: {message}")]
    Exec { id: String, exec_id: String, message: String },
    #[error("container {id}: invalid signal {signal}")]
    Signal { id: String, signal: u32 },
    #[error(transparent)]
    CgroupMount(#[from] crate::cgroup_mount::CgroupMountError),
    #[error(transparent)]
    GuestMounts(#[from] crate::guest_mounts::GuestMountsError),
    #[error("container {id}: terminal: {source}")]
    Tty { id: String, source: crate::tty::TtyError },
    #[error("container {id}: cgroup: {message}")]
    Cgroup { id: String, message: String },
    #[error("container {id}: cannot create the guest's report pipe: {source}")]
    GuestReportPipe { id: String, source: std::io::Error },
    #[error(transparent)]
    HttpPort(#[from] crate::http::PortError),
    #[error(transparent)]
    MountSource(#[from] crate::mount_sources::MountSourceError),
}

pub use libcgroups::stats::{MemoryData, Stats as CgroupStats};

/// The cgroup hierarchy a container's cgroup lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// cgroup v1, alone or beside a v2 mount (hybrid).
    V1,
    V2,
}

/// Where a container comes from and where its state lives.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub bundle: PathBuf,
    /// The container's root as this process sees it (the spec's root).
    pub rootfs: PathBuf,
    /// libcontainer's state root; the container's state is `state_root/id`.
    pub state_root: PathBuf,
    pub stdio: StdioPaths,
    /// containerd's namespace, for a `binary://` log driver's environment.
    pub namespace: String,
}

/// A created container whose init process waits to be started.
pub struct HybridContainer {
    id: String,
    inner: Container,
    state_root: PathBuf,
    rootfs: PathBuf,
    annotations: HashMap<String, String>,
    /// The shim's end of the wasm guest's report pipe (guest_report.rs).
    guest_report: Option<GuestReportPipe>,
    /// The init process's terminal, when its spec asks for one.
    console: Option<Console>,
    namespace: String,
    /// The memory limit its wasm processes are held to (see limits.rs).
    wasm_memory: WasmMemoryLimit,
    /// Read ends of the init process's output fifos (see HeldFifos).
    held_fifos: HeldFifos,
    /// The container's /proc was detached after create (a wasm init, see
    /// guest_mounts.rs).
    proc_hidden: bool,
    /// Its cgroup manager, once made (see `cgroup_manager`).
    cgroups: OnceCell<libcgroups::common::AnyCgroupManager>,
    /// What the exit and Delete need, learned off their path (see
    /// [`CgroupWarmup`]).
    teardown: Option<Teardown>,
    /// Its mount namespace, so that the init's exit does not tear it down
    /// (see held_namespace.rs).
    mount_namespace: Option<HeldMountNamespace>,
    /// The rest of its Create, when Create answered before its init was
    /// ready (ready_later.rs): Start does it, or [`Self::settle`].
    setup: Option<Readiness<OwnLimits>>,
    /// Why that rest failed, told again to every call that needs it.
    setup_failed: Option<String>,
}

/// What [`HybridContainer::settle`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Nothing of Create is left to do (done now, or before).
    Done,
    /// The init has not told its readiness yet: look again later.
    NotYet,
    /// The init failed to get ready: why (Start will say so too).
    Failed(String),
}


/// What Create reads of the bundle's spec. A spec that cannot be read
/// leaves the defaults here; libcontainer then names what is wrong with it.
struct SpecView {
    spec: Option<Spec>,
    annotations: HashMap<String, String>,
    wasm_memory: WasmMemoryLimit,
    terminal: bool,
}

impl SpecView {
    fn load(bundle: &Path) -> Self {
        Self::of(Spec::load(bundle.join("config.json")).ok())
    }

    fn of(spec: Option<Spec>) -> Self {
        let annotations = spec.as_ref().and_then(|spec| spec.annotations().clone()).unwrap_or_default();
        let wasm_memory = WasmMemoryLimit::from_spec(spec.as_ref());
        let terminal = spec.as_ref().and_then(|s| s.process().as_ref()).and_then(|p| p.terminal()).unwrap_or(false);
        Self { spec, annotations, wasm_memory, terminal }
    }
}

impl HybridContainer {
    /// Create the container: namespaces, rootfs, cgroup, and an init process
    /// that waits for `start`. `workload` says what the init process will run.
    pub fn create(config: &ContainerConfig, workload: Workload) -> Result<Self, ContainerError> {
        Self::create_from(config, SpecView::load(&config.bundle), workload, None)
    }

    /// [`create`](Self::create) from the bundle's `spec`, as the caller
    /// loaded it (its config.json, read once per Create), with the tcp port
    /// the image EXPOSEs: where a wasi:http component listens unless an
    /// annotation says otherwise.
    pub fn create_with_spec(config: &ContainerConfig, spec: Spec, workload: Workload, image_port: Option<u16>) -> Result<Self, ContainerError> {
        Self::create_from(config, SpecView::of(Some(spec)), workload, image_port)
    }

    fn create_from(config: &ContainerConfig, view: SpecView, workload: Workload, image_port: Option<u16>) -> Result<Self, ContainerError> {
        if let Some(spec) = &view.spec {
            crate::mount_sources::check_bind_sources(&config.bundle, spec)?;
        }
        // The init process joins its cgroups some milliseconds from now:
        // start the kernel's wait for that now, and keep it from coming
        // back until the container exists (see cgroup_join.rs). Not for a
        // wasm container on a cgroup v1 host: its creator joins without it.
        let own_join = workload.kind.is_wasm() && crate::cgroup_join::own_join_possible();
        let _join_window = (!own_join).then(crate::cgroup_join::JoinWindow::for_request);
        // The manager of the cgroups the shim makes for such a container
        // is made meanwhile; handed to make, it is that decision.
        // A serving shim's first container's were started as the shim
        // started, where its spec looked like wasm (first_cgroups.rs);
        // given up here unless they are these.
        let made_ahead = crate::first_cgroups::take(&config.id);
        let manager_ahead = match (own_join, view.spec.as_ref().and_then(|s| s.linux().as_ref())) {
            (true, Some(linux)) => {
                let path = libcontainer::utils::get_cgroup_path(linux.cgroups_path(), &config.id);
                let resources = linux.resources().as_ref();
                let taken = made_ahead.and_then(|made| made.matching(&path, resources));
                Some(taken.unwrap_or_else(|| crate::cgroup_join::ManagerAhead::start(&path, resources)))
            }
            _ => {
                drop(made_ahead);
                None
            }
        };
        // Checked and compiled before the container's process may run: a bad
        // module fails Create, and the cache makes every later start load
        // machine code only.
        let module_check = workload.kind.is_wasm().then(|| {
            let cwd = view.spec.as_ref().and_then(|s| s.process().as_ref()).map(|p| p.cwd().clone()).unwrap_or_default();
            let root = view.spec.as_ref().map(crate::preopens::RootView::from_spec).unwrap_or_default();
            ModuleCheck::new(config.rootfs.clone(), workload.clone(), cwd, view.annotations.clone(), root)
        });
        let mut container = Self::make(config, workload, image_port, module_check, view, manager_ahead)?;
        // Held from here: the process runs only once started.
        container.held_fifos = config.stdio.hold_output_fifos();
        Ok(container)
    }

    /// Make the container, checking its module (if wasm) with
    /// `module_check`: before the job, or while the creator makes an init
    /// of its own (late_entry.rs). What needs this process (stdio, the
    /// terminal's socket, the out-of-memory pipe) is made here;
    /// libcontainer's part runs as a job (clone_job.rs), and the container
    /// is loaded from the state it left.
    /// `manager_ahead` is given when the creator joins the container's
    /// cgroups itself: the manager of the cgroups the shim makes here.
    fn make(
        config: &ContainerConfig,
        workload: Workload,
        image_port: Option<u16>,
        module_check: Option<ModuleCheck>,
        view: SpecView,
        manager_ahead: Option<crate::cgroup_join::ManagerAhead>,
    ) -> Result<Self, ContainerError> {
        let SpecView { spec, annotations, wasm_memory, terminal } = view;
        let id = config.id.clone();
        std::fs::create_dir_all(&config.state_root).map_err(|e| ContainerError::StateRoot {
            path: config.state_root.clone(),
            source: e,
        })?;
        let is_wasm = workload.kind.is_wasm();
        // A wasm container's creator joins its cgroups itself where it can
        // (see cgroup_join.rs); the shim makes them and applies the spec's
        // resources just before, and libcontainer does not see those.
        let own_join_path = manager_ahead.as_ref().map(|ahead| ahead.path().to_path_buf());
        // Whether the creator makes the init itself (direct_init.rs), from
        // the spec written here for it.
        let mut direct_init = false;
        if let Some(spec) = &spec {
            let narrowed = match is_wasm {
                true => crate::guest_mounts::narrow_bundle(&config.bundle, spec, manager_ahead.is_some())?,
                false => None,
            };
            let written = narrowed.as_ref().unwrap_or(spec);
            crate::cgroup_mount::rewrite_for_shared_pid_namespace(&config.bundle, written)?;
            direct_init = crate::direct_init::chosen(is_wasm, !terminal, manager_ahead.is_some(), written);
        }
        // A bad port annotation fails Create, not the guest's start.
        let http_port = match workload.kind {
            crate::workload::WorkloadKind::WasmComponent => crate::http::http_port(&annotations, image_port)?,
            _ => crate::http::DEFAULT_HTTP_PORT,
        };
        // The entry comes after the job where the creator makes the init
        // itself; a forked copy of this process (no spawner) gets it with
        // the job.
        let entry_later = direct_init && module_check.is_some() && crate::spawner::available();
        let compiled = match (&module_check, entry_later) {
            (Some(check), false) => Some(check.run()?),
            _ => None,
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        // A wasm guest reports its end (its exit code, whether it ran out
        // of memory) on this pipe; the write end reaches the container
        // through the job and its clones, and is closed here once the job
        // is done, so the read end sees EOF at the container's exit.
        let guest_report = match is_wasm {
            true => {
                let (pipe, write) = GuestReportPipe::new()
                    .map_err(|e| ContainerError::GuestReportPipe { id: id.clone(), source: e.into() })?;
                fds.push(write);
                Some(pipe)
            }
            false => None,
        };
        let guest_report_fd = is_wasm.then_some(0);
        let owner = LogOwner { id: id.clone(), namespace: config.namespace.clone() };
        let (process, console_socket) =
            JobProcess::prepare(workload, compiled, wasm_memory.get(), terminal, &config.stdio, &owner, &mut fds)?;
        let cgroup_err = |e: crate::cgroup_join::OwnJoinError| ContainerError::Cgroup { id: id.clone(), message: e.to_string() };
        let prepared = match manager_ahead {
            Some(ahead) => Some(crate::cgroup_join::OwnJoin::prepare(ahead).map_err(cgroup_err)?),
            None => None,
        };
        // An init the creator makes itself may be answered before it is
        // ready (ready_later.rs). Not offered otherwise: libcontainer's
        // clones would keep the pipe.
        let ready_pipe = match direct_init.then(ReadyPipe::new).transpose() {
            Ok(pipe) => pipe.map(|(pipe, write)| {
                fds.push(write);
                (pipe, fds.len() - 1)
            }),
            Err(e) => {
                tracing::debug!(id = %id, "no ready pipe, Create waits for the init: {e}");
                None
            }
        };
        let job = CloneJob::Create {
            id: id.clone(),
            bundle: config.bundle.clone(),
            state_root: config.state_root.clone(),
            process,
            http_port,
            guest_report_fd,
            own_join: prepared.as_ref().map(|(join, _)| join.clone()),
            direct_init,
            ready_fd: ready_pipe.as_ref().map(|(_, index)| *index),
            entry_later,
        };
        // The module's check, while the creator works: its failure is this
        // Create's (the creator kills the init it made).
        let mut check_failed = None;
        let mut late_entry = || match module_check.as_ref().map(ModuleCheck::run) {
            Some(Ok(entry)) => LateEntry(Ok(entry)),
            Some(Err(e)) => {
                let message = e.to_string();
                check_failed = Some(e);
                LateEntry(Err(message))
            }
            None => LateEntry(Err("no module to check".to_string())),
        };
        let ran = job.run_cleanly(fds, entry_later.then_some(&mut late_entry as &mut dyn FnMut() -> LateEntry));
        let made = match (ran, check_failed) {
            (Ok(made), None) => made,
            (ran, failed) => {
                // A creator answers no init once the check failed; should
                // one come, it goes.
                if let Ok(made) = &ran {
                    if made.pid > 0 {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(made.pid), Signal::SIGKILL);
                    }
                }
                if let Some((_, pending)) = prepared {
                    pending.abandon();
                }
                let job_failed = |message| ContainerError::Job { id: id.clone(), action: "create", message };
                return Err(failed.unwrap_or_else(|| job_failed(ran.err().unwrap_or_default())));
            }
        };
        let mut container = match Self::load(&config.state_root, &id) {
            Ok(container) => container,
            Err(e) => {
                // Not a container the shim can manage: its init goes, with
                // the cgroups made for it.
                if made.pid > 0 {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(made.pid), nix::sys::signal::Signal::SIGKILL);
                }
                if let Some((_, pending)) = prepared {
                    pending.abandon();
                }
                return Err(e);
            }
        };
        // The container's limits hold before its guest can run: applied
        // once the init is ready (its /dev made), with the manager made
        // while the creator worked; before Create answers, or, when the
        // answer came first, before Start goes on.
        let poststop = spec.as_ref().and_then(|s| s.hooks().as_ref()).and_then(|h| h.poststop().as_ref()).is_some_and(|h| !h.is_empty());
        let limits = OwnLimits { pending: prepared.map(|(_, pending)| pending), path: own_join_path, poststop, init_pid: container.pid() };
        match (made.ready_later, ready_pipe) {
            (true, Some((pipe, _))) => container.setup = Some(Readiness::new(pipe, limits)),
            _ => match limits.ready() {
                Ok(done) => container.finished_setup(done),
                Err(message) => {
                    let _ = container.inner.delete(true);
                    return Err(ContainerError::Cgroup { id: id.clone(), message });
                }
            },
        }
        let console = match console_socket {
            Some(socket) => match socket.receive_master().and_then(|m| Console::start(m, &config.stdio, &id)) {
                Ok(console) => Some(console),
                Err(source) => {
                    let _ = container.inner.delete(true);
                    return Err(ContainerError::Tty { id, source });
                }
            },
            None => None,
        };
        container.rootfs = config.rootfs.clone();
        container.annotations = annotations;
        container.guest_report = guest_report;
        container.console = console;
        container.namespace = config.namespace.clone();
        container.wasm_memory = wasm_memory;
        container.proc_hidden = is_wasm;
        Ok(container)
    }

    /// Load a container's state left by a shim that is gone, for cleanup.
    pub fn load(state_root: &Path, id: &str) -> Result<Self, ContainerError> {
        let inner = Container::load(state_root.join(id)).map_err(|source| ContainerError::Libcontainer {
            id: id.to_string(),
            action: "load",
            source,
        })?;
        Ok(Self {
            id: id.to_string(),
            inner,
            state_root: state_root.to_path_buf(),
            rootfs: PathBuf::new(),
            annotations: HashMap::new(),
            guest_report: None,
            console: None,
            namespace: String::new(),
            wasm_memory: WasmMemoryLimit::default(),
            held_fifos: HeldFifos::default(),
            proc_hidden: false,
            cgroups: OnceCell::new(),
            teardown: None,
            mount_namespace: None,
            setup: None,
            setup_failed: None,
        })
    }

    fn finished_setup(&mut self, done: SetupDone) {
        if let Some(learned) = done.learned {
            self.keep_learned(learned);
        }
        self.mount_namespace = done.mount_namespace;
    }

    /// Wait for the rest of its Create, if Create answered before its init
    /// was ready: an error says why the container cannot start.
    fn finish_setup(&mut self) -> Result<(), ContainerError> {
        let failed = |id: &str, message: String| ContainerError::Job { id: id.to_string(), action: "create", message };
        if let Some(message) = &self.setup_failed {
            return Err(failed(&self.id, message.clone()));
        }
        let Some(setup) = self.setup.take() else { return Ok(()) };
        match setup.wait() {
            Ok(done) => {
                self.finished_setup(done);
                Ok(())
            }
            Err(message) => {
                self.setup_failed = Some(message.clone());
                Err(failed(&self.id, message))
            }
        }
    }

    /// Whether some of its Create is left for [`Self::settle`] or Start.
    pub fn setup_pending(&self) -> bool {
        self.setup.is_some()
    }

    /// Do the rest of its Create (its limits) if its init has told its
    /// readiness, without waiting: for a container left Created, whose
    /// Stats, Pids and cgroups would otherwise lack its limits until its
    /// Start (ready_later.rs).
    pub fn settle(&mut self) -> Settled {
        if self.setup.as_ref().is_some_and(|setup| !setup.told()) {
            return Settled::NotYet;
        }
        match self.finish_setup() {
            Ok(()) => Settled::Done,
            Err(e) => Settled::Failed(e.to_string()),
        }
    }

    /// What the wasm guest reported as it ended (see guest_report.rs): read
    /// without waiting, and kept. Empty for a native container, and for a
    /// guest that has not ended or was killed.
    pub fn guest_report(&mut self) -> GuestReport {
        self.guest_report.as_mut().map(GuestReportPipe::read).unwrap_or_default()
    }

    /// The pipe the wasm guest reports on, for the shim to wait on.
    pub fn guest_report_fd(&self) -> Option<BorrowedFd<'_>> {
        self.guest_report.as_ref().map(GuestReportPipe::as_fd)
    }

    /// Take the init process's terminal (terminal: true in its spec).
    pub fn take_console(&mut self) -> Option<Console> {
        self.console.take()
    }

    pub(crate) fn wasm_memory_limit(&self) -> Option<i64> {
        self.wasm_memory.get()
    }

    pub(crate) fn log_owner(&self) -> LogOwner {
        LogOwner { id: self.id.clone(), namespace: self.namespace.clone() }
    }

    /// The container's cgroups path, as libcontainer recorded it.
    pub(crate) fn cgroups_path(&self) -> Option<PathBuf> {
        self.inner.spec().ok().map(|config| config.cgroup_path)
    }

    pub(crate) fn state_root(&self) -> &Path {
        &self.state_root
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.state_root.join(&self.id)
    }

    pub(crate) fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    pub(crate) fn annotations(&self) -> &HashMap<String, String> {
        &self.annotations
    }

    pub(crate) fn proc_hidden(&self) -> bool {
        self.proc_hidden
    }

    /// Freeze every process of the container (cgroup freezer).
    pub fn pause(&mut self) -> Result<(), ContainerError> {
        self.finish_setup()?;
        self.inner.pause().map_err(|source| ContainerError::Libcontainer {
            id: self.id.clone(),
            action: "pause",
            source,
        })
    }

    /// Thaw a paused container.
    pub fn resume(&mut self) -> Result<(), ContainerError> {
        self.finish_setup()?;
        self.inner.resume().map_err(|source| ContainerError::Libcontainer {
            id: self.id.clone(),
            action: "resume",
            source,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The init process, as seen from the shim's pid namespace.
    pub fn pid(&self) -> Option<i32> {
        self.inner.pid().map(|p| p.as_raw())
    }

    /// Let go of the container's mount namespace, once its init has exited:
    /// drop what this answers off any request's path (see held_namespace.rs).
    pub fn take_mount_namespace(&mut self) -> Option<HeldMountNamespace> {
        self.mount_namespace.take()
    }

    pub fn start(&mut self) -> Result<(), ContainerError> {
        self.finish_setup()?;
        self.inner.start().map_err(|source| ContainerError::Libcontainer {
            id: self.id.clone(),
            action: "start",
            source,
        })
    }

    /// Send `signal` to the init process, or with `all` to every process.
    pub fn kill(&mut self, signal: u32, all: bool) -> Result<(), ContainerError> {
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| ContainerError::Signal { id: self.id.clone(), signal })?;
        self.inner.kill(sig, all).map_err(|source| ContainerError::Libcontainer {
            id: self.id.clone(),
            action: "kill",
            source,
        })
    }

    /// Remove the container: kills what is left, removes its cgroup and state.
    pub fn delete(&mut self) -> Result<(), ContainerError> {
        // The creator is done with the container before it goes (its init
        // failed, or was killed before Start, if this fails).
        if let Err(e) = self.finish_setup() {
            tracing::debug!(id = %self.id, "deleted before it was ready: {e}");
        }
        if self.delete_stopped()? {
            return Ok(());
        }
        self.inner.delete(true).map_err(|source| ContainerError::Libcontainer {
            id: self.id.clone(),
            action: "delete",
            source,
        })
    }
}
