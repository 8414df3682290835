//! deploy/installer/install.sh against scratch directories: installs the
//! shim, adds the CRI runtime handler once (reruns change nothing and do not
//! restart containerd), and leaves a config containerd 1.6 accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

use hybrid_tests::repo_root;

const TABLE: &str = r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hybrid]"#;

struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        // A stand-in shim: the installer only copies it.
        std::fs::write(root.join("shim-src"), "#!/bin/sh\necho fake shim v1\n").expect("write fake shim");
        Scratch { _dir: dir, root }
    }

    fn config(&self) -> PathBuf {
        self.root.join("etc/containerd/config.toml")
    }

    fn installed_shim(&self) -> PathBuf {
        self.root.join("bin/containerd-shim-hybrid-v2")
    }

    fn restarts(&self) -> usize {
        std::fs::read_to_string(self.root.join("restarts")).map(|s| s.lines().count()).unwrap_or(0)
    }

    /// Run install.sh with every path pointing into the scratch dir.
    fn install(&self) -> (bool, String) {
        let out = Command::new("sh")
            .arg(repo_root().join("deploy/installer/install.sh"))
            .env("HYBRID_SHIM_SRC", self.root.join("shim-src"))
            .env("HYBRID_BIN_DIR", self.root.join("bin"))
            .env("CONTAINERD_CONFIG", self.config())
            .env("CONTAINERD_RESTART_CMD", format!("echo restarted >> '{}'", self.root.join("restarts").display()))
            .output()
            .expect("run install.sh");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn install_ok(&self) -> String {
        let (ok, stderr) = self.install();
        assert!(ok, "install.sh failed:\n{stderr}");
        stderr
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `containerd --config PATH config dump`: containerd parses the file (a
/// TOML error or a duplicated table fails) and prints the merged config.
fn containerd_dump(config: &Path) -> String {
    let out = Command::new("containerd")
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .expect("run containerd config dump (apt-get install containerd)");
    assert!(
        out.status.success(),
        "containerd rejects {}:\n{}\n--- config\n{}",
        config.display(),
        String::from_utf8_lossy(&out.stderr),
        read(config)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The handler's runtime_type as containerd reads it back.
fn assert_handler_loaded(config: &Path) {
    let dump = containerd_dump(config);
    let section = dump
        .split(TABLE)
        .nth(1)
        .unwrap_or_else(|| panic!("containerd's dump has no {TABLE}:\n{dump}"));
    let runtime_type = section
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("runtime_type"))
        .unwrap_or_else(|| panic!("no runtime_type under {TABLE}:\n{section}"));
    assert_eq!(runtime_type, r#"runtime_type = "io.containerd.hybrid.v2""#);
}

fn assert_installed_twice_idempotently(scratch: &Scratch) {
    scratch.install_ok();
    let first = read(&scratch.config());
    assert_eq!(first.matches(TABLE).count(), 1, "one handler table:\n{first}");
    assert_eq!(read(&scratch.installed_shim()), read(&scratch.root.join("shim-src")), "the shim is copied");
    assert_eq!(scratch.restarts(), 1, "containerd restarted once after the change");
    assert_handler_loaded(&scratch.config());

    let stderr = scratch.install_ok();
    assert_eq!(read(&scratch.config()), first, "a rerun leaves the config as it was");
    assert_eq!(scratch.restarts(), 1, "a rerun that changes nothing does not restart containerd:\n{stderr}");
    assert!(stderr.contains("nothing changed"), "{stderr}");
    assert_handler_loaded(&scratch.config());
}

#[test]
fn install_creates_a_config_when_there_is_none() {
    let scratch = Scratch::new();
    assert_installed_twice_idempotently(&scratch);
    assert!(read(&scratch.config()).starts_with("version = 2\n"));
}

#[test]
fn install_adds_the_handler_to_containerds_default_config_once() {
    let scratch = Scratch::new();
    let out = Command::new("containerd").args(["config", "default"]).output().expect("containerd config default");
    assert!(out.status.success(), "containerd config default failed");
    let original = String::from_utf8(out.stdout).expect("utf-8 config");
    std::fs::create_dir_all(scratch.config().parent().expect("config dir")).expect("mkdir");
    std::fs::write(scratch.config(), &original).expect("write config");

    assert_installed_twice_idempotently(&scratch);
    let config = read(&scratch.config());
    assert!(config.starts_with(&original), "the existing config is kept as it was, the handler appended");
    // The other handlers are still there.
    let dump = containerd_dump(&scratch.config());
    assert!(dump.contains(r#"containerd.runtimes.runc]"#), "runc handler kept:\n{dump}");
}

#[test]
fn a_new_shim_is_installed_and_containerd_restarted_again() {
    let scratch = Scratch::new();
    scratch.install_ok();
    assert_eq!(scratch.restarts(), 1);
    std::fs::write(scratch.root.join("shim-src"), "#!/bin/sh\necho fake shim v2\n").expect("write fake shim");
    scratch.install_ok();
    assert!(read(&scratch.installed_shim()).contains("v2"), "the new shim replaced the old one");
    assert_eq!(scratch.restarts(), 2, "a changed shim restarts containerd");
    assert_eq!(read(&scratch.config()).matches(TABLE).count(), 1, "still one handler table");
}

#[test]
fn a_handler_table_not_written_by_the_installer_is_left_alone() {
    let scratch = Scratch::new();
    let foreign = format!("version = 2\n\n{TABLE}\n  runtime_type = \"io.containerd.runc.v2\"\n");
    std::fs::create_dir_all(scratch.config().parent().expect("config dir")).expect("mkdir");
    std::fs::write(scratch.config(), &foreign).expect("write config");
    let (ok, stderr) = scratch.install();
    assert!(!ok, "install.sh must refuse to add a second table");
    assert!(stderr.contains("already defines"), "the error says why: {stderr}");
    assert_eq!(read(&scratch.config()), foreign, "the config is untouched");
    assert_eq!(scratch.restarts(), 0, "no restart on failure");
}

#[test]
fn the_deploy_config_snippet_is_accepted_by_containerd() {
    let snippet = repo_root().join("deploy/containerd-config.toml");
    assert_handler_loaded(&snippet);
}
