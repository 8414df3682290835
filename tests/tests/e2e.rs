//! hybrid 0.1 end to end: images built by `hybrid build`, run through a
//! private containerd 1.6 and our shim, as `ctr` users would.

use std::process::Stdio;
use std::time::{Duration, Instant};

use hybrid_tests::*;

#[test]
fn wasm_hello_prints_and_exits_zero() {
    let env = env();
    let id = unique_id("hello");
    let ran = env.run(HYBRID_RUNTIME, &image("hello-rust"), &id, &["/hello.wasm", "one", "two"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("hello from wasm"), "{ran:?}");
    assert!(ran.stdout.contains("one two"), "args must arrive: {ran:?}");
}

#[test]
fn wasm_env_file_and_exit_code_come_from_the_spec() {
    let env = env();
    let id = unique_id("hello-env");
    let mut cmd = env.ctr();
    cmd.args(["run", "--rm", "--runtime", HYBRID_RUNTIME, "--env", "EXIT_CODE=5", "--env", "GREETING=bonjour"])
        .args([image("hello-rust").as_str(), id.as_str()]);
    let ran: Ran = cmd.output().expect("ctr").into();
    assert_eq!(ran.code, 5, "{ran:?}");
    assert!(ran.stdout.contains("bonjour"), "env must arrive: {ran:?}");
    // The message file is read from the image's rootfs through the preopen.
    let message = std::fs::read_to_string(repo_root().join("wasm-examples/hello-rust/message.txt")).expect("message.txt");
    assert!(ran.stdout.contains(message.trim()), "file content must be printed: {ran:?}");
}

#[test]
fn wasm_proc_exit_3_gives_exit_status_3() {
    let env = env();
    let ran = env.run(HYBRID_RUNTIME, &image("exit-wat"), &unique_id("exit3"), &[]);
    assert_eq!(ran.code, 3, "{ran:?}");
}

/// The shim keeps its state in memory (hybrid_runtime::state_in_memory):
/// on this test machine /run is a directory of the ext4 root, so the
/// first shim mounts a tmpfs at /run/hybrid; on a host whose /run is a
/// tmpfs it is one already.
#[test]
fn container_state_is_kept_on_a_tmpfs() {
    let env = env();
    let ran = env.run(HYBRID_RUNTIME, &image("hello-rust"), &unique_id("state-tmpfs"), &["/hello.wasm"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let fs = std::process::Command::new("stat").args(["-f", "-c", "%T", "/run/hybrid"]).output().expect("stat");
    let fs = String::from_utf8_lossy(&fs.stdout).trim().to_string();
    assert!(fs == "tmpfs" || fs == "ramfs", "/run/hybrid is on {fs:?}");
}

/// The shim's "process exited" line for container `id`, from containerd's log.
fn exit_logged(env: &Env, id: &str) -> Option<String> {
    let needle = format!("id={id} ");
    env.containerd_log().lines().find(|l| l.contains("process exited") && l.contains(&needle)).map(str::to_string)
}

#[test]
fn a_wasm_exit_is_known_from_its_guests_report_and_a_native_one_from_the_reap() {
    let env = env();
    let wasm = unique_id("reported");
    let ran = env.run(HYBRID_RUNTIME, &image("exit-wat"), &wasm, &[]);
    assert_eq!(ran.code, 3, "{ran:?}");
    let native = unique_id("reaped");
    let ran = env.run(HYBRID_RUNTIME, &image("busybox"), &native, &["sh", "-c", "exit 7"]);
    assert_eq!(ran.code, 7, "{ran:?}");
    let logged = exit_logged(env, &wasm).unwrap_or_else(|| panic!("no exit logged for {wasm}:\n{}", env.containerd_log()));
    assert!(logged.contains("exit_code=3") && logged.contains("known_from=GuestReport"), "{logged}");
    let logged = exit_logged(env, &native).unwrap_or_else(|| panic!("no exit logged for {native}"));
    assert!(logged.contains("exit_code=7") && logged.contains("known_from=Reap"), "{logged}");
    // `ctr run --rm` deleted the wasm task right after its exit was
    // answered, before or while its process was torn down: Delete waited
    // for the reap, and nothing of it is left.
    assert_eq!(mounts_containing(&wasm), Vec::<String>::new(), "mounts left");
    assert_eq!(cgroups_named(&wasm), Vec::<std::path::PathBuf>::new(), "cgroups left");
    assert!(!std::path::Path::new("/run/hybrid/default").join(&wasm).exists(), "state left");
}

#[test]
fn c_wasm_example_runs() {
    let env = env();
    let ran = env.run(HYBRID_RUNTIME, &image("c-hello"), &unique_id("chello"), &[]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(!ran.stdout.trim().is_empty(), "{ran:?}");
}

#[test]
fn busybox_echo_prints_through_our_shim() {
    let env = env();
    let ran = env.run(HYBRID_RUNTIME, &image("busybox"), &unique_id("echo"), &["echo", "hello", "native"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout.trim(), "hello native", "{ran:?}");
}

#[test]
fn native_exit_7_gives_7() {
    let env = env();
    let ran = env.run(HYBRID_RUNTIME, &image("busybox"), &unique_id("exit7"), &["sh", "-c", "exit 7"]);
    assert_eq!(ran.code, 7, "{ran:?}");
}

#[test]
fn native_runs_in_its_own_namespaces() {
    let env = env();
    // PID 1 in its own pid namespace, with the image's rootfs as /.
    let ran = env.run(HYBRID_RUNTIME, &image("busybox"), &unique_id("ns"), &["sh", "-c", "echo pid=$$; ls /bin/busybox"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("pid=1"), "{ran:?}");
    assert!(ran.stdout.contains("/bin/busybox"), "{ran:?}");
}

/// Start `ctr run` (attached) in the background, kill the task from the
/// outside, and return (exit status of the task, time from kill to exit).
fn kill_running(image_name: &str, args: &[&str], signal: &str) -> (i32, Duration) {
    let env = env();
    let id = unique_id("kill");
    let mut run = env.ctr();
    run.args(["run", "--rm", "--runtime", HYBRID_RUNTIME, &image(image_name), &id])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = run.spawn().expect("spawn ctr run");
    assert!(
        env.wait_for_status(&id, "RUNNING", Duration::from_secs(30)),
        "task {id} never reached RUNNING"
    );
    // Let the workload reach its sleep.
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    let kill = env.ctr_out(&["task", "kill", "-s", signal, &id]);
    assert_eq!(kill.code, 0, "{kill:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait ctr") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("task {id} still running 10 s after SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (status.code().unwrap_or(-1), killed_at.elapsed())
}

#[test]
fn kill_ends_a_sleeping_wasm_task_within_a_second() {
    let (code, took) = kill_running("sleep-wat", &[], "SIGTERM");
    assert_eq!(code, 143, "a SIGTERMed wasm task reports 128+15");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn kill_ends_a_native_sleep_within_a_second() {
    let (code, took) = kill_running("busybox", &["sleep", "60"], "SIGKILL");
    assert_eq!(code, 137, "a SIGKILLed task reports 128+9");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// Run a container detached, remember its pid, then check nothing of it is
/// left after `ctr task rm` + `ctr container rm`.
fn assert_nothing_left_after_delete(image_name: &str, args: &[&str]) {
    let env = env();
    let id = unique_id("leak");
    let run = env.ctr_out(&[&["run", "-d", "--runtime", HYBRID_RUNTIME, &image(image_name), &id][..], args].concat());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(env.wait_for_status(&id, "RUNNING", Duration::from_secs(30)), "task {id} never ran");
    let ps = env.ctr_out(&["task", "ps", &id]);
    let pids: Vec<i32> = ps.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    assert!(!pids.is_empty(), "task ps lists the init process: {ps:?}");
    assert!(!cgroups_named(&id).is_empty(), "the container has a cgroup while running");
    assert!(!mounts_containing(&id).is_empty(), "the rootfs is mounted while running");
    // The shim's state of the container (libcontainer's, under ctr's namespace).
    let state_dir = std::path::Path::new("/run/hybrid/default").join(&id);
    assert!(state_dir.is_dir(), "{} exists while running", state_dir.display());

    let kill = env.ctr_out(&["task", "kill", "-s", "SIGKILL", &id]);
    assert_eq!(kill.code, 0, "{kill:?}");
    assert!(env.wait_for_status(&id, "STOPPED", Duration::from_secs(10)), "task {id} did not stop");
    let rm = env.ctr_out(&["task", "rm", &id]);
    assert_eq!(rm.code, 0, "{rm:?}");
    let crm = env.ctr_out(&["container", "rm", &id]);
    assert_eq!(crm.code, 0, "{crm:?}");

    // The shim exits after its last task is gone; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !processes_mentioning(&id).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mounts_containing(&id), Vec::<String>::new(), "mounts left");
    assert_eq!(cgroups_named(&id), Vec::<std::path::PathBuf>::new(), "cgroups left");
    assert!(!state_dir.exists(), "state left: {}", state_dir.display());
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} left");
    }
    assert_eq!(processes_mentioning(&id), Vec::<i32>::new(), "shim or other process left");
}

#[test]
fn nothing_is_left_after_deleting_a_native_container() {
    assert_nothing_left_after_delete("busybox", &["sleep", "60"]);
}

#[test]
fn nothing_is_left_after_deleting_a_wasm_container() {
    assert_nothing_left_after_delete("sleep-wat", &[]);
}

/// The overlay workdir of the rootfs mounted for container `id`, from its
/// mount's options in /proc/self/mountinfo.
fn overlay_workdir_of(id: &str) -> Option<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = mountinfo.lines().find(|l| l.split_whitespace().nth(4).is_some_and(|m| m.contains(id) && m.ends_with("/rootfs")))?;
    let (_, after) = line.split_once(" - ")?;
    let options = after.split_whitespace().nth(2)?;
    options.split(',').find_map(|o| o.strip_prefix("workdir=")).map(std::path::PathBuf::from)
}

/// Entries of `workdir` that the shim set aside (an earlier mount's `work`).
fn set_aside_in(workdir: &std::path::Path) -> Vec<String> {
    let entries = std::fs::read_dir(workdir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect());
    entries.unwrap_or_else(|_: std::io::Error| Vec::new()).into_iter().filter(|n| n.starts_with("hybrid-old-work-")).collect()
}

/// An overlay's `work` left by an earlier mount of the snapshot (ctr's own
/// look into it for users and groups, a task started before) is set aside
/// at Create instead of removed inside the mount call, and what an earlier
/// Create set aside is removed: a task started again on the same snapshot
/// runs, and one set-aside directory is left at most.
#[test]
fn a_task_started_again_on_its_snapshot_runs_and_leaves_one_old_workdir() {
    let env = env();
    let id = unique_id("again");
    let run = env.ctr_out(&["run", "-d", "--runtime", HYBRID_RUNTIME, &image("sleep-wat"), &id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(env.wait_for_status(&id, "RUNNING", Duration::from_secs(30)), "task {id} never ran");
    let workdir = overlay_workdir_of(&id).expect("the rootfs is an overlay with a workdir");
    assert!(workdir.join("work").is_dir(), "the mount has its own work dir");
    // ctr mounted the snapshot for a moment before Create: its work dir was set aside.
    assert_eq!(set_aside_in(&workdir).len(), 1, "{:?}", set_aside_in(&workdir));
    for round in 0..2 {
        let kill = env.ctr_out(&["task", "kill", "-s", "SIGKILL", &id]);
        assert_eq!(kill.code, 0, "{kill:?}");
        assert!(env.wait_for_status(&id, "STOPPED", Duration::from_secs(10)), "task {id} did not stop");
        let rm = env.ctr_out(&["task", "rm", &id]);
        assert_eq!(rm.code, 0, "{rm:?}");
        let start = env.ctr_out(&["task", "start", "-d", &id]);
        assert_eq!(start.code, 0, "round {round}: {start:?}");
        assert!(env.wait_for_status(&id, "RUNNING", Duration::from_secs(30)), "round {round}: task {id} never ran again");
        // The earlier one goes on a thread of the shim's.
        let deadline = Instant::now() + Duration::from_secs(5);
        while set_aside_in(&workdir).len() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(set_aside_in(&workdir).len(), 1, "round {round}: {:?}", set_aside_in(&workdir));
    }
    let kill = env.ctr_out(&["task", "kill", "-s", "SIGKILL", &id]);
    assert_eq!(kill.code, 0, "{kill:?}");
    assert!(env.wait_for_status(&id, "STOPPED", Duration::from_secs(10)), "task {id} did not stop");
    assert_eq!(env.ctr_out(&["task", "rm", &id]).code, 0);
    assert_eq!(env.ctr_out(&["container", "rm", &id]).code, 0);
}

#[test]
fn an_entrypoint_neither_elf_nor_wasm_fails_at_create_naming_the_file() {
    let env = env();
    let id = unique_id("bad");
    let ran = env.run(HYBRID_RUNTIME, &image("bad-entrypoint"), &id, &[]);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(ran.stderr.contains("/notes.txt"), "the error names the file: {ran:?}");
    assert!(ran.stderr.contains("neither"), "the error says what was found: {ran:?}");
    // Create failed, so no task exists; the container record is ours to remove.
    assert!(env.task_status(&id).is_none());
    let _ = env.ctr_out(&["container", "rm", &id]);
    assert_eq!(mounts_containing(&id), Vec::<String>::new(), "a failed create leaves no mount");
}

#[test]
fn the_same_inputs_build_the_same_image_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let context = repo_root().join("wasm-examples/hello-rust");
    let mut digests = Vec::new();
    for n in 0..2 {
        let out = dir.path().join(format!("image-{n}.tar"));
        let status = std::process::Command::new(hybrid_bin())
            // No build cache: each build must produce the layers itself.
            .args(["build", "--no-cache", "-t", "repro:latest", "-o"])
            .arg(&out)
            .arg(&context)
            .status()
            .expect("run hybrid build");
        assert!(status.success(), "hybrid build failed");
        digests.push(manifest_digest_of(&out));
    }
    assert_eq!(digests[0], digests[1]);
    assert!(digests[0].starts_with("sha256:"), "{}", digests[0]);
}

/// The manifest digest that index.json of an OCI archive points to.
fn manifest_digest_of(archive: &std::path::Path) -> String {
    let out = std::process::Command::new("tar").arg("-xOf").arg(archive).arg("index.json").output().expect("tar");
    let index = String::from_utf8_lossy(&out.stdout);
    let start = index.find("sha256:").unwrap_or_else(|| panic!("no digest in index.json: {index}"));
    index[start..start + 71].to_string()
}

/// `ctr run` (which attaches its stdin) with `input` piped to it.
fn run_with_stdin(image_ref: &str, args: &[&str], input: &str) -> Ran {
    use std::io::Write;
    let env = env();
    let id = unique_id("stdin");
    let mut child = env
        .ctr()
        .args(["run", "--rm", "--runtime", HYBRID_RUNTIME, image_ref, &id])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctr run");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin); // EOF must reach the process, or it never ends.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{id}: stdin EOF never reached the process");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output").into()
}

#[test]
fn stdin_is_piped_to_a_native_process_and_eof_ends_it() {
    let ran = run_with_stdin(&image("busybox"), &["cat"], "piped into cat\n");
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout, "piped into cat\n", "{ran:?}");
}

#[test]
fn stdin_is_piped_to_a_wasm_module_and_eof_ends_it() {
    // A WASI cat: fd_read from 0 into a buffer, fd_write it to 1, until 0 bytes.
    let cat = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; iovec at 0: buf=64, len=1024; nread/nwritten at 16
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1024))
    (loop $copy
      (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
      (if (i32.gt_u (i32.load (i32.const 16)) (i32.const 0))
        (then
          (i32.store (i32.const 8) (i32.const 64))
          (i32.store (i32.const 12) (i32.load (i32.const 16)))
          (drop (call $write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 20)))
          (br $copy))))))
"#;
    let image_ref = wat_image("wasi-cat", cat);
    let ran = run_with_stdin(&image_ref, &[], "piped into wasm\n");
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout, "piped into wasm\n", "{ran:?}");
}

#[test]
fn a_native_process_killed_by_the_oom_killer_reports_137_and_task_oom() {
    let env = env();
    let id = unique_id("oom");
    let (ran, events) = env.ctr_with_events(&[
        "run",
        "--rm",
        "--runtime",
        HYBRID_RUNTIME,
        "--memory-limit",
        "33554432",
        &image("busybox"),
        &id,
        "sh",
        "-c",
        // Doubles a shell variable until the memory cgroup's OOM killer acts.
        "x=xxxxxxxxxxxxxxxx; while :; do x=$x$x; done",
    ]);
    assert_eq!(ran.code, 137, "{ran:?}");
    assert!(
        events.lines().any(|l| l.contains("/tasks/oom") && l.contains(&id)),
        "TaskOOM published for {id}:\n{events}"
    );
}

#[test]
fn a_run_publishes_create_start_exit_and_delete_in_order() {
    let env = env();
    for (image_ref, args) in [(image("busybox"), &["true"][..]), (image("hello-rust"), &[][..])] {
        let id = unique_id("events");
        let mut cmd = vec!["run", "--rm", "--runtime", HYBRID_RUNTIME, image_ref.as_str(), id.as_str()];
        cmd.extend(args);
        let (ran, events) = env.ctr_with_events(&cmd);
        assert_eq!(ran.code, 0, "{ran:?}");
        // The last one, TaskDelete, is queued just before the shim is told
        // to shut down: it must still go out.
        let topics: Vec<&str> = events
            .lines()
            .filter(|l| l.contains(&id))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
            .collect();
        assert_eq!(topics, ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], "{id}:\n{events}");
    }
}
