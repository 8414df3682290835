//! What a wasm container's init tells the shim as its guest ends, on a
//! pipe: the exit code, and whether the guest ran out of memory.
//!
//! The guest's end is known to the init before the kernel has torn the
//! process down: sched_switch traces of `ctr run --rm` hello showed 0.5 to
//! 0.9 ms between the guest's return and the shim's SIGCHLD (the process
//! unmapping the runtime's address space, its namespaces going, while the
//! client's threads took the same cpu). The shim answers Wait from the
//! report and finishes the exit (the rootfs, the held namespace) once it
//! reaps the process; Delete waits for that reap.
//!
//! The report is one write of [`REPORT_LEN`] bytes, below PIPE_BUF, so it
//! arrives whole or not at all. A process that is killed writes none: its
//! exit is known from the reap alone, as a native process's is.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// The marker byte that starts a report.
const MARK: u8 = b'x';
/// Marker, out-of-memory flag, exit code (i32, little endian).
pub const REPORT_LEN: usize = 6;

/// What the guest said, once it said it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuestReport {
    /// The guest's exit code, None until it reported.
    pub exit_code: Option<i32>,
    /// The guest ended by running out of memory.
    pub out_of_memory: bool,
}

impl GuestReport {
    fn encode(code: i32, out_of_memory: bool) -> [u8; REPORT_LEN] {
        let c = code.to_le_bytes();
        [MARK, out_of_memory as u8, c[0], c[1], c[2], c[3]]
    }

    /// The report in `bytes`, when they are one.
    fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [MARK, oom, a, b, c, d] => Some(Self { exit_code: Some(i32::from_le_bytes([*a, *b, *c, *d])), out_of_memory: *oom != 0 }),
            _ => None,
        }
    }
}

/// Report the guest's end on the pipe's write end `fd` (the init, just
/// before it exits). A failed write only loses the early report.
pub fn send(fd: RawFd, code: i32, out_of_memory: bool) {
    let report = GuestReport::encode(code, out_of_memory);
    // SAFETY: fd is the pipe's write end, kept open for this; the buffer
    // is valid for its length.
    unsafe { libc::write(fd, report.as_ptr().cast(), report.len()) };
}

/// The shim's end of the pipe, and what was read from it so far.
#[derive(Debug)]
pub struct GuestReportPipe {
    read: OwnedFd,
    report: GuestReport,
}

impl GuestReportPipe {
    /// A pipe whose write end goes to the container (through its job).
    pub fn new() -> nix::Result<(Self, OwnedFd)> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        Ok((Self { read, report: GuestReport::default() }, write))
    }

    /// The read end, to wait on (the shim's runtime polls it).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// What the guest reported: read now without waiting, and kept.
    pub fn read(&mut self) -> GuestReport {
        if self.report.exit_code.is_none() {
            let mut buf = [0u8; REPORT_LEN];
            if let Ok(REPORT_LEN) = nix::unistd::read(self.read.as_raw_fd(), &mut buf) {
                if let Some(report) = GuestReport::decode(&buf) {
                    self.report = report;
                }
            }
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_arrives_as_sent_and_is_kept() {
        let (mut pipe, write) = GuestReportPipe::new().expect("pipe");
        assert_eq!(pipe.read(), GuestReport::default(), "nothing sent yet, and no wait");
        send(write.as_raw_fd(), 137, true);
        let expected = GuestReport { exit_code: Some(137), out_of_memory: true };
        assert_eq!(pipe.read(), expected);
        assert_eq!(pipe.read(), expected, "kept once read");
    }

    #[test]
    fn codes_round_trip_and_other_bytes_are_no_report() {
        for code in [0, 1, 42, 255, -1, i32::MAX] {
            assert_eq!(GuestReport::decode(&GuestReport::encode(code, false)), Some(GuestReport { exit_code: Some(code), out_of_memory: false }));
        }
        assert_eq!(GuestReport::decode(b"!"), None);
        assert_eq!(GuestReport::decode(b"y\0\0\0\0\0"), None);
    }

    #[test]
    fn a_closed_pipe_without_a_report_says_nothing() {
        let (mut pipe, write) = GuestReportPipe::new().expect("pipe");
        drop(write);
        assert_eq!(pipe.read(), GuestReport::default());
    }
}
