//! A wasm container's network namespace, made before its Create asks.
//!
//! A new network namespace is the costliest of an init's unshares: 0.74
//! ms median on the 2-vCPU machine this was measured on (the kernel
//! registers its loopback device and its per-namespace tables), against
//! 0.02 to 0.09 ms for uts, ipc and mount, and it sat on every Create's
//! path. The spawner makes one for the shim's first container while it
//! waits for that container's job (its bundle's spec is on disk before
//! `start` runs); the creator enters it and the init joins it instead of
//! making its own.
//!
//! The namespace is what the init's own would be: made by `unshare` in the
//! host's namespaces by the same root, given to one container only, and
//! gone with it (nothing else keeps it). Only the first container gets
//! one: the others of a group are a pod's, whose namespaces CRI gives by
//! path, and a namespace made for nobody would hold kernel memory for the
//! shim's whole life.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Spec};

/// The calling thread's network namespace.
const OWN_NAMESPACE: &str = "/proc/thread-self/ns/net";

#[derive(Debug, thiserror::Error)]
pub(crate) enum NetworkAheadError {
    #[error("cannot open {OWN_NAMESPACE}: {0}")]
    Open(std::io::Error),
    #[error("cannot make a network namespace: {0}")]
    Unshare(nix::Error),
    /// The thread is left in the namespace it made.
    #[error("cannot return to its own network namespace: {0}")]
    Return(nix::Error),
    #[error("cannot enter the network namespace made ahead: {0}")]
    Enter(nix::Error),
    #[error("cannot name the network namespace in the spec: {0}")]
    Spec(String),
}

/// A new network namespace no process is in yet.
pub(crate) struct ReadyNetworkNamespace(File);

impl ReadyNetworkNamespace {
    /// Make a network namespace and take the calling thread back to its
    /// own. On [`NetworkAheadError::Return`] the thread stays in the new
    /// one: its caller must not go on as if it were in its own.
    pub(crate) fn make() -> Result<Self, NetworkAheadError> {
        let own = File::open(OWN_NAMESPACE).map_err(NetworkAheadError::Open)?;
        unshare(CloneFlags::CLONE_NEWNET).map_err(NetworkAheadError::Unshare)?;
        let made = File::open(OWN_NAMESPACE);
        setns(&own, CloneFlags::CLONE_NEWNET).map_err(NetworkAheadError::Return)?;
        made.map(Self).map_err(NetworkAheadError::Open)
    }

    /// One for the container of `bundle` when its init will be made by
    /// direct_init.rs and its spec asks for a network namespace of its own:
    /// the spawner's, for the shim's first container. None when it needs
    /// none or one cannot be made; Err only on [`NetworkAheadError::Return`].
    pub(crate) fn for_bundle(bundle: &Path) -> Result<Option<Self>, NetworkAheadError> {
        let Ok(spec) = crate::direct_init::load_spec(bundle) else { return Ok(None) };
        if !crate::direct_init::applies_to(&spec) || !wants_new(&spec) {
            return Ok(None);
        }
        match Self::make() {
            Ok(ready) => Ok(Some(ready)),
            Err(e @ NetworkAheadError::Return(_)) => Err(e),
            Err(e) => {
                tracing::debug!("no network namespace ahead: {e}");
                Ok(None)
            }
        }
    }

    /// Enter the namespace with the calling process, the container's
    /// single-threaded creator, when `spec` asks for a new one, and make
    /// the init (its fork) join the creator's instead of making one: the
    /// spec's entry gets the creator's own namespace as its path, which
    /// the init opens as /proc/self, still the host's /proc, and enters
    /// at no cost. Nothing is changed when the spec asks for none.
    pub(crate) fn enter_for(self, spec: &mut Spec) -> Result<(), NetworkAheadError> {
        if !wants_new(spec) {
            return Ok(());
        }
        let linux = spec.linux_mut().as_mut().ok_or_else(|| NetworkAheadError::Spec("the spec has no linux section".into()))?;
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        let joined = LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(PathBuf::from("/proc/self/ns/net"))
            .build()
            .map_err(|e| NetworkAheadError::Spec(e.to_string()))?;
        setns(&self.0, CloneFlags::CLONE_NEWNET).map_err(NetworkAheadError::Enter)?;
        for namespace in namespaces.iter_mut().filter(|ns| ns.typ() == LinuxNamespaceType::Network) {
            *namespace = joined.clone();
        }
        linux.set_namespaces(Some(namespaces));
        Ok(())
    }
}

/// Whether `spec` asks for a new network namespace (an entry without a
/// path, or with an empty one, as runc reads it).
fn wants_new(spec: &Spec) -> bool {
    let namespaces = spec.linux().as_ref().and_then(|linux| linux.namespaces().as_ref());
    namespaces
        .into_iter()
        .flatten()
        .any(|ns| ns.typ() == LinuxNamespaceType::Network && ns.path().as_ref().is_none_or(|p| p.as_os_str().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    // A network namespace is a thread's: each test changes its own thread's.
    use crate::test_support::in_own_thread;

    fn own_namespace() -> std::fs::Metadata {
        std::fs::metadata(OWN_NAMESPACE).expect("own network namespace")
    }

    fn same(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }

    #[test]
    fn a_made_namespace_is_new_and_the_thread_stays_in_its_own() {
        in_own_thread(|| {
            let before = own_namespace();
            let ready = ReadyNetworkNamespace::make().expect("make a network namespace");
            assert!(same(&before, &own_namespace()), "the thread is back in its own namespace");
            let made = ready.0.metadata().expect("the made namespace");
            assert!(!same(&before, &made), "the made namespace is a new one");
        });
    }

    fn spec_with_network(path: Option<&str>) -> Spec {
        let mut spec = Spec::default();
        let linux = spec.linux_mut().as_mut().expect("the default spec has a linux section");
        let mut namespaces: Vec<_> =
            linux.namespaces().clone().unwrap_or_default().into_iter().filter(|ns| ns.typ() != LinuxNamespaceType::Network).collect();
        let mut network = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(path) = path {
            network = network.path(PathBuf::from(path));
        }
        namespaces.push(network.build().expect("network namespace"));
        linux.set_namespaces(Some(namespaces));
        spec
    }

    fn network_entries(spec: &Spec) -> Vec<Option<PathBuf>> {
        let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
        namespaces.into_iter().filter(|ns| ns.typ() == LinuxNamespaceType::Network).map(|ns| ns.path().clone()).collect()
    }

    #[test]
    fn entering_moves_the_caller_and_names_its_namespace_for_the_init() {
        in_own_thread(|| {
            let before = own_namespace();
            let ready = ReadyNetworkNamespace::make().expect("make a network namespace");
            let made = ready.0.metadata().expect("the made namespace");
            let mut spec = spec_with_network(None);
            ready.enter_for(&mut spec).expect("enter");
            assert!(same(&made, &own_namespace()), "the caller is in the made namespace");
            assert!(!same(&before, &own_namespace()));
            assert_eq!(network_entries(&spec), vec![Some(PathBuf::from("/proc/self/ns/net"))]);
        });
    }

    #[test]
    fn a_spec_that_joins_a_namespace_or_keeps_the_hosts_is_left_alone() {
        in_own_thread(|| {
            let before = own_namespace();
            let mut joins = spec_with_network(Some("/var/run/netns/pod"));
            ReadyNetworkNamespace::make().expect("make").enter_for(&mut joins).expect("enter");
            assert_eq!(network_entries(&joins), vec![Some(PathBuf::from("/var/run/netns/pod"))]);
            let mut host = spec_with_network(None);
            if let Some(linux) = host.linux_mut().as_mut() {
                let kept = linux.namespaces().clone().unwrap_or_default().into_iter().filter(|ns| ns.typ() != LinuxNamespaceType::Network);
                linux.set_namespaces(Some(kept.collect()));
            }
            ReadyNetworkNamespace::make().expect("make").enter_for(&mut host).expect("enter");
            assert_eq!(network_entries(&host), Vec::<Option<PathBuf>>::new());
            assert!(same(&before, &own_namespace()), "the caller stays in its own namespace");
        });
    }
}
