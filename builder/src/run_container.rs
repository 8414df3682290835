//! One RUN container, start to finish: an overlay (the stage's unpacked
//! filesystem below, a fresh upper directory) mounted as the bundle's
//! rootfs, a config.json, hybrid-runtime's one-shot lifecycle (the same
//! decision and executors as the shim: native, or wasm for a wasm
//! entrypoint; in a helper process, see [`crate::run_helper`]), the output
//! streamed to the build's progress, then the overlay unmounted and the
//! mount points the runtime had to create in the rootfs removed again.
//! Everything but the upper directory is gone when [`run`] returns, also on
//! errors; the upper directory goes with the returned [`Ran`].

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hybrid_runtime::oneshot::run_to_completion;
use hybrid_runtime::HybridContainer;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, MountBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::dockerfile::Network;
use crate::progress::OutputSink;
use crate::run::{RunError, TAIL_LINES};
use crate::run_helper;

/// libcontainer's state for build containers (not the shim's).
const STATE_ROOT: &str = "/run/hybrid-build";
const HOSTNAME: &str = "hybrid-build";

/// A file the command needs outside the rootfs (a heredoc script with a
/// `#!` line), bind-mounted read-only at `path` (under /dev, a tmpfs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScriptFile {
    pub path: String,
    pub content: String,
}

pub(crate) struct RunJob {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    /// Absolute and clean.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub network: Network,
    /// The unpacked stage, the overlay's lower directory.
    pub lower: PathBuf,
    /// Where to make the container's temporary directories.
    pub scratch: PathBuf,
    pub scripts: Vec<ScriptFile>,
    pub output: OutputSink,
}

/// A finished RUN container.
pub(crate) struct Ran {
    pub code: i32,
    /// The overlay's upper directory: what the command changed.
    pub upper: PathBuf,
    /// Its lower directory (the job's).
    pub lower: PathBuf,
    /// The last lines of its output.
    pub tail: Vec<String>,
    _dir: tempfile::TempDir,
}

fn prepare(what: &str) -> impl FnOnce(io::Error) -> RunError + '_ {
    move |source| RunError::Prepare { what: what.to_string(), source }
}

/// The overlay, unmounted when dropped (so also on every error path).
pub(crate) struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.0, MntFlags::MNT_DETACH) {
            tracing::warn!("cannot unmount the RUN overlay at {}: {e}", self.0.display());
        }
    }
}

pub(crate) fn mount_overlay(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> Result<Mounted, RunError> {
    let base = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    // No redirects and no metadata-only copy-ups: the upper directory must
    // hold every change itself. Kernels without these options get the base.
    let mut result = Err(nix::errno::Errno::EINVAL);
    for extra in [",redirect_dir=off,metacopy=off,index=off", ""] {
        let options = format!("{base}{extra}");
        result = mount(Some("overlay"), merged, Some("overlay"), MsFlags::empty(), Some(options.as_str()));
        if result != Err(nix::errno::Errno::EINVAL) {
            break;
        }
    }
    result.map_err(|e| RunError::Mount { path: merged.display().to_string(), source: e.into() })?;
    Ok(Mounted(merged.to_path_buf()))
}

/// Make the working directory inside `root` if it is missing (docker
/// does); a symlink on the way is left to the runtime to resolve.
pub(crate) fn ensure_workdir(root: &Path, cwd: &str) -> io::Result<()> {
    let mut path = root.to_path_buf();
    for part in cwd.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new().mode(0o755).create(&path)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Mount points (and their parents) missing from `lower`: the runtime
/// creates them in the rootfs, and they must not end up in the layer.
fn mount_stubs(lower: &Path, destinations: &[&str]) -> BTreeSet<String> {
    let mut stubs = BTreeSet::new();
    for dest in destinations {
        let mut rel = String::new();
        for part in dest.split('/').filter(|p| !p.is_empty()) {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(part);
            if fs::symlink_metadata(lower.join(&rel)).is_err() {
                stubs.insert(rel.clone());
            }
        }
    }
    stubs
}

/// Remove the stubs the runtime left in `upper` (empty files and empty
/// directories only: anything the command put there stays).
fn remove_stubs(upper: &Path, stubs: &BTreeSet<String>) {
    for stub in stubs.iter().rev() {
        let path = upper.join(stub);
        let removed = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == 0 => fs::remove_file(&path),
            Ok(meta) if meta.is_dir() => fs::remove_dir(&path),
            _ => continue,
        };
        if let Err(e) = removed {
            tracing::debug!("mount point /{stub} stays in the layer: {e}");
        }
    }
}

fn capabilities() -> std::collections::HashSet<Capability> {
    use Capability::*;
    // Docker's default set.
    [
        Chown, DacOverride, Fsetid, Fowner, Mknod, NetRaw, Setgid, Setuid, Setfcap, Setpcap, NetBindService, SysChroot,
        Kill, AuditWrite,
    ]
    .into_iter()
    .collect()
}

fn spec(job: &RunJob, id: &str, hosts: &Path, binds: &[(String, PathBuf)]) -> Result<Spec, oci_spec::OciSpecError> {
    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_string());
    spec.set_hostname(Some(HOSTNAME.to_string()));
    spec.set_annotations(None);
    spec.set_root(Some(RootBuilder::default().path("rootfs").readonly(false).build()?));
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(job.argv.clone()));
    process.set_env(Some(job.env.clone()));
    process.set_cwd(PathBuf::from(&job.cwd));
    process.set_no_new_privileges(Some(false));
    // The builder's own limits.
    process.set_rlimits(None);
    let mut user = UserBuilder::default().uid(job.uid).gid(job.gid).build()?;
    if !job.additional_gids.is_empty() {
        user.set_additional_gids(Some(job.additional_gids.clone()));
    }
    process.set_user(user);
    let caps = capabilities();
    process.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .build()?,
    ));
    spec.set_process(Some(process));

    let options = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let kernel = |dest: &str, typ: &str, source: &str, opts: &[&str]| {
        MountBuilder::default().destination(dest).typ(typ).source(source).options(options(opts)).build()
    };
    let bind = |dest: &str, source: &Path| {
        MountBuilder::default().destination(dest).typ("bind").source(source).options(options(&["rbind", "ro"])).build()
    };
    let mut mounts = vec![
        kernel("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        kernel("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        kernel("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"])?,
        kernel("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        kernel("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        kernel("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
        bind("/etc/hosts", hosts)?,
    ];
    if job.network == Network::Host {
        mounts.push(bind("/etc/resolv.conf", Path::new("/etc/resolv.conf"))?);
    }
    for (dest, source) in binds {
        mounts.push(bind(dest, source)?);
    }
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut kinds = vec![LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount];
    if job.network == Network::None {
        kinds.push(LinuxNamespaceType::Network);
    }
    let namespaces = kinds.into_iter().map(|typ| LinuxNamespaceBuilder::default().typ(typ).build()).collect::<Result<Vec<_>, _>>()?;
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(PathBuf::from(format!("/hybrid-build/{id}"))));
    // Deny every device but the runtime's defaults (as runc's spec does).
    let deny_all = LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?;
    linux.set_resources(Some(LinuxResourcesBuilder::default().devices(vec![deny_all]).build()?));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Copies complete lines of the log to the sink as they come (polled from
/// the waiting thread: no thread of its own, see hybrid_runtime::oneshot).
struct Tail {
    file: File,
    sink: OutputSink,
    pending: Vec<u8>,
}

impl Tail {
    fn poll(&mut self) {
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = self.file.read(&mut buf) {
            self.pending.extend_from_slice(&buf[..n]);
        }
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.sink.line(String::from_utf8_lossy(&line[..end]).trim_end_matches('\r'));
        }
    }

    fn finish(mut self) {
        self.poll();
        if !self.pending.is_empty() {
            self.sink.line(&String::from_utf8_lossy(&self.pending));
        }
    }
}

/// The last [`TAIL_LINES`] lines of the log at `path`.
fn last_lines(path: &Path) -> Vec<String> {
    let Ok(mut file) = File::open(path) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut data = Vec::new();
    if file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024))).is_err() || file.read_to_end(&mut data).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&data);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].iter().map(|l| l.to_string()).collect()
}

/// A container id unique to this process and step.
fn container_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{}{}", crate::left_behind::own_prefix(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Whether a RUN helper for container `id` is alive: a process of this pid
/// namespace whose command line (the helper's job) names it. A wasm
/// container's process is a clone of its helper with the same command
/// line, but in a pid namespace of its own.
fn helper_alive(id: &str) -> bool {
    let own_ns = fs::read_link("/proc/self/ns/pid").ok();
    let Ok(procs) = fs::read_dir("/proc") else { return false };
    procs.flatten().any(|p| {
        let is_pid = p.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        is_pid
            && fs::read(p.path().join("cmdline")).is_ok_and(|c| c.windows(id.len() + 2).any(|w| w == format!("\"{id}\"").as_bytes()))
            && fs::read_link(p.path().join("ns/pid")).ok() == own_ns
    })
}

/// RUN containers whose build is gone (killed outright, its helper too):
/// killed, their cgroups and state removed. Their ids carry the build's
/// pid; a live process with that pid keeps them (it may be that build), and
/// so does a live helper (it is cleaning up after its killed build).
fn sweep_stale_containers(state_root: &Path) {
    let Ok(entries) = fs::read_dir(state_root) else { return };
    for entry in entries.flatten() {
        let Some(id) = entry.file_name().to_str().map(str::to_string) else { continue };
        let Some(build_pid) = crate::left_behind::build_of(&id) else { continue };
        if !crate::left_behind::gone(build_pid) || helper_alive(&id) {
            continue;
        }
        match HybridContainer::load(state_root, &id).and_then(|mut c| c.delete()) {
            Ok(()) => tracing::info!("removed RUN container {id}, left by a build that was killed"),
            Err(e) => tracing::warn!("cannot remove RUN container {id}, left by a build that was killed: {e}"),
        }
    }
}

/// Run `job` to completion (blocking: call it off the async runtime).
pub(crate) fn run(job: RunJob) -> Result<Ran, RunError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(RunError::NotRoot);
    }
    sweep_stale_containers(Path::new(STATE_ROOT));
    // As the shim's: in memory (hybrid_runtime::state_in_memory); a state
    // root left on disk still serves.
    if let Err(e) = hybrid_runtime::state_in_memory::keep_in_memory(Path::new(STATE_ROOT)) {
        tracing::debug!("build container state stays where it is: {e}");
    }
    let dir = tempfile::Builder::new().prefix("run-").tempdir_in(&job.scratch).map_err(prepare("a directory"))?;
    let [upper, work, bundle] = ["upper", "work", "bundle"].map(|name| dir.path().join(name));
    let rootfs = bundle.join("rootfs");
    for path in [&upper, &work, &rootfs] {
        fs::DirBuilder::new().recursive(true).mode(0o755).create(path).map_err(prepare("the overlay directories"))?;
    }
    // The container's / takes the upper directory's owner and mode.
    fs::set_permissions(&upper, fs::Permissions::from_mode(0o755)).map_err(prepare("the upper directory"))?;
    let hosts = dir.path().join("hosts");
    let hosts_text = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{HOSTNAME}\n");
    fs::write(&hosts, hosts_text).map_err(prepare("/etc/hosts"))?;
    let mut binds = Vec::new();
    for (n, script) in job.scripts.iter().enumerate() {
        let path = dir.path().join(format!("script-{n}"));
        fs::write(&path, &script.content).map_err(prepare(&script.path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(prepare(&script.path))?;
        binds.push((script.path.clone(), path));
    }
    let mut destinations = vec!["proc", "dev", "sys", "etc/hosts"];
    if job.network == Network::Host {
        destinations.push("etc/resolv.conf");
    }
    let stubs = mount_stubs(&job.lower, &destinations);
    let id = container_id();
    let spec = spec(&job, &id, &hosts, &binds).map_err(|e| RunError::Spec(e.to_string()))?;
    spec.save(bundle.join("config.json")).map_err(|e| RunError::Spec(e.to_string()))?;
    let log = dir.path().join("output.log");
    File::create(&log).map_err(prepare("the output log"))?;

    // The helper mounts the overlay itself, in its own mount namespace;
    // run in-process, this process mounts it.
    let in_helper = run_helper::available();
    let mounted = if in_helper {
        None
    } else {
        let mounted = mount_overlay(&job.lower, &upper, &work, &rootfs)?;
        ensure_workdir(&rootfs, &job.cwd).map_err(prepare(&format!("WORKDIR {}", job.cwd)))?;
        Some(mounted)
    };
    let overlay = in_helper.then(|| run_helper::OverlayJob {
        lower: job.lower.clone(),
        upper: upper.clone(),
        work: work.clone(),
        cwd: job.cwd.clone(),
    });
    let log_uri = format!("file://{}", log.display());
    let helper_job = run_helper::Job {
        id: id.clone(),
        bundle,
        rootfs,
        state_root: PathBuf::from(STATE_ROOT),
        namespace: "hybrid-build".to_string(),
        stdout: log_uri.clone(),
        stderr: log_uri,
        parent: std::process::id(),
        overlay,
    };
    let file = File::open(&log).map_err(prepare("the output log"))?;
    let mut tail = Tail { file, sink: job.output.clone(), pending: Vec::new() };
    tracing::debug!(id = %id, argv = ?job.argv, helper = run_helper::available(), "RUN container");
    let result = if in_helper {
        run_helper::run(&helper_job, || tail.poll())
    } else {
        run_to_completion(&helper_job.config(), || tail.poll()).map(|c| c.code).map_err(|e| RunError::Runtime(e.to_string()))
    };
    tail.finish();
    drop(mounted);
    let code = result?;
    tracing::debug!(id = %id, code, "RUN container exited");
    remove_stubs(&upper, &stubs);
    let tail = if code == 0 { Vec::new() } else { last_lines(&log) };
    Ok(Ran { code, upper, lower: job.lower, tail, _dir: dir })
}
