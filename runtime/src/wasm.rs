//! The wasm sandbox: wasmtime with WASI preview 1.
//!
//! One setup path (`WasiSetup` → `WasmSandbox::run`) serves both the container
//! init process and `hybrid wasm run`, so what a module sees outside a
//! container is exactly what it sees inside one.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::preopens::Preopen;
use crate::compile_cache::{load_artifact_file, load_component_artifact_bytes, ArtifactKind, CacheOutcome, CompileCache};
use crate::limits::SandboxLimits;

/// The exit status of a module that trapped: the same a native process
/// reports when it aborts (128 + SIGABRT).
pub const TRAP_EXIT_CODE: i32 = 134;

#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    #[error("cannot load wasm module {path:?}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("cannot preopen {host:?} as {guest:?}: {message}")]
    Preopen {
        host: PathBuf,
        guest: String,
        message: String,
    },
    #[error(transparent)]
    Preopens(#[from] crate::preopens::PreopensError),
    #[error("cannot link wasm module {path:?}: {message}")]
    Link { path: PathBuf, message: String },
    #[error("wasm module {path:?} has no export {export:?}")]
    NoExport { path: PathBuf, export: String },
    #[error("wasm component {path:?}: {message}")]
    Component { path: PathBuf, message: String },
    #[error("wasm module {path:?}: {source}")]
    Cache {
        path: PathBuf,
        source: crate::compile_cache::CacheError,
    },
}

/// The one engine configuration. The shim precompiles and the container
/// loads with it, so both must agree: the cache key covers it.
pub fn new_engine() -> Result<Engine, WasmError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    Engine::new(&config).map_err(|e| WasmError::Engine(format!("{e:#}")))
}

/// The shim's engine, made once and shared by every container it creates:
/// a container's process is a clone of the shim, so the engine's pages stay
/// shared instead of each container building an engine of its own. Shim
/// threads use it under [`crate::fork_guard::for_shared_state`].
fn shared_engine() -> Result<&'static Engine, WasmError> {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    if let Some(engine) = ENGINE.get() {
        return Ok(engine);
    }
    let engine = new_engine()?;
    Ok(ENGINE.get_or_init(|| engine))
}

/// Make the shared engine now (the spawner does, before its first fork).
pub(crate) fn warm_shared_engine() -> Result<(), WasmError> {
    shared_engine().map(|_| ())
}

/// A linking error of the program at `path`.
fn link_err(path: &Path) -> impl Fn(wasmtime::Error) -> WasmError + '_ {
    move |e| WasmError::Link { path: path.to_path_buf(), message: format!("{e:#}") }
}

/// What a wasm file holds, from its header: a core module or a component.
pub fn artifact_kind(bytes: &[u8]) -> ArtifactKind {
    if crate::workload::is_component(bytes) {
        ArtifactKind::Component
    } else {
        ArtifactKind::Module
    }
}

/// Compile `module` (binary or text, core module or component) ahead of the
/// container, through the compile cache: the container then only loads
/// machine code.
pub fn precompile(module_path: &Path, module: &[u8], cache: &CompileCache) -> Result<(CompiledEntry, CacheOutcome), WasmError> {
    let _no_clone = crate::fork_guard::for_shared_state();
    let engine = shared_engine()?;
    let kind = artifact_kind(module);
    let (entry, outcome) = cache.ensure(engine, module, kind).map_err(|source| WasmError::Cache {
        path: module_path.to_path_buf(),
        source,
    })?;
    tracing::info!(module = ?module_path, ?outcome, "wasm module precompiled");
    Ok((CompiledEntry { path: entry, kind }, outcome))
}

/// A module's compile cache entry, checked (see [`precompile`]), by path:
/// what the shim hands the spawner's creator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CompiledEntry {
    pub path: PathBuf,
    pub kind: ArtifactKind,
}

/// A verified compile cache entry, opened by a container's creator: the
/// container's root may not show the cache, so its process loads the
/// program from this descriptor (see [`WasmSandbox::load`]).
#[derive(Debug, Clone)]
pub struct PrecompiledEntry {
    pub file: std::sync::Arc<std::os::fd::OwnedFd>,
    pub kind: ArtifactKind,
}

impl CompiledEntry {
    /// Open the entry for the container's process (None, logged, when it
    /// cannot be: the process then compiles the module itself).
    pub fn open(&self) -> Option<PrecompiledEntry> {
        let path = &self.path;
        let file = std::fs::File::open(path).map_err(|e| tracing::warn!("cannot open compile cache entry {path:?}: {e}")).ok()?;
        Some(PrecompiledEntry { file: std::sync::Arc::new(file.into()), kind: self.kind })
    }
}

impl PrecompiledEntry {
    /// The program in the entry. A module's machine code is mapped from
    /// the cache file, not copied: every container running the module
    /// shares it through the page cache. None (logged) when wasmtime
    /// refuses it.
    fn load(&self, engine: &Engine) -> Option<Program> {
        let file = std::fs::File::from(self.file.try_clone().map_err(|e| tracing::warn!("compile cache entry: {e}")).ok()?);
        match self.kind {
            ArtifactKind::Module => load_artifact_file(engine, file).map(Program::Module),
            ArtifactKind::Component => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut &file, &mut bytes).ok()?;
                load_component_artifact_bytes(engine, &bytes).map(Program::Component)
            }
        }
    }
}

/// What the guest sees: its argv, environment and preopened directories.
#[derive(Debug, Clone, Default)]
pub struct WasiSetup {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The directories the guest can reach.
    pub preopens: Vec<Preopen>,
    /// The most linear memory (and tables) the guest may have, in bytes.
    pub memory_limit: Option<usize>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmExit {
    /// The process exit status to report.
    pub code: i32,
    /// The guest failed after being denied memory past its limit.
    pub out_of_memory: bool,
}

/// The exit status of a guest stopped by its memory limit: what containerd
/// expects of an OOM-killed process (128 + SIGKILL).
pub const OOM_EXIT_CODE: i32 = 137;


impl WasiSetup {
    /// Splits `KEY=VALUE` strings as the OCI spec carries them.
    pub fn env_from_spec(env: &[String]) -> Vec<(String, String)> {
        env.iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }
}

/// A loaded program: a core module (WASI preview 1) or a component
/// (WASI preview 2, `wasi:cli/command`).
pub enum Program {
    Module(Module),
    Component(Component),
}

/// The store's data for a core module: WASI preview 1 and the limits.
struct P1Host {
    wasi: WasiP1Ctx,
    limits: SandboxLimits,
}

/// The store's data for a component: WASI preview 2 and the limits.
struct P2Host {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: SandboxLimits,
}

impl WasiView for P2Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// A wasmtime engine configured for running WASI commands.
pub struct WasmSandbox {
    engine: Engine,
    linkers: std::sync::Arc<Linkers>,
}

/// WASI's host functions, linked once per engine: adding them to a linker
/// takes 0.2 ms, which a container's process does ahead of Start
/// ([`WasmSandbox::link_ahead`]) rather than after.
#[derive(Default)]
struct Linkers {
    p1: OnceLock<Linker<P1Host>>,
    p2: OnceLock<wasmtime::component::Linker<P2Host>>,
}

impl WasmSandbox {
    pub fn new() -> Result<Self, WasmError> {
        Ok(Self { engine: new_engine()?, linkers: Default::default() })
    }

    /// A sandbox on the engine the shim precompiled with (see
    /// [`shared_engine`]); made now if this process has none yet.
    pub fn shared() -> Result<Self, WasmError> {
        static LINKERS: OnceLock<std::sync::Arc<Linkers>> = OnceLock::new();
        Ok(Self { engine: shared_engine()?.clone(), linkers: LINKERS.get_or_init(Default::default).clone() })
    }

    /// Link WASI for `program` (at `path`) now, so that its run does not.
    pub(crate) fn link_ahead(&self, path: &Path, program: &Program) -> Result<(), WasmError> {
        match program {
            Program::Module(_) => self.p1_linker(path).map(|_| ()),
            Program::Component(_) => self.p2_linker(path).map(|_| ()),
        }
    }

    fn p1_linker(&self, path: &Path) -> Result<&Linker<P1Host>, WasmError> {
        if let Some(linker) = self.linkers.p1.get() {
            return Ok(linker);
        }
        let mut linker: Linker<P1Host> = Linker::new(&self.engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |host| &mut host.wasi).map_err(link_err(path))?;
        Ok(self.linkers.p1.get_or_init(|| linker))
    }

    fn p2_linker(&self, path: &Path) -> Result<&wasmtime::component::Linker<P2Host>, WasmError> {
        if let Some(linker) = self.linkers.p2.get() {
            return Ok(linker);
        }
        let mut linker = wasmtime::component::Linker::<P2Host>::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link_err(path))?;
        Ok(self.linkers.p2.get_or_init(|| linker))
    }

    /// The engine programs are loaded with (http.rs serves on it).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The program at `path`: from its `precompiled` compile cache entry
    /// when that loads, else compiled from the file (binary or text).
    pub fn load(&self, path: &Path, precompiled: Option<&PrecompiledEntry>) -> Result<Program, WasmError> {
        let load_err = |e: wasmtime::Error| WasmError::Load { path: path.to_path_buf(), message: format!("{e:#}") };
        if let Some(program) = precompiled.and_then(|entry| entry.load(&self.engine)) {
            return Ok(program);
        }
        let bytes = std::fs::read(path).map_err(|e| load_err(e.into()))?;
        match artifact_kind(&bytes) {
            ArtifactKind::Component => Component::new(&self.engine, &bytes).map(Program::Component).map_err(load_err),
            ArtifactKind::Module => Module::new(&self.engine, &bytes).map(Program::Module).map_err(load_err),
        }
    }

    /// Runs `program` as a WASI command. Its exit status is the value of
    /// `proc_exit`/`exit`, 0 when it returns (1 when a component's `run`
    /// returns an error), or [`TRAP_EXIT_CODE`] on a trap, whose message
    /// goes to stderr; a guest that fails after being denied memory past
    /// its limit ends with [`OOM_EXIT_CODE`].
    pub fn run(&self, path: &Path, program: &Program, export: Option<&str>, setup: &WasiSetup) -> Result<WasmExit, WasmError> {
        let builder = wasi_builder(setup, Blocking::CurrentThread)?;
        let limits = SandboxLimits::new(setup.memory_limit);
        let (outcome, denied) = match program {
            Program::Module(module) => self.run_module(path, module, export, builder, limits)?,
            Program::Component(component) => {
                if let Some(export) = export {
                    return Err(WasmError::Component {
                        path: path.to_path_buf(),
                        message: format!("calling export {export:?} is for core modules; a component runs wasi:cli/run"),
                    });
                }
                self.run_component(path, component, builder, limits)?
            }
        };
        let code = match outcome {
            Ok(code) => code,
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => exit.0,
                None => {
                    eprintln!("wasm module {} trapped: {e:#}", path.display());
                    TRAP_EXIT_CODE
                }
            },
        };
        if code != 0 && denied {
            eprintln!(
                "wasm module {} ran out of memory: its limit is {} bytes",
                path.display(),
                setup.memory_limit.unwrap_or_default()
            );
            return Ok(WasmExit { code: OOM_EXIT_CODE, out_of_memory: true });
        }
        Ok(WasmExit { code, out_of_memory: false })
    }

    /// Instantiate and call a core module; the call's result, and whether
    /// the limits denied growth.
    fn run_module(
        &self,
        path: &Path,
        module: &Module,
        export: Option<&str>,
        mut builder: WasiCtxBuilder,
        limits: SandboxLimits,
    ) -> Result<(wasmtime::Result<i32>, bool), WasmError> {
        let linker = self.p1_linker(path)?;
        let mut store = Store::new(&self.engine, P1Host { wasi: builder.build_p1(), limits });
        store.limiter(|host| &mut host.limits);
        let instance = linker.instantiate(&mut store, module).map_err(link_err(path))?;
        let name = export.unwrap_or("_start");
        let func = instance
            .get_typed_func::<(), ()>(&mut store, name)
            .map_err(|_| WasmError::NoExport { path: path.to_path_buf(), export: name.to_string() })?;
        let result = func.call(&mut store, ()).map(|()| 0);
        Ok((result, store.data().limits.denied()))
    }

    /// Instantiate a `wasi:cli/command` component and call its `run`.
    fn run_component(
        &self,
        path: &Path,
        component: &Component,
        mut builder: WasiCtxBuilder,
        limits: SandboxLimits,
    ) -> Result<(wasmtime::Result<i32>, bool), WasmError> {
        let linker = self.p2_linker(path)?;
        let host = P2Host { ctx: builder.build(), table: ResourceTable::new(), limits };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limits);
        let command = Command::instantiate(&mut store, component, linker).map_err(link_err(path))?;
        let result = command.wasi_cli_run().call_run(&mut store).map(|ran| if ran.is_ok() { 0 } else { 1 });
        Ok((result, store.data().limits.denied()))
    }
}

/// Where a guest's file and directory operations, blocking to it, run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocking {
    /// On the guest's own thread: a WASI command runs on one thread with
    /// nothing beside it, and tokio's blocking pool would cost a thread
    /// (started on the first operation) and two thread switches per call.
    CurrentThread,
    /// On tokio's blocking pool: wasi:http handlers share the runtime's
    /// worker, which must not block.
    Pool,
}

/// The guest's view: argv, environment, the container's stdio, preopens.
pub(crate) fn wasi_builder(setup: &WasiSetup, blocking: Blocking) -> Result<WasiCtxBuilder, WasmError> {
    let mut builder = WasiCtxBuilder::new();
    // Before the preopens: each directory takes the setting when added.
    builder.allow_blocking_current_thread(blocking == Blocking::CurrentThread);
    builder.args(&setup.args).envs(&setup.env).inherit_stdio();
    for preopen in &setup.preopens {
        let perms = if preopen.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        builder.preopened_dir(&preopen.host, &preopen.guest, perms).map_err(|e| WasmError::Preopen {
            host: preopen.host.clone(),
            guest: preopen.guest.clone(),
            message: format!("{e:#}"),
        })?;
    }
    Ok(builder)
}
