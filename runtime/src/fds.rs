//! The descriptors a process holds, for the forked processes (spawner,
//! wasm container) that must let go of what they inherited.

use std::os::fd::RawFd;

/// This process's open descriptors above stderr, read from /proc/self/fd.
/// The listing's own descriptor is among them, closed by the time this
/// returns: closing or inspecting it fails harmlessly with EBADF.
pub(crate) fn open_above_stdio() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect())
        .unwrap_or_default()
}
