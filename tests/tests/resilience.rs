//! Grouping and resilience: many containers served by one shim, cleanup
//! after a lost shim, and no leaks over many create/start/delete cycles.

use std::path::PathBuf;
use std::time::Duration;

use hybrid_tests::*;

const GROUP_ANNOTATION: &str = "io.containerd.hybrid.v2.group";

/// The ttrpc address containerd recorded for a task's shim.
fn shim_address(env: &Env, id: &str) -> String {
    let path = env.state.join("state/io.containerd.runtime.v2.task/default").join(id).join("address");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path:?}: {e}"))
}

/// The shim process serving `socket`: the one listening on it (its wasm
/// spawner, a fork of it, closes the shim's descriptors).
fn shims_on(socket: &str) -> Vec<i32> {
    processes_listening_on(socket)
}

/// The wasm spawners of the shims serving `socket`.
fn spawners_on(socket: &str) -> Vec<i32> {
    shims_on(socket).into_iter().flat_map(|shim| children_named(shim, "hybrid-spawner")).collect()
}

fn run_detached(env: &Env, id: &str, image_ref: &str, group: Option<&str>, args: &[&str]) {
    run_detached_with(env, id, image_ref, group, &[], args);
}

/// As run_detached, with `flags` for `ctr run` (before the image).
fn run_detached_with(env: &Env, id: &str, image_ref: &str, group: Option<&str>, flags: &[&str], args: &[&str]) {
    let annotation = group.map(|g| format!("{GROUP_ANNOTATION}={g}"));
    let mut cmd: Vec<&str> = vec!["run", "-d", "--runtime", HYBRID_RUNTIME];
    if let Some(a) = &annotation {
        cmd.extend(["--annotation", a.as_str()]);
    }
    cmd.extend(flags);
    cmd.extend([image_ref, id]);
    cmd.extend(args);
    let run = env.ctr_out(&cmd);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(env.wait_for_status(id, "RUNNING", Duration::from_secs(30)), "task {id} never ran");
}

fn remove(env: &Env, id: &str) {
    let _ = env.ctr_out(&["task", "kill", "-s", "SIGKILL", id]);
    env.wait_for_status(id, "STOPPED", Duration::from_secs(10));
    let rm = env.ctr_out(&["task", "rm", id]);
    assert_eq!(rm.code, 0, "{rm:?}");
    let crm = env.ctr_out(&["container", "rm", id]);
    assert_eq!(crm.code, 0, "{crm:?}");
}

#[test]
fn a_group_is_served_by_one_shim_until_its_last_container_is_deleted() {
    let env = env();
    let group = unique_id("group");
    let (native, wasm) = (unique_id("g-native"), unique_id("g-wasm"));
    run_detached(env, &native, &image("busybox"), Some(&group), &["sleep", "60"]);
    run_detached(env, &wasm, &image("sleep-wat"), Some(&group), &[]);
    let address = shim_address(env, &native);
    assert_eq!(address, shim_address(env, &wasm), "both containers of the group talk to one shim");
    let socket = address.trim_start_matches("unix://").to_string();
    assert_eq!(shims_on(&socket).len(), 1, "exactly one shim process serves {socket}");
    assert_eq!(spawners_on(&socket).len(), 1, "the shim has one wasm spawner");

    // Deleting the first container leaves the shim serving the second.
    remove(env, &native);
    assert_eq!(shims_on(&socket).len(), 1, "the shim lives while a container remains");
    let metrics = env.ctr_out(&["task", "metrics", &wasm]);
    assert_eq!(metrics.code, 0, "the remaining container is still served: {metrics:?}");
    assert_eq!(env.task_status(&wasm).as_deref(), Some("RUNNING"));
    let (shim, spawner) = (shims_on(&socket)[0], spawners_on(&socket)[0]);
    remove(env, &wasm);
    assert!(wait_until(Duration::from_secs(5), || !is_running(shim)), "the shim exits after its last container");
    assert!(wait_until(Duration::from_secs(5), || !is_running(spawner)), "its spawner goes with it");
    assert!(shims_on(&socket).is_empty(), "nothing listens on {socket} any more");
}

/// The network namespace process `pid` is in.
fn network_namespace(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap_or_else(|e| panic!("network namespace of {pid}: {e}"))
}

/// The interfaces of the network namespace `pid` is in.
fn interfaces(pid: i32) -> Vec<String> {
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_else(|e| panic!("interfaces of {pid}: {e}"));
    dev.lines().skip(2).filter_map(|l| Some(l.split(':').next()?.trim().to_string())).collect()
}

/// The spawner makes the network namespace of its shim's first container
/// ahead (network_ahead.rs): the container must still get one of its own,
/// as must the group's later ones, which make theirs; a container on the
/// host's network stays there, first in its shim or not, and the spawner,
/// which clones them all, stays in the host's.
#[test]
fn every_wasm_container_gets_a_network_namespace_of_its_own_unless_it_asks_for_the_hosts() {
    let env = env();
    let host = std::fs::read_link("/proc/self/ns/net").expect("the host's network namespace");
    let group = unique_id("netns");
    let (first, host_net, later) = (unique_id("net-first"), unique_id("net-host"), unique_id("net-later"));
    let alone_on_host = unique_id("net-alone");
    let run = |id: &str, group: Option<&str>, flags: &[&str]| {
        run_detached_with(env, id, &image("sleep-wat"), group, flags, &[]);
        task_pid(env, id)
    };
    let first_pid = run(&first, Some(&group), &[]);
    let host_net_pid = run(&host_net, Some(&group), &["--net-host"]);
    let later_pid = run(&later, Some(&group), &[]);
    let alone_pid = run(&alone_on_host, None, &["--net-host"]);

    let (first_ns, later_ns) = (network_namespace(first_pid), network_namespace(later_pid));
    assert_ne!(first_ns, host, "{first}: the group's first container has a network namespace of its own");
    assert_ne!(later_ns, host, "{later}: a later container of the group has one of its own");
    assert_ne!(first_ns, later_ns, "the two containers share no network namespace");
    for (id, pid) in [(&first, first_pid), (&later, later_pid)] {
        assert_eq!(interfaces(pid), vec!["lo".to_string()], "{id}: a new network namespace has only its loopback");
    }
    assert_eq!(network_namespace(host_net_pid), host, "{host_net}: --net-host keeps the host's network");
    assert_eq!(network_namespace(alone_pid), host, "{alone_on_host}: --net-host, first in its shim, keeps the host's network");
    let socket = shim_address(env, &first).trim_start_matches("unix://").to_string();
    let spawners = spawners_on(&socket);
    assert_eq!(spawners.len(), 1, "one spawner for the group's shim");
    assert_eq!(network_namespace(spawners[0]), host, "the spawner is in the host's network namespace");
    for id in [&first, &host_net, &later, &alone_on_host] {
        remove(env, id);
    }
}

/// The shim's spawner clones every container and exec (clone_job.rs); if
/// it is killed, the shim clones from a forked copy of itself instead of
/// failing every later Create and Exec of the group.
#[test]
fn a_group_whose_spawner_was_killed_still_creates_and_execs() {
    let env = env();
    let group = unique_id("nospawner");
    let (first, native, wasm) = (unique_id("ns-first"), unique_id("ns-native"), unique_id("ns-wasm"));
    run_detached(env, &first, &image("busybox"), Some(&group), &["sleep", "60"]);
    let socket = shim_address(env, &first).trim_start_matches("unix://").to_string();
    let spawners = spawners_on(&socket);
    assert_eq!(spawners.len(), 1, "one spawner for the group's shim");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawners[0]), nix::sys::signal::Signal::SIGKILL).expect("kill spawner");
    assert!(wait_until(Duration::from_secs(5), || !is_running(spawners[0])), "the spawner is gone");

    run_detached(env, &native, &image("busybox"), Some(&group), &["sleep", "60"]);
    run_detached(env, &wasm, &image("sleep-wat"), Some(&group), &[]);
    let exec = env.ctr_out(&["task", "exec", "--exec-id", "after", &first, "sh", "-c", "echo exec-ran"]);
    assert_eq!(exec.code, 0, "{exec:?}");
    assert!(exec.stdout.contains("exec-ran"), "{exec:?}");
    assert_eq!(shims_on(&socket).len(), 1, "the same shim serves the group");
    for id in [&first, &native, &wasm] {
        assert_eq!(env.task_status(id).as_deref(), Some("RUNNING"), "{id}");
        remove(env, id);
    }
}

#[test]
fn a_killed_shim_is_cleaned_up_by_delete() {
    let env = env();
    let id = unique_id("lost");
    run_detached(env, &id, &image("busybox"), None, &["sleep", "60"]);
    let ps = env.ctr_out(&["task", "ps", &id]);
    let pids: Vec<i32> = ps.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    assert!(!pids.is_empty(), "{ps:?}");
    let socket = shim_address(env, &id).trim_start_matches("unix://").to_string();
    let shims = shims_on(&socket);
    assert_eq!(shims.len(), 1, "one shim for {id}");
    let spawners = spawners_on(&socket);
    assert_eq!(spawners.len(), 1, "one spawner for {id}'s shim");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0]), nix::sys::signal::Signal::SIGKILL).expect("kill shim");
    assert!(wait_until(Duration::from_secs(5), || !is_running(spawners[0])), "the spawner dies with its shim");

    // containerd sees the shim go, runs `containerd-shim-hybrid-v2 delete`,
    // and reports the task stopped.
    assert!(
        wait_until(Duration::from_secs(10), || env.task_status(&id).as_deref() != Some("RUNNING")),
        "containerd never noticed the lost shim"
    );
    let _ = env.ctr_out(&["task", "rm", &id]);
    let crm = env.ctr_out(&["container", "rm", &id]);
    assert_eq!(crm.code, 0, "{crm:?}");
    assert!(
        wait_until(Duration::from_secs(5), || pids.iter().all(|p| !PathBuf::from(format!("/proc/{p}")).exists())),
        "container processes {pids:?} outlived their shim's cleanup"
    );
    assert_eq!(mounts_containing(&id), Vec::<String>::new(), "mounts left");
    assert_eq!(cgroups_named(&id), Vec::<PathBuf>::new(), "cgroups left");
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn zombie_children(pid: i32) -> usize {
    all_pids()
        .into_iter()
        .filter(|p| parent_pid(*p) == Some(pid) && process_state(*p).as_deref() == Some("Z"))
        .count()
}

#[test]
fn two_hundred_cycles_leak_no_fd_mount_cgroup_or_zombie() {
    let env = env();
    let group = unique_id("cycles");
    // An anchor keeps the group's shim alive, so that every cycle goes
    // through the same shim process and its leaks would add up.
    let anchor = unique_id("anchor");
    run_detached(env, &anchor, &image("sleep-wat"), Some(&group), &[]);
    let socket = shim_address(env, &anchor).trim_start_matches("unix://").to_string();
    let shim = shims_on(&socket)[0];
    let spawner = spawners_on(&socket)[0];
    let annotation = format!("{GROUP_ANNOTATION}={group}");
    let cycle = |n: usize| {
        let id = format!("{group}-c{n}");
        // Alternate native and wasm, so both paths are exercised.
        let (image_ref, args): (String, &[&str]) =
            if n % 2 == 0 { (image("busybox"), &["true"]) } else { (image("exit-wat"), &[]) };
        let ran: Ran = env
            .ctr()
            .args(["run", "--rm", "--runtime", HYBRID_RUNTIME, "--annotation", &annotation, &image_ref, &id])
            .args(args)
            .output()
            .expect("ctr run")
            .into();
        let want = if n % 2 == 0 { 0 } else { 3 };
        assert_eq!(ran.code, want, "cycle {n}: {ran:?}");
    };
    for n in 0..10 {
        cycle(n);
    }
    let fds_before = fd_count(shim);
    let spawner_fds_before = fd_count(spawner);
    for n in 10..210 {
        cycle(n);
    }
    assert_eq!(fd_count(spawner), spawner_fds_before, "the spawner holds no descriptor of a container");
    assert_eq!(zombie_children(spawner), 0, "zombies under the spawner");
    assert!(
        wait_until(Duration::from_secs(5), || fd_count(shim) <= fds_before),
        "shim fds grew from {fds_before} to {}",
        fd_count(shim)
    );
    assert_eq!(zombie_children(shim), 0, "zombies under the shim");
    let prefix = format!("{group}-c");
    assert_eq!(mounts_containing(&prefix), Vec::<String>::new(), "mounts left");
    // Nor any state directory renamed aside to be removed after Delete.
    let state_root = PathBuf::from("/run/hybrid/default");
    let leftover_state = || -> Vec<PathBuf> {
        std::fs::read_dir(&state_root)
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().contains(&prefix)).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    wait_until(Duration::from_secs(5), || leftover_state().is_empty());
    assert_eq!(leftover_state(), Vec::<PathBuf>::new(), "container state left");
    for n in [10, 100, 209] {
        assert_eq!(cgroups_named(&format!("{prefix}{n}")), Vec::<PathBuf>::new(), "cgroup of cycle {n} left");
    }
    remove(env, &anchor);
}

/// The pid of task `id`'s init, as `ctr task ls` shows it.
fn task_pid(env: &Env, id: &str) -> i32 {
    let ls = env.ctr_out(&["task", "ls"]);
    let line = ls.stdout.lines().find(|l| l.split_whitespace().next() == Some(id));
    line.and_then(|l| l.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no pid for {id}: {ls:?}"))
}

/// How many of `pid`'s descriptors are links to `target` (a namespace).
fn descriptors_linking_to(pid: i32, target: &std::path::Path) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    fds.iter().filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|link| link == target)).count()
}

/// Whether `path` is a mount point in this (the shim's) mount namespace.
fn is_mount_point(path: &std::path::Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let path = path.to_string_lossy();
    mountinfo.lines().any(|line| line.split(' ').nth(4) == Some(path.as_ref()))
}

#[test]
fn a_rootfs_is_unmounted_when_its_init_exits_and_the_task_is_still_deletable() {
    let env = env();
    for (image_ref, args) in [(image("busybox"), &["sleep", "60"][..]), (image("sleep-wat"), &[][..])] {
        let id = unique_id("unmounted");
        run_detached(env, &id, &image_ref, None, args);
        let rootfs = env.state.join("state/io.containerd.runtime.v2.task/default").join(&id).join("rootfs");
        assert!(is_mount_point(&rootfs), "{id}: the running container's rootfs {rootfs:?} is mounted");
        // The shim holds the container's mount namespace while it runs, so
        // that the init's exit does not wait for its teardown.
        let shim = shims_on(shim_address(env, &id).trim_start_matches("unix://"))[0];
        let init = task_pid(env, &id);
        let namespace = std::fs::read_link(format!("/proc/{init}/ns/mnt")).expect("the init's mount namespace");
        assert_eq!(descriptors_linking_to(shim, &namespace), 1, "{id}: the shim holds {namespace:?}");
        let kill = env.ctr_out(&["task", "kill", "-s", "SIGKILL", &id]);
        assert_eq!(kill.code, 0, "{kill:?}");
        assert!(env.wait_for_status(&id, "STOPPED", Duration::from_secs(10)), "{id} never stopped");
        // The task is stopped, not deleted: its rootfs and its mount
        // namespace are already let go.
        assert!(
            wait_until(Duration::from_secs(5), || !is_mount_point(&rootfs)),
            "{id}: rootfs {rootfs:?} still mounted after its init exited"
        );
        assert!(
            wait_until(Duration::from_secs(5), || descriptors_linking_to(shim, &namespace) == 0),
            "{id}: the shim still holds {namespace:?} after the init exited"
        );
        assert_eq!(env.task_status(&id).as_deref(), Some("STOPPED"), "{id}: the task is still there");
        let rm = env.ctr_out(&["task", "rm", &id]);
        assert_eq!(rm.code, 0, "{id}: {rm:?}");
        let crm = env.ctr_out(&["container", "rm", &id]);
        assert_eq!(crm.code, 0, "{id}: {crm:?}");
    }
}

/// A shim killed after Delete renamed a container's state aside, before its
/// thread removed it, leaves `.deleted-*` in the state root: a later shim's
/// first removal sweeps what shims that are gone left there.
#[test]
fn state_left_aside_by_a_shim_that_is_gone_is_swept_by_a_later_one() {
    let env = env();
    let root = PathBuf::from("/run/hybrid/default");
    std::fs::create_dir_all(&root).expect("state root");
    // The pid of a process that was and is no more: a child reaped.
    let mut child = std::process::Command::new("true").spawn().expect("spawn true");
    let gone = child.id();
    child.wait().expect("reap true");
    let left = root.join(format!(".deleted-{}-{gone}-1", unique_id("gone")));
    std::fs::create_dir_all(left.join("sub")).expect("left aside");
    std::fs::write(left.join("state.json"), "{}").expect("state.json");
    // One that names a live process (this test) is another shim's, at work.
    let live = root.join(format!(".deleted-{}-{}-1", unique_id("live"), std::process::id()));
    std::fs::create_dir_all(&live).expect("live aside");

    let id = unique_id("sweeper");
    let ran = env.run(HYBRID_RUNTIME, &image("hello-rust"), &id, &["/hello.wasm"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(wait_until(Duration::from_secs(5), || !left.exists()), "{left:?} was not swept");
    assert!(live.exists(), "{live:?}, a live process's, was swept");
    std::fs::remove_dir(&live).expect("remove the live one");
}
