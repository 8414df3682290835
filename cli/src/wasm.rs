//! `hybrid wasm`: run a module outside any container, with the very WASI
//! setup containers get, and warm the compile cache ahead of time.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hybrid_runtime::preopens::Preopen;
use hybrid_runtime::compile_cache::CompileCache;
use hybrid_runtime::limits::guest_memory_limit;
use hybrid_runtime::wasm::{precompile, WasiSetup, WasmSandbox};

#[derive(Subcommand)]
pub enum WasmCommand {
    /// Run a wasm module (binary or WAT) as a WASI command.
    Run(RunArgs),
    /// Compile modules into the compile cache, so containers start from machine code.
    Warm(WarmArgs),
    /// Wrap a WASI preview 1 module into a preview 2 component (wasi:cli/command)
    /// with wasmtime's preview 1 adapter; with --wit/--world, a module written
    /// against a world's canonical ABI (e.g. wasi:http/proxy).
    Componentize(ComponentizeArgs),
}

#[derive(Args)]
pub struct ComponentizeArgs {
    /// The preview 1 core module.
    module: PathBuf,
    /// Where to write the component.
    #[arg(short = 'o', long = "output", value_name = "OUT.wasm")]
    output: PathBuf,
    /// A WIT directory (a package, its dependencies in deps/) holding the
    /// world the module implements, e.g. wasmtime-wasi-http's wit/.
    #[arg(long, value_name = "DIR", requires = "world")]
    wit: Option<PathBuf>,
    /// The world in --wit whose imports and exports the module uses, e.g.
    /// wasi:http/proxy (which also picks the preview 1 proxy adapter).
    #[arg(long, value_name = "WORLD", requires = "wit")]
    world: Option<String>,
}

/// The world served by the preview 1 adapter that has no filesystem,
/// arguments or exit: what an HTTP handler gets.
const PROXY_WORLD: &str = "wasi:http/proxy";

#[derive(Args)]
pub struct RunArgs {
    /// Set an environment variable (KEY=VALUE). Repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Preopen a host directory at a guest path (HOST::GUEST, or DIR for the same path). Repeatable.
    #[arg(long = "dir", value_name = "HOST::GUEST")]
    dirs: Vec<String>,
    /// Call this export instead of _start.
    #[arg(long)]
    invoke: Option<String>,
    /// Bound the guest's linear memory, in bytes.
    #[arg(long = "memory-limit", value_name = "BYTES")]
    memory_limit: Option<i64>,
    /// The module.
    module: PathBuf,
    /// Arguments for the module (its argv[1..]).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
pub struct WarmArgs {
    /// Modules to compile.
    #[arg(required = true)]
    modules: Vec<PathBuf>,
}

/// Run the command; for `run`, the module's exit status.
pub fn main(command: WasmCommand) -> anyhow::Result<i32> {
    match command {
        WasmCommand::Run(args) => run(args),
        WasmCommand::Warm(args) => warm(args),
        WasmCommand::Componentize(args) => componentize(args),
    }
}

fn componentize(args: ComponentizeArgs) -> anyhow::Result<i32> {
    let mut module = std::fs::read(&args.module).with_context(|| format!("cannot read {}", args.module.display()))?;
    let mut adapter = wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER;
    if let (Some(dir), Some(world)) = (&args.wit, &args.world) {
        embed_world(&mut module, dir, world)?;
        if world.split('@').next() == Some(PROXY_WORLD) {
            adapter = wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER;
        }
    }
    let mut encoder = wit_component::ComponentEncoder::default();
    encoder
        .module(&module)
        .with_context(|| format!("{} is not a module the component encoder can wrap", args.module.display()))?;
    // A module written against the world alone needs no adapter.
    if imports_preview1(&module) {
        encoder
            .adapter(wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)
            .context("cannot load the preview 1 adapter")?;
    }
    let component = encoder
        .validate(true)
        .encode()
        .with_context(|| format!("cannot encode {} as a component", args.module.display()))?;
    std::fs::write(&args.output, component).with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(0)
}

/// Embed `world` from the WIT in `dir` into `module` (its component-type
/// section), so that the encoder knows what its imports and exports mean.
fn embed_world(module: &mut Vec<u8>, dir: &std::path::Path, world: &str) -> anyhow::Result<()> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(dir).with_context(|| format!("cannot read the WIT in {}", dir.display()))?;
    let world_id = resolve
        .select_world(&[package], Some(world))
        .with_context(|| format!("no world {world} in the WIT in {}", dir.display()))?;
    wit_component::embed_component_metadata(module, &resolve, world_id, wit_component::StringEncoding::UTF8, false)
        .with_context(|| format!("cannot embed world {world}"))
}

/// Whether the core module imports anything from WASI preview 1.
fn imports_preview1(module: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(module).any(|payload| match payload {
        Ok(wasmparser::Payload::ImportSection(reader)) => reader
            .into_imports()
            .flatten()
            .any(|import| import.module == wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME),
        _ => false,
    })
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    let mut preopens = Vec::new();
    for dir in &args.dirs {
        let (host, guest) = dir.split_once("::").unwrap_or((dir.as_str(), dir.as_str()));
        if host.is_empty() || guest.is_empty() {
            bail!("--dir {dir:?}: expected HOST::GUEST or DIR");
        }
        preopens.push(Preopen::read_write(host, guest));
    }
    for kv in &args.env {
        if !kv.contains('=') {
            bail!("--env {kv:?}: expected KEY=VALUE");
        }
    }
    let argv0 = args.module.display().to_string();
    let setup = WasiSetup {
        args: std::iter::once(argv0).chain(args.args.iter().cloned()).collect(),
        env: WasiSetup::env_from_spec(&args.env),
        preopens,
        memory_limit: guest_memory_limit(args.memory_limit),
    };
    let sandbox = WasmSandbox::new()?;
    let module = sandbox.load(&args.module, None)?;
    let exit = sandbox.run(&args.module, &module, args.invoke.as_deref(), &setup)?;
    Ok(exit.code)
}

fn warm(args: WarmArgs) -> anyhow::Result<i32> {
    let cache = CompileCache::from_env();
    for path in &args.modules {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (_, outcome) = precompile(path, &bytes, &cache)?;
        println!("{} {:?} (cache {})", path.display(), outcome, cache.dir().display());
    }
    Ok(0)
}
