//! The stdio URIs containerd can give besides fifos: `file://` (stdout and
//! stderr appended to a file) and `binary://` (a log driver process fed on
//! fds 3 and 4), for a native and a wasm task, through `ctr run --log-uri`;
//! and fifos whose reader goes away.

use std::path::Path;
use std::time::{Duration, Instant};

use hybrid_tests::*;

fn wait_for_file(path: &Path, needle: &str) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || started.elapsed() > Duration::from_secs(10) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn file_uris_collect_stdout_and_stderr() {
    let env = env();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("native.log");
    let uri = format!("file://{}", log.display());
    let id = unique_id("logf");
    let ran = env.ctr_out(&[
        "run", "--rm", "--log-uri", &uri, "--runtime", HYBRID_RUNTIME, &image("busybox"), &id,
        "sh", "-c", "echo to-out; echo to-err >&2",
    ]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let text = wait_for_file(&log, "to-err");
    assert!(text.contains("to-out\n") && text.contains("to-err\n"), "{text:?}");
}

/// A log driver that prefixes each stream and records who it logs for.
fn driver(dir: &Path) -> String {
    let script = dir.join("driver.sh");
    let out = dir.join("driven");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# containerd's binary log protocol: stdout on fd 3, stderr on fd 4, ready when fd 5 closes\n\
             echo \"$CONTAINER_NAMESPACE $CONTAINER_ID $*\" > {out}.who\n\
             exec 5>&-\n\
             sed 's/^/out: /' <&3 >> {out}.log &\n\
             sed 's/^/err: /' <&4 >> {out}.log\n\
             wait\n\
             echo done >> {out}.log\n",
            out = out.display()
        ),
    )
    .expect("write driver");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    format!("binary://{}?--tag=app", script.display())
}

#[test]
fn binary_uris_feed_a_log_driver_for_native_and_wasm_tasks() {
    let env = env();
    for (kind, image_ref, args) in [
        ("native", image("busybox"), vec!["sh", "-c", "echo hello-native; echo oops >&2"]),
        ("wasm", image("hello-rust"), vec![]),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let uri = driver(dir.path());
        let id = unique_id("logb");
        let ran = env.ctr_out(&[&["run", "--rm", "--log-uri", &uri, "--runtime", HYBRID_RUNTIME, &image_ref, &id][..], &args].concat());
        assert_eq!(ran.code, 0, "{kind}: {ran:?}");
        let log = wait_for_file(&dir.path().join("driven.log"), "done");
        let who = std::fs::read_to_string(dir.path().join("driven.who")).unwrap_or_default();
        assert_eq!(who.trim(), format!("default {id} --tag app"), "{kind}: the driver's environment and arguments");
        assert!(log.ends_with("done\n"), "{kind}: the driver saw the end of the output: {log:?}");
        match kind {
            "native" => assert!(log.contains("out: hello-native\n") && log.contains("err: oops\n"), "{log:?}"),
            _ => assert!(log.contains("out: hello from wasm\n"), "{log:?}"),
        }
    }
}

/// A WASI command that sleeps a second, then writes a line to stdout and
/// exits with fd_write's errno (0 when the write worked).
const LATE_WRITER_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "written after the client left\n")
  (func (export "_start")
    ;; One relative CLOCK_MONOTONIC subscription of a second at 64; its event at 128.
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 1000000000))
    (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 12)))
    (i32.store (i32.const 0) (i32.const 256))
    (i32.store (i32.const 4) (i32.const 30))
    (call $proc_exit (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

/// The exit status the shim logged for `id`'s init process.
fn logged_exit_code(env: &Env, id: &str) -> Option<i32> {
    let needle = format!("process exited id={id} process={id} ");
    let log = env.containerd_log();
    let line = log.lines().rev().find(|line| line.contains(&needle))?;
    line.split_whitespace().find_map(|field| field.strip_prefix("exit_code=")?.parse().ok())
}

#[test]
fn output_written_after_a_detached_run_returned_does_not_fail() {
    // `ctr run -d` returns once the task is started, closing its read ends
    // of the task's stdout and stderr fifos; as with runc's shim, a later
    // write must not fail with EPIPE (a Rust guest would panic on it).
    let env = env();
    let wasm = wat_image("late-writer", LATE_WRITER_WAT);
    let cases = [
        ("native", image("busybox"), vec!["sh", "-c", "sleep 1; echo written after the client left; exit $?"]),
        ("wasm", wasm, vec![]),
    ];
    for (kind, image, args) in cases {
        let id = unique_id(&format!("late-{kind}"));
        let run = env.ctr_out(&[&["run", "-d", "--runtime", HYBRID_RUNTIME, &image, &id][..], &args].concat());
        assert_eq!(run.code, 0, "{run:?}");
        let stopped = env.wait_for_status(&id, "STOPPED", Duration::from_secs(20));
        let code = logged_exit_code(env, &id);
        env.ctr_out(&["task", "rm", &id]);
        env.ctr_out(&["container", "rm", &id]);
        assert!(stopped, "{kind} task {id} did not stop");
        assert_eq!(code, Some(0), "{kind}: the write after ctr left failed");
    }
}
