//! containerd's task service (containerd.task.v2.Task), one shim serving
//! one or more containers. The names follow the protocol's own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim::protos::api::{self, Status};
use containerd_shim::monitor::{monitor_subscribe, ExitEvent, Subject, Topic};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use hybrid_runtime::{ContainerConfig, HybridContainer, StdioPaths};
use oci_spec::runtime::Spec;

use crate::events::EventSender;
use crate::rootfs;
use crate::shim::state_root;

fn status_error(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

/// The exit of the init process, once it happened.
#[derive(Clone)]
struct Exited {
    status: u32,
    at: Timestamp,
}

/// One container (init process) and what containerd asked for it.
struct Entry {
    container: HybridContainer,
    bundle: PathBuf,
    stdio: StdioPaths,
    terminal: bool,
    pid: u32,
    started: bool,
    exited: Option<Exited>,
}

struct State {
    containers: HashMap<String, Entry>,
}

pub struct TaskService {
    namespace: String,
    state: Arc<(Mutex<State>, Condvar)>,
    events: EventSender,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        let events = EventSender::spawn(publisher, namespace.to_string());
        let state = Arc::new((Mutex::new(State { containers: HashMap::new() }), Condvar::new()));
        spawn_exit_watcher(state.clone(), events.clone());
        Self { namespace: namespace.to_string(), state, events, exit }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere; the state is still the best we have.
        self.state.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reaped children arrive from containerd-shim's reaper (SIGCHLD → waitpid);
/// match them to our init processes.
fn spawn_exit_watcher(state: Arc<(Mutex<State>, Condvar)>, events: EventSender) {
    let subscription = match monitor_subscribe(Topic::Pid) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch process exits: {e}");
            return;
        }
    };
    let spawned = std::thread::Builder::new().name("exits".into()).spawn(move || {
        for ExitEvent { subject, exit_code } in subscription.rx.iter() {
            let Subject::Pid(pid) = subject else { continue };
            let (lock, cvar) = &*state;
            let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
            let found = st.containers.iter_mut().find(|(_, e)| e.pid as i32 == pid && e.exited.is_none());
            if let Some((id, entry)) = found {
                let exited = Exited { status: exit_code as u32, at: Timestamp::now() };
                entry.exited = Some(exited.clone());
                tracing::info!(id = %id, pid, exit_code, "init process exited");
                events.send(
                    TASK_EXIT_EVENT_TOPIC,
                    TaskExit {
                        container_id: id.clone(),
                        id: id.clone(),
                        pid: pid as u32,
                        exit_status: exited.status,
                        exited_at: MessageField::some(exited.at),
                        ..Default::default()
                    },
                );
                cvar.notify_all();
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the exit watcher: {e}");
    }
}

fn not_found(id: &str) -> ttrpc::Error {
    status_error(Code::NOT_FOUND, format!("container {id} not found"))
}

fn no_execs(exec_id: &str) -> TtrpcResult<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(status_error(Code::UNIMPLEMENTED, format!("exec {exec_id}: exec processes are not implemented yet")))
    }
}

fn create_container(req: &api::CreateTaskRequest, namespace: &str) -> Result<(HybridContainer, StdioPaths), ttrpc::Error> {
    let bundle = Path::new(&req.bundle);
    let spec = Spec::load(bundle.join("config.json"))
        .map_err(|e| status_error(Code::INVALID_ARGUMENT, format!("bundle {}: cannot load config.json: {e}", req.bundle)))?;
    // The spec's root is relative to the bundle (bundle/rootfs, where we
    // mounted the snapshot) or absolute (`ctr run --rootfs DIR`).
    let root = spec.root().as_ref().map(|r| bundle.join(r.path())).unwrap_or_else(|| rootfs::rootfs_path(bundle));
    let workload = hybrid_runtime::decide(&spec, &root)
        .map_err(|e| status_error(Code::INVALID_ARGUMENT, e.to_string()))?;
    tracing::info!(kind = ?workload.kind, entrypoint = ?workload.entrypoint, "workload decided");
    let stdio = StdioPaths { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone() };
    let config = ContainerConfig {
        id: req.id.clone(),
        bundle: bundle.to_path_buf(),
        rootfs: root,
        state_root: state_root(namespace),
        stdio: stdio.clone(),
    };
    let container = HybridContainer::create(&config, workload).map_err(|e| status_error(Code::INTERNAL, e.to_string()))?;
    Ok((container, stdio))
}

impl Task for TaskService {
    fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        let span = tracing::info_span!("create", id = %req.id);
        let _enter = span.enter();
        if req.terminal {
            return Err(status_error(Code::UNIMPLEMENTED, "terminal: tty support is not implemented yet"));
        }
        if !req.checkpoint.is_empty() {
            return Err(status_error(Code::UNIMPLEMENTED, "checkpoint restore is not implemented"));
        }
        if self.lock().containers.contains_key(&req.id) {
            return Err(status_error(Code::ALREADY_EXISTS, format!("container {} already exists", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        rootfs::mount_all(&bundle, &req.rootfs).map_err(|e| status_error(Code::INTERNAL, e.to_string()))?;
        let (container, stdio) = match create_container(&req, &self.namespace) {
            Ok(created) => created,
            Err(e) => {
                rootfs::unmount_all(&bundle);
                tracing::warn!("create failed: {e}");
                return Err(e);
            }
        };
        let pid = container.pid().unwrap_or_default() as u32;
        self.lock().containers.insert(
            req.id.clone(),
            Entry { container, bundle, stdio: stdio.clone(), terminal: req.terminal, pid, started: false, exited: None },
        );
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
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        no_execs(&req.exec_id)?;
        let mut st = self.lock();
        let entry = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if entry.started {
            return Err(status_error(Code::FAILED_PRECONDITION, format!("container {} is already started", req.id)));
        }
        entry.container.start().map_err(|e| status_error(Code::INTERNAL, e.to_string()))?;
        entry.started = true;
        let pid = entry.pid;
        // Sent under the lock, so that TaskStart is queued before the TaskExit
        // of a process that ends at once.
        self.events.send(TASK_START_EVENT_TOPIC, TaskStart { container_id: req.id.clone(), pid, ..Default::default() });
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        no_execs(&req.exec_id)?;
        let st = self.lock();
        let entry = st.containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let status = match (entry.started, &entry.exited) {
            (_, Some(_)) => Status::STOPPED,
            (true, None) => Status::RUNNING,
            (false, None) => Status::CREATED,
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: entry.bundle.display().to_string(),
            pid: entry.pid,
            status: status.into(),
            stdin: entry.stdio.stdin.clone(),
            stdout: entry.stdio.stdout.clone(),
            stderr: entry.stdio.stderr.clone(),
            terminal: entry.terminal,
            exit_status: entry.exited.as_ref().map(|e| e.status).unwrap_or_default(),
            exited_at: MessageField::from_option(entry.exited.as_ref().map(|e| e.at.clone())),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        no_execs(&req.exec_id)?;
        let mut st = self.lock();
        let entry = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if entry.exited.is_some() {
            return Err(status_error(Code::NOT_FOUND, format!("container {}: process already finished", req.id)));
        }
        entry.container.kill(req.signal, req.all).map_err(|e| status_error(Code::INTERNAL, e.to_string()))?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        no_execs(&req.exec_id)?;
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let entry = st.containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            if let Some(exited) = entry.exited.clone() {
                return Ok(api::WaitResponse {
                    exit_status: exited.status,
                    exited_at: MessageField::some(exited.at),
                    ..Default::default()
                });
            }
            st = cvar.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        no_execs(&req.exec_id)?;
        let span = tracing::info_span!("delete", id = %req.id);
        let _enter = span.enter();
        let mut st = self.lock();
        let entry = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if entry.started && entry.exited.is_none() {
            return Err(status_error(Code::FAILED_PRECONDITION, format!("container {} is running: kill it first", req.id)));
        }
        // Deleting a created-but-never-started container kills its waiting
        // init process; libcontainer removes the cgroup and its state.
        if let Err(e) = entry.container.delete() {
            tracing::warn!("cannot delete container: {e}");
        }
        rootfs::unmount_all(&entry.bundle);
        let exited = entry.exited.clone().unwrap_or(Exited { status: 0, at: Timestamp::now() });
        let pid = entry.pid;
        st.containers.remove(&req.id);
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

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let st = self.lock();
        let entry = st.containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let pids = entry.container.pids().map_err(|e| status_error(Code::INTERNAL, e.to_string()))?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo { pid: pid as u32, ..Default::default() })
                .collect(),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let st = self.lock();
        let task_pid = st.containers.get(&req.id).map(|e| e.pid).unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // A shim serving a group lives until its last container is deleted.
        if self.lock().containers.is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
