//! The wasm sandbox: wasmtime with WASI preview 1.
//!
//! One setup path (`WasiSetup` → `WasmSandbox::run`) serves both the container
//! init process and `hybrid wasm run`, so what a module sees outside a
//! container is exactly what it sees inside one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::compile_cache::{load_artifact, CacheOutcome, CompileCache};
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
    #[error("cannot link wasm module {path:?}: {message}")]
    Link { path: PathBuf, message: String },
    #[error("wasm module {path:?} has no export {export:?}")]
    NoExport { path: PathBuf, export: String },
    #[error("wasm module {path:?}: {source}")]
    Cache {
        path: PathBuf,
        source: crate::compile_cache::CacheError,
    },
}

/// The one engine configuration. The shim precompiles and the container
/// loads with it, so both must agree: the cache key covers it.
pub fn new_engine() -> Result<Engine, WasmError> {
    let config = Config::new();
    Engine::new(&config).map_err(|e| WasmError::Engine(format!("{e:#}")))
}

/// The shim's engine, made once and shared by every container it creates.
fn shared_engine() -> Result<&'static Engine, WasmError> {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    if let Some(engine) = ENGINE.get() {
        return Ok(engine);
    }
    let engine = new_engine()?;
    Ok(ENGINE.get_or_init(|| engine))
}

/// Compile `module` (binary or text) ahead of the container, through the
/// compile cache: the container then only loads machine code.
pub fn precompile(module_path: &Path, module: &[u8], cache: &CompileCache) -> Result<(Arc<Vec<u8>>, CacheOutcome), WasmError> {
    let engine = shared_engine()?;
    let (artifact, outcome) = cache.artifact(engine, module).map_err(|source| WasmError::Cache {
        path: module_path.to_path_buf(),
        source,
    })?;
    tracing::info!(module = ?module_path, ?outcome, "wasm module precompiled");
    Ok((Arc::new(artifact), outcome))
}

/// What the guest sees: its argv, environment and preopened directories.
#[derive(Debug, Clone, Default)]
pub struct WasiSetup {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `(host path, guest path)` pairs, preopened read-write.
    pub preopens: Vec<(PathBuf, String)>,
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

/// The store's data: WASI and the limits.
struct Host {
    wasi: WasiP1Ctx,
    limits: SandboxLimits,
}

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

/// A wasmtime engine configured for running WASI commands.
pub struct WasmSandbox {
    engine: Engine,
}

impl WasmSandbox {
    pub fn new() -> Result<Self, WasmError> {
        Ok(Self { engine: new_engine()? })
    }

    /// The module at `path`: from `precompiled` artifact bytes when they
    /// load, else compiled from the file (binary or text).
    pub fn load(&self, path: &Path, precompiled: Option<&[u8]>) -> Result<Module, WasmError> {
        if let Some(module) = precompiled.and_then(|a| load_artifact(&self.engine, a)) {
            return Ok(module);
        }
        Module::from_file(&self.engine, path).map_err(|e| WasmError::Load {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })
    }

    /// Runs `module` as a WASI command. Its exit status is the value of
    /// `proc_exit`, 0 when `_start` returns, or [`TRAP_EXIT_CODE`] on a trap,
    /// whose message goes to stderr; a guest that fails after being denied
    /// memory past its limit ends with [`OOM_EXIT_CODE`].
    pub fn run(&self, path: &Path, module: &Module, export: Option<&str>, setup: &WasiSetup) -> Result<WasmExit, WasmError> {
        let mut builder = WasiCtxBuilder::new();
        builder.args(&setup.args).envs(&setup.env).inherit_stdio();
        for (host, guest) in &setup.preopens {
            builder
                .preopened_dir(host, guest, FsPerms::ReadWrite)
                .map_err(|e| WasmError::Preopen {
                    host: host.clone(),
                    guest: guest.clone(),
                    message: format!("{e:#}"),
                })?;
        }
        let host = Host { wasi: builder.build_p1(), limits: SandboxLimits::new(setup.memory_limit) };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limits);
        let mut linker: Linker<Host> = Linker::new(&self.engine);
        let link_err = |e: wasmtime::Error| WasmError::Link {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |host| &mut host.wasi).map_err(link_err)?;
        let instance = linker.instantiate(&mut store, module).map_err(link_err)?;
        let name = export.unwrap_or("_start");
        let func = instance
            .get_typed_func::<(), ()>(&mut store, name)
            .map_err(|_| WasmError::NoExport {
                path: path.to_path_buf(),
                export: name.to_string(),
            })?;
        let code = match func.call(&mut store, ()) {
            Ok(()) => 0,
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => exit.0,
                None => {
                    eprintln!("wasm module {} trapped: {e:#}", path.display());
                    TRAP_EXIT_CODE
                }
            },
        };
        if code != 0 && store.data().limits.denied() {
            eprintln!(
                "wasm module {} ran out of memory: its limit is {} bytes",
                path.display(),
                setup.memory_limit.unwrap_or_default()
            );
            return Ok(WasmExit { code: OOM_EXIT_CODE, out_of_memory: true });
        }
        Ok(WasmExit { code, out_of_memory: false })
    }
}
