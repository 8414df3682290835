//! Terminals: `ctr run -t` and `ctr task exec -t` through hybrid, for a
//! busybox shell and a wasm module, with the window size ctr sends
//! (ResizePty). ctr needs a terminal of its own: `script` gives it one.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hybrid_tests::*;

/// Run `ctr ARGS` on a pseudo-terminal of `cols`x`rows`, typing `input`;
/// returns ctr's exit code and everything the terminal showed.
fn ctr_on_terminal(env: &Env, args: &str, input: &str, cols: u16, rows: u16) -> (i32, String) {
    let line = format!("stty cols {cols} rows {rows}; exec ctr --address {} {args}", env.address);
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs ctr on a terminal");
    let mut stdout = child.stdout.take().expect("stdout");
    // What the terminal showed so far, kept as it comes: a ctr stuck after
    // `script` is killed keeps the pipe open, and a join would never end.
    let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let so_far = {
        let shown = shown.clone();
        move || String::from_utf8_lossy(&shown.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    };
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut chunk) {
            shown.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&chunk[..n]);
        }
    });
    let mut stdin = child.stdin.take().expect("stdin");
    // Let the shell start before typing, as a person would.
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(input.as_bytes()).expect("type");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("ctr {args} did not end within 60 s; output so far: {}", so_far());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let _ = reader.join();
    (status.code().unwrap_or(-1), so_far())
}

#[test]
fn run_with_a_terminal_gives_an_interactive_shell_of_the_right_size() {
    let env = env();
    let id = unique_id("tty");
    let (code, shown) = ctr_on_terminal(
        env,
        &format!("run -t --rm --runtime {HYBRID_RUNTIME} {} {id} sh", image("busybox")),
        "tty; stty size; echo in-$((6*7))\nexit 5\n",
        101,
        31,
    );
    assert_eq!(code, 5, "the shell's exit code is the task's: {shown}");
    assert!(shown.contains("/dev/pts/"), "the shell's stdin is a terminal: {shown}");
    assert!(shown.contains("31 101"), "ResizePty set the terminal's size: {shown}");
    assert!(shown.contains("in-42"), "typed input reached the shell: {shown}");
}

#[test]
fn exec_with_a_terminal_into_a_running_container() {
    let env = env();
    let id = unique_id("ttyx");
    let run = env.ctr_out(&["run", "-d", "--runtime", HYBRID_RUNTIME, &image("busybox"), &id, "sleep", "120"]);
    assert_eq!(run.code, 0, "{run:?}");
    let (code, shown) =
        ctr_on_terminal(env, &format!("task exec -t --exec-id shell {id} sh"), "tty; stty size\nexit 4\n", 88, 22);
    let plain_code = env.ctr_out(&["task", "exec", "--exec-id", "plain", &id, "true"]).code;
    let _ = env.ctr_out(&["task", "kill", "-s", "SIGKILL", &id]);
    env.wait_for_status(&id, "STOPPED", Duration::from_secs(10));
    let _ = env.ctr_out(&["task", "rm", &id]);
    let _ = env.ctr_out(&["container", "rm", &id]);
    assert_eq!(code, 4, "the exec's exit code comes through: {shown}");
    assert!(shown.contains("/dev/pts/"), "the exec has a terminal: {shown}");
    assert!(shown.contains("22 88"), "ResizePty reached the exec's terminal: {shown}");
    assert_eq!(plain_code, 0, "a terminal exec leaves later execs working");
}

/// Exits with 10 + the WASI file type of fd 1: 12 for a character device.
const STDOUT_FILETYPE_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fdstat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $fdstat (i32.const 1) (i32.const 0)))
    (call $exit (i32.add (i32.const 10) (i32.load8_u (i32.const 0))))))
"#;

#[test]
fn a_wasm_task_with_a_terminal_sees_it_on_its_stdio() {
    let env = env();
    let image = wat_image("tty-filetype", STDOUT_FILETYPE_WAT);
    let (code, shown) =
        ctr_on_terminal(env, &format!("run -t --rm --runtime {HYBRID_RUNTIME} {image} {}", unique_id("ttyw")), "", 80, 24);
    assert_eq!(code, 12, "fd 1 of a wasm task with a terminal is a character device: {shown}");
    let plain = env.run(HYBRID_RUNTIME, &image, &unique_id("ttyw"), &[]);
    assert_ne!(plain.code, 12, "without -t fd 1 is no terminal: {plain:?}");
}
