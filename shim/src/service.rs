//! containerd's task service (containerd.task.v2.Task), one shim serving
//! one or more containers. The names follow the protocol's own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};

use containerd_shim::protos::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXEC_ADDED_EVENT_TOPIC, TASK_EXEC_STARTED_EVENT_TOPIC,
    TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{ExitSignal, TtrpcResult};
use hybrid_runtime::{ContainerConfig, HybridContainer, StdioPaths};
use oci_spec::runtime::Spec;

use crate::events::EventSender;
use crate::rootfs;
use crate::shim::state_root;
use crate::early_exit::watch_guest_report;
use crate::state::{mark_exited, spawn_exit_watcher, Entry, Exec, ExitKnownFrom, Exited, Proc, Shared, SharedState, State};

pub fn status_error(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn internal(e: impl std::fmt::Display) -> ttrpc::Error {
    status_error(Code::INTERNAL, e.to_string())
}

fn not_found(id: &str) -> ttrpc::Error {
    status_error(Code::NOT_FOUND, format!("container {id} not found"))
}

fn process_not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    status_error(Code::NOT_FOUND, format!("container {id}: exec {exec_id} not found"))
}

/// How long an exiting shim waits for the events still queued to go out
/// (in Shutdown), and as long for the removal of deleted containers' state
/// (after Shutdown's answer, serve.rs).
pub(crate) const SHUTDOWN_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long Delete waits for the reap of an init whose exit its guest
/// reported (early_exit.rs): the process is being torn down, which takes
/// about a millisecond.
const REAP_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct TaskService {
    namespace: String,
    state: Shared,
    events: EventSender,
    exit: Arc<ExitSignal>,
    /// The ttrpc runtime, which also waits on the wasm guests' reports.
    runtime: tokio::runtime::Handle,
}

impl TaskService {
    pub fn new(namespace: &str, events: EventSender, exit: Arc<ExitSignal>, runtime: tokio::runtime::Handle) -> Self {
        let state = SharedState::new();
        spawn_exit_watcher(state.clone(), events.clone());
        Self { namespace: namespace.to_string(), state, events, exit, runtime }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The state, locked once container `id`'s init, whose exit its guest
    /// reported, is reaped too (at most REAP_WAIT_LIMIT): until then the
    /// process is in its cgroups and holds its mounts. From a blocking
    /// thread (it waits on the runtime).
    fn lock_reaped(&self, id: &str) -> MutexGuard<'_, State> {
        let deadline = std::time::Instant::now() + REAP_WAIT_LIMIT;
        loop {
            let st = self.lock();
            let waiting = st.containers.get(id).is_some_and(|e| e.init.exited.is_some() && !e.init.reaped);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !waiting || left.is_zero() {
                return st;
            }
            // Raised by the exit watcher after the reap is recorded.
            let mut exits = self.state.exits.subscribe();
            drop(st);
            let _ = self.runtime.block_on(tokio::time::timeout(left, exits.changed()));
        }
    }
}

/// A process's state, as State answers it.
fn state_of(st: &State, req: &api::StateRequest) -> TtrpcResult<api::StateResponse> {
    let entry = st.containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
    let proc = entry.proc(&req.exec_id).ok_or_else(|| process_not_found(&req.id, &req.exec_id))?;
    Ok(api::StateResponse {
        id: req.id.clone(),
        exec_id: req.exec_id.clone(),
        bundle: entry.bundle.display().to_string(),
        pid: proc.pid,
        status: status_of(proc, entry.paused).into(),
        stdin: proc.stdio.stdin.clone(),
        stdout: proc.stdio.stdout.clone(),
        stderr: proc.stdio.stderr.clone(),
        terminal: proc.terminal,
        exit_status: proc.exited.as_ref().map(|e| e.status).unwrap_or_default(),
        exited_at: MessageField::from_option(proc.exited.as_ref().map(|e| e.at.clone())),
        ..Default::default()
    })
}

fn create_container(req: &api::CreateTaskRequest, namespace: &str) -> Result<HybridContainer, ttrpc::Error> {
    let bundle = Path::new(&req.bundle);
    let spec = Spec::load(bundle.join("config.json"))
        .map_err(|e| status_error(Code::INVALID_ARGUMENT, format!("bundle {}: cannot load config.json: {e}", req.bundle)))?;
    // The spec's root is relative to the bundle (bundle/rootfs, where we
    // mounted the snapshot) or absolute (`ctr run --rootfs DIR`).
    let root = spec.root().as_ref().map(|r| bundle.join(r.path())).unwrap_or_else(|| rootfs::rootfs_path(bundle));
    // An OCI wasm artifact's module, fetched from containerd into the empty rootfs.
    let artifact = crate::artifact::place_module(&req.id, namespace, &root).map_err(|e| status_error(Code::INVALID_ARGUMENT, e.to_string()))?;
    let workload = hybrid_runtime::workload::decide_with_artifact(&spec, &root, artifact.as_deref())
        .map_err(|e| status_error(Code::INVALID_ARGUMENT, e.to_string()))?;
    tracing::info!(kind = ?workload.kind, entrypoint = ?workload.entrypoint, "workload decided");
    let image_port = crate::image_port::exposed_http_port(&req.id, namespace, &spec, &root, &workload);
    let config = ContainerConfig {
        id: req.id.clone(),
        bundle: bundle.to_path_buf(),
        rootfs: root,
        state_root: state_root(namespace),
        stdio: StdioPaths { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone() },
        namespace: namespace.to_string(),
    };
    HybridContainer::create_with_spec(&config, spec, workload, image_port).map_err(|e| status_error(Code::INVALID_ARGUMENT, e.to_string()))
}

fn status_of(proc: &Proc, paused: bool) -> Status {
    match (proc.started, &proc.exited) {
        (_, Some(_)) => Status::STOPPED,
        (true, None) if paused => Status::PAUSED,
        (true, None) => Status::RUNNING,
        (false, None) => Status::CREATED,
    }
}

/// The calls of containerd's task service, each answered on the thread it
/// is called on (see task_async.rs for how ttrpc reaches them).
impl TaskService {
    pub fn create(&self, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        // The calling thread (of tokio's blocking pool) may idle a while:
        // give back what this call touched of its stack.
        let _stack = hybrid_runtime::stack::ReleaseOnReturn;
        self.events.connect_now();
        let span = tracing::info_span!("create", id = %req.id);
        let _enter = span.enter();
        if !req.checkpoint.is_empty() {
            return Err(status_error(Code::UNIMPLEMENTED, "checkpoint restore is not implemented"));
        }
        if self.lock().containers.contains_key(&req.id) {
            return Err(status_error(Code::ALREADY_EXISTS, format!("container {} already exists", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        rootfs::mount_all(&bundle, &req.rootfs).map_err(internal)?;
        let container = match create_container(&req, &self.namespace) {
            Ok(created) => created,
            Err(e) => {
                rootfs::unmount_all(&bundle);
                tracing::warn!("create failed: {e}");
                return Err(e);
            }
        };
        let mut container = container;
        let pid = container.pid().unwrap_or_default() as u32;
        let stdio = StdioPaths { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone() };
        let mut init = Proc::new(pid, stdio.clone(), req.terminal);
        init.console = container.take_console();
        if container.setup_pending() {
            crate::left_created::settle_later(&self.runtime, self.state.clone(), req.id.clone());
        }
        let reaped_already = {
            let mut st = self.lock();
            st.containers.insert(req.id.clone(), Entry { container, bundle, init, paused: false, execs: Default::default() });
            st.unknown_exits.take(pid as i32)
        };
        self.events.send(
            TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            },
        );
        // An init that ended while this Create came back (its setup failed
        // after its creator answered, and the shim reaped it first): its
        // exit is told now, after TaskCreate, as the exit watcher would.
        if let Some(exit_code) = reaped_already {
            if let Some(entry) = self.lock().containers.get_mut(&req.id) {
                entry.init.reaped = true;
                mark_exited(&req.id, &req.id, &mut entry.init, exit_code as u32, None, ExitKnownFrom::Reap, &self.events);
            }
            self.state.exits.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    pub fn start(&self, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        // See create.
        let _stack = hybrid_runtime::stack::ReleaseOnReturn;
        let span = tracing::info_span!("start", id = %req.id, exec = %req.exec_id);
        let _enter = span.enter();
        // The lock is held until the pid is recorded and the start event
        // queued, so that the exit watcher cannot see the exit first.
        let mut st = self.lock();
        let entry = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if req.exec_id.is_empty() {
            if entry.init.started {
                return Err(status_error(Code::FAILED_PRECONDITION, format!("container {} is already started", req.id)));
            }
            // A wasm guest reports its end before its process is gone:
            // watched from before it runs, since a short guest can end
            // before Start has answered (the watch records nothing until
            // this lock is let go of, and nothing for a task not started).
            let watch = entry
                .container
                .guest_report_fd()
                .and_then(|fd| fd.try_clone_to_owned().ok())
                .map(|pipe| watch_guest_report(&self.runtime, self.state.clone(), self.events.clone(), req.id.clone(), pipe));
            // A setup that failed after Create answered is told here
            // (hybrid_runtime's ready_later.rs).
            if let Err(e) = entry.container.start() {
                tracing::warn!("start failed: {e}");
                if let Some(watch) = watch {
                    watch.abort();
                }
                return Err(internal(e));
            }
            entry.init.started = true;
            entry.init.report_watch = watch;
            let pid = entry.init.pid;
            self.events.send(TASK_START_EVENT_TOPIC, TaskStart { container_id: req.id.clone(), pid, ..Default::default() });
            if let Some(warmup) = entry.container.cgroup_warmup() {
                crate::state::learn_cgroups(&self.state, &req.id, warmup);
            }
            return Ok(api::StartResponse { pid, ..Default::default() });
        }
        if !entry.init.running() {
            return Err(status_error(Code::FAILED_PRECONDITION, format!("container {} is not running", req.id)));
        }
        let exec = entry.execs.get_mut(&req.exec_id).ok_or_else(|| process_not_found(&req.id, &req.exec_id))?;
        if exec.proc.started {
            return Err(status_error(Code::FAILED_PRECONDITION, format!("exec {} is already started", req.exec_id)));
        }
        let started = entry.container.start_exec(&exec.prepared).map_err(internal)?;
        let pid = started.pid as u32;
        exec.proc.pid = pid;
        exec.proc.console = started.console;
        exec.proc.started = true;
        self.events.send(
            TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskExecStarted { container_id: req.id.clone(), exec_id: req.exec_id.clone(), pid, ..Default::default() },
        );
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    pub fn exec(&self, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        // See create.
        let _stack = hybrid_runtime::stack::ReleaseOnReturn;
        let span = tracing::info_span!("exec", id = %req.id, exec = %req.exec_id);
        let _enter = span.enter();
        let mut st = self.lock();
        let entry = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if entry.execs.contains_key(&req.exec_id) {
            return Err(status_error(Code::ALREADY_EXISTS, format!("exec {} already exists", req.exec_id)));
        }
        if !entry.init.running() {
            return Err(status_error(Code::FAILED_PRECONDITION, format!("container {} is not running", req.id)));
        }
        let spec = req.spec.as_ref().map(|any| any.value.as_slice()).unwrap_or_default();
        let stdio = StdioPaths { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone() };
        let prepared = entry
            .container
            .prepare_exec(&req.exec_id, spec, stdio.clone())
            .map_err(|e| status_error(Code::INVALID_ARGUMENT, e.to_string()))?;
        tracing::info!(kind = ?prepared.workload.kind, entrypoint = ?prepared.workload.entrypoint, "exec workload decided");
        entry.execs.insert(req.exec_id.clone(), Exec { proc: Proc::new(0, stdio, req.terminal), prepared });
        self.events.send(
            TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded { container_id: req.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() },
        );
        Ok(api::Empty::default())
    }

    pub fn state(&self, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        state_of(&self.lock(), &req)
    }

    /// State's answer when no other call holds the state, else None (see
    /// task_async: answered on the runtime's worker, without a thread hop).
    pub fn try_state(&self, req: &api::StateRequest) -> Option<TtrpcResult<api::StateResponse>> {
        let st = self.state.try_lock()?;
        Some(state_of(&st, req))
    }

    pub fn kill(&self, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let mut st = self.lock();
        let entry = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        let proc = entry.proc(&req.exec_id).ok_or_else(|| process_not_found(&req.id, &req.exec_id))?;
        if proc.exited.is_some() || (!req.exec_id.is_empty() && !proc.started) {
            return Err(status_error(Code::NOT_FOUND, format!("container {}: process already finished", req.id)));
        }
        if req.exec_id.is_empty() {
            entry.container.kill(req.signal, req.all).map_err(internal)?;
        } else {
            let signal = i32::try_from(req.signal)
                .ok()
                .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
                .ok_or_else(|| status_error(Code::INVALID_ARGUMENT, format!("invalid signal {}", req.signal)))?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(proc.pid as i32), signal).map_err(internal)?;
        }
        Ok(api::Empty::default())
    }

    /// The exit of the init (or an exec), once it happened: waits
    /// without a thread, on the counter the exit watcher raises.
    pub async fn wait(&self, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        // Watched from before the first look, so that an exit between the
        // look and the wait still wakes it.
        let mut exits = self.state.exits.subscribe();
        loop {
            {
                let st = self.lock();
                let entry = st.containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
                let proc = entry.proc(&req.exec_id).ok_or_else(|| process_not_found(&req.id, &req.exec_id))?;
                if let Some(exited) = proc.exited.clone() {
                    return Ok(api::WaitResponse { exit_status: exited.status, exited_at: MessageField::some(exited.at), ..Default::default() });
                }
            }
            // The watcher (the sender) lives as long as the state.
            exits.changed().await.map_err(|_| internal("the exit watcher is gone"))?;
        }
    }

    pub fn delete(&self, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        // See create.
        let _stack = hybrid_runtime::stack::ReleaseOnReturn;
        let span = tracing::info_span!("delete", id = %req.id, exec = %req.exec_id);
        let _enter = span.enter();
        let mut st = if req.exec_id.is_empty() { self.lock_reaped(&req.id) } else { self.lock() };
        let entry = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if !req.exec_id.is_empty() {
            let exec = entry.execs.get(&req.exec_id).ok_or_else(|| process_not_found(&req.id, &req.exec_id))?;
            if exec.proc.running() {
                return Err(status_error(Code::FAILED_PRECONDITION, format!("exec {} is running: kill it first", req.exec_id)));
            }
            let exited = exec.proc.exited.clone().unwrap_or(Exited { status: 0, at: Timestamp::now() });
            let pid = exec.proc.pid;
            // Its stdio is closed after the answer, as a container's below.
            if let Some(exec) = entry.execs.remove(&req.exec_id) {
                hybrid_runtime::deferred_removal::drop_soon(exec);
            }
            return Ok(api::DeleteResponse { pid, exit_status: exited.status, exited_at: MessageField::some(exited.at), ..Default::default() });
        }
        if entry.init.running() {
            return Err(status_error(Code::FAILED_PRECONDITION, format!("container {} is running: kill it first", req.id)));
        }
        // Deleting a created-but-never-started container kills its waiting
        // init process; libcontainer removes the cgroup and its state.
        if let Err(e) = entry.container.delete() {
            tracing::warn!("cannot delete container: {e}");
        }
        rootfs::unmount_all(&entry.bundle);
        let exited = entry.init.exited.clone().unwrap_or(Exited { status: 0, at: Timestamp::now() });
        let pid = entry.init.pid;
        // What the entry holds is closed after the answer: the last close
        // of the client's stdio fifos, whose directory it removed before
        // Delete, frees that directory's block on the device (see
        // hybrid_runtime::deferred_removal).
        if let Some(entry) = st.containers.remove(&req.id) {
            hybrid_runtime::deferred_removal::drop_soon(entry);
        }
        self.events.send(
            TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status: exited.status,
                exited_at: MessageField::some(exited.at.clone()),
                ..Default::default()
            },
        );
        Ok(api::DeleteResponse { pid, exit_status: exited.status, exited_at: MessageField::some(exited.at), ..Default::default() })
    }

    pub fn update(&self, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let span = tracing::info_span!("update", id = %req.id);
        let _enter = span.enter();
        let mut st = self.lock();
        let entry = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        let Some(resources) = req.resources.as_ref() else {
            return Ok(api::Empty::default());
        };
        entry
            .container
            .update(&resources.value)
            .map_err(|e| status_error(Code::INVALID_ARGUMENT, e.to_string()))?;
        Ok(api::Empty::default())
    }

    pub fn close_io(&self, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // Without a terminal the process reads containerd's stdin fifo itself
        // and sees EOF as soon as containerd's writer closes. With one, the
        // shim copies stdin and holds the fifo open until asked here.
        let mut st = self.lock();
        let entry = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        let proc = entry.proc_mut(&req.exec_id).ok_or_else(|| process_not_found(&req.id, &req.exec_id))?;
        if let Some(console) = proc.console.as_mut() {
            console.close_stdin();
        }
        Ok(api::Empty::default())
    }

    pub fn resize_pty(&self, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let st = self.lock();
        let entry = st.containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let proc = entry.proc(&req.exec_id).ok_or_else(|| process_not_found(&req.id, &req.exec_id))?;
        let console = proc.console.as_ref().ok_or_else(|| {
            status_error(Code::FAILED_PRECONDITION, format!("container {}: process {:?} has no terminal", req.id, req.exec_id))
        })?;
        console.resize(req.width, req.height).map_err(internal)?;
        Ok(api::Empty::default())
    }

    pub fn pause(&self, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let mut st = self.lock();
        let entry = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if !entry.init.running() {
            return Err(status_error(Code::FAILED_PRECONDITION, format!("container {} is not running", req.id)));
        }
        entry.container.pause().map_err(internal)?;
        entry.paused = true;
        self.events.send(TASK_PAUSED_EVENT_TOPIC, TaskPaused { container_id: req.id.clone(), ..Default::default() });
        Ok(api::Empty::default())
    }

    pub fn resume(&self, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let mut st = self.lock();
        let entry = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if !entry.paused {
            return Err(status_error(Code::FAILED_PRECONDITION, format!("container {} is not paused", req.id)));
        }
        entry.container.resume().map_err(internal)?;
        entry.paused = false;
        self.events.send(TASK_RESUMED_EVENT_TOPIC, TaskResumed { container_id: req.id.clone(), ..Default::default() });
        Ok(api::Empty::default())
    }

    pub fn stats(&self, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        // See create.
        let _stack = hybrid_runtime::stack::ReleaseOnReturn;
        let st = self.lock();
        let entry = st.containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let (stats, version) = entry.container.stats().map_err(internal)?;
        let any = crate::metrics::to_any(&stats, version).map_err(internal)?;
        Ok(api::StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    pub fn pids(&self, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let st = self.lock();
        let entry = st.containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let pids = entry.container.pids().map_err(internal)?;
        Ok(api::PidsResponse {
            processes: pids.into_iter().map(|pid| api::ProcessInfo { pid: pid as u32, ..Default::default() }).collect(),
            ..Default::default()
        })
    }

    pub fn connect(&self, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let st = self.lock();
        let task_pid = st.containers.get(&req.id).map(|e| e.init.pid).unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    pub fn shutdown(&self, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // A shim serving a group lives until its last container is deleted.
        if self.lock().containers.is_empty() {
            // The serving loop exits at once (see serve.rs): the events
            // still queued (the last container's TaskDelete) go out first.
            if !self.events.flush(SHUTDOWN_WAIT_LIMIT) {
                tracing::warn!("events still queued at shutdown are dropped");
            }
            // The state of the containers it deleted is removed after the
            // answer, before the process exits (serve.rs).
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
