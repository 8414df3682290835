//! hybrid's runtime: an OCI bundle's spec → the one workload decision →
//! the native executor or the wasm sandbox, inside one container lifecycle.
//!
//! Data flows one way: bundle → spec → [`workload::decide`] →
//! [`container::HybridContainer`] whose init process runs the
//! [`executor::HybridExecutor`]. Nothing here knows protobuf or containerd.

pub mod cgroup_join;
mod clone_job;
pub mod cgroup_mount;
pub mod compile_cache;
pub mod container;
pub mod deferred_removal;
mod direct_init;
pub mod exec;
pub mod limits;
pub mod logdriver;
pub mod mount_sources;
mod network_ahead;
mod ready_later;
pub mod oneshot;
pub mod executor;
pub mod fds;
mod late_entry;
pub mod first_cgroups;
pub mod fork_guard;
pub mod guest_mounts;
pub mod guest_report;
pub mod held_namespace;
pub mod http;
pub mod in_flight;
pub mod in_root;
pub mod preopens;
mod same_cpu;
pub mod spawner;
pub mod stack;
pub mod state_in_memory;
mod start_ahead;
pub mod stdio;
pub mod tty;
pub mod wasm;
pub mod workload;

/// Helpers the unit tests of several modules share.
#[cfg(test)]
mod test_support {
    /// Run `test` on a thread of its own, for what a thread changes of
    /// itself (its cpu mask, its network namespace).
    pub(crate) fn in_own_thread(test: impl FnOnce() + Send + 'static) {
        std::thread::spawn(test).join().expect("test thread");
    }
}

pub use container::{CgroupStats, CgroupVersion, CgroupWarmup, ContainerConfig, ContainerError, HybridContainer, LearnedCgroups, Settled};
pub use exec::{PreparedExec, StartedExec};
pub use logdriver::LogOwner;
pub use stdio::StdioPaths;
pub use tty::Console;
pub use wasm::{WasiSetup, WasmSandbox};
pub use workload::{decide, Workload, WorkloadError, WorkloadKind};
