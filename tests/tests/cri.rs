//! Kubernetes' node side without Kubernetes: these tests play kubelet
//! against the private containerd's CRI plugin (containerd 1.6, runtime
//! handler `hybrid` → io.containerd.hybrid.v2, our pause image as
//! sandbox_image) and check what kubelet would read back.

use std::time::{Duration, Instant};

use hybrid_tests::cri::{self, api, container_config, cri, describe, parse_cri_log, Cri};
use hybrid_tests::{cgroups_named, image, memory_limit_of, mounts_containing, processes_mentioning};

const START: Duration = Duration::from_secs(30);

/// A pod that is stopped and removed when the test ends, even on panic.
struct Pod {
    cri: &'static Cri,
    id: String,
    config: api::PodSandboxConfig,
}

impl Pod {
    fn run(name: &str) -> Pod {
        Pod::run_with(name, |_| {})
    }

    /// Run a pod whose config `edit` has adjusted.
    fn run_with(name: &str, edit: impl FnOnce(&mut api::PodSandboxConfig)) -> Pod {
        let cri = cri();
        let mut config = cri.pod_config(name).expect("pod config");
        edit(&mut config);
        let id = cri
            .run_pod(&config)
            .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", cri.containerd_log_tail(30)));
        Pod { cri, id, config }
    }

    fn run_container(&self, config: api::ContainerConfig) -> String {
        self.cri
            .run_container(&self.id, &self.config, config)
            .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", self.cri.containerd_log_tail(30)))
    }

    fn wait(&self, id: &str, state: api::ContainerState) -> api::ContainerStatus {
        self.cri
            .wait_container_state(id, state, START)
            .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", self.cri.containerd_log_tail(30)))
    }

    /// Wait until the container's log has a full stdout line `want`.
    fn wait_log_line(&self, name: &str, want: &str) -> Vec<cri::LogLine> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let path = self.cri.log_file(&self.config, &format!("{name}/0.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines = parse_cri_log(&text).unwrap_or_else(|e| panic!("{}: {e:#}\n{text}", path.display()));
            if lines.iter().any(|l| l.stream == "stdout" && l.tag == "F" && l.content == want) {
                return lines;
            }
            assert!(Instant::now() < deadline, "no line {want:?} in {} after 10s:\n{text}", path.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.cri.cleanup_pod(&self.id);
        cri::remove_pod_cgroups(&self.config);
    }
}

/// A native sidecar that says it is up, then sleeps until SIGTERM (exit 0).
fn sidecar(name: &str) -> api::ContainerConfig {
    container_config(
        name,
        &image("busybox"),
        &["sh", "-c"],
        &["echo sidecar up; trap 'echo sidecar stopping; exit 0' TERM; while :; do sleep 1 & wait; done"],
    )
}

/// Assert nothing of `ids` is left: no mount, no cgroup, no process
/// mentioning them, no task bundle.
fn assert_nothing_left(cri: &Cri, ids: &[&str]) {
    // The shim exits after its last task is deleted; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && ids.iter().any(|id| !processes_mentioning(id).is_empty()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for id in ids {
        assert_eq!(mounts_containing(id), Vec::<String>::new(), "mounts left for {id}");
        assert_eq!(cgroups_named(id), Vec::<std::path::PathBuf>::new(), "cgroups left for {id}");
        assert_eq!(processes_mentioning(id), Vec::<i32>::new(), "processes (shim?) left for {id}");
        assert!(!cri.bundle_dir(id).exists(), "task bundle left: {}", cri.bundle_dir(id).display());
    }
}

#[test]
fn cri_answers_and_sees_the_pause_image_in_k8s_io() {
    let cri = cri();
    let version = cri.call("Version", cri.runtime().version(api::VersionRequest { version: "v1".into() })).expect("Version");
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    assert_eq!(version.runtime_api_version, "v1", "{version:?}");

    let status = cri.call("Status", cri.runtime().status(api::StatusRequest { verbose: false })).expect("Status");
    let conditions = status.status.expect("runtime status").conditions;
    let ready = conditions.iter().find(|c| c.r#type == "RuntimeReady").expect("a RuntimeReady condition");
    assert!(ready.status, "runtime not ready: {conditions:?}");

    let pause = cri
        .call(
            "ImageStatus",
            cri.images().image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec { image: cri::pause_image(), ..Default::default() }),
                verbose: false,
            }),
        )
        .expect("ImageStatus");
    let pause = pause.image.expect("the pause image is known to CRI (loaded into k8s.io)");
    assert!(pause.repo_tags.contains(&cri::pause_image()), "{pause:?}");
}

#[test]
fn run_pod_sandbox_uses_the_hybrid_handler_and_our_pause_image() {
    let pod = Pod::run("sandbox");
    let status = pod.cri.pod_status(&pod.id).expect("PodSandboxStatus");
    assert_eq!(
        status.state,
        api::PodSandboxState::SandboxReady as i32,
        "sandbox not ready: {status:?}"
    );
    assert_eq!(status.runtime_handler, cri::HANDLER, "{status:?}");
    let ns = status.linux.and_then(|l| l.namespaces).and_then(|n| n.options).expect("namespace options");
    assert_eq!(ns.network, api::NamespaceMode::Node as i32, "host network: {ns:?}");

    // The sandbox container is a task of our shim, running our pause binary.
    let shims = cri::shim_processes_for(&pod.id);
    assert_eq!(shims.len(), 1, "one hybrid shim serves the sandbox: {shims:?}");
    let pause_pids: Vec<i32> = processes_mentioning("/pause")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| c.starts_with(b"/pause\0")).unwrap_or(false)
        })
        .collect();
    assert!(!pause_pids.is_empty(), "a /pause process runs");
}

#[test]
fn pod_with_wasm_container_and_native_sidecar_is_served_by_one_shim() {
    let pod = Pod::run("mixed");
    let sidecar_id = pod.run_container(sidecar("sidecar"));
    let wasm_id = pod.run_container(container_config("wasm", &image("sleep-wat"), &[], &[]));

    let running = pod.wait(&sidecar_id, api::ContainerState::ContainerRunning);
    assert_eq!(running.exit_code, 0, "{}", describe(&running));
    let wasm = pod.wait(&wasm_id, api::ContainerState::ContainerRunning);
    assert!(wasm.started_at > 0, "{}", describe(&wasm));
    pod.wait_log_line("sidecar", "sidecar up");
    pod.wait_log_line("wasm", "sleep-wat: sleeping 60s");

    // Kubelet's view: both containers of the pod, in their states.
    let listed = pod
        .cri
        .call(
            "ListContainers",
            pod.cri.runtime().list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() }),
            }),
        )
        .expect("ListContainers")
        .containers;
    let mut names: Vec<String> = listed.iter().filter_map(|c| c.metadata.as_ref().map(|m| m.name.clone())).collect();
    names.sort();
    assert_eq!(names, ["sidecar", "wasm"], "{listed:?}");
    assert!(
        listed.iter().all(|c| c.state == api::ContainerState::ContainerRunning as i32),
        "all running: {listed:?}"
    );

    // One shim for the whole pod: started for the sandbox, and the same
    // shim socket in every container's bundle.
    let shims = cri::shim_processes_for(&pod.id);
    assert_eq!(shims.len(), 1, "exactly one hybrid shim for pod {}: {shims:?}", pod.id);
    for id in [&sidecar_id, &wasm_id] {
        assert_eq!(cri::shim_processes_for(id), Vec::<i32>::new(), "no shim of its own for container {id}");
    }
    let address = pod.cri.shim_address(&pod.id).expect("the sandbox's bundle names its shim address");
    for id in [&sidecar_id, &wasm_id] {
        assert_eq!(pod.cri.shim_address(id).as_deref(), Some(address.as_str()), "container {id} uses the pod's shim");
    }
}

#[test]
fn wasm_container_logs_are_in_the_cri_log_format() {
    let pod = Pod::run("logs");
    let id = pod.run_container(container_config("hello", &image("hello-rust"), &[], &["one", "two"]));
    let status = pod.wait(&id, api::ContainerState::ContainerExited);
    assert_eq!(status.exit_code, 0, "{}", describe(&status));
    assert_eq!(
        status.log_path,
        pod.cri.log_file(&pod.config, "hello/0.log").display().to_string(),
        "ContainerStatus names the log path"
    );

    let lines = pod.wait_log_line("hello", "hello from wasm");
    let stdout: Vec<&str> = lines.iter().filter(|l| l.stream == "stdout").map(|l| l.content.as_str()).collect();
    assert_eq!(
        &stdout[..2],
        ["hello from wasm", "args: one two"],
        "stdout lines in order, args from the container config: {lines:?}"
    );
    assert!(stdout.contains(&"GREETING=hi from the Dockerfile"), "image env arrives: {lines:?}");
    assert!(lines.iter().all(|l| l.tag == "F"), "short lines are full lines: {lines:?}");
    assert!(lines.iter().all(|l| l.timestamp.ends_with('Z')), "utc timestamps on this host: {lines:?}");
}

#[test]
fn container_status_reports_exit_code_and_reason() {
    let pod = Pod::run("exit");
    let cases: [(&str, api::ContainerConfig, i32, &str); 4] = [
        ("wasm-ok", container_config("wasm-ok", &image("hello-rust"), &[], &[]), 0, "Completed"),
        ("wasm-exit3", container_config("wasm-exit3", &image("exit-wat"), &[], &[]), 3, "Error"),
        ("native-ok", container_config("native-ok", &image("busybox"), &["true"], &[]), 0, "Completed"),
        ("native-exit7", container_config("native-exit7", &image("busybox"), &["sh", "-c", "exit 7"], &[]), 7, "Error"),
    ];
    let mut ids = Vec::new();
    for (name, config, code, reason) in cases {
        ids.push((name, pod.run_container(config), code, reason));
    }
    for (name, id, code, reason) in &ids {
        let status = pod.wait(id, api::ContainerState::ContainerExited);
        assert_eq!(status.exit_code, *code, "{name}: {}", describe(&status));
        assert_eq!(status.reason, *reason, "{name}: {}", describe(&status));
        // Not finished_at >= started_at: CRI stamps started_at when the Start
        // call returns, and `true` may have exited (the shim's exited_at)
        // a fraction of a millisecond before.
        assert!(
            status.started_at >= status.created_at && status.finished_at >= status.created_at && status.started_at > 0,
            "{name}: times {status:?}"
        );
    }
}

#[test]
fn stop_and_remove_pod_sandbox_leave_nothing_behind() {
    let cri = cri();
    let pod = Pod::run("cleanup");
    let sidecar_id = pod.run_container(sidecar("sidecar"));
    let wasm_id = pod.run_container(container_config("wasm", &image("sleep-wat"), &[], &[]));
    pod.wait(&sidecar_id, api::ContainerState::ContainerRunning);
    pod.wait(&wasm_id, api::ContainerState::ContainerRunning);
    let ids = [pod.id.as_str(), sidecar_id.as_str(), wasm_id.as_str()];
    for id in ids {
        assert!(!mounts_containing(id).is_empty(), "{id}'s rootfs is mounted while it runs");
    }

    let started = Instant::now();
    cri.stop_pod(&pod.id).unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", cri.containerd_log_tail(30)));
    let took = started.elapsed();
    let status = cri.pod_status(&pod.id).expect("PodSandboxStatus after stop");
    assert_eq!(status.state, api::PodSandboxState::SandboxNotready as i32, "{status:?}");
    // StopPodSandbox stops the containers with a grace period of 0: SIGKILL.
    for id in [&sidecar_id, &wasm_id] {
        let status = cri.container_status(id).expect("ContainerStatus after stop");
        assert_eq!(status.state, api::ContainerState::ContainerExited as i32, "{id}: {}", describe(&status));
    }
    assert!(took < Duration::from_secs(10), "StopPodSandbox took {took:?}");

    cri.remove_pod(&pod.id).unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", cri.containerd_log_tail(30)));
    let gone = cri.pod_status(&pod.id);
    assert!(gone.is_err(), "the pod is gone after RemovePodSandbox: {gone:?}");
    for id in [&sidecar_id, &wasm_id] {
        assert!(cri.container_status(id).is_err(), "container {id} removed with its pod");
    }
    assert_nothing_left(cri, &ids);
}

/// shareProcessNamespace: every container joins the sandbox's PID
/// namespace. libcontainer 0.7 cannot mount the cgroup v1 filesystem CRI
/// puts in every spec for such a process (it looks its pod-namespace pid up
/// in the host's /proc); hybrid rewrites that mount as runc makes it
/// (runtime/src/cgroup_mount.rs). Each container must start, see the pause
/// process as pid 1, and see its own cgroups under /sys/fs/cgroup.
#[test]
fn pod_sharing_its_pid_namespace_runs_its_containers() {
    let pod = Pod::run_with("sharedpid", |config| {
        if let Some(sc) = config.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.namespace_options = Some(cri::shared_pid_namespaces());
        }
    });
    let mut ids = Vec::new();
    for n in 0..6 {
        let script = "test $$ -gt 1 && test -r /sys/fs/cgroup/memory/memory.limit_in_bytes && grep -q pause /proc/1/cmdline";
        let mut config = container_config(&format!("c{n}"), &image("busybox"), &["sh", "-c", script], &[]);
        if let Some(sc) = config.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.namespace_options = Some(cri::shared_pid_namespaces());
        }
        ids.push(pod.run_container(config));
    }
    for id in &ids {
        let status = pod.wait(id, api::ContainerState::ContainerExited);
        assert_eq!(status.exit_code, 0, "{id}: {}", describe(&status));
    }
}

#[test]
fn exec_sync_runs_in_the_native_sidecar() {
    let pod = Pod::run("exec");
    let id = pod.run_container(sidecar("sidecar"));
    pod.wait(&id, api::ContainerState::ContainerRunning);
    let out = pod.cri.exec_sync(&id, &["sh", "-c", "echo in-pod; exit 4"], 10).expect("ExecSync");
    assert_eq!(out.exit_code, 4, "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "in-pod", "{out:?}");
}

/// The kernel's OOM killer takes the native container; the shim's TaskOOM
/// event makes CRI report OOMKilled (not just Error, exit 137).
#[test]
fn a_container_over_its_memory_limit_is_oomkilled() {
    let pod = Pod::run("oom");
    let mut config = container_config(
        "hog",
        &image("busybox"),
        &["sh", "-c"],
        // Grows a shell variable until the memory cgroup kills it.
        &["x=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; while :; do x=$x$x; done"],
    );
    config.linux.get_or_insert_with(Default::default).resources =
        Some(api::LinuxContainerResources { memory_limit_in_bytes: 32 << 20, ..Default::default() });
    let id = pod.run_container(config);
    let status = pod.wait(&id, api::ContainerState::ContainerExited);
    assert_eq!(status.reason, "OOMKilled", "{}", describe(&status));
    assert_eq!(status.exit_code, 137, "{}", describe(&status));
}

/// kubelet's in-place resize: UpdateContainerResources reaches the shim's
/// Update, which changes the running container's cgroup.
#[test]
fn update_container_resources_changes_the_running_containers_memory_limit() {
    let pod = Pod::run("update");
    let id = pod.run_container(sidecar("sidecar"));
    pod.wait(&id, api::ContainerState::ContainerRunning);
    let limit: i64 = 48 << 20;
    let request = api::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(api::LinuxContainerResources { memory_limit_in_bytes: limit, ..Default::default() }),
        ..Default::default()
    };
    pod.cri
        .call("UpdateContainerResources", pod.cri.runtime().update_container_resources(request))
        .expect("UpdateContainerResources");
    let (file, got) = memory_limit_of(&id).unwrap_or_else(|| panic!("no memory cgroup named {id}"));
    assert_eq!(got, limit.to_string(), "{file:?}");
}

/// The container's memory limit applies inside the wasm sandbox: a memory
/// bomb in a pod is stopped and reported as kubelet expects of an OOM kill.
#[test]
fn a_wasm_memory_bomb_in_a_pod_is_oomkilled() {
    let pod = Pod::run("wasm-oom");
    let mut config = container_config("bomb", &image("memory-bomb"), &[], &[]);
    config.linux.get_or_insert_with(Default::default).resources =
        Some(api::LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() });
    let id = pod.run_container(config);
    let status = pod.wait(&id, api::ContainerState::ContainerExited);
    assert_eq!(status.exit_code, 137, "{}", describe(&status));
    assert_eq!(status.reason, "OOMKilled", "{}", describe(&status));
}

/// kubelet puts a pod's memory limit on the pod's cgroup (the sandbox's
/// cgroup_parent), not on each container: a wasm container with no limit of
/// its own is still held to it, and reported as OOMKilled.
#[test]
fn the_pods_memory_limit_holds_a_wasm_container_too() {
    let pod = Pod::run_with("pod-limit", |config| {
        let parent = config.linux.as_ref().map(|l| l.cgroup_parent.clone()).unwrap_or_default();
        let memcg = std::path::Path::new("/sys/fs/cgroup/memory").join(parent.trim_start_matches('/'));
        std::fs::create_dir_all(&memcg).expect("create the pod's memory cgroup, as kubelet does");
        std::fs::write(memcg.join("memory.limit_in_bytes"), (96u64 << 20).to_string()).expect("pod memory limit");
    });
    let id = pod.run_container(container_config("bomb", &image("memory-bomb"), &[], &[]));
    let status = pod.wait(&id, api::ContainerState::ContainerExited);
    assert_eq!(status.exit_code, 137, "{}", describe(&status));
    assert_eq!(status.reason, "OOMKilled", "{}", describe(&status));
}

/// ExecSync into a running wasm container: the exec'd module runs in the
/// container's sandbox root, and its output and exit code come back.
#[test]
fn exec_sync_runs_a_module_in_the_wasm_container() {
    let cri = cri();
    let context = tempfile::tempdir().expect("tempdir");
    for (example, module) in [("sleep-wat", "sleep.wasm"), ("exit-wat", "exit.wasm")] {
        std::fs::copy(hybrid_tests::repo_root().join("wasm-examples").join(example).join(module), context.path().join(module))
            .expect("copy module");
    }
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY sleep.wasm exit.wasm /\nENTRYPOINT [\"/sleep.wasm\"]\n",
    )
    .expect("Dockerfile");
    let built = std::process::Command::new(hybrid_tests::hybrid_bin())
        .args(["build", "-t", "hybrid-tests/wasm-pair:latest", "--load", "--address", &cri.env.address])
        .args(["--namespace", cri::NAMESPACE])
        .arg(context.path())
        .output()
        .expect("hybrid build");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let pod = Pod::run("wasm-exec");
    let id = pod.run_container(container_config("app", "docker.io/hybrid-tests/wasm-pair:latest", &[], &[]));
    pod.wait(&id, api::ContainerState::ContainerRunning);
    let out = pod.cri.exec_sync(&id, &["/exit.wasm"], 10).expect("ExecSync");
    assert_eq!(out.exit_code, 3, "{out:?}");
    assert!(!out.stdout.is_empty(), "the module's line comes back: {out:?}");
}
