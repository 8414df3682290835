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
    /// with wasmtime's preview 1 adapter.
    Componentize(ComponentizeArgs),
}

#[derive(Args)]
pub struct ComponentizeArgs {
    /// The preview 1 core module.
    module: PathBuf,
    /// Where to write the component.
    #[arg(short = 'o', long = "output", value_name = "OUT.wasm")]
    output: PathBuf,
}

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
    let module = std::fs::read(&args.module).with_context(|| format!("cannot read {}", args.module.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .with_context(|| format!("{} is not a preview 1 module the adapter can wrap", args.module.display()))?
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        )
        .context("cannot load the preview 1 adapter")?
        .validate(true)
        .encode()
        .with_context(|| format!("cannot encode {} as a component", args.module.display()))?;
    std::fs::write(&args.output, component).with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(0)
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
