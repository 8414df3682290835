//! A container's cgroups as the shim keeps them: the limits a Create
//! applies once the init is ready (ready_later.rs), what the exit and
//! Delete need learned ahead of them, and the manager Stats, Pids and
//! Update use.

use std::path::{Path, PathBuf};

use libcgroups::common::{create_cgroup_manager, CgroupConfig, CgroupManager};

use super::{CgroupStats, CgroupVersion, ContainerError, HybridContainer};
use crate::held_namespace::HeldMountNamespace;
use crate::ready_later::AfterReady;

/// What a Create leaves once the init is ready.
pub(super) struct SetupDone {
    pub(super) learned: Option<LearnedCgroups>,
    pub(super) mount_namespace: Option<HeldMountNamespace>,
}

/// The limits of a container whose creator joined its cgroups itself
/// (cgroup_join.rs), to apply once its init is ready.
pub(super) struct OwnLimits {
    pub(super) pending: Option<crate::cgroup_join::PendingLimits>,
    pub(super) path: Option<PathBuf>,
    pub(super) poststop: bool,
    pub(super) init_pid: Option<i32>,
}

impl AfterReady for OwnLimits {
    type Output = SetupDone;

    fn ready(self) -> Result<SetupDone, String> {
        let manager = self.pending.map(crate::cgroup_join::PendingLimits::finish).transpose().map_err(|e| e.to_string())?;
        // The manager that applied the resources is the one Stats, the exit
        // and Delete use: nothing is left to learn.
        let learned = match (manager, self.path) {
            (Some(manager), Some(path)) => {
                let oom_file = crate::cgroup_join::oom_control_file(&path).or_else(|| oom_kill_file(&path));
                let teardown = Teardown { oom_file, plain: !self.poststop };
                Some(LearnedCgroups { init_pid: self.init_pid, manager: manager.any(), teardown })
            }
            _ => None,
        };
        // Its own namespace by now: the init made it before it was ready.
        let mount_namespace = self.init_pid.and_then(HeldMountNamespace::of);
        Ok(SetupDone { learned, mount_namespace })
    }

    fn failed(self) {
        if let Some(pending) = self.pending {
            pending.abandon();
        }
    }
}

/// What a container's exit and its Delete need to know, learned ahead of
/// them: making the cgroup manager reads /proc/self/mountinfo once per
/// controller (3-4 ms here), which libcontainer's delete did again, and
/// the oom check looked up the memory controller's mount at every exit.
/// The shim learns it on a thread of its own once the container started
/// ([`HybridContainer::cgroup_warmup`]), while the guest runs.
pub struct CgroupWarmup {
    id: String,
    state_dir: PathBuf,
    /// The init process it was asked for: a container deleted and made
    /// anew under the same id meanwhile has another.
    init_pid: Option<i32>,
}

/// What [`CgroupWarmup::learn`] found.
pub struct LearnedCgroups {
    init_pid: Option<i32>,
    manager: libcgroups::common::AnyCgroupManager,
    teardown: Teardown,
}

pub(super) struct Teardown {
    /// The file counting the kernel's OOM kills in the memory cgroup.
    oom_file: Option<PathBuf>,
    /// Whether Delete can be done with the kept manager: no poststop
    /// hooks to run and no Intel RDT group to remove (libcontainer's
    /// delete does those).
    plain: bool,
}

impl CgroupWarmup {
    /// Learn it (no lock of the caller's held: this takes milliseconds).
    pub fn learn(self) -> Result<LearnedCgroups, ContainerError> {
        let cgroup_err = |message: String| ContainerError::Cgroup { id: self.id.clone(), message };
        let config = libcontainer::config::YoukiConfig::load(&self.state_dir).map_err(|e| cgroup_err(e.to_string()))?;
        let manager = new_cgroup_manager(&self.id, &config.cgroup_path).map_err(cgroup_err)?;
        let poststop = config.hooks.as_ref().and_then(|h| h.poststop().as_ref()).is_some_and(|h| !h.is_empty());
        let teardown = Teardown { oom_file: oom_kill_file(&config.cgroup_path), plain: !poststop };
        Ok(LearnedCgroups { init_pid: self.init_pid, manager, teardown })
    }
}

fn new_cgroup_manager(id: &str, cgroup_path: &Path) -> Result<libcgroups::common::AnyCgroupManager, String> {
    create_cgroup_manager(CgroupConfig { cgroup_path: cgroup_path.to_path_buf(), systemd_cgroup: false, container_name: id.to_string() })
        .map_err(|e| e.to_string())
}

/// The file that counts OOM kills in the memory cgroup at `cgroup_path`:
/// v1 `memory.oom_control`, v2 `memory.events`.
fn oom_kill_file(cgroup_path: &Path) -> Option<PathBuf> {
    let relative = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    Some(match libcgroups::common::get_cgroup_setup().ok()? {
        libcgroups::common::CgroupSetup::Unified => {
            Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT).join(relative).join("memory.events")
        }
        _ => libcgroups::v1::util::get_subsystem_mount_point(&libcgroups::v1::ControllerType::Memory)
            .ok()?
            .join(relative)
            .join("memory.oom_control"),
    })
}

impl HybridContainer {
    /// What the shim learns off the request path once the container has
    /// started (see [`CgroupWarmup`]); hand the answer to
    /// [`keep_learned`](Self::keep_learned).
    /// None when it is known already (made at Create).
    pub fn cgroup_warmup(&self) -> Option<CgroupWarmup> {
        if self.teardown.is_some() {
            return None;
        }
        Some(CgroupWarmup { id: self.id.clone(), state_dir: self.state_dir(), init_pid: self.pid() })
    }

    /// Keep what [`CgroupWarmup::learn`] found, unless it is of another
    /// container of the same id. A manager made meanwhile (a Stats) stays.
    pub fn keep_learned(&mut self, learned: LearnedCgroups) {
        if learned.init_pid != self.pid() {
            return;
        }
        let _ = self.cgroups.set(learned.manager);
        self.teardown = Some(learned.teardown);
    }

    /// libcontainer's delete of a stopped container, with the cgroup manager
    /// kept instead of a new one: remove the cgroup (killing what is left
    /// in it), then the state. False when that is not all there is to do
    /// (hooks, Intel RDT, a process still running) or nothing was learned.
    pub(super) fn delete_stopped(&mut self) -> Result<bool, ContainerError> {
        let plain = self.teardown.as_ref().is_some_and(|t| t.plain) && self.inner.intel_rdt_dir().is_none();
        let Some(manager) = self.cgroups.get().filter(|_| plain) else { return Ok(false) };
        let libcontainer_err = |action, source| ContainerError::Libcontainer { id: self.id.clone(), action, source };
        self.inner.refresh_status().map_err(|e| libcontainer_err("delete", e))?;
        if self.inner.status() != libcontainer::container::ContainerStatus::Stopped {
            return Ok(false);
        }
        manager.remove().map_err(|e| ContainerError::Cgroup { id: self.id.clone(), message: e.to_string() })?;
        // Removed after the answer (see deferred_removal.rs); its name is free now.
        match crate::deferred_removal::remove_dir_soon(&self.state_dir()) {
            Ok(()) => Ok(true),
            Err(e) => Err(libcontainer_err("delete", libcontainer::error::LibcontainerError::OtherIO(e))),
        }
    }

    /// The container's cgroup manager, made at its first use and kept: making
    /// one looks up every controller's mount in /proc/self/mountinfo (about
    /// 3 ms of cpu on the test machine), which every Stats, Pids and Update
    /// paid, and kubelet asks for stats of every container every few seconds.
    fn cgroup_manager(&self) -> Result<&libcgroups::common::AnyCgroupManager, ContainerError> {
        if let Some(manager) = self.cgroups.get() {
            return Ok(manager);
        }
        let cgroup_err = |message: String| ContainerError::Cgroup { id: self.id.clone(), message };
        let spec = self.inner.spec().map_err(|e| cgroup_err(e.to_string()))?;
        let manager = new_cgroup_manager(&self.id, &spec.cgroup_path).map_err(cgroup_err)?;
        Ok(self.cgroups.get_or_init(|| manager))
    }

    /// Every process in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, ContainerError> {
        let pids = self
            .cgroup_manager()?
            .get_all_pids()
            .map_err(|e| ContainerError::Cgroup { id: self.id.clone(), message: e.to_string() })?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    /// Change the container's cgroup limits while it runs. `resources_json`
    /// is an OCI LinuxResources document, as containerd's Update sends it.
    /// A wasm guest's own memory bound was set at start and stays.
    pub fn update(&mut self, resources_json: &[u8]) -> Result<(), ContainerError> {
        // After the spec's own limits, which would otherwise undo it.
        self.finish_setup()?;
        let cgroup_err = |message: String| ContainerError::Cgroup { id: self.id.clone(), message };
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(resources_json).map_err(|e| cgroup_err(format!("invalid resources: {e}")))?;
        let opt = libcgroups::common::ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        self.cgroup_manager()?.apply(&opt).map_err(|e| cgroup_err(e.to_string()))
    }

    /// How many times the kernel's OOM killer has killed a process of this
    /// container's memory cgroup (v1 `memory.oom_control`, v2
    /// `memory.events`), or None when that cannot be read.
    pub fn oom_kills(&self) -> Option<u64> {
        let file = match self.teardown.as_ref() {
            Some(teardown) => teardown.oom_file.clone()?,
            None => oom_kill_file(&self.inner.spec().ok()?.cgroup_path)?,
        };
        // Both files are "key value" lines; libcgroups keeps its parser for
        // them private, and this is the one line needed.
        std::fs::read_to_string(file)
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
    }

    /// The container's cgroup metrics, and which cgroup version they are of
    /// (their units differ: v1 cpu time is in ns, v2 in µs).
    pub fn stats(&self) -> Result<(CgroupStats, CgroupVersion), ContainerError> {
        let stats = self
            .cgroup_manager()?
            .stats()
            .map_err(|e| ContainerError::Cgroup { id: self.id.clone(), message: e.to_string() })?;
        let version = match libcgroups::common::get_cgroup_setup() {
            Ok(libcgroups::common::CgroupSetup::Unified) => CgroupVersion::V2,
            _ => CgroupVersion::V1,
        };
        Ok((stats, version))
    }
}
