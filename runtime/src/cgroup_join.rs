//! Keeping the kernel's wait at a container's cgroup join off its start.
//!
//! Moving a process into a cgroup (a write to `cgroup.procs`) takes the
//! kernel's cgroup_threadgroup_rwsem for writing. That per-cpu rwsem makes
//! its first writer after a quiet spell wait for an RCU grace period (6 to
//! 27 ms measured on the 2-core test machine, cgroup v1 or v2 alike);
//! writers that come while one waits share that grace period, and writers
//! that come within a grace period of the last one leaving wait for none.
//! A container's process joins its cgroups deep in libcontainer (which
//! writes its pid, the form that takes the lock), some 5-15 ms after Create
//! or Exec arrives: it paid the whole wait on top. Two ways out, here:
//! - on a cgroup v1 host, a wasm container's and every exec's process
//!   joins without the lock ([`OwnJoin`], see the comment above it);
//! - elsewhere (a native container's create, cgroup v2), a thread of the
//!   shim "moves" the shim into the cgroup it is already in (the kernel
//!   changes nothing, but takes the lock) from the moment the request
//!   arrives, again every millisecond while the window is open: the grace
//!   period runs meanwhile, and the lock then never goes quiet before the
//!   container's join ([`JoinWindow`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libcgroups::common::{CgroupManager, CgroupSetup, ControllerOpt};
use libcgroups::v1::ControllerType;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

/// The shim's own `cgroup.procs`, found once (None: no cgroup to rejoin).
static OWN_PROCS: OnceLock<Option<PathBuf>> = OnceLock::new();

/// How often the window's thread takes the lock: well inside the shortest
/// grace period seen (6 ms), so that the lock never goes quiet.
const REJOIN_EVERY: Duration = Duration::from_millis(1);

/// While alive (and `longest` at most), a cgroup join waits for no grace
/// period. Dropped: the thread stops at its next round. Best effort: any
/// failure only loses the overlap.
pub struct JoinWindow {
    closed: Arc<AtomicBool>,
}

/// Longest a request's window stays open: a Create or Exec that takes
/// longer (a module compiled, an image's slow disk) has joined already or
/// pays one wait.
const REQUEST_WINDOW: Duration = Duration::from_secs(2);

impl JoinWindow {
    /// Open the window for the join of the Create or Exec being served.
    pub fn for_request() -> Self {
        let closed = Arc::new(AtomicBool::new(false));
        keep_lock_warm(REQUEST_WINDOW, closed.clone());
        Self { closed }
    }
}

impl Drop for JoinWindow {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// Open a window that closes by itself after `longest`: for a shim that
/// has just started and is about to be sent its first Create.
pub fn open_window_for(longest: Duration) {
    // Where a wasm container joins without the lock, the window's thread
    // would only hold the cgroup mutex through its wait, and the join with it.
    if own_join_possible() {
        return;
    }
    keep_lock_warm(longest, Arc::new(AtomicBool::new(false)));
}

/// Start the grace period from a short-lived child process, for a
/// process that is about to exit and must not wait: the shim's `start`,
/// whose container's Create follows within milliseconds. Only for a
/// single-threaded process (the child runs in a copy of its memory).
pub fn start_grace_period_in_child() {
    // See open_window_for.
    if own_join_possible() {
        return;
    }
    // SAFETY: the caller is single-threaded (see above), so the child's
    // copy of its memory holds no lock of a thread missing there.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // Let go of the caller's stdio first: its reader (containerd
            // reading `start`) waits for every holder to close them.
            let _ = crate::fds::stdio_to_dev_null();
            if let Some(procs) = own_cgroup_procs() {
                let _ = std::fs::write(procs, std::process::id().to_string());
            }
            // SAFETY: _exit ends this child without running the parent's
            // atexit handlers or flushing its copies of the parent's buffers.
            unsafe { libc::_exit(0) };
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {}
        Err(e) => tracing::debug!("no cgroup join child: {e}"),
    }
}

fn keep_lock_warm(longest: Duration, closed: Arc<AtomicBool>) {
    let spawned = crate::fork_guard::spawn("cgroup-join".into(), move || {
        // Paths and the open allocate: not while a clone is being taken
        // (see fork_guard). The writes, which wait, hold no lock of ours
        // and allocate nothing (the pid is formatted on the stack).
        let file = {
            let _no_clone = crate::fork_guard::for_shared_state();
            let Some(procs) = OWN_PROCS.get_or_init(own_cgroup_procs) else { return };
            match std::fs::OpenOptions::new().write(true).open(procs) {
                Ok(file) => file,
                Err(e) => return tracing::debug!("cannot open {procs:?} to rejoin: {e}"),
            }
        };
        let mut pid = std::io::Cursor::new([0u8; 16]);
        let _ = write!(pid, "{}", std::process::id());
        let len = pid.position() as usize;
        let until = Instant::now() + longest;
        loop {
            if (&file).write_all(&pid.get_ref()[..len]).is_err() {
                return;
            }
            if closed.load(Ordering::Relaxed) || Instant::now() >= until {
                return;
            }
            std::thread::sleep(REJOIN_EVERY);
        }
    });
    if let Err(e) = spawned {
        tracing::debug!("no cgroup join thread: {e}");
    }
}

/// `cgroup.procs` of the cgroup this process is in: in the unified
/// hierarchy on cgroup v2, in the pids hierarchy on v1 (any hierarchy
/// would do: the lock is one for all).
fn own_cgroup_procs() -> Option<PathBuf> {
    let own = procfs::process::Process::myself().ok()?.cgroups().ok()?.0;
    let (mount, pathname) = match libcgroups::common::get_cgroup_setup().ok()? {
        CgroupSetup::Unified => {
            let entry = own.into_iter().find(|c| c.hierarchy == 0)?;
            (libcgroups::v2::util::get_unified_mount_point().ok()?, entry.pathname)
        }
        CgroupSetup::Legacy | CgroupSetup::Hybrid => {
            let entry = own.into_iter().find(|c| c.controllers.iter().any(|k| k == "pids"))?;
            (libcgroups::v1::util::get_subsystem_mount_point(&ControllerType::Pids).ok()?, entry.pathname)
        }
    };
    Some(mount.join(pathname.trim_start_matches('/')).join("cgroup.procs"))
}

// On a cgroup v1 host a process can join a cgroup without that lock: a
// thread that writes "0" (itself) to a hierarchy's `tasks` moves only
// itself, and the kernel takes the lock only to move a whole thread group
// or another task (0.2 ms where `cgroup.procs` waited 8 ms, median, on the
// test machine). So for a wasm container the shim makes the cgroups and
// applies the spec's resources ([`OwnJoin::prepare`]), and the creator,
// single-threaded, joins them that way before libcontainer runs
// ([`OwnJoin::run`]): its intermediate and init processes are born inside.
// libcontainer's intermediate would still write its pid (and take the
// lock): the creator detaches the v1 hierarchies from a mount namespace of
// its own, so that libcontainer finds none to join, and the spec
// libcontainer reads has no resources to apply there. An exec's creator
// joins the container's cgroups the same way ([`OwnJoin::existing`]); its
// process enters the container's mount namespace, so the detached
// hierarchies are never its view. The cgroup mounts a native container
// shows inside are libcontainer's, made from that same listing: native
// creates keep libcontainer's join (and the window above).

/// The controllers libcgroups manages on cgroup v1.
const V1_CONTROLLERS: [ControllerType; 12] = [
    ControllerType::Cpu,
    ControllerType::CpuAcct,
    ControllerType::CpuSet,
    ControllerType::Devices,
    ControllerType::HugeTlb,
    ControllerType::Memory,
    ControllerType::Pids,
    ControllerType::PerfEvent,
    ControllerType::Blkio,
    ControllerType::NetworkPriority,
    ControllerType::NetworkClassifier,
    ControllerType::Freezer,
];

/// The `tasks` files a container's (or exec's) creator writes itself into.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnJoin {
    tasks: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum OwnJoinError {
    #[error("cgroup {path:?}: cannot {action}: {source}")]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },
    #[error("cannot list the cgroup v1 hierarchies: {0}")]
    Hierarchies(String),
    #[error("cgroups path {path:?}: cannot apply the spec's resources: {message}")]
    Apply { path: PathBuf, message: String },
}

/// Whether a wasm container's creator joins its cgroups itself: on a
/// cgroup v1 host (legacy or hybrid), where `tasks` exists.
pub fn own_join_possible() -> bool {
    static V1: OnceLock<bool> = OnceLock::new();
    *V1.get_or_init(|| {
        matches!(libcgroups::common::get_cgroup_setup(), Ok(CgroupSetup::Legacy) | Ok(CgroupSetup::Hybrid))
    })
}

/// libcgroups' v1 manager of a container's cgroups, made on a thread of
/// its own while the container is made: making a manager reads mountinfo
/// and /proc/self/cgroup for each of twelve controllers (2.6 ms of cpu on
/// the test machine). The creator needs the cgroups only, to join them;
/// the limits must hold before the guest runs, and are applied with that
/// manager once the container's init is made and waits for Start
/// ([`OwnJoin::prepare`], then [`PendingLimits::finish`]): applied while
/// the init sets up its /dev, the device rules (a deny-all, then each
/// allowed device, one write at a time) could refuse its mknod of
/// /dev/null meanwhile.
/// The thread makes the cgroup directories first, while Create does the
/// rest of its work before the creator (the spec, the workload, the
/// module): eight mkdirs in cgroupfs took 0.5 to 0.8 ms of Create there.
/// It then leaves Create's cpu for the manager's making, and hands the
/// manager over: Create applies the limits itself, as asking the thread
/// to would wake it on the other cpu and then be woken by its answer.
pub struct ManagerAhead {
    path: PathBuf,
    resources: Option<LinuxResources>,
    /// None when no thread could be started: all is done on Create's.
    thread: Option<ManagerThread>,
}

type MadeManager = Result<libcgroups::v1::Manager, libcgroups::v1::manager::V1ManagerError>;

/// The manager's thread, seen from Create: it answers the directories it
/// made (`dirs`), hands over the manager (`handed`) and waits to be told
/// that it was taken (`taken`), and removes the directories it made when
/// it never is (the Create failed before it used them; nothing joined them).
struct ManagerThread {
    dirs: Receiver<DirsMade>,
    taken: Sender<()>,
    handed: Receiver<MadeManager>,
}

impl ManagerThread {
    /// The manager the thread made; None when the thread is gone.
    fn take(self) -> Option<MadeManager> {
        let manager = self.handed.recv().ok();
        // Its directories are the taker's from here.
        let _ = self.taken.send(());
        manager
    }
}

/// The container's directories and whether all were made; those made.
type DirsMade = (Result<Vec<(ControllerType, PathBuf)>, OwnJoinError>, Vec<PathBuf>);

impl ManagerAhead {
    /// Start making the cgroups at `cgroups_path` and their manager, with
    /// which [`PendingLimits::finish`] applies `resources` to them.
    pub fn start(cgroups_path: &Path, resources: Option<&LinuxResources>) -> Self {
        let (taken, told) = std::sync::mpsc::channel::<()>();
        let (hand, handed) = std::sync::mpsc::channel::<MadeManager>();
        let (dirs_answer, dirs_made) = std::sync::mpsc::channel::<DirsMade>();
        let path = cgroups_path.to_path_buf();
        let resources = resources.cloned();
        let for_thread = path.clone();
        // A shim exits right after a failed Create's Shutdown: not before
        // this thread has removed what it made (see deferred_removal).
        let before_exit = crate::deferred_removal::BeforeExit::new();
        let create_cpu = crate::same_cpu::current_cpu();
        let started = crate::fork_guard::spawn("cgroup-manager".into(), move || {
            let _before_exit = before_exit;
            let (dirs, made) = make_dirs(&for_thread);
            let all_made = dirs.is_ok();
            // A failure is OwnJoin::prepare's to clean up and report.
            let _ = dirs_answer.send((dirs, made.clone()));
            if !all_made {
                return;
            }
            // The manager's making is long, and the container's making
            // waits for none of it: not on the cpu where that goes on.
            if let Some(cpu) = create_cpu {
                crate::same_cpu::move_off(cpu);
            }
            let _ = hand.send(libcgroups::v1::Manager::new(&for_thread));
            if told.recv().is_err() {
                remove_made(&made);
            }
        });
        if let Err(e) = &started {
            tracing::debug!("cannot start a thread to make the cgroup manager: {e}");
        }
        match started {
            Ok(_) => Self { path, resources, thread: Some(ManagerThread { dirs: dirs_made, taken, handed }) },
            Err(_) => Self { path, resources, thread: None },
        }
    }

    /// The cgroups path it manages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Give the cgroups up, nothing having joined them: returns once their
    /// directories are gone (and its thread is done with them).
    pub fn abandon(self) {
        // Without its thread nothing was made.
        if self.thread.is_none() {
            return;
        }
        match OwnJoin::prepare(self) {
            Ok((_, pending)) => pending.abandon(),
            // The directories it made are removed already.
            Err(e) => tracing::debug!("cgroups made ahead: {e}"),
        }
    }
}

fn apply(manager: &libcgroups::v1::Manager, resources: Option<&LinuxResources>) -> Result<(), String> {
    let Some(resources) = resources else { return Ok(()) };
    let opt = ControllerOpt { resources, disable_oom_killer: false, oom_score_adj: None, freezer_state: None };
    manager.apply(&opt).map_err(|e| e.to_string())
}

/// A container's cgroups, made, with their manager being made.
pub struct PendingLimits {
    path: PathBuf,
    resources: Option<LinuxResources>,
    thread: Option<ManagerThread>,
    made: Vec<PathBuf>,
}

impl PendingLimits {
    /// Apply the resources, once the container's init is made: the
    /// manager the container keeps (Stats, the exit and Delete use it).
    /// The manager is made here when the thread could not. On failure the
    /// cgroups are removed, killing what joined them.
    pub fn finish(self) -> Result<libcgroups::v1::Manager, OwnJoinError> {
        self.answer(true)
    }

    /// The container was not made: remove its cgroups, limits unapplied.
    pub fn abandon(self) {
        if let Ok(manager) = self.answer(false) {
            remove_own_join(&manager);
        }
    }

    fn answer(self, apply_resources: bool) -> Result<libcgroups::v1::Manager, OwnJoinError> {
        let made = match self.thread.and_then(ManagerThread::take) {
            Some(made) => made,
            None => libcgroups::v1::Manager::new(&self.path),
        };
        let manager = match made {
            Ok(manager) => manager,
            Err(e) => {
                remove_made(&self.made);
                return Err(OwnJoinError::Apply { path: self.path, message: e.to_string() });
            }
        };
        let applied = match apply_resources {
            true => apply(&manager, self.resources.as_ref()),
            false => Ok(()),
        };
        match applied {
            Ok(()) => Ok(manager),
            Err(message) => {
                remove_own_join(&manager);
                Err(OwnJoinError::Apply { path: self.path, message })
            }
        }
    }
}

impl OwnJoin {
    /// In the shim: make the container's cgroups, at the path `ahead`
    /// makes the manager of; answers the join for the creator, and the
    /// limits to apply once the container is made.
    pub fn prepare(ahead: ManagerAhead) -> Result<(Self, PendingLimits), OwnJoinError> {
        // Made by the manager's thread (see ManagerAhead), or here when it
        // did not start.
        let (dirs, made) = match ahead.thread.as_ref().and_then(|thread| thread.dirs.recv().ok()) {
            Some(answered) => answered,
            None => make_dirs(&ahead.path),
        };
        let dirs = match dirs {
            Ok(dirs) => dirs,
            Err(e) => {
                // Nothing is in them yet: a failed Create leaves none behind.
                remove_made(&made);
                return Err(e);
            }
        };
        let pending = PendingLimits { path: ahead.path, resources: ahead.resources, thread: ahead.thread, made };
        Ok((Self::from_dirs(&dirs), pending))
    }

    /// In the shim: the join of an exec into the container whose cgroups
    /// are at `cgroups_path`, made already. None when one of them is
    /// missing: libcontainer's join then makes it, as it always did.
    pub fn existing(cgroups_path: &Path) -> Option<Self> {
        let dirs = directories(cgroups_path).ok()?;
        dirs.iter().all(|(_, dir)| dir.join("tasks").exists()).then(|| Self::from_dirs(&dirs))
    }

    fn from_dirs(dirs: &[(ControllerType, PathBuf)]) -> Self {
        Self { tasks: dirs.iter().map(|(_, dir)| dir.join("tasks")).collect() }
    }

    /// In the creator: join the cgroups and, when libcontainer's
    /// intermediate process will run (`hide_hierarchies`), hide the
    /// hierarchies from it (see above). Moves the calling thread only: call
    /// in a single-threaded process that makes the container.
    pub(crate) fn run(&self, hide_hierarchies: bool) -> Result<(), OwnJoinError> {
        for file in &self.tasks {
            std::fs::write(file, "0").map_err(|source| OwnJoinError::Io { path: file.clone(), action: "join", source })?;
        }
        // Best effort: a hierarchy left in view only costs libcontainer's
        // slow join of a process that is there already.
        if hide_hierarchies {
            if let Err(e) = detach_hierarchies() {
                tracing::debug!("cgroup hierarchies stay in view: {e}");
            }
        }
        Ok(())
    }
}

/// The container's directory in each hierarchy, with the controller it
/// was found for (hierarchies mounted together, cpu,cpuacct, share one).
/// None at all is refused: hidden from libcontainer, a container in no
/// cgroup would go unlimited and unseen by Pids and Stats.
fn directories(cgroups_path: &Path) -> Result<Vec<(ControllerType, PathBuf)>, OwnJoinError> {
    let relative = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    let mut dirs: Vec<(ControllerType, PathBuf)> = Vec::new();
    for (controller, mount) in hierarchies()? {
        let dir = mount.join(relative);
        if !dirs.iter().any(|(_, known)| *known == dir) {
            dirs.push((*controller, dir));
        }
    }
    match dirs.is_empty() {
        true => Err(OwnJoinError::Hierarchies("no cgroup v1 hierarchy lists this process".into())),
        false => Ok(dirs),
    }
}

/// The v1 `memory.oom_control` of the cgroups at `cgroups_path`, from the
/// hierarchies found once (libcgroups would read the mount table again).
pub fn oom_control_file(cgroups_path: &Path) -> Option<PathBuf> {
    let relative = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    let (_, mount) = hierarchies().ok()?.iter().find(|(controller, _)| *controller == ControllerType::Memory)?;
    Some(mount.join(relative).join("memory.oom_control"))
}

/// The container's directories under `cgroups_path`, made; with those
/// made so far when one could not be.
fn make_dirs(cgroups_path: &Path) -> DirsMade {
    let mut made = Vec::new();
    let dirs = directories(cgroups_path).and_then(|dirs| make(&dirs, &mut made).map(|()| dirs));
    (dirs, made)
}

/// Remove the cgroup directories [`make`] made, the last made first.
fn remove_made(made: &[PathBuf]) {
    for dir in made.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Make `dirs`, listing in `made` each one as soon as it exists.
fn make(dirs: &[(ControllerType, PathBuf)], made: &mut Vec<PathBuf>) -> Result<(), OwnJoinError> {
    for (controller, dir) in dirs {
        std::fs::create_dir_all(dir).map_err(|source| OwnJoinError::Io { path: dir.clone(), action: "create", source })?;
        made.push(dir.clone());
        if *controller == ControllerType::CpuSet {
            // A new cpuset has no cpus and no memory nodes, and takes no
            // task until it has: its parents' (as libcgroups does).
            for name in ["cpuset.cpus", "cpuset.mems"] {
                inherit_if_empty(dir, name)?;
            }
        }
    }
    Ok(())
}

/// Each v1 controller this process is in, with its hierarchy's mount
/// point (from the mount's own options: where the kernel says it is);
/// found once (mounts and this process's cgroups stay).
fn hierarchies() -> Result<&'static [(ControllerType, PathBuf)], OwnJoinError> {
    static FOUND: OnceLock<Result<Vec<(ControllerType, PathBuf)>, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let myself = procfs::process::Process::myself().map_err(|e| e.to_string())?;
        let own = myself.cgroups().map_err(|e| e.to_string())?.0;
        let mounts = myself.mountinfo().map_err(|e| e.to_string())?.0;
        let mut found = Vec::new();
        for controller in V1_CONTROLLERS {
            let name = controller.to_string();
            if !own.iter().any(|c| c.controllers.contains(&name)) {
                continue;
            }
            let mount = mounts.iter().find(|m| m.fs_type == "cgroup" && m.super_options.contains_key(&name));
            if let Some(mount) = mount {
                found.push((controller, mount.mount_point.clone()));
            }
        }
        Ok(found)
    });
    found.as_deref().map_err(|e| OwnJoinError::Hierarchies(e.clone()))
}

/// Give `dir`'s `file` its parent's value when it is empty, the parent
/// first filled the same way (the directories just made are all empty).
fn inherit_if_empty(dir: &Path, file: &str) -> Result<(), OwnJoinError> {
    let path = dir.join(file);
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| OwnJoinError::Io { path: path.to_path_buf(), action: "read", source })
    };
    if !read(&path)?.trim().is_empty() {
        return Ok(());
    }
    let Some(parent) = dir.parent().filter(|p| p.join(file).exists()) else { return Ok(()) };
    inherit_if_empty(parent, file)?;
    let value = read(&parent.join(file))?;
    std::fs::write(&path, value.trim()).map_err(|source| OwnJoinError::Io { path, action: "write", source })
}

/// Detach the cgroup v1 hierarchies in a mount namespace of this process's
/// own, a copy of the host's that passes nothing back to it. One detach of
/// the whole cgroup root and a fresh tmpfs there (each unmount waits for
/// the kernel, about 60 us): libcontainer still sees a v1 host, with no
/// hierarchy in it.
fn detach_hierarchies() -> Result<(), String> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let root = libcgroups::common::DEFAULT_CGROUP_ROOT;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| format!("cannot unshare the mount namespace: {e}"))?;
    // A slave of the host's mounts: what is done below stays here.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| format!("cannot make the mounts slaves: {e}"))?;
    umount2(root, MntFlags::MNT_DETACH).map_err(|e| format!("cannot detach {root}: {e}"))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), root, Some("tmpfs"), flags, Some("mode=755")).map_err(|e| format!("cannot mount a tmpfs on {root}: {e}"))
}

/// Remove the cgroups of a create that failed after [`OwnJoin::prepare`]
/// (libcontainer's cleanup ran where the hierarchies were hidden).
pub fn remove_own_join(manager: &libcgroups::v1::Manager) {
    if let Err(e) = manager.remove() {
        tracing::warn!("cannot remove the cgroups of a failed create: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_cgroup_procs_lists_this_process() {
        // Every Linux host hybrid supports has a pids hierarchy (v1) or the
        // unified one (v2): the path must be found and hold this process.
        let procs = own_cgroup_procs().expect("this process's cgroup.procs");
        let listed = std::fs::read_to_string(&procs).expect("readable cgroup.procs");
        let pid = std::process::id().to_string();
        assert!(listed.lines().any(|line| line == pid), "{procs:?} does not list {pid}");
    }

    #[test]
    fn the_oom_control_file_is_where_libcgroups_finds_the_memory_hierarchy() {
        if !own_join_possible() {
            return;
        }
        let path = Path::new("/default/some-container");
        let theirs = libcgroups::v1::util::get_subsystem_mount_point(&ControllerType::Memory).expect("memory hierarchy");
        assert_eq!(oom_control_file(path), Some(theirs.join("default/some-container/memory.oom_control")));
    }

    #[test]
    fn the_hierarchies_found_hold_this_process() {
        if !own_join_possible() {
            return;
        }
        // Every v1 host has a memory hierarchy; each one found is mounted
        // and lists this process in the cgroup /proc/self/cgroup names.
        let found = hierarchies().expect("the v1 hierarchies");
        assert!(found.iter().any(|(c, _)| *c == ControllerType::Memory), "{found:?}");
        let own = procfs::process::Process::myself().unwrap().cgroups().unwrap().0;
        let pid = std::process::id().to_string();
        for (controller, mount) in found {
            let entry = own.iter().find(|c| c.controllers.contains(&controller.to_string())).expect("listed");
            let procs = mount.join(entry.pathname.trim_start_matches('/')).join("cgroup.procs");
            let listed = std::fs::read_to_string(&procs).unwrap_or_default();
            assert!(listed.lines().any(|l| l == pid), "{procs:?} does not list {pid}");
        }
    }

    #[test]
    fn an_empty_cpuset_file_takes_the_first_filled_parents_value() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().join("a");
        let child = parent.join("b");
        std::fs::create_dir_all(&child).unwrap();
        std::fs::write(root.path().join("cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(parent.join("cpuset.cpus"), "\n").unwrap();
        std::fs::write(child.join("cpuset.cpus"), "").unwrap();
        inherit_if_empty(&child, "cpuset.cpus").unwrap();
        assert_eq!(std::fs::read_to_string(parent.join("cpuset.cpus")).unwrap(), "0-3");
        assert_eq!(std::fs::read_to_string(child.join("cpuset.cpus")).unwrap(), "0-3");
        // A filled file is left as it is.
        std::fs::write(child.join("cpuset.cpus"), "1").unwrap();
        inherit_if_empty(&child, "cpuset.cpus").unwrap();
        assert_eq!(std::fs::read_to_string(child.join("cpuset.cpus")).unwrap(), "1");
    }
}
