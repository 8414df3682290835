//! The container's stdio, from the paths containerd hands over (its fifos).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::logdriver::LogOwner;

/// How long to wait for containerd's end of an output fifo to be open.
const FIFO_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot open {name} {path:?}: {source}")]
    Open {
        name: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no reader opened {name} fifo {path:?} within {timeout:?}")]
    NoReader {
        name: &'static str,
        path: PathBuf,
        timeout: Duration,
    },
}

/// Paths of the three streams; an empty path means /dev/null.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

/// The opened streams, ready to hand to the container's process.
#[derive(Debug)]
pub struct Stdio {
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
}

impl StdioPaths {
    pub fn open(&self) -> Result<Stdio, StdioError> {
        self.open_for(&LogOwner::default())
    }

    /// Open the streams of `owner`'s process; a `binary://` stdout starts
    /// that log driver, which takes stderr too (as containerd's runc shim).
    pub fn open_for(&self, owner: &LogOwner) -> Result<Stdio, StdioError> {
        if self.stdout.starts_with("binary://") {
            let (stdout, stderr) = crate::logdriver::spawn(&self.stdout, owner)?;
            return Ok(Stdio { stdin: open_input(&self.stdin)?, stdout, stderr });
        }
        Ok(Stdio {
            stdin: open_input(&self.stdin)?,
            stdout: open_output("stdout", &self.stdout)?,
            stderr: open_output("stderr", &self.stderr)?,
        })
    }
}

/// Read ends of a process's output fifos, held by the shim for as long as
/// the process is known. containerd's reader (ctr's copy, an attach) may go
/// away while the process runs, and a fifo with no reader fails every write
/// with EPIPE: a process printing after `ctr run -d` returned would fail
/// (a Rust guest panics, exit 101). runc's shim holds such read ends too:
/// with nobody reading, output fills the fifo and the writer then waits, as
/// with any pipe.
#[derive(Debug, Default)]
pub struct HeldFifos(Vec<File>);

impl HeldFifos {
    /// How many fifos are held.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl StdioPaths {
    /// Hold a read end of each output that is a fifo (not /dev/null, not a
    /// `file://` or `binary://` URI). Best effort: a fifo that cannot be
    /// opened is logged and left as it was.
    pub fn hold_output_fifos(&self) -> HeldFifos {
        let fifos = [&self.stdout, &self.stderr]
            .into_iter()
            .filter(|path| !path.is_empty() && !path.contains("://"))
            .filter_map(|path| {
                // Non-blocking: a fifo's read end opens at once, writer or not.
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(path)
                    .map_err(|e| tracing::warn!("cannot hold output fifo {path:?} open: {e}"))
                    .ok()
            })
            .collect();
        HeldFifos(fifos)
    }
}

fn dev_null(name: &'static str, write: bool) -> Result<File, StdioError> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(|source| StdioError::Open {
            name,
            path: PathBuf::from("/dev/null"),
            source,
        })
}

fn clear_nonblock(name: &'static str, path: &Path, file: &File) -> Result<(), StdioError> {
    let open_err = |e: nix::Error| StdioError::Open {
        name,
        path: path.to_path_buf(),
        source: e.into(),
    };
    let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL).map_err(open_err)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(open_err)?;
    Ok(())
}

/// stdin: opening the read end of a fifo without O_NONBLOCK would wait for a
/// writer; open non-blocking, then make reads block as the process expects.
fn open_input(path: &str) -> Result<File, StdioError> {
    if path.is_empty() {
        return dev_null("stdin", false);
    }
    let path = Path::new(path);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| StdioError::Open { name: "stdin", path: path.to_path_buf(), source })?;
    clear_nonblock("stdin", path, &file)?;
    Ok(file)
}

/// stdin copied by the shim (a terminal's): the read end, and our own write
/// end so that reads block rather than see EOF until the closer is dropped.
pub(crate) fn open_input_with_closer(path: &str) -> Result<(File, File), StdioError> {
    let reader = open_input(path)?;
    let path = Path::new(path);
    let closer = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| StdioError::Open { name: "stdin", path: path.to_path_buf(), source })?;
    Ok((reader, closer))
}

/// stdout/stderr: a fifo's write end opens only once a reader is there
/// (ENXIO before). containerd opens its end before Create; wait a bounded
/// time rather than block forever if it did not.
pub(crate) fn open_output(name: &'static str, path: &str) -> Result<File, StdioError> {
    if path.is_empty() {
        return dev_null(name, true);
    }
    if let Some(file) = path.strip_prefix("file://") {
        return open_log_file(name, file);
    }
    if path.contains("://") {
        return Err(StdioError::Open {
            name,
            path: PathBuf::from(path),
            source: std::io::Error::new(std::io::ErrorKind::Unsupported, "only fifo paths, file:// and binary:// URIs are supported"),
        });
    }
    let path = Path::new(path);
    let started = Instant::now();
    // The client opens its end from a thread of its own (containerd's fifo
    // package, ctr's copy loops), usually within a millisecond of Create:
    // look again soon, then less often. A flat 5 ms here cost a whole 5 ms
    // whenever the first look came a hair early.
    let mut pause = Duration::from_micros(100);
    loop {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => {
                clear_nonblock(name, path, &file)?;
                return Ok(file);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if started.elapsed() > FIFO_OPEN_TIMEOUT {
                    return Err(StdioError::NoReader { name, path: path.to_path_buf(), timeout: FIFO_OPEN_TIMEOUT });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            Err(source) => return Err(StdioError::Open { name, path: path.to_path_buf(), source }),
        }
    }
}

/// `file:///path` (ctr run --log-uri): stdout and stderr appended to a file.
fn open_log_file(name: &'static str, path: &str) -> Result<File, StdioError> {
    let path = Path::new(path);
    let open_err = |source| StdioError::Open { name, path: path.to_path_buf(), source };
    if !path.is_absolute() {
        return Err(open_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a file:// log path must be absolute")));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(open_err)?;
    }
    OpenOptions::new().create(true).append(true).open(path).map_err(open_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A fifo with containerd's reader open, as at Create.
    fn fifo_with_reader(dir: &Path, name: &str) -> (String, File) {
        let path = dir.join(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).expect("reader");
        (path.display().to_string(), reader)
    }

    #[test]
    fn held_fifos_keep_writes_working_after_the_reader_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stdout, containerd_reader) = fifo_with_reader(dir.path(), "out");
        let paths = StdioPaths { stdout, stderr: format!("file://{}/err.log", dir.path().display()), ..Default::default() };
        let mut stdio = paths.open().expect("open");
        let held = paths.hold_output_fifos();
        assert_eq!(held.len(), 1, "the fifo is held, the file:// log and /dev/null are not");
        drop(containerd_reader);
        stdio.stdout.write_all(b"after the client left\n").expect("no EPIPE while held");
        drop(held);
        let err = stdio.stdout.write_all(b"nobody holds it\n").expect_err("EPIPE once nothing reads");
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn an_output_fifo_whose_reader_comes_late_is_opened_and_carries_the_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("late");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let reader_path = path.clone();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let mut reader = File::open(&reader_path).expect("reader");
            let mut got = String::new();
            reader.read_to_string(&mut got).expect("read");
            got
        });
        let mut out = open_output("stdout", &path.display().to_string()).expect("opened once the reader came");
        out.write_all(b"late but whole\n").expect("write");
        drop(out);
        assert_eq!(reader.join().expect("reader thread"), "late but whole\n");
    }

    #[test]
    fn empty_paths_are_dev_null() {
        let stdio = StdioPaths::default().open().expect("open");
        drop(stdio);
    }

    #[test]
    fn regular_files_work_as_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        std::fs::write(&out, "").expect("create");
        let paths = StdioPaths { stdout: out.display().to_string(), ..Default::default() };
        let mut stdio = paths.open().expect("open");
        stdio.stdout.write_all(b"hello").expect("write");
        let mut got = String::new();
        File::open(&out).expect("reopen").read_to_string(&mut got).expect("read");
        assert_eq!(got, "hello");
    }

    #[test]
    fn file_uris_append_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("logs/task.log");
        let uri = format!("file://{}", log.display());
        let paths = StdioPaths { stdout: uri.clone(), stderr: uri, ..Default::default() };
        let mut stdio = paths.open().expect("open");
        stdio.stdout.write_all(b"out\n").expect("write");
        stdio.stderr.write_all(b"err\n").expect("write");
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "out\nerr\n");
    }

    #[test]
    fn unknown_uri_schemes_are_refused_by_name() {
        let paths = StdioPaths { stdout: "syslog://localhost".into(), ..Default::default() };
        let err = paths.open().expect_err("must fail");
        assert!(err.to_string().contains("syslog://localhost"), "{err}");
    }

    #[test]
    fn missing_stdin_names_the_path() {
        let paths = StdioPaths { stdin: "/nonexistent/stdin".into(), ..Default::default() };
        let err = paths.open().expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent/stdin"));
    }
}
