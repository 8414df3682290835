//! `hybrid`: build images from Dockerfiles and load them into containerd.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod wasm;
use hybrid_builder::{
    ArtifactForm, BuildOptions, Compression, ContainerdOptions, Platform, DEFAULT_ADDRESS, DEFAULT_NAMESPACE,
};

#[derive(Parser)]
#[command(name = "hybrid", version, about = "hybrid: wasm and Linux containers for containerd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a Dockerfile into an OCI archive and/or containerd.
    Build(BuildArgs),
    /// Load an OCI image archive into containerd.
    Load(LoadArgs),
    /// Manage the build cache (${HYBRID_CACHE_DIR:-/var/lib/hybrid/cache}).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Run wasm modules outside containers, and warm the compile cache.
    #[command(subcommand)]
    Wasm(wasm::WasmCommand),
}

#[derive(Args)]
struct ContainerdArgs {
    /// containerd's gRPC socket.
    #[arg(long, value_name = "SOCKET", default_value = DEFAULT_ADDRESS)]
    address: PathBuf,
    /// containerd namespace.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    namespace: String,
}

impl ContainerdArgs {
    fn options(&self) -> ContainerdOptions {
        ContainerdOptions { address: self.address.clone(), namespace: self.namespace.clone() }
    }
}

#[derive(Args)]
struct BuildArgs {
    /// The Dockerfile (default: CONTEXT_DIR/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "DOCKERFILE")]
    file: Option<PathBuf>,
    /// Image name, NAME[:TAG] (normalized like ctr: hello → docker.io/library/hello:latest).
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    tag: String,
    /// Write an OCI image archive to this file.
    #[arg(short = 'o', long = "output", value_name = "OUT.tar")]
    output: Option<PathBuf>,
    /// Load the image into containerd.
    #[arg(long)]
    load: bool,
    /// Also write the image as an OCI image layout directory.
    #[arg(long = "output-layout", value_name = "DIR")]
    output_layout: Option<PathBuf>,
    /// Set a build argument (ARG); NAME alone takes the value from the environment. Repeatable.
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    build_args: Vec<String>,
    /// Build up to this stage (FROM ... AS NAME) and output it instead of the last stage.
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
    /// Do not use the build cache (${HYBRID_CACHE_DIR:-/var/lib/hybrid/cache}).
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Layer compression.
    #[arg(long, value_name = "gzip|zstd|none", default_value = "gzip")]
    compression: Compression,
    /// Write an OCI wasm artifact of the module the image's ENTRYPOINT/CMD names:
    /// `index` (the default) adds a layerless linux entry so that containerd 1.6's
    /// `ctr run` and CRI run it through hybrid; `manifest` is the bare artifact.
    #[arg(long, value_name = "index|manifest", num_args = 0..=1, require_equals = true, default_missing_value = "index")]
    artifact: Option<ArtifactForm>,
    /// Platform to build for, OS/ARCH[/VARIANT] (default: the host's, e.g. linux/amd64).
    /// wasip1/wasm and wasip2/wasm are accepted for wasm images (which are linux
    /// with a .wasm entrypoint by default); RUN on another platform is not supported.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<Platform>,
    #[command(flatten)]
    containerd: ContainerdArgs,
    /// The build context directory.
    #[arg(value_name = "CONTEXT_DIR")]
    context: PathBuf,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Remove the least recently used build cache entries until the cache is
    /// under SIZE (refused while a build is using the cache).
    Prune {
        /// Size to keep the cache under: bytes, or with K, M, G or T (500M, 2G).
        #[arg(long, value_name = "SIZE", default_value = "2G", value_parser = hybrid_builder::cache::parse_size)]
        max: u64,
    },
}

#[derive(Args)]
struct LoadArgs {
    /// The OCI image archive.
    #[arg(value_name = "ARCHIVE.tar")]
    archive: PathBuf,
    /// Image name to use instead of the archive's (single-image archives).
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    tag: Option<String>,
    #[command(flatten)]
    containerd: ContainerdArgs,
}

async fn build(args: BuildArgs) -> anyhow::Result<()> {
    if args.output.is_none() && args.output_layout.is_none() && !args.load {
        tracing::warn!("neither -o, --output-layout nor --load given: the image is built and discarded");
    }
    let build_args = args
        .build_args
        .iter()
        .map(|a| hybrid_builder::parse_build_arg(a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = BuildOptions::new(args.context, args.tag);
    options.dockerfile = args.file;
    options.output = args.output;
    options.output_layout = args.output_layout;
    options.load = args.load;
    options.containerd = args.containerd.options();
    options.source_date_epoch = hybrid_builder::source_date_epoch_from_env()?;
    options.build_args = build_args;
    options.target = args.target;
    options.cache_dir = (!args.no_cache).then(hybrid_builder::cache_dir_from_env);
    options.compression = args.compression;
    options.artifact = args.artifact;
    options.platform = args.platform.unwrap_or_else(Platform::host);
    options.progress = true;
    let image = hybrid_builder::build(&options).await?;
    println!("{} {}", image.name, image.digest);
    Ok(())
}

fn cache(command: CacheCommand) -> anyhow::Result<()> {
    match command {
        CacheCommand::Prune { max } => {
            let dir = hybrid_builder::cache_dir_from_env();
            let report = hybrid_builder::cache::prune(&dir, max)?;
            println!(
                "removed {} entries ({} bytes); {} entries ({} bytes) left in {}",
                report.removed_entries,
                report.removed_bytes,
                report.remaining_entries,
                report.remaining_bytes,
                dir.display()
            );
            Ok(())
        }
    }
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let images = hybrid_builder::load(&args.archive, args.tag.as_deref(), &args.containerd.options())
        .await?;
    for image in images {
        println!("{} {}", image.name, image.digest);
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,hybrid_builder=info,hybrid=info,libcgroups=error")),
        )
        .init();
    // `hybrid build` makes its RUN containers from a fresh copy of this
    // program (single-threaded, no async runtime): this is that copy.
    if let Some(code) = hybrid_builder::run_helper::main_hook() {
        return code;
    }
    let cli = Cli::parse();
    let command = match cli.command {
        // Synchronous, and the module's exit status is ours.
        Command::Wasm(command) => match wasm::main(command) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        Command::Cache(command) => match cache(command) {
            Ok(()) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Build(args) => build(args).await,
            Command::Load(args) => load(args).await,
            Command::Wasm(_) | Command::Cache(_) => unreachable!("handled before the async runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
