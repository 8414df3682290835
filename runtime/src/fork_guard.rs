//! Keeping thread starts and clones apart. libcontainer clones the calling
//! process (the shim, which has threads) for a container's intermediate and
//! init processes, and those run Rust code, up to `std::process::exit`. A
//! clone copies only the calling thread: a lock another thread held at that
//! moment (glibc's, while a thread is being started) stays held forever in
//! the copy, and the new process hangs. So the clones take this lock for
//! writing, and the threads hybrid starts take it for reading while they
//! start. So does the shim's use of the wasm engine it shares with the
//! containers (wasmtime's registries have locks of their own).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

static FORK: RwLock<()> = RwLock::new(());

/// Held while libcontainer clones: no thread of ours is starting meanwhile.
pub fn for_clone() -> RwLockWriteGuard<'static, ()> {
    FORK.write().unwrap_or_else(|p| p.into_inner())
}

/// Held while a shim thread uses state a clone will use too (the shared
/// wasm engine): no clone is taken meanwhile.
pub(crate) fn for_shared_state() -> RwLockReadGuard<'static, ()> {
    for_spawn()
}

fn for_spawn() -> RwLockReadGuard<'static, ()> {
    FORK.read().unwrap_or_else(|p| p.into_inner())
}

/// `std::thread::Builder::spawn`, never at the same time as a clone.
pub fn spawn<F>(name: String, f: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let _guard = for_spawn();
    std::thread::Builder::new().name(name).spawn(f)
}
