//! A wasm init's compile cache entry, handed over after its fork.
//!
//! The shim checks a wasm module against the compile cache (its read, the
//! hashes of module and entry: about 0.7 ms of a Create) before the
//! container's creator may load it. The init needs the entry only at its
//! very end, when it starts loading the program while it waits for Start
//! (start_ahead.rs), some milliseconds after its fork. So where the
//! creator makes the init itself (direct_init.rs), the shim sends the job
//! first and checks the module while the creator joins the cgroups and
//! forks the init; it then sends the entry ([`LateEntry`]), which the
//! creator opens and passes on to the init over a socket pair made before
//! the fork ([`send_to_init`], [`receive_in_init`]). A module the shim
//! cannot compile still fails Create: the creator answers only once the
//! entry has come, and on a failure kills the init instead.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, OnceLock};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use serde::{Deserialize, Serialize};

use crate::compile_cache::ArtifactKind;
use crate::wasm::{CompiledEntry, PrecompiledEntry};

/// The shim's second message of a job whose entry comes later: the
/// module's checked entry, or why there is none (Create fails).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LateEntry(pub Result<CompiledEntry, String>);

/// The entry the init received, for its executor (see [`received`]).
static RECEIVED: OnceLock<PrecompiledEntry> = OnceLock::new();

/// The socket pair from the creator to its init: the creator's end, and
/// the init's (inherited through the fork).
pub(crate) fn pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
}

/// In the creator: pass `entry` (None: the init compiles the module
/// itself) on its end of the pair.
pub(crate) fn send_to_init(socket: &OwnedFd, entry: Option<&PrecompiledEntry>) -> nix::Result<()> {
    let kind = [match entry.map(|e| e.kind) {
        None => 0u8,
        Some(ArtifactKind::Module) => 1,
        Some(ArtifactKind::Component) => 2,
    }];
    let raw: Vec<RawFd> = entry.map(|e| e.file.as_raw_fd()).into_iter().collect();
    crate::fds::send_with_fds(socket.as_raw_fd(), &kind, &raw)
}

/// In the init: take the entry from its end of the pair, `fd`, which is
/// closed then; an entry that came is kept for [`received`].
pub(crate) fn receive_in_init(fd: RawFd) -> Result<(), String> {
    // SAFETY: `fd` is the init's end of the pair, inherited through the
    // fork and used by nothing else; it is owned (and closed) here.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let (kind, fds) = loop {
        match crate::fds::receive_with_fds(socket.as_raw_fd(), 1) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ECONNRESET) => return Err("the creator ended before it passed the compile cache entry".to_string()),
            other => break other.map_err(|e| format!("cannot receive the compile cache entry: {e}"))?,
        }
    };
    let kind = match kind[0] {
        0 => return Ok(()),
        1 => ArtifactKind::Module,
        _ => ArtifactKind::Component,
    };
    let file = fds.into_iter().next().ok_or("the compile cache entry came without its descriptor")?;
    let _ = RECEIVED.set(PrecompiledEntry { file: Arc::new(file), kind });
    Ok(())
}

/// The entry this process received from its creator, if any.
pub(crate) fn received() -> Option<&'static PrecompiledEntry> {
    RECEIVED.get()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn an_entry_passes_with_its_kind_and_contents() {
        let (creator, init) = pair().expect("pair");
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"machine code").expect("write");
        let entry = PrecompiledEntry { file: Arc::new(OwnedFd::from(file)), kind: ArtifactKind::Component };
        send_to_init(&creator, Some(&entry)).expect("send");
        let fd = std::os::fd::IntoRawFd::into_raw_fd(init);
        receive_in_init(fd).expect("receive");
        let got = received().expect("kept");
        assert_eq!(got.kind, ArtifactKind::Component);
        let mut file = std::fs::File::from(got.file.try_clone().expect("dup"));
        file.rewind().expect("rewind");
        let mut contents = String::new();
        file.read_to_string(&mut contents).expect("read");
        assert_eq!(contents, "machine code");
    }

    #[test]
    fn a_creator_gone_without_a_word_is_an_error() {
        let (creator, init) = pair().expect("pair");
        drop(creator);
        let fd = std::os::fd::IntoRawFd::into_raw_fd(init);
        assert!(receive_in_init(fd).is_err());
    }
}
