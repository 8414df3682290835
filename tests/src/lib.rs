//! Harness for hybrid's integration tests: one private containerd 1.6 per
//! test binary (own config, root, state and sockets under a temp dir), the
//! example images built by `hybrid build` and loaded into it, and helpers to
//! drive it with `ctr` the way an operator would.

pub mod cri;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const HYBRID_RUNTIME: &str = "io.containerd.hybrid.v2";
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Where the workspace's binaries are (cargo build --workspace --bins): the
/// profile directory this test was built into (test binaries run from its
/// `deps`), unless HYBRID_BIN_DIR names another.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("HYBRID_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        exe.parent().and_then(Path::parent).expect("a test binary in <profile>/deps").to_path_buf()
    })
}

pub fn hybrid_bin() -> PathBuf {
    bin_dir().join("hybrid")
}

/// The example image's full name, as `hybrid build --load` stores it.
pub fn image(name: &str) -> String {
    format!("docker.io/hybrid-examples/{name}:latest")
}

pub struct Env {
    pub state: PathBuf,
    pub address: String,
}

static ENV: OnceLock<Env> = OnceLock::new();

extern "C" fn stop_containerd() {
    if let Some(env) = ENV.get() {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/containerd.sh"))
            .arg("stop")
            .arg(&env.state)
            .status();
    }
}

fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `scripts/containerd.sh CMD STATE` with the environment our containerd
/// runs in.
fn containerd_script(cmd: &str, state: &Path) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("scripts/containerd.sh"))
        .arg(cmd)
        .arg(state)
        .env("HYBRID_BIN_DIR", bin_dir())
        // The shims inherit containerd's environment: a compile cache of
        // this run's own, so cache tests see only their own entries.
        .env("HYBRID_WASM_CACHE", state.join("wasm-cache"));
    command
}

/// The shared environment: containerd started and example images loaded,
/// once per test binary; containerd is stopped when the binary exits.
pub fn env() -> &'static Env {
    ENV.get_or_init(|| {
        for bin in ["hybrid", "containerd-shim-hybrid-v2"] {
            assert!(
                bin_dir().join(bin).exists(),
                "{bin} not found in {}: run `cargo build --workspace --bins` first (scripts/test.sh does)",
                bin_dir().display()
            );
        }
        let state = std::env::temp_dir().join(format!("hybrid-it-{}", std::process::id()));
        run_checked(&mut containerd_script("start", &state), "start private containerd");
        // SAFETY: registering a plain extern "C" fn with atexit has no preconditions.
        unsafe { libc::atexit(stop_containerd) };
        let address = state.join("containerd.sock").display().to_string();
        run_checked(
            Command::new("bash")
                .arg(repo_root().join("scripts/build-examples.sh"))
                .current_dir(repo_root())
                .env("HYBRID", hybrid_bin())
                .env("CONTAINERD_ADDRESS", &address),
            "build and load the example images",
        );
        Env { state, address }
    })
}

/// Build an image from files written into a fresh context dir and load it
/// into the private containerd as `docker.io/hybrid-tests/NAME:latest`.
pub fn build_image(name: &str, files: &[(&str, &str)]) -> String {
    let context = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        let full = context.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(&full, content).expect("write context file");
    }
    build_image_dir(name, context.path())
}

/// Build the image whose context (with its Dockerfile) is `context` and
/// load it as `docker.io/hybrid-tests/NAME:latest`.
pub fn build_image_dir(name: &str, context: &Path) -> String {
    let env = env();
    let tag = format!("hybrid-tests/{name}:latest");
    run_checked(
        Command::new(hybrid_bin()).args(["build", "-t", &tag, "--load", "--address", &env.address]).arg(context),
        &format!("hybrid build {tag}"),
    );
    format!("docker.io/{tag}")
}

/// An image whose entrypoint is one WAT module, `/app.wat`.
pub fn wat_image(name: &str, wat: &str) -> String {
    build_image(
        name,
        &[("Dockerfile", "FROM scratch\nCOPY app.wat /app.wat\nENTRYPOINT [\"/app.wat\"]\n"), ("app.wat", wat)],
    )
}

impl Env {
    /// Restart containerd alone: its tasks and shims keep running.
    pub fn restart_containerd(&self) {
        run_checked(&mut containerd_script("restart", &self.state), "restart private containerd");
    }

    /// `ctr ARGS…` to completion, with containerd's event stream recorded
    /// around it (`ctr events` lines: time, namespace, topic, event).
    pub fn ctr_with_events(&self, args: &[&str]) -> (Ran, String) {
        let mut events = self
            .ctr()
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        std::thread::sleep(Duration::from_millis(200));
        let ran: Ran = self.ctr().args(args).output().expect("ctr").into();
        std::thread::sleep(Duration::from_millis(300));
        let _ = events.kill();
        let out = events.wait_with_output().expect("events output");
        (ran, String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn containerd_log(&self) -> String {
        std::fs::read_to_string(self.state.join("containerd.log")).unwrap_or_default()
    }

    pub fn wasm_cache_dir(&self) -> PathBuf {
        self.state.join("wasm-cache")
    }
}

/// A finished `ctr` command.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(out: Output) -> Self {
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// A unique container id for one test.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

impl Env {
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.address).stdin(Stdio::null());
        cmd
    }

    pub fn ctr_out(&self, args: &[&str]) -> Ran {
        self.ctr().args(args).output().expect("run ctr").into()
    }

    /// `ctr ARGS`, killed (SIGKILL, by coreutils `timeout`) after `limit`:
    /// ctr's own --timeout does not end a call the shim never answers.
    pub fn ctr_out_within(&self, limit: Duration, args: &[&str]) -> Ran {
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", &limit.as_secs().max(1).to_string(), "ctr", "--address"]).arg(&self.address).args(args);
        cmd.stdin(Stdio::null()).output().expect("run timeout ctr").into()
    }

    /// `ctr run --rm --runtime RUNTIME IMAGE ID [ARGS…]`, to completion.
    pub fn run(&self, runtime: &str, image: &str, id: &str, args: &[&str]) -> Ran {
        let mut cmd = self.ctr();
        cmd.args(["run", "--rm", "--runtime", runtime, image, id]).args(args);
        cmd.output().expect("run ctr").into()
    }

    /// The status column of `ctr task ls` for `id`, if the task exists.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr_out(&["task", "ls"]);
        out.stdout.lines().find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.get(2).unwrap_or(&"").to_string())
        })
    }

    pub fn wait_for_status(&self, id: &str, want: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.task_status(id).as_deref() == Some(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// Mount points (from /proc/self/mountinfo) whose path contains `needle`.
pub fn mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Cgroup directories named `id` under any hierarchy of /sys/fs/cgroup.
pub fn cgroups_named(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return found };
    for h in hierarchies.flatten() {
        let mut stack = vec![h.path()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    if e.file_name().to_string_lossy() == id {
                        found.push(e.path());
                    }
                    stack.push(e.path());
                }
            }
        }
    }
    found
}

/// The memory limit file of the cgroup named `id` (v1
/// `memory.limit_in_bytes`, v2 `memory.max`), and what it holds.
pub fn memory_limit_of(id: &str) -> Option<(PathBuf, String)> {
    cgroups_named(id).into_iter().find_map(|dir| {
        let file = ["memory.max", "memory.limit_in_bytes"].iter().map(|f| dir.join(f)).find(|f| f.exists())?;
        let limit = std::fs::read_to_string(&file).ok()?;
        Some((file, limit.trim().to_string()))
    })
}

/// Processes of our pid namespace holding the unix socket that listens on
/// `path` (from /proc/net/unix, matched to descriptors by inode): a shim
/// is found by its socket, whatever command line it was started with.
pub fn processes_listening_on(path: &str) -> Vec<i32> {
    // __SO_ACCEPTCON in /proc/net/unix's Flags column: a listening socket.
    const ACCEPTING: u32 = 0x10000;
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            (fields.get(7) == Some(&path) && flags & ACCEPTING != 0).then(|| format!("socket:[{}]", fields[6]))
        })
        .collect();
    let our_pid_ns = std::fs::read_link("/proc/self/ns/pid").ok();
    if inodes.is_empty() {
        return Vec::new();
    }
    let holds = |pid: i32| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        })
    };
    all_pids()
        .into_iter()
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() == our_pid_ns)
        .filter(|pid| holds(*pid))
        .collect()
}

/// The children of `parent` whose name (comm) is `name`.
pub fn children_named(parent: i32, name: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| parent_pid(*pid) == Some(parent))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .collect()
}

/// Every process id under /proc.
pub fn all_pids() -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    procs.flatten().filter_map(|p| p.file_name().to_string_lossy().parse().ok()).collect()
}

/// The fields of /proc/PID/stat after the command name, which may hold
/// spaces and parentheses: the state first, then the parent's pid, ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The state letter of `pid` (R, S, D, Z, X...), None once it is gone.
pub fn process_state(pid: i32) -> Option<String> {
    stat_fields(pid)?.into_iter().next()
}

/// Whether `pid` runs: neither gone nor a zombie (nor dead, X).
pub fn is_running(pid: i32) -> bool {
    process_state(pid).is_some_and(|state| state != "Z" && state != "X")
}

/// The parent of `pid`, from /proc.
pub fn parent_pid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Field `name` of a /proc status text (a process's or a thread's
/// `status`, or lines a container printed from its own), trimmed.
pub fn status_field(status: &str, name: &str) -> Option<String> {
    status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(|v| v.trim().to_string())
}

/// Processes whose command line or environment mention `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

/// Whether `done` holds within `timeout`, asked every 50 ms.
pub fn wait_until(timeout: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}
