//! Resource limits inside the wasm sandbox, from the spec: the container's
//! memory limit bounds linear memory and tables, so a memory bomb is stopped
//! by the sandbox (and reported as an OOM) before the kernel has to kill the
//! whole process.

use std::path::{Path, PathBuf};

use libcgroups::v1::ControllerType;
use wasmtime::ResourceLimiter;

/// Room left for wasmtime itself and WASI inside the cgroup's limit: the
/// guest gets the limit minus this (a quarter of it at most).
const RUNTIME_HEADROOM: u64 = 16 * 1024 * 1024;
/// What one table element costs against the memory limit (a pointer).
const TABLE_ELEMENT_BYTES: usize = 8;

/// The guest's share of a container memory limit of `limit` bytes, or None
/// when the spec sets no limit (a negative or zero limit means none).
pub fn guest_memory_limit(limit: Option<i64>) -> Option<usize> {
    let limit = u64::try_from(limit?).ok().filter(|l| *l > 0)?;
    let headroom = RUNTIME_HEADROOM.min(limit / 4);
    usize::try_from(limit - headroom).ok()
}

/// The container's memory limit as the kernel will hold it: the spec's own,
/// or a lower one set on a cgroup above the container's (a Kubernetes pod's
/// cgroup, where kubelet puts the pod's limit), whichever is lower.
pub fn effective_memory_limit(spec_limit: Option<i64>, cgroups_path: Option<&Path>) -> Option<i64> {
    let own = spec_limit.filter(|l| *l > 0);
    let above = cgroups_path.and_then(ancestor_memory_limit);
    match (own, above) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a container's wasm memory limit comes from, worked out (reading
/// the cgroups above) only once, and only when a wasm process needs it:
/// native containers never pay for it.
#[derive(Debug, Default)]
pub struct WasmMemoryLimit {
    own: Option<i64>,
    cgroups_path: Option<PathBuf>,
    resolved: std::sync::OnceLock<Option<i64>>,
}

impl WasmMemoryLimit {
    pub fn from_spec(spec: Option<&oci_spec::runtime::Spec>) -> Self {
        let linux = spec.and_then(|s| s.linux().as_ref());
        Self {
            own: linux.and_then(|l| l.resources().as_ref()).and_then(|r| r.memory().as_ref()).and_then(|m| m.limit()),
            cgroups_path: linux.and_then(|l| l.cgroups_path().clone()),
            resolved: std::sync::OnceLock::new(),
        }
    }

    /// See [`effective_memory_limit`].
    pub fn get(&self) -> Option<i64> {
        *self.resolved.get_or_init(|| effective_memory_limit(self.own, self.cgroups_path.as_deref()))
    }
}

/// The lowest memory limit on the cgroups that contain `cgroups_path` (a
/// path from the hierarchy's root, as cgroupfs takes it), if any is set.
fn ancestor_memory_limit(cgroups_path: &Path) -> Option<i64> {
    let (root, file) = match libcgroups::common::get_cgroup_setup().ok()? {
        libcgroups::common::CgroupSetup::Unified => {
            (PathBuf::from(libcgroups::common::DEFAULT_CGROUP_ROOT), "memory.max")
        }
        _ => (libcgroups::v1::util::get_subsystem_mount_point(&ControllerType::Memory).ok()?, "memory.limit_in_bytes"),
    };
    let relative = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    relative
        .ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .filter_map(|a| libcgroups::stats::parse_single_value(&root.join(a).join(file)).ok())
        // v1 says "no limit" with a huge page-rounded number, v2 with "max".
        .filter(|&l| l < (1 << 62))
        .filter_map(|l| i64::try_from(l).ok())
        .min()
}

/// Denies growth past the limit and remembers that it did.
#[derive(Debug, Default)]
pub struct SandboxLimits {
    memory_bytes: Option<usize>,
    denied: bool,
}

impl SandboxLimits {
    pub fn new(memory_bytes: Option<usize>) -> Self {
        Self { memory_bytes, denied: false }
    }

    /// Whether the guest ever asked for more than its limit.
    pub fn denied(&self) -> bool {
        self.denied
    }

    fn allow(&mut self, desired_bytes: usize) -> bool {
        let within = self.memory_bytes.is_none_or(|max| desired_bytes <= max);
        self.denied |= !within;
        within
    }
}

impl ResourceLimiter for SandboxLimits {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.allow(desired))
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.allow(desired.saturating_mul(TABLE_ELEMENT_BYTES)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_of_the_spec_and_the_cgroups_above_wins() {
        assert_eq!(effective_memory_limit(Some(64 << 20), None), Some(64 << 20));
        assert_eq!(effective_memory_limit(Some(0), None), None);
        // A cgroup path that does not exist has no limit above it.
        let nowhere = Path::new("/hybrid-no-such-parent/c1");
        assert_eq!(effective_memory_limit(Some(64 << 20), Some(nowhere)), Some(64 << 20));
        assert_eq!(effective_memory_limit(None, Some(nowhere)), None);
    }

    #[test]
    fn no_limit_in_the_spec_means_no_limit() {
        assert_eq!(guest_memory_limit(None), None);
        assert_eq!(guest_memory_limit(Some(0)), None);
        assert_eq!(guest_memory_limit(Some(-1)), None);
    }

    #[test]
    fn the_guest_gets_the_limit_minus_headroom() {
        assert_eq!(guest_memory_limit(Some(64 << 20)), Some(48 << 20));
        // Small limits keep three quarters for the guest.
        assert_eq!(guest_memory_limit(Some(8 << 20)), Some(6 << 20));
    }

    #[test]
    fn growth_past_the_limit_is_denied_and_remembered() {
        let mut limits = SandboxLimits::new(Some(1 << 20));
        assert!(limits.memory_growing(0, 1 << 20, None).expect("grow"));
        assert!(!limits.denied());
        assert!(!limits.memory_growing(1 << 20, 2 << 20, None).expect("grow"));
        assert!(limits.denied());
    }
}
