//! The stdio URIs containerd can give besides fifos: `file://` (stdout and
//! stderr appended to a file) and `binary://` (a log driver process fed on
//! fds 3 and 4), for a native and a wasm task, through `ctr run --log-uri`.

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
