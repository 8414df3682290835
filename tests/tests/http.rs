//! wasi:http: a component exporting `wasi:http/incoming-handler` is served
//! on the port an annotation names, else the one its image EXPOSEs; it
//! answers on loopback (host network) and SIGTERM ends it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hybrid_tests::*;

const PORT_ANNOTATION: &str = "io.containerd.hybrid.v2.http-port";

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// `ctr run --rm --net-host` attached, with the line the server prints when
/// it listens (or why it never did).
struct Served {
    child: Child,
    id: String,
}

fn serve(image: &str, extra: &[&str]) -> Served {
    let env = env();
    let id = unique_id("http");
    let mut run = env.ctr();
    run.args(["run", "--rm", "--net-host", "--runtime", HYBRID_RUNTIME])
        .args(extra)
        .args([image, &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = run.spawn().expect("spawn ctr run");
    let stdout = child.stdout.take().expect("stdout");
    let (lines, listening) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    match listening.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if line.starts_with("listening on 0.0.0.0:") => Served { child, id },
        other => {
            let _ = child.kill();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("{id}: no listening line ({other:?}); stderr:\n{stderr}");
        }
    }
}

impl Served {
    /// SIGTERM the task; the status `ctr run` reports.
    fn terminate(mut self) -> i32 {
        let kill = env().ctr_out(&["task", "kill", "-s", "SIGTERM", &self.id]);
        assert_eq!(kill.code, 0, "{kill:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait ctr") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{}: still serving 10 s after SIGTERM", self.id);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A GET on loopback: the status code and the body (the response is
/// read to its end: the request asks the server to close).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head/body split in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    assert!(
        head.to_ascii_lowercase().contains(&format!("content-length: {}", body.len())),
        "the guest's content-length frames the body: {response:?}"
    );
    (status, body.to_string())
}

#[test]
fn an_http_component_answers_on_the_annotated_port() {
    let port = free_port();
    let annotation = format!("{PORT_ANNOTATION}={port}");
    let served = serve(&image("http-hello"), &["--annotation", &annotation]);
    let (status, body) = get(port, "/some/path?x=1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "hello from wasi:http\npath: /some/path?x=1\n");
    // A second request gets a fresh instance and the same answer.
    assert_eq!(get(port, "/again"), (200, "hello from wasi:http\npath: /again\n".to_string()));
    assert_eq!(served.terminate(), 143, "SIGTERM ends the server as it ends any wasm task");
    assert!(port_is_free(port), "port {port} is free again once the task is gone");
}

#[test]
fn an_http_component_listens_on_the_port_its_image_exposes() {
    let port = free_port();
    let context = tempfile::tempdir().expect("tempdir");
    let component = repo_root().join("wasm-examples/http-hello/http-hello.wasm");
    env(); // builds the example's component
    std::fs::copy(&component, context.path().join("h.wasm")).expect("copy the component");
    // A udp port below it: only tcp ports count.
    let dockerfile = format!("FROM scratch\nCOPY h.wasm /h.wasm\nEXPOSE 53/udp {port}/tcp\nENTRYPOINT [\"/h.wasm\"]\n");
    std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("dockerfile");
    let image = build_image_dir(&format!("http-expose-{port}"), context.path());
    let served = serve(&image, &[]);
    let create = format!("create{{id={}}}", served.id);
    assert!(
        env().containerd_log().lines().any(|l| l.contains(&create) && l.contains("the image exposes the wasi:http port")),
        "the shim read the port from the image config"
    );
    assert_eq!(get(port, "/exposed"), (200, "hello from wasi:http\npath: /exposed\n".to_string()));
    assert_eq!(served.terminate(), 143);
    assert!(port_is_free(port), "port {port} is free again once the task is gone");
}

#[test]
fn a_bad_port_annotation_fails_create_naming_it() {
    let env = env();
    let id = unique_id("http-bad");
    let annotation = format!("{PORT_ANNOTATION}=eighty");
    let ran = env.ctr_out(&["run", "--rm", "--net-host", "--runtime", HYBRID_RUNTIME, "--annotation", &annotation, &image("http-hello"), &id]);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(ran.stderr.contains(PORT_ANNOTATION) && ran.stderr.contains("eighty"), "{ran:?}");
}
