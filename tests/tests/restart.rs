//! containerd restarted while hybrid's tasks run (as in a containerd
//! upgrade): the tasks keep running, and the new containerd reconnects to
//! the shims, so listing, exec, kill and delete still work. Its own test
//! binary, so the restart disturbs no other test.

use std::time::Duration;

use hybrid_tests::*;

/// `ctr task ls`'s line for `id` (id, pid, status).
fn task_line(env: &Env, id: &str) -> String {
    let listed = env.ctr_out(&["task", "ls"]);
    listed.stdout.lines().find(|l| l.split_whitespace().next() == Some(id)).unwrap_or_default().to_string()
}

#[test]
fn tasks_survive_a_containerd_restart_and_stay_manageable() {
    let env = env();
    let native = unique_id("rsn");
    let wasm = unique_id("rsw");
    for (id, image_ref, args) in [(&native, image("busybox"), vec!["sleep", "300"]), (&wasm, image("sleep-wat"), vec![])] {
        let run = env.ctr_out(&[&["run", "-d", "--runtime", HYBRID_RUNTIME, &image_ref, id][..], &args].concat());
        assert_eq!(run.code, 0, "{run:?}");
        assert!(env.wait_for_status(id, "RUNNING", Duration::from_secs(30)), "{id} never ran");
    }
    let before: Vec<String> = [&native, &wasm].iter().map(|id| task_line(env, id)).collect();

    env.restart_containerd();

    for (id, before) in [&native, &wasm].iter().zip(&before) {
        let line = task_line(env, id);
        assert!(line.contains("RUNNING"), "{id} runs on after the restart: {line:?}");
        assert_eq!(&line, before, "same pid and status as before the restart");
    }
    let exec = env.ctr_out(&["task", "exec", "--exec-id", "after", &native, "sh", "-c", "echo still here; exit 3"]);
    assert_eq!(exec.code, 3, "exec through the reconnected shim: {exec:?}");
    assert!(exec.stdout.contains("still here"), "{exec:?}");
    for (id, signal, status) in [(&native, "SIGKILL", "137"), (&wasm, "SIGTERM", "143")] {
        // The exit reaches the new containerd as an event too: the shim's
        // publisher connects again.
        let (kill, events) = env.ctr_with_events(&["task", "kill", "-s", signal, id]);
        assert_eq!(kill.code, 0, "kill after the restart: {kill:?}");
        assert!(env.wait_for_status(id, "STOPPED", Duration::from_secs(10)), "{id} did not stop");
        assert!(
            events.lines().any(|l| l.contains("/tasks/exit") && l.contains(id.as_str())),
            "TaskExit published for {id} after the restart:\n{events}"
        );
        let rm = env.ctr_out(&["task", "rm", id]);
        assert_eq!(rm.code, 0, "{rm:?}");
        // ctr reports a non-zero exit status when it deletes the task.
        assert!(rm.stderr.contains(&format!("exit code {status}")), "{id} exited with {status}: {rm:?}");
        let rm = env.ctr_out(&["container", "rm", id]);
        assert_eq!(rm.code, 0, "{rm:?}");
    }
    assert!(mounts_containing(&native).is_empty() && mounts_containing(&wasm).is_empty(), "no mount left");
    assert!(cgroups_named(&native).is_empty() && cgroups_named(&wasm).is_empty(), "no cgroup left");
}
