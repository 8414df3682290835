//! A process with a terminal (`terminal: true` in its OCI process): the
//! pseudo-terminal is made inside the container, whose end we receive on a
//! console socket, then copied to and from containerd's stdio fifos, as
//! runc's console socket and containerd's runc shim do.

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::os::unix::fs::DirBuilderExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

use crate::stdio::{open_input_with_closer, open_output, StdioError, StdioPaths};

/// How long the container may take to send its terminal once created.
const MASTER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    #[error("console socket {path:?}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("console socket {path:?}: the container sent no terminal within {timeout:?}")]
    NoMaster { path: PathBuf, timeout: Duration },
    #[error("console socket {path:?}: the message carried no terminal descriptor")]
    NoDescriptor { path: PathBuf },
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error("terminal resize to {width}x{height}: {source}")]
    Resize { width: u32, height: u32, source: std::io::Error },
}

/// The listening end of a console socket: libcontainer connects to it while
/// it builds the container and the container's init sends the pty master.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// Console sockets live here (`tty` under the shim's state root) under
/// short names: a unix socket path has at most 107 bytes, which container
/// and exec ids (64 hex each) would pass.
const CONSOLE_SOCKET_DIR: &str = "tty";

impl ConsoleSocket {
    /// A new socket with a name unique to this process.
    pub fn new() -> Result<Self, TtyError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = Path::new(crate::state_in_memory::SHIM_STATE_ROOT).join(CONSOLE_SOCKET_DIR);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}.sock", std::process::id()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TtyError::Socket { path: path.clone(), source })?;
        Self::bind(&path)
    }

    pub fn bind(path: &Path) -> Result<Self, TtyError> {
        let socket_err = |source| TtyError::Socket { path: path.to_path_buf(), source };
        // A socket left by a crashed shim would make bind fail.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(socket_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(socket_err)?;
        listener.set_nonblocking(true).map_err(socket_err)?;
        Ok(Self { listener, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pty master, once the container sent it. libcontainer connects
    /// before it returns from create (the connection waits in the backlog),
    /// so a bounded wait here cannot miss it.
    pub fn receive_master(self) -> Result<OwnedFd, TtyError> {
        let socket_err = |source| TtyError::Socket { path: self.path.clone(), source };
        let started = Instant::now();
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if started.elapsed() > MASTER_TIMEOUT {
                        return Err(TtyError::NoMaster { path: self.path.clone(), timeout: MASTER_TIMEOUT });
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(socket_err(e)),
            }
        };
        stream.set_read_timeout(Some(MASTER_TIMEOUT)).map_err(socket_err)?;
        let mut name = [0u8; 256];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<UnixAddr>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| socket_err(e.into()))?;
        let mut master = None;
        for cmsg in msg.cmsgs().map_err(|e| socket_err(e.into()))? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: SCM_RIGHTS gave this process a new descriptor
                    // that nothing else owns; the first becomes the master,
                    // any other is closed when dropped.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if master.is_none() {
                        master = Some(owned);
                    }
                }
            }
        }
        master.ok_or(TtyError::NoDescriptor { path: self.path.clone() })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A process's terminal, with its copies to and from containerd running.
pub struct Console {
    master: Arc<File>,
    /// Our own write end of the stdin fifo, so that stdin reaches EOF only
    /// when containerd asks (CloseIO), not when a client detaches.
    stdin_closer: Option<File>,
    output_done: mpsc::Receiver<()>,
}

impl Console {
    /// Start copying: containerd's stdin → the terminal, the terminal →
    /// containerd's stdout. A terminal has no separate stderr.
    pub fn start(master: OwnedFd, stdio: &StdioPaths, id: &str) -> Result<Self, TtyError> {
        let master = Arc::new(File::from(master));
        let (output_tx, output_done) = mpsc::channel();
        let mut stdout = open_output("stdout", &stdio.stdout)?;
        let reader = master.clone();
        spawn(format!("tty-out-{id}"), move || {
            let mut buf = [0u8; 8192];
            // EIO once every holder of the terminal's other end is gone.
            while let Ok(n @ 1..) = (&*reader).read(&mut buf) {
                if stdout.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = output_tx.send(());
        });
        let mut stdin_closer = None;
        if !stdio.stdin.is_empty() {
            let (mut stdin, closer) = open_input_with_closer(&stdio.stdin)?;
            stdin_closer = Some(closer);
            let writer = master.clone();
            spawn(format!("tty-in-{id}"), move || {
                let mut buf = [0u8; 8192];
                loop {
                    match stdin.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if (&*writer).write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                // End of input on a terminal is its EOF character, as when
                // a user types ^D at the start of a line.
                let _ = (&*writer).write_all(&[eof_char(&writer)]);
            });
        }
        Ok(Self { master, stdin_closer, output_done })
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<(), TtyError> {
        let size = libc::winsize {
            ws_row: u16::try_from(height).unwrap_or(u16::MAX),
            ws_col: u16::try_from(width).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize struct, which `size` is, from
        // a descriptor this Console owns.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(TtyError::Resize { width, height, source: std::io::Error::last_os_error() });
        }
        Ok(())
    }

    /// containerd's CloseIO: stdin ends once containerd's writer is closed.
    pub fn close_stdin(&mut self) {
        self.stdin_closer = None;
    }

    /// Wait (bounded) until the output copy has drained the terminal, so that
    /// the exit is reported after the last output.
    pub fn wait_output(&self, timeout: Duration) -> bool {
        matches!(self.output_done.recv_timeout(timeout), Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected))
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = crate::fork_guard::spawn(name.clone(), f) {
        tracing::warn!("cannot start {name}: {e}");
    }
}

/// The terminal's EOF character (VEOF), ^D unless the process changed it.
fn eof_char(master: &File) -> u8 {
    nix::sys::termios::tcgetattr(master)
        .map(|t| t.control_chars[libc::VEOF])
        .unwrap_or(4)
}
