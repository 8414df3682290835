//! A wasm container shows its guest its files, not the kernel's.
//!
//! A wasm guest reaches the container's filesystem through its preopens,
//! by default the whole root. Through the `proc` mount every spec carries,
//! the guest could open `/proc/self/...` of the process it runs in, which
//! is wasmtime's, not its own: `maps` gives away the host's address layout
//! and `environ` the shim's environment. `/sys` shows the host's devices
//! and the cgroup mount its cgroups. None of that serves a WASI guest.
//!
//! So a wasm container's spec loses the mounts libcontainer does not need
//! (sysfs, cgroup, mqueue, with the masked and read-only paths inside
//! them, and those inside /proc) before libcontainer reads it, which also
//! spares the container's create their mounting. `/proc` libcontainer does need, until its init
//! is ready: the process that made the container then enters the
//! container's mount namespace and covers it ([`hide_proc`]). Bind
//! mounts, tmpfs, volumes and /dev stay where the spec puts them. A native
//! `exec` into a wasm container sees no /proc or /sys either.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::Spec;

/// The mounts a wasm container goes without from the start.
const KERNEL_FILESYSTEMS: [&str; 4] = ["sysfs", "cgroup", "cgroup2", "mqueue"];

#[derive(Debug, thiserror::Error)]
pub enum GuestMountsError {
    #[error("bundle {path:?}: cannot write the wasm container's spec: {message}")]
    Save { path: PathBuf, message: String },
}

/// Where a wasm container's /proc is: covered ([`hide_proc`]) before
/// anything but libcontainer's init has seen it.
const COVERED_PROC: &str = "/proc";

/// The spec without the kernel's filesystems, and without the masked and
/// read-only paths under them or under /proc (which is covered whole:
/// masking its files one by one cost the init a dozen mounts); None when
/// it has none of them.
pub fn without_kernel_filesystems(spec: &Spec) -> Option<Spec> {
    let mounts = spec.mounts().clone().unwrap_or_default();
    let (dropped, kept): (Vec<_>, Vec<_>) =
        mounts.into_iter().partition(|m| m.typ().as_deref().is_some_and(|t| KERNEL_FILESYSTEMS.contains(&t)));
    let mut gone: Vec<PathBuf> = dropped.iter().map(|m| m.destination().clone()).collect();
    gone.push(PathBuf::from(COVERED_PROC));
    // A path under a mount that is gone, or covered, has nothing to mask or protect.
    let hidden = |path: &String| gone.iter().any(|g| Path::new(path).starts_with(g));
    let keep = |paths: &Option<Vec<String>>| -> Option<Vec<String>> {
        paths.as_ref().map(|p| p.iter().filter(|p| !hidden(p)).cloned().collect())
    };
    let linux = spec.linux().as_ref();
    let paths_hidden = linux.is_some_and(|l| {
        [l.masked_paths(), l.readonly_paths()].into_iter().flatten().flatten().any(|p| hidden(p))
    });
    if dropped.is_empty() && !paths_hidden {
        return None;
    }
    let mut spec = spec.clone();
    spec.set_mounts(Some(kept));
    if let Some(mut linux) = spec.linux().clone() {
        let masked = keep(linux.masked_paths());
        let read_only = keep(linux.readonly_paths());
        linux.set_masked_paths(masked).set_readonly_paths(read_only);
        spec.set_linux(Some(linux));
    }
    Some(spec)
}

/// Rewrite the bundle's config.json for a wasm container (see the module
/// comment), without its resources too when `resources_applied` (its
/// creator applies them: cgroup_join::OwnJoin); the spec written, or None
/// when `spec` needed no change.
pub fn narrow_bundle(bundle: &Path, spec: &Spec, resources_applied: bool) -> Result<Option<Spec>, GuestMountsError> {
    let mut narrowed = without_kernel_filesystems(spec);
    if resources_applied && spec.linux().as_ref().is_some_and(|l| l.resources().is_some()) {
        let mut without = narrowed.unwrap_or_else(|| spec.clone());
        if let Some(mut linux) = without.linux().clone() {
            linux.set_resources(None);
            without.set_linux(Some(linux));
        }
        narrowed = Some(without);
    }
    let Some(narrowed) = narrowed else { return Ok(None) };
    let path = bundle.join("config.json");
    rewrite_in_place(&path, &narrowed).map_err(|message| GuestMountsError::Save { path, message })?;
    Ok(Some(narrowed))
}

/// Write `spec` over the file at `path` without truncating it first: the
/// truncate of an open(O_TRUNC) frees the file's blocks for the write to
/// allocate again, and on a filesystem mounted with `discard` (the test
/// machine's root) a freed block can wait for the device. Written over,
/// the file keeps its blocks; the final length cut frees only those a
/// shorter spec no longer reaches (none, for the few hundred bytes a wasm
/// spec loses). Narrowing took 0.22 ms of Create before, 0.11 after (idle
/// test machine, 20 starts each).
pub fn rewrite_in_place(path: &Path, spec: &Spec) -> Result<(), String> {
    use std::io::Write;
    let bytes = serde_json::to_vec(spec).map_err(|e| e.to_string())?;
    let mut file = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| e.to_string())?;
    file.write_all(&bytes).map_err(|e| e.to_string())?;
    file.set_len(bytes.len() as u64).map_err(|e| e.to_string())
}

/// Cover /proc (with what is mounted under it) with an empty read-only
/// tmpfs in the mount namespace of the container whose init is `pid`,
/// ready and waiting for start. Enters that namespace: call from a
/// single-threaded process that has nothing left to do on the host (the
/// creator, just before it answers and exits).
///
/// Neither step unmounts anything before the answer: every unmount waits
/// for an expedited RCU grace period (0.1 ms on the idle test machine, 2
/// to 6 ms in perf recordings of cold starts, which keep the other core
/// busy), and a create is answered only after this. The namespace this process leaves
/// (its own copy, where cgroup_join hid the hierarchies from libcontainer's
/// intermediate process; the host's, where there was none: see
/// direct_init.rs) is kept by a descriptor until the process exits, where
/// its unmounting waits instead; and the container's /proc is covered
/// rather than detached.
pub fn hide_proc(pid: i32) -> Result<(), String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(|e| format!("cannot open the mount namespace of pid {pid}: {e}"))?;
    if let Ok(own) = std::fs::File::open("/proc/self/ns/mnt") {
        // Closed by the exit, after the answer (see above).
        std::mem::forget(own);
    }
    setns(ns, CloneFlags::CLONE_NEWNS).map_err(|e| format!("cannot enter the mount namespace of pid {pid}: {e}"))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(Some("tmpfs"), "/proc", Some("tmpfs"), flags, Some("mode=555,size=4k")) {
        // ENOENT: no /proc directory at all (a spec without /proc).
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("cannot cover /proc: {e}")),
    }
}

/// The creator's word to the init that its /proc is covered: a pipe made
/// before the init's fork, its read end the init's, its write end the
/// creator's. The init tells its readiness itself (the shim's Start goes
/// on at once) and waits for this word only before its guest runs, while
/// the creator covers /proc beside Start's own work ([`hide_proc`]).
pub(crate) fn covered_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

/// In the creator: /proc is covered (the write end goes with it).
pub(crate) fn tell_covered(write_end: OwnedFd) {
    let _ = nix::unistd::write(&write_end, &[1]);
}

/// In the init: wait for the creator's word on the read end `fd` (closed
/// then); without it (the creator ended first) the guest must not run.
pub(crate) fn wait_until_covered(fd: RawFd) -> Result<(), String> {
    // SAFETY: `fd` is the init's read end of the pipe, inherited through
    // the fork and used by nothing else; it is owned (and closed) here.
    let read_end = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut word = [0u8; 1];
    loop {
        match nix::unistd::read(read_end.as_raw_fd(), &mut word) {
            Ok(1) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return Err("the container's /proc was not covered: its creator ended first".to_string()),
            Err(e) => return Err(format!("cannot learn whether the container's /proc is covered: {e}")),
        }
    }
}

/// Blank this process's environment block, the one /proc/PID/environ
/// shows. A wasm process never execs: that block is still the shim's
/// environment, inherited through its clones, and where /proc stays (a
/// wasm exec into a native container, whose init needs /proc) the guest
/// could read it. The guest's own environment is the spec's, given
/// through WASI; glibc's `environ` points into the block and reads empty
/// strings after. Call while the process is single-threaded, and while it
/// sees a /proc: a container's init does before Start (start_ahead.rs),
/// as its creator covers /proc before answering.
pub fn blank_host_environment() {
    let Ok(stat) = procfs::process::Process::myself().and_then(|p| p.stat()) else { return };
    let (Some(start), Some(end)) = (stat.env_start, stat.env_end) else { return };
    let Ok(len) = usize::try_from(end.saturating_sub(start)) else { return };
    if start == 0 || len == 0 {
        return;
    }
    // SAFETY: [start, start + len) is this process's environment block,
    // which the kernel placed in writable memory (the top of the main
    // stack) at the exec this process descends from; no other thread runs,
    // and what points into it (environ) only reads the strings, which stay
    // NUL-terminated.
    unsafe { std::ptr::write_bytes(start as usize as *mut u8, 0, len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_runs_once_its_creator_says_proc_is_covered() {
        let (read_end, write_end) = covered_pipe().expect("pipe");
        tell_covered(write_end);
        assert_eq!(wait_until_covered(std::os::fd::IntoRawFd::into_raw_fd(read_end)), Ok(()));
    }

    #[test]
    fn a_creator_gone_without_the_word_stops_the_guest() {
        let (read_end, write_end) = covered_pipe().expect("pipe");
        drop(write_end);
        let err = wait_until_covered(std::os::fd::IntoRawFd::into_raw_fd(read_end)).expect_err("no word");
        assert!(err.contains("not covered"), "{err}");
    }
    use oci_spec::runtime::{LinuxBuilder, MountBuilder, SpecBuilder};

    fn mount(dest: &str, typ: &str) -> oci_spec::runtime::Mount {
        MountBuilder::default().destination(dest).typ(typ).source(typ).build().unwrap()
    }

    fn spec() -> Spec {
        SpecBuilder::default()
            .mounts(vec![
                mount("/proc", "proc"),
                mount("/dev", "tmpfs"),
                mount("/dev/pts", "devpts"),
                mount("/dev/mqueue", "mqueue"),
                mount("/sys", "sysfs"),
                mount("/sys/fs/cgroup", "cgroup"),
                mount("/data", "bind"),
            ])
            .linux(
                LinuxBuilder::default()
                    .masked_paths(vec!["/proc/kcore".to_string(), "/sys/firmware".to_string(), "/data/secret".to_string()])
                    .readonly_paths(vec!["/proc/sys".to_string()])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn sysfs_cgroup_and_mqueue_and_their_paths_are_dropped() {
        let narrowed = without_kernel_filesystems(&spec()).expect("changed");
        let dests: Vec<_> = narrowed.mounts().as_ref().unwrap().iter().map(|m| m.destination().clone()).collect();
        let expected = ["/proc", "/dev", "/dev/pts", "/data"].map(PathBuf::from);
        assert_eq!(dests, expected);
        let linux = narrowed.linux().as_ref().unwrap();
        // Those under /proc go too: it is covered whole.
        assert_eq!(linux.masked_paths().as_deref(), Some(&["/data/secret".to_string()][..]));
        assert_eq!(linux.readonly_paths().as_deref(), Some(&[][..]));
    }

    #[test]
    fn paths_under_proc_alone_are_dropped_too() {
        let linux = oci_spec::runtime::LinuxBuilder::default()
            .masked_paths(vec!["/proc/kcore".to_string(), "/data/secret".to_string()])
            .readonly_paths(vec!["/proc/sys".to_string()])
            .build()
            .unwrap();
        let spec = SpecBuilder::default().mounts(vec![mount("/proc", "proc"), mount("/data", "bind")]).linux(linux).build().unwrap();
        let narrowed = without_kernel_filesystems(&spec).expect("changed");
        assert_eq!(narrowed.mounts(), spec.mounts(), "the mounts stay");
        let linux = narrowed.linux().as_ref().unwrap();
        assert_eq!(linux.masked_paths().as_deref(), Some(&["/data/secret".to_string()][..]));
        assert_eq!(linux.readonly_paths().as_deref(), Some(&[][..]));
    }

    #[test]
    fn a_spec_rewritten_in_place_over_a_longer_one_loads_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        spec().save(&path).expect("save");
        let narrowed = without_kernel_filesystems(&spec()).expect("changed");
        let before = std::fs::metadata(&path).expect("written").len();
        rewrite_in_place(&path, &narrowed).expect("rewrite");
        assert!(std::fs::metadata(&path).expect("rewritten").len() < before, "nothing of the longer spec is left after it");
        let loaded = Spec::load(&path).expect("load");
        assert_eq!(loaded.mounts(), narrowed.mounts());
        // And over a shorter one.
        rewrite_in_place(&path, &spec()).expect("rewrite");
        assert_eq!(Spec::load(&path).expect("load").mounts(), spec().mounts());
    }

    #[test]
    fn a_spec_without_them_is_left_alone() {
        let linux = oci_spec::runtime::LinuxBuilder::default()
            .masked_paths(vec!["/data/secret".to_string()])
            .readonly_paths(vec![])
            .build()
            .unwrap();
        let spec = SpecBuilder::default().mounts(vec![mount("/proc", "proc"), mount("/data", "bind")]).linux(linux).build().unwrap();
        assert!(without_kernel_filesystems(&spec).is_none());
    }
}
