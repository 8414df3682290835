//! A wasm container's init, made without libcontainer's intermediate
//! process.
//!
//! libcontainer's create clones an intermediate process that applies the
//! cgroups, sets the rlimits, enters the pid namespace and clones the init;
//! the init then sets up the container (namespaces, root, pivot,
//! capabilities, seccomp) and waits for Start. Where the creator has joined
//! the container's cgroups itself (cgroup_join::OwnJoin), the intermediate
//! has nothing left to do but the rlimits and the pid namespace, and costs
//! a clone, a dozen reads of the mount table (its cgroup manager, which
//! the creator had to hide the hierarchies from) and its exit: about 1.5
//! ms of every wasm Create. Here the creator does those two things itself
//! and forks the init, which runs libcontainer's own init
//! (`container_init_process`), so the container is set up by the same code.
//! It writes the state libcontainer's later calls read (state.json, its
//! config, the notify socket Start connects to), as libcontainer's builder
//! would.
//!
//! Only the plain case goes this way ([`applies_to`]); a spec with hooks,
//! a user or time namespace, a seccomp listener, network devices, Intel
//! RDT, an AppArmor profile or idmapped mounts, or a container with a
//! terminal, goes through libcontainer's builder.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use libcontainer::container::{Container, ContainerStatus};
use libcontainer::namespaces::Namespaces;
use libcontainer::notify_socket::{NotifyListener, NOTIFY_FILE};
use libcontainer::process::args::{ContainerArgs, ContainerType};
use libcontainer::process::channel;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::clone_job::LateEntrySource;
use crate::executor::HybridExecutor;
use crate::network_ahead::ReadyNetworkNamespace;
use crate::ready_later::EarlyAnswer;

/// An init made here: its container, and the write end of the pipe on
/// which its guest waits to hear that /proc is covered
/// (guest_mounts::covered_pipe).
pub(crate) struct MadeInit {
    pub container: Container,
    pub proc_covered: OwnedFd,
}

/// The container's standard streams, as descriptors of the creator.
pub(crate) struct InitStdio {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
}

/// Whether a Create's init is made here: a wasm workload with its stdio
/// (no terminal), in cgroups its creator joins itself, from a `spec` this
/// module makes an init for. Decided once, by the shim, on the spec it
/// wrote for the creator (the creator and the ready pipe follow it).
pub(crate) fn chosen(is_wasm: bool, has_stdio: bool, own_join: bool, spec: &Spec) -> bool {
    is_wasm && has_stdio && own_join && applies_to(spec)
}

/// Whether `spec` is one this module makes an init for (see the module
/// comment); `spec` is the bundle's, as libcontainer would read it.
pub(crate) fn applies_to(spec: &Spec) -> bool {
    let Some(linux) = spec.linux() else { return false };
    let Some(process) = spec.process() else { return false };
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let own_namespaces_only =
        !namespaces.iter().any(|ns| matches!(ns.typ(), LinuxNamespaceType::User | LinuxNamespaceType::Time));
    let no_hooks = spec.hooks().as_ref().is_none_or(|hooks| {
        [hooks.prestart(), hooks.create_runtime(), hooks.create_container(), hooks.start_container(), hooks.poststart(), hooks.poststop()]
            .iter()
            .all(|list| list.as_ref().is_none_or(Vec::is_empty))
    });
    let no_seccomp_listener = linux.seccomp().as_ref().is_none_or(|s| s.listener_path().is_none());
    let no_idmapped_mounts = spec
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .all(|m| m.uid_mappings().is_none() && m.gid_mappings().is_none());
    spec.version().starts_with("1.")
        && own_namespaces_only
        && no_hooks
        && no_seccomp_listener
        && no_idmapped_mounts
        && linux.net_devices().as_ref().is_none_or(|d| d.is_empty())
        && linux.intel_rdt().is_none()
        && linux.time_offsets().as_ref().is_none_or(|o| o.is_empty())
        && process.apparmor_profile().is_none()
        && process.terminal() != Some(true)
        && process.args().as_ref().is_some_and(|a| !a.is_empty())
}

/// Make container `id`'s init from `bundle`'s `spec` (one [`applies_to`]
/// accepted), with its state under `state_root`: the container, as
/// libcontainer's builder answers it, once its init is ready and waits
/// for Start. This process must be single-threaded and
/// already in the container's cgroups; its pid namespace changes (its
/// children are born in the container's), so it should end soon after.
/// With `answer_early` (the ready pipe's write end and how to answer), the
/// init's pid is answered as soon as its state is saved, before it is
/// ready (ready_later.rs); a failure after that leaves the state and the
/// killed init to the shim, which has the container. With `late`, the
/// module's compile cache entry is taken from there once the init is
/// forked, and passed on to it (late_entry.rs); the answer waits for it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn create(
    id: &str,
    bundle: &Path,
    state_root: &Path,
    mut spec: Spec,
    executor: HybridExecutor,
    stdio: InitStdio,
    ready_network: Option<ReadyNetworkNamespace>,
    mut answer_early: Option<(RawFd, &mut EarlyAnswer)>,
    late: Option<LateEntrySource>,
) -> Result<MadeInit, String> {
    libcontainer::validator::Validator::validate_spec(&spec).map_err(|e| format!("invalid spec: {e}"))?;
    spec.canonicalize_rootfs(bundle).map_err(|e| format!("bundle {bundle:?}: {e}"))?;
    let container_dir = state_root.join(id);
    if container_dir.exists() {
        return Err(format!("container {id} already exists in {state_root:?}"));
    }
    std::fs::create_dir_all(&container_dir).map_err(|e| format!("cannot create {container_dir:?}: {e}"))?;
    let made = make_init(id, bundle, &container_dir, spec, executor, stdio, ready_network, answer_early.as_mut().map(|(fd, early)| (*fd, &mut **early)), late);
    let answered = answer_early.is_some_and(|(_, early)| early.sent());
    if made.is_err() && !answered {
        let _ = std::fs::remove_dir_all(&container_dir);
    }
    made
}

#[allow(clippy::too_many_arguments)]
fn make_init(
    id: &str,
    bundle: &Path,
    container_dir: &Path,
    mut spec: Spec,
    executor: HybridExecutor,
    stdio: InitStdio,
    ready_network: Option<ReadyNetworkNamespace>,
    mut answer_early: Option<(RawFd, &mut EarlyAnswer)>,
    late: Option<LateEntrySource>,
) -> Result<MadeInit, String> {
    fn failed(what: &'static str) -> impl Fn(String) -> String {
        move |e| format!("{what}: {e}")
    }
    let mut container = Container::new(id, ContainerStatus::Creating, None, bundle, container_dir)
        .map_err(|e| e.to_string())
        .map_err(failed("container state"))?;
    container.set_systemd(false).set_annotations(spec.annotations().clone());
    let root = spec.root().as_ref().ok_or("the spec has no root")?.path().clone();
    let rootfs = std::fs::canonicalize(&root).map_err(|e| format!("container root {root:?}: {e}"))?;
    libcontainer::config::YoukiConfig::from_spec(&spec, id)
        .and_then(|config| config.save(container_dir))
        .map_err(|e| e.to_string())
        .map_err(failed("container config"))?;
    let notify_listener = NotifyListener::new(&container_dir.join(NOTIFY_FILE)).map_err(|e| e.to_string()).map_err(failed("notify socket"))?;
    let linux = spec.linux().clone().ok_or("the spec has no linux section")?;
    let process = spec.process().clone().ok_or("the spec has no process")?;
    if let Some(score) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", score.to_string()).map_err(|e| format!("cannot set oom_score_adj {score}: {e}"))?;
    }
    // As libcontainer's builder: the host's view of this process (and so
    // of the init, forked from it) stays closed to the container's users.
    // SAFETY: PR_SET_DUMPABLE takes an integer and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // What the intermediate process would do: the rlimits (inherited by
    // the fork) and the pid namespace (the fork's).
    let syscall = SyscallType::Linux.create_syscall();
    for rlimit in process.rlimits().as_deref().unwrap_or_default() {
        syscall.set_rlimit(rlimit).map_err(|e| format!("cannot set rlimit {:?}: {e}", rlimit.typ()))?;
    }
    let namespaces = Namespaces::try_from(linux.namespaces().as_ref()).map_err(|e| format!("namespaces: {e}"))?;
    if let Some(pid_namespace) = namespaces.get(LinuxNamespaceType::Pid).map_err(|e| format!("pid namespace: {e}"))? {
        namespaces.unshare_or_setns(pid_namespace).map_err(|e| format!("pid namespace: {e}"))?;
    }
    // The validated spec's own network namespace, made ahead, instead of
    // the init's unshare (network_ahead.rs); the init makes its own when
    // this fails.
    if let Some(ready) = ready_network {
        if let Err(e) = ready.enter_for(&mut spec) {
            tracing::debug!(id = %id, "the init makes its network namespace: {e}");
        }
    }
    // The entry's way to the init, when it comes after the fork.
    let entry_pair = match late.is_some() {
        true => Some(crate::late_entry::pair().map_err(|e| format!("cannot make the compile cache entry's socket: {e}"))?),
        false => None,
    };
    let executor = match &entry_pair {
        Some((_, init_end)) => executor.with_entry_from(init_end.as_raw_fd()),
        None => executor,
    };
    // The guest waits to hear that /proc is covered; the init tells its
    // readiness itself where the answer goes before it.
    let (covered_read, proc_covered) = crate::guest_mounts::covered_pipe().map_err(|e| format!("cannot make the pipe for /proc's cover: {e}"))?;
    let executor = executor.with_proc_covered_on(covered_read.as_raw_fd());
    let init_reports = answer_early.as_ref().is_some_and(|(_, early)| early.possible());
    let executor = match (&answer_early, init_reports) {
        (Some((ready_fd, _)), true) => executor.tells_readiness_on(*ready_fd),
        _ => executor,
    };
    let args = ContainerArgs {
        container_type: ContainerType::InitContainer,
        syscall: SyscallType::Linux,
        spec: Rc::new(spec),
        rootfs,
        console_socket: None,
        notify_listener,
        preserve_fds: 0,
        container: Some(container.clone()),
        user_ns_config: None,
        cgroup_config: libcgroups::common::CgroupConfig {
            cgroup_path: libcontainer::utils::get_cgroup_path(linux.cgroups_path(), id),
            systemd_cgroup: false,
            container_name: id.to_string(),
        },
        detached: true,
        executor: Box::new(executor),
        no_pivot: false,
        stdin: Some(stdio.stdin),
        stdout: Some(stdio.stdout),
        stderr: Some(stdio.stderr),
        as_sibling: false,
        pid_file: None,
    };
    let (mut main_sender, mut main_receiver) = channel::main_channel().map_err(|e| format!("channel: {e}"))?;
    let (init_sender, mut init_receiver) = channel::init_channel().map_err(|e| format!("channel: {e}"))?;
    // SAFETY: this process is single-threaded (the spawner's creator, or a
    // forked copy of the shim: see CloneJob::run_cleanly), so the child
    // inherits no lock another thread held.
    let forked = unsafe { crate::same_cpu::fork_on_this_cpu() }.map_err(|e| format!("cannot fork the container's init: {e}"))?;
    let pid = match forked {
        nix::unistd::ForkResult::Child => {
            // Named as libcontainer names its init, until the executor
            // names it after its module.
            // SAFETY: PR_SET_NAME reads the NUL-terminated name (at most
            // 16 bytes) and touches nothing else.
            unsafe { libc::prctl(libc::PR_SET_NAME, c"youki:[2:INIT]".as_ptr(), 0, 0, 0) };
            // The ready pipe ends when the creator does, not the container,
            // unless the init tells its readiness itself.
            if let Some((ready_fd, _)) = answer_early.as_ref().filter(|_| !init_reports) {
                // SAFETY: the job's descriptor, which nothing in this
                // process uses.
                unsafe { libc::close(*ready_fd) };
            }
            // SAFETY: the creator's end of the pipe, which nothing in this
            // process uses; the process ends with exit, which drops nothing.
            unsafe { libc::close(proc_covered.as_raw_fd()) };
            if let Some((creator_end, _)) = &entry_pair {
                // SAFETY: the creator's end, which nothing in this process
                // uses; the process ends with exit, which drops nothing.
                unsafe { libc::close(creator_end.as_raw_fd()) };
            }
            let _ = main_receiver.close();
            let _ = init_sender.close();
            let code = match libcontainer::process::init::container_init_process(&args, &mut main_sender, &mut init_receiver) {
                Ok(()) => 0,
                Err(e) => {
                    // The whole chain: libcontainer's own message only says
                    // which step failed ("failed to prepare rootfs"), its
                    // sources say on what.
                    let message = with_sources(&e);
                    tracing::error!("failed to initialize container process: {message}");
                    let _ = main_sender.exec_failed(message);
                    255
                }
            };
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    let _ = main_sender.close();
    let _ = init_receiver.close();
    let _ = init_sender.close();
    drop(covered_read);
    let kill = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    // The entry, while the init sets itself up; a module the shim could not
    // check fails the Create here, before any answer.
    if let (Some(late), Some((creator_end, init_end))) = (late, entry_pair) {
        drop(init_end);
        let passed = late().and_then(|entry| match crate::late_entry::send_to_init(&creator_end, entry.as_ref()) {
            Ok(()) => Ok(()),
            // The init is gone already: its setup failed, and says why on
            // libcontainer's channel (below), as it would without this.
            Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => Ok(()),
            Err(e) => Err(format!("cannot pass the compile cache entry to the container's init: {e}")),
        });
        if let Err(e) = passed {
            let _ = kill();
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(e);
        }
    }
    // Saved as libcontainer's builder saves it once the init is ready;
    // before, when the answer goes now: Start waits for the readiness.
    let save = |container: &mut Container| {
        container
            .set_status(ContainerStatus::Created)
            .set_creator(nix::unistd::geteuid().as_raw())
            .set_pid(pid.as_raw())
            .save()
            .map_err(|e| e.to_string())
            .map_err(failed("container state"))
    };
    // An init whose setup failed already (while the entry came) is not
    // answered: its failure is this Create's. Answered, it would be reaped
    // by the shim as this process exits, before the shim knows its pid.
    // Looked at without reaping it: its pid stays its own until waited for.
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let gone = !matches!(waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT), Ok(WaitStatus::StillAlive));
    if let Some((_, early)) = answer_early.as_mut().filter(|(_, early)| early.possible() && !gone) {
        if let Err(e) = save(&mut container) {
            let _ = kill();
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(e);
        }
        early.send(pid.as_raw());
    }
    let answered = answer_early.as_ref().is_some_and(|(_, early)| early.sent());
    let ready = main_receiver.wait_for_init_ready().map_err(|e| format!("the container's init failed: {e}"));
    let _ = main_receiver.close();
    if let Err(e) = ready {
        let _ = kill();
        // Once answered, the init is the shim's to reap (it adopts it when
        // this process exits), as a container that ended before Start.
        if !answered {
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        return Err(e);
    }
    if !answered {
        save(&mut container)?;
    }
    Ok(MadeInit { container, proc_covered })
}

/// `error` and each of its sources, joined by ": ".
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The bundle's spec, as libcontainer loads it.
pub(crate) fn load_spec(bundle: &Path) -> Result<Spec, String> {
    let path: PathBuf = bundle.join("config.json");
    Spec::load(&path).map_err(|e| format!("{path:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{HookBuilder, HooksBuilder, LinuxNamespaceBuilder, ProcessBuilder};

    #[test]
    fn a_plain_spec_applies() {
        assert!(applies_to(&Spec::default()));
    }

    #[test]
    fn a_user_namespace_hooks_or_a_terminal_go_through_libcontainers_builder() {
        let mut user_ns = Spec::default();
        let mut linux = user_ns.linux().clone().expect("linux");
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User).build().expect("namespace"));
        linux.set_namespaces(Some(namespaces));
        user_ns.set_linux(Some(linux));
        assert!(!applies_to(&user_ns), "user namespace");

        let mut hooked = Spec::default();
        let hook = HookBuilder::default().path("/bin/true").build().expect("hook");
        hooked.set_hooks(Some(HooksBuilder::default().create_runtime(vec![hook]).build().expect("hooks")));
        assert!(!applies_to(&hooked), "hooks");

        let mut terminal = Spec::default();
        terminal.set_process(Some(ProcessBuilder::default().terminal(true).args(vec!["/a.wasm".to_string()]).build().expect("process")));
        assert!(!applies_to(&terminal), "terminal");

        let mut no_args = Spec::default();
        no_args.set_process(Some(ProcessBuilder::default().args(Vec::<String>::new()).build().expect("process")));
        assert!(!applies_to(&no_args), "no args");
    }
}
