//! Playing kubelet: a CRI v1 (`runtime.v1`) client on the private
//! containerd's socket (containerd 1.6 serves CRI on its main gRPC socket),
//! with the runtime handler `hybrid` that scripts/containerd.sh configures
//! (→ io.containerd.hybrid.v2) and our pause image as `sandbox_image`.
//!
//! The API types and the tonic clients come from the `k8s-cri` crate (the
//! kubernetes/cri-api protobuf, built with tonic/prost 0.14, the versions
//! containerd-client 0.9 uses).
//!
//! CRI works in containerd's `k8s.io` namespace: [`cri`] loads the images it
//! needs there with `hybrid build --load --namespace k8s.io`. `hybrid build`
//! does not unpack them; CRI 1.6 does on its own when it makes a container's
//! snapshot (its WithNewSnapshot retries after `Image.Unpack` on NotFound).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1 as api;
use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;

use crate::{all_pids, env, hybrid_bin, image, parent_pid, repo_root, unique_id, Env};

/// The CRI runtime handler (Kubernetes RuntimeClass `handler`) for our shim.
pub const HANDLER: &str = "hybrid";
/// containerd's namespace for everything CRI does.
pub const NAMESPACE: &str = "k8s.io";
/// The example images the CRI tests use, loaded into [`NAMESPACE`].
pub const CRI_IMAGES: &[&str] = &["pause", "busybox", "hello-rust", "sleep-wat", "exit-wat", "memory-bomb"];
/// How long one CRI call may take in these tests.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The pod sandbox image, as scripts/containerd.sh sets `sandbox_image`.
pub fn pause_image() -> String {
    image("pause")
}

/// A CRI client: a small tokio runtime and one gRPC channel to containerd.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    pub env: &'static Env,
    /// Where pods' log directories go (kubelet: /var/log/pods).
    pub log_root: PathBuf,
}

static CRI: OnceLock<Cri> = OnceLock::new();

/// The shared CRI client of this test binary: the private containerd of
/// [`env`], with the [`CRI_IMAGES`] loaded into `k8s.io`.
pub fn cri() -> &'static Cri {
    CRI.get_or_init(|| {
        let env = env();
        for name in CRI_IMAGES {
            let out = Command::new(hybrid_bin())
                .args(["build", "-t", &format!("hybrid-examples/{name}:latest"), "--load"])
                .args(["--address", &env.address, "--namespace", NAMESPACE])
                .arg(repo_root().join("wasm-examples").join(name))
                .output()
                .unwrap_or_else(|e| panic!("cannot run hybrid build for {name}: {e}"));
            assert!(
                out.status.success(),
                "hybrid build --load --namespace {NAMESPACE} {name} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Cri::connect(env).unwrap_or_else(|e| panic!("cannot connect a CRI client to {}: {e:#}", env.address))
    })
}

impl Cri {
    pub fn connect(env: &'static Env) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let path = PathBuf::from(&env.address);
        let channel = rt.block_on(async move {
            // The URI is not used: every connection goes to the unix socket.
            Endpoint::try_from("http://[::]:50051")
                .context("endpoint")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
                }))
                .await
                .context("connect to containerd's socket")
        })?;
        let log_root = env.state.join("pod-logs");
        std::fs::create_dir_all(&log_root).with_context(|| format!("create {}", log_root.display()))?;
        Ok(Cri { rt, channel, env, log_root })
    }

    /// Run a future (a CRI call) to completion.
    pub fn block<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Run a CRI call, failing after [`CALL_TIMEOUT`] (kubelet's
    /// runtime-request-timeout is 2 minutes) rather than hanging a test.
    pub fn call<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match self.rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, f).await }) {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(anyhow!("{what}: {status}")),
            Err(_) => Err(anyhow!("{what}: no answer within {CALL_TIMEOUT:?}")),
        }
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// A kubelet-like pod config: unique name and uid, host network (no CNI
    /// here, so the node's network and UTS namespaces; see
    /// [`pod_namespaces`]), a cgroup parent like kubelet's
    /// cgroupfs driver, and a log directory.
    pub fn pod_config(&self, name: &str) -> Result<api::PodSandboxConfig> {
        let name = unique_id(name);
        let uid = format!("uid-{name}");
        let log_directory = self.log_root.join(&uid);
        std::fs::create_dir_all(&log_directory).with_context(|| format!("create {}", log_directory.display()))?;
        Ok(api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.clone(),
                uid: uid.clone(),
                namespace: "default".into(),
                attempt: 0,
            }),
            // Empty, as kubelet leaves it for a hostNetwork pod: the pod
            // shares the node's UTS namespace, so it cannot have its own
            // hostname (runc and libcontainer refuse one).
            hostname: String::new(),
            log_directory: log_directory.display().to_string(),
            labels: HashMap::from([("app".to_string(), "hybrid-cri-test".to_string())]),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: format!("/hybrid-cri/pod{uid}"),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(pod_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// RunPodSandbox with the `hybrid` handler; the sandbox id.
    pub fn run_pod(&self, config: &api::PodSandboxConfig) -> Result<String> {
        let resp = self.call(
            "RunPodSandbox",
            self.runtime().run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: HANDLER.into(),
            }),
        )?;
        Ok(resp.pod_sandbox_id)
    }

    pub fn pod_status(&self, pod_id: &str) -> Result<api::PodSandboxStatus> {
        let resp = self.call(
            &format!("PodSandboxStatus {pod_id}"),
            self.runtime().pod_sandbox_status(api::PodSandboxStatusRequest { pod_sandbox_id: pod_id.into(), verbose: false }),
        )?;
        resp.status.ok_or_else(|| anyhow!("PodSandboxStatus {pod_id}: no status"))
    }

    pub fn stop_pod(&self, pod_id: &str) -> Result<()> {
        self.call(
            &format!("StopPodSandbox {pod_id}"),
            self.runtime().stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: pod_id.into() }),
        )?;
        Ok(())
    }

    pub fn remove_pod(&self, pod_id: &str) -> Result<()> {
        self.call(
            &format!("RemovePodSandbox {pod_id}"),
            self.runtime().remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: pod_id.into() }),
        )?;
        Ok(())
    }

    /// Best-effort StopPodSandbox + RemovePodSandbox (test teardown).
    pub fn cleanup_pod(&self, pod_id: &str) {
        let _ = self.stop_pod(pod_id);
        let _ = self.remove_pod(pod_id);
    }

    /// CreateContainer in `pod_id`; the container id.
    pub fn create_container(
        &self,
        pod_id: &str,
        pod: &api::PodSandboxConfig,
        config: api::ContainerConfig,
    ) -> Result<String> {
        if let Some(dir) = config.log_path.rsplit_once('/').map(|(dir, _)| dir) {
            let dir = Path::new(&pod.log_directory).join(dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let resp = self.call(
            &format!("CreateContainer {name}"),
            self.runtime().create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            }),
        )?;
        Ok(resp.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        self.call(
            &format!("StartContainer {id}"),
            self.runtime().start_container(api::StartContainerRequest { container_id: id.into() }),
        )?;
        Ok(())
    }

    /// CreateContainer + StartContainer.
    pub fn run_container(&self, pod_id: &str, pod: &api::PodSandboxConfig, config: api::ContainerConfig) -> Result<String> {
        let id = self.create_container(pod_id, pod, config)?;
        self.start_container(&id)?;
        Ok(id)
    }

    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus> {
        let resp = self.call(
            &format!("ContainerStatus {id}"),
            self.runtime().container_status(api::ContainerStatusRequest { container_id: id.into(), verbose: false }),
        )?;
        resp.status.ok_or_else(|| anyhow!("ContainerStatus {id}: no status"))
    }

    /// Poll ContainerStatus (as kubelet's PLEG does) until the container is
    /// in `state`.
    pub fn wait_container_state(
        &self,
        id: &str,
        state: api::ContainerState,
        timeout: Duration,
    ) -> Result<api::ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id)?;
            if status.state == state as i32 {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id} not {} after {timeout:?}: {}",
                    state.as_str_name(),
                    describe(&status)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_secs: i64) -> Result<api::ExecSyncResponse> {
        self.call(
            &format!("ExecSync {id}"),
            self.runtime().exec_sync(api::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout_secs,
            }),
        )
    }

    /// The container's log file (`log_directory`/`log_path`).
    pub fn log_file(&self, pod: &api::PodSandboxConfig, config_log_path: &str) -> PathBuf {
        Path::new(&pod.log_directory).join(config_log_path)
    }

    /// The shim socket address containerd keeps in a task's bundle (which
    /// shim serves the container).
    pub fn shim_address(&self, id: &str) -> Option<String> {
        let bundle = self.bundle_dir(id);
        std::fs::read_to_string(bundle.join("address")).ok().map(|s| s.trim().to_string())
    }

    /// The task bundle of a CRI container (containerd 1.6 runtime v2 layout).
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.env.state.join("state/io.containerd.runtime.v2.task").join(NAMESPACE).join(id)
    }

    /// The last lines of the private containerd's log, for failure messages.
    pub fn containerd_log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.env.state.join("containerd.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Namespaces as kubelet asks for a hostNetwork pod without
/// `shareProcessNamespace`: network of the node, IPC shared by the pod, a
/// PID namespace per container.
pub fn pod_namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Node as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// As [`pod_namespaces`], for a pod with `shareProcessNamespace: true`.
pub fn shared_pid_namespaces() -> api::NamespaceOption {
    api::NamespaceOption { pid: api::NamespaceMode::Pod as i32, ..pod_namespaces() }
}

/// A kubelet-like container config: `image` (a full reference), `command`
/// and `args` as in a pod spec (empty = the image's), log path
/// `NAME/0.log`.
pub fn container_config(name: &str, image: &str, command: &[&str], args: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(api::ImageSpec { image: image.into(), ..Default::default() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One line of the CRI log format: `TIMESTAMP STREAM TAG CONTENT`, TAG `F`
/// (full line) or `P` (partial).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub timestamp: String,
    pub stream: String,
    pub tag: String,
    pub content: String,
}

/// Parse a CRI log file's text; an error names the first malformed line.
pub fn parse_cri_log(text: &str) -> Result<Vec<LogLine>> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (Some(timestamp), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
                bail!("not a cri log line: {line:?}");
            };
            let content = parts.next().unwrap_or("");
            let ts_ok = timestamp.len() >= 20
                && timestamp.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && timestamp.as_bytes()[4] == b'-'
                && timestamp.contains('T')
                && (timestamp.ends_with('Z') || timestamp[19..].contains(['+', '-']));
            if !ts_ok {
                bail!("bad rfc3339 timestamp in cri log line: {line:?}");
            }
            if stream != "stdout" && stream != "stderr" {
                bail!("bad stream in cri log line: {line:?}");
            }
            if tag != "F" && tag != "P" {
                bail!("bad tag in cri log line: {line:?}");
            }
            Ok(LogLine {
                timestamp: timestamp.into(),
                stream: stream.into(),
                tag: tag.into(),
                content: content.into(),
            })
        })
        .collect()
}

/// A readable summary of a container status for assertion messages.
pub fn describe(status: &api::ContainerStatus) -> String {
    let state = api::ContainerState::try_from(status.state).map(|s| s.as_str_name()).unwrap_or("?");
    format!(
        "state={state} exit_code={} reason={:?} message={:?}",
        status.exit_code, status.reason, status.message
    )
}

/// `containerd-shim-hybrid-v2` processes whose arguments mention `id`, not
/// counting their own descendants (a wasm task's process is a clone of the
/// shim and keeps its command line until it execs, if ever).
pub fn shim_processes_for(id: &str) -> Vec<i32> {
    let mut shims: HashMap<i32, i32> = HashMap::new(); // pid -> ppid
    for pid in all_pids() {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with("containerd-shim-hybrid-v2"));
        if is_shim && args.iter().any(|a| a == id) {
            shims.insert(pid, parent_pid(pid).unwrap_or(0));
        }
    }
    let mut top: Vec<i32> = shims.iter().filter(|(_, ppid)| !shims.contains_key(ppid)).map(|(pid, _)| *pid).collect();
    top.sort_unstable();
    top
}

/// Remove the cgroup directories our kubelet-like `cgroup_parent` made
/// (kubelet creates and removes the pod cgroup itself; the runtime only
/// removes the containers' own).
pub fn remove_pod_cgroups(pod: &api::PodSandboxConfig) {
    let Some(parent) = pod.linux.as_ref().map(|l| l.cgroup_parent.trim_start_matches('/').to_string()) else {
        return;
    };
    if parent.is_empty() {
        return;
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    for h in hierarchies.flatten() {
        let dir = h.path().join(&parent);
        let _ = std::fs::remove_dir(&dir);
    }
}
