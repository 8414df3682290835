//! The wasm path beyond hello: the compile cache, traps, and stopping a
//! module that never yields.

use std::process::Stdio;
use std::time::{Duration, Instant};

use hybrid_tests::*;

/// The shim's log line for `id`'s precompile, e.g. `outcome=Hit`.
fn precompile_outcome(env: &Env, id: &str) -> Option<String> {
    let needle = format!("create{{id={id}}}");
    env.containerd_log()
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("wasm module precompiled"))
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("outcome=")).map(str::to_string))
}

#[test]
fn the_second_start_of_a_module_does_not_compile() {
    let env = env();
    // A module no other test runs, so its first start is this test's.
    let image = wat_image("cache-once", "(module (memory (export \"memory\") 1) (func (export \"_start\")))\n;; cache-once\n");
    let first = unique_id("cache1");
    let ran = env.run(HYBRID_RUNTIME, &image, &first, &[]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let second = unique_id("cache2");
    let ran = env.run(HYBRID_RUNTIME, &image, &second, &[]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(precompile_outcome(env, &first).as_deref(), Some("outcome=Compiled"));
    assert_eq!(precompile_outcome(env, &second).as_deref(), Some("outcome=Hit"), "the second start loads the cached code");
}

#[test]
fn a_corrupt_cache_entry_is_recompiled() {
    let env = env();
    let image = wat_image("cache-corrupt", "(module (memory (export \"memory\") 1) (func (export \"_start\")))\n;; cache-corrupt\n");
    let ran = env.run(HYBRID_RUNTIME, &image, &unique_id("corrupt1"), &[]);
    assert_eq!(ran.code, 0, "{ran:?}");
    // Flip a byte in every entry: none may be loaded, all must be rebuilt.
    for entry in std::fs::read_dir(env.wasm_cache_dir()).expect("cache dir").flatten() {
        let mut bytes = std::fs::read(entry.path()).expect("read entry");
        if let Some(last) = bytes.last_mut() {
            *last ^= 0xff;
        }
        std::fs::write(entry.path(), bytes).expect("corrupt entry");
    }
    let id = unique_id("corrupt2");
    let ran = env.run(HYBRID_RUNTIME, &image, &id, &[]);
    assert_eq!(ran.code, 0, "a corrupt entry must not break the start: {ran:?}");
    assert_eq!(precompile_outcome(env, &id).as_deref(), Some("outcome=Compiled"));
}

#[test]
fn a_trap_gives_a_nonzero_exit_and_a_message() {
    let env = env();
    let image = wat_image("trap", "(module (memory (export \"memory\") 1) (func (export \"_start\") unreachable))\n");
    let ran = env.run(HYBRID_RUNTIME, &image, &unique_id("trap"), &[]);
    assert_eq!(ran.code, 134, "a trap ends like an abort: {ran:?}");
    assert!(ran.stderr.contains("trapped") && ran.stderr.contains("unreachable"), "{ran:?}");
}

#[test]
fn a_spinning_module_is_stopped_by_a_kill() {
    let env = env();
    let image = wat_image("spin", "(module (memory (export \"memory\") 1) (func (export \"_start\") (loop (br 0))))\n");
    let id = unique_id("spin");
    let mut child = env
        .ctr()
        .args(["run", "--rm", "--runtime", HYBRID_RUNTIME, &image, &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ctr run");
    assert!(env.wait_for_status(&id, "RUNNING", Duration::from_secs(30)), "task {id} never ran");
    std::thread::sleep(Duration::from_millis(200));
    let killed_at = Instant::now();
    let kill = env.ctr_out(&["task", "kill", "-s", "SIGTERM", &id]);
    assert_eq!(kill.code, 0, "{kill:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "a spinning module survived SIGTERM for 10 s");
        std::thread::sleep(Duration::from_millis(2));
    };
    let took = killed_at.elapsed();
    eprintln!("spinning module: kill to exit (including ctr's own round trips) {took:?}");
    assert_eq!(status.code(), Some(143));
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn a_memory_bomb_is_contained_with_an_oom_exit_and_event() {
    let env = env();
    let image = wat_image("bomb", include_str!("../../wasm-examples/memory-bomb/bomb.wat"));
    let id = unique_id("bomb");
    let (ran, events) =
        env.ctr_with_events(&["run", "--rm", "--runtime", HYBRID_RUNTIME, "--memory-limit", "67108864", &image, &id]);
    assert_eq!(ran.code, 137, "a guest stopped by its memory limit ends like an OOM kill: {ran:?}");
    assert!(ran.stderr.contains("out of memory"), "{ran:?}");
    assert!(
        events.lines().any(|l| l.contains("/tasks/oom") && l.contains(&id)),
        "TaskOOM published for {id}:\n{events}"
    );
}

#[test]
fn hybrid_wasm_run_gives_args_env_dirs_and_the_exit_code() {
    let dir = repo_root().join("wasm-examples/hello-rust");
    let out = std::process::Command::new(hybrid_bin())
        .args(["wasm", "run", "--env", "GREETING=from-cli", "--env", "EXIT_CODE=6", "--dir"])
        .arg(format!("{}::/data", dir.display()))
        .arg(dir.join("hello.wasm"))
        .args(["one", "two"])
        .output()
        .expect("hybrid wasm run");
    let ran: Ran = out.into();
    assert_eq!(ran.code, 6, "{ran:?}");
    assert!(ran.stdout.contains("args: one two"), "{ran:?}");
    assert!(ran.stdout.contains("GREETING=from-cli"), "{ran:?}");
    assert!(ran.stdout.contains("message: "), "the preopened dir is readable: {ran:?}");
}

#[test]
fn hybrid_wasm_warm_makes_the_first_container_start_a_cache_hit() {
    let env = env();
    let wat = "(module (memory (export \"memory\") 1) (func (export \"_start\")))\n;; warm\n";
    let image = wat_image("warm", wat);
    let module = tempfile::NamedTempFile::new().expect("temp module");
    std::fs::write(module.path(), wat).expect("write module");
    let warm = std::process::Command::new(hybrid_bin())
        .args(["wasm", "warm"])
        .arg(module.path())
        .env("HYBRID_WASM_CACHE", env.wasm_cache_dir())
        .output()
        .expect("hybrid wasm warm");
    assert!(warm.status.success(), "{:?}", Ran::from(warm));
    let id = unique_id("warmed");
    let ran = env.run(HYBRID_RUNTIME, &image, &id, &[]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(precompile_outcome(env, &id).as_deref(), Some("outcome=Hit"), "warmed ahead, never compiled at start");
}

#[test]
fn a_preview2_component_runs_through_containerd() {
    let env = env();
    let context = tempfile::tempdir().expect("tempdir");
    let hello = repo_root().join("wasm-examples/hello-rust");
    // The preview 1 hello, wrapped with wasmtime's preview 1 adapter.
    let out = std::process::Command::new(hybrid_bin())
        .args(["wasm", "componentize"])
        .arg(hello.join("hello.wasm"))
        .arg("-o")
        .arg(context.path().join("hello.wasm"))
        .output()
        .expect("hybrid wasm componentize");
    assert!(out.status.success(), "{:?}", Ran::from(out));
    let component = std::fs::read(context.path().join("hello.wasm")).expect("component");
    assert_eq!(&component[4..8], &[0x0d, 0x00, 0x01, 0x00], "a component, not a core module");
    std::fs::copy(hello.join("message.txt"), context.path().join("message.txt")).expect("message");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.wasm /hello.wasm\nCOPY message.txt /data/message.txt\nENV GREETING=component\nENTRYPOINT [\"/hello.wasm\"]\n",
    )
    .expect("Dockerfile");
    let image = build_image_dir("hello-p2", context.path());
    let ran = env.run(HYBRID_RUNTIME, &image, &unique_id("p2"), &["/hello.wasm", "p2", "args"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("hello from wasm"), "{ran:?}");
    assert!(ran.stdout.contains("args: p2 args"), "{ran:?}");
    assert!(ran.stdout.contains("GREETING=component"), "{ran:?}");
    assert!(ran.stdout.contains("this file was shipped inside the image"), "files through wasi:filesystem: {ran:?}");
}
