//! The descriptors a process holds, for the forked processes (spawner,
//! wasm container, the shim's serving process) that must let go of what
//! they inherited.

use std::os::fd::{AsRawFd, RawFd};

/// Descriptors a wasm process cloned from this one keeps (see
/// [`keep_in_clones`]).
static KEPT_IN_CLONES: std::sync::OnceLock<Vec<RawFd>> = std::sync::OnceLock::new();

/// Have wasm processes cloned from this process keep `fds`, the
/// descriptors of its tokio runtime (the serving shim's ttrpc runtime).
/// Cloned without the spawner (it was killed, or HYBRID_SPAWNER=off), such
/// a process inherits that runtime's process-wide state, tokio's signal
/// pipe among it, and its own runtime (wasmtime-wasi's) uses that state:
/// with the descriptors closed it fails (EBADF). The spawner is forked
/// before the runtime exists, so what it clones inherits neither.
pub fn keep_in_clones(fds: Vec<RawFd>) {
    let _ = KEPT_IN_CLONES.set(fds);
}

/// Run `open`, and answer what it returned with the descriptors it left
/// open (those listed after it and not before; the listing's own
/// descriptor, closed by then, is told apart by F_GETFD failing).
pub fn opened_by<T>(open: impl FnOnce() -> T) -> (T, Vec<RawFd>) {
    let before = open_above_stdio();
    let opened = open();
    let fds = open_above_stdio()
        .into_iter()
        // SAFETY: F_GETFD only reads a descriptor's flags.
        .filter(|fd| !before.contains(fd) && unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0)
        .collect();
    (opened, fds)
}

pub(crate) fn kept_in_clones() -> &'static [RawFd] {
    KEPT_IN_CLONES.get().map(Vec::as_slice).unwrap_or_default()
}

/// This process's open descriptors above stderr, read from /proc/self/fd.
/// The listing's own descriptor is among them, closed by the time this
/// returns: closing or inspecting it fails harmlessly with EBADF.
pub fn open_above_stdio() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect())
        .unwrap_or_default()
}

/// Point stdin, stdout and stderr at /dev/null: a forked process lets go
/// of its parent's stdio (pipes whose readers wait for every holder to
/// close them, as containerd does on `start`'s). Only for a
/// single-threaded process: the descriptors change under any other thread.
pub fn stdio_to_dev_null() -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    for fd in 0..3 {
        // SAFETY: dup2 onto this single-threaded process's standard
        // descriptors; `null` stays valid meanwhile.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
