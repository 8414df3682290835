//! What a build leaves on the host while it runs, and a build killed
//! outright leaves behind for good (its RUN containers' state, its scratch
//! directory), is named after the build's process: `hybrid-build-<pid>-…`.
//! A later build removes those whose build is gone.

use std::path::Path;

const PREFIX: &str = "hybrid-build-";

/// `hybrid-build-<this process's pid>-`: how this build's names begin.
pub(crate) fn own_prefix() -> String {
    format!("{PREFIX}{}-", std::process::id())
}

/// The pid of the build that gave `name`, when it is such a name.
pub(crate) fn build_of(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split_once('-')?.0.parse().ok()
}

/// Whether no process has `pid` any more. A process of another program
/// that took the pid again only delays a removal.
pub(crate) fn gone(pid: u32) -> bool {
    pid != 0 && !Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_tells_its_build_and_others_tell_none() {
        assert_eq!(build_of(&format!("{}7", own_prefix())), Some(std::process::id()));
        assert_eq!(build_of("hybrid-build-123-abc"), Some(123));
        assert_eq!(build_of("hybrid-build-Xy12ab"), None);
        assert_eq!(build_of("unrelated-1-x"), None);
        assert!(!gone(std::process::id()));
    }
}
