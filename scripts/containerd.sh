#!/usr/bin/env bash
# Run a PRIVATE containerd (Debian's containerd 1.6) for hybrid's examples and
# end-to-end tests. It never uses the system instance: its config, root,
# state, sockets, log and pid file all live under STATE_DIR.
#
#   scripts/containerd.sh start STATE_DIR   start it (no-op if it already runs)
#   scripts/containerd.sh stop  STATE_DIR   stop it, its tasks and its shims
#   scripts/containerd.sh restart STATE_DIR restart the daemon only: tasks and
#                                           shims keep running, as across a
#                                           containerd upgrade
#   scripts/containerd.sh env   STATE_DIR   print `export CONTAINERD_ADDRESS=...`
#   scripts/containerd.sh status STATE_DIR  exit 0 if it answers
#
#   eval "$(scripts/containerd.sh env /tmp/hybrid-ctrd)"
#
# Layout of STATE_DIR: config.toml, root/, state/, containerd.sock,
# containerd.sock.ttrpc, containerd.log, containerd.pid.
#
# Environment (start):
#   HYBRID_BIN_DIR        directory holding containerd-shim-hybrid-v2; put first
#                         on containerd's PATH so it finds our shim for runtime
#                         io.containerd.hybrid.v2 (default: the repo's debug
#                         build, else its release build, if the shim is there:
#                         scripts/target-dir.sh)
#   CONTAINERD            containerd binary (default: containerd)
#   CTR                   ctr binary (default: ctr)
#   CONTAINERD_LOG_LEVEL  containerd log level (default: info)
#   CONTAINERD_START_TIMEOUT  seconds to wait for it to answer (default: 20)
#   HYBRID_SANDBOX_IMAGE  CRI's sandbox_image, the pods' pause image (default:
#                         docker.io/hybrid-examples/pause:latest, built by
#                         scripts/build-examples.sh; CRI looks for it in the
#                         k8s.io namespace and would pull it if missing)
#
# Note: containerd 1.6 puts shim sockets in /run/containerd/s/ whatever its
# state dir is (named by a hash of address+namespace+id, so instances do not
# collide); that directory is not cleaned here.
set -euo pipefail

prog=containerd.sh
log() { echo "$prog: $*" >&2; }
die() { echo "$prog: error: $*" >&2; exit 1; }
usage() { die "usage: $0 start|stop|restart|env|status STATE_DIR"; }

[ $# -eq 2 ] || usage
cmd=$1
state_dir=$(realpath -m -- "$2")
[ "$state_dir" != / ] || die "refusing STATE_DIR=/"
sandbox_image=${HYBRID_SANDBOX_IMAGE:-docker.io/hybrid-examples/pause:latest}
case $sandbox_image in *[\"\\]*) die "HYBRID_SANDBOX_IMAGE must not contain '\"' or '\\'" ;; esac
case $state_dir in *[\"\\]*) die "STATE_DIR must not contain '\"' or '\\' (it goes into TOML strings)" ;; esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONTAINERD=${CONTAINERD:-containerd}
CTR=${CTR:-ctr}

config=$state_dir/config.toml
sock=$state_dir/containerd.sock
ttrpc_sock=$state_dir/containerd.sock.ttrpc
logfile=$state_dir/containerd.log
pidfile=$state_dir/containerd.pid

# Unix socket paths are limited to 107 bytes.
[ ${#ttrpc_sock} -le 107 ] || die "STATE_DIR is too long for unix socket paths: $ttrpc_sock"

ctr_() { "$CTR" --address "$sock" "$@"; }

answers() { timeout 5 "$CTR" --address "$sock" version >/dev/null 2>&1; }

# The pid in the pid file, if that process is alive and is a containerd.
running_pid() {
    local pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--config $config" || return 1
    echo "$pid"
}

# Pids of processes whose argv contains "-address $sock" (the shims this
# instance started: containerd-shim-*-v2 -namespace NS -address SOCK ...).
shim_pids() {
    local d pid args
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        args=$( { tr '\0' '\n' <"$d/cmdline"; } 2>/dev/null) || continue
        if grep -qxF -- "-address" <<<"$args" && grep -qxF -- "$sock" <<<"$args"; then
            echo "$pid"
        fi
    done
}

# PID and all its descendants (children first listed after their parent).
with_descendants() { # with_descendants PID...
    local -A parent_of=()
    local stat pid ppid rest queue=("$@") out=()
    for stat in /proc/[0-9]*/stat; do
        # comm (field 2) may contain spaces: take what follows the last ')'.
        rest=$(cat "$stat" 2>/dev/null) || continue
        pid=${rest%% *}
        rest=${rest##*) }
        ppid=$(echo "$rest" | cut -d' ' -f2)
        parent_of[$pid]=$ppid
    done
    while [ ${#queue[@]} -gt 0 ]; do
        pid=${queue[0]}
        queue=("${queue[@]:1}")
        out+=("$pid")
        for child in "${!parent_of[@]}"; do
            [ "${parent_of[$child]}" != "$pid" ] || queue+=("$child")
        done
    done
    echo "${out[@]}"
}

wait_gone() { # wait_gone SECONDS PID...
    local deadline=$((SECONDS + $1)) pid alive
    shift
    while :; do
        alive=
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        [ -n "$alive" ] || return 0
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

write_config() {
    cat >"$config" <<EOF
# Generated by scripts/containerd.sh: a private containerd 1.6 for hybrid.
version = 2
root = "$state_dir/root"
state = "$state_dir/state"
oom_score = 0
disabled_plugins = []

[grpc]
  address = "$sock"
  uid = 0
  gid = 0

[ttrpc]
  address = "$ttrpc_sock"

[debug]
  level = "${CONTAINERD_LOG_LEVEL:-info}"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$state_dir/opt"

  [plugins."io.containerd.grpc.v1.cri"]
    # Never lower the oom_score_adj of containers below containerd's own.
    restrict_oom_score_adj = true
    disable_tcp_service = true
    # The pods' pause container (HYBRID_SANDBOX_IMAGE).
    sandbox_image = "$sandbox_image"

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$state_dir/cni/bin"
      conf_dir = "$state_dir/cni/net.d"

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

      # CRI runtime handler "hybrid": wasm and Linux containers through
      # containerd-shim-hybrid-v2.
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hybrid]
        runtime_type = "io.containerd.hybrid.v2"
EOF
}

find_bin_dir() {
    if [ -n "${HYBRID_BIN_DIR:-}" ]; then
        realpath -m -- "$HYBRID_BIN_DIR"
        return
    fi
    local d
    for d in "$(bash "$repo/scripts/target-dir.sh" debug)" "$(bash "$repo/scripts/target-dir.sh" release)"; do
        if [ -x "$d/containerd-shim-hybrid-v2" ]; then
            echo "$d"
            return
        fi
    done
}

do_start() {
    local pid bin_dir path
    command -v "$CONTAINERD" >/dev/null || die "'$CONTAINERD' not found (Debian: apt-get install containerd)"
    command -v "$CTR" >/dev/null || die "'$CTR' not found (Debian: apt-get install containerd)"
    command -v runc >/dev/null || log "warning: runc not found (Debian: apt-get install runc)"

    if pid=$(running_pid) && answers; then
        log "already running (pid $pid, address $sock)"
        return 0
    fi
    if pid=$(running_pid); then
        die "containerd pid $pid of $state_dir runs but does not answer on $sock; run '$0 stop $state_dir' first"
    fi

    mkdir -p "$state_dir/root" "$state_dir/state" "$state_dir/opt" \
        "$state_dir/cni/bin" "$state_dir/cni/net.d"
    chmod 0711 "$state_dir"
    rm -f "$sock" "$ttrpc_sock" "$pidfile"
    write_config

    bin_dir=$(find_bin_dir)
    path=$PATH
    if [ -n "$bin_dir" ]; then
        [ -x "$bin_dir/containerd-shim-hybrid-v2" ] \
            || log "warning: $bin_dir/containerd-shim-hybrid-v2 not found (yet)"
        path=$bin_dir:$PATH
    elif ! command -v containerd-shim-hybrid-v2 >/dev/null; then
        log "warning: containerd-shim-hybrid-v2 not found: set HYBRID_BIN_DIR (runtime io.containerd.hybrid.v2 will fail)"
    fi

    log "starting $("$CONTAINERD" --version | awk '{print $1, $3}') in $state_dir${bin_dir:+ (shim dir $bin_dir)}"
    # setsid: its own session, so it outlives this shell and a terminal's
    # signals; stdin closed, all output to the log.
    PATH=$path setsid "$CONTAINERD" --config "$config" \
        </dev/null >>"$logfile" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"

    local timeout=${CONTAINERD_START_TIMEOUT:-20}
    local deadline=$((SECONDS + timeout))
    until answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pidfile"
            log "containerd exited during start-up; last lines of $logfile:"
            tail -n 20 "$logfile" >&2
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            log "containerd (pid $pid) did not answer on $sock within ${timeout}s; last lines of $logfile:"
            tail -n 20 "$logfile" >&2
            kill -TERM "$pid" 2>/dev/null || true
            wait_gone 5 "$pid" || kill -KILL "$pid" 2>/dev/null || true
            rm -f "$pidfile"
            exit 1
        fi
        sleep 0.2
    done
    log "running (pid $pid); address $sock; log $logfile"
}

# Kill and delete the tasks of every namespace, so shims exit cleanly and
# runc containers do not outlive the instance.
stop_tasks() {
    local ns task
    answers || return 0
    for ns in $(timeout 10 "$CTR" --address "$sock" namespaces ls -q 2>/dev/null); do
        for task in $(timeout 10 "$CTR" --address "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
            log "killing task $ns/$task"
            timeout 10 "$CTR" --address "$sock" -n "$ns" tasks kill -a -s SIGKILL "$task" >/dev/null 2>&1 || true
            timeout 10 "$CTR" --address "$sock" -n "$ns" tasks delete -f "$task" >/dev/null 2>&1 || true
        done
    done
}

# Unmount whatever is still mounted under STATE_DIR (task rootfs overlays,
# snapshot bind mounts), deepest first, so the directory can be removed.
unmount_all() {
    local mnt
    awk -v dir="$state_dir/" '{ m = $5; gsub(/\\040/, " ", m); if (index(m, dir) == 1) print m }' \
        /proc/self/mountinfo | sort -r | while IFS= read -r mnt; do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || log "warning: cannot unmount $mnt"
    done
}

do_stop() {
    local pid shims
    if pid=$(running_pid); then
        stop_tasks
        log "stopping containerd (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone 10 "$pid"; then
            log "containerd (pid $pid) still running after 10s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone 5 "$pid" || log "warning: pid $pid did not exit"
        fi
    else
        log "containerd of $state_dir is not running"
    fi
    rm -f "$pidfile"

    shims=$(shim_pids)
    if [ -n "$shims" ]; then
        # The shims' descendants are this instance's containers and wasm
        # tasks: without containerd nothing else would reap them.
        # shellcheck disable=SC2086
        shims=$(with_descendants $shims)
        log "killing leftover shims and their processes: $shims"
        # shellcheck disable=SC2086
        kill -TERM $shims 2>/dev/null || true
        # shellcheck disable=SC2086
        if ! wait_gone 5 $shims; then
            # shellcheck disable=SC2086
            kill -KILL $shims 2>/dev/null || true
        fi
    fi
    if [ -d "$state_dir" ]; then
        unmount_all
    fi
    rm -f "$sock" "$ttrpc_sock"
    log "stopped"
}

# Stop the daemon alone (SIGTERM, as systemd would), then start it again;
# containerd reconnects to the shims it finds in its state dir.
do_restart() {
    local pid
    if pid=$(running_pid); then
        log "stopping containerd (pid $pid) and leaving its shims running"
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone 10 "$pid" || die "containerd (pid $pid) did not stop within 10s"
        rm -f "$pidfile"
    fi
    do_start
}

case $cmd in
    start) do_start ;;
    stop) do_stop ;;
    restart) do_restart ;;
    env) echo "export CONTAINERD_ADDRESS=$(printf '%q' "$sock")" ;;
    status)
        if pid=$(running_pid) && answers; then
            log "running (pid $pid, address $sock)"
        else
            log "not running ($state_dir)"
            exit 1
        fi
        ;;
    *) usage ;;
esac
