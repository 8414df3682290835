//! `containerd-shim-hybrid-v2`: containerd's runtime v2 shim for
//! `io.containerd.hybrid.v2`. Thin glue: the protocol lives here, the
//! container lifecycle in `hybrid-runtime`.

mod events;
mod info;
mod metrics;
mod rootfs;
mod service;
mod state;
mod shim;

pub const RUNTIME_ID: &str = "io.containerd.hybrid.v2";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().skip(1).any(|a| a == "-v" || a == "--version" || a == "-version") {
        println!("{}:", args.first().map(String::as_str).unwrap_or("containerd-shim-hybrid-v2"));
        println!("  Version: {}", env!("CARGO_PKG_VERSION"));
        println!("  Runtime: {RUNTIME_ID}");
        return;
    }
    if args.iter().skip(1).any(|a| a == "-info" || a == "--info") {
        match info::features_json() {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("{RUNTIME_ID}: cannot describe features: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let config = containerd_shim::Config {
        // We log through tracing to containerd's log fifo (see shim::init_logging).
        no_setup_logger: true,
        ..Default::default()
    };
    containerd_shim::run::<shim::HybridShim>(RUNTIME_ID, Some(config));
}
