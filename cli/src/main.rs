//! `hybrid`: build images from Dockerfiles and load them into containerd.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hybrid_builder::{BuildOptions, ContainerdOptions, DEFAULT_ADDRESS, DEFAULT_NAMESPACE};

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
    #[command(flatten)]
    containerd: ContainerdArgs,
    /// The build context directory.
    #[arg(value_name = "CONTEXT_DIR")]
    context: PathBuf,
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
    if args.output.is_none() && !args.load {
        tracing::warn!("neither -o nor --load given: the image is built and discarded");
    }
    let options = BuildOptions {
        context: args.context,
        dockerfile: args.file,
        tag: args.tag,
        output: args.output,
        load: args.load,
        containerd: args.containerd.options(),
        source_date_epoch: hybrid_builder::source_date_epoch_from_env()?,
    };
    let image = hybrid_builder::build(&options).await?;
    println!("{} {}", image.name, image.digest);
    Ok(())
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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,hybrid_builder=info,hybrid=info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Build(args) => build(args).await,
            Command::Load(args) => load(args).await,
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
