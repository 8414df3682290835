//! The task API beyond run-to-completion: exec, pause/resume, pids, kill
//! --all and metrics, for native and wasm tasks, driven through ctr.

use std::time::Duration;

use hybrid_tests::*;

/// A detached task of `image` that stays running, deleted on drop.
struct Running<'a> {
    env: &'a Env,
    id: String,
}

impl<'a> Running<'a> {
    fn start(env: &'a Env, image_ref: &str, args: &[&str]) -> Self {
        Self::start_with(env, &[], image_ref, args)
    }

    /// [`start`](Self::start), with more flags for `ctr run`.
    fn start_with(env: &'a Env, flags: &[&str], image_ref: &str, args: &[&str]) -> Self {
        let id = unique_id("api");
        let run = env.ctr_out(&[&["run", "-d", "--runtime", HYBRID_RUNTIME][..], flags, &[image_ref, &id], args].concat());
        assert_eq!(run.code, 0, "{run:?}");
        assert!(env.wait_for_status(&id, "RUNNING", Duration::from_secs(30)), "task {id} never ran");
        Running { env, id }
    }

    fn exec(&self, exec_id: &str, args: &[&str]) -> Ran {
        self.env.ctr_out(&[&["task", "exec", "--exec-id", exec_id, &self.id][..], args].concat())
    }

    fn metric(&self, name: &str) -> Option<u64> {
        let out = self.env.ctr_out(&["task", "metrics", &self.id]);
        out.stdout.lines().find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(name)).then(|| cols.next()?.parse().ok()).flatten()
        })
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        // Bounded: a test that failed on a stuck shim must still end.
        let _ = ctr_within(self.env, &["task", "resume", &self.id]);
        let _ = ctr_within(self.env, &["task", "kill", "-a", "-s", "SIGKILL", &self.id]);
        self.env.wait_for_status(&self.id, "STOPPED", Duration::from_secs(10));
        let _ = ctr_within(self.env, &["task", "rm", &self.id]);
        let _ = ctr_within(self.env, &["container", "rm", &self.id]);
    }
}

/// `ctr`, killed after 60 s (ctr's own `--timeout` does not end a `task
/// exec` whose Start never answers).
fn ctr_within(env: &Env, args: &[&str]) -> Ran {
    env.ctr_out_within(Duration::from_secs(60), args)
}

/// A wasm exec into a native container runs where /proc stays (the native
/// init needs it); its /proc/self is the exec's wasmtime process, which
/// never exec'd: what it shows as its environment must not be the shim's.
#[test]
fn a_wasm_exec_into_a_native_container_reads_no_environment_of_the_shim() {
    let env = env();
    let probe = repo_root().join("wasm-examples/c-hello/hello.wasm");
    let mount = format!("type=bind,src={},dst=/probe.wasm,options=rbind:ro", probe.display());
    let task = Running::start_with(env, &["--mount", &mount], &image("busybox"), &["sleep", "60"]);
    let ran = task.exec("w1", &["/probe.wasm", "read:/proc/self/environ", "read:/proc/self/status"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    // /proc is there (the probe reads its status)...
    assert!(ran.stdout.contains("read /proc/self/status: Name:"), "{ran:?}");
    // ...but the environment block reads empty.
    let environ = ran.stdout.lines().find(|l| l.starts_with("read /proc/self/environ: ")).unwrap_or_default();
    assert_eq!(environ, "read /proc/self/environ: ", "{ran:?}");
}

#[test]
fn exec_into_a_native_container_gives_output_and_exit_code() {
    let env = env();
    let task = Running::start(env, &image("busybox"), &["sleep", "60"]);
    let ran = task.exec("e1", &["sh", "-c", "echo exec pid=$$ in $(hostname); exit 4"]);
    assert_eq!(ran.code, 4, "the exec's exit code comes through Wait: {ran:?}");
    assert!(ran.stdout.contains("exec pid="), "{ran:?}");
    // The exec joined the container's pid namespace: its pid there is small.
    let pid: u32 = ran.stdout.split("pid=").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|p| p.parse().ok()).expect("pid");
    assert!(pid < 100, "exec runs in the container's pid namespace, got pid {pid}");
}

/// Execs made while other requests keep the shim's threads busy. The
/// container's processes are cloned by libcontainer with the raw system
/// call: from the shim itself, a clone taken while another thread held
/// malloc's lock hung in its first allocation (about one exec in 170 here,
/// with `ctr task ps` in three loops beside). They are cloned from a forked,
/// single-threaded copy of the shim now.
#[test]
fn execs_into_a_busy_shim_all_complete() {
    let env = env();
    let task = Running::start(env, &image("busybox"), &["sleep", "600"]);
    let done = std::sync::atomic::AtomicBool::new(false);
    let failed: Option<String> = std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = ctr_within(env, &["task", "ps", &task.id]);
                }
            });
        }
        // Up to the first failure: once a clone hangs, it holds the
        // container's state and every later call would wait out its deadline.
        let failed = (0..200).find_map(|i| {
            let ran = ctr_within(env, &["task", "exec", "--exec-id", &format!("busy{i}"), &task.id, "true"]);
            (ran.code != 0).then(|| format!("exec {i} of 200: {ran:?}"))
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        failed
    });
    if let Some(failed) = failed {
        panic!("an exec failed or hung: {failed}");
    }
}

/// An image with a sleeping module as init and a quick one to exec.
fn two_module_image() -> String {
    build_image(
        "exec-wasm",
        &[
            ("Dockerfile", "FROM scratch\nCOPY sleep.wat exit.wat /\nENTRYPOINT [\"/sleep.wat\"]\n"),
            ("sleep.wat", include_str!("../../wasm-examples/sleep-wat/sleep.wat")),
            ("exit.wat", include_str!("../../wasm-examples/exit-wat/exit.wat")),
        ],
    )
}

#[test]
fn exec_of_a_wasm_module_in_a_wasm_container_reports_its_exit_code() {
    let env = env();
    let task = Running::start(env, &two_module_image(), &[]);
    let ran = task.exec("w1", &["/exit.wat"]);
    assert_eq!(ran.code, 3, "proc_exit(3) of the exec'd module: {ran:?}");
    assert!(!ran.stdout.trim().is_empty(), "the exec'd module's output reaches ctr: {ran:?}");
}

/// A wasm exec that runs on (a module that sleeps a minute) into a wasm
/// container: its Start answers as the module starts, not as it ends, and
/// the shim answers meanwhile. The module's process never execs and, in a
/// wasm container (no /proc), cannot list its descriptors: one it kept was
/// libcontainer's exec-notify pipe, whose reader held up the exec's Start
/// (with the shim's state, and so every other call) until the module ended.
#[test]
fn a_long_wasm_exec_into_a_wasm_container_starts_and_leaves_the_shim_answering() {
    let env = env();
    let task = Running::start(env, &two_module_image(), &[]);
    let started = env.ctr_out_within(Duration::from_secs(20), &["task", "exec", "--detach", "--exec-id", "s1", &task.id, "/sleep.wat"]);
    assert_eq!(started.code, 0, "the exec's Start answers while the module runs: {started:?}");
    let ps = env.ctr_out_within(Duration::from_secs(10), &["task", "ps", &task.id]);
    assert_eq!(ps.code, 0, "the shim answers while the exec runs: {ps:?}");
    let pids = ps.stdout.lines().skip(1).filter(|l| !l.trim().is_empty()).count();
    assert_eq!(pids, 2, "the init and the exec run: {ps:?}");
}

#[test]
fn exec_of_a_missing_entrypoint_fails_naming_it() {
    let env = env();
    let task = Running::start(env, &two_module_image(), &[]);
    let ran = task.exec("m1", &["/not-here.wasm"]);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(ran.stderr.contains("/not-here.wasm"), "{ran:?}");
}

#[test]
fn exec_of_a_wasm_module_beside_a_native_init() {
    let env = env();
    let image_ref = build_image(
        "exec-wasm-native",
        &[
            ("Dockerfile", "FROM hybrid-examples/busybox\nCOPY exit.wat /exit.wat\n"),
            ("exit.wat", include_str!("../../wasm-examples/exit-wat/exit.wat")),
        ],
    );
    let task = Running::start(env, &image_ref, &["sleep", "60"]);
    let ran = task.exec("x1", &["/exit.wat"]);
    assert_eq!(ran.code, 3, "a wasm exec beside a native init: {ran:?}");
}

#[test]
fn pause_freezes_a_spinning_wasm_task_and_resume_thaws_it() {
    let env = env();
    let image_ref = wat_image("pause-spin", "(module (memory (export \"memory\") 1) (func (export \"_start\") (loop (br 0))))\n;; pause\n");
    let task = Running::start(env, &image_ref, &[]);
    let pause = env.ctr_out(&["task", "pause", &task.id]);
    assert_eq!(pause.code, 0, "{pause:?}");
    assert_eq!(env.task_status(&task.id).as_deref(), Some("PAUSED"));
    let before = task.metric("cpuacct.usage").expect("cpu usage while paused");
    std::thread::sleep(Duration::from_millis(300));
    let after = task.metric("cpuacct.usage").expect("cpu usage while paused");
    assert_eq!(before, after, "a paused wasm task makes no progress");
    let resume = env.ctr_out(&["task", "resume", &task.id]);
    assert_eq!(resume.code, 0, "{resume:?}");
    assert_eq!(env.task_status(&task.id).as_deref(), Some("RUNNING"));
    std::thread::sleep(Duration::from_millis(300));
    let resumed = task.metric("cpuacct.usage").expect("cpu usage after resume");
    assert!(resumed > after, "a resumed task spins again ({after} -> {resumed})");
}

#[test]
fn pids_lists_every_process_and_kill_all_signals_them_all() {
    let env = env();
    let task = Running::start(env, &image("busybox"), &["sh", "-c", "sleep 60 & sleep 60 & wait"]);
    std::thread::sleep(Duration::from_millis(300));
    let ps = env.ctr_out(&["task", "ps", &task.id]);
    let pids: Vec<i32> = ps.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    assert_eq!(pids.len(), 3, "sh and its two sleeps: {ps:?}");
    let kill = env.ctr_out(&["task", "kill", "--all", "-s", "SIGKILL", &task.id]);
    assert_eq!(kill.code, 0, "{kill:?}");
    assert!(env.wait_for_status(&task.id, "STOPPED", Duration::from_secs(5)));
    for pid in pids {
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        assert!(gone, "process {pid} survived kill --all");
    }
}

#[test]
fn an_exec_is_in_its_containers_cgroups() {
    // On a cgroup v1 host an exec's creator joins them itself (runtime's
    // cgroup_join.rs), not libcontainer: the exec must land in the same
    // place, where Pids and the limits reach it.
    let env = env();
    let task = Running::start(env, &image("busybox"), &["sleep", "60"]);
    let exec = env.ctr_out(&["task", "exec", "-d", "--exec-id", "joins", &task.id, "sleep", "60"]);
    assert_eq!(exec.code, 0, "{exec:?}");
    let ps = env.ctr_out(&["task", "ps", &task.id]);
    let pids: Vec<i32> = ps.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    assert_eq!(pids.len(), 2, "the init and the exec: {ps:?}");
    let suffix = format!("/{}", task.id);
    for pid in pids {
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the process's cgroups");
        for controller in ["memory", "pids"] {
            let line = own.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == controller)));
            let line = line.or_else(|| own.lines().find(|l| l.starts_with("0::"))).expect("a cgroup line");
            assert!(line.ends_with(&suffix), "process {pid} is in {}'s {controller} cgroup: {own}", task.id);
        }
    }
}

#[test]
fn metrics_show_memory_cpu_and_pids_for_both_kinds() {
    let env = env();
    for (image_ref, args) in [(image("busybox"), vec!["sleep", "60"]), (image("sleep-wat"), vec![])] {
        let task = Running::start(env, &image_ref, &args);
        let memory = task.metric("memory.usage_in_bytes").unwrap_or_else(|| panic!("memory metric for {image_ref}"));
        assert!(memory > 0, "{image_ref}: memory {memory}");
        assert!(task.metric("cpuacct.usage").is_some_and(|c| c > 0), "{image_ref}: cpu");
        assert!(task.metric("pids.current").is_some_and(|p| p >= 1), "{image_ref}: pids");
    }
}

/// Create a task for container `id` through containerd's task API, without
/// starting it (ctr's `task start` and `run` always start).
fn create_task_only(env: &Env, id: &str) {
    use containerd_client::services::v1::containers_client::ContainersClient;
    use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
    use containerd_client::services::v1::snapshots::MountsRequest;
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::services::v1::{CreateTaskRequest, GetContainerRequest};
    fn in_namespace<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("containerd-namespace", "default".parse().expect("namespace"));
        request
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let channel = containerd_client::connect(&env.address).await.expect("connect to containerd");
        let container = ContainersClient::new(channel.clone())
            .get(in_namespace(GetContainerRequest { id: id.to_string() }))
            .await
            .expect("get container")
            .into_inner()
            .container
            .expect("container");
        let mounts = SnapshotsClient::new(channel.clone())
            .mounts(in_namespace(MountsRequest { snapshotter: container.snapshotter, key: container.snapshot_key }))
            .await
            .expect("snapshot mounts")
            .into_inner()
            .mounts;
        TasksClient::new(channel)
            .create(in_namespace(CreateTaskRequest { container_id: id.to_string(), rootfs: mounts, ..Default::default() }))
            .await
            .expect("create task");
    });
}

/// A wasm task's Create is answered before its init is ready and its
/// limits applied once it is (ready_later.rs): a task that is never
/// started gets them too (shim/src/left_created.rs), not only at Start.
#[test]
fn a_created_task_that_is_not_started_gets_its_memory_limit() {
    let env = env();
    let id = unique_id("created-only");
    let limit: u64 = 48 * 1024 * 1024;
    let create = env.ctr_out(&["container", "create", "--runtime", HYBRID_RUNTIME, "--memory-limit", &limit.to_string(), &image("sleep-wat"), &id]);
    assert_eq!(create.code, 0, "{create:?}");
    create_task_only(env, &id);
    assert!(env.wait_for_status(&id, "CREATED", Duration::from_secs(10)), "task {id} not created");
    let limited = || memory_limit_of(&id).is_some_and(|(_, got)| got == limit.to_string());
    wait_until(Duration::from_secs(5), limited);
    let seen = memory_limit_of(&id);
    let _ = env.ctr_out(&["task", "kill", "-s", "SIGKILL", &id]);
    let _ = ctr_within(env, &["task", "rm", "-f", &id]);
    let _ = env.ctr_out(&["container", "rm", &id]);
    let (file, got) = seen.unwrap_or_else(|| panic!("no memory cgroup named {id}"));
    assert_eq!(got, limit.to_string(), "{file:?} of the created, unstarted task");
}
