//! Create answered before the container's init is ready.
//!
//! A wasm container's init (direct_init.rs) sets the container up (its
//! mounts, pivot_root, libcontainer's procfs-checked lookups: about 3 ms
//! here) before it waits for Start, and containerd takes about 2 ms between
//! Create's answer and Start. runc's create (and libcontainer's builder)
//! makes the two wait for each other. Here the creator answers the
//! init's pid as soon as the init is forked and its state saved
//! ([`EarlyAnswer`]); the init tells its readiness later on a pipe the
//! shim made ([`ReadyPipe`]), itself, once confined (executor.rs), and the
//! creator tells a failure: the setup runs while containerd carries the
//! answer back and asks for Start. Start waits on the pipe and applies the
//! container's limits once the init is ready ([`Readiness`]), so the guest
//! never runs before its limits hold; it also waits for its creator's word
//! that its /proc is covered (guest_mounts::covered_pipe).
//!
//! What changes for the operator: a setup that fails after the answer (a
//! tmpfs or a limit the kernel refuses) fails Start instead of Create, with
//! the same message; the init then exits and is reaped as a container that
//! ended before it started, as one killed before Start is. (A missing bind
//! mount source, the common case, is still refused at Create:
//! mount_sources.rs.)

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest the shim waits for an init's readiness: the spawner's own
/// bound on a creator's answer (a setup that takes longer is stuck).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// A report is written at once, so it must fit in one pipe write
/// (PIPE_BUF); longer messages are cut.
const MAX_REPORT: usize = 3000;

/// What a creator answers for a job: the pid of the process it made, and
/// whether the container's readiness comes later on its [`ReadyPipe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Made {
    pub pid: i32,
    pub ready_later: bool,
}

impl Made {
    /// A process made whole before the answer.
    pub(crate) fn ready(pid: i32) -> Self {
        Self { pid, ready_later: false }
    }
}

/// How a creator answers before its job is done; none where the answer can
/// only come at the end (a forked copy of the shim, see
/// CloneJob::run_cleanly).
pub(crate) struct EarlyAnswer<'a> {
    send: Option<&'a mut dyn FnMut(Made)>,
    sent: bool,
}

impl<'a> EarlyAnswer<'a> {
    pub(crate) fn new(send: &'a mut dyn FnMut(Made)) -> Self {
        Self { send: Some(send), sent: false }
    }

    pub(crate) fn none() -> Self {
        Self { send: None, sent: false }
    }

    /// Whether an answer can go before the job is done.
    pub(crate) fn possible(&self) -> bool {
        self.send.is_some() && !self.sent
    }

    /// Answer `pid`, made, its readiness to come on the ready pipe.
    pub(crate) fn send(&mut self, pid: i32) {
        if let Some(send) = self.send.as_mut().filter(|_| !self.sent) {
            send(Made { pid, ready_later: true });
            self.sent = true;
        }
    }

    /// Whether the answer went: what is left is told on the ready pipe.
    pub(crate) fn sent(&self) -> bool {
        self.sent
    }
}

/// The shim's end of the pipe a creator tells the init's readiness on.
#[derive(Debug)]
pub(crate) struct ReadyPipe(OwnedFd);

impl ReadyPipe {
    /// The pipe, and its write end for the creator (sent with the job).
    pub(crate) fn new() -> std::io::Result<(Self, OwnedFd)> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok((Self(read), write))
    }

    /// Whether the creator has told (or is gone): [`wait`](Self::wait)
    /// then answers at once.
    pub(crate) fn told(&self) -> bool {
        matches!(crate::fds::readable_within(&self.0, std::time::Duration::ZERO), Ok(true))
    }

    /// Wait for the creator's report: Ok once the init is ready, or why it
    /// is not (the creator gone without a word counts as a failure).
    pub(crate) fn wait(&self) -> Result<(), String> {
        match crate::fds::readable_within(&self.0, READY_TIMEOUT) {
            Ok(true) => {}
            Ok(false) => return Err(format!("the container's init was not ready within {READY_TIMEOUT:?}")),
            Err(e) => return Err(format!("cannot wait for the container's init: {e}")),
        }
        let mut buf = [0u8; 4096];
        let n = loop {
            match nix::unistd::read(self.0.as_raw_fd(), &mut buf) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.map_err(|e| format!("cannot read the container's readiness: {e}"))?,
            }
        };
        if n == 0 {
            return Err("the container's creator ended before its init was ready".to_string());
        }
        // The init tells its readiness itself (executor.rs); its creator
        // may tell a failure after it (the /proc it could not cover): a
        // failure told wins.
        let mut told = serde_json::Deserializer::from_slice(&buf[..n]).into_iter::<Result<(), String>>();
        let first = told.next().ok_or("an empty readiness report")?.map_err(|e| format!("bad readiness report: {e}"))?;
        told.flatten().find(Result::is_err).unwrap_or(first)
    }
}

/// In the creator or the init: tell the shim on the ready pipe's write end
/// `fd` how the init's setup ended. One write, so that the report arrives
/// whole.
pub(crate) fn report(fd: RawFd, status: Result<(), String>) {
    let status = status.map_err(|mut message| {
        if message.len() > MAX_REPORT {
            let mut end = MAX_REPORT;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        message
    });
    let bytes = serde_json::to_vec(&status).unwrap_or_default();
    // SAFETY: `fd` is the job's descriptor, open for the creator's life;
    // the borrow ends with this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = nix::unistd::write(fd, &bytes);
}

/// What is left of a Create once its init is ready (the container's
/// limits), or to undo when it is not.
pub(crate) trait AfterReady {
    type Output;
    fn ready(self) -> Result<Self::Output, String>;
    fn failed(self);
}

/// The rest of a Create, done once the init is ready by the first call
/// that needs it (Start, mostly; for a container left Created, the shim
/// looks again a little later). Start arrives before the init is ready
/// in nearly every run here (it waited 0.5 to 3.3 ms in 25 runs); a thread
/// of its own that did the work as soon as the init was ready made no
/// difference (80 A/B rounds) and is not used.
pub(crate) struct Readiness<W> {
    pipe: ReadyPipe,
    work: W,
}

impl<W: AfterReady> Readiness<W> {
    pub(crate) fn new(pipe: ReadyPipe, work: W) -> Self {
        Self { pipe, work }
    }

    /// Whether [`wait`](Self::wait) would answer at once.
    pub(crate) fn told(&self) -> bool {
        self.pipe.told()
    }

    /// Wait for the init's readiness, then do the work; undo it when the
    /// init is not ready.
    pub(crate) fn wait(self) -> Result<W::Output, String> {
        match self.pipe.wait() {
            Ok(()) => self.work.ready(),
            Err(e) => {
                self.work.failed();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    struct Work<'a>(&'a std::cell::Cell<&'static str>);

    impl AfterReady for Work<'_> {
        type Output = u8;
        fn ready(self) -> Result<u8, String> {
            self.0.set("ready");
            Ok(7)
        }
        fn failed(self) {
            self.0.set("failed");
        }
    }

    #[test]
    fn a_ready_report_lets_the_work_run() {
        let (pipe, write) = ReadyPipe::new().expect("pipe");
        report(write.as_raw_fd(), Ok(()));
        let done = std::cell::Cell::new("");
        assert_eq!(Readiness::new(pipe, Work(&done)).wait(), Ok(7));
        assert_eq!(done.get(), "ready");
    }

    #[test]
    fn a_failure_is_told_whole_and_the_work_undone() {
        let (pipe, write) = ReadyPipe::new().expect("pipe");
        report(write.as_raw_fd(), Err("failed to prepare rootfs: EINVAL".to_string()));
        let done = std::cell::Cell::new("");
        assert_eq!(Readiness::new(pipe, Work(&done)).wait(), Err("failed to prepare rootfs: EINVAL".to_string()));
        assert_eq!(done.get(), "failed");
    }

    #[test]
    fn told_only_once_the_creator_reported_or_is_gone() {
        let (pipe, write) = ReadyPipe::new().expect("pipe");
        let done = std::cell::Cell::new("");
        let readiness = Readiness::new(pipe, Work(&done));
        assert!(!readiness.told(), "nothing said yet");
        report(write.as_raw_fd(), Ok(()));
        assert!(readiness.told(), "a report");
        let (pipe, write) = ReadyPipe::new().expect("pipe");
        drop(write);
        assert!(pipe.told(), "the creator gone");
    }

    #[test]
    fn a_failure_told_after_the_init_s_readiness_wins() {
        let (pipe, write) = ReadyPipe::new().expect("pipe");
        report(write.as_raw_fd(), Ok(()));
        report(write.as_raw_fd(), Err("cannot cover /proc: EPERM".to_string()));
        assert_eq!(pipe.wait(), Err("cannot cover /proc: EPERM".to_string()));
    }

    #[test]
    fn a_creator_gone_without_a_word_is_a_failure() {
        let (pipe, write) = ReadyPipe::new().expect("pipe");
        drop(write);
        let err = pipe.wait().expect_err("no report");
        assert!(err.contains("creator ended"), "{err}");
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary_and_still_arrives() {
        let (pipe, write) = ReadyPipe::new().expect("pipe");
        report(write.as_raw_fd(), Err("é".repeat(MAX_REPORT)));
        let err = pipe.wait().expect_err("the failure");
        assert!(err.len() <= MAX_REPORT && err.chars().all(|c| c == 'é'), "{} bytes", err.len());
    }

    #[test]
    fn an_early_answer_goes_once() {
        let mut answers = Vec::new();
        let mut send = |made: Made| answers.push(made);
        let mut early = EarlyAnswer::new(&mut send);
        assert!(early.possible());
        early.send(41);
        early.send(42);
        assert!(early.sent() && !early.possible());
        drop(early);
        assert_eq!(answers, vec![Made { pid: 41, ready_later: true }]);
        assert!(!EarlyAnswer::none().possible());
    }
}
