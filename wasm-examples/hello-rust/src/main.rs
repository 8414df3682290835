//! hello-rust: a small WASI preview1 command used by the hybrid examples and
//! end-to-end tests.
//!
//! Build (Debian's rustc 1.63 with the wasm32-wasi std from
//! libstd-rust-dev-wasm32, not a rustup toolchain):
//!
//!     /usr/bin/rustc --edition 2021 -O --target wasm32-wasi src/main.rs -o hello.wasm
//!
//! Output (one item per line, stable so tests can match on it):
//!
//!     hello from wasm
//!     args: <argv[1..] joined by spaces>   ("args:" alone without arguments)
//!     GREETING=<value of $GREETING, or "(unset)">
//!     message: <contents of /data/message.txt, trimmed>
//!
//! Exit status: the integer in $EXIT_CODE (default 0).

use std::env;
use std::fs;
use std::io::Write;
use std::process;

const MESSAGE_PATH: &str = "/data/message.txt";

fn main() {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();

    let _ = writeln!(out, "hello from wasm");

    // "args:" then " ARG" per argument: "args: a b", or just "args:".
    let mut line = String::from("args:");
    for arg in env::args().skip(1) {
        line.push(' ');
        line.push_str(&arg);
    }
    let _ = writeln!(out, "{}", line);

    let greeting = env::var("GREETING").unwrap_or_else(|_| String::from("(unset)"));
    let _ = writeln!(out, "GREETING={}", greeting);

    match fs::read_to_string(MESSAGE_PATH) {
        Ok(text) => {
            let _ = writeln!(out, "message: {}", text.trim_end());
        }
        Err(err) => {
            let _ = writeln!(out, "message: (unreadable)");
            eprintln!("hello-rust: cannot read {}: {}", MESSAGE_PATH, err);
        }
    }

    let code = match env::var("EXIT_CODE") {
        Ok(v) => match v.trim().parse::<i32>() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("hello-rust: EXIT_CODE={:?} is not an integer, using 1", v);
                1
            }
        },
        Err(_) => 0,
    };

    let _ = out.flush();
    drop(out);
    process::exit(code);
}
