//! `containerd-shim-hybrid-v2`: containerd's runtime v2 shim for
//! `io.containerd.hybrid.v2`. Thin glue: the protocol lives here, the
//! container lifecycle in `hybrid-runtime`.

mod artifact;
mod early_exit;
mod events;
mod image_port;
mod info;
mod left_created;
mod metrics;
mod rootfs;
mod serve;
mod service;
mod state;
mod task_async;
mod shim;
mod whole_frames;

use std::os::unix::net::UnixListener;

pub const RUNTIME_ID: &str = "io.containerd.hybrid.v2";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(artifact::HELPER_COMMAND) {
        std::process::exit(artifact::helper_main(&args[2..]));
    }
    if args.get(1).map(String::as_str) == Some(image_port::HELPER_COMMAND) {
        std::process::exit(image_port::helper_main(&args[2..]));
    }
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
    // `start` is ours, not containerd-shim's: its bootstrap registers
    // SIGPIPE with signal-hook and drops that registration as the helper it
    // spawned exits; the SIGCHLD handler's send on the closing socket then
    // raises SIGPIPE, whose handler sends again, forever (a `start` stuck at
    // 100% cpu, seen about once in a few hundred starts). `start` needs no
    // signal handling at all.
    if let Ok(flags) = containerd_shim::parse(&args[1..]) {
        if flags.action == "start" {
            start(flags);
            return;
        }
        if flags.action == "delete" {
            std::process::exit(delete(flags));
        }
    }
    // Anything else goes through containerd-shim's `run` (a serving
    // process started without `start`, which containerd never does: ours
    // is forked by `start`).
    containerd_shim::run::<shim::HybridShim>(RUNTIME_ID, Some(shim_config()));
}

/// `start`: tell containerd the address of the shim serving this
/// container's group, forking that shim when there is none yet.
fn start(flags: containerd_shim::Flags) {
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("{RUNTIME_ID}: start: {e}");
        std::process::exit(1);
    };
    // Create follows within milliseconds and its container joins cgroups:
    // start the kernel's wait for that now (see hybrid_runtime::cgroup_join).
    hybrid_runtime::cgroup_join::start_grace_period_in_child();
    match shim::start(&flags) {
        Ok(shim::Started::Served(address)) => print!("{address}"),
        Ok(shim::Started::Bound { address, listener, spec }) => match serve::fork_server() {
            Ok(serve::Forked::Start) => print!("{address}"),
            Ok(serve::Forked::Server) => {
                serve::show_as_serving();
                let serving = containerd_shim::Flags {
                    debug: flags.debug,
                    namespace: flags.namespace,
                    id: flags.id,
                    socket: address,
                    bundle: flags.bundle,
                    address: flags.address,
                    publish_binary: flags.publish_binary,
                    ..Default::default()
                };
                serve_containers(&serving, listener, spec);
            }
            Err(e) => fail(&e),
        },
        Err(e) => fail(&e),
    }
}

/// `delete`: containerd's cleanup once the shim serving a container is
/// gone, which it runs after every shim's exit, while its client waits.
/// containerd-shim's `run` would first take signals, become a subreaper
/// and start a thread, none of which the cleanup needs.
fn delete(flags: containerd_shim::Flags) -> i32 {
    use containerd_shim::protos::protobuf::Message;
    use containerd_shim::Shim;
    use std::io::Write;
    let mut shim = shim::HybridShim::new(RUNTIME_ID, &flags, &mut shim_config());
    let response = match shim.delete_shim() {
        Ok(response) => response,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: delete: {e}");
            return 1;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match response.write_to_writer(&mut stdout).map_err(|e| e.to_string()).and_then(|()| stdout.flush().map_err(|e| e.to_string())) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: delete: cannot write the answer: {e}");
            1
        }
    }
}

/// See serve_containers.
const MMAP_THRESHOLD: libc::c_int = 64 * 1024;

/// The serving shim, until its group's last container is deleted.
fn serve_containers(flags: &containerd_shim::Flags, listener: UnixListener, first_spec: Option<oci_spec::runtime::Spec>) {
    // One malloc arena per process instead of one per thread (up to eight
    // per core), for the shim's threads and, inherited through the
    // spawner, for a wasm container's tokio worker, which would otherwise
    // get an arena of its own. None allocates enough for the lock to matter.
    // SAFETY: mallopt only sets a malloc tunable; no memory is passed.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // Blocks of 64 KiB and more come from mmap and go back at their free.
    // glibc's own threshold starts at 128 KiB and rises to the largest such
    // block freed (a module's bytes, a compile cache entry), after which
    // those blocks are carved from the heap and leave it fragmented: every
    // container, a clone of the spawner, inherits that heap and, as it
    // allocates into the gaps, copies its pages. Fixed, an idle wasm
    // container keeps about 240 KiB less (bench/density.sh).
    // SAFETY: as above.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    // The spawner, which clones every container and exec, is forked now,
    // while this process is still single-threaded (see
    // hybrid_runtime::spawner). With HYBRID_SPAWNER=off they are cloned
    // from forked copies of the shim (hybrid_runtime::fork_guard).
    if std::env::var("HYBRID_SPAWNER").as_deref() != Ok("off") {
        // The serving shim runs in its first container's bundle (`start`'s).
        if let Err(e) = hybrid_runtime::spawner::start(std::env::current_dir().ok()) {
            eprintln!("{RUNTIME_ID}: no spawner, containers are cloned from forked copies of the shim: {e}");
        }
    }
    // Serving is our own loop (serve.rs: containerd-shim's cannot size its
    // ttrpc server).
    if let Err(e) = serve::serve(RUNTIME_ID, flags, shim_config(), listener, first_spec.as_ref()) {
        // containerd only sees the socket refuse: say why in its log too.
        tracing::error!("cannot serve: {e}");
        eprintln!("{RUNTIME_ID}: {e}");
        std::process::exit(1);
    }
}

fn shim_config() -> containerd_shim::Config {
    containerd_shim::Config {
        // We log through tracing to containerd's log fifo (see shim::init_logging).
        no_setup_logger: true,
        ..Default::default()
    }
}
