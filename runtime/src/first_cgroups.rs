//! A serving shim's first container's cgroups, made before its Create.
//!
//! `start` reads the bundle's spec and forks the serving shim; containerd
//! sends Create a moment later, and Create mounts the rootfs, reads the
//! spec and decides the workload before it starts a wasm container's
//! cgroups and their manager (cgroup_join's [`ManagerAhead`]: eight
//! mkdirs, then libcgroups' v1 manager, about 2 ms of cpu in two dozen
//! verified procfs reads). That thread then shared the two cpus with the
//! creator and the container's init. Started as the shim starts serving,
//! from the spec `start` read, it runs while Create's first steps do, on a
//! cpu nothing else needs then: the runtime's part of a cold start was
//! 0.65 ms shorter (median of 40 paired A/B rounds; the reversed run said
//! 0.25).
//!
//! Whether the container is wasm is known only once Create has looked into
//! its rootfs; the guess here is the spec's: an entrypoint named `*.wasm`
//! or `*.wat`, or crun's wasm annotations. What Create does not take (the
//! container is native, or its cgroups path or resources differ) is given
//! up before Create goes on ([`FirstCgroups`]'s drop): its directories are
//! removed, so that libcontainer makes its own where it would have.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::runtime::{LinuxResources, Spec};

use crate::cgroup_join::ManagerAhead;

/// The cgroups made ahead, for the container they were made for.
static MADE_AHEAD: Mutex<Option<FirstCgroups>> = Mutex::new(None);

/// Cgroups made ahead of container `id`'s Create, at `path`, for
/// `resources`. Dropped untaken, they are given up: the drop waits for
/// their manager and removes the directories (nothing joined them).
pub struct FirstCgroups {
    id: String,
    path: PathBuf,
    resources: Option<LinuxResources>,
    ahead: Option<ManagerAhead>,
}

impl FirstCgroups {
    /// The manager made ahead, when it is for these cgroups; given up
    /// otherwise (see the drop).
    pub(crate) fn matching(mut self, path: &Path, resources: Option<&LinuxResources>) -> Option<ManagerAhead> {
        if self.path == path && self.resources.as_ref() == resources {
            self.ahead.take()
        } else {
            None
        }
    }
}

impl Drop for FirstCgroups {
    fn drop(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            tracing::debug!(id = %self.id, "cgroups made ahead are given up");
            ahead.abandon();
        }
    }
}

/// Start making the cgroups of container `id` from its `spec`, where the
/// spec says it is a wasm container that joins them itself (see
/// cgroup_join::own_join_possible). Call once, before serving.
pub fn start(spec: &Spec, id: &str) {
    let Some(linux) = spec.linux() else { return };
    if !looks_like_wasm(spec) || !crate::cgroup_join::own_join_possible() {
        return;
    }
    let path = libcontainer::utils::get_cgroup_path(linux.cgroups_path(), id);
    let ahead = ManagerAhead::start(&path, linux.resources().as_ref());
    let made = FirstCgroups { id: id.to_string(), path, resources: linux.resources().clone(), ahead: Some(ahead) };
    if let Ok(mut slot) = MADE_AHEAD.lock() {
        *slot = Some(made);
    }
}

/// What was made ahead for container `id`, if anything; what was made for
/// another container is given up first.
pub(crate) fn take(id: &str) -> Option<FirstCgroups> {
    let made = MADE_AHEAD.lock().ok()?.take()?;
    (made.id == id).then_some(made)
}

/// Give up what is left (the shim exits: its Create never came).
pub fn forget() {
    let left = MADE_AHEAD.lock().ok().and_then(|mut slot| slot.take());
    drop(left);
}

/// Whether `spec` names a wasm workload as far as the spec alone tells
/// (workload::decide has the last word, from the rootfs).
fn looks_like_wasm(spec: &Spec) -> bool {
    let Some(entrypoint) = spec.process().as_ref().and_then(|p| p.args().as_ref()).and_then(|a| a.first()) else {
        return false;
    };
    let entrypoint = Path::new(entrypoint);
    let named = entrypoint
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("wasm") || e.eq_ignore_ascii_case("wat"));
    let annotations = spec.annotations().clone().unwrap_or_default();
    named || crate::workload::wasm_annotation(&annotations, entrypoint).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{ProcessBuilder, SpecBuilder};
    use std::collections::HashMap;

    fn spec(args: &[&str], annotations: &[(&str, &str)]) -> Spec {
        let process = ProcessBuilder::default().args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>()).build().unwrap();
        let annotations: HashMap<String, String> = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        SpecBuilder::default().process(process).annotations(annotations).build().unwrap()
    }

    #[test]
    fn a_module_named_as_such_looks_like_wasm() {
        assert!(looks_like_wasm(&spec(&["/hello.wasm"], &[])));
        assert!(looks_like_wasm(&spec(&["/app/Main.WAT", "arg"], &[])));
    }

    #[test]
    fn crun_s_wasm_annotation_makes_it_look_like_wasm() {
        assert!(looks_like_wasm(&spec(&["/app"], &[("run.oci.handler", "wasm")])));
    }

    #[test]
    fn a_native_entrypoint_does_not() {
        assert!(!looks_like_wasm(&spec(&["sh", "-c", "echo hi.wasm"], &[])));
        assert!(!looks_like_wasm(&spec(&[], &[])));
    }

    #[test]
    fn only_the_container_it_was_made_for_takes_it() {
        let made = |id: &str| FirstCgroups { id: id.to_string(), path: PathBuf::from("/default/a"), resources: None, ahead: None };
        *MADE_AHEAD.lock().unwrap() = Some(made("a"));
        assert!(take("b").is_none(), "made for a");
        assert!(take("a").is_none(), "given up when b came first");
        *MADE_AHEAD.lock().unwrap() = Some(made("a"));
        assert!(take("a").is_some());
    }
}
