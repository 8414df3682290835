//! What the shim checks of a wasm container's module before it runs: the
//! preopens annotation, and the module against the compile cache.

use std::collections::HashMap;
use std::path::PathBuf;

use super::ContainerError;
use crate::compile_cache::CompileCache;
use crate::preopens::RootView;
use crate::wasm::{self, CompiledEntry};
use crate::workload::{read_entrypoint, Workload};

/// A wasm container's module, to check: run before the job, or while the
/// creator makes the init (late_entry.rs).
pub(super) struct ModuleCheck {
    rootfs: PathBuf,
    workload: Workload,
    cwd: PathBuf,
    annotations: HashMap<String, String>,
    root: RootView,
}

impl ModuleCheck {
    pub(super) fn new(rootfs: PathBuf, workload: Workload, cwd: PathBuf, annotations: HashMap<String, String>, root: RootView) -> Self {
        Self { rootfs, workload, cwd, annotations, root }
    }

    /// The module's checked compile cache entry, compiling it on a miss. A
    /// bad preopens annotation or a module that does not compile fails the
    /// Create, not the guest's start.
    pub(super) fn run(&self) -> Result<CompiledEntry, ContainerError> {
        crate::preopens::preopens_for(&self.cwd, &self.annotations, &self.root).map_err(wasm::WasmError::from)?;
        let module = read_entrypoint(&self.rootfs, &self.workload)?;
        Ok(wasm::precompile(&self.workload.entrypoint, &module, &CompileCache::from_env())?.0)
    }
}
