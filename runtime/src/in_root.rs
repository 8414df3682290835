//! Opening files inside a container's root, as its processes would see
//! them: absolute symlinks and `..` resolved within the root, never out.
//!
//! openat2 with RESOLVE_IN_ROOT does the resolution in the kernel, in one
//! call, to an O_PATH descriptor (opening nothing, so a FIFO or a device
//! planted at the path is never opened); a regular file is then reopened
//! for reading through the descriptor's /proc/self/fd link (this process's
//! /proc: the host's). pathrs, which did all of it before, reopens through
//! a procfs instance it mounts for itself and checks with readlinks: a
//! third of the cpu of a Create's thread (perf samples of the shim, hello
//! through containerd). pathrs stays the resolution on a kernel without
//! openat2 (before 5.6) or where a seccomp profile refuses it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

/// How often a resolution that raced with a rename is tried.
const OPEN_ATTEMPTS: u32 = 16;

/// A container's root directory, to open paths in.
pub struct ContainerRoot {
    dir: File,
}

impl ContainerRoot {
    /// `rootfs` as the root. Opened by std, which follows the
    /// `/proc/PID/root` an exec's root is given as (see exec.rs).
    pub fn open(rootfs: &Path) -> io::Result<Self> {
        Ok(Self { dir: File::open(rootfs)? })
    }

    /// The regular file at `path` inside the root, for reading; an error
    /// for anything else (a directory, a FIFO, a device).
    pub fn open_file(&self, path: &Path) -> io::Result<File> {
        let handle = self.open_path(path)?;
        require_regular(handle.as_fd(), path)?;
        reopen_for_reading(&handle)
    }

    /// Whether `path` inside the root is a regular file.
    pub fn is_regular_file(&self, path: &Path) -> bool {
        self.open_path(path).is_ok_and(|handle| require_regular(handle.as_fd(), path).is_ok())
    }

    /// An O_PATH descriptor of `path`, resolved inside the root: by
    /// openat2, or by pathrs where openat2 is missing or refused. The
    /// kernel answers EAGAIN when a rename elsewhere raced with a `..` of
    /// the resolution: it is tried again, a few times.
    fn open_path(&self, path: &Path) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let mut attempts = 0;
        let fd = loop {
            match nix::fcntl::openat2(self.dir.as_raw_fd(), path, how) {
                Err(Errno::EAGAIN) if attempts < OPEN_ATTEMPTS => attempts += 1,
                Err(Errno::ENOSYS | Errno::EPERM) => return self.open_path_with_pathrs(path),
                done => break done?,
            }
        };
        // SAFETY: openat2 returned this new descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn open_path_with_pathrs(&self, path: &Path) -> io::Result<OwnedFd> {
        let root = pathrs::Root::from_fd(OwnedFd::from(self.dir.try_clone()?));
        Ok(root.resolve(path).map_err(io::Error::other)?.into())
    }
}

fn require_regular(handle: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let stat = nix::sys::stat::fstat(handle.as_raw_fd())?;
    match stat.st_mode & libc::S_IFMT == libc::S_IFREG {
        true => Ok(()),
        false => Err(not_regular(path)),
    }
}

fn not_regular(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{path:?} is not a regular file"))
}

/// The file an O_PATH descriptor names, opened for reading: the
/// descriptor's link in this process's /proc (the host's).
fn reopen_for_reading(handle: &OwnedFd) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read(root: &ContainerRoot, path: &str) -> io::Result<String> {
        let mut s = String::new();
        root.open_file(Path::new(path))?.read_to_string(&mut s)?;
        Ok(s)
    }

    #[test]
    fn paths_resolve_inside_the_root_and_never_out() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host").unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        let r = rootfs.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/app"), "inside").unwrap();
        // An absolute link points into the root, not the host.
        std::os::unix::fs::symlink("/usr/bin/app", r.join("link")).unwrap();
        // `..` stops at the root.
        std::os::unix::fs::symlink("../../../../../usr/bin/app", r.join("usr/up")).unwrap();
        // A link to the host's file by its host path is not the host's file.
        std::os::unix::fs::symlink(outside.path().join("secret"), r.join("escape")).unwrap();
        let root = ContainerRoot::open(r).unwrap();
        assert_eq!(read(&root, "/usr/bin/app").unwrap(), "inside");
        assert_eq!(read(&root, "usr/bin/app").unwrap(), "inside");
        assert_eq!(read(&root, "/link").unwrap(), "inside");
        assert_eq!(read(&root, "/usr/up").unwrap(), "inside");
        assert!(read(&root, "/escape").is_err(), "a host path resolved inside the root is not found");
        assert!(read(&root, "/../../../../etc/hostname").is_err(), "`..` climbs no higher than the root");
    }

    #[test]
    fn only_regular_files_are_opened() {
        let rootfs = tempfile::tempdir().unwrap();
        let r = rootfs.path();
        std::fs::create_dir(r.join("dir")).unwrap();
        nix::unistd::mkfifo(&r.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::write(r.join("file"), "x").unwrap();
        let root = ContainerRoot::open(r).unwrap();
        // A FIFO is refused without being opened (which would wait for a writer).
        let fifo = root.open_file(Path::new("/fifo")).unwrap_err();
        assert!(fifo.to_string().contains("not a regular file"), "{fifo}");
        assert!(root.open_file(Path::new("/dir")).is_err());
        assert!(root.is_regular_file(Path::new("/file")));
        assert!(!root.is_regular_file(Path::new("/dir")));
        assert!(!root.is_regular_file(Path::new("/fifo")));
        assert!(!root.is_regular_file(Path::new("/missing")));
        assert_eq!(root.open_file(Path::new("/missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn the_pathrs_way_opens_the_same_and_refuses_the_same() {
        let rootfs = tempfile::tempdir().unwrap();
        let r = rootfs.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/app"), "inside").unwrap();
        std::os::unix::fs::symlink("/usr/bin/app", r.join("link")).unwrap();
        nix::unistd::mkfifo(&r.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let root = ContainerRoot::open(r).unwrap();
        // What open_file does with the handle, from pathrs' resolution.
        let open_with_pathrs = |path: &str| -> io::Result<File> {
            let handle = root.open_path_with_pathrs(Path::new(path))?;
            require_regular(handle.as_fd(), Path::new(path))?;
            reopen_for_reading(&handle)
        };
        let mut s = String::new();
        open_with_pathrs("/link").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "inside");
        // Refused from its O_PATH handle, before a reopen that would wait for a writer.
        let fifo = open_with_pathrs("/fifo").unwrap_err();
        assert!(fifo.to_string().contains("not a regular file"), "{fifo}");
    }
}
