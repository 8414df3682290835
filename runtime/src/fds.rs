//! The descriptors a process holds, for the forked processes (spawner,
//! wasm container, the shim's serving process) that must let go of what
//! they inherited.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Descriptors a wasm process cloned from this one keeps (see
/// [`keep_in_clones`]).
static KEPT_IN_CLONES: std::sync::OnceLock<Vec<RawFd>> = std::sync::OnceLock::new();

/// Have wasm processes cloned from this process keep `fds`, the
/// descriptors of its tokio runtime (the serving shim's ttrpc runtime).
/// Cloned without the spawner (it was killed, or HYBRID_SPAWNER=off), such
/// a process inherits that runtime's process-wide state, tokio's signal
/// pipe among it, and its own runtime (wasmtime-wasi's) uses that state:
/// with the descriptors closed it fails (EBADF). So does the shim's log
/// fifo, which such a process's copy of the logger writes to. The spawner
/// is forked before the runtime and the logger exist, so what it clones
/// inherits none of them.
pub fn keep_in_clones(fds: Vec<RawFd>) {
    let _ = KEPT_IN_CLONES.set(fds);
}

/// Run `open`, and answer what it returned with the descriptors it left
/// open (those listed after it and not before). Each listing's own
/// descriptor, closed by then, is told apart by F_GETFD failing: left in
/// the first listing, its number, free again, would hide the first
/// descriptor `open` opens.
pub fn opened_by<T>(open: impl FnOnce() -> T) -> (T, Vec<RawFd>) {
    let listed = || -> Vec<RawFd> {
        // SAFETY: F_GETFD only reads a descriptor's flags.
        open_above_stdio().into_iter().filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0).collect()
    };
    let before = listed();
    let opened = open();
    let fds = listed().into_iter().filter(|fd| !before.contains(fd)).collect();
    (opened, fds)
}

pub(crate) fn kept_in_clones() -> &'static [RawFd] {
    KEPT_IN_CLONES.get().map(Vec::as_slice).unwrap_or_default()
}

/// This process's open descriptors above stderr, read from /proc/self/fd
/// (none where it cannot be read: see [`listed_above_stdio`]). The
/// listing's own descriptor is among them, closed by the time this
/// returns: closing or inspecting it fails harmlessly with EBADF.
pub fn open_above_stdio() -> Vec<RawFd> {
    listed_above_stdio().unwrap_or_default()
}

/// [`open_above_stdio`], or None when /proc/self/fd cannot be read (a
/// wasm container's /proc is covered: see guest_mounts.rs).
pub fn listed_above_stdio() -> Option<Vec<RawFd>> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect())
}

/// Whether `fd` turned readable (data, end of file, or for a pidfd its
/// process's exit) within `timeout`; a wait a signal interrupts goes on.
pub fn readable_within(fd: impl AsFd, timeout: Duration) -> std::io::Result<bool> {
    let timeout = nix::poll::PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32).unwrap_or(nix::poll::PollTimeout::MAX);
    let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
    loop {
        match nix::poll::poll(&mut fds, timeout) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A descriptor of process `pid` that turns readable when it exits
/// (pidfd_open).
pub fn pidfd(pid: nix::unistd::Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor or -1; no memory is passed.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    match RawFd::try_from(raw) {
        Ok(fd) if fd >= 0 => {
            // SAFETY: a descriptor just opened here, owned by nothing else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        _ => Err(std::io::Error::last_os_error()),
    }
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

/// The most descriptors [`receive_with_fds`] takes with one message (a
/// job's: stdio, the oom pipe, the ready pipe).
const MAX_FDS_PER_MESSAGE: usize = 8;

/// Send `bytes` as one message on the unix socket `socket`, with `fds`
/// (copies of them arrive with it).
pub(crate) fn send_with_fds(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<UnixAddr>(socket, &[std::io::IoSlice::new(bytes)], cmsgs, MsgFlags::MSG_NOSIGNAL, None).map(|_| ())
}

/// One message of at most `max_len` bytes from the unix socket `socket`,
/// and the descriptors that came with it (close-on-exec, owned here);
/// ECONNRESET when the other end is closed.
pub(crate) fn receive_with_fds(socket: RawFd, max_len: usize) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    let mut buf = vec![0u8; max_len];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<UnixAddr>(socket, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let len = msg.bytes;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: SCM_RIGHTS descriptors are new in this process and
            // owned by nobody else.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if len == 0 {
        return Err(nix::errno::Errno::ECONNRESET);
    }
    buf.truncate(len);
    Ok((buf, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opened_by_answers_each_descriptor_opened_the_lowest_free_number_too() {
        // The first file takes the lowest free number, the one the first
        // listing's own descriptor had. Other tests' threads may open
        // descriptors meanwhile: what was opened here must be among those
        // answered.
        let ((first, second), fds) = opened_by(|| {
            let open = || std::fs::File::open("/dev/null").expect("/dev/null");
            (open(), open())
        });
        for file in [&first, &second] {
            assert!(fds.contains(&file.as_raw_fd()), "{} not in {fds:?}", file.as_raw_fd());
        }
    }

    #[test]
    fn readable_within_tells_data_end_of_file_and_nothing_apart() {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        assert!(!readable_within(&read, Duration::from_millis(10)).expect("poll"), "nothing written yet");
        nix::unistd::write(&write, b"x").expect("write");
        assert!(readable_within(&read, Duration::from_millis(10)).expect("poll"), "a byte");
        let (read, write) = nix::unistd::pipe().expect("pipe");
        drop(write);
        assert!(readable_within(&read, Duration::from_millis(10)).expect("poll"), "end of file");
    }

    #[test]
    fn a_pidfd_turns_readable_when_its_process_exits() {
        let mut child = std::process::Command::new("sleep").arg("0.05").spawn().expect("sleep");
        let pidfd = pidfd(nix::unistd::Pid::from_raw(child.id() as i32)).expect("pidfd");
        assert!(readable_within(&pidfd, Duration::from_secs(10)).expect("poll"), "the exit");
        child.wait().expect("reap");
    }
}
