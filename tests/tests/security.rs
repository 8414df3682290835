//! The spec's security settings, applied by hybrid as runc applies them:
//! capabilities, no_new_privileges, seccomp, masked and read-only paths,
//! a read-only root, rlimits (lowered), user and groups, hostname, sysctls
//! and the devices cgroup. Each probe runs once through runc and once
//! through hybrid from the same spec (`ctr run --config`), and must see the
//! same thing; the values that matter are also asserted outright. A wasm
//! task's process gets the same settings, checked from the host.

use std::path::Path;
use std::time::Duration;

use hybrid_tests::*;
use serde_json::{json, Value};

/// A seccomp profile that allows everything but mkdir.
fn no_mkdir_seccomp() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
        "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }]
    })
}

/// containerd's default spec (`ctr oci spec`), rooted at `root`, with the
/// settings under test and `args` as the process.
fn probe_spec(env: &Env, root: &Path, id: &str, args: &[&str], unprivileged: bool) -> Value {
    let out = env.ctr_out(&["oci", "spec"]);
    assert_eq!(out.code, 0, "{out:?}");
    let mut spec: Value = serde_json::from_str(&out.stdout).expect("ctr oci spec gives JSON");
    spec["root"] = json!({ "path": root, "readonly": unprivileged });
    spec["hostname"] = json!("probe-host");
    spec["process"]["args"] = json!(args);
    spec["process"]["env"] = json!(["PATH=/bin:/usr/bin:/sbin"]);
    spec["process"]["rlimits"] = json!([{ "type": "RLIMIT_NOFILE", "hard": 321, "soft": 300 }]);
    if unprivileged {
        spec["process"]["user"] = json!({ "uid": 1000, "gid": 1000, "additionalGids": [44, 55] });
        // Drop one of the default capabilities from every set.
        for set in ["bounding", "effective", "permitted"] {
            let caps = spec["process"]["capabilities"][set].as_array_mut().expect("caps");
            caps.retain(|c| c != "CAP_NET_RAW");
        }
    }
    spec["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": "1" });
    spec["linux"]["seccomp"] = no_mkdir_seccomp();
    spec["linux"]["cgroupsPath"] = json!(format!("/hybrid-tests/{id}"));
    spec
}

/// Run `spec` to completion through `runtime`; stdout and stderr together.
fn run_spec(env: &Env, runtime: &str, id: &str, spec: &Value) -> Ran {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.json");
    std::fs::write(&file, spec.to_string()).expect("write spec");
    env.ctr_out(&["run", "--rm", "--config", file.to_str().expect("utf-8 path"), "--runtime", runtime, id])
}

fn busybox_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let tar = repo_root().join("wasm-examples/busybox/rootfs.tar");
    let status = std::process::Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(root.path()).status().expect("tar");
    assert!(status.success(), "cannot unpack {tar:?}");
    root
}

const PROBE: &str = r#"exec 2>&1
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
id; hostname; echo "nofile $(ulimit -n) $(ulimit -Hn)"
echo "ip_forward $(cat /proc/sys/net/ipv4/ip_forward)"
echo "timer_list $(wc -c < /proc/timer_list)"
echo 1 > /proc/sys/kernel/panic_on_oops || echo proc-sys-read-only
mkdir /tmp/probe-dir || echo mkdir-denied
touch /probe-file || echo root-read-only
"#;

#[test]
fn an_unprivileged_spec_is_applied_as_runc_applies_it() {
    let env = env();
    let root = busybox_root();
    let mut outputs = Vec::new();
    for runtime in [RUNC_RUNTIME, HYBRID_RUNTIME] {
        let id = unique_id("sec");
        let ran = run_spec(env, runtime, &id, &probe_spec(env, root.path(), &id, &["sh", "-c", PROBE], true));
        assert_eq!(ran.code, 0, "{runtime}: {ran:?}");
        outputs.push(ran.stdout);
    }
    let (runc, hybrid) = (&outputs[0], &outputs[1]);
    assert_eq!(hybrid, runc, "hybrid and runc see the same settings");
    for want in [
        "CapEff:\t0000000000000000",
        // The default set without CAP_NET_RAW (bit 13).
        "CapBnd:\t00000000a80405fb",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "uid=1000 gid=1000 groups=44,55",
        "probe-host",
        "nofile 300 321",
        "ip_forward 1",
        "timer_list 0",
        "proc-sys-read-only",
        "mkdir-denied",
        "root-read-only",
    ] {
        assert!(hybrid.contains(want), "{want:?} missing from:\n{hybrid}");
    }
}

#[test]
fn the_devices_cgroup_denies_a_disk_even_to_root_with_cap_mknod() {
    let env = env();
    let root = busybox_root();
    let probe = "exec 2>&1; mknod /sda b 8 0 && echo made; head -c1 /sda >/dev/null || echo open-denied; head -c1 /dev/zero | wc -c";
    let mut outputs = Vec::new();
    for runtime in [RUNC_RUNTIME, HYBRID_RUNTIME] {
        let id = unique_id("dev");
        let _ = std::fs::remove_file(root.path().join("sda"));
        let ran = run_spec(env, runtime, &id, &probe_spec(env, root.path(), &id, &["sh", "-c", probe], false));
        assert_eq!(ran.code, 0, "{runtime}: {ran:?}");
        outputs.push(ran.stdout);
    }
    assert_eq!(outputs[1], outputs[0], "hybrid and runc agree");
    assert!(outputs[1].contains("made") && outputs[1].contains("open-denied"), "{}", outputs[1]);
    assert!(outputs[1].trim_end().ends_with('1'), "allowed devices still work: {}", outputs[1]);
}

/// Field `name` of /proc/PID/status.
fn pid_status_field(pid: &str, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status_field(&status, name).unwrap_or_default()
}

#[test]
fn a_wasm_task_runs_under_the_same_settings() {
    let env = env();
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::copy(repo_root().join("wasm-examples/sleep-wat/sleep.wasm"), root.path().join("sleep.wasm")).expect("copy module");
    let id = unique_id("secw");
    let spec = probe_spec(env, root.path(), &id, &["/sleep.wasm"], true);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.json");
    std::fs::write(&file, spec.to_string()).expect("write spec");
    let run = env.ctr_out(&["run", "-d", "--config", file.to_str().expect("utf-8"), "--runtime", HYBRID_RUNTIME, &id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(env.wait_for_status(&id, "RUNNING", Duration::from_secs(30)));
    let listed = env.ctr_out(&["task", "ls"]);
    let pid = listed
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id.as_str()))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("task pid")
        .to_string();
    let fields: Vec<(&str, String)> =
        ["CapEff", "CapBnd", "NoNewPrivs", "Seccomp", "Uid", "Gid", "Groups"].iter().map(|f| (*f, pid_status_field(&pid, f))).collect();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let hostname = std::process::Command::new("nsenter").args(["-t", &pid, "-u", "hostname"]).output().expect("nsenter");
    let _ = env.ctr_out(&["task", "kill", "-s", "SIGKILL", &id]);
    env.wait_for_status(&id, "STOPPED", Duration::from_secs(10));
    let _ = env.ctr_out(&["task", "rm", &id]);
    let _ = env.ctr_out(&["container", "rm", &id]);
    let get = |name: &str| fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(get("CapEff"), "0000000000000000");
    assert_eq!(get("CapBnd"), "00000000a80405fb");
    assert_eq!(get("NoNewPrivs"), "1");
    assert_eq!(get("Seccomp"), "2");
    assert!(get("Uid").starts_with("1000\t1000"), "uid: {}", get("Uid"));
    assert!(get("Gid").starts_with("1000\t1000"), "gid: {}", get("Gid"));
    assert_eq!(get("Groups"), "44 55");
    let nofile = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
    assert!(nofile.split_whitespace().collect::<Vec<_>>().ends_with(&["300", "321", "files"]), "{nofile}");
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "probe-host");
}
