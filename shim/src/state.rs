//! What the shim knows of its containers and their processes, and the exit
//! watcher that turns reaped children into exit states and TaskExit events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use containerd_shim::monitor::{monitor_subscribe, ExitEvent, Subject, Topic};
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics::{TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC};
use hybrid_runtime::held_namespace::HeldMountNamespace;
use hybrid_runtime::{CgroupWarmup, Console, HybridContainer, PreparedExec, StdioPaths};

use crate::events::EventSender;

const CONSOLE_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The exit of a process, once it happened.
#[derive(Clone)]
pub struct Exited {
    pub status: u32,
    pub at: Timestamp,
}

/// One process of a container: its init, or an exec.
pub struct Proc {
    pub pid: u32,
    pub stdio: StdioPaths,
    pub terminal: bool,
    pub started: bool,
    pub exited: Option<Exited>,
    /// Reaped: the process is gone. A wasm init's exit is known from its
    /// guest's report before that (see early_exit.rs).
    pub reaped: bool,
    /// The process's terminal, when it has one.
    pub console: Option<Console>,
    /// The task that waits for a wasm init's report (see early_exit.rs).
    pub report_watch: Option<tokio::task::AbortHandle>,
}

impl Proc {
    pub fn new(pid: u32, stdio: StdioPaths, terminal: bool) -> Self {
        Self { pid, stdio, terminal, started: false, exited: None, reaped: false, console: None, report_watch: None }
    }

    pub fn running(&self) -> bool {
        self.started && self.exited.is_none()
    }
}

pub struct Exec {
    pub proc: Proc,
    pub prepared: PreparedExec,
}

/// One container and what containerd asked for it.
pub struct Entry {
    pub container: HybridContainer,
    pub bundle: PathBuf,
    pub init: Proc,
    pub paused: bool,
    pub execs: HashMap<String, Exec>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(watch) = self.report_watch.take() {
            watch.abort();
        }
    }
}

impl Entry {
    /// The init process for an empty exec id, else that exec's.
    pub fn proc(&self, exec_id: &str) -> Option<&Proc> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id).map(|e| &e.proc)
        }
    }

    pub fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id).map(|e| &mut e.proc)
        }
    }
}

#[derive(Default)]
pub struct State {
    pub containers: HashMap<String, Entry>,
    pub unknown_exits: UnknownExits,
}

/// How many exits of processes the shim did not know it keeps.
const UNKNOWN_EXITS_KEPT: usize = 64;

/// Exits of children the shim reaped before it knew them (the spawner's,
/// a build's helpers, and a container's init that ended while its Create
/// was still on its way back: its creator exited first, and the dead init
/// came to the shim, its subreaper, before Create recorded its pid).
/// Create takes its init's exit from here; the oldest go first.
#[derive(Default)]
pub struct UnknownExits(std::collections::VecDeque<(i32, i32)>);

impl UnknownExits {
    fn remember(&mut self, pid: i32, exit_code: i32) {
        if self.0.len() == UNKNOWN_EXITS_KEPT {
            self.0.pop_front();
        }
        self.0.push_back((pid, exit_code));
    }

    /// The exit code of `pid`, reaped already, if it was.
    pub fn take(&mut self, pid: i32) -> Option<i32> {
        let at = self.0.iter().rposition(|(reaped, _)| *reaped == pid)?;
        self.0.remove(at).map(|(_, exit_code)| exit_code)
    }
}

/// The state, and a counter raised at every exit, which Wait watches.
pub struct SharedState {
    pub state: Mutex<State>,
    pub exits: tokio::sync::watch::Sender<u64>,
}

pub type Shared = Arc<SharedState>;

impl SharedState {
    pub fn new() -> Shared {
        Arc::new(Self { state: Mutex::new(State::default()), exits: tokio::sync::watch::Sender::new(0) })
    }

    /// The state when no other thread holds it (a poisoned lock as `lock`).
    pub fn try_lock(&self) -> Option<std::sync::MutexGuard<'_, State>> {
        match self.state.try_lock() {
            Ok(state) => Some(state),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere; the state is still the best we have.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reaped children arrive from containerd-shim's reaper (SIGCHLD → waitpid);
/// match them to our processes. Processes are started with the state locked
/// and their pid recorded before the lock is released, so an exit cannot be
/// matched before its process is known.
pub fn spawn_exit_watcher(state: Shared, events: EventSender) {
    let subscription = match monitor_subscribe(Topic::Pid) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch process exits: {e}");
            return;
        }
    };
    let spawned = hybrid_runtime::fork_guard::spawn("exits".into(), move || {
        for ExitEvent { subject, exit_code } in subscription.rx.iter() {
            let Subject::Pid(pid) = subject else { continue };
            let recorded = record_exit(&mut state.lock(), pid, exit_code, &events);
            let Some(exited) = recorded else { continue };
            state.exits.send_modify(|n| *n = n.wrapping_add(1));
            if let ExitedProc::Init { bundle, mount_namespace } = exited {
                // A task whose init exited can only be deleted: its rootfs
                // is unmounted now, while containerd takes the exit to its
                // client, instead of in Delete, where the unmount's wait for
                // the kernel (3-5 ms) held up the reply. The container's
                // processes see their own copy of the mount (their mount
                // namespace, pivoted into it). Delete unmounts what is
                // still there.
                crate::rootfs::unmount_all(&bundle);
                // Its mount namespace is torn down here, not in the
                // init's exit (see hybrid_runtime::held_namespace).
                drop(mount_namespace);
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the exit watcher: {e}");
    }
}

/// Learn what the container's exit and Delete need of its cgroups on a
/// thread of its own, while the guest runs, and keep it with the container
/// (see hybrid_runtime's CgroupWarmup). Without it they do the same work
/// themselves.
pub fn learn_cgroups(state: &Shared, id: &str, warmup: CgroupWarmup) {
    let (state, id) = (state.clone(), id.to_string());
    let spawned = hybrid_runtime::fork_guard::spawn("cgroups".into(), move || {
        let learned = match warmup.learn() {
            Ok(learned) => learned,
            Err(e) => return tracing::debug!(id = %id, "cannot learn the container's cgroups ahead: {e}"),
        };
        if let Some(entry) = state.lock().containers.get_mut(&id) {
            entry.container.keep_learned(learned);
        }
    });
    if let Err(e) = spawned {
        tracing::debug!("cannot start a thread to learn the cgroups: {e}");
    }
}

/// Which of a container's processes an exit was.
enum ExitedProc {
    Init { bundle: PathBuf, mount_namespace: Option<HeldMountNamespace> },
    Exec,
}

fn record_exit(st: &mut State, pid: i32, exit_code: i32, events: &EventSender) -> Option<ExitedProc> {
    for (id, entry) in st.containers.iter_mut() {
        let init = std::iter::once((id.clone(), &mut entry.init, true));
        let execs = entry.execs.iter_mut().map(|(exec_id, e)| (exec_id.clone(), &mut e.proc, false));
        for (proc_id, proc, is_init) in init.chain(execs) {
            if proc.pid as i32 != pid || proc.reaped {
                continue;
            }
            proc.reaped = true;
            // Unless its guest's report told the exit already.
            if proc.exited.is_none() {
                // A terminal's last output is still in it: copy it out before
                // saying the process exited (bounded: a background child may
                // hold the terminal open).
                if let Some(console) = &proc.console {
                    console.wait_output(CONSOLE_DRAIN_TIMEOUT);
                }
                // The kernel's OOM killer leaves no trace in the exit status but a
                // SIGKILL: ask the memory cgroup, and say so before the exit. A
                // wasm guest stopped by its memory limit said so on its pipe.
                let oom = if !is_init {
                    None
                } else if entry.container.guest_report().out_of_memory {
                    Some("wasm guest ran out of memory")
                } else if entry.container.oom_kills().is_some_and(|n| n > 0) {
                    Some("killed by the OOM killer")
                } else {
                    None
                };
                mark_exited(id, &proc_id, proc, exit_code as u32, oom, ExitKnownFrom::Reap, events);
            }
            return Some(match is_init {
                true => ExitedProc::Init { bundle: entry.bundle.clone(), mount_namespace: entry.container.take_mount_namespace() },
                false => ExitedProc::Exec,
            });
        }
    }
    st.unknown_exits.remember(pid, exit_code);
    None
}

/// How the shim learned of an exit (logged with it).
#[derive(Debug, Clone, Copy)]
pub enum ExitKnownFrom {
    /// The wasm guest's report (early_exit.rs).
    GuestReport,
    /// The reaped process's status.
    Reap,
}

/// Record `proc`'s exit with `status` and queue its TaskExit event, after
/// a TaskOOM when `oom` says why it ran out of memory.
pub fn mark_exited(id: &str, proc_id: &str, proc: &mut Proc, status: u32, oom: Option<&str>, known_from: ExitKnownFrom, events: &EventSender) {
    let exited = Exited { status, at: Timestamp::now() };
    tracing::info!(id = %id, process = %proc_id, pid = proc.pid, exit_code = status, ?known_from, "process exited");
    if let Some(why) = oom {
        tracing::warn!(id = %id, "{why}");
        events.send(TASK_OOM_EVENT_TOPIC, TaskOOM { container_id: id.to_string(), ..Default::default() });
    }
    events.send(
        TASK_EXIT_EVENT_TOPIC,
        TaskExit {
            container_id: id.to_string(),
            id: proc_id.to_string(),
            pid: proc.pid,
            exit_status: exited.status,
            exited_at: MessageField::some(exited.at.clone()),
            ..Default::default()
        },
    );
    proc.exited = Some(exited);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_exit_is_kept_until_taken_once() {
        let mut exits = UnknownExits::default();
        exits.remember(41, 0);
        exits.remember(42, 255);
        assert_eq!(exits.take(42), Some(255));
        assert_eq!(exits.take(42), None, "taken once");
        assert_eq!(exits.take(41), Some(0));
    }

    #[test]
    fn only_the_latest_unknown_exits_are_kept() {
        let mut exits = UnknownExits::default();
        for pid in 0..(UNKNOWN_EXITS_KEPT as i32 + 1) {
            exits.remember(pid, 1);
        }
        assert_eq!(exits.take(0), None, "the oldest went");
        assert_eq!(exits.take(UNKNOWN_EXITS_KEPT as i32), Some(1));
    }
}
