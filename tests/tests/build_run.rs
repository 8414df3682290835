//! `hybrid build`'s RUN: steps run in containers made by hybrid's runtime
//! on the busybox example image, their changes (new files, deletions of
//! base and earlier-step files, a directory replaced, modes and owners) seen
//! by a container of the built image through the hybrid shim; a failing
//! step; the build cache; and a wasm RUN going through the wasm executor.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use hybrid_tests::*;

/// `hybrid build --load` of `context` as `docker.io/hybrid-tests/NAME:latest`,
/// with the build cache in `cache` (or none): its output, unchecked.
fn hybrid_build(name: &str, context: &Path, cache: Option<&Path>) -> Output {
    hybrid_build_pid(name, context, cache).0
}

/// The same, and the pid the build ran as.
fn hybrid_build_pid(name: &str, context: &Path, cache: Option<&Path>) -> (Output, u32) {
    let env = env();
    let tag = format!("hybrid-tests/{name}:latest");
    let mut cmd = Command::new(hybrid_bin());
    cmd.args(["build", "-t", &tag, "--load", "--address", &env.address]).arg(context);
    match cache {
        Some(dir) => cmd.env("HYBRID_CACHE_DIR", dir),
        None => cmd.arg("--no-cache"),
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("run hybrid build");
    let pid = child.id();
    (child.wait_with_output().expect("hybrid build output"), pid)
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn context(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        std::fs::write(dir.path().join(path), content).expect("write context file");
    }
    dir
}

const CHANGES: &str = r#"FROM docker.io/hybrid-examples/busybox:latest
ARG WHO=builder
ENV GREETING=hello
RUN mkdir -p /etc/app/conf.d && echo a > /etc/app/conf.d/a && echo b > /etc/app/conf.d/b \
 && echo gone > /etc/app/gone && echo keep > /etc/app/keep && echo m > /etc/app/mode
RUN rm /etc/app/gone /bin/ed && rm -rf /etc/app/conf.d && mkdir /etc/app/conf.d \
 && echo c > /etc/app/conf.d/c && chmod 0640 /etc/app/mode && chown nobody:nogroup /etc/app/keep
WORKDIR /work
RUN <<EOF
echo "$GREETING $WHO" > greeting
ln greeting greeting.link
EOF
USER nobody
RUN id -u > /tmp/uid
"#;

#[test]
fn run_changes_show_in_the_image() {
    let env = env();
    let ctx = context(&[("Dockerfile", CHANGES.as_bytes())]);
    let out = hybrid_build("run-changes", ctx.path(), None);
    assert!(out.status.success(), "{}", show(&out));
    let image = "docker.io/hybrid-tests/run-changes:latest";
    let check = r#"
        set -e
        test ! -e /etc/app/gone && echo "gone: removed"
        test ! -e /bin/ed && echo "ed: removed from the base"
        ls /etc/app/conf.d | tr '\n' ' '; echo
        cat /etc/app/conf.d/c
        stat -c 'mode %a' /etc/app/mode
        stat -c 'keep %u:%g' /etc/app/keep
        cat /work/greeting
        stat -c 'links %h' /work/greeting.link
        cat /tmp/uid
        test ! -e /etc/hosts && echo "no mount stubs"
        test -x /bin/busybox && echo "base intact"
    "#;
    let ran = env.run(HYBRID_RUNTIME, image, &unique_id("run-changes"), &["sh", "-c", check]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let expected = [
        "gone: removed",
        "ed: removed from the base",
        "c \n",
        "c\nmode 640",
        "keep 65534:65534",
        "hello builder",
        "links 2",
        "65534",
        "no mount stubs",
        "base intact",
    ];
    for line in expected {
        assert!(ran.stdout.contains(line), "missing {line:?}: {ran:?}");
    }
}

#[test]
fn failing_run_names_the_line_and_the_exit_code() {
    env();
    let dockerfile = "FROM docker.io/hybrid-examples/busybox:latest\nRUN true\nRUN echo before-the-failure; exit 3\n";
    let ctx = context(&[("Dockerfile", dockerfile.as_bytes())]);
    let (out, pid) = hybrid_build_pid("run-fails", ctx.path(), None);
    assert!(!out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(error.contains("Dockerfile:3:1: RUN echo before-the-failure; exit 3"), "{}", show(&out));
    assert!(error.contains("exited with code 3"), "{}", show(&out));
    assert!(stderr.contains("  | before-the-failure"), "the last lines of output: {}", show(&out));
    // Nothing left behind: the two RUN containers' state and cgroups are gone.
    for n in 0..2 {
        let id = format!("hybrid-build-{pid}-{n}");
        assert!(!Path::new("/run/hybrid-build").join(&id).exists(), "state of {id} left");
        assert!(cgroups_named(&id).is_empty(), "cgroups of {id} left: {:?}", cgroups_named(&id));
    }
}

#[test]
fn unchanged_rebuild_comes_from_the_cache() {
    let env = env();
    let cache = tempfile::tempdir().expect("cache dir");
    let dockerfile = "FROM docker.io/hybrid-examples/busybox:latest\nRUN date +%s%N > /stamp\nRUN cat /stamp\n";
    let ctx = context(&[("Dockerfile", dockerfile.as_bytes())]);
    let first = hybrid_build("run-cache", ctx.path(), Some(cache.path()));
    assert!(first.status.success(), "{}", show(&first));
    let first_err = String::from_utf8_lossy(&first.stderr);
    assert!(!first_err.contains("CACHED"), "{}", show(&first));
    let second = hybrid_build("run-cache", ctx.path(), Some(cache.path()));
    assert!(second.status.success(), "{}", show(&second));
    let second_err = String::from_utf8_lossy(&second.stderr);
    for step in ["RUN date +%s%N > /stamp CACHED", "RUN cat /stamp CACHED"] {
        assert!(second_err.contains(step), "{step:?}: {}", show(&second));
    }
    assert!(!second_err.contains(" | "), "a cached RUN runs nothing: {}", show(&second));
    assert_eq!(first.stdout, second.stdout, "same image digest");
    // The stamp the first build printed is the one in the image.
    let printed = first_err.lines().find_map(|l| l.split_once("| ").map(|(_, s)| s.trim().to_string())).unwrap_or_default();
    let ran = env.run(HYBRID_RUNTIME, "docker.io/hybrid-tests/run-cache:latest", &unique_id("stamp"), &["cat", "/stamp"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout.trim(), printed, "{ran:?}");
}

/// A WASI module that prints a line and writes it to /wasm-made.txt.
const HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "wasm-made.txt")
  (data (i32.const 64) "written by wasm\n")
  (func (export "_start")
    (local $err i32)
    (i32.store (i32.const 32) (i32.const 64))
    (i32.store (i32.const 36) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40)))
    ;; fd 3 is the preopened "/"; oflags O_CREAT|O_TRUNC
    (local.set $err (call $path_open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 13)
      (i32.const 9) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 8)))
    (if (local.get $err) (then (call $proc_exit (i32.add (i32.const 10) (local.get $err)))))
    (drop (call $fd_write (i32.load (i32.const 8)) (i32.const 32) (i32.const 1) (i32.const 40)))))
"#;

#[test]
fn wasm_run_goes_through_the_wasm_executor() {
    let env = env();
    let ctx = context(&[("hello.wat", HELLO_WAT.as_bytes())]);
    // The binary module when wabt is there (scripts/install-deps.sh installs
    // it); else the text module, which the runtime also takes for wasm.
    let compiled = Command::new("wat2wasm")
        .arg(ctx.path().join("hello.wat"))
        .arg("-o")
        .arg(ctx.path().join("hello.wasm"))
        .status()
        .is_ok_and(|s| s.success());
    if !compiled {
        std::fs::copy(ctx.path().join("hello.wat"), ctx.path().join("hello.wasm")).expect("copy module");
    }
    let dockerfile = "FROM docker.io/hybrid-examples/busybox:latest\nCOPY hello.wasm /hello.wasm\nRUN [\"/hello.wasm\"]\n";
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    let out = hybrid_build("run-wasm", ctx.path(), None);
    assert!(out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("| written by wasm"), "the module's stdout: {}", show(&out));
    assert!(stderr.contains("wasm module precompiled"), "the wasm executor ran it: {}", show(&out));
    let ran = env.run(HYBRID_RUNTIME, "docker.io/hybrid-tests/run-wasm:latest", &unique_id("run-wasm"), &["cat", "/wasm-made.txt"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout, "written by wasm\n", "{ran:?}");
}

/// Issue 5's multi-stage case: a native stage prepares a wasm module with
/// its tools (here the shell writes WAT text), and the final wasm image,
/// FROM scratch, holds only what it copies out of that stage.
#[test]
fn a_wasm_image_is_copied_out_of_a_stage_built_with_native_tools() {
    let env = env();
    let dockerfile = r#"FROM docker.io/hybrid-examples/busybox:latest AS tools
RUN mkdir /out && printf '%s\n' \
  '(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))' \
  '  (memory (export "memory") 1)' \
  '  (func (export "_start") (call $exit (i32.const 7))))' > /out/app.wat
FROM scratch
COPY --from=tools /out/app.wat /app.wat
ENTRYPOINT ["/app.wat"]
"#;
    let ctx = context(&[("Dockerfile", dockerfile.as_bytes())]);
    let out = hybrid_build("staged-wasm", ctx.path(), None);
    assert!(out.status.success(), "{}", show(&out));
    let ran = env.run(HYBRID_RUNTIME, "docker.io/hybrid-tests/staged-wasm:latest", &unique_id("staged"), &[]);
    assert_eq!(ran.code, 7, "the module prepared by the native stage ran: {ran:?}");
    // Nothing of the tools stage came along: busybox is not in the image.
    let sh = env.run(HYBRID_RUNTIME, "docker.io/hybrid-tests/staged-wasm:latest", &unique_id("staged"), &["/bin/sh", "-c", "true"]);
    assert_ne!(sh.code, 0, "the final image has no shell: {sh:?}");
}

/// `hybrid build` spawned for a Dockerfile whose RUN sleeps with a marker
/// argument, once that RUN's sleep is running: the build's child and the
/// sleep's pid.
fn build_until_run_sleeps(name: &str, ctx: &Path, marker: &str) -> (std::process::Child, i32) {
    let env = env();
    let tag = format!("hybrid-tests/{name}:latest");
    let child = Command::new(hybrid_bin())
        .args(["build", "--no-cache", "-t", &tag, "--load", "--address", &env.address])
        .arg(ctx)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run hybrid build");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(&pid) = processes_mentioning(marker).iter().find(|&&p| sleeps(p, marker)) {
            return (child, pid);
        }
        assert!(std::time::Instant::now() < deadline, "the RUN step never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Whether `pid` runs `sleep MARKER` (not a shell whose script mentions it).
fn sleeps(pid: i32, marker: &str) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline == format!("sleep\0{marker}\0").into_bytes()
}

fn gone_within(pid: i32, secs: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        // A zombie is gone too: a process whose parent died is reaped by
        // whatever init the host has, if any.
        if !is_running(pid) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// The scratch directories (layers, blobs) of the build whose pid is `pid`.
fn scratch_of_build(pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("hybrid-build-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Killing a build in the middle of a RUN leaves no container, mount,
/// cgroup or state: the helper that runs the step kills and deletes its
/// container when the build dies, and its overlay mount lives only in the
/// helper's mount namespace. Killed together with the build, the helper
/// cannot clean up: the next build's RUN removes what it left.
#[test]
fn a_build_killed_during_run_leaves_nothing_behind() {
    env();
    let marker = format!("{}", 3000 + std::process::id() % 1000);
    let dockerfile = format!("FROM docker.io/hybrid-examples/busybox:latest\nRUN sleep {marker}\n");
    let ctx = context(&[("Dockerfile", dockerfile.as_bytes())]);

    // The build alone is killed: its helper cleans up.
    let (mut build, sleep_pid) = build_until_run_sleeps("killed-build", ctx.path(), &marker);
    let build_pid = build.id();
    let first_build_pid = build_pid;
    let id = format!("hybrid-build-{build_pid}-0");
    assert!(Path::new("/run/hybrid-build").join(&id).exists(), "the RUN container {id} exists");
    assert_eq!(scratch_of_build(build_pid).len(), 1, "the build's scratch directory is named after it");
    assert!(mounts_containing("/run-").iter().all(|m| !m.contains("hybrid-build-")), "the overlay is not mounted on the host");
    build.kill().expect("kill the build");
    let _ = build.wait();
    assert!(gone_within(sleep_pid, 10), "the RUN step's process outlived the killed build");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new("/run/hybrid-build").join(&id).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!Path::new("/run/hybrid-build").join(&id).exists(), "state of {id} left");
    assert!(cgroups_named(&id).is_empty(), "cgroups of {id} left: {:?}", cgroups_named(&id));

    // Build and helper killed outright: the container outlives both...
    let (mut build, sleep_pid) = build_until_run_sleeps("killed-build", ctx.path(), &marker);
    let build_pid = build.id();
    let id = format!("hybrid-build-{build_pid}-0");
    let helpers: Vec<i32> = processes_mentioning("__hybrid-build-run")
        .into_iter()
        .filter(|p| parent_pid(*p) == Some(build_pid as i32))
        .collect();
    assert_eq!(helpers.len(), 1, "one RUN helper under the build: {helpers:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(helpers[0]), nix::sys::signal::Signal::SIGKILL).expect("kill the helper");
    build.kill().expect("kill the build");
    let _ = build.wait();
    // ...until the next build runs a step (here, or a build of another
    // test running at the same time).
    let next = context(&[("Dockerfile", b"FROM docker.io/hybrid-examples/busybox:latest\nRUN true\n")]);
    let out = hybrid_build("after-a-killed-build", next.path(), None);
    assert!(out.status.success(), "{}", show(&out));
    assert!(gone_within(sleep_pid, 10), "the next build's RUN removed the stale container: {}", show(&out));
    assert!(!Path::new("/run/hybrid-build").join(&id).exists(), "state of {id} left");
    assert!(cgroups_named(&id).is_empty(), "cgroups of {id} left: {:?}", cgroups_named(&id));
    // Nor the scratch directories (layers, blobs) of the two killed builds.
    for pid in [first_build_pid, build_pid] {
        let left = scratch_of_build(pid);
        assert!(left.is_empty(), "scratch of the killed build {pid} left: {left:?}");
    }
}
