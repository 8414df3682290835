//! `binary://` stdio: containerd's log-driver protocol, as its runc shim
//! implements it. The binary (the URI's path, its query pairs as arguments,
//! `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its environment) reads the
//! process's stdout on fd 3 and stderr on fd 4, and closes (or writes to)
//! fd 5 once it is ready. It ends when the process's output ends.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::stdio::StdioError;

/// How long the binary may take to say it is ready, as containerd allows.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Who the output belongs to, for the binary's environment.
#[derive(Debug, Clone, Default)]
pub struct LogOwner {
    pub id: String,
    pub namespace: String,
}

fn refused(uri: &str, message: impl Into<String>) -> StdioError {
    StdioError::Open {
        name: "stdout",
        path: PathBuf::from(uri),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, message.into()),
    }
}

fn failed(uri: &str, source: std::io::Error) -> StdioError {
    StdioError::Open { name: "stdout", path: PathBuf::from(uri), source }
}

/// The binary and its arguments from `binary:///path?key=value&flag`.
fn command_line(uri: &str) -> Result<(PathBuf, Vec<String>), StdioError> {
    let parsed = url::Url::parse(uri).map_err(|e| refused(uri, format!("not a valid uri: {e}")))?;
    if parsed.scheme() != "binary" {
        return Err(refused(uri, "not a binary:// uri"));
    }
    let path = PathBuf::from(parsed.path());
    if !path.is_absolute() || parsed.path().len() <= 1 {
        return Err(refused(uri, "a binary:// log driver needs an absolute path"));
    }
    let mut args = Vec::new();
    for (key, value) in parsed.query_pairs() {
        args.push(key.into_owned());
        if !value.is_empty() {
            args.push(value.into_owned());
        }
    }
    Ok((path, args))
}

/// Start the log driver; returns the write ends for stdout and stderr once
/// it is ready.
pub fn spawn(uri: &str, owner: &LogOwner) -> Result<(File, File), StdioError> {
    let (binary, args) = command_line(uri)?;
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| failed(uri, e.into()));
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let inherited: [RawFd; 3] = [stdout_r.as_raw_fd(), stderr_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut command = Command::new(&binary);
    command
        .args(&args)
        .env("CONTAINER_ID", &owner.id)
        .env("CONTAINER_NAMESPACE", &owner.namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec the closure only calls fcntl and dup2,
    // which are async-signal-safe, on descriptors it was given.
    unsafe {
        command.pre_exec(move || place_fds(&inherited));
    }
    command.spawn().map_err(|e| failed(uri, std::io::Error::new(e.kind(), format!("cannot start {binary:?}: {e}"))))?;
    // The binary holds its own copies now; ours must go, or it would never
    // see the end of the output nor we the end of its ready pipe.
    drop((stdout_r, stderr_r, ready_w));
    wait_ready(uri, ready_r)?;
    Ok((File::from(stdout_w), File::from(stderr_w)))
}

/// In the child: fds 3, 4 and 5 become `fds`, without close-on-exec. Moved
/// above 5 first, so that no target overwrites a source still to be moved.
fn place_fds(fds: &[RawFd; 3]) -> std::io::Result<()> {
    let mut high = [0; 3];
    for (slot, fd) in high.iter_mut().zip(fds) {
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor from a valid one.
        *slot = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) };
        if *slot < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (target, fd) in (3..).zip(high) {
        // SAFETY: dup2 onto 3..=5 replaces whatever was there; the new
        // descriptor does not have close-on-exec.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A byte or EOF on the ready pipe means ready; nothing in time is an error.
fn wait_ready(uri: &str, ready: OwnedFd) -> Result<(), StdioError> {
    match crate::fds::readable_within(&ready, READY_TIMEOUT) {
        Ok(true) => Ok(()),
        Ok(false) => Err(refused(uri, format!("the log driver did not get ready within {READY_TIMEOUT:?}"))),
        Err(e) => Err(failed(uri, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn query_pairs_become_arguments() {
        let (path, args) = command_line("binary:///usr/bin/logger?--tag=app&-v").expect("parse");
        assert_eq!(path, PathBuf::from("/usr/bin/logger"));
        assert_eq!(args, ["--tag", "app", "-v"]);
    }

    #[test]
    fn a_relative_or_empty_path_is_refused_by_name() {
        for uri in ["binary://", "binary:///"] {
            let err = command_line(uri).expect_err("must fail");
            assert!(err.to_string().contains(uri), "{err}");
        }
    }

    #[test]
    fn the_driver_gets_stdout_on_fd_3_and_stderr_on_fd_4() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let script = dir.path().join("driver");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nexec 5>&-\ncat <&3 > {0}.1 & cat <&4 > {0}.2; wait\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID $1\" > {0}.env\n", out.display()),
        )
        .expect("write driver");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let owner = LogOwner { id: "c1".into(), namespace: "ns".into() };
        let (mut stdout, mut stderr) = spawn(&format!("binary://{}?hello", script.display()), &owner).expect("spawn");
        stdout.write_all(b"to stdout\n").expect("write");
        stderr.write_all(b"to stderr\n").expect("write");
        drop((stdout, stderr));
        let env_file = PathBuf::from(format!("{}.env", out.display()));
        for _ in 0..200 {
            if env_file.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(std::fs::read_to_string(format!("{}.1", out.display())).expect("stdout"), "to stdout\n");
        assert_eq!(std::fs::read_to_string(format!("{}.2", out.display())).expect("stderr"), "to stderr\n");
        assert_eq!(std::fs::read_to_string(&env_file).expect("env"), "ns/c1 hello\n");
    }
}
