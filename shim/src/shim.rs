//! The shim binary's lifecycle: `start` (find or bind the group's shim
//! socket), `delete` (clean up after a lost shim), and serving.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use hybrid_runtime::state_in_memory::SHIM_STATE_ROOT;
use hybrid_runtime::HybridContainer;
use oci_spec::runtime::Spec;

use crate::rootfs;
use crate::service::TaskService;

/// CRI's sandbox annotation: every container of a pod goes to one shim.
const CRI_SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// Our own grouping annotation, for grouping outside Kubernetes.
pub const GROUP_ANNOTATION: &str = "io.containerd.hybrid.v2.group";
/// runc's grouping annotation, honoured too so that tooling made for runc works.
const RUNC_GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// Where libcontainer keeps container state, per containerd namespace,
/// under the shim's state root (a tmpfs: hybrid_runtime::state_in_memory).
pub fn state_root(namespace: &str) -> PathBuf {
    PathBuf::from(SHIM_STATE_ROOT).join(namespace)
}

pub struct HybridShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    bundle: PathBuf,
}

/// What containerd-shim's own serving loop would serve: nothing, as it
/// never runs (`start` forks our serving shim, serve.rs, which serves a
/// [`TaskService`] through ttrpc's asynchronous server); containerd-shim's
/// `run` is only the `delete` action here.
pub struct Unserved;

impl containerd_shim::Task for Unserved {}

impl HybridShim {
    /// The task service, publishing its events to containerd's ttrpc
    /// socket at `ttrpc_address` from a task on `runtime`.
    pub fn task_service(&self, runtime: &tokio::runtime::Handle, ttrpc_address: String) -> TaskService {
        let events = crate::events::EventSender::spawn(runtime, ttrpc_address, self.namespace.clone());
        TaskService::new(&self.namespace, events, self.exit.clone(), runtime.clone())
    }
}

impl containerd_shim::Shim for HybridShim {
    type T = Unserved;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
        } else {
            PathBuf::from(&args.bundle)
        };
        if args.action.is_empty() {
            init_logging(args.debug);
        }
        crate::artifact::set_containerd_address(&args.address);
        Self {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
        }
    }

    fn start_shim(&mut self, _opts: StartOpts) -> containerd_shim::Result<String> {
        // main.rs handles `start` before containerd-shim's `run` is called.
        Err(containerd_shim::Error::Unimplemented("start goes through shim::start".into()))
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let span = tracing::info_span!("delete", id = %self.id);
        let _enter = span.enter();
        // The shim that served this container is gone: kill what is left,
        // remove cgroup and state, and release the rootfs.
        match HybridContainer::load(&state_root(&self.namespace), &self.id) {
            Ok(mut container) => {
                if let Err(e) = container.delete() {
                    tracing::warn!("cannot delete container: {e}");
                }
            }
            Err(e) => tracing::info!("no container state to clean: {e}"),
        }
        rootfs::unmount_all(&self.bundle);
        Ok(DeleteResponse {
            // As runc's shim: the process is gone, reported as SIGKILLed.
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(Timestamp::now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, _publisher: RemotePublisher) -> Unserved {
        Unserved
    }
}

/// What `start` found for its container's group.
pub enum Started {
    /// A shim of the group serves at this address already.
    Served(String),
    /// No shim serves the group: its socket is bound here, for the serving
    /// shim that `start` forks (main.rs) to take over, with the spec of
    /// the container it starts for (None when it cannot be read).
    Bound { address: String, listener: UnixListener, spec: Option<Spec> },
}

/// The `start` action: the group's address, and its socket bound when no
/// shim serves the group yet. The address is written to the bundle's
/// `address` file, as containerd-shim's `start` does.
pub fn start(flags: &Flags) -> containerd_shim::Result<Started> {
    let bundle = std::env::current_dir()
        .map_err(|e| containerd_shim::Error::Other(format!("cannot read the bundle dir: {e}")))?;
    // Read once: the serving shim this process forks starts on it too.
    let spec = Spec::load(bundle.join("config.json")).ok();
    let grouping = spec.as_ref().and_then(group_of).unwrap_or_else(|| flags.id.clone());
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &grouping);
    // A container joining a group whose shim is up (a pod's second
    // container) is served by that shim. A shim that shuts down in between
    // fails this create, the race runc's shim has too.
    let started = if grouping != flags.id && shim_answers(&address) {
        Started::Served(address.clone())
    } else {
        match crate::serve::listen(&address)? {
            Some(listener) => Started::Bound { address: address.clone(), listener, spec },
            // Another `start` of the group bound it first.
            None => Started::Served(address.clone()),
        }
    };
    containerd_shim::util::write_address(&address)?;
    Ok(started)
}

/// Whether a shim listens on this ttrpc address (`unix://PATH`).
pub fn shim_answers(address: &str) -> bool {
    std::os::unix::net::UnixStream::connect(socket_path(address)).is_ok()
}

/// The filesystem path of a `unix://` socket address.
pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// The group a container joins, from its spec's annotations.
fn group_of(spec: &Spec) -> Option<String> {
    let annotations = spec.annotations().as_ref()?;
    [GROUP_ANNOTATION, RUNC_GROUP_ANNOTATION, CRI_SANDBOX_ANNOTATION]
        .iter()
        .find_map(|key| annotations.get(*key).filter(|v| !v.is_empty()).cloned())
}

/// The serving shim logs to the `log` fifo containerd reads in the bundle
/// (it shows in containerd's own log); elsewhere to stderr.
fn init_logging(debug: bool) {
    use std::os::unix::fs::OpenOptionsExt;
    let level = if debug { "debug" } else { "info" };
    // libcgroups' v1 manager warns of every controller the host lacks
    // (hugetlb, perf_event, net_cls, net_prio here) each time one is made:
    // four lines per container in containerd's log, saying nothing new.
    let filter = tracing_subscriber::EnvFilter::try_from_env("HYBRID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},libcgroups::v1::manager=error")));
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    let result = match fifo {
        // No mutex around the fifo: a container's processes are clones of
        // this one, and a lock held by another thread while one is cloned
        // would stay held in the clone, hanging its first log line. Each
        // event is formatted first and written in one go.
        Ok(file) => {
            let file = std::sync::Arc::new(file);
            builder.with_writer(move || LogFifo(file.clone())).try_init()
        }
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
    if let Err(e) = result {
        eprintln!("cannot set up logging: {e}");
    }
}

/// The log fifo, written without a lock (see `init_logging`).
struct LogFifo(std::sync::Arc<std::fs::File>);

impl std::io::Write for LogFifo {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
